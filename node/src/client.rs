//! A small HTTP client for the command line: publishing to an origin,
//! fetching from an edge, calling a node's admin API.
//!
//! `http://` and `https://` URLs; HTTPS with rustls (no OpenSSL), trusting
//! the system's roots plus, with `--cacert`, a CA file of the user's (what
//! `dcdn up --tls` prints), speaking HTTP/2 or HTTP/1.1 as ALPN agrees. Every
//! call has a deadline; bodies are streamed both ways so large objects never
//! sit whole in memory.

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid url {0:?}")]
    Url(String),
    #[error("{method} {url}: {message}")]
    Transport {
        method: Method,
        url: String,
        message: String,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{method} {url} timed out after {after:?}")]
    Timeout {
        method: Method,
        url: String,
        after: Duration,
    },
    #[error("GET {url}: no byte arrived for {after:?}")]
    Stalled { url: String, after: Duration },
    #[error("CA file {path}: {message}")]
    CaFile { path: String, message: String },
}

/// How long a download may wait.
#[derive(Debug, Clone, Copy)]
pub struct FetchTimeouts {
    /// For the response's status and headers.
    pub response: Duration,
    /// Between two pieces of the body: a stalled server fails the fetch,
    /// a slow but moving one does not.
    pub idle: Duration,
}

/// A response whose status was a success.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// A reusable client with connection pooling.
#[derive(Debug, Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

/// The system's trusted roots, read once per process (a few hundred
/// certificates; `Client::new` is called per command and per test). A system
/// without a store trusts nothing by default, which `--cacert` remedies.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        })
        .clone()
}

/// The certificates of a PEM CA file, for `--cacert`.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let err = |message: String| ClientError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    Ok(certs)
}

/// The system's roots, plus the CA certificates of `ca_file` when given.
pub fn roots(ca_file: Option<&Path>) -> Result<Arc<rustls::RootCertStore>, ClientError> {
    let Some(path) = ca_file else {
        return Ok(system_roots());
    };
    let mut roots = (*system_roots()).clone();
    for cert in read_ca_file(path)? {
        roots.add(cert).map_err(|e| ClientError::CaFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

impl Client {
    /// A client trusting the system's roots.
    pub fn new(timeout: Duration) -> Self {
        Self::with_roots(timeout, system_roots())
    }

    /// A client that also trusts the CA certificates in `ca_file` (PEM).
    pub fn with_ca(timeout: Duration, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        Ok(Self::with_roots(timeout, roots(ca_file)?))
    }

    fn with_roots(timeout: Duration, roots: Arc<rustls::RootCertStore>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Only fails for a provider without suites for TLS 1.2 and 1.3;
        // ring's has both, so this is a build mistake, not a runtime one.
        #[allow(clippy::expect_used)]
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// Sends a request and reads the whole response; non-2xx is an error
    /// carrying the body (DCDN errors are short JSON).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        headers: &[(header::HeaderName, String)],
        body: Body,
    ) -> Result<Response, ClientError> {
        let resp = self
            .start(method.clone(), url, token, headers, body)
            .await?;
        let status = resp.status();
        let resp_headers = resp.headers().clone();
        let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| ClientError::Timeout {
                method: method.clone(),
                url: url.to_owned(),
                after: self.timeout,
            })?
            .map_err(|e| ClientError::Transport {
                method: method.clone(),
                url: url.to_owned(),
                message: error_chain(&e),
            })?
            .to_bytes();
        if !status.is_success() && status != StatusCode::NOT_MODIFIED {
            return Err(ClientError::Status {
                method,
                url: url.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(Response {
            status,
            headers: resp_headers,
            body,
        })
    }

    /// Sends a request and returns the response with its body unread, for
    /// streaming downloads. Non-2xx is an error.
    pub async fn start(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        headers: &[(header::HeaderName, String)],
        body: Body,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut req = Request::builder().method(method.clone()).uri(url);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(body)
            .map_err(|_| ClientError::Url(url.to_owned()))?;
        let resp = tokio::time::timeout(self.timeout, self.inner.request(req))
            .await
            .map_err(|_| ClientError::Timeout {
                method: method.clone(),
                url: url.to_owned(),
                after: self.timeout,
            })?
            .map_err(|e| ClientError::Transport {
                method: method.clone(),
                url: url.to_owned(),
                message: error_chain(&e),
            })?;
        error_status(method, url, resp).await
    }

    pub async fn get(&self, url: &str, token: Option<&str>) -> Result<Response, ClientError> {
        self.send(Method::GET, url, token, &[], Body::empty()).await
    }

    /// GET and parse the body as JSON.
    pub async fn get_json(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let resp = self.get(url, token).await?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Transport {
            method: Method::GET,
            url: url.to_owned(),
            message: format!("response is not JSON: {e}"),
        })
    }

    /// PUTs a streamed body, e.g. a file being read.
    pub async fn put_stream<S>(
        &self,
        url: &str,
        token: Option<&str>,
        body: S,
    ) -> Result<Response, ClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.send(
            Method::PUT,
            url,
            token,
            &[],
            Body::from_stream(body.boxed()),
        )
        .await
    }
}

/// An error and its sources, so "client error (Connect)" says why: hyper's
/// own message hides the DNS or socket error underneath.
/// An error and its causes on one line, for places that keep a `String`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A response that is neither 2xx nor 304 as `ClientError::Status`, with
/// the body the server explained itself in; any other response as it is.
/// Shared by the HTTP/1.1-2 client and the HTTP/3 one, so both report
/// refusals alike.
pub(crate) async fn error_status<B>(
    method: Method,
    url: &str,
    resp: hyper::Response<B>,
) -> Result<hyper::Response<B>, ClientError>
where
    B: hyper::body::Body,
{
    let status = resp.status();
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(ClientError::Status {
            method,
            url: url.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::{get, put};

    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn round_trips_a_streamed_put_and_reports_error_bodies() {
        let base = serve(
            Router::new()
                .route("/echo", put(|body: Bytes| async move { body }))
                .route(
                    "/fail",
                    get(|| async { (StatusCode::CONFLICT, "{\"code\":\"nope\"}") }),
                ),
        )
        .await;
        let client = Client::new(Duration::from_secs(5));
        let pieces = futures_util::stream::iter(
            [b"ab".to_vec(), b"cd".to_vec()].map(|p| Ok(Bytes::from(p))),
        );
        let resp = client
            .put_stream(&format!("{base}/echo"), Some("t"), pieces)
            .await
            .unwrap();
        assert_eq!(&resp.body[..], b"abcd");
        let err = client.get(&format!("{base}/fail"), None).await.unwrap_err();
        assert!(err.to_string().contains("409"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn connection_refused_is_a_transport_error_naming_the_url() {
        let client = Client::new(Duration::from_secs(5));
        let err = client.get("http://127.0.0.1:1/x", None).await.unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:1"));
    }
}
