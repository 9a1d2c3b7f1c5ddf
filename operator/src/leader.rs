//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles.
//!
//! The holder renews every `renew`; another replica takes the lease only
//! after it went unrenewed for `duration`. Every write carries the
//! resourceVersion it read, so two replicas racing for an expired lease
//! cannot both win. A leader that fails to renew before its lease would
//! expire steps down (the caller exits and is restarted as a follower).

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
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
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
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => now.duration_since(t.0) > SignedDuration::from_secs(i64::from(d)),
            _ => true,
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
        // a stops renewing: after the lease duration b takes over.
        let late = t0 + SignedDuration::from_secs(26);
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
}
