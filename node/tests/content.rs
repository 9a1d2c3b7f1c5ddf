#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Content correctness end to end (issue #15): versions, namespaces and
//! the promise that an edge never answers with bytes the publisher did not
//! publish under that name and version. Real QUIC between in-process nodes,
//! real signatures, real HTTP.

mod support;

use bytes::Bytes;
use dcdn_node::client::{Client, ClientError};
use dcdn_node::config::{Bounded, NodeConfig, Role};
use dcdn_node::up::plan::Counts;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

fn hex_digest(data: &[u8]) -> String {
    hex::encode(blake3::hash(data).as_bytes())
}

/// One origin, one relay and `edges` edges with `tiny`'s small chunks and store.
async fn small_cluster(name: &str, edges: usize) -> TestCluster {
    TestCluster::start(name, Counts { relays: 1, edges }, tiny, |_| {}).await
}

/// 16 KiB chunks, 1 MiB stores: a 320 KB object is 20 chunks and a few
/// uploads push it out of the origin's memory.
fn tiny(c: &mut NodeConfig) {
    c.storage.ring_buffer_size_mb = Bounded::new(1).unwrap();
    c.origin.chunk_size_kb = Bounded::new(16).unwrap();
}

async fn put(c: &TestCluster, path: &str, data: &[u8]) -> Result<serde_json::Value, ClientError> {
    let client = Client::new(Duration::from_secs(30));
    let body =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
    let resp = client
        .put_stream(
            &format!("{}{path}", c.origin().http()),
            Some(&c.plan.ingest_token),
            body,
        )
        .await?;
    Ok(serde_json::from_slice(&resp.body).unwrap_or_default())
}

async fn publish(c: &TestCluster, name: &str, data: &[u8]) -> serde_json::Value {
    put(c, &format!("/v1/objects/{name}"), data).await.unwrap()
}

/// The digest an ETag names: its part before the version, unquoted.
fn etag_digest(resp: &dcdn_node::client::Response) -> String {
    let etag = resp.headers["etag"].to_str().unwrap().trim_matches('"');
    etag.split('-').next().unwrap().to_owned()
}

async fn get(url: &str) -> Result<dcdn_node::client::Response, ClientError> {
    Client::new(Duration::from_secs(20)).get(url, None).await
}

fn edges(c: &TestCluster) -> Vec<String> {
    c.by_role(Role::Edge)
        .into_iter()
        .map(|i| c.nodes[i].http())
        .collect()
}

