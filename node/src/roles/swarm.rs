//! Edges swarm whole objects: once a client asks for an object (or an
//! upstream says "preheat"), the edge pulls every chunk of it, asking its
//! neighbour edges and its upstreams as the piece picker
//! ([`crate::p2p::picker`], the core `dcdn sim` drives too) decides:
//! what a client is reading now by deadline, then random first pieces, then
//! rarest first among the neighbours' announcements; each upstream is a seed
//! asked only for its share (`upstream_stripe`) and only for pieces no
//! neighbour has while neighbours are being asked, so the tier above sends
//! each piece to a few edges and the edges trade the rest under the choker.
//!
//! This module is the picker's I/O: it learns what neighbours hold from the
//! `Have`/`Bitfield` control frames they send, sends the picker's requests
//! on fresh streams, feeds back what came in (through
//! [`Shared::accept_chunk`], like every other chunk) and cancels endgame
//! losers by dropping their streams.

use crate::chunk::wire::{Frame, ManifestFrame, PreheatFrame};
use crate::chunk::{ChunkId, PeerId, StreamId};
use crate::p2p::picker::{Bitfield, Picker, upstream_stripe};
use crate::roles::node::{Accepted, Path, Peer, Role, Shared, request};
use bytes::Bytes;
use parking_lot::Mutex;
use rand::SeedableRng;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Objects an edge swarms at once; a request for another waits for a slot
/// (the client's own read path still serves it meanwhile).
pub const MAX_SWARMS: usize = 4;
/// An object larger than this share of the store budget is not swarmed:
/// pulling it whole would evict its own first pieces.
const STORE_SHARE: u64 = 2;
/// How often the swarm looks at the peer map and timeouts when nothing else
/// woke it.
const TICK: Duration = Duration::from_millis(100);
/// Deadlines queued from readers before the swarm reads them.
const DEADLINE_QUEUE: usize = 256;
/// How long a reader waits for the swarm to bring a chunk it set a deadline
/// for before fetching it itself (a peer's pipeline ahead of it was slow).
pub const READER_WAIT: Duration = Duration::from_secs(2);
/// While a reader set a deadline this recently, an upstream gets at most
/// [`SEED_DEPTH_WHILE_READING`] of the swarm's requests at once: replies
/// share the connection, and a reader's next chunk must not queue behind a
/// pipeline of bulk pieces on a slow or lossy upstream link.
const READER_ACTIVE: Duration = Duration::from_secs(2);
const SEED_DEPTH_WHILE_READING: usize = 2;
/// Have announcements queued for the swarms; a swarm that falls behind
/// re-reads every peer's announcements instead.
const HAVE_QUEUE: usize = 8192;

/// The swarms an edge runs now, and the feed of neighbours' announcements.
#[derive(Debug)]
pub struct Swarms {
    active: Mutex<HashMap<StreamId, Arc<SwarmHandle>>>,
    haves: broadcast::Sender<(PeerId, ChunkId)>,
}

impl Default for Swarms {
    fn default() -> Self {
        Self {
            active: Mutex::new(HashMap::new()),
            haves: broadcast::channel(HAVE_QUEUE).0,
        }
    }
}

/// One running swarm, as readers and status see it.
#[derive(Debug)]
pub struct SwarmHandle {
    pub name: String,
    pub version: u64,
    pub total: u32,
    pub held: AtomicU32,
    /// Started by a preheat rather than by a client.
    pub preheat: AtomicBool,
    deadlines: mpsc::Sender<u32>,
}

/// A swarm's progress, for `dcdn admin status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SwarmStatus {
    pub name: String,
    pub version: u64,
    pub held_chunks: u32,
    pub total_chunks: u32,
    pub preheat: bool,
}

impl Swarms {
    /// A neighbour announced `id` (a `Have`, or a bit of a `Bitfield`).
    pub(crate) fn on_have(&self, peer: PeerId, id: ChunkId) {
        if self.haves.receiver_count() > 0 {
            let _ = self.haves.send((peer, id));
        }
    }

