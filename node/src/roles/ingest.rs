//! The origin's publisher-facing HTTP: objects and live streams come in here.
//!
//! A request body is cut into chunks as it arrives — a whole object into
//! `chunk_size` pieces, a live stream into one chunk per body piece (split if
//! larger than `chunk_size`) so latency does not wait for a full chunk — and
//! each chunk is handed to the [`Publish`] sink, which signs, stores and
//! pushes it. Distribution therefore starts before the whole body has been
//! read; an object's manifest follows its last chunk, and before its first
//! the origin signs the upload *open* so edges can stream it while it runs
//! (`roles::uploads`), or *aborted* if it ends without a manifest. Every
//! route needs the ingest bearer token.

use crate::auth::{self, Refusal, Token};
use crate::chunk::StreamId;
use crate::roles::serve::HttpError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The origin of record has no room; nothing was evicted (507).
    #[error("{0}")]
    Full(String),
    /// Signing or storing failed (503).
    #[error("{0}")]
    Failed(String),
    /// The origin has as many uploads open as it takes at once (503).
    #[error("{0}")]
    Busy(String),
}

impl From<String> for PublishError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

impl From<PublishError> for HttpError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Full(m) => {
                HttpError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
            PublishError::Failed(m) => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "publish_failed", m)
            }
            PublishError::Busy(m) => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_uploads", m).with_header(
                    header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                )
            }
        }
    }
}

/// What the ingest side needs from the origin: sign, store and push.
pub trait Publish: Send + Sync + 'static {
    /// Starts object version `stream`, which the request says is `len_hint`
    /// bytes (0 when it does not say): an origin of record reserves room
    /// for it, or refuses before the body is read.
    fn begin_object(&self, _stream: StreamId, _len_hint: u64) -> Result<(), PublishError> {
        Ok(())
    }
    /// Makes a publisher's upload readable before it ends: signs its open
    /// manifest (`roles::uploads`). Called after `begin_object`.
    fn open_upload(&self, _upload: &ObjectUpload) -> Result<(), PublishError> {
        Ok(())
    }
    /// Drops an object version that will not be acknowledged (and signs
    /// its abort if its upload was open).
    fn abort_object(&self, _name: &str, _stream: StreamId) {}
    /// Signs and distributes chunk `seq` of `stream`; `live` chunks are
    /// pushed downstream at once, object chunks wait to be pulled.
    fn publish_chunk(
        &self,
        stream: StreamId,
        seq: u64,
        payload: Bytes,
        live: bool,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Makes a complete object version durable (an origin of record), then
    /// signs and distributes its manifest.
    fn publish_manifest(
        &self,
        object: &Published,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Purges every version of object `name` from every node; the highest
    /// version purged, or None if the name is not known.
    fn purge(&self, _name: &str) -> Result<Option<u64>, PublishError> {
        Ok(None)
    }
    /// Signs and distributes the manifest of a live file (a segment or a
    /// playlist, `roles::live`): pushed like any manifest, but never kept by
    /// an origin of record — the DVR window decides how long it lives.
    fn publish_live_manifest(
        &self,
        file: &Published,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Whether live `stream` is tracked or there is room to start it.
    fn live_has_room(&self, _stream: &str) -> bool {
        true
    }

    /// Tells every edge (through the relays) to pull the newest version of
    /// object `name` now: that version and how many downstream peers were
    /// told, or None if the name is not known; an error if the preheat
    /// cannot be signed here.
    fn preheat(&self, _name: &str) -> Result<Option<(u64, usize)>, String> {
        Ok(None)
    }
    /// The sequence number the next chunk of live `stream` gets.
    fn next_live_seq(&self, stream: StreamId) -> u64;
    /// A live upload ended with chunk `last`, acknowledged next: tell
    /// downstream where the stream stands, so a tail whose push did not
    /// arrive is pulled (a push gap shows only when a later chunk comes).
    fn live_upload_ended(&self, _last: crate::chunk::ChunkId) {}
    /// The version the next publish of an object gets: higher than every
    /// version handed out before.
    fn next_version(&self) -> u64;
}

/// A published object or stream segment, as reported to the publisher.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Published {
    pub name: String,
    pub stream: String,
    #[serde(skip)]
    pub stream_id: StreamId,
    /// Which publish of `name` this is (objects; 0 for live segments).
    pub version: u64,
    /// The `Cache-Control` edges answer with (objects).
    pub cache_control: String,
    pub len: u64,
    pub chunk_size: u32,
    pub first_seq: u64,
    pub chunks: u64,
    /// BLAKE3 of the bytes received, hex.
    pub digest: String,
    #[serde(skip)]
    pub digest_bytes: [u8; 32],
    /// What the upstream answered this version with (pulled, not PUT).
    #[serde(skip)]
    pub upstream: Option<crate::roles::upstream::Validators>,
}

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub chunk_size: usize,
    /// Bearer token publishers must present; requests without it get 401.
    pub token: Token,
    /// `dcdn_auth_refused_total`, counted on every refusal.
    pub refused: Option<prometheus::IntCounterVec>,
    /// Largest object accepted, bytes.
    pub max_object_bytes: u64,
    /// `Cache-Control` for objects published without one.
    pub cache_control: String,
}

