//! What a simulation run is asked: tiers, content, node capacities, the
//! network between tiers, churn, misbehaving peers, and the node's own FEC and
//! P2P settings. Read from TOML or YAML (by extension), every field defaulted,
//! unknown fields refused; the `[fec]` and `[p2p]` sections are the node's own
//! config types, so their defaults and bounds are the node's.

use crate::config::{FecSection, P2pSection};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {path}: {message}")]
    Parse { path: String, message: String },
    #[error("scenario {path}: the extension must be .toml, .yaml or .yml")]
    Format { path: String },
    #[error("scenario: {field} {why}")]
    Invalid { field: &'static str, why: String },
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// A label for reports.
    pub name: String,
    /// Seed of every random choice: the same scenario and seed give the same numbers.
    pub seed: u64,
    pub tiers: Tiers,
    pub content: Content,
    pub nodes: Nodes,
    pub network: Network,
    pub churn: Churn,
    pub peers: Peers,
    /// The node's own FEC settings (`[fec]` of the node config).
    pub fec: FecSection,
    /// The node's own P2P settings (`[p2p]` of the node config).
    pub p2p: P2pSection,
    pub run: RunLimits,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            seed: 1,
            tiers: Tiers::default(),
            // With no content section at all: the fidelity scenario's object.
            content: Content {
                object_mb: 64.0,
                ..Content::default()
            },
            nodes: Nodes::default(),
            network: Network::default(),
            churn: Churn::default(),
            peers: Peers::default(),
            fec: FecSection::default(),
            p2p: P2pSection::default(),
            run: RunLimits::default(),
        }
    }
}

/// Node counts (there is always exactly one origin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tiers {
    pub relays: u32,
    pub edges: u32,
}

impl Default for Tiers {
    fn default() -> Self {
        Self {
            relays: 1,
            edges: 6,
        }
    }
}

/// What is delivered: one object, or a live stream (a `[content]` section
/// names exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Content {
    /// Object size, MiB (0: no object).
    pub object_mb: f64,
    /// Live stream rate, Mbit/s (0: no live stream).
    pub live_mbps: f64,
    /// Live stream duration, seconds.
    pub live_seconds: f64,
    /// Chunk payload size, KiB.
    pub chunk_kb: u32,
}

impl Default for Content {
    fn default() -> Self {
        Self {
            object_mb: 0.0,
            live_mbps: 0.0,
            live_seconds: 0.0,
            chunk_kb: 256,
        }
    }
}

impl Content {
    pub fn is_live(&self) -> bool {
        self.live_mbps > 0.0
    }
}

/// Link capacities per tier, and optionally the store budgets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nodes {
    pub origin: Capacity,
    pub relay: Capacity,
    pub edge: Capacity,
    /// Relays' store budget, MiB (`storage.ring_buffer_size_mb`). Unset: every
    /// chunk fits. Set: each relay runs the node's `ChunkStore` (budget,
    /// oldest-first eviction, TTL) and serves only what it still holds.
    pub relay_store_mb: Option<u64>,
    /// Edges' store budget, MiB; as for relays.
    pub edge_store_mb: Option<u64>,
}

impl Default for Nodes {
    fn default() -> Self {
        Self {
            origin: Capacity::symmetric(10_000.0),
            relay: Capacity::symmetric(10_000.0),
            edge: Capacity::symmetric(1_000.0),
            relay_store_mb: None,
            edge_store_mb: None,
        }
    }
}

/// A node's upload and download capacity, Mbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub up_mbps: f64,
    pub down_mbps: f64,
}

impl Capacity {
    fn symmetric(mbps: f64) -> Self {
        Self {
            up_mbps: mbps,
            down_mbps: mbps,
        }
    }
}

