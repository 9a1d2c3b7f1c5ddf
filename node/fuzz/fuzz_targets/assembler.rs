//! Arbitrary shard headers and sizes from arbitrary sources, fed to
//! `fec::Assembler::insert` with time moving: no panic, and the bytes held
//! never pass the cap, overall or per source.
#![no_main]
use bytes::Bytes;
use dcdn_node::chunk::{ChunkId, StreamId};
use dcdn_node::fec::{Assembler, AssemblerConfig, Shard};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const CAP: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut a = Assembler::new(AssemblerConfig {
        max_bytes: CAP,
        max_age: Duration::from_millis(500),
        remember_done: 64,
        max_bytes_per_source: CAP / 2,
        max_chunk_bytes: 64 * 1024,
    });
    let mut now = Instant::now();
    // 18 header bytes per shard: source, seq, block, blocks, k, m, index,
    // block_len, data length, time step.
    for h in data.chunks_exact(18) {
        let u16_at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        let len = usize::from(u16_at(14)) % 4096;
        let shard = Shard {
            chunk: ChunkId::new(StreamId(1), u64::from(h[1] % 8)),
            block: u16_at(2),
            blocks: u16_at(4),
            k: u16_at(6),
            m: u16_at(8),
            index: u16_at(10),
            block_len: u32::from(u16_at(12)) * u32::from(h[16]).max(1),
            data: Bytes::from(vec![h[17]; len]),
        };
        let _ = a.insert(u64::from(h[0] % 4), shard, now);
        now += Duration::from_millis(u64::from(h[17] % 64));
        a.expire(now);
        assert!(a.stats().bytes_held <= CAP);
    }
});