struct IngestState<P> {
    publisher: Arc<P>,
    config: IngestConfig,
}

/// `PUT /v1/objects/{name}` and `PUT|POST /v1/streams/{name}`.
pub fn router<P: Publish>(publisher: Arc<P>, config: IngestConfig) -> Router {
    let state = Arc::new(IngestState { publisher, config });
    Router::new()
        .route(
            "/v1/objects/{*name}",
            put(put_object::<P>)
                .delete(delete_object::<P>)
                .post(post_object::<P>),
        )
        .route("/v1/streams/{name}", post(put_live::<P>).put(put_live::<P>))
        .fallback(crate::roles::serve::unknown_path)
        .with_state(state)
}

/// Object and stream names are path segments clients will type; keep them
/// printable and bounded.
fn check_name(name: &str) -> Result<(), HttpError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && !name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if ok {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!(
                "name {name:?} must be 1-255 chars of [A-Za-z0-9-_./] without empty, . or .. segments"
            ),
        ))
    }
}

pub(crate) fn check_token(headers: &HeaderMap, config: &IngestConfig) -> Result<(), HttpError> {
    let refusal = match auth::bearer(headers) {
        Ok(p) if config.token.matches(p) => return Ok(()),
        Ok(_) => Refusal::BadToken,
        Err(r) => r,
    };
    if let Some(c) = &config.refused {
        c.with_label_values(&["ingest", refusal.as_str()]).inc();
    }
    let message = match refusal {
        Refusal::Missing => "ingest needs an Authorization: Bearer token",
        Refusal::Malformed => "the Authorization header must be `Bearer <token>`",
        _ => "the bearer token is not valid for ingest",
    };
    Err(HttpError::new(refusal.status(), refusal.as_str(), message)
        .with_header(header::WWW_AUTHENTICATE, refusal.challenge("dcdn-ingest")))
}

async fn put_object<P: Publish>(
    State(state): State<Arc<IngestState<P>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    check_token(&headers, &state.config)?;
    check_name(&name)?;
    let cache_control = match headers.get(header::CACHE_CONTROL) {
        None => state.config.cache_control.clone(),
        Some(v) => {
            let v = v.to_str().unwrap_or("\u{fffd}");
            crate::config::check_cache_control(v)
                .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "bad_cache_control", e))?;
            v.to_owned()
        }
    };
    // Every publish is a new version with its own chunk ids, so its chunks
    // never collide with (or get dropped as duplicates of) an earlier one.
    let version = state.publisher.next_version();
    let stream = StreamId::object(&name, version);
    let len_hint = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    if len_hint > state.config.max_object_bytes {
        return Err(too_large(state.config.max_object_bytes));
    }
    state.publisher.begin_object(stream, len_hint)?;
    let upload = ObjectUpload {
        chunk_size: state.config.chunk_size,
        max_object_bytes: state.config.max_object_bytes,
        // The HTTP server already holds the body to its Content-Length.
        expected_len: None,
        name,
        version,
        cache_control,
        stream,
        upstream: None,
    };
    if let Err(e) = state.publisher.open_upload(&upload) {
        state.publisher.abort_object(&upload.name, stream);
        return Err(e.into());
    }
    let name = upload.name.clone();
    // A publisher that goes away mid-body drops this future: the guard
    // still aborts the version, so edge readers reset rather than wait.
    let mut guard = AbortOnDrop {
        publisher: &*state.publisher,
        name: &name,
        stream,
        armed: true,
    };
    let result = ingest_object(&*state.publisher, upload, body.into_data_stream()).await;
    guard.armed = result.is_err();
    drop(guard);
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

/// Aborts an object version unless disarmed: on an error, and when the
/// request's future is dropped (the client disconnected).
struct AbortOnDrop<'a, P: Publish> {
    publisher: &'a P,
    name: &'a str,
    stream: StreamId,
    armed: bool,
}

impl<P: Publish> Drop for AbortOnDrop<'_, P> {
    fn drop(&mut self) {
        if self.armed {
            self.publisher.abort_object(self.name, self.stream);
        }
    }
}

fn too_large(limit: u64) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("objects are limited to {limit} bytes"),
    )
}

