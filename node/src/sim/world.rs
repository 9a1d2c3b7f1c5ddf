//! The simulated cluster: one origin, relays and edges as small state
//! records driven by events. Every decision the node makes is made here by
//! the node's own code: whom to ask for a chunk (`p2p::request_order`), whom
//! to unchoke (`p2p::Choker`), how many parity shards a link gets
//! (`fec::ParityPolicy`), how a chunk is cut into FEC blocks
//! (`fec::block_layout`), whether a group rebuilds (`fec::Assembler`, or its
//! rule in `blocks` mode), whether a chunk verifies (`crypto::Verifier` on a
//! real signed sample) and when a peer is banned (`crypto::Reputation`).
//! What is modeled instead of executed: bytes (sizes only), the network
//! (`net`), and HTTP clients (an object reader with the node's read-ahead).

use super::net::{self, Channel, Pipes};
use super::queue::{EventQueue, Nanos, SEC, secs};
use super::scenario::{FecExec, Scenario};
use crate::chunk::wire::{Frame, ShardFrame};
use crate::chunk::{Chunk, ChunkHeader, ChunkId, KeyId, PeerId, StreamId};
use crate::config::NodeConfig;
use crate::crypto::{KeyRing, Rejection, Reputation, Signer, Verifier, VerifyConfig};
use crate::fec::{Assembler, ParityPolicy, block_count, block_layout, min_shard_len};
use crate::p2p::admission::{Admission, AdmissionConfig, Verdict};
use crate::p2p::picker::{Bitfield, Picker, upstream_stripe};
use crate::p2p::{Choker, SourceKind, request_order};
use crate::roles::framing;
use crate::roles::settings::NodeSettings;
use crate::store::{ChunkStore, StoreConfig};
use bytes::Bytes;
use parking_lot::RwLock;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A node's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Origin,
    Relay,
    Edge,
}

/// How an edge behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    Honest,
    FreeRider,
    Malicious,
}

/// The stream every simulated chunk belongs to.
const STREAM: StreamId = StreamId(0x5133);
/// An object run in which no node received a chunk it lacked for this long
/// is stalled: nothing a retry timer or a choke tick does will change that,
/// so the run stops and says so instead of idling to `max_time_s`.
const STALL_AFTER: Nanos = 300 * SEC;

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Ended {
    /// Every object reader finished (or, live, the stream and its grace ran out).
    #[default]
    Complete,
    /// `run.max_time_s` came first, while chunks were still arriving.
    TimeLimit,
    /// No node received a new chunk for [`STALL_AFTER`], or no event was left.
    Stalled(&'static str),
}

/// A fixed-size bit set: which chunks a node holds.
#[derive(Debug, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    fn set(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn unset(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w &= !(1 << (i % 64));
        }
    }
    #[cfg(test)]
    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
}

/// Which chunks every node holds: one bit matrix, a row per node. A
/// delivery at an edge asks for each of its neighbours whether it holds the
/// chunk; a row here is one cache line away, where a bit set per node
/// record was two (the record, then its words) among gigabytes of records.
#[derive(Debug, Clone)]
struct HaveMatrix {
    words: usize,
    bits: Vec<u64>,
}

impl HaveMatrix {
    fn new(nodes: usize, chunks: usize) -> Self {
        let words = chunks.div_ceil(64);
        Self {
            words,
            bits: vec![0; nodes * words],
        }
    }
    fn get(&self, node: u32, i: u32) -> bool {
        (i as usize) < self.words * 64
            && self
                .bits
                .get(node as usize * self.words + i as usize / 64)
                .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    fn set(&mut self, node: u32, i: u32) {
        if (i as usize) < self.words * 64 {
            if let Some(w) = self
                .bits
                .get_mut(node as usize * self.words + i as usize / 64)
            {
                *w |= 1 << (i % 64);
            }
        }
    }
    fn clear(&mut self, node: u32) {
        let at = node as usize * self.words;
        if let Some(row) = self.bits.get_mut(at..at + self.words) {
            row.iter_mut().for_each(|w| *w = 0);
        }
    }
    fn row(&self, node: u32) -> &[u64] {
        let at = node as usize * self.words;
        self.bits.get(at..at + self.words).unwrap_or(&[])
    }
}

/// The downstream end of a push link: the sender's parity policy for it and
/// the receiver's loss counters, kept together since both sides of one link
/// are one record here.
struct PushLink {
    parity: ParityPolicy,
    channel: Channel,
    bad: bool,
    expected: u64,
    received: u64,
}

/// An edge neighbour, whether it unchoked us, and whether we unchoked it.
#[derive(Debug, Clone, Copy)]
struct Neighbour {
    id: u32,
    unchoked_us: bool,
    /// Our choker unchokes it: a mirror of `Choker::is_unchoked`, set from
    /// every change the choker reports (`handle_tick`, `set_banned`). A
    /// delivery asks it of every neighbour, and a hash lookup each was a
    /// tenth of a 10,000-edge run.
    we_unchoke: bool,
    /// Where we are in its list of neighbours (see `World::pipe_full`).
    back: u32,
}

struct EdgeState {
    neighbours: Vec<Neighbour>,
    choker: Choker,
    reputation: Reputation,
    rng: ChaCha8Rng,
    /// The object reader: first chunk not yet served, and chunks it is fetching.
    cursor: u32,
    inflight: Vec<u32>,
    /// The relay this edge takes pushes from.
    upstream: u32,
    /// Swarming an object: the node's piece picker, whether the reader has
    /// started, and the picker's requests in flight (chunk, peer, fetch).
    picker: Option<Picker>,
    started: bool,
    swarm: Vec<(u32, u32, u32)>,
    /// A `Wake` is scheduled for then (0: none).
    wake_at: Nanos,
}

/// A fetch waiting at a relay for a chunk it is pulling upstream.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    fetch: u32,
    req: u32,
    /// The requester gave it up (`Ev::Cancel`): it was answered then, and
    /// gets nothing when the chunk comes.
    cancelled: bool,
}

struct RelayState {
    /// Fetches waiting for a chunk this relay is pulling upstream (single
    /// flight: the first one made the pull).
    waiting: HashMap<u32, Vec<Waiting>>,
    /// Bytes of the replies those fetches will get: promised, so they
    /// count against the admission bound as the node's do.
    promised: u64,
    subscribers: Vec<u32>,
}

struct Node {
    tier: Tier,
    behaviour: Behaviour,
    online: bool,
    crashed: bool,
    offline_since: Nanos,
    incarnation: u32,
    lossy: bool,
    pipes: Pipes,
    held: u32,
    bytes_sent: u64,
    start: Nanos,
    done: Option<Nanos>,
    push: Option<PushLink>,
    /// The node's own store, when the scenario gives this tier a budget;
    /// then a chunk is held only while the store still has it.
    store: Option<Box<ChunkStore>>,
    assembler: Option<Box<Assembler>>,
    /// Inline, not boxed: a delivery wakes up to a dozen neighbours, each
    /// a walk node → edge state → picker → its peers, every step a cache
    /// miss in a 10,000-edge run; inline, the first two are one.
    edge: Option<EdgeState>,
    relay: Option<Box<RelayState>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Client,
    /// A request the piece picker chose, to one peer.
    Swarm,
    Repair,
    /// A relay pulling upstream for fetches waiting on it.
    Relay,
}