/// Polls `edge` until it serves `want` whole under an ETag naming it;
/// returns how long that took.
async fn wait_for_body(edge: &str, name: &str, want: &[u8], within: Duration) -> Duration {
    let start = Instant::now();
    let want_digest = hex_digest(want);
    let mut last = String::new();
    while start.elapsed() < within {
        match get(&format!("{edge}/v1/objects/{name}")).await {
            Ok(resp) if resp.body[..] == want[..] && etag_digest(&resp) == want_digest => {
                return start.elapsed();
            }
            Ok(resp) => {
                last = format!(
                    "{} bytes, digest {}, etag {:?}",
                    resp.body.len(),
                    hex_digest(&resp.body),
                    resp.headers.get("etag")
                )
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{edge} did not serve the new version of {name} within {within:?}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn republish_serves_the_new_version_at_every_edge() {
    let c = small_cluster("republish", 2).await;
    let edges = edges(&c);
    let v1 = payload(1, 100_000);
    let first = publish(&c, "site/index.html", &v1).await;
    // One edge fetched v1 (and caches it); the other never asked.
    wait_for_body(&edges[0], "site/index.html", &v1, Duration::from_secs(5)).await;
    let mut took = Vec::new();
    for round in 2..12u64 {
        let next = payload(round, 100_000 + round as usize);
        let published = publish(&c, "site/index.html", &next).await;
        assert!(
            published["version"].as_u64() > first["version"].as_u64(),
            "each publish is a new version: {published}"
        );
        for edge in &edges {
            took.push(wait_for_body(edge, "site/index.html", &next, Duration::from_secs(5)).await);
        }
    }
    took.sort();
    println!(
        "FIGURE re-publish visible at every edge: p50 {:?} p99 {:?} (n={})",
        took[took.len() / 2],
        took[(took.len() * 99 / 100).min(took.len() - 1)],
        took.len()
    );
    c.stop().await;
}

/// The sequence: v1 read at an edge (one byte), v1 evicted at the
/// origin by other uploads, v2 published. The edge must answer one version
/// whole, or an error — never v1's first chunk followed by v2's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_version_sequence_returns_one_version_whole_or_an_error() {
    let c = small_cluster("mixed", 1).await;
    let edge = &edges(&c)[0];
    let v1 = payload(10, 320_000);
    let v2 = payload(20, 320_000);
    publish(&c, "x", &v1).await;
    let client = Client::new(Duration::from_secs(20));
    let one = client
        .send(
            hyper::Method::GET,
            &format!("{edge}/v1/objects/x"),
            None,
            &[(hyper::header::RANGE, "bytes=0-0".to_owned())],
            axum::body::Body::empty(),
        )
        .await
        .unwrap();
    assert_eq!(one.body[..], v1[..1]);
    for i in 0..5 {
        // Other uploads (the disk-backed origin keeps them all; a memory
        // origin would evict v1 here).
        let _ = put(
            &c,
            &format!("/v1/objects/filler{i}"),
            &payload(100 + i, 320_000),
        )
        .await;
    }
    publish(&c, "x", &v2).await;
    // Read through the switch (until the edge serves v2, and at least 20
    // times): every answer is one version whole, or an error.
    let (mut reads, mut saw_v2) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reads < 20 || !saw_v2 {
        assert!(
            Instant::now() < deadline,
            "{edge} did not converge on v2 in {reads} reads"
        );
        match get(&format!("{edge}/v1/objects/x")).await {
            Ok(resp) => {
                let d = hex_digest(&resp.body);
                assert!(
                    d == hex_digest(&v1) || d == hex_digest(&v2),
                    "a 200 whose body is neither version ({} bytes)",
                    resp.body.len()
                );
                assert_eq!(etag_digest(&resp), d, "the ETag names another body");
                saw_v2 |= d == hex_digest(&v2);
            }
            Err(e) => println!("an error is acceptable: {e}"),
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays on the newest version.
    wait_for_body(edge, "x", &v2, Duration::from_secs(5)).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_and_live_stream_names_cannot_collide() {
    let c = small_cluster("namespaces", 1).await;
    let edge = &edges(&c)[0];
    let live = payload(5, 1000);
    let object = payload(6, 50_000);
    let v = put(&c, "/v1/streams/same", &live).await.unwrap();
    let first = v["first_seq"].as_u64().unwrap();
    publish(&c, "same", &object).await;
    wait_for_body(edge, "same", &object, Duration::from_secs(5)).await;
    let got = get(&format!("{edge}/v1/streams/same/{first}"))
        .await
        .unwrap();
    assert_eq!(got.body[..], live[..], "the live chunk is the live bytes");
    // And the other way round: an object first, then live onto its name.
    let object2 = payload(7, 40_000);
    publish(&c, "other", &object2).await;
    let live2 = payload(8, 900);
    let v = put(&c, "/v1/streams/other", &live2).await.unwrap();
    let first = v["first_seq"].as_u64().unwrap();
    assert_eq!(first, 0, "a live stream's sequence ignores objects");
    let got = get(&format!("{edge}/v1/streams/other/0")).await.unwrap();
    assert_eq!(got.body[..], live2[..]);
    wait_for_body(edge, "other", &object2, Duration::from_secs(5)).await;
    c.stop().await;
}

/// Random interleavings of publish, re-publish, purge, eviction pressure
/// and fetches at random edges: every 200 carries a body whose digest the
/// publisher produced for that name, under an ETag naming that body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_interleavings_never_serve_a_body_the_publisher_did_not_produce() {
    let c = small_cluster("interleave", 2).await;
    let edges = edges(&c);
    let names = ["a", "b/c"];
    let mut produced: HashMap<&str, HashSet<String>> = HashMap::new();
    let (mut fetched, mut errors) = (0, 0);
    for seed in 0..3u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for step in 0..40u64 {
            let name = names[rng.gen_range(0..names.len())];
            match rng.gen_range(0..14) {
                0..=2 => {
                    // Equal lengths across versions, so a mix cannot hide
                    // behind a length check.
                    let len = [50_000, 320_000][rng.gen_range(0..2)];
                    let data = payload(seed * 1000 + step, len);
                    produced.entry(name).or_default().insert(hex_digest(&data));
                    publish(&c, name, &data).await;
                }
                3 | 4 => {
                    // Warm an edge with the first chunk only.
                    let edge = &edges[rng.gen_range(0..edges.len())];
                    let _ = Client::new(Duration::from_secs(20))
                        .send(
                            hyper::Method::GET,
                            &format!("{edge}/v1/objects/{name}"),
                            None,
                            &[(hyper::header::RANGE, "bytes=0-0".to_owned())],
                            axum::body::Body::empty(),
                        )
                        .await;
                }
                7 => {
                    let _ = Client::new(Duration::from_secs(20))
                        .send(
                            hyper::Method::DELETE,
                            &format!("{}/v1/objects/{name}", c.origin().http()),
                            Some(&c.plan.ingest_token),
                            &[],
                            axum::body::Body::empty(),
                        )
                        .await;
                }
                5 | 6 => {
                    let data = payload(step, 400_000);
                    let _ = put(&c, &format!("/v1/objects/filler/{step}"), &data).await;
                }
                _ => {
                    let edge = &edges[rng.gen_range(0..edges.len())];
                    match get(&format!("{edge}/v1/objects/{name}")).await {
                        Ok(resp) => {
                            fetched += 1;
                            let d = hex_digest(&resp.body);
                            assert!(
                                produced.get(name).is_some_and(|p| p.contains(&d)),
                                "seed {seed} step {step}: {edge} served {name} with a digest never published"
                            );
                            assert_eq!(etag_digest(&resp), d, "seed {seed} step {step}");
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
        }
    }
    println!("{fetched} fetches served a published body, {errors} answered an error");
    assert!(fetched > 10);
    c.stop().await;
}

/// What an edge answers `method` with `headers`, error or not.
async fn ask(
    url: &str,
    method: hyper::Method,
    headers: &[(hyper::header::HeaderName, String)],
) -> (u16, hyper::HeaderMap, Bytes) {
    let client = Client::new(Duration::from_secs(20));
    match client
        .send(method, url, None, headers, axum::body::Body::empty())
        .await
    {
        Ok(r) => (r.status.as_u16(), r.headers, r.body),
        Err(ClientError::Status { status, body, .. }) => {
            (status.as_u16(), hyper::HeaderMap::new(), Bytes::from(body))
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edges_answer_caching_headers_and_conditional_requests() {
    use hyper::header::{
        CACHE_CONTROL, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    };
    let c = small_cluster("http", 1).await;
    let edge = &edges(&c)[0];
    let data = payload(3, 70_000);
    // With a Cache-Control of its own, and without one (the config default).
    let client = Client::new(Duration::from_secs(30));
    client
        .send(
            hyper::Method::PUT,
            &format!("{}/v1/objects/app.js", c.origin().http()),
            Some(&c.plan.ingest_token),
            &[(CACHE_CONTROL, "public, max-age=31536000, immutable".into())],
            axum::body::Body::from(data.clone()),
        )
        .await
        .unwrap();
    publish(&c, "index.html", &data).await;
    let url = format!("{edge}/v1/objects/app.js");
    let got = get(&url).await.unwrap();
    assert_eq!(
        got.headers[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    let plain = get(&format!("{edge}/v1/objects/index.html")).await.unwrap();
    assert_eq!(plain.headers[CACHE_CONTROL], "public, no-cache");
    let etag = got.headers[ETAG].to_str().unwrap().to_owned();
    let modified = got.headers[LAST_MODIFIED].to_str().unwrap().to_owned();
    // HEAD equals GET, with and without a Range, for a known and an unknown name.
    for (path, headers) in [
        ("app.js", vec![]),
        (
            "app.js",
            vec![(hyper::header::RANGE, "bytes=5-70".to_owned())],
        ),
        ("nothing-here", vec![]),
    ] {
        let u = format!("{edge}/v1/objects/{path}");
        let (gs, mut gh, _) = ask(&u, hyper::Method::GET, &headers).await;
        let (hs, mut hh, hb) = ask(&u, hyper::Method::HEAD, &headers).await;
        gh.remove(hyper::header::DATE);
        hh.remove(hyper::header::DATE);
        assert_eq!((gs, gh), (hs, hh), "HEAD {path} {headers:?}");
        assert!(hb.is_empty());
    }
    for (h, v, want) in [
        (IF_NONE_MATCH, etag.clone(), 304),
        (IF_NONE_MATCH, format!("W/{etag}"), 304),
        (IF_NONE_MATCH, "\"stale\"".into(), 200),
        (IF_MODIFIED_SINCE, modified.clone(), 304),
        (IF_MATCH, etag.clone(), 200),
        (IF_MATCH, "\"stale\"".into(), 412),
    ] {
        let (status, headers, body) =
            ask(&url, hyper::Method::GET, &[(h.clone(), v.clone())]).await;
        assert_eq!(status, want, "{h}: {v}");
        if want == 304 {
            assert_eq!(headers[ETAG], etag.as_str());
            assert!(body.is_empty());
        }
        if want == 412 {
            assert!(String::from_utf8_lossy(&body).contains("precondition_failed"));
        }
    }
    // A re-publish changes the validators: the old ETag no longer matches.
    publish(&c, "app.js", &payload(4, 70_000)).await;
    wait_for_body(edge, "app.js", &payload(4, 70_000), Duration::from_secs(5)).await;
    let (status, _, _) = ask(&url, hyper::Method::GET, &[(IF_NONE_MATCH, etag.clone())]).await;
    assert_eq!(status, 200);
    c.stop().await;
}

/// The origin of record: a publish that would not fit is refused with 507
/// and nothing already acknowledged is evicted, even though the origin's
/// memory store is far smaller than what it holds; a restarted origin
/// serves every acknowledged object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_origin_keeps_what_it_acknowledged_across_pressure_and_restart() {
    let mut c = TestCluster::start(
        "record",
        Counts {
            relays: 1,
            edges: 1,
        },
        |cfg| {
            tiny(cfg);
            cfg.origin.store_capacity_mb = Bounded::new(3).unwrap();
        },
        |_| {},
    )
    .await;
    let edge = edges(&c)[0].clone();
    // 2.5 MB acknowledged in a 1 MiB memory store: a memory origin would
    // have evicted the first objects by now.
    let objects: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("keep/{i}"), payload(200 + i, 500_000)))
        .collect();
    for (name, data) in &objects {
        publish(&c, name, data).await;
    }
    // 1 MB more does not fit in 3 MiB: refused, streamed or announced.
    let refused = put(&c, "/v1/objects/too-much", &payload(9, 1_000_000)).await;
    match refused {
        Err(ClientError::Status { status, body, .. }) => {
            assert_eq!(status.as_u16(), 507, "{body}");
            assert!(body.contains("insufficient_storage"), "{body}");
            assert!(body.contains("nothing was evicted"), "{body}");
        }
        other => panic!("an over-capacity publish was not refused: {other:?}"),
    }
    let client = Client::new(Duration::from_secs(30));
    let announced = client
        .send(
            hyper::Method::PUT,
            &format!("{}/v1/objects/too-much", c.origin().http()),
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::from(payload(9, 1_000_000)),
        )
        .await;
    assert!(
        matches!(&announced, Err(ClientError::Status { status, .. }) if status.as_u16() == 507),
        "{announced:?}"
    );
    for (name, data) in &objects {
        wait_for_body(&edge, name, data, Duration::from_secs(5)).await;
    }
    assert!(get(&format!("{edge}/v1/objects/too-much")).await.is_err());
    // Restart the origin: everything acknowledged is still served, by an
    // edge whose relay now reaches a fresh origin process state.
    let origin = c.by_role(Role::Origin)[0];
    c.nodes[origin].stop().await;
    c.restart_node(origin).await;
    c.wait_ready().await;
    for i in c
        .by_role(Role::Relay)
        .into_iter()
        .chain(c.by_role(Role::Edge))
    {
        c.nodes[i].stop().await;
        c.restart_node(i).await;
    }
    c.wait_ready().await;
    let edge = edges(&c)[0].clone();
    for (name, data) in &objects {
        wait_for_body(&edge, name, data, Duration::from_secs(10)).await;
    }
    // And a later publish of a kept name is a newer version.
    let v2 = payload(300, 1000);
    let before = get(&format!("{edge}/v1/objects/keep/0")).await.unwrap();
    publish(&c, "keep/0", &v2).await;
    wait_for_body(&edge, "keep/0", &v2, Duration::from_secs(5)).await;
    let after = get(&format!("{edge}/v1/objects/keep/0")).await.unwrap();
    assert!(
        after.headers["x-dcdn-version"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > before.headers["x-dcdn-version"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
    );
    c.stop().await;
}

/// `DELETE /v1/objects/{name}` removes the name from every edge within a
/// second (by a signed purge message, not by expiry); a later publish of
/// the name is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_removes_a_name_from_every_edge_within_a_second() {
    let c = small_cluster("purge", 2).await;
    let edges = edges(&c);
    let client = Client::new(Duration::from_secs(20));
    let delete = |token: Option<String>| {
        let client = client.clone();
        let url = format!("{}/v1/objects/gone.bin", c.origin().http());
        async move {
            client
                .send(
                    hyper::Method::DELETE,
                    &url,
                    token.as_deref(),
                    &[],
                    axum::body::Body::empty(),
                )
                .await
        }
    };
    let mut took = Vec::new();
    for round in 0..5u64 {
        let data = payload(round + 40, 60_000);
        publish(&c, "gone.bin", &data).await;
        for edge in &edges {
            wait_for_body(edge, "gone.bin", &data, Duration::from_secs(5)).await;
        }
        // Without the ingest token: refused, nothing purged.
        assert!(matches!(
            delete(None).await,
            Err(ClientError::Status { status, .. }) if status.as_u16() == 401
        ));
        let start = Instant::now();
        delete(Some(c.plan.ingest_token.clone())).await.unwrap();
        for edge in &edges {
            loop {
                match get(&format!("{edge}/v1/objects/gone.bin")).await {
                    Err(ClientError::Status { status, .. }) if status.as_u16() == 404 => break,
                    _ => {}
                }
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "{edge} still serves gone.bin {:?} after the purge",
                    start.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        took.push(start.elapsed());
    }
    // Purging a name that does not exist is a 404, not a success.
    let gone = client
        .send(
            hyper::Method::DELETE,
            &format!("{}/v1/objects/never-was", c.origin().http()),
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::empty(),
        )
        .await;
    assert!(
        matches!(&gone, Err(ClientError::Status { status, .. }) if status.as_u16() == 404),
        "{gone:?}"
    );
    took.sort();
    println!(
        "FIGURE purge gone from every edge: p50 {:?} max {:?} (n={})",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
    c.stop().await;
}

/// The origin of record as a real `dcdn run` process, SIGKILLed right
/// after acknowledging uploads and with one upload half-sent: restarted,
/// it serves every acknowledged version byte-identical (same version, same
/// ETag) through an edge, and nothing of the upload it never acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_origin_process_serves_every_acknowledged_version_after_restart() {
    use futures_util::StreamExt;
    let (plan, dir) = TestCluster::plan(
        "crash",
        Counts {
            relays: 1,
            edges: 1,
        },
        tiny,
    );
    let mut c =
        TestCluster::start_planned_with_processes(plan, dir, |_| {}, |r| r == Role::Origin).await;
    let origin = c.by_role(Role::Origin)[0];
    let origin_url = format!("http://{}", c.nodes[origin].config.network.http_listen);
    let token = c.plan.ingest_token.clone();
    let client = Client::new(Duration::from_secs(30));
    let put = |name: String, data: Vec<u8>| {
        let (client, url, token) = (client.clone(), origin_url.clone(), token.clone());
        async move {
            let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(data))]);
            let resp = client
                .put_stream(&format!("{url}/v1/objects/{name}"), Some(&token), body)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&resp.body).unwrap()
        }
    };
    // name → (version, bytes) of the newest acknowledged publish; some
    // names twice, so the restart must keep the right version.
    let mut acked: HashMap<String, (u64, Vec<u8>)> = HashMap::new();
    for i in 0..12u64 {
        let name = format!("crash/{}", i % 8);
        let data = payload(500 + i, 40_000 + 7_000 * i as usize);
        let ack = put(name.clone(), data.clone()).await;
        assert_eq!(ack["digest"], hex_digest(&data));
        acked.insert(name, (ack["version"].as_u64().unwrap(), data));
    }
    let store = c.nodes[origin].config.origin.store_dir.clone().unwrap();
    let half_written = |store: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(store)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tmp-"))
            .collect()
    };
    // An upload the origin will never acknowledge: half its body, then
    // the sender stalls, and the origin dies under it.
    let half = Bytes::from(payload(999, 100_000));
    let stalled = tokio::spawn({
        let (client, url, token) = (client.clone(), origin_url.clone(), token.clone());
        async move {
            let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(half)])
                .chain(futures_util::stream::pending());
            client
                .put_stream(
                    &format!("{url}/v1/objects/crash/unacked"),
                    Some(&token),
                    body,
                )
                .await
        }
    });
    // Kill the origin once the upload is under way on its disk, not at a
    // guessed moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    while half_written(&store).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stalled upload never reached the origin's store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.nodes[origin].kill_process();
    assert!(
        stalled.await.unwrap().is_err(),
        "the half-sent upload was never acknowledged"
    );
    assert!(
        !half_written(&store).is_empty(),
        "the killed upload left its temporary directory"
    );
    let config_path = c.plan.nodes[origin].config_path.clone();
    c.nodes[origin].process = Some(
        std::process::Command::new(env!("CARGO_BIN_EXE_dcdn"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    c.wait_ready().await;
    let edge = edges(&c)[0].clone();
    for (name, (version, data)) in &acked {
        wait_for_body(&edge, name, data, Duration::from_secs(10)).await;
        let resp = get(&format!("{edge}/v1/objects/{name}")).await.unwrap();
        assert_eq!(
            resp.headers["etag"].to_str().unwrap(),
            format!("\"{}-{version}\"", hex_digest(data)),
            "{name}: the acknowledged version, not another"
        );
    }
    match get(&format!("{edge}/v1/objects/crash/unacked")).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status.as_u16(), 404),
        other => panic!("an unacknowledged upload is served: {other:?}"),
    }
    // The restarted origin swept what the crash left half-written.
    assert_eq!(half_written(&store), Vec::<String>::new());
    c.stop().await;
}

/// A chunk every source says it does not have is `NotFound` (a client's
/// 404), one no source can be reached for is `Unavailable` (a 503 the
/// client retries): an object that exists must never read as missing
/// because its relay is restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_nobody_has_is_not_found_and_one_nobody_can_reach_is_unavailable() {
    use dcdn_node::chunk::{ChunkId, StreamId};
    use dcdn_node::roles::node::FetchError;
    let mut c = small_cluster("fetch-errors", 1).await;
    let edge_at = c.by_role(Role::Edge)[0];
    let edge = c.nodes[edge_at].running().shared.clone();
    let never = ChunkId::new(StreamId::object("never-published.bin", 1), 0);
    match edge.fetch(never).await {
        Err(FetchError::NotFound(why)) => assert!(why.contains("does not have"), "{why}"),
        other => panic!("a chunk nobody has: {other:?}"),
    }
    let relay_at = c.by_role(Role::Relay)[0];
    c.nodes[relay_at].stop().await;
    let other = ChunkId::new(StreamId::object("never-published.bin", 1), 1);
    match edge.fetch(other).await {
        Err(FetchError::Unavailable(_)) => {}
        other => panic!("with no relay: {other:?}"),
    }
    c.stop().await;
}
