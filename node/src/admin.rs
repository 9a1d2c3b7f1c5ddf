//! The admin API: health, readiness, metrics and status, on its own listener.
//!
//! `router(state)` is a plain function so tests drive it with `oneshot`,
//! without a socket. Health and readiness are open (kubelet probes carry no
//! token); everything else is for operators and tools.

use crate::roles::node::Shared;
use crate::roles::settings::Role;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// The admin router for a running node.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when keys are loaded and, below the origin, an upstream is
/// connected: a node that cannot get content should not get clients.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let keys_loaded = !shared.keys.read().is_empty();
    let upstream = shared.settings.role == Role::Origin
        || shared
            .peer_list()
            .iter()
            .any(|p| p.role.is_upstream_of(shared.settings.role));
    let can_sign = shared.settings.role != Role::Origin || !shared.signers.read().is_empty();
    let body = serde_json::json!({
        "ready": keys_loaded && upstream && can_sign,
        "keys_loaded": keys_loaded,
        "upstream_connected": upstream,
        "can_sign": can_sign,
    });
    let status = if keys_loaded && upstream && can_sign {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.refresh_gauges();
    match shared.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"code": "metrics", "message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let keys = shared.keys.read();
    let stats = shared.store.stats();
    Json(serde_json::json!({
        "name": shared.settings.name,
        "role": shared.settings.role.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "config_hash": shared.settings.config.config_hash(),
        "keyring_generation": keys.generation(),
        "active_key": keys.active().map(|k| k.to_string()),
        "peers": shared.peer_list().len(),
        "chunks": stats.chunks,
        "store_bytes": stats.bytes,
    }))
}
