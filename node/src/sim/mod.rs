//! `dcdn sim`: the node's own protocol code at thousands of nodes, in
//! virtual time, for capacity planning.
//!
//! A discrete-event loop ([`queue`]) stands in for sockets and the clock, a
//! network model ([`net`]) for the links, and small per-node records
//! (`world`) for the nodes. The decisions are not re-implemented: the
//! choker, the request order, the parity policy, FEC block layout and
//! assembly, verification and reputation are the node's own types and
//! functions, called with virtual time and seeded randomness — a change to
//! any of them changes what the simulator answers. Bytes are not
//! materialised: chunks are sizes and bits in per-node bitfields.
//!
//! Deliberately left out: HTTP clients beyond an in-order object reader with
//! read-ahead (and a live player that takes pushes), the store unless a
//! scenario gives a tier a budget, QUIC congestion control (loss on a reliable
//! stream costs only its retransmitted bytes), manifests, key rotation, and
//! relay or origin failures.

mod queue;
pub mod report;
pub mod scenario;

mod net;
mod world;

use report::{
    Bytes, End, Fec, FecCounts, FreeRiderCost, Percentiles, Perf, Report, TierCompletion,
    TierLatency, UtilRow,
};
use scenario::Scenario;
use std::time::Instant;

/// One run of the world, split into `run.partitions` when asked.
fn run_world(scenario: &Scenario, riders_honest: bool) -> Result<world::Outcome, String> {
    match scenario.run.partitions {
        0 | 1 => Ok(world::World::new(scenario, riders_honest)?.run()),
        parts => world::run_parts(scenario, riders_honest, parts),
    }
}

