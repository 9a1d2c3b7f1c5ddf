//! The admin API: health, readiness, metrics, status, peers, store, config
//! and keys, on its own listener.
//!
//! `router(state)` is a plain function so tests drive it with `oneshot`,
//! without a socket. Health, readiness and metrics are open (kubelet probes
//! and Prometheus carry no token); every other route needs a bearer token:
//! the read token or the admin token for `GET`, the admin token for anything
//! that changes the node. Errors are JSON with a stable `code` and a human
//! `message`.

use crate::auth::{self, Refusal, Token};
use crate::chunk::KeyId;
use crate::roles::node::Shared;
use crate::roles::serve::ErrorBody;
use crate::roles::serve::HttpError;
use crate::roles::settings::Role;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Bearer tokens and what they may do, known by their digests only (see
/// [`crate::auth`]).
#[derive(Clone, Default, Debug)]
pub struct AdminTokens {
    /// May read and change.
    pub admin: Option<Token>,
    /// May read.
    pub read: Option<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Read,
    Admin,
}

impl AdminTokens {
    /// Both plain tokens, for tests and in-process callers.
    pub fn plain(admin: &str, read: &str) -> Self {
        Self {
            admin: Token::from_secret(admin).ok(),
            read: Token::from_secret(read).ok(),
        }
    }

    fn scope_of(&self, presented: &str) -> Option<Scope> {
        // Both are checked whatever the first says, so timing does not tell
        // which scope a guess was closer to.
        let admin = self.admin.as_ref().is_some_and(|t| t.matches(presented));
        let read = self.read.as_ref().is_some_and(|t| t.matches(presented));
        if admin {
            Some(Scope::Admin)
        } else if read {
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
    /// Set the first time `/readyz` answered ready; see `readyz`.
    was_ready: Arc<std::sync::atomic::AtomicBool>,
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
        was_ready: Arc::default(),
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
        .route("/v1/openapi.json", get(openapi_doc))
        .merge(read)
        .merge(admin)
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(shared.metrics.clone()),
            crate::roles::serve::count_requests,
        ))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such admin route")
}

async fn require(state: &AdminState, req: Request, next: Next, need: Scope) -> Response {
    let refusal = match auth::bearer(req.headers()) {
        Err(r) => r,
        Ok(presented) => match state.tokens.scope_of(presented) {
            None => Refusal::BadToken,
            Some(scope) if scope < need => Refusal::Forbidden,
            Some(_) => return next.run(req).await,
        },
    };
    state
        .shared
        .metrics
        .auth_refused
        .with_label_values(&["admin", refusal.as_str()])
        .inc();
    let message = match refusal {
        Refusal::Missing => "this route needs an Authorization: Bearer token",
        Refusal::Malformed => "the Authorization header must be `Bearer <token>`",
        Refusal::BadToken => "the bearer token is not valid here",
        Refusal::Forbidden => {
            "this route changes the node and needs the admin token; the read token cannot"
        }
    };
    HttpError::new(refusal.status(), refusal.as_str(), message)
        .with_header(header::WWW_AUTHENTICATE, refusal.challenge("dcdn-admin"))
        .into_response()
}

async fn require_read(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    require(&state, req, next, Scope::Read).await
}

async fn require_admin(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    require(&state, req, next, Scope::Admin).await
}

/// The admin API's OpenAPI document, generated from the handlers below.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "DCDN node admin API",
        description = "Health, readiness, metrics, status, peers, store, config and signing keys of one DCDN node. \
Read routes take the read or admin bearer token; mutating routes take the admin token; \
/healthz, /readyz, /metrics and this document are open."
    ),
    paths(
        healthz, readyz, metrics, openapi_doc, status, peers, store, config, reload, keys, add_key,
        activate_key, revoke_key
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "probes", description = "Open: kubelet probes and Prometheus carry no token"),
        (name = "read", description = "Read token or admin token"),
        (name = "admin", description = "Admin token only")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document as pretty JSON, ending in a newline: what is served
/// at `/v1/openapi.json` and committed as `deploy/openapi/admin.json`.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    // Keep the committed copy stable across releases.
    doc.info.version = "v1".into();
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The process is alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "probes",
    responses((status = 200, description = "This document", content_type = "application/json")))]