/// The network between tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub origin_relay: Link,
    pub relay_edge: Link,
    pub edge_edge: Link,
    /// A share of edges whose links (to relays and to edges) see other loss.
    pub lossy_region: Option<Region>,
    /// Bytes of one datagram's shard payload (the node sends
    /// `max_datagram_size() - 64`; ~1,136 before path-MTU discovery).
    pub shard_bytes: u32,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            origin_relay: Link::lan(),
            relay_edge: Link {
                latency_ms: 20.0,
                jitter_ms: 5.0,
                ..Link::lan()
            },
            edge_edge: Link {
                latency_ms: 30.0,
                jitter_ms: 10.0,
                ..Link::lan()
            },
            lossy_region: None,
            shard_bytes: 1136,
        }
    }
}

/// One class of links.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    /// One-way latency: each pair of nodes gets a fixed base drawn uniformly
    /// from `latency_ms ± jitter_ms`, and each message adds up to
    /// `jitter_ms / 4` more.
    pub latency_ms: f64,
    pub jitter_ms: f64,
    /// Mean packet loss in [0, 1).
    pub loss: f64,
    /// Mean length of a loss burst, packets (1: independent losses;
    /// more: a Gilbert two-state channel with that mean burst).
    pub burst: f64,
}

impl Link {
    fn lan() -> Self {
        Self {
            latency_ms: 5.0,
            jitter_ms: 1.0,
            loss: 0.0,
            burst: 1.0,
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::lan()
    }
}

/// Edges in a region with their own loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Share of edges in the region, [0, 1].
    pub fraction: f64,
    pub loss: f64,
    #[serde(default = "one")]
    pub burst: f64,
}

/// `x > min`, false for NaN (so a NaN is refused, not let through).
fn above(x: f64, min: f64) -> bool {
    x > min
}

/// `x >= min`, false for NaN.
fn at_least(x: f64, min: f64) -> bool {
    x >= min
}

fn one() -> f64 {
    1.0
}

/// Edge churn, as events per edge per hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Graceful leaves (peers learn at once).
    pub leave_per_hour: f64,
    /// Crashes (peers learn after the QUIC idle timeout).
    pub crash_per_hour: f64,
    /// A node that left or crashed joins again this long after, with an
    /// empty store (0: never).
    pub rejoin_after_s: f64,
    /// How long peers take to notice a crash (`quic.idle_timeout_ms`).
    pub detect_crash_s: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            leave_per_hour: 0.0,
            crash_per_hour: 0.0,
            rejoin_after_s: 30.0,
            detect_crash_s: 6.0,
        }
    }
}

/// How edges behave and connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peers {
    /// Edge neighbours each edge keeps (bounded, like `discovery.max_peers`).
    pub neighbours: u32,
    /// Share of edges that download but never upload or announce.
    pub free_riders: f64,
    /// Share of edges that announce everything, unchoke everyone and send
    /// chunks that fail verification.
    pub malicious: f64,
    /// Clients start downloading spread uniformly over this many seconds.
    pub start_spread_s: f64,
    /// Chunks an edge fetches ahead of the one it serves (`ServeConfig::read_ahead`).
    pub read_ahead: u32,
    /// Edges swarm the whole object with the piece picker (`p2p::picker`):
    /// the reader's next `read_ahead` chunks by deadline, the rest
    /// rarest-first from neighbours, each relay asked for its share. False:
    /// an edge fetches only what its reader reads (the old behaviour).
    pub swarm: bool,
    /// Swarming, the reader's next `read_ahead` chunks carry deadlines and go
    /// first (to a relay when no neighbour has them). False: the edge pulls
    /// the object with no reader waiting on the next chunk — a preheat, or a
    /// client that takes the file once whole — so relays only seed.
    pub deadlines: bool,
    /// Run the scenario again with free-riders behaving honestly, to report
    /// how much they slow the honest edges down.
    pub measure_free_rider_cost: bool,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            neighbours: 32,
            free_riders: 0.0,
            malicious: 0.0,
            start_spread_s: 0.0,
            read_ahead: crate::roles::settings::READ_AHEAD as u32,
            swarm: true,
            deadlines: true,
            measure_free_rider_cost: true,
        }
    }
}

