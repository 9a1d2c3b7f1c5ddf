//! A client that keeps publishing at the origin and another that keeps
//! reading through the edge Service, while a scenario moves pods under them.
//!
//! The reader goes through the Service the way kube-proxy routes it: to a
//! pod that is Ready right now ([`Runner::endpoints`]), one request per
//! endpoint in turn. It reads what the publisher had acknowledged, newest
//! first, and when nothing new was acknowledged (the origin is restarting)
//! it reads again something recent, so every moment of a scenario is read
//! through whatever edge the Service then routes to. Every read is compared
//! with the bytes published under that name: a read that fails, differs or
//! finds the Service empty counts against the scenario.

use crate::Runner;
use bytes::Bytes;
use dcdn_node::client::Client;
use parking_lot::Mutex;
use rand::{RngCore, SeedableRng};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Something the origin acknowledged, with the bytes it was given.
#[derive(Debug, Clone)]
enum Item {
    Object {
        name: String,
        data: Bytes,
    },
    Live {
        name: String,
        first_seq: u64,
        chunks: u64,
        data: Bytes,
        acknowledged: Instant,
    },
}

/// A live stream is kept for its chunks' TTL, not for ever: the rollout
/// scenario lowers it to 40 s, so a live item is read again only while it
/// is younger than this (an object is kept by the origin of record and is
/// read again however old).
const LIVE_REREAD_HORIZON: Duration = Duration::from_secs(30);

impl Item {
    /// Whether reading it again must still succeed.
    fn still_held(&self) -> bool {
        match self {
            Item::Object { .. } => true,
            Item::Live { acknowledged, .. } => acknowledged.elapsed() < LIVE_REREAD_HORIZON,
        }
    }

    fn name(&self) -> &str {
        match self {
            Item::Object { name, .. } | Item::Live { name, .. } => name,
        }
    }
}

/// What the traffic saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub published: u64,
    /// Publishes the origin did not acknowledge (retried with a new name).
    pub publish_errors: u64,
    pub reads_ok: u64,
    pub reads_failed: u64,
    /// Reads that returned bytes other than the ones published.
    pub reads_differ: u64,
    /// Reads attempted while the Service had no ready endpoint.
    pub no_endpoint: u64,
    pub bytes_read: u64,
    /// Successful reads of pinned items (`Traffic::pin`).
    pub pinned_reads_ok: u64,
    /// Longest time between two successful reads.
    pub longest_gap: Duration,
    /// The first few failures, for the report.
    pub failures: Vec<String>,
}

impl Stats {
    pub fn clean(&self) -> bool {
        self.reads_ok > 0
            && self.reads_failed == 0
            && self.reads_differ == 0
            && self.no_endpoint == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "{} reads ok ({} KiB), {} failed, {} differ, {} with no endpoint; longest read gap {} ms; {} published, {} publish errors",
            self.reads_ok,
            self.bytes_read / 1024,
            self.reads_failed,
            self.reads_differ,
            self.no_endpoint,
            self.longest_gap.as_millis(),
            self.published,
            self.publish_errors
        )
    }
}

struct Shared {
    items: Mutex<Items>,
    stats: Mutex<Stats>,
    publishing: AtomicBool,
    stop: AtomicBool,
}

#[derive(Default)]
struct Items {
    unread: VecDeque<Item>,
    /// The most recent items read at least once (bounded).
    recent: VecDeque<Item>,
    /// Items read again on every fourth turn until unpinned (bounded by
    /// `RECENT`): what was signed before a key rotation is read after it.
    pinned: Vec<Item>,
}

const RECENT: usize = 16;

/// Running publisher and reader tasks.
pub struct Traffic {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic").finish_non_exhaustive()
    }
}

fn sample(len: usize, seed: u64) -> Bytes {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    Bytes::from(data)
}

impl Traffic {
    /// Starts publishing at `origin` (a base URL) and reading through the
    /// ready endpoints of the Service `edge_service` on `port`. `tag` keeps
    /// names of different scenarios apart.
    pub fn start(
        runner: Arc<Runner>,
        origin: String,
        token: String,
        edge_service: String,
        port: u16,
        tag: &str,
    ) -> Self {
        let shared = Arc::new(Shared {
            items: Mutex::new(Items::default()),
            stats: Mutex::new(Stats::default()),
            publishing: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        });
        let publisher = tokio::spawn(publish(shared.clone(), origin, token, tag.to_owned()));
        let reader = tokio::spawn(read(shared.clone(), runner, edge_service, port));
        Self {
            shared,
            tasks: vec![publisher, reader],
        }
    }

    /// Keeps reading what was read most recently, alongside the new items,
    /// until `unpin`.
    pub fn pin(&self) {
        let mut items = self.shared.items.lock();
        items.pinned = items.recent.iter().cloned().collect();
    }

    pub fn unpin(&self) {
        self.shared.items.lock().pinned.clear();
    }

    /// Stops (or resumes) publishing; reading goes on with what is known.
    pub fn set_publishing(&self, on: bool) {
        self.shared.publishing.store(on, Ordering::SeqCst);
    }

    /// Every acknowledged item has been read at least once.
    pub fn caught_up(&self) -> bool {
        self.shared.items.lock().unread.is_empty()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().clone()
    }

    /// Forgets what was counted so far (after a warm-up).
    pub fn reset_stats(&self) {
        *self.shared.stats.lock() = Stats::default();
    }

