//! The core benchmarks: each part of the node against the raw library doing
//! the same work, in the same run.

use super::{BenchOptions, BenchResult, compare};
use crate::chunk::{Chunk, ChunkId, StreamId};
use crate::crypto::{KeyRing, Signer, Verifier, VerifyConfig};
use crate::fec::{Decoder, Encoder};
use crate::store::{ChunkStore, StoreConfig};
use bytes::Bytes;
use parking_lot::RwLock;
use rand::SeedableRng;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const K: usize = 16;
const M: usize = 4;
const SHARD: usize = 1200;
const MB: f64 = 1_000_000.0;

fn block() -> Vec<u8> {
    (0..K * SHARD).map(|i| (i * 131 % 251) as u8).collect()
}

fn codec() -> Option<reed_solomon_erasure::galois_8::ReedSolomon> {
    reed_solomon_erasure::galois_8::ReedSolomon::new(K, M).ok()
}

/// k=16, m=4, 1200-byte shards; MB/s of data encoded. The baseline is the
/// chosen crate called the common way (`encode` over owned shards); a second
/// line compares with the other candidate crate.
pub(super) fn fec_encode(options: BenchOptions) -> Vec<BenchResult> {
    let Some(rs) = codec() else { return Vec::new() };
    let data = Bytes::from(block());
    let mut all: Vec<Vec<u8>> = data.chunks(SHARD).map(<[u8]>::to_vec).collect();
    all.extend((0..M).map(|_| vec![0u8; SHARD]));
    let originals: Vec<&[u8]> = data.chunks(SHARD).collect();
    let id = ChunkId::new(StreamId(1), 1);
    let bytes = (K * SHARD) as f64 / MB;
    let mut encoder = Encoder::new();
    let mut ours = || {
        let out = encoder.encode_chunk(id, &data, SHARD, K as u16, M as u16);
        black_box(out.map(|v| v.len()).unwrap_or(0));
        1
    };
    let (a, b) = compare(options, &mut ours, || {
        black_box(rs.encode(&mut all).is_ok());
        1
    });
    let (c, d) = compare(options, &mut ours, || {
        black_box(
            reed_solomon_simd::encode(K, M, &originals)
                .map(|v| v.len())
                .unwrap_or(0),
        );
        1
    });
    vec![
        BenchResult::new(
            "fec_encode",
            "MB/s",
            a * bytes,
            b * bytes,
            "reed-solomon-erasure 6 (simd-accel) encode",
        ),
        BenchResult::new(
            "fec_encode_vs_rs_simd",
            "MB/s",
            c * bytes,
            d * bytes,
            "reed-solomon-simd 3 encode",
        ),
    ]
}

