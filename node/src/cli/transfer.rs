//! `dcdn publish` and `dcdn fetch`: stream a file to an origin, stream an
//! object from an edge, verify what arrived.
//!
//! `fetch` writes to `FILE.part` and renames it to `FILE` only once the
//! bytes match the edge's ETag (the object's BLAKE3), so a `FILE` that
//! exists is a verified one; `--continue` picks a `FILE.part` up where it
//! stopped with an HTTP `Range` request, as `wget -c` and `curl -C -` do.

use super::{Failure, progress};
use crate::client::{Client, ClientError};
use anyhow::Context;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::{StatusCode, header};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline of one transfer: objects can be large, links slow.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// What `dcdn publish` sends.
#[derive(Debug, Clone)]
pub struct Publish {
    /// A file, or `-` for standard input.
    pub file: PathBuf,
    pub origin: String,
    pub name: Option<String>,
    pub token: String,
    pub live: bool,
    /// A CA file (PEM) to trust beside the system's roots, for an HTTPS origin.
    pub ca_file: Option<PathBuf>,
    /// After the publish, ask the origin to have every edge pull it now.
    pub preheat: bool,
    /// Times an object read from a file is sent again after the origin
    /// could not be reached or answered 502, 503 or 504 (an origin
    /// restarting in a rollout). Standard input and live streams are sent
    /// once: their bytes cannot be read again.
    pub retries: u32,
}

/// The first wait before a retry; each next one doubles, up to
/// [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(8);

/// Whether an upload that failed this way may succeed if sent again: the
/// origin was unreachable, timed out, or said it is not able to take it now.
/// Anything else (a refused token, a bad name, a full store) would fail the
/// same way again.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
        ClientError::Status { status, .. } => matches!(
            *status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        _ => false,
    }
}

/// What `dcdn publish --json` prints.
#[derive(Debug, Serialize)]
pub struct Published {
    pub name: String,
    /// `object` or `stream`.
    pub kind: &'static str,
    pub url: String,
    /// Bytes read from the file and sent.
    pub bytes_sent: u64,
    /// The origin's answer: `len`, `chunks`, `first_seq`, `digest`, ...
    pub origin: serde_json::Value,
    /// The origin's answer to the preheat (`--preheat`): `version`, `peers_told`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preheat: Option<serde_json::Value>,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published {} {} ({} bytes, {} chunks, blake3 {})",
            self.kind,
            self.name,
            self.bytes_sent,
            self.origin["chunks"],
            self.origin["digest"].as_str().unwrap_or("?")
        )?;
        if let Some(p) = &self.preheat {
            write!(
                f,
                "; preheat of version {} sent to {} peers",
                p["version"], p["peers_told"]
            )?;
        }
        Ok(())
    }
}

/// Streams the file to the origin's ingest API.
pub async fn publish(p: Publish) -> anyhow::Result<Published> {
    let stdin = p.file.as_os_str() == "-";
    let name = match p.name.clone() {
        Some(n) => n,
        None if stdin => {
            return Err(Failure::Usage("publishing standard input needs --name".into()).into());
        }
        None => p
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| Failure::Usage("the file has no usable name; pass --name".into()))?,
    };
    let kind = if p.live { "stream" } else { "object" };
    let url = super::join(&p.origin, &format!("/v1/{kind}s/{name}"));
    let client = Client::with_ca(TRANSFER_TIMEOUT, p.ca_file.as_deref())?;
    let retries = if stdin || p.live { 0 } else { p.retries };
    let mut wait = FIRST_RETRY_WAIT;
    let mut attempt = 0;
    let (resp, sent) = loop {
        match put_once(&p, &name, &url, &client).await {
            Err(e)
                if attempt < retries && e.downcast_ref::<ClientError>().is_some_and(transient) =>
            {
                attempt += 1;
                eprintln!(
                    "dcdn publish: {e}; sending again in {:.1} s ({attempt} of {retries})",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
            other => break other?,
        }
    };
    let origin = serde_json::from_slice(&resp.body)
        .with_context(|| format!("the origin's answer to PUT {url} is not JSON"))?;
    let preheat =
        if p.preheat && !p.live {
            let preheat_url = format!("{url}/preheat");
            let resp = client
                .send(
                    hyper::Method::POST,
                    &preheat_url,
                    Some(&p.token),
                    &[],
                    axum::body::Body::empty(),
                )
                .await?;
            Some(serde_json::from_slice(&resp.body).with_context(|| {
                format!("the origin's answer to POST {preheat_url} is not JSON")
            })?)
        } else {
            None
        };
    Ok(Published {
        name,
        kind,
        url,
        bytes_sent: sent,
        origin,
        preheat,
    })
}

/// One upload of the file (or standard input) to `url`; the answer and the
/// bytes sent.
async fn put_once(
    p: &Publish,
    name: &str,
    url: &str,
    client: &Client,
) -> anyhow::Result<(crate::client::Response, u64)> {
    let stdin = p.file.as_os_str() == "-";
    let total = if stdin {
        None
    } else {
        std::fs::metadata(&p.file).ok().map(|m| m.len())
    };
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if stdin {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&p.file)
                .await
                .with_context(|| format!("opening {}", p.file.display()))?,
        )
    };
    let bar = progress::bytes(total, &format!("publish {name}"));
    let sent = Arc::new(AtomicU64::new(0));
    let body = {
        let (bar, sent) = (bar.clone(), sent.clone());
        futures_util::stream::unfold(reader, |mut r| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), r))
                }
                Err(e) => Some((Err(e), r)),
            }
        })
        .inspect(move |piece| {
            if let Ok(b) = piece {
                sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                bar.inc(b.len() as u64);
            }
        })
    };
    let result = client.put_stream(url, Some(&p.token), body).await;
    bar.finish_and_clear();
    Ok((result?, sent.load(Ordering::Relaxed)))
}

