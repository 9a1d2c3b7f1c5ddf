//! A small HTTP/1.1 client for the command line: publishing to an origin,
//! fetching from an edge, calling a node's admin API.
//!
//! Plain HTTP only: a node's client and admin listeners are meant to sit
//! behind the platform's ingress or service mesh for TLS. Every call has a
//! deadline; bodies are streamed both ways so large objects never sit whole in
//! memory.

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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
    inner: HyperClient<HttpConnector, Body>,
    timeout: Duration,
}

impl Client {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
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
