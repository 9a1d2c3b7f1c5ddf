//! The chunk store: verified chunks in memory under a byte budget, with TTL
//! expiry, oldest-first eviction and O(1) concurrent lookup.
//!
//! The index is split into shards by chunk-id hash, each behind its own
//! mutex, so two threads rarely meet on a lock. Eviction is oldest-first
//! **globally**: every insert takes a ticket from one counter, each shard
//! keeps its entries in ticket order, and eviction removes the smallest
//! ticket among the shard heads — so no chunk is evicted while an older one
//! is kept. The byte budget is reserved (an atomic compare-and-swap) before
//! an entry is published, so the budget is never exceeded, even for an
//! instant. Statistics live inside the shards (no shared counter for two
//! threads to fight over) and are summed on demand.
//!
//! Memory overhead per chunk beyond the bytes it stores (`stored_len`), at
//! most ~105 bytes requested from the allocator at every size (plus glibc's
//! ~16-byte header on the boxed entry), measured by
//! `node/tests/store_overhead.rs` with a counting allocator every 2,500
//! chunks up to 300,000; the seed's design said ~300 B. The per-chunk
//! bookkeeping is the boxed entry (~60 B beyond the header and signature), one
//! 9-byte hash-table slot (the entry's own id is the key, so a slot is a
//! pointer and a control byte) and one 24-byte queue record. The worst case
//! is just past a hash-table resize, when the table is 7/16 full: ~21 B per
//! chunk for the table. The queue grows by fixed blocks instead of doubling,
//! so it never holds more than one spare block.
//!
//! The store holds only what callers verified; it does no verification.

use crate::chunk::{Chunk, ChunkId, StreamId};
use parking_lot::Mutex;
use std::borrow::Borrow;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Store limits.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Total bytes (`Chunk::stored_len`) the store may hold.
    pub budget_bytes: usize,
    /// How long a chunk stays after it was inserted.
    pub ttl: Duration,
}

/// Why an insert failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {id} needs {size} bytes, more than the whole store budget of {budget}")]
    TooLarge {
        id: ChunkId,
        size: usize,
        budget: usize,
    },
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    AlreadyPresent,
}

/// Counters and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub chunks: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
}

impl StoreStats {
    /// Hits over lookups, 0 when nothing was looked up.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

struct Entry {
    chunk: Chunk,
    ticket: u64,
    inserted: Instant,
}

/// A hash-table slot: the boxed entry, keyed by its own chunk's id. Keeping
/// the id only inside the entry makes a slot 8 bytes (a `HashMap` from id to
/// box would take 24), which matters most just after the table doubles, when
/// more than half its slots are spare.
struct Slot(Box<Entry>);

impl std::ops::Deref for Slot {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.0
    }
}

impl Borrow<ChunkId> for Slot {
    fn borrow(&self) -> &ChunkId {
        &self.0.chunk.header.id
    }
}

// Hash and equality are the id's, as `Borrow` requires.
impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.chunk.header.id.hash(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.0.chunk.header.id == other.0.chunk.header.id
    }
}

impl Eq for Slot {}

/// Records per queue block: 512 × 24 B = 12 KiB, small next to a shard of
/// thousands of chunks, large enough that block pointers cost nothing.
const QUEUE_BLOCK: usize = 512;

/// A FIFO that grows one fixed block at a time. A `VecDeque` doubles, so
/// just past a resize it holds one spare record per live one (24 B per
/// chunk); this one holds at most one partly used block per end.
struct BlockQueue<T> {
    blocks: VecDeque<VecDeque<T>>,
    len: usize,
}