struct Fetch {
    requester: u32,
    seq: u32,
    incarnation: u32,
    purpose: Purpose,
    order: Vec<u32>,
    next: usize,
    /// The picker cancelled it (endgame loser): dropped where it is met.
    cancelled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyKind {
    Good,
    Bad,
    Refused,
    /// Refused because the server chokes the requester (the node's
    /// `CODE_CHOKED`): it still holds the chunk.
    Choked,
    /// A relay's admission refused it (`p2p::admission::CODE_BUSY`): its
    /// uplink's queue is full; ask later or elsewhere.
    Busy,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    ClientStart(u32),
    ChokeTick(u32),
    LossReports,
    Publish(u32),
    /// `req`'s request for chunk `seq` (its fetch `fetch`) reaches `to`.
    Request {
        fetch: u32,
        to: u32,
        req: u32,
        seq: u32,
    },
    /// A reply from another partition (sent at once there, its first byte
    /// arriving at the event's time) for requester `to`, which books its
    /// download pipe for `bytes` when handed it; the reply is in by
    /// `last_in` or when the pipe is through, whichever is later.
    Arrive {
        fetch: u32,
        from: u32,
        to: u32,
        kind: ReplyKind,
        last_in: Nanos,
        bytes: u64,
    },
    /// Edge `from`'s "Have" of chunk `seq` reaches its neighbours in
    /// another partition.
    Have {
        from: u32,
        seq: u32,
    },
    /// Edge `req` gave up its fetch `fetch` of chunk `seq` at relay `to`.
    Cancel {
        to: u32,
        req: u32,
        fetch: u32,
        seq: u32,
    },
    Reply {
        fetch: u32,
        from: u32,
        kind: ReplyKind,
    },
    Push {
        from: u32,
        to: u32,
        seq: u32,
        m: u16,
    },
    Choke {
        from: u32,
        to: u32,
        unchoked: bool,
    },
    Repair {
        node: u32,
        seq: u32,
        incarnation: u32,
    },
    Retry {
        fetch: u32,
    },
    Churn,
    Rejoin(u32),
    /// A swarming edge's paced seed may be asked again.
    Wake(u32),
}

/// Most `Have`s waiting for one edge's picker (see `World::pending_haves`):
/// bounded memory however long an edge is not asked anything.
const HAVE_BATCH: usize = 512;

/// Most latency samples kept per tier; past it a uniform reservoir is kept,
/// so memory stays bounded however long the stream or large the cluster.
const MAX_LATENCY_SAMPLES: usize = 4_000_000;

/// Live delivery latencies of one tier, microseconds: a uniform sample of
/// at most [`MAX_LATENCY_SAMPLES`], plus the exact count and maximum.
#[derive(Debug, Clone)]
pub(crate) struct Samples {
    pub(crate) kept: Vec<u32>,
    pub(crate) seen: u64,
    pub(crate) max: u32,
    /// Its own generator, so sampling never shifts the network's draws.
    rng: ChaCha8Rng,
}

impl Samples {
    fn new(seed: u64) -> Self {
        Self {
            kept: Vec::new(),
            seen: 0,
            max: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn record(&mut self, us: u32) {
        self.seen += 1;
        self.max = self.max.max(us);
        if self.kept.len() < MAX_LATENCY_SAMPLES {
            self.kept.push(us);
        } else {
            let j = self.rng.gen_range(0..self.seen);
            if let Some(slot) = self.kept.get_mut(j as usize) {
                *slot = us;
            }
        }
    }
}

impl Default for Samples {
    fn default() -> Self {
        Self::new(0)
    }
}

/// What the links did per second of virtual time: bytes through each tier's
/// pipes and how long replies waited for the sender's upload pipe. It shows
/// which resource sat idle while edges waited.
#[derive(Debug, Clone, Default)]
pub(crate) struct Util {
    /// Per one-second bucket, indexed by the `U_*` slots.
    pub(crate) buckets: Vec<[f64; U_SLOTS]>,
}

pub(crate) const U_ORIGIN_UP: usize = 0;
pub(crate) const U_RELAYS_UP: usize = 1;
pub(crate) const U_EDGES_UP: usize = 2;
pub(crate) const U_EDGES_DOWN: usize = 3;
/// Nanoseconds relay (edge) replies waited for the upload pipe, summed, and
/// how many replies that is.
pub(crate) const U_RELAY_WAIT: usize = 4;
pub(crate) const U_RELAY_REPLIES: usize = 5;
pub(crate) const U_EDGE_WAIT: usize = 6;
pub(crate) const U_EDGE_REPLIES: usize = 7;
const U_SLOTS: usize = 8;

impl Util {
    fn bucket(&mut self, i: usize, limit: usize) -> Option<&mut [f64; U_SLOTS]> {
        if i >= limit {
            return None;
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, [0.0; U_SLOTS]);
        }
        self.buckets.get_mut(i)
    }

    /// Adds `v` at time `at`.
    fn add(&mut self, slot: usize, at: Nanos, v: f64, limit: usize) {
        if let Some(b) = self.bucket((at / SEC) as usize, limit) {
            b[slot] += v;
        }
    }

    /// Spreads `bytes` evenly over `[start, end)`.
    fn spread(&mut self, slot: usize, start: Nanos, end: Nanos, bytes: f64, limit: usize) {
        if end <= start {
            return self.add(slot, start, bytes, limit);
        }
        let per_ns = bytes / (end - start) as f64;
        let mut t = start;
        while t < end {
            let next = ((t / SEC + 1) * SEC).min(end);
            if let Some(b) = self.bucket((t / SEC) as usize, limit) {
                b[slot] += per_ns * (next - t) as f64;
            } else {
                return;
            }
            t = next;
        }
    }
}

/// Counters a run ends with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) util: Util,
    pub(crate) virtual_end_s: f64,
    pub(crate) events: u64,
    /// (tier label, node index, completion seconds or None).
    pub(crate) completions: Vec<(&'static str, u32, Option<f64>)>,
    /// Chunks held at the end, summed by tier label (to show how much of
    /// the content a tier that never "completes" — relays splitting an
    /// object between them — carried).
    pub(crate) held: Vec<(&'static str, u64)>,
    /// Live delivery latency in microseconds by tier label.
    pub(crate) latency_us: Vec<(&'static str, Samples)>,
    pub(crate) bytes_origin: u64,
    pub(crate) bytes_relays: u64,
    pub(crate) bytes_edges: u64,
    pub(crate) edge_bytes_in: u64,
    pub(crate) edge_bytes_from_edges: u64,
    /// FEC outcomes (complete, rebuilt, failed) at relays and at edges.
    pub(crate) fec_relays: [u64; 3],
    pub(crate) fec_edges: [u64; 3],
    pub(crate) fec_exec: &'static str,
    pub(crate) repairs: u64,
    pub(crate) chunks_rejected: u64,
    pub(crate) peers_banned: u64,
    /// Edges' pulls a relay answered "busy" (its admission), and swarm
    /// requests the picker gave up on (`Picker::handle_timeout`).
    pub(crate) busy_replies: u64,
    pub(crate) swarm_timeouts: u64,
    pub(crate) crashes: u64,
    pub(crate) leaves: u64,
    pub(crate) rejoins: u64,
    pub(crate) content_bytes: u64,
    pub(crate) chunks: u64,
    pub(crate) store_evictions: u64,
    pub(crate) ended: Ended,
    /// Object readers that had not finished when the run stopped.
    pub(crate) unfinished: u64,
    /// When a node last received a chunk it lacked, seconds.
    pub(crate) last_progress_s: f64,
    /// Chunks no relay or edge held at the end: what never left the origin.
    pub(crate) chunks_nowhere: u64,
}

impl Outcome {
    /// Adds the counters a partition ran up.
    fn absorb(&mut self, o: Outcome) {
        let u = &mut self.util.buckets;
        if u.len() < o.util.buckets.len() {
            u.resize(o.util.buckets.len(), [0.0; U_SLOTS]);
        }
        for (a, b) in u.iter_mut().zip(&o.util.buckets) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.edge_bytes_in += o.edge_bytes_in;
        self.edge_bytes_from_edges += o.edge_bytes_from_edges;
        for i in 0..3 {
            self.fec_relays[i] += o.fec_relays[i];
            self.fec_edges[i] += o.fec_edges[i];
        }
        self.repairs += o.repairs;
        self.chunks_rejected += o.chunks_rejected;
        self.peers_banned += o.peers_banned;
        self.busy_replies += o.busy_replies;
        self.swarm_timeouts += o.swarm_timeouts;
        self.crashes += o.crashes;
        self.leaves += o.leaves;
        self.rejoins += o.rejoins;
    }
}

/// Runs `s` split into `parts` partitions, each on its own thread: a
/// conservative parallel simulation. Every event one node causes at
/// another is at least one link latency ([`Scenario::lookahead_ns`]) later, so the
/// partitions each handle the events of one window `[t, t + lookahead)`
/// at once, then hand each other what they caused. The answers depend on
/// `parts`, never on the threads' timing.
pub(crate) fn run_parts(s: &Scenario, riders_honest: bool, parts: u32) -> Result<Outcome, String> {
    let mut worlds = (0..parts)
        .map(|p| World::new_part(s, riders_honest, p, parts))
        .collect::<Result<Vec<_>, _>>()?;
    for w in &mut worlds {
        w.start();
    }
    let n = parts as usize;
    let sync = Sync {
        mail: (0..n * n).map(|_| Mutex::new(Vec::new())).collect(),
        state: (0..n).map(|_| Mutex::new(PartState::default())).collect(),
        gate: Gate::new(n),
        limit: secs(s.run.max_time_s),
        lookahead: s.lookahead_ns(),
    };
    let (ends, worlds): (Vec<Ended>, Vec<World>) = std::thread::scope(|sc| {
        let sync = &sync;
        let mut rest = worlds.split_off(1);
        let handles: Vec<_> = rest
            .drain(..)
            .map(|w| sc.spawn(move || drive(w, sync)))
            .collect();
        let mut done = Vec::with_capacity(n);
        if let Some(w) = worlds.pop() {
            done.push(drive(w, sync));
        }
        for h in handles {
            match h.join() {
                Ok(r) => done.push(r),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        done.into_iter().unzip()
    });
    let ended = ends
        .into_iter()
        .next()
        .unwrap_or(Ended::Stalled("no event was left to handle"));
    Ok(finish(worlds, ended))
}

/// What the partitions' threads share: a mailbox per (from, to) pair, what
/// each partition reports after a window, and the barrier they meet at.
struct Sync {
    mail: Vec<Mutex<Vec<(Nanos, Ev)>>>,
    state: Vec<Mutex<PartState>>,
    gate: Gate,
    limit: Nanos,
    lookahead: Nanos,
}

#[derive(Debug, Default, Clone, Copy)]
struct PartState {
    next: Option<Nanos>,
    readers: u64,
    readers_done: u64,
    last_progress: Nanos,
}

/// One partition's thread: window after window, run its events, post what
/// it sent the others, take what they sent it, and judge from every
/// partition's report (the same judgement in each) whether and how far to
/// go on.
fn drive(mut w: World, sync: &Sync) -> (Ended, World) {
    let (me, n) = (w.part as usize, w.parts as usize);
    let _guard = BreakOnPanic(&sync.gate);
    let failed = Ended::Stalled("another partition failed");
    let mut until = 0;
    loop {
        if until > 0 {
            w.step(until);
        }
        for to in 0..n {
            if to != me && !w.outbox[to].is_empty() {
                let mut slot = lock(&sync.mail[me * n + to]);
                std::mem::swap(&mut *slot, &mut w.outbox[to]);
            }
        }
        if !sync.gate.wait() {
            return (failed, w);
        }
        for from in 0..n {
            if from == me {
                continue;
            }
            let mut slot = lock(&sync.mail[from * n + me]);
            for &(at, ev) in slot.iter() {
                debug_assert!(at >= until, "an event reached a partition in its past");
                // A reply is booked now, as a sender in this partition
                // books when it sends: not one more event per reply.
                if matches!(ev, Ev::Arrive { .. }) {
                    w.on_arrive(ev, at, until);
                } else {
                    w.q.push(at, ev);
                }
            }
            slot.clear();
        }
        *lock(&sync.state[me]) = PartState {
            next: w.q.peek(),
            readers: w.readers,
            readers_done: w.readers_done,
            last_progress: w.last_progress,
        };
        if !sync.gate.wait() {
            return (failed, w);
        }
        // Read before the next barrier, the first a partition passes
        // before it writes its next report.
        let all: Vec<PartState> = sync.state.iter().map(|s| *lock(s)).collect();
        let readers: u64 = all.iter().map(|p| p.readers).sum();
        if until > 0 && all.iter().map(|p| p.readers_done).sum::<u64>() >= readers {
            return (Ended::Complete, w);
        }
        let Some(next) = all.iter().filter_map(|p| p.next).min() else {
            return (Ended::Stalled("no event was left to handle"), w);
        };
        if next > sync.limit {
            return (Ended::TimeLimit, w);
        }
        let progress = all.iter().map(|p| p.last_progress).max().unwrap_or(0);
        if next.saturating_sub(progress) > STALL_AFTER {
            return (
                Ended::Stalled("no node received a chunk it lacked for 300 s"),
                w,
            );
        }
        until = next
            .saturating_add(sync.lookahead)
            .min(sync.limit.saturating_add(1))
            .max(1);
    }
}

/// A barrier that a panicking partition breaks, so the others return
/// instead of waiting for it forever (the panic is then raised again). A
/// window is a few milliseconds of work: a waiter spins a little (yielding
/// now and then, for a busy machine) before it sleeps, as waking a
/// sleeping thread costs about as long as the spin.
struct Gate {
    arrived: AtomicUsize,
    generation: AtomicU64,
    broken: AtomicBool,
    n: usize,
    sleep: Mutex<()>,
    cv: Condvar,
}

/// Checks a spinning waiter makes before it sleeps.
const GATE_SPINS: u32 = 20_000;

impl Gate {
    fn new(n: usize) -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            n,
            sleep: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Waits for all `n`; false when the gate is broken.
    fn wait(&self) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if self.broken.load(Ordering::Acquire) {
            return false;
        }
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            {
                // Under the lock: a waiter checks, then sleeps, under it.
                let _g = lock(&self.sleep);
                self.generation.fetch_add(1, Ordering::Release);
            }
            self.cv.notify_all();
            return !self.broken.load(Ordering::Acquire);
        }
        let passed = || {
            self.generation.load(Ordering::Acquire) != generation
                || self.broken.load(Ordering::Acquire)
        };
        for i in 0..GATE_SPINS {
            if passed() {
                return !self.broken.load(Ordering::Acquire);
            }
            // On a busy machine the one it waits for may need this core.
            if i % 64 == 63 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let mut g = lock(&self.sleep);
        while !passed() {
            g = self
                .cv
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !self.broken.load(Ordering::Acquire)
    }

    fn break_open(&self) {
        {
            let _g = lock(&self.sleep);
            self.broken.store(true, Ordering::Release);
        }
        self.cv.notify_all();
    }
}

struct BreakOnPanic<'a>(&'a Gate);

impl Drop for BreakOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.break_open();
        }
    }
}

/// A lock whose holder cannot have panicked mid-update (a panic ends the
/// whole run), so a poisoned one is taken as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A whole simulated cluster.
pub(crate) struct World {
    s: Scenario,
    settings: NodeSettings,
    nodes: Vec<Node>,
    fetches: Vec<Option<Fetch>>,
    free_fetches: Vec<u32>,
    q: EventQueue<Ev>,
    rng: ChaCha8Rng,
    base: Instant,
    chunks: u32,
    relays: u32,
    /// Verdict of the real verifier on a forged chunk.
    forged: Rejection,
    /// The node's admission rule for a relay's uplink (relays are alike).
    relay_admission: Admission,
    /// Bytes a pulled chunk frame adds to its payload, and a shard frame to its data.
    chunk_frame_overhead: u64,
    shard_frame_overhead: u64,
    exec_shards: bool,
    publish_interval: Nanos,
    out: Outcome,
    /// Buckets kept for [`Util`]: one per second up to `max_time_s`.
    util_limit: usize,
    latency: [Samples; 3],
    channels: [Channel; 4],
    churn_rate: f64,
    /// Object readers (non-malicious edges) and how many have finished.
    readers: u64,
    readers_done: u64,
    /// When a node last received a chunk it lacked (the stall watchdog).
    last_progress: Nanos,
    /// Chunks the origin does not have (tests make a stall with it).
    withheld: Vec<u32>,
    /// Nodes whose `online` is false, as one small bit set: a swarming
    /// edge checks every neighbour on every pump, and the bit set stays in
    /// the cache where ten thousand node records do not.
    offline: Bits,
    /// What each node holds (see [`HaveMatrix`]).
    have: HaveMatrix,
    /// `Have`s on their way into each edge's picker, (from, chunk), and
    /// which edges have a picker and a started reader (mirrors of
    /// `EdgeState`, kept here so a `Have` need not visit the edge's record).
    /// A picker answers only when called, so its `Have`s are applied just
    /// before any call (`flush_haves`): the answers are the ones applying
    /// each at once gives, and ~16 `Have`s per delivery cost an append each
    /// instead of a walk through another edge's picker. At most
    /// `have_batch` are kept per edge (0: each is applied at once).
    pending_haves: Vec<Vec<(u32, u32)>>,
    swarming: Bits,
    started: Bits,
    have_batch: usize,
    /// Neighbours an edge has at most (the row length of `pipe_full`).
    slots: usize,
    /// Bit `server × slots + k`: the picker of `server`'s `k`th neighbour
    /// has its pipeline to `server` full (`Picker::pipeline_full`). A
    /// delivery at `server` wakes every neighbour it unchoked to ask it for
    /// more; most have a full pipeline to it, and learning that from the
    /// neighbour's picker (`has_room`) was a walk through records out of
    /// the cache: a fifth of a run. A set bit is always true (it is cleared
    /// whenever a request ends or a rate changes: `note_pipe`); a clear
    /// one may be stale and the picker is asked as before, so no pick
    /// changes.
    pipe_full: Bits,
    /// Bit `server × slots + k` (as `pipe_full`): `server`'s `k`th
    /// neighbour was told `server` unchokes it (`Ev::Choke`), so it asks
    /// `server` for what a `Have` announces.
    unchoked_by: Bits,
    /// Edges swarm (have pickers), and when a `Have` reaches neighbours:
    /// the edge links' latency.
    swarm: bool,
    have_latency: Nanos,
    /// This world runs partition `part` of `parts`: the nodes [`World::owns`]
    /// (every node is laid out in each, the same way). Events for another
    /// partition's nodes wait in `outbox` until the driver hands them over.
    part: u32,
    parts: u32,
    outbox: Vec<Vec<(Nanos, Ev)>>,
    /// Each node's neighbours this partition runs, (id, slot in the
    /// node's list), node `i`'s at `mine[mine_at[i]..mine_at[i + 1]]`: who
    /// a `Have` of its reaches here.
    mine: Vec<(u32, u32)>,
    mine_at: Vec<u32>,
    /// A pump's peers to poll, peers whose pipeline it changed, and the
    /// requests it makes, reused (a taken one is simply allocated anew).
    scratch_peers: Vec<(u32, Option<u32>)>,
    scratch_touched: Vec<u32>,
    scratch_asks: Vec<(u32, u32)>,
    /// One zeroed buffer of a chunk's size: every stored chunk's payload is
    /// a slice of it, so a store accounts real sizes without the bytes.
    payload: Bytes,
}

fn tier_label(n: &Node) -> &'static str {
    match (n.tier, n.behaviour) {
        (Tier::Origin, _) => "origin",
        (Tier::Relay, _) => "relay",
        (Tier::Edge, Behaviour::FreeRider) => "free-rider",
        (Tier::Edge, Behaviour::Malicious) => "malicious",
        (Tier::Edge, Behaviour::Honest) => "edge",
    }
}

/// The bit of `World::pipe_full` for `server`'s `k`th neighbour.
fn pipe_bit(slots: usize, server: u32, k: u32) -> u32 {
    u32::try_from(server as usize * slots + k as usize).unwrap_or(u32::MAX)
}

/// Keeps `Neighbour::we_unchoke` equal to the choker's state after a change
/// it reported.
fn mirror_choke(x: &mut EdgeState, peer: PeerId, unchoked: bool) {
    if let Some(nb) = x.neighbours.iter_mut().find(|n| u64::from(n.id) == peer.0) {
        nb.we_unchoke = unchoked;
    }
}

/// Two distinct elements of a slice, both mutable.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "a node never sends to itself");
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// The real verifier's verdicts on a genuinely signed sample chunk and on a
/// forged copy of it: what a chunk from an honest or a malicious peer gets.
fn verdicts() -> (Result<(), Rejection>, Rejection) {
    let signer = Signer::from_secret([7; 32]);
    let mut ring = KeyRing::new();
    let key = ring.add_trusted(signer.public_key());
    if let Ok(id) = key {
        let _ = ring.activate(id);
    }
    let verifier = Verifier::new(Arc::new(RwLock::new(ring)), VerifyConfig::default());
    let now_ms = 1_700_000_000_000;
    let good = signer.sign_chunk(
        ChunkId::new(STREAM, 0),
        Bytes::from_static(b"sample"),
        now_ms,
    );
    let mut forged = good.clone();
    forged.payload = Bytes::from_static(b"sampld");
    let ok = verifier.verify(&good, now_ms);
    let bad = verifier
        .verify(&forged, now_ms)
        .err()
        .unwrap_or(Rejection::Digest);
    (ok, bad)
}

impl World {
    /// Lays out the cluster. With `riders_honest`, free-riders are chosen
    /// as usual but behave honestly (the baseline for their cost).
    pub(crate) fn new(s: &Scenario, riders_honest: bool) -> Result<Self, String> {
        Self::new_part(s, riders_honest, 0, 1)
    }

