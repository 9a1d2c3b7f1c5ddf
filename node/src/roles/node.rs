//! The running node: the parts wired into origin, relay or edge behaviour.
//!
//! One [`Node`] owns the store, the key ring and verifier, the FEC assembler,
//! the choker and the mesh endpoint; each peer connection runs a small set of
//! tasks (control frames, datagrams, pull requests) that call back into the
//! shared state. The rule that holds everything together is
//! [`Shared::accept_chunk`]: every chunk from the network passes through it,
//! and nothing reaches the store — and therefore nothing is forwarded or
//! served — without passing verification there.

use crate::chunk::wire::{Frame, ManifestFrame, PurgeFrame};
use crate::chunk::{Chunk, ChunkId, KeyId, PeerId, StreamId};
use crate::crypto::{KeyRing, KeyState, Rejection, ReplayGuard, Reputation, Signer, Verifier};
use crate::fec::{Assembler, Encoder, ParityPolicy};
use crate::metrics::Metrics;
use crate::p2p::{Choker, SourceKind};
use crate::roles::flight::{FlightError, SingleFlight};
use crate::roles::framing::{self, FramingError};
use crate::roles::serve::{Content, ContentError, ObjectInfo};
use crate::store::ChunkStore;
use crate::transport::MeshEndpoint;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};

pub use crate::roles::settings::{NodeSettings, Role};

/// Largest request or control frame a peer may send on a stream.
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Largest reply (a chunk frame) a peer may send.
pub(crate) const MAX_REPLY_FRAME: usize = crate::chunk::MAX_CHUNK_LEN as usize + 4096;
/// Bytes of a datagram taken by the shard frame's own fields.
pub(crate) const SHARD_FRAME_OVERHEAD: usize = 64;
/// Chunks queued for push to one downstream peer before new ones are dropped
/// (the peer then repairs them over a stream).
pub(crate) const PUSH_QUEUE: usize = 512;
/// Control frames queued for one peer.
pub(crate) const CONTROL_QUEUE: usize = 1024;
/// How many "has" announcements are remembered per peer.
const HAVE_MEMORY: usize = 65_536;
/// Manifests a node keeps.
const MAX_MANIFESTS: usize = 4096;
/// How long a relay or edge serves the newest manifest it holds before
/// asking upstream whether a newer version exists. New versions arrive by
/// push; this bounds staleness when a push was lost.
pub const MANIFEST_REVALIDATE: Duration = Duration::from_secs(1);
/// Streams whose newest sequence number a node tracks.
const MAX_TRACKED_STREAMS: usize = 4096;

/// Milliseconds since the Unix epoch: the time base of chunk timestamps.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("binding the mesh endpoint on {addr}")]
    Mesh {
        addr: SocketAddr,
        #[source]
        source: crate::transport::TransportError,
    },
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {what} from {path}: {message}")]
    Load {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("metrics")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("an origin needs an ingest token: set origin.ingest_token_file or DCDN_INGEST_TOKEN")]
    NoIngestToken,
}

/// A connected peer.
pub(crate) struct Peer {
    pub id: PeerId,
    pub name: String,
    pub role: Role,
    pub conn: quinn::Connection,
    pub control: mpsc::Sender<Frame>,
    /// The peer asked for our pushes.
    pub subscribed: AtomicBool,
    pub push: mpsc::Sender<Chunk>,
    pub parity: Mutex<ParityPolicy>,
    pub current_parity: AtomicU16,
    /// Lost packets of this connection already added to
    /// `dcdn_quic_lost_packets_total`.
    pub lost_packets_counted: AtomicU64,
    /// The same for `dcdn_quic_black_holes_total`.
    pub black_holes_counted: AtomicU64,
    /// The peer unchoked us (edge trade): we may request from it.
    pub unchoked_us: AtomicBool,
    pub have: Mutex<HaveSet>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// New chunks this peer pushed to us (duplicates and rejects excluded):
    /// shows which upstream is really feeding us, and that a failover took.
    pub chunks_pushed_in: AtomicU64,
    /// Shards received from this peer and shards its groups promised,
    /// since the last loss report.
    pub shards_received: AtomicU64,
    pub shards_expected: AtomicU64,
    pub groups_seen: Mutex<HaveSet>,
    /// Chunks pushed (or queued to push) to this downstream peer that it has
    /// not yet confirmed holding (a `Have` back). A draining node stays
    /// until this is empty: the peer repairs what the push did not bring
    /// from here, and a quiet spell is no proof it has finished. At most
    /// [`MAX_UNCONFIRMED`].
    pub unconfirmed: Mutex<HashSet<ChunkId>>,
}

/// The most unconfirmed pushes remembered per peer: beyond it a push is not
/// waited for on a drain (the quiet spell still is).
pub(crate) const MAX_UNCONFIRMED: usize = 4096;

/// A bounded memory of which chunks a peer announced.
#[derive(Default)]
pub(crate) struct HaveSet {
    set: HashSet<ChunkId>,
    order: VecDeque<ChunkId>,
}

impl HaveSet {
    pub(crate) fn insert(&mut self, id: ChunkId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > HAVE_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.set.contains(id)
    }
}

/// Shared state of a running node.
pub struct Shared {
    /// Serializes `refresh_gauges`, whose counters advance by a difference.
    pub refresh: Mutex<()>,
    pub settings: NodeSettings,
    pub store: ChunkStore,
    pub keys: Arc<RwLock<KeyRing>>,
    pub verifier: Verifier,
    pub replay: Mutex<ReplayGuard>,
    pub reputation: Mutex<Reputation>,
    /// Secret keys this origin may sign with, by key id.
    pub signers: RwLock<HashMap<KeyId, Signer>>,
    pub manifests: Mutex<Manifests>,
    pub arrivals: broadcast::Sender<ChunkId>,
    pub flight: SingleFlight<ChunkId, Chunk, FetchError>,
    pub manifest_flight: SingleFlight<StreamId, ManifestFrame, String>,
    pub(crate) peers: RwLock<HashMap<PeerId, Arc<Peer>>>,
    pub metrics: Metrics,
    pub endpoint: MeshEndpoint,
    pub assembler: Mutex<Assembler>,
    pub encoder: Mutex<Encoder>,
    pub choker: Mutex<Choker>,
    pub(crate) heads: Mutex<HashMap<StreamId, u64>>,
    /// Background catch-up tasks running (see [`Shared::catch_up`]).
    pub(crate) catching_up: std::sync::atomic::AtomicUsize,
    pub started: Instant,
    /// Bytes this origin ingested and sent to the mesh, for the offload ratio.
    pub ingested_bytes: AtomicU64,
    pub mesh_bytes_out: AtomicU64,
    /// Bytes of pull replies written and not yet acknowledged by their
    /// receivers, all connections together: the queue a relay's admission
    /// (`mesh::answer`) judges its uplink by.
    pub(crate) pull_backlog: AtomicU64,
    pub(crate) admission: crate::p2p::admission::Admission,
    /// Draining: readiness fails and the HTTP listeners stop taking
    /// requests (`Running::shutdown`).
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set after the drain: peer sessions close. Later than `shutdown`, so
    /// what the HTTP side acknowledged while draining still reaches the
    /// mesh, and downstream can repair it from here.
    pub(crate) mesh_stop: watch::Sender<bool>,
    /// When this node last sent a push or answered a pull, in ms since
    /// `started`: the drain lingers until the mesh is quiet.
    pub(crate) mesh_active_ms: AtomicU64,
    /// Pull requests from peers being answered now.
    pub(crate) pulls_serving: std::sync::atomic::AtomicUsize,
    /// The one upstream this node takes pushes from; others serve pulls.
    pub(crate) push_upstream: Mutex<Option<PeerId>>,
    /// The last object version this origin handed out (`next_version`).
    pub(crate) last_version: AtomicU64,
    /// The origin of record (origins with `origin.store_dir`).
    pub origin_store: Option<crate::roles::origin_store::OriginStore>,
    /// Objects this edge is pulling whole (`roles::swarm`).
    pub swarms: crate::roles::swarm::Swarms,
    /// Preheats already acted on.
    pub(crate) preheat_seen: Mutex<crate::roles::swarm::PreheatSeen>,
    /// Where an origin pulls names it does not hold (`origin.upstream`).
    pub upstream: Option<Arc<crate::roles::upstream::Upstream>>,
    /// Per object key, what was pulled from the upstream and until when
    /// it is fresh.
    pub(crate) pulled: Mutex<crate::roles::upstream::Pulled>,
    /// The live files held, per stream: the DVR window.
    pub live: Mutex<crate::roles::live::Windows>,
    /// Bumped each time a live file version enters the window: what held
    /// LL-HLS requests wait on.
    pub live_changed: watch::Sender<u64>,
    /// Object uploads open or aborted (`roles::uploads`): signed here
    /// (origin) or verified from upstream.
    pub uploads: Mutex<crate::roles::uploads::Uploads>,
    /// Clients reading an upload in progress here (edge), bounded.
    pub upload_readers: Arc<std::sync::atomic::AtomicUsize>,
}

/// Verified manifests: every version kept by its stream id (a client
/// mid-download of an older version still needs to know its chunks are an
/// object's), and per object name the newest version, which is what new
/// requests are served. Both bounded, oldest first out.
#[derive(Default)]
pub struct Manifests {
    by_stream: HashMap<StreamId, ManifestFrame>,
    order: VecDeque<StreamId>,
    newest: HashMap<StreamId, Newest>,
    newest_order: VecDeque<StreamId>,
    /// Per object key, the highest version purged: manifests at or below it
    /// are refused, so a stale cache upstream cannot bring a purged version
    /// back.
    purged: HashMap<StreamId, u64>,
    purged_order: VecDeque<StreamId>,
}

/// The newest version of a name this node verified, and when it last
/// learned (by push or by asking upstream) that nothing newer exists.
struct Newest {
    manifest: ManifestFrame,
    checked: Instant,
    /// When a background check upstream was last started (see
    /// [`Manifests::claim_refresh`]).
    refresh_started: Option<Instant>,
}

