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

fn codec() -> anyhow::Result<reed_solomon_erasure::galois_8::ReedSolomon> {
    reed_solomon_erasure::galois_8::ReedSolomon::new(K, M)
        .map_err(|e| anyhow::anyhow!("reed-solomon codec: {e:?}"))
}

/// k=16, m=4, 1200-byte shards; MB/s of data encoded. The baseline is the
/// chosen crate called the common way (`encode` over owned shards); with
/// the `bench-baselines` feature a second line compares with the other
/// candidate crate.
pub(super) fn fec_encode(options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    let rs = codec()?;
    let data = Bytes::from(block());
    let mut all: Vec<Vec<u8>> = data.chunks(SHARD).map(<[u8]>::to_vec).collect();
    all.extend((0..M).map(|_| vec![0u8; SHARD]));
    let id = ChunkId::new(StreamId(1), 1);
    let bytes = (K * SHARD) as f64 / MB;
    let mut encoder = Encoder::new();
    // What the push path calls (`mesh::push_chunk`): the blocks it then
    // frames shard by shard.
    let mut ours = || {
        let out = encoder.encode_blocks(id, &data, SHARD, 0, K as u16, M as u16);
        black_box(out.map(|v| v.len()).unwrap_or(0));
        1
    };
    // What a sender must do with the raw crate: the parity goes out in
    // datagrams that outlive the call, so each block gets a fresh buffer
    // (ours: `BytesMut::zeroed`, the one allocation the shards share).
    let originals: Vec<&[u8]> = data.chunks(SHARD).collect();
    let (a, b) = compare(options, &mut ours, || {
        let mut parity = vec![0u8; M * SHARD];
        let mut outputs: Vec<&mut [u8]> = parity.chunks_mut(SHARD).collect();
        black_box(rs.encode_sep(&originals, &mut outputs).is_ok());
        black_box(parity.len());
        1
    });
    // The crate at its fastest, into buffers reused across calls: the gap
    // to this line is the cost of zeroing fresh parity (see the note).
    let (c, d) = compare(options, &mut ours, || {
        black_box(rs.encode(&mut all).is_ok());
        1
    });
    #[allow(unused_mut)]
    let mut out = vec![
        BenchResult::new(
            "fec_encode",
            "MB/s",
            a * bytes,
            b * bytes,
            "reed-solomon-erasure 6 (simd-accel) encode_sep into fresh parity buffers",
        ),
        BenchResult::new(
            "fec_encode_vs_reused_buffers",
            "MB/s",
            c * bytes,
            d * bytes,
            "reed-solomon-erasure 6 (simd-accel) encode in place, buffers reused",
        ),
    ];
    #[cfg(feature = "bench-baselines")]
    {
        let (c, d) = compare(options, &mut ours, || {
            black_box(
                reed_solomon_simd::encode(K, M, &originals)
                    .map(|v| v.len())
                    .unwrap_or(0),
            );
            1
        });
        out.push(BenchResult::new(
            "fec_encode_vs_rs_simd",
            "MB/s",
            c * bytes,
            d * bytes,
            "reed-solomon-simd 3 encode",
        ));
    }
    Ok(out)
}

