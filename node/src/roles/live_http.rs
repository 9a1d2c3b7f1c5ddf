//! HTTP of the live namespace: encoders publish at the origin, players read
//! at the edges, both under `/live/{stream}/{file}`.
//!
//! Publishing is what ffmpeg's `hls` and `dash` muxers do with
//! `-method PUT` (with or without `-http_persistent 1`, bodies chunked or
//! not): one PUT per segment, then one per playlist rewrite. Each PUT is a
//! new version of the file's object (`roles::live`); its chunks are pushed
//! as they fill (the live path: signed chunks, FEC datagrams) and its
//! manifest follows once the body is whole, so an aborted upload is never
//! served. A DELETE (ffmpeg's `delete_segments`) is answered 204: the DVR
//! window, the same at every node, decides when a segment goes.
//!
//! Serving goes through `serve::object_response`, so a live file gets the
//! ETag, conditional and Range handling of any object, plus its
//! `Content-Type` and the `Cache-Control` signed into its manifest
//! (playlists `no-cache`, segments immutable). These routes carry no
//! fallback of their own: they are merged into the ingest and serve routers.

use crate::chunk::{ChunkId, StreamId};
use crate::metrics::Metrics;
use crate::roles::hls::{self, Block, Playlist};
use crate::roles::ingest::{IngestConfig, Publish, Published, check_token};
use crate::roles::live::{Kind, LiveFile, PathError, object_name};
use crate::roles::serve::{self, Content, HttpError, ObjectInfo, ServeConfig};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The route both sides answer.
pub const ROUTE: &str = "/live/{stream}/{*file}";

struct IngestState<P> {
    publisher: Arc<P>,
    config: IngestConfig,
    metrics: Metrics,
    uploading: Arc<Uploading>,
}

/// How long a playlist waits for the uploads of files it lists before it is
/// published anyway (an encoder that stalled mid-segment must not freeze
/// the stream's playlist for good).
const LISTED_UPLOAD_WAIT: Duration = Duration::from_secs(5);

/// Live files being received at the origin, by object name. ffmpeg sends a
/// segment's last byte and PUTs the playlist at once, without waiting for
/// the segment's answer, so the playlist can be taken in while the segment
/// is still being chunked and pushed: a playlist waits for the files it
/// lists, so that no edge learns a name before its manifest. Bounded by the
/// uploads in progress (the listener's connection limits).
#[derive(Default)]
struct Uploading {
    names: Mutex<HashMap<String, usize>>,
    done: tokio::sync::Notify,
}

impl Uploading {
    fn start(self: &Arc<Self>, name: String) -> UploadGuard {
        *self.names.lock().entry(name.clone()).or_default() += 1;
        UploadGuard {
            uploading: self.clone(),
            name,
        }
    }

    /// Waits (up to `limit`) until none of `names` is being uploaded;
    /// whether that happened.
    async fn wait_for(&self, names: &[String], limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !names.iter().any(|n| self.names.lock().contains_key(n)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return false;
            }
        }
    }
}

struct UploadGuard {
    uploading: Arc<Uploading>,
    name: String,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let mut names = self.uploading.names.lock();
        if let Some(n) = names.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                names.remove(&self.name);
            }
        }
        drop(names);
        self.uploading.done.notify_waiters();
    }
}

fn refused(metrics: &Metrics, reason: &'static str, e: HttpError) -> HttpError {
    metrics.live_refused.with_label_values(&[reason]).inc();
    e
}