impl Manifests {
    /// Records a verified manifest; true if it is now the newest version of
    /// its name (a re-sent or older version is kept for in-flight readers,
    /// but never replaces a newer one).
    pub fn insert(&mut self, m: ManifestFrame, now: Instant) -> bool {
        if self.by_stream.insert(m.stream, m.clone()).is_none() {
            self.order.push_back(m.stream);
            if self.order.len() > MAX_MANIFESTS {
                if let Some(old) = self.order.pop_front() {
                    self.by_stream.remove(&old);
                }
            }
        }
        let key = StreamId::object_key(&m.name);
        match self.newest.get_mut(&key) {
            Some(n) if n.manifest.version > m.version => false,
            Some(n) => {
                let newer = m.version > n.manifest.version;
                n.manifest = m;
                n.checked = now;
                newer
            }
            None => {
                self.newest.insert(
                    key,
                    Newest {
                        manifest: m,
                        checked: now,
                        refresh_started: None,
                    },
                );
                self.newest_order.push_back(key);
                if self.newest_order.len() > MAX_MANIFESTS {
                    if let Some(old) = self.newest_order.pop_front() {
                        self.newest.remove(&old);
                    }
                }
                true
            }
        }
    }

    /// Whether version `version` of the object keyed `key` was purged.
    pub fn is_purged(&self, key: StreamId, version: u64) -> bool {
        self.purged.get(&key).is_some_and(|&up_to| version <= up_to)
    }

    /// Forgets every version of `name` up to `up_to`; false if this purge
    /// (or a wider one) was applied before.
    pub fn purge(&mut self, name: &str, up_to: u64) -> bool {
        let key = StreamId::object_key(name);
        match self.purged.get_mut(&key) {
            Some(v) if *v >= up_to => return false,
            Some(v) => *v = up_to,
            None => {
                self.purged.insert(key, up_to);
                self.purged_order.push_back(key);
                if self.purged_order.len() > MAX_MANIFESTS {
                    if let Some(old) = self.purged_order.pop_front() {
                        self.purged.remove(&old);
                    }
                }
            }
        }
        if self
            .newest
            .get(&key)
            .is_some_and(|n| n.manifest.version <= up_to)
        {
            self.newest.remove(&key);
        }
        self.by_stream
            .retain(|_, m| !(m.name == name && m.version <= up_to));
        true
    }

    /// Forgets version `stream` of object `name` (a live file that left
    /// the window): no longer known, so no longer served.
    pub fn forget(&mut self, name: &str, stream: StreamId) {
        self.by_stream.remove(&stream);
        let key = StreamId::object_key(name);
        if self
            .newest
            .get(&key)
            .is_some_and(|n| n.manifest.stream == stream)
        {
            self.newest.remove(&key);
        }
    }

    /// The manifest of one object version, by the id its chunks carry.
    pub fn get(&self, stream: StreamId) -> Option<ManifestFrame> {
        self.by_stream.get(&stream).cloned()
    }

    /// The newest verified version of the object whose key is `object`,
    /// and when it was last confirmed the newest.
    /// True for the one caller that should check `object` upstream ahead
    /// of time: none has been started since the version was last confirmed.
    /// A check that fails is not retried ahead; the request that finds the
    /// version stale checks (and waits) as before.
    pub fn claim_refresh(&mut self, object: StreamId, now: Instant) -> bool {
        match self.newest.get_mut(&object) {
            Some(n) if n.refresh_started.is_none_or(|t| t < n.checked) => {
                n.refresh_started = Some(now);
                true
            }
            _ => false,
        }
    }

    pub fn newest(&self, object: StreamId) -> Option<(ManifestFrame, Instant)> {
        self.newest
            .get(&object)
            .map(|n| (n.manifest.clone(), n.checked))
    }

    pub fn len(&self) -> usize {
        self.by_stream.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_stream.is_empty()
    }
}

/// Where a chunk came from, for metrics and for deciding what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Push,
    Pull,
    /// A live chunk published here: pushed downstream.
    IngestLive,
    /// A chunk of a static object published here: pulled on demand, so an
    /// object nobody asks for costs the mesh nothing.
    IngestObject,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Pull => "pull",
            Self::IngestLive | Self::IngestObject => "ingest",
        }
    }
}

/// What happened to a chunk offered to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Stored,
    Duplicate,
    Rejected(String),
}

impl Shared {
    fn now_ms(&self) -> u64 {
        unix_ms()
    }

    /// The one way into the store from the network: verify, check replay,
    /// store, then forward and announce. Rejections are counted by reason and
    /// cost the sending peer reputation.
    pub fn accept_chunk(
        self: &Arc<Self>,
        chunk: Chunk,
        from: Option<PeerId>,
        path: Path,
    ) -> Accepted {
        let now = Instant::now();
        if self.store.contains(&chunk.id(), now) {
            return Accepted::Duplicate;
        }
        if let Err(rejection) = self.verifier.verify(&chunk, self.now_ms()) {
            self.reject(from, &rejection);
            return Accepted::Rejected(rejection.to_string());
        }
        self.admit_verified(chunk, from, path, now)
    }

    /// [`Self::accept_chunk`] for chunks that arrived together (a burst of
    /// rebuilt FEC groups): one batched signature check for all of them,
    /// which costs about half of checking each alone. A lone chunk takes
    /// the one-at-a-time path, so a live chunk never waits for company.
    /// Each chunk names its sender: a forged one is refused and only its
    /// sender loses reputation. Answers in the order given.
    pub fn accept_chunks(
        self: &Arc<Self>,
        chunks: Vec<(Chunk, Option<PeerId>)>,
        path: Path,
    ) -> Vec<Accepted> {
        if chunks.len() < 2 {
            return chunks
                .into_iter()
                .map(|(c, from)| self.accept_chunk(c, from, path))
                .collect();
        }
        let now = Instant::now();
        let mut out: Vec<Option<Accepted>> = Vec::with_capacity(chunks.len());
        let mut fresh = Vec::with_capacity(chunks.len());
        let mut senders = Vec::with_capacity(chunks.len());
        for (c, from) in chunks {
            let id = c.id();
            if self.store.contains(&id, now) || fresh.iter().any(|f: &Chunk| f.id() == id) {
                out.push(Some(Accepted::Duplicate));
            } else {
                out.push(None);
                fresh.push(c);
                senders.push(from);
            }
        }
        let verdicts = self.verifier.verify_batch(&fresh, self.now_ms());
        let mut answers =
            fresh
                .into_iter()
                .zip(senders)
                .zip(verdicts)
                .map(|((chunk, from), verdict)| match verdict {
                    Ok(()) => self.admit_verified(chunk, from, path, now),
                    Err(rejection) => {
                        self.reject(from, &rejection);
                        Accepted::Rejected(rejection.to_string())
                    }
                });
        out.into_iter()
            .map(|a| {
                a.or_else(|| answers.next())
                    .unwrap_or_else(|| Accepted::Rejected("batch answer missing".into()))
            })
            .collect()
    }

    /// Everything after verification: replay, store, count, forward.
    fn admit_verified(
        self: &Arc<Self>,
        chunk: Chunk,
        from: Option<PeerId>,
        path: Path,
        now: Instant,
    ) -> Accepted {
        let id = chunk.id();
        // A replayed live chunk is one we accepted before and no longer hold;
        // only unsolicited pushes are held to that, since a pull answers our
        // own request.
        if path == Path::Push {
            if let Err(rejection) = self.replay.lock().check_and_record(id) {
                self.reject(from, &rejection);
                return Accepted::Rejected(rejection.to_string());
            }
        }
        let len = chunk.payload.len() as u64;
        match self.store.insert(chunk.clone(), now) {
            Ok(_) => {}
            Err(e) => {
                self.metrics
                    .chunks_rejected
                    .with_label_values(&["store"])
                    .inc();
                return Accepted::Rejected(e.to_string());
            }
        }
        let source = from.map_or("local", |_| "peer");
        self.metrics
            .chunks_verified
            .with_label_values(&[source])
            .inc();
        self.metrics
            .chunks
            .with_label_values(&["in", path.label()])
            .inc();
        self.metrics
            .bytes
            .with_label_values(&["in", path.label()])
            .inc_by(len);
        // Never hold the peer map's lock while taking another: clone out.
        let sender = from.and_then(|p| self.peers.read().get(&p).cloned());
        if let Some(peer) = sender {
            peer.bytes_in.fetch_add(len, Ordering::Relaxed);
            if path == Path::Push {
                peer.chunks_pushed_in.fetch_add(1, Ordering::Relaxed);
            }
            if peer.role == Role::Edge {
                self.choker.lock().record_downloaded(peer.id, len, now);
            }
        }
        // Pushes are confirmed (objects pulled are not: nothing waits on
        // them, and a swarm would send a confirmation per piece per edge).
        if from.is_some() && path == Path::Push {
            self.confirm_upstream(id);
        }
        let before = self.note_head(id);
        if path == Path::Push && self.settings.role != Role::Origin {
            if let Some(before) = before.filter(|&h| id.seq > h + 1) {
                self.catch_up(id.stream, before + 1, id.seq);
            }
        }
        let _ = self.arrivals.send(id);
        self.forward(&chunk, from, matches!(path, Path::Push | Path::IngestLive));
        Accepted::Stored
    }

    fn reject(&self, from: Option<PeerId>, rejection: &Rejection) {
        self.metrics
            .chunks_rejected
            .with_label_values(&[rejection.reason()])
            .inc();
        tracing::warn!(?from, reason = rejection.reason(), "chunk rejected");
        if let Some(peer_id) = from {
            let verdict = self
                .reputation
                .lock()
                .record(peer_id, rejection, Instant::now());
            let peer = self.peers.read().get(&peer_id).cloned();
            if verdict.is_banned() {
                if let Some(peer) = peer {
                    tracing::warn!(peer = %peer.name, "peer banned: closing its connection");
                    peer.conn.close(
                        quinn::VarInt::from_u32(super::mesh::CLOSE_BANNED),
                        b"banned",
                    );
                }
            }
        }
    }

    /// Moves the stream's head to `id` if it is newer; answers the head
    /// before (`None` for a stream not seen yet).
    fn note_head(&self, id: ChunkId) -> Option<u64> {
        let mut heads = self.heads.lock();
        if heads.len() >= MAX_TRACKED_STREAMS && !heads.contains_key(&id.stream) {
            return None;
        }
        let before = heads.get(&id.stream).copied();
        let head = heads.entry(id.stream).or_insert(id.seq);
        *head = (*head).max(id.seq);
        before
    }

