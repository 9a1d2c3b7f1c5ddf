//! The operator's own Prometheus metrics (`dcdn_operator_*`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use prometheus::{GaugeVec, TextEncoder};

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile passes by `result` (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed passes by `reason` (`invalid_spec`, `keys`, `api`, `rotation`).
    pub failures: IntCounterVec,
    pub duration: Histogram,
    /// Objects written by `kind` (apply, delete): what a no-change pass keeps at 0.
    pub writes: IntCounterVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
    /// Seconds the cluster has spent in its current rotation phase.
    pub rotation_phase_seconds: GaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "dcdn_operator_reconciles_total",
                "Reconcile passes by result.",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let failures = IntCounterVec::new(
            Opts::new(
                "dcdn_operator_reconcile_failures_total",
                "Failed reconcile passes by reason.",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "dcdn_operator_reconcile_duration_seconds",
                "Time one reconcile pass takes.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let writes = IntCounterVec::new(
            Opts::new(
                "dcdn_operator_writes_total",
                "Objects the operator applied or deleted, by kind and verb.",
            ),
            &["kind", "verb"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let leader = IntGauge::new("dcdn_operator_leader", "1 while this replica leads.")
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let rotation_phase_seconds = GaugeVec::new(
            Opts::new(
                "dcdn_operator_rotation_phase_seconds",
                "Seconds a cluster has been in its current key-rotation phase.",
            ),
            &["namespace", "cluster", "phase"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        // Which build runs, as the nodes say it (dcdn_build_info).
        let build_info = IntGaugeVec::new(
            Opts::new(
                "dcdn_operator_build_info",
                "Always 1; the labels say which build this operator runs.",
            ),
            &["version", "commit"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), dcdn_node::COMMIT])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, ...: the
        // names every Prometheus client exports, so stock dashboards work.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .unwrap_or_else(|e| unreachable!("the process collector registers once: {e}"));
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(reconciles.clone()),
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
            Box::new(rotation_phase_seconds.clone()),
        ] {
            registry
                .register(c)
                .unwrap_or_else(|e| unreachable!("each metric registers once: {e}"));
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            writes,
            leader,
            rotation_phase_seconds,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_process_metrics_and_build_info() {
        let text = Metrics::new().render();
        #[cfg(target_os = "linux")]
        assert!(
            text.contains("process_resident_memory_bytes "),
            "no process_* metrics in:\n{text}"
        );
        let line = format!(
            "dcdn_operator_build_info{{commit=\"{}\",version=\"{}\"}} 1",
            dcdn_node::COMMIT,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
}
