//! HTTP/3 for clients (`[http_tls] http3 = true`): QUIC on UDP at the port
//! number of the TCP listener, served by the `h3` crate over the same quinn
//! the mesh uses, with the same certificates (`certs::Resolver`) and the same
//! axum router as HTTP/1.1 and HTTP/2, so routes, Range, ETag/304 and
//! errors cannot differ between the three.
//!
//! The TCP listener's protections hold here too: connections per client IP
//! (after a QUIC Retry has proven the address, so a spoofed source cannot
//! use up another IP's slots), a handshake and request-header deadline, an
//! idle deadline (no request on a connection, or no byte moving on a
//! request or response), bounded streams per connection and header size;
//! each refusal is counted in `dcdn_http_refused_total{listener="http3"}`.
//! Bodies stream both ways, piece by piece, under QUIC flow control. A
//! response body that fails midway resets the stream, so a client never
//! takes a cut-short body for a whole one.

use super::certs::{H3_ALPN, Resolver};
use super::listener::{H2_MAX_HEADER_BYTES, H2_MAX_STREAMS, Limits, PerIp};
use crate::metrics::Metrics;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `listener` label of HTTP/3's refusals.
const WHAT: &str = "http3";
/// Unidirectional streams a client may open: HTTP/3's control stream and
/// QPACK's two, with room for grease.
const MAX_UNI_STREAMS: u32 = 8;
/// UDP socket buffers, as for the mesh: small ones drop bursts.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

type Resolved = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// Why the HTTP/3 endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    #[error("HTTP/3 TLS configuration: {0}")]
    Tls(String),
    #[error("binding UDP {addr} for HTTP/3")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The `Alt-Svc` value that tells TCP clients HTTP/3 is at `port`.
pub fn alt_svc(port: u16) -> String {
    format!("h3=\":{port}\"; ma=86400")
}

/// Binds the HTTP/3 endpoint on UDP `addr`.
pub fn bind(
    addr: SocketAddr,
    resolver: Arc<Resolver>,
    limits: &Limits,
) -> Result<quinn::Endpoint, H3Error> {
    let tls = super::certs::server_config(resolver, &[H3_ALPN], true)
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut tc = quinn::TransportConfig::default();
    tc.max_concurrent_bidi_streams(quinn::VarInt::from_u32(H2_MAX_STREAMS));
    tc.max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_UNI_STREAMS));
    // QUIC's idle timeout is the negotiated minimum of both sides'; past
    // what QUIC can express, the listener's own idle check still applies.
    tc.max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok());
    tc.datagram_receive_buffer_size(None);
    server.transport_config(Arc::new(tc));
    let socket = crate::transport::bind_socket(addr, SOCKET_BUFFER_BYTES)
        .map_err(|source| H3Error::Bind { addr, source })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| H3Error::Bind { addr, source })
}

fn refused(metrics: &Metrics, reason: &str) {
    metrics
        .http_refused
        .with_label_values(&[WHAT, reason])
        .inc();
}

/// Serves `router` over HTTP/3 on `endpoint` until `shutdown`, then lets
/// open requests finish.
pub async fn serve(
    endpoint: quinn::Endpoint,
    router: axum::Router,
    limits: Limits,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let table = Arc::new(PerIp::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        while connections.try_join_next().is_some() {}
        if !incoming.remote_address_validated() && incoming.may_retry() {
            // The address must be proven before it takes a per-IP slot.
            let _ = incoming.retry();
            continue;
        }
        let peer = incoming.remote_address();
        let Some(slot) = table.acquire(peer.ip(), limits.max_connections_per_ip) else {
            refused(&metrics, "per_ip_limit");
            incoming.refuse();
            continue;
        };
        let router = router.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            connection(incoming, router, limits, metrics, shutdown, peer).await;
        });
    }
    endpoint.set_server_config(None);
    while connections.join_next().await.is_some() {}
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
}