    /// Stops both clients, lets the reader read what was acknowledged last,
    /// and returns the counts.
    pub async fn finish(mut self) -> Stats {
        self.set_publishing(false);
        let until = Instant::now() + Duration::from_secs(20);
        while !self.caught_up() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.stats()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Objects of 96 KiB, and every fourth item a live stream of 12 pieces of
/// 4 KiB sent over 300 ms, each under a new name; acknowledged ones are
/// handed to the reader. A publish the origin does not acknowledge (it is
/// being replaced) is counted and tried again under a new name.
async fn publish(shared: Arc<Shared>, origin: String, token: String, tag: String) {
    let client = Client::new(Duration::from_secs(10));
    let mut n: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        if !shared.publishing.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        n += 1;
        let seed = (u64::from(std::process::id()) << 20) ^ n;
        let item = if n.is_multiple_of(4) {
            let name = format!("{tag}-live-{n}");
            let pieces: Vec<Bytes> = (0..12).map(|i| sample(4096, seed * 64 + i)).collect();
            let data = Bytes::from(pieces.concat());
            let paced = futures_util::stream::unfold(pieces.into_iter(), |mut it| async move {
                let next = it.next()?;
                tokio::time::sleep(Duration::from_millis(25)).await;
                Some((Ok::<_, std::io::Error>(next), it))
            });
            client
                .put_stream(&format!("{origin}/v1/streams/{name}"), Some(&token), paced)
                .await
                .ok()
                .and_then(|r| {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                    (v["len"].as_u64() == Some(data.len() as u64)).then(|| Item::Live {
                        name,
                        first_seq: v["first_seq"].as_u64().unwrap_or(0),
                        chunks: v["chunks"].as_u64().unwrap_or(0),
                        data,
                        acknowledged: Instant::now(),
                    })
                })
        } else {
            let name = format!("{tag}/object-{n}.bin");
            let data = sample(96 * 1024, seed);
            let body = futures_util::stream::iter([Ok::<_, std::io::Error>(data.clone())]);
            client
                .put_stream(&format!("{origin}/v1/objects/{name}"), Some(&token), body)
                .await
                .ok()
                .map(|_| Item::Object { name, data })
        };
        match item {
            Some(item) => {
                shared.stats.lock().published += 1;
                shared.items.lock().unread.push_back(item);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            None => {
                shared.stats.lock().publish_errors += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Reads one item through `base`; `Ok(bytes)` only if every byte is the
/// published one.
async fn read_item(client: &Client, base: &str, item: &Item) -> Result<u64, (bool, String)> {
    match item {
        Item::Object { name, data } => {
            let r = client
                .get(&format!("{base}/v1/objects/{name}"), None)
                .await
                .map_err(|e| (false, e.to_string()))?;
            if r.body == *data {
                Ok(data.len() as u64)
            } else {
                Err((
                    true,
                    format!("{name} via {base}: {} bytes DIFFER", r.body.len()),
                ))
            }
        }
        Item::Live {
            name,
            first_seq,
            chunks,
            data,
            ..
        } => {
            let mut joined = Vec::with_capacity(data.len());
            for seq in *first_seq..first_seq + chunks {
                let r = client
                    .get(&format!("{base}/v1/streams/{name}/{seq}"), None)
                    .await
                    .map_err(|e| (false, e.to_string()))?;
                joined.extend_from_slice(&r.body);
            }
            if joined == data[..] {
                Ok(data.len() as u64)
            } else {
                Err((
                    true,
                    format!("{name} via {base}: {} bytes DIFFER", joined.len()),
                ))
            }
        }
    }
}

async fn read(shared: Arc<Shared>, runner: Arc<Runner>, service: String, port: u16) {
    let client = Client::new(Duration::from_secs(10));
    let mut turn: usize = 0;
    let mut ep_turn: usize = 0;
    let mut last_ok = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        turn = turn.wrapping_add(1);
        let item = {
            let mut items = shared.items.lock();
            items.pinned.retain(Item::still_held);
            items.recent.retain(Item::still_held);
            if turn.is_multiple_of(4) && !items.pinned.is_empty() {
                let k = (turn / 4) % items.pinned.len();
                items.pinned.get(k).cloned().map(|i| (i, false, true))
            } else {
                match items.unread.pop_front() {
                    Some(i) => Some((i, true, false)),
                    None if items.recent.is_empty() => None,
                    None => {
                        let k = (turn / 3) % items.recent.len();
                        items.recent.get(k).cloned().map(|i| (i, false, false))
                    }
                }
            }
        };
        let Some((item, fresh, pinned)) = item else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            last_ok = Instant::now();
            continue;
        };
        let endpoints = runner.endpoints(&service).await.unwrap_or_default();
        let outcome = if endpoints.is_empty() {
            None
        } else {
            // A separate turn for the endpoint, so every item is read
            // through every edge in time, not the same one each time.
            let ip = &endpoints[ep_turn % endpoints.len()];
            ep_turn = ep_turn.wrapping_add(1);
            Some(read_item(&client, &format!("http://{ip}:{port}"), &item).await)
        };
        let now = Instant::now();
        {
            let mut st = shared.stats.lock();
            match &outcome {
                Some(Ok(n)) => {
                    st.reads_ok += 1;
                    st.pinned_reads_ok += u64::from(pinned);
                    st.bytes_read += n;
                    st.longest_gap = st.longest_gap.max(now - last_ok);
                    last_ok = now;
                }
                Some(Err((differ, e))) => {
                    if *differ {
                        st.reads_differ += 1;
                    } else {
                        st.reads_failed += 1;
                    }
                    if st.failures.len() < 8 {
                        st.failures.push(e.clone());
                    }
                }
                None => {
                    st.no_endpoint += 1;
                    if st.failures.len() < 8 {
                        st.failures.push(format!(
                            "{}: Service {service} has no ready endpoint",
                            item.name()
                        ));
                    }
                }
            }
        }
        if fresh {
            let mut items = shared.items.lock();
            items.recent.push_back(item);
            while items.recent.len() > RECENT {
                items.recent.pop_front();
            }
        }
        if outcome.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
