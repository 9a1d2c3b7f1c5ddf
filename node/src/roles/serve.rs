//! The edge's client-facing HTTP: objects with Range and ETag, live chunks by
//! sequence number.
//!
//! This layer only speaks HTTP. Where bytes come from — the local store, a
//! peer, a relay — is the [`Content`] implementation's business; everything it
//! hands over has been verified already, so nothing unverified can reach a
//! client through here. Bodies are streamed chunk by chunk as chunks become
//! available, so a client starts receiving before the object is complete.

use crate::chunk::{Chunk, ChunkId, Digest, StreamId};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What an edge knows about a static object, from its verified manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub stream: StreamId,
    /// Which publish of `name` this is.
    pub version: u64,
    pub len: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    /// BLAKE3 of the whole object; the ETag.
    pub digest: Digest,
    /// When the origin signed the manifest, ms since the Unix epoch: the
    /// `Last-Modified`.
    pub published_ms: u64,
    /// What the publisher asked clients to do (`Cache-Control`).
    pub cache_control: String,
}

impl ObjectInfo {
    /// `"<blake3 hex>-<version>"`: the digest lets a client check the body
    /// (`dcdn fetch` does), the version names which publish it is.
    fn etag(&self) -> String {
        format!("\"{}-{}\"", hex::encode(self.digest), self.version)
    }
}

/// Why content could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} is not available yet")]
    NotYet(String),
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The origin's own upstream (pull-through) failed: 502.
    #[error("the origin's upstream failed: {0}")]
    UpstreamFailed(String),
    /// As many clients as this edge takes are reading uploads in
    /// progress: 503.
    #[error("{0}")]
    TooManyUploadReaders(String),
}

/// A client's read of an upload still in progress (`roles::uploads`): the
/// verified open frame and the reader's slot, given back on drop.
#[derive(Debug)]
pub struct UploadRead {
    pub frame: crate::chunk::wire::UploadFrame,
    pub slot: crate::roles::uploads::ReaderSlot,
}

/// Where served bytes come from. Implementations return only verified chunks.
pub trait Content: Send + Sync + 'static {
    /// The object called `name`, fetching its manifest upstream if needed.
    fn object(&self, name: &str) -> impl Future<Output = Result<ObjectInfo, ContentError>> + Send;
    /// The chunk `id`, waiting up to `wait` for it to arrive or be fetched.
    fn chunk(
        &self,
        id: ChunkId,
        wait: Duration,
    ) -> impl Future<Output = Result<Chunk, ContentError>> + Send;
    /// The newest sequence number held for a live stream.
    fn stream_head(&self, stream: StreamId) -> Option<u64>;
    /// The chunk if it is held here already; never waits or fetches.
    fn cached(&self, id: ChunkId) -> Option<Chunk>;
    /// An upload of `name` in progress, asked when [`Content::object`]
    /// found no complete version: None if there is none.
    fn upload(&self, _name: &str) -> Result<Option<UploadRead>, ContentError> {
        Ok(None)
    }
    /// The next chunk of upload `up` from `seq`, its final manifest, or why
    /// it will not complete; `progress` is when the reader last got a chunk.
    fn upload_next(
        &self,
        _up: &crate::chunk::wire::UploadFrame,
        _seq: u64,
        _progress: std::time::Instant,
    ) -> impl Future<Output = crate::roles::uploads::Step> + Send {
        std::future::ready(crate::roles::uploads::Step::Failed(
            "uploads are not read here".into(),
        ))
    }
    /// Counts how a read of an upload in progress ended.
    fn upload_read_ended(&self, _outcome: &'static str) {}
}

/// Tunables of the client HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// How long one chunk of an object may take to arrive before the
    /// response fails (503 before the first byte, an aborted body after).
    pub chunk_wait: Duration,
    /// How long a request for a live chunk just past the head waits for it.
    pub live_wait: Duration,
    /// Chunks fetched ahead of the one being sent.
    pub read_ahead: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            chunk_wait: Duration::from_secs(10),
            live_wait: Duration::from_secs(2),
            read_ahead: crate::roles::settings::READ_AHEAD,
        }
    }
}

struct ServeState<C> {
    content: Arc<C>,
    config: ServeConfig,
}

/// The client router: `GET|HEAD /v1/objects/{name}`, `GET /v1/streams/{name}`
/// and `GET /v1/streams/{name}/{seq}`.
pub fn router<C: Content>(content: Arc<C>, config: ServeConfig) -> Router {
    let state = Arc::new(ServeState { content, config });
    Router::new()
        .route(
            "/v1/objects/{*name}",
            get(get_object::<C>).head(get_object::<C>),
        )
        .route("/v1/streams/{name}", get(get_stream_head::<C>))
        .route("/v1/streams/{name}/{seq}", get(get_live_chunk::<C>))
        .fallback(unknown_path)
        .with_state(state)
}

/// Any path no route knows: the same JSON error shape as every other error,
/// not axum's empty 404.
pub async fn unknown_path() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such path")
}

/// Counts every request by route template and status, and times it.
///
/// The state is an `Arc`: axum clones it for every request, and cloning
/// `Metrics` itself (dozens of `Arc`ed metrics, each an atomic increment and
/// later a decrement) was ~5 % of the edge's CPU serving 64 KiB objects.
pub async fn count_requests(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    // The handler returns once the headers are ready; an object's body is
    // still to stream. The clock stops when the body is done with.
    let histogram = metrics.http_duration.with_label_values(&[route.as_str()]);
    resp.map(|body| {
        axum::body::Body::new(TimedBody {
            body,
            timer: Some((histogram, start)),
        })
    })
}