/// k=16, m=4, 1200-byte shards, 4 data shards lost; MB/s of data (all k
/// shards) rebuilt. Two lines: the lost shards drawn at random each time
/// from all C(16, 4) = 1820 patterns, as real loss would be, and one fixed
/// pattern. The baseline is the crate's `reconstruct_data` given what
/// `Decoder::decode_block` must do too: a fresh output buffer for the
/// block, the present shards copied in, no other allocation.
pub(super) fn fec_decode(options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    let rs = codec()?;
    let data = block();
    let mut full: Vec<Vec<u8>> = data.chunks(SHARD).map(<[u8]>::to_vec).collect();
    full.extend((0..M).map(|_| vec![0u8; SHARD]));
    rs.encode(&mut full)
        .map_err(|e| anyhow::anyhow!("reed-solomon encode: {e:?}"))?;
    let all: Vec<Bytes> = full.iter().map(|s| Bytes::copy_from_slice(s)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let random: Vec<Vec<usize>> = (0..8192)
        .map(|_| rand::seq::index::sample(&mut rng, K, M).into_vec())
        .collect();
    let fixed = vec![vec![1, 5, 9, 13]];
    let bytes = (K * SHARD) as f64 / MB;
    let mut out = Vec::new();
    for (name, patterns) in [("fec_decode", &random), ("fec_decode_fixed", &fixed)] {
        let mut decoder = Decoder::new();
        let mut shards: Vec<Option<Bytes>> = vec![None; K + M];
        let mut turn = 0usize;
        let ours = || {
            let lost = &patterns[turn % patterns.len()];
            turn += 1;
            for (i, (slot, s)) in shards.iter_mut().zip(&all).enumerate() {
                *slot = (!lost.contains(&i)).then(|| s.clone());
            }
            let got = decoder.decode_block(K, M, &shards);
            black_box(got.map(|b| b.len()).unwrap_or(0));
            1
        };
        let mut parity = vec![0u8; M * SHARD];
        let mut turn_raw = 0usize;
        let raw = || {
            let lost = &patterns[turn_raw % patterns.len()];
            turn_raw += 1;
            let mut block = vec![0u8; K * SHARD];
            for (i, s) in block.chunks_mut(SHARD).enumerate() {
                if !lost.contains(&i) {
                    s.copy_from_slice(&all[i]);
                }
            }
            for (j, s) in parity.chunks_mut(SHARD).enumerate() {
                s.copy_from_slice(&all[K + j]);
            }
            let mut slots: Vec<(&mut [u8], bool)> = block
                .chunks_mut(SHARD)
                .chain(parity.chunks_mut(SHARD))
                .enumerate()
                .map(|(i, s)| (s, !lost.contains(&i)))
                .collect();
            black_box(rs.reconstruct_data(&mut slots).is_ok());
            black_box(block.len());
            1
        };
        let (a, b) = compare(options, ours, raw);
        out.push(BenchResult::new(
            name,
            "MB/s",
            a * bytes,
            b * bytes,
            "reed-solomon-erasure 6 (simd-accel) reconstruct_data, same buffers",
        ));
    }
    #[cfg(feature = "bench-baselines")]
    {
        // The other candidate: its own code, its own parity.
        let originals: Vec<&[u8]> = data.chunks(SHARD).collect();
        let recovery = reed_solomon_simd::encode(K, M, &originals)?;
        let mut decoder = Decoder::new();
        let mut shards: Vec<Option<Bytes>> = vec![None; K + M];
        let mut turn = 0usize;
        let ours = || {
            let lost = &random[turn % random.len()];
            turn += 1;
            for (i, (slot, s)) in shards.iter_mut().zip(&all).enumerate() {
                *slot = (!lost.contains(&i)).then(|| s.clone());
            }
            let got = decoder.decode_block(K, M, &shards);
            black_box(got.map(|b| b.len()).unwrap_or(0));
            1
        };
        let mut turn_simd = 0usize;
        let (c, d) = compare(options, ours, || {
            let lost = &random[turn_simd % random.len()];
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
        out.push(BenchResult::new(
            "fec_decode_vs_rs_simd",
            "MB/s",
            c * bytes,
            d * bytes,
            "reed-solomon-simd 3 decode",
        ));
    }
    Ok(out)
}

/// Batches of 64 chunks of 64 KiB; chunks/s verified (signature and
/// digest). Ours is `Verifier::verify_batch`, what `Shared::accept_chunks`
/// calls for a burst; the baseline is ed25519-dalek's raw batch plus BLAKE3
/// with everything the batch needs (signed bytes, signatures, keys) built
/// inside the timed call, as ours builds them. A second line times the lone
/// chunk's path, `Verifier::verify`, against raw `verify_strict` + BLAKE3.
pub(super) fn verify_batch(options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    const BATCH: usize = 64;
    let signer = Signer::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let mut ring = KeyRing::new();
    let id = ring.add_trusted(signer.public_key())?;
    ring.activate(id)?;
    let verifier = Verifier::new(Arc::new(RwLock::new(ring)), VerifyConfig::default());
    let now_ms = 1_800_000_000_000;
    let chunks: Vec<Chunk> = (0..BATCH as u64)
        .map(|i| {
            let payload: Vec<u8> = (0..65536).map(|j| (j as u64 ^ i) as u8).collect();
            signer.sign_chunk(ChunkId::new(StreamId(2), i), Bytes::from(payload), now_ms)
        })
        .collect();
    anyhow::ensure!(
        verifier
            .verify_batch(&chunks, now_ms)
            .iter()
            .all(Result::is_ok),
        "verify_batch refused good chunks"
    );
    let ours = || {
        let ok = verifier
            .verify_batch(&chunks, now_ms)
            .iter()
            .filter(|r| r.is_ok())
            .count();
        black_box(ok);
        BATCH as u64
    };
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&signer.public_key())?;
    let raw = || {
        let digests_ok = chunks
            .iter()
            .all(|c| blake3::hash(&c.payload).as_bytes() == &c.header.digest);
        let messages: Vec<_> = chunks.iter().map(|c| c.header.signing_bytes()).collect();
        let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let sigs: Vec<ed25519_dalek::Signature> = chunks
            .iter()
            .map(|c| ed25519_dalek::Signature::from_bytes(&c.signature))
            .collect();
        let keys = vec![vk; BATCH];
        black_box(digests_ok && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok());
        BATCH as u64
    };
    let (a, b) = compare(options, ours, raw);
    let single = || {
        let ok = chunks
            .iter()
            .filter(|c| verifier.verify(c, now_ms).is_ok())
            .count();
        black_box(ok);
        BATCH as u64
    };
    let raw_single = || {
        let ok = chunks
            .iter()
            .filter(|c| {
                blake3::hash(&c.payload).as_bytes() == &c.header.digest
                    && vk
                        .verify_strict(
                            &c.header.signing_bytes(),
                            &ed25519_dalek::Signature::from_bytes(&c.signature),
                        )
                        .is_ok()
            })
            .count();
        black_box(ok);
        BATCH as u64
    };
    let (c, d) = compare(options, single, raw_single);
    Ok(vec![
        BenchResult::new(
            "verify_batch",
            "chunks/s",
            a,
            b,
            "ed25519-dalek verify_batch + blake3, inputs built in the timed call",
        ),
        BenchResult::new(
            "verify_single",
            "chunks/s",
            c,
            d,
            "ed25519-dalek verify_strict + blake3",
        ),
    ])
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

const KEYS: u64 = 1 << 16;

/// Runs `op(i)` for every `i < n`, split over 2 threads (even and odd);
/// returns ops/s.
fn two_threads_all(n: u64, op: impl Fn(u64) + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let op = &op;
            s.spawn(move || {
                let mut i = t;
                while i < n {
                    op(i);
                    i += 2;
                }
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// Inserts distinct chunks from 2 threads into an empty store large enough
/// to hold them all (every insert is a real insert), against
/// `RwLock<HashMap>` and `DashMap` doing the same; rounds alternate and
/// the median round counts. A map's drop is outside the timed part.
pub(super) fn store_insert(options: BenchOptions) -> Vec<BenchResult> {
    let n = if options.quick { KEYS / 4 } else { KEYS * 4 };
    let chunks: Vec<Chunk> = (0..n).map(small_chunk).collect();
    let (mut ours, mut std_side) = (Vec::new(), Vec::new());
    #[cfg(feature = "bench-baselines")]
    let mut dash_side = Vec::new();
    for _ in 0..super::ROUNDS {
        let store = ChunkStore::new(StoreConfig {
            budget_bytes: usize::MAX / 4,
            ttl: Duration::from_secs(3600),
        });
        let now = Instant::now();
        ours.push(two_threads_all(n, |i| {
            black_box(store.insert(chunks[i as usize].clone(), now).is_ok());
        }));
        drop(store);
        let std_map = std::sync::RwLock::new(HashMap::<ChunkId, Chunk>::new());
        std_side.push(two_threads_all(n, |i| {
            let c = &chunks[i as usize];
            // Same semantics as ours: a chunk already held is left alone.
            if let Ok(mut m) = std_map.write() {
                black_box(m.entry(c.id()).or_insert_with(|| c.clone()).header.len);
            }
        }));
        drop(std_map);
        #[cfg(feature = "bench-baselines")]
        {
            let dash = dashmap::DashMap::<ChunkId, Chunk>::new();
            dash_side.push(two_threads_all(n, |i| {
                let c = &chunks[i as usize];
                black_box(dash.entry(c.id()).or_insert_with(|| c.clone()).header.len);
            }));
            drop(dash);
        }
    }
    let ours = super::median(&mut ours);
    #[allow(unused_mut)]
    let mut out = vec![BenchResult::new(
        "store_insert",
        "ops/s",
        ours,
        super::median(&mut std_side),
        "std RwLock<HashMap>, 2 threads, distinct chunks",
    )];
    #[cfg(feature = "bench-baselines")]
    out.push(BenchResult::new(
        "store_insert_vs_dashmap",
        "ops/s",
        ours,
        super::median(&mut dash_side),
        "dashmap 6 DashMap, 2 threads, distinct chunks",
    ));
    out
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

/// Lookups of present chunks from 2 threads, against `RwLock<HashMap>`
/// (and `DashMap`) holding the same chunks; rounds alternate and the median
/// round counts.
pub(super) fn store_get(options: BenchOptions) -> Vec<BenchResult> {
    let store = ChunkStore::new(StoreConfig {
        budget_bytes: usize::MAX / 4,
        ttl: Duration::from_secs(3600),
    });
    let now = Instant::now();
    let std_map = std::sync::RwLock::new(HashMap::<ChunkId, Chunk>::new());
    #[cfg(feature = "bench-baselines")]
    let dash = dashmap::DashMap::<ChunkId, Chunk>::new();
    let ids: Vec<ChunkId> = (0..KEYS)
        .map(|i| {
            let c = small_chunk(i);
            let _ = store.insert(c.clone(), now);
            if let Ok(mut m) = std_map.write() {
                m.insert(c.id(), c.clone());
            }
            #[cfg(feature = "bench-baselines")]
            dash.insert(c.id(), c.clone());
            c.id()
        })
        .collect();
    let slice = options.duration / 10;
    let (mut ours, mut std_side) = (Vec::new(), Vec::new());
    #[cfg(feature = "bench-baselines")]
    let mut dash_side = Vec::new();
    for _ in 0..super::ROUNDS {
        ours.push(two_threads(slice, |t, i| {
            let id = &ids[((i * 7 + t * 13) % KEYS) as usize];
            black_box(store.get(id, now).is_some());
        }));
        std_side.push(two_threads(slice, |t, i| {
            let id = &ids[((i * 7 + t * 13) % KEYS) as usize];
            if let Ok(m) = std_map.read() {
                black_box(m.get(id).cloned().is_some());
            }
        }));
        #[cfg(feature = "bench-baselines")]
        dash_side.push(two_threads(slice, |t, i| {
            let id = &ids[((i * 7 + t * 13) % KEYS) as usize];
            black_box(dash.get(id).map(|c| c.clone()).is_some());
        }));
    }
    let ours = super::median(&mut ours);
    #[allow(unused_mut)]
    let mut out = vec![BenchResult::new(
        "store_get",
        "ops/s",
        ours,
        super::median(&mut std_side),
        "std RwLock<HashMap>, 2 threads",
    )];
    #[cfg(feature = "bench-baselines")]
    out.push(BenchResult::new(
        "store_get_vs_dashmap",
        "ops/s",
        ours,
        super::median(&mut dash_side),
        "dashmap 6 DashMap, 2 threads",
    ));
    out
}
