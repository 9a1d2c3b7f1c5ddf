//! The network model: per-pair latency, loss channels (independent or
//! bursty), and per-node upload/download capacity as two FIFO pipes.
//!
//! A transfer of `n` bytes from A to B occupies A's upload pipe for
//! `n / A.up`, in the order transfers were started, and B's download pipe
//! for `n / B.down` in the first free stretch after its first byte arrives
//! (both booked when the transfer starts; when A and B run in different
//! partitions, `world::run_parts`, B's when B is handed the message, within
//! one window of it);
//! the transfer ends when both are through and the last byte has crossed
//! the link. A download is placed in a gap rather than after the last one
//! booked: a reply queued for seconds at a busy sender books the receiver's
//! link seconds ahead, and must not hold up what other senders deliver
//! before then. Parallel flows share a pipe by taking turns rather than by
//! fair queueing — the same total throughput, a coarser order. Loss on a reliable stream costs its
//! retransmissions (`n / (1 - loss)` bytes on the wire) but not congestion
//! control's reaction to it.

use super::queue::{MS, Nanos};
use super::scenario::Link;
use rand::Rng;

/// Most future bookings a download pipe keeps apart; past it, a new one
/// goes after the last (bounded memory, the old FIFO behaviour).
const MAX_DOWN_BOOKINGS: usize = 256;

/// One node's pipes.
#[derive(Debug, Clone)]
pub(crate) struct Pipes {
    /// Nanoseconds per byte up and down.
    up_ns_per_byte: f64,
    down_ns_per_byte: f64,
    up_free: Nanos,
    /// Booked stretches of the download pipe, sorted and disjoint.
    down: Vec<(Nanos, Nanos)>,
}

impl Pipes {
    pub(crate) fn new(up_mbps: f64, down_mbps: f64) -> Self {
        Self {
            up_ns_per_byte: 8_000.0 / up_mbps,
            down_ns_per_byte: 8_000.0 / down_mbps,
            up_free: 0,
            down: Vec::new(),
        }
    }

    /// Bytes booked on the upload pipe and not yet sent at `now`: what a
    /// new transfer waits behind.
    pub(crate) fn up_queue_bytes(&self, now: Nanos) -> u64 {
        (self.up_free.saturating_sub(now) as f64 / self.up_ns_per_byte) as u64
    }

    pub(crate) fn reset(&mut self, now: Nanos) {
        self.up_free = now;
        self.down.clear();
    }

    /// Books `len` of the download pipe at or after `from` (forgetting
    /// bookings over before `now`); returns the stretch's start.
    fn book_down(&mut self, now: Nanos, from: Nanos, len: Nanos) -> Nanos {
        let over = self.down.partition_point(|&(_, end)| end <= now);
        self.down.drain(..over);
        if self.down.len() >= MAX_DOWN_BOOKINGS {
            let start = self.down.last().map_or(from, |&(_, end)| end.max(from));
            if let Some(last) = self.down.last_mut() {
                if last.1 == start {
                    last.1 = start + len;
                    return start;
                }
            }
            self.down.push((start, start + len));
            return start;
        }
        let mut start = from;
        let mut at = self.down.len();
        // Bookings over by `from` cannot hold this one up: start past them
        // (ends are sorted, as the stretches are disjoint and sorted).
        let skip = self.down.partition_point(|&(_, end)| end <= from);
        for (i, &(b, e)) in self.down.iter().enumerate().skip(skip) {
            if e <= start {
                continue;
            }
            if b >= start + len {
                at = i;
                break;
            }
            start = start.max(e);
        }
        // Merge with touching neighbours so the list stays short.
        let end = start + len;
        let joins_prev = at > 0 && self.down[at - 1].1 == start;
        let joins_next = at < self.down.len() && self.down[at].0 == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.down[at - 1].1 = self.down[at].1;
                self.down.remove(at);
            }
            (true, false) => self.down[at - 1].1 = end,
            (false, true) => self.down[at].0 = start,
            (false, false) => self.down.insert(at, (start, end)),
        }
        start
    }
}

/// Where a transfer sat on the two pipes, and when its last byte was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) up: (Nanos, Nanos),
    pub(crate) down: (Nanos, Nanos),
    pub(crate) done: Nanos,
}

/// The sender's half of a transfer: where it sat on the upload pipe, and
/// when its first and last bytes reach the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) up: (Nanos, Nanos),
    pub(crate) first_in: Nanos,
    pub(crate) last_in: Nanos,
}

/// Books `bytes` on `from`'s upload pipe at `now`, over a link of one-way
/// `latency`.
pub(crate) fn send(from: &mut Pipes, now: Nanos, latency: Nanos, bytes: u64) -> Sent {
    let start = now.max(from.up_free);
    from.up_free = start + (bytes as f64 * from.up_ns_per_byte) as Nanos;
    Sent {
        up: (start, from.up_free),
        first_in: start + latency,
        last_in: from.up_free + latency,
    }
}

impl Pipes {
    /// The receiver's half of a transfer whose first byte arrives at
    /// `first_in`, booked at `now`: the download pipe's first free stretch
    /// from then; returns it and when the transfer is in (`last_in`: when
    /// the sender's last byte arrives).
    pub(crate) fn receive(
        &mut self,
        now: Nanos,
        first_in: Nanos,
        bytes: u64,
        last_in: Nanos,
    ) -> Received {
        let len = (bytes as f64 * self.down_ns_per_byte) as Nanos;
        let start = self.book_down(now, first_in, len);
        Received {
            down: (start, start + len),
            done: last_in.max(start + len),
        }
    }
}

