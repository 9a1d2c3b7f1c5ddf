//! Pull-through: an origin fronting the storage users already have, an
//! HTTP origin or an S3-compatible bucket.
//!
//! A name the origin does not hold is fetched from the upstream once
//! (single flight per name, a bounded number of fetches at a time) and
//! ingested exactly like a publish: cut into chunks, signed, kept in the
//! origin of record, and announced with a signed manifest only after the
//! whole body arrived and was synced — so a broken or truncated upstream
//! response never becomes a version. The upstream's `ETag` and
//! `Last-Modified` are kept with the version; once its freshness
//! (`s-maxage`/`max-age`, else `default_ttl_secs`) runs out, the next
//! request revalidates with `If-None-Match` (or `If-Modified-Since` without an ETag): a 304
//! keeps the version, a 200 becomes a new version (a new ETag at the
//! edges; the old one is never served under the new name and version), a
//! 404 purges the name everywhere. When the upstream cannot be reached
//! the request fails with 502 (`upstream_failed`) and
//! `dcdn_upstream_fetches_total{result="error"}` counts it, unless
//! `serve_stale_if_error` says to serve the version held. A 404 is
//! remembered for `not_found_ttl_secs` in a bounded map ([`NotFound`]), so
//! a flood of requests for a missing name reaches the upstream once per
//! period; a publish or purge of the name forgets it.
//!
//! This module owns the upstream client (HTTP, or S3 with SigV4 signing)
//! and the pull; chunking, signing and storage are the ingest path's.

use crate::chunk::StreamId;
use crate::chunk::wire::ManifestFrame;
use crate::config::UpstreamSection;
use crate::roles::ingest::{self, Publish};
use crate::roles::node::Shared;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Names whose upstream validators an origin remembers.
const MAX_PULLED: usize = 4096;
/// The marker an error carries from the origin to the edge when the
/// upstream failed: the edge then answers 502 rather than a version held.
pub const UPSTREAM_FAILED: &str = "upstream_failed";
/// The mesh error code an origin answers a manifest request with when its
/// upstream failed.
pub const CODE_UPSTREAM_FAILED: u16 = 502;

/// Why the upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{max} upstream fetches already in flight; waited {waited:?}")]
    Busy { max: usize, waited: Duration },
    #[error("GET {url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("GET {url}: {message}")]
    Transport { url: String, message: String },
    #[error("GET {url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: {len} bytes is over the {limit}-byte object limit")]
    TooLarge { url: String, len: u64, limit: u64 },
    #[error("ingesting {url}: {message}")]
    Ingest { url: String, message: String },
    #[error("upstream credentials: {0}")]
    Credentials(String),
}

impl UpstreamError {
    /// The `result` label this failure is counted under.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Busy { .. } => "busy",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } | Self::Credentials(_) => "error",
            Self::Status { .. } => "status",
            Self::TooLarge { .. } => "too_large",
            Self::Ingest { .. } => "ingest",
        }
    }
}

// One per origin: the size of the S3 variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Source {
    Http {
        /// Without a trailing slash.
        base: String,
    },
    S3 {
        /// `scheme://host[:port]`, without a trailing slash.
        endpoint: String,
        /// The `Host` header value the signature covers.
        host: String,
        bucket: String,
        region: String,
        /// The access key: the last one read that was whole.
        key: Mutex<S3Key>,
        /// Where it is read from before each request, when configured as
        /// files: a rotated Secret (kubelet swaps the mounted files
        /// atomically) reaches a running origin.
        key_files: Option<(PathBuf, PathBuf)>,
        /// The session token's file, read with the key (temporary
        /// credentials rotate as one).
        token_file: Option<PathBuf>,
    },
}

#[derive(Clone, PartialEq, Eq)]
struct S3Key {
    id: String,
    secret: String,
    /// `x-amz-security-token`, for temporary credentials.
    token: Option<String>,
}