/// Runs `scenario` (and, when it has free-riders, the same scenario with
/// them honest, to measure what they cost).
pub fn run(scenario: &Scenario) -> Result<Report, String> {
    scenario.validate().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let outcome = run_world(scenario, false)?;
    let mut events = outcome.events;
    let riders = outcome
        .completions
        .iter()
        .any(|(tier, _, _)| *tier == "free-rider");
    let free_rider_cost =
        if riders && scenario.peers.measure_free_rider_cost && !scenario.content.is_live() {
            let baseline = run_world(scenario, true)?;
            events += baseline.events;
            // Compare the same honest nodes in both runs.
            let honest: std::collections::HashSet<u32> = outcome
                .completions
                .iter()
                .filter(|(t, _, _)| *t == "edge")
                .map(|(_, i, _)| *i)
                .collect();
            let times = |o: &world::Outcome| {
                let mut v: Vec<f64> = o
                    .completions
                    .iter()
                    .filter(|(_, i, _)| honest.contains(i))
                    .filter_map(|(_, _, t)| *t)
                    .collect();
                v.sort_by(f64::total_cmp);
                Percentiles::of(&v)
            };
            match (times(&outcome), times(&baseline)) {
                (Some(with), Some(without)) => Some(FreeRiderCost {
                    honest_p50_s: with.p50,
                    honest_p90_s: with.p90,
                    baseline_p50_s: without.p50,
                    baseline_p90_s: without.p90,
                    slowdown_p50: with.p50 / without.p50.max(1e-9),
                    slowdown_p90: with.p90 / without.p90.max(1e-9),
                }),
                _ => None,
            }
        } else {
            None
        };
    let wall_s = started.elapsed().as_secs_f64();

    let mut completion = Vec::new();
    for tier in ["relay", "edge", "free-rider"] {
        let all: Vec<&Option<f64>> = outcome
            .completions
            .iter()
            .filter(|(t, _, _)| *t == tier)
            .map(|(_, _, d)| d)
            .collect();
        if all.is_empty() {
            continue;
        }
        let mut samples: Vec<f64> = all.iter().filter_map(|d| **d).collect();
        samples.sort_by(f64::total_cmp);
        let held = outcome
            .held
            .iter()
            .find(|(t, _)| *t == tier)
            .map_or(0, |(_, h)| *h);
        completion.push(TierCompletion {
            tier: tier.to_owned(),
            nodes: all.len(),
            mean_share_held: held as f64 / (all.len() as f64 * outcome.chunks.max(1) as f64),
            completed: samples.len(),
            seconds: Percentiles::of(&samples),
            samples,
        });
    }
    let live_latency = outcome
        .latency_us
        .iter()
        .map(|(tier, samples)| {
            let mut ms: Vec<f64> = samples
                .kept
                .iter()
                .map(|u| f64::from(*u) / 1000.0)
                .collect();
            ms.sort_by(f64::total_cmp);
            TierLatency {
                tier: (*tier).to_owned(),
                deliveries: samples.seen as usize,
                // Percentiles of the (possibly sampled) set; the maximum exact.
                ms: Percentiles::of(&ms).map(|p| Percentiles {
                    max: f64::from(samples.max) / 1000.0,
                    ..p
                }),
            }
        })
        .collect();
    let end = end_of(scenario, &outcome);
    let utilisation = utilisation_rows(scenario, &outcome.util, outcome.virtual_end_s);
    let nodes = 1 + u64::from(scenario.tiers.relays) + u64::from(scenario.tiers.edges);
    let peak = report::peak_rss_bytes();
    let c = &scenario.content;
    Ok(Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        origins: 1,
        relays: scenario.tiers.relays,
        edges: scenario.tiers.edges,
        content: if c.is_live() {
            format!(
                "live stream {} Mbit/s for {} s",
                c.live_mbps, c.live_seconds
            )
        } else {
            format!("object {} MiB", c.object_mb)
        },
        content_bytes: outcome.content_bytes,
        chunks: outcome.chunks,
        completion,
        live_latency,
        bytes: Bytes {
            origin: outcome.bytes_origin,
            relays: outcome.bytes_relays,
            edges: outcome.bytes_edges,
            edges_received: outcome.edge_bytes_in,
            origin_offload_ratio: outcome.bytes_origin as f64 / outcome.content_bytes.max(1) as f64,
            edge_to_edge_share: outcome.edge_bytes_from_edges as f64
                / outcome.edge_bytes_in.max(1) as f64,
        },
        fec: Fec {
            complete: outcome.fec_relays[0] + outcome.fec_edges[0],
            rebuilt: outcome.fec_relays[1] + outcome.fec_edges[1],
            failed: outcome.fec_relays[2] + outcome.fec_edges[2],
            relays: FecCounts::from(outcome.fec_relays),
            edges: FecCounts::from(outcome.fec_edges),
            repairs: outcome.repairs,
            exec: outcome.fec_exec.to_owned(),
        },
        store_evictions: outcome.store_evictions,
        chunks_rejected: outcome.chunks_rejected,
        peers_banned: outcome.peers_banned,
        busy_replies: outcome.busy_replies,
        swarm_timeouts: outcome.swarm_timeouts,
        free_rider_cost,
        crashes: outcome.crashes,
        leaves: outcome.leaves,
        rejoins: outcome.rejoins,
        end,
        utilisation,
        perf: Perf {
            events,
            wall_s,
            events_per_s: events as f64 / wall_s.max(1e-9),
            virtual_s: outcome.virtual_end_s,
            peak_rss_bytes: peak,
            rss_bytes_per_node: peak.map(|p| p / nodes),
        },
    })
}

/// Most rows the utilisation table has: longer runs merge seconds.
const UTIL_ROWS: usize = 30;