    /// Lays out the cluster to run partition `part` of `parts` of it (see
    /// [`run_parts`]): every partition lays out every node alike, and
    /// connects only its own.
    fn new_part(s: &Scenario, riders_honest: bool, part: u32, parts: u32) -> Result<Self, String> {
        let (ok, forged) = verdicts();
        ok.map_err(|e| format!("the verifier refused a genuine sample chunk: {e}"))?;
        let settings = NodeSettings::from_config(NodeConfig {
            fec: s.fec.clone(),
            p2p: s.p2p.clone(),
            ..NodeConfig::default()
        });
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let chunks = u32::try_from(s.chunks()).map_err(|_| "too many chunks".to_owned())?;
        let relays = s.tiers.relays;
        let n_edges = s.tiers.edges;
        let exec_shards = match s.run.fec_exec {
            FecExec::Shards => true,
            FecExec::Blocks => false,
            FecExec::Auto => {
                let per_chunk = s.chunk_bytes() / u64::from(s.network.shard_bytes) + 1;
                s.content.is_live()
                    && u64::from(n_edges + relays) * u64::from(chunks) * per_chunk < 20_000_000
            }
        };
        let net = &s.network;
        let region = net.lossy_region;
        let channels = [
            Channel::new(net.origin_relay.loss, net.origin_relay.burst),
            Channel::new(net.relay_edge.loss, net.relay_edge.burst),
            Channel::new(net.edge_edge.loss, net.edge_edge.burst),
            region.map_or(Channel::new(0.0, 1.0), |r| Channel::new(r.loss, r.burst)),
        ];
        let mut nodes = Vec::with_capacity((1 + relays + n_edges) as usize);
        let cap = |c: super::scenario::Capacity| Pipes::new(c.up_mbps, c.down_mbps);
        let blank = |tier, pipes| Node {
            tier,
            behaviour: Behaviour::Honest,
            online: true,
            crashed: false,
            offline_since: 0,
            incarnation: 0,
            lossy: false,
            pipes,
            held: 0,
            bytes_sent: 0,
            start: 0,
            done: None,
            push: None,
            store: None,
            assembler: None,
            edge: None,
            relay: None,
        };
        nodes.push(blank(Tier::Origin, cap(s.nodes.origin)));
        for _ in 0..relays {
            let mut n = blank(Tier::Relay, cap(s.nodes.relay));
            n.push = Some(PushLink {
                parity: settings.parity_policy(),
                channel: channels[0],
                bad: false,
                expected: 0,
                received: 0,
            });
            n.relay = Some(Box::new(RelayState {
                waiting: HashMap::new(),
                promised: 0,
                subscribers: Vec::new(),
            }));
            nodes.push(n);
        }
        let first_edge = 1 + relays;
        for e in 0..n_edges {
            let mut n = blank(Tier::Edge, cap(s.nodes.edge));
            let draw: f64 = rng.r#gen();
            n.behaviour = if draw < s.peers.malicious {
                Behaviour::Malicious
            } else if draw < s.peers.malicious + s.peers.free_riders && !riders_honest {
                Behaviour::FreeRider
            } else {
                Behaviour::Honest
            };
            n.lossy = region.is_some_and(|r| rng.r#gen::<f64>() < r.fraction);
            let upstream = 1 + e % relays;
            n.push = Some(PushLink {
                parity: settings.parity_policy(),
                channel: if n.lossy { channels[3] } else { channels[1] },
                bad: false,
                expected: 0,
                received: 0,
            });
            n.edge = Some(EdgeState {
                neighbours: Vec::new(),
                choker: Choker::new(settings.choker_config()),
                reputation: Reputation::new(settings.reputation_config()),
                rng: ChaCha8Rng::seed_from_u64(s.seed ^ (u64::from(e) + 1).wrapping_mul(0x9e37)),
                cursor: 0,
                inflight: Vec::new(),
                upstream,
                picker: None,
                started: false,
                swarm: Vec::new(),
                wake_at: 0,
            });
            nodes.push(n);
        }
        for n in nodes.iter_mut() {
            if exec_shards && n.tier != Tier::Origin {
                n.assembler = Some(Box::new(Assembler::new(settings.assembler_config())));
            }
            let budget_mb = match n.tier {
                Tier::Origin => None,
                Tier::Relay => s.nodes.relay_store_mb,
                Tier::Edge => s.nodes.edge_store_mb,
            };
            if let Some(mb) = budget_mb {
                n.store = Some(Box::new(ChunkStore::new(StoreConfig {
                    budget_bytes: (mb as usize) << 20,
                    ..settings.store_config()
                })));
            }
        }
        // Subscriptions: each edge takes pushes from one relay.
        for e in first_edge..first_edge + n_edges {
            let up = nodes[e as usize].edge.as_ref().map_or(1, |x| x.upstream);
            if let Some(r) = nodes[up as usize].relay.as_mut() {
                r.subscribers.push(e);
            }
        }
        // Edge neighbours: each edge dials up to half its quota at random;
        // connections are two-way and no edge exceeds its quota.
        let quota = s.peers.neighbours.min(n_edges.saturating_sub(1)) as usize;
        for e in 0..n_edges {
            let me = first_edge + e;
            for _ in 0..quota.div_ceil(2) {
                let full = |n: &Node| n.edge.as_ref().is_none_or(|x| x.neighbours.len() >= quota);
                if full(&nodes[me as usize]) {
                    break;
                }
                let other = first_edge + rng.gen_range(0..n_edges);
                if other == me
                    || full(&nodes[other as usize])
                    || nodes[me as usize]
                        .edge
                        .as_ref()
                        .is_some_and(|x| x.neighbours.iter().any(|nb| nb.id == other))
                {
                    continue;
                }
                let slot = |n: &Node| n.edge.as_ref().map_or(0, |x| x.neighbours.len() as u32);
                let (at_me, at_other) = (slot(&nodes[me as usize]), slot(&nodes[other as usize]));
                for (a, b, back) in [(me, other, at_other), (other, me, at_me)] {
                    if let Some(x) = nodes[a as usize].edge.as_mut() {
                        x.neighbours.push(Neighbour {
                            id: b,
                            unchoked_us: false,
                            we_unchoke: false,
                            back,
                        });
                    }
                }
            }
        }
        let nodes_len = nodes.len();
        let slots = nodes
            .iter()
            .filter_map(|n| n.edge.as_ref().map(|x| x.neighbours.len()))
            .max()
            .unwrap_or(0);
        let swarm = s.peers.swarm && settings.swarm && !s.content.is_live();
        let mut w = Self {
            settings,
            nodes,
            fetches: Vec::new(),
            free_fetches: Vec::new(),
            q: EventQueue::new(),
            rng,
            base: Instant::now(),
            chunks,
            relays,
            forged,
            relay_admission: Admission::new(AdmissionConfig::new(
                (s.nodes.relay.up_mbps * 125_000.0) as u64,
            )),
            chunk_frame_overhead: 0,
            shard_frame_overhead: 0,
            exec_shards,
            publish_interval: 0,
            out: Outcome::default(),
            util_limit: s.run.max_time_s.ceil() as usize + 1,
            latency: std::array::from_fn(|i| Samples::new(s.seed ^ (0x1a7e_u64 + i as u64))),
            channels,
            readers: 0,
            readers_done: 0,
            last_progress: 0,
            withheld: Vec::new(),
            offline: Bits::new(nodes_len),
            have: HaveMatrix::new(nodes_len, chunks as usize),
            pending_haves: vec![Vec::new(); nodes_len],
            swarming: Bits::new(nodes_len),
            started: Bits::new(nodes_len),
            have_batch: HAVE_BATCH,
            slots,
            pipe_full: Bits::new(nodes_len * slots),
            unchoked_by: Bits::new(nodes_len * slots),
            swarm,
            have_latency: secs(s.network.edge_edge.latency_ms / 1000.0),
            part,
            parts,
            outbox: vec![Vec::new(); parts as usize],
            mine: Vec::new(),
            mine_at: Vec::new(),
            scratch_peers: Vec::new(),
            scratch_touched: Vec::new(),
            scratch_asks: Vec::new(),
            payload: Bytes::from(vec![0u8; s.chunk_bytes() as usize]),
            churn_rate: (s.churn.leave_per_hour + s.churn.crash_per_hour) * f64::from(n_edges)
                / 3600.0,
            s: s.clone(),
        };
        w.measure_frames();
        let mut mine = Vec::new();
        let mut mine_at = Vec::with_capacity(w.nodes.len() + 1);
        for n in &w.nodes {
            mine_at.push(mine.len() as u32);
            if let Some(x) = n.edge.as_ref() {
                for (k, nb) in x.neighbours.iter().enumerate() {
                    if w.owns(nb.id) {
                        mine.push((nb.id, k as u32));
                    }
                }
            }
        }
        mine_at.push(mine.len() as u32);
        (w.mine, w.mine_at) = (mine, mine_at);
        for e in first_edge..first_edge + n_edges {
            if w.owns(e) {
                w.connect_edge(e);
            }
        }
        Ok(w)
    }

    /// The origin will not have chunk `seq`: no node can ever finish.
    #[cfg(test)]
    pub(crate) fn withhold(mut self, seq: u32) -> Self {
        self.withheld.push(seq);
        self
    }

    /// Frame overheads from the real wire encoder.
    /// At most `n` `Have`s wait for an edge's picker (0: each is applied at
    /// once, as before batching): tests compare the two.
    #[cfg(test)]
    pub(crate) fn have_batch(mut self, n: usize) -> Self {
        self.have_batch = n;
        self
    }

    fn measure_frames(&mut self) {
        let signer = Signer::from_secret([7; 32]);
        let chunk = signer.sign_chunk(ChunkId::new(STREAM, 0), Bytes::new(), 0);
        self.chunk_frame_overhead = framing::encode(&Frame::Chunk(chunk)).len() as u64;
        let shard = ShardFrame {
            chunk: ChunkId::new(STREAM, 0),
            block: 0,
            blocks: 1,
            k: 1,
            m: 0,
            index: 0,
            block_len: 0,
            data: Bytes::new(),
        };
        self.shard_frame_overhead = framing::encode(&Frame::Shard(shard)).len() as u64;
    }

    /// Registers an edge's neighbours with its choker, as a session does,
    /// and, swarming an object, with a fresh piece picker: neighbours with
    /// what they hold, each relay as a seed of its share.
    fn connect_edge(&mut self, e: u32) {
        let now = self.instant(self.q.now());
        let reader = self.nodes[e as usize].behaviour != Behaviour::Malicious;
        if reader && self.swarm {
            let mut picker = Picker::new(
                self.settings
                    .picker_config(self.chunks, self.s.chunk_bytes()),
            );
            let relays = self.relays as usize;
            let rtt_to = |link: super::scenario::Link| {
                Duration::from_secs_f64(2.0 * link.latency_ms / 1000.0)
            };
            for r in 0..relays {
                let _ = picker.add_seed_of(
                    PeerId(1 + r as u64),
                    upstream_stripe(self.chunks, r, relays),
                    rtt_to(self.s.network.relay_edge),
                );
            }
            let nbs: Vec<u32> = self.nodes[e as usize]
                .edge
                .as_ref()
                .map(|x| x.neighbours.iter().map(|n| n.id).collect())
                .unwrap_or_default();
            for nb in nbs {
                let other = &self.nodes[nb as usize];
                let has = match other.behaviour {
                    Behaviour::Malicious => Bitfield::full(self.chunks),
                    Behaviour::FreeRider => Bitfield::new(self.chunks),
                    Behaviour::Honest => {
                        let mut b = Bitfield::new(self.chunks);
                        if other.held > 0 {
                            for i in 0..self.chunks {
                                if self.have.get(nb, i) {
                                    b.set(i);
                                }
                            }
                        }
                        b
                    }
                };
                let _ =
                    picker.add_peer(PeerId(u64::from(nb)), has, rtt_to(self.s.network.edge_edge));
            }
            if let Some(x) = self.nodes[e as usize].edge.as_mut() {
                x.picker = Some(picker);
                x.swarm.clear();
                x.started = false;
                x.wake_at = 0;
                // The fresh picker read what every neighbour holds now.
                self.pending_haves[e as usize].clear();
                self.swarming.set(e);
                self.started.unset(e);
            }
        }
        if let Some(x) = self.nodes[e as usize].edge.as_mut() {
            x.choker = Choker::new(self.settings.choker_config());
            for nb in &mut x.neighbours {
                nb.unchoked_us = false;
                nb.we_unchoke = false;
                // A fresh picker has nothing outstanding anywhere.
                self.pipe_full.unset(pipe_bit(self.slots, nb.id, nb.back));
                self.unchoked_by.unset(pipe_bit(self.slots, nb.id, nb.back));
                if x.choker.add_peer(PeerId(u64::from(nb.id)), now).is_ok() {
                    x.choker.set_interested(PeerId(u64::from(nb.id)), true);
                }
            }
        }
    }

    fn instant(&self, t: Nanos) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn first_edge(&self) -> u32 {
        1 + self.relays
    }

    /// The partition that runs `node`: the origin and relays in the first,
    /// edges dealt round.
    fn owner(&self, node: u32) -> u32 {
        let first = self.first_edge();
        if self.parts <= 1 || node < first {
            0
        } else {
            (node - first) % self.parts
        }
    }

    fn owns(&self, node: u32) -> bool {
        self.owner(node) == self.part
    }

    /// Schedules `ev`, an event of `node`'s, where `node` runs.
    fn post(&mut self, node: u32, at: Nanos, ev: Ev) {
        let to = self.owner(node);
        if to == self.part {
            self.q.push(at, ev);
        } else {
            self.outbox[to as usize].push((at, ev));
        }
    }

    /// Whether `node` can serve chunk `seq` now: it received it and, with a
    /// store, the store has not evicted or expired it.
    fn holds(&self, node: u32, seq: u32, now: Nanos) -> bool {
        let n = &self.nodes[node as usize];
        self.have.get(node, seq)
            && n.store.as_ref().is_none_or(|st| {
                st.contains(&ChunkId::new(STREAM, u64::from(seq)), self.instant(now))
            })
    }

    fn link_of(&self, a: u32, b: u32) -> (super::scenario::Link, Channel) {
        let (ta, tb) = (self.nodes[a as usize].tier, self.nodes[b as usize].tier);
        let lossy = self.nodes[a as usize].lossy || self.nodes[b as usize].lossy;
        let net = &self.s.network;
        match (ta, tb) {
            (Tier::Edge, Tier::Edge) => (
                net.edge_edge,
                if lossy {
                    self.channels[3]
                } else {
                    self.channels[2]
                },
            ),
            (Tier::Edge, _) | (_, Tier::Edge) => (
                net.relay_edge,
                if lossy {
                    self.channels[3]
                } else {
                    self.channels[1]
                },
            ),
            _ => (net.origin_relay, self.channels[0]),
        }
    }

    fn latency(&mut self, a: u32, b: u32) -> Nanos {
        let (link, _) = self.link_of(a, b);
        net::latency(&link, a, b, self.s.seed, &mut self.rng)
    }

    /// Runs to the end; returns what happened.
    pub(crate) fn run(mut self) -> Outcome {
        self.start();
        let ended = self
            .step(Nanos::MAX)
            .unwrap_or(Ended::Stalled("no event was left to handle"));
        finish(vec![self], ended)
    }

    /// The run's first events: the edges' readers and choker ticks, the
    /// origin's publishing (live) and churn. Every partition draws every
    /// edge's start alike and schedules its own.
    fn start(&mut self) {
        let n_edges = self.s.tiers.edges;
        let first = self.first_edge();
        let live = self.s.content.is_live();
        if live {
            let interval = self.s.chunk_bytes() as f64 * 8.0 / (self.s.content.live_mbps * 1e6);
            self.publish_interval = secs(interval).max(1);
            self.q.push(0, Ev::Publish(0));
            // Receivers' report timers run from when they connected, not
            // from the first chunk: start them at a random phase.
            let phase = self
                .rng
                .gen_range(1..=self.settings.loss_report_every.as_nanos() as Nanos);
            self.q.push(phase, Ev::LossReports);
        } else {
            // The origin holds the whole object from the start.
            let o = &mut self.nodes[0];
            for i in 0..self.chunks {
                if !self.withheld.contains(&i) {
                    self.have.set(0, i);
                    o.held += 1;
                }
            }
        }
        let spread = secs(self.s.peers.start_spread_s);
        let tick = self.settings.unchoke_interval.as_nanos() as Nanos;
        for e in first..first + n_edges {
            let beh = self.nodes[e as usize].behaviour;
            let mine = self.owns(e);
            if beh == Behaviour::Malicious {
                // A malicious edge unchokes everyone so it gets asked.
                let nbs: Vec<u32> = self.nodes[e as usize]
                    .edge
                    .as_ref()
                    .map(|x| x.neighbours.iter().map(|n| n.id).collect())
                    .unwrap_or_default();
                for nb in nbs {
                    let at = self.latency(e, nb);
                    if mine {
                        let ev = Ev::Choke {
                            from: e,
                            to: nb,
                            unchoked: true,
                        };
                        self.post(nb, at, ev);
                    }
                }
                continue;
            }
            let start = if spread > 0 {
                self.rng.gen_range(0..spread)
            } else {
                0
            };
            if !live && mine {
                self.readers += 1;
                self.q.push(start, Ev::ClientStart(e));
            }
            if beh == Behaviour::Honest {
                let phase = self.rng.gen_range(0..tick.max(1));
                if mine {
                    self.q.push(phase, Ev::ChokeTick(e));
                }
            }
        }
        if self.churn_rate > 0.0 {
            let at = self.exp_delay(self.churn_rate);
            self.q.push(at, Ev::Churn);
        }
    }

    /// Handles the events before `until`. Alone (one partition) it runs
    /// to the end and says how that came; a partition stops at `until`
    /// with `None` and the driver judges the end from all of them.
    fn step(&mut self, until: Nanos) -> Option<Ended> {
        let alone = self.parts == 1;
        let live = self.s.content.is_live();
        let limit = secs(self.s.run.max_time_s);
        let live_end = if live {
            u64::from(self.chunks) * self.publish_interval + 30 * SEC
        } else {
            Nanos::MAX
        };
        while self.q.peek().is_some_and(|at| at < until) {
            let Some((now, ev)) = self.q.pop() else {
                break;
            };
            if alone {
                if now > live_end {
                    return Some(Ended::Complete);
                }
                if now > limit {
                    return Some(Ended::TimeLimit);
                }
                if !live && now.saturating_sub(self.last_progress) > STALL_AFTER {
                    return Some(Ended::Stalled(
                        "no node received a chunk it lacked for 300 s",
                    ));
                }
            }
            self.handle(now, ev);
            if alone && !live && self.all_done() {
                return Some(Ended::Complete);
            }
        }
        if !alone {
            return None;
        }
        // A live run ends when its stream does, not when readers finish.
        Some(if live {
            Ended::Complete
        } else {
            Ended::Stalled("no event was left to handle")
        })
    }

    fn exp_delay(&mut self, rate: f64) -> Nanos {
        let u: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
        secs(-u.ln() / rate)
    }

    fn all_done(&self) -> bool {
        // Checked per event, so it must be cheap: count instead of scanning.
        self.readers_done >= self.readers
    }

    fn handle(&mut self, now: Nanos, ev: Ev) {
        match ev {
            Ev::ClientStart(e) => {
                let n = &mut self.nodes[e as usize];
                if n.online {
                    n.start = now;
                    if let Some(x) = n.edge.as_mut() {
                        x.started = true;
                        self.started.set(e);
                    }
                    self.pump(e, now);
                }
            }
            Ev::ChokeTick(e) => self.choke_tick(e, now),
            Ev::LossReports => self.loss_reports(now),
            Ev::Publish(seq) => self.publish(seq, now),
            Ev::Request {
                fetch,
                to,
                req,
                seq,
            } => self.on_request(fetch, to, req, seq, now),
            Ev::Arrive { .. } => self.on_arrive(ev, now, now),
            Ev::Have { from, seq } => self.on_have(from, seq, now),
            Ev::Cancel {
                to,
                req,
                fetch,
                seq,
            } => self.on_cancel(to, req, fetch, seq, now),
            Ev::Reply { fetch, from, kind } => self.on_reply(fetch, from, kind, now),
            Ev::Push { from, to, seq, m } => self.on_push(from, to, seq, m, now),
            Ev::Choke { from, to, unchoked } => {
                let mut ask = false;
                if let Some(x) = self.nodes[to as usize].edge.as_mut() {
                    if let Some(nb) = x.neighbours.iter_mut().find(|n| n.id == from) {
                        nb.unchoked_us = unchoked;
                        let bit = pipe_bit(self.slots, from, nb.back);
                        if unchoked {
                            self.unchoked_by.set(bit);
                        } else {
                            self.unchoked_by.unset(bit);
                        }
                    }
                    ask = unchoked && x.started && x.picker.is_some();
                }
                if ask && self.nodes[to as usize].online {
                    self.pump(to, now);
                }
            }
            Ev::Repair {
                node,
                seq,
                incarnation,
            } => {
                let n = &self.nodes[node as usize];
                if n.online && n.incarnation == incarnation && !self.have.get(node, seq) {
                    self.start_fetch(node, seq, Purpose::Repair, now);
                }
            }
            Ev::Retry { fetch } => {
                let Some(f) = self.fetches.get(fetch as usize).and_then(|f| f.as_ref()) else {
                    return;
                };
                let (req, seq, inc) = (f.requester, f.seq, f.incarnation);
                let n = &self.nodes[req as usize];
                if !n.online || n.incarnation != inc || self.holds(req, seq, now) {
                    self.finish_fetch(fetch, now);
                    return;
                }
                let order = self.order_for(req, seq, now);
                if let Some(Some(f)) = self.fetches.get_mut(fetch as usize) {
                    f.order = order;
                    f.next = 0;
                }
                self.send_next(fetch, now);
            }
            Ev::Churn => self.churn(now),
            Ev::Rejoin(e) => self.rejoin(e, now),
            Ev::Wake(e) => {
                let n = &mut self.nodes[e as usize];
                let started = n.edge.as_mut().is_some_and(|x| {
                    if x.wake_at == now {
                        x.wake_at = 0;
                    }
                    x.started
                });
                if n.online && started {
                    self.pump(e, now);
                }
            }
        }
    }

    /// Whom `req` asks for `seq`, by the node's own rule.
    fn order_for(&self, req: u32, seq: u32, now: Nanos) -> Vec<u32> {
        let me = &self.nodes[req as usize];
        let t = self.instant(now);
        let detect = secs(self.s.churn.detect_crash_s);
        let reachable = |id: u32| {
            let n = &self.nodes[id as usize];
            n.online || (n.crashed && now.saturating_sub(n.offline_since) < detect)
        };
        let mut candidates: Vec<(u32, SourceKind)> = Vec::new();
        match me.tier {
            Tier::Origin => {}
            Tier::Relay => candidates.push((0, SourceKind::Upstream)),
            Tier::Edge => {
                if let Some(x) = me.edge.as_ref() {
                    for nb in &x.neighbours {
                        if !reachable(nb.id) {
                            continue;
                        }
                        if x.reputation.is_banned(PeerId(u64::from(nb.id)), t) {
                            candidates.push((nb.id, SourceKind::Banned));
                            continue;
                        }
                        let has = match self.nodes[nb.id as usize].behaviour {
                            Behaviour::Malicious => true,
                            Behaviour::FreeRider => false,
                            Behaviour::Honest => self.holds(nb.id, seq, now),
                        };
                        candidates.push((
                            nb.id,
                            SourceKind::Edge {
                                has,
                                unchoked_us: nb.unchoked_us,
                            },
                        ));
                    }
                }
                for r in 1..=self.relays {
                    if reachable(r) {
                        candidates.push((r, SourceKind::Upstream));
                    }
                }
            }
        }
        request_order(u64::from(seq), me.tier == Tier::Edge, candidates)
    }

    fn start_fetch(&mut self, req: u32, seq: u32, purpose: Purpose, now: Nanos) {
        let order = self.order_for(req, seq, now);
        let f = Fetch {
            requester: req,
            seq,
            incarnation: self.nodes[req as usize].incarnation,
            purpose,
            order,
            next: 0,
            cancelled: false,
        };
        let id = match self.free_fetches.pop() {
            Some(id) => {
                self.fetches[id as usize] = Some(f);
                id
            }
            None => {
                self.fetches.push(Some(f));
                (self.fetches.len() - 1) as u32
            }
        };
        self.send_next(id, now);
    }

    fn send_next(&mut self, fetch: u32, now: Nanos) {
        let Some(Some(f)) = self.fetches.get_mut(fetch as usize) else {
            return;
        };
        let (req, seq) = (f.requester, f.seq);
        match f.order.get(f.next).copied() {
            Some(to) => {
                f.next += 1;
                let at = now + self.latency(req, to);
                self.post(
                    to,
                    at,
                    Ev::Request {
                        fetch,
                        to,
                        req,
                        seq,
                    },
                );
            }
            None => self.q.push(
                now + self.settings.fetch_retry.as_nanos() as Nanos,
                Ev::Retry { fetch },
            ),
        }
    }

    fn finish_fetch(&mut self, fetch: u32, _now: Nanos) {
        if let Some(slot) = self.fetches.get_mut(fetch as usize) {
            if let Some(f) = slot.take() {
                self.free_fetches.push(fetch);
                if f.purpose == Purpose::Client {
                    if let Some(x) = self.nodes[f.requester as usize].edge.as_mut() {
                        x.inflight.retain(|&s| s != f.seq);
                    }
                }
                if f.purpose == Purpose::Swarm {
                    if let Some(x) = self.nodes[f.requester as usize].edge.as_mut() {
                        x.swarm.retain(|&(_, _, id)| id != fetch);
                    }
                }
            }
        }
    }

    fn refuse(&mut self, fetch: u32, server: u32, req: u32, now: Nanos) {
        self.refuse_as(fetch, server, req, now, ReplyKind::Refused);
    }

    fn refuse_as(&mut self, fetch: u32, server: u32, req: u32, now: Nanos, kind: ReplyKind) {
        let server_node = &self.nodes[server as usize];
        let at = if server_node.online {
            now + self.latency(server, req)
        } else if server_node.crashed {
            // No answer: the requester gives up when the connection is
            // declared dead.
            server_node.offline_since + secs(self.s.churn.detect_crash_s)
        } else {
            now + self.latency(server, req)
        };
        self.post(
            req,
            at,
            Ev::Reply {
                fetch,
                from: server,
                kind,
            },
        );
    }

    /// `req`'s request reaches `to`. A request its requester has since
    /// given up is answered all the same (the cancel reaches a relay's
    /// waiting list, `on_cancel`, and the answer is dropped on arrival):
    /// the server knows only what reached it.
    fn on_request(&mut self, fetch: u32, to: u32, req: u32, seq: u32, now: Nanos) {
        let server = &self.nodes[to as usize];
        if !server.online {
            return self.refuse(fetch, to, req, now);
        }
        let t = self.instant(now);
        let holds = self.holds(to, seq, now);
        match server.tier {
            Tier::Edge => {
                let x = server.edge.as_ref();
                let banned = x.is_some_and(|x| x.reputation.is_banned(PeerId(u64::from(req)), t));
                match server.behaviour {
                    Behaviour::Malicious => self.send_chunk(fetch, to, req, seq, now, false),
                    Behaviour::FreeRider => self.refuse(fetch, to, req, now),
                    Behaviour::Honest => {
                        // The mirror of the choker (`Neighbour::we_unchoke`):
                        // only neighbours are ever unchoked.
                        let unchoked = x.is_some_and(|x| {
                            x.neighbours
                                .iter()
                                .find(|nb| nb.id == req)
                                .is_some_and(|nb| nb.we_unchoke)
                        });
                        debug_assert_eq!(
                            unchoked,
                            x.is_some_and(|x| x.choker.is_unchoked(PeerId(u64::from(req))))
                        );
                        let requester_is_edge = self.nodes[req as usize].tier == Tier::Edge;
                        if banned || !holds {
                            self.refuse(fetch, to, req, now);
                        } else if requester_is_edge && !unchoked {
                            self.refuse_as(fetch, to, req, now, ReplyKind::Choked);
                        } else {
                            self.send_chunk(fetch, to, req, seq, now, true);
                        }
                    }
                }
            }
            Tier::Relay => {
                // The node's relay decides on what its uplink has queued
                // (`mesh::answer`); here that is the upload pipe's backlog.
                let requester_is_edge = self.nodes[req as usize].tier == Tier::Edge;
                let promised = server.relay.as_ref().map_or(0, |r| r.promised);
                if requester_is_edge
                    && self
                        .relay_admission
                        .decide(server.pipes.up_queue_bytes(now) + promised)
                        == Verdict::Busy
                {
                    self.out.busy_replies += 1;
                    self.refuse_as(fetch, to, req, now, ReplyKind::Busy);
                } else if holds {
                    self.send_chunk(fetch, to, req, seq, now, true);
                } else {
                    // Single flight: one upstream pull however many ask.
                    let len = self.s.chunk_len(u64::from(seq));
                    let first = self.nodes[to as usize]
                        .relay
                        .as_mut()
                        .map(|r| {
                            if requester_is_edge {
                                r.promised += len;
                            }
                            let w = r.waiting.entry(seq).or_default();
                            w.push(Waiting {
                                fetch,
                                req,
                                cancelled: false,
                            });
                            w.len() == 1
                        })
                        .unwrap_or(false);
                    if first {
                        self.start_fetch(to, seq, Purpose::Relay, now);
                    }
                }
            }
            Tier::Origin => {
                if self.have.get(to, seq) {
                    self.send_chunk(fetch, to, req, seq, now, true);
                } else {
                    self.refuse(fetch, to, req, now);
                }
            }
        }
    }

    /// Schedules `bytes` from `from` to `to` on both their pipes at once
    /// (see [`net::transfer`]) and accounts it in the utilisation buckets.
    fn transfer(&mut self, from: u32, to: u32, now: Nanos, lat: Nanos, bytes: u64) -> Nanos {
        let (a, b) = two_mut(&mut self.nodes, from as usize, to as usize);
        let tr = net::transfer(&mut a.pipes, &mut b.pipes, now, lat, bytes);
        let (ta, tb) = (a.tier, b.tier);
        self.account_up(ta, now, tr.up, bytes);
        self.account_down(tb, tr.down, bytes);
        tr.done
    }

    fn account_up(&mut self, tier: Tier, now: Nanos, (start, end): (Nanos, Nanos), bytes: u64) {
        let limit = self.util_limit;
        let u = &mut self.out.util;
        let wait = start.saturating_sub(now) as f64;
        match tier {
            Tier::Origin => u.spread(U_ORIGIN_UP, start, end, bytes as f64, limit),
            Tier::Relay => {
                u.spread(U_RELAYS_UP, start, end, bytes as f64, limit);
                u.add(U_RELAY_WAIT, now, wait, limit);
                u.add(U_RELAY_REPLIES, now, 1.0, limit);
            }
            Tier::Edge => {
                u.spread(U_EDGES_UP, start, end, bytes as f64, limit);
                u.add(U_EDGE_WAIT, now, wait, limit);
                u.add(U_EDGE_REPLIES, now, 1.0, limit);
            }
        }
    }

    fn account_down(&mut self, tier: Tier, (start, end): (Nanos, Nanos), bytes: u64) {
        if tier == Tier::Edge {
            let limit = self.util_limit;
            self.out
                .util
                .spread(U_EDGES_DOWN, start, end, bytes as f64, limit);
        }
    }

    /// A pulled chunk from `from` to `to` over a reliable stream: on both
    /// pipes now, or, for a receiver in another partition, on the sender's
    /// now and the receiver's when it is handed the reply (`on_arrive`).
    fn send_chunk(&mut self, fetch: u32, from: u32, to: u32, seq: u32, now: Nanos, good: bool) {
        let payload = self.s.chunk_len(u64::from(seq));
        let (_, channel) = self.link_of(from, to);
        let wire = net::reliable_bytes(payload + self.chunk_frame_overhead, channel.loss());
        let lat = self.latency(from, to);
        let a = &mut self.nodes[from as usize];
        // As the node's `mesh_bytes_out` counts a pull: payload bytes.
        a.bytes_sent += payload;
        let tier = a.tier;
        if good && tier == Tier::Edge && self.nodes[to as usize].tier == Tier::Edge {
            let t = self.base + Duration::from_nanos(now);
            if let Some(x) = self.nodes[from as usize].edge.as_mut() {
                x.choker.record_uploaded(PeerId(u64::from(to)), payload, t);
            }
        }
        let kind = if good {
            ReplyKind::Good
        } else {
            ReplyKind::Bad
        };
        if self.owns(to) {
            let done = self.transfer(from, to, now, lat, wire);
            self.q.push(done, Ev::Reply { fetch, from, kind });
            return;
        }
        let sent = net::send(&mut self.nodes[from as usize].pipes, now, lat, wire);
        self.account_up(tier, now, sent.up, wire);
        self.post(
            to,
            sent.first_in,
            Ev::Arrive {
                fetch,
                from,
                to,
                kind,
                last_in: sent.last_in,
                bytes: wire,
            },
        );
    }

    /// A reply from another partition is handed over (`now`, before its
    /// first byte arrives at `first_in`): the receiver books its download
    /// pipe, as a sender in its own partition does when it sends.
    fn on_arrive(&mut self, ev: Ev, first_in: Nanos, now: Nanos) {
        let Ev::Arrive {
            fetch,
            from,
            to,
            kind,
            last_in,
            bytes,
        } = ev
        else {
            return;
        };
        let n = &mut self.nodes[to as usize];
        let got = n.pipes.receive(now, first_in, bytes, last_in);
        let tier = n.tier;
        self.account_down(tier, got.down, bytes);
        self.q.push(got.done, Ev::Reply { fetch, from, kind });
    }

    fn on_reply(&mut self, fetch: u32, from: u32, kind: ReplyKind, now: Nanos) {
        let Some(Some(f)) = self.fetches.get(fetch as usize) else {
            return;
        };
        let (req, seq, inc, purpose) = (f.requester, f.seq, f.incarnation, f.purpose);
        let n = &self.nodes[req as usize];
        if !n.online || n.incarnation != inc || f.cancelled {
            self.finish_fetch(fetch, now);
            return;
        }
        if purpose == Purpose::Swarm {
            return self.on_swarm_reply(fetch, req, seq, from, kind, now);
        }
        match kind {
            ReplyKind::Good => {
                if purpose == Purpose::Repair {
                    self.out.repairs += 1;
                }
                self.finish_fetch(fetch, now);
                self.deliver(req, seq, from, now, false);
                if purpose == Purpose::Client {
                    self.pump(req, now);
                }
            }
            ReplyKind::Bad => {
                // The real verifier refused the forged sample; the same
                // verdict costs the sender reputation here.
                self.out.chunks_rejected += 1;
                let t = self.instant(now);
                let rejection = self.forged.clone();
                let mut newly_banned = false;
                if let Some(x) = self.nodes[req as usize].edge.as_mut() {
                    let peer = PeerId(u64::from(from));
                    let was = x.reputation.is_banned(peer, t);
                    if x.reputation.record(peer, &rejection, t).is_banned() && !was {
                        newly_banned = true;
                        if let Some(c) = x.choker.set_banned(peer, true) {
                            mirror_choke(x, c.peer, c.unchoked);
                        }
                    }
                }
                self.out.peers_banned += u64::from(newly_banned);
                self.send_next(fetch, now);
            }
            ReplyKind::Refused | ReplyKind::Choked | ReplyKind::Busy => self.send_next(fetch, now),
        }
    }

    /// A verified chunk arrives at `node` from `from`.
    /// `pushed`: it came as a push (a relay forwards only those, as the
    /// node's does), not as a pull.
    fn deliver(&mut self, node: u32, seq: u32, from: u32, now: Nanos, pushed: bool) {
        let payload = self.s.chunk_len(u64::from(seq));
        let t = self.instant(now);
        let from_tier = self.nodes[from as usize].tier;
        let again = self.have.get(node, seq);
        if again && self.holds(node, seq, now) {
            return;
        }
        let stored = self.stored_chunk(seq);
        if !again {
            self.last_progress = now;
        }
        let n = &mut self.nodes[node as usize];
        if let Some(st) = n.store.as_ref() {
            // Fits by construction: the budget is validated >= 1 MiB and a
            // chunk is at most 4 MiB; a larger chunk is simply not kept.
            let _ = st.insert(stored, t);
        }
        if !again {
            self.have.set(node, seq);
            n.held += 1;
        }
        if n.tier == Tier::Edge && !again {
            self.flush_haves(node);
            let n = &mut self.nodes[node as usize];
            if let Some(p) = n.edge.as_mut().and_then(|x| x.picker.as_mut()) {
                p.mark_held(seq);
            }
            if n.behaviour == Behaviour::Honest && self.swarm {
                // "Have" to every neighbour: read at once by those in this
                // partition (as the model always had it), one link latency
                // later by each other partition's share (one event each).
                self.on_have(node, seq, now);
                let at = now + self.have_latency;
                for part in 0..self.parts {
                    if part != self.part {
                        self.outbox[part as usize].push((at, Ev::Have { from: node, seq }));
                    }
                }
            }
        }
        let n = &mut self.nodes[node as usize];
        if n.tier == Tier::Edge {
            self.out.edge_bytes_in += payload;
            if from_tier == Tier::Edge {
                self.out.edge_bytes_from_edges += payload;
                if let Some(x) = n.edge.as_mut() {
                    x.choker
                        .record_downloaded(PeerId(u64::from(from)), payload, t);
                }
            }
        }
        let live = self.s.content.is_live();
        if live {
            let published = u64::from(seq) * self.publish_interval;
            let us = (now.saturating_sub(published) / 1000).min(u64::from(u32::MAX)) as u32;
            let slot = match (n.tier, n.behaviour) {
                (Tier::Relay, _) => Some(0),
                (Tier::Edge, Behaviour::Honest) => Some(1),
                (Tier::Edge, Behaviour::FreeRider) => Some(2),
                _ => None,
            };
            if let Some(i) = slot {
                self.latency[i].record(us);
            }
        }
        if n.held == self.chunks && n.done.is_none() && n.tier == Tier::Relay {
            n.done = Some(now);
        }
        if n.tier == Tier::Relay {
            let waiting = n
                .relay
                .as_mut()
                .and_then(|r| r.waiting.remove(&seq))
                .unwrap_or_default();
            for w in waiting {
                // A cancelled one was answered and unpromised then.
                if w.cancelled {
                    continue;
                }
                if self.nodes[w.req as usize].tier == Tier::Edge {
                    if let Some(r) = self.nodes[node as usize].relay.as_mut() {
                        r.promised = r.promised.saturating_sub(payload);
                    }
                }
                self.send_chunk(w.fetch, node, w.req, seq, now, true);
            }
            if live && !again && pushed {
                let subs = self.nodes[node as usize]
                    .relay
                    .as_ref()
                    .map(|r| r.subscribers.clone())
                    .unwrap_or_default();
                for e in subs {
                    if self.nodes[e as usize].online {
                        self.push_chunk(node, e, seq, now);
                    }
                }
            }
        }
        if live && self.nodes[node as usize].tier == Tier::Edge {
            let n = &mut self.nodes[node as usize];
            if n.held == self.chunks && n.done.is_none() {
                n.done = Some(now);
            }
        }
    }

    /// Edge `from`'s "Have" of `seq` reaches the neighbours this partition
    /// runs. Into the picker of a neighbour that holds the piece it goes
    /// nowhere: it changes none of its picks (the core's
    /// `haves_of_held_pieces_change_no_pick`; the sim never calls
    /// `mark_lost`). The others' wait in `pending_haves` until their picker
    /// is next called: half the neighbours hold a piece on average when it
    /// arrives, and each call is another edge's picker out of the cache.
    fn on_have(&mut self, from: u32, seq: u32, now: Nanos) {
        let at = from as usize;
        let (Some(&lo), Some(&hi)) = (self.mine_at.get(at), self.mine_at.get(at + 1)) else {
            return;
        };
        for i in lo as usize..hi as usize {
            let Some(&(nb, k)) = self.mine.get(i) else {
                break;
            };
            if !self.swarming.get(nb) {
                continue;
            }
            // An edge's picker holds exactly what `have` says: both are set
            // together, and cleared together on rejoin.
            let holds = self.have.get(nb, seq);
            debug_assert_eq!(
                holds,
                self.nodes[nb as usize]
                    .edge
                    .as_ref()
                    .and_then(|x| x.picker.as_ref())
                    .is_some_and(|p| p.have().get(seq))
            );
            if !holds {
                self.pending_haves[nb as usize].push((from, seq));
            }
            // The node's swarm loop wakes on every `Have`, a held piece's
            // too, and asks `from` if it was told `from` unchokes it.
            let bit = pipe_bit(self.slots, from, k);
            if self.started.get(nb) && !self.offline.get(nb) && self.unchoked_by.get(bit) {
                // A full pipeline to `from`: `ask_peer` would return at once.
                if !self.pipe_full.get(bit) {
                    self.ask_peer(nb, from, now);
                } else {
                    debug_assert!(self.nodes[nb as usize].edge.as_ref().is_some_and(|x| {
                        x.picker
                            .as_ref()
                            .is_some_and(|p| p.pipeline_full(PeerId(u64::from(from))))
                    }));
                }
            } else if self.pending_haves[nb as usize].len() >= self.have_batch {
                self.flush_haves(nb);
            }
        }
    }

    /// Edge `req` gave up fetch `fetch` it made of relay `to`: a relay
    /// still waiting for the chunk will not send it (the node's stream is
    /// reset), and answers at once so the requester's record ends.
    fn on_cancel(&mut self, to: u32, req: u32, fetch: u32, seq: u32, now: Nanos) {
        let len = self.s.chunk_len(u64::from(seq));
        let requester_is_edge = self.nodes[req as usize].tier == Tier::Edge;
        let Some(r) = self.nodes[to as usize].relay.as_mut() else {
            return;
        };
        let Some(w) = r.waiting.get_mut(&seq).and_then(|w| {
            w.iter_mut()
                .find(|w| w.fetch == fetch && w.req == req && !w.cancelled)
        }) else {
            return;
        };
        w.cancelled = true;
        if requester_is_edge {
            r.promised = r.promised.saturating_sub(len);
        }
        self.refuse(fetch, to, req, now);
    }

    /// A chunk of the right size for a store (a slice of the shared zero
    /// buffer; never verified or sent, only accounted).
    fn stored_chunk(&self, seq: u32) -> Chunk {
        let len = self.s.chunk_len(u64::from(seq)) as usize;
        Chunk {
            header: ChunkHeader {
                id: ChunkId::new(STREAM, u64::from(seq)),
                len: len as u32,
                digest: [0; 32],
                key_id: KeyId(0),
                timestamp_ms: 0,
            },
            signature: [0; 64],
            payload: self.payload.slice(..len.min(self.payload.len())),
        }
    }

    /// Moves edge `e`'s reader past the chunks it holds; true once it holds
    /// them all (the edge is then done), or when `e` is not an edge.
    fn advance_reader(&mut self, e: u32, now: Nanos) -> bool {
        let chunks = self.chunks;
        let n = &mut self.nodes[e as usize];
        let Some(x) = n.edge.as_mut() else {
            return true;
        };
        while x.cursor < chunks && self.have.get(e, x.cursor) {
            x.cursor += 1;
        }
        if x.cursor < chunks {
            return false;
        }
        if n.done.is_none() {
            n.done = Some(now);
            if n.behaviour != Behaviour::Malicious {
                self.readers_done += 1;
            }
        }
        true
    }

    /// The object reader at edge `e`: serve held chunks in order, keep
    /// `read_ahead` fetches going beyond the one being served.
    fn pump(&mut self, e: u32, now: Nanos) {
        if self.nodes[e as usize]
            .edge
            .as_ref()
            .is_some_and(|x| x.picker.is_some())
        {
            return self.swarm_pump(e, now);
        }
        let read_ahead = self.s.peers.read_ahead;
        let chunks = self.chunks;
        if self.advance_reader(e, now) {
            return;
        }
        let n = &mut self.nodes[e as usize];
        let Some(x) = n.edge.as_mut() else {
            return;
        };
        // The node's reader keeps `read_ahead` fetches in flight, the chunk
        // it is about to write included (`serve::stream_object`).
        let end = (x.cursor + read_ahead).min(chunks);
        let wanted: Vec<u32> = (x.cursor..end)
            .filter(|&s| !self.have.get(e, s) && !x.inflight.contains(&s))
            .collect();
        x.inflight.extend_from_slice(&wanted);
        for seq in wanted {
            self.start_fetch(e, seq, Purpose::Client, now);
        }
    }

    /// A swarming edge: the reader's next chunks get deadlines, then every
    /// peer it may ask (neighbours that unchoked it and are not banned, then
    /// the relays) is given requests until the picker says its pipeline is
    /// full or it has nothing this node lacks.
    fn swarm_pump(&mut self, e: u32, now: Nanos) {
        self.flush_haves(e);
        let t = self.instant(now);
        let chunks = self.chunks;
        let read_ahead = self.s.peers.read_ahead;
        let detect = secs(self.s.churn.detect_crash_s);
        // A chunk's time on this edge's download link: the reader's pace.
        let chunk_ns = (self.s.chunk_bytes() as f64 * 8_000.0 / self.s.nodes.edge.down_mbps) as u64;
        let reachable = |id: u32| {
            !self.offline.get(id) || {
                let n = &self.nodes[id as usize];
                n.online || (n.crashed && now.saturating_sub(n.offline_since) < detect)
            }
        };
        // Peers to poll, and for a neighbour its bit of `pipe_full`.
        let mut peers = std::mem::take(&mut self.scratch_peers);
        peers.clear();
        {
            let n = &self.nodes[e as usize];
            let Some(x) = n.edge.as_ref() else {
                return;
            };
            for nb in &x.neighbours {
                if nb.unchoked_us
                    && reachable(nb.id)
                    && !x.reputation.is_banned(PeerId(u64::from(nb.id)), t)
                {
                    peers.push((nb.id, Some(pipe_bit(self.slots, nb.id, nb.back))));
                }
            }
            peers.extend(
                (1..=self.relays)
                    .filter(|&r| reachable(r))
                    .map(|r| (r, None)),
            );
        }
        if self.advance_reader(e, now) {
            return;
        }
        let n = &mut self.nodes[e as usize];
        let Some(x) = n.edge.as_mut() else {
            return;
        };
        let Some(picker) = x.picker.as_mut() else {
            return;
        };
        // The node's reader keeps `read_ahead` fetches in flight, the chunk
        // it is about to write included (`serve::stream_object`).
        let end = if self.s.peers.deadlines {
            (x.cursor + read_ahead).min(chunks)
        } else {
            x.cursor
        };
        for (i, seq) in (x.cursor..end).enumerate() {
            if !self.have.get(e, seq) {
                picker.set_piece_deadline(seq, t + Duration::from_nanos(chunk_ns * (i as u64 + 1)));
            }
        }
        // As the node's loop: requests unanswered for `request_timeout` are
        // given up and cancelled, their pieces open again.
        let mut timed_out = Vec::new();
        let mut touched = std::mem::take(&mut self.scratch_touched);
        touched.clear();
        if picker.poll_timeout().is_some_and(|at| at <= t) {
            for (peer, piece) in picker.handle_timeout(t) {
                touched.push(peer.0 as u32);
                if let Some(i) = x
                    .swarm
                    .iter()
                    .position(|&(s, to, _)| s == piece && u64::from(to) == peer.0)
                {
                    let (seq, to, id) = x.swarm.swap_remove(i);
                    timed_out.push((id, to, seq));
                }
            }
        }
        let mut asks = std::mem::take(&mut self.scratch_asks);
        asks.clear();
        let timed = touched.len();
        for &(peer, bit) in &peers {
            // A full pipeline: the poll would answer `None` before looking
            // at anything (unless a timeout just emptied some of it).
            if bit.is_some_and(|b| self.pipe_full.get(b)) && !touched[..timed].contains(&peer) {
                debug_assert!(picker.pipeline_full(PeerId(u64::from(peer))));
                continue;
            }
            let before = asks.len();
            while let Some(r) = picker.poll_request(PeerId(u64::from(peer)), t, &mut x.rng) {
                asks.push((r.piece, peer));
            }
            // A poll that asked nothing left its pipeline as it was.
            if asks.len() > before {
                touched.push(peer);
            }
        }
        // The node's loop looks again every 100 ms; here, a paced seed's
        // back-off end is an event of its own.
        let ready = picker
            .seed_ready_at(t)
            .map(|at| at.saturating_duration_since(self.base).as_nanos() as Nanos)
            .filter(|&at| at > now);
        if let Some(at) = ready {
            if x.wake_at == 0 || x.wake_at > at {
                x.wake_at = at;
                self.q.push(at, Ev::Wake(e));
            }
        }
        for &peer in &touched {
            self.note_pipe(e, peer);
        }
        self.scratch_touched = touched;
        self.scratch_peers = peers;
        self.out.swarm_timeouts += timed_out.len() as u64;
        self.cancel(e, &timed_out, now);
        self.send_swarm_requests(e, asks, now);
    }

    /// Hands edge `e`'s picker the `Have`s waiting for it, in the order
    /// they came: every picker call goes after this (see `pending_haves`).
    fn flush_haves(&mut self, e: u32) {
        let Some(queue) = self.pending_haves.get_mut(e as usize) else {
            return;
        };
        if queue.is_empty() {
            return;
        }
        if let Some(p) = self.nodes[e as usize]
            .edge
            .as_mut()
            .and_then(|x| x.picker.as_mut())
        {
            for &(from, seq) in queue.iter() {
                p.handle_have(PeerId(u64::from(from)), seq);
            }
        }
        queue.clear();
    }

    /// Edge `e` learned that neighbour `peer` (which unchoked it) holds a
    /// new piece: fill that one peer's pipeline, as the node's loop does.
    fn ask_peer(&mut self, e: u32, peer: u32, now: Nanos) {
        let t = self.instant(now);
        // A full pipeline (or a busy back-off) answers `None` before the
        // picker looks at anything a `Have` changed: no need to hand it the
        // queued ones, nor to poll.
        let room = self.nodes[e as usize]
            .edge
            .as_ref()
            .and_then(|x| x.picker.as_ref())
            .is_some_and(|p| p.has_room(PeerId(u64::from(peer)), t));
        if !room {
            return;
        }
        self.flush_haves(e);
        let banned;
        let mut asks = std::mem::take(&mut self.scratch_asks);
        asks.clear();
        {
            let Some(x) = self.nodes[e as usize].edge.as_mut() else {
                return;
            };
            banned = x.reputation.is_banned(PeerId(u64::from(peer)), t);
            let Some(picker) = x.picker.as_mut() else {
                return;
            };
            if banned || picker.is_complete() {
                return;
            }
            while let Some(r) = picker.poll_request(PeerId(u64::from(peer)), t, &mut x.rng) {
                asks.push((r.piece, peer));
            }
        }
        // A poll that asked nothing left the pipeline as it was.
        if !asks.is_empty() {
            self.note_pipe(e, peer);
        }
        self.send_swarm_requests(e, asks, now);
    }

    /// Edge `e`'s picker changed what it has outstanding at `peer` (or how
    /// deep that pipeline is): `pipe_full` learns it. Called after every
    /// request that ends and every rate change, so a set bit is never stale.
    fn note_pipe(&mut self, e: u32, peer: u32) {
        if peer < self.first_edge() {
            return;
        }
        let Some(x) = self.nodes[e as usize].edge.as_ref() else {
            return;
        };
        let (Some(p), Some(nb)) = (
            x.picker.as_ref(),
            x.neighbours.iter().find(|n| n.id == peer),
        ) else {
            return;
        };
        let bit = pipe_bit(self.slots, peer, nb.back);
        if p.pipeline_full(PeerId(u64::from(peer))) {
            self.pipe_full.set(bit);
        } else {
            self.pipe_full.unset(bit);
        }
    }

    /// Sends the picker's requests `(piece, peer)` of edge `e`.
    fn send_swarm_requests(&mut self, e: u32, asks: Vec<(u32, u32)>, now: Nanos) {
        for &(seq, to) in &asks {
            let f = Fetch {
                requester: e,
                seq,
                incarnation: self.nodes[e as usize].incarnation,
                purpose: Purpose::Swarm,
                order: vec![to],
                next: 0,
                cancelled: false,
            };
            let id = match self.free_fetches.pop() {
                Some(id) => {
                    self.fetches[id as usize] = Some(f);
                    id
                }
                None => {
                    self.fetches.push(Some(f));
                    (self.fetches.len() - 1) as u32
                }
            };
            if let Some(x) = self.nodes[e as usize].edge.as_mut() {
                x.swarm.push((seq, to, id));
            }
            self.send_next(id, now);
        }
        // Kept for the next pump (a few allocations a delivery otherwise).
        self.scratch_asks = asks;
    }

    /// Edge `e` gives up its swarm fetches `(fetch, server, chunk)`: what
    /// comes back for them is dropped, and a relay waiting upstream for
    /// the chunk is told (the node resets the stream).
    fn cancel(&mut self, e: u32, fetches: &[(u32, u32, u32)], now: Nanos) {
        for &(fetch, to, seq) in fetches {
            if let Some(Some(f)) = self.fetches.get_mut(fetch as usize) {
                f.cancelled = true;
            }
            if self.nodes[to as usize].tier == Tier::Relay {
                let at = now + self.latency(e, to);
                self.post(
                    to,
                    at,
                    Ev::Cancel {
                        to,
                        req: e,
                        fetch,
                        seq,
                    },
                );
            }
        }
    }

    /// What came back for a picker's request: the picker learns it (and
    /// names endgame losers to cancel), then the edge asks for more.
    fn on_swarm_reply(
        &mut self,
        fetch: u32,
        req: u32,
        seq: u32,
        from: u32,
        kind: ReplyKind,
        now: Nanos,
    ) {
        self.flush_haves(req);
        let t = self.instant(now);
        let payload = self.s.chunk_len(u64::from(seq));
        self.finish_fetch(fetch, now);
        match kind {
            ReplyKind::Good => {
                let mut losers = Vec::new();
                let mut cancelled = Vec::new();
                if let Some(x) = self.nodes[req as usize].edge.as_mut() {
                    if let Some(p) = x.picker.as_mut() {
                        let got = p.handle_received(PeerId(u64::from(from)), seq, payload, t);
                        for peer in got.cancel {
                            cancelled.push(peer.0 as u32);
                            if let Some(i) = x
                                .swarm
                                .iter()
                                .position(|&(s, to, _)| s == seq && u64::from(to) == peer.0)
                            {
                                let (seq, to, id) = x.swarm.swap_remove(i);
                                losers.push((id, to, seq));
                            }
                        }
                    }
                }
                self.cancel(req, &losers, now);
                self.note_pipe(req, from);
                for peer in cancelled {
                    self.note_pipe(req, peer);
                }
                self.deliver(req, seq, from, now, false);
            }
            ReplyKind::Bad => {
                self.out.chunks_rejected += 1;
                let rejection = self.forged.clone();
                let mut newly_banned = false;
                if let Some(x) = self.nodes[req as usize].edge.as_mut() {
                    let peer = PeerId(u64::from(from));
                    let was = x.reputation.is_banned(peer, t);
                    if x.reputation.record(peer, &rejection, t).is_banned() && !was {
                        newly_banned = true;
                        if let Some(c) = x.choker.set_banned(peer, true) {
                            mirror_choke(x, c.peer, c.unchoked);
                        }
                    }
                    if let Some(p) = x.picker.as_mut() {
                        p.handle_failed(peer, seq);
                    }
                }
                self.out.peers_banned += u64::from(newly_banned);
            }
            ReplyKind::Choked => {
                // As the node: it still has the piece; ask again once it
                // unchokes us.
                if let Some(x) = self.nodes[req as usize].edge.as_mut() {
                    if let Some(p) = x.picker.as_mut() {
                        p.handle_choked(PeerId(u64::from(from)), seq);
                    }
                    if let Some(nb) = x.neighbours.iter_mut().find(|n| n.id == from) {
                        nb.unchoked_us = false;
                        self.unchoked_by.unset(pipe_bit(self.slots, from, nb.back));
                    }
                }
            }
            ReplyKind::Refused => {
                if let Some(p) = self.nodes[req as usize]
                    .edge
                    .as_mut()
                    .and_then(|x| x.picker.as_mut())
                {
                    p.handle_failed(PeerId(u64::from(from)), seq);
                }
            }
            ReplyKind::Busy => {
                if let Some(x) = self.nodes[req as usize].edge.as_mut() {
                    if let Some(p) = x.picker.as_mut() {
                        p.handle_busy(PeerId(u64::from(from)), seq, t, &mut x.rng);
                    }
                }
            }
        }
        // A request to `from` ended (all kinds; `Good` noted it above).
        self.note_pipe(req, from);
        self.pump(req, now);
    }

    fn choke_tick(&mut self, e: u32, now: Nanos) {
        let t = self.instant(now);
        let n = &mut self.nodes[e as usize];
        let next = now + self.settings.unchoke_interval.as_nanos() as Nanos;
        if !n.online {
            self.q.push(next, Ev::ChokeTick(e));
            return;
        }
        let Some(x) = n.edge.as_mut() else {
            return;
        };
        let changes = x.choker.handle_tick(t, &mut x.rng);
        for c in &changes {
            mirror_choke(x, c.peer, c.unchoked);
        }
        for c in changes {
            let to = c.peer.0 as u32;
            let at = now + self.latency(e, to);
            self.post(
                to,
                at,
                Ev::Choke {
                    from: e,
                    to,
                    unchoked: c.unchoked,
                },
            );
        }
        self.q.push(next, Ev::ChokeTick(e));
    }

    fn publish(&mut self, seq: u32, now: Nanos) {
        let o = &mut self.nodes[0];
        self.have.set(0, seq);
        o.held += 1;
        for r in 1..=self.relays {
            self.push_chunk(0, r, seq, now);
        }
        if seq + 1 < self.chunks {
            self.q
                .push(now + self.publish_interval, Ev::Publish(seq + 1));
        }
    }

    /// Bytes of a chunk's shard frames with `m` parity per full block.
    fn push_bytes(&self, seq: u32, m: u16) -> u64 {
        let len = (self.s.chunk_len(u64::from(seq)) + self.chunk_frame_overhead) as usize;
        let shard = self.s.network.shard_bytes as usize;
        let min_shard = min_shard_len(shard + self.shard_frame_overhead as usize);
        let k = self.settings.fec_k;
        (0..block_count(len, shard, k))
            .map(|b| {
                let l = block_layout(len, shard, min_shard, k, m, b);
                (u64::from(l.k) + u64::from(l.m)) * (l.shard_len as u64 + self.shard_frame_overhead)
            })
            .sum()
    }

    fn push_chunk(&mut self, from: u32, to: u32, seq: u32, now: Nanos) {
        let m = self.nodes[to as usize]
            .push
            .as_ref()
            .map_or(0, |p| p.parity.current());
        let bytes = self.push_bytes(seq, m);
        let lat = self.latency(from, to);
        let done = self.transfer(from, to, now, lat, bytes);
        // As the node's `mesh_bytes_out` counts a push: every shard frame.
        self.nodes[from as usize].bytes_sent += bytes;
        self.post(to, done, Ev::Push { from, to, seq, m });
    }

    /// Shards of a pushed chunk cross the receiver's lossy link; whatever
    /// survives is assembled.
    fn on_push(&mut self, from: u32, to: u32, seq: u32, m: u16, now: Nanos) {
        let t = self.instant(now);
        let len = (self.s.chunk_len(u64::from(seq)) + self.chunk_frame_overhead) as usize;
        let shard = self.s.network.shard_bytes as usize;
        let min_shard = min_shard_len(shard + self.shard_frame_overhead as usize);
        let k = self.settings.fec_k;
        let exec_shards = self.exec_shards;
        let n = &mut self.nodes[to as usize];
        if !n.online || self.have.get(to, seq) {
            return;
        }
        let Some(link) = n.push.as_mut() else {
            return;
        };
        let blocks = block_count(len, shard, k);
        let id = ChunkId::new(STREAM, u64::from(seq));
        let mut complete = true;
        let mut rebuilt = false;
        let mut assembled = None;
        for b in 0..blocks {
            let l = block_layout(len, shard, min_shard, k, m, b);
            let total = u32::from(l.k) + u32::from(l.m);
            link.expected += u64::from(total);
            let mut got = 0u32;
            let mut data_lost = false;
            for i in 0..total {
                let lost =
                    !link.channel.is_lossless() && link.channel.lose(&mut link.bad, &mut self.rng);
                if lost {
                    data_lost |= i < u32::from(l.k);
                    continue;
                }
                got += 1;
                if let Some(asm) = n.assembler.as_mut().filter(|_| exec_shards) {
                    // One-byte placeholder shards: the assembler's grouping,
                    // limits and Reed–Solomon rebuild all run for real.
                    let placeholder = ShardFrame {
                        chunk: id,
                        block: b as u16,
                        blocks: blocks as u16,
                        k: l.k,
                        m: l.m,
                        index: i as u16,
                        block_len: u32::from(l.k),
                        data: Bytes::from_static(&[0]),
                    };
                    if let Ok(Some(done)) = asm.insert(u64::from(from), placeholder, t) {
                        assembled = Some(done.recovered);
                    }
                }
            }
            link.received += u64::from(got);
            // The assembler's rule: a group completes with any k shards and
            // needed parity if a data shard was missing.
            complete &= got >= u32::from(l.k);
            rebuilt |= data_lost && got >= u32::from(l.k);
        }
        let (ok, recovered) = if exec_shards {
            (assembled.is_some(), assembled.unwrap_or(false))
        } else {
            (complete, rebuilt)
        };
        let counts = if self.nodes[to as usize].tier == Tier::Relay {
            &mut self.out.fec_relays
        } else {
            &mut self.out.fec_edges
        };
        let outcome = match (ok, recovered) {
            (true, false) => 0,
            (true, true) => 1,
            (false, _) => 2,
        };
        counts[outcome] += 1;
        if ok {
            self.deliver(to, seq, from, now, true);
        } else if self.nodes[to as usize].tier == Tier::Edge {
            // Only an edge repairs a chunk FEC could not rebuild (its player
            // waits for it). A relay, like the node's, never repairs on its
            // own: an edge's repair makes it pull the chunk upstream.
            let incarnation = self.nodes[to as usize].incarnation;
            let at = now + self.settings.repair_delay.as_nanos() as Nanos;
            self.q.push(
                at,
                Ev::Repair {
                    node: to,
                    seq,
                    incarnation,
                },
            );
        }
    }

    fn loss_reports(&mut self, now: Nanos) {
        let t = self.instant(now);
        for n in &mut self.nodes {
            if let Some(link) = n.push.as_mut() {
                if link.expected > 0 {
                    link.parity.handle_report(link.expected, link.received);
                    link.expected = 0;
                    link.received = 0;
                }
            }
            if let Some(a) = n.assembler.as_mut() {
                a.expire(t);
            }
        }
        self.q.push(
            now + self.settings.loss_report_every.as_nanos() as Nanos,
            Ev::LossReports,
        );
    }

    fn churn(&mut self, now: Nanos) {
        let c = &self.s.churn;
        let crash_share = c.crash_per_hour / (c.crash_per_hour + c.leave_per_hour).max(1e-12);
        let rejoin = secs(c.rejoin_after_s);
        let e = self.first_edge() + self.rng.gen_range(0..self.s.tiers.edges);
        let crash = self.rng.r#gen::<f64>() < crash_share;
        let n = &mut self.nodes[e as usize];
        if n.online {
            n.online = false;
            self.offline.set(e);
            n.crashed = crash;
            n.offline_since = now;
            if crash {
                self.out.crashes += 1;
            } else {
                self.out.leaves += 1;
            }
            if rejoin > 0 {
                self.q.push(now + rejoin, Ev::Rejoin(e));
            }
        }
        let at = now + self.exp_delay(self.churn_rate);
        self.q.push(at, Ev::Churn);
    }

    fn rejoin(&mut self, e: u32, now: Nanos) {
        let live = self.s.content.is_live();
        let n = &mut self.nodes[e as usize];
        n.online = true;
        self.offline.unset(e);
        n.crashed = false;
        n.incarnation += 1;
        // A rejoining node starts over: its in-memory store died with it.
        self.have.clear(e);
        n.held = 0;
        n.pipes.reset(now);
        let counted = n.done.is_some() && n.behaviour != Behaviour::Malicious && !live;
        n.done = None;
        n.start = now;
        if let Some(x) = n.edge.as_mut() {
            x.cursor = 0;
            x.inflight.clear();
        }
        if counted {
            self.readers_done -= 1;
        }
        self.out.rejoins += 1;
        self.connect_edge(e);
        if !live && self.nodes[e as usize].behaviour != Behaviour::Malicious {
            self.q.push(now, Ev::ClientStart(e));
        }
    }
}

/// What a run's worlds (one, or each partition's) end with: every node's
/// record is read from the world that ran it, every counter summed.
fn finish(mut worlds: Vec<World>, ended: Ended) -> Outcome {
    let mut out = Outcome::default();
    for w in &mut worlds {
        out.absorb(std::mem::take(&mut w.out));
    }
    out.ended = ended;
    let Some(w0) = worlds.first() else {
        return out;
    };
    let owner = |i: usize| &worlds[w0.owner(i as u32) as usize];
    out.virtual_end_s = worlds.iter().map(|w| w.q.now()).max().unwrap_or(0) as f64 / SEC as f64;
    out.events = worlds.iter().map(|w| w.q.handled()).sum();
    out.fec_exec = if w0.exec_shards { "shards" } else { "blocks" };
    out.content_bytes = w0.s.content_bytes();
    out.chunks = u64::from(w0.chunks);
    let mut anywhere = Bits::new(w0.chunks as usize);
    for i in 0..w0.nodes.len() {
        let w = owner(i);
        let n = &w.nodes[i];
        if let Some(st) = n.store.as_ref() {
            let stats = st.stats();
            out.store_evictions += stats.evictions + stats.expirations;
        }
        match n.tier {
            Tier::Origin => out.bytes_origin += n.bytes_sent,
            Tier::Relay => out.bytes_relays += n.bytes_sent,
            Tier::Edge => out.bytes_edges += n.bytes_sent,
        }
        if n.tier == Tier::Origin {
            continue;
        }
        for (a, b) in anywhere.0.iter_mut().zip(w.have.row(i as u32)) {
            *a |= b;
        }
        if n.behaviour == Behaviour::Malicious {
            continue;
        }
        let took = n
            .done
            .map(|d| d.saturating_sub(n.start) as f64 / SEC as f64);
        out.completions.push((tier_label(n), i as u32, took));
        let label = tier_label(n);
        match out.held.iter_mut().find(|(t, _)| *t == label) {
            Some((_, h)) => *h += u64::from(n.held),
            None => out.held.push((label, u64::from(n.held))),
        }
    }
    let readers: u64 = worlds.iter().map(|w| w.readers).sum();
    let done: u64 = worlds.iter().map(|w| w.readers_done).sum();
    out.unfinished = readers.saturating_sub(done);
    out.last_progress_s =
        worlds.iter().map(|w| w.last_progress).max().unwrap_or(0) as f64 / SEC as f64;
    let held_somewhere: u64 = anywhere.0.iter().map(|w| u64::from(w.count_ones())).sum();
    out.chunks_nowhere = u64::from(w0.chunks).saturating_sub(held_somewhere);
    // Live runs (their latencies) are never split.
    if let Some(w) = worlds.first_mut() {
        let [relay, edge, rider] = std::mem::take(&mut w.latency);
        out.latency_us = vec![("relay", relay), ("edge", edge), ("free-rider", rider)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_samples_stay_bounded_and_keep_the_exact_count_and_max() {
        let mut s = Samples::new(1);
        let n = MAX_LATENCY_SAMPLES as u64 + 1000;
        for i in 0..n {
            s.record((i % 1000) as u32);
        }
        s.record(5_000_000);
        assert_eq!(s.kept.len(), MAX_LATENCY_SAMPLES);
        assert_eq!(s.seen, n + 1);
        assert_eq!(s.max, 5_000_000);
    }

    /// Without it a partition that panics leaves the others waiting for
    /// it forever: a test that fails would hang instead.
    #[test]
    fn a_partition_that_panics_frees_the_others_at_the_gate() {
        let gate = Gate::new(2);
        std::thread::scope(|sc| {
            let g = &gate;
            let failing = sc.spawn(move || {
                let _guard = BreakOnPanic(g);
                panic!("a partition failed");
            });
            assert!(!gate.wait());
            assert!(failing.join().is_err());
        });
        let whole = Gate::new(2);
        std::thread::scope(|sc| {
            let g = &whole;
            let other = sc.spawn(move || g.wait());
            assert!(whole.wait());
            assert!(matches!(other.join(), Ok(true)));
        });
    }

    #[test]
    fn bits_set_get_and_clear() {
        let mut b = Bits::new(130);
        b.set(0);
        b.set(129);
        assert!(b.get(0) && b.get(129) && !b.get(64));
        // Out of range is never held and never panics.
        b.set(500);
        assert!(!b.get(500));
        b.unset(129);
        b.unset(500);
        assert!(b.get(0) && !b.get(129));
        b.clear();
        assert!(!b.get(0));
    }
}