/// Where `dcdn fetch` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// A regular file (or one to create): written as `FILE.part`, renamed.
    File(PathBuf),
    /// Something that exists and is not a regular file (`/dev/null`, a
    /// FIFO): written in place. A `.part` beside `/dev/null` cannot be
    /// created in a read-only image, and renaming onto it would replace it.
    Special(PathBuf),
}

impl Output {
    /// `-` is standard output, as for curl, wget and tar.
    pub fn parse(s: &Path) -> Self {
        if s.as_os_str() == "-" {
            Self::Stdout
        } else if std::fs::metadata(s).is_ok_and(|m| !m.is_file()) {
            Self::Special(s.to_owned())
        } else {
            Self::File(s.to_owned())
        }
    }
}

/// What `dcdn fetch` gets.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub url: String,
    pub output: Output,
    /// Keep `FILE.part` when interrupted and resume from it with a `Range`
    /// request. Without it a failed fetch leaves nothing behind.
    pub resume: bool,
    pub timeouts: crate::client::FetchTimeouts,
    /// A CA file (PEM) to trust beside the system's roots, for an HTTPS edge.
    pub ca_file: Option<PathBuf>,
    /// Fetch over HTTP/3 (QUIC) instead of HTTP/2 or HTTP/1.1.
    pub http3: bool,
}

/// What `dcdn fetch --json` prints.
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub url: String,
    /// The file written, or `-`.
    pub output: String,
    /// Size of the whole object.
    pub bytes: u64,
    /// Bytes that were already in `FILE.part` and not fetched again.
    pub resumed_from: u64,
    /// BLAKE3 of the whole object, hex.
    pub blake3: String,
    /// The edge sent an ETag and the bytes match it.
    pub verified: bool,
}

impl std::fmt::Display for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes to {} (blake3 {}",
            self.bytes, self.output, self.blake3
        )?;
        if self.resumed_from > 0 {
            write!(f, ", resumed at byte {}", self.resumed_from)?;
        }
        write!(
            f,
            ", {})",
            if self.verified {
                "verified"
            } else {
                "no ETag to verify against"
            }
        )
    }
}

/// The partial file `fetch` writes into before the rename.
pub fn part_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Downloads the object, verifying it against `Content-Length` and the
/// ETag. `FILE` is replaced only by a verified whole; on failure `FILE.part`
/// stays only if `--continue` asked for it.
pub async fn fetch(f: Fetch) -> anyhow::Result<Fetched> {
    let result = transfer(&f).await;
    if let (Err(e), Output::File(path)) = (&result, &f.output) {
        // An interrupted `--continue` fetch keeps its part to continue
        // from; anything else leaves nothing behind (a part that failed
        // verification is never worth continuing).
        let interrupted = e.chain().all(|c| c.downcast_ref::<Failure>().is_none());
        if !(f.resume && interrupted) {
            let _ = std::fs::remove_file(part_path(path));
        }
    }
    result
}