async fn openapi_doc() -> Response {
    // The document is fixed for the life of the binary: build it once.
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(openapi_json).as_str();
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// Why a node is or is not ready.
#[derive(Serialize, utoipa::ToSchema)]
struct Readiness {
    ready: bool,
    keys_loaded: bool,
    /// Always true on an origin; below it, a connection to an upstream tier.
    upstream_connected: bool,
    /// Always true below the origin; on it, a secret key for the active key id.
    can_sign: bool,
    draining: bool,
}

/// Ready when keys are loaded and, below the origin, an upstream is
/// connected: a node that cannot get content should not get clients. Once
/// ready, losing every upstream does not make it unready again (only
/// draining does): it still serves what it holds, and readiness that
/// follows the tier above cascades, so one relay restart would empty the
/// edge Service and fail every client, cached content included.
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "Ready to serve", body = Readiness),
    (status = 503, description = "Not ready; the body says why", body = Readiness)))]
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
    let was_ready = state.was_ready.load(std::sync::atomic::Ordering::Relaxed);
    let ready = keys_loaded && (upstream || was_ready) && can_sign && !draining;
    if ready {
        state
            .was_ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let body = Readiness {
        ready,
        keys_loaded,
        upstream_connected: upstream,
        can_sign,
        draining,
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "probes", responses(
    (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
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

#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    name: String,
    role: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    /// Hash of the effective config; the operator compares it across pods.
    config_hash: String,
    keyring_generation: u64,
    /// Key id the origin signs with, 16 hex digits.
    active_key: Option<String>,
    peers: usize,
    chunks: usize,
    store_bytes: usize,
    /// Objects this edge is pulling whole now (after a client asked, or a
    /// preheat), with their progress.
    swarms: Vec<crate::roles::swarm::SwarmStatus>,
}

#[utoipa::path(get, path = "/v1/status", tag = "read", security(("bearer" = [])), responses(
    (status = 200, body = Status),
    (status = 401, description = "No or unknown token", body = ErrorBody)))]
async fn status(State(state): State<AdminState>) -> Json<Status> {
    let shared = &state.shared;
    let keys = shared.keys.read();
    let stats = shared.store.stats();
    Json(Status {
        name: shared.settings.name.clone(),
        role: shared.settings.role.as_str(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: shared.started.elapsed().as_secs(),
        config_hash: shared.settings.config.config_hash(),
        keyring_generation: keys.generation(),
        active_key: keys.active().map(|k| k.to_string()),
        peers: shared.peer_list().len(),
        chunks: stats.chunks,
        store_bytes: stats.bytes,
        swarms: shared.swarms.status(),
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct PeerInfo {
    id: String,
    name: String,
    role: &'static str,
    address: String,
    bytes_in: u64,
    bytes_out: u64,
    /// New chunks this peer pushed to us.
    chunks_pushed_in: u64,
    /// We take pushes from this peer (one upstream at a time; the others
    /// answer pulls).
    push_upstream: bool,
    download_rate_bytes_per_second: Option<f64>,
    upload_rate_bytes_per_second: Option<f64>,
    /// Our choker lets this peer download from us.
    unchoked_by_us: Option<bool>,
    /// This peer lets us download from it.
    unchoked_us: bool,
    subscribed: bool,
    /// Parity shards per group we currently send this peer.
    parity: u16,
    rtt_ms: f64,
    /// The path's current UDP payload size in bytes (QUIC's MTU).
    mtu: u16,
    /// Times QUIC judged the path an MTU black hole and fell back to the
    /// minimum MTU.
    black_holes: u64,
    reputation: f64,
    banned: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct PeerList {
    peers: Vec<PeerInfo>,
}

#[utoipa::path(get, path = "/v1/peers", tag = "read", security(("bearer" = [])), responses(
    (status = 200, body = PeerList),
    (status = 401, description = "No or unknown token", body = ErrorBody)))]
async fn peers(State(state): State<AdminState>) -> Json<PeerList> {
    use std::sync::atomic::Ordering::Relaxed;
    let shared = &state.shared;
    let now = Instant::now();
    let peer_list = shared.peer_list();
    let choker_stats = shared.choker.lock().stats(now);
    let push_upstream = *shared.push_upstream.lock();
    let reputation = shared.reputation.lock();
    let peers = peer_list
        .iter()
        .map(|p| {
            let c = choker_stats.iter().find(|s| s.peer == p.id);
            let path = p.conn.stats().path;
            PeerInfo {
                id: p.id.to_string(),
                name: p.name.clone(),
                role: p.role.as_str(),
                address: p.conn.remote_address().to_string(),
                bytes_in: p.bytes_in.load(Relaxed),
                bytes_out: p.bytes_out.load(Relaxed),
                chunks_pushed_in: p.chunks_pushed_in.load(Relaxed),
                push_upstream: push_upstream == Some(p.id),
                download_rate_bytes_per_second: c.map(|c| c.download_rate),
                upload_rate_bytes_per_second: c.map(|c| c.upload_rate),
                unchoked_by_us: c.map(|c| c.unchoked),
                unchoked_us: p.unchoked_us.load(Relaxed),
                subscribed: p.subscribed.load(Relaxed),
                parity: p.current_parity.load(Relaxed),
                rtt_ms: p.conn.rtt().as_secs_f64() * 1000.0,
                mtu: path.current_mtu,
                black_holes: path.black_holes_detected,
                reputation: reputation.score(p.id, now),
                banned: reputation.is_banned(p.id, now),
            }
        })
        .collect();
    Json(PeerList { peers })
}

#[derive(Serialize, utoipa::ToSchema)]
struct StoreInfo {
    chunks: usize,
    bytes: usize,
    budget_bytes: usize,
    hits: u64,
    misses: u64,
    hit_ratio: f64,
    inserts: u64,
    evictions: u64,
    expirations: u64,
}

#[utoipa::path(get, path = "/v1/store", tag = "read", security(("bearer" = [])), responses(
    (status = 200, body = StoreInfo),
    (status = 401, description = "No or unknown token", body = ErrorBody)))]