    /// The swarm of `stream`, if one runs.
    pub fn get(&self, stream: StreamId) -> Option<Arc<SwarmHandle>> {
        self.active.lock().get(&stream).cloned()
    }

    /// Progress of every swarm running now.
    pub fn status(&self) -> Vec<SwarmStatus> {
        let mut out: Vec<SwarmStatus> = self
            .active
            .lock()
            .values()
            .map(|h| SwarmStatus {
                name: h.name.clone(),
                version: h.version,
                held_chunks: h.held.load(Ordering::Relaxed),
                total_chunks: h.total,
                preheat: h.preheat.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Copies progress into the gauges (scrape time).
    pub fn refresh_gauges(&self, metrics: &crate::metrics::Metrics) {
        let (mut held, mut total) = (0i64, 0i64);
        for h in self.active.lock().values() {
            held += i64::from(h.held.load(Ordering::Relaxed));
            total += i64::from(h.total);
        }
        metrics.swarm_chunks.with_label_values(&["held"]).set(held);
        metrics
            .swarm_chunks
            .with_label_values(&["total"])
            .set(total);
    }
}

impl SwarmHandle {
    /// A reader wants `piece` now: the swarm asks for it before bulk pieces.
    pub fn deadline(&self, piece: u32) {
        let _ = self.deadlines.try_send(piece);
    }
}

/// Starts swarming the object `m` describes unless this node is not an
/// edge, a swarm of it already runs, or it would not fit: every refusal is
/// counted. A swarm already running for a client becomes a preheat one if
/// `preheat` (status only).
pub fn start(shared: &Arc<Shared>, m: ManifestFrame, preheat: bool) {
    if shared.settings.role != Role::Edge || shared.is_shutting_down() {
        return;
    }
    // A warm object (every request to it ends up here) has nothing to pull:
    // a swarm would spawn a task, seed an RNG, subscribe to two broadcasts,
    // find every chunk held and log that it ended, once per request. The
    // first missing chunk ends the check, so a cold object pays one lookup.
    if holds_whole(shared, &m) {
        return;
    }
    let refuse = |why: &str| shared.metrics.swarms.with_label_values(&[why]).inc();
    let (deadlines_tx, deadlines_rx) = mpsc::channel(DEADLINE_QUEUE);
    let handle = {
        let mut active = shared.swarms.active.lock();
        if let Some(h) = active.get(&m.stream) {
            if preheat {
                h.preheat.store(true, Ordering::Relaxed);
            }
            return;
        }
        if m.object_len > shared.settings.store_budget_bytes as u64 / STORE_SHARE {
            drop(active);
            refuse("refused_too_large");
            return;
        }
        let Ok(total) = u32::try_from(m.chunk_count) else {
            drop(active);
            refuse("refused_pieces");
            return;
        };
        if total == 0 {
            return;
        }
        if active.len() >= MAX_SWARMS {
            drop(active);
            refuse("refused_busy");
            return;
        }
        let h = Arc::new(SwarmHandle {
            name: m.name.clone(),
            version: m.version,
            total,
            held: AtomicU32::new(0),
            preheat: AtomicBool::new(preheat),
            deadlines: deadlines_tx,
        });
        active.insert(m.stream, h.clone());
        h
    };
    refuse("started");
    let shared = shared.clone();
    tokio::spawn(async move {
        let stream = m.stream;
        let outcome = run(&shared, &m, &handle, deadlines_rx).await;
        shared.swarms.active.lock().remove(&stream);
        shared.metrics.swarms.with_label_values(&[outcome]).inc();
        tracing::info!(object = %m.name, version = m.version, outcome, "swarm ended");
    });
}

/// Whether every chunk of the object `m` describes is held here now.
/// Chunks are evicted oldest first, so the first ones are checked first.
fn holds_whole(shared: &Shared, m: &ManifestFrame) -> bool {
    let now = Instant::now();
    m.chunk_count > 0
        && (0..m.chunk_count).all(|seq| shared.store.contains(&ChunkId::new(m.stream, seq), now))
}

/// A request of the picker's on its way.
struct InFlight {
    abort: tokio::task::AbortHandle,
}

/// The loop of one swarm; returns how it ended.
async fn run(
    shared: &Arc<Shared>,
    m: &ManifestFrame,
    handle: &SwarmHandle,
    mut deadlines: mpsc::Receiver<u32>,
) -> &'static str {
    let stream = m.stream;
    let total = handle.total;
    let mut picker = Picker::new(
        shared
            .settings
            .picker_config(total, u64::from(m.chunk_size)),
    );
    let mut rng = rand_chacha::ChaCha8Rng::from_entropy();
    let mut haves = shared.swarms.haves.subscribe();
    let mut arrivals = shared.arrivals.subscribe();
    let mut shutdown = shared.shutdown_signal();
    let now = Instant::now();
    for i in 0..total {
        if shared
            .store
            .contains(&ChunkId::new(stream, u64::from(i)), now)
        {
            picker.mark_held(i);
        }
    }
    // Peers in the picker: neighbours by id, and the upstream set the seeds'
    // shares were cut for (a change re-cuts them).
    let mut neighbours: HashMap<PeerId, Arc<Peer>> = HashMap::new();
    let mut seeds: Vec<Arc<Peer>> = Vec::new();
    let mut backoff: HashMap<PeerId, Instant> = HashMap::new();
    let mut inflight: HashMap<(PeerId, u32), InFlight> = HashMap::new();
    let mut tasks: tokio::task::JoinSet<(PeerId, u32, Result<Reply, String>)> =
        tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = false;
    let mut last_reader: Option<Instant> = None;
    loop {
        handle.held.store(picker.have().count(), Ordering::Relaxed);
        if picker.is_complete() {
            return "complete";
        }
        if shared.manifests.lock().get(stream).is_none() {
            // Purged (or pushed out of the bounded manifest memory): the
            // object is no longer one this node may serve.
            return "stopped";
        }
        let now = Instant::now();
        sync_peers(
            shared,
            stream,
            &mut picker,
            &mut neighbours,
            &mut seeds,
            &mut inflight,
            resync,
        );
        resync = false;
        for (peer, piece) in picker.handle_timeout(now) {
            if let Some(f) = inflight.remove(&(peer, piece)) {
                f.abort.abort();
            }
        }
        // Ask every peer we may ask until its pipeline is full: neighbours
        // that unchoked us and are not banned, then the upstreams.
        let askable: Vec<(Arc<Peer>, bool)> = neighbours
            .values()
            .filter(|p| p.unchoked_us.load(Ordering::Relaxed))
            .map(|p| (p.clone(), false))
            .chain(seeds.iter().map(|p| (p.clone(), true)))
            .filter(|(p, _)| backoff.get(&p.id).is_none_or(|&t| t <= now))
            .filter(|(p, _)| !shared.reputation.lock().is_banned(p.id, now))
            .collect();
        let reading = last_reader.is_some_and(|t| now.saturating_duration_since(t) < READER_ACTIVE);
        for (peer, seed) in askable {
            loop {
                if seed && reading && picker.outstanding(peer.id) >= SEED_DEPTH_WHILE_READING {
                    break;
                }
                let Some(r) = picker.poll_request(peer.id, now, &mut rng) else {
                    break;
                };
                let id = ChunkId::new(stream, u64::from(r.piece));
                let timeout = shared.settings.request_timeout;
                let p = peer.clone();
                let node = shared.clone();
                let abort = tasks.spawn(async move {
                    let reply = match request(&p.conn, &Frame::Request { id }, timeout).await {
                        // Verified and stored here, off the swarm's loop: a
                        // chunk's hash and signature cost about what its
                        // transfer does on a fast link, and the loop keeps
                        // asking meanwhile.
                        Ok(Frame::Chunk(chunk)) if chunk.id() == id => {
                            let len = chunk.payload.len() as u64;
                            Ok(Reply::Chunk(
                                len,
                                node.accept_chunk(chunk, Some(p.id), Path::Pull),
                            ))
                        }
                        Ok(other) => Ok(Reply::Other(other)),
                        Err(e) => Err(e.to_string()),
                    };
                    (p.id, r.piece, reply)
                });
                inflight.insert((peer.id, r.piece), InFlight { abort });
            }
        }
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((peer, piece, reply)) = done else { continue };
                if inflight.remove(&(peer, piece)).is_none() {
                    continue;
                }
                on_reply(shared, &mut picker, &mut inflight, &mut backoff, &mut rng, peer, piece, reply);
            }
            Some(piece) = deadlines.recv() => {
                // The reader is at this piece now: it and the next few go
                // first, each a little later than the one before.
                let now = Instant::now();
                last_reader = Some(now);
                for (i, p) in (piece..total.min(piece.saturating_add(4))).enumerate() {
                    picker.set_piece_deadline(p, now + Duration::from_millis(50 * i as u64));
                }
            }
            have = haves.recv() => match have {
                Ok((peer, id)) if id.stream == stream => {
                    if let Ok(piece) = u32::try_from(id.seq) {
                        picker.handle_have(peer, piece);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => resync = true,
                Err(broadcast::error::RecvError::Closed) => return "stopped",
            },
            arrived = arrivals.recv() => match arrived {
                // Brought by another path (a reader's own fetch, a push).
                Ok(id) if id.stream == stream => {
                    if let Ok(piece) = u32::try_from(id.seq) {
                        picker.mark_held(piece);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let now = Instant::now();
                    for i in 0..total {
                        if !picker.have().get(i)
                            && shared.store.contains(&ChunkId::new(stream, u64::from(i)), now)
                        {
                            picker.mark_held(i);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return "stopped",
            },
            _ = tick.tick() => {}
            _ = shutdown.changed() => return "stopped",
        }
    }
}

/// Brings the picker's peers in line with the connected ones. Neighbours
/// (edges) come with what they announced for this object and are told what
/// we hold; upstreams are seeds, each of its share of the pieces.
fn sync_peers(
    shared: &Arc<Shared>,
    stream: StreamId,
    picker: &mut Picker,
    neighbours: &mut HashMap<PeerId, Arc<Peer>>,
    seeds: &mut Vec<Arc<Peer>>,
    inflight: &mut HashMap<(PeerId, u32), InFlight>,
    resync: bool,
) {
    let total = picker.config().pieces;
    let peers = shared.peer_list();
    let me = shared.settings.role;
    let current = |p: &Arc<Peer>| {
        peers
            .iter()
            .any(|q| q.id == p.id && q.conn.stable_id() == p.conn.stable_id())
    };
    let mut drop_peer = |picker: &mut Picker, id: PeerId| {
        picker.remove_peer(id);
        inflight.retain(|&(peer, _), f| {
            if peer == id {
                f.abort.abort();
            }
            peer != id
        });
    };
    // Neighbours that left (or reconnected: a new connection, a new session
    // that has not heard our bitfield).
    let gone: Vec<PeerId> = neighbours
        .values()
        .filter(|p| resync || !current(p))
        .map(|p| p.id)
        .collect();
    for id in gone {
        neighbours.remove(&id);
        drop_peer(picker, id);
    }
    for p in peers
        .iter()
        .filter(|p| p.role == Role::Edge && me == Role::Edge)
    {
        if neighbours.contains_key(&p.id) {
            continue;
        }
        let mut has = Bitfield::new(total);
        {
            let announced = p.have.lock();
            for i in 0..total {
                if announced.contains(&ChunkId::new(stream, u64::from(i))) {
                    has.set(i);
                }
            }
        }
        if picker.add_peer(p.id, has, p.conn.rtt()).is_ok() {
            for f in bitfield_frames(stream, picker.have()) {
                let _ = p.control.try_send(f);
            }
            neighbours.insert(p.id, p.clone());
        }
    }
    // Upstreams, in a stable order so each one's share is the same piece set
    // on every edge: the tier above then sends each piece once.
    let mut ups: Vec<Arc<Peer>> = peers
        .iter()
        .filter(|p| p.role.is_upstream_of(me))
        .cloned()
        .collect();
    ups.sort_by_key(|p| p.id);
    let same = ups.len() == seeds.len()
        && ups
            .iter()
            .zip(seeds.iter())
            .all(|(a, b)| a.id == b.id && a.conn.stable_id() == b.conn.stable_id());
    if !same {
        for s in std::mem::take(seeds) {
            drop_peer(picker, s.id);
        }
        for (i, p) in ups.iter().enumerate() {
            if picker
                .add_seed_of(p.id, upstream_stripe(total, i, ups.len()), p.conn.rtt())
                .is_ok()
            {
                seeds.push(p.clone());
            }
        }
    }
}

/// How a request of the swarm's ended.
enum Reply {
    /// The piece came (this many payload bytes), and what the store made
    /// of it.
    Chunk(u64, Accepted),
    /// Anything else the peer answered.
    Other(Frame),
}

/// What came back for one request.
#[allow(clippy::too_many_arguments)]
fn on_reply(
    shared: &Arc<Shared>,
    picker: &mut Picker,
    inflight: &mut HashMap<(PeerId, u32), InFlight>,
    backoff: &mut HashMap<PeerId, Instant>,
    rng: &mut rand_chacha::ChaCha8Rng,
    peer: PeerId,
    piece: u32,
    reply: Result<Reply, String>,
) {
    let sender = shared.peers.read().get(&peer).cloned();
    let failed = |picker: &mut Picker, backoff: &mut HashMap<PeerId, Instant>| {
        picker.handle_failed(peer, piece);
        // A relay whose upstream is gone must not be asked in a hot loop.
        backoff.insert(peer, Instant::now() + shared.settings.fetch_retry);
    };
    match reply {
        Ok(Reply::Chunk(len, accepted)) => {
            match accepted {
                Accepted::Stored | Accepted::Duplicate => {
                    let from = sender.as_ref().map_or("gone", |p| p.role.as_str());
                    shared
                        .metrics
                        .swarm_bytes
                        .with_label_values(&[from])
                        .inc_by(len);
                    let got = picker.handle_received(peer, piece, len, Instant::now());
                    for loser in got.cancel {
                        if let Some(f) = inflight.remove(&(loser, piece)) {
                            f.abort.abort();
                        }
                    }
                }
                // accept_chunk counted it and struck the sender.
                Accepted::Rejected(_) => failed(picker, backoff),
            }
        }
        Ok(Reply::Other(Frame::Error { code, .. })) if code == crate::p2p::admission::CODE_BUSY => {
            // The relay's uplink is full: not a failure. The picker leaves
            // it alone for a jittered back-off and the piece goes to a
            // neighbour that has it meanwhile.
            picker.handle_busy(peer, piece, Instant::now(), rng);
        }
        Ok(Reply::Other(Frame::Error { code, .. })) if code == super::mesh::CODE_CHOKED => {
            // Choked between our poll and its answer: it still has the
            // piece; ask again once it unchokes us.
            picker.handle_choked(peer, piece);
            if let Some(p) = sender {
                p.unchoked_us.store(false, Ordering::Relaxed);
            }
        }
        _ => failed(picker, backoff),
    }
}

/// What this node holds of `stream`, as `Bitfield` frames of at most
/// `MAX_BITFIELD_BYTES` each (a segment with nothing held is not sent).
fn bitfield_frames(stream: StreamId, have: &Bitfield) -> Vec<Frame> {
    let seg_bits = (crate::chunk::wire::MAX_BITFIELD_BYTES * 8) as u32;
    let mut out = Vec::new();
    let mut base = 0u32;
    while base < have.len() {
        let n = (have.len() - base).min(seg_bits);
        let mut bits = vec![0u8; n.div_ceil(8) as usize];
        let mut any = false;
        for i in 0..n {
            if have.get(base + i) {
                bits[(i / 8) as usize] |= 0x80 >> (i % 8);
                any = true;
            }
        }
        if any {
            out.push(Frame::Bitfield {
                stream,
                base_seq: u64::from(base),
                bits: Bytes::from(bits),
            });
        }
        base += n;
    }
    out
}

/// How old a preheat may be when it arrives (beyond the allowed clock
/// skew): a recorded one replayed later is refused.
const PREHEAT_MAX_AGE_MS: u64 = 10 * 60 * 1000;

/// Handles a `Preheat` frame from `peer`: only an upstream may send one, and
/// only one the origin signed (with a key this node trusts, recently) is
/// acted on, so no peer — a relay included — can make the mesh pull an
/// object the publisher did not ask to preheat. A relay passes it on to its
/// downstream peers once per version; an edge learns the manifest
/// (verified, as always) and swarms exactly that version.
pub(crate) fn on_preheat(shared: &Arc<Shared>, peer: &Peer, p: PreheatFrame) {
    let me = shared.settings.role;
    let count = |outcome: &str| {
        shared.metrics.preheats.with_label_values(&[outcome]).inc();
    };
    if !peer.role.is_upstream_of(me) {
        count("refused_not_upstream");
        return;
    }
    if let Err(e) = shared.verify_preheat(&p) {
        count(e);
        tracing::warn!(peer = %peer.name, reason = e, "preheat refused");
        return;
    }
    if !shared.preheat_seen.lock().insert(p.object, p.version) {
        return;
    }
    match me {
        Role::Relay => {
            forward_preheat(shared, &p, Some(peer.id));
            count("forwarded");
        }
        Role::Edge => {
            let shared = shared.clone();
            tokio::spawn(async move {
                match shared.fetch_manifest(p.object, "").await {
                    // Exactly the version the origin signed: an older
                    // preheat (replayed, or overtaken by a new publish)
                    // does not pull a version nobody asked to preheat.
                    Ok(m) if m.version == p.version => {
                        if !shared.settings.swarm {
                            shared
                                .metrics
                                .preheats
                                .with_label_values(&["refused_swarm_off"])
                                .inc();
                            return;
                        }
                        shared
                            .metrics
                            .preheats
                            .with_label_values(&["started"])
                            .inc();
                        start(&shared, m, true);
                    }
                    Ok(_) => shared
                        .metrics
                        .preheats
                        .with_label_values(&["other_version"])
                        .inc(),
                    Err(_) => shared
                        .metrics
                        .preheats
                        .with_label_values(&["unknown_object"])
                        .inc(),
                }
            });
        }
        Role::Origin => {}
    }
}

impl Shared {
    /// Checks a preheat's signature and age; the refusal's metric label.
    fn verify_preheat(&self, p: &PreheatFrame) -> Result<(), &'static str> {
        if self
            .verifier
            .verify_signature(p.key_id, &p.signing_bytes(), &p.signature)
            .is_err()
        {
            return Err("refused_signature");
        }
        let now = crate::roles::node::unix_ms();
        let skew = self.settings.max_clock_skew_ms;
        if p.timestamp_ms > now.saturating_add(skew)
            || now.saturating_sub(p.timestamp_ms) > PREHEAT_MAX_AGE_MS + skew
        {
            return Err("refused_stale");
        }
        Ok(())
    }
}

/// Starts a preheat of the newest version of `name` (origin): signs it and
/// tells every downstream peer, which pass it on. The version and how many
/// were told; None if the name is not known here; an error if this origin
/// cannot sign.
pub fn preheat(shared: &Shared, name: &str) -> Result<Option<(u64, usize)>, String> {
    let object = StreamId::object_key(name);
    let Some((m, _)) = shared.manifests.lock().newest(object) else {
        return Ok(None);
    };
    let active = shared.keys.read().active().ok_or("no active signing key")?;
    let mut p = PreheatFrame {
        object,
        version: m.version,
        key_id: active,
        timestamp_ms: crate::roles::node::unix_ms(),
        signature: [0; 64],
    };
    {
        let signers = shared.signers.read();
        let signer = signers
            .get(&active)
            .ok_or_else(|| format!("the active key {active} has no secret key on this node"))?;
        p.signature = signer.sign(&p.signing_bytes());
    }
    shared.preheat_seen.lock().insert(object, m.version);
    let told = forward_preheat(shared, &p, None);
    shared.metrics.preheats.with_label_values(&["sent"]).inc();
    tracing::info!(object = %name, version = m.version, told, "preheat sent");
    Ok(Some((m.version, told)))
}

/// Sends a preheat to every downstream peer (relays and edges below us).
pub(crate) fn forward_preheat(shared: &Shared, p: &PreheatFrame, from: Option<PeerId>) -> usize {
    let me = shared.settings.role;
    let mut sent = 0;
    for peer in shared.peer_list() {
        if Some(peer.id) != from
            && me.is_upstream_of(peer.role)
            && peer.control.try_send(Frame::Preheat(p.clone())).is_ok()
        {
            sent += 1;
        }
    }
    sent
}

/// The (object, version) preheats already handled, so a preheat reaching a
/// node by two paths is acted on once. Bounded, oldest first out.
#[derive(Debug, Default)]
pub struct PreheatSeen {
    set: HashSet<(StreamId, u64)>,
    order: std::collections::VecDeque<(StreamId, u64)>,
}

const MAX_PREHEAT_SEEN: usize = 1024;

impl PreheatSeen {
    /// True if `(object, version)` is new here.
    pub fn insert(&mut self, object: StreamId, version: u64) -> bool {
        if !self.set.insert((object, version)) {
            return false;
        }
        self.order.push_back((object, version));
        if self.order.len() > MAX_PREHEAT_SEEN {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_frames_say_exactly_what_is_held() {
        let seg = (crate::chunk::wire::MAX_BITFIELD_BYTES * 8) as u32;
        let mut have = Bitfield::new(2 * seg + 10);
        have.set(0);
        have.set(9);
        have.set(2 * seg + 1);
        let frames = bitfield_frames(StreamId(1), &have);
        // The middle segment holds nothing and is not sent.
        assert_eq!(frames.len(), 2);
        let Frame::Bitfield { bits, base_seq, .. } = &frames[0] else {
            panic!("not a bitfield");
        };
        assert_eq!(*base_seq, 0);
        assert_eq!(&bits[..2], &[0x80, 0x40]);
        assert!(bits[2..].iter().all(|&b| b == 0));
        let Frame::Bitfield { bits, base_seq, .. } = &frames[1] else {
            panic!("not a bitfield");
        };
        assert_eq!(*base_seq, u64::from(2 * seg));
        assert_eq!(&bits[..], &[0x40, 0]);
    }

    #[test]
    fn a_preheat_is_acted_on_once_and_the_memory_is_bounded() {
        let mut seen = PreheatSeen::default();
        assert!(seen.insert(StreamId(1), 5));
        assert!(!seen.insert(StreamId(1), 5));
        assert!(seen.insert(StreamId(1), 6));
        for i in 0..(MAX_PREHEAT_SEEN as u64 + 10) {
            seen.insert(StreamId(100 + i), 1);
        }
        assert!(seen.set.len() <= MAX_PREHEAT_SEEN);
        assert!(
            seen.insert(StreamId(1), 5),
            "the oldest entry was forgotten"
        );
    }
}