/// Where a transfer sat on the receiver's download pipe, and when its last
/// byte was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) down: (Nanos, Nanos),
    pub(crate) done: Nanos,
}

/// Schedules `bytes` from `from` to `to` starting at `now` over a link of
/// one-way `latency`, booking both pipes at once (pushes; a pull books the
/// receiver's pipe when its first byte arrives, [`send`] then
/// [`Pipes::receive`]).
pub(crate) fn transfer(
    from: &mut Pipes,
    to: &mut Pipes,
    now: Nanos,
    latency: Nanos,
    bytes: u64,
) -> Transfer {
    let sent = send(from, now, latency, bytes);
    let len = (bytes as f64 * to.down_ns_per_byte) as Nanos;
    let down_start = to.book_down(now, sent.first_in, len);
    Transfer {
        up: sent.up,
        down: (down_start, down_start + len),
        done: sent.last_in.max(down_start + len),
    }
}

/// Latency of a link class between two nodes: a base fixed per pair (so a
/// pair keeps its distance) plus a little per-message jitter.
pub(crate) fn latency<R: Rng>(link: &Link, a: u32, b: u32, seed: u64, rng: &mut R) -> Nanos {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let h = splitmix(seed ^ (u64::from(lo) << 32 | u64::from(hi)));
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let base = link.latency_ms + link.jitter_ms * (2.0 * unit - 1.0);
    let extra = if link.jitter_ms > 0.0 {
        rng.gen_range(0.0..link.jitter_ms / 4.0)
    } else {
        0.0
    };
    ((base.max(0.0) + extra) * MS as f64) as Nanos
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A loss process for one link direction: independent losses, or a
/// two-state Gilbert channel (every packet in the bad state is lost) whose
/// mean loss and mean burst length are the configured ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Channel {
    loss: f64,
    /// P(good → bad) and P(bad → good) per packet; unused when bursts are 1.
    to_bad: f64,
    to_good: f64,
}

impl Channel {
    pub(crate) fn new(loss: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        let to_good = 1.0 / burst;
        let to_bad = if loss > 0.0 {
            (loss * to_good / (1.0 - loss)).min(1.0)
        } else {
            0.0
        };
        Self {
            loss,
            to_bad,
            to_good,
        }
    }

    pub(crate) fn loss(&self) -> f64 {
        self.loss
    }

    pub(crate) fn is_lossless(&self) -> bool {
        self.loss <= 0.0
    }

    /// Whether the next packet is lost; `bad` is the link's channel state.
    pub(crate) fn lose<R: Rng>(&self, bad: &mut bool, rng: &mut R) -> bool {
        if self.loss <= 0.0 {
            return false;
        }
        if self.to_good >= 1.0 {
            return rng.r#gen::<f64>() < self.loss;
        }
        let flip = rng.r#gen::<f64>();
        *bad = if *bad {
            flip >= self.to_good
        } else {
            flip < self.to_bad
        };
        *bad
    }
}

/// Bytes on the wire to move `bytes` reliably over a link losing `loss`.
pub(crate) fn reliable_bytes(bytes: u64, loss: f64) -> u64 {
    (bytes as f64 / (1.0 - loss.clamp(0.0, 0.9))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn a_busy_upload_pipe_serialises_transfers() {
        // 8 Mbit/s = 1 byte per microsecond.
        let mut a = Pipes::new(8.0, 1000.0);
        let mut b = Pipes::new(1000.0, 1000.0);
        let mut c = Pipes::new(1000.0, 1000.0);
        let t1 = transfer(&mut a, &mut b, 0, 1_000, 1_000).done;
        let t2 = transfer(&mut a, &mut c, 0, 1_000, 1_000).done;
        assert_eq!(t1, 1_000_000 + 1_000);
        assert_eq!(t2, 2_000_000 + 1_000);
    }

    #[test]
    fn a_download_booked_far_ahead_does_not_hold_up_an_earlier_one() {
        // 8 Mbit/s = 1 byte per microsecond everywhere.
        let mut busy = Pipes::new(8.0, 8.0);
        let mut idle = Pipes::new(8.0, 8.0);
        let mut me = Pipes::new(8.0, 8.0);
        // The busy sender's queue is 10 s long: its reply is booked then.
        busy.up_free = 10_000_000_000;
        let late = transfer(&mut busy, &mut me, 0, 1_000, 1_000);
        assert_eq!(late.down.0, 10_000_001_000);
        // An idle sender's reply arrives now, not after the booked one.
        let now = transfer(&mut idle, &mut me, 0, 1_000, 1_000);
        assert_eq!(now.down, (1_000, 1_001_000));
        assert_eq!(now.done, 1_001_000);
        // Two arriving together still take turns on the download pipe.
        let mut other = Pipes::new(8.0, 8.0);
        let next = transfer(&mut other, &mut me, 0, 1_000, 1_000);
        assert_eq!(next.down, (1_001_000, 2_001_000));
    }

    #[test]
    fn bursty_and_independent_channels_lose_the_configured_share() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for burst in [1.0, 8.0] {
            let ch = Channel::new(0.05, burst);
            let mut bad = false;
            let n = 400_000;
            let lost = (0..n).filter(|_| ch.lose(&mut bad, &mut rng)).count();
            let share = lost as f64 / n as f64;
            assert!((share - 0.05).abs() < 0.005, "burst {burst}: {share}");
        }
    }
}