async fn store(State(state): State<AdminState>) -> Json<StoreInfo> {
    let st = state.shared.store.stats();
    Json(StoreInfo {
        chunks: st.chunks,
        bytes: st.bytes,
        budget_bytes: st.budget_bytes,
        hits: st.hits,
        misses: st.misses,
        hit_ratio: st.hit_ratio(),
        inserts: st.inserts,
        evictions: st.evictions,
        expirations: st.expirations,
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct ConfigInfo {
    config_hash: String,
    /// The effective node config, the schema of `deploy/config/dcdn.toml`.
    #[schema(value_type = Object)]
    config: serde_json::Value,
}

/// The effective config. It holds no secrets — tokens and keys live in
/// files it names — so nothing needs redacting but the file contents, which
/// are never read into it.
#[utoipa::path(get, path = "/v1/config", tag = "read", security(("bearer" = [])), responses(
    (status = 200, body = ConfigInfo),
    (status = 401, description = "No or unknown token", body = ErrorBody)))]
async fn config(State(state): State<AdminState>) -> Json<ConfigInfo> {
    Json(ConfigInfo {
        config_hash: state.shared.settings.config.config_hash(),
        config: serde_json::to_value(&state.shared.settings.config).unwrap_or_default(),
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct ReloadResult {
    /// What was applied without a restart.
    applied: Vec<&'static str>,
    keyring_changed: bool,
    signing_keys_loaded: usize,
    /// Top-level config sections that differ from the running config.
    restart_required_for: Vec<String>,
    keyring_generation: u64,
}

/// Re-reads the config file. The trust bundle and signing keys it names are
/// reloaded live; any other change is reported as needing a restart.
#[utoipa::path(post, path = "/v1/config/reload", tag = "admin", security(("bearer" = [])), responses(
    (status = 200, body = ReloadResult),
    (status = 401, description = "No or unknown token", body = ErrorBody),
    (status = 403, description = "A read token", body = ErrorBody),
    (status = 409, description = "`no_config_file`: the node was not started from a file", body = ErrorBody),
    (status = 422, description = "`invalid_config`, `invalid_trust_bundle` or `invalid_signing_key`", body = ErrorBody)))]