/// A response body that observes its request's duration when the last byte
/// has been sent, or when the client goes away first (the body is dropped).
struct TimedBody {
    body: axum::body::Body,
    timer: Option<(prometheus::Histogram, std::time::Instant)>,
}

impl TimedBody {
    fn observe(&mut self) {
        if let Some((histogram, start)) = self.timer.take() {
            histogram.observe(start.elapsed().as_secs_f64());
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.observe();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.observe();
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, ...
    pub code: String,
    /// For humans; may change between releases.
    pub message: String,
}

/// A JSON error body with a stable `code` and a human `message`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl HttpError {
    /// What went wrong, as the client is told.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Longest error message sent: messages quote names and header values the
/// client sent, and a 5,000-character name should not come back whole.
pub const MAX_MESSAGE_CHARS: usize = 256;

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        Self {
            status,
            code,
            message,
            headers: Vec::new(),
        }
    }

    /// Adds a response header (a challenge, a `Content-Range`).
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<ContentError> for HttpError {
    fn from(e: ContentError) -> Self {
        match e {
            ContentError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ContentError::NotYet(_) => Self::new(StatusCode::NOT_FOUND, "not_yet", e.to_string()),
            ContentError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            ContentError::UpstreamFailed(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "upstream_failed", e.to_string())
            }
            ContentError::TooManyUploadReaders(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_upload_readers",
                e.to_string(),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

/// A byte range `[start, end)` of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Parses a `Range` header against an object of `len` bytes. `Ok(None)`
/// means "serve the whole object": no header, a unit other than bytes,
/// several ranges (RFC 9110 lets a server ignore Range; multipart responses
/// are not worth their complexity here), or a malformed or invalid range
/// (RFC 9110 §14.2: a server ignores a Range it cannot parse; a 416 would
/// tell the client its range is past the end, which it is not). `Err(())`
/// means 416: a well-formed range the object cannot satisfy.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: &str, len: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match (first.is_empty(), last.is_empty()) {
        (true, _) => digits(last),
        (false, true) => digits(first),
        (false, false) => digits(first) && digits(last),
    };
    if !well_formed {
        return Ok(None);
    }
    // Digits too many for a u64 are a position past any object's end.
    let pos = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    let range = if first.is_empty() {
        // Suffix range: the last N bytes.
        let n = pos(last);
        if n == 0 || len == 0 {
            return Err(());
        }
        ByteRange {
            start: len.saturating_sub(n),
            end: len,
        }
    } else {
        let start = pos(first);
        let end = if last.is_empty() {
            len
        } else {
            let last = pos(last);
            if last < start {
                // Invalid, not unsatisfiable (RFC 9110 §14.1.1): ignored.
                return Ok(None);
            }
            last.saturating_add(1).min(len)
        };
        if start >= len {
            return Err(());
        }
        ByteRange { start, end }
    };
    Ok(Some(range))
}

/// `GET|HEAD` of object `name`, answered exactly as `/v1/objects/{name}`
/// answers it (validators, conditionals, Range, streaming): for modules that
/// serve objects under paths of their own (`live_http`).
pub async fn object_response<C: Content>(
    content: Arc<C>,
    config: ServeConfig,
    name: String,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let state = Arc::new(ServeState { content, config });
    get_object(State(state), Path(name), method, headers).await
}

async fn get_object<C: Content>(
    State(state): State<Arc<ServeState<C>>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let info = match state.content.object(&name).await {
        Ok(info) => info,
        Err(ContentError::NotFound(what)) => match state.content.upload(&name)? {
            Some(read) => return upload_response(state, read, method, headers).await,
            None => return Err(ContentError::NotFound(what).into()),
        },
        Err(e) => return Err(e.into()),
    };
    let etag = info.etag();
    let validators = Validators::of(&info, &etag);
    // RFC 9110 13.2.2: If-Match first, then If-None-Match, and
    // If-Modified-Since only when there is no If-None-Match.
    if let Some(im) = header_str(&headers, header::IF_MATCH) {
        if !etag_list_matches(im, &etag, Comparison::Strong) {
            let mut e = HttpError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("If-Match {im:?} does not match the current version {etag} of {name}"),
            );
            e.headers = validators.headers();
            return Err(e);
        }
    }
    let not_modified = match header_str(&headers, header::IF_NONE_MATCH) {
        Some(inm) => etag_list_matches(inm, &etag, Comparison::Weak),
        None => header_str(&headers, header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| validators.modified <= since),
    };
    if not_modified {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().extend(validators.headers());
        return Ok(resp);
    }
    // If-Range with a stale ETag means "send the whole thing".
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if if_range_ok => parse_range(v, info.len).map_err(|()| {
            let mut e = HttpError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("range {v:?} is outside the object's {} bytes", info.len),
            );
            if let Ok(h) = HeaderValue::from_str(&format!("bytes */{}", info.len)) {
                e.headers.push((header::CONTENT_RANGE, h));
            }
            e
        })?,
        _ => None,
    };
    let (status, span) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r),
        None => (
            StatusCode::OK,
            ByteRange {
                start: 0,
                end: info.len,
            },
        ),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, span.end - span.start);
    for (k, v) in validators.headers() {
        builder = builder.header(k, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", span.start, span.end - 1, info.len),
        );
    }
    if span.start == span.end {
        return builder.body(Body::empty()).map_err(|e| {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        });
    }
    let chunk_size = u64::from(info.chunk_size.max(1));
    let first = span.start / chunk_size;
    let last = (span.end - 1) / chunk_size;
    // Fetch the first chunk before committing to a status line, so an object
    // whose chunks cannot be had yields a 503, not a truncated 200.
    let first_chunk = state
        .content
        .chunk(ChunkId::new(info.stream, first), state.config.chunk_wait)
        .await?;
    check_chunk_len(&info, first, &first_chunk)?;
    // HEAD stops here, having paid for exactly what decides GET's status:
    // it never says 200 for an object whose bytes cannot be had.
    if method == Method::HEAD {
        return builder.body(Body::empty()).map_err(|e| {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        });
    }
    if first == last {
        // One chunk: answer from memory, no streaming task.
        let start = first * chunk_size;
        let from = (span.start - start) as usize;
        let to = (span.end - start) as usize;
        return builder
            .body(Body::from(first_chunk.payload.slice(from..to)))
            .map_err(|e| {
                HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            });
    }
    // Everything already here (a warm edge): answer from memory without a
    // streaming task.
    let cached: Option<Vec<Chunk>> = (first + 1..=last)
        .map(|seq| state.content.cached(ChunkId::new(info.stream, seq)))
        .collect();
    if let Some(rest) = cached {
        let mut pieces = Vec::with_capacity(rest.len() + 1);
        for (seq, chunk) in (first..=last).zip(std::iter::once(first_chunk).chain(rest)) {
            check_chunk_len(&info, seq, &chunk)?;
            let start = seq * chunk_size;
            let from = span.start.saturating_sub(start) as usize;
            let to = (span.end - start).min(chunk.payload.len() as u64) as usize;
            pieces.push(Ok::<_, std::io::Error>(chunk.payload.slice(from..to)));
        }
        return builder
            .body(Body::from_stream(futures_util::stream::iter(pieces)))
            .map_err(|e| {
                HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            });
    }
    let body = object_body(state.clone(), info, span, first, last, first_chunk);
    builder
        .body(body)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Answers a GET or HEAD for an object whose only version is still being
