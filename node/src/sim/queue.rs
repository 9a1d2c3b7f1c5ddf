//! The discrete-event queue: events ordered by (virtual time, insertion
//! sequence), so two events at the same instant always run in the order they
//! were scheduled and a run is reproducible.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Virtual time, nanoseconds since the run began.
pub(crate) type Nanos = u64;

pub(crate) const MS: Nanos = 1_000_000;
pub(crate) const SEC: Nanos = 1_000_000_000;

/// Seconds as virtual time (negative and NaN become 0).
pub(crate) fn secs(s: f64) -> Nanos {
    if s.is_finite() && s > 0.0 {
        (s * SEC as f64) as Nanos
    } else {
        0
    }
}

struct Entry<E> {
    at: Nanos,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Events are kept apart by stretches of 2^20 ns (~1 ms) of virtual time:
/// only the stretch being run is a heap; later ones are plain vectors in
/// a map, made a heap when their turn comes.
const BUCKET_SHIFT: u32 = 20;

/// A min-queue of events by time, ties in scheduling order.
///
/// One heap of every pending event was a tenth of a 10,000-edge run: a
/// few hundred thousand events are pending at once, so each pop walked
/// ~19 levels of a heap far larger than the cache. Here the heap holds
/// only the current ~1 ms (a few thousand events); a push further ahead is
/// an append to its stretch's vector. The order is exactly (time,
/// scheduling order), as before: every event in the heap is in an earlier
/// stretch than every event in the map.
pub(crate) struct EventQueue<E> {
    /// Events of stretch `current_bucket` (or earlier), ordered.
    current: BinaryHeap<Reverse<Entry<E>>>,
    current_bucket: u64,
    /// Later events by stretch, in scheduling order within one.
    later: BTreeMap<u64, Vec<Entry<E>>>,
    /// Emptied vectors, kept for reuse so stretches do not allocate.
    spare: Vec<Vec<Entry<E>>>,
    seq: u64,
    now: Nanos,
    popped: u64,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> Self {
        Self {
            current: BinaryHeap::new(),
            current_bucket: 0,
            later: BTreeMap::new(),
            spare: Vec::new(),
            seq: 0,
            now: 0,
            popped: 0,
        }
    }

    /// Schedules `event` at `at` (never in the past).
    pub(crate) fn push(&mut self, at: Nanos, event: E) {
        let at = at.max(self.now);
        self.seq += 1;
        let entry = Entry {
            at,
            seq: self.seq,
            event,
        };
        let bucket = at >> BUCKET_SHIFT;
        if bucket <= self.current_bucket {
            self.current.push(Reverse(entry));
        } else {
            let spare = &mut self.spare;
            self.later
                .entry(bucket)
                .or_insert_with(|| spare.pop().unwrap_or_default())
                .push(entry);
        }
    }

    /// Makes the next stretch the heap when the heap is empty; false when
    /// no event is left.
    fn fill(&mut self) -> bool {
        if self.current.is_empty() {
            let Some((bucket, mut next)) = self.later.pop_first() else {
                return false;
            };
            self.current_bucket = bucket;
            self.current.extend(next.drain(..).map(Reverse));
            // A few dozen kept: enough for the stretches alive at once
            // to reuse, bounded however many there were.
            if self.spare.len() < 64 {
                self.spare.push(next);
            }
        }
        true
    }

    /// When the next event is due, if there is one.
    pub(crate) fn peek(&mut self) -> Option<Nanos> {
        if !self.fill() {
            return None;
        }
        self.current.peek().map(|Reverse(e)| e.at)
    }

    /// The next event, advancing the clock to it.
    pub(crate) fn pop(&mut self) -> Option<(Nanos, E)> {
        if !self.fill() {
            return None;
        }
        let Reverse(e) = self.current.pop()?;
        self.now = e.at;
        self.popped += 1;
        Some((e.at, e.event))
    }

    pub(crate) fn now(&self) -> Nanos {
        self.now
    }

    /// Events handled so far.
    pub(crate) fn handled(&self) -> u64 {
        self.popped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut q = EventQueue::new();
        q.push(5, 'c');
        q.push(1, 'a');
        q.push(5, 'd');
        q.push(1, 'b');
        let order: Vec<char> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, vec!['a', 'b', 'c', 'd']);
        assert_eq!(q.now(), 5);
        assert_eq!(q.handled(), 4);
        // Nothing is scheduled before the present.
        q.push(0, 'e');
        assert_eq!(q.pop(), Some((5, 'e')));
    }

    /// The stretched queue gives exactly the order of one plain heap of
    /// (time, scheduling order), however pushes and pops interleave and
    /// whatever the distances (same instant, same stretch, far ahead).
    #[test]
    fn the_stretched_queue_pops_in_the_order_of_one_heap() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..20 {
            let mut q = EventQueue::new();
            let mut plain: BinaryHeap<Reverse<(Nanos, u64)>> = BinaryHeap::new();
            let mut seq = 0u64;
            let mut now = 0;
            for _ in 0..20_000 {
                if rng.gen_bool(0.55) {
                    let ahead = match rng.gen_range(0..4) {
                        0 => 0,
                        1 => rng.gen_range(0..1 << BUCKET_SHIFT),
                        2 => rng.gen_range(0..50 * MS),
                        _ => rng.gen_range(0..5 * SEC),
                    };
                    // Now and then in the past: clamped to the present.
                    let at = if round % 2 == 0 && rng.gen_bool(0.05) {
                        now / 2
                    } else {
                        now + ahead
                    };
                    seq += 1;
                    q.push(at, seq);
                    plain.push(Reverse((at.max(now), seq)));
                } else {
                    let want = plain.pop().map(|Reverse(e)| e);
                    let got = q.pop();
                    assert_eq!(got, want);
                    if let Some((at, _)) = got {
                        now = at;
                    }
                }
            }
            while let Some(Reverse(want)) = plain.pop() {
                assert_eq!(q.pop(), Some(want));
            }
            assert_eq!(q.pop(), None);
        }
    }
}
