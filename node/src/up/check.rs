//! `dcdn up --check`: publish a sample object and a short live stream at the
//! origin, fetch both through every edge, and compare bytes and digests.
//!
//! Everything goes through the same public HTTP interfaces a user would use,
//! so a pass means the whole path — ingest, signing, QUIC push and pull,
//! verification, storage, serving — worked end to end.

use crate::client::Client;
use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use std::time::{Duration, Instant};

/// Where the check publishes and fetches.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Origin ingest base URL, e.g. `http://127.0.0.1:7100`.
    pub origin: String,
    pub ingest_token: String,
    /// Edge client base URLs.
    pub edges: Vec<String>,
    /// The origin's admin base URL; when set, origin offload is measured
    /// from its `/metrics` around the object's distribution.
    pub origin_admin: Option<String>,
    /// A CA file to trust for https:// origin and edge URLs.
    pub ca_file: Option<std::path::PathBuf>,
}

/// One line of the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// A measurement taken along the way (`publish_to_last_edge_ms`,
/// `origin_offload`); the testbed reads them from the `FIGURE` lines.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub detail: String,
}

/// Everything one check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Every step passed, and there was at least one.
    pub ok: bool,
    pub passed: usize,
    pub failed: usize,
    pub outcomes: Vec<Outcome>,
    pub figures: Vec<Figure>,
}

/// Collects outcomes while the check runs, advancing the progress bar.
#[derive(Debug)]
struct Collector {
    outcomes: Vec<Outcome>,
    figures: Vec<Figure>,
    bar: indicatif::ProgressBar,
}

impl Collector {
    fn push(&mut self, o: Outcome) {
        self.bar.inc(1);
        self.bar.set_message(o.what.clone());
        self.outcomes.push(o);
    }
}

/// The check's sizes.
#[derive(Debug, Clone, Copy)]
pub struct CheckSizes {
    /// 0 skips the object.
    pub object_bytes: usize,
    /// 0 skips the live stream.
    pub live_pieces: usize,
    pub live_piece_bytes: usize,
    /// Pause between live pieces: pieces × interval is how long the stream runs.
    pub live_interval: Duration,
}

impl Default for CheckSizes {
    fn default() -> Self {
        Self {
            object_bytes: 8 * 1024 * 1024 + 12_345,
            live_pieces: 40,
            live_piece_bytes: 16 * 1024,
            live_interval: Duration::from_millis(20),
        }
    }
}