// Not derived: the derive would ask `T: Default`.
impl<T> Default for BlockQueue<T> {
    fn default() -> Self {
        Self {
            blocks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> BlockQueue<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push_back(&mut self, value: T) {
        match self.blocks.back_mut() {
            Some(b) if b.len() < QUEUE_BLOCK => b.push_back(value),
            _ => {
                let mut b = VecDeque::with_capacity(QUEUE_BLOCK);
                b.push_back(value);
                self.blocks.push_back(b);
            }
        }
        self.len += 1;
    }

    fn front(&self) -> Option<&T> {
        self.blocks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) -> Option<T> {
        let front = self.blocks.front_mut()?;
        let value = front.pop_front();
        if front.is_empty() {
            self.blocks.pop_front();
        }
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    /// Keeps the records `keep` accepts, in order, and repacks them into
    /// full blocks so a sparse queue gives its memory back.
    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let old = std::mem::take(self);
        for value in old.blocks.into_iter().flatten() {
            if keep(&value) {
                self.push_back(value);
            }
        }
    }
}

#[derive(Default)]
struct Shard {
    map: HashSet<Slot, IdHasher>,
    /// (ticket, id) in insertion order; entries whose ticket no longer
    /// matches the map are stale and skipped.
    fifo: BlockQueue<(u64, ChunkId)>,
    hits: u64,
    misses: u64,
    inserts: u64,
    evictions: u64,
    expirations: u64,
}

/// Chunk ids are already well mixed in their stream half (a BLAKE3 prefix);
/// a cheap multiply-mix of both halves beats SipHash for this key.
#[derive(Clone, Copy, Default)]
struct IdHasher;

impl BuildHasher for IdHasher {
    type Hasher = IdHash;
    fn build_hasher(&self) -> IdHash {
        IdHash(0)
    }
}

struct IdHash(u64);

impl Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The shard takes bits 32..36 of the hash: the shard's table uses the low
/// bits for the bucket and the top 7 as each slot's tag byte. Sharding on
/// the top bits (as this once did) left every id in a shard with the same 4
/// of its 7 tag bits, so 1 in 8 slots looked like a match and each false
/// match cost a pointer chase into a boxed entry.
fn shard_of(id: &ChunkId) -> usize {
    let mut h = IdHash(0);
    id.hash(&mut h);
    (h.finish() >> 32) as usize % SHARDS
}

/// The chunk store.
pub struct ChunkStore {
    config: StoreConfig,
    shards: Vec<Mutex<Shard>>,
    bytes: AtomicUsize,
    chunks: AtomicUsize,
    tickets: AtomicU64,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ChunkStore {
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            bytes: AtomicUsize::new(0),
            chunks: AtomicUsize::new(0),
            tickets: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &ChunkId) -> &Mutex<Shard> {
        &self.shards[shard_of(id)]
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.inserted) >= self.config.ttl
    }

    /// Inserts a verified chunk, evicting the oldest chunks if needed.
    pub fn insert(&self, chunk: Chunk, now: Instant) -> Result<Inserted, StoreError> {
        let id = chunk.id();
        let size = chunk.stored_len();
        if size > self.config.budget_bytes {
            return Err(StoreError::TooLarge {
                id,
                size,
                budget: self.config.budget_bytes,
            });
        }
        {
            let shard = self.shard(&id).lock();
            if shard.map.get(&id).is_some_and(|e| !self.expired(e, now)) {
                return Ok(Inserted::AlreadyPresent);
            }
        }
        self.reserve(size);
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&id).lock();
        let replaced = shard.map.replace(Slot(Box::new(Entry {
            chunk,
            ticket,
            inserted: now,
        })));
        shard.fifo.push_back((ticket, id));
        shard.inserts += 1;
        match replaced {
            // Another thread inserted the same id meanwhile, or an expired
            // copy was still there: give back its bytes.
            Some(old) => self.release(old.chunk.stored_len(), false),
            None => {
                self.chunks.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Inserted::New)
    }

    /// Takes `size` bytes of budget, evicting oldest-first until it fits.
    fn reserve(&self, size: usize) {
        loop {
            let cur = self.bytes.load(Ordering::Acquire);
            if cur + size <= self.config.budget_bytes {
                if self
                    .bytes
                    .compare_exchange_weak(cur, cur + size, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if !self.evict_oldest() {
                // Everything evictable is gone but other inserts hold
                // reservations; they will publish or give them back.
                std::thread::yield_now();
            }
        }
    }

    fn release(&self, size: usize, entry_gone: bool) {
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        if entry_gone {
            self.chunks.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops stale fifo heads and returns the live head's ticket.
    fn head_ticket(shard: &mut Shard) -> Option<u64> {
        while let Some(&(ticket, id)) = shard.fifo.front() {
            if shard.map.get(&id).is_some_and(|e| e.ticket == ticket) {
                return Some(ticket);
            }
            shard.fifo.pop_front();
        }
        None
    }

    /// Evicts the globally oldest chunk; false if the store is empty.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Self::head_ticket(&mut s.lock()).map(|t| (t, i)))
            .min();
        let Some((ticket, i)) = oldest else {
            return false;
        };
        let mut shard = self.shards[i].lock();
        // The head may have changed since we looked; take whatever is the
        // head now only if it is still that ticket, else let the caller retry.
        if Self::head_ticket(&mut shard) != Some(ticket) {
            return true;
        }
        let Some((_, id)) = shard.fifo.pop_front() else {
            return true;
        };
        if let Some(e) = shard.map.take(&id) {
            shard.evictions += 1;
            drop(shard);
            self.release(e.chunk.stored_len(), true);
        }
        true
    }

    /// The chunk `id` if held and not expired.
    pub fn get(&self, id: &ChunkId, now: Instant) -> Option<Chunk> {
        let mut shard = self.shard(id).lock();
        let found = shard
            .map
            .get(id)
            .filter(|e| !self.expired(e, now))
            .map(|e| e.chunk.clone());
        if found.is_some() {
            shard.hits += 1;
        } else {
            shard.misses += 1;
        }
        found
    }

    /// Whether `id` is held and not expired (not counted as a lookup).
    pub fn contains(&self, id: &ChunkId, now: Instant) -> bool {
        self.shard(id)
            .lock()
            .map
            .get(id)
            .is_some_and(|e| !self.expired(e, now))
    }

    /// Removes `id`; true if it was held.
    pub fn remove(&self, id: &ChunkId) -> bool {
        let removed = self.shard(id).lock().map.take(id);
        match removed {
            Some(e) => {
                self.release(e.chunk.stored_len(), true);
                true
            }
            None => false,
        }
    }

    /// Removes and returns every chunk `pick` chooses (after a key-ring
    /// change: what was signed with a key no longer trusted). Walks the
    /// whole store: for rare events, not hot paths. Removed chunks leave
    /// stale fifo entries, which `expire` and eviction already skip.
    pub fn take_where(&self, pick: impl Fn(&Chunk) -> bool) -> Vec<Chunk> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut shard = s.lock();
            let ids: Vec<ChunkId> = shard
                .map
                .iter()
                .filter(|e| pick(&e.chunk))
                .map(|e| e.chunk.id())
                .collect();
            for id in ids {
                if let Some(e) = shard.map.take(&id) {
                    self.release(e.chunk.stored_len(), true);
                    out.push(e.0.chunk);
                }
            }
        }
        out
    }

    /// Removes every chunk whose TTL has passed; returns how many. Entries
    /// are in insertion order per shard, so this stops at the first live one.
    pub fn expire(&self, now: Instant) -> usize {
        let mut n = 0;
        for s in &self.shards {
            let mut freed = Vec::new();
            {
                let mut shard = s.lock();
                while let Some(ticket) = Self::head_ticket(&mut shard) {
                    let Some(&(_, id)) = shard.fifo.front() else {
                        break;
                    };
                    let expired = shard
                        .map
                        .get(&id)
                        .is_some_and(|e| e.ticket == ticket && self.expired(e, now));
                    if !expired {
                        break;
                    }
                    shard.fifo.pop_front();
                    if let Some(e) = shard.map.take(&id) {
                        freed.push(e.chunk.stored_len());
                        shard.expirations += 1;
                    }
                }
                if shard.fifo.len() > 2 * shard.map.len() + 64 {
                    let Shard { fifo, map, .. } = &mut *shard;
                    fifo.retain(|(t, id)| map.get(id).is_some_and(|e| e.ticket == *t));
                }
            }
            n += freed.len();
            for size in freed {
                self.release(size, true);
            }
        }
        n
    }

    /// Sequence numbers held for `stream`, ascending, at most `limit`.
    /// Walks the whole index: for the admin API and catch-up, not hot paths.
    pub fn seqs(&self, stream: StreamId, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for s in &self.shards {
            let shard = s.lock();
            out.extend(
                shard
                    .map
                    .iter()
                    .map(|e| e.chunk.header.id)
                    .filter(|k| k.stream == stream)
                    .map(|k| k.seq),
            );
        }
        out.sort_unstable();
        out.truncate(limit);
        out
    }

    pub fn stats(&self) -> StoreStats {
        let mut st = StoreStats {
            bytes: self.bytes.load(Ordering::Acquire),
            chunks: self.chunks.load(Ordering::Relaxed),
            budget_bytes: self.config.budget_bytes,
            ..StoreStats::default()
        };
        for s in &self.shards {
            let shard = s.lock();
            st.hits += shard.hits;
            st.misses += shard.misses;
            st.inserts += shard.inserts;
            st.evictions += shard.evictions;
            st.expirations += shard.expirations;
        }
        st
    }

    pub fn config(&self) -> StoreConfig {
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkHeader, KeyId, digest};
    use bytes::Bytes;
    use std::sync::Arc;

    fn chunk(stream: u64, seq: u64, len: usize) -> Chunk {
        let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq ^ stream) as u8).collect();
        Chunk {
            header: ChunkHeader {
                id: ChunkId::new(StreamId(stream), seq),
                len: len as u32,
                digest: digest(&payload),
                key_id: KeyId(1),
                timestamp_ms: seq,
            },
            signature: [seq as u8; 64],
            payload: Bytes::from(payload),
        }
    }

