//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles.
//!
//! The holder renews every `renew`; another replica takes the lease only
//! after it went unrenewed for `duration`. Every write carries the
//! resourceVersion it read, so two replicas racing for an expired lease
//! cannot both win. A leader that fails to renew before its lease would
//! expire steps down (the caller exits and is restarted as a follower).
//!
//! "Unrenewed for `duration`" is measured on the follower's own clock, from
//! when it first saw the holder's current record (as client-go does), never
//! by comparing its clock with the `renewTime` another machine wrote: a
//! holder whose clock runs behind would otherwise look expired while it
//! renews, and two replicas would lead. A leader that shuts down releases
//! the lease (`release`), so a follower takes over at once, not after
//! `duration`.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease until at least this instant.
    Leading,
    /// Someone else holds it.
    Following { holder: String },
}

#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The holder's record as last seen (holder, renewTime) and when, on
    /// this replica's clock.
    observed: parking_lot::Mutex<Option<(String, Option<MicroTime>, Timestamp)>>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: parking_lot::Mutex::new(None),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Tries to take or renew the lease once, at `now`.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let pp = PostParams {
            field_manager: Some(crate::reconcile::FIELD_MANAGER.into()),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&pp, &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                    holder: "another replica".into(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        let expired = {
            let record = (holder.clone(), spec.renew_time.clone());
            let mut observed = self.observed.lock();
            let since = match observed.as_ref() {
                Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
                _ => {
                    *observed = Some((record.0, record.1, now));
                    now
                }
            };
            match spec.lease_duration_seconds {
                Some(d) => now.duration_since(since) > SignedDuration::from_secs(i64::from(d)),
                None => true,
            }
        };
        if !ours && !expired && !holder.is_empty() {
            return Ok(Attempt::Following { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // replace() sends the resourceVersion we read: a concurrent
        // taker makes this fail with 409 instead of both leading.
        match self.api.replace(&self.config.name, &pp, &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following { holder }),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this replica holds it: no holder, so another
    /// replica takes it on its next attempt. Called on shutdown.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        let pp = PostParams {
            field_manager: Some(crate::reconcile::FIELD_MANAGER.into()),
            ..Default::default()
        };
        match self.api.replace(&self.config.name, &pp, &lease).await {
            // Someone wrote it meanwhile: it is not ours to release any more.
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire(Timestamp::now()).await {
                Ok(Attempt::Leading) => return,
                Ok(Attempt::Following { holder }) => {
                    tracing::debug!(%holder, "another replica leads; waiting")
                }
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(self.config.renew).await;
        }
    }

    /// Renews until renewal fails for longer than the lease lasts; returns
    /// then (the caller must stop reconciling).
    pub async fn hold(&self) {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew).await;
            match self.try_acquire(Timestamp::now()).await {
                Ok(Attempt::Leading) => last_ok = std::time::Instant::now(),
                Ok(Attempt::Following { holder }) => {
                    tracing::error!(%holder, "lost the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the leader lease failed");
                    // Step down before the lease can expire under us.
                    if last_ok.elapsed() + self.config.renew >= self.config.duration {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig {
            name: "dcdn-operator".into(),
            namespace: "dcdn-system".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn one_replica_leads_and_another_takes_over_only_after_expiry() {
        let client = kube_fake_client::ClientBuilder::new()
            .build()
            .await
            .unwrap();
        let a = Elector::new(client.clone(), cfg("a"));
        let b = Elector::new(client.clone(), cfg("b"));
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(a.try_acquire(t0).await.unwrap(), Attempt::Leading);
        assert_eq!(
            b.try_acquire(t0 + SignedDuration::from_secs(5))
                .await
                .unwrap(),
            Attempt::Following { holder: "a".into() }
        );
        // a renews; b still follows.
        assert_eq!(
            a.try_acquire(t0 + SignedDuration::from_secs(10))
                .await
                .unwrap(),
            Attempt::Leading
        );
        assert!(matches!(
            b.try_acquire(t0 + SignedDuration::from_secs(20))
                .await
                .unwrap(),
            Attempt::Following { .. }
        ));
        // a stops renewing: b takes over once it has seen the same record
        // for the lease duration on its own clock (from t0+20), not earlier.
        assert!(matches!(
            b.try_acquire(t0 + SignedDuration::from_secs(26))
                .await
                .unwrap(),
            Attempt::Following { .. }
        ));
        let late = t0 + SignedDuration::from_secs(36);
        assert_eq!(b.try_acquire(late).await.unwrap(), Attempt::Leading);
        assert!(matches!(
            a.try_acquire(late + SignedDuration::from_secs(1))
                .await
                .unwrap(),
            Attempt::Following { .. }
        ));
        let lease: Lease = Api::namespaced(client, "dcdn-system")
            .get("dcdn-operator")
            .await
            .unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
    }

    /// A holder whose clock is an hour behind writes renewTimes that look
    /// long expired to a follower; it must still be followed while it
    /// renews, and taken over only when it stops.
    #[tokio::test]
    async fn a_holder_with_a_clock_behind_keeps_the_lease_while_it_renews() {
        let client = kube_fake_client::ClientBuilder::new()
            .build()
            .await
            .unwrap();
        let a = Elector::new(client.clone(), cfg("a"));
        let b = Elector::new(client.clone(), cfg("b"));
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let behind = SignedDuration::from_hours(1);
        for i in 0..6 {
            let t = t0 + SignedDuration::from_secs(5 * i);
            assert_eq!(a.try_acquire(t - behind).await.unwrap(), Attempt::Leading);
            assert_eq!(
                b.try_acquire(t + SignedDuration::from_secs(1))
                    .await
                    .unwrap(),
                Attempt::Following { holder: "a".into() },
                "b took the lease of a live holder at step {i}"
            );
        }
        let last = t0 + SignedDuration::from_secs(26);
        assert!(matches!(
            b.try_acquire(last + SignedDuration::from_secs(10))
                .await
                .unwrap(),
            Attempt::Following { .. }
        ));
        assert_eq!(
            b.try_acquire(last + SignedDuration::from_secs(16))
                .await
                .unwrap(),
            Attempt::Leading
        );
    }

    /// A leader that shuts down releases the lease: the follower takes it
    /// at once instead of after the lease duration.
    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let client = kube_fake_client::ClientBuilder::new()
            .build()
            .await
            .unwrap();
        let a = Elector::new(client.clone(), cfg("a"));
        let b = Elector::new(client.clone(), cfg("b"));
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(a.try_acquire(t0).await.unwrap(), Attempt::Leading);
        assert!(matches!(
            b.try_acquire(t0).await.unwrap(),
            Attempt::Following { .. }
        ));
        // b releasing what it does not hold changes nothing.
        b.release().await.unwrap();
        assert!(matches!(
            b.try_acquire(t0 + SignedDuration::from_secs(1))
                .await
                .unwrap(),
            Attempt::Following { .. }
        ));
        a.release().await.unwrap();
        assert_eq!(
            b.try_acquire(t0 + SignedDuration::from_secs(2))
                .await
                .unwrap(),
            Attempt::Leading
        );
    }
}