/// Bytes the origin has sent into the mesh so far (everything out but HTTP).
async fn origin_mesh_egress(client: &Client, admin: &str) -> Option<f64> {
    let resp = client.get(&format!("{admin}/metrics"), None).await.ok()?;
    let text = String::from_utf8_lossy(&resp.body);
    let sum = text
        .lines()
        .filter(|l| {
            l.starts_with("dcdn_bytes_total{")
                && l.contains(r#"direction="out""#)
                && !l.contains(r#"path="http""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(sum)
}

fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Retries `f` until it succeeds or `deadline` passes; returns the last error.
async fn retry<T, E, F, Fut>(deadline: Duration, mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs the check: one outcome per step, and the figures measured.
pub async fn run(targets: &Targets, sizes: CheckSizes) -> Report {
    let client = match Client::with_ca(Duration::from_secs(30), targets.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            return Report {
                ok: false,
                failed: 1,
                outcomes: vec![Outcome {
                    what: "trust the CA file".into(),
                    ok: false,
                    detail: e.to_string(),
                }],
                ..Report::default()
            };
        }
    };
    let steps = |on: bool| {
        if on {
            1 + targets.edges.len() as u64
        } else {
            0
        }
    };
    let mut out = Collector {
        outcomes: Vec::new(),
        figures: Vec::new(),
        bar: crate::cli::progress::steps(
            steps(sizes.object_bytes > 0) + steps(sizes.live_pieces > 0),
            "check",
        ),
    };
    if sizes.object_bytes > 0 {
        check_object(&client, targets, sizes, &mut out).await;
    }
    if sizes.live_pieces > 0 {
        check_live(&client, targets, sizes, &mut out).await;
    }
    out.bar.finish_and_clear();
    let passed = out.outcomes.iter().filter(|o| o.ok).count();
    let failed = out.outcomes.len() - passed;
    Report {
        ok: failed == 0 && passed > 0,
        passed,
        failed,
        outcomes: out.outcomes,
        figures: out.figures,
    }
}

async fn check_object(client: &Client, targets: &Targets, sizes: CheckSizes, out: &mut Collector) {
    let egress_before = match &targets.origin_admin {
        Some(a) => origin_mesh_egress(client, a).await,
        None => None,
    };
    let object = sample(sizes.object_bytes, 1);
    let object_digest = hex::encode(blake3::hash(&object).as_bytes());
    let name = format!("check/sample-{}.bin", std::process::id());
    let started = Instant::now();
    let body = futures_util::stream::iter(
        object
            .chunks(256 * 1024)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let put = client
        .put_stream(
            &format!("{}/v1/objects/{name}", targets.origin),
            Some(&targets.ingest_token),
            body,
        )
        .await;
    match &put {
        Ok(resp) => {
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
            let ok = v["digest"] == object_digest.as_str();
            out.push(Outcome {
                what: format!("publish object {name} ({} bytes)", object.len()),
                ok,
                detail: format!("{} chunks, digest {}", v["chunks"], &object_digest[..16]),
            });
        }
        Err(e) => out.push(Outcome {
            what: format!("publish object {name}"),
            ok: false,
            detail: e.to_string(),
        }),
    }
    if put.is_err() {
        return;
    }
    // Every edge at once, as clients would: the slowest is when the object
    // was everywhere.
    let fetches = targets.edges.iter().map(|edge| {
        let url = format!("{edge}/v1/objects/{name}");
        async move {
            let got = retry(Duration::from_secs(30), || client.get(&url, None)).await;
            (edge, got, started.elapsed())
        }
    });
    let results = futures_util::future::join_all(fetches).await;
    let mut slowest = Duration::ZERO;
    let mut all_ok = true;
    for (edge, got, took) in results {
        slowest = slowest.max(took);
        let outcome = match got {
            Ok(resp) => {
                let digest = hex::encode(blake3::hash(&resp.body).as_bytes());
                let etag_ok = resp
                    .headers
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_matches('"').split('-').next() == Some(&object_digest));
                let ok = resp.body.len() == object.len() && digest == object_digest && etag_ok;
                Outcome {
                    what: format!("fetch object via {edge}"),
                    ok,
                    detail: format!(
                        "{} bytes, digest {}, etag {}, {:.0} ms after publish",
                        resp.body.len(),
                        if digest == object_digest {
                            "matches"
                        } else {
                            "DIFFERS"
                        },
                        if etag_ok { "matches" } else { "DIFFERS" },
                        took.as_secs_f64() * 1000.0
                    ),
                }
            }
            Err(e) => Outcome {
                what: format!("fetch object via {edge}"),
                ok: false,
                detail: e.to_string(),
            },
        };
        all_ok &= outcome.ok;
        out.push(outcome);
    }
    if all_ok {
        out.figures.push(Figure {
            name: "publish_to_last_edge_ms",
            value: (slowest.as_secs_f64() * 1000.0).round(),
            detail: format!("{} edges, {} bytes", targets.edges.len(), object.len()),
        });
    }
    if let (Some(before), Some(admin)) = (egress_before, &targets.origin_admin) {
        if let Some(after) = origin_mesh_egress(client, admin).await {
            out.figures.push(Figure {
                name: "origin_offload",
                value: (after - before) / object.len() as f64,
                detail: format!(
                    "origin mesh egress {} bytes / object {} bytes, {} edges",
                    after - before,
                    object.len(),
                    targets.edges.len()
                ),
            });
        }
    }
}

async fn check_live(client: &Client, targets: &Targets, sizes: CheckSizes, out: &mut Collector) {
    // A live stream: pieces arrive over time, each becomes a chunk at once.
    let stream = format!("check-live-{}", std::process::id());
    let pieces: Vec<Vec<u8>> = (0..sizes.live_pieces)
        .map(|i| sample(sizes.live_piece_bytes, 100 + i as u64))
        .collect();
    let interval = sizes.live_interval;
    let paced =
        futures_util::stream::unfold(pieces.clone().into_iter(), move |mut it| async move {
            let next = it.next()?;
            tokio::time::sleep(interval).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(next)), it))
        });
    let live = client
        .put_stream(
            &format!("{}/v1/streams/{stream}", targets.origin),
            Some(&targets.ingest_token),
            paced,
        )
        .await;
    let first_seq = match &live {
        Ok(resp) => {
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
            let chunks = v["chunks"].as_u64().unwrap_or(0);
            let len = v["len"].as_u64().unwrap_or(0);
            out.push(Outcome {
                what: format!("publish live stream {stream}"),
                ok: len == (pieces.len() * sizes.live_piece_bytes) as u64 && chunks > 0,
                detail: format!("{len} bytes as {chunks} chunks"),
            });
            v["first_seq"].as_u64().map(|f| (f, chunks))
        }
        Err(e) => {
            out.push(Outcome {
                what: format!("publish live stream {stream}"),
                ok: false,
                detail: e.to_string(),
            });
            None
        }
    };
    if let Some((first, chunks)) = first_seq {
        // HTTP does not keep the sender's piece boundaries, so chunks hold
        // whatever arrived together: compare the concatenation.
        let published: Vec<u8> = pieces.concat();
        for edge in &targets.edges {
            let mut joined = Vec::with_capacity(published.len());
            let mut problems = Vec::new();
            for seq in first..first + chunks {
                let url = format!("{edge}/v1/streams/{stream}/{seq}");
                match retry(Duration::from_secs(20), || client.get(&url, None)).await {
                    Ok(resp) => joined.extend_from_slice(&resp.body),
                    Err(e) => problems.push(format!("seq {seq}: {e}")),
                }
            }
            let identical = joined == published;
            out.push(Outcome {
                what: format!("fetch live chunks via {edge}"),
                ok: problems.is_empty() && identical,
                detail: if problems.is_empty() {
                    format!(
                        "{chunks} chunks, {} bytes, {}",
                        joined.len(),
                        if identical {
                            "byte-identical"
                        } else {
                            "DIFFER"
                        }
                    )
                } else {
                    problems.join("; ")
                },
            });
        }
    }
}

impl std::fmt::Display for Report {
    /// One `PASS`/`FAIL` line per step, the `FIGURE` lines, a count.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for o in &self.outcomes {
            let verdict = if o.ok { "PASS" } else { "FAIL" };
            writeln!(f, "{verdict} {:<60} {}", o.what, o.detail)?;
        }
        for fig in &self.figures {
            // origin_offload is a ratio; the other figures are whole numbers.
            if fig.name == "origin_offload" {
                writeln!(f, "FIGURE {} {:.3} ({})", fig.name, fig.value, fig.detail)?;
            } else {
                writeln!(f, "FIGURE {} {:.0} ({})", fig.name, fig.value, fig.detail)?;
            }
        }
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}