/// One object version being taken in, from a publisher's PUT or an
/// upstream's answer.
#[derive(Debug, Clone)]
pub struct ObjectUpload {
    pub chunk_size: usize,
    pub max_object_bytes: u64,
    /// The length the sender announced: a body that ends short of (or runs
    /// past) it never gets a manifest.
    pub expected_len: Option<u64>,
    pub name: String,
    pub version: u64,
    pub cache_control: String,
    pub stream: StreamId,
    /// Set when the bytes come from the origin's upstream.
    pub upstream: Option<crate::roles::upstream::Validators>,
}

/// Cuts `body` into chunks as it arrives, hands each to `publisher`, and
/// publishes the manifest once the whole body is in. The caller began the
/// object and aborts it on error.
pub async fn ingest_object<P, S, E>(
    publisher: &P,
    upload: ObjectUpload,
    mut body: S,
) -> Result<Published, HttpError>
where
    P: Publish,
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let chunk_size = upload.chunk_size;
    let stream = upload.stream;
    let mut hasher = blake3::Hasher::new();
    let mut pending = BytesMut::with_capacity(chunk_size);
    let mut seq = 0u64;
    let mut len = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "body",
                format!("reading the body: {e}"),
            )
        })?;
        len += piece.len() as u64;
        if len > upload.max_object_bytes {
            return Err(too_large(upload.max_object_bytes));
        }
        hasher.update(&piece);
        let mut piece: &[u8] = &piece;
        while !piece.is_empty() {
            let take = (chunk_size - pending.len()).min(piece.len());
            pending.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if pending.len() == chunk_size {
                let payload = pending.split().freeze();
                publish(publisher, stream, seq, payload, false).await?;
                seq += 1;
            }
        }
    }
    if let Some(expected) = upload.expected_len.filter(|&e| e != len) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "body",
            format!("the body was {len} bytes, not the {expected} announced"),
        ));
    }
    if !pending.is_empty() {
        publish(publisher, stream, seq, pending.split().freeze(), false).await?;
        seq += 1;
    }
    let digest = *hasher.finalize().as_bytes();
    let published = Published {
        name: upload.name,
        stream: stream.to_string(),
        stream_id: stream,
        version: upload.version,
        cache_control: upload.cache_control,
        len,
        chunk_size: chunk_size as u32,
        first_seq: 0,
        chunks: seq,
        digest: hex::encode(digest),
        digest_bytes: digest,
        upstream: upload.upstream,
    };
    publisher.publish_manifest(&published).await?;
    Ok(published)
}

async fn delete_object<P: Publish>(
    State(state): State<Arc<IngestState<P>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    check_token(&headers, &state.config)?;
    check_name(&name)?;
    match state.publisher.purge(&name)? {
        Some(up_to) => Ok(Json(serde_json::json!({
            "name": name,
            "purged_up_to_version": up_to,
        }))
        .into_response()),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no version of object {name} is known to this origin"),
        )),
    }
}

/// `POST /v1/objects/{name}/preheat`: every edge pulls the object before
/// clients ask (202: the preheat is on its way; progress is in the edges'
/// metrics and status).
async fn post_object<P: Publish>(
    State(state): State<Arc<IngestState<P>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    check_token(&headers, &state.config)?;
    let Some(name) = path.strip_suffix("/preheat") else {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("POST /v1/objects/{path}: only .../preheat takes a POST"),
        ));
    };
    check_name(name)?;
    match state
        .publisher
        .preheat(name)
        .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "preheat_failed", e))?
    {
        Some((version, told)) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "name": name,
                "version": version,
                "peers_told": told,
            })),
        )
            .into_response()),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no version of object {name} is known to this origin"),
        )),
    }
}

async fn publish<P: Publish>(
    publisher: &P,
    stream: StreamId,
    seq: u64,
    payload: Bytes,
    live: bool,
) -> Result<(), HttpError> {
    Ok(publisher.publish_chunk(stream, seq, payload, live).await?)
}