impl S3Key {
    fn read(files: &(PathBuf, PathBuf), token_file: Option<&Path>) -> Result<Self, UpstreamError> {
        let key = Self {
            id: read_secret(Some(&files.0), "AWS_ACCESS_KEY_ID")?,
            secret: read_secret(Some(&files.1), "AWS_SECRET_ACCESS_KEY")?,
            token: session_token(token_file)?,
        };
        if key.token.as_deref() == Some("") {
            return Err(UpstreamError::Credentials(format!(
                "{} is empty",
                token_file.map_or_else(String::new, |p| p.display().to_string())
            )));
        }
        if key.id.is_empty() || key.secret.is_empty() {
            return Err(UpstreamError::Credentials(format!(
                "{} or {} is empty",
                files.0.display(),
                files.1.display()
            )));
        }
        Ok(key)
    }
}

/// What a pulled version was fetched as: the conditional request's inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What the origin remembers of a name it pulled.
#[derive(Debug, Clone)]
pub(crate) struct PullState {
    pub version: u64,
    pub validators: Validators,
    pub fresh_until: Instant,
}

/// An upstream's answer.
#[derive(Debug)]
pub enum Fetched {
    NotModified {
        fresh_for: Duration,
    },
    NotFound,
    Body {
        validators: Validators,
        fresh_for: Duration,
        /// The upstream's `Cache-Control`, when it is one a manifest can carry.
        cache_control: Option<String>,
        len: Option<u64>,
        body: hyper::body::Incoming,
    },
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The configured upstream of an origin.
pub struct Upstream {
    source: Source,
    client: HyperClient<Https, Empty<Bytes>>,
    permits: Semaphore,
    max_concurrent: usize,
    timeout: Duration,
    default_ttl: Duration,
    pub serve_stale_if_error: bool,
    not_found_ttl: Duration,
    not_found_max: usize,
    /// Names the upstream answered 404 for, answered 404 here until then.
    not_found: Mutex<NotFound>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::Http { base } => format!("http {base}"),
            Source::S3 {
                endpoint, bucket, ..
            } => format!("s3 {endpoint}/{bucket}"),
        };
        f.debug_struct("Upstream")
            .field("source", &kind)
            .finish_non_exhaustive()
    }
}

/// The session token: from its file when configured, else
/// `AWS_SESSION_TOKEN` if set, else none.
fn session_token(file: Option<&Path>) -> Result<Option<String>, UpstreamError> {
    match file {
        Some(_) => read_secret(file, "AWS_SESSION_TOKEN").map(Some),
        None => Ok(std::env::var("AWS_SESSION_TOKEN").ok()),
    }
}

fn read_secret(file: Option<&Path>, env: &str) -> Result<String, UpstreamError> {
    match file {
        Some(p) => std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| UpstreamError::Credentials(format!("{}: {e}", p.display()))),
        None => std::env::var(env).map_err(|_| {
            UpstreamError::Credentials(format!("no {env} and no file configured for it"))
        }),
    }
}

impl Upstream {
    /// Builds the client for `config`: credentials are read now, so a
    /// missing one stops the origin at start rather than at the first miss.
    pub fn new(config: &UpstreamSection) -> Result<Self, UpstreamError> {
        let source = match (&config.url, &config.s3) {
            (Some(url), _) => Source::Http {
                base: url.trim_end_matches('/').to_owned(),
            },
            (None, Some(s3)) => {
                let endpoint = s3.endpoint.trim_end_matches('/').to_owned();
                let host = endpoint
                    .split_once("://")
                    .map_or(endpoint.as_str(), |(_, h)| h)
                    .to_owned();
                let key_files = s3
                    .access_key_id_file
                    .clone()
                    .zip(s3.secret_access_key_file.clone());
                let token_file = s3.session_token_file.clone();
                let key = match &key_files {
                    Some(files) => S3Key::read(files, token_file.as_deref())?,
                    None => S3Key {
                        id: read_secret(s3.access_key_id_file.as_deref(), "AWS_ACCESS_KEY_ID")?,
                        secret: read_secret(
                            s3.secret_access_key_file.as_deref(),
                            "AWS_SECRET_ACCESS_KEY",
                        )?,
                        token: session_token(token_file.as_deref())?,
                    },
                };
                Source::S3 {
                    endpoint,
                    host,
                    bucket: s3.bucket.clone(),
                    region: s3.region.clone(),
                    key: Mutex::new(key),
                    key_files,
                    token_file,
                }
            }
            (None, None) => {
                return Err(UpstreamError::Credentials(
                    "origin.upstream has neither url nor s3".into(),
                ));
            }
        };
        // The system's roots, if it has any (a FROM scratch image has none
        // unless mounted): plain-HTTP upstreams do not need them, and an
        // HTTPS one then fails its handshake with a named error.
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Credentials(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.max_concurrent.get() as usize)
            .build(https);
        Ok(Self {
            source,
            client,
            permits: Semaphore::new(config.max_concurrent.get() as usize),
            max_concurrent: config.max_concurrent.get() as usize,
            timeout: Duration::from_millis(config.timeout_ms.get()),
            default_ttl: Duration::from_secs(config.default_ttl_secs.get()),
            serve_stale_if_error: config.serve_stale_if_error,
            not_found_ttl: Duration::from_secs(config.not_found_ttl_secs.get()),
            not_found_max: config.not_found_max_names.get() as usize,
            not_found: Mutex::new(NotFound::default()),
        })
    }

