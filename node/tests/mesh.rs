#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Multi-node tests of the data plane: real QUIC between in-process nodes
//! on loopback, real certificates, signatures and HTTP.

mod support;

use bytes::Bytes;
use dcdn_node::chunk::wire::{Frame, ShardFrame, WireRole};
use dcdn_node::chunk::{ChunkId, StreamId};
use dcdn_node::client::{Client, ClientError};
use dcdn_node::config::Role;
use dcdn_node::crypto::Signer;
use dcdn_node::fec::Encoder;
use dcdn_node::roles::framing;
use dcdn_node::roles::mesh::CLOSE_BANNED;
use dcdn_node::transport::{ClusterCa, MeshEndpoint, MeshLimits, NodeIdentity};
use dcdn_node::up::plan::Counts;
use std::time::{Duration, Instant};
use support::cluster::TestCluster;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

async fn publish_object(c: &TestCluster, name: &str, data: &[u8]) {
    let client = Client::new(Duration::from_secs(30));
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

/// A published stretch of a live stream. HTTP does not keep the sender's
/// piece boundaries, so chunk boundaries are whatever arrived together:
/// compare concatenations, not pieces.
struct Live {
    first: u64,
    chunks: usize,
    bytes: Vec<u8>,
}

/// Publishes `n` live pieces paced `gap` apart.
async fn publish_live(c: &TestCluster, name: &str, n: usize, len: usize, gap: Duration) -> Live {
    publish_live_from(&c.origin().http(), &c.plan.ingest_token, name, n, len, gap).await
}

async fn publish_live_from(
    origin: &str,
    token: &str,
    name: &str,
    n: usize,
    len: usize,
    gap: Duration,
) -> Live {
    let client = Client::new(Duration::from_secs(60));
    let pieces: Vec<Vec<u8>> = (0..n).map(|i| payload(i as u64, len)).collect();
    let bytes = pieces.concat();
    let paced = futures_util::stream::unfold(pieces.into_iter(), move |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(gap).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(next)), it))
    });
    let resp = client
        .put_stream(&format!("{origin}/v1/streams/{name}"), Some(token), paced)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["len"], bytes.len() as u64);
    Live {
        first: v["first_seq"].as_u64().unwrap(),
        chunks: v["chunks"].as_u64().unwrap() as usize,
        bytes,
    }
}

/// Fetches every chunk of `live` from `edge`; returns how many arrived and
/// whether their concatenation is byte-identical to what was published.
async fn fetch_live_all(edge: &str, name: &str, live: &Live) -> (usize, bool) {
    let client = Client::new(Duration::from_secs(20));
    let mut got = 0;
    let mut joined = Vec::with_capacity(live.bytes.len());
    for i in 0..live.chunks {
        let url = format!("{edge}/v1/streams/{name}/{}", live.first + i as u64);
        if let Ok(resp) = client.get(&url, None).await {
            got += 1;
            joined.extend_from_slice(&resp.body);
        }
    }
    if joined != live.bytes && std::env::var("DCDN_TEST_DEBUG").is_ok() {
        let at = joined.iter().zip(&live.bytes).position(|(a, b)| a != b);
        println!(
            "MISMATCH: joined {} published {} first diff at {at:?}",
            joined.len(),
            live.bytes.len()
        );
    }
    (got, joined == live.bytes)
}