/// How FEC groups are assembled in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FecExec {
    /// `shards` when the run would insert under ~20 M shards, else `blocks`.
    Auto,
    /// Every surviving shard goes through the node's own `fec::Assembler`
    /// (one-byte placeholder shards; the Reed–Solomon rebuild really runs).
    Shards,
    /// Each block's fate is decided from its shard losses by the assembler's
    /// rule (complete with k of k+m; rebuilt if a data shard was missing).
    Blocks,
}

/// Limits of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunLimits {
    /// Virtual seconds after which the run stops, finished or not.
    pub max_time_s: f64,
    pub fec_exec: FecExec,
    /// Partitions the cluster is split into, each run on its own thread
    /// (edges dealt round; the origin and relays in the first). A run's
    /// numbers depend on this, never on how many cores run it. More than
    /// one needs an object swarmed without churn, over links whose
    /// latency is never 0 (see [`Scenario::lookahead_ns`]).
    pub partitions: u32,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_time_s: 3600.0,
            fec_exec: FecExec::Auto,
            partitions: 1,
        }
    }
}

/// Command-line overrides of a scenario's most-asked fields.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of relays.
    #[arg(long)]
    pub relays: Option<u32>,
    /// Number of edges.
    #[arg(long)]
    pub edges: Option<u32>,
    /// Deliver one object of this many MiB.
    #[arg(long, value_name = "MIB")]
    pub object_mb: Option<f64>,
    /// Deliver a live stream at this rate (with --live-seconds).
    #[arg(long, value_name = "MBPS")]
    pub live_mbps: Option<f64>,
    /// How long the live stream runs, seconds.
    #[arg(long, value_name = "S")]
    pub live_seconds: Option<f64>,
    /// Chunk size, KiB.
    #[arg(long, value_name = "KIB")]
    pub chunk_kb: Option<u32>,
    /// Packet loss on relay-edge and edge-edge links, [0, 0.9).
    #[arg(long)]
    pub loss: Option<f64>,
    /// Share of edges that never upload.
    #[arg(long, value_name = "SHARE")]
    pub free_riders: Option<f64>,
    /// Share of edges that send bad chunks.
    #[arg(long, value_name = "SHARE")]
    pub malicious: Option<f64>,
}

impl Overrides {
    /// Writes the given flags into `s`; an object or live flag replaces the
    /// other kind of content.
    pub fn apply(&self, s: &mut Scenario) {
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(v) = self.relays {
            s.tiers.relays = v;
        }
        if let Some(v) = self.edges {
            s.tiers.edges = v;
        }
        if let Some(v) = self.object_mb {
            s.content.object_mb = v;
            s.content.live_mbps = 0.0;
        }
        if let Some(v) = self.live_mbps {
            s.content.live_mbps = v;
            s.content.object_mb = 0.0;
        }
        if let Some(v) = self.live_seconds {
            s.content.live_seconds = v;
        }
        if let Some(v) = self.chunk_kb {
            s.content.chunk_kb = v;
        }
        if let Some(v) = self.loss {
            s.network.relay_edge.loss = v;
            s.network.edge_edge.loss = v;
        }
        if let Some(v) = self.free_riders {
            s.peers.free_riders = v;
        }
        if let Some(v) = self.malicious {
            s.peers.malicious = v;
        }
    }
}