/// k=16, m=4, 1200-byte shards, 4 data shards lost in a pattern drawn at
/// random each time from all C(16, 4) = 1820, as real loss would be; MB/s
/// of data (all k shards) rebuilt.
pub(super) fn fec_decode(options: BenchOptions) -> Vec<BenchResult> {
    let Some(rs) = codec() else { return Vec::new() };
    let data = block();
    let mut full: Vec<Vec<u8>> = data.chunks(SHARD).map(<[u8]>::to_vec).collect();
    full.extend((0..M).map(|_| vec![0u8; SHARD]));
    if rs.encode(&mut full).is_err() {
        return Vec::new();
    }
    let all: Vec<Bytes> = full.iter().map(|s| Bytes::copy_from_slice(s)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let patterns: Vec<Vec<usize>> = (0..8192)
        .map(|_| rand::seq::index::sample(&mut rng, K, M).into_vec())
        .collect();
    let bytes = (K * SHARD) as f64 / MB;
    let mut decoder = Decoder::new();
    let mut turn = 0usize;
    let mut ours = || {
        let lost = &patterns[turn % patterns.len()];
        turn += 1;
        let shards: Vec<Option<Bytes>> = all
            .iter()
            .enumerate()
            .map(|(i, s)| (!lost.contains(&i)).then(|| s.clone()))
            .collect();
        black_box(
            decoder
                .decode_block(K, M, &shards)
                .map(|b| b.len())
                .unwrap_or(0),
        );
        1
    };
    let mut turn_raw = 0usize;
    let (a, b) = compare(options, &mut ours, || {
        let lost = &patterns[turn_raw % patterns.len()];
        turn_raw += 1;
        let mut shards: Vec<Option<Vec<u8>>> = full
            .iter()
            .enumerate()
            .map(|(i, s)| (!lost.contains(&i)).then(|| s.clone()))
            .collect();
        black_box(rs.reconstruct_data(&mut shards).is_ok());
        1
    });
    // The other candidate: its own code, its own parity.
    let originals: Vec<&[u8]> = data.chunks(SHARD).collect();
    let recovery = reed_solomon_simd::encode(K, M, &originals).unwrap_or_default();
    let mut turn_simd = 0usize;
    let (c, d) = compare(options, &mut ours, || {
        let lost = &patterns[turn_simd % patterns.len()];
        turn_simd += 1;
        let orig = originals
            .iter()
            .enumerate()
            .filter(|(i, _)| !lost.contains(i))
            .map(|(i, s)| (i, *s));
        let rec = recovery.iter().enumerate().map(|(i, s)| (i, s.as_slice()));
        black_box(
            reed_solomon_simd::decode(K, M, orig, rec)
                .map(|m| m.len())
                .unwrap_or(0),
        );
        1
    });
    vec![
        BenchResult::new(
            "fec_decode",
            "MB/s",
            a * bytes,
            b * bytes,
            "reed-solomon-erasure 6 (simd-accel) reconstruct_data",
        ),
        BenchResult::new(
            "fec_decode_vs_rs_simd",
            "MB/s",
            c * bytes,
            d * bytes,
            "reed-solomon-simd 3 decode",
        ),
    ]
}

/// Batches of 64 chunks of 64 KiB; chunks/s verified (signature and digest).
pub(super) fn verify_batch(options: BenchOptions) -> Vec<BenchResult> {
    const BATCH: usize = 64;
    let signer = Signer::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let mut ring = KeyRing::new();
    if let Ok(id) = ring.add_trusted(signer.public_key()) {
        let _ = ring.activate(id);
    }
    let verifier = Verifier::new(Arc::new(RwLock::new(ring)), VerifyConfig::default());
    let now_ms = 1_800_000_000_000;
    let chunks: Vec<Chunk> = (0..BATCH as u64)
        .map(|i| {
            let payload: Vec<u8> = (0..65536).map(|j| (j as u64 ^ i) as u8).collect();
            signer.sign_chunk(ChunkId::new(StreamId(2), i), Bytes::from(payload), now_ms)
        })
        .collect();
    let ours = || {
        let ok = verifier
            .verify_batch(&chunks, now_ms)
            .iter()
            .filter(|r| r.is_ok())
            .count();
        black_box(ok);
        BATCH as u64
    };
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&signer.public_key()).ok();
    let messages: Vec<_> = chunks.iter().map(|c| c.header.signing_bytes()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = chunks
        .iter()
        .map(|c| ed25519_dalek::Signature::from_bytes(&c.signature))
        .collect();
    let raw = || {
        let Some(vk) = vk else { return 0 };
        let digests_ok = chunks
            .iter()
            .all(|c| blake3::hash(&c.payload).as_bytes() == &c.header.digest);
        let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let keys = vec![vk; BATCH];
        black_box(digests_ok && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok());
        BATCH as u64
    };
    let (a, b) = compare(options, ours, raw);
    vec![BenchResult::new(
        "verify_batch",
        "chunks/s",
        a,
        b,
        "ed25519-dalek verify_batch + blake3",
    )]
}

fn small_chunk(seq: u64) -> Chunk {
    Chunk {
        header: crate::chunk::ChunkHeader {
            id: ChunkId::new(StreamId(seq % 8), seq),
            len: 16,
            digest: [0; 32],
            key_id: crate::chunk::KeyId(1),
            timestamp_ms: 0,
        },
        signature: [0; 64],
        payload: Bytes::from_static(&[0u8; 16]),
    }
}

/// Runs `op(thread, i)` on 2 threads for `duration`; total ops/s.
fn two_threads(duration: Duration, op: impl Fn(u64, u64) + Sync) -> f64 {
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let mut i = 0u64;
                    while start.elapsed() < duration {
                        for _ in 0..256 {
                            op(t, i);
                            i += 1;
                        }
                    }
                    i
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

const KEYS: u64 = 1 << 16;

/// Inserts from 2 threads into a store large enough to hold everything;
/// the key space cycles, so after the first pass most inserts find the
/// chunk already held, on both sides alike.
pub(super) fn store_insert(options: BenchOptions) -> Vec<BenchResult> {
    let chunks: Vec<Chunk> = (0..KEYS).map(small_chunk).collect();
    let slice = options.duration / 10;
    let (mut best_ours, mut best_base) = (0f64, 0f64);
    for _ in 0..5 {
        let store = ChunkStore::new(StoreConfig {
            budget_bytes: usize::MAX / 4,
            ttl: Duration::from_secs(3600),
        });
        let now = Instant::now();
        best_ours = best_ours.max(two_threads(slice, |t, i| {
            let c = &chunks[((i * 2 + t) % KEYS) as usize];
            black_box(store.insert(c.clone(), now).is_ok());
        }));
        let std_map = std::sync::RwLock::new(HashMap::<ChunkId, Chunk>::new());
        best_base = best_base.max(two_threads(slice, |t, i| {
            let c = &chunks[((i * 2 + t) % KEYS) as usize];
            // Same semantics as ours: a chunk already held is left alone.
            if let Ok(mut m) = std_map.write() {
                black_box(m.entry(c.id()).or_insert_with(|| c.clone()).header.len);
            }
        }));
    }
    vec![BenchResult::new(
        "store_insert",
        "ops/s",
        best_ours,
        best_base,
        "std RwLock<HashMap>, 2 threads",
    )]
}

/// Lookups of present chunks from 2 threads.
pub(super) fn store_get(options: BenchOptions) -> Vec<BenchResult> {
    let store = ChunkStore::new(StoreConfig {
        budget_bytes: usize::MAX / 4,
        ttl: Duration::from_secs(3600),
    });
    let now = Instant::now();
    let std_map = std::sync::RwLock::new(HashMap::<ChunkId, Chunk>::new());
    let ids: Vec<ChunkId> = (0..KEYS)
        .map(|i| {
            let c = small_chunk(i);
            let _ = store.insert(c.clone(), now);
            if let Ok(mut m) = std_map.write() {
                m.insert(c.id(), c.clone());
            }
            c.id()
        })
        .collect();
    let slice = options.duration / 10;
    let (mut best_ours, mut best_base) = (0f64, 0f64);
    for _ in 0..5 {
        best_ours = best_ours.max(two_threads(slice, |t, i| {
            let id = &ids[((i * 7 + t * 13) % KEYS) as usize];
            black_box(store.get(id, now).is_some());
        }));
        best_base = best_base.max(two_threads(slice, |t, i| {
            let id = &ids[((i * 7 + t * 13) % KEYS) as usize];
            if let Ok(m) = std_map.read() {
                black_box(m.get(id).cloned().is_some());
            }
        }));
    }
    vec![BenchResult::new(
        "store_get",
        "ops/s",
        best_ours,
        best_base,
        "std RwLock<HashMap>, 2 threads",
    )]
}
