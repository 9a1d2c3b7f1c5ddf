#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signed streaming manifests (issue #15): an object is readable at an
//! edge while its upload is still running, byte-identical once it ends,
//! and an upload that does not end in a manifest resets the edge's body —
//! never a clean end of a partial one. Real QUIC between the nodes, real
//! signatures, real HTTP/1.1 read byte by byte off a TCP socket.

mod support;

use bytes::Bytes;
use dcdn_node::client::Client;
use dcdn_node::config::{Bounded, NodeConfig, Role};
use dcdn_node::up::plan::Counts;
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

/// 16 KiB chunks, so a slow upload fills one every few pieces.
fn small_chunks(c: &mut NodeConfig) {
    c.origin.chunk_size_kb = Bounded::new(16).unwrap();
}

fn edge(c: &TestCluster) -> String {
    c.nodes[c.by_role(Role::Edge)[0]].http()
}

/// One HTTP/1.1 exchange read off the socket as it arrives.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// When the first byte after the header block arrived.
    first_byte: Option<Instant>,
    /// The body ended as HTTP says a whole body ends (the terminating
    /// chunk, or Content-Length bytes), not by the connection closing.
    clean: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn raw(base: &str, method: &str, path: &str) -> Raw {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut header_end = None;
    let mut first_byte = None;
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(60), s.read(&mut tmp)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0, // reset
            Err(_) => panic!("no byte from {base}{path} for 60 s"),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
        if header_end.is_none() {
            header_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(end) = header_end {
            if first_byte.is_none() && buf.len() > end {
                first_byte = Some(Instant::now());
            }
        }
    }
    let end = header_end.expect("a header block");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut r = Raw {
        status,
        headers,
        body: Vec::new(),
        first_byte,
        clean: false,
    };
    let rest = &buf[end..];
    if method == "HEAD" {
        r.clean = rest.is_empty();
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut at = 0;
        while let Some(nl) = rest[at..].windows(2).position(|w| w == b"\r\n") {
            let size_line = String::from_utf8_lossy(&rest[at..at + nl]).to_string();
            let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
                break;
            };
            at += nl + 2;
            if size == 0 {
                r.clean = true;
                break;
            }
            if rest.len() < at + size + 2 {
                r.body.extend_from_slice(&rest[at..]);
                break;
            }
            r.body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    } else {
        r.body = rest.to_vec();
        r.clean = r
            .header("content-length")
            .is_some_and(|l| l.parse::<usize>().ok() == Some(r.body.len()));
    }
    r
}

