//! Any bytes as a signed chunk header: no panic; a decoded header re-encodes
//! to the bytes it came from.
#![no_main]
use dcdn_node::chunk::ChunkHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ChunkHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..ChunkHeader::ENCODED_LEN]);
    }
});
