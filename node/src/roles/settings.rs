//! The runtime's view of the configuration: durations as `Duration`, sizes
//! in bytes, discovery resolved into plans. Built from [`NodeConfig`] in one
//! place, so the rest of `roles` never reads the file format.

use crate::config::{NodeConfig, split_host_port};
use crate::crypto::{ReplayConfig, ReputationConfig, VerifyConfig};
use crate::fec::AssemblerConfig;
use crate::fec::ParityPolicy;
use crate::p2p::ChokerConfig;
use crate::p2p::admission::AdmissionConfig;
use crate::p2p::picker::PickerConfig;
use crate::roles::discovery::DiscoveryConfig;
use crate::store::StoreConfig;
use crate::transport::MeshLimits;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::config::Role;

/// Chunks a reader keeps in flight ahead of the one it writes: the node's
/// HTTP reader (`ServeConfig::read_ahead`) and `dcdn sim`'s default reader.
pub const READ_AHEAD: usize = 4;

/// Everything the running node needs, resolved.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub role: Role,
    pub mesh_listen: SocketAddr,
    /// The address other nodes reach this one at (dial-direction tie-break).
    pub mesh_advertise: SocketAddr,
    pub http_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Slow-client limits of every HTTP listener.
    pub http_limits: super::listener::Limits,
    pub upstreams: Option<DiscoveryConfig>,
    pub peers: Option<DiscoveryConfig>,
    pub store_budget_bytes: usize,
    pub chunk_ttl: Duration,
    pub fec_k: u16,
    pub fec_parity: u16,
    pub fec_min_parity: u16,
    pub fec_max_parity: u16,
    pub fec_adaptive: bool,
    pub chunk_size: usize,
    pub max_object_bytes: u64,
    pub request_timeout: Duration,
    /// How long an edge waits for a pushed live chunk before repairing it.
    pub repair_delay: Duration,
    pub unchoke_interval: Duration,
    /// How often a downstream node reports push loss to its upstream.
    pub loss_report_every: Duration,
    /// How long a fetch that found no source (or whose source failed it)
    /// waits before asking again: the swarm's per-peer back-off.
    pub fetch_retry: Duration,
    /// See [`READ_AHEAD`].
    pub read_ahead: usize,
    /// Edges pull whole objects with the piece picker (`[p2p] swarm`).
    pub swarm: bool,
    /// How far a signed frame's timestamp may run ahead of our clock.
    pub max_clock_skew_ms: u64,
    pub config: NodeConfig,
    /// The file the config came from, for `POST /v1/config/reload`.
    pub config_path: Option<std::path::PathBuf>,
}

impl NodeSettings {
    /// Resolves a validated config.
    pub fn from_config(config: NodeConfig) -> Self {
        let c = &config;
        let discovery = |list: &[String], dns: &Option<String>| {
            if list.is_empty() && dns.is_none() {
                return None;
            }
            Some(DiscoveryConfig {
                static_peers: list.to_vec(),
                dns: dns.as_deref().and_then(|d| split_host_port(d).ok()),
                interval: Duration::from_secs(c.discovery.resolve_interval_seconds.get()),
                max_peers: c.discovery.max_peers.get() as usize,
                // The host name too: the operator names every pod of a
                // tier alike (`node.name` is the workload's name), a pod's
                // host name is its own and survives its restarts.
                key: format!(
                    "{}/{}",
                    c.node.name,
                    rustix::system::uname().nodename().to_string_lossy()
                ),
                exclude: vec![],
            })
        };
        let mesh_advertise = c.network.mesh_advertise.unwrap_or(c.network.mesh_listen);
        let mut upstreams = discovery(&c.discovery.upstream, &c.discovery.upstream_dns);
        let mut peers = if c.node.role == Role::Edge {
            discovery(&c.discovery.peers, &c.discovery.peers_dns)
        } else {
            None
        };
        for d in [&mut upstreams, &mut peers].into_iter().flatten() {
            d.exclude.push(mesh_advertise);
        }
        Self {
            name: c.node.name.clone(),
            role: c.node.role,
            mesh_listen: c.network.mesh_listen,
            mesh_advertise,
            http_listen: c.network.http_listen,
            admin_listen: c.network.admin_listen,
            http_limits: super::listener::Limits {
                header_timeout: Duration::from_millis(c.network.http_header_timeout_ms.get()),
                idle_timeout: Duration::from_millis(c.network.http_idle_timeout_ms.get()),
                max_connections_per_ip: c.network.http_max_connections_per_ip.get() as usize,
            },
            upstreams,
            peers,
            store_budget_bytes: (c.storage.ring_buffer_size_mb.get() as usize) << 20,
            chunk_ttl: Duration::from_secs(c.storage.chunk_ttl_seconds.get()),
            fec_k: c.fec.default_block_size.get() as u16,
            fec_parity: c.fec.default_parity_count.get() as u16,
            fec_min_parity: c.fec.min_parity.get() as u16,
            fec_max_parity: c.fec.max_parity.get() as u16,
            fec_adaptive: c.fec.adaptive,
            chunk_size: (c.origin.chunk_size_kb.get() as usize) << 10,
            max_object_bytes: c.origin.max_object_mb.get() << 20,
            request_timeout: Duration::from_secs(10),
            repair_delay: Duration::from_millis(150),
            unchoke_interval: Duration::from_secs(c.p2p.unchoke_interval_seconds.get()),
            loss_report_every: Duration::from_millis(500),
            fetch_retry: Duration::from_millis(500),
            read_ahead: READ_AHEAD,
            swarm: c.p2p.swarm,
            max_clock_skew_ms: c.crypto.max_clock_skew_ms.get(),
            config,
            config_path: None,
        }
    }

