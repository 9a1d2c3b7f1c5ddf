#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "sim")]
//! Fidelity of `dcdn sim`: the same small scenario — 1 origin, 1 relay,
//! 6 edges on loopback, an object (64 MiB in the issue; see `object_bytes`)
//! and a short live stream, at 0 % and 5 % loss between relay and edges —
//! runs as a real cluster (laid out by `dcdn up`'s planner, every node in
//! this process on real QUIC, the seeded loss proxy in front of the relay)
//! and in the simulator (`deploy/sim/fidelity*.toml`). Origin offload and
//! FEC-rebuilt counts must agree within 15 %, and the tiers must finish in
//! the same order.

mod support;

use bytes::Bytes;
use dcdn_node::client::Client;
use dcdn_node::config::Role;
use dcdn_node::sim::{self, scenario::Scenario};
use dcdn_node::up::plan::Counts;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::cluster::TestCluster;

const EDGES: usize = 6;
const CHUNK_KB: u64 = 256;

/// The object's size. The scenario is 64 MiB, but a debug-built
/// cluster on two shared cores moves only a few MB/s, so the suite runs 4 MiB
/// and `DCDN_FIDELITY_OBJECT_MB=64` runs the full size (minutes).
fn object_bytes() -> usize {
    std::env::var("DCDN_FIDELITY_OBJECT_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4)
        << 20
}
const LIVE_PIECES: usize = 100;
const LIVE_PIECE: usize = 16 << 10;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

/// What the real cluster did.
#[derive(Debug)]
struct Real {
    object_offload: f64,
    live_offload: f64,
    rebuilt: f64,
    groups: f64,
    relay_done_s: f64,
    edge_done_p50_s: f64,
    /// Shards pushed to the edges during the live stream that never
    /// arrived, as a share of those expected (`dcdn_push_shards_total`).
    shard_loss: f64,
}

async fn real_run(loss: f64) -> Real {
    let began = Instant::now();
    let (c, proxy) = TestCluster::start_with_lossy_relay_link(
        "fidelity",
        Counts {
            relays: 1,
            edges: EDGES,
        },
        |c| {
            c.origin.chunk_size_kb = dcdn_node::config::Bounded::new(CHUNK_KB).unwrap();
        },
        loss,
    )
    .await;
    println!("cluster up after {:?}", began.elapsed());
    let origin = c.origin().running().shared.clone();
    let relay = &c.nodes[c.by_role(Role::Relay)[0]];
    let client = Client::new(Duration::from_secs(120));

    // The object: published, then fetched through every edge at once.
    let object = payload(5, object_bytes());
    let body =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(object.clone()))]);
    client
        .put_stream(
            &format!("{}/v1/objects/big", c.origin().http()),
            Some(&c.plan.ingest_token),
            body,
        )
        .await
        .unwrap();
    println!("object published after {:?}", began.elapsed());
    let chunks = object_bytes().div_ceil((CHUNK_KB as usize) << 10) as f64;
    let t0 = Instant::now();
    let mut gets = Vec::new();
    for e in c.by_role(Role::Edge) {
        let url = format!("{}/v1/objects/big", c.nodes[e].http());
        let client = client.clone();
        gets.push(tokio::spawn(async move {
            let got = client.get(&url, None).await.unwrap();
            (t0.elapsed().as_secs_f64(), got.body.len())
        }));
    }
    let mut relay_done_s = f64::NAN;
    while relay_done_s.is_nan() && t0.elapsed() < Duration::from_secs(120) {
        let pulled = relay.metric(
            "dcdn_chunks_total",
            &[("direction", "in"), ("path", "pull")],
        );
        if pulled >= chunks {
            relay_done_s = t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut edge_done = Vec::new();
    for g in gets {
        let (t, len) = g.await.unwrap();
        assert_eq!(len, object_bytes(), "every edge served the whole object");
        edge_done.push(t);
    }
    edge_done.sort_by(f64::total_cmp);
    let object_offload = origin.mesh_bytes_out.load(Ordering::Relaxed) as f64
        / origin.ingested_bytes.load(Ordering::Relaxed) as f64;

    println!("object fetched after {:?}", began.elapsed());
    // The live stream: pushed with FEC through the lossy links.
    let (out0, in0) = (
        origin.mesh_bytes_out.load(Ordering::Relaxed),
        origin.ingested_bytes.load(Ordering::Relaxed),
    );
    let shards = |count: &str| {
        c.by_role(Role::Edge)
            .into_iter()
            .map(|e| c.nodes[e].metric("dcdn_push_shards_total", &[("count", count)]))
            .sum::<f64>()
    };
    let (expected0, received0) = (shards("expected"), shards("received"));
    let pieces: Vec<Vec<u8>> = (0..LIVE_PIECES)
        .map(|i| payload(i as u64, LIVE_PIECE))
        .collect();
    let paced = futures_util::stream::unfold(pieces.into_iter(), |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(next)), it))
    });
    let resp = client
        .put_stream(
            &format!("{}/v1/streams/cam", c.origin().http()),
            Some(&c.plan.ingest_token),
            paced,
        )
        .await
        .unwrap();
    let published: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    // A piece becomes one chunk unless HTTP framing split it.
    let live_chunks = published["chunks"].as_u64().unwrap() as f64;
    println!("live published after {:?}", began.elapsed());
    // Let pushes in flight land: wait until every edge has an outcome for
    // every group pushed to it (whole, rebuilt, or given up at the
    // reassembly timeout). A group whose every shard was lost never shows,
    // so the wait is bounded and its end is not a failure.
    let settled = || {
        c.by_role(Role::Edge)
            .into_iter()
            .map(|e| {
                ["complete", "rebuilt", "failed"]
                    .iter()
                    .map(|o| c.nodes[e].metric("dcdn_fec_groups_total", &[("outcome", o)]))
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let groups = || {
        c.by_role(Role::Edge)
            .into_iter()
            .map(|e| {
                c.nodes[e].metric("dcdn_fec_groups_total", &[("outcome", "complete")])
                    + c.nodes[e].metric("dcdn_fec_groups_total", &[("outcome", "rebuilt")])
            })
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while settled() < EDGES as f64 * live_chunks && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rebuilt: f64 = c
        .by_role(Role::Edge)
        .into_iter()
        .map(|e| c.nodes[e].metric("dcdn_fec_groups_total", &[("outcome", "rebuilt")]))
        .sum();
    let live_offload = (origin.mesh_bytes_out.load(Ordering::Relaxed) - out0) as f64
        / (origin.ingested_bytes.load(Ordering::Relaxed) - in0) as f64;
    let expected = shards("expected") - expected0;
    let received = shards("received") - received0;
    let real = Real {
        object_offload,
        live_offload,
        rebuilt,
        groups: groups(),
        relay_done_s,
        edge_done_p50_s: edge_done[EDGES / 2 - 1],
        shard_loss: (1.0 - received / expected.max(1.0)).max(0.0),
    };
    println!(
        "real at {:.0}% loss: {real:?}; proxy dropped {}",
        loss * 100.0,
        proxy.stats.dropped.load(Ordering::Relaxed)
    );
    println!("measured after {:?}", began.elapsed());
    c.stop().await;
    println!("stopped after {:?}", began.elapsed());
    real
}

fn scenario(file: &str, loss: f64) -> Scenario {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/sim")
        .join(file);
    let mut s = Scenario::from_file(&path).unwrap();
    if !s.content.is_live() {
        s.content.object_mb = (object_bytes() >> 20) as f64;
    }
    // The proxy sits between the relay and the edges only.
    s.network.relay_edge.loss = loss;
    s
}

/// Within 15 % of each other, or within `slack` (for counts near zero,
/// where a couple of stray kernel drops on loopback are not the model's
/// business).
fn agree(sim: f64, real: f64, slack: f64) -> bool {
    (sim - real).abs() <= 0.15 * sim.abs().max(real.abs()) || (sim - real).abs() <= slack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_simulator_agrees_with_a_real_cluster_on_offload_fec_and_tier_order() {
    for loss in [0.0, 0.05] {
        let real = real_run(loss).await;
        let obj = sim::run(&scenario("fidelity.toml", loss)).unwrap();
        // One real run draws one phase of the receivers' 500 ms loss-report
        // timers against a 0.5 s stream, which moves its parity (and so
        // its offload) noticeably; compare it with the sim's mean over seeds.
        let seeds = 1..=8u64;
        // The live stream's parity is compared at the loss the edges
        // really saw: the proxy drops its share, but a machine under load
        // loses more on the way (a starved relay's datagram queue, socket
        // buffers), and that is the network the FEC model is given.
        let live_loss = if loss > 0.0 { real.shard_loss } else { 0.0 };
        assert!(
            loss == 0.0 || real.shard_loss >= 0.8 * loss,
            "the edges lost {:.3} of their shards through a proxy dropping {loss}",
            real.shard_loss
        );
        let lives: Vec<_> = seeds
            .clone()
            .map(|seed| {
                let mut s = scenario("fidelity-live.toml", live_loss);
                s.seed = seed;
                sim::run(&s).unwrap()
            })
            .collect();
        let n = lives.len() as f64;
        let live_offload = lives
            .iter()
            .map(|r| r.bytes.origin_offload_ratio)
            .sum::<f64>()
            / n;
        let live_rebuilt = lives
            .iter()
            .map(|r| r.fec.edges.rebuilt as f64)
            .sum::<f64>()
            / n;
        let tier = |name: &str| {
            obj.completion
                .iter()
                .find(|t| t.tier == name)
                .and_then(|t| t.seconds)
                .unwrap()
        };
        let (sim_relay, sim_edge) = (tier("relay").max, tier("edge").p50);
        println!(
            "sim  at {:.0}% loss (live at the {:.2}% the edges saw): object offload {:.3}, live offload {:.3}, rebuilt {:.1} of {} groups (mean of {} seeds), relay done {:.3}s, edge p50 {:.3}s",
            loss * 100.0,
            live_loss * 100.0,
            obj.bytes.origin_offload_ratio,
            live_offload,
            live_rebuilt,
            EDGES * LIVE_PIECES,
            seeds.count(),
            sim_relay,
            sim_edge
        );
        assert!(
            agree(obj.bytes.origin_offload_ratio, real.object_offload, 0.0),
            "object offload at {loss}: sim {} real {}",
            obj.bytes.origin_offload_ratio,
            real.object_offload
        );
        assert!(
            agree(live_offload, real.live_offload, 0.0),
            "live offload at {loss}: sim {live_offload} real {}",
            real.live_offload
        );
        let groups = (EDGES * LIVE_PIECES) as f64;
        // HTTP framing sometimes splits a published piece into two chunks,
        // so the real stream has a few more (smaller) chunks than pieces:
        // compare rebuilt counts per the same number of chunks.
        let real_rebuilt = real.rebuilt * groups / real.groups.max(1.0);
        assert!(
            agree(live_rebuilt, real_rebuilt, 0.01 * groups),
            "FEC rebuilt at {loss}: sim {live_rebuilt} real {real_rebuilt} (of {} chunks)",
            real.groups
        );
        if loss > 0.0 {
            assert!(real.rebuilt > 0.1 * real.groups, "loss must cost parity");
        }
        // The relay holds the whole object no later than the median edge,
        // in both worlds.
        assert_eq!(
            sim_relay <= sim_edge,
            real.relay_done_s <= real.edge_done_p50_s,
            "tier order at {loss}: sim relay {sim_relay} edge {sim_edge}; real {real:?}"
        );
        assert!(real.relay_done_s <= real.edge_done_p50_s);
    }
}
