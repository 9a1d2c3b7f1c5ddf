//! What a run reports: completion-time and live-latency percentiles per
//! tier, bytes by tier (origin offload), FEC outcomes, rejections and bans,
//! free-rider cost, churn, and the simulator's own speed — as a table, as
//! JSON, and as an SVG of the completion-time CDF per tier.

use serde::Serialize;
use std::fmt::Write as _;

/// Percentiles of one sample set, in the sample's unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `sorted` (ascending); None when empty.
    pub fn of(sorted: &[f64]) -> Option<Self> {
        let last = *sorted.last()?;
        let at = |q: f64| {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: last,
        })
    }
}

/// Completion of one tier, seconds from each node's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierCompletion {
    pub tier: String,
    pub nodes: usize,
    pub completed: usize,
    /// Share of the chunks a node of this tier held at the end, on average
    /// (relays split an object between them, so they rarely hold all of it).
    pub mean_share_held: f64,
    pub seconds: Option<Percentiles>,
    /// Sorted completion times, for the CDF.
    #[serde(skip)]
    pub samples: Vec<f64>,
}

/// Live delivery latency of one tier, milliseconds from publication.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierLatency {
    pub tier: String,
    pub deliveries: usize,
    pub ms: Option<Percentiles>,
}

/// Bytes sent by each tier (pushes count every shard frame, pulls their
/// payload, as the node's `dcdn_origin_offload_ratio` does).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bytes {
    pub origin: u64,
    pub relays: u64,
    pub edges: u64,
    /// Payload bytes edges received (pushes and pulls, each chunk once).
    pub edges_received: u64,
    /// Origin bytes sent per content byte (1.0: every byte left the origin once).
    pub origin_offload_ratio: f64,
    /// Share of what edges received that came from other edges.
    pub edge_to_edge_share: f64,
}

/// FEC outcomes of pushed chunks, as `dcdn_fec_groups_total{outcome}`
/// counts them (one per chunk; `failed` ones expire and are repaired).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fec {
    pub complete: u64,
    pub rebuilt: u64,
    pub failed: u64,
    pub relays: FecCounts,
    pub edges: FecCounts,
    /// Chunks fetched over a stream after FEC could not rebuild them.
    pub repairs: u64,
    /// `shards` (the real assembler ran on placeholder shards) or `blocks`.
    pub exec: String,
}

/// FEC outcomes at one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FecCounts {
    pub complete: u64,
    pub rebuilt: u64,
    pub failed: u64,
}

impl From<[u64; 3]> for FecCounts {
    fn from([complete, rebuilt, failed]: [u64; 3]) -> Self {
        Self {
            complete,
            rebuilt,
            failed,
        }
    }
}

/// What free-riders cost the honest edges: the same run with them honest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FreeRiderCost {
    pub honest_p50_s: f64,
    pub honest_p90_s: f64,
    pub baseline_p50_s: f64,
    pub baseline_p90_s: f64,
    /// (with riders) / (without), at p50 and p90; 1.0 = no slowdown.
    pub slowdown_p50: f64,
    pub slowdown_p90: f64,
}

/// The simulator's own cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Perf {
    pub events: u64,
    pub wall_s: f64,
    pub events_per_s: f64,
    pub virtual_s: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), if known.
    pub peak_rss_bytes: Option<u64>,
    pub rss_bytes_per_node: Option<u64>,
}

/// Why the run stopped, so an unfinished run is never silent about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct End {
    /// `complete`, `time_limit` (chunks were still arriving) or `stalled`.
    pub reason: String,
    /// One sentence a reader can act on.
    pub detail: String,
    /// Object readers that had not finished.
    pub unfinished: u64,
    /// When a node last received a chunk it lacked, seconds of virtual time.
    pub last_progress_s: f64,
    /// Chunks no relay or edge held: what never left the origin.
    pub chunks_nowhere: u64,
}

/// What each tier's links did over one stretch of virtual time: the share
/// of the tier's capacity used (0..1), and how long a reply waited for its
/// sender's upload pipe on average.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtilRow {
    pub from_s: f64,
    pub to_s: f64,
    pub origin_up: f64,
    pub relays_up: f64,
    pub edges_up: f64,
    pub edges_down: f64,
    pub relay_reply_wait_ms: f64,
    pub edge_reply_wait_ms: f64,
}