/// uploaded: 200 without `Content-Length`, `ETag` or `Last-Modified` (the
/// length and digest are not known yet), `Cache-Control: no-store` (the
/// body may yet be reset) and `X-Dcdn-Upload: in-progress`; Range is
/// ignored (the whole body is sent). Like a whole object, the status waits
/// for the first chunk, so an upload aborted before it is a 404, and HEAD
/// pays for exactly that. The body streams each chunk as it is stored at
/// the origin and ends cleanly only once the final manifest of the same
/// version verified and the length and digest of what was sent match it;
/// otherwise it is reset (HTTP/1.1: the connection closes without the last
/// chunk; HTTP/2 and HTTP/3: the stream is reset).
async fn upload_response<C: Content>(
    state: Arc<ServeState<C>>,
    read: UploadRead,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    use crate::roles::uploads::Step;
    let up = read.frame.clone();
    // No strong validator exists yet: only `If-Match: *` holds, and only
    // `If-None-Match: *` answers 304.
    if let Some(im) = header_str(&headers, header::IF_MATCH) {
        if !etag_list_matches(im, "", Comparison::Strong) {
            return Err(HttpError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "If-Match {im:?}: version {} of {} is still being uploaded and has no ETag yet",
                    up.version, up.name
                ),
            ));
        }
    }
    if header_str(&headers, header::IF_NONE_MATCH)
        .is_some_and(|inm| etag_list_matches(inm, "", Comparison::Weak))
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let started = std::time::Instant::now();
    let first = state.content.upload_next(&up, 0, started).await;
    if let Step::Failed(why) = &first {
        state.content.upload_read_ended("reset");
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "upload_aborted",
            format!("{}: {why}", up.name),
        ));
    }
    let internal = |e: axum::http::Error| {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-dcdn-version", up.version.to_string())
        .header("x-dcdn-upload", "in-progress");
    if method == Method::HEAD {
        // A body of unknown length, as GET's, so no `Content-Length: 0` is
        // added for the empty one: HEAD says what GET would.
        let none = futures_util::stream::empty::<Result<Bytes, std::io::Error>>();
        return builder.body(Body::from_stream(none)).map_err(internal);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let _slot = read.slot;
        let chunk_size = u64::from(up.chunk_size);
        let mut hasher = blake3::Hasher::new();
        let (mut seq, mut len, mut short) = (0u64, 0u64, false);
        let mut progress;
        let mut step = first;
        let failure = loop {
            match step {
                Step::Chunk(c) => {
                    let n = c.payload.len() as u64;
                    // Every chunk but the last is whole: a chunk after a
                    // short one, or a long one, is not this upload's.
                    if c.id() != ChunkId::new(up.stream, seq) || n == 0 || n > chunk_size || short {
                        break format!(
                            "chunk {seq} of {} ({n} bytes) does not fit its upload",
                            up.name
                        );
                    }
                    short = n < chunk_size;
                    hasher.update(&c.payload);
                    len += n;
                    seq += 1;
                    progress = std::time::Instant::now();
                    if tx.send(Ok(c.payload)).await.is_err() {
                        return; // the client went away
                    }
                }
                Step::Done(m) => {
                    if m.stream == up.stream
                        && m.chunk_count == seq
                        && m.object_len == len
                        && m.chunk_size == up.chunk_size
                        && m.digest == *hasher.finalize().as_bytes()
                    {
                        state.content.upload_read_ended("complete");
                        return; // dropping the sender ends the body cleanly
                    }
                    break format!(
                        "what was sent of {} ({len} bytes, {seq} chunks) does not match its final manifest",
                        up.name
                    );
                }
                Step::Failed(why) => break why,
            }
            step = state.content.upload_next(&up, seq, progress).await;
        };
        tracing::info!(name = %up.name, version = up.version, error = %failure, "resetting an upload read");
        state.content.upload_read_ended("reset");
        let _ = tx.send(Err(std::io::Error::other(failure))).await;
    });
    builder
        .body(Body::from_stream(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )))
        .map_err(internal)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How two entity tags are compared (RFC 9110 8.8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Both strong and equal (If-Match).
    Strong,
    /// Equal once any `W/` is dropped (If-None-Match).
    Weak,
}

