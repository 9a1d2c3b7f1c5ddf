//! `dcdn-operator run`: health and metrics endpoints, leader election, the
//! controller, and graceful shutdown.

use crate::crd::DcdnCluster;
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::node_admin::HttpNodeAdmin;
use crate::reconcile::{self, Context};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How `run` is set up (flags and environment).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub http_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    /// Only this namespace; all when empty.
    pub watch_namespace: Option<String>,
}

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: checking the CRD\n",
        )
    }
}

async fn render_metrics(State(h): State<Health>) -> String {
    h.metrics.render()
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs until SIGTERM, or until leadership is lost (then returns an
/// error, so the process exits and restarts as a follower).
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });

    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "no Kubernetes API: {e} (in a pod the service account is used; elsewhere KUBECONFIG)"
        )
    })?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = "dcdnclusters.dcdn.io";
    match crds.get_opt(crd_name).await {
        Ok(Some(_)) => {}
        Ok(None) => anyhow::bail!(
            "the CustomResourceDefinition {crd_name} is not installed: `kubectl apply --server-side -f helm/dcdn/crds/` (or `dcdn-operator crd | kubectl apply -f -`)"
        ),
        Err(e) => anyhow::bail!("checking for CRD {crd_name}: {e}"),
    }
    ready.store(true, Ordering::Relaxed);

    let elector = config.leader_election.then(|| {
        Elector::new(
            client.clone(),
            LeaseConfig {
                name: config.lease_name.clone(),
                namespace: config.lease_namespace.clone(),
                identity: config.identity.clone(),
                duration: Duration::from_secs(15),
                renew: Duration::from_secs(5),
            },
        )
    });
    if let Some(e) = &elector {
        tracing::info!(identity = %config.identity, lease = %config.lease_name, "waiting to lead");
        tokio::select! {
            _ = e.acquire() => {}
            _ = shutdown_signal() => return Ok(()),
        }
        tracing::info!("leading");
    }
    metrics.leader.set(1);

    let mut ctx = Context::new(client.clone(), HttpNodeAdmin::default(), metrics.clone());
    ctx.recorder = Some(Recorder::new(
        client.clone(),
        Reporter {
            controller: "dcdn-operator".into(),
            instance: Some(config.identity.clone()),
        },
    ));
    let ctx = Arc::new(ctx);
    let (clusters, sts, cms, svcs) = match &config.watch_namespace {
        Some(ns) => (
            Api::<DcdnCluster>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=dcdn-operator");
    let controller = Controller::new(clusters, watcher::Config::default())
        .owns(sts, owned.clone())
        .owns(cms, owned.clone())
        .owns(svcs, owned)
        .graceful_shutdown_on(shutdown_signal())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    match &elector {
        Some(e) => {
            tokio::select! {
                _ = controller => {
                    // Shut down: hand the lease over now, so a follower does
                    // not wait out its duration (a rolling update of the
                    // operator would otherwise reconcile nothing for 15 s).
                    metrics.leader.set(0);
                    if let Err(err) = e.release().await {
                        tracing::warn!(error = %err, "releasing the leader lease failed; it expires on its own");
                    }
                    Ok(())
                }
                _ = e.hold() => {
                    metrics.leader.set(0);
                    anyhow::bail!("lost leadership; exiting so a follower can take over")
                }
            }
        }
        None => {
            controller.await;
            Ok(())
        }
    }
}
