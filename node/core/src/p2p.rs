//! Edge-to-edge trading: BitTorrent's tit-for-tat choker, and (in
//! [`picker`]) which piece to ask which peer for.
//!
//! Every unchoke interval the [`Choker`] ranks the interested peers by what
//! they gave this node over a sliding window (or, once this node has nothing
//! left to fetch, by what they took), unchokes the best
//! `regular_unchoke_count`, and gives `optimistic_unchoke_count` more slots to
//! peers picked at random among the rest — rotated every third interval,
//! newcomers first — so a new or better partner can prove itself. Banned peers
//! are never unchoked. The upload budget is split evenly among unchoked
//! peers: who gets a slot is already the reciprocity decision, and an even
//! split does not amplify the noise of short-window rate estimates.
//!
//! Sans-I/O: time and randomness are arguments, and the caller turns the
//! returned [`ChokeChange`]s into `Choke`/`Unchoke` frames.

pub mod admission;
pub mod picker;

use crate::chunk::PeerId;
use rand::Rng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Choker settings (from the `p2p` config section).
#[derive(Debug, Clone, Copy)]
pub struct ChokerConfig {
    pub regular_unchoke_count: usize,
    pub optimistic_unchoke_count: usize,
    /// Upload budget split among unchoked peers, bytes/s.
    pub max_upload_bytes_per_sec: u64,
    /// Window over which rates are measured.
    pub rate_window: Duration,
    /// Optimistic slots rotate every this many ticks.
    pub optimistic_rotation_ticks: u64,
    /// Most peers tracked.
    pub max_peers: usize,
}

impl Default for ChokerConfig {
    fn default() -> Self {
        Self {
            regular_unchoke_count: 4,
            optimistic_unchoke_count: 1,
            max_upload_bytes_per_sec: 125_000_000,
            rate_window: Duration::from_secs(20),
            optimistic_rotation_ticks: 3,
            max_peers: 1024,
        }
    }
}

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChokerError {
    #[error("already tracking the maximum of {0} peers")]
    TooManyPeers(usize),
}

/// A change the caller must tell a peer about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChokeChange {
    pub peer: PeerId,
    pub unchoked: bool,
}

/// Bytes per time bucket over a sliding window.
///
/// The bucket being filled is kept in the record itself: a piece sent or
/// received touches only it, not a deque's buffer elsewhere on the heap (a
/// 10,000-edge simulation records every piece, each record a cache miss).
#[derive(Debug, Clone, Default)]
struct RateWindow {
    /// Closed buckets, oldest first, all older than `current`.
    buckets: VecDeque<(Instant, u64)>,
    current: Option<(Instant, u64)>,
    total: u64,
}

const BUCKET: Duration = Duration::from_secs(1);

impl RateWindow {
    fn record(&mut self, bytes: u64, now: Instant) {
        self.total += bytes;
        match &mut self.current {
            Some((start, n)) if now.saturating_duration_since(*start) < BUCKET => *n += bytes,
            cur => {
                if let Some(closed) = cur.replace((now, bytes)) {
                    self.buckets.push_back(closed);
                }
            }
        }
    }

    fn rate(&mut self, now: Instant, window: Duration) -> f64 {
        let expired = |start: Instant| now.saturating_duration_since(start) > window;
        while self
            .buckets
            .front()
            .is_some_and(|&(start, _)| expired(start))
        {
            self.buckets.pop_front();
        }
        if self.buckets.is_empty() && self.current.is_some_and(|(start, _)| expired(start)) {
            self.current = None;
        }
        let bytes: u64 = self
            .buckets
            .iter()
            .chain(self.current.iter())
            .map(|(_, n)| n)
            .sum();
        bytes as f64 / window.as_secs_f64().max(1e-3)
    }
}

/// The choker's peers, sorted by id: a few dozen, so a binary search over
/// a vector of ids beats walking a B-tree's nodes (a lookup on every piece
/// sent or received), and iteration is in id order as a `BTreeMap`'s was.
#[derive(Debug, Default)]
struct PeerMap {
    ids: Vec<PeerId>,
    states: Vec<PeerState>,
}

