//! Relay-side admission: whether a relay answers an edge's pull now or
//! says "busy", and (in [`super::picker::Picker::handle_busy`]) what the
//! edge does then.
//!
//! A burst of edges all lacking the same last pieces asks the few relays
//! that have them. Answered first come first served, every edge's request
//! joins one queue on the relay's uplink: 1,000 edges × 2 requests × 8.4 ms
//! per 1 MiB piece at 1 Gbit/s is a 16.7 s queue, and a piece queued that
//! long is one the edges could have traded among themselves many times over.
//! So a relay admits a request only while the replies already queued on its
//! uplink take at most `max_queue` to send; past that it answers
//! [`CODE_BUSY`] at once (a few bytes, not a piece). The edge does not count
//! that as a failure — the relay still has the piece — but leaves the relay
//! alone for a jittered, growing back-off and meanwhile takes the piece from
//! whichever neighbour got it first. The relay's uplink then carries only
//! what it can send within `max_queue`: a few edges get each scarce piece
//! first and the swarm spreads it — super-seeding without coordination.
//!
//! Sans-I/O: the caller measures its queue (the node: bytes of pull replies
//! written and not yet acknowledged; the simulator: bytes booked on the
//! relay's upload pipe) and sends the answer.

use std::time::Duration;

/// The `Frame::Error` code of a "busy" answer: not a failure, ask later or
/// elsewhere (distinct from 429 "choked", 503 "upstream unreachable").
pub const CODE_BUSY: u16 = 509;

/// Admission settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// The uplink's rate, bytes/s, to turn queued bytes into queueing time.
    pub upload_bytes_per_sec: u64,
    /// A request is refused while the replies already queued take longer
    /// than this to send. Zero turns admission off (everything is admitted).
    pub max_queue: Duration,
}

impl AdmissionConfig {
    /// About 100 ms: long enough to keep the uplink busy between a reply
    /// and the next request (many round trips of a data-centre link), short
    /// enough that a piece is sent while it is still scarce.
    pub const DEFAULT_MAX_QUEUE: Duration = Duration::from_millis(100);

    pub fn new(upload_bytes_per_sec: u64) -> Self {
        Self {
            upload_bytes_per_sec: upload_bytes_per_sec.max(1),
            max_queue: Self::DEFAULT_MAX_QUEUE,
        }
    }
}

/// What to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Answer [`CODE_BUSY`] now.
    Busy,
}

/// The decision, for one node's uplink.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    config: AdmissionConfig,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// How long `queued_bytes` take to leave the uplink.
    pub fn queue_time(&self, queued_bytes: u64) -> Duration {
        Duration::from_secs_f64(
            queued_bytes as f64 / self.config.upload_bytes_per_sec.max(1) as f64,
        )
    }

    /// Admit or refuse a request arriving while `queued_bytes` of replies
    /// wait on the uplink. An idle uplink always admits (a piece larger
    /// than `max_queue` at the link's rate is still served, one at a time).
    pub fn decide(&self, queued_bytes: u64) -> Verdict {
        if self.config.max_queue.is_zero()
            || queued_bytes == 0
            || self.queue_time(queued_bytes) <= self.config.max_queue
        {
            Verdict::Admit
        } else {
            Verdict::Busy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn admits_up_to_the_queue_bound_and_refuses_past_it() {
        // 1 Gbit/s: a 1 MiB piece is 8.4 ms on the wire, 100 ms ≈ 11.9 pieces.
        let a = Admission::new(AdmissionConfig::new(125_000_000));
        assert_eq!(a.decide(0), Verdict::Admit);
        assert_eq!(a.decide(11 * MIB), Verdict::Admit);
        assert_eq!(a.decide(12 * MIB), Verdict::Busy);
        // The burst's failure mode: 2,000 replies queued is 16.8 s.
        let q = a.queue_time(2000 * MIB);
        assert!(
            q > Duration::from_secs(16) && q < Duration::from_secs(17),
            "{q:?}"
        );
        assert_eq!(a.decide(2000 * MIB), Verdict::Busy);
    }

    #[test]
    fn an_idle_uplink_admits_even_a_huge_piece_and_zero_turns_it_off() {
        let mut c = AdmissionConfig::new(1_000);
        let a = Admission::new(c);
        assert_eq!(a.decide(0), Verdict::Admit, "idle: always");
        assert_eq!(a.decide(1_000), Verdict::Busy, "1 s of queue at 1 kB/s");
        c.max_queue = Duration::ZERO;
        assert_eq!(Admission::new(c).decide(u64::MAX), Verdict::Admit);
        // A zero rate is clamped, never a division by zero.
        let z = Admission::new(AdmissionConfig {
            upload_bytes_per_sec: 0,
            max_queue: Duration::from_millis(100),
        });
        assert_eq!(z.decide(1), Verdict::Busy);
    }
}