fn path_error(metrics: &Metrics, e: PathError) -> HttpError {
    let status = match e {
        PathError::Type(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    let reason = e.reason();
    refused(
        metrics,
        reason,
        HttpError::new(status, reason, e.to_string()),
    )
}

/// The origin's live routes: `PUT|POST|DELETE /live/{stream}/{file}`.
pub fn ingest_router<P: Publish>(
    publisher: Arc<P>,
    config: IngestConfig,
    metrics: Metrics,
) -> Router {
    let state = Arc::new(IngestState {
        publisher,
        config,
        metrics,
        uploading: Arc::default(),
    });
    Router::new()
        .route(
            ROUTE,
            put(put_file::<P>)
                .post(put_file::<P>)
                .delete(delete_file::<P>),
        )
        .with_state(state)
}

async fn put_file<P: Publish>(
    State(state): State<Arc<IngestState<P>>>,
    Path((stream, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let metrics = &state.metrics;
    check_token(&headers, &state.config).map_err(|e| refused(metrics, "token", e))?;
    let f = LiveFile::parse(&stream, &file).map_err(|e| path_error(metrics, e))?;
    if !state.publisher.live_has_room(&f.stream) {
        return Err(refused(
            metrics,
            "too_many_streams",
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                "this origin tracks as many live streams as live.max_streams allows",
            ),
        ));
    }
    let limit = state.config.max_object_bytes;
    let too_large = || {
        refused(
            metrics,
            "too_large",
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("live files are limited to {limit} bytes"),
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // ffmpeg sends a segment's or playlist's last byte and, at the end of a
    // stream, closes the connection without waiting for the answer; hyper
    // then drops this handler. The upload runs as its own task so that a
    // body that arrived whole is published whether or not anyone is left to
    // read the 201 (a body cut short fails and is never named).
    let task = tokio::spawn(receive_file(state.clone(), f, body));
    task.await.map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the upload task failed: {e}"),
        )
    })?
}

async fn receive_file<P: Publish>(
    state: Arc<IngestState<P>>,
    f: LiveFile,
    body: Body,
) -> Result<Response, HttpError> {
    let metrics = &state.metrics;
    let limit = state.config.max_object_bytes;
    let too_large = || {
        refused(
            metrics,
            "too_large",
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("live files are limited to {limit} bytes"),
            ),
        )
    };
    let name = f.object_name();
    // Dropped when this upload ends, published or failed.
    let _uploading = (!f.kind.is_playlist()).then(|| state.uploading.start(name.clone()));
    let version = state.publisher.next_version();
    let id = StreamId::object(&name, version);
    let chunk_size = state.config.chunk_size;
    let mut hasher = blake3::Hasher::new();
    let mut pending = BytesMut::with_capacity(chunk_size);
    let mut seq = 0u64;
    let mut len = 0u64;
    let mut body = body.into_data_stream().boxed();
    let body_error = |e: axum::Error| {
        refused(
            metrics,
            "body",
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "body",
                format!("reading the body: {e}"),
            ),
        )
    };
    if f.kind == Kind::HlsPlaylist {
        // A playlist is checked whole before any of it is pushed: edges
        // keep the promises its EXT-X-SERVER-CONTROL makes, so they must
        // only ever see one whose promises hold.
        let mut whole = BytesMut::new();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(body_error)?;
            if (whole.len() + piece.len()) as u64 > limit {
                return Err(too_large());
            }
            whole.extend_from_slice(&piece);
        }
        let text = std::str::from_utf8(&whole).map_err(|_| hls::PlaylistError::Header);
        if let Err(e) = text.clone().and_then(Playlist::parse) {
            return Err(refused(
                metrics,
                "bad_playlist",
                HttpError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_playlist",
                    format!("{}: {e}", f.file),
                ),
            ));
        }
        let listed: Vec<String> = text
            .map(hls::listed_uris)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|uri| resolve(&f.stream, &f.file, uri))
            .map(|file| object_name(&f.stream, &file))
            .collect();
        if !state.uploading.wait_for(&listed, LISTED_UPLOAD_WAIT).await {
            tracing::warn!(
                playlist = %name,
                "published before a file it lists finished uploading"
            );
        }
        body = futures_util::stream::iter([Ok(whole.freeze())]).boxed();
    }
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(body_error)?;
        len += piece.len() as u64;
        if len > limit {
            return Err(too_large());
        }
        hasher.update(&piece);
        let mut piece: &[u8] = &piece;
        while !piece.is_empty() {
            let take = (chunk_size - pending.len()).min(piece.len());
            pending.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if pending.len() == chunk_size {
                // Pushed now, while the rest of the body is still coming:
                // nothing names these chunks until the manifest below.
                state
                    .publisher
                    .publish_chunk(id, seq, pending.split().freeze(), true)
                    .await?;
                seq += 1;
            }
        }
    }
    if !pending.is_empty() {
        state
            .publisher
            .publish_chunk(id, seq, pending.split().freeze(), true)
            .await?;
        seq += 1;
    }
    let digest = *hasher.finalize().as_bytes();
    let published = Published {
        name,
        stream: id.to_string(),
        stream_id: id,
        version,
        cache_control: f.kind.cache_control().to_owned(),
        len,
        chunk_size: chunk_size as u32,
        first_seq: 0,
        chunks: seq,
        digest: hex::encode(digest),
        digest_bytes: digest,
        // Published here by the client, not pulled from an upstream.
        upstream: None,
    };
    state.publisher.publish_live_manifest(&published).await?;
    Ok((StatusCode::CREATED, Json(published)).into_response())
}

