//! The admin API: health, readiness, metrics, status, peers, store, config
//! and keys, on its own listener.
//!
//! `router(state)` is a plain function so tests drive it with `oneshot`,
//! without a socket. Health, readiness and metrics are open (kubelet probes
//! and Prometheus carry no token); every other route needs a bearer token:
//! the read token or the admin token for `GET`, the admin token for anything
//! that changes the node. Errors are JSON with a stable `code` and a human
//! `message`.

use crate::chunk::KeyId;
use crate::roles::ingest::constant_time_eq;
use crate::roles::node::Shared;
use crate::roles::serve::HttpError;
use crate::roles::settings::Role;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

/// Bearer tokens and what they may do.
#[derive(Clone, Default)]
pub struct AdminTokens {
    /// May read and change.
    pub admin: Option<String>,
    /// May read.
    pub read: Option<String>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTokens")
            .field("admin", &self.admin.as_ref().map(|_| "<redacted>"))
            .field("read", &self.read.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Read,
    Admin,
}

impl AdminTokens {
    fn scope_of(&self, presented: &str) -> Option<Scope> {
        let is = |t: &Option<String>| {
            t.as_deref().is_some_and(|t| {
                !t.is_empty() && constant_time_eq(t.as_bytes(), presented.as_bytes())
            })
        };
        if is(&self.admin) {
            Some(Scope::Admin)
        } else if is(&self.read) {
            Some(Scope::Read)
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    tokens: AdminTokens,
    config_path: Option<std::path::PathBuf>,
}

/// The admin router for a running node.
pub fn router(
    shared: Arc<Shared>,
    tokens: AdminTokens,
    config_path: Option<std::path::PathBuf>,
) -> Router {
    let state = AdminState {
        shared: shared.clone(),
        tokens,
        config_path,
    };
    let read = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/store", get(store))
        .route("/v1/config", get(config))
        .route("/v1/keys", get(keys))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_read,
        ));
    let admin = Router::new()
        .route("/v1/config/reload", post(reload))
        .route("/v1/keys", post(add_key))
        .route("/v1/keys/{id}/activate", post(activate_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(read)
        .merge(admin)
        .route_layer(axum::middleware::from_fn_with_state(
            shared.metrics.clone(),
            crate::roles::serve::count_requests,
        ))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such admin route")
}

async fn require(state: &AdminState, req: Request, next: Next, need: Scope) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return HttpError::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "this route needs an Authorization: Bearer token",
        )
        .into_response();
    };
    match state.tokens.scope_of(presented) {
        None => HttpError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is not valid here",
        )
        .into_response(),
        Some(scope) if scope < need => HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route changes the node and needs the admin token; the read token cannot",
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

async fn require_read(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    require(&state, req, next, Scope::Read).await
}

async fn require_admin(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    require(&state, req, next, Scope::Admin).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when keys are loaded and, below the origin, an upstream is
/// connected: a node that cannot get content should not get clients.
async fn readyz(State(state): State<AdminState>) -> Response {
    let shared = &state.shared;
    let keys_loaded = !shared.keys.read().is_empty();
    let upstream = shared.settings.role == Role::Origin
        || shared
            .peer_list()
            .iter()
            .any(|p| p.role.is_upstream_of(shared.settings.role));
    let can_sign = shared.settings.role != Role::Origin || {
        let active = shared.keys.read().active();
        active.is_some_and(|id| shared.signers.read().contains_key(&id))
    };
    let draining = shared.is_shutting_down();
    let ready = keys_loaded && upstream && can_sign && !draining;
    let body = serde_json::json!({
        "ready": ready,
        "keys_loaded": keys_loaded,
        "upstream_connected": upstream,
        "can_sign": can_sign,
        "draining": draining,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.shared.refresh_gauges();
    match state.shared.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string())
            .into_response(),
    }
}

async fn status(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let shared = &state.shared;
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

async fn peers(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let shared = &state.shared;
    let now = Instant::now();
    let peer_list = shared.peer_list();
    let choker_stats = shared.choker.lock().stats(now);
    let reputation = shared.reputation.lock();
    let list: Vec<serde_json::Value> = peer_list
        .iter()
        .map(|p| {
            let c = choker_stats.iter().find(|s| s.peer == p.id);
            let rtt = p.conn.rtt();
            serde_json::json!({
                "id": p.id.to_string(),
                "name": p.name,
                "role": p.role.as_str(),
                "address": p.conn.remote_address().to_string(),
                "bytes_in": p.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                "bytes_out": p.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                "download_rate_bytes_per_second": c.map(|c| c.download_rate),
                "upload_rate_bytes_per_second": c.map(|c| c.upload_rate),
                "unchoked_by_us": c.map(|c| c.unchoked),
                "unchoked_us": p.unchoked_us.load(std::sync::atomic::Ordering::Relaxed),
                "subscribed": p.subscribed.load(std::sync::atomic::Ordering::Relaxed),
                "parity": p.current_parity.load(std::sync::atomic::Ordering::Relaxed),
                "rtt_ms": rtt.as_secs_f64() * 1000.0,
                "reputation": reputation.score(p.id, now),
                "banned": reputation.is_banned(p.id, now),
            })
        })
        .collect();
    Json(serde_json::json!({ "peers": list }))
}

async fn store(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let st = state.shared.store.stats();
    Json(serde_json::json!({
        "chunks": st.chunks,
        "bytes": st.bytes,
        "budget_bytes": st.budget_bytes,
        "hits": st.hits,
        "misses": st.misses,
        "hit_ratio": st.hit_ratio(),
        "inserts": st.inserts,
        "evictions": st.evictions,
        "expirations": st.expirations,
    }))
}

/// The effective config. It holds no secrets — tokens and keys live in
/// files it names — so nothing needs redacting but the file contents, which
/// are never read into it.
async fn config(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "config_hash": state.shared.settings.config.config_hash(),
        "config": state.shared.settings.config,
    }))
}

