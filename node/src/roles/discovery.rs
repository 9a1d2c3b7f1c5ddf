//! Finding peers: a static list and DNS names that resolve to many addresses.
//!
//! In Kubernetes every tier has a headless Service whose name resolves to the
//! addresses of its ready pods; resolving it again every few seconds is how a
//! node learns of pods that come and go. Static entries may be `host:port` or
//! `ip:port`; each is resolved on every round too, so a name's new address is
//! picked up. The result is deduplicated, sorted (stable across rounds, so
//! callers can diff it), stripped of the node's own addresses and capped at
//! `max_peers` by each node's own draw ([`select`]), so a thousand edges
//! behind one Service do not all pick the same few.

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
    /// Never return more addresses than this: which ones is this node's own
    /// draw (see [`select`]).
    pub max_peers: usize,
    /// What makes this node's draw its own: its name and host name (a pod
    /// keeps both across restarts, so it keeps its peers).
    pub key: String,
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
    let addrs: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| !config.exclude.contains(a))
        .collect();
    (select(&config.key, addrs, config.max_peers), errors)
}

/// At most `max` of `addrs` (sorted, returned sorted): those ranking
/// highest by a hash of `key` and the address, so each node draws its own
/// spread of the list, and one address coming or going changes at most one
/// of its picks (rendezvous hashing).
///
/// Not the first `max` in order: every edge of a headless Service gets the
/// same sorted list, so every edge would pick the same lowest addresses, and
/// as edges dial only addresses above their own, an edge above them all
/// dialled no one and nobody dialled it. With more edges than `max_peers`
/// most edges had no neighbour to trade with.
pub fn select(key: &str, mut addrs: Vec<SocketAddr>, max: usize) -> Vec<SocketAddr> {
    if addrs.len() <= max {
        return addrs;
    }
    let rank = |a: &SocketAddr| {
        let mut h = blake3::Hasher::new();
        h.update(key.as_bytes());
        h.update(&[0]);
        h.update(a.to_string().as_bytes());
        let d = h.finalize();
        u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    };
    let mut ranked: Vec<(u64, SocketAddr)> = addrs.iter().map(|a| (rank(a), *a)).collect();
    ranked.sort_unstable_by(|x, y| y.cmp(x));
    addrs = ranked.into_iter().take(max).map(|(_, a)| a).collect();
    addrs.sort_unstable();
    addrs
}

/// After a connection to a discovered peer is lost, names are resolved
/// this often (not every `interval`) for [`FAST_FOR`]: a lost peer is
/// usually a pod restarting under a new address, and a rollout moves on to
/// the next pod as soon as that one is Ready. Resolving every 10 s left an
/// edge with no relay when the second relay stopped before it had learnt
/// the first one's new address.
pub const FAST_INTERVAL: Duration = Duration::from_secs(1);
/// How long after the last lost connection names are resolved fast: about
/// a slow pod restart.
pub const FAST_FOR: Duration = Duration::from_secs(60);

/// A running resolver: the current set, and a way to say that a connection
/// to one of its peers was lost.
#[derive(Debug)]
pub struct Discovery {
    pub addrs: watch::Receiver<Vec<SocketAddr>>,
    pub lost: LostPeer,
}

/// Tells a resolver that a connection to one of its peers ended.
#[derive(Debug, Clone)]
pub struct LostPeer(std::sync::Arc<tokio::sync::Notify>);

impl LostPeer {
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// Resolves every `interval` (every [`FAST_INTERVAL`] for a while after a
/// lost peer) and publishes the current set; the task ends when every
/// receiver is gone.
pub fn spawn(config: DiscoveryConfig) -> Discovery {
    spawn_with(config, |c| Box::pin(async move { resolve_once(&c).await }))
}

type Resolved = (Vec<SocketAddr>, Vec<DiscoveryError>);

fn spawn_with<F>(config: DiscoveryConfig, resolve: F) -> Discovery
where
    F: Fn(DiscoveryConfig) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resolved> + Send>>
        + Send
        + 'static,
{
    let (tx, rx) = watch::channel(Vec::new());
    let lost = std::sync::Arc::new(tokio::sync::Notify::new());
    let notified = lost.clone();
    tokio::spawn(async move {
        let mut fast_until: Option<tokio::time::Instant> = None;
        loop {
            let (addrs, errors) = resolve(config.clone()).await;
            for e in errors {
                tracing::warn!(error = %e, "peer discovery");
            }
            // A failed round (DNS briefly down) keeps the last good set rather
            // than telling every caller that all peers vanished.
            if !addrs.is_empty() || tx.borrow().is_empty() {
                tx.send_if_modified(|current| {
                    if *current == addrs {
                        false
                    } else {
                        *current = addrs;
                        true
                    }
                });
            }
            if tx.is_closed() {
                break;
            }
            let now = tokio::time::Instant::now();
            let wait = match fast_until {
                Some(t) if now < t => FAST_INTERVAL.min(config.interval),
                _ => config.interval,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = notified.notified() => {
                    tracing::debug!("peer discovery: a peer was lost; resolving again now and often");
                    fast_until = Some(tokio::time::Instant::now() + FAST_FOR);
                }
            }
        }
    });
    Discovery {
        addrs: rx,
        lost: LostPeer(lost),
    }
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
            key: "test-node".into(),
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
        // Three of the four others, this node's draw, sorted.
        let others: Vec<SocketAddr> = [
            "127.0.0.1:9001",
            "127.0.0.1:9002",
            "127.0.0.1:9003",
            "127.0.0.1:9004",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(addrs, select("test-node", others.clone(), 3));
        assert_eq!(addrs.len(), 3);
        assert!(addrs.iter().all(|a| others.contains(a)));
        assert!(addrs.windows(2).all(|w| w[0] < w[1]));
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
        let mut rx = spawn(config(&["127.0.0.1:9005"])).addrs;
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *rx.borrow(),
            vec!["127.0.0.1:9005".parse::<SocketAddr>().unwrap()]
        );
    }

