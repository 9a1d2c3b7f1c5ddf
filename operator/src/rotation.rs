//! Signing-key rotation as a pure state machine.
//!
//! Idle → Staged (next key pair in the signing Secret) → Distributing (next
//! public key trusted; wait until every pod reports that keyset generation
//! and the origin holds the next secret key) → Activating (the bundle makes
//! the next key active; wait until every pod reports it) → Draining (wait
//! the chunk TTL plus clock skew, so no chunk signed with the old key is
//! still served) → Retiring (old key revoked; wait until every pod reports
//! it; then the old key is removed from the Secret and the bundle) → Idle.
//!
//! Each step is derived from the recorded phase *and* the key state read
//! back from the cluster, so a step whose writes landed but whose status did
//! not (the operator was killed in between) is recognised and not repeated.

use crate::crd::{KeyRotationSpec, RotationPhase, RotationStatus};
use crate::keys::SigningKeys;
use dcdn_node::config::Role;
use dcdn_node::crypto::{KeyRing, KeyState, Signer};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// The annotation that asks for a rotation now; any new value triggers one.
pub const TRIGGER_ANNOTATION: &str = "dcdn.io/rotate-keys";

/// What one pod's admin API said about its key ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    pub generation: u64,
    /// Key ids this node holds the secret key for (origins).
    pub can_sign: Vec<String>,
    /// Every key in the node's ring, by id, with its state.
    pub keys: BTreeMap<String, KeyState>,
}

/// One pod the tiers should run, and what it reported.
#[derive(Debug, Clone)]
pub struct PodReport {
    pub name: String,
    pub role: Role,
    pub view: Result<KeyView, String>,
}

/// Everything a step needs besides the key state.
#[derive(Debug)]
pub struct Input<'a> {
    pub spec: &'a KeyRotationSpec,
    /// The trigger annotation's value, if set.
    pub trigger: Option<&'a str>,
    pub phase: RotationPhase,
    pub status: &'a RotationStatus,
    /// When the cluster was created; the schedule's start before any rotation.
    pub created: Option<Timestamp>,
    pub now: Timestamp,
    /// How long Draining lasts at least.
    pub drain: Duration,
    /// Reports from every pod expected to run.
    pub pods: &'a [PodReport],
    pub expected_pods: usize,
}

/// What the step decided. The caller writes the signing Secret if the key
/// ids changed, the trust bundle if the ring's generation changed, then
/// the status.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub phase: RotationPhase,
    pub status: RotationStatus,
    /// Ask origin pods to reload their signing-key files.
    pub reload_origins: bool,
    /// A phase change worth an event: (reason, note). The reason names the
    /// phase entered: the event recorder folds events of one reason into a
    /// series that keeps the first note, so one reason for every phase
    /// would show only "staged", counted.
    pub event: Option<(String, String)>,
}

/// Why a rotation cannot proceed at all.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("trust bundle: {0}")]
    Ring(String),
}

fn ring_err(e: impl std::fmt::Display) -> RotationError {
    RotationError::Ring(e.to_string())
}

/// Makes the ring agree with the signing keys outside a rotation: the
/// current key trusted and active. Used on first start and to repair a
/// bundle someone edited.
pub fn ensure_current_active(ring: &mut KeyRing, keys: &SigningKeys) -> Result<(), RotationError> {
    let id = ring
        .add_trusted(keys.current.public_key())
        .map_err(ring_err)?;
    let next = keys.next.as_ref().map(Signer::key_id);
    let active = ring.active();
    if active != Some(id) && (active.is_none() || active != next) {
        ring.activate(id).map_err(ring_err)?;
    }
    Ok(())
}