/// Re-reads the config file. The trust bundle and signing keys it names are
/// reloaded live; any other change is reported as needing a restart.
async fn reload(State(state): State<AdminState>) -> Result<Json<serde_json::Value>, HttpError> {
    let Some(path) = &state.config_path else {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "no_config_file",
            "this node was not started from a config file",
        ));
    };
    let new = crate::config::NodeConfig::from_file(path, std::env::vars()).map_err(|e| {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )
    })?;
    let shared = &state.shared;
    let keyring_changed = shared
        .reload_trust_bundle(&new.crypto.trust_bundle)
        .map_err(|e| HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_trust_bundle", e))?;
    let signers = shared
        .reload_signers(&new.crypto.signing_keys)
        .map_err(|e| HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_signing_key", e))?;
    let old = serde_json::to_value(&shared.settings.config).unwrap_or_default();
    let fresh = serde_json::to_value(&new).unwrap_or_default();
    let mut restart = Vec::new();
    if let (Some(o), Some(n)) = (old.as_object(), fresh.as_object()) {
        for (section, v) in n {
            if o.get(section) != Some(v) {
                restart.push(section.clone());
            }
        }
    }
    Ok(Json(serde_json::json!({
        "applied": ["crypto.trust_bundle (contents)", "crypto.signing_keys (contents)"],
        "keyring_changed": keyring_changed,
        "signing_keys_loaded": signers,
        "restart_required_for": restart,
        "keyring_generation": shared.keys.read().generation(),
    })))
}

async fn keys(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let ring = state.shared.keys.read();
    let signers = state.shared.signers.read();
    let bundle = ring.to_bundle();
    let keys: Vec<serde_json::Value> = bundle
        .keys
        .iter()
        .map(|k| {
            let can_sign = signers.keys().any(|id| id.to_string() == k.id);
            serde_json::json!({
                "id": k.id,
                "public_key": k.public_key,
                "state": k.state,
                "can_sign_here": can_sign,
            })
        })
        .collect();
    Json(serde_json::json!({
        "generation": bundle.generation,
        "active": ring.active().map(|k| k.to_string()),
        "keys": keys,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKey {
    /// Ed25519 public key, 64 hex digits.
    public_key: String,
}

fn key_error(e: crate::crypto::KeyError) -> HttpError {
    use crate::crypto::KeyError as K;
    let (status, code) = match &e {
        K::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_key"),
        K::Revoked(_) => (StatusCode::CONFLICT, "revoked_key"),
        K::ActiveKey(_) => (StatusCode::CONFLICT, "active_key"),
        K::Full => (StatusCode::CONFLICT, "key_ring_full"),
        K::BadPublicKey(_) => (StatusCode::BAD_REQUEST, "bad_public_key"),
        _ => (StatusCode::BAD_REQUEST, "key_error"),
    };
    HttpError::new(status, code, e.to_string())
}

fn parse_key_id(id: &str) -> Result<KeyId, HttpError> {
    u64::from_str_radix(id, 16).map(KeyId).map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "bad_key_id",
            format!("key id {id:?} is not 16 hex digits"),
        )
    })
}

fn key_changed(state: &AdminState) -> Json<serde_json::Value> {
    let generation = state.shared.keys.read().generation();
    state
        .shared
        .metrics
        .keyring_generation
        .set(generation as i64);
    Json(serde_json::json!({ "generation": generation }))
}

async fn add_key(
    State(state): State<AdminState>,
    body: Result<Json<AddKey>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let Json(body) =
        body.map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let bytes = hex::decode(body.public_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "bad_public_key",
                "public_key must be 64 hex digits",
            )
        })?;
    let id = state
        .shared
        .keys
        .write()
        .add_trusted(bytes)
        .map_err(key_error)?;
    let mut out = key_changed(&state);
    out.0["id"] = serde_json::Value::String(id.to_string());
    Ok(out)
}

async fn activate_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let id = parse_key_id(&id)?;
    if state.shared.settings.role == Role::Origin && !state.shared.signers.read().contains_key(&id)
    {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "no_secret_key",
            format!(
                "this origin has no secret key for {id}; add it to crypto.signing_keys and reload first"
            ),
        ));
    }
    state.shared.keys.write().activate(id).map_err(key_error)?;
    Ok(key_changed(&state))
}

async fn revoke_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let id = parse_key_id(&id)?;
    state.shared.keys.write().revoke(id).map_err(key_error)?;
    Ok(key_changed(&state))
}