    /// A push arrived beyond a gap (`from..to` never arrived): the upstream
    /// was unreachable for a while (a blackholed path, a failover) or FEC
    /// could not rebuild some groups. Pulls the missing chunks in the
    /// background, so the DVR window is whole again without a client having
    /// to ask and wait for each repair. It waits one reassembly timeout
    /// first, so groups still being rebuilt are not pulled twice. Bounded:
    /// the newest [`MAX_CATCH_UP_CHUNKS`] of a gap, [`MAX_CATCH_UP_TASKS`]
    /// gaps at a time (past that a gap is healed when a client asks, as
    /// before).
    fn catch_up(self: &Arc<Self>, stream: StreamId, from: u64, to: u64) {
        let settle = Duration::from_millis(self.settings.config.fec.reassembly_timeout_ms.get());
        self.catch_up_after(stream, from, to, settle);
    }

    fn catch_up_after(self: &Arc<Self>, stream: StreamId, from: u64, to: u64, settle: Duration) {
        let from = from.max(to.saturating_sub(MAX_CATCH_UP_CHUNKS));
        let ids = (from..to).map(|seq| ChunkId::new(stream, seq)).collect();
        self.pull_in_background(ids, settle);
    }

    /// Pushed chunks whose FEC group expired unrebuilt (`failed`): pulls
    /// them in the background, as `catch_up` pulls a gap. A gap is seen
    /// only when a later push arrives; the last chunks of a stream have
    /// none, and if their upstream then goes (an origin restarting) they
    /// would be nowhere. Bounded like `catch_up`.
    pub(crate) fn repair_failed(self: &Arc<Self>, failed: Vec<ChunkId>) {
        if self.settings.role == Role::Origin || self.is_shutting_down() {
            return;
        }
        // Only streams a verified chunk already came for: shards anyone can
        // send must not make this node pull arbitrary ids upstream.
        let failed: Vec<ChunkId> = {
            let heads = self.heads.lock();
            failed
                .into_iter()
                .filter(|id| heads.contains_key(&id.stream))
                .take(MAX_CATCH_UP_CHUNKS as usize)
                .collect()
        };
        // Shards still on their way form the group again and may rebuild
        // it: give them one more reassembly timeout before pulling.
        let settle = Duration::from_millis(self.settings.config.fec.reassembly_timeout_ms.get());
        self.pull_in_background(failed, settle);
    }

