#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Edges swarm whole objects (issue #14): real nodes, real QUIC, real HTTP.
//! Every edge asked at once gets the object byte-identical, a share of the
//! bytes comes from other edges, and the origin sends it about once; after a
//! preheat an edge serves the object without fetching anything.

mod support;

use bytes::Bytes;
use dcdn_node::chunk::StreamId;
use dcdn_node::chunk::wire::{Frame, PreheatFrame, WireRole};
use dcdn_node::client::Client;
use dcdn_node::config::{Bounded, NodeConfig, Role};
use dcdn_node::crypto::Signer;
use dcdn_node::roles::framing;
use dcdn_node::transport::{ClusterCa, MeshEndpoint, MeshLimits};
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

/// A compromised relay (a cluster member with a relay certificate, so an
/// upstream in the edge's eyes) cannot make an edge pull anything the origin
/// did not sign a preheat for: a forged preheat and a replayed old one are
/// refused and counted, and only the origin-signed one starts a swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_preheat_the_origin_signed_makes_an_edge_pull() {
    let c = cluster("swarm-signed-preheat").await;
    let data = payload(OBJECT_LEN);
    publish(&c, "signed.bin", &data).await;
    let edge = edges(&c)[0];
    let object = StreamId::object_key("signed.bin");
    let version = c
        .origin()
        .running()
        .shared
        .manifests
        .lock()
        .newest(object)
        .unwrap()
        .0
        .version;

    // Mallory holds a relay certificate from the cluster CA.
    let ca = ClusterCa::load(&c.dir.join("ca.pem"), &c.dir.join("ca.key")).unwrap();
    let id = ca.issue_node("mallory", Role::Relay).unwrap();
    let ca_pem = std::fs::read_to_string(c.dir.join("ca.pem")).unwrap();
    let ep = MeshEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &ca_pem,
        MeshLimits::default(),
    )
    .unwrap();
    let pc = ep.connect(edge.mesh()).await.unwrap();
    let (mut send, mut recv) = pc.connection.open_bi().await.unwrap();
    framing::write_frame(
        &mut send,
        &Frame::Hello {
            node_name: "mallory".into(),
            role: WireRole::Relay,
            keyset_generation: 0,
        },
    )
    .await
    .unwrap();
    framing::read_frame(&mut recv, 65536, Duration::from_secs(5))
        .await
        .unwrap();

    let real = Signer::load(&c.dir.join("signing.key")).unwrap();
    let rogue = Signer::generate(&mut rand::rngs::OsRng);
    let now = dcdn_node::roles::node::unix_ms();
    let signed = |by: &Signer, timestamp_ms: u64| {
        let mut p = PreheatFrame {
            object,
            version,
            key_id: real.key_id(),
            timestamp_ms,
            signature: [0; 64],
        };
        p.signature = by.sign(&p.signing_bytes());
        Frame::Preheat(p)
    };
    let outcome = |o: &str| edge.metric("dcdn_preheats_total", &[("outcome", o)]);
    let wait_for = |o: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while outcome(o) < 1.0 {
            assert!(Instant::now() < deadline, "no preheat counted as {o}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Signed by a key the cluster does not trust, claiming the origin's id.
    framing::write_frame(&mut send, &signed(&rogue, now))
        .await
        .unwrap();
    wait_for("refused_signature").await;
    // Genuinely signed, but an hour old: a recording replayed.
    framing::write_frame(&mut send, &signed(&real, now - 3_600_000))
        .await
        .unwrap();
    wait_for("refused_stale").await;
    assert_eq!(outcome("started"), 0.0);
    assert_eq!(
        edge.metric("dcdn_swarms_total", &[("outcome", "started")]),
        0.0,
        "a refused preheat started a swarm"
    );
    // The origin's own signature, fresh: the edge swarms that version.
    framing::write_frame(&mut send, &signed(&real, now))
        .await
        .unwrap();
    wait_for("started").await;
    drop(pc);
    c.stop().await;
}

/// A relay whose uplink budget is tiny (1 Mbit/s: 100 ms is 12.5 KB, less
/// than one 16 KiB piece) admits about one edge pull at a time and answers
/// the rest "busy" (`p2p::admission`); the edges back off it, take the
/// pieces from each other, and every one still gets the object whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_says_busy_still_gets_every_edge_the_object_through_the_swarm() {
    let c = TestCluster::start(
        "swarm-busy",
        Counts {
            relays: 1,
            edges: EDGES,
        },
        swarm_config,
        |cfg| {
            if cfg.node.role == Role::Relay {
                cfg.p2p.max_upload_mbps = Bounded::new(1).unwrap();
            }
        },
    )
    .await;
    let data = payload(OBJECT_LEN);
    publish(&c, "busy.bin", &data).await;
    let gets = edges(&c).into_iter().map(|e| {
        let url = format!("{}/v1/objects/busy.bin", e.http());
        async move {
            Client::new(Duration::from_secs(60))
                .get(&url, None)
                .await
                .unwrap()
                .body
        }
    });
    for (i, body) in futures_util::future::join_all(gets)
        .await
        .iter()
        .enumerate()
    {
        assert!(body[..] == data[..], "edge {i} served other bytes");
    }
    wait_swarms_complete(&c, 1.0).await;
    let relay = &c.nodes[c.by_role(Role::Relay)[0]];
    let busy = relay.metric("dcdn_pulls_busy_total", &[]);
    let (from_edges, from_relay) = (swarm_bytes(&c, "edge"), swarm_bytes(&c, "relay"));
    println!(
        "relay answered busy {busy} times; swarm bytes from edges {from_edges}, from the relay {from_relay}"
    );
    assert!(busy > 0.0, "the relay never said busy");
    c.stop().await;
}

/// With `[p2p] swarm = false` an edge fetches only what its client reads and
/// refuses preheats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_swarming_off_edges_fetch_only_what_clients_read() {
    let c = TestCluster::start(
        "swarm-off",
        Counts {
            relays: 1,
            edges: 2,
        },
        |c| {
            swarm_config(c);
            c.p2p.swarm = false;
        },
        |_| {},
    )
    .await;
    let data = payload(OBJECT_LEN);
    publish(&c, "off.bin", &data).await;
    let client = Client::new(Duration::from_secs(60));
    let resp = client
        .send(
            hyper::Method::POST,
            &format!("{}/v1/objects/off.bin/preheat", c.origin().http()),
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::empty(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 202);
    let first = edges(&c)[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.metric("dcdn_preheats_total", &[("outcome", "refused_swarm_off")]) < 1.0 {
        assert!(Instant::now() < deadline, "the preheat was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client reads the first 16 KiB: the edge fetches about that, not the
    // object.
    let got = client
        .send(
            hyper::Method::GET,
            &format!("{}/v1/objects/off.bin", first.http()),
            None,
            &[(hyper::header::RANGE, "bytes=0-16383".to_owned())],
            axum::body::Body::empty(),
        )
        .await
        .unwrap();
    assert_eq!(&got.body[..], &data[..16384]);
    // A swarm starts (or not) before the response's headers are sent.
    for e in edges(&c) {
        assert_eq!(
            e.metric("dcdn_swarms_total", &[("outcome", "started")]),
            0.0,
            "{} swarmed with swarming off",
            e.name
        );
    }
    let pulled = first.metric("dcdn_chunks_total", &[("direction", "in")]);
    assert!(
        pulled <= 8.0,
        "the edge pulled {pulled} of 65 chunks for a 1-chunk read"
    );
    c.stop().await;
}
