#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Pull-through from an upstream (issue #15): an origin fronting a plain
//! HTTP server (Python's `http.server`) and an S3-compatible server
//! (`moto_server`, installed into the test venv on first use). Real
//! processes upstream, real QUIC between in-process nodes, real HTTP.

mod support;

use dcdn_node::client::{Client, ClientError};
use dcdn_node::config::{Bounded, NodeConfig, Role, S3Section, UpstreamSection};
use dcdn_node::up::plan::Counts;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use support::cluster::TestCluster;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

fn hex_digest(data: &[u8]) -> String {
    hex::encode(blake3::hash(data).as_bytes())
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `python3 -m http.server` over `dir`, its request log in `log`.
async fn http_server(dir: &Path, log: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("python3 runs");
    let p = Proc(child);
    wait_listening(port, "http.server").await;
    (p, port)
}

/// Full (200) answers for `path` the upstream logged; a revalidation
/// answered 304 is not one.
fn upstream_gets(log: &Path, path: &str) -> usize {
    let needle = format!("\"GET {path} HTTP/1.1\" 200");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Writes `data` to `path` with a modification time `secs_ahead` seconds
/// from now: `Last-Modified` has one-second resolution, and a change must
/// be newer than what the origin holds for its `If-Modified-Since`.
fn write_with_mtime(path: &Path, data: &[u8], secs_ahead: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(secs_ahead))
        .unwrap();
}

fn upstream_config(url: Option<String>, s3: Option<S3Section>) -> UpstreamSection {
    UpstreamSection {
        url,
        s3,
        // Revalidate on every request that reaches the origin (edges ask
        // at most once a second), so changes show within seconds.
        default_ttl_secs: Bounded::new(0).unwrap(),
        serve_stale_if_error: false,
        timeout_ms: Bounded::new(3000).unwrap(),
        max_concurrent: Bounded::new(4).unwrap(),
        not_found_ttl_secs: Bounded::new(0).unwrap(),
        not_found_max_names: Bounded::new(1024).unwrap(),
    }
}

async fn cluster(tag: &str, edges: usize, upstream: UpstreamSection) -> TestCluster {
    TestCluster::start(
        tag,
        Counts { relays: 1, edges },
        move |c: &mut NodeConfig| {
            c.origin.chunk_size_kb = Bounded::new(16).unwrap();
            if c.node.role == Role::Origin {
                c.origin.upstream = Some(upstream.clone());
            }
        },
        |_| {},
    )
    .await
}

fn edges(c: &TestCluster) -> Vec<String> {
    c.by_role(Role::Edge)
        .into_iter()
        .map(|i| c.nodes[i].http())
        .collect()
}

async fn get(url: &str) -> Result<dcdn_node::client::Response, ClientError> {
    Client::new(Duration::from_secs(20)).get(url, None).await
}

fn etag(resp: &dcdn_node::client::Response) -> (String, u64) {
    let etag = resp.headers["etag"].to_str().unwrap().trim_matches('"');
    let (digest, version) = etag.rsplit_once('-').unwrap();
    (digest.to_owned(), version.parse().unwrap())
}

/// Asserts `edge` serves `want` whole under an ETag naming its digest;
/// returns the version.
async fn served(edge: &str, name: &str, want: &[u8]) -> u64 {
    let resp = get(&format!("{edge}/v1/objects/{name}"))
        .await
        .unwrap_or_else(|e| panic!("{edge} {name}: {e}"));
    assert!(resp.body[..] == want[..], "{edge} {name}: other bytes");
    let (digest, version) = etag(&resp);
    assert_eq!(digest, hex_digest(want), "{edge} {name}: ETag digest");
    version
}

/// Polls `edge` until it serves `want`. Every 200 on the way must be one
/// of `allowed` whole under its own digest: never a mix, never bytes the
/// upstream did not hold.
async fn wait_for(edge: &str, name: &str, want: &[u8], allowed: &[&[u8]]) -> (u64, Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(15) {
        match get(&format!("{edge}/v1/objects/{name}")).await {
            Ok(resp) => {
                let (digest, version) = etag(&resp);
                assert!(
                    allowed.iter().any(|a| resp.body[..] == a[..]),
                    "{edge} served {} bytes of {name} that the upstream never held",
                    resp.body.len()
                );
                assert_eq!(digest, hex_digest(&resp.body), "ETag names the body");
                if resp.body[..] == want[..] {
                    return (version, start.elapsed());
                }
                last = format!("an older version ({version})");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{edge} never served the new {name}; last: {last}");
}

fn status_of(r: &Result<dcdn_node::client::Response, ClientError>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status.as_u16(), String::new()),
        Err(ClientError::Status { status, body, .. }) => (status.as_u16(), body.clone()),
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dcdn-upstream-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The whole pull-through story against an HTTP upstream: a miss is
/// fetched once however many edges ask, served byte-identical; an
/// unchanged object keeps its version after revalidation; a changed one
/// becomes a new version; a deleted one is purged; an unreachable upstream
/// is a 502 and a counter, never a stale copy passed off as current.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_upstream_is_pulled_through_revalidated_and_its_failures_are_502() {
    let root = temp_dir("http");
    let files = root.join("files");
    let log = root.join("http.log");
    let v1 = payload(1, 300_000);
    write_with_mtime(&files.join("site/a.bin"), &v1, 0);
    for i in 0..5 {
        write_with_mtime(
            &files.join(format!("cold/{i}.bin")),
            &payload(50 + i, 300_000),
            0,
        );
    }
    let (server, port) = http_server(&files, &log).await;
    let base = format!("http://127.0.0.1:{port}");
    let c = cluster("pull-http", 2, upstream_config(Some(base.clone()), None)).await;
    let edges = edges(&c);

    // Both edges at once: one upstream GET (single flight edge → relay →
    // origin → upstream), the same version everywhere.
    let (a, b) = tokio::join!(
        served(&edges[0], "site/a.bin", &v1),
        served(&edges[1], "site/a.bin", &v1)
    );
    assert_eq!(a, b, "one version of a.bin at both edges");
    assert_eq!(
        upstream_gets(&log, "/site/a.bin"),
        1,
        "fetched upstream once"
    );

    // Unchanged upstream: revalidated (304), same version.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(served(&edges[0], "site/a.bin", &v1).await, a);
    let origin = c.origin();
    assert!(
        origin.metric("dcdn_upstream_fetches_total", &[("result", "not_modified")]) >= 1.0,
        "revalidation was conditional"
    );

    // Changed upstream: a new version at every edge, never a mix.
    let v2 = payload(2, 280_000);
    write_with_mtime(&files.join("site/a.bin"), &v2, 10);
    let mut seen = Vec::new();
    for edge in &edges {
        let (version, took) = wait_for(edge, "site/a.bin", &v2, &[&v1, &v2]).await;
        assert!(version > a, "the change is a newer version");
        seen.push(version);
        println!("upstream change visible at {edge} after {took:?}");
    }
    assert_eq!(seen[0], seen[1], "one version of the change");

    // Missing upstream: 404 at the edge.
    let (status, body) = status_of(&get(&format!("{}/v1/objects/nope.bin", edges[0])).await);
    assert_eq!(status, 404, "{body}");

    // Deleted upstream: purged from every edge.
    std::fs::remove_file(files.join("site/a.bin")).unwrap();
    for edge in &edges {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = status_of(&get(&format!("{edge}/v1/objects/site/a.bin")).await);
            if status == 404 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                Instant::now() < deadline,
                "{edge} still serves a deleted object"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Figure: time to a whole 300 KB response at an edge that never saw
    // the name: pulled through (edge → relay → origin → upstream), against
    // the same size published by PUT beforehand (the cost of the mesh
    // alone) and the upstream asked directly; same build, same run.
    let mut direct = Vec::new();
    let mut pulled = Vec::new();
    let mut published = Vec::new();
    let client = Client::new(Duration::from_secs(30));
    for i in 0..5u64 {
        let name = format!("cold/{i}.bin");
        let data = payload(50 + i, 300_000);
        let t = Instant::now();
        get(&format!("{base}/{name}")).await.unwrap();
        direct.push(t.elapsed());
        let t = Instant::now();
        served(&edges[i as usize % 2], &name, &data).await;
        pulled.push(t.elapsed());
        let put_name = format!("put/{i}.bin");
        client
            .send(
                hyper::Method::PUT,
                &format!("{}/v1/objects/{put_name}", origin.http()),
                Some(&c.plan.ingest_token),
                &[],
                axum::body::Body::from(data.clone()),
            )
            .await
            .unwrap();
        let t = Instant::now();
        served(&edges[i as usize % 2], &put_name, &data).await;
        published.push(t.elapsed());
    }
    for v in [&mut direct, &mut pulled, &mut published] {
        v.sort();
    }
    println!(
        "FIGURE 300 KB at a cold edge (p50 of 5): pulled through {:?}, published by PUT {:?} \
         (ratio {:.2}), upstream directly {:?}",
        pulled[2],
        published[2],
        pulled[2].as_secs_f64() / published[2].as_secs_f64(),
        direct[2],
    );

    // Upstream down: a name no edge holds is 502 upstream_failed, and so
    // is a held one once its freshness ran out (no serve_stale_if_error).
    drop(server);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for name in ["never-seen.bin", "cold/0.bin"] {
        let (status, body) = status_of(&get(&format!("{}/v1/objects/{name}", edges[0])).await);
        assert_eq!(status, 502, "{name}: {body}");
        assert!(body.contains("\"code\":\"upstream_failed\""), "{body}");
    }
    assert!(origin.metric("dcdn_upstream_fetches_total", &[("result", "error")]) >= 2.0);
    c.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// With `serve_stale_if_error` the version held is served while the
/// upstream is down (documented opt-in), and a name never pulled is
/// still a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_stale_if_error_serves_the_version_held_only_when_asked_to() {
    let root = temp_dir("stale");
    let files = root.join("files");
    let log = root.join("http.log");
    let v1 = payload(7, 50_000);
    write_with_mtime(&files.join("s.bin"), &v1, 0);
    let (server, port) = http_server(&files, &log).await;
    let mut up = upstream_config(Some(format!("http://127.0.0.1:{port}")), None);
    up.serve_stale_if_error = true;
    let c = cluster("pull-stale", 1, up).await;
    let edge = edges(&c)[0].clone();
    let version = served(&edge, "s.bin", &v1).await;
    drop(server);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(served(&edge, "s.bin", &v1).await, version);
    assert!(
        c.origin()
            .metric("dcdn_upstream_fetches_total", &[("result", "stale")])
            >= 1.0
    );
    let (status, body) = status_of(&get(&format!("{edge}/v1/objects/other.bin")).await);
    assert_eq!(status, 502, "{body}");
    c.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// Requests for `path` the upstream answered 404.
fn upstream_misses(log: &Path, path: &str) -> usize {
    let needle = format!("\"GET {path} HTTP/1.1\" 404");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Negative caching: a flood of requests for a name the upstream has not
/// got reaches the upstream once while the 404 is remembered (counted);
/// a publish of the name is served at once all the same, and a purge
/// forgets the 404, so the upstream is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_404_upstream_is_remembered_and_a_publish_is_served_at_once() {
    let root = temp_dir("neg");
    let files = root.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let log = root.join("http.log");
    let (_server, port) = http_server(&files, &log).await;
    let mut up = upstream_config(Some(format!("http://127.0.0.1:{port}")), None);
    up.not_found_ttl_secs = Bounded::new(600).unwrap();
    let c = cluster("pull-neg", 2, up).await;
    let edges = edges(&c);
    let url = |i: usize| format!("{}/v1/objects/late.bin", edges[i % 2]);

    // Ten one after the other, then ten at once, over both edges.
    for i in 0..10 {
        let (status, body) = status_of(&get(&url(i)).await);
        assert_eq!(status, 404, "{body}");
    }
    let flood = futures_util::future::join_all((0..10).map(|i| get_owned(url(i)))).await;
    for r in &flood {
        assert_eq!(status_of(r).0, 404);
    }
    assert_eq!(
        upstream_misses(&log, "/late.bin"),
        1,
        "the upstream was asked once for a missing name"
    );
    let origin = c.origin();
    let cached = origin.metric("dcdn_upstream_not_found_cached_total", &[("kind", "http")]);
    assert!(cached >= 9.0, "remembered 404s are counted: {cached}");

    // Figure: a 404 answered from memory against one that asks the
    // upstream (a new name each time), at the same edge, same run.
    let (mut remembered, mut asked) = (Vec::new(), Vec::new());
    for i in 0..9 {
        let t = Instant::now();
        assert_eq!(status_of(&get(&url(0)).await).0, 404);
        remembered.push(t.elapsed());
        let t = Instant::now();
        let other = format!("{}/v1/objects/missing/{i}.bin", edges[0]);
        assert_eq!(status_of(&get(&other).await).0, 404);
        asked.push(t.elapsed());
    }
    remembered.sort();
    asked.sort();
    println!(
        "FIGURE 404 at an edge (p50 of 9): remembered {:?}, asking the upstream {:?} (ratio {:.2})",
        remembered[4],
        asked[4],
        remembered[4].as_secs_f64() / asked[4].as_secs_f64()
    );
    assert_eq!(upstream_misses(&log, "/late.bin"), 1);

    // The upstream gains the file: the remembered 404 stands (bounded by
    // not_found_ttl_secs), the upstream is not asked.
    let from_upstream = payload(21, 40_000);
    write_with_mtime(&files.join("late.bin"), &from_upstream, 0);
    assert_eq!(status_of(&get(&url(0)).await).0, 404);
    assert_eq!(upstream_gets(&log, "/late.bin"), 0);

    // Published here: served at once, the first request after the 201.
    let published = payload(22, 30_000);
    let client = Client::new(Duration::from_secs(30));
    client
        .send(
            hyper::Method::PUT,
            &format!("{}/v1/objects/late.bin", origin.http()),
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::from(published.clone()),
        )
        .await
        .unwrap();
    served(&edges[1], "late.bin", &published).await;

    // Purged: the 404 is forgotten too, so the upstream's file is pulled.
    client
        .send(
            hyper::Method::DELETE,
            &format!("{}/v1/objects/late.bin", origin.http()),
            Some(&c.plan.ingest_token),
            &[],
            axum::body::Body::empty(),
        )
        .await
        .unwrap();
    wait_for(
        &edges[0],
        "late.bin",
        &from_upstream,
        &[&published, &from_upstream],
    )
    .await;
    assert_eq!(upstream_gets(&log, "/late.bin"), 1);
    c.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// The interleaving property over the upstream path: random upstream
/// changes and deletions, publishes over pulled names, purges, eviction
/// pressure at relay and edges, and fetches at random edges. Every 200 is
/// a body the upstream held or the publisher sent for that name, whole,
/// under an ETag naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_interleavings_with_an_upstream_never_serve_a_body_nobody_produced() {
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};
    let root = temp_dir("interleave");
    let files = root.join("files");
    let log = root.join("http.log");
    let names = ["u/a.bin", "u/b.bin"];
    let mut produced: HashMap<&str, HashSet<String>> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let data = payload(900 + i as u64, 120_000);
        produced.entry(name).or_default().insert(hex_digest(&data));
        write_with_mtime(&files.join(name), &data, 0);
    }
    let (_server, port) = http_server(&files, &log).await;
    let mut up = upstream_config(Some(format!("http://127.0.0.1:{port}")), None);
    up.not_found_ttl_secs = Bounded::new(1).unwrap();
    let c = TestCluster::start(
        "pull-interleave",
        Counts {
            relays: 1,
            edges: 2,
        },
        move |c: &mut NodeConfig| {
            c.origin.chunk_size_kb = Bounded::new(16).unwrap();
            // Small memory stores: fillers push pulled chunks out of the
            // relay and edges, which then ask the origin again.
            c.storage.ring_buffer_size_mb = Bounded::new(1).unwrap();
            if c.node.role == Role::Origin {
                c.origin.upstream = Some(up.clone());
            }
        },
        |_| {},
    )
    .await;
    let edges = edges(&c);
    let client = Client::new(Duration::from_secs(30));
    let origin = c.origin().http();
    let (mut fetched, mut errors) = (0, 0);
    let mut mtime = 1;
    for seed in 0..2u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for step in 0..32u64 {
            let name = names[rng.gen_range(0..names.len())];
            // Equal lengths across versions: a mix cannot hide behind a
            // length check.
            let data = payload(seed * 1000 + step, 120_000);
            match rng.gen_range(0..14) {
                0..=2 => {
                    // Changed upstream, with a newer Last-Modified.
                    mtime += 2;
                    produced.entry(name).or_default().insert(hex_digest(&data));
                    write_with_mtime(&files.join(name), &data, mtime);
                }
                3 => {
                    let _ = std::fs::remove_file(files.join(name));
                }
                4 | 5 => {
                    produced.entry(name).or_default().insert(hex_digest(&data));
                    client
                        .send(
                            hyper::Method::PUT,
                            &format!("{origin}/v1/objects/{name}"),
                            Some(&c.plan.ingest_token),
                            &[],
                            axum::body::Body::from(data),
                        )
                        .await
                        .unwrap();
                }
                6 => {
                    let _ = client
                        .send(
                            hyper::Method::DELETE,
                            &format!("{origin}/v1/objects/{name}"),
                            Some(&c.plan.ingest_token),
                            &[],
                            axum::body::Body::empty(),
                        )
                        .await;
                }
                7 => {
                    let filler = payload(step, 300_000);
                    let _ = client
                        .send(
                            hyper::Method::PUT,
                            &format!("{origin}/v1/objects/filler/{seed}-{step}"),
                            Some(&c.plan.ingest_token),
                            &[],
                            axum::body::Body::from(filler),
                        )
                        .await;
                    // Read at an edge, so it takes room there too.
                    let _ = get(&format!(
                        "{}/v1/objects/filler/{seed}-{step}",
                        edges[rng.gen_range(0..edges.len())]
                    ))
                    .await;
                }
                _ => {
                    let edge = &edges[rng.gen_range(0..edges.len())];
                    match get(&format!("{edge}/v1/objects/{name}")).await {
                        Ok(resp) => {
                            fetched += 1;
                            let d = hex_digest(&resp.body);
                            assert!(
                                produced.get(name).is_some_and(|p| p.contains(&d)),
                                "seed {seed} step {step}: {edge} served {name} ({} bytes) with a digest nobody produced",
                                resp.body.len()
                            );
                            assert_eq!(etag(&resp).0, d, "seed {seed} step {step}");
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
        }
    }
    println!("{fetched} fetches served a produced body, {errors} answered an error");
    assert!(fetched > 10, "{fetched} fetches served");
    c.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

async fn get_owned(url: String) -> Result<dcdn_node::client::Response, ClientError> {
    get(&url).await
}

/// `moto_server`: `DCDN_MOTO_SERVER`, else the test venv's, installed into
/// it (`moto[server]` from PyPI) the first time.
fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("DCDN_MOTO_SERVER") {
        return p.into();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = std::env::var_os("DCDN_VENV")
        .map_or_else(|| workspace.join("target/ci-venv"), PathBuf::from);
    let bin = venv.join("bin/moto_server");
    if !bin.exists() {
        let status = Command::new("bash")
            .arg("-c")
            .arg(r#"source scripts/lib-venv.sh && pip_need moto "moto[server]""#)
            .current_dir(workspace)
            .env("DCDN_VENV", &venv)
            .status()
            .unwrap();
        assert!(status.success(), "installing moto[server] into {venv:?}");
    }
    bin
}

/// An object in a bucket of a local S3 server (moto, checking every
/// request's SigV4 signature against an IAM user's key): pulled through
/// byte-identical with the origin's signed GETs, and a changed object
/// becomes a new version after revalidation by ETag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_upstream_is_pulled_through_and_a_changed_object_is_a_new_version() {
    let root = temp_dir("s3");
    let port = free_port();
    let moto_bin = moto_server();
    let moto = Proc(
        Command::new(&moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The first 3 requests (making the IAM user and its key) are
            // let through; every later one must be signed with that key.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs"),
    );
    wait_listening(port, "moto_server").await;
    let s3 = format!("http://127.0.0.1:{port}");
    // Objects go in with boto3 (moto's own dependency): a second, independent
    // SigV4 implementation next to the origin's.
    let python = moto_bin.with_file_name("python");
    let setup = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import boto3, json\n\
             iam = boto3.client('iam', endpoint_url='{s3}', region_name='us-east-1',\n\
                 aws_access_key_id='x', aws_secret_access_key='x')\n\
             iam.create_user(UserName='dcdn')\n\
             iam.put_user_policy(UserName='dcdn', PolicyName='s3', PolicyDocument=json.dumps(\n\
                 {{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}}]}}))\n\
             k = iam.create_access_key(UserName='dcdn')['AccessKey']\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])\n"
        ))
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "making the IAM user: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let creds = String::from_utf8(setup.stdout).unwrap();
    let (key_id, secret) = creds.trim().split_once(' ').unwrap();
    let (key_id, secret) = (key_id.to_owned(), secret.to_owned());
    let s3_put = |key: &str, data: &[u8]| {
        let file = root.join("upload");
        std::fs::write(&file, data).unwrap();
        let script = format!(
            "import boto3\n\
             s3 = boto3.client('s3', endpoint_url='{s3}', region_name='us-east-1',\n\
                 aws_access_key_id='{key_id}', aws_secret_access_key='{secret}')\n\
             if not s3.list_buckets()['Buckets']: s3.create_bucket(Bucket='media')\n\
             s3.put_object(Bucket='media', Key='{key}', Body=open('{}', 'rb').read())\n",
            file.display()
        );
        let status = Command::new(&python)
            .arg("-c")
            .arg(script)
            .status()
            .unwrap();
        assert!(status.success(), "putting {key} into moto");
    };
    let v1 = payload(11, 200_000);
    s3_put("videos/intro.mp4", &v1);
    std::fs::write(root.join("key-id"), format!("{key_id}\n")).unwrap();
    std::fs::write(root.join("secret"), format!("{secret}\n")).unwrap();
    let c = cluster(
        "pull-s3",
        1,
        upstream_config(
            None,
            Some(S3Section {
                endpoint: s3.clone(),
                bucket: "media".into(),
                region: "us-east-1".into(),
                access_key_id_file: Some(root.join("key-id")),
                secret_access_key_file: Some(root.join("secret")),
                // moto refuses a made-up session token (400), so the
                // permanent key goes without one.
                session_token_file: None,
            }),
        ),
    )
    .await;
    let edge = edges(&c)[0].clone();
    let first = served(&edge, "videos/intro.mp4", &v1).await;
    let v2 = payload(12, 210_000);
    s3_put("videos/intro.mp4", &v2);
    let (second, _) = wait_for(&edge, "videos/intro.mp4", &v2, &[&v1, &v2]).await;
    assert!(second > first);
    let (status, body) = status_of(&get(&format!("{edge}/v1/objects/videos/missing.mp4")).await);
    assert_eq!(status, 404, "{body}");
    let origin = c.origin();
    assert!(
        origin.metric(
            "dcdn_upstream_fetches_total",
            &[("kind", "s3"), ("result", "fetched")]
        ) >= 2.0
    );
    c.stop().await;
    drop(moto);
    let _ = std::fs::remove_dir_all(&root);
}