/// Whether an `If-Match`/`If-None-Match` list names `etag` (or is `*`).
fn etag_list_matches(list: &str, etag: &str, how: Comparison) -> bool {
    list.split(',').map(str::trim).any(|tag| {
        if tag == "*" {
            return true;
        }
        match (how, tag.strip_prefix("W/")) {
            (Comparison::Strong, Some(_)) => false,
            (Comparison::Strong, None) => tag == etag,
            (Comparison::Weak, weak) => weak.unwrap_or(tag) == etag,
        }
    })
}

/// The headers that describe an object's current version: sent with 200,
/// 206, 304 and 412 alike so caches can update what they hold.
struct Validators {
    etag: String,
    /// `Last-Modified`, at the one-second resolution HTTP dates have.
    modified: std::time::SystemTime,
    version: u64,
    cache_control: String,
}

impl Validators {
    fn of(info: &ObjectInfo, etag: &str) -> Self {
        let secs = info.published_ms / 1000;
        Self {
            etag: etag.to_owned(),
            modified: std::time::UNIX_EPOCH + Duration::from_secs(secs),
            version: info.version,
            cache_control: info.cache_control.clone(),
        }
    }

    fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(4);
        let mut add = |k: header::HeaderName, v: &str| {
            // Every value here was validated at publish; one that somehow is
            // not a header value is left out rather than failing the answer.
            if let Ok(v) = HeaderValue::from_str(v) {
                out.push((k, v));
            }
        };
        add(header::ETAG, &self.etag);
        add(
            header::LAST_MODIFIED,
            &httpdate::fmt_http_date(self.modified),
        );
        if !self.cache_control.is_empty() {
            add(header::CACHE_CONTROL, &self.cache_control);
        }
        add(
            header::HeaderName::from_static("x-dcdn-version"),
            &self.version.to_string(),
        );
        out
    }
}

fn expected_chunk_len(info: &ObjectInfo, seq: u64) -> u64 {
    let size = u64::from(info.chunk_size.max(1));
    let start = seq * size;
    (info.len - start).min(size)
}

fn check_chunk_len(info: &ObjectInfo, seq: u64, chunk: &Chunk) -> Result<(), HttpError> {
    let want = expected_chunk_len(info, seq);
    if chunk.payload.len() as u64 != want {
        return Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            "manifest_mismatch",
            format!(
                "chunk {seq} of {} has {} bytes, its manifest says {want}",
                info.name,
                chunk.payload.len()
            ),
        ));
    }
    Ok(())
}

/// Streams the chunks `first..=last` of `info`, cut to `span`, fetching up to
/// `read_ahead` chunks ahead of the one being written.
fn object_body<C: Content>(
    state: Arc<ServeState<C>>,
    info: ObjectInfo,
    span: ByteRange,
    first: u64,
    last: u64,
    first_chunk: Chunk,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let chunk_size = u64::from(info.chunk_size.max(1));
        let info = Arc::new(info);
        let mut pending = std::collections::VecDeque::new();
        let mut next_to_fetch = first + 1;
        let spawn_fetch = |seq: u64| {
            let state = state.clone();
            let stream = info.stream;
            tokio::spawn(async move {
                state
                    .content
                    .chunk(ChunkId::new(stream, seq), state.config.chunk_wait)
                    .await
            })
        };
        let mut current = Some(first_chunk);
        let mut seq = first;
        loop {
            while next_to_fetch <= last && pending.len() < state.config.read_ahead {
                pending.push_back(spawn_fetch(next_to_fetch));
                next_to_fetch += 1;
            }
            let chunk = match current.take() {
                Some(c) => c,
                None => {
                    let Some(handle) = pending.pop_front() else {
                        break;
                    };
                    match handle.await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                            break;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                            break;
                        }
                    }
                }
            };
            if let Err(e) = check_chunk_len(&info, seq, &chunk) {
                let _ = tx.send(Err(std::io::Error::other(e.message))).await;
                break;
            }
            let chunk_start = seq * chunk_size;
            let from = span.start.saturating_sub(chunk_start) as usize;
            let to = (span.end - chunk_start).min(chunk.payload.len() as u64) as usize;
            if tx.send(Ok(chunk.payload.slice(from..to))).await.is_err() {
                break; // client went away
            }
            if seq == last {
                break;
            }
            seq += 1;
        }
        for handle in pending {
            handle.abort();
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn get_stream_head<C: Content>(
    State(state): State<Arc<ServeState<C>>>,
    Path(name): Path<String>,
) -> Result<Response, HttpError> {
    let stream = StreamId::live(&name);
    let head = state.content.stream_head(stream).ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no chunks of stream {name} are held here"),
        )
    })?;
    Ok(
        Json(serde_json::json!({ "stream": name, "id": stream.to_string(), "head": head }))
            .into_response(),
    )
}