/// The utilisation buckets as shares of each tier's capacity, merged into
/// at most [`UTIL_ROWS`] rows, up to the run's end (transfers booked past
/// it, such as a relay's queue when the last edge finished, are left out).
fn utilisation_rows(s: &Scenario, u: &world::Util, end_s: f64) -> Vec<UtilRow> {
    use world::{
        U_EDGE_REPLIES, U_EDGE_WAIT, U_EDGES_DOWN, U_EDGES_UP, U_ORIGIN_UP, U_RELAY_REPLIES,
        U_RELAY_WAIT, U_RELAYS_UP,
    };
    let n = u.buckets.len().min(end_s.ceil() as usize);
    if n == 0 {
        return Vec::new();
    }
    let bps = |mbps: f64| mbps * 125_000.0;
    let edges = f64::from(s.tiers.edges);
    let cap_origin = bps(s.nodes.origin.up_mbps);
    let cap_relays = bps(s.nodes.relay.up_mbps) * f64::from(s.tiers.relays);
    let cap_edges_up = bps(s.nodes.edge.up_mbps) * edges;
    let cap_edges_down = bps(s.nodes.edge.down_mbps) * edges;
    let per = n.div_ceil(UTIL_ROWS);
    u.buckets[..n]
        .chunks(per)
        .enumerate()
        .map(|(i, rows)| {
            let secs = rows.len() as f64;
            let sum = |k: usize| rows.iter().map(|r| r[k]).sum::<f64>();
            let share = |k: usize, cap: f64| sum(k) / (cap * secs).max(1.0);
            let wait = |w: usize, c: usize| sum(w) / 1e6 / sum(c).max(1.0);
            UtilRow {
                from_s: (i * per) as f64,
                to_s: (i * per) as f64 + secs,
                origin_up: share(U_ORIGIN_UP, cap_origin),
                relays_up: share(U_RELAYS_UP, cap_relays),
                edges_up: share(U_EDGES_UP, cap_edges_up),
                edges_down: share(U_EDGES_DOWN, cap_edges_down),
                relay_reply_wait_ms: wait(U_RELAY_WAIT, U_RELAY_REPLIES),
                edge_reply_wait_ms: wait(U_EDGE_WAIT, U_EDGE_REPLIES),
            }
        })
        .collect()
}

/// Says why a run stopped. A run cut by `max_time_s` is not a stall: it
/// reports how far it got and, at the pace it kept, how much longer it needed.
fn end_of(scenario: &Scenario, o: &world::Outcome) -> End {
    let readers = o
        .completions
        .iter()
        .filter(|(t, _, _)| *t != "relay")
        .count() as u64;
    let nowhere = if o.chunks_nowhere > 0 {
        format!(
            "; {} of {} chunks never left the origin",
            o.chunks_nowhere, o.chunks
        )
    } else {
        String::new()
    };
    let (reason, detail) = match &o.ended {
        world::Ended::Complete => ("complete", "every reader finished".to_owned()),
        world::Ended::TimeLimit => {
            let share = o
                .held
                .iter()
                .filter(|(t, _)| *t != "relay")
                .map(|(_, h)| *h)
                .sum::<u64>() as f64
                / (readers.max(1) * o.chunks.max(1)) as f64;
            let more = if share > 0.0 {
                format!(
                    "; at this pace about {:.0} s more",
                    o.virtual_end_s * (1.0 - share) / share
                )
            } else {
                String::new()
            };
            (
                "time_limit",
                format!(
                    "run.max_time_s = {} reached with {} of {} readers unfinished, {:.0} % of their chunks held; chunks still arrived at {:.1} s{}{}",
                    scenario.run.max_time_s,
                    o.unfinished,
                    readers,
                    share * 100.0,
                    o.last_progress_s,
                    nowhere,
                    more
                ),
            )
        }
        world::Ended::Stalled(why) => (
            "stalled",
            format!(
                "{why}; {} of {} readers unfinished, last chunk received at {:.1} s{}",
                o.unfinished, readers, o.last_progress_s, nowhere
            ),
        ),
    };
    End {
        reason: reason.to_owned(),
        detail,
        unfinished: o.unfinished,
        last_progress_s: o.last_progress_s,
        chunks_nowhere: o.chunks_nowhere,
    }
}

#[cfg(test)]
mod tests {
    use super::scenario::{FecExec, Scenario};
    use super::*;
    use crate::config::Bounded;