    /// Within one shard the ids must still spread over the table's tag
    /// byte (the hash's top 7 bits); if the shard were picked from those
    /// bits, a shard's ids would share most of them and every lookup
    /// would chase false matches.
    #[test]
    fn a_shards_ids_keep_the_tables_tag_bits_apart() {
        let mut tags: Vec<HashSet<u64>> = vec![HashSet::new(); SHARDS];
        for stream in 0..8 {
            for seq in 0..4096 {
                let id = ChunkId::new(StreamId(stream), seq);
                let mut h = IdHash(0);
                id.hash(&mut h);
                tags[shard_of(&id)].insert(h.finish() >> 57);
            }
        }
        for (i, t) in tags.iter().enumerate() {
            assert!(
                t.len() >= 120,
                "shard {i} sees only {} of 128 tag values",
                t.len()
            );
        }
    }

    fn store(budget: usize, ttl_ms: u64) -> ChunkStore {
        ChunkStore::new(StoreConfig {
            budget_bytes: budget,
            ttl: Duration::from_millis(ttl_ms),
        })
    }

    #[test]
    fn insert_get_and_duplicates() {
        let s = store(1 << 20, 60_000);
        let now = Instant::now();
        let c = chunk(1, 1, 100);
        assert_eq!(s.insert(c.clone(), now), Ok(Inserted::New));
        assert_eq!(s.insert(c.clone(), now), Ok(Inserted::AlreadyPresent));
        assert_eq!(s.get(&c.id(), now), Some(c.clone()));
        assert_eq!(s.get(&ChunkId::new(StreamId(1), 2), now), None);
        let st = s.stats();
        assert_eq!(
            (st.chunks, st.bytes, st.hits, st.misses),
            (1, c.stored_len(), 1, 1)
        );
    }