async fn delete_file<P: Publish>(
    State(state): State<Arc<IngestState<P>>>,
    Path((stream, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let metrics = &state.metrics;
    check_token(&headers, &state.config).map_err(|e| refused(metrics, "token", e))?;
    LiveFile::parse(&stream, &file).map_err(|e| path_error(metrics, e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What an edge needs beyond [`Content`] to serve Low-Latency HLS: to
/// learn when a new live file version arrives, and what it holds without
/// asking upstream.
pub trait LiveContent: Content {
    /// Changes each time a live file version enters this node's window.
    fn live_changes(&self) -> watch::Receiver<u64>;
    /// The newest version of `name` held here; never fetches.
    fn held_version(&self, name: &str) -> Option<u64>;
    /// The playlist files held for `stream`.
    fn playlists(&self, stream: &str) -> Vec<String>;
}

/// Limits of the LL-HLS requests an edge holds.
#[derive(Debug, Clone, Copy)]
pub struct HoldConfig {
    pub max_held: usize,
    pub max_held_per_stream: usize,
    /// The longest any request is held, whatever the playlist's target
    /// duration says.
    pub max_hold: Duration,
}

impl HoldConfig {
    pub fn of(c: &crate::config::LiveSection) -> Self {
        Self {
            max_held: c.max_held_requests.get() as usize,
            max_held_per_stream: c.max_held_per_stream.get() as usize,
            max_hold: MAX_HOLD,
        }
    }
}

/// §6.2.5.2 bounds a blocking reload by three target durations; a
/// publisher's huge target duration must not hold sockets for minutes.
const MAX_HOLD: Duration = Duration::from_secs(30);
/// Parsed playlist versions remembered per edge.
const PARSED_CACHE: usize = 256;

/// The requests held now: in total and per stream (an entry only while a
/// stream holds any, so the map is bounded by `max_held`).
#[derive(Default)]
struct Holds {
    total: usize,
    per_stream: HashMap<String, usize>,
}

struct HoldGuard<C> {
    state: Arc<EdgeState<C>>,
    stream: String,
}

impl<C> Drop for HoldGuard<C> {
    fn drop(&mut self) {
        let mut h = self.state.holds.lock();
        h.total -= 1;
        let n = h.per_stream.get_mut(&self.stream).map(|n| {
            *n -= 1;
            *n
        });
        if n == Some(0) {
            h.per_stream.remove(&self.stream);
        }
        self.state
            .metrics
            .live_held
            .with_label_values(&[&self.stream])
            .set(n.unwrap_or(0) as i64);
    }
}

/// Playlist versions already read and parsed, by version stream id.
#[derive(Default)]
struct Parsed {
    map: HashMap<StreamId, Arc<(Bytes, Playlist)>>,
    order: VecDeque<StreamId>,
}

struct EdgeState<C> {
    content: Arc<C>,
    config: ServeConfig,
    hold: HoldConfig,
    holds: Mutex<Holds>,
    parsed: Mutex<Parsed>,
    metrics: Metrics,
}

impl<C: LiveContent> EdgeState<C> {
    /// Takes a slot for a held request, or refuses it (503, counted).
    fn hold(self: &Arc<Self>, stream: &str) -> Result<HoldGuard<C>, HttpError> {
        let mut h = self.holds.lock();
        let mine = h.per_stream.get(stream).copied().unwrap_or(0);
        if h.total >= self.hold.max_held || mine >= self.hold.max_held_per_stream {
            drop(h);
            let e = refused(
                &self.metrics,
                "too_many_held",
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_held",
                    "this edge holds as many LL-HLS requests as live.max_held_requests \
                     (or live.max_held_per_stream) allows",
                ),
            );
            return Err(e.with_header(header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        h.total += 1;
        h.per_stream.insert(stream.to_owned(), mine + 1);
        drop(h);
        self.metrics
            .live_held
            .with_label_values(&[stream])
            .set(mine as i64 + 1);
        Ok(HoldGuard {
            state: self.clone(),
            stream: stream.to_owned(),
        })
    }

    /// The newest version of playlist `name`: its manifest, bytes and
    /// parse. The bytes are checked against the manifest's digest.
    async fn playlist(
        &self,
        name: &str,
    ) -> Result<(ObjectInfo, Arc<(Bytes, Playlist)>), HttpError> {
        let info = self.content.object(name).await?;
        if let Some(p) = self.parsed.lock().map.get(&info.stream) {
            return Ok((info, p.clone()));
        }
        let mut body = BytesMut::with_capacity(info.len as usize);
        for seq in 0..info.chunk_count {
            let c = self
                .content
                .chunk(ChunkId::new(info.stream, seq), self.config.chunk_wait)
                .await?;
            body.extend_from_slice(&c.payload);
        }
        if body.len() as u64 != info.len || *blake3::hash(&body).as_bytes() != info.digest {
            return Err(HttpError::new(
                StatusCode::BAD_GATEWAY,
                "digest_mismatch",
                format!("{name}: the chunks held do not make the published playlist"),
            ));
        }
        let body = body.freeze();
        let text = std::str::from_utf8(&body).map_err(|_| bad_playlist(name))?;
        let parsed = Playlist::parse(text).map_err(|_| bad_playlist(name))?;
        let p = Arc::new((body, parsed));
        let mut cache = self.parsed.lock();
        if cache.map.insert(info.stream, p.clone()).is_none() {
            cache.order.push_back(info.stream);
            if cache.order.len() > PARSED_CACHE {
                if let Some(old) = cache.order.pop_front() {
                    cache.map.remove(&old);
                }
            }
        }
        Ok((info, p))
    }
}

fn bad_playlist(name: &str) -> HttpError {
    // The origin refuses playlists that do not parse, so this is a
    // playlist from before that check or a bug: say so, do not guess.
    HttpError::new(
        StatusCode::BAD_GATEWAY,
        "bad_playlist",
        format!("{name} is not a playlist this edge can read"),
    )
}

/// The LL-HLS delivery directives of a playlist request (§6.2.5).
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    msn: Option<u64>,
    part: Option<u64>,
    skip: bool,
}

impl Directives {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut d = Self::default();
        for pair in query.unwrap_or_default().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v:?} is not a decimal integer"))
            };
            match k {
                "_HLS_msn" => d.msn = Some(num()?),
                "_HLS_part" => d.part = Some(num()?),
                "_HLS_skip" => match v {
                    "YES" | "v2" => d.skip = true,
                    _ => return Err(format!("_HLS_skip={v:?} must be YES or v2")),
                },
                // Anything else (cache busters) is not ours to judge.
                _ => {}
            }
        }
        if d.part.is_some() && d.msn.is_none() {
            return Err("_HLS_part needs _HLS_msn".into());
        }
        Ok(d)
    }

    fn any(&self) -> bool {
        self.msn.is_some() || self.skip
    }
}

/// The edge's live routes: `GET|HEAD /live/{stream}/{file}`.
pub fn edge_router<C: LiveContent>(
    content: Arc<C>,
    config: ServeConfig,
    hold: HoldConfig,
    metrics: Metrics,
) -> Router {
    let state = Arc::new(EdgeState {
        content,
        config,
        hold,
        holds: Mutex::new(Holds::default()),
        parsed: Mutex::new(Parsed::default()),
        metrics,
    });
    Router::new()
        .route(ROUTE, axum::routing::get(get_file::<C>).head(get_file::<C>))
        .with_state(state)
}

async fn get_file<C: LiveContent>(
    State(state): State<Arc<EdgeState<C>>>,
    Path((stream, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let f = LiveFile::parse(&stream, &file).map_err(|e| path_error(&state.metrics, e))?;
    let mut resp = if f.kind == Kind::HlsPlaylist {
        let d = Directives::parse(query.as_deref()).map_err(|why| {
            refused(
                &state.metrics,
                "bad_directive",
                HttpError::new(StatusCode::BAD_REQUEST, "bad_directive", why),
            )
        })?;
        if d.any() {
            low_latency_playlist(&state, &f, d, &method).await?
        } else {
            serve::object_response(
                state.content.clone(),
                state.config,
                f.object_name(),
                method,
                headers,
            )
            .await?
        }
    } else {
        if f.kind == Kind::Segment && state.content.held_version(&f.object_name()).is_none() {
            wait_for_hinted(&state, &f).await?;
        }
        serve::object_response(
            state.content.clone(),
            state.config,
            f.object_name(),
            method,
            headers,
        )
        .await?
    };
    if resp.status().is_success() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(f.content_type),
        );
        // Only names the window holds get here, so the label set is
        // bounded by live.max_streams.
        state
            .metrics
            .live_served
            .with_label_values(&[&f.stream, f.kind.label()])
            .inc();
    }
    // Browser players (hls.js, dash.js) fetch across origins.
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(resp)
}

fn hold_for(target_duration: f64, max: Duration) -> Duration {
    Duration::try_from_secs_f64(3.0 * target_duration)
        .unwrap_or(max)
        .min(max)
}

/// A playlist request with `_HLS_msn` (and `_HLS_part`) is held until a
/// playlist this edge holds lists that segment or part, at most three
/// target durations (then 503); one too far ahead is 400 at once
/// (§6.2.5.2). With `_HLS_skip` the answer is the delta update.
async fn low_latency_playlist<C: LiveContent>(
    state: &Arc<EdgeState<C>>,
    f: &LiveFile,
    d: Directives,
    method: &Method,
) -> Result<Response, HttpError> {
    let name = f.object_name();
    // Subscribed before the first look, so a version arriving in between
    // still wakes us.
    let mut changes = state.content.live_changes();
    let (mut info, mut current) = state.playlist(&name).await?;
    let blocking = d.msn.filter(|_| current.1.control.can_block_reload);
    if let Some(msn) = blocking {
        match current.1.block(msn, d.part) {
            Block::Ready => {}
            Block::TooFar(why) => {
                return Err(refused(
                    &state.metrics,
                    "too_far",
                    HttpError::new(StatusCode::BAD_REQUEST, "too_far", why),
                ));
            }
            Block::Hold => {
                let _slot = state.hold(&f.stream)?;
                let target = current.1.target_duration.unwrap_or(0.0);
                let deadline = Instant::now() + hold_for(target, state.hold.max_hold);
                loop {
                    match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => {
                            state
                                .metrics
                                .live_blocking
                                .with_label_values(&[&f.stream, "reload", "timed_out"])
                                .inc();
                            let e = HttpError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "blocking_timeout",
                                format!(
                                    "no playlist listed segment {msn}{} within three target durations",
                                    d.part.map(|p| format!(" part {p}")).unwrap_or_default()
                                ),
                            );
                            return Err(
                                e.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
                            );
                        }
                    }
                    if state.content.held_version(&name) == Some(info.version) {
                        continue;
                    }
                    (info, current) = state.playlist(&name).await?;
                    if current.1.block(msn, d.part) == Block::Ready {
                        break;
                    }
                }
                state
                    .metrics
                    .live_blocking
                    .with_label_values(&[&f.stream, "reload", "released"])
                    .inc();
            }
        }
    }
    let (bytes, playlist) = (&current.0, &current.1);
    let delta = d
        .skip
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
        .and_then(|text| hls::delta(text, playlist));
    let etag = format!(
        "\"{}-{}{}\"",
        hex::encode(info.digest),
        info.version,
        if delta.is_some() { "-skip" } else { "" }
    );
    let body = delta.map_or_else(|| bytes.clone(), Bytes::from);
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CACHE_CONTROL, &info.cache_control)
        .header(header::ETAG, etag)
        .header(header::CONTENT_LENGTH, body.len());
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    builder
        .body(body)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// A GET for a file this edge does not hold, named by a preload hint of a