async fn connection(
    incoming: quinn::Incoming,
    router: axum::Router,
    limits: Limits,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            refused(&metrics, "tls_handshake");
            tracing::debug!(%peer, error = %e, "HTTP/3 connection refused");
            return;
        }
    };
    let conn = match tokio::time::timeout(limits.header_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            refused(&metrics, "tls_handshake");
            tracing::debug!(%peer, error = %e, "HTTP/3 handshake failed");
            return;
        }
        Err(_) => {
            refused(&metrics, "tls_handshake_timeout");
            return;
        }
    };
    let built = h3::server::builder()
        .max_field_section_size(u64::from(H2_MAX_HEADER_BYTES))
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let router = router.clone();
                    let metrics = metrics.clone();
                    requests.spawn(request(resolver, router, limits, metrics));
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
            }
            // Keep-alive pings would hold an unused connection forever.
            () = &mut idle, if requests.is_empty() => {
                refused(&metrics, "idle_timeout");
                // H3_NO_ERROR
                conn.close(quinn::VarInt::from_u32(0x100), b"idle");
                break;
            }
            _ = shutdown.changed() => {
                // GOAWAY: no new requests; those under way finish below.
                let _ = h3.shutdown(0).await;
                break;
            }
        }
    }
    // `h3` closes the connection when dropped: keep it until every request
    // it carries is done.
    while requests.join_next().await.is_some() {}
    drop(h3);
}

/// One request: headers within the header timeout, the router's answer
/// streamed back, every piece of either body within the idle timeout.
async fn request(resolver: Resolved, router: axum::Router, limits: Limits, metrics: Metrics) {
    let (req, stream) =
        match tokio::time::timeout(limits.header_timeout, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/3 request refused");
                return;
            }
            Err(_) => {
                refused(&metrics, "header_timeout");
                return;
            }
        };
    let idle = limits.idle_timeout;
    let (mut send, recv) = stream.split();
    let no_body = req.method() == hyper::Method::HEAD;
    let recv = Unread(recv, false);
    let body = futures_util::stream::unfold(Some(recv), move |recv| async move {
        let mut recv = recv?;
        match tokio::time::timeout(idle, recv.0.recv_data()).await {
            Ok(Ok(Some(mut piece))) => {
                let bytes = piece.copy_to_bytes(piece.remaining());
                Some((Ok(bytes), Some(recv)))
            }
            Ok(Ok(None)) => {
                recv.1 = true;
                None
            }
            Ok(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), None)),
            Err(_) => Some((Err(stalled(idle)), None)),
        }
    });
    let req = req.map(|()| axum::body::Body::from_stream(body));
    let resp = {
        use tower::ServiceExt;
        match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    };
    let (parts, mut body) = resp.into_parts();
    let no_body = no_body
        || parts.status == hyper::StatusCode::NOT_MODIFIED
        || parts.status == hyper::StatusCode::NO_CONTENT;
    let mut head = hyper::Response::from_parts(parts, ());
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114 4.2).
    for h in [
        hyper::header::CONNECTION,
        hyper::header::TRANSFER_ENCODING,
        hyper::header::UPGRADE,
    ] {
        head.headers_mut().remove(h);
    }
    let sent = async {
        send.send_response(head).await.map_err(|e| e.to_string())?;
        if !no_body {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    match tokio::time::timeout(idle, send.send_data(data)).await {
                        Ok(r) => r.map_err(|e| e.to_string())?,
                        Err(_) => {
                            refused(&metrics, "idle_timeout");
                            return Err(stalled(idle).to_string());
                        }
                    }
                }
            }
        }
        match tokio::time::timeout(idle, send.finish()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(stalled(idle).to_string()),
        }
    };
    if let Err(e) = sent.await {
        // Reset, so the client sees an error rather than a short body.
        send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
        tracing::debug!(error = %e, "HTTP/3 response cut off");
    }
}

/// A request's receive side, and whether it was read to its end. Dropped
/// before then (the router answered without reading the body, as for every
/// GET), it asks the client to stop sending with H3_NO_ERROR, as RFC 9114
/// 4.1 says, instead of quinn's implicit code 0 on drop: a client still
/// finishing its request took that for a failed request.
struct Unread(h3::server::RequestStream<h3_quinn::RecvStream, Bytes>, bool);

impl Drop for Unread {
    fn drop(&mut self) {
        if !self.1 {
            self.0.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

fn stalled(idle: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no byte moved for {idle:?}"),
    )
}