fn small(c: &mut dcdn_node::config::NodeConfig) {
    c.storage.ring_buffer_size_mb = dcdn_node::config::Bounded::new(64).unwrap();
    c.origin.chunk_size_kb = dcdn_node::config::Bounded::new(64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_and_live_streams_arrive_byte_identical_at_every_edge() {
    let c = TestCluster::start(
        "e2e",
        Counts {
            relays: 1,
            edges: 3,
        },
        small,
        |_| {},
    )
    .await;
    let object = payload(99, 3 * 65536 + 12345);
    publish_object(&c, "dir/thing.bin", &object).await;
    let live = publish_live(&c, "cam", 30, 20_000, Duration::from_millis(5)).await;
    let client = Client::new(Duration::from_secs(20));
    for e in c.by_role(Role::Edge) {
        let edge = c.nodes[e].http();
        let got = client
            .get(&format!("{edge}/v1/objects/dir/thing.bin"), None)
            .await
            .unwrap();
        assert_eq!(got.body.len(), object.len());
        assert!(got.body[..] == object[..], "object differs at {edge}");
        assert_eq!(
            fetch_live_all(&edge, "cam", &live).await,
            (live.chunks, true),
            "live at {edge}"
        );
    }
    // Every chunk an edge holds was verified; nothing was rejected.
    for e in c.by_role(Role::Edge) {
        assert_eq!(c.nodes[e].metric("dcdn_chunks_rejected_total", &[]), 0.0);
        assert!(c.nodes[e].metric("dcdn_chunks_verified_total", &[]) > 0.0);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fec_rebuilds_pushed_chunks_under_datagram_loss() {
    const N: usize = 200;
    const LEN: usize = 16_000;
    for loss in [0.0, 0.01, 0.05, 0.10] {
        let (c, proxy) = TestCluster::start_with_lossy_relay_link(
            "loss",
            Counts {
                relays: 1,
                edges: 1,
            },
            small,
            loss,
        )
        .await;
        let edge_i = c.by_role(Role::Edge)[0];
        // The edge is Ready once its hello is through; its subscription is
        // a later frame, retransmitted on loss. Chunks published before the
        // relay has it are never pushed (the edge repairs them by pull),
        // which is not what this test measures: start once it is there.
        wait_subscribed(&c, c.by_role(Role::Relay)[0], edge_i).await;
        let live = publish_live(&c, "loss", N, LEN, Duration::from_millis(5)).await;
        let edge = &c.nodes[edge_i];
        settle_pushes(edge, &live).await;
        let pushed = edge.metric(
            "dcdn_chunks_total",
            &[("direction", "in"), ("path", "push")],
        );
        let (good, identical) = fetch_live_all(&edge.http(), "loss", &live).await;
        let pulled = edge.metric(
            "dcdn_chunks_total",
            &[("direction", "in"), ("path", "pull")],
        );
        let rebuilt = edge.metric("dcdn_fec_groups_total", &[("outcome", "rebuilt")]);
        if std::env::var("DCDN_TEST_DEBUG").is_ok() {
            println!("EDGE\n{}", edge.running().shared.metrics.render().unwrap());
            let relay = &c.nodes[c.by_role(Role::Relay)[0]];
            println!(
                "RELAY\n{}",
                relay.running().shared.metrics.render().unwrap()
            );
        }
        println!(
            "loss {:>4.1}%: {good}/{} delivered; {pushed} by push ({rebuilt} rebuilt with parity), {pulled} repaired; proxy dropped {}",
            loss * 100.0,
            live.chunks,
            proxy
                .stats
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        assert_eq!(
            (good, identical),
            (live.chunks, true),
            "every chunk delivered at {loss}"
        );
        // FEC carries the stream; a repair is the designed fallback for a
        // group that lost more shards than it had parity (at 5 % that
        // happens to a few groups before the adaptive parity has caught
        // up: 0–4 of 212 seen in repeated runs). Runs that repaired 12–22
        // were QUIC's black-hole detection, fooled by the random loss,
        // dropping every queued shard sized above the minimum MTU (see
        // `pushes_survive_the_path_mtu_falling_to_the_minimum`).
        let floor = match loss {
            l if l <= 0.01 => 0.99,
            l if l <= 0.05 => 0.95,
            _ => 0.0,
        };
        let n = live.chunks as f64;
        assert!(
            pushed >= floor * n,
            "at {loss}: only {pushed} of {n} by FEC"
        );
        c.stop().await;
    }
}

/// Waits until `edge` holds every chunk of `live` or has held the same
/// number for 2 s (at most 20 s): pushes still in flight land before
/// anything is asked for, so a repair is counted only where a push really
/// did not arrive.
async fn settle_pushes(edge: &support::cluster::TestNode, live: &Live) {
    let mut last = -1.0;
    let mut stable = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = edge.metric("dcdn_chunks_verified_total", &[]);
        if now >= live.chunks as f64 {
            return;
        }
        stable = if now == last { stable + 1 } else { 0 };
        if stable >= 20 {
            return;
        }
        last = now;
    }
}

/// The path between a relay and an edge shrinks to QUIC's minimum MTU
/// after the connection discovered a larger one (a route moved into a
/// tunnel), unannounced: the relay's pushed shards must still arrive, none
/// dropped for their size. Sized to the discovered MTU, every shard of the
/// chunks pushed until QUIC judged the path a black hole was lost, and
/// quinn then silently discarded the queued ones too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_survive_the_path_mtu_falling_to_the_minimum() {
    let (c, proxy) = TestCluster::start_with_lossy_relay_link(
        "mtu",
        Counts {
            relays: 1,
            edges: 1,
        },
        small,
        0.0,
    )
    .await;
    let (relay_i, edge_i) = (c.by_role(Role::Relay)[0], c.by_role(Role::Edge)[0]);
    wait_subscribed(&c, relay_i, edge_i).await;
    let relay_path = || async {
        let client = Client::new(Duration::from_secs(5));
        let resp = client
            .get(
                &format!("{}/v1/peers", c.nodes[relay_i].admin()),
                Some(&c.plan.admin_token),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        let p = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(c.nodes[edge_i].name.as_str()))
            .cloned()
            .unwrap();
        (
            p["mtu"].as_u64().unwrap(),
            p["black_holes"].as_u64().unwrap(),
        )
    };
    // MTU discovery first raises the path above the minimum...
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay_path().await.0 <= 1200 {
        assert!(
            Instant::now() < deadline,
            "QUIC never raised the relay-edge MTU above 1200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...then the path carries 1200-byte UDP payloads and no more.
    proxy
        .max_packet
        .store(1200, std::sync::atomic::Ordering::Relaxed);
    let live = publish_live(&c, "mtu", 100, 16_000, Duration::from_millis(5)).await;
    let edge = &c.nodes[edge_i];
    settle_pushes(edge, &live).await;
    let pushed = edge.metric(
        "dcdn_chunks_total",
        &[("direction", "in"), ("path", "push")],
    );
    let (good, identical) = fetch_live_all(&edge.http(), "mtu", &live).await;
    assert_eq!((good, identical), (live.chunks, true));
    assert_eq!(
        pushed, live.chunks as f64,
        "every chunk arrives by push through the smaller path"
    );
    c.stop().await;
}

/// Reads every acknowledged chunk of `live` through `edge`; panics naming
/// the first one not served, and if the stream read back differs.
async fn read_every_chunk(edge: &str, name: &str, live: &Live) {
    let client = Client::new(Duration::from_secs(20));
    let mut joined = Vec::with_capacity(live.bytes.len());
    for i in 0..live.chunks as u64 {
        let seq = live.first + i;
        match client
            .get(&format!("{edge}/v1/streams/{name}/{seq}"), None)
            .await
        {
            Ok(r) => joined.extend_from_slice(&r.body),
            Err(e) => panic!(
                "{name} chunk {seq} ({} of {}), acknowledged, is not served: {e}",
                i + 1,
                live.chunks
            ),
        }
    }
    assert!(joined == live.bytes, "{name} read back differs");
}

/// An edge's relays as its admin API sees them: (name, whether the edge
/// takes pushes from it, new chunks it pushed to the edge).
async fn relays_seen_by(c: &TestCluster, edge: usize) -> Vec<(String, bool, u64)> {
    let client = Client::new(Duration::from_secs(5));
    let resp = client
        .get(
            &format!("{}/v1/peers", c.nodes[edge].admin()),
            Some(&c.plan.admin_token),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "relay")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["push_upstream"].as_bool().unwrap(),
                p["chunks_pushed_in"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits (up to 30 s) until `relay` lists `edge` as subscribed to its pushes.
async fn wait_subscribed(c: &TestCluster, relay: usize, edge: usize) {
    let client = Client::new(Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let name = &c.nodes[edge].name;
    loop {
        let resp = client
            .get(
                &format!("{}/v1/peers", c.nodes[relay].admin()),
                Some(&c.plan.admin_token),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        let subscribed = v["peers"].as_array().unwrap().iter().any(|p| {
            p["name"].as_str() == Some(name.as_str()) && p["subscribed"].as_bool() == Some(true)
        });
        if subscribed {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never subscribed to {}'s pushes",
            c.nodes[relay].name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Chunks `relay` has pushed to `edge` so far (0 when not connected).
async fn pushed_by(c: &TestCluster, edge: usize, relay: &str) -> u64 {
    relays_seen_by(c, edge)
        .await
        .into_iter()
        .find(|r| r.0 == relay)
        .map_or(0, |r| r.2)
}

/// Waits (up to 30 s) until `edge` takes pushes from a relay other than
/// `not`, and returns that relay's name.
async fn wait_push_upstream(c: &TestCluster, edge: usize, not: Option<&str>) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let relays = relays_seen_by(c, edge).await;
        if let Some(r) = relays.iter().find(|r| r.1 && Some(r.0.as_str()) != not) {
            return r.0.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never took pushes from a relay other than {not:?}: {relays:?}",
            c.nodes[edge].name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay that is really pushing to the edges dies as in a crash
/// (SIGKILL: no close frame, the edges learn it from the QUIC idle timeout)
/// while a live stream flows. Every edge it fed must subscribe to the other
/// relay, which must then push to it, and no chunk may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pushing_relay_sigkilled_mid_stream_fails_pushes_over_and_loses_no_chunk() {
    const N: usize = 200;
    const LEN: usize = 8000;
    let (plan, dir) = TestCluster::plan(
        "kill",
        Counts {
            relays: 2,
            edges: 2,
        },
        |cfg| {
            small(cfg);
            // A dead peer is noticed after the idle timeout: keep it short.
            cfg.quic.idle_timeout_ms = dcdn_node::config::Bounded::new(2_000).unwrap();
            cfg.quic.keep_alive_ms = dcdn_node::config::Bounded::new(500).unwrap();
        },
    );
    // Relays run as processes so that one can be SIGKILLed.
    let mut c =
        TestCluster::start_planned_with_processes(plan, dir, |_| {}, |r| r == Role::Relay).await;
    let edges = c.by_role(Role::Edge);
    let mut pushing = Vec::new();
    for &e in &edges {
        pushing.push(wait_push_upstream(&c, e, None).await);
    }
    let victim_name = pushing[0].clone();
    let victim = c.nodes.iter().position(|n| n.name == victim_name).unwrap();
    let fed: Vec<usize> = edges
        .iter()
        .zip(&pushing)
        .filter(|(_, p)| **p == victim_name)
        .map(|(e, _)| *e)
        .collect();

    let origin = c.origin().http();
    let token = c.plan.ingest_token.clone();
    let publisher = tokio::spawn(async move {
        publish_live_from(&origin, &token, "k", N, LEN, Duration::from_millis(20)).await
    });
    // Kill it once its pushes are flowing, not at a guessed moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pushed_by(&c, fed[0], &victim_name).await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{victim_name} never pushed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[victim].kill_process();
    let mut before = Vec::new();
    for &e in &fed {
        let next = wait_push_upstream(&c, e, Some(&victim_name)).await;
        before.push((e, next.clone(), pushed_by(&c, e, &next).await));
    }
    let live = publisher.await.unwrap();
    // A second stream, published after every fed edge has failed over, can
    // reach them by push only from the survivor.
    let live2 = publish_live(&c, "k2", 20, LEN, Duration::from_millis(10)).await;
    for (e, next, at_failover) in &before {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = pushed_by(&c, *e, next).await;
            println!(
                "{}: {now} chunks pushed by {next}, {at_failover} of them before it took over",
                c.nodes[*e].name
            );
            if now >= at_failover + live2.chunks as u64 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: only {} chunks pushed by {next} after the failover, {} published",
                c.nodes[*e].name,
                now - at_failover,
                live2.chunks
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for e in c.by_role(Role::Edge) {
        for (name, l) in [("k", &live), ("k2", &live2)] {
            let got = fetch_live_all(&c.nodes[e].http(), name, l).await;
            assert_eq!(
                got,
                (l.chunks, true),
                "edge {} lost chunks of {name}",
                c.nodes[e].name
            );
        }
    }
    c.stop().await;
}

/// A fresh edge certificate from the cluster CA.
fn member_identity(c: &TestCluster, name: &str) -> NodeIdentity {
    let ca = ClusterCa::load(&c.dir.join("ca.pem"), &c.dir.join("ca.key")).unwrap();
    ca.issue_node(name, Role::Edge).unwrap()
}

/// Connects to `addr` as a cluster member with a fresh edge certificate and
/// does the hello exchange; returns the connection.
async fn member_connection(c: &TestCluster, addr: std::net::SocketAddr) -> quinn::Connection {
    member_connection_as(c, &member_identity(c, "mallory"), addr)
        .await
        .unwrap()
}

/// Connects to `addr` as `id` (trusting the cluster CA) and does the hello
/// exchange; the error says how the node refused (its close code, when it
/// closed the connection).
async fn member_connection_as(
    c: &TestCluster,
    id: &NodeIdentity,
    addr: std::net::SocketAddr,
) -> Result<quinn::Connection, String> {
    let ca_pem = std::fs::read_to_string(c.dir.join("ca.pem")).unwrap();
    let ep = MeshEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        id,
        &ca_pem,
        MeshLimits::default(),
    )
    .unwrap();
    let pc = ep.connect(addr).await.map_err(|e| e.to_string())?;
    let refused = |e: String| match pc.connection.close_reason() {
        Some(reason) => format!("{e}; connection closed: {reason}"),
        None => e,
    };
    let (mut send, mut recv) = pc
        .connection
        .open_bi()
        .await
        .map_err(|e| refused(e.to_string()))?;
    framing::write_frame(
        &mut send,
        &Frame::Hello {
            node_name: "mallory".into(),
            role: WireRole::Edge,
            keyset_generation: 0,
        },
    )
    .await
    .map_err(|e| refused(e.to_string()))?;
    framing::read_frame(&mut recv, 65536, Duration::from_secs(5))
        .await
        .map_err(|e| refused(e.to_string()))?;
    // Keep the endpoint alive with the connection.
    std::mem::forget(ep);
    std::mem::forget((send, recv));
    Ok(pc.connection)
}

async fn send_chunk_as_shards(
    conn: &quinn::Connection,
    chunk: dcdn_node::chunk::Chunk,
    flip: bool,
) {
    let bytes = Frame::Chunk(chunk.clone()).to_bytes();
    let mut shards = Encoder::new()
        .encode_chunk(chunk.id(), &bytes, 1000, 16, 2)
        .unwrap();
    if flip {
        for s in &mut shards {
            let mut d = s.data.to_vec();
            let mid = d.len() / 2;
            d[mid] ^= 0x10;
            s.data = Bytes::from(d);
        }
    }
    for s in shards {
        let _ = conn.send_datagram_wait(Frame::Shard(s).to_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malicious_peer_is_banned_kept_out_and_nothing_corrupt_is_served() {
    let c = TestCluster::start(
        "evil",
        Counts {
            relays: 1,
            edges: 1,
        },
        small,
        |_| {},
    )
    .await;
    let edge_i = c.by_role(Role::Edge)[0];
    let edge = &c.nodes[edge_i];
    let mallory = member_identity(&c, "mallory");
    let mallory_id = mallory.peer_id().unwrap();
    let conn = member_connection_as(&c, &mallory, edge.mesh())
        .await
        .unwrap();
    let real = Signer::load(&c.dir.join("signing.key")).unwrap();
    let rogue = Signer::generate(&mut rand::rngs::OsRng);
    let stream = StreamId::live("victim");
    let now = dcdn_node::roles::node::unix_ms();
    for seq in 0..3u64 {
        // Forged: signed by a rogue key but claiming the cluster key's id.
        let mut forged = rogue.sign_chunk(
            ChunkId::new(stream, seq),
            Bytes::from(vec![0xEE; 3000]),
            now,
        );
        forged.header.key_id = real.key_id();
        send_chunk_as_shards(&conn, forged, false).await;
    }
    // Bit-flipped shards of an otherwise valid-looking chunk.
    let valid_looking =
        real.sign_chunk(ChunkId::new(stream, 10), Bytes::from(vec![0xAB; 3000]), now);
    send_chunk_as_shards(&conn, valid_looking, true).await;
    // The ban closes the connection with the ban's code: wait for it.
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the malicious peer must be disconnected");
    assert_eq!(
        application_close_code(&closed),
        Some(CLOSE_BANNED),
        "closed with {closed:?}"
    );
    let rejected = edge.metric("dcdn_chunks_rejected_total", &[]);
    assert!(rejected >= 3.0, "rejections: {rejected}");
    let shared = &edge.running().shared;
    assert!(
        shared
            .reputation
            .lock()
            .is_banned(mallory_id, std::time::Instant::now()),
        "the reputation must hold the ban"
    );
    shared.refresh_gauges();
    assert_eq!(edge.metric("dcdn_peers", &[("state", "banned")]), 1.0);
    // Reconnecting with the same certificate is refused for the ban's
    // duration: the connection is closed with the ban's code before the
    // hello is answered, and the refusal is counted.
    let err = match member_connection_as(&c, &mallory, edge.mesh()).await {
        Ok(_) => panic!("a banned peer's reconnect must be refused"),
        Err(e) => e,
    };
    assert!(err.contains("403"), "refused with: {err}");
    assert!(edge.metric("dcdn_handshakes_refused_total", &[("reason", "banned")]) >= 1.0);
    assert!(edge.metric("dcdn_banned_refused_total", &[("path", "handshake")]) >= 1.0);
    // The real stream, published afterwards, is what the edge serves.
    let live = publish_live(&c, "victim", 12, 3000, Duration::from_millis(5)).await;
    assert_eq!(live.first, 0);
    assert_eq!(
        fetch_live_all(&edge.http(), "victim", &live).await,
        (live.chunks, true)
    );
    // The honest relay is not banned: the edge is still connected to it.
    assert!(shared.peer_list_len() >= 1);
    shared.refresh_gauges();
    assert_eq!(edge.metric("dcdn_peers", &[("state", "banned")]), 1.0);
    c.stop().await;
}

fn application_close_code(e: &quinn::ConnectionError) -> Option<u32> {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            u32::try_from(close.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_cluster_credentials_cannot_connect() {
    let c = TestCluster::start(
        "stranger",
        Counts {
            relays: 1,
            edges: 1,
        },
        small,
        |_| {},
    )
    .await;
    let relay = &c.nodes[c.by_role(Role::Relay)[0]];
    // The stranger's certificate comes from another CA, but it trusts the
    // cluster's CA: it accepts the relay's certificate, so only the relay's
    // check of the client certificate can refuse it.
    let other = ClusterCa::generate("elsewhere").unwrap();
    let id = other.issue_node("stranger", Role::Edge).unwrap();
    let cluster_ca = std::fs::read_to_string(c.dir.join("ca.pem")).unwrap();
    let ep = MeshEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &cluster_ca,
        MeshLimits::default(),
    )
    .unwrap();
    let refused = match ep.connect(relay.mesh()).await {
        Err(e) => e,
        Ok(pc) => {
            // TLS 1.3 may finish the client's side before the server has
            // judged its certificate: the refusal is the connection closing.
            let closed = tokio::time::timeout(Duration::from_secs(10), pc.connection.closed())
                .await
                .expect("the relay must close a stranger's connection");
            dcdn_node::transport::TransportError::Handshake {
                addr: relay.mesh(),
                message: closed.to_string(),
            }
        }
    };
    println!("stranger refused: {refused}");
    // The relay refused (the stranger trusts the relay's certificate).
    assert!(
        refused.to_string().contains("by peer"),
        "refused by the stranger itself, not the relay: {refused}"
    );
    // Wait for the relay to count it, rather than sleeping.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.metric("dcdn_handshakes_refused_total", &[]) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing of the stranger reached the relay's peer map.
    assert!(
        relay.running().shared.peer_list_len() <= 2,
        "only the cluster's own nodes are peers"
    );
    c.stop().await;
}

/// Resident memory of this process (the nodes run in it), from procfs.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_hostile_fec_headers_stays_under_the_reassembly_cap_in_real_memory() {
    let c = TestCluster::start(
        "flood",
        Counts {
            relays: 1,
            edges: 1,
        },
        |cfg| {
            small(cfg);
            cfg.storage.reassembly_memory_mb = dcdn_node::config::Bounded::new(1).unwrap();
        },
        |_| {},
    )
    .await;
    let edge = &c.nodes[c.by_role(Role::Edge)[0]];
    let conn = member_connection(&c, edge.mesh()).await;
    // Each datagram is ~40 bytes and declares the most a header can: the
    // most blocks, 256 shards a group. Before the fix one of them made the
    // edge hold ~2 MiB, so this flood cost ~800 MiB.
    const DATAGRAMS: u64 = 400;
    // k = 1 completes its block at once (the edge keeps the block and, before
    // the fix, a slot for every declared block); k = 2 keeps a group of 256
    // shard slots open.
    let hostile = |seq: u64, blocks: u16| ShardFrame {
        chunk: ChunkId::new(StreamId(7), seq),
        block: blocks - 1,
        blocks,
        k: 1 + u16::from(seq % 4 == 1),
        m: 254,
        index: 0,
        block_len: 1,
        data: Bytes::from_static(&[0xAA]),
    };
    let before = rss_bytes();
    let mut peak = before;
    let mut max_held = 0;
    for seq in 0..DATAGRAMS {
        // Half declare more blocks than any chunk has, half the most a
        // 4 MiB chunk can have.
        let blocks = if seq % 2 == 0 { u16::MAX } else { 16_000 };
        let _ = conn
            .send_datagram_wait(Frame::Shard(hostile(seq, blocks)).to_bytes())
            .await;
        if seq % 50 == 0 {
            peak = peak.max(rss_bytes());
            max_held = max_held.max(edge.running().shared.assembler.lock().stats().bytes_held);
        }
    }
    // Wait until the edge has seen the whole flood: every datagram is
    // either refused or held (or dropped for the cap).
    let shared = &edge.running().shared;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let refused = edge.metric("dcdn_fec_groups_total", &[("outcome", "refused")]);
        let st = shared.assembler.lock().stats();
        peak = peak.max(rss_bytes());
        max_held = max_held.max(st.bytes_held);
        let taken = refused as u64 + st.chunks_pending as u64 + st.dropped_for_cap + st.expired;
        if taken >= DATAGRAMS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edge did not take the flood in: refused {refused}, {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grew = peak.saturating_sub(before);
    let st = shared.assembler.lock().stats();
    println!(
        "hostile flood of {DATAGRAMS} datagrams: process RSS grew {:.1} MiB (peak {:.1} MiB), \
         assembler held at most {max_held} bytes, dropped {} groups for the cap",
        grew as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
        st.dropped_for_cap
    );
    assert!(max_held <= 1 << 20, "held {max_held}");
    // Allocator and runtime noise stay well under this; the old
    // amplification was ~2 MiB a datagram.
    assert!(grew < 64 << 20, "process memory grew {grew} bytes");
    assert!(
        edge.metric("dcdn_fec_groups_total", &[("outcome", "refused")]) >= (DATAGRAMS / 2) as f64,
        "headers declaring more blocks than a chunk has must be refused"
    );
    c.stop().await;
}

/// A rollout restarts relays, then the origin. An edge asked for an object
/// whose manifest it holds while its relay has just restarted (empty
/// cache) and the origin is down must not answer 404 for an object that
/// exists: it waits for the restart (bounded) and serves the bytes, or
/// says 503. Seen on the pods runner before: `relay does not have …/0`
/// turned into a 404 mid-rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_read_while_relay_and_origin_restart_is_served_never_404() {
    let mut c = TestCluster::start(
        "restart-read",
        Counts {
            relays: 1,
            edges: 1,
        },
        |cfg| {
            small(cfg);
            // The edge must hold nothing but the manifest: no swarm pulling
            // the whole object once it is asked for.
            cfg.p2p.swarm = false;
        },
        |_| {},
    )
    .await;
    let object = payload(7, 5 * 65536 + 999);
    publish_object(&c, "roll/obj.bin", &object).await;
    let edge = c.nodes[c.by_role(Role::Edge)[0]].http();
    let url = format!("{edge}/v1/objects/roll/obj.bin");
    let client = Client::new(Duration::from_secs(30));
    // The edge learns the manifest and chunk 0 (HEAD pays for what
    // decides the status), nothing else.
    let head = client
        .send(
            hyper::Method::HEAD,
            &url,
            None,
            &[],
            axum::body::Body::empty(),
        )
        .await
        .unwrap();
    assert_eq!(head.status.as_u16(), 200);
    let origin = c.by_role(Role::Origin)[0];
    let relay = c.by_role(Role::Relay)[0];
    c.nodes[origin].stop().await;
    c.nodes[relay].stop().await;
    c.restart_node(relay).await;

    // Origin down, relay empty: a bounded wait, then an error the client
    // sees (HEAD fetched chunk 0, so the 200 is sent and the body cut
    // short), never a 404 and never a body that looks whole.
    let t = Instant::now();
    match client.get(&url, None).await {
        Err(ClientError::Status { status, body, .. }) => {
            assert_eq!(status.as_u16(), 503, "{body}");
        }
        Err(ClientError::Transport { .. }) => {}
        Ok(r) => panic!(
            "the origin is down, yet {} with {} bytes",
            r.status,
            r.body.len()
        ),
        Err(e) => panic!("expected 503 or a cut body with the origin down, got {e}"),
    }
    let waited = t.elapsed();
    println!("the read failed after {waited:?} with the origin down");
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");

    // The origin comes back while a read waits: the read is served whole.
    let reader = {
        let url = url.clone();
        tokio::spawn(async move { Client::new(Duration::from_secs(30)).get(&url, None).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart_node(origin).await;
    let got = reader
        .await
        .unwrap()
        .expect("a read across the origin restart");
    assert!(got.body[..] == object[..], "body differs");
    c.stop().await;
}

/// An origin told to stop (SIGTERM in a pod, which is `Running::shutdown`)
/// while a live upload is in flight finishes the upload, and every chunk it
/// acknowledged is then read through the edge with the origin gone: what a
/// publisher was told is held was handed downstream before the origin left.
/// Before the ordered drain the peer sessions closed at once, the upload
/// was still acknowledged, and the chunks after the signal were nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_upload_acknowledged_while_the_origin_drains_is_read_after_it_is_gone() {
    let mut c = TestCluster::start(
        "drain-live",
        Counts {
            relays: 1,
            edges: 1,
        },
        small,
        |_| {},
    )
    .await;
    let name = "drain-cam";
    let upload = {
        let (origin, token) = (c.origin().http(), c.plan.ingest_token.clone());
        tokio::spawn(async move {
            publish_live_from(&origin, &token, name, 16, 4096, Duration::from_millis(40)).await
        })
    };
    // Mid-upload: a few pieces are in, most are still to come.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let origin = c.by_role(Role::Origin)[0];
    let running = c.nodes[origin].running.take().unwrap();
    let t = Instant::now();
    running.shutdown(Duration::from_secs(10)).await;
    let drained = t.elapsed();
    let live = upload
        .await
        .expect("the upload in flight when the drain began is acknowledged");
    println!(
        "drain took {drained:?}; {} chunks acknowledged",
        live.chunks
    );
    assert!(drained < Duration::from_secs(10), "drain took {drained:?}");
    assert!(live.chunks >= 2, "{} chunks", live.chunks);

    let edge = c.nodes[c.by_role(Role::Edge)[0]].http();
    read_every_chunk(&edge, name, &live).await;
    c.stop().await;
}

/// An origin draining stays until its relay has confirmed every chunk it
/// pushed, however long the relay takes. The origin–relay path goes dark
/// (a blackhole, nobody told) for 1 s, longer than the drain's quiet spell
/// (0.5 s), while a live upload is acknowledged and the origin begins to
/// drain; when the path comes back the relay learns the stream's head,
/// pulls what it missed and confirms it. A drain that left after the quiet
/// spell lost every chunk of the upload; one that waited but did not
/// announce again what was unconfirmed lost the stream the relay had never
/// seen a shard of (nothing showed the relay it was missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_origin_stays_until_its_relay_confirms_every_push() {
    let tweak = |cfg: &mut dcdn_node::config::NodeConfig| {
        small(cfg);
        cfg.fec.reassembly_timeout_ms = dcdn_node::config::Bounded::new(300).unwrap();
    };
    let counts = Counts {
        relays: 1,
        edges: 1,
    };
    let (mut c, proxy) =
        TestCluster::start_with_lossy_origin_link("drain-dark", counts, tweak, 0.0, 3).await;
    let (origin, relay) = (c.by_role(Role::Origin)[0], c.by_role(Role::Relay)[0]);
    wait_subscribed(&c, origin, relay).await;
    wait_subscribed(&c, relay, c.by_role(Role::Edge)[0]).await;
    // The relay knows the stream before the path goes dark.
    publish_live(&c, "dark", 1, 4096, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.nodes[relay].metric(
        "dcdn_chunks_total",
        &[("direction", "in"), ("path", "push")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the first chunk never reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dark = std::sync::atomic::Ordering::Relaxed;
    // A stream the relay gets no shard of: the path drops every packet but
    // small ones (the control stream's), so only the upload's end is
    // announced.
    proxy.max_packet.store(300, dark);
    let unseen = publish_live(&c, "dark-new", 3, 4096, Duration::from_millis(20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.max_packet.store(0, dark);
    proxy.blackhole.store(true, dark);
    let live = publish_live(&c, "dark", 5, 4096, Duration::from_millis(20)).await;
    let running = c.nodes[origin].running.take().unwrap();
    let t = Instant::now();
    let drain = tokio::spawn(running.shutdown(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.blackhole.store(false, dark);
    drain.await.unwrap();
    println!("drain took {:?}", t.elapsed());
    let edge = c.nodes[c.by_role(Role::Edge)[0]].http();
    read_every_chunk(&edge, "dark", &live).await;
    read_every_chunk(&edge, "dark-new", &unseen).await;
    c.stop().await;
}

/// The same drain over a lossy origin–relay link, without parity: most
/// pushed chunks' FEC groups fail at the relay. One in the middle of a
/// stream is pulled once a later chunk shows the gap; the last ones have no
/// later chunk, so only the relay noticing the failed group pulls them.
/// Every acknowledged chunk of every upload is then read through the edge
/// with the origin gone. Without the relay's repair of failed groups a
/// stream's tail is lost (seen: `not_yet` on the last chunk).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_uploads_over_a_lossy_relay_link_are_whole_downstream_after_the_origin_drains() {
    let tweak = |cfg: &mut dcdn_node::config::NodeConfig| {
        small(cfg);
        cfg.fec.adaptive = false;
        cfg.fec.default_parity_count = dcdn_node::config::Bounded::new(0).unwrap();
        cfg.fec.min_parity = dcdn_node::config::Bounded::new(0).unwrap();
        cfg.fec.reassembly_timeout_ms = dcdn_node::config::Bounded::new(300).unwrap();
    };
    let counts = Counts {
        relays: 1,
        edges: 1,
    };
    let (mut c, proxy) =
        TestCluster::start_with_lossy_origin_link("drain-lossy", counts, tweak, 0.2, 7).await;
    // Chunks published before a subscription lands are never pushed: not
    // what this test is about.
    wait_subscribed(&c, c.by_role(Role::Origin)[0], c.by_role(Role::Relay)[0]).await;
    wait_subscribed(&c, c.by_role(Role::Relay)[0], c.by_role(Role::Edge)[0]).await;
    let mut uploads = Vec::new();
    for i in 0..4 {
        let name = format!("lossy-{i}");
        let live = publish_live(&c, &name, 6, 4096, Duration::from_millis(20)).await;
        uploads.push((name, live));
    }
    let origin = c.by_role(Role::Origin)[0];
    let running = c.nodes[origin].running.take().unwrap();
    let t = Instant::now();
    running.shutdown(Duration::from_secs(10)).await;
    println!(
        "drain took {:?}; the proxy dropped {} packets",
        t.elapsed(),
        proxy
            .stats
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let relay = &c.nodes[c.by_role(Role::Relay)[0]];
    println!(
        "relay: FEC groups failed {}; pushed chunks pulled after a failed group or gap: {} pulled, {} failed, {} skipped",
        relay.metric("dcdn_fec_groups_total", &[("outcome", "failed")]),
        relay.metric("dcdn_catch_up_chunks_total", &[("outcome", "pulled")]),
        relay.metric("dcdn_catch_up_chunks_total", &[("outcome", "failed")]),
        relay.metric("dcdn_catch_up_chunks_total", &[("outcome", "skipped")]),
    );
    let edge = c.nodes[c.by_role(Role::Edge)[0]].http();
    for (name, live) in &uploads {
        read_every_chunk(&edge, name, live).await;
    }
    c.stop().await;
}

/// The manifest's side of the same restart: an edge and a relay that both
/// restarted empty, the origin down. A relay that cannot reach its origin
/// says so (503), never "not found": before, it answered NotFound for any
/// failure of its own fetch and the edge answered 404 for an object that
/// exists (seen on pods during a rollout: `object-118.bin not found`). Then
/// a read started with the origin down is served whole once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_asked_for_while_relay_and_origin_restart_is_never_404() {
    let mut c = TestCluster::start(
        "restart-manifest",
        Counts {
            relays: 1,
            edges: 1,
        },
        small,
        |_| {},
    )
    .await;
    let object = payload(11, 3 * 65536 + 17);
    publish_object(&c, "roll/manifest.bin", &object).await;
    let (origin, relay, edge) = (
        c.by_role(Role::Origin)[0],
        c.by_role(Role::Relay)[0],
        c.by_role(Role::Edge)[0],
    );
    c.nodes[origin].stop().await;
    c.nodes[relay].stop().await;
    c.nodes[edge].stop().await;
    c.restart_node(relay).await;
    c.restart_node(edge).await;
    let url = format!("{}/v1/objects/roll/manifest.bin", c.nodes[edge].http());
    let client = Client::new(Duration::from_secs(30));
    let t = Instant::now();
    match client.get(&url, None).await {
        Err(ClientError::Status { status, body, .. }) => {
            assert_eq!(status.as_u16(), 503, "{body}");
        }
        Ok(r) => panic!("the origin is down, yet {}", r.status),
        Err(e) => panic!("expected 503 with the origin down, got {e}"),
    }
    let waited = t.elapsed();
    println!("the read failed with 503 after {waited:?} with the origin down");
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");

    let reader = {
        let url = url.clone();
        tokio::spawn(async move { Client::new(Duration::from_secs(30)).get(&url, None).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart_node(origin).await;
    let got = reader
        .await
        .unwrap()
        .expect("a read across the origin restart");
    assert!(got.body[..] == object[..], "body differs");
    c.stop().await;
}

/// A relay played by the test: a cluster member with a relay certificate
/// that dials `edge` (an edge asks every upstream connected to it, whoever
/// dialled) and answers the `n`th request it gets (from 1) with what
/// `answer` gives. Closing the returned connection with the node's reason
/// is what a draining relay does when its mesh stops.
async fn scripted_relay<F, Fut>(
    c: &TestCluster,
    name: &str,
    edge: std::net::SocketAddr,
    answer: F,
) -> quinn::Connection
where
    F: Fn(Frame, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Frame> + Send + 'static,
{
    let ca = ClusterCa::load(&c.dir.join("ca.pem"), &c.dir.join("ca.key")).unwrap();
    let id = ca.issue_node(name, Role::Relay).unwrap();
    let ca_pem = std::fs::read_to_string(c.dir.join("ca.pem")).unwrap();
    let ep = MeshEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &ca_pem,
        MeshLimits::default(),
    )
    .unwrap();
    let conn = ep.connect(edge).await.unwrap().connection;
    let (mut ctl_send, mut ctl_recv) = conn.open_bi().await.unwrap();
    let hello = Frame::Hello {
        node_name: name.into(),
        role: WireRole::Relay,
        keyset_generation: 0,
    };
    framing::write_frame(&mut ctl_send, &hello).await.unwrap();
    framing::read_frame(&mut ctl_recv, 65536, Duration::from_secs(5))
        .await
        .unwrap();
    let answer = std::sync::Arc::new(answer);
    let serving = conn.clone();
    tokio::spawn(async move {
        // The endpoint and the control stream live as long as the
        // connection serves.
        let _keep = (ep, ctl_send, ctl_recv);
        let mut n = 0;
        while let Ok((mut send, mut recv)) = serving.accept_bi().await {
            n += 1;
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(request) =
                    framing::read_frame(&mut recv, 65536, Duration::from_secs(5)).await
                else {
                    return;
                };
                let reply = answer(request, n).await;
                if framing::write_frame(&mut send, &reply).await.is_ok() {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                }
            });
        }
    });
    conn
}

/// What a relay waiting for its origin (restarting) answers once its own
/// wait is over: the first request after 5.2 s (a relay waits 5 s from
/// its own start), later ones at once.
async fn origin_restarting(n: usize) -> Frame {
    if n == 1 {
        tokio::time::sleep(Duration::from_millis(5200)).await;
    }
    Frame::Error {
        code: 503,
        message: "cannot get it upstream now: no upstream connected".into(),
    }
}

/// One relay and one edge, not swarming, the relay stopped: the edge's
/// upstreams are what the test scripts (`scripted_relay`).
async fn an_edge_whose_relay_is_stopped(tag: &str) -> (TestCluster, usize) {
    let mut c = TestCluster::start(
        tag,
        Counts {
            relays: 1,
            edges: 1,
        },
        |cfg| {
            small(cfg);
            cfg.p2p.swarm = false;
        },
        |_| {},
    )
    .await;
    let relay = c.by_role(Role::Relay)[0];
    c.nodes[relay].stop().await;
    let edge_at = c.by_role(Role::Edge)[0];
    (c, edge_at)
}

/// The rollout's relays, played by the test around one edge whose real
/// relay is stopped: one relay waits for its origin (restarting) and says
/// so after 5.2 s; the other, the rollout's next pod, stops gracefully
/// 1 s into the edge's fetch, closing with the node's shutdown reason; a
/// relay back from its restart connects 6 s in and answers with what
/// `serve` makes from the cluster's signing key. `ask` is the edge's
/// fetch; it must succeed from the relay that is back. Before, an edge
/// stopped waiting for a source 5 s after its fetch began, the time spent
/// asking included: after the waiting relay's answer it gave up at once,
/// naming only the last relay asked (in CI, a client's 503 saying
/// `kind-relay-0: writing a frame: closed by peer: shutting down`).
async fn a_relay_stops_under_a_fetch<T, A, AFut, M, S, SFut>(tag: &str, ask: A, serve: M) -> T
where
    A: FnOnce(std::sync::Arc<dcdn_node::roles::node::Shared>) -> AFut,
    AFut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
    M: FnOnce(Signer) -> S,
    S: Fn(Frame, usize) -> SFut + Send + Sync + 'static,
    SFut: std::future::Future<Output = Frame> + Send + 'static,
{
    let (c, edge_at) = an_edge_whose_relay_is_stopped(tag).await;
    let (edge, edge_mesh) = (
        c.nodes[edge_at].running().shared.clone(),
        c.nodes[edge_at].mesh(),
    );
    let _waiting =
        scripted_relay(&c, "relay-waiting", edge_mesh, |_, n| origin_restarting(n)).await;
    let stopping = scripted_relay(&c, "relay-stopping", edge_mesh, |_, _| {
        std::future::pending()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.peer_list_len() != 2 {
        assert!(Instant::now() < deadline, "the edge never took both relays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serve = serve(Signer::load(&c.dir.join("signing.key")).unwrap());
    let t = Instant::now();
    let fetch = tokio::spawn(ask(edge.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stopping.close(0u32.into(), b"shutting down");
    tokio::time::sleep_until((t + Duration::from_secs(6)).into()).await;
    let _back = scripted_relay(&c, "relay-back", edge_mesh, serve).await;
    let got = fetch.await.unwrap();
    let took = t.elapsed();
    println!("the fetch ended after {took:?}");
    let got = got.unwrap_or_else(|e| panic!("the fetch failed after {took:?}: {e}"));
    assert!(took < Duration::from_secs(9), "took {took:?}");
    c.stop().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_fetch_whose_relay_shuts_down_waits_for_a_relay_to_come_back() {
    let id = ChunkId::new(StreamId::object("rollout/obj.bin", 1), 0);
    let data = Bytes::from(payload(3, 4096));
    let chunk = a_relay_stops_under_a_fetch(
        "relay-stops-chunk",
        |edge| async move { edge.fetch(id).await.map_err(|e| e.to_string()) },
        |signer| {
            let chunk = signer.sign_chunk(id, data.clone(), dcdn_node::roles::node::unix_ms());
            move |_, _| std::future::ready(Frame::Chunk(chunk.clone()))
        },
    )
    .await;
    assert_eq!(chunk.id(), id);
    assert_eq!(chunk.payload, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_fetch_whose_relay_shuts_down_waits_for_a_relay_to_come_back() {
    let name = "rollout/new.bin";
    let object = StreamId::object_key(name);
    let manifest = a_relay_stops_under_a_fetch(
        "relay-stops-manifest",
        move |edge| async move { edge.fetch_manifest(object, name).await },
        |signer| {
            let mut m = dcdn_node::chunk::wire::ManifestFrame {
                name: name.into(),
                stream: StreamId::object(name, 7),
                version: 7,
                cache_control: String::new(),
                object_len: 4096,
                chunk_size: 65536,
                chunk_count: 1,
                digest: *blake3::hash(&payload(3, 4096)).as_bytes(),
                key_id: signer.key_id(),
                timestamp_ms: dcdn_node::roles::node::unix_ms(),
                signature: [0; 64],
            };
            m.signature = signer.sign(&m.signing_bytes());
            move |_, _| std::future::ready(Frame::Manifest(m.clone()))
        },
    )
    .await;
    assert_eq!((manifest.name.as_str(), manifest.version), (name, 7));
}

/// The origin stays down longer than anyone waits: the edge's relay
/// answers each request "cannot get it upstream" after its own 5 s. The
/// edge waits its 8 s for a relay that can, then answers (a 503 naming the
/// relay) by 9 s, before a client that waits 10 s: what it asks while
/// waiting is cut at the end of its wait, not given the relay's whole 5 s
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_whose_relay_cannot_reach_the_origin_answers_before_its_client_gives_up() {
    use dcdn_node::roles::node::FetchError;
    let (c, edge_at) = an_edge_whose_relay_is_stopped("relay-waits").await;
    let edge = c.nodes[edge_at].running().shared.clone();
    let _waiting = scripted_relay(&c, "relay-waiting", c.nodes[edge_at].mesh(), |_, _| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Frame::Error {
            code: 503,
            message: "cannot get it upstream now: no upstream connected".into(),
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.peer_list_len() != 1 {
        assert!(Instant::now() < deadline, "the edge never took the relay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let got = edge
        .fetch(ChunkId::new(StreamId::object("outage/obj.bin", 1), 0))
        .await;
    let took = t.elapsed();
    println!("the fetch ended after {took:?}: {got:?}");
    match got {
        Err(FetchError::Unavailable(why)) => assert!(why.contains("relay-waiting: "), "{why}"),
        other => panic!("with the origin down: {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_millis(9600),
        "answered after {took:?}"
    );
    c.stop().await;
}

/// A node told to stop (SIGTERM, as a pod is) makes sure its peers hear it
/// close before its process exits: the edge and the origin of a relay that
/// exits drop it at once. Before, the close frames could still be queued
/// when the process exited: in the pods' rollout, 2 of 4 edges kept a relay
/// that was gone (and another time a relay its origin) for 6 s, until the
/// replacement answered their packets with a stateless reset, and reads
/// through them waited that long. With no replacement a peer waits out the
/// idle timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_by_sigterm_closes_its_connections_before_its_process_exits() {
    let (plan, dir) = TestCluster::plan(
        "sigterm-close",
        Counts {
            relays: 1,
            edges: 1,
        },
        small,
    );
    let mut c =
        TestCluster::start_planned_with_processes(plan, dir, |_| {}, |role| role == Role::Relay)
            .await;
    let edge = c.nodes[c.by_role(Role::Edge)[0]].running().shared.clone();
    let origin = c.origin().running().shared.clone();
    let relay = c.by_role(Role::Relay)[0];
    let config_path = c.plan.nodes[relay].config_path.clone();
    // A close lost on the way out is a race with the process's exit:
    // three stops, each under load, so the test fails on it most times.
    for round in 1..=3 {
        if round > 1 {
            c.nodes[relay].process = Some(
                std::process::Command::new(env!("CARGO_BIN_EXE_dcdn"))
                    .arg("run")
                    .arg("--config")
                    .arg(&config_path)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while edge.peer_list_len() != 1 || origin.peer_list_len() != 1 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the relay never joined"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Keep the relay busy answering pulls while it stops, as relays
        // are mid-rollout: it asks the origin for each chunk asked for.
        let conn = member_connection(&c, c.nodes[relay].mesh()).await;
        let load: Vec<_> = (0..64u64)
            .map(|w| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    for seq in 0.. {
                        let Ok((mut send, mut recv)) = conn.open_bi().await else {
                            return;
                        };
                        let id = ChunkId::new(StreamId::object("load.bin", w + 1), seq);
                        if framing::write_frame(&mut send, &Frame::Request { id })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let _ = send.finish();
                        let _ =
                            framing::read_frame(&mut recv, 1 << 20, Duration::from_secs(5)).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut child = c.nodes[relay].process.take().unwrap();
        let term = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the relay did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let exited = Instant::now();
        while edge.peer_list_len() != 0 || origin.peer_list_len() != 0 {
            assert!(
                exited.elapsed() < Duration::from_secs(2),
                "round {round}: 2 s after the relay's process exited, the edge still holds {} peer(s), the origin {}",
                edge.peer_list_len(),
                origin.peer_list_len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "round {round}: the relay's peers dropped it {:?} after its process exited",
            exited.elapsed()
        );
        for t in load {
            t.abort();
        }
    }
    c.stop().await;
}
