//! The piece picker: which chunk of an object to ask which peer for next.
//!
//! One [`Picker`] per object being swarmed. It decides, in this order:
//!
//! 1. **Streaming window by deadline** (libtorrent's `set_piece_deadline`):
//!    pieces a client is reading now carry a deadline and go first, earliest
//!    deadline first; a deadline piece whose deadline passed may be asked of
//!    a second peer, so a reader never waits behind one slow peer.
//! 2. **Random first pieces**: until `random_first` pieces are held, pick at
//!    random, so a newcomer quickly has something to trade.
//! 3. **Rarest first** among the neighbours' bitfields (upstream seeds are not
//!    counted: they have everything and say nothing about rarity), ties
//!    broken at random so edges asking the same seed ask for different pieces.
//!    A seed (an upstream) is asked only for pieces at most
//!    `seed_max_availability` neighbours have — what a neighbour has comes
//!    from the neighbour, so the tier above hands each piece to a few edges
//!    and edges trade the rest — unless no neighbour is being asked for
//!    anything (then the seed is the only way forward and gets any piece).
//!    A thousand edges share four relays: a relay that cannot send a reply
//!    within its admission bound says "busy" ([`super::admission`]) and the
//!    edge leaves it alone for a jittered back-off. (Pacing a seed by how
//!    long its replies took, `seed_backoff`, came before admission and is
//!    off: a relay's reply includes its own pull upstream and the network's
//!    queue, so the real cluster in `testbed/swarm-netns` was paced to half
//!    its links' speed.)
//! 4. **Endgame**: once every missing piece is requested, a missing piece may
//!    be asked of another peer too (at most `endgame_requests` at once); the
//!    first copy in wins and [`Picker::handle_received`] names the losers to
//!    cancel.
//!
//! How many requests a peer gets at once is its bandwidth-delay product in
//! pieces (measured delivery rate × round-trip time, plus one so the pipe
//! never drains between replies), clamped to `[min_pipeline, max_pipeline]`.
//!
//! Sans-I/O: time and randomness are arguments; the caller sends the
//! requests and cancels, and tells the picker what came back. It does not
//! decide whom we may ask (the choker and reputation do: the caller only
//! polls peers that unchoked it and are not banned) nor verify anything.

use crate::chunk::PeerId;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A fixed-size bit set over an object's pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    words: Vec<u64>,
    len: u32,
}

impl Bitfield {
    /// All clear.
    pub fn new(len: u32) -> Self {
        Self {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
        }
    }

    /// All set (a seed).
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Out of range is never set.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[i as usize / 64] >> (i % 64) & 1 == 1
    }

    /// Sets bit `i`; returns whether it was clear. Out of range is ignored.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[i as usize / 64];
        let was = *w >> (i % 64) & 1 == 1;
        *w |= 1 << (i % 64);
        !was
    }

    /// Clears bit `i`; returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[i as usize / 64];
        let was = *w >> (i % 64) & 1 == 1;
        *w &= !(1 << (i % 64));
        was
    }

    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }
}

/// Which of `upstreams` upstreams is the first source for `piece`: the same
/// rotation [`super::request_order`] applies, so a piece is pulled through
/// one upstream and the tier above it sends it once.
pub fn upstream_share(piece: u64, upstreams: usize) -> usize {
    if upstreams == 0 {
        return 0;
    }
    (piece % upstreams as u64) as usize
}

/// The pieces of `pieces` whose first source is upstream `index` of `upstreams`.
pub fn upstream_stripe(pieces: u32, index: usize, upstreams: usize) -> Bitfield {
    let mut b = Bitfield::new(pieces);
    for i in 0..pieces {
        if upstream_share(u64::from(i), upstreams) == index {
            b.set(i);
        }
    }
    b
}

/// Picker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickerConfig {
    /// Pieces in the object.
    pub pieces: u32,
    /// Bytes of a (full) piece, to turn a bandwidth-delay product into pieces.
    pub piece_bytes: u64,
    /// Pieces picked at random before rarest-first takes over.
    pub random_first: u32,
    /// A seed is asked for a piece only while at most this many neighbours
    /// have it (deadline pieces and a node with no neighbour to ask excepted).
    pub seed_max_availability: u16,
    /// Most requests for one piece at once in endgame or past its deadline.
    pub endgame_requests: u8,
    /// Pipeline bounds per peer, requests.
    pub min_pipeline: u32,
    pub max_pipeline: u32,
    /// A peer's delivery rate before anything was measured, bytes/s.
    pub initial_rate_bytes_per_sec: u64,
    /// A request unanswered this long is given up (the caller cancels it).
    pub request_timeout: Duration,
    /// Most peers tracked.
    pub max_peers: usize,
    /// Seed pacing while neighbours are being asked: a seed's reply that
    /// queued `q` longer than an unloaded one keeps this node from asking
    /// that seed again for `seed_backoff × q` (at most `max_seed_backoff`),
    /// and one request at a time; 0 (the default) turns it off. It kept
    /// the seeds' queues short before relays had admission; with
    /// admission it only slowed pull-through: a reply that a relay first
    /// pulls upstream, through a link with a real queue, "queued" by this
    /// measure on every piece, and 8 edges behind a 100 Mbit/s relay took
    /// 55 s for 256 MiB instead of 28 s (the simulator, whose links have no
    /// queue, never saw it).
    pub seed_backoff: u32,
    pub max_seed_backoff: Duration,
    /// A peer that answered "busy" ([`super::admission`]) is not asked
    /// anything for `busy_backoff × 2^(busy answers in a row − 1)` (at most
    /// `max_busy_backoff`), jittered ±50 % so a thousand edges refused
    /// together do not come back together. The cap is short: a piece only
    /// the relays have yet must not wait seconds on one edge (a 2 s cap
    /// made the slowest edge of a small burst slower than no admission).
    pub busy_backoff: Duration,
    pub max_busy_backoff: Duration,
}

impl PickerConfig {
    /// Settings for an object of `pieces` pieces of `piece_bytes`.
    pub fn for_object(pieces: u32, piece_bytes: u64) -> Self {
        Self {
            pieces,
            piece_bytes: piece_bytes.max(1),
            random_first: 4,
            seed_max_availability: 0,
            endgame_requests: 2,
            min_pipeline: 2,
            max_pipeline: 32,
            initial_rate_bytes_per_sec: 125_000_000,
            request_timeout: Duration::from_secs(30),
            max_peers: 1024,
            seed_backoff: 0,
            max_seed_backoff: Duration::from_secs(30),
            busy_backoff: Duration::from_millis(100),
            max_busy_backoff: Duration::from_millis(500),
        }
    }
}

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickerError {
    #[error("already tracking the maximum of {0} peers")]
    TooManyPeers(usize),
}

/// A request the caller should send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub piece: u32,
    /// Why it was picked.
    pub reason: PickReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickReason {
    /// In the streaming window, by deadline.
    Deadline,
    /// One of the first pieces, at random.
    Random,
    /// The rarest among the neighbours.
    Rarest,
    /// A duplicate of an outstanding request (endgame or a missed deadline).
    Endgame,
}

/// What a received piece means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The piece was missing (false: a late duplicate, drop it).
    pub new: bool,
    /// Other peers still asked for this piece: cancel those requests.
    pub cancel: Vec<PeerId>,
}

#[derive(Debug, Clone)]
struct Outstanding {
    piece: u32,
    sent: Instant,
}

#[derive(Debug, Clone)]
struct Peer {
    /// (What it has is a row of `PeerTable::has`.)
    /// A seed has everything and is not counted in availability.
    seed: bool,
    requests: Vec<Outstanding>,
    /// Smoothed delivery rate, bytes/s, and round-trip time.
    rate: f64,
    rtt: Duration,
    last_delivery: Option<Instant>,
    /// A paced seed is not asked for fresh pieces before this.
    not_before: Option<Instant>,
    /// It answered "busy": not asked anything before this.
    busy_until: Option<Instant>,
    /// "Busy" answers since its last piece.
    busy_streak: u32,
}

