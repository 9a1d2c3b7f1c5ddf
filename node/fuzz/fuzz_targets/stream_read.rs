//! Any bytes as a QUIC stream, read by the node's own stream-read path
//! (`roles::framing::read_frame_from`, which `read_frame` calls on every
//! control stream and pull request): no panic, and every way it stops is a
//! named error.
#![no_main]
use dcdn_node::roles::framing::{FramingError, read_frame_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let mut input = data;
        // The node's control-frame cap.
        while let Ok(_frame) = read_frame_from(&mut input, 64 * 1024).await {}
        let end = read_frame_from(&mut input, 64 * 1024).await;
        assert!(matches!(
            end,
            Err(FramingError::Finished
                | FramingError::Read(_)
                | FramingError::TooLarge { .. }
                | FramingError::Malformed(_))
        ));
    });
});
