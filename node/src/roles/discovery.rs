//! Finding peers: a static list and DNS names that resolve to many addresses.
//!
//! In Kubernetes every tier has a headless Service whose name resolves to the
//! addresses of its ready pods; resolving it again every few seconds is how a
//! node learns of pods that come and go. Static entries may be `host:port` or
//! `ip:port`; each is resolved on every round too, so a name's new address is
//! picked up. The result is deduplicated, sorted (stable across rounds, so
//! callers can diff it), stripped of the node's own addresses and capped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// What to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `host:port` entries, resolved every round.
    pub static_peers: Vec<String>,
    /// A DNS name resolving to many addresses (a headless Service) and the
    /// port to use with each.
    pub dns: Option<(String, u16)>,
    /// How often to resolve again.
    pub interval: Duration,
    /// Never return more addresses than this.
    pub max_peers: usize,
    /// The node's own addresses, left out of the result.
    pub exclude: Vec<SocketAddr>,
}

/// Why one round of resolution found nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("resolving {name}: {message}")]
    Resolve { name: String, message: String },
}

/// One round: resolves every entry; entries that fail are reported but do not
/// hide the ones that worked.
pub async fn resolve_once(config: &DiscoveryConfig) -> (Vec<SocketAddr>, Vec<DiscoveryError>) {
    let mut names: Vec<String> = config.static_peers.clone();
    if let Some((name, port)) = &config.dns {
        names.push(format!("{name}:{port}"));
    }
    let mut found = BTreeSet::new();
    let mut errors = Vec::new();
    for name in names {
        let resolved: std::io::Result<Vec<SocketAddr>> = tokio::net::lookup_host(name.clone())
            .await
            .map(Iterator::collect);
        match resolved {
            Ok(addrs) => found.extend(addrs),
            Err(e) => errors.push(DiscoveryError::Resolve {
                name,
                message: e.to_string(),
            }),
        }
    }
    let addrs = found
        .into_iter()
        .filter(|a| !config.exclude.contains(a))
        .take(config.max_peers)
        .collect();
    (addrs, errors)
}

/// Resolves every `interval` and publishes the current set; the task ends
/// when every receiver is gone.
pub fn spawn(config: DiscoveryConfig) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let (addrs, errors) = resolve_once(&config).await;
            for e in errors {
                tracing::warn!(error = %e, "peer discovery");
            }
            // A failed round (DNS briefly down) keeps the last good set rather
            // than telling every caller that all peers vanished.
            if addrs.is_empty() && !tx.borrow().is_empty() {
                continue;
            }
            tx.send_if_modified(|current| {
                if *current == addrs {
                    false
                } else {
                    *current = addrs;
                    true
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(static_peers: &[&str]) -> DiscoveryConfig {
        DiscoveryConfig {
            static_peers: static_peers.iter().map(|s| s.to_string()).collect(),
            dns: None,
            interval: Duration::from_millis(20),
            max_peers: 3,
            exclude: vec!["127.0.0.1:9000".parse().unwrap()],
        }
    }

    #[tokio::test]
    async fn static_entries_resolve_dedupe_exclude_self_and_cap() {
        let c = config(&[
            "127.0.0.1:9003",
            "127.0.0.1:9001",
            "127.0.0.1:9001",
            "127.0.0.1:9000",
            "127.0.0.1:9002",
            "127.0.0.1:9004",
        ]);
        let (addrs, errors) = resolve_once(&c).await;
        assert!(errors.is_empty());
        let want: Vec<SocketAddr> = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(addrs, want);
    }

    #[tokio::test]
    async fn a_name_resolving_to_several_addresses_yields_all() {
        let mut c = config(&[]);
        c.dns = Some(("localhost".into(), 7000));
        c.exclude.clear();
        let (addrs, _) = resolve_once(&c).await;
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 7000 && a.ip().is_loopback())
        );
    }

    #[tokio::test]
    async fn bad_entries_are_reported_without_hiding_good_ones() {
        let c = config(&["not a host", "127.0.0.1:9001"]);
        let (addrs, errors) = resolve_once(&c).await;
        assert_eq!(addrs, vec!["127.0.0.1:9001".parse::<SocketAddr>().unwrap()]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("not a host"));
    }

    #[tokio::test]
    async fn spawned_resolver_publishes_the_set() {
        let mut rx = spawn(config(&["127.0.0.1:9005"]));
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *rx.borrow(),
            vec!["127.0.0.1:9005".parse::<SocketAddr>().unwrap()]
        );
    }
}