    fn small_object() -> Scenario {
        let mut s = Scenario::default();
        s.tiers.relays = 1;
        s.tiers.edges = 12;
        s.content.object_mb = 16.0;
        s.content.chunk_kb = 256;
        // A slow relay makes edges trade.
        s.nodes.relay.up_mbps = 100.0;
        s.peers.neighbours = 6;
        // Clients that start together ask the relay for the same chunks at
        // the same moment; a spread lets late edges find them at early ones.
        s.peers.start_spread_s = 8.0;
        s.p2p.unchoke_interval_seconds = Bounded::new(2).unwrap();
        s
    }

    /// The shipped 1,000-edge burst, for tests to scale down.
    fn shipped_burst() -> Scenario {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/sim/burst-1000-edges.toml");
        Scenario::from_file(&path).unwrap()
    }

    fn small_live(loss: f64, burst: f64) -> Scenario {
        let mut s = Scenario::default();
        s.tiers.relays = 1;
        s.tiers.edges = 8;
        s.content.object_mb = 0.0;
        s.content.live_mbps = 8.0;
        s.content.live_seconds = 5.0;
        s.content.chunk_kb = 32;
        s.network.relay_edge.loss = loss;
        s.network.relay_edge.burst = burst;
        s
    }

    #[test]
    fn the_same_scenario_and_seed_give_the_same_numbers() {
        let s = small_object();
        let (a, b) = (run(&s).unwrap(), run(&s).unwrap());
        assert_eq!(a.completion, b.completion);
        assert_eq!(a.bytes, b.bytes);
        let mut other = s.clone();
        other.seed = 2;
        assert_ne!(run(&other).unwrap().completion, a.completion);
    }

    #[test]
    fn every_edge_gets_the_object_and_the_origin_sends_it_once_per_relay() {
        let r = run(&small_object()).unwrap();
        let edge = r.completion.iter().find(|t| t.tier == "edge").unwrap();
        assert_eq!(edge.completed, edge.nodes);
        assert_eq!(edge.mean_share_held, 1.0);
        // The one relay was asked for every chunk edges did not trade.
        let relay = r.completion.iter().find(|t| t.tier == "relay").unwrap();
        assert_eq!((relay.completed, relay.mean_share_held), (1, 1.0));
        assert_eq!(r.bytes.origin, r.content_bytes);
        assert!((r.bytes.origin_offload_ratio - 1.0).abs() < 1e-9);
        assert_eq!(r.bytes.edges_received, 12 * r.content_bytes);
    }

    #[test]
    fn the_choker_decides_whether_edges_trade() {
        let with = run(&small_object()).unwrap();
        assert!(with.bytes.edge_to_edge_share > 0.05, "{:?}", with.bytes);
        let mut s = small_object();
        s.p2p.regular_unchoke_count = Bounded::new(0).unwrap();
        s.p2p.optimistic_unchoke_count = Bounded::new(0).unwrap();
        let without = run(&s).unwrap();
        assert_eq!(without.bytes.edge_to_edge_share, 0.0);
        assert_eq!(without.bytes.edges, 0);
    }

    #[test]
    fn the_block_rule_gives_exactly_what_the_real_assembler_gives() {
        for (loss, burst) in [(0.05, 1.0), (0.08, 4.0)] {
            let mut s = small_live(loss, burst);
            s.run.fec_exec = FecExec::Shards;
            let real = run(&s).unwrap();
            s.run.fec_exec = FecExec::Blocks;
            let rule = run(&s).unwrap();
            assert_eq!(real.fec.exec, "shards");
            assert_eq!(rule.fec.exec, "blocks");
            assert_eq!(
                (real.fec.complete, real.fec.rebuilt, real.fec.failed),
                (rule.fec.complete, rule.fec.rebuilt, rule.fec.failed)
            );
            assert!(real.fec.rebuilt > 0, "loss {loss} must need parity");
        }
    }

