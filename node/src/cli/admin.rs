//! `dcdn admin` (one node's admin API, every route) and `dcdn status` (a
//! whole cluster at a glance from its nodes' admin URLs).

use super::join;
use crate::client::Client;
use anyhow::Context;
use hyper::Method;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// One call of `dcdn admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Status,
    Peers,
    Store,
    Config,
    Keys,
    KeyAdd { public_key: String },
    KeyActivate { id: String },
    KeyRevoke { id: String },
    Reload,
}

impl Call {
    /// The method and path of the admin API route.
    pub fn route(&self) -> (Method, String) {
        match self {
            Self::Status => (Method::GET, "/v1/status".into()),
            Self::Peers => (Method::GET, "/v1/peers".into()),
            Self::Store => (Method::GET, "/v1/store".into()),
            Self::Config => (Method::GET, "/v1/config".into()),
            Self::Keys => (Method::GET, "/v1/keys".into()),
            Self::KeyAdd { .. } => (Method::POST, "/v1/keys".into()),
            Self::KeyActivate { id } => (Method::POST, format!("/v1/keys/{id}/activate")),
            Self::KeyRevoke { id } => (Method::POST, format!("/v1/keys/{id}/revoke")),
            Self::Reload => (Method::POST, "/v1/config/reload".into()),
        }
    }
}

/// Calls one admin route and returns its JSON answer.
pub async fn call(base: &str, token: Option<&str>, call: &Call) -> anyhow::Result<Value> {
    let client = Client::new(Duration::from_secs(10));
    let (method, path) = call.route();
    let url = join(base, &path);
    let (headers, body) = match call {
        Call::KeyAdd { public_key } => (
            vec![(hyper::header::CONTENT_TYPE, "application/json".to_owned())],
            axum::body::Body::from(serde_json::json!({ "public_key": public_key }).to_string()),
        ),
        _ => (Vec::new(), axum::body::Body::empty()),
    };
    let resp = client.send(method, &url, token, &headers, body).await?;
    serde_json::from_slice(&resp.body).with_context(|| format!("the answer of {url} is not JSON"))
}

/// One node's line of `dcdn status`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub admin: String,
    /// Set when the node could not be asked; the other fields are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What `error` means as an exit code.
    #[serde(skip)]
    pub exit: Option<super::Exit>,
    pub name: Option<String>,
    pub role: Option<String>,
    pub version: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub peers: Option<u64>,
    pub store_bytes: Option<u64>,
    pub store_budget_bytes: Option<u64>,
    pub active_key: Option<String>,
    pub keyring_generation: Option<u64>,
    /// Keys this node trusts but does not sign with, nor has revoked.
    pub trusted_keys: Option<u64>,
    /// Origins only: mesh bytes out per byte ingested.
    pub origin_offload_ratio: Option<f64>,
    /// Edges: objects being pulled whole now (swarm or preheat) and how far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub swarms: Vec<crate::roles::swarm::SwarmStatus>,
}

/// `dcdn status` for a cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    /// `steady` when every node signs/verifies with one active key and
    /// trusts no other; `rotating` when a second key is trusted somewhere
    /// or nodes disagree on the active key; `unknown` if a node is down.
    pub rotation: &'static str,
}