    /// Pulls the chunks of `ids` not held, after `settle`, in one
    /// background task; at most [`MAX_CATCH_UP_TASKS`] such tasks at once
    /// (past that the ids are counted as skipped and healed when a client
    /// asks).
    fn pull_in_background(self: &Arc<Self>, ids: Vec<ChunkId>, settle: Duration) {
        if ids.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.catching_up.fetch_add(1, Ordering::Relaxed) >= MAX_CATCH_UP_TASKS {
            self.catching_up.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .catch_up
                .with_label_values(&["skipped"])
                .inc_by(ids.len() as u64);
            return;
        }
        let shared = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(settle).await;
            for id in ids {
                if shared.is_shutting_down() {
                    break;
                }
                if shared.store.contains(&id, Instant::now()) {
                    continue;
                }
                let outcome = match shared.fetch(id).await {
                    Ok(_) => {
                        shared.confirm_upstream(id);
                        "pulled"
                    }
                    Err(_) => "failed",
                };
                shared.metrics.catch_up.with_label_values(&[outcome]).inc();
            }
            shared.catching_up.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Tells subscribed downstream peers (all but `from`) that `last` is
    /// the newest chunk of its stream, on the control stream, which is
    /// reliable where pushes are not.
    pub(crate) fn announce_head(&self, last: ChunkId, from: Option<PeerId>) {
        for peer in self.peers.read().values() {
            if Some(peer.id) != from && peer.subscribed.load(Ordering::Relaxed) {
                let _ = peer.control.try_send(Frame::Have { id: last });
            }
        }
    }

    /// An upstream announced `last` as its stream's newest chunk
    /// (`announce_head`). Newer than anything pushed here: the tail's
    /// datagrams were lost and no later chunk will show the gap, so it is
    /// pulled as a gap is (after the reassembly timeout, skipping what
    /// arrived meanwhile). An announcement never makes this node pull a
    /// whole stream: for a stream no push came for, or a chunk at or behind
    /// the head, only `last` itself is pulled if it is not held (a draining
    /// upstream re-announces each push not confirmed, so a stream whose
    /// every push was lost is still pulled whole). A relay passes it on.
    pub(crate) fn head_announced(self: &Arc<Self>, last: ChunkId, from: PeerId) {
        if self.settings.role == Role::Origin {
            return;
        }
        let before = self.heads.lock().get(&last.stream).copied();
        if before.is_some() && self.settings.role == Role::Relay {
            self.announce_head(last, Some(from));
        }
        let Some(before) = before.filter(|&h| last.seq > h) else {
            if !self.store.contains(&last, Instant::now()) {
                self.catch_up(last.stream, last.seq, last.seq + 1);
            }
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The announcement travels on the control stream and overtakes
        // pushes still queued behind a small congestion window: pull only
        // once pushes of the stream have stopped coming for a reassembly
        // timeout, not while they are still arriving.
        // Bounded with the catch-up tasks.
        if self.catching_up.fetch_add(1, Ordering::Relaxed) >= MAX_CATCH_UP_TASKS {
            self.catching_up.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .catch_up
                .with_label_values(&["skipped"])
                .inc_by(last.seq - before);
            return;
        }
        let shared = self.clone();
        rt.spawn(async move {
            let settle =
                Duration::from_millis(shared.settings.config.fec.reassembly_timeout_ms.get());
            let mut seen = before;
            let pull = loop {
                tokio::time::sleep(settle).await;
                if shared.is_shutting_down() {
                    break None;
                }
                let Some(head) = shared.head(last.stream) else {
                    break None;
                };
                if head >= last.seq {
                    // The tail came by push; gaps before it are caught up
                    // as any gap is.
                    break None;
                }
                if head == seen {
                    break Some(head);
                }
                seen = head;
            };
            shared.catching_up.fetch_sub(1, Ordering::Relaxed);
            if let Some(head) = pull {
                // Settled already: pushes stopped a reassembly timeout ago.
                shared.catch_up_after(last.stream, head + 1, last.seq + 1, Duration::ZERO);
            }
        });
    }

    /// The newest sequence number held for `stream`.
    pub fn head(&self, stream: StreamId) -> Option<u64> {
        self.heads.lock().get(&stream).copied()
    }

    /// Pushes a newly stored chunk to subscribed downstream peers and tells
    /// edge peers we have it.
    fn forward(&self, chunk: &Chunk, from: Option<PeerId>, push: bool) {
        let peers: Vec<Arc<Peer>> = self.peers.read().values().cloned().collect();
        for peer in peers {
            if Some(peer.id) == from {
                continue;
            }
            if push && peer.subscribed.load(Ordering::Relaxed) {
                // Counted even if the queue drops it: the peer then repairs
                // it from here, and confirms that.
                let mut unconfirmed = peer.unconfirmed.lock();
                if unconfirmed.len() < MAX_UNCONFIRMED {
                    unconfirmed.insert(chunk.id());
                }
                drop(unconfirmed);
                if peer.push.try_send(chunk.clone()).is_err() {
                    self.metrics
                        .chunks
                        .with_label_values(&["dropped", "push"])
                        .inc();
                }
            }
            if self.settings.role == Role::Edge && peer.role == Role::Edge {
                let _ = peer.control.try_send(Frame::Have { id: chunk.id() });
            }
        }
    }

    /// Stores a verified manifest and, if it is the newest version of its
    /// name, forwards it to subscribed peers: a re-publish reaches every
    /// edge by push, not when some cache entry happens to expire.
    pub fn accept_manifest(&self, m: ManifestFrame, from: Option<PeerId>) -> Result<(), String> {
        self.verify_manifest(&m)?;
        if self
            .manifests
            .lock()
            .is_purged(StreamId::object_key(&m.name), m.version)
        {
            return Err(format!("{} version {} was purged", m.name, m.version));
        }
        let live = crate::roles::live::split_name(&m.name)
            .and_then(|(_, file)| crate::roles::live::classify(file))
            .filter(|_| self.manifests.lock().get(m.stream).is_none());
        let newest = self.manifests.lock().insert(m.clone(), Instant::now());
        if let Some((kind, _)) = live {
            if !self.note_live(&m, kind) {
                return Err(format!("{} is outside the live window", m.name));
            }
        }
        if newest {
            for peer in self.peers.read().values() {
                if Some(peer.id) != from && peer.subscribed.load(Ordering::Relaxed) {
                    let _ = peer.control.try_send(Frame::Manifest(m.clone()));
                }
            }
        }
        Ok(())
    }

    /// A live file whose manifest came by push must be whole here before a
    /// player asks for it (the playlist naming it may come next): chunks
    /// that FEC could not rebuild are pulled once the push has had
    /// a few `repair_delay`s to land, not on the first player's request.
    pub fn complete_live(self: &Arc<Self>, stream: StreamId, name: &str, chunks: u64) {
        if crate::roles::live::split_name(name).is_none()
            || self.settings.role == Role::Origin
            || self.is_shutting_down()
        {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            // Pushed chunks normally land before their manifest; a few
            // repair delays is what a late one gets before it is pulled.
            let deadline = Instant::now() + shared.settings.repair_delay * COMPLETE_GRACE;
            for seq in 0..chunks {
                let id = ChunkId::new(stream, seq);
                let left = deadline.saturating_duration_since(Instant::now());
                if shared.wait_for(id, left).await.is_some() {
                    continue;
                }
                // Gone from the window meanwhile: nothing to complete.
                if shared.manifests.lock().get(stream).is_none() {
                    return;
                }
                match shared.fetch(id).await {
                    Ok(_) => shared.confirm_upstream(id),
                    Err(e) => tracing::debug!(chunk = %id, error = %e, "live chunk repair failed"),
                }
            }
        });
    }

    /// Puts a newly verified live file version into the window, and forgets
    /// what that pushed out of it.
    fn note_live(&self, m: &ManifestFrame, kind: crate::roles::live::Kind) -> bool {
        let now_ms = self.now_ms();
        let held = crate::roles::live::Held {
            name: m.name.clone(),
            stream: m.stream,
            chunks: m.chunk_count,
            len: m.object_len,
            kind,
            published_ms: m.timestamp_ms,
        };
        let recorded = self.live.lock().record(held, now_ms);
        if let Some((stream, _)) = crate::roles::live::split_name(&m.name) {
            if recorded.kept {
                self.metrics
                    .live_files
                    .with_label_values(&[stream, kind.label()])
                    .inc();
                if !kind.is_playlist() {
                    // Publish → known here: what a player at this node waits
                    // beyond the encoder's own upload.
                    self.metrics
                        .live_segment_delay
                        .observe(now_ms.saturating_sub(m.timestamp_ms) as f64 / 1000.0);
                }
            } else {
                self.metrics
                    .live_refused
                    .with_label_values(&["window"])
                    .inc();
            }
        }
        let kept = recorded.kept;
        self.forget_live(recorded);
        if kept {
            self.live_changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        kept
    }

    /// Drops live file versions that left the window: manifests, chunks and
    /// stream heads, and the metric labels of streams gone quiet.
    pub(crate) fn forget_live(&self, recorded: crate::roles::live::Recorded) {
        if recorded.drop.is_empty() && recorded.gone.is_empty() {
            return;
        }
        let expired = recorded
            .drop
            .iter()
            .filter(|h| !h.kind.is_playlist())
            .count();
        {
            let mut manifests = self.manifests.lock();
            for h in &recorded.drop {
                manifests.forget(&h.name, h.stream);
            }
        }
        {
            let mut heads = self.heads.lock();
            for h in &recorded.drop {
                heads.remove(&h.stream);
            }
        }
        for h in &recorded.drop {
            for seq in 0..h.chunks {
                self.store.remove(&ChunkId::new(h.stream, seq));
            }
        }
        self.metrics.live_expired.inc_by(expired as u64);
        for stream in &recorded.gone {
            for kind in ["playlist", "mpd", "segment"] {
                let _ = self.metrics.live_files.remove_label_values(&[stream, kind]);
                let _ = self
                    .metrics
                    .live_served
                    .remove_label_values(&[stream, kind]);
            }
            let _ = self.metrics.live_held_bytes.remove_label_values(&[stream]);
            let _ = self.metrics.live_held.remove_label_values(&[stream]);
            for kind in ["reload", "hint"] {
                for result in ["released", "timed_out"] {
                    let _ = self
                        .metrics
                        .live_blocking
                        .remove_label_values(&[stream, kind, result]);
                }
            }
        }
    }

    fn verify_manifest(&self, m: &ManifestFrame) -> Result<(), String> {
        // The signature covers name, version and stream id together; this
        // ties the id the chunks carry to that name and version.
        if StreamId::object(&m.name, m.version) != m.stream {
            self.metrics
                .chunks_rejected
                .with_label_values(&["manifest_stream"])
                .inc();
            return Err(format!(
                "manifest for {} version {} names the wrong stream id",
                m.name, m.version
            ));
        }
        self.verifier
            .verify_signature(m.key_id, &m.signing_bytes(), &m.signature)
            .map_err(|e| {
                self.metrics
                    .chunks_rejected
                    .with_label_values(&[e.reason()])
                    .inc();
                format!("manifest for {}: {e}", m.name)
            })
    }

    /// Applies a verified purge and floods it to every other peer, once.
    /// Returns whether it was new here.
    pub fn accept_purge(&self, p: PurgeFrame, from: Option<PeerId>) -> Result<bool, String> {
        self.verifier
            .verify_signature(p.key_id, &p.signing_bytes(), &p.signature)
            .map_err(|e| {
                self.metrics
                    .chunks_rejected
                    .with_label_values(&[e.reason()])
                    .inc();
                format!("purge of {}: {e}", p.name)
            })?;
        let new = self.manifests.lock().purge(&p.name, p.up_to_version);
        // An upload running when the purge was signed is purged too.
        self.uploads.lock().forget(StreamId::object_key(&p.name));
        if new {
            tracing::info!(name = %p.name, up_to = p.up_to_version, "purged");
            for peer in self.peer_list() {
                if Some(peer.id) != from {
                    let _ = peer.control.try_send(Frame::Purge(p.clone()));
                }
            }
        }
        Ok(new)
    }

    /// Purges every version of `name` published so far (origin): drops it
    /// from the origin of record, then signs the purge and floods it. None
    /// if no version of `name` is known here.
    pub fn purge(&self, name: &str) -> Result<Option<u64>, String> {
        let key = StreamId::object_key(name);
        // Pulled again on the next request, as a new version.
        self.pulled.lock().remove(key);
        if let Some(up) = &self.upstream {
            up.forget_missing(key);
        }
        let known = self.manifests.lock().newest(key).is_some();
        let kept = self
            .origin_store
            .as_ref()
            .map_or(0, |s| s.remove_name(name));
        if !known && kept == 0 {
            return Ok(None);
        }
        // Above every version handed out, so an upload still running is
        // purged too; the next publish gets a higher one.
        let up_to = self.next_version();
        let active = self.keys.read().active().ok_or("no active signing key")?;
        let mut p = PurgeFrame {
            name: name.to_owned(),
            up_to_version: up_to,
            key_id: active,
            timestamp_ms: self.now_ms(),
            signature: [0; 64],
        };
        {
            let signers = self.signers.read();
            let signer = signers
                .get(&active)
                .ok_or_else(|| format!("the active key {active} has no secret key on this node"))?;
            p.signature = signer.sign(&p.signing_bytes());
        }
        self.accept_purge(p, None)?;
        Ok(Some(up_to))
    }

    /// The version the next publish of an object gets (origin): the wall
    /// clock in milliseconds, or one more than the last version handed out
    /// if the clock has not moved on, so versions only grow — also across
    /// restarts, as long as the clock does not run backwards.
    pub fn next_version(&self) -> u64 {
        let now = self.now_ms();
        let prev = self
            .last_version
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        now.max(prev + 1)
    }

    /// Waits up to `wait` for chunk `id` to arrive in the store.
    pub async fn wait_for(&self, id: ChunkId, wait: Duration) -> Option<Chunk> {
        let mut rx = self.arrivals.subscribe();
        if let Some(c) = self.store.get(&id, Instant::now()) {
            return Some(c);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return None,
                Ok(Ok(got)) if got == id => return self.store.get(&id, Instant::now()),
                Ok(Ok(_)) => {}
                // Lagged: we may have missed it; look.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if let Some(c) = self.store.get(&id, Instant::now()) {
                        return Some(c);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }

    /// Upstream peers in preference order: edges that said they have `id`
    /// and unchoked us first (they are the cheap source), then relays and
    /// origins.
    fn sources_for(&self, id: ChunkId) -> Vec<Arc<Peer>> {
        let peers = self.peer_list();
        let me = self.settings.role;
        let now = Instant::now();
        let banned: HashSet<PeerId> = {
            let reputation = self.reputation.lock();
            peers
                .iter()
                .filter(|p| reputation.is_banned(p.id, now))
                .map(|p| p.id)
                .collect()
        };
        let candidates = peers.into_iter().map(|p| {
            let kind = if banned.contains(&p.id) {
                SourceKind::Banned
            } else if p.role == Role::Edge && me == Role::Edge {
                SourceKind::Edge {
                    has: p.have.lock().contains(&id),
                    unchoked_us: p.unchoked_us.load(Ordering::Relaxed),
                }
            } else if p.role.is_upstream_of(me) {
                SourceKind::Upstream
            } else {
                SourceKind::Other
            };
            (p, kind)
        });
        crate::p2p::request_order(id.seq, me == Role::Edge, candidates)
    }

    /// Fetches chunk `id` over a reliable stream from the best source,
    /// once however many callers ask at the same time.
    pub async fn fetch(self: &Arc<Self>, id: ChunkId) -> Result<Chunk, FetchError> {
        self.fetch_counted(id, true).await
    }

    /// Like [`Self::fetch`] for a chunk that may not be published yet: not
    /// finding it is expected, so it is not counted as a failed repair.
    pub async fn fetch_if_published(self: &Arc<Self>, id: ChunkId) -> Result<Chunk, FetchError> {
        self.fetch_counted(id, false).await
    }

    async fn fetch_counted(
        self: &Arc<Self>,
        id: ChunkId,
        count: bool,
    ) -> Result<Chunk, FetchError> {
        if let Some(c) = self.store.get(&id, Instant::now()) {
            return Ok(c);
        }
        let shared = self.clone();
        let result = self
            .flight
            .run(id, || async move { shared.fetch_uncached(id, count).await })
            .await;
        match result {
            Ok(c) => Ok(c),
            Err(FlightError::Failed(e)) => Err(e),
            Err(e) => Err(FetchError::Unavailable(e.to_string())),
        }
    }

    async fn fetch_uncached(
        self: &Arc<Self>,
        id: ChunkId,
        count: bool,
    ) -> Result<Chunk, FetchError> {
        let mut answers = Answers::default();
        let started = Instant::now();
        let wait = source_wait(self.settings.role);
        // Set once the fetch waits: what it asks then must answer in time.
        let mut until = None;
        let mut round = 0;
        let not_found = loop {
            let sources = self.sources_for(id);
            // Why no source brought it: a source that timed out may still
            // be pulling it over a lossy link (its pull lands in its store),
            // so it is asked again a bounded number of times; a source that
            // could not reach its own upstream, one whose connection closed
            // (it is shutting down: a rollout restarts relays, then the
            // origin), or no source at all, is a restart in progress, so it
            // is waited out for a bounded time, asking whoever (re)connects.
            // Only "does not have" from every source is an answer.
            let mut miss = Miss::default();
            let mut asked = 0;
            for peer in sources {
                // The list is taken once a round: a source asked later in
                // it may have closed meanwhile. It is a restart, not an
                // answer: skipped at once for the others, and its
                // replacement is a new connection.
                if let Some(closed) = peer.conn.close_reason() {
                    answers.record(&peer.name, closed.to_string());
                    miss.unavailable = true;
                    continue;
                }
                asked += 1;
                match within(until, self.fetch_from(&peer, id, &mut miss)).await {
                    Some(Ok(c)) => return Ok(c),
                    Some(Err(why)) => answers.record(&peer.name, why),
                    None => {
                        miss.unavailable = true;
                        answers.record(&peer.name, WAIT_ENDED.into());
                    }
                }
            }
            if asked == 0 {
                answers.none_left();
                miss.unavailable = true;
            }
            if miss.timed_out && round + 1 < FETCH_ROUNDS {
                round += 1;
                tracing::debug!(%id, round, answers = %answers, "fetch: a source timed out; asking again");
                continue;
            }
            if miss.unavailable && started.elapsed() < wait {
                tracing::debug!(%id, answers = %answers, "fetch: no source can get it now; waiting for one");
                until = Some(started + wait + WAIT_OVERRUN);
                tokio::time::sleep(SOURCE_GONE_POLL).await;
                continue;
            }
            break !miss.other && !miss.unavailable;
        };
        if count {
            self.metrics.repairs.with_label_values(&["failed"]).inc();
        }
        Err(if not_found {
            FetchError::NotFound(answers.to_string())
        } else {
            let why = answers.after(started.elapsed());
            tracing::debug!(%id, answers = %why, "fetch failed");
            FetchError::Unavailable(why)
        })
    }

    /// One request for `id` to `peer`: the chunk, or what the peer answered
    /// instead (recording in `miss` what kind of miss it was).
    async fn fetch_from(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        id: ChunkId,
        miss: &mut Miss,
    ) -> Result<Chunk, String> {
        let reply = request(
            &peer.conn,
            &Frame::Request { id },
            self.settings.request_timeout,
        )
        .await;
        miss.other |= !matches!(reply, Ok(Frame::NotFound { .. }));
        Err(match reply {
            Ok(Frame::Chunk(chunk)) if chunk.id() == id => {
                match self.accept_chunk(chunk, Some(peer.id), Path::Pull) {
                    Accepted::Stored | Accepted::Duplicate => {
                        self.metrics.repairs.with_label_values(&["ok"]).inc();
                        if let Some(c) = self.store.get(&id, Instant::now()) {
                            return Ok(c);
                        }
                        format!("{id} was evicted as soon as it arrived")
                    }
                    Accepted::Rejected(why) => format!("sent a bad {id}: {why}"),
                }
            }
            Ok(Frame::Chunk(other)) => format!("answered {id} with {}", other.id()),
            Ok(Frame::NotFound { .. }) => format!("does not have {id}"),
            Ok(Frame::Error { code, message }) => {
                // "Busy" clears as the relay's queue drains: wait and ask
                // again, as for a relay restarting.
                miss.unavailable |= code == crate::roles::mesh::CODE_UNAVAILABLE
                    || code == crate::p2p::admission::CODE_BUSY;
                message
            }
            Ok(other) => format!("answered with {}", other.kind()),
            Err(e) => {
                match e {
                    FramingError::Timeout(_) => miss.timed_out = true,
                    // The connection broke under the request: the peer is
                    // going away or restarting.
                    FramingError::Read(_) | FramingError::Write(_) | FramingError::Finished => {
                        miss.unavailable = true
                    }
                    _ => {}
                }
                e.to_string()
            }
        })
    }

    /// The newest manifest of the object whose key is `object`. An origin
    /// answers from what it published. Elsewhere a version confirmed newer
    /// than [`MANIFEST_REVALIDATE`] ago is answered at once (pushes keep it
    /// current); an older one is checked upstream first, so a manifest push
    /// lost on the way delays a new version by at most that long. If no
    /// upstream answers, the version held is still a version the publisher
    /// published whole, so it is served rather than an error.
    ///
    /// `name` is the object's name when known (empty otherwise): an origin
    /// with an upstream needs it to pull a name it does not hold.
    pub async fn fetch_manifest(
        self: &Arc<Self>,
        object: StreamId,
        name: &str,
    ) -> Result<ManifestFrame, String> {
        if let (Role::Origin, Some(up), false) =
            (self.settings.role, &self.upstream, name.is_empty())
        {
            return crate::roles::upstream::manifest(self, up, object, name)
                .await?
                .map(|m| self.signed_with_active_key(m))
                .ok_or_else(|| format!("origin has no manifest for {object}"));
        }
        let held = self.manifests.lock().newest(object);
        if self.settings.role == Role::Origin {
            return held
                .map(|(m, _)| self.signed_with_active_key(m))
                .ok_or_else(|| format!("origin has no manifest for {object}"));
        }
        if let Some((m, checked)) = &held {
            let age = checked.elapsed();
            if age < MANIFEST_REVALIDATE {
                // Past half its life the held version is checked upstream in
                // the background: under steady requests it is confirmed
                // again before it goes stale, and no request waits for the
                // round trip (before, every request to the object waited for
                // it once a second).
                if age >= MANIFEST_REVALIDATE / 2
                    && self.manifests.lock().claim_refresh(object, Instant::now())
                {
                    let shared = self.clone();
                    let name = name.to_owned();
                    tokio::spawn(async move {
                        if let Err(e) = shared.revalidate_manifest(object, &name, false).await {
                            tracing::debug!(error = %e, object = %object, "refreshing a manifest ahead failed");
                        }
                    });
                }
                return Ok(m.clone());
            }
        }
        let got = self.revalidate_manifest(object, name, held.is_none()).await;
        match (got, held) {
            (Ok(m), _) => Ok(m),
            (Err(FlightError::Failed(e)), Some(_))
                if e.contains(crate::roles::upstream::UPSTREAM_FAILED) =>
            {
                Err(e)
            }
            (Err(FlightError::Failed(e)), None) => Err(e),
            (Err(e), None) => Err(e.to_string()),
            (Err(e), Some((m, _))) => {
                tracing::debug!(error = %e, object = %object, "revalidating a manifest failed; serving the version held");
                Ok(m)
            }
        }
    }

    /// Asks the upstreams, once however many callers ask at once, for the
    /// newest manifest of `object`; a verified answer is recorded (and so
    /// confirms the version held).
    ///
    /// `wait`: with no version held, a round where no upstream could answer
    /// is tried again for a bounded time; with one held, the held version
    /// is served at once instead.
    async fn revalidate_manifest(
        self: &Arc<Self>,
        object: StreamId,
        name: &str,
        wait: bool,
    ) -> Result<ManifestFrame, FlightError<String>> {
        let shared = self.clone();
        let name = name.to_owned();
        self.manifest_flight
            .run(object, || async move {
                // As `fetch_uncached`: only an upstream's "not found" is an
                // answer; none connected, one that cannot be reached or one
                // that cannot reach its own (a rollout restarting relays,
                // then the origin) is waited out for a bounded time, never
                // turned into a client's 404 for an object that exists.
                let started = Instant::now();
                let budget = source_wait(shared.settings.role);
                let mut answers = Answers::default();
                let mut until = None;
                loop {
                    match shared
                        .ask_manifest_once(object, &name, &mut answers, until)
                        .await
                    {
                        ManifestAsk::Answer(result) => return result,
                        ManifestAsk::Unavailable => {
                            if !wait || started.elapsed() >= budget {
                                return Err(answers.after(started.elapsed()));
                            }
                            tracing::debug!(%object, answers = %answers, "manifest: no upstream can answer now; waiting for one");
                            until = Some(started + budget + WAIT_OVERRUN);
                            tokio::time::sleep(SOURCE_GONE_POLL).await;
                        }
                    }
                }
            })
            .await
    }

    /// One round of asking every upstream for `object`'s newest manifest;
    /// what each that could not answer said goes to `answers`. A request
    /// not answered by `until` is given up.
    async fn ask_manifest_once(
        self: &Arc<Self>,
        object: StreamId,
        name: &str,
        answers: &mut Answers,
        until: Option<Instant>,
    ) -> ManifestAsk {
        let shared = self;
        let upstream: Vec<Arc<Peer>> = shared
            .peers
            .read()
            .values()
            .filter(|p| p.role.is_upstream_of(shared.settings.role))
            .cloned()
            .collect();
        // An upstream's "no such name" stands however the others fail.
        let mut answer: Option<String> = None;
        let mut asked = 0;
        for peer in upstream {
            // As in `fetch_uncached`: a closed connection (its node is
            // shutting down) is a restart, not an answer.
            if let Some(closed) = peer.conn.close_reason() {
                answers.record(&peer.name, closed.to_string());
                continue;
            }
            asked += 1;
            let frame = Frame::ManifestRequest {
                object,
                name: name.to_owned(),
            };
            let ask = request(&peer.conn, &frame, shared.settings.request_timeout);
            let Some(reply) = within(until, ask).await else {
                answers.record(&peer.name, WAIT_ENDED.into());
                continue;
            };
            match reply {
                Ok(Frame::Manifest(m)) if StreamId::object_key(&m.name) == object => {
                    if let Err(e) = shared.accept_manifest(m.clone(), Some(peer.id)) {
                        return ManifestAsk::Answer(Err(e));
                    }
                    // What we hold now may be newer than the answer (a push
                    // overtook it): serve the newest.
                    return ManifestAsk::Answer(Ok(shared
                        .manifests
                        .lock()
                        .newest(object)
                        .map_or(m, |(n, _)| n)));
                }
                Ok(Frame::Upload(u)) => {
                    // No complete version, but an upload is open (or was
                    // aborted): recorded for readers, and said "no manifest"
                    // to everyone else.
                    let state = u.state;
                    if let Err(e) = shared.accept_upload(u, object) {
                        return ManifestAsk::Answer(Err(e));
                    }
                    if state == crate::chunk::wire::UploadState::Open {
                        return ManifestAsk::Answer(Err(format!(
                            "{} {}",
                            peer.name,
                            crate::roles::uploads::UPLOAD_OPEN
                        )));
                    }
                    answer.get_or_insert(format!(
                        "{} has no manifest for {object} (upload aborted)",
                        peer.name
                    ));
                }
                Ok(Frame::NotFound { .. }) => {
                    shared.uploads.lock().forget(object);
                    answer.get_or_insert(format!("{} has no manifest for {object}", peer.name));
                }
                Ok(Frame::Error { code, message })
                    if code == crate::roles::upstream::CODE_UPSTREAM_FAILED =>
                {
                    // The origin's upstream failed: an answer, not a
                    // missing peer, so no version held stands in.
                    answer.get_or_insert(
                        if message.contains(crate::roles::upstream::UPSTREAM_FAILED) {
                            message
                        } else {
                            format!("{}: {message}", crate::roles::upstream::UPSTREAM_FAILED)
                        },
                    );
                }
                Ok(Frame::Error { message, .. }) => answers.record(&peer.name, message),
                Ok(other) => answers.record(&peer.name, format!("answered with {}", other.kind())),
                Err(e) => answers.record(&peer.name, e.to_string()),
            }
        }
        if asked == 0 {
            answers.none_left();
        }
        match answer {
            Some(e) => ManifestAsk::Answer(Err(e)),
            None => ManifestAsk::Unavailable,
        }
    }

    /// Chunk `id` from the origin of record, signed afresh (its bytes and id
    /// are what was published; the signature and timestamp are today's, so
    /// old versions outlive the freshness window and key rotations) and
    /// put through `accept_chunk` into the memory cache like any chunk.
    pub fn chunk_from_origin_store(self: &Arc<Self>, id: ChunkId) -> Option<Chunk> {
        let payload = self.origin_store.as_ref()?.read_chunk(id.stream, id.seq)?;
        self.publish(id.stream, id.seq, payload, false).ok()?;
        self.store.get(&id, Instant::now())
    }

    /// Signs and distributes a chunk (origin).
    pub fn publish(
        self: &Arc<Self>,
        stream: StreamId,
        seq: u64,
        payload: Bytes,
        live: bool,
    ) -> Result<(), String> {
        let active = self.keys.read().active().ok_or("no active signing key")?;
        let chunk = {
            let signers = self.signers.read();
            let signer = signers
                .get(&active)
                .ok_or_else(|| format!("the active key {active} has no secret key on this node"))?;
            signer.sign_chunk(ChunkId::new(stream, seq), payload, self.now_ms())
        };
        self.ingested_bytes
            .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
        let path = if live {
            Path::IngestLive
        } else {
            Path::IngestObject
        };
        match self.accept_chunk(chunk, None, path) {
            Accepted::Stored | Accepted::Duplicate => Ok(()),
            Accepted::Rejected(why) => Err(why),
        }
    }

    /// Signs and distributes an object's manifest (origin).
    pub fn publish_manifest(&self, p: &crate::roles::ingest::Published) -> Result<(), String> {
        self.publish_manifest_at(p, self.now_ms())
    }

    /// Signs and distributes an object's manifest stamped `timestamp_ms`.
    pub fn publish_manifest_at(
        &self,
        p: &crate::roles::ingest::Published,
        timestamp_ms: u64,
    ) -> Result<(), String> {
        let active = self.keys.read().active().ok_or("no active signing key")?;
        let signers = self.signers.read();
        let signer = signers
            .get(&active)
            .ok_or_else(|| format!("the active key {active} has no secret key on this node"))?;
        let mut m = ManifestFrame {
            name: p.name.clone(),
            stream: p.stream_id,
            version: p.version,
            cache_control: p.cache_control.clone(),
            object_len: p.len,
            chunk_size: p.chunk_size,
            chunk_count: p.chunks,
            digest: p.digest_bytes,
            key_id: active,
            timestamp_ms,
            signature: [0; 64],
        };
        m.signature = signer.sign(&m.signing_bytes());
        drop(signers);
        self.accept_manifest(m, None)
    }

    /// A manifest the origin holds, as it answers it now: signed with the
    /// key active now. After a key rotation the old key is revoked and then
    /// leaves every ring, so a manifest it signed is refused by every node
    /// that asks (counted as a rejection) and a version the origin of record
    /// keeps would become unreadable wherever it is not already held. The
    /// version is the same one (name, version, length, digest and the
    /// publish timestamp unchanged), only signed again, as its chunks are
    /// (`chunk_from_origin_store`); the re-signed one replaces the held one,
    /// so each manifest is signed once per key.
    fn signed_with_active_key(&self, m: ManifestFrame) -> ManifestFrame {
        let Some(active) = self.keys.read().active() else {
            return m;
        };
        if m.key_id == active {
            return m;
        }
        let resigned = {
            let signers = self.signers.read();
            let Some(signer) = signers.get(&active) else {
                return m;
            };
            let mut r = m;
            r.key_id = active;
            r.signature = signer.sign(&r.signing_bytes());
            r
        };
        self.manifests
            .lock()
            .insert(resigned.clone(), Instant::now());
        resigned
    }

    /// Connected peers.
    pub fn peer_list_len(&self) -> usize {
        self.peers.read().len()
    }

    pub(crate) fn peer_list(&self) -> Vec<Arc<Peer>> {
        self.peers.read().values().cloned().collect()
    }

    /// Starts draining: readiness fails, the HTTP listeners stop accepting
    /// and finish the requests they are in. The mesh keeps running until
    /// [`Shared::stop_mesh`].
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Closes every peer session and stops the mesh's loops.
    pub fn stop_mesh(&self) {
        let _ = self.shutdown.send(true);
        let _ = self.mesh_stop.send(true);
    }

    /// Resolves when the mesh is to stop.
    pub(crate) fn mesh_stop_signal(&self) -> watch::Receiver<bool> {
        self.mesh_stop.subscribe()
    }

    /// Records that the mesh moved data (a push sent, a pull answered).
    pub(crate) fn note_mesh_activity(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.mesh_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long ago the mesh last moved data.
    pub(crate) fn mesh_quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.mesh_active_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Announces again to each peer every push it has not confirmed: a peer
    /// that got none of a stream's shards (a blackholed path, an unlucky
    /// burst of loss) has no gap or failed group to show it, and pulls what
    /// it is told of (`head_announced`). A draining node does this until
    /// all is confirmed.
    pub(crate) fn announce_unconfirmed(&self) {
        for peer in self.peer_list() {
            let ids: Vec<ChunkId> = peer.unconfirmed.lock().iter().copied().collect();
            for id in ids {
                if peer.control.try_send(Frame::Have { id }).is_err() {
                    break;
                }
            }
        }
    }

    /// Pushed chunks no downstream peer has confirmed yet.
    pub(crate) fn pushes_unconfirmed(&self) -> usize {
        self.peers
            .read()
            .values()
            .map(|p| p.unconfirmed.lock().len())
            .sum()
    }

    /// Tells our upstream peers we hold `id` (see `Peer::unconfirmed`).
    fn confirm_upstream(&self, id: ChunkId) {
        if self.settings.role == Role::Origin {
            return;
        }
        for peer in self.peers.read().values() {
            if peer.role.is_upstream_of(self.settings.role) {
                let _ = peer.control.try_send(Frame::Have { id });
            }
        }
    }

    /// Chunks waiting in the push queues of every peer.
    pub(crate) fn pushes_queued(&self) -> usize {
        self.peers
            .read()
            .values()
            .map(|p| p.push.max_capacity() - p.push.capacity())
            .sum()
    }

    /// Re-reads the trust bundle; true if the key ring changed. An older
    /// bundle than the ring's generation is refused.
    pub fn reload_trust_bundle(&self, path: &std::path::Path) -> Result<bool, String> {
        let result = (|| {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let bundle = crate::crypto::TrustBundle::from_json(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let running = self.keys.read().generation();
            if bundle.generation < running {
                // Keys changed through the admin API since the file was
                // written: the file is stale, not an attack to report as a
                // failure, and never a reason to roll the ring back.
                tracing::warn!(
                    file_generation = bundle.generation,
                    running,
                    path = %path.display(),
                    "trust bundle file is older than the running key ring; keeping the ring"
                );
                return Ok(false);
            }
            let changed = self
                .keys
                .write()
                .apply_bundle(&bundle)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if changed {
                self.forget_untrusted_chunks();
            }
            Ok(changed)
        })();
        self.metrics
            .trust_bundle_reloads
            .with_label_values(&[if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        self.metrics
            .keyring_generation
            .set(self.keys.read().generation() as i64);
        result
    }

    /// After the key ring changed: a chunk held signed with a key the ring
    /// no longer trusts (revoked, or gone from it) is neither served nor
    /// passed on. A peer would refuse it and strike this node for it (an
    /// edge that asked its relay for such a chunk bans the relay), and a
    /// client must not be given it. The store counts a chunk's TTL from
    /// when this node got it, so a chunk signed just before a rotation's
    /// activation can outlive the rotation's drain here. An origin signs
    /// what it held again with the active key (the bytes are the published
    /// ones, as `chunk_from_origin_store` does); other nodes drop it and
    /// fetch it again when asked. Returns how many were dropped or re-signed.
    pub fn forget_untrusted_chunks(&self) -> usize {
        let trusted: HashSet<KeyId> = self
            .keys
            .read()
            .keys()
            .into_iter()
            .filter(|(_, state)| matches!(state, KeyState::Active | KeyState::Trusted))
            .map(|(id, _)| id)
            .collect();
        let gone = self
            .store
            .take_where(|c| !trusted.contains(&c.header.key_id));
        if gone.is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut resigned = 0usize;
        if self.settings.role == Role::Origin {
            let active = self.keys.read().active();
            let signers = self.signers.read();
            if let Some(signer) = active.and_then(|a| signers.get(&a)) {
                for c in &gone {
                    let fresh = signer.sign_chunk(c.id(), c.payload.clone(), self.now_ms());
                    if self.store.insert(fresh, now).is_ok() {
                        resigned += 1;
                    }
                }
            }
        }
        tracing::info!(
            chunks = gone.len(),
            resigned,
            "key ring changed: chunks signed with a key no longer trusted are not served"
        );
        gone.len()
    }

    /// Re-reads the signing key files (origins); returns how many loaded.
    /// Keys already held stay; a file that fails to load fails the reload.
    pub fn reload_signers(&self, paths: &[std::path::PathBuf]) -> Result<usize, String> {
        let mut loaded = Vec::new();
        for p in paths {
            loaded.push(Signer::load(p).map_err(|e| e.to_string())?);
        }
        let mut signers = self.signers.write();
        for s in loaded {
            signers.insert(s.key_id(), s);
        }
        Ok(signers.len())
    }

    /// Whether the node is draining.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when shutdown is asked for.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The hello this node sends on every new connection.
    pub(crate) fn hello(&self) -> Frame {
        Frame::Hello {
            node_name: self.settings.name.clone(),
            role: match self.settings.role {
                Role::Origin => crate::chunk::wire::WireRole::Origin,
                Role::Relay => crate::chunk::wire::WireRole::Relay,
                Role::Edge => crate::chunk::wire::WireRole::Edge,
            },
            keyset_generation: self.keys.read().generation(),
        }
    }

    /// True, counted under `path`, when `peer` is serving a ban: the caller
    /// then refuses what the peer sent (and closes its connection where it
    /// has one), so a ban keeps the peer out for its whole duration, not only
    /// out of the pull path.
    pub(crate) fn refuse_if_banned(&self, peer: PeerId, path: &'static str) -> bool {
        let banned = self.reputation.lock().is_banned(peer, Instant::now());
        if banned {
            self.metrics.banned_refused.with_label_values(&[path]).inc();
        }
        banned
    }

    /// Counts bad input against a peer outside chunk verification (e.g. a
    /// FEC group that rebuilt into garbage).
    pub(crate) fn strike(&self, peer: PeerId, rejection: Rejection) {
        self.reject(Some(peer), &rejection);
    }

    /// Copies values other parts keep into the metrics gauges.
    pub fn refresh_gauges(&self) {
        let _one_at_a_time = self.refresh.lock();
        let st = self.store.stats();
        let m = &self.metrics;
        m.store_bytes.set(st.bytes as i64);
        m.store_chunks.set(st.chunks as i64);
        let advance = |c: &prometheus::IntCounter, to: u64| c.inc_by(to.saturating_sub(c.get()));
        advance(&m.store_evictions, st.evictions);
        advance(&m.store_expirations, st.expirations);
        advance(&m.store_hits, st.hits);
        advance(&m.store_misses, st.misses);
        m.keyring_generation
            .set(self.keys.read().generation() as i64);
        for (stream, _, bytes) in self.live.lock().summary() {
            m.live_held_bytes
                .with_label_values(&[&stream])
                .set(bytes as i64);
        }
        self.swarms.refresh_gauges(m);
        let ingested = self.ingested_bytes.load(Ordering::Relaxed);
        if ingested > 0 {
            m.origin_offload_ratio
                .set(self.mesh_bytes_out.load(Ordering::Relaxed) as f64 / ingested as f64);
        }
        let now = Instant::now();
        let (mut choked, mut unchoked, mut banned) = (0i64, 0i64, 0i64);
        let mut rtt: HashMap<&'static str, (f64, u32)> = HashMap::new();
        let mut parity: HashMap<&'static str, u16> = HashMap::new();
        // Lock order: the peer map is read and released first, then the
        // reputation and choker locks are taken.
        let peers = self.peer_list();
        let reputation = self.reputation.lock();
        let choker = self.choker.lock();
        // A banned peer is disconnected and refused, so it is never among
        // the connected ones: count the bans in force instead.
        banned += reputation.banned(now) as i64;
        for p in &peers {
            if reputation.is_banned(p.id, now) {
                continue;
            } else if p.role == Role::Edge
                && self.settings.role == Role::Edge
                && !choker.is_unchoked(p.id)
            {
                choked += 1;
            } else {
                unchoked += 1;
            }
            let class = p.role.as_str();
            let e = rtt.entry(class).or_default();
            e.0 += p.conn.rtt().as_secs_f64();
            e.1 += 1;
            let p_max = parity.entry(class).or_default();
            *p_max = (*p_max).max(p.current_parity.load(Ordering::Relaxed));
            // quinn counts per connection; the counter takes what is new.
            let path = p.conn.stats().path;
            let counted = p
                .lost_packets_counted
                .swap(path.lost_packets, Ordering::Relaxed);
            m.quic_lost_packets
                .with_label_values(&[class])
                .inc_by(path.lost_packets.saturating_sub(counted));
            let counted = p
                .black_holes_counted
                .swap(path.black_holes_detected, Ordering::Relaxed);
            m.quic_black_holes
                .with_label_values(&[class])
                .inc_by(path.black_holes_detected.saturating_sub(counted));
        }
        m.peers.with_label_values(&["choked"]).set(choked);
        m.peers.with_label_values(&["unchoked"]).set(unchoked);
        m.peers.with_label_values(&["banned"]).set(banned);
        // Per-class gauges start empty each scrape: a class with no peer
        // left has no value rather than its last one.
        m.quic_rtt_seconds.reset();
        m.fec_parity.reset();
        for (class, (sum, n)) in rtt {
            m.quic_rtt_seconds
                .with_label_values(&[class])
                .set(sum / f64::from(n.max(1)));
        }
        for (class, shards) in parity {
            m.fec_parity
                .with_label_values(&[class])
                .set(i64::from(shards));
        }
    }
}

/// One request on a fresh bidirectional stream; one frame back.
///
/// `stall` bounds silence, not the transfer: the request must be sent and
/// the reply's bytes keep arriving with no gap longer than `stall`. Under
/// heavy loss a 256 KiB chunk may take longer than any fixed deadline
/// while still arriving, and cutting it off turned slow into failed (a
/// 503 and a truncated body at 30 % loss). The whole exchange is still
/// bounded, by [`REQUEST_CAP`] stall periods.
pub(crate) async fn request(
    conn: &quinn::Connection,
    frame: &Frame,
    stall: Duration,
) -> Result<Frame, FramingError> {
    let fut = async {
        let mut recv = tokio::time::timeout(stall, async {
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| FramingError::Write(e.to_string()))?;
            framing::write_frame(&mut send, frame).await?;
            let _ = send.finish();
            Ok::<_, FramingError>(recv)
        })
        .await
        .map_err(|_| FramingError::Timeout(stall))??;
        framing::read_frame_progressing(&mut recv, MAX_REPLY_FRAME, stall).await
    };
    let cap = stall * REQUEST_CAP;
    tokio::time::timeout(cap, fut)
        .await
        .map_err(|_| FramingError::Timeout(cap))?
}

/// The most chunks one gap's catch-up pulls (the newest of the gap).
const MAX_CATCH_UP_CHUNKS: u64 = 4096;
/// The most gaps caught up at once. A task is a sleeping future and a list
/// of ids: cheap. 16 was too few for four live uploads through 20 % loss
/// without parity (gaps, failed groups and four tails at once): a tail's
/// announcement found no room, its last chunk was never pulled, and once the
/// origin had gone it was lost.
const MAX_CATCH_UP_TASKS: usize = 64;

/// How many times a fetch goes round its sources while one of them times
/// out (see `fetch_uncached`).
const FETCH_ROUNDS: usize = 3;

/// How long, from its start, a fetch (of a chunk or a manifest) waits for a
/// source that can get it when none can now: no upstream connected, every
/// one it had closed (shutting down in a rollout), or they cannot reach
/// their own. About a node restart, so a rollout is a slower read, not a
/// 404 or 503. Each tier stops waiting before the one below gives up on it
/// and leaves it time to ask again: a relay waits [`RELAY_SOURCE_WAIT`],
/// well inside the stall period (`request_timeout`, 10 s) of the edge
/// whose request it answers, so the edge then asks the other relay or a
/// relay back from its restart; an edge, whose client is the last to give
/// up, waits [`EDGE_SOURCE_WAIT`]. When an edge waited 5 s like its relays,
/// one whose fetch had spent that long on a relay that answered 503 or
/// stalled, and found the other relay stopped (the rollout's next pod),
/// gave its client a 503 at once instead of waiting for a relay to be back.
fn source_wait(role: Role) -> Duration {
    match role {
        Role::Edge => EDGE_SOURCE_WAIT,
        Role::Relay | Role::Origin => RELAY_SOURCE_WAIT,
    }
}
const RELAY_SOURCE_WAIT: Duration = Duration::from_secs(5);
const EDGE_SOURCE_WAIT: Duration = Duration::from_secs(8);
const SOURCE_GONE_POLL: Duration = Duration::from_millis(200);
/// Once a fetch waits for a source, a request it makes may end at most this
/// long after the wait: a relay asked then is often waiting for its own
/// origin, and the fetch's caller (a relay's edge, an edge's client) must
/// have its answer in time: an edge that asked a relay just before its
/// 8 s were up would otherwise answer after the relay's 5 s more.
const WAIT_OVERRUN: Duration = Duration::from_secs(1);
const WAIT_ENDED: &str = "no answer before the wait for a source ended";

/// `ask`'s output, or `None` if `until` passes first (no bound without one).
async fn within<F: std::future::Future>(until: Option<Instant>, ask: F) -> Option<F::Output> {
    match until {
        None => Some(ask.await),
        Some(t) => tokio::time::timeout_at(t.into(), ask).await.ok(),
    }
}

/// What one round of asking the upstreams for a manifest came to.
enum ManifestAsk {
    /// A manifest, or an upstream's answer that there is none.
    Answer(Result<ManifestFrame, String>),
    /// No upstream could answer now (what each said is in the round's
    /// `Answers`).
    Unavailable,
}

/// What every source asked during one fetch answered, in the order they
/// were first asked — each one's first answer and, if it differs, its
/// latest — for the error a client finally gets. Only the last source's
/// answer used to be kept, and a read that failed mid-rollout said only
/// `kind-relay-0: writing a frame: closed by peer: shutting down`, not what
/// the fetch had spent its time on before. Bounded by the peers a node
/// holds: one entry per source.
#[derive(Debug, Default)]
struct Answers {
    sources: Vec<Answer>,
    /// The latest round found no source to ask.
    none_left: bool,
}

#[derive(Debug)]
struct Answer {
    source: String,
    first: String,
    latest: Option<String>,
}

impl Answers {
    fn record(&mut self, source: &str, answer: String) {
        self.none_left = false;
        match self.sources.iter_mut().find(|a| a.source == source) {
            Some(a) => a.latest = (answer != a.first).then_some(answer),
            None => self.sources.push(Answer {
                source: source.to_owned(),
                first: answer,
                latest: None,
            }),
        }
    }

    fn none_left(&mut self) {
        self.none_left = true;
    }

    /// The answers, and how long the fetch had been trying.
    fn after(&self, tried: Duration) -> String {
        format!("{self} (after {:.1} s)", tried.as_secs_f64())
    }
}

impl std::fmt::Display for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.sources.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", a.source, a.first)?;
            if let Some(latest) = &a.latest {
                write!(f, ", then {latest}")?;
            }
        }
        match (self.none_left, self.sources.is_empty()) {
            (true, true) => f.write_str("no upstream connected"),
            (true, false) => f.write_str("; then no upstream connected"),
            (false, _) => Ok(()),
        }
    }
}

/// Why the sources of one fetch round did not bring the chunk.
#[derive(Default)]
struct Miss {
    timed_out: bool,
    unavailable: bool,
    /// A source answered anything but "does not have" (or failed).
    other: bool,
}

/// Why a chunk could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Every source asked answered that it does not have the chunk: a
    /// client's 404, a downstream's `NotFound`.
    #[error("{0}")]
    NotFound(String),
    /// No source could bring it now (none connected, timeouts, a source
    /// that could not reach its own upstream, a bad reply): ask again.
    #[error("{0}")]
    Unavailable(String),
}

/// How many stall periods one request may take in all, however steadily
/// its reply trickles in.
const REQUEST_CAP: u32 = 12;

fn object_info(m: &ManifestFrame) -> ObjectInfo {
    ObjectInfo {
        name: m.name.clone(),
        stream: m.stream,
        version: m.version,
        len: m.object_len,
        chunk_size: m.chunk_size,
        chunk_count: m.chunk_count,
        digest: m.digest,
        published_ms: m.timestamp_ms,
        cache_control: m.cache_control.clone(),
    }
}

/// Repair delays a pushed live file's chunks get, after its manifest, before
/// the missing ones are pulled (`Shared::complete_live`).
const COMPLETE_GRACE: u32 = 3;

/// How often a client waiting for a live chunk not yet pushed asks upstream.
const LIVE_POLL: Duration = Duration::from_millis(250);

/// What the edge's HTTP server reads from: local store first, then peers and
/// relays.
pub struct EdgeContent(pub Arc<Shared>);

impl Content for EdgeContent {
    async fn object(&self, name: &str) -> Result<ObjectInfo, ContentError> {
        match self
            .0
            .fetch_manifest(StreamId::object_key(name), name)
            .await
        {
            Ok(m) => {
                let info = object_info(&m);
                // A client asked: pull the whole object, trading with the
                // other edges, so they have something to trade with us.
                if self.0.settings.swarm {
                    crate::roles::swarm::start(&self.0, m, false);
                }
                Ok(info)
            }
            Err(e) if e.contains("has no manifest") => {
                Err(ContentError::NotFound(format!("object {name}")))
            }
            Err(e) if e.contains(crate::roles::upstream::UPSTREAM_FAILED) => {
                // The marker routed it here; the client reads the cause.
                let marker = format!("{}: ", crate::roles::upstream::UPSTREAM_FAILED);
                Err(ContentError::UpstreamFailed(e.replacen(&marker, "", 1)))
            }
            Err(e) => Err(ContentError::Unavailable(e)),
        }
    }

    async fn chunk(&self, id: ChunkId, wait: Duration) -> Result<Chunk, ContentError> {
        let shared = &self.0;
        if let Some(c) = shared.store.get(&id, Instant::now()) {
            return Ok(c);
        }
        let manifest = shared.manifests.lock().get(id.stream);
        if manifest
            .as_ref()
            .is_some_and(|m| crate::roles::live::split_name(&m.name).is_some())
        {
            // A live file's chunks are pushed, and its manifest (on the
            // control stream) can overtake them: give the push a moment
            // before paying for a pull.
            if let Some(c) = shared
                .wait_for(id, shared.settings.repair_delay.min(wait))
                .await
            {
                return Ok(c);
            }
        }
        let is_object = manifest.is_some();
        if !is_object {
            // Live: the chunk is probably on its way by push; give FEC a
            // moment before paying for a repair round trip.
            let head = shared.head(id.stream);
            let grace = shared.settings.repair_delay.min(wait);
            if let Some(c) = shared.wait_for(id, grace).await {
                return Ok(c);
            }
            if head.is_none_or(|h| id.seq > h) {
                // Not published yet as far as we know. Wait for the push,
                // but ask upstream too now and then: our push upstream may
                // have died with the stream still going, and then only a
                // pull learns what was published meanwhile.
                let deadline = Instant::now() + wait.saturating_sub(grace);
                loop {
                    if let Ok(c) = shared.fetch_if_published(id).await {
                        return Ok(c);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ContentError::NotYet(format!("chunk {id}")));
                    }
                    if let Some(c) = shared.wait_for(id, left.min(LIVE_POLL)).await {
                        return Ok(c);
                    }
                }
            }
        }
        // A swarm pulling this object takes the reader's chunk first (its
        // deadline window); if it does not come soon, fetch it directly.
        if let Some(swarm) = shared.swarms.get(id.stream) {
            if let Ok(piece) = u32::try_from(id.seq) {
                swarm.deadline(piece);
                let grace = crate::roles::swarm::READER_WAIT.min(wait);
                if let Some(c) = shared.wait_for(id, grace).await {
                    return Ok(c);
                }
            }
        }
        // No wall-clock deadline on the fetch: it gives up on a source that
        // stops making progress, so over a lossy link a chunk is slow but
        // whole, where a fixed deadline cut bodies short.
        match shared.fetch(id).await {
            Ok(c) => Ok(c),
            Err(FetchError::NotFound(e)) => Err(ContentError::NotFound(e)),
            Err(FetchError::Unavailable(e)) => Err(ContentError::Unavailable(e)),
        }
    }

    fn stream_head(&self, stream: StreamId) -> Option<u64> {
        self.0.head(stream)
    }

    fn cached(&self, id: ChunkId) -> Option<Chunk> {
        self.0.store.get(&id, Instant::now())
    }

    fn upload(&self, name: &str) -> Result<Option<crate::roles::serve::UploadRead>, ContentError> {
        let frame = self
            .0
            .uploads
            .lock()
            .get(StreamId::object_key(name), Instant::now())
            .filter(|u| u.state == crate::chunk::wire::UploadState::Open);
        let Some(frame) = frame else {
            return Ok(None);
        };
        match crate::roles::uploads::ReaderSlot::take(&self.0.upload_readers) {
            Some(slot) => Ok(Some(crate::roles::serve::UploadRead { frame, slot })),
            None => {
                self.upload_read_ended("refused_too_many");
                Err(ContentError::TooManyUploadReaders(format!(
                    "{} clients are reading uploads in progress at this edge, the most it serves at once",
                    crate::roles::uploads::MAX_UPLOAD_READERS
                )))
            }
        }
    }

    async fn upload_next(
        &self,
        up: &crate::chunk::wire::UploadFrame,
        seq: u64,
        progress: Instant,
    ) -> crate::roles::uploads::Step {
        self.0.upload_step(up, seq, progress).await
    }

    fn upload_read_ended(&self, outcome: &'static str) {
        self.0
            .metrics
            .upload_reads
            .with_label_values(&[outcome])
            .inc();
    }
}

impl crate::roles::live_http::LiveContent for EdgeContent {
    fn live_changes(&self) -> watch::Receiver<u64> {
        self.0.live_changed.subscribe()
    }

