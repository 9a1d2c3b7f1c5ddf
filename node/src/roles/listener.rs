//! The node's HTTP listeners (client, ingest, admin): accept, refuse a
//! client IP past its connection limit, and serve each connection with
//! HTTP/1.1 under a header-read timeout and an idle timeout, so a slow or
//! stalled client (slowloris, a stalled body or upload, a reader that stops
//! reading) holds a connection for a bounded time. Every refusal is
//! counted in `dcdn_http_refused_total{listener,reason}`. With `[http_tls]`
//! the client and ingest listeners speak TLS only (HTTP/2 and HTTP/1.1,
//! under the same limits plus a handshake deadline); certificates are
//! `certs`' business, HTTP/3 `http3`'s. Routing and handlers stay in `admin`,
//! `ingest` and `serve`.

use crate::metrics::Metrics;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Slow-client limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's header must arrive whole within this.
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way this long is closed.
    pub idle_timeout: Duration,
    /// Simultaneous connections one client IP may hold.
    pub max_connections_per_ip: usize,
}

/// Connections held per client IP; a slot is given back when its guard drops.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    held: Mutex<HashMap<IpAddr, usize>>,
}

pub(crate) struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut held = self.held.lock();
        let n = held.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// TLS on a listener (`[http_tls]`): the client or ingest listener then
/// speaks HTTPS only, HTTP/2 or HTTP/1.1 as ALPN (or the client's preface)
/// says.
#[derive(Clone)]
pub(crate) struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// `Alt-Svc` to add to every response when HTTP/3 is served too.
    pub alt_svc: Option<hyper::header::HeaderValue>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("alt_svc", &self.alt_svc)
            .finish_non_exhaustive()
    }
}

/// Serves `router` on `listener` until `shutdown` turns true, then lets the
/// connections finish the requests they are in (graceful shutdown). With
/// `tls`, each connection must finish its handshake within the header
/// timeout (a stalled handshake is a slowloris too).
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    metrics: Metrics,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Tls>,
) {
    let table = Arc::new(PerIp::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        // Reap finished connection tasks so the set stays as large as the
        // connections that are open.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(error = %e, what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = table.acquire(peer.ip(), limits.max_connections_per_ip) else {
            metrics
                .http_refused
                .with_label_values(&[what, "per_ip_limit"])
                .inc();
            tracing::debug!(%peer, what, "connection refused: per-IP limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            let idle_fired = Arc::new(AtomicBool::new(false));
            let io = IdleTimeout::new(stream, limits.idle_timeout, idle_fired.clone());
            let result = match tls {
                None => serve_http1(io, router, limits, shutdown).await,
                Some(tls) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, tls.acceptor.accept(io)).await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            // Refusing a client's handshake (no shared
                            // version, an unknown CA on its side, garbage)
                            // is the listener's business only; count it.
                            let reason = if idle_fired.load(Ordering::Relaxed) {
                                "idle_timeout"
                            } else {
                                "tls_handshake"
                            };
                            metrics
                                .http_refused
                                .with_label_values(&[what, reason])
                                .inc();
                            tracing::debug!(%peer, what, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics
                                .http_refused
                                .with_label_values(&[what, "tls_handshake_timeout"])
                                .inc();
                            tracing::debug!(%peer, what, "TLS handshake timed out");
                            return;
                        }
                    };
                    serve_tls(stream, router, limits, tls.alt_svc, shutdown).await
                }
            };
            // A stalled body surfaces in the handler, which may still
            // answer: the flag, not the connection's result, says the idle
            // deadline cut it.
            let reason = if idle_fired.load(Ordering::Relaxed) {
                Some("idle_timeout")
            } else if result.is_err_and(|timeout| timeout) {
                Some("header_timeout")
            } else {
                None
            };
            if let Some(reason) = reason {
                metrics
                    .http_refused
                    .with_label_values(&[what, reason])
                    .inc();
                tracing::debug!(%peer, what, reason, "slow client cut off");
            }
        });
    }
    // Stop accepting, then let every open connection finish its request.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The router as a hyper service, adding `alt_svc` to every response.