/// Pods whose ring is not the operator's yet, named (a few). A pod has
/// caught up when it reports at least the ring's generation *and* the same
/// key ids in the same states: a generation alone can mislead (a node keeps
/// a newer ring and refuses an older bundle, e.g. one rebuilt after its
/// ConfigMap was deleted, while holding other keys than the bundle names).
fn laggards(input: &Input<'_>, ring: &KeyRing) -> Option<String> {
    let generation = ring.generation();
    let want: BTreeMap<String, KeyState> = ring
        .keys()
        .into_iter()
        .map(|(id, state)| (id.to_string(), state))
        .collect();
    let mut behind: Vec<String> = input
        .pods
        .iter()
        .filter_map(|p| match &p.view {
            Ok(v) if v.generation >= generation && v.keys == want => None,
            Ok(v) if v.generation >= generation => Some(format!(
                "{} at generation {} holds keys {}",
                p.name,
                v.generation,
                show_keys(&v.keys)
            )),
            Ok(v) => Some(format!("{} at generation {}", p.name, v.generation)),
            Err(e) => Some(format!("{} ({e})", p.name)),
        })
        .collect();
    let missing = input.expected_pods.saturating_sub(input.pods.len());
    if behind.is_empty() && missing == 0 {
        return None;
    }
    let total = behind.len() + missing;
    behind.truncate(3);
    if missing > 0 {
        behind.push(format!("{missing} pod(s) not running"));
    }
    Some(format!(
        "{total} of {} pods to report keyset generation {generation} with keys {}: {}",
        input.expected_pods,
        show_keys(&want),
        behind.join(", ")
    ))
}

fn show_keys(keys: &BTreeMap<String, KeyState>) -> String {
    let shown: Vec<String> = keys
        .iter()
        .map(|(id, state)| format!("{id} {state:?}").to_lowercase())
        .collect();
    format!("[{}]", shown.join(", "))
}

fn due(input: &Input<'_>) -> Option<String> {
    if let Some(t) = input.trigger
        && input.status.handled_trigger.as_deref() != Some(t)
    {
        return Some(format!("annotation {TRIGGER_ANNOTATION}={t}"));
    }
    let period = input.spec.period_hours;
    if period == 0 {
        return None;
    }
    let since = input
        .status
        .last_rotation
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or(input.created)?;
    let elapsed = input.now.duration_since(since);
    (elapsed >= SignedDuration::from_hours(i64::from(period)))
        .then(|| format!("schedule (every {period} h)"))
}

