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

use crate::chunk::StreamId;
use crate::metrics::Metrics;
use crate::roles::ingest::{IngestConfig, Publish, Published, check_token};
use crate::roles::live::{LiveFile, PathError};
use crate::roles::serve::{self, Content, HttpError, ServeConfig};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use bytes::BytesMut;
use futures_util::StreamExt;
use std::sync::Arc;

/// The route both sides answer.
pub const ROUTE: &str = "/live/{stream}/{*file}";

struct IngestState<P> {
    publisher: Arc<P>,
    config: IngestConfig,
    metrics: Metrics,
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
    let version = state.publisher.next_version();
    let id = StreamId::object(&name, version);
    let chunk_size = state.config.chunk_size;
    let mut hasher = blake3::Hasher::new();
    let mut pending = BytesMut::with_capacity(chunk_size);
    let mut seq = 0u64;
    let mut len = 0u64;
    let mut body = body.into_data_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| {
            refused(
                metrics,
                "body",
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "body",
                    format!("reading the body: {e}"),
                ),
            )
        })?;
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

struct EdgeState<C> {
    content: Arc<C>,
    config: ServeConfig,
    metrics: Metrics,
}

/// The edge's live routes: `GET|HEAD /live/{stream}/{file}`.
pub fn edge_router<C: Content>(content: Arc<C>, config: ServeConfig, metrics: Metrics) -> Router {
    let state = Arc::new(EdgeState {
        content,
        config,
        metrics,
    });
    Router::new()
        .route(ROUTE, axum::routing::get(get_file::<C>).head(get_file::<C>))
        .with_state(state)
}

async fn get_file<C: Content>(
    State(state): State<Arc<EdgeState<C>>>,
    Path((stream, file)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let f = LiveFile::parse(&stream, &file).map_err(|e| path_error(&state.metrics, e))?;
    let mut resp = serve::object_response(
        state.content.clone(),
        state.config,
        f.object_name(),
        method,
        headers,
    )
    .await?;
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
    }
}