async fn node_status(client: &Client, admin: &str, token: Option<&str>) -> NodeStatus {
    let mut s = NodeStatus {
        admin: admin.to_owned(),
        error: None,
        exit: None,
        name: None,
        role: None,
        version: None,
        uptime_seconds: None,
        peers: None,
        store_bytes: None,
        store_budget_bytes: None,
        active_key: None,
        keyring_generation: None,
        trusted_keys: None,
        origin_offload_ratio: None,
        swarms: Vec::new(),
    };
    let urls = ["/v1/status", "/v1/store", "/v1/keys"].map(|p| join(admin, p));
    let (status, store, keys) = tokio::join!(
        client.get_json(&urls[0], token),
        client.get_json(&urls[1], token),
        client.get_json(&urls[2], token),
    );
    let status = match status {
        Ok(v) => v,
        Err(e) => {
            s.error = Some(e.to_string());
            s.exit = Some(super::client_exit(&e));
            return s;
        }
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    s.name = text(&status["name"]);
    s.role = text(&status["role"]);
    s.version = text(&status["version"]);
    s.uptime_seconds = status["uptime_seconds"].as_u64();
    s.peers = status["peers"].as_u64();
    s.active_key = text(&status["active_key"]);
    s.keyring_generation = status["keyring_generation"].as_u64();
    s.swarms = serde_json::from_value(status["swarms"].clone()).unwrap_or_default();
    if let Ok(store) = store {
        s.store_bytes = store["bytes"].as_u64();
        s.store_budget_bytes = store["budget_bytes"].as_u64();
    }
    if let Ok(keys) = keys {
        s.trusted_keys = keys["keys"]
            .as_array()
            .map(|k| k.iter().filter(|k| k["state"] == "trusted").count() as u64);
    }
    if s.role.as_deref() == Some("origin") {
        if let Ok(resp) = client.get(&join(admin, "/metrics"), token).await {
            s.origin_offload_ratio = String::from_utf8_lossy(&resp.body)
                .lines()
                .find(|l| l.starts_with("dcdn_origin_offload_ratio"))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok());
        }
    }
    s
}

/// Asks every admin URL at once.
pub async fn cluster_status(admins: &[String], token: Option<&str>) -> ClusterStatus {
    let client = Client::new(Duration::from_secs(5));
    let nodes =
        futures_util::future::join_all(admins.iter().map(|a| node_status(&client, a, token))).await;
    let rotation = if nodes.iter().any(|n| n.error.is_some()) {
        "unknown"
    } else {
        let mut active: Vec<_> = nodes
            .iter()
            .filter_map(|n| n.active_key.as_deref())
            .collect();
        active.sort_unstable();
        active.dedup();
        if active.len() > 1 || nodes.iter().any(|n| n.trusted_keys.unwrap_or(0) > 0) {
            "rotating"
        } else {
            "steady"
        }
    };
    ClusterStatus { nodes, rotation }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl std::fmt::Display for ClusterStatus {
    /// A table in tier order (origin, relays, edges), like `kubectl get`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dash = || "-".to_owned();
        writeln!(
            f,
            "{:<16} {:<7} {:>5} {:>22} {:>8} {:<17} {:>9} ADMIN",
            "NAME", "ROLE", "PEERS", "STORE", "UPTIME", "ACTIVE KEY", "OFFLOAD"
        )?;
        let tier = |r: Option<&str>| match r {
            Some("origin") => 0,
            Some("relay") => 1,
            Some("edge") => 2,
            _ => 3,
        };
        let mut nodes: Vec<&NodeStatus> = self.nodes.iter().collect();
        nodes.sort_by_key(|n| (tier(n.role.as_deref()), n.name.clone()));
        for n in nodes {
            if let Some(e) = &n.error {
                writeln!(f, "{:<16} {:<7} error: {e}", "?", "?")?;
                continue;
            }
            let store = match (n.store_bytes, n.store_budget_bytes) {
                (Some(b), Some(t)) if t > 0 => {
                    format!("{} ({:.0}%)", bytes(b), b as f64 * 100.0 / t as f64)
                }
                (Some(b), _) => bytes(b),
                _ => dash(),
            };
            writeln!(
                f,
                "{:<16} {:<7} {:>5} {:>22} {:>8} {:<17} {:>9} {}",
                n.name.clone().unwrap_or_else(dash),
                n.role.clone().unwrap_or_else(dash),
                n.peers.map_or_else(dash, |p| p.to_string()),
                store,
                n.uptime_seconds.map_or_else(dash, |s| format!("{s}s")),
                n.active_key.clone().unwrap_or_else(dash),
                n.origin_offload_ratio
                    .map_or_else(dash, |r| format!("{r:.2}")),
                n.admin
            )?;
        }
        for n in &self.nodes {
            for s in &n.swarms {
                writeln!(
                    f,
                    "swarming: {} {} v{} {}/{} chunks ({:.0}%){}",
                    n.name.as_deref().unwrap_or("?"),
                    s.name,
                    s.version,
                    s.held_chunks,
                    s.total_chunks,
                    f64::from(s.held_chunks) * 100.0 / f64::from(s.total_chunks.max(1)),
                    if s.preheat { ", preheat" } else { "" }
                )?;
            }
        }
        write!(f, "key rotation: {}", self.rotation)
    }
}