/// Waits until `edge` answers `name` as an upload in progress (HEAD).
async fn wait_until_uploading(edge: &str, name: &str) -> Raw {
    let start = Instant::now();
    loop {
        let head = raw(edge, "HEAD", &format!("/v1/objects/{name}")).await;
        if head.status == 200 {
            return head;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{edge} never saw the upload of {name}: {head:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_read_at_an_edge_before_it_ends_is_byte_identical_and_head_stays_consistent() {
    let c = TestCluster::start(
        "upload-stream",
        Counts {
            relays: 1,
            edges: 1,
        },
        small_chunks,
        |_| {},
    )
    .await;
    let e = edge(&c);
    let name = "slow/video.bin";
    let data = payload(7, 600_000);
    // 40 pieces 75 ms apart: about 3 s of upload.
    let upload = {
        let (origin, token) = (c.origin().http(), c.plan.ingest_token.clone());
        let data = data.clone();
        tokio::spawn(async move {
            put_to(
                &origin,
                &token,
                name,
                data,
                40,
                Duration::from_millis(75),
                None,
            )
            .await
        })
    };
    let head = wait_until_uploading(&e, name).await;
    // HEAD during the upload: what GET says, no length or validator yet.
    assert_eq!(
        head.header("x-dcdn-upload"),
        Some("in-progress"),
        "{head:?}"
    );
    assert_eq!(head.header("content-length"), None, "{head:?}");
    assert_eq!(head.header("etag"), None, "{head:?}");
    assert_eq!(head.header("cache-control"), Some("no-store"), "{head:?}");
    let read = raw(&e, "GET", &format!("/v1/objects/{name}")).await;
    let (status, finished) = upload.await.unwrap();
    assert_eq!(status, 201, "the upload itself");
    assert_eq!(read.status, 200, "{:?}", read.headers);
    assert_eq!(read.header("content-length"), None);
    assert_eq!(read.header("x-dcdn-upload"), Some("in-progress"));
    assert!(read.clean, "the body ended without its terminating chunk");
    assert_eq!(read.body.len(), data.len());
    assert!(
        read.body == data,
        "the bytes read differ from the bytes uploaded"
    );
    let first = read.first_byte.unwrap();
    assert!(
        first < finished,
        "the first byte came {:?} after the upload finished",
        first - finished
    );
    eprintln!(
        "first byte {:?} before the upload finished",
        finished - first
    );
    // After the upload: the whole-object answer, for HEAD and GET alike.
    let head = raw(&e, "HEAD", &format!("/v1/objects/{name}")).await;
    let get = raw(&e, "GET", &format!("/v1/objects/{name}")).await;
    let digest = hex::encode(blake3::hash(&data).as_bytes());
    for r in [&head, &get] {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(&*data.len().to_string()));
        assert!(r.header("etag").unwrap().contains(&digest), "{r:?}");
        assert_eq!(r.header("x-dcdn-upload"), None);
    }
    assert!(get.clean && get.body == data);
    let node = &c.nodes[c.by_role(Role::Edge)[0]];
    assert_eq!(
        node.metric("dcdn_upload_reads_total", &[("outcome", "complete")]),
        1.0
    );
    assert_eq!(
        c.origin()
            .metric("dcdn_uploads_total", &[("event", "completed")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_upload_resets_the_edge_reader_and_the_name_publishes_again() {
    let c = TestCluster::start(
        "upload-abort",
        Counts {
            relays: 1,
            edges: 1,
        },
        small_chunks,
        |_| {},
    )
    .await;
    let e = edge(&c);
    let name = "cut/off.bin";
    let data = payload(9, 400_000);
    let upload = {
        let (origin, token) = (c.origin().http(), c.plan.ingest_token.clone());
        let data = data.clone();
        tokio::spawn(async move {
            put_to(
                &origin,
                &token,
                name,
                data,
                20,
                Duration::from_millis(75),
                Some(12),
            )
            .await
        })
    };
    wait_until_uploading(&e, name).await;
    let read = raw(&e, "GET", &format!("/v1/objects/{name}")).await;
    let (status, _) = upload.await.unwrap();
    assert_ne!(status, 201, "the cut-off upload was acknowledged");
    // The reader got a 200 and part of the bytes, then a reset: never a
    // clean end of a short body.
    assert!(
        !(read.status == 200 && read.clean),
        "a clean 200 with {} of {} bytes",
        read.body.len(),
        data.len()
    );
    assert!(
        data.starts_with(&read.body),
        "bytes the publisher did not send"
    );
    let node = &c.nodes[c.by_role(Role::Edge)[0]];
    assert!(node.metric("dcdn_upload_reads_total", &[("outcome", "reset")]) >= 1.0);
    assert_eq!(
        c.origin()
            .metric("dcdn_uploads_total", &[("event", "aborted")]),
        1.0
    );
    // The name was never published: 404, then a later publish works.
    let after = raw(&e, "GET", &format!("/v1/objects/{name}")).await;
    assert_eq!(after.status, 404, "{after:?}");
    let whole = payload(10, 100_000);
    let (origin, token) = (c.origin().http(), c.plan.ingest_token.clone());
    let again = put_to(
        &origin,
        &token,
        name,
        whole.clone(),
        1,
        Duration::ZERO,
        None,
    )
    .await;
    assert_eq!(again.0, 201);
    let start = Instant::now();
    loop {
        let got = raw(&e, "GET", &format!("/v1/objects/{name}")).await;
        if got.status == 200 && got.clean && got.body == whole {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PUTs `data` to `origin` in `pieces` pieces, `gap` apart; with
/// `fail_after`, the body errors at that piece (the publisher's connection
/// is cut). Returns the status (0 if the request failed) and when the
/// upload ended.
async fn put_to(
    origin: &str,
    token: &str,
    name: &str,
    data: Vec<u8>,
    pieces: usize,
    gap: Duration,
    fail_after: Option<usize>,
) -> (u16, Instant) {
    put_with(
        &Client::new(Duration::from_secs(60)),
        origin,
        token,
        name,
        data,
        pieces,
        gap,
        fail_after,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn put_with(
    client: &Client,
    origin: &str,
    token: &str,
    name: &str,
    data: Vec<u8>,
    pieces: usize,
    gap: Duration,
    fail_after: Option<usize>,
) -> (u16, Instant) {
    let piece = data.len().div_ceil(pieces);
    let parts: Vec<Bytes> = data.chunks(piece).map(Bytes::copy_from_slice).collect();
    let body = futures_util::stream::unfold(0usize, move |i| {
        let parts = parts.clone();
        async move {
            if i >= parts.len() {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if fail_after == Some(i) {
                return Some((Err(std::io::Error::other("publisher cut off")), i + 1));
            }
            Some((Ok(parts[i].clone()), i + 1))
        }
    });
    let got = client
        .put_stream(&format!("{origin}/v1/objects/{name}"), Some(token), body)
        .await;
    (got.map(|r| r.status.as_u16()).unwrap_or(0), Instant::now())
}

/// The figure in the issue note: first byte at an edge for an object
/// uploaded slowly, against when the upload finishes, in the same run.
/// `DCDN_FIGURE_MB` (64) at `DCDN_FIGURE_MBPS` (16 MiB/s). Run with
/// `cargo nextest run -p dcdn-node --test uploads --run-ignored only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a figure, not a check: minutes of upload"]
async fn figure_first_byte_at_an_edge_of_a_slow_upload() {
    let mb: usize = std::env::var("DCDN_FIGURE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rate: usize = std::env::var("DCDN_FIGURE_MBPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let c = TestCluster::start(
        "upload-figure",
        Counts {
            relays: 1,
            edges: 1,
        },
        |c| c.storage.ring_buffer_size_mb = Bounded::new(512).unwrap(),
        |_| {},
    )
    .await;
    let e = edge(&c);
    let name = "figure/slow.bin";
    let data = payload(11, mb << 20);
    // 256 KiB pieces at `rate` MiB/s.
    let pieces = mb * 4;
    let gap = Duration::from_secs_f64(0.25 / rate as f64);
    let started = Instant::now();
    let upload = {
        let (origin, token) = (c.origin().http(), c.plan.ingest_token.clone());
        let data = data.clone();
        tokio::spawn(async move { put_to(&origin, &token, name, data, pieces, gap, None).await })
    };
    wait_until_uploading(&e, name).await;
    let read = raw(&e, "GET", &format!("/v1/objects/{name}")).await;
    let read_done = Instant::now();
    let (status, finished) = upload.await.unwrap();
    assert_eq!(status, 201);
    assert!(read.clean && read.body == data, "the read differs");
    let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1000.0;
    let first = read.first_byte.unwrap();
    println!(
        "FIGURE {mb} MiB at {rate} MiB/s: first byte at the edge {:.0} ms after the upload started; \
         upload finished at {:.0} ms (201); edge body complete at {:.0} ms; \
         first byte / upload finish = {:.3}",
        ms(first),
        ms(finished),
        ms(read_done),
        ms(first) / ms(finished)
    );
}

/// HTTP/2 and HTTP/3 have no "close without the last chunk": an aborted
/// upload must reset the stream, which clients report as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_upload_resets_h2_and_h3_streams() {
    let (plan, dir) = TestCluster::plan_tls(
        "upload-abort-tls",
        Counts {
            relays: 1,
            edges: 1,
        },
        small_chunks,
    );
    let ca = plan.https_ca.clone().unwrap();
    let c = TestCluster::start_planned(plan, dir, |_| {}).await;
    let client = Client::with_ca(Duration::from_secs(60), Some(&ca)).unwrap();
    let name = "tls/cut.bin";
    let data = payload(12, 400_000);
    let upload = {
        let (origin, token, client) = (
            c.origin().https(),
            c.plan.ingest_token.clone(),
            client.clone(),
        );
        let data = data.clone();
        tokio::spawn(async move {
            put_with(
                &client,
                &origin,
                &token,
                name,
                data,
                20,
                Duration::from_millis(100),
                Some(12),
            )
            .await
        })
    };
    let e = c.nodes[c.by_role(Role::Edge)[0]].https();
    let url = format!("{e}/v1/objects/{name}");
    // Wait until the edge streams the upload, then read it both ways.
    let start = Instant::now();
    loop {
        let head = client
            .send(
                axum::http::Method::HEAD,
                &url,
                None,
                &[],
                axum::body::Body::empty(),
            )
            .await;
        if head.is_ok_and(|h| h.status == 200) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never streamed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h2 = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url, None).await })
    };
    let roots = dcdn_node::client::roots(Some(&ca)).unwrap();
    let h3 = async {
        let resp = dcdn_node::h3_client::get(&url, roots, &[], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
    };
    let h3 = h3.await;
    let h2 = h2.await.unwrap();
    assert_ne!(upload.await.unwrap().0, 201);
    match h2 {
        Ok(r) => panic!(
            "HTTP/2 ended cleanly: {} with {} bytes",
            r.status,
            r.body.len()
        ),
        Err(e) => eprintln!("h2 reset as it must: {e}"),
    }
    match h3 {
        Ok(b) => panic!("HTTP/3 ended cleanly with {} bytes", b.len()),
        Err(e) => eprintln!("h3 reset as it must: {e}"),
    }
}
