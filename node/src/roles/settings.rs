//! The runtime's view of the configuration: durations as `Duration`, sizes
//! in bytes, discovery resolved into plans. Built from [`NodeConfig`] in one
//! place, so the rest of `roles` never reads the file format.

use crate::config::NodeConfig;
use crate::fec::ParityPolicy;
use crate::roles::discovery::DiscoveryConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// A node's role in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Origin,
    Relay,
    Edge,
}

impl Role {
    /// Whether a node of this role feeds nodes of role `me`.
    pub fn is_upstream_of(self, me: Role) -> bool {
        matches!(
            (self, me),
            (Role::Origin, Role::Relay) | (Role::Origin, Role::Edge) | (Role::Relay, Role::Edge)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Relay => "relay",
            Role::Edge => "edge",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub config: NodeConfig,
}

impl NodeSettings {
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