    #[test]
    fn full_store_evicts_oldest_first() {
        let one = chunk(1, 0, 1000).stored_len();
        let s = store(one * 10, 60_000);
        let now = Instant::now();
        for seq in 0..25 {
            s.insert(chunk(seq % 3, seq, 1000), now).unwrap();
            assert!(s.stats().bytes <= one * 10);
        }
        for seq in 0..15 {
            assert!(
                !s.contains(&ChunkId::new(StreamId(seq % 3), seq), now),
                "{seq}"
            );
        }
        for seq in 15..25 {
            assert!(
                s.contains(&ChunkId::new(StreamId(seq % 3), seq), now),
                "{seq}"
            );
        }
        assert_eq!(s.stats().evictions, 15);
    }

    #[test]
    fn take_where_removes_what_it_picks_and_gives_back_its_bytes() {
        let s = store(1 << 20, 60_000);
        let now = Instant::now();
        for seq in 0..40 {
            s.insert(chunk(seq % 4, seq, 100), now).unwrap();
        }
        let taken = s.take_where(|c| c.id().stream == StreamId(2));
        assert_eq!(taken.len(), 10);
        assert!(taken.iter().all(|c| c.id().stream == StreamId(2)));
        for seq in 0..40 {
            let held = s.contains(&ChunkId::new(StreamId(seq % 4), seq), now);
            assert_eq!(held, seq % 4 != 2, "{seq}");
        }
        let one = chunk(0, 0, 100).stored_len();
        assert_eq!((s.stats().chunks, s.stats().bytes), (30, 30 * one));
        // What was taken left stale queue entries: expiry and eviction skip them.
        assert_eq!(s.expire(now + Duration::from_secs(61)), 30);
        assert_eq!((s.stats().chunks, s.stats().bytes), (0, 0));
    }

