//! The node's HTTP listeners (client, ingest, admin): accept, refuse a
//! client IP past its connection limit, and serve each connection with
//! HTTP/1.1 under a header-read timeout and an idle timeout, so a slow or
//! stalled client (slowloris, a stalled body or upload, a reader that stops
//! reading) holds a connection for a bounded time. Every refusal is
//! counted in `dcdn_http_refused_total{listener,reason}`. Routing and
//! handlers stay in `admin`, `ingest` and `serve`.

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
struct PerIp {
    held: Mutex<HashMap<IpAddr, usize>>,
}

struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
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

/// Serves `router` on `listener` until `shutdown` turns true, then lets the
/// connections finish the requests they are in (graceful shutdown).
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    metrics: Metrics,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
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
        let mut shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let idle_fired = Arc::new(AtomicBool::new(false));
            let io = IdleTimeout::new(stream, limits.idle_timeout, idle_fired.clone());
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let router = router.clone();
                    async move {
                        use tower::ServiceExt;
                        router.oneshot(req.map(axum::body::Body::new)).await
                    }
                });
            // ffmpeg's muxers PUT each segment and playlist without waiting
            // for the answer and, at the end of a stream, shut their side of
            // the connection with the last requests still queued: a
            // half-closed connection is served to the end (the idle timeout
            // still bounds it), or the playlist that ends the stream is lost.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            {
                // A stalled body surfaces in the handler, which may still
                // answer: the flag, not the connection's result, says the
                // idle deadline cut it.
                let reason = if idle_fired.load(Ordering::Relaxed) {
                    Some("idle_timeout")
                } else if result.as_ref().is_err_and(hyper::Error::is_timeout) {
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
            }
        });
    }
    // Stop accepting, then let every open connection finish its request.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A stream that fails with `TimedOut` once no byte has moved in either
/// direction for `idle`: a stalled request body or upload, a client that
/// stops reading a response, or an idle keep-alive connection. A response
/// that keeps flowing, however long, never trips it.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    fired: Arc<AtomicBool>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration, fired: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            fired,
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
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
        if self.deadline.as_mut().poll(cx).is_ready() {
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
