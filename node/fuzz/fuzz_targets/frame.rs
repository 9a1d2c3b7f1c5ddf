//! Any bytes as one frame (a datagram or a stream frame body): decoding must
//! not panic, and whatever decodes must re-encode to the same bytes.
#![no_main]
use dcdn_node::chunk::wire::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        assert_eq!(&frame.to_bytes()[..], data);
    }
});