    /// Whether the upstream answered 404 for `key` recently enough that
    /// it is not asked again yet.
    pub(crate) fn known_missing(&self, key: StreamId) -> bool {
        self.not_found.lock().contains(key, Instant::now())
    }

    /// Remembers that the upstream has no `key`, for `not_found_ttl_secs`.
    fn remember_missing(&self, key: StreamId) {
        if self.not_found_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        self.not_found
            .lock()
            .insert(key, now + self.not_found_ttl, now, self.not_found_max);
    }

    /// Forgets a remembered 404 for `key`: the name was published or
    /// purged here, so the next request must not be answered from it.
    pub fn forget_missing(&self, key: StreamId) {
        self.not_found.lock().remove(key);
    }

    /// Names remembered as missing upstream.
    pub fn missing_names(&self) -> usize {
        self.not_found.lock().len()
    }

    /// Which kind of upstream, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Http { .. } => "http",
            Source::S3 { .. } => "s3",
        }
    }

    /// `GET`s `name`, conditionally when `validators` are given (see [`condition`]). Holds one
    /// of `max_concurrent` permits until the answer's headers are in; the
    /// body is the caller's to read.
    pub async fn get(
        &self,
        name: &str,
        validators: Option<&Validators>,
    ) -> Result<(Fetched, String), UpstreamError> {
        let waited = Instant::now();
        let _permit = tokio::time::timeout(self.timeout, self.permits.acquire())
            .await
            .map_err(|_| UpstreamError::Busy {
                max: self.max_concurrent,
                waited: waited.elapsed(),
            })?
            .map_err(|_| UpstreamError::Busy {
                max: self.max_concurrent,
                waited: waited.elapsed(),
            })?;
        let path = encode_path(name);
        let mut req = Request::builder().method(Method::GET);
        let url = match &self.source {
            Source::Http { base } => format!("{base}/{path}"),
            Source::S3 {
                endpoint,
                host,
                bucket,
                region,
                key,
                key_files,
                token_file,
            } => {
                let key = s3_key(key, key_files.as_ref(), token_file.as_deref());
                let uri_path = format!("/{}/{path}", encode_segment(bucket));
                let amz_date = amz_date(crate::roles::node::unix_ms() / 1000);
                let mut signed: Vec<(&str, &str)> = vec![
                    ("host", host),
                    ("x-amz-content-sha256", EMPTY_SHA256),
                    ("x-amz-date", &amz_date),
                ];
                if let Some(t) = &key.token {
                    signed.push(("x-amz-security-token", t));
                }
                let auth = sigv4_authorization(&SigV4 {
                    method: "GET",
                    uri_path: &uri_path,
                    query: "",
                    headers: &signed,
                    payload_sha256: EMPTY_SHA256,
                    amz_date: &amz_date,
                    region,
                    service: "s3",
                    key_id: &key.id,
                    secret: &key.secret,
                });
                for (k, v) in &signed {
                    if *k != "host" {
                        req = req.header(*k, *v);
                    }
                }
                req = req.header(header::AUTHORIZATION, auth);
                format!("{endpoint}{uri_path}")
            }
        };
        if let Some((name, value)) = validators.and_then(condition) {
            req = req.header(name, value);
        }
        let req = req
            .uri(&url)
            .body(Empty::new())
            .map_err(|e| UpstreamError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    url,
                    after: self.timeout,
                });
            }
            Ok(Err(e)) => {
                // The source chain names the cause (refused, DNS, TLS).
                let mut message = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    message = format!("{message}: {s}");
                    src = s.source();
                }
                return Err(UpstreamError::Transport { url, message });
            }
            Ok(Ok(r)) => r,
        };
        let headers = resp.headers();
        let text = |h: header::HeaderName| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let upstream_cc = text(header::CACHE_CONTROL);
        let fresh_for = freshness(upstream_cc.as_deref(), self.default_ttl);
        let fetched = match resp.status() {
            StatusCode::NOT_MODIFIED => Fetched::NotModified { fresh_for },
            // S3 answers 403 for a missing key when listing is not allowed.
            StatusCode::NOT_FOUND | StatusCode::GONE => Fetched::NotFound,
            StatusCode::OK => Fetched::Body {
                validators: Validators {
                    etag: text(header::ETAG),
                    last_modified: text(header::LAST_MODIFIED),
                },
                fresh_for,
                cache_control: upstream_cc
                    .filter(|cc| crate::config::check_cache_control(cc).is_ok()),
                len: text(header::CONTENT_LENGTH).and_then(|l| l.parse().ok()),
                body: resp.into_body(),
            },
            status => return Err(UpstreamError::Status { url, status }),
        };
        Ok((fetched, url))
    }

    /// The idle deadline between two pieces of an upstream body.
    pub fn idle_timeout(&self) -> Duration {
        self.timeout
    }
}