impl PeerMap {
    fn find(&self, id: &PeerId) -> Result<usize, usize> {
        self.ids.binary_search(id)
    }
    fn contains_key(&self, id: &PeerId) -> bool {
        self.find(id).is_ok()
    }
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    fn insert(&mut self, id: PeerId, state: PeerState) {
        match self.find(&id) {
            Ok(i) => self.states[i] = state,
            Err(i) => {
                self.ids.insert(i, id);
                self.states.insert(i, state);
            }
        }
    }
    fn remove(&mut self, id: &PeerId) {
        if let Ok(i) = self.find(id) {
            self.ids.remove(i);
            self.states.remove(i);
        }
    }
    fn get(&self, id: &PeerId) -> Option<&PeerState> {
        self.find(id).ok().map(|i| &self.states[i])
    }
    fn get_mut(&mut self, id: &PeerId) -> Option<&mut PeerState> {
        self.find(id).ok().map(|i| &mut self.states[i])
    }
    fn keys(&self) -> impl Iterator<Item = &PeerId> {
        self.ids.iter()
    }
    fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.ids.iter().zip(self.states.iter())
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = (&PeerId, &mut PeerState)> {
        self.ids.iter().zip(self.states.iter_mut())
    }
}

impl std::ops::Index<&PeerId> for PeerMap {
    type Output = PeerState;
    fn index(&self, id: &PeerId) -> &PeerState {
        match self.get(id) {
            Some(p) => p,
            None => panic!("no peer {id:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct PeerState {
    interested: bool,
    banned: bool,
    down: RateWindow,
    up: RateWindow,
    unchoked: bool,
    optimistic: bool,
    /// Times this peer held an optimistic slot; newcomers go first.
    optimistic_turns: u32,
}

/// A snapshot of one peer for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub peer: PeerId,
    pub downloaded: u64,
    pub uploaded: u64,
    pub download_rate: f64,
    pub upload_rate: f64,
    pub interested: bool,
    pub unchoked: bool,
    pub optimistic: bool,
    pub banned: bool,
}

/// The tit-for-tat choker.
#[derive(Debug)]
pub struct Choker {
    config: ChokerConfig,
    /// By id: a few dozen peers, looked up on every piece sent or received
    /// (rates) and asked `is_unchoked`; ordered search costs less than
    /// SipHash here, and iteration is deterministic (every result was
    /// already sorted, so no outcome depends on it).
    peers: PeerMap,
    seeding: bool,
    ticks: u64,
}

impl Choker {
    pub fn new(config: ChokerConfig) -> Self {
        Self {
            config,
            peers: PeerMap::default(),
            seeding: false,
            ticks: 0,
        }
    }

    pub fn add_peer(&mut self, peer: PeerId, _now: Instant) -> Result<(), ChokerError> {
        if self.peers.contains_key(&peer) {
            return Ok(());
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(ChokerError::TooManyPeers(self.config.max_peers));
        }
        self.peers.insert(
            peer,
            PeerState {
                interested: false,
                banned: false,
                down: RateWindow::default(),
                up: RateWindow::default(),
                unchoked: false,
                optimistic: false,
                optimistic_turns: 0,
            },
        );
        Ok(())
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    pub fn set_interested(&mut self, peer: PeerId, interested: bool) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.interested = interested;
        }
    }

    /// Marks a peer banned (it is choked at once) or forgiven.
    pub fn set_banned(&mut self, peer: PeerId, banned: bool) -> Option<ChokeChange> {
        let p = self.peers.get_mut(&peer)?;
        p.banned = banned;
        if banned && p.unchoked {
            p.unchoked = false;
            p.optimistic = false;
            return Some(ChokeChange {
                peer,
                unchoked: false,
            });
        }
        None
    }

    /// This node has everything it wants: rank by upload instead.
    pub fn set_seeding(&mut self, seeding: bool) {
        self.seeding = seeding;
    }

    pub fn record_downloaded(&mut self, peer: PeerId, bytes: u64, now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.down.record(bytes, now);
        }
    }