    pub fn mesh_limits(&self) -> MeshLimits {
        let q = &self.config.quic;
        MeshLimits {
            max_connections: q.max_connections.get() as usize,
            max_streams_per_peer: q.max_streams_per_peer.get() as u32,
            idle_timeout: Duration::from_millis(q.idle_timeout_ms.get()),
            keep_alive: Duration::from_millis(q.keep_alive_ms.get()),
            handshake_timeout: Duration::from_millis(q.handshake_timeout_ms.get()),
            socket_buffer_bytes: (q.socket_buffer_kb.get() as usize) << 10,
            congestion: q.congestion,
        }
    }

    pub fn verify_config(&self) -> VerifyConfig {
        let skew = self.config.crypto.max_clock_skew_ms.get();
        VerifyConfig {
            max_age_ms: self.chunk_ttl.as_millis() as u64 + skew,
            max_skew_ms: skew,
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            budget_bytes: self.store_budget_bytes,
            ttl: self.chunk_ttl,
        }
    }

    pub fn replay_config(&self) -> ReplayConfig {
        ReplayConfig {
            window: self.config.crypto.replay_window.get(),
            max_streams: 4096,
        }
    }

    pub fn reputation_config(&self) -> ReputationConfig {
        ReputationConfig::default()
    }

    pub fn assembler_config(&self) -> AssemblerConfig {
        let max_bytes = (self.config.storage.reassembly_memory_mb.get() as usize) << 20;
        AssemblerConfig {
            max_bytes,
            max_age: Duration::from_millis(self.config.fec.reassembly_timeout_ms.get()),
            remember_done: 65_536,
            // A push upstream is one peer; half the cap lets it burst while
            // a hostile sender can never take the whole budget.
            max_bytes_per_source: max_bytes / 2,
            // Relays and edges do not know the origin's chunk size: allow
            // the protocol's largest.
            max_chunk_bytes: crate::fec::MAX_CHUNK_FRAME_LEN,
        }
    }

    /// A relay's admission of edges' pulls: its uplink is the upload
    /// budget of `[p2p] max_upload_mbps`.
    pub fn admission_config(&self) -> AdmissionConfig {
        AdmissionConfig::new(self.config.p2p.max_upload_mbps.get() * 125_000)
    }

    pub fn choker_config(&self) -> ChokerConfig {
        let p = &self.config.p2p;
        ChokerConfig {
            regular_unchoke_count: p.regular_unchoke_count.get() as usize,
            optimistic_unchoke_count: p.optimistic_unchoke_count.get() as usize,
            max_upload_bytes_per_sec: p.max_upload_mbps.get() * 125_000,
            rate_window: Duration::from_secs(p.rate_window_seconds.get()),
            optimistic_rotation_ticks: 3,
            max_peers: 1024,
        }
    }

    /// The piece picker for an object of `pieces` chunks of `piece_bytes`:
    /// a peer's rate starts at the node's upload cap (the link it can use)
    /// and requests time out like every other pull.
    pub fn picker_config(&self, pieces: u32, piece_bytes: u64) -> PickerConfig {
        PickerConfig {
            initial_rate_bytes_per_sec: self.config.p2p.max_upload_mbps.get() * 125_000,
            request_timeout: self.request_timeout,
            max_peers: 1024,
            // Replies queue behind each other on one connection: a deep
            // pipeline of bulk pieces at a relay makes a reader's request
            // wait behind all of them (seen as 10 s timeouts on a loaded
            // loopback cluster at 32).
            max_pipeline: 8,
            ..PickerConfig::for_object(pieces, piece_bytes)
        }
    }

    /// A fresh parity policy for one downstream link.
    pub fn parity_policy(&self) -> ParityPolicy {
        ParityPolicy::new(
            self.fec_k,
            self.fec_parity,
            self.fec_min_parity,
            self.fec_max_parity,
            self.fec_adaptive,
        )
    }
}