/// The S3 key to sign with: read again from its files when it has them
/// (a rotation is picked up by the next request); a read that fails or
/// finds an empty file keeps the last good key, with a warning.
fn s3_key(
    held: &Mutex<S3Key>,
    files: Option<&(PathBuf, PathBuf)>,
    token_file: Option<&Path>,
) -> S3Key {
    if let Some(files) = files {
        match S3Key::read(files, token_file) {
            Ok(fresh) => {
                let mut k = held.lock();
                if *k != fresh {
                    tracing::info!(file = %files.0.display(), "the upstream's S3 key changed; signing with the new one");
                    *k = fresh;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the upstream's S3 key; keeping the last one read")
            }
        }
    }
    held.lock().clone()
}

/// How long an upstream answer stays fresh: `s-maxage`, else `max-age`;
/// `no-cache`, `no-store` and `private` mean not at all; `default`
/// without any of these.
pub fn freshness(cache_control: Option<&str>, default: Duration) -> Duration {
    let Some(cc) = cache_control else {
        return default;
    };
    let mut max_age = None;
    let mut s_maxage = None;
    for d in cc.split(',') {
        let d = d.trim().to_ascii_lowercase();
        let (k, v) = d.split_once('=').unwrap_or((&d, ""));
        match k.trim() {
            "no-cache" | "no-store" | "private" => return Duration::ZERO,
            "max-age" => max_age = v.trim().trim_matches('"').parse::<u64>().ok(),
            "s-maxage" => s_maxage = v.trim().trim_matches('"').parse::<u64>().ok(),
            _ => {}
        }
    }
    s_maxage
        .or(max_age)
        .map_or(default, |s| Duration::from_secs(s.min(31_536_000)))
}

/// Percent-encodes everything but unreserved characters (RFC 3986), as
/// SigV4 wants and any HTTP server accepts.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(name: &str) -> String {
    name.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// SHA-256 of nothing: the payload hash of a GET.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `YYYYMMDDTHHMMSSZ` for `secs` after the Unix epoch (UTC).
fn amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One request to sign with AWS Signature Version 4.
struct SigV4<'a> {
    method: &'a str,
    /// Already percent-encoded.
    uri_path: &'a str,
    /// Canonical (sorted, encoded) query string.
    query: &'a str,
    /// Lowercase names; every header listed is signed.
    headers: &'a [(&'a str, &'a str)],
    payload_sha256: &'a str,
    amz_date: &'a str,
    region: &'a str,
    service: &'a str,
    key_id: &'a str,
    secret: &'a str,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The `Authorization` header value for `r`.
fn sigv4_authorization(r: &SigV4<'_>) -> String {
    use sha2::Digest;
    let mut headers: Vec<(&str, &str)> = r.headers.to_vec();
    headers.sort_unstable();
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        r.method, r.uri_path, r.query, r.payload_sha256
    );
    let date = &r.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", r.region, r.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        r.amz_date,
        hex::encode(sha2::Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac_sha256(format!("AWS4{}", r.secret).as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, r.region.as_bytes());
    let k_service = hmac_sha256(&k_region, r.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        r.key_id
    )
}

/// The pulled names of an origin, bounded: past [`MAX_PULLED`] the entry
/// stalest by freshness goes (its name is then pulled again as new).
#[derive(Debug, Default)]
pub(crate) struct Pulled(HashMap<StreamId, PullState>);

impl Pulled {
    pub(crate) fn get(&self, key: StreamId) -> Option<PullState> {
        self.0.get(&key).cloned()
    }

    pub(crate) fn insert(&mut self, key: StreamId, state: PullState) {
        if self.0.len() >= MAX_PULLED && !self.0.contains_key(&key) {
            if let Some(oldest) = self
                .0
                .iter()
                .min_by_key(|(_, s)| s.fresh_until)
                .map(|(k, _)| *k)
            {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(key, state);
    }

    pub(crate) fn remove(&mut self, key: StreamId) {
        self.0.remove(&key);
    }
}

/// Names the upstream answered 404 for and until when that answer stands,
/// bounded: every entry lives as long as the others (one TTL), so
/// insertion order is expiry order and the oldest go first.
#[derive(Debug, Default)]
pub(crate) struct NotFound {
    until: HashMap<StreamId, Instant>,
    /// Insertion order; an entry whose time no longer matches `until`
    /// (removed, or inserted again since) is skipped when it comes up.
    order: VecDeque<(StreamId, Instant)>,
}

impl NotFound {
    pub(crate) fn contains(&mut self, key: StreamId, now: Instant) -> bool {
        match self.until.get(&key) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.until.remove(&key);
                false
            }
            None => false,
        }
    }

    pub(crate) fn insert(&mut self, key: StreamId, until: Instant, now: Instant, max: usize) {
        self.until.insert(key, until);
        self.order.push_back((key, until));
        while let Some(&(k, u)) = self.order.front() {
            if self.order.len() <= max && u > now {
                break;
            }
            self.order.pop_front();
            if self.until.get(&k) == Some(&u) {
                self.until.remove(&k);
            }
        }
    }

    pub(crate) fn remove(&mut self, key: StreamId) {
        self.until.remove(&key);
    }

    pub(crate) fn len(&self) -> usize {
        self.until.len()
    }
}

fn count(shared: &Shared, kind: &str, result: &str) {
    shared
        .metrics
        .upstream_fetches
        .with_label_values(&[kind, result])
        .inc();
}

/// The newest manifest of `name` at an origin with an upstream: the
/// version held while it is fresh (or was published here by PUT, which
/// the upstream does not override), else what the upstream says now.
/// Errors carry [`UPSTREAM_FAILED`] when the upstream failed.
pub(crate) async fn manifest(
    shared: &Arc<Shared>,
    up: &Arc<Upstream>,
    object: StreamId,
    name: &str,
) -> Result<Option<ManifestFrame>, String> {
    let held = shared.manifests.lock().newest(object).map(|(m, _)| m);
    let pulled = shared.pulled.lock().get(object);
    match (&held, &pulled) {
        // Published here: the publisher's version is the name's.
        (Some(m), None) => return Ok(Some(m.clone())),
        (Some(m), Some(p)) if p.version == m.version && Instant::now() < p.fresh_until => {
            return Ok(Some(m.clone()));
        }
        _ => {}
    }
    if held.is_none() && up.known_missing(object) {
        shared
            .metrics
            .upstream_not_found_cached
            .with_label_values(&[up.kind()])
            .inc();
        return Ok(None);
    }
    // One pull per name however many ask, and it runs to the end as its
    // own task: a requester that gives up (a relay's request timeout on a
    // large object) does not waste what was fetched.
    let task = {
        let shared = shared.clone();
        let up = up.clone();
        let name = name.to_owned();
        move || async move {
            tokio::spawn(async move { pull(&shared, &up, object, &name).await })
                .await
                .map_err(|e| format!("{UPSTREAM_FAILED}: the pull task failed: {e}"))?
        }
    };
    match shared.manifest_flight.run(object, task).await {
        Ok(m) => Ok(Some(m)),
        Err(crate::roles::flight::FlightError::Failed(e)) if e.contains("has no manifest") => {
            Ok(None)
        }
        Err(crate::roles::flight::FlightError::Failed(e)) => Err(e),
        Err(e) => Err(format!("{UPSTREAM_FAILED}: {e}")),
    }
}

async fn pull(
    shared: &Arc<Shared>,
    up: &Upstream,
    object: StreamId,
    name: &str,
) -> Result<ManifestFrame, String> {
    let kind = up.kind();
    let started = Instant::now();
    let held = shared.manifests.lock().newest(object).map(|(m, _)| m);
    let pulled = shared.pulled.lock().get(object);
    // Revalidate only a version that is the one pulled; anything else is
    // fetched whole.
    let validators = match (&held, &pulled) {
        (Some(m), Some(p)) if p.version == m.version => Some(p.validators.clone()),
        _ => None,
    };
    let failed = |e: UpstreamError| -> Result<ManifestFrame, String> {
        if let (true, Some(m)) = (up.serve_stale_if_error, &held) {
            if validators.is_some() {
                count(shared, kind, "stale");
                tracing::warn!(error = %e, name, "upstream failed; serving the version held (serve_stale_if_error)");
                return Ok(m.clone());
            }
        }
        count(shared, kind, e.metric_label());
        tracing::warn!(error = %e, name, "upstream fetch failed");
        Err(format!("{UPSTREAM_FAILED}: {e}"))
    };
    let (fetched, url) = match up.get(name, validators.as_ref()).await {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    match fetched {
        Fetched::NotModified { fresh_for } => match (held.clone(), pulled) {
            (Some(m), Some(mut p)) if validators.is_some() => {
                count(shared, kind, "not_modified");
                p.fresh_until = Instant::now() + fresh_for;
                shared.pulled.lock().insert(object, p);
                Ok(m)
            }
            // A 304 to an unconditional request is not an answer.
            _ => failed(UpstreamError::Status {
                url,
                status: StatusCode::NOT_MODIFIED,
            }),
        },
        Fetched::NotFound => {
            count(shared, kind, "not_found");
            shared.pulled.lock().remove(object);
            if validators.is_some() {
                // Gone upstream: gone from every edge too, by signed purge.
                shared.purge(name)?;
            }
            up.remember_missing(object);
            Err(format!("the upstream has no manifest for {name}"))
        }
        Fetched::Body {
            validators: got,
            fresh_for,
            ..
        } if got.etag.as_ref().is_some_and(|e| !e.starts_with("W/"))
            && validators.as_ref().is_some_and(|v| v.etag == got.etag) =>
        {
            // An upstream that ignores If-None-Match but answers the same
            // strong ETag sent the same bytes: no new version for them.
            match (held.clone(), pulled) {
                (Some(m), Some(mut p)) => {
                    count(shared, kind, "not_modified");
                    p.fresh_until = Instant::now() + fresh_for;
                    shared.pulled.lock().insert(object, p);
                    Ok(m)
                }
                _ => Err(format!(
                    "{UPSTREAM_FAILED}: {name} changed while revalidating"
                )),
            }
        }
        Fetched::Body {
            validators,
            fresh_for,
            cache_control,
            len,
            body,
        } => {
            let limit = shared.settings.max_object_bytes;
            if let Some(len) = len.filter(|&l| l > limit) {
                return failed(UpstreamError::TooLarge { url, len, limit });
            }
            let publisher = crate::roles::run::OriginPublisher(shared.clone());
            let version = shared.next_version();
            let stream = StreamId::object(name, version);
            if let Err(e) = publisher.begin_object(stream, len.unwrap_or(0)) {
                return failed(UpstreamError::Ingest {
                    url,
                    message: e.to_string(),
                });
            }
            let idle = up.idle_timeout();
            let pieces = futures_util::stream::unfold(Some(body), move |body| async move {
                let mut body = body?;
                loop {
                    match tokio::time::timeout(idle, body.frame()).await {
                        Err(_) => {
                            let e = std::io::Error::other(format!("no byte for {idle:?}"));
                            return Some((Err(e), None));
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e)), None)),
                        Ok(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                return Some((Ok(data), Some(body)));
                            }
                        }
                    }
                }
            })
            .boxed();
            let cache_control = cache_control
                .unwrap_or_else(|| shared.settings.config.origin.cache_control.clone());
            let got = ingest::ingest_object(
                &publisher,
                ingest::ObjectUpload {
                    chunk_size: shared.settings.chunk_size,
                    max_object_bytes: limit,
                    expected_len: len,
                    name: name.to_owned(),
                    version,
                    cache_control,
                    stream,
                    upstream: Some(validators.clone()),
                },
                pieces,
            )
            .await;
            match got {
                Ok(p) => {
                    count(shared, kind, "fetched");
                    tracing::info!(
                        name,
                        version,
                        bytes = p.len,
                        took_ms = started.elapsed().as_millis() as u64,
                        "pulled from the upstream"
                    );
                    shared.pulled.lock().insert(
                        object,
                        PullState {
                            version,
                            validators,
                            fresh_until: Instant::now() + fresh_for,
                        },
                    );
                    shared
                        .manifests
                        .lock()
                        .get(stream)
                        .ok_or_else(|| format!("{name} version {version} was purged meanwhile"))
                }
                Err(e) => {
                    publisher.abort_object(name, stream);
                    failed(UpstreamError::Ingest {
                        url,
                        message: e.message().to_owned(),
                    })
                }
            }
        }
    }
}