    /// A resolver that counts its rounds.
    fn counting(
        rounds: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        interval: Duration,
    ) -> Discovery {
        let mut c = config(&["127.0.0.1:9006"]);
        c.interval = interval;
        spawn_with(c, move |c| {
            rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { resolve_once(&c).await })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_peer_makes_names_resolve_every_second_for_a_while_then_at_the_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let rounds = std::sync::Arc::new(AtomicUsize::new(0));
        let d = counting(rounds.clone(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rounds.load(SeqCst), 1, "one round at start");
        // Quiet: one round per interval.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(rounds.load(SeqCst), 3);
        // A lost peer: a round at once, then one a second.
        d.lost.notify();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rounds.load(SeqCst), 4, "a round as soon as a peer is lost");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(rounds.load(SeqCst), 9, "a round a second after a lost peer");
        // Back to the interval once FAST_FOR has passed.
        tokio::time::sleep(FAST_FOR).await;
        let settled = rounds.load(SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let quiet = rounds.load(SeqCst) - settled;
        assert!(
            (2..=3).contains(&quiet),
            "{quiet} rounds in 30 s: the interval again"
        );
        drop(d);
    }

    fn addrs(n: u32) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7000)))
            .collect()
    }

    /// A thousand edges behind one headless Service, 64 peers each, edges
    /// dialling only addresses above their own (`mesh::dial_loop`): every
    /// edge ends up with neighbours. Taking the first 64 of the sorted list
    /// left 935 of them with none.
    #[test]
    fn a_thousand_edges_each_draw_their_own_peers_and_all_get_neighbours() {
        let all = addrs(1000);
        let mut degree = vec![0usize; all.len()];
        for (i, me) in all.iter().enumerate() {
            let others: Vec<SocketAddr> = all.iter().filter(|a| *a != me).copied().collect();
            let picked = select(&format!("edge-{i}"), others, 64);
            assert_eq!(picked.len(), 64);
            assert!(
                picked.windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
            for a in picked.iter().filter(|a| *a > me) {
                degree[i] += 1;
                degree[all.iter().position(|x| x == a).unwrap()] += 1;
            }
        }
        let lonely = degree.iter().filter(|&&d| d == 0).count();
        let min = degree.iter().min().copied().unwrap_or(0);
        let mean = degree.iter().sum::<usize>() as f64 / degree.len() as f64;
        assert_eq!(lonely, 0, "{lonely} edges with no neighbour");
        assert!(min >= 20, "an edge with only {min} neighbours");
        assert!((50.0..=80.0).contains(&mean), "mean degree {mean}");
    }

    /// A node keeps its picks from round to round, and one address leaving
    /// changes at most one of them.
    #[test]
    fn picks_are_stable_and_one_leaving_moves_at_most_one() {
        let all = addrs(500);
        let a = select("edge-7", all.clone(), 64);
        assert_eq!(a, select("edge-7", all.clone(), 64));
        assert_ne!(
            a,
            select("edge-8", all.clone(), 64),
            "another node draws differently"
        );
        for gone in [a[0], all[499]] {
            let rest: Vec<SocketAddr> = all.iter().filter(|x| **x != gone).copied().collect();
            let b = select("edge-7", rest, 64);
            let moved = a.iter().filter(|x| !b.contains(x)).count();
            assert!(moved <= 1, "{moved} picks moved when one address left");
        }
        // Fewer than the cap: all of them.
        assert_eq!(select("edge-7", all[..10].to_vec(), 64), all[..10].to_vec());
    }
}