    #[test]
    fn loss_costs_parity_and_every_live_chunk_still_arrives() {
        let clean = run(&small_live(0.0, 1.0)).unwrap();
        assert_eq!(clean.fec.rebuilt + clean.fec.failed, 0);
        let lossy = run(&small_live(0.1, 3.0)).unwrap();
        assert!(lossy.fec.rebuilt > 0 && lossy.fec.failed > 0);
        assert_eq!(lossy.fec.repairs, lossy.fec.failed);
        let edge = lossy
            .live_latency
            .iter()
            .find(|t| t.tier == "edge")
            .unwrap();
        assert_eq!(edge.deliveries as u64, 8 * lossy.chunks);
        let clean_edge = clean
            .live_latency
            .iter()
            .find(|t| t.tier == "edge")
            .unwrap();
        assert!(edge.ms.unwrap().max > clean_edge.ms.unwrap().max);
    }

    #[test]
    fn malicious_peers_are_banned_and_free_riders_cost_honest_edges() {
        let mut s = small_object();
        s.tiers.edges = 40;
        s.peers.malicious = 0.1;
        s.peers.free_riders = 0.3;
        let r = run(&s).unwrap();
        assert!(r.peers_banned > 0);
        // The reputation threshold takes three forged chunks per ban.
        assert!(r.chunks_rejected >= 3 * r.peers_banned);
        let edge = r.completion.iter().find(|t| t.tier == "edge").unwrap();
        assert_eq!(edge.completed, edge.nodes);
        let cost = r.free_rider_cost.unwrap();
        assert!(cost.slowdown_p50 > 0.0 && cost.baseline_p50_s > 0.0);
    }

    #[test]
    fn churned_edges_rejoin_and_finish() {
        let mut s = small_object();
        s.churn.crash_per_hour = 120.0;
        s.churn.leave_per_hour = 120.0;
        s.churn.rejoin_after_s = 1.0;
        let r = run(&s).unwrap();
        assert!(r.crashes > 0 && r.leaves > 0, "{} {}", r.crashes, r.leaves);
        // Each departure rejoins a second later; the run may end in between.
        assert!(r.rejoins > 0 && r.rejoins <= r.crashes + r.leaves);
        let edge = r.completion.iter().find(|t| t.tier == "edge").unwrap();
        assert_eq!(edge.completed, edge.nodes);
    }

    #[test]
    fn small_edge_stores_evict_and_edges_can_trade_less() {
        let roomy = run(&small_object()).unwrap();
        assert_eq!(roomy.store_evictions, 0);
        let mut s = small_object();
        // A quarter of the object fits: early chunks are gone by the time
        // late starters want them from their neighbours.
        s.nodes.edge_store_mb = Some(4);
        s.nodes.relay_store_mb = Some(64);
        let tight = run(&s).unwrap();
        assert!(tight.store_evictions > 0);
        let edge = tight.completion.iter().find(|t| t.tier == "edge").unwrap();
        assert_eq!(edge.completed, edge.nodes);
        assert!(tight.bytes.edge_to_edge_share < roomy.bytes.edge_to_edge_share);
    }

    #[test]
    fn swarming_edges_trade_more_and_finish_sooner_than_in_order_readers() {
        // Everyone asks at once: in-order readers all want the same chunk.
        let mut s = small_object();
        s.peers.start_spread_s = 0.5;
        let swarm = run(&s).unwrap();
        s.peers.swarm = false;
        let readers = run(&s).unwrap();
        let p99 = |r: &Report| {
            let e = r.completion.iter().find(|t| t.tier == "edge").unwrap();
            assert_eq!(e.completed, e.nodes, "{:?}", r.end);
            e.seconds.unwrap().p99
        };
        // In-order readers trade too once the thin relay says "busy" (its
        // admission sends them to neighbours: ~65 %), swarming edges more.
        assert!(
            swarm.bytes.edge_to_edge_share > readers.bytes.edge_to_edge_share + 0.15,
            "{:?} vs {:?}",
            swarm.bytes,
            readers.bytes
        );
        assert!(
            p99(&swarm) < 0.8 * p99(&readers),
            "{} vs {}",
            p99(&swarm),
            p99(&readers)
        );
        // Each relay is a seed of its share: the origin still sends the object once.
        assert_eq!(swarm.bytes.origin, swarm.content_bytes);
    }