/// The picker's peers, sorted by id: a few dozen at most in practice, so a
/// binary search beats hashing on the hot path (every `Have` and every poll
/// looks a peer up) and iteration order is deterministic. The ids are a
/// vector of their own: a search reads a few hundred bytes of ids, not
/// every peer's record (a swarming edge of a 10,000-edge simulation takes
/// ~32 `Have`s per piece it gets, each such a search in another edge's
/// picker).
///
/// What each peer has is a row of one block, not a bit set of its own: a
/// `Have` is then a search in `ids` and one word of the block, with no
/// walk through the peer's record to a separate allocation first.
#[derive(Debug, Default)]
struct PeerTable {
    ids: Vec<PeerId>,
    peers: Vec<Peer>,
    /// `words` words per peer, in `ids` order; bits at or past `len` are
    /// never set.
    has: Vec<u64>,
    words: usize,
    len: u32,
}

impl PeerTable {
    fn new(len: u32) -> Self {
        Self {
            words: (len as usize).div_ceil(64),
            len,
            ..Self::default()
        }
    }

    /// What the `i`th peer has.
    fn row(&self, i: usize) -> &[u64] {
        &self.has[i * self.words..(i + 1) * self.words]
    }

    fn has_get(&self, i: usize, piece: u32) -> bool {
        piece < self.len && self.has[i * self.words + piece as usize / 64] >> (piece % 64) & 1 == 1
    }

    /// Sets a bit; whether it was clear (out of range: ignored).
    fn has_set(&mut self, i: usize, piece: u32) -> bool {
        if piece >= self.len {
            return false;
        }
        let w = &mut self.has[i * self.words + piece as usize / 64];
        let was = *w >> (piece % 64) & 1 == 1;
        *w |= 1 << (piece % 64);
        !was
    }

    /// Clears a bit; whether it was set.
    fn has_clear(&mut self, i: usize, piece: u32) -> bool {
        if piece >= self.len {
            return false;
        }
        let w = &mut self.has[i * self.words + piece as usize / 64];
        let was = *w >> (piece % 64) & 1 == 1;
        *w &= !(1 << (piece % 64));
        was
    }

    fn find(&self, id: &PeerId) -> Result<usize, usize> {
        self.ids.binary_search(id)
    }

    fn contains_key(&self, id: &PeerId) -> bool {
        self.find(id).is_ok()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn get(&self, id: &PeerId) -> Option<&Peer> {
        self.find(id).ok().map(|i| &self.peers[i])
    }

    fn get_mut(&mut self, id: &PeerId) -> Option<&mut Peer> {
        self.find(id).ok().map(|i| &mut self.peers[i])
    }

    /// `has` is of the object's length (the caller checks).
    fn insert(&mut self, id: PeerId, peer: Peer, has: &Bitfield) {
        let w = self.words;
        let i = match self.find(&id) {
            Ok(i) => {
                self.peers[i] = peer;
                i
            }
            Err(i) => {
                self.ids.insert(i, id);
                self.peers.insert(i, peer);
                self.has.splice(i * w..i * w, std::iter::repeat_n(0, w));
                i
            }
        };
        self.has[i * w..(i + 1) * w].copy_from_slice(&has.words[..w]);
    }

    /// Removes a peer: its record and what it had.
    fn remove(&mut self, id: &PeerId) -> Option<(Peer, Vec<u64>)> {
        let i = self.find(id).ok()?;
        self.ids.remove(i);
        let w = self.words;
        let has = self.has.drain(i * w..(i + 1) * w).collect();
        Some((self.peers.remove(i), has))
    }

    fn iter(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.ids.iter().zip(self.peers.iter())
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter()
    }
}

#[cfg(test)]
impl std::ops::Index<&PeerId> for PeerTable {
    type Output = Peer;
    fn index(&self, id: &PeerId) -> &Peer {
        match self.get(id) {
            Some(p) => p,
            None => panic!("no peer {id:?}"),
        }
    }
}

/// The piece picker for one object.
#[derive(Debug)]
pub struct Picker {
    config: PickerConfig,
    have: Bitfield,
    /// Pieces held (`have`'s count, kept so a poll need not count it).
    held: u32,
    /// Non-seed peers that have each piece.
    availability: Vec<u16>,
    /// Requests outstanding per piece, across peers.
    requested: Vec<u8>,
    /// Missing pieces nobody was asked for (endgame starts at zero); kept
    /// as a count so a poll never scans the object.
    open: u32,
    /// Requests outstanding at neighbours (not seeds).
    neighbour_requests: u32,
    /// Word masks mirroring `requested > 0` and `availability > 0`, so a
    /// pick skips 64 pieces at a time.
    asked: Bitfield,
    seen: Bitfield,
    deadlines: BTreeSet<(Instant, u32)>,
    deadline_of: HashMap<u32, Instant>,
    peers: PeerTable,
    /// When each outstanding request was sent, as a multiset (time →
    /// requests sent then): the earliest is the next timeout, found
    /// without visiting every peer (the caller asks after every event).
    sent: BTreeMap<Instant, u32>,
    /// Peers that ever had a seed back-off or a busy back-off, sorted: the
    /// only ones [`Picker::seed_ready_at`] has to look at (a few relays
    /// among dozens of neighbours).
    timed: Vec<PeerId>,
    /// Bit `i`: the `i`th peer's last poll scanned and found no fresh
    /// piece, and nothing since can have given it one. Most polls are such
    /// (a swarming edge polls every peer after each piece; 86 % of polls
    /// in a 1,000-edge burst found nothing), and a scan reads the peer's
    /// row and three of our bit sets, cache misses all, where this is one
    /// word. What can give a peer a fresh piece clears its bit (its `Have`)
    /// or every bit (a piece open again, an availability falling, the
    /// last neighbour request ending, a peer added or removed).
    /// Used only outside endgame and with no deadlines, where the answer
    /// depends on nothing else; exact: `dry_polls_answer_as_full_polls`.
    dry: Vec<u64>,
    /// Off only in that test, to compare.
    use_dry: bool,
}

impl Picker {
    pub fn new(config: PickerConfig) -> Self {
        let n = config.pieces;
        Self {
            config,
            have: Bitfield::new(n),
            held: 0,
            availability: vec![0; n as usize],
            requested: vec![0; n as usize],
            open: n,
            neighbour_requests: 0,
            asked: Bitfield::new(n),
            seen: Bitfield::new(n),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            peers: PeerTable::new(n),
            sent: BTreeMap::new(),
            timed: Vec::new(),
            dry: Vec::new(),
            use_dry: true,
        }
    }

    /// Some peer may have a fresh piece it had not: forget every dry bit.
    fn wet_all(&mut self) {
        self.dry.iter_mut().for_each(|w| *w = 0);
    }

