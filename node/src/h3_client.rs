//! A small HTTP/3 client: one QUIC connection (quinn, rustls with the roots
//! `client` trusts), one GET, its body streamed. `dcdn fetch --http3` runs
//! on it, so an HTTP/3 download is verified like any other, and the HTTP/3
//! figure compares two Rust clients rather than Rust with Python.

use crate::client::ClientError;
use bytes::{Buf, Bytes};
use hyper::{Method, header};
use std::sync::Arc;
use std::time::Duration;

/// Flow-control windows: a window smaller than the bandwidth-delay product
/// would set the pace of a large download, not the server or the network.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

fn transport(method: &Method, url: &str, message: impl std::fmt::Display) -> ClientError {
    ClientError::Transport {
        method: method.clone(),
        url: url.to_owned(),
        message: message.to_string(),
    }
}

/// Sends GET `url` over HTTP/3 and returns the response with its body still
/// streaming; non-2xx (but 304) is an error carrying the body.
pub async fn get(
    url: &str,
    roots: Arc<rustls::RootCertStore>,
    headers: &[(header::HeaderName, String)],
    timeout: Duration,
) -> Result<hyper::Response<axum::body::Body>, ClientError> {
    let method = Method::GET;
    let uri: hyper::Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::Url(format!("{url} (HTTP/3 needs https://)")));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::Url(url.to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let connect = async {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| transport(&method, url, format!("resolving {host}: {e}")))?
            .next()
            .ok_or_else(|| transport(&method, url, format!("{host} has no address")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| transport(&method, url, e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| transport(&method, url, e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut tc = quinn::TransportConfig::default();
        tc.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
        tc.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
        config.transport_config(Arc::new(tc));
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let mut endpoint =
            quinn::Endpoint::client(local).map_err(|e| transport(&method, url, e))?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, &host)
            .map_err(|e| transport(&method, url, e))?
            .await
            .map_err(|e| transport(&method, url, e))?;
        let (mut driver, mut send_request) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| transport(&method, url, e))?;
        // The connection's control streams need polling while requests run.
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let mut req = hyper::Request::get(uri.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(()).map_err(|_| ClientError::Url(url.to_owned()))?;
        let mut stream = send_request
            .send_request(req)
            .await
            .map_err(|e| transport(&method, url, e))?;
        // A server may answer without waiting for the end of the request
        // and stop the request stream (RFC 9114 4.1): finishing it then
        // fails, and the response must still be read. A connection that
        // really broke fails the read below.
        if let Err(e) = stream.finish().await {
            tracing::debug!(url, error = %e, "HTTP/3: the server stopped the request stream early");
        }
        let resp = stream
            .recv_response()
            .await
            .map_err(|e| transport(&method, url, e))?;
        Ok::<_, ClientError>((resp, stream, send_request, endpoint, driver))
    };
    let (resp, stream, send_request, endpoint, driver) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ClientError::Timeout {
            method: method.clone(),
            url: url.to_owned(),
            after: timeout,
        })??;
    // Everything the connection needs lives as long as the body.
    let state = (stream, send_request, endpoint, DriverGuard(driver));
    let body = futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.0.recv_data().await {
            Ok(Some(mut piece)) => {
                let bytes: Bytes = piece.copy_to_bytes(piece.remaining());
                Some((Ok(bytes), Some(state)))
            }
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    let resp = resp.map(|()| axum::body::Body::from_stream(body));
    crate::client::error_status(method, url, resp).await
}

/// Stops the connection driver when the body is dropped.
struct DriverGuard(tokio::task::JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