async fn reload(State(state): State<AdminState>) -> Result<Json<ReloadResult>, HttpError> {
    let Some(path) = &state.config_path else {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "no_config_file",
            "this node was not started from a config file",
        ));
    };
    let new = crate::config::NodeConfig::from_file(path, std::env::vars()).map_err(|e| {
        // The whole chain: a read error's cause (no such file, ...) is its
        // source, not part of its own message.
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
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
    Ok(Json(ReloadResult {
        applied: vec![
            "crypto.trust_bundle (contents)",
            "crypto.signing_keys (contents)",
        ],
        keyring_changed,
        signing_keys_loaded: signers,
        restart_required_for: restart,
        keyring_generation: shared.keys.read().generation(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct KeyInfo {
    /// 16 hex digits.
    id: String,
    /// Ed25519 public key, 64 hex digits.
    public_key: String,
    /// `active`, `trusted` or `revoked`.
    #[schema(value_type = String)]
    state: crate::crypto::KeyState,
    /// This node holds the secret key (origins only).
    can_sign_here: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct KeyList {
    generation: u64,
    active: Option<String>,
    keys: Vec<KeyInfo>,
}

#[utoipa::path(get, path = "/v1/keys", tag = "read", security(("bearer" = [])), responses(
    (status = 200, body = KeyList),
    (status = 401, description = "No or unknown token", body = ErrorBody)))]
async fn keys(State(state): State<AdminState>) -> Json<KeyList> {
    let ring = state.shared.keys.read();
    let signers = state.shared.signers.read();
    let bundle = ring.to_bundle();
    let keys = bundle
        .keys
        .iter()
        .map(|k| KeyInfo {
            id: k.id.clone(),
            public_key: k.public_key.clone(),
            state: k.state,
            can_sign_here: signers.keys().any(|id| id.to_string() == k.id),
        })
        .collect();
    Json(KeyList {
        generation: bundle.generation,
        active: ring.active().map(|k| k.to_string()),
        keys,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
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

/// The key ring after a change.
#[derive(Serialize, utoipa::ToSchema)]
struct KeyChange {
    generation: u64,
    /// The id of an added key.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

fn key_changed(state: &AdminState, id: Option<KeyId>) -> Json<KeyChange> {
    state.shared.forget_untrusted_chunks();
    let generation = state.shared.keys.read().generation();
    state
        .shared
        .metrics
        .keyring_generation
        .set(generation as i64);
    Json(KeyChange {
        generation,
        id: id.map(|k| k.to_string()),
    })
}

/// Trusts a public key (it may verify, not sign). The first step of a rotation.
#[utoipa::path(post, path = "/v1/keys", tag = "admin", security(("bearer" = [])), request_body = AddKey, responses(
    (status = 200, body = KeyChange),
    (status = 400, description = "`bad_request` or `bad_public_key`", body = ErrorBody),
    (status = 401, description = "No or unknown token", body = ErrorBody),
    (status = 403, description = "A read token", body = ErrorBody),
    (status = 409, description = "`key_ring_full` or `revoked_key`", body = ErrorBody)))]
async fn add_key(
    State(state): State<AdminState>,
    body: Result<Json<AddKey>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<KeyChange>, HttpError> {
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
    Ok(key_changed(&state, Some(id)))
}

/// Makes a trusted key the one the origin signs with.
#[utoipa::path(post, path = "/v1/keys/{id}/activate", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id, 16 hex digits")), responses(
    (status = 200, body = KeyChange),
    (status = 400, description = "`bad_key_id`", body = ErrorBody),
    (status = 401, description = "No or unknown token", body = ErrorBody),
    (status = 403, description = "A read token", body = ErrorBody),
    (status = 404, description = "`unknown_key`", body = ErrorBody),
    (status = 409, description = "`revoked_key` or `no_secret_key` (origin without the secret)", body = ErrorBody)))]
async fn activate_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<KeyChange>, HttpError> {
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
    Ok(key_changed(&state, None))
}

/// Stops trusting a key: chunks signed with it are rejected from now on.
#[utoipa::path(post, path = "/v1/keys/{id}/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id, 16 hex digits")), responses(
    (status = 200, body = KeyChange),
    (status = 400, description = "`bad_key_id`", body = ErrorBody),
    (status = 401, description = "No or unknown token", body = ErrorBody),
    (status = 403, description = "A read token", body = ErrorBody),
    (status = 404, description = "`unknown_key`", body = ErrorBody),
    (status = 409, description = "`active_key`: activate another key first", body = ErrorBody)))]
async fn revoke_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<KeyChange>, HttpError> {
    let id = parse_key_id(&id)?;
    state.shared.keys.write().revoke(id).map_err(key_error)?;
    Ok(key_changed(&state, None))
}
