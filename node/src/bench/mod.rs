//! `dcdn bench`: measures this host, like `openssl speed`.
//!
//! Every figure is reported next to a baseline doing the same work with the
//! raw library in the same run, because the machines this runs on are
//! shared and noisy: the ratio is what is comparable across runs, the
//! absolute numbers are not.

mod mesh;
mod parts;

use serde::Serialize;
use std::time::{Duration, Instant};

/// One line of `dcdn bench --json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchResult {
    pub bench: String,
    pub unit: String,
    pub ours: f64,
    pub baseline: f64,
    pub baseline_name: String,
    pub ratio: f64,
}

impl BenchResult {
    pub fn new(bench: &str, unit: &str, ours: f64, baseline: f64, baseline_name: &str) -> Self {
        let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
        Self {
            bench: bench.to_owned(),
            unit: unit.to_owned(),
            ours,
            baseline,
            baseline_name: baseline_name.to_owned(),
            ratio,
        }
    }
}

/// How long each measured side runs; `--quick` shortens it for tests.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub duration: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_millis(1500),
        }
    }
}

/// Runs `op` repeatedly for at least `duration` (after one warm-up call) and
/// returns operations per second. `op` returns how many operations it did.
pub fn rate(duration: Duration, mut op: impl FnMut() -> u64) -> f64 {
    op();
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        done += op();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Alternates ours and baseline in short rounds and keeps each side's best
/// round, so a burst of load from a neighbour hurts both sides alike.
pub fn compare(
    options: BenchOptions,
    mut ours: impl FnMut() -> u64,
    mut baseline: impl FnMut() -> u64,
) -> (f64, f64) {
    const ROUNDS: u32 = 5;
    let slice = options.duration / ROUNDS;
    let (mut best_ours, mut best_base) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        best_ours = best_ours.max(rate(slice, &mut ours));
        best_base = best_base.max(rate(slice, &mut baseline));
    }
    (best_ours, best_base)
}

/// Names of every benchmark, in the order `run_all` runs them.
pub const NAMES: &[&str] = &[
    "fec_encode",
    "fec_decode",
    "verify_batch",
    "store_insert",
    "store_get",
    "e2e_throughput",
    "live_latency",
    "origin_offload",
];

/// Runs the benchmarks whose names pass `filter`.
pub fn run_all(options: BenchOptions, filter: impl Fn(&str) -> bool) -> Vec<BenchResult> {
    let mut out = Vec::new();
    for name in NAMES {
        if filter(name) {
            out.extend(run_one(name, options));
        }
    }
    out
}

fn run_one(name: &str, options: BenchOptions) -> Vec<BenchResult> {
    match name {
        "fec_encode" => parts::fec_encode(options),
        "fec_decode" => parts::fec_decode(options),
        "verify_batch" => parts::verify_batch(options),
        "store_insert" => parts::store_insert(options),
        "store_get" => parts::store_get(options),
        "e2e_throughput" => on_runtime(name, mesh::e2e_throughput()),
        "live_latency" => on_runtime(name, mesh::live_latency()),
        "origin_offload" => on_runtime(name, mesh::origin_offload()),
        _ => Vec::new(),
    }
}

/// Runs a cluster benchmark on its own runtime; a failure is reported on
/// stderr and yields no figure rather than a made-up one.
fn on_runtime(
    name: &str,
    bench: impl std::future::Future<Output = anyhow::Result<Vec<BenchResult>>>,
) -> Vec<BenchResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let bounded = async {
        tokio::time::timeout(Duration::from_secs(180), bench)
            .await
            .map_err(|_| anyhow::anyhow!("did not finish in 180 s"))?
    };
    match rt
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(bounded))
    {
        Ok(results) => results,
        Err(e) => {
            eprintln!("bench {name} failed: {e:#}");
            Vec::new()
        }
    }
}