async fn get_live_chunk<C: Content>(
    State(state): State<Arc<ServeState<C>>>,
    Path((name, seq)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let seq: u64 = seq.parse().map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "bad_sequence",
            format!("sequence {seq:?} is not a non-negative integer"),
        )
    })?;
    let stream = StreamId::live(&name);
    let chunk = state
        .content
        .chunk(ChunkId::new(stream, seq), state.config.live_wait)
        .await?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, chunk.payload.len())
        .header(
            header::ETAG,
            format!("\"{}\"", hex::encode(chunk.header.digest)),
        )
        .header("x-dcdn-seq", seq)
        .header("x-dcdn-timestamp-ms", chunk.header.timestamp_ms)
        .header(header::CACHE_CONTROL, "public, max-age=60, immutable")
        .body(Body::from(chunk.payload))
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkHeader, KeyId, digest};
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::collections::HashMap;
    use tower::ServiceExt;

    /// The duration histogram covers the body, not just the headers: a
    /// body that streams for 300 ms is observed as at least 300 ms.
    #[tokio::test]
    async fn request_duration_runs_to_the_end_of_the_body() {
        let metrics = crate::metrics::Metrics::new("edge").unwrap();
        let slow = || async {
            let pieces = futures_util::stream::unfold(0u8, |i| async move {
                if i == 3 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")),
                    i + 1,
                ))
            });
            axum::body::Body::from_stream(pieces)
        };
        let app =
            Router::new()
                .route("/slow", get(slow))
                .layer(axum::middleware::from_fn_with_state(
                    Arc::new(metrics.clone()),
                    count_requests,
                ));
        let resp = app
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"xxx");
        let h = metrics.http_duration.with_label_values(&["/slow"]);
        assert_eq!(h.get_sample_count(), 1);
        assert!(
            h.get_sample_sum() >= 0.3,
            "observed {}s",
            h.get_sample_sum()
        );
    }

    #[derive(Default)]
    struct Fake {
        objects: HashMap<String, ObjectInfo>,
        chunks: HashMap<ChunkId, Chunk>,
        /// Pretend nothing is cached, to exercise the streaming path.
        stream_only: bool,
    }

    impl Content for Fake {
        async fn object(&self, name: &str) -> Result<ObjectInfo, ContentError> {
            self.objects
                .get(name)
                .cloned()
                .ok_or_else(|| ContentError::NotFound(format!("object {name}")))
        }
        async fn chunk(&self, id: ChunkId, _wait: Duration) -> Result<Chunk, ContentError> {
            self.chunks
                .get(&id)
                .cloned()
                .ok_or_else(|| ContentError::Unavailable(format!("chunk {id}")))
        }
        fn stream_head(&self, stream: StreamId) -> Option<u64> {
            self.chunks
                .keys()
                .filter(|k| k.stream == stream)
                .map(|k| k.seq)
                .max()
        }
        fn cached(&self, id: ChunkId) -> Option<Chunk> {
            if self.stream_only {
                return None;
            }
            self.chunks.get(&id).cloned()
        }
    }

    fn chunk_of(stream: StreamId, seq: u64, payload: &[u8]) -> Chunk {
        Chunk {
            header: ChunkHeader {
                id: ChunkId::new(stream, seq),
                len: payload.len() as u32,
                digest: digest(payload),
                key_id: KeyId(1),
                timestamp_ms: 5,
            },
            signature: [0; 64],
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn fake_with_object(data: &[u8], chunk_size: usize) -> Fake {
        let stream = StreamId::object("big.bin", 7);
        let mut fake = Fake::default();
        for (i, piece) in data.chunks(chunk_size).enumerate() {
            let c = chunk_of(stream, i as u64, piece);
            fake.chunks.insert(c.id(), c);
        }
        fake.objects.insert(
            "big.bin".into(),
            ObjectInfo {
                name: "big.bin".into(),
                stream,
                version: 7,
                len: data.len() as u64,
                chunk_size: chunk_size as u32,
                chunk_count: data.len().div_ceil(chunk_size) as u64,
                digest: digest(data),
                published_ms: 1_700_000_000_000,
                cache_control: "no-cache".into(),
            },
        );
        fake
    }

    async fn call(fake: Fake, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = router(Arc::new(fake), ServeConfig::default())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec());
        (status, headers, body.unwrap_or_default())
    }

    fn data() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn whole_object_is_served_with_length_and_etag() {
        let d = data();
        let (status, headers, body) = call(
            fake_with_object(&d, 1000),
            Request::get("/v1/objects/big.bin")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, d);
        assert_eq!(headers[header::CONTENT_LENGTH], "10000");
        assert_eq!(
            headers[header::ETAG],
            format!("\"{}-7\"", hex::encode(digest(&d)))
        );
    }

    #[tokio::test]
    async fn ranges_across_chunk_boundaries_are_exact() {
        for stream_only in [false, true] {
            ranges_exact(stream_only).await;
        }
    }

    async fn ranges_exact(stream_only: bool) {
        let d = data();
        for (range, want) in [
            ("bytes=0-0", &d[0..1]),
            ("bytes=999-1000", &d[999..1001]),
            ("bytes=1500-", &d[1500..]),
            ("bytes=-10", &d[9990..]),
            ("bytes=9000-20000", &d[9000..]),
        ] {
            let mut fake = fake_with_object(&d, 1000);
            fake.stream_only = stream_only;
            let (status, headers, body) = call(
                fake,
                Request::get("/v1/objects/big.bin")
                    .header(header::RANGE, range)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(body, want, "{range}");
            assert!(
                headers[header::CONTENT_RANGE]
                    .to_str()
                    .unwrap()
                    .ends_with("/10000")
            );
        }
    }

    #[tokio::test]
    async fn unsatisfiable_range_is_416_with_content_range() {
        let (status, headers, body) = call(
            fake_with_object(&data(), 1000),
            Request::get("/v1/objects/big.bin")
                .header(header::RANGE, "bytes=10000-")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[header::CONTENT_RANGE], "bytes */10000");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "range_not_satisfiable");
    }

    #[tokio::test]
    async fn a_malformed_range_is_ignored_and_the_whole_object_served() {
        for bad in ["bytes=a-b", "bytes=5-2", "bytes=", "bytes=-x"] {
            let (status, headers, body) = call(
                fake_with_object(&data(), 1000),
                Request::get("/v1/objects/big.bin")
                    .header(header::RANGE, bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{bad}");
            assert!(headers.get(header::CONTENT_RANGE).is_none(), "{bad}");
            assert_eq!(body.len(), data().len(), "{bad}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_answer_the_json_error_shape() {
        for path in ["/", "/v2/objects/x", "/v1/nothing"] {
            let (status, headers, body) = call(
                Fake::default(),
                Request::get(path).body(Body::empty()).unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{path}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], "not_found", "{path}");
        }
    }

    #[tokio::test]
    async fn errors_do_not_echo_a_long_name_back() {
        let name = "n".repeat(5000);
        let (status, _, body) = call(
            Fake::default(),
            Request::get(format!("/v1/objects/{name}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(
            message.chars().count() <= MAX_MESSAGE_CHARS + 1,
            "{} chars",
            message.len()
        );
    }

    #[tokio::test]
    async fn unknown_object_is_404_and_missing_chunks_503() {
        let (status, _, body) = call(
            Fake::default(),
            Request::get("/v1/objects/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "not_found");

        let mut fake = fake_with_object(&data(), 1000);
        fake.chunks.clear();
        let (status, _, _) = call(
            fake,
            Request::get("/v1/objects/big.bin")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn matching_if_none_match_is_304_and_head_has_no_body() {
        let d = data();
        let etag = format!("\"{}-7\"", hex::encode(digest(&d)));
        let (status, _, body) = call(
            fake_with_object(&d, 1000),
            Request::get("/v1/objects/big.bin")
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        let (status, headers, body) = call(
            fake_with_object(&d, 1000),
            Request::head("/v1/objects/big.bin")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], "10000");
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn live_chunks_by_sequence_and_head() {
        let stream = StreamId::live("cam");
        let mut fake = Fake::default();
        for seq in 0..3 {
            let c = chunk_of(stream, seq, format!("frame{seq}").as_bytes());
            fake.chunks.insert(c.id(), c);
        }
        let (status, headers, body) = call(
            fake,
            Request::get("/v1/streams/cam/2")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"frame2");
        assert_eq!(headers["x-dcdn-seq"], "2");
        let (status, _, body) = call(
            Fake::default(),
            Request::get("/v1/streams/cam/x")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).contains("bad_sequence"));
    }

    fn get_with(header: header::HeaderName, value: &str) -> Request<Body> {
        Request::get("/v1/objects/big.bin")
            .header(header, value)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn head_answers_exactly_what_get_would() {
        // Whole, ranged, conditional, unknown and unservable: HEAD's status
        // and headers equal GET's, and HEAD has no body.
        let d = data();
        let etag = format!("\"{}-7\"", hex::encode(digest(&d)));
        type Case<'a> = (Option<(header::HeaderName, String)>, &'a str, bool);
        let cases: Vec<Case> = vec![
            (None, "/v1/objects/big.bin", false),
            (
                Some((header::RANGE, "bytes=10-20".into())),
                "/v1/objects/big.bin",
                false,
            ),
            (
                Some((header::IF_NONE_MATCH, etag.clone())),
                "/v1/objects/big.bin",
                false,
            ),
            (
                Some((header::IF_MATCH, "\"nope\"".into())),
                "/v1/objects/big.bin",
                false,
            ),
            (None, "/v1/objects/nope", false),
            (None, "/v1/objects/big.bin", true),
        ];
        for (h, path, unservable) in cases {
            let mut answers = Vec::new();
            for method in [Method::GET, Method::HEAD] {
                let mut fake = fake_with_object(&d, 1000);
                if unservable {
                    fake.chunks.clear();
                }
                let mut req = Request::builder().method(method.clone()).uri(path);
                if let Some((k, v)) = &h {
                    req = req.header(k, v);
                }
                let (status, mut headers, body) =
                    call(fake, req.body(Body::empty()).unwrap()).await;
                headers.remove(header::DATE);
                if method == Method::HEAD {
                    assert!(body.is_empty(), "HEAD {path} {h:?} has a body");
                    // HEAD announces GET's length without sending it.
                }
                answers.push((status, headers));
            }
            assert_eq!(
                answers[0], answers[1],
                "GET vs HEAD {path} {h:?} unservable={unservable}"
            );
        }
    }

    #[tokio::test]
    async fn conditional_requests_answer_304_and_412() {
        let d = data();
        let hex = hex::encode(digest(&d));
        let etag = format!("\"{hex}-7\"");
        for (name, value, want) in [
            (
                header::IF_NONE_MATCH,
                etag.clone(),
                StatusCode::NOT_MODIFIED,
            ),
            (
                header::IF_NONE_MATCH,
                format!("W/{etag}"),
                StatusCode::NOT_MODIFIED,
            ),
            (
                header::IF_NONE_MATCH,
                format!("\"x\", {etag}"),
                StatusCode::NOT_MODIFIED,
            ),
            (header::IF_NONE_MATCH, "*".into(), StatusCode::NOT_MODIFIED),
            (
                header::IF_NONE_MATCH,
                format!("\"{hex}-6\""),
                StatusCode::OK,
            ),
            (
                header::IF_MODIFIED_SINCE,
                "Sun, 06 Nov 2050 08:49:37 GMT".into(),
                StatusCode::NOT_MODIFIED,
            ),
            (
                header::IF_MODIFIED_SINCE,
                "Sun, 06 Nov 1994 08:49:37 GMT".into(),
                StatusCode::OK,
            ),
            (
                header::IF_MODIFIED_SINCE,
                "not a date".into(),
                StatusCode::OK,
            ),
            (header::IF_MATCH, etag.clone(), StatusCode::OK),
            (header::IF_MATCH, "*".into(), StatusCode::OK),
            // If-Match compares strongly: a weak tag never matches.
            (
                header::IF_MATCH,
                format!("W/{etag}"),
                StatusCode::PRECONDITION_FAILED,
            ),
            (
                header::IF_MATCH,
                format!("\"{hex}-6\""),
                StatusCode::PRECONDITION_FAILED,
            ),
        ] {
            let (status, headers, body) =
                call(fake_with_object(&d, 1000), get_with(name.clone(), &value)).await;
            assert_eq!(status, want, "{name}: {value}");
            match status {
                StatusCode::NOT_MODIFIED => {
                    assert!(body.is_empty());
                    assert_eq!(headers[header::ETAG], etag.as_str());
                    assert!(headers.contains_key(header::LAST_MODIFIED));
                    assert!(headers.contains_key(header::CACHE_CONTROL));
                }
                StatusCode::PRECONDITION_FAILED => {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["code"], "precondition_failed");
                }
                _ => assert_eq!(body, d),
            }
        }
        // If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
        let req = Request::get("/v1/objects/big.bin")
            .header(header::IF_NONE_MATCH, "\"other\"")
            .header(header::IF_MODIFIED_SINCE, "Sun, 06 Nov 2050 08:49:37 GMT")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            call(fake_with_object(&d, 1000), req).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn objects_carry_their_cache_control_and_last_modified() {
        let d = data();
        let mut fake = fake_with_object(&d, 1000);
        if let Some(o) = fake.objects.get_mut("big.bin") {
            o.cache_control = "public, max-age=31536000, immutable".into();
        }
        let (status, headers, _) = call(
            fake,
            Request::get("/v1/objects/big.bin")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        // 1_700_000_000_000 ms.
        assert_eq!(
            headers[header::LAST_MODIFIED],
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
    }

    #[test]
    fn range_parser_edge_cases() {
        assert_eq!(
            parse_range("bytes=0-", 10),
            Ok(Some(ByteRange { start: 0, end: 10 }))
        );
        assert_eq!(
            parse_range("bytes=-3", 10),
            Ok(Some(ByteRange { start: 7, end: 10 }))
        );
        assert_eq!(
            parse_range("bytes=-30", 10),
            Ok(Some(ByteRange { start: 0, end: 10 }))
        );
        // Unsatisfiable: 416.
        assert_eq!(parse_range("bytes=10-", 10), Err(()));
        assert_eq!(parse_range("bytes=-0", 10), Err(()));
        assert_eq!(parse_range("bytes=99999999999999999999-", 10), Err(()));
        // Malformed or invalid: ignored, the whole object is served.
        assert_eq!(parse_range("bytes=5-2", 10), Ok(None));
        assert_eq!(parse_range("bytes=a-b", 10), Ok(None));
        assert_eq!(parse_range("bytes=", 10), Ok(None));
        assert_eq!(parse_range("bytes=0", 10), Ok(None));
        assert_eq!(parse_range("bytes=-", 10), Ok(None));
        assert_eq!(parse_range("bytes=1-x", 10), Ok(None));
        assert_eq!(parse_range("items=0-1", 10), Ok(None));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ok(None));
    }

    /// An edge whose only version of "up" is an upload: `script` is what
    /// each `upload_next` answers, in order.
    struct Uploading {
        script: parking_lot::Mutex<std::collections::VecDeque<crate::roles::uploads::Step>>,
        ended: parking_lot::Mutex<Vec<&'static str>>,
    }

    fn upload_frame() -> crate::chunk::wire::UploadFrame {
        crate::chunk::wire::UploadFrame {
            name: "up".into(),
            stream: StreamId::object("up", 9),
            version: 9,
            state: crate::chunk::wire::UploadState::Open,
            cache_control: String::new(),
            chunk_size: 4,
            key_id: KeyId(1),
            timestamp_ms: 0,
            signature: [0; 64],
        }
    }

    fn final_manifest(data: &[u8]) -> crate::chunk::wire::ManifestFrame {
        crate::chunk::wire::ManifestFrame {
            name: "up".into(),
            stream: StreamId::object("up", 9),
            version: 9,
            cache_control: String::new(),
            object_len: data.len() as u64,
            chunk_size: 4,
            chunk_count: (data.len() as u64).div_ceil(4),
            digest: digest(data),
            key_id: KeyId(1),
            timestamp_ms: 0,
            signature: [0; 64],
        }
    }

    impl Content for Uploading {
        async fn object(&self, name: &str) -> Result<ObjectInfo, ContentError> {
            Err(ContentError::NotFound(name.into()))
        }
        async fn chunk(&self, id: ChunkId, _wait: Duration) -> Result<Chunk, ContentError> {
            Err(ContentError::NotFound(id.to_string()))
        }
        fn stream_head(&self, _stream: StreamId) -> Option<u64> {
            None
        }
        fn cached(&self, _id: ChunkId) -> Option<Chunk> {
            None
        }
        fn upload(&self, _name: &str) -> Result<Option<UploadRead>, ContentError> {
            let readers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            Ok(Some(UploadRead {
                frame: upload_frame(),
                slot: crate::roles::uploads::ReaderSlot::take(&readers).unwrap(),
            }))
        }
        async fn upload_next(
            &self,
            _up: &crate::chunk::wire::UploadFrame,
            _seq: u64,
            _progress: std::time::Instant,
        ) -> crate::roles::uploads::Step {
            self.script
                .lock()
                .pop_front()
                .unwrap_or(crate::roles::uploads::Step::Failed("script ended".into()))
        }
        fn upload_read_ended(&self, outcome: &'static str) {
            self.ended.lock().push(outcome);
        }
    }

    /// GETs "up" from an edge answering `steps`: the status, whether the
    /// body ended cleanly, the bytes and how the read was counted.
    async fn read_upload(
        steps: Vec<crate::roles::uploads::Step>,
    ) -> (
        StatusCode,
        HeaderMap,
        Result<Vec<u8>, String>,
        Vec<&'static str>,
    ) {
        let content = Arc::new(Uploading {
            script: parking_lot::Mutex::new(steps.into()),
            ended: parking_lot::Mutex::default(),
        });
        let resp = router(content.clone(), ServeConfig::default())
            .oneshot(Request::get("/v1/objects/up").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string());
        let ended = content.ended.lock().clone();
        (status, headers, body, ended)
    }

    #[tokio::test]
    async fn an_upload_body_ends_cleanly_only_when_its_final_manifest_matches() {
        use crate::roles::uploads::Step;
        let data = b"abcdefghij";
        let stream = StreamId::object("up", 9);
        let chunks = || {
            vec![
                Step::Chunk(chunk_of(stream, 0, b"abcd")),
                Step::Chunk(chunk_of(stream, 1, b"efgh")),
                Step::Chunk(chunk_of(stream, 2, b"ij")),
            ]
        };
        let mut whole = chunks();
        whole.push(Step::Done(final_manifest(data)));
        let (status, headers, body, ended) = read_upload(whole).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get(header::CONTENT_LENGTH), None);
        assert_eq!(headers.get(header::ETAG), None);
        assert_eq!(body.unwrap(), data);
        assert_eq!(ended, ["complete"]);

        // A final manifest naming other bytes, an abort, a long chunk or a
        // chunk after a short one: the body errors (is reset), never ends.
        let mut other_digest = chunks();
        other_digest.push(Step::Done(final_manifest(b"abcdefghiX")));
        let mut aborted = chunks();
        aborted.push(Step::Failed("aborted".into()));
        let long = vec![Step::Chunk(chunk_of(stream, 0, b"abcdef"))];
        let after_short = vec![
            Step::Chunk(chunk_of(stream, 0, b"ab")),
            Step::Chunk(chunk_of(stream, 1, b"cd")),
        ];
        let wrong_seq = vec![Step::Chunk(chunk_of(stream, 1, b"abcd"))];
        for steps in [other_digest, aborted, long, after_short, wrong_seq] {
            let (status, _, body, ended) = read_upload(steps).await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.is_err(), "a body that should reset ended cleanly");
            assert_eq!(ended, ["reset"]);
        }

        // Aborted before its first chunk: a 404, not an empty 200.
        let (status, _, _, ended) = read_upload(vec![Step::Failed("aborted".into())]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(ended, ["reset"]);
    }
}