fn service(
    router: axum::Router,
    alt_svc: Option<hyper::header::HeaderValue>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        let alt_svc = alt_svc.clone();
        async move {
            use tower::ServiceExt;
            let mut resp = router.oneshot(req.map(axum::body::Body::new)).await?;
            if let Some(v) = alt_svc {
                resp.headers_mut().insert(hyper::header::ALT_SVC, v);
            }
            Ok(resp)
        }
    })
}

/// Plain HTTP/1.1 on one connection. `Err(true)`: the header timeout cut it.
async fn serve_http1<S>(
    io: S,
    router: axum::Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // ffmpeg's muxers PUT each segment and playlist without waiting for the
    // answer and, at the end of a stream, shut their side of the connection
    // with the last requests still queued: a half-closed connection is
    // served to the end (the idle timeout still bounds it), or the playlist
    // that ends the stream is lost.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service(router, None))
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(|e| e.is_timeout())
}

/// HTTPS on one connection: HTTP/2 or HTTP/1.1, whichever the client
/// speaks. `Err(true)`: the HTTP/1.1 header timeout cut it.
async fn serve_tls<S>(
    io: S,
    router: axum::Router,
    limits: Limits,
    alt_svc: Option<hyper::header::HeaderValue>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        // Bounded like the per-IP connection count: one connection cannot
        // hold more requests than this at once.
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_BYTES)
        // A client that stops answering pings is gone; its streams go too.
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service(router, alt_svc));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
    })
}

/// Concurrent requests on one HTTP/2 connection.
pub(crate) const H2_MAX_STREAMS: u32 = 128;
/// Largest header block an HTTP/2 or HTTP/3 request may send.
pub(crate) const H2_MAX_HEADER_BYTES: u32 = 64 << 10;

/// A stream that fails with `TimedOut` once no byte has moved in either
/// direction for `idle`: a stalled request body or upload, a client that
/// stops reading a response, or an idle keep-alive connection. A response
/// that keeps flowing, however long, never trips it.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    /// Due no later than `last_moved + idle`; moved up to that only when it
    /// fires. Resetting a timer takes the timer wheel's lock, and doing so
    /// on every read and write was a per-request cost of small answers.
    deadline: Pin<Box<tokio::time::Sleep>>,
    last_moved: tokio::time::Instant,
    fired: Arc<AtomicBool>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration, fired: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            last_moved: tokio::time::Instant::now(),
            fired,
        }
    }

    fn progressed(&mut self) {
        self.last_moved = tokio::time::Instant::now();
    }

    /// What a write returns once its progress counted against the deadline.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    /// On `Pending`: the error to return if the idle deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_moved + self.idle;
            if due > tokio::time::Instant::now() {
                // Bytes moved since the timer was set: wait for the rest
                // (polled again by the loop, so the waker is registered).
                self.deadline.as_mut().reset(due);
                continue;
            }
            self.fired.store(true, Ordering::Relaxed);
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no byte moved for {:?}", self.idle),
            ));
        }
        None
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, polled)
    }

    // Without these two, hyper sees a stream that cannot write vectored and
    // falls back to copying every body frame into its own write buffer
    // ("flatten"): a memcpy of each object served. Forwarded, it queues the
    // stored chunk payloads and hands them to one `writev`.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// hyper picks its HTTP/1 write strategy from `is_write_vectored`: a
    /// wrapper that hides the socket's makes it copy every body it sends.
    #[tokio::test]
    async fn the_idle_wrapper_writes_vectored_like_its_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(server.is_write_vectored());
        let mut io = IdleTimeout::new(
            server,
            Duration::from_secs(30),
            Arc::new(AtomicBool::new(false)),
        );
        assert!(io.is_write_vectored());
        let bufs = [io::IoSlice::new(b"stored "), io::IoSlice::new(b"chunks")];
        let mut sent = io.write_vectored(&bufs).await.unwrap();
        if sent < 13 {
            io.write_all(&b"stored chunks"[sent..]).await.unwrap();
            sent = 13;
        }
        let mut got = vec![0u8; sent];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"stored chunks");
    }
}