    fn is_dry(&self, i: usize) -> bool {
        self.use_dry
            && self.open > 0
            && self.deadlines.is_empty()
            && self.dry.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    fn set_dry(&mut self, i: usize, dry: bool) {
        if self.dry.len() <= i / 64 {
            self.dry.resize(i / 64 + 1, 0);
        }
        if dry {
            self.dry[i / 64] |= 1 << (i % 64);
        } else {
            self.dry[i / 64] &= !(1 << (i % 64));
        }
    }

    pub fn config(&self) -> &PickerConfig {
        &self.config
    }

    /// What this node holds.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Every piece is held.
    pub fn is_complete(&self) -> bool {
        self.held == self.config.pieces
    }

    /// Marks a piece held without a request (pushed, or already in the store).
    pub fn mark_held(&mut self, piece: u32) {
        if self.set_have(piece) {
            self.deadline_done(piece);
        }
    }

    /// Forgets a piece (the store evicted it): it may be picked again.
    pub fn mark_lost(&mut self, piece: u32) {
        if self.have.clear(piece) {
            self.held -= 1;
            if self.requested[piece as usize] == 0 {
                self.open += 1;
                self.wet_all();
            }
        }
    }

    fn set_have(&mut self, piece: u32) -> bool {
        if piece >= self.config.pieces || !self.have.set(piece) {
            return false;
        }
        self.held += 1;
        if self.requested[piece as usize] == 0 {
            self.open -= 1;
        }
        true
    }

    fn add_request(&mut self, piece: u32) {
        let n = &mut self.requested[piece as usize];
        if *n == 0 {
            self.asked.set(piece);
            if !self.have.get(piece) {
                self.open -= 1;
            }
        }
        *n = n.saturating_add(1);
    }

    fn inc_avail(&mut self, piece: u32) {
        let a = &mut self.availability[piece as usize];
        *a = a.saturating_add(1);
        self.seen.set(piece);
    }

    fn dec_avail(&mut self, piece: u32) {
        // Under a seed's availability cap a piece may become fresh.
        self.wet_all();
        let a = &mut self.availability[piece as usize];
        *a = a.saturating_sub(1);
        if *a == 0 {
            self.seen.clear(piece);
        }
    }

    /// A neighbour (an edge) with what it announced so far.
    pub fn add_peer(
        &mut self,
        peer: PeerId,
        has: Bitfield,
        rtt: Duration,
    ) -> Result<(), PickerError> {
        self.insert(peer, has, false, rtt)
    }

    /// An upstream that has (or fetches) every piece.
    pub fn add_seed(&mut self, peer: PeerId, rtt: Duration) -> Result<(), PickerError> {
        self.insert(peer, Bitfield::full(self.config.pieces), true, rtt)
    }

    /// An upstream asked only for the pieces in `serves` (with several
    /// upstreams, each is first source for its own share: see
    /// [`upstream_share`]), so the tier above sends each piece once.
    pub fn add_seed_of(
        &mut self,
        peer: PeerId,
        serves: Bitfield,
        rtt: Duration,
    ) -> Result<(), PickerError> {
        self.insert(peer, serves, true, rtt)
    }

    fn insert(
        &mut self,
        peer: PeerId,
        mut has: Bitfield,
        seed: bool,
        rtt: Duration,
    ) -> Result<(), PickerError> {
        if self.peers.contains_key(&peer) {
            return Ok(());
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(PickerError::TooManyPeers(self.config.max_peers));
        }
        if has.len != self.config.pieces {
            // A bitfield of the wrong size says nothing trustworthy.
            has = Bitfield::new(self.config.pieces);
        }
        if !seed {
            for i in 0..self.config.pieces {
                if has.get(i) {
                    self.inc_avail(i);
                }
            }
        }
        self.wet_all();
        self.peers.insert(
            peer,
            Peer {
                seed,
                requests: Vec::new(),
                rate: self.config.initial_rate_bytes_per_sec as f64,
                rtt,
                last_delivery: None,
                not_before: None,
                busy_until: None,
                busy_streak: 0,
            },
            &has,
        );
        Ok(())
    }

    /// A peer left: its announcements no longer count and its outstanding
    /// requests may be picked again.
    pub fn remove_peer(&mut self, peer: PeerId) {
        let Some((p, has)) = self.peers.remove(&peer) else {
            return;
        };
        if !p.seed {
            for i in 0..self.config.pieces {
                if has[i as usize / 64] >> (i % 64) & 1 == 1 {
                    self.dec_avail(i);
                }
            }
        }
        if !p.seed {
            self.neighbour_requests -= p.requests.len() as u32;
        }
        // Indices moved; the cap may be lifted.
        self.wet_all();
        if let Ok(i) = self.timed.binary_search(&peer) {
            self.timed.remove(i);
        }
        for r in p.requests {
            self.unsent(r.sent);
            self.unrequest(r.piece);
        }
    }

    /// A peer announced a piece. One of a piece held here changes no pick,
    /// cancel or timer (only what is missing is ever picked), so a caller
    /// may leave it out — as long as [`Picker::mark_lost`] is never used,
    /// since a lost piece would then not know who has it.
    pub fn handle_have(&mut self, peer: PeerId, piece: u32) {
        if let Ok(i) = self.peers.find(&peer) {
            if self.peers.has_set(i, piece) {
                self.set_dry(i, false);
                if !self.peers.peers[i].seed {
                    self.inc_avail(piece);
                }
            }
        }
    }

    /// A fresh round-trip time measurement for a peer.
    pub fn handle_rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtt = rtt;
        }
    }

    /// A client reads `piece` by `deadline`: it goes before bulk pieces.
    pub fn set_piece_deadline(&mut self, piece: u32, deadline: Instant) {
        if piece >= self.config.pieces || self.have.get(piece) {
            return;
        }
        if let Some(old) = self.deadline_of.insert(piece, deadline) {
            self.deadlines.remove(&(old, piece));
        }
        self.deadlines.insert((deadline, piece));
    }

    /// The client no longer needs `piece` soon.
    pub fn reset_piece_deadline(&mut self, piece: u32) {
        self.deadline_done(piece);
    }

    fn deadline_done(&mut self, piece: u32) {
        if let Some(d) = self.deadline_of.remove(&piece) {
            self.deadlines.remove(&(d, piece));
        }
    }

    /// How many requests `peer` should have outstanding: its bandwidth-delay
    /// product in pieces, plus one so the pipe never drains.
    pub fn pipeline(&self, peer: PeerId) -> u32 {
        self.peers.get(&peer).map_or(0, |p| self.depth(p))
    }

    fn depth(&self, p: &Peer) -> u32 {
        let bdp = p.rate * p.rtt.as_secs_f64() / self.config.piece_bytes as f64;
        let depth = (bdp.ceil() as u32).saturating_add(1);
        depth.clamp(self.config.min_pipeline, self.config.max_pipeline.max(1))
    }

    /// Whether `peer`'s pipeline has room and it is not left alone after a
    /// "busy". When not, [`Picker::poll_request`] answers `None` for it
    /// before looking at anything else, so a caller may skip the work of
    /// getting ready to poll (the simulator: handing the picker its queued
    /// `Have`s).
    pub fn has_room(&self, peer: PeerId, now: Instant) -> bool {
        self.peers.get(&peer).is_some_and(|p| self.room(p, now))
    }