/// One step. Mutates `keys` and `ring` as the next phase requires.
pub fn step(
    input: &Input<'_>,
    keys: &mut SigningKeys,
    ring: &mut KeyRing,
) -> Result<Outcome, RotationError> {
    let mut status = input.status.clone();
    status.waiting_for = None;
    let mut out = Outcome {
        phase: input.phase,
        status,
        reload_origins: false,
        event: None,
    };
    let now = input.now.to_string();
    let enter = |out: &mut Outcome, phase: RotationPhase, note: String| {
        out.phase = phase;
        out.status.phase_since = Some(now.clone());
        out.event = Some((format!("KeyRotation{}", phase.as_str()), note));
    };
    if input.spec.paused {
        if input.phase != RotationPhase::Idle {
            out.status.waiting_for = Some("paused (spec.keyRotation.paused)".into());
        }
        return Ok(out);
    }
    // A next key in the Secret is a rotation under way, whatever the
    // recorded phase says (the status write may have been lost).
    let phase = match (input.phase, &keys.next) {
        (RotationPhase::Idle, Some(_)) => RotationPhase::Staged,
        (p, _) => p,
    };
    match phase {
        RotationPhase::Idle => {
            ensure_current_active(ring, keys)?;
            if let Some(reason) = due(input) {
                let next = Signer::generate(&mut rand::rngs::OsRng);
                out.status.next_key_id = Some(next.key_id().to_string());
                out.status.handled_trigger = input.trigger.map(str::to_owned);
                keys.next = Some(next);
                enter(
                    &mut out,
                    RotationPhase::Staged,
                    format!("new signing key staged, because of {reason}"),
                );
            }
        }
        RotationPhase::Staged => {
            let Some(next) = &keys.next else {
                // Nothing staged after all: back to rest.
                out.phase = RotationPhase::Idle;
                return Ok(out);
            };
            out.status.next_key_id = Some(next.key_id().to_string());
            ring.add_trusted(next.public_key()).map_err(ring_err)?;
            enter(
                &mut out,
                RotationPhase::Distributing,
                format!("key {} trusted; distributing", next.key_id()),
            );
        }
        RotationPhase::Distributing => {
            let Some(next) = &keys.next else {
                out.phase = RotationPhase::Idle;
                return Ok(out);
            };
            let next_id = next.key_id();
            if ring.active() == Some(next_id) {
                enter(
                    &mut out,
                    RotationPhase::Activating,
                    format!("key {next_id} active"),
                );
                return Ok(out);
            }
            ring.add_trusted(next.public_key()).map_err(ring_err)?;
            if let Some(w) = laggards(input, ring) {
                out.status.waiting_for = Some(w);
                return Ok(out);
            }
            let origins_ready = input
                .pods
                .iter()
                .filter(|p| p.role == Role::Origin)
                .all(|p| matches!(&p.view, Ok(v) if v.can_sign.contains(&next_id.to_string())));
            if !origins_ready {
                out.reload_origins = true;
                out.status.waiting_for =
                    Some(format!("the origin to load the secret key of {next_id}"));
                return Ok(out);
            }
            ring.activate(next_id).map_err(ring_err)?;
            enter(
                &mut out,
                RotationPhase::Activating,
                format!("origin signs with key {next_id}"),
            );
        }
        RotationPhase::Activating => {
            if let Some(w) = laggards(input, ring) {
                out.status.waiting_for = Some(w);
                return Ok(out);
            }
            enter(
                &mut out,
                RotationPhase::Draining,
                format!(
                    "every pod uses the new key; draining chunks signed with the old one for {} s",
                    input.drain.as_secs()
                ),
            );
        }
        RotationPhase::Draining => {
            let old = keys.current.key_id();
            let already = ring.state(old) == Some(KeyState::Revoked);
            let since = out
                .status
                .phase_since
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(input.now);
            let waited = input.now.duration_since(since);
            let drain = SignedDuration::try_from(input.drain).unwrap_or(SignedDuration::MAX);
            if !already && waited < drain {
                let left = drain - waited;
                out.status.waiting_for = Some(format!(
                    "{} s more for chunks signed with key {old} to expire",
                    left.as_secs()
                ));
                return Ok(out);
            }
            if !already {
                ring.revoke(old).map_err(ring_err)?;
            }
            enter(
                &mut out,
                RotationPhase::Retiring,
                format!("key {old} revoked"),
            );
        }
        RotationPhase::Retiring => {
            if let Some(next) = keys.next.take() {
                if let Some(w) = laggards(input, ring) {
                    keys.next = Some(next);
                    out.status.waiting_for = Some(w);
                    return Ok(out);
                }
                keys.current = next;
            }
            // Revoked keys leave the bundle: a chunk signed with one is then
            // refused as unknown, and the bundle stays small.
            for (id, state) in ring.keys() {
                if state == KeyState::Revoked {
                    ring.remove(id).map_err(ring_err)?;
                }
            }
            ensure_current_active(ring, keys)?;
            out.status.next_key_id = None;
            out.status.last_rotation = Some(now.clone());
            enter(
                &mut out,
                RotationPhase::Idle,
                format!("rotation done; key {} active", keys.current.key_id()),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KeyRotationSpec {
        KeyRotationSpec::default()
    }

    /// Every pod at `generation`, holding the keys of `ring`.
    fn reports(generation: u64, can_sign: &[String], ring: &KeyRing) -> Vec<PodReport> {
        let keys: BTreeMap<String, KeyState> = ring
            .keys()
            .into_iter()
            .map(|(id, state)| (id.to_string(), state))
            .collect();
        [
            ("o-0", Role::Origin),
            ("r-0", Role::Relay),
            ("e-0", Role::Edge),
        ]
        .into_iter()
        .map(|(n, role)| PodReport {
            name: n.into(),
            role,
            view: Ok(KeyView {
                generation,
                can_sign: if role == Role::Origin {
                    can_sign.to_vec()
                } else {
                    vec![]
                },
                keys: keys.clone(),
            }),
        })
        .collect()
    }

    struct World {
        keys: SigningKeys,
        ring: KeyRing,
        phase: RotationPhase,
        status: RotationStatus,
        now: Timestamp,
    }

    impl World {
        fn new() -> Self {
            let keys = SigningKeys::generate();
            let mut ring = KeyRing::new();
            ensure_current_active(&mut ring, &keys).unwrap();
            Self {
                keys,
                ring,
                phase: RotationPhase::Idle,
                status: RotationStatus::default(),
                now: "2026-01-01T00:00:00Z".parse().unwrap(),
            }
        }
        /// One step at the world's phase, status and time.
        fn run(
            &mut self,
            spec: &KeyRotationSpec,
            trigger: Option<&str>,
            pods: &[PodReport],
            expected_pods: usize,
            drain: Duration,
        ) -> Outcome {
            let input = Input {
                spec,
                trigger,
                phase: self.phase,
                status: &self.status,
                created: None,
                now: self.now,
                drain,
                pods,
                expected_pods,
            };
            step(&input, &mut self.keys, &mut self.ring).unwrap()
        }
        /// One step with every pod at `generation` and the origin holding
        /// whichever keys the Secret has.
        fn step(&mut self, generation: u64, trigger: Option<&str>) -> Outcome {
            let mut signable = vec![self.keys.current.key_id().to_string()];
            if let Some(n) = &self.keys.next {
                signable.push(n.key_id().to_string());
            }
            let pods = reports(generation, &signable, &self.ring);
            let spec = spec();
            let out = self.run(&spec, trigger, &pods, 3, Duration::from_secs(3605));
            self.phase = out.phase;
            self.status = out.status.clone();
            out
        }
    }

    #[test]
    fn a_triggered_rotation_walks_every_phase_gated_on_the_pods() {
        let mut w = World::new();
        let old = w.keys.current.key_id();
        assert_eq!(w.step(w.ring.generation(), None).phase, RotationPhase::Idle);
        let out = w.step(w.ring.generation(), Some("1"));
        assert_eq!(out.phase, RotationPhase::Staged);
        let new = w.keys.next.as_ref().unwrap().key_id();
        assert_eq!(
            w.step(w.ring.generation(), Some("1")).phase,
            RotationPhase::Distributing
        );
        // Pods still on the old bundle hold the rotation.
        let g = w.ring.generation();
        let held = w.step(g - 1, Some("1"));
        assert_eq!(held.phase, RotationPhase::Distributing);
        assert!(held.status.waiting_for.unwrap().contains("3 of 3 pods"));
        assert_eq!(w.step(g, Some("1")).phase, RotationPhase::Activating);
        assert_eq!(w.ring.active(), Some(new));
        assert_eq!(
            w.step(w.ring.generation() - 1, Some("1")).phase,
            RotationPhase::Activating
        );
        assert_eq!(
            w.step(w.ring.generation(), Some("1")).phase,
            RotationPhase::Draining
        );
        // Draining lasts the TTL plus skew.
        w.now += SignedDuration::from_secs(60);
        let d = w.step(w.ring.generation(), Some("1"));
        assert_eq!(d.phase, RotationPhase::Draining);
        assert!(
            d.status
                .waiting_for
                .unwrap()
                .contains("more for chunks signed")
        );
        w.now += SignedDuration::from_secs(3600);
        assert_eq!(
            w.step(w.ring.generation(), Some("1")).phase,
            RotationPhase::Retiring
        );
        assert_eq!(w.ring.state(old), Some(KeyState::Revoked));
        assert_eq!(
            w.step(w.ring.generation() - 1, Some("1")).phase,
            RotationPhase::Retiring
        );
        let done = w.step(w.ring.generation(), Some("1"));
        assert_eq!(done.phase, RotationPhase::Idle);
        assert_eq!(w.keys.current.key_id(), new);
        assert!(w.keys.next.is_none());
        assert_eq!(w.ring.keys(), vec![(new, KeyState::Active)]);
        // The same annotation value does not rotate again.
        assert_eq!(
            w.step(w.ring.generation(), Some("1")).phase,
            RotationPhase::Idle
        );
    }

    #[test]
    fn a_pod_at_the_generation_but_without_the_next_key_holds_the_rotation() {
        let mut w = World::new();
        w.step(0, Some("k"));
        let before = w.ring.clone();
        assert_eq!(w.step(0, Some("k")).phase, RotationPhase::Distributing);
        let g = w.ring.generation();
        // Every pod says generation g, but one still holds the ring from
        // before the next key was trusted (it refused a bundle it saw as
        // older and kept its own).
        let signable = [
            w.keys.current.key_id().to_string(),
            w.keys.next.as_ref().unwrap().key_id().to_string(),
        ];
        let mut pods = reports(g, &signable, &w.ring);
        pods[2] = reports(g + 5, &signable, &before).remove(2);
        let spec = spec();
        let out = w.run(&spec, Some("k"), &pods, 3, Duration::from_secs(1));
        assert_eq!(out.phase, RotationPhase::Distributing);
        let why = out.status.waiting_for.unwrap();
        assert!(
            why.contains("e-0 at generation") && why.contains("holds keys"),
            "{why}"
        );
        // Once it holds the same keys, the rotation moves on.
        let pods = reports(g, &signable, &w.ring);
        let out = w.run(&spec, Some("k"), &pods, 3, Duration::from_secs(1));
        assert_eq!(out.phase, RotationPhase::Activating);
    }

    #[test]
    fn activation_waits_for_the_origin_to_hold_the_next_secret_key() {
        let mut w = World::new();
        w.step(0, Some("go"));
        w.step(0, Some("go"));
        let g = w.ring.generation();
        let next = w.keys.next.as_ref().unwrap().key_id();
        // The origin reports the bundle but only the old secret key.
        let pods = reports(g, &[w.keys.current.key_id().to_string()], &w.ring);
        let spec = spec();
        let out = w.run(&spec, Some("go"), &pods, 3, Duration::from_secs(1));
        assert_eq!(out.phase, RotationPhase::Distributing);
        assert!(out.reload_origins);
        assert_ne!(
            w.ring.active(),
            Some(next),
            "never activate a key the origin cannot sign with"
        );
    }

    #[test]
    fn a_lost_status_write_is_recognised_from_the_key_state() {
        let mut w = World::new();
        w.step(0, Some("x"));
        // The Secret got the next key but the status still says Idle.
        w.phase = RotationPhase::Idle;
        assert_eq!(w.step(0, Some("x")).phase, RotationPhase::Distributing);
        let next = w.keys.next.as_ref().unwrap().key_id();
        assert_eq!(
            w.step(w.ring.generation(), Some("x")).phase,
            RotationPhase::Activating
        );
        // Bundle activated, status lost: Distributing again moves on without a new write.
        w.phase = RotationPhase::Distributing;
        let g = w.ring.generation();
        assert_eq!(w.step(g, Some("x")).phase, RotationPhase::Activating);
        assert_eq!(w.ring.generation(), g);
        assert_eq!(w.ring.active(), Some(next));
    }

    #[test]
    fn paused_holds_any_phase_and_an_unreachable_pod_is_named() {
        let mut w = World::new();
        w.step(0, Some("p"));
        let mut spec = spec();
        spec.paused = true;
        let pods = reports(0, &[], &w.ring);
        let out = w.run(&spec, Some("p"), &pods, 3, Duration::from_secs(1));
        assert_eq!(out.phase, RotationPhase::Staged);
        assert!(out.status.waiting_for.unwrap().contains("paused"));
        w.step(0, Some("p"));
        let mut pods = reports(w.ring.generation(), &[], &w.ring);
        pods[2].view = Err("connection refused".into());
        let spec = KeyRotationSpec::default();
        let out = w.run(&spec, Some("p"), &pods[..], 4, Duration::from_secs(1));
        let why = out.status.waiting_for.unwrap();
        assert!(
            why.contains("e-0 (connection refused)") && why.contains("1 pod(s) not running"),
            "{why}"
        );
    }

    #[test]
    fn the_schedule_starts_a_rotation_after_the_period() {
        let mut w = World::new();
        let mut spec = spec();
        spec.period_hours = 24;
        let created: Timestamp = "2025-12-31T00:00:00Z".parse().unwrap();
        let pods = reports(0, &[], &w.ring);
        let run = |now: Timestamp, w: &mut World| {
            let input = Input {
                spec: &spec,
                trigger: None,
                phase: w.phase,
                status: &w.status,
                created: Some(created),
                now,
                drain: Duration::from_secs(1),
                pods: &pods,
                expected_pods: 3,
            };
            step(&input, &mut w.keys, &mut w.ring).unwrap().phase
        };
        let early = created + SignedDuration::from_hours(23);
        assert_eq!(run(early, &mut w), RotationPhase::Idle);
        let late = created + SignedDuration::from_hours(24);
        assert_eq!(run(late, &mut w), RotationPhase::Staged);
    }
}