    pub fn record_uploaded(&mut self, peer: PeerId, bytes: u64, now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.up.record(bytes, now);
        }
    }

    pub fn is_unchoked(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.unchoked)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Re-ranks peers; returns who must be told they are (un)choked.
    pub fn handle_tick<R: Rng>(&mut self, now: Instant, rng: &mut R) -> Vec<ChokeChange> {
        let window = self.config.rate_window;
        let seeding = self.seeding;
        let mut ranked: Vec<(f64, PeerId)> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.interested && !p.banned)
            .map(|(id, p)| {
                let rate = if seeding {
                    p.up.rate(now, window)
                } else {
                    p.down.rate(now, window)
                };
                (rate, *id)
            })
            .collect();
        // Best first; ties broken by id so the result is deterministic.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let regular: Vec<PeerId> = ranked
            .iter()
            .filter(|(rate, _)| *rate > 0.0)
            .take(self.config.regular_unchoke_count)
            .map(|(_, id)| *id)
            .collect();

        let rotate = self.ticks % self.config.optimistic_rotation_ticks.max(1) == 0;
        self.ticks += 1;
        let mut optimistic: Vec<PeerId> = if rotate {
            Vec::new()
        } else {
            // Keep current optimistic picks that are still eligible.
            ranked
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| !regular.contains(id) && self.peers[id].optimistic)
                .collect()
        };
        let mut pool: Vec<PeerId> = ranked
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !regular.contains(id) && !optimistic.contains(id))
            .collect();
        while optimistic.len() < self.config.optimistic_unchoke_count && !pool.is_empty() {
            let fewest = pool
                .iter()
                .map(|id| self.peers[id].optimistic_turns)
                .min()
                .unwrap_or(0);
            let newcomers: Vec<usize> = (0..pool.len())
                .filter(|&i| self.peers[&pool[i]].optimistic_turns == fewest)
                .collect();
            let pick = newcomers[rng.gen_range(0..newcomers.len())];
            let id = pool.swap_remove(pick);
            if let Some(p) = self.peers.get_mut(&id) {
                p.optimistic_turns += 1;
            }
            optimistic.push(id);
        }

        let mut changes = Vec::new();
        let mut ids: Vec<PeerId> = self.peers.keys().copied().collect();
        ids.sort();
        for id in ids {
            let want_regular = regular.contains(&id);
            let want_optimistic = optimistic.contains(&id);
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let unchoke = want_regular || want_optimistic;
            p.optimistic = want_optimistic;
            if p.unchoked != unchoke {
                p.unchoked = unchoke;
                changes.push(ChokeChange {
                    peer: id,
                    unchoked: unchoke,
                });
            }
        }
        changes
    }

    /// Upload budget per unchoked peer, bytes/s.
    pub fn allocation(&self) -> Vec<(PeerId, u64)> {
        let mut unchoked: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.unchoked)
            .map(|(id, _)| *id)
            .collect();
        unchoked.sort();
        if unchoked.is_empty() {
            return Vec::new();
        }
        let n = unchoked.len() as u64;
        let share = self.config.max_upload_bytes_per_sec / n;
        let extra = self.config.max_upload_bytes_per_sec % n;
        unchoked
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, share + u64::from((i as u64) < extra)))
            .collect()
    }

    /// Per-peer statistics.
    pub fn stats(&mut self, now: Instant) -> Vec<PeerStats> {
        let window = self.config.rate_window;
        let mut out: Vec<PeerStats> = self
            .peers
            .iter_mut()
            .map(|(id, p)| PeerStats {
                peer: *id,
                downloaded: p.down.total,
                uploaded: p.up.total,
                download_rate: p.down.rate(now, window),
                upload_rate: p.up.rate(now, window),
                interested: p.interested,
                unchoked: p.unchoked,
                optimistic: p.optimistic,
                banned: p.banned,
            })
            .collect();
        out.sort_by_key(|s| s.peer);
        out
    }
}

/// How a requester sees one peer that might serve a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Another edge: worth asking only if it announced the chunk and
    /// unchoked us.
    Edge { has: bool, unchoked_us: bool },
    /// A node of the tier above (relay or origin): always has it or fetches it.
    Upstream,
    /// Anyone else (a downstream node): never asked.
    Other,
    /// A peer serving a ban (its connection may not be closed yet): never
    /// asked, whatever it is.
    Banned,
}