/// The one precondition a revalidation sends: `If-None-Match` when the
/// upstream gave an ETag, else `If-Modified-Since`. Never both: a server
/// that checks the date first (moto's S3 does) answers 304 for an object
/// replaced within the same second as the version held, whose
/// `Last-Modified` (one-second resolution) is then unchanged, and the edge
/// would serve the old bytes for as long as the name lives. RFC 9110
/// §13.1.3 has a server ignore `If-Modified-Since` beside `If-None-Match`;
/// not every one does.
fn condition(v: &Validators) -> Option<(header::HeaderName, &str)> {
    match (&v.etag, &v.last_modified) {
        (Some(etag), _) => Some((header::IF_NONE_MATCH, etag.as_str())),
        (None, Some(lm)) => Some((header::IF_MODIFIED_SINCE, lm.as_str())),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revalidation_sends_the_etag_alone_when_there_is_one() {
        let v = |etag: Option<&str>, lm: Option<&str>| Validators {
            etag: etag.map(str::to_owned),
            last_modified: lm.map(str::to_owned),
        };
        let date = "Sun, 06 Dec 2026 19:00:00 GMT";
        assert_eq!(
            condition(&v(Some("\"abc\""), Some(date))),
            Some((header::IF_NONE_MATCH, "\"abc\""))
        );
        assert_eq!(
            condition(&v(None, Some(date))),
            Some((header::IF_MODIFIED_SINCE, date))
        );
        assert_eq!(condition(&v(None, None)), None);
    }

    /// The "GET Object" example of the AWS SigV4 documentation.
    #[test]
    fn sigv4_matches_the_aws_documented_example() {
        let auth = sigv4_authorization(&SigV4 {
            method: "GET",
            uri_path: "/test.txt",
            query: "",
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            service: "s3",
            key_id: "AKIAIOSFODNN7EXAMPLE",
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        });
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn amz_date_is_utc_calendar_time() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_399), "20000228T235959Z");
        assert_eq!(amz_date(951_868_800), "20000301T000000Z");
    }

    #[test]
    fn freshness_follows_cache_control() {
        let d = Duration::from_secs(60);
        assert_eq!(freshness(None, d), d);
        assert_eq!(freshness(Some("public"), d), d);
        assert_eq!(
            freshness(Some("public, max-age=30"), d),
            Duration::from_secs(30)
        );
        assert_eq!(
            freshness(Some("max-age=30, s-maxage=5"), d),
            Duration::from_secs(5)
        );
        assert_eq!(freshness(Some("no-cache"), d), Duration::ZERO);
        assert_eq!(freshness(Some("max-age=30, private"), d), Duration::ZERO);
    }

    #[test]
    fn remembered_404s_expire_are_bounded_and_can_be_forgotten() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let key = |i: u32| StreamId::object_key(&format!("n{i}"));
        let mut m = NotFound::default();
        m.insert(key(0), t0 + ttl, t0, 3);
        assert!(m.contains(key(0), t0 + Duration::from_secs(9)));
        assert!(!m.contains(key(0), t0 + ttl), "expired at its time");
        assert_eq!(m.len(), 0, "an expired entry found is dropped");
        // Bounded: the fourth name pushes out the oldest.
        for i in 1..=4 {
            m.insert(key(i), t0 + ttl, t0, 3);
        }
        assert_eq!(m.len(), 3);
        assert!(!m.contains(key(1), t0) && m.contains(key(4), t0));
        // A flood of the same name keeps one entry.
        for _ in 0..100 {
            m.insert(key(4), t0 + ttl, t0, 3);
        }
        assert!(
            m.len() <= 3 && m.order.len() <= 3,
            "{} {}",
            m.len(),
            m.order.len()
        );
        m.remove(key(4));
        assert!(!m.contains(key(4), t0));
        // Entries past their time go as new ones arrive.
        let later = t0 + Duration::from_secs(60);
        m.insert(key(9), later + ttl, later, 3);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn an_s3_key_in_files_is_read_again_and_a_broken_read_keeps_the_last() {
        let dir = std::env::temp_dir().join(format!("dcdn-s3key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = (dir.join("id"), dir.join("secret"));
        std::fs::write(&files.0, "AKIA1\n").unwrap();
        std::fs::write(&files.1, "s1").unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t1\n").unwrap();
        let held = Mutex::new(S3Key::read(&files, Some(&token)).unwrap());
        assert_eq!(held.lock().token.as_deref(), Some("t1"));
        std::fs::write(&files.0, "AKIA2").unwrap();
        std::fs::write(&files.1, "s2\n").unwrap();
        std::fs::write(&token, "t2").unwrap();
        let k = s3_key(&held, Some(&files), Some(&token));
        assert_eq!(
            (k.id.as_str(), k.secret.as_str(), k.token.as_deref()),
            ("AKIA2", "s2", Some("t2"))
        );
        std::fs::write(&token, "").unwrap();
        assert_eq!(
            s3_key(&held, Some(&files), Some(&token)).token.as_deref(),
            Some("t2"),
            "an empty token file is not a token: the key and token stay as one"
        );
        std::fs::write(&token, "t2").unwrap();
        std::fs::write(&files.1, "").unwrap();
        assert_eq!(
            s3_key(&held, Some(&files), Some(&token)).secret,
            "s2",
            "an empty file is not a key"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            s3_key(&held, Some(&files), Some(&token)).id,
            "AKIA2",
            "nor is a missing one"
        );
    }

    #[test]
    fn names_are_percent_encoded_per_segment() {
        assert_eq!(encode_path("a b/c+d/e~f.txt"), "a%20b/c%2Bd/e~f.txt");
    }
}