    fn held_version(&self, name: &str) -> Option<u64> {
        self.0
            .manifests
            .lock()
            .newest(StreamId::object_key(name))
            .map(|(m, _)| m.version)
    }

    fn playlists(&self, stream: &str) -> Vec<String> {
        self.0.live.lock().playlists(stream)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.settings.name)
            .field("role", &self.settings.role)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Manifests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifests")
            .field("len", &self.len())
            .finish()
    }
}

impl std::fmt::Debug for EdgeContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EdgeContent").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, version: u64) -> ManifestFrame {
        ManifestFrame {
            name: name.to_owned(),
            stream: StreamId::object(name, version),
            version,
            cache_control: String::new(),
            object_len: 1,
            chunk_size: 1,
            chunk_count: 1,
            digest: [0; 32],
            key_id: KeyId(1),
            timestamp_ms: 0,
            signature: [0; 64],
        }
    }

    /// One background check per confirmation: requests arriving while it
    /// runs do not start more, and the next confirmation allows the next.
    #[test]
    fn a_manifest_is_refreshed_ahead_once_per_confirmation() {
        let mut ms = Manifests::default();
        let key = StreamId::object_key("a");
        let t0 = Instant::now();
        assert!(
            !ms.claim_refresh(key, t0),
            "nothing held, nothing to refresh"
        );
        ms.insert(manifest("a", 1), t0);
        let t1 = t0 + Duration::from_millis(600);
        assert!(ms.claim_refresh(key, t1));
        assert!(!ms.claim_refresh(key, t1), "a second check while one runs");
        assert!(!ms.claim_refresh(key, t1 + Duration::from_millis(100)));
        // The check's answer (the same version) confirms it again.
        ms.insert(manifest("a", 1), t1 + Duration::from_millis(1));
        assert!(ms.claim_refresh(key, t1 + Duration::from_millis(700)));
    }

    #[test]
    fn a_failed_fetch_names_every_source_with_its_first_and_latest_answer() {
        let mut a = Answers::default();
        assert_eq!(a.to_string(), "");
        a.none_left();
        assert_eq!(a.to_string(), "no upstream connected");
        a.record("relay-1", "busy".into());
        let closed = "writing a frame: closed by peer: shutting down";
        a.record("relay-0", closed.into());
        a.record("relay-1", "busy".into());
        assert_eq!(a.to_string(), format!("relay-1: busy; relay-0: {closed}"));
        a.record("relay-1", "timed out".into());
        a.record("relay-1", "does not have x".into());
        assert_eq!(
            a.after(Duration::from_millis(5_700)),
            format!("relay-1: busy, then does not have x; relay-0: {closed} (after 5.7 s)")
        );
        a.none_left();
        assert!(
            a.to_string().ends_with("; then no upstream connected"),
            "{a}"
        );
    }

    #[test]
    fn each_tier_stops_waiting_for_a_source_before_the_tier_below_gives_up_on_it() {
        let settings = NodeSettings::from_config(crate::config::NodeConfig::default());
        // A relay answers (a 503) well inside the edge's stall period,
        // leaving the edge time to ask again...
        let answers_by = |role| source_wait(role) + WAIT_OVERRUN;
        assert!(answers_by(Role::Relay) * 3 / 2 <= settings.request_timeout);
        assert!(source_wait(Role::Origin) <= source_wait(Role::Relay));
        assert!(answers_by(Role::Relay) + Duration::from_secs(1) < source_wait(Role::Edge));
        // ... and the edge answers its client before an HTTP client that
        // waits as long as a mesh request would.
        assert!(answers_by(Role::Edge) < settings.request_timeout);
    }
}