/// A run's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub origins: u32,
    pub relays: u32,
    pub edges: u32,
    pub content: String,
    pub content_bytes: u64,
    pub chunks: u64,
    pub completion: Vec<TierCompletion>,
    pub live_latency: Vec<TierLatency>,
    pub bytes: Bytes,
    pub fec: Fec,
    /// Chunks the node's `ChunkStore` evicted or expired (tiers with a budget).
    pub store_evictions: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    /// Edges' pulls a relay answered "busy" (`p2p::admission`).
    pub busy_replies: u64,
    /// Swarm requests given up after `request_timeout` and cancelled.
    pub swarm_timeouts: u64,
    pub free_rider_cost: Option<FreeRiderCost>,
    pub crashes: u64,
    pub leaves: u64,
    pub rejoins: u64,
    pub end: End,
    /// Per-tier link utilisation over time (at most a few dozen rows).
    pub utilisation: Vec<UtilRow>,
    pub perf: Perf,
}

fn fmt_p(p: &Option<Percentiles>, scale: f64) -> String {
    match p {
        Some(p) => format!(
            "{:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.p50 * scale,
            p.p90 * scale,
            p.p99 * scale,
            p.p999 * scale,
            p.max * scale
        ),
        None => format!("{:>9} {:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-", "-"),
    }
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}): 1 origin, {} relays, {} edges; {} ({} bytes in {} chunks)",
            self.scenario,
            self.seed,
            self.relays,
            self.edges,
            self.content,
            self.content_bytes,
            self.chunks
        );
        let live = !self.live_latency.iter().all(|l| l.deliveries == 0);
        if !live {
            let _ = writeln!(
                s,
                "\ncompletion time (s)   nodes  done  held       p50       p90       p99     p99.9       max"
            );
            for t in &self.completion {
                let _ = writeln!(
                    s,
                    "  {:<18} {:>6} {:>5} {:>4.0}% {}",
                    t.tier,
                    t.nodes,
                    t.completed,
                    t.mean_share_held * 100.0,
                    fmt_p(&t.seconds, 1.0)
                );
            }
        } else {
            let _ = writeln!(
                s,
                "\nlive delivery latency (ms)  chunks       p50       p90       p99     p99.9       max"
            );
            for t in &self.live_latency {
                if t.deliveries > 0 {
                    let _ = writeln!(
                        s,
                        "  {:<24} {:>7} {}",
                        t.tier,
                        t.deliveries,
                        fmt_p(&t.ms, 1.0)
                    );
                }
            }
        }
        let b = &self.bytes;
        let _ = writeln!(
            s,
            "\nbytes sent: origin {} relays {} edges {}; origin offload ratio {:.3}; edges got {:.1}% from edges",
            b.origin,
            b.relays,
            b.edges,
            b.origin_offload_ratio,
            b.edge_to_edge_share * 100.0
        );
        let f = &self.fec;
        let _ = writeln!(
            s,
            "FEC ({}): {} complete, {} rebuilt with parity, {} failed (relays {}/{}/{}, edges {}/{}/{}); {} repairs",
            f.exec,
            f.complete,
            f.rebuilt,
            f.failed,
            f.relays.complete,
            f.relays.rebuilt,
            f.relays.failed,
            f.edges.complete,
            f.edges.rebuilt,
            f.edges.failed,
            f.repairs
        );
        let _ = writeln!(
            s,
            "store evictions {}; chunks rejected {}, peers banned {}; relay busy answers {}, swarm requests timed out {}; churn: {} crashes, {} leaves, {} rejoins",
            self.store_evictions,
            self.chunks_rejected,
            self.peers_banned,
            self.busy_replies,
            self.swarm_timeouts,
            self.crashes,
            self.leaves,
            self.rejoins
        );
        if let Some(c) = &self.free_rider_cost {
            let _ = writeln!(
                s,
                "free-riders slow honest edges: p50 {:.3}s vs {:.3}s without (x{:.3}), p90 {:.3}s vs {:.3}s (x{:.3})",
                c.honest_p50_s,
                c.baseline_p50_s,
                c.slowdown_p50,
                c.honest_p90_s,
                c.baseline_p90_s,
                c.slowdown_p90
            );
        }
        if !self.utilisation.is_empty() {
            let _ = writeln!(
                s,
                "\nlink use (share of capacity)  origin↑ relays↑  edges↑  edges↓  reply wait ms: relay   edge"
            );
            for r in &self.utilisation {
                let _ = writeln!(
                    s,
                    "  {:>7.1}–{:<7.1} s        {:>6.0}% {:>6.0}% {:>6.0}% {:>6.0}%          {:>8.1} {:>6.1}",
                    r.from_s,
                    r.to_s,
                    r.origin_up * 100.0,
                    r.relays_up * 100.0,
                    r.edges_up * 100.0,
                    r.edges_down * 100.0,
                    r.relay_reply_wait_ms,
                    r.edge_reply_wait_ms
                );
            }
        }
        let _ = writeln!(s, "ended: {} — {}", self.end.reason, self.end.detail);
        let p = &self.perf;
        let _ = writeln!(
            s,
            "sim: {} events in {:.2}s wall ({:.0} events/s), {:.1}s virtual{}",
            p.events,
            p.wall_s,
            p.events_per_s,
            p.virtual_s,
            match (p.peak_rss_bytes, p.rss_bytes_per_node) {
                (Some(r), Some(n)) => format!("; peak RSS {} MiB, {} bytes/node", r >> 20, n),
                _ => String::new(),
            }
        );
        s
    }

    /// An SVG drawing of the completion-time CDF per tier (for a live run,
    /// of nothing but a note: its figure is the latency table).
    pub fn svg(&self) -> String {
        const W: f64 = 720.0;
        const H: f64 = 440.0;
        const L: f64 = 70.0;
        const R: f64 = 20.0;
        const T: f64 = 40.0;
        const B: f64 = 60.0;
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
        let xmax = self
            .completion
            .iter()
            .filter_map(|t| t.samples.last().copied())
            .fold(0.0f64, f64::max)
            .max(1e-3);
        let x = |v: f64| L + (v / xmax) * (W - L - R);
        let y = |f: f64| H - B - f * (H - T - B);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{} — completion-time CDF per tier (seed {})</text>"#,
            W / 2.0,
            xml_escape(&self.scenario),
            self.seed
        );
        // Axes and grid.
        for i in 0..=5 {
            let f = f64::from(i) / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
                W - R,
                L - 6.0,
                y(f) + 4.0,
                f * 100.0,
                y = y(f)
            );
            let v = xmax * f;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{T}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{v:.1}</text>"##,
                H - B,
                H - B + 16.0,
                x = x(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#000"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#000"/>"##,
            H - B,
            W - R,
            H - B,
            H - B
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">seconds from start</text>"#,
            (L + W - R) / 2.0,
            H - B + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">nodes complete</text>"#,
            (T + H - B) / 2.0,
            (T + H - B) / 2.0
        );
        let mut legend = 0;
        for (i, t) in self.completion.iter().enumerate() {
            if t.samples.is_empty() || t.nodes == 0 {
                continue;
            }
            let colour = colours[i % colours.len()];
            // A step curve, thinned to at most ~600 points.
            let step = (t.samples.len() / 600).max(1);
            let mut pts = format!("{:.1},{:.1}", x(0.0), y(0.0));
            let n = t.nodes as f64;
            for (j, v) in t.samples.iter().enumerate() {
                if j % step == 0 || j + 1 == t.samples.len() {
                    let _ = write!(
                        pts,
                        " {:.1},{:.1} {:.1},{:.1}",
                        x(*v),
                        y(j as f64 / n),
                        x(*v),
                        y((j + 1) as f64 / n)
                    );
                }
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>"#
            );
            let ly = T + 14.0 + 18.0 * f64::from(legend);
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{:.1}">{} ({} of {})</text>"#,
                W - R - 190.0,
                W - R - 165.0,
                W - R - 158.0,
                ly + 4.0,
                xml_escape(&t.tier),
                t.completed,
                t.nodes
            );
            legend += 1;
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Peak resident memory of this process, from `/proc/self/status`.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Percentiles::of(&[]), None);
        let one = Percentiles::of(&[3.0]).unwrap();
        assert_eq!((one.p50, one.max), (3.0, 3.0));
    }
}
