//! Any bytes as a stream of length-prefixed frames, consumed the way a
//! connection would: no panic, no allocation beyond the cap.
#![no_main]
use dcdn_node::chunk::wire::{Framed, decode_framed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Framed::Frame(_, used)) = decode_framed(rest, 1 << 20) {
        rest = &rest[used..];
    }
});
