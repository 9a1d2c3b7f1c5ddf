#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Edges swarm whole objects (issue #14): real nodes, real QUIC, real HTTP.
//! Every edge asked at once gets the object byte-identical, a share of the
//! bytes comes from other edges, and the origin sends it about once; after a
//! preheat an edge serves the object without fetching anything.

mod support;

use bytes::Bytes;
use dcdn_node::client::Client;
use dcdn_node::config::{Bounded, NodeConfig, Role};
use dcdn_node::up::plan::Counts;
use std::time::{Duration, Instant};
use support::cluster::{TestCluster, TestNode};

const EDGES: usize = 5;
const CHUNK_KB: u64 = 16;
/// 65 pieces of 16 KiB, the last one short: enough to trade, few enough
/// that signature checks in an unoptimized build do not dominate.
const OBJECT_LEN: usize = (1 << 20) + 1234;

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 7) as u8)
        .collect()
}

fn swarm_config(c: &mut NodeConfig) {
    c.origin.chunk_size_kb = Bounded::new(CHUNK_KB).unwrap();
    // Choke rounds every second, so trade starts within the test.
    c.p2p.unchoke_interval_seconds = Bounded::new(1).unwrap();
}

async fn cluster(tag: &str) -> TestCluster {
    TestCluster::start(
        tag,
        Counts {
            relays: 1,
            edges: EDGES,
        },
        swarm_config,
        |_| {},
    )
    .await
}

async fn publish(c: &TestCluster, name: &str, data: &[u8]) {
    let client = Client::new(Duration::from_secs(60));
    let body =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
    client
        .put_stream(
            &format!("{}/v1/objects/{name}", c.origin().http()),
            Some(&c.plan.ingest_token),
            body,
        )
        .await
        .unwrap();
}

fn edges(c: &TestCluster) -> Vec<&TestNode> {
    c.by_role(Role::Edge)
        .into_iter()
        .map(|i| &c.nodes[i])
        .collect()
}

/// Waits until every edge finished a swarm `times` times.
async fn wait_swarms_complete(c: &TestCluster, times: f64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done: Vec<f64> = edges(c)
            .iter()
            .map(|e| e.metric("dcdn_swarms_total", &[("outcome", "complete")]))
            .collect();
        if done.iter().all(|&d| d >= times) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "swarms did not complete: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn swarm_bytes(c: &TestCluster, from: &str) -> f64 {
    edges(c)
        .iter()
        .map(|e| e.metric("dcdn_swarm_bytes_total", &[("from", from)]))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_edge_asked_at_once_gets_the_object_and_edges_feed_each_other() {
    let c = cluster("swarm-burst").await;
    let data = payload(OBJECT_LEN);
    publish(&c, "release.bin", &data).await;
    let started = Instant::now();
    let gets = edges(&c).into_iter().map(|e| {
        let url = format!("{}/v1/objects/release.bin", e.http());
        async move {
            let body = Client::new(Duration::from_secs(60))
                .get(&url, None)
                .await
                .unwrap()
                .body;
            (body, started.elapsed())
        }
    });
    let got = futures_util::future::join_all(gets).await;
    for (i, (body, took)) in got.iter().enumerate() {
        assert!(body[..] == data[..], "edge {i} served other bytes");
        println!("edge {i}: client read done in {took:?}");
    }
    wait_swarms_complete(&c, 1.0).await;
    println!("every swarm complete after {:?}", started.elapsed());
    // Every edge holds the whole object now.
    for e in edges(&c) {
        let held = e.running().shared.store.stats().bytes;
        assert!(held >= OBJECT_LEN, "{} holds {held} bytes", e.name);
    }
    // A warm object has nothing to swarm for: reading it again must not
    // start (and at once end) a swarm per request.
    let started_before: Vec<f64> = edges(&c)
        .iter()
        .map(|e| e.metric("dcdn_swarms_total", &[("outcome", "started")]))
        .collect();
    for e in edges(&c) {
        for _ in 0..3 {
            let body = Client::new(Duration::from_secs(60))
                .get(&format!("{}/v1/objects/release.bin", e.http()), None)
                .await
                .unwrap()
                .body;
            assert!(body[..] == data[..], "{} served other bytes", e.name);
        }
    }
    let started_after: Vec<f64> = edges(&c)
        .iter()
        .map(|e| e.metric("dcdn_swarms_total", &[("outcome", "started")]))
        .collect();
    assert_eq!(
        started_before, started_after,
        "reading a whole-held object started swarms"
    );
    let (from_edges, from_relay) = (swarm_bytes(&c, "edge"), swarm_bytes(&c, "relay"));
    let share = from_edges / (from_edges + from_relay).max(1.0);
    let origin_out = c
        .origin()
        .metric("dcdn_bytes_total", &[("direction", "out")]);
    println!(
        "swarm bytes: from edges {from_edges}, from the relay {from_relay} (edge share {:.1} %); \
         origin sent {:.2} x the object",
        share * 100.0,
        origin_out / OBJECT_LEN as f64
    );
    assert!(
        share >= 0.10,
        "edges got only {:.1} % of swarm bytes from each other",
        share * 100.0
    );
    assert!(
        origin_out <= 1.25 * OBJECT_LEN as f64,
        "the origin sent {origin_out} bytes for a {OBJECT_LEN}-byte object"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_preheat_edges_serve_the_object_without_fetching() {
    let c = cluster("swarm-preheat").await;
    let data = payload(OBJECT_LEN);
    publish(&c, "preheated.bin", &data).await;
    let client = Client::new(Duration::from_secs(30));
    // Without the ingest token: refused, nothing preheated.
    let url = format!("{}/v1/objects/preheated.bin/preheat", c.origin().http());
    let refused = client
        .send(
            hyper::Method::POST,
            &url,
            None,
            &[],
            axum::body::Body::empty(),
        )
        .await;
    assert!(refused.is_err(), "a preheat without a token was accepted");
    let unknown = client
        .send(
            hyper::Method::POST,
            &format!("{}/v1/objects/nothing.bin/preheat", c.origin().http()),
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::empty(),
        )
        .await;
    assert!(
        unknown.is_err(),
        "a preheat of an unknown object was accepted"
    );
    let resp = client
        .send(
            hyper::Method::POST,
            &url,
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::empty(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 202);
    let answer: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(answer["peers_told"], 1, "the origin tells its one relay");
    wait_swarms_complete(&c, 1.0).await;
    for e in edges(&c) {
        assert_eq!(
            e.metric("dcdn_preheats_total", &[("outcome", "started")]),
            1.0,
            "{} did not start a preheat",
            e.name
        );
    }
    // No client asked yet; now each one does, and no edge fetches anything.
    for e in edges(&c) {
        let pulls_before = e.metric("dcdn_chunks_total", &[("direction", "in")]);
        let body = client
            .get(&format!("{}/v1/objects/preheated.bin", e.http()), None)
            .await
            .unwrap()
            .body;
        assert!(body[..] == data[..], "{} served other bytes", e.name);
        let pulls_after = e.metric("dcdn_chunks_total", &[("direction", "in")]);
        assert_eq!(
            pulls_after, pulls_before,
            "{} fetched chunks for a client after the preheat",
            e.name
        );
    }
    c.stop().await;
}