/// playlist it holds, waits until the file arrives (at most three target
/// durations); any other missing file is left to the ordinary 404.
async fn wait_for_hinted<C: LiveContent>(
    state: &Arc<EdgeState<C>>,
    f: &LiveFile,
) -> Result<(), HttpError> {
    let name = f.object_name();
    let mut changes = state.content.live_changes();
    let mut target = None;
    for playlist in state.content.playlists(&f.stream) {
        if !playlist.ends_with(".m3u8") {
            continue;
        }
        let Ok((_, p)) = state.playlist(&object_name(&f.stream, &playlist)).await else {
            continue;
        };
        if p.1
            .hints
            .iter()
            .any(|uri| resolve(&f.stream, &playlist, uri).as_deref() == Some(&f.file))
        {
            target = p.1.target_duration;
            break;
        }
    }
    let Some(target) = target else {
        return Ok(());
    };
    let _slot = state.hold(&f.stream)?;
    let deadline = Instant::now() + hold_for(target, state.hold.max_hold);
    while state.content.held_version(&name).is_none() {
        match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                state
                    .metrics
                    .live_blocking
                    .with_label_values(&[&f.stream, "hint", "timed_out"])
                    .inc();
                let e = HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "hint_timeout",
                    format!(
                        "{} was hinted but not published within three target durations",
                        f.file
                    ),
                );
                return Err(e.with_header(header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
        }
    }
    state
        .metrics
        .live_blocking
        .with_label_values(&[&f.stream, "hint", "released"])
        .inc();
    Ok(())
}