async fn put_live<P: Publish>(
    State(state): State<Arc<IngestState<P>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    check_token(&headers, &state.config)?;
    check_name(&name)?;
    let stream = StreamId::live(&name);
    let first_seq = state.publisher.next_live_seq(stream);
    let mut seq = first_seq;
    let mut len = 0u64;
    let mut hasher = blake3::Hasher::new();
    let mut body = body.into_data_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "body",
                format!("reading the body: {e}"),
            )
        })?;
        hasher.update(&piece);
        len += piece.len() as u64;
        let mut rest = piece;
        while !rest.is_empty() {
            let take = rest.len().min(state.config.chunk_size);
            let payload = rest.split_to(take);
            publish(&*state.publisher, stream, seq, payload, true).await?;
            seq += 1;
        }
    }
    if seq > first_seq {
        state
            .publisher
            .live_upload_ended(crate::chunk::ChunkId::new(stream, seq - 1));
    }
    let digest = *hasher.finalize().as_bytes();
    Ok((
        StatusCode::OK,
        Json(Published {
            name,
            stream: stream.to_string(),
            stream_id: stream,
            version: 0,
            cache_control: String::new(),
            len,
            chunk_size: state.config.chunk_size as u32,
            first_seq,
            chunks: seq - first_seq,
            digest: hex::encode(digest),
            digest_bytes: digest,
            upstream: None,
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use tower::ServiceExt;

    #[derive(Default)]
    struct Recorder {
        chunks: Mutex<Vec<(StreamId, u64, Bytes)>>,
        manifests: Mutex<Vec<Published>>,
        heads: Mutex<HashMap<StreamId, u64>>,
    }

    impl Publish for Recorder {
        async fn publish_chunk(
            &self,
            stream: StreamId,
            seq: u64,
            payload: Bytes,
            _live: bool,
        ) -> Result<(), PublishError> {
            self.heads.lock().insert(stream, seq + 1);
            self.chunks.lock().push((stream, seq, payload));
            Ok(())
        }
        async fn publish_manifest(&self, object: &Published) -> Result<(), PublishError> {
            self.manifests.lock().push(object.clone());
            Ok(())
        }
        async fn publish_live_manifest(&self, file: &Published) -> Result<(), PublishError> {
            self.manifests.lock().push(file.clone());
            Ok(())
        }
        fn next_live_seq(&self, stream: StreamId) -> u64 {
            self.heads.lock().get(&stream).copied().unwrap_or(0)
        }
        fn next_version(&self) -> u64 {
            self.manifests.lock().len() as u64 + 1
        }
    }

    fn app(rec: Arc<Recorder>) -> Router {
        router(
            rec,
            IngestConfig {
                chunk_size: 1000,
                token: Token::from_secret("s3cret").unwrap(),
                refused: None,
                max_object_bytes: 1 << 20,
                cache_control: "no-cache".into(),
            },
        )
    }

    fn streamed(pieces: Vec<Vec<u8>>) -> Body {
        Body::from_stream(futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from(p))),
        ))
    }

    #[tokio::test]
    async fn object_is_cut_into_chunks_and_manifest_follows() {
        let rec = Arc::new(Recorder::default());
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let resp = app(rec.clone())
            .oneshot(
                Request::put("/v1/objects/dir/file.bin")
                    .header(header::AUTHORIZATION, "Bearer s3cret")
                    .body(streamed(vec![data[..700].to_vec(), data[700..].to_vec()]))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let chunks = rec.chunks.lock().clone();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks.iter().map(|c| c.2.len()).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.2.to_vec()).collect();
        assert_eq!(joined, data);
        let m = rec.manifests.lock()[0].clone();
        assert_eq!((m.len, m.chunks), (2500, 3));
        assert_eq!(m.digest_bytes, crate::chunk::digest(&data));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["chunks"], 3);
    }

    #[tokio::test]
    async fn live_pieces_become_chunks_as_they_arrive_and_seq_continues() {
        let rec = Arc::new(Recorder::default());
        for _ in 0..2 {
            let resp = app(rec.clone())
                .oneshot(
                    Request::post("/v1/streams/cam")
                        .header(header::AUTHORIZATION, "Bearer s3cret")
                        .body(streamed(vec![vec![1; 10], vec![2; 2500]]))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
        let chunks = rec.chunks.lock().clone();
        let seqs: Vec<u64> = chunks.iter().map(|c| c.1).collect();
        assert_eq!(seqs, (0..8).collect::<Vec<_>>());
        assert_eq!(chunks[0].2.len(), 10);
        assert_eq!(chunks[1].2.len(), 1000);
        assert_eq!(chunks[3].2.len(), 500);
    }

    #[tokio::test]
    async fn ingest_without_or_with_wrong_token_is_401_and_publishes_nothing() {
        let rec = Arc::new(Recorder::default());
        for auth in [None, Some("Bearer nope")] {
            let mut req = Request::put("/v1/objects/a");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let resp = app(rec.clone())
                .oneshot(req.body(Body::from("x")).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        assert!(rec.chunks.lock().is_empty());
    }

    #[tokio::test]
    async fn bad_names_and_oversize_objects_are_refused() {
        let rec = Arc::new(Recorder::default());
        let resp = app(rec.clone())
            .oneshot(
                Request::put("/v1/objects/a/../b")
                    .header(header::AUTHORIZATION, "Bearer s3cret")
                    .body(Body::from("x"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let resp = app(rec.clone())
            .oneshot(
                Request::put("/v1/objects/big")
                    .header(header::AUTHORIZATION, "Bearer s3cret")
                    .body(Body::from(vec![0u8; (1 << 20) + 1]))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