/// The order in which to ask peers for chunk `seq`: edges that have it and
/// unchoked us first, in the order given (they are the cheap source, and only
/// an edge trades with edges), then the upstreams, rotated by `seq` so
/// different chunks start at different upstreams and their load spreads.
/// The node's fetch path and the simulator both ask in this order.
pub fn request_order<T>(
    seq: u64,
    requester_is_edge: bool,
    candidates: impl IntoIterator<Item = (T, SourceKind)>,
) -> Vec<T> {
    let mut edges = Vec::new();
    let mut upstream = Vec::new();
    for (peer, kind) in candidates {
        match kind {
            SourceKind::Edge {
                has: true,
                unchoked_us: true,
            } if requester_is_edge => edges.push(peer),
            SourceKind::Upstream => upstream.push(peer),
            _ => {}
        }
    }
    if !upstream.is_empty() {
        let r = picker::upstream_share(seq, upstream.len());
        upstream.rotate_left(r);
    }
    edges.append(&mut upstream);
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn choker(regular: usize, optimistic: usize) -> Choker {
        Choker::new(ChokerConfig {
            regular_unchoke_count: regular,
            optimistic_unchoke_count: optimistic,
            max_upload_bytes_per_sec: 1000,
            rate_window: Duration::from_secs(20),
            optimistic_rotation_ticks: 3,
            max_peers: 16,
        })
    }

    fn peers(c: &mut Choker, n: u64, t: Instant) {
        for i in 0..n {
            c.add_peer(PeerId(i), t).unwrap();
            c.set_interested(PeerId(i), true);
        }
    }

    #[test]
    fn reciprocating_peers_win_regular_slots() {
        let mut c = choker(2, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t = Instant::now();
        peers(&mut c, 5, t);
        c.record_downloaded(PeerId(3), 5000, t);
        c.record_downloaded(PeerId(1), 3000, t);
        c.record_downloaded(PeerId(4), 10, t);
        c.handle_tick(t, &mut rng);
        assert!(c.is_unchoked(PeerId(3)) && c.is_unchoked(PeerId(1)));
        assert!(!c.is_unchoked(PeerId(4)) && !c.is_unchoked(PeerId(0)));
    }

    #[test]
    fn a_free_rider_gets_only_optimistic_slots() {
        let mut c = choker(2, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let t0 = Instant::now();
        peers(&mut c, 4, t0);
        let rider = PeerId(3);
        let mut regular_turns = 0;
        let mut optimistic_turns = 0;
        for tick in 0..30u64 {
            let t = t0 + Duration::from_secs(10 * tick);
            for giver in 0..3 {
                c.record_downloaded(PeerId(giver), 1000 * (giver + 1), t);
            }
            c.record_uploaded(rider, 50_000, t);
            c.handle_tick(t, &mut rng);
            let s = c.stats(t);
            let r = s.iter().find(|s| s.peer == rider).unwrap();
            if r.unchoked && !r.optimistic {
                regular_turns += 1;
            }
            if r.optimistic {
                optimistic_turns += 1;
            }
        }
        assert_eq!(regular_turns, 0);
        assert!(
            optimistic_turns > 0,
            "the rider still gets a turn now and then"
        );
        assert!(optimistic_turns < 30);
    }

    /// The bucket being filled lives apart from the closed ones: a rate
    /// still counts it, and drops it, and every closed one, once expired.
    #[test]
    fn a_rate_window_counts_its_buckets_until_each_expires() {
        let t0 = Instant::now();
        let window = Duration::from_secs(20);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RateWindow::default();
        w.record(100, at(0));
        w.record(100, at(500));
        w.record(50, at(1_500));
        assert_eq!(w.rate(at(2_000), window), 250.0 / 20.0);
        // The first bucket (from 0 ms) is past the window; the one from
        // 1,500 ms, still being filled, is not.
        assert_eq!(w.rate(at(21_000), window), 50.0 / 20.0);
        assert_eq!(w.rate(at(22_000), window), 0.0);
        w.record(10, at(22_000));
        w.record(10, at(22_999));
        assert_eq!(w.rate(at(23_000), window), 20.0 / 20.0);
        assert_eq!(w.total, 270);
    }

    #[test]
    fn a_peer_that_stops_giving_or_is_banned_loses_its_slot() {
        let mut c = choker(1, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let t0 = Instant::now();
        peers(&mut c, 3, t0);
        c.record_downloaded(PeerId(0), 10_000, t0);
        c.record_downloaded(PeerId(1), 1_000, t0);
        c.handle_tick(t0, &mut rng);
        assert!(c.is_unchoked(PeerId(0)));
        // Peer 0 goes quiet; after the window only peer 1's recent giving counts.
        let t1 = t0 + Duration::from_secs(30);
        c.record_downloaded(PeerId(1), 1_000, t1);
        let changes = c.handle_tick(t1, &mut rng);
        assert!(!c.is_unchoked(PeerId(0)) && c.is_unchoked(PeerId(1)));
        assert!(changes.contains(&ChokeChange {
            peer: PeerId(0),
            unchoked: false
        }));
        // Banned: choked at once and never unchoked again.
        assert_eq!(
            c.set_banned(PeerId(1), true),
            Some(ChokeChange {
                peer: PeerId(1),
                unchoked: false
            })
        );
        c.record_downloaded(PeerId(1), 1_000_000, t1);
        c.handle_tick(t1, &mut rng);
        assert!(!c.is_unchoked(PeerId(1)));
    }

    #[test]
    fn optimistic_slot_rotates_through_every_interested_peer() {
        let mut c = choker(0, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let t0 = Instant::now();
        peers(&mut c, 5, t0);
        let mut seen = std::collections::HashSet::new();
        for tick in 0..15u64 {
            c.handle_tick(t0 + Duration::from_secs(tick), &mut rng);
            for s in c.stats(t0) {
                if s.optimistic {
                    seen.insert(s.peer);
                }
            }
        }
        assert_eq!(seen.len(), 5, "newcomers first means everyone gets a turn");
    }

    #[test]
    fn seeding_ranks_by_upload() {
        let mut c = choker(1, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let t = Instant::now();
        peers(&mut c, 2, t);
        c.record_downloaded(PeerId(0), 9_000, t);
        c.record_uploaded(PeerId(1), 9_000, t);
        c.set_seeding(true);
        c.handle_tick(t, &mut rng);
        assert!(c.is_unchoked(PeerId(1)) && !c.is_unchoked(PeerId(0)));
    }

    #[test]
    fn allocation_splits_the_budget_among_unchoked_peers_only() {
        let mut c = choker(3, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let t = Instant::now();
        peers(&mut c, 5, t);
        for i in 0..3 {
            c.record_downloaded(PeerId(i), 100, t);
        }
        c.handle_tick(t, &mut rng);
        let a = c.allocation();
        assert_eq!(a.len(), 3);
        assert_eq!(a.iter().map(|(_, b)| b).sum::<u64>(), 1000);
        assert!(a.iter().all(|(p, _)| c.is_unchoked(*p)));
    }

    #[test]
    fn uninterested_peers_stay_choked_and_peers_are_bounded() {
        let mut c = choker(4, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let t = Instant::now();
        c.add_peer(PeerId(1), t).unwrap();
        c.record_downloaded(PeerId(1), 100, t);
        c.handle_tick(t, &mut rng);
        assert!(!c.is_unchoked(PeerId(1)));
        for i in 2..=16 {
            c.add_peer(PeerId(i), t).unwrap();
        }
        assert_eq!(
            c.add_peer(PeerId(99), t),
            Err(ChokerError::TooManyPeers(16))
        );
    }

    #[test]
    fn request_order_puts_unchoking_holders_first_then_rotates_upstreams() {
        let edge = |has, unchoked_us| SourceKind::Edge { has, unchoked_us };
        let cands = vec![
            (1, SourceKind::Upstream),
            (2, edge(true, false)),
            (3, edge(true, true)),
            (4, SourceKind::Upstream),
            (5, edge(false, true)),
            (6, SourceKind::Other),
        ];
        assert_eq!(request_order(0, true, cands.clone()), vec![3, 1, 4]);
        assert_eq!(request_order(1, true, cands.clone()), vec![3, 4, 1]);
        // A relay never asks edges.
        assert_eq!(request_order(0, false, cands.clone()), vec![1, 4]);
        // A banned peer is never asked, edge or upstream.
        let mut banned = cands;
        banned[2].1 = SourceKind::Banned;
        banned[3].1 = SourceKind::Banned;
        assert_eq!(request_order(0, true, banned), vec![1]);
    }
}