    #[test]
    fn chunk_larger_than_budget_is_refused() {
        let s = store(500, 60_000);
        assert!(matches!(
            s.insert(chunk(1, 1, 1000), Instant::now()),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn expired_chunks_are_misses_and_are_expired() {
        let s = store(1 << 20, 100);
        let t0 = Instant::now();
        s.insert(chunk(1, 1, 10), t0).unwrap();
        s.insert(chunk(1, 2, 10), t0 + Duration::from_millis(80))
            .unwrap();
        let later = t0 + Duration::from_millis(120);
        assert_eq!(s.get(&ChunkId::new(StreamId(1), 1), later), None);
        assert!(s.get(&ChunkId::new(StreamId(1), 2), later).is_some());
        assert_eq!(s.expire(later), 1);
        let st = s.stats();
        assert_eq!((st.chunks, st.expirations), (1, 1));
        // An expired id can be inserted again.
        assert_eq!(s.insert(chunk(1, 1, 10), later), Ok(Inserted::New));
        assert_eq!(s.seqs(StreamId(1), 10), vec![1, 2]);
    }

    #[test]
    fn concurrent_inserts_gets_and_expiry_respect_budget_and_identity() {
        let one = chunk(0, 0, 700).stored_len();
        let budget = one * 50;
        let s = Arc::new(store(budget, 30));
        let start = Instant::now();
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for i in 0..20_000u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let (stream, seq) = (x % 7, x % 500);
                        let now = start + Duration::from_micros(i * 10);
                        match x % 4 {
                            0 | 1 => {
                                let len = 100 + (x % 1200) as usize;
                                s.insert(chunk(stream, seq, len), now).unwrap();
                            }
                            2 => {
                                if let Some(c) = s.get(&ChunkId::new(StreamId(stream), seq), now) {
                                    assert_eq!(c.id(), ChunkId::new(StreamId(stream), seq));
                                    assert_eq!(c.header.digest, digest(&c.payload));
                                    assert_eq!(c.signature[0], seq as u8);
                                }
                            }
                            _ => {
                                s.expire(now);
                            }
                        }
                        assert!(s.stats().bytes <= budget);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = s.stats();
        assert!(st.bytes <= budget);
        // Accounting matches contents exactly once quiet.
        let mut held = 0;
        let mut n = 0;
        for sh in &s.shards {
            for e in sh.lock().map.iter() {
                held += e.chunk.stored_len();
                n += 1;
            }
        }
        assert_eq!((st.bytes, st.chunks), (held, n));
    }

    #[test]
    fn block_queue_keeps_fifo_order_across_blocks_and_retain() {
        let mut q = BlockQueue::default();
        let n = 3 * QUEUE_BLOCK + 7;
        for i in 0..n {
            q.push_back(i);
        }
        assert_eq!((q.len(), q.blocks.len()), (n, 4));
        for i in 0..QUEUE_BLOCK + 1 {
            assert_eq!(q.pop_front(), Some(i));
        }
        q.retain(|v| v % 2 == 0);
        let rest: Vec<usize> = std::iter::from_fn(|| q.pop_front()).collect();
        let want: Vec<usize> = (QUEUE_BLOCK + 1..n).filter(|v| v % 2 == 0).collect();
        assert_eq!(rest, want);
        assert_eq!((q.len(), q.front(), q.blocks.len()), (0, None, 0));
    }
}
