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
    /// Smaller objects and fewer rounds in the cluster benchmarks: a smoke
    /// test that every figure is produced (a debug build moves ~1 MB/s).
    pub quick: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_millis(1500),
            quick: false,
        }
    }
}

impl BenchOptions {
    /// The `--quick` settings.
    pub fn quick() -> Self {
        Self {
            duration: Duration::from_millis(200),
            quick: true,
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

/// Rounds each side runs in [`compare`]; odd, so the median is one round.
pub const ROUNDS: usize = 7;

/// Alternates ours and baseline in short rounds and reports each side's
/// median round: a burst of load from a neighbour hurts both sides alike,
/// and one lucky round cannot set a figure (a best-of would).
pub fn compare(
    options: BenchOptions,
    mut ours: impl FnMut() -> u64,
    mut baseline: impl FnMut() -> u64,
) -> (f64, f64) {
    let slice = options.duration / ROUNDS as u32;
    let (mut o, mut b) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        o.push(rate(slice, &mut ours));
        b.push(rate(slice, &mut baseline));
    }
    (median(&mut o), median(&mut b))
}

/// The median of `v` (the upper one of an even count); 0 when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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

/// What a run produced: the figures, and the benchmarks that failed (each
/// with why). A failure yields no figure rather than a made-up one, and the
/// command exits non-zero.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<BenchResult>,
    pub failures: Vec<(String, String)>,
}

/// Runs the benchmarks whose names pass `filter`.
pub fn run_all(options: BenchOptions, filter: impl Fn(&str) -> bool) -> Report {
    let mut report = Report::default();
    for name in NAMES {
        if filter(name) {
            match run_one(name, options) {
                Ok(results) => report.results.extend(results),
                Err(e) => report.failures.push(((*name).to_owned(), format!("{e:#}"))),
            }
        }
    }
    report
}

fn run_one(name: &str, options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    match name {
        "fec_encode" => parts::fec_encode(options),
        "fec_decode" => parts::fec_decode(options),
        "verify_batch" => parts::verify_batch(options),
        "store_insert" => Ok(parts::store_insert(options)),
        "store_get" => Ok(parts::store_get(options)),
        "e2e_throughput" => on_runtime(mesh::e2e_throughput(options)),
        "live_latency" => on_runtime(mesh::live_latency(options)),
        "origin_offload" => on_runtime(mesh::origin_offload(options)),
        _ => Ok(Vec::new()),
    }
}

/// Runs a cluster benchmark on its own runtime, bounded in time.
fn on_runtime(
    bench: impl std::future::Future<Output = anyhow::Result<Vec<BenchResult>>>,
) -> anyhow::Result<Vec<BenchResult>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), bench)
            .await
            .map_err(|_| anyhow::anyhow!("did not finish in 300 s"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_cluster_benchmark_is_an_error_not_an_empty_result() {
        let r = on_runtime(async { anyhow::bail!("the cluster did not start") });
        assert!(r.is_err());
        let ok = on_runtime(async { Ok(vec![BenchResult::new("x", "u", 2.0, 1.0, "b")]) });
        assert_eq!(ok.map(|v| v.len()).ok(), Some(1));
    }

    #[test]
    fn median_is_the_middle_round_not_the_best() {
        assert_eq!(median(&mut [9.0, 1.0, 5.0, 2.0, 100.0]), 5.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