    #[test]
    fn a_burst_completes_near_the_floor_because_relays_admit_only_what_they_can_send() {
        // The shipped burst (4 relays, 1 Gbit/s everywhere, everyone asking
        // at once), scaled down: 200 edges, 128 MiB, asking within 60 ms.
        let mut s = shipped_burst();
        s.tiers.edges = 200;
        s.content.object_mb = 128.0;
        s.peers.start_spread_s = 0.06;
        let r = run(&s).unwrap();
        let e = r.completion.iter().find(|t| t.tier == "edge").unwrap();
        assert_eq!(e.completed, e.nodes, "{:?}", r.end);
        let floor = r.content_bytes as f64 * 8.0 / (s.nodes.edge.down_mbps * 1e6);
        let p99 = e.seconds.unwrap().p99;
        // Without admission the relays' queues hold every edge's requests
        // for the last pieces and the tail is several floors long.
        assert!(
            p99 < 2.8 * floor,
            "p99 {p99:.3} s is {:.2}x the floor {floor:.3} s",
            p99 / floor
        );
        assert!(r.busy_replies > 0, "the relays said busy");
        assert_eq!(r.bytes.origin, r.content_bytes);
    }

    #[test]
    fn a_finished_run_says_complete() {
        let r = run(&small_object()).unwrap();
        assert_eq!(r.end.reason, "complete", "{:?}", r.end);
        assert_eq!((r.end.unfinished, r.end.chunks_nowhere), (0, 0));
    }

    #[test]
    fn a_run_cut_by_the_time_limit_says_how_far_it_got_and_is_not_a_stall() {
        let mut s = small_object();
        s.run.max_time_s = 3.0;
        let r = run(&s).unwrap();
        assert_eq!(r.end.reason, "time_limit", "{:?}", r.end);
        assert!(r.end.unfinished > 0);
        assert!(r.end.last_progress_s > 2.0, "{:?}", r.end);
        assert!(
            r.end.detail.contains("run.max_time_s = 3"),
            "{}",
            r.end.detail
        );
        assert!(r.end.detail.contains("s more"), "{}", r.end.detail);
        assert!(r.table().contains("ended: time_limit"));
    }

    #[test]
    fn a_chunk_nobody_can_get_stalls_the_run_which_stops_and_names_it() {
        let s = small_object();
        let o = world::World::new(&s, false).unwrap().withhold(5).run();
        let end = end_of(&s, &o);
        assert_eq!(end.reason, "stalled", "{end:?}");
        // Swarming edges got everything else: only the withheld chunk is nowhere.
        assert_eq!(end.chunks_nowhere, 1, "{end:?}");
        assert_eq!(end.unfinished, 12);
        // Stopped by the watchdog, long before the default hour of virtual time.
        assert!(o.virtual_end_s < end.last_progress_s + 301.0, "{o:?}");
        assert!(
            end.detail.contains("1 of 64 chunks never left the origin"),
            "{}",
            end.detail
        );
        // In-order readers alone stop at the hole: what lies beyond stays home too.
        let mut readers = s.clone();
        readers.peers.swarm = false;
        let o = world::World::new(&readers, false)
            .unwrap()
            .withhold(5)
            .run();
        let end = end_of(&readers, &o);
        assert_eq!(end.reason, "stalled", "{end:?}");
        assert!(end.chunks_nowhere > 1, "{end:?}");
    }