    /// Whether `peer`'s pipeline is full: as many requests outstanding as
    /// its depth. Unlike [`Picker::has_room`] it does not depend on the
    /// time, only on what the picker was told, so a caller may keep it
    /// between calls: it changes only when a request to `peer` is sent or
    /// ends, or its rate changes (a piece received or a timeout). While it
    /// is true, `has_room` is false and [`Picker::poll_request`] answers
    /// `None` for `peer` (the simulator skips waking such a peer).
    pub fn pipeline_full(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.requests.len() >= self.depth(p) as usize)
    }

    fn room(&self, p: &Peer, now: Instant) -> bool {
        p.requests.len() < self.depth(p) as usize && p.busy_until.is_none_or(|t| now >= t)
    }

    /// Requests outstanding at `peer`.
    pub fn outstanding(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.requests.len())
    }

    /// `peer` has something this node lacks.
    pub fn is_interesting(&self, peer: PeerId) -> bool {
        let Ok(i) = self.peers.find(&peer) else {
            return false;
        };
        let has = self.peers.row(i);
        (0..self.have.words.len()).any(|w| has[w] & !self.have.word(w) != 0)
    }

    /// The next piece to ask `peer` for, if its pipeline has room. The
    /// caller polls only peers it may ask (unchoked, not banned) and sends
    /// what this returns.
    pub fn poll_request<R: Rng>(
        &mut self,
        peer: PeerId,
        now: Instant,
        rng: &mut R,
    ) -> Option<Request> {
        let i = self.peers.find(&peer).ok()?;
        // Nothing fresh since its last scan: `None` with room or without.
        if self.is_dry(i) {
            return None;
        }
        let p = &self.peers.peers[i];
        if !self.room(p, now) {
            return None;
        }
        let asked = |piece: u32| p.requests.iter().any(|r| r.piece == piece);
        let dup_limit = self.config.endgame_requests.max(1);
        // 1. The streaming window, earliest deadline first.
        let mut pick = None;
        for &(deadline, piece) in &self.deadlines {
            if !self.peers.has_get(i, piece) || asked(piece) {
                continue;
            }
            let n = self.requested[piece as usize];
            if n == 0 {
                pick = Some((piece, PickReason::Deadline));
                break;
            }
            if deadline <= now && n < dup_limit {
                pick = Some((piece, PickReason::Endgame));
                break;
            }
        }
        // A paced seed: one request at a time, and none before its back-off
        // ends (the reader's deadline pieces above are exempt).
        let paced = p.seed
            && self.config.seed_backoff > 0
            && self.asking_neighbours()
            && (p.not_before.is_some_and(|t| now < t)
                || (p.not_before.is_some() && !p.requests.is_empty()));
        if pick.is_none() && paced {
            return None;
        }
        // 2. and 3. Random first, then rarest first, among pieces nobody asked for.
        let mut mark_dry = false;
        if pick.is_none() {
            let random = self.held < self.config.random_first;
            let cap = if p.seed && self.asking_neighbours() {
                self.config.seed_max_availability
            } else {
                u16::MAX
            };
            pick = self
                .pick_fresh(self.peers.row(i), random, cap, rng)
                .map(|i| {
                    (
                        i,
                        if random {
                            PickReason::Random
                        } else {
                            PickReason::Rarest
                        },
                    )
                });
            mark_dry = pick.is_none() && self.open > 0 && self.deadlines.is_empty();
        }
        // 4. Endgame: every missing piece is already asked for somewhere.
        if pick.is_none() && self.all_missing_requested() {
            pick = self
                .pick_duplicate(p, self.peers.row(i), dup_limit, rng)
                .map(|i| (i, PickReason::Endgame));
        }
        if mark_dry {
            self.set_dry(i, true);
        }
        let (piece, reason) = pick?;
        self.add_request(piece);
        let p = &mut self.peers.peers[i];
        p.requests.push(Outstanding { piece, sent: now });
        if !p.seed {
            self.neighbour_requests += 1;
        }
        *self.sent.entry(now).or_insert(0) += 1;
        Some(Request { piece, reason })
    }

    fn all_missing_requested(&self) -> bool {
        self.open == 0
    }

    /// Some request is outstanding at a neighbour (not a seed).
    fn asking_neighbours(&self) -> bool {
        self.neighbour_requests > 0
    }

    /// Candidate pieces of `p` in word `w`: it has them, we lack them.
    fn wanted_word(&self, has: &[u64], w: usize) -> u64 {
        has[w] & !self.have.word(w)
    }

    /// A missing, unrequested piece `p` has: random, or rarest with random
    /// ties (reservoir over the rarest seen), scanning from a random word.
    fn pick_fresh<R: Rng>(&self, has: &[u64], random: bool, cap: u16, rng: &mut R) -> Option<u32> {
        let words = self.have.words.len();
        // No candidate at all (most polls): answer before drawing from
        // `rng`, so a poll a caller skips as dry draws nothing either.
        let candidates = |w: usize| {
            let mut bits = self.wanted_word(has, w) & !self.asked.word(w);
            if cap == 0 {
                bits &= !self.seen.word(w);
            }
            bits
        };
        if !(0..words).any(|w| candidates(w) != 0) {
            return None;
        }
        let start = rng.gen_range(0..words);
        let mut best: Option<(u16, u32)> = None;
        let mut ties = 0u32;
        for k in 0..words {
            let w = (start + k) % words;
            // Unrequested (`asked` is exactly `requested > 0`), and (for a
            // seed capped at zero) seen by no neighbour.
            let mut bits = candidates(w);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let piece = (w * 64) as u32 + b;
                // Read only when it can matter: a piece `seen` by no
                // neighbour has availability 0, and a random pick with no
                // cap ignores it. Each read is another cache line of a
                // large array (a tenth of a 10,000-edge simulation).
                let avail = if cap == 0 || (random && cap == u16::MAX) {
                    0
                } else {
                    self.availability[piece as usize]
                };
                if avail > cap {
                    continue;
                }
                let a = if random { 0 } else { avail };
                match best {
                    Some((ba, _)) if a > ba => {}
                    Some((ba, _)) if a == ba => {
                        ties += 1;
                        if rng.gen_range(0..ties) == 0 {
                            best = Some((a, piece));
                        }
                    }
                    _ => {
                        best = Some((a, piece));
                        ties = 1;
                    }
                }
            }
            // Nothing is rarer than "no neighbour has it": stop scanning once
            // enough equally rare candidates were seen to spread requests.
            if best.is_some_and(|(a, _)| a == 0) && ties >= 16 {
                break;
            }
        }
        best.map(|(_, piece)| piece)
    }

    /// A missing piece `p` has that others were asked for and this peer was
    /// not, with fewer than `limit` requests out: fewest requests first.
    fn pick_duplicate<R: Rng>(&self, p: &Peer, has: &[u64], limit: u8, rng: &mut R) -> Option<u32> {
        let mut best: Option<(u8, u32)> = None;
        let mut ties = 0u32;
        for w in 0..self.have.words.len() {
            let mut bits = self.wanted_word(has, w);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let piece = (w * 64) as u32 + b;
                let n = self.requested[piece as usize];
                if n == 0 || n >= limit || p.requests.iter().any(|r| r.piece == piece) {
                    continue;
                }
                match best {
                    Some((bn, _)) if n > bn => {}
                    Some((bn, _)) if n == bn => {
                        ties += 1;
                        if rng.gen_range(0..ties) == 0 {
                            best = Some((n, piece));
                        }
                    }
                    _ => {
                        best = Some((n, piece));
                        ties = 1;
                    }
                }
            }
        }
        best.map(|(_, piece)| piece)
    }

    fn unrequest(&mut self, piece: u32) {
        if let Some(n) = self.requested.get_mut(piece as usize) {
            if *n > 0 {
                *n -= 1;
                if *n == 0 {
                    self.asked.clear(piece);
                    if !self.have.get(piece) {
                        self.open += 1;
                        self.wet_all();
                    }
                }
            }
        }
    }

    /// One request sent at `at` is no longer outstanding.
    fn unsent(&mut self, at: Instant) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.sent.entry(at) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// `peer` has (or may have) a back-off timer: see `timed`.
    fn note_timed(&mut self, peer: PeerId) {
        if let Err(i) = self.timed.binary_search(&peer) {
            self.timed.insert(i, peer);
        }
    }

    fn take_request(&mut self, peer: PeerId, piece: u32) -> Option<Outstanding> {
        let p = self.peers.get_mut(&peer)?;
        let i = p.requests.iter().position(|r| r.piece == piece)?;
        let r = p.requests.swap_remove(i);
        if !p.seed {
            self.neighbour_requests -= 1;
            if self.neighbour_requests == 0 {
                // A seed's availability cap is lifted.
                self.wet_all();
            }
        }
        self.unsent(r.sent);
        self.unrequest(piece);
        Some(r)
    }

    /// A verified piece of `bytes` came from `peer`. Returns whether it was
    /// new and which other peers to cancel the same request at.
    pub fn handle_received(
        &mut self,
        peer: PeerId,
        piece: u32,
        bytes: u64,
        now: Instant,
    ) -> Received {
        // Held before its requests end, so their ending reopens nothing
        // (and forgets no peer's dry bit).
        let new = self.set_have(piece);
        if let Some(r) = self.take_request(peer, piece) {
            if let Some(p) = self.peers.get_mut(&peer) {
                // The delivery rate: bytes over the time since the later of
                // the request and the previous delivery (replies pipelined
                // behind each other share the link).
                let since = p.last_delivery.map_or(r.sent, |d| d.max(r.sent));
                let secs = now.saturating_duration_since(since).as_secs_f64().max(1e-6);
                let sample = bytes as f64 / secs;
                p.rate = 0.75 * p.rate + 0.25 * sample;
                p.last_delivery = Some(now);
                p.busy_streak = 0;
                if p.seed {
                    // How much longer than an unloaded reply (one round
                    // trip and the piece at the link's speed, twice for
                    // slack) this one took: the seed's queue.
                    let unloaded = p.rtt.as_secs_f64()
                        + bytes as f64 / self.config.initial_rate_bytes_per_sec.max(1) as f64;
                    let took = now.saturating_duration_since(r.sent).as_secs_f64();
                    let queued = took - 2.0 * unloaded;
                    p.not_before = (queued > 0.0).then(|| {
                        let back_off =
                            Duration::from_secs_f64(queued * f64::from(self.config.seed_backoff));
                        now + back_off.min(self.config.max_seed_backoff)
                    });
                    if p.not_before.is_some() {
                        self.note_timed(peer);
                    }
                }
            }
        }
        self.deadline_done(piece);
        let mut cancel = Vec::new();
        if piece < self.config.pieces && self.requested[piece as usize] > 0 {
            let mut ids: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.requests.iter().any(|r| r.piece == piece))
                .map(|(id, _)| *id)
                .collect();
            ids.sort();
            for id in ids {
                self.take_request(id, piece);
                cancel.push(id);
            }
        }
        Received { new, cancel }
    }

    /// `peer` refused or failed `piece`: it may be picked again, and this
    /// peer is not asked for it until it announces it anew.
    pub fn handle_failed(&mut self, peer: PeerId, piece: u32) {
        if self.take_request(peer, piece).is_some() {
            if let Ok(i) = self.peers.find(&peer) {
                if !self.peers.peers[i].seed && self.peers.has_clear(i, piece) {
                    self.dec_avail(piece);
                }
            }
        }
    }

    /// `peer` answered "busy" ([`super::admission::CODE_BUSY`]): it still
    /// has the piece and did nothing wrong, but is asked nothing for a
    /// jittered back-off that doubles with each busy answer in a row. The
    /// piece may be picked again at once, from a neighbour that has it.
    pub fn handle_busy<R: Rng>(&mut self, peer: PeerId, piece: u32, now: Instant, rng: &mut R) {
        self.take_request(peer, piece);
        let base = self.config.busy_backoff;
        let cap = self.config.max_busy_backoff;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.busy_streak = p.busy_streak.saturating_add(1);
            let doublings = (p.busy_streak - 1).min(16);
            let back_off = base.saturating_mul(1 << doublings).min(cap);
            let jittered = back_off.mul_f64(rng.gen_range(0.5..1.5));
            // Several busy answers to requests sent together: the latest
            // back-off wins, never a shorter one.
            let until = now + jittered;
            p.busy_until = Some(p.busy_until.map_or(until, |t| t.max(until)));
            self.note_timed(peer);
        }
    }

    /// `peer` choked us between our request and its answer: the piece may
    /// be picked again, and the peer still has it (it is asked again once it
    /// unchokes us) — unlike [`Picker::handle_failed`], which forgets it.
    pub fn handle_choked(&mut self, peer: PeerId, piece: u32) {
        self.take_request(peer, piece);
    }

    /// Gives up requests older than the timeout; returns them (peer, piece)
    /// so the caller cancels them. The pieces may be picked again.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(PeerId, u32)> {
        if self.poll_timeout().is_none_or(|at| at > now) {
            return Vec::new();
        }
        let timeout = self.config.request_timeout;
        let mut expired = Vec::new();
        for (id, p) in self.peers.iter() {
            for r in &p.requests {
                if now.saturating_duration_since(r.sent) >= timeout {
                    expired.push((*id, r.piece));
                }
            }
        }
        expired.sort();
        for &(id, piece) in &expired {
            self.take_request(id, piece);
            if let Some(p) = self.peers.get_mut(&id) {
                // A peer that let a request time out is slow: halve its rate
                // so its pipeline shrinks.
                p.rate /= 2.0;
            }
        }
        expired
    }

    /// When, after `now`, the earliest paced seed or peer that answered
    /// "busy" may be asked again (the caller polls then, if nothing else
    /// woke it).
    pub fn seed_ready_at(&self, now: Instant) -> Option<Instant> {
        self.timed
            .iter()
            .filter_map(|id| self.peers.get(id))
            .flat_map(|p| [p.not_before.filter(|_| p.seed), p.busy_until])
            .flatten()
            .filter(|&t| t > now)
            .min()
    }

    /// Earliest time [`Picker::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sent
            .first_key_value()
            .map(|(&t, _)| t + self.config.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const MS: Duration = Duration::from_millis(1);

    /// `peer` did not bring `piece`: refused, busy or choked, as `kind % 3`
    /// says (the tests that run two pickers side by side end requests so).
    fn refuse(
        p: &mut Picker,
        rng: &mut ChaCha8Rng,
        peer: PeerId,
        piece: u32,
        kind: usize,
        now: Instant,
    ) {
        match kind % 3 {
            0 => p.handle_failed(peer, piece),
            1 => p.handle_busy(peer, piece, now, rng),
            _ => p.handle_choked(peer, piece),
        }
    }

    fn bits(n: u32, set: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in set {
            b.set(i);
        }
        b
    }

    fn cfg(pieces: u32) -> PickerConfig {
        PickerConfig {
            random_first: 0,
            ..PickerConfig::for_object(pieces, 1 << 20)
        }
    }

    #[test]
    fn deadline_pieces_go_first_earliest_deadline_first() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(100));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        p.add_seed(PeerId(1), MS).unwrap();
        // A rare piece (no neighbour has any) competes with the window.
        p.set_piece_deadline(40, t0 + 200 * MS);
        p.set_piece_deadline(41, t0 + 100 * MS);
        let a = p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        let b = p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        assert_eq!((a.piece, a.reason), (41, PickReason::Deadline));
        assert_eq!((b.piece, b.reason), (40, PickReason::Deadline));
    }

    #[test]
    fn a_missed_deadline_is_asked_of_a_second_peer_and_the_loser_cancelled() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(10));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        p.add_seed(PeerId(1), MS).unwrap();
        p.add_seed(PeerId(2), MS).unwrap();
        p.set_piece_deadline(3, t0 + 50 * MS);
        assert_eq!(p.poll_request(PeerId(1), t0, &mut rng).unwrap().piece, 3);
        // Before the deadline, peer 2 gets other work.
        assert_ne!(p.poll_request(PeerId(2), t0, &mut rng).unwrap().piece, 3);
        // Past it, peer 2 is asked too.
        let late = t0 + 60 * MS;
        let r = p.poll_request(PeerId(2), late, &mut rng).unwrap();
        assert_eq!((r.piece, r.reason), (3, PickReason::Endgame));
        let got = p.handle_received(PeerId(2), 3, 1 << 20, late + MS);
        assert!(got.new);
        assert_eq!(got.cancel, vec![PeerId(1)]);
        assert_eq!(p.outstanding(PeerId(1)), 0);
        // The cancelled copy arriving anyway is not new.
        assert!(!p.handle_received(PeerId(1), 3, 1 << 20, late + 2 * MS).new);
    }

    #[test]
    fn rarest_among_neighbours_goes_first() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(8));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        p.add_peer(PeerId(1), bits(8, &[0, 1, 2, 5]), MS).unwrap();
        p.add_peer(PeerId(2), bits(8, &[0, 1, 2]), MS).unwrap();
        p.add_peer(PeerId(3), bits(8, &[0, 1]), MS).unwrap();
        // Availability: 0,1 → 3; 2 → 2; 5 → 1. Peer 1 is asked for 5, then 2.
        let order: Vec<u32> = (0..2)
            .map(|_| p.poll_request(PeerId(1), t0, &mut rng).unwrap().piece)
            .collect();
        assert_eq!(order, vec![5, 2]);
    }

    #[test]
    fn seeds_asked_at_once_hand_out_different_pieces() {
        // Many edges asking the same seed with no neighbour holding anything
        // pick at random: the first pieces differ, so edges can trade.
        let t0 = Instant::now();
        let mut firsts = std::collections::HashSet::new();
        for e in 0..20 {
            let mut p = Picker::new(PickerConfig::for_object(256, 1 << 20));
            let mut rng = ChaCha8Rng::seed_from_u64(e);
            p.add_seed(PeerId(0), MS).unwrap();
            let r = p.poll_request(PeerId(0), t0, &mut rng).unwrap();
            assert_eq!(r.reason, PickReason::Random);
            firsts.insert(r.piece);
        }
        assert!(firsts.len() >= 15, "{firsts:?}");
    }

    #[test]
    fn a_seed_is_asked_for_what_no_neighbour_has_while_neighbours_are_asked() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(4));
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        p.add_seed(PeerId(0), MS).unwrap();
        p.add_peer(PeerId(1), bits(4, &[0, 1, 2]), MS).unwrap();
        // Nobody is asked yet: the seed may take anything.
        let first = p.poll_request(PeerId(0), t0, &mut rng).unwrap();
        p.handle_failed(PeerId(0), first.piece);
        // With a neighbour busy, the seed gets only the piece no neighbour has.
        let n = p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        assert!(n.piece < 3);
        let s = p.poll_request(PeerId(0), t0, &mut rng).unwrap();
        assert_eq!(s.piece, 3);
        assert!(p.poll_request(PeerId(0), t0, &mut rng).is_none());
        // A deadline overrides it: the reader never waits for a trade.
        p.set_piece_deadline(2, t0 + MS);
        assert_eq!(p.poll_request(PeerId(0), t0, &mut rng).unwrap().piece, 2);
    }

    #[test]
    fn a_choked_request_keeps_what_the_peer_has_and_a_refused_one_forgets_it() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(2));
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        p.add_peer(PeerId(1), bits(2, &[0]), MS).unwrap();
        assert_eq!(p.poll_request(PeerId(1), t0, &mut rng).unwrap().piece, 0);
        // Choked between request and answer: still a holder, asked again.
        p.handle_choked(PeerId(1), 0);
        assert!(p.is_interesting(PeerId(1)));
        assert_eq!(p.poll_request(PeerId(1), t0, &mut rng).unwrap().piece, 0);
        // Refused outright: forgotten until it announces the piece anew.
        p.handle_failed(PeerId(1), 0);
        assert!(!p.is_interesting(PeerId(1)));
    }

    #[test]
    fn a_queued_seed_is_paced_while_neighbours_are_asked_and_an_idle_one_is_not() {
        let t0 = Instant::now();
        let mut p = Picker::new(PickerConfig {
            seed_backoff: 32,
            ..cfg(64)
        });
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        p.add_seed(PeerId(0), 2 * MS).unwrap();
        p.add_peer(PeerId(1), bits(64, &(0..32).collect::<Vec<_>>()), 2 * MS)
            .unwrap();
        // An unloaded seed (a reply in one piece time) keeps its pipeline.
        p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        let a = p.poll_request(PeerId(0), t0, &mut rng).unwrap();
        p.handle_received(PeerId(0), a.piece, 1 << 20, t0 + 10 * MS);
        assert!(p.seed_ready_at(t0).is_none());
        let t1 = t0 + 10 * MS;
        let b = p.poll_request(PeerId(0), t1, &mut rng).unwrap();
        assert!(p.poll_request(PeerId(0), t1, &mut rng).is_some(), "depth 2");
        // A reply that queued 1 s: no fresh piece from that seed for ~32 s.
        let t2 = t1 + Duration::from_secs(1);
        p.handle_received(PeerId(0), b.piece, 1 << 20, t2);
        let ready = p.seed_ready_at(t2).unwrap();
        assert!(
            ready > t2 + Duration::from_secs(30) - MS,
            "{:?}",
            ready - t2
        );
        assert!(p.poll_request(PeerId(0), t2, &mut rng).is_none());
        // A reader's deadline still goes to it.
        let free = (0..64)
            .find(|&i| !p.have().get(i) && p.requested[i as usize] == 0)
            .unwrap();
        p.set_piece_deadline(free, t2);
        assert_eq!(p.poll_request(PeerId(0), t2, &mut rng).unwrap().piece, free);
        // Past the back-off, one request at a time while the seed stays slow.
        let late = ready + Duration::from_secs(1);
        p.handle_received(PeerId(0), free, 1 << 20, t2 + 10 * MS);
        assert!(
            p.seed_ready_at(t0).is_none(),
            "a prompt reply lifts the pacing"
        );
        while p.poll_request(PeerId(0), late, &mut rng).is_some() {}
        assert_eq!(p.outstanding(PeerId(0)), 2, "its pipeline again");
    }

    #[test]
    fn a_busy_seed_is_left_alone_for_a_growing_jittered_back_off_and_a_neighbour_asked() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(4));
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        p.add_seed(PeerId(0), MS).unwrap();
        p.add_peer(PeerId(1), Bitfield::new(4), MS).unwrap();
        let a = p.poll_request(PeerId(0), t0, &mut rng).unwrap();
        p.handle_busy(PeerId(0), a.piece, t0, &mut rng);
        // Not a failure: the piece is open again, the seed keeps it.
        assert_eq!(p.outstanding(PeerId(0)), 0);
        assert!(p.is_interesting(PeerId(0)));
        let ready = p.seed_ready_at(t0).unwrap();
        let first = ready - t0;
        assert!(
            first >= 50 * MS && first < 150 * MS,
            "100 ms ± 50 %: {first:?}"
        );
        assert!(p.poll_request(PeerId(0), ready - MS, &mut rng).is_none());
        // Meanwhile a neighbour that got the piece is asked for it.
        p.handle_have(PeerId(1), a.piece);
        assert_eq!(
            p.poll_request(PeerId(1), t0, &mut rng).unwrap().piece,
            a.piece
        );
        // Busy again and again: the back-off doubles up to its cap.
        let mut now = ready;
        let mut last = first;
        for _ in 0..8 {
            let r = p.poll_request(PeerId(0), now, &mut rng).unwrap();
            p.handle_busy(PeerId(0), r.piece, now, &mut rng);
            let next = p.seed_ready_at(now).unwrap();
            last = next - now;
            now = next;
        }
        assert!(
            last >= 250 * MS && last < 750 * MS,
            "capped at 500 ms ± 50 %: {last:?}"
        );
        // A piece delivered resets it: the next busy is short again.
        let r = p.poll_request(PeerId(0), now, &mut rng).unwrap();
        p.handle_received(PeerId(0), r.piece, 1 << 20, now + MS);
        let r = p.poll_request(PeerId(0), now + MS, &mut rng).unwrap();
        p.handle_busy(PeerId(0), r.piece, now + MS, &mut rng);
        assert!(p.seed_ready_at(now + MS).unwrap() - (now + MS) < 150 * MS);
    }

    #[test]
    fn endgame_asks_twice_at_most_and_cancels_the_loser() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(2));
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for id in 1..=3 {
            p.add_seed(PeerId(id), MS).unwrap();
        }
        let a = p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        let b = p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        assert_ne!(a.piece, b.piece);
        // Everything is requested: peer 2 duplicates, peer 3 too, then no more.
        let c = p.poll_request(PeerId(2), t0, &mut rng).unwrap();
        let d = p.poll_request(PeerId(3), t0, &mut rng).unwrap();
        assert_eq!(
            (c.reason, d.reason),
            (PickReason::Endgame, PickReason::Endgame)
        );
        assert_ne!(c.piece, d.piece, "fewest requests first");
        assert!(
            p.poll_request(PeerId(2), t0, &mut rng).is_none(),
            "two copies at most"
        );
        let got = p.handle_received(PeerId(2), c.piece, 1 << 20, t0 + MS);
        assert_eq!(got.cancel, vec![PeerId(1)]);
        assert!(!p.is_complete());
        p.handle_received(PeerId(1), d.piece, 1 << 20, t0 + MS);
        assert!(p.is_complete());
        assert_eq!(p.outstanding(PeerId(3)), 0);
    }

    #[test]
    fn the_pipeline_follows_the_bandwidth_delay_product() {
        let t0 = Instant::now();
        let mut c = cfg(1000);
        c.initial_rate_bytes_per_sec = 10_000_000;
        let mut p = Picker::new(c);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        p.add_seed(PeerId(1), 100 * MS).unwrap();
        // 10 MB/s × 100 ms = 1 MB ≈ 0.95 pieces → 1 + 1.
        assert_eq!(p.pipeline(PeerId(1)), 2);
        // Replies at 100 MB/s (a 1 MiB piece every ~10 ms) grow the pipe.
        let mut t = t0;
        for _ in 0..40 {
            let r = p.poll_request(PeerId(1), t, &mut rng).unwrap();
            t += Duration::from_micros(10_486);
            p.handle_received(PeerId(1), r.piece, 1 << 20, t);
        }
        assert_eq!(
            p.pipeline(PeerId(1)),
            11,
            "100 MB/s × 100 ms = 10 MB ≈ 9.5 pieces, + 1"
        );
        let mut n = 0;
        while p.poll_request(PeerId(1), t, &mut rng).is_some() {
            n += 1;
        }
        assert_eq!(n, 11);
        // A long link is clamped.
        p.handle_rtt(PeerId(1), Duration::from_secs(10));
        assert_eq!(p.pipeline(PeerId(1)), 32);
    }

    /// `pipeline_full` is what a caller may keep between calls: true exactly
    /// when a poll would answer `None` for want of room, whatever the time.
    #[test]
    fn a_full_pipeline_is_known_without_the_clock_and_ends_with_a_request() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(100));
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        p.add_peer(PeerId(1), Bitfield::full(100), MS).unwrap();
        assert!(!p.pipeline_full(PeerId(1)));
        let depth = p.pipeline(PeerId(1));
        let sent: Vec<u32> = (0..depth)
            .map(|_| p.poll_request(PeerId(1), t0, &mut rng).unwrap().piece)
            .collect();
        assert!(p.pipeline_full(PeerId(1)));
        assert!(!p.has_room(PeerId(1), t0 + Duration::from_secs(5)));
        assert!(p.poll_request(PeerId(1), t0, &mut rng).is_none());
        // Any request that ends makes room again.
        p.handle_received(PeerId(1), sent[0], 1 << 20, t0 + MS);
        assert!(!p.pipeline_full(PeerId(1)));
        assert!(p.poll_request(PeerId(1), t0 + MS, &mut rng).is_some());
        assert!(p.pipeline_full(PeerId(1)));
        p.handle_failed(PeerId(1), sent[1]);
        assert!(!p.pipeline_full(PeerId(1)));
        // An unknown peer has no pipeline to be full.
        assert!(!p.pipeline_full(PeerId(9)));
    }

    #[test]
    fn timeouts_free_pieces_and_a_leaving_peer_frees_its_requests() {
        let t0 = Instant::now();
        let mut p = Picker::new(cfg(1));
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        p.add_peer(PeerId(1), bits(1, &[0]), MS).unwrap();
        p.add_peer(PeerId(2), bits(1, &[0]), MS).unwrap();
        p.poll_request(PeerId(1), t0, &mut rng).unwrap();
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        assert!(p.handle_timeout(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(
            p.handle_timeout(t0 + Duration::from_secs(30)),
            vec![(PeerId(1), 0)]
        );
        let r = p.poll_request(PeerId(2), t0, &mut rng).unwrap();
        assert_eq!((r.piece, r.reason), (0, PickReason::Rarest));
        p.remove_peer(PeerId(2));
        assert!(p.poll_request(PeerId(1), t0, &mut rng).is_some());
        // A refusal: that peer is not asked again for the piece.
        p.handle_failed(PeerId(1), 0);
        assert!(p.poll_request(PeerId(1), t0, &mut rng).is_none());
        assert!(!p.is_interesting(PeerId(1)));
    }

    #[test]
    fn peers_are_bounded_and_bad_input_is_harmless() {
        let mut c = cfg(4);
        c.max_peers = 2;
        let mut p = Picker::new(c);
        p.add_peer(PeerId(1), Bitfield::new(99), MS).unwrap();
        p.add_seed(PeerId(2), MS).unwrap();
        assert_eq!(p.add_seed(PeerId(3), MS), Err(PickerError::TooManyPeers(2)));
        // Out-of-range pieces and unknown peers change nothing.
        p.handle_have(PeerId(1), 1000);
        p.handle_have(PeerId(9), 1);
        p.set_piece_deadline(1000, Instant::now());
        assert!(!p.handle_received(PeerId(9), 1000, 1, Instant::now()).new);
        p.handle_failed(PeerId(9), 1000);
        assert!(!p.is_interesting(PeerId(1)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Poll(u64),
        Have(u64, u32),
        Deliver(usize),
        Fail(usize),
        Deadline(u32, u64),
        Tick(u64),
        Leave(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..6u64).prop_map(Op::Poll),
            2 => (0..6u64, 0..40u32).prop_map(|(p, i)| Op::Have(p, i)),
            4 => (0..64usize).prop_map(Op::Deliver),
            1 => (0..64usize).prop_map(Op::Fail),
            1 => (0..40u32, 0..500u64).prop_map(|(i, d)| Op::Deadline(i, d)),
            1 => (0..40_000u64).prop_map(Op::Tick),
            1 => (1..6u64).prop_map(Op::Leave),
        ]
    }

    proptest! {
        /// Whatever happens, the picker never asks for a held piece, never
        /// asks a peer for a piece it does not have, never exceeds a peer's
        /// pipeline or a piece's copy limit — and, once the churn stops, a
        /// seed alone always finishes the object (no stall).
        #[test]
        fn requests_stay_valid_and_bounded_and_the_object_always_completes(
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let n = 40;
            let t0 = Instant::now();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut c = PickerConfig::for_object(n, 1 << 20);
            c.request_timeout = Duration::from_secs(5);
            let mut p = Picker::new(c);
            p.add_seed(PeerId(0), 20 * MS).unwrap();
            for id in 1..6 {
                p.add_peer(PeerId(id), Bitfield::new(n), 5 * MS).unwrap();
            }
            let mut live: Vec<(PeerId, u32)> = Vec::new();
            let mut now = t0;
            let check = |p: &Picker, live: &[(PeerId, u32)]| {
                for i in 0..n {
                    let copies = live.iter().filter(|(_, x)| *x == i).count();
                    assert!(copies <= 2, "piece {i} asked {copies} times");
                    assert_eq!(copies, p.requested[i as usize] as usize);
                }
                let open = (0..n)
                    .filter(|&i| !p.have.get(i) && p.requested[i as usize] == 0)
                    .count();
                assert_eq!(open, p.open as usize, "the open count drifted");
                assert_eq!(p.held, p.have.count(), "the held count drifted");
                for i in 0..n {
                    assert_eq!(p.asked.get(i), p.requested[i as usize] > 0);
                    assert_eq!(p.seen.get(i), p.availability[i as usize] > 0);
                }
                let at_neighbours = live.iter().filter(|(q, _)| q.0 != 0).count();
                assert_eq!(at_neighbours, p.neighbour_requests as usize);
            };
            for o in ops {
                match o {
                    Op::Poll(id) => {
                        let peer = PeerId(id);
                        let room = p.has_room(peer, now);
                        let got = p.poll_request(peer, now, &mut rng);
                        prop_assert!(room || got.is_none(), "a poll without room asked");
                        if let Some(r) = got {
                            prop_assert!(!p.have().get(r.piece));
                            prop_assert!(p.peers.has_get(p.peers.find(&peer).unwrap(), r.piece));
                            prop_assert!(!live.contains(&(peer, r.piece)));
                            prop_assert!(p.outstanding(peer) <= p.pipeline(peer) as usize);
                            live.push((peer, r.piece));
                        }
                    }
                    Op::Have(id, i) => p.handle_have(PeerId(id), i),
                    Op::Deliver(k) if !live.is_empty() => {
                        let (peer, piece) = live.swap_remove(k % live.len());
                        now += MS;
                        let got = p.handle_received(peer, piece, 1 << 20, now);
                        live.retain(|(q, x)| !(*x == piece && got.cancel.contains(q)));
                    }
                    Op::Fail(k) if !live.is_empty() => {
                        let (peer, piece) = live.swap_remove(k % live.len());
                        p.handle_failed(peer, piece);
                    }
                    Op::Deadline(i, d) => p.set_piece_deadline(i, now + Duration::from_millis(d)),
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        for x in p.handle_timeout(now) {
                            live.retain(|y| *y != x);
                        }
                    }
                    Op::Leave(id) => {
                        p.remove_peer(PeerId(id));
                        live.retain(|(q, _)| q.0 != id);
                    }
                    _ => {}
                }
                check(&p, &live);
            }
            // Liveness: the seed answers everything from here on.
            for (peer, piece) in std::mem::take(&mut live) {
                p.handle_failed(peer, piece);
            }
            for _ in 0..(2 * n) {
                now += MS;
                let Some(r) = p.poll_request(PeerId(0), now, &mut rng) else { break };
                p.handle_received(PeerId(0), r.piece, 1 << 20, now);
            }
            prop_assert!(p.is_complete(), "held {} of {n}", p.have().count());
        }
    }

    proptest! {
        /// A `Have` of a piece this node already holds changes no pick,
        /// cancel, timeout or wake-up time: the simulator skips those
        /// (half the `Have`s of a burst, each another edge's picker) and
        /// counts on this. Two pickers see the same run, one without the
        /// `Have`s of held pieces, and must answer every call the same.
        #[test]
        fn haves_of_held_pieces_change_no_pick(
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..400),
        ) {
            let n = 40;
            let t0 = Instant::now();
            let mut rng_a = ChaCha8Rng::seed_from_u64(seed);
            let mut rng_b = ChaCha8Rng::seed_from_u64(seed);
            let mut c = PickerConfig::for_object(n, 1 << 20);
            c.request_timeout = Duration::from_secs(5);
            c.random_first = 2;
            let mut a = Picker::new(c);
            let mut b = Picker::new(c);
            for p in [&mut a, &mut b] {
                p.add_seed_of(PeerId(0), upstream_stripe(n, 0, 1), 20 * MS).unwrap();
                for id in 1..6 {
                    p.add_peer(PeerId(id), Bitfield::new(n), 5 * MS).unwrap();
                }
            }
            let mut live: Vec<(PeerId, u32)> = Vec::new();
            let mut now = t0;
            let mut skipped = 0;
            for o in ops {
                match o {
                    Op::Poll(id) => {
                        let ra = a.poll_request(PeerId(id), now, &mut rng_a);
                        let rb = b.poll_request(PeerId(id), now, &mut rng_b);
                        prop_assert_eq!(ra, rb);
                        if let Some(r) = ra {
                            live.push((PeerId(id), r.piece));
                        }
                    }
                    Op::Have(id, i) => {
                        a.handle_have(PeerId(id), i);
                        if b.have().get(i) {
                            skipped += 1;
                        } else {
                            b.handle_have(PeerId(id), i);
                        }
                    }
                    Op::Deliver(k) if !live.is_empty() => {
                        let (peer, piece) = live.swap_remove(k % live.len());
                        now += MS;
                        let ga = a.handle_received(peer, piece, 1 << 20, now);
                        let gb = b.handle_received(peer, piece, 1 << 20, now);
                        prop_assert_eq!(&ga, &gb);
                        live.retain(|(q, x)| !(*x == piece && ga.cancel.contains(q)));
                    }
                    Op::Fail(k) if !live.is_empty() => {
                        // Refused, busy or choked, by turns.
                        let (peer, piece) = live.swap_remove(k % live.len());
                        refuse(&mut a, &mut rng_a, peer, piece, k, now);
                        refuse(&mut b, &mut rng_b, peer, piece, k, now);
                    }
                    Op::Deadline(i, d) => {
                        let at = now + Duration::from_millis(d);
                        a.set_piece_deadline(i, at);
                        b.set_piece_deadline(i, at);
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        let ea = a.handle_timeout(now);
                        prop_assert_eq!(&ea, &b.handle_timeout(now));
                        for x in ea {
                            live.retain(|y| *y != x);
                        }
                    }
                    Op::Leave(id) => {
                        a.remove_peer(PeerId(id));
                        b.remove_peer(PeerId(id));
                        live.retain(|(q, _)| q.0 != id);
                    }
                    _ => {}
                }
                prop_assert_eq!(a.seed_ready_at(now), b.seed_ready_at(now));
                prop_assert_eq!(a.poll_timeout(), b.poll_timeout());
                // The kept timers are what a walk over every peer finds.
                let walked_timeout = a
                    .peers
                    .values()
                    .flat_map(|q| q.requests.iter().map(|r| r.sent))
                    .min()
                    .map(|t| t + a.config.request_timeout);
                prop_assert_eq!(a.poll_timeout(), walked_timeout);
                let walked_ready = a
                    .peers
                    .values()
                    .flat_map(|q| [q.not_before.filter(|_| q.seed), q.busy_until])
                    .flatten()
                    .filter(|&t| t > now)
                    .min();
                prop_assert_eq!(a.seed_ready_at(now), walked_ready);
                prop_assert_eq!(a.held, a.have.count());
                prop_assert_eq!(a.is_complete(), b.is_complete());
                for id in 0..6 {
                    prop_assert_eq!(a.outstanding(PeerId(id)), b.outstanding(PeerId(id)));
                    prop_assert_eq!(a.pipeline(PeerId(id)), b.pipeline(PeerId(id)));
                }
            }
            let _ = skipped;
        }
    }

    /// A poll answered from a peer's dry bit is the poll a full scan would
    /// have answered, and draws the same randomness: two pickers see the
    /// same run, one with dry bits off, and must answer every call the
    /// same. Runs of every kind (churn, failures, seeds capped and paced,
    /// deadlines now and then), and the bits must actually have answered
    /// many polls, or the test proves nothing.
    #[test]
    fn dry_polls_answer_as_full_polls() {
        let n = 130;
        let mut dry_answers = 0usize;
        for seed in 0..300u64 {
            let mut ops = ChaCha8Rng::seed_from_u64(seed);
            let mut rng_a = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
            let mut rng_b = rng_a.clone();
            let mut c = PickerConfig::for_object(n, 1 << 20);
            c.request_timeout = Duration::from_secs(5);
            c.random_first = (seed % 5) as u32;
            c.seed_backoff = if seed % 2 == 0 { 0 } else { 4 };
            c.seed_max_availability = (seed % 3) as u16;
            let mut a = Picker::new(c);
            let mut b = Picker::new(c);
            b.use_dry = false;
            for p in [&mut a, &mut b] {
                p.add_seed_of(PeerId(0), upstream_stripe(n, 0, 2), 20 * MS)
                    .unwrap();
                p.add_seed_of(PeerId(1), upstream_stripe(n, 1, 2), 20 * MS)
                    .unwrap();
                for id in 2..9 {
                    p.add_peer(PeerId(id), Bitfield::new(n), 5 * MS).unwrap();
                }
            }
            let t0 = Instant::now();
            let mut now = t0;
            let mut live: Vec<(PeerId, u32)> = Vec::new();
            for _ in 0..600 {
                match ops.gen_range(0..100) {
                    0..40 => {
                        let id = PeerId(ops.gen_range(0..9));
                        if a.peers.find(&id).is_ok_and(|i| a.is_dry(i)) {
                            dry_answers += 1;
                        }
                        let ra = a.poll_request(id, now, &mut rng_a);
                        let rb = b.poll_request(id, now, &mut rng_b);
                        assert_eq!(ra, rb, "seed {seed}: poll of {id:?}");
                        if let Some(r) = ra {
                            live.push((id, r.piece));
                        }
                    }
                    40..65 => {
                        let (id, i) = (PeerId(ops.gen_range(2..9)), ops.gen_range(0..n));
                        a.handle_have(id, i);
                        b.handle_have(id, i);
                    }
                    65..85 if !live.is_empty() => {
                        let (peer, piece) = live.swap_remove(ops.gen_range(0..live.len()));
                        now += MS;
                        let ga = a.handle_received(peer, piece, 1 << 20, now);
                        assert_eq!(ga, b.handle_received(peer, piece, 1 << 20, now));
                        live.retain(|(q, x)| !(*x == piece && ga.cancel.contains(q)));
                    }
                    85..91 if !live.is_empty() => {
                        let (peer, piece) = live.swap_remove(ops.gen_range(0..live.len()));
                        let kind = ops.gen_range(0..3);
                        refuse(&mut a, &mut rng_a, peer, piece, kind, now);
                        refuse(&mut b, &mut rng_b, peer, piece, kind, now);
                    }
                    91..95 => {
                        now += Duration::from_millis(ops.gen_range(0..8000));
                        let ea = a.handle_timeout(now);
                        assert_eq!(ea, b.handle_timeout(now));
                        live.retain(|y| !ea.contains(y));
                    }
                    95..97 => {
                        let id = PeerId(ops.gen_range(2..9));
                        a.remove_peer(id);
                        b.remove_peer(id);
                        live.retain(|(q, _)| *q != id);
                        let has = Bitfield::new(n);
                        a.add_peer(id, has.clone(), 5 * MS).unwrap();
                        b.add_peer(id, has, 5 * MS).unwrap();
                    }
                    97 => {
                        let i = ops.gen_range(0..n);
                        let at = now + Duration::from_millis(ops.gen_range(0..500));
                        a.set_piece_deadline(i, at);
                        b.set_piece_deadline(i, at);
                    }
                    98 => {
                        let i = ops.gen_range(0..n);
                        a.reset_piece_deadline(i);
                        b.reset_piece_deadline(i);
                    }
                    _ => {
                        let i = ops.gen_range(0..n);
                        a.mark_lost(i);
                        b.mark_lost(i);
                    }
                }
                assert_eq!(a.is_complete(), b.is_complete());
            }
        }
        assert!(
            dry_answers > 1_000,
            "dry bits answered only {dry_answers} polls"
        );
    }

    /// The one way a seed gets fresh pieces with nothing else changing:
    /// the last neighbour request ends (a piece received, so nothing
    /// reopens) and its availability cap is lifted. Its dry bit must go.
    #[test]
    fn a_seed_whose_cap_is_lifted_is_polled_afresh() {
        let now = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut p = Picker::new(PickerConfig::for_object(2, 1 << 20));
        p.add_seed(PeerId(0), 20 * MS).unwrap();
        p.add_peer(PeerId(1), Bitfield::full(2), 5 * MS).unwrap();
        let first = p.poll_request(PeerId(1), now, &mut rng).unwrap().piece;
        // Capped at "seen by no neighbour": nothing for the seed.
        assert_eq!(p.poll_request(PeerId(0), now, &mut rng), None);
        p.handle_received(PeerId(1), first, 1 << 20, now + MS);
        let got = p.poll_request(PeerId(0), now + MS, &mut rng);
        assert_eq!(got.map(|r| r.piece), Some(1 - first));
    }
}