impl Scenario {
    /// Loads a TOML or YAML scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        let parse = |message: String| ScenarioError::Parse {
            path: shown.clone(),
            message,
        };
        let s: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| parse(e.to_string()))?,
            Some("yaml" | "yml") => {
                serde_norway::from_str(&text).map_err(|e| parse(e.to_string()))?
            }
            _ => return Err(ScenarioError::Format { path: shown }),
        };
        s.validate()?;
        Ok(s)
    }

    /// Refuses values the model cannot run.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |field, why: &str| {
            Err(ScenarioError::Invalid {
                field,
                why: why.to_owned(),
            })
        };
        if self.tiers.relays == 0 {
            return bad("tiers.relays", "must be at least 1");
        }
        if self.tiers.edges == 0 || self.tiers.edges > 1_000_000 {
            return bad("tiers.edges", "must be in 1..=1000000");
        }
        let c = &self.content;
        if c.chunk_kb == 0 || c.chunk_kb > 4096 {
            return bad("content.chunk_kb", "must be in 1..=4096 (the node's bound)");
        }
        if (c.object_mb > 0.0) == c.is_live() {
            return bad(
                "content",
                "give exactly one of object_mb > 0 or live_mbps > 0",
            );
        }
        if c.is_live() && !above(c.live_seconds, 0.0) {
            return bad("content.live_seconds", "must be > 0 for a live stream");
        }
        if self.chunks() > 4_000_000 {
            return bad("content", "more than 4,000,000 chunks");
        }
        for (field, cap) in [
            ("nodes.origin", self.nodes.origin),
            ("nodes.relay", self.nodes.relay),
            ("nodes.edge", self.nodes.edge),
        ] {
            if !(above(cap.up_mbps, 0.0) && above(cap.down_mbps, 0.0)) {
                return bad(field, "capacities must be > 0 Mbit/s");
            }
        }
        for (field, mb) in [
            ("nodes.relay_store_mb", self.nodes.relay_store_mb),
            ("nodes.edge_store_mb", self.nodes.edge_store_mb),
        ] {
            if mb.is_some_and(|mb| mb == 0 || mb > 1_048_576) {
                return bad(field, "must be in 1..=1048576 MiB (the node's bound)");
            }
        }
        let n = &self.network;
        let mut links = vec![
            (
                "network.origin_relay",
                n.origin_relay.loss,
                n.origin_relay.burst,
            ),
            ("network.relay_edge", n.relay_edge.loss, n.relay_edge.burst),
            ("network.edge_edge", n.edge_edge.loss, n.edge_edge.burst),
        ];
        if let Some(r) = n.lossy_region {
            if !(0.0..=1.0).contains(&r.fraction) {
                return bad("network.lossy_region.fraction", "must be in [0, 1]");
            }
            links.push(("network.lossy_region", r.loss, r.burst));
        }
        for (field, loss, burst) in links {
            if !(0.0..0.9).contains(&loss) {
                return bad(field, "loss must be in [0, 0.9)");
            }
            if !at_least(burst, 1.0) {
                return bad(field, "burst must be >= 1 packet");
            }
        }
        for (field, l) in [
            ("network.origin_relay", n.origin_relay),
            ("network.relay_edge", n.relay_edge),
            ("network.edge_edge", n.edge_edge),
        ] {
            if !(at_least(l.latency_ms, 0.0) && at_least(l.jitter_ms, 0.0)) {
                return bad(field, "latency and jitter must be >= 0");
            }
        }
        if !(64..=65_000).contains(&n.shard_bytes) {
            return bad("network.shard_bytes", "must be in 64..=65000");
        }
        let p = &self.peers;
        if !(0.0..=1.0).contains(&p.free_riders)
            || !(0.0..=1.0).contains(&p.malicious)
            || p.free_riders + p.malicious > 1.0
        {
            return bad(
                "peers",
                "free_riders and malicious are shares in [0, 1] summing to at most 1",
            );
        }
        if p.neighbours > 1000 {
            return bad(
                "peers.neighbours",
                "must be at most 1000 (the choker's bound)",
            );
        }
        if p.read_ahead == 0 || p.read_ahead > 256 {
            return bad("peers.read_ahead", "must be in 1..=256");
        }
        if !(at_least(self.churn.leave_per_hour, 0.0) && at_least(self.churn.crash_per_hour, 0.0)) {
            return bad("churn", "rates must be >= 0");
        }
        if !above(self.run.max_time_s, 0.0) {
            return bad("run.max_time_s", "must be > 0");
        }
        let parts = self.run.partitions;
        if parts == 0 || parts > 64 || parts > self.tiers.edges {
            return bad(
                "run.partitions",
                "must be in 1..=64 and at most tiers.edges",
            );
        }
        if parts > 1 {
            // Partitions learn of each other only through messages a link
            // latency long: every way one node's state reaches another's
            // must be one. Live pushes, churn and in-order readers read
            // other nodes' state directly.
            if self.content.is_live() {
                return bad(
                    "run.partitions",
                    "more than 1 needs an object, not a live stream",
                );
            }
            if !self.peers.swarm || !self.p2p.swarm {
                return bad(
                    "run.partitions",
                    "more than 1 needs edges that swarm (peers.swarm and p2p.swarm)",
                );
            }
            if self.churn.leave_per_hour > 0.0 || self.churn.crash_per_hour > 0.0 {
                return bad("run.partitions", "more than 1 needs a run without churn");
            }
            if self.lookahead_ns() == 0 {
                return bad(
                    "run.partitions",
                    "more than 1 needs relay_edge and edge_edge links whose latency_ms exceeds jitter_ms",
                );
            }
        }
        if self.fec.min_parity.get() > self.fec.max_parity.get() {
            return bad("fec.min_parity", "must not exceed fec.max_parity");
        }
        Ok(())
    }

    /// The shortest latency any message between an edge and another node
    /// can have, nanoseconds: a pair's base is at least `latency_ms -
    /// jitter_ms`. Partitions run this far apart in virtual time.
    pub fn lookahead_ns(&self) -> u64 {
        let n = &self.network;
        [n.relay_edge, n.edge_edge]
            .iter()
            .map(|l| ((l.latency_ms - l.jitter_ms).max(0.0) * 1e6) as u64)
            .min()
            .unwrap_or(0)
    }

    /// Chunk payload size, bytes.
    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.content.chunk_kb) << 10
    }

    /// Bytes of content published.
    pub fn content_bytes(&self) -> u64 {
        let c = &self.content;
        if c.is_live() {
            (c.live_mbps * 125_000.0 * c.live_seconds) as u64
        } else {
            (c.object_mb * 1_048_576.0) as u64
        }
    }

    /// Chunks published.
    pub fn chunks(&self) -> u64 {
        self.content_bytes().div_ceil(self.chunk_bytes()).max(1)
    }

    /// Payload bytes of chunk `seq` (the last one may be short).
    pub fn chunk_len(&self, seq: u64) -> u64 {
        let size = self.chunk_bytes();
        let total = self.content_bytes().max(1);
        (total - (seq * size).min(total)).min(size).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_from_toml_with_node_sections_and_refuses_unknown_fields() {
        let s: Scenario = toml::from_str(
            "seed = 7\n[tiers]\nrelays = 2\nedges = 10\n[content]\nobject_mb = 4.0\nchunk_kb = 512\n[fec]\ndefault_parity_count = 2\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.seed, 7);
        assert_eq!(s.chunks(), 8);
        assert_eq!(s.fec.default_parity_count.get(), 2);
        assert_eq!(s.p2p, P2pSection::default());
        assert!(toml::from_str::<Scenario>("[tiers]\nrelay = 2\n").is_err());
    }

    #[test]
    fn every_example_scenario_loads_and_yaml_works_too() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sim");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::from_file(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 6, "deploy/sim holds the example scenarios");
        let yaml = std::env::temp_dir().join(format!("dcdn-sim-{}.yaml", std::process::id()));
        std::fs::write(
            &yaml,
            "tiers: {relays: 3, edges: 9}\ncontent: {live_mbps: 2.0, live_seconds: 3.0}\n",
        )
        .unwrap();
        let s = Scenario::from_file(&yaml).unwrap();
        let _ = std::fs::remove_file(&yaml);
        assert_eq!((s.tiers.relays, s.tiers.edges), (3, 9));
        assert!(s.content.is_live());
    }

    #[test]
    fn object_and_live_are_exclusive_and_the_last_chunk_is_short() {
        let mut s = Scenario::default();
        s.content.live_mbps = 8.0;
        s.content.live_seconds = 1.0;
        assert!(s.validate().is_err());
        s.content.object_mb = 0.0;
        s.validate().unwrap();
        assert_eq!(s.content_bytes(), 1_000_000);
        assert_eq!(s.chunks(), 4);
        assert_eq!(s.chunk_len(3), 1_000_000 - 3 * 262_144);
    }
}