/// The file (inside `stream`) a URI in playlist `playlist` names, if it is
/// one of this stream's: relative to the playlist's directory, or an
/// absolute `/live/{stream}/...` path.
fn resolve(stream: &str, playlist: &str, uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next()?;
    if let Some(abs) = uri.strip_prefix('/') {
        return abs
            .strip_prefix("live/")?
            .strip_prefix(stream)?
            .strip_prefix('/')
            .map(str::to_owned);
    }
    if uri.contains("://") {
        return None;
    }
    let dir = playlist.rsplit_once('/').map_or("", |(d, _)| d);
    let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    for seg in uri.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::ingest::PublishError;
    use axum::http::Request;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use tower::ServiceExt;

    #[derive(Default)]
    struct Recorder {
        /// (stream, seq, len, live) in the order published.
        chunks: Mutex<Vec<(StreamId, u64, usize, bool)>>,
        manifests: Mutex<Vec<Published>>,
        version: std::sync::atomic::AtomicU64,
    }

    impl Publish for Recorder {
        async fn publish_chunk(
            &self,
            stream: StreamId,
            seq: u64,
            payload: Bytes,
            live: bool,
        ) -> Result<(), PublishError> {
            self.chunks.lock().push((stream, seq, payload.len(), live));
            Ok(())
        }
        async fn publish_manifest(&self, _: &Published) -> Result<(), PublishError> {
            panic!("a live file must not go to the origin of record");
        }
        async fn publish_live_manifest(&self, file: &Published) -> Result<(), PublishError> {
            self.manifests.lock().push(file.clone());
            Ok(())
        }
        fn live_has_room(&self, stream: &str) -> bool {
            stream != "full"
        }
        fn next_live_seq(&self, _: StreamId) -> u64 {
            0
        }
        fn next_version(&self) -> u64 {
            self.version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
        }
    }

    fn app(rec: Arc<Recorder>) -> (Router, Metrics) {
        let metrics = Metrics::new("origin").unwrap();
        let router = ingest_router(
            rec,
            IngestConfig {
                chunk_size: 1000,
                token: crate::auth::Token::from_secret("t").unwrap(),
                refused: Some(metrics.auth_refused.clone()),
                max_object_bytes: 5000,
                cache_control: "no-cache".into(),
            },
            metrics.clone(),
        );
        (router, metrics)
    }

    async fn put(router: &Router, path: &str, token: &str, body: Vec<u8>) -> StatusCode {
        router
            .clone()
            .oneshot(
                Request::put(path)
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
    }

    /// ffmpeg PUTs the playlist right after a segment's last byte, without
    /// waiting for the segment's answer: the playlist is published only
    /// once the segment it lists is, and a hinted file still uploading
    /// does not hold it back.
    #[tokio::test]
    async fn a_playlist_waits_for_the_uploads_of_the_files_it_lists() {
        let rec = Arc::new(Recorder::default());
        let (router, _) = app(rec.clone());
        let upload = |path: &'static str| {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|piece| (piece, rx))
            }));
            let req = Request::put(path)
                .header(header::AUTHORIZATION, "Bearer t")
                .body(body)
                .unwrap();
            (tx, tokio::spawn(router.clone().oneshot(req)))
        };
        let (seg, seg_done) = upload("/live/cam/seg0.ts");
        let (hinted, hinted_done) = upload("/live/cam/seg1.ts");
        seg.send(Ok(Bytes::from(vec![7; 1500]))).await.unwrap();
        hinted.send(Ok(Bytes::from(vec![8; 10]))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let playlist = router.clone().oneshot(
            Request::put("/live/cam/index.m3u8")
                .header(header::AUTHORIZATION, "Bearer t")
                .body(Body::from(
                    "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg0.ts\n\
                     #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg1.ts\"\n",
                ))
                .unwrap(),
        );
        let playlist = tokio::spawn(playlist);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            rec.manifests.lock().is_empty(),
            "the playlist was published before the segment it lists"
        );
        drop(seg);
        assert_eq!(
            seg_done.await.unwrap().unwrap().status(),
            StatusCode::CREATED
        );
        assert_eq!(
            playlist.await.unwrap().unwrap().status(),
            StatusCode::CREATED
        );
        let names: Vec<String> = rec
            .manifests
            .lock()
            .iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(names, ["live:cam/seg0.ts", "live:cam/index.m3u8"]);
        drop(hinted);
        assert_eq!(
            hinted_done.await.unwrap().unwrap().status(),
            StatusCode::CREATED
        );
    }

    #[tokio::test]
    async fn a_segment_is_pushed_chunk_by_chunk_then_its_manifest_follows() {
        let rec = Arc::new(Recorder::default());
        let (router, _) = app(rec.clone());
        assert_eq!(
            put(&router, "/live/cam/seg0.ts", "t", vec![7; 2500]).await,
            StatusCode::CREATED
        );
        assert_eq!(
            put(&router, "/live/cam/index.m3u8", "t", b"#EXTM3U\n".to_vec()).await,
            StatusCode::CREATED
        );
        let chunks = rec.chunks.lock().clone();
        let seg = StreamId::object("live:cam/seg0.ts", 1);
        assert_eq!(
            chunks[..3],
            [
                (seg, 0, 1000, true),
                (seg, 1, 1000, true),
                (seg, 2, 500, true)
            ]
        );
        let manifests = rec.manifests.lock().clone();
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[0].name, "live:cam/seg0.ts");
        assert_eq!(manifests[0].chunks, 3);
        assert!(manifests[0].cache_control.contains("immutable"));
        assert_eq!(manifests[1].name, "live:cam/index.m3u8");
        assert_eq!(manifests[1].cache_control, "no-cache");
        assert_eq!(
            manifests[1].stream_id,
            StreamId::object("live:cam/index.m3u8", 2)
        );
    }

    #[tokio::test]
    async fn bad_publishes_are_refused_with_a_reason_and_counted() {
        let rec = Arc::new(Recorder::default());
        let (router, metrics) = app(rec.clone());
        for (path, token, len, want, reason) in [
            (
                "/live/cam/a.ts",
                "nope",
                10,
                StatusCode::UNAUTHORIZED,
                "token",
            ),
            (
                "/live/cam/a.exe",
                "t",
                10,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_type",
            ),
            (
                "/live/c:d/a.ts",
                "t",
                10,
                StatusCode::BAD_REQUEST,
                "bad_stream",
            ),
            (
                "/live/cam/../a.ts",
                "t",
                10,
                StatusCode::BAD_REQUEST,
                "bad_file",
            ),
            (
                "/live/cam/big.ts",
                "t",
                5001,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                "/live/full/a.ts",
                "t",
                10,
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
            ),
            (
                "/live/cam/bad.m3u8",
                "t",
                10,
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_playlist",
            ),
        ] {
            assert_eq!(
                put(&router, path, token, vec![0; len]).await,
                want,
                "{path}"
            );
            assert_eq!(
                metrics.live_refused.with_label_values(&[reason]).get(),
                1,
                "{path}"
            );
        }
        assert!(rec.manifests.lock().is_empty(), "nothing refused is named");
        // A playlist whose server control promises too little is refused
        // whole: not one chunk of it leaves the origin.
        let lie = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n\
                   #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=3\n";
        assert_eq!(
            put(&router, "/live/cam/ll.m3u8", "t", lie.as_bytes().to_vec()).await,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert!(rec.chunks.lock().is_empty());
    }

    /// An edge's store as the LL-HLS routes see it: files appear when the
    /// test says, and each appearance bumps `live_changes` as the node
    /// does.
    struct Edge {
        files: Mutex<HashMap<String, (ObjectInfo, Bytes)>>,
        playlists: Mutex<Vec<String>>,
        changed: watch::Sender<u64>,
        version: std::sync::atomic::AtomicU64,
    }

    impl Edge {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                files: Mutex::new(HashMap::new()),
                playlists: Mutex::new(Vec::new()),
                changed: watch::channel(0).0,
                version: Default::default(),
            })
        }

        fn publish(&self, file: &str, body: &[u8]) {
            let name = object_name("cam", file);
            let version = self
                .version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            let info = ObjectInfo {
                name: name.clone(),
                stream: StreamId::object(&name, version),
                version,
                len: body.len() as u64,
                chunk_size: 1 << 20,
                chunk_count: 1,
                digest: *blake3::hash(body).as_bytes(),
                published_ms: 1,
                cache_control: "no-cache".into(),
            };
            if file.ends_with(".m3u8") && !self.playlists.lock().iter().any(|p| p == file) {
                self.playlists.lock().push(file.to_owned());
            }
            self.files
                .lock()
                .insert(name, (info, Bytes::copy_from_slice(body)));
            self.changed.send_modify(|n| *n += 1);
        }
    }

    impl Content for Edge {
        async fn object(&self, name: &str) -> Result<ObjectInfo, serve::ContentError> {
            self.files
                .lock()
                .get(name)
                .map(|(i, _)| i.clone())
                .ok_or_else(|| serve::ContentError::NotFound(name.to_owned()))
        }
        async fn chunk(
            &self,
            id: ChunkId,
            _: Duration,
        ) -> Result<crate::chunk::Chunk, serve::ContentError> {
            self.cached(id)
                .ok_or_else(|| serve::ContentError::NotFound(id.to_string()))
        }
        fn stream_head(&self, _: StreamId) -> Option<u64> {
            None
        }
        fn cached(&self, id: ChunkId) -> Option<crate::chunk::Chunk> {
            let files = self.files.lock();
            let (_, body) = files.values().find(|(i, _)| i.stream == id.stream)?;
            Some(crate::chunk::Chunk {
                header: crate::chunk::ChunkHeader {
                    id,
                    len: body.len() as u32,
                    digest: *blake3::hash(body).as_bytes(),
                    key_id: crate::chunk::KeyId(1),
                    timestamp_ms: 1,
                },
                signature: [0; 64],
                payload: body.clone(),
            })
        }
    }

    impl LiveContent for Edge {
        fn live_changes(&self) -> watch::Receiver<u64> {
            self.changed.subscribe()
        }
        fn held_version(&self, name: &str) -> Option<u64> {
            self.files.lock().get(name).map(|(i, _)| i.version)
        }
        fn playlists(&self, _: &str) -> Vec<String> {
            self.playlists.lock().clone()
        }
    }

    /// 1 s segments of two 0.5 s parts; `complete` segments listed, then
    /// `trailing` parts of the next and a hint for the part after.
    fn ll_playlist(complete: u64, trailing: u64) -> String {
        let mut s = String::from(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6,PART-HOLD-BACK=1.5\n\
             #EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MAP:URI=\"init.mp4\"\n",
        );
        for msn in 0..complete {
            s += &format!(
                "#EXT-X-PART:DURATION=0.5,URI=\"p{msn}.0.m4s\"\n\
                 #EXT-X-PART:DURATION=0.5,URI=\"p{msn}.1.m4s\"\n#EXTINF:1.0,\ns{msn}.m4s\n"
            );
        }
        for i in 0..trailing {
            s += &format!("#EXT-X-PART:DURATION=0.5,URI=\"p{complete}.{i}.m4s\"\n");
        }
        s + &format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p{complete}.{trailing}.m4s\"\n")
    }

    fn edge_app(edge: Arc<Edge>, max_held: usize) -> (Router, Metrics) {
        let metrics = Metrics::new("edge").unwrap();
        let router = edge_router(
            edge,
            ServeConfig::default(),
            HoldConfig {
                max_held,
                max_held_per_stream: max_held,
                max_hold: MAX_HOLD,
            },
            metrics.clone(),
        );
        (router, metrics)
    }

    async fn get(router: &Router, uri: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let resp = router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_blocking_reload_is_held_until_the_part_is_listed() {
        let edge = Edge::new();
        edge.publish("index.m3u8", ll_playlist(3, 1).as_bytes());
        let (router, metrics) = edge_app(edge.clone(), 8);
        // Listed already: at once.
        let (status, body) = get(&router, "/live/cam/index.m3u8?_HLS_msn=3&_HLS_part=0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, ll_playlist(3, 1));
        // The next part: held until a playlist lists it.
        let held = tokio::spawn({
            let router = router.clone();
            async move { get(&router, "/live/cam/index.m3u8?_HLS_msn=3&_HLS_part=1").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished(), "answered before the part was listed");
        assert_eq!(metrics.live_held.with_label_values(&["cam"]).get(), 1);
        // A new segment that does not list it yet keeps it held.
        edge.publish("p3.1.m4s", b"part");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !held.is_finished(),
            "released by a file that is not the playlist"
        );
        // A new playlist version that still does not list it: held too.
        edge.publish("index.m3u8", ll_playlist(3, 1).as_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !held.is_finished(),
            "released by a playlist without the part"
        );
        edge.publish("index.m3u8", ll_playlist(3, 2).as_bytes());
        let (status, body) = tokio::time::timeout(Duration::from_secs(2), held)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, ll_playlist(3, 2));
        assert_eq!(metrics.live_held.with_label_values(&["cam"]).get(), 0);
        assert_eq!(
            metrics
                .live_blocking
                .with_label_values(&["cam", "reload", "released"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn blocking_reloads_are_bounded_in_time_count_and_distance() {
        let edge = Edge::new();
        edge.publish("index.m3u8", ll_playlist(3, 0).as_bytes());
        let (router, metrics) = edge_app(edge.clone(), 1);
        let refused = |r| metrics.live_refused.with_label_values(&[r]).get();
        // Malformed directives and one too far ahead: 400 at once.
        for (uri, reason) in [
            ("/live/cam/index.m3u8?_HLS_part=1", "bad_directive"),
            ("/live/cam/index.m3u8?_HLS_msn=x", "bad_directive"),
            (
                "/live/cam/index.m3u8?_HLS_msn=3&_HLS_skip=NO",
                "bad_directive",
            ),
            ("/live/cam/index.m3u8?_HLS_msn=5", "too_far"),
            ("/live/cam/index.m3u8?_HLS_msn=4&_HLS_part=5", "too_far"),
        ] {
            let before = refused(reason);
            assert_eq!(get(&router, uri).await.0, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(refused(reason), before + 1, "{uri}");
        }
        // One held (max_held = 1): a second is refused, 503 and counted.
        let started = Instant::now();
        let held = tokio::spawn({
            let router = router.clone();
            async move { get(&router, "/live/cam/index.m3u8?_HLS_msn=3").await }
        });
        while metrics.live_held.with_label_values(&["cam"]).get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, _) = get(&router, "/live/cam/index.m3u8?_HLS_msn=4").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused("too_many_held"), 1);
        // Nothing new for three target durations (3 s): 503.
        let (status, body) = held.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("blocking_timeout"), "{body}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(6),
            "held {waited:?}"
        );
        assert_eq!(
            metrics
                .live_blocking
                .with_label_values(&["cam", "reload", "timed_out"])
                .get(),
            1
        );
        // The slot came back.
        assert_eq!(metrics.live_held.with_label_values(&["cam"]).get(), 0);
    }

    #[tokio::test]
    async fn a_hinted_part_is_waited_for_and_a_delta_update_skips_old_segments() {
        let edge = Edge::new();
        edge.publish("index.m3u8", ll_playlist(10, 1).as_bytes());
        let (router, metrics) = edge_app(edge.clone(), 8);
        // Not hinted: 404 at once.
        assert_eq!(
            get(&router, "/live/cam/p10.5.m4s").await.0,
            StatusCode::NOT_FOUND
        );
        let held = tokio::spawn({
            let router = router.clone();
            async move { get(&router, "/live/cam/p10.1.m4s").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !held.is_finished(),
            "a hinted part answered before it existed"
        );
        edge.publish("p10.1.m4s", b"the part's bytes");
        let (status, body) = held.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "the part's bytes")
        );
        assert_eq!(
            metrics
                .live_blocking
                .with_label_values(&["cam", "hint", "released"])
                .get(),
            1
        );
        // Delta update: 10 s listed, skip boundary 6 s: 4 segments skipped.
        let (status, body) = get(&router, "/live/cam/index.m3u8?_HLS_skip=YES").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n"), "{body}");
        assert!(
            !body.contains("\ns3.m4s\n") && body.contains("\ns4.m4s\n"),
            "{body}"
        );
        let (_, v2) = get(&router, "/live/cam/index.m3u8?_HLS_msn=9&_HLS_skip=v2").await;
        assert_eq!(v2, body);
    }
}