    /// `Have`s wait in a queue until the edge's picker is next called; the
    /// picker must answer exactly as if each had been applied at once. A
    /// burst (every edge asking at once, relays saying busy) and churn
    /// (pickers rebuilt on rejoin) run with and without the queue and must
    /// give the same numbers, event for event.
    #[test]
    fn queued_haves_give_the_run_that_haves_applied_at_once_give() {
        let mut burst = shipped_burst();
        burst.tiers.edges = 60;
        burst.content.object_mb = 48.0;
        let mut churn = small_object();
        churn.churn.crash_per_hour = 120.0;
        churn.churn.leave_per_hour = 120.0;
        churn.churn.rejoin_after_s = 1.0;
        for s in [burst, churn] {
            let at_once = world::World::new(&s, false).unwrap().have_batch(0).run();
            let queued = world::World::new(&s, false).unwrap().run();
            assert_eq!(queued.events, at_once.events, "{}", s.name);
            assert_eq!(queued.completions, at_once.completions, "{}", s.name);
            assert_eq!(
                (queued.bytes_relays, queued.bytes_edges, queued.busy_replies),
                (
                    at_once.bytes_relays,
                    at_once.bytes_edges,
                    at_once.busy_replies
                ),
                "{}",
                s.name
            );
            let done = queued.completions.iter().filter(|c| c.2.is_some()).count();
            assert!(done > 0, "{}", s.name);
        }
    }

    /// A run split into partitions (threads that see each other's nodes
    /// only through messages) is the same simulation: the scaled-down
    /// burst finishes as near the floor as one partition does, the origin
    /// still sends the object once, edges trade as much, and two runs give
    /// the same numbers event for event whatever the threads' timing. A
    /// message handled where its sender runs instead of its receiver
    /// (once, a choke: the partitions' edges traded only within each)
    /// took the p50 from 1.0 to 1.5 times one partition's.
    #[test]
    fn partitions_run_the_same_burst_and_reproducibly() {
        let mut s = shipped_burst();
        s.tiers.edges = 120;
        s.content.object_mb = 96.0;
        s.peers.start_spread_s = 0.06;
        let mut one = s.clone();
        one.run.partitions = 1;
        let single = run(&one).unwrap();
        let mut three = s.clone();
        three.run.partitions = 3;
        let split = run(&three).unwrap();
        let again = run(&three).unwrap();
        assert_eq!(split.completion, again.completion);
        assert_eq!(split.bytes, again.bytes);
        assert_eq!(split.perf.events, again.perf.events);
        let edges = |r: &Report| {
            let e = r.completion.iter().find(|t| t.tier == "edge").unwrap();
            assert_eq!(e.completed, e.nodes, "{:?}", r.end);
            e.seconds.unwrap()
        };
        let (a, b) = (edges(&single), edges(&split));
        for (x, y, what) in [(a.p50, b.p50, "p50"), (a.p99, b.p99, "p99")] {
            assert!(
                (y / x - 1.0).abs() < 0.05,
                "{what}: {y:.3} s in 3 partitions, {x:.3} s in one"
            );
        }
        assert_eq!(split.bytes.origin, split.content_bytes);
        assert!(
            (split.bytes.edge_to_edge_share - single.bytes.edge_to_edge_share).abs() < 0.02,
            "{:?} vs {:?}",
            split.bytes,
            single.bytes
        );
    }

    #[test]
    fn partitions_are_refused_where_nodes_read_each_other_directly() {
        let base = || {
            let mut s = small_object();
            s.network.edge_edge.jitter_ms = 0.2;
            s.network.relay_edge.jitter_ms = 0.2;
            s.run.partitions = 2;
            s
        };
        assert!(base().validate().is_ok());
        let mut live = small_live(0.0, 1.0);
        live.run.partitions = 2;
        let mut churn = base();
        churn.churn.crash_per_hour = 1.0;
        let mut readers = base();
        readers.peers.swarm = false;
        let mut instant = base();
        instant.network.edge_edge.jitter_ms = instant.network.edge_edge.latency_ms;
        let mut many = base();
        many.run.partitions = 13;
        for (s, why) in [
            (live, "live stream"),
            (churn, "churn"),
            (readers, "swarm"),
            (instant, "exceeds jitter_ms"),
            (many, "at most tiers.edges"),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("run.partitions") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_svg_draws_one_curve_per_tier() {
        let r = run(&small_object()).unwrap();
        let svg = r.svg();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("edge (12 of 12)"));
    }
}