async fn transfer(f: &Fetch) -> anyhow::Result<Fetched> {
    let part = match &f.output {
        Output::File(path) => Some(part_path(path)),
        Output::Stdout | Output::Special(_) if f.resume => {
            return Err(Failure::Usage(
                "--continue needs a regular file to continue (-o FILE)".into(),
            )
            .into());
        }
        Output::Stdout | Output::Special(_) => None,
    };
    // Hash what is already there, so the digest covers the whole object.
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    if let (Some(part), true) = (&part, f.resume) {
        match std::fs::File::open(part) {
            Ok(mut file) => {
                offset = std::io::copy(&mut file, &mut hasher)
                    .with_context(|| format!("reading {}", part.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", part.display())),
        }
    }
    let range = [(header::RANGE, format!("bytes={offset}-"))];
    let headers: &[_] = if offset > 0 { &range } else { &[] };
    let resp = if f.http3 {
        let roots = crate::client::roots(f.ca_file.as_deref())?;
        crate::h3_client::get(&f.url, roots, headers, f.timeouts.response).await?
    } else {
        let client = Client::with_ca(f.timeouts.response, f.ca_file.as_deref())?;
        client
            .start(
                hyper::Method::GET,
                &f.url,
                None,
                headers,
                axum::body::Body::empty(),
            )
            .await?
            .map(axum::body::Body::new)
    };
    if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
        // The edge sent the whole object (it may not do ranges): start over.
        offset = 0;
        hasher.reset();
    }
    let etag = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        // An edge's ETag is `"<blake3>-<version>"`: the digest part is what
        // the body must hash to.
        .map(|v| {
            let v = v.trim_matches('"');
            v.split('-').next().unwrap_or(v).to_owned()
        })
        .filter(|e| e.len() == 64);
    let remaining = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &part {
        Some(part) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(offset > 0)
                .truncate(offset == 0)
                .open(part)
                .await
                .with_context(|| format!("creating {}", part.display()))?,
        ),
        None => match &f.output {
            Output::Special(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            _ => Box::new(tokio::io::stdout()),
        },
    };
    let bar = progress::bytes(remaining.map(|r| r + offset), "fetch");
    bar.set_position(offset);
    let mut body = resp.into_body();
    let mut n = offset;
    loop {
        // A stalled server fails the fetch; a slow but moving one does not.
        let frame = tokio::time::timeout(f.timeouts.idle, body.frame())
            .await
            .map_err(|_| ClientError::Stalled {
                url: f.url.clone(),
                after: f.timeouts.idle,
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| ClientError::Transport {
            method: hyper::Method::GET,
            url: f.url.clone(),
            message: format!("reading the body after {n} bytes: {e}"),
        })?;
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            n += data.len() as u64;
            bar.inc(data.len() as u64);
            sink.write_all(data).await.context("writing the output")?;
        }
    }
    sink.flush().await.context("writing the output")?;
    drop(sink);
    bar.finish_and_clear();
    if let Some(declared) = remaining.filter(|d| *d != n - offset) {
        return Err(Failure::Verification(format!(
            "{}: the body is {} bytes, Content-Length said {declared}",
            f.url,
            n - offset
        ))
        .into());
    }
    if let Some(part) = &part {
        // On disk before the rename makes it the file.
        std::fs::File::open(part)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("syncing {}", part.display()))?;
    }
    let digest = hasher.finalize().to_hex().to_string();
    if let Some(etag) = &etag {
        if *etag != digest {
            if let Some(part) = &part {
                // A part that does not add up must not be resumed from.
                let _ = std::fs::remove_file(part);
            }
            return Err(Failure::Verification(format!(
                "{}: the body's BLAKE3 {digest} does not match the ETag {etag}",
                f.url
            ))
            .into());
        }
    }
    let output = match (&f.output, &part) {
        (Output::File(path), Some(part)) => {
            std::fs::rename(part, path)
                .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
            path.display().to_string()
        }
        (Output::Special(path), _) => path.display().to_string(),
        _ => "-".to_owned(),
    };
    Ok(Fetched {
        url: f.url.clone(),
        output,
        bytes: n,
        resumed_from: offset,
        blake3: digest,
        verified: etag.is_some(),
    })
}
