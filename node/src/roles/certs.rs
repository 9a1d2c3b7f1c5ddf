//! Certificates of the HTTPS listeners (`[http_tls]`): loading the
//! `tls.crt`/`tls.key` pair of each directory (a Kubernetes TLS Secret as
//! mounted, so cert-manager's files work as they are), choosing one by SNI,
//! and reloading them when the files change.
//!
//! One [`Resolver`] serves every TLS handshake of a node, over TCP (HTTP/2,
//! HTTP/1.1) and QUIC (HTTP/3) alike, so a reload reaches both at once. A
//! reload swaps the set new handshakes see; connections already up keep the
//! certificate they were made with until they close. A set that does not
//! load — an unreadable or garbled file, a key that does not match its
//! certificate — is refused whole and the old one kept, and both outcomes
//! are counted (`dcdn_tls_reloads_total{result}`). What to serve over the
//! connections is the listeners' business (`listener`, `http3`).

use crate::metrics::Metrics;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The certificate file in each directory (a TLS Secret's key).
pub const CERT_FILE: &str = "tls.crt";
/// The private-key file in each directory.
pub const KEY_FILE: &str = "tls.key";
/// ALPN ids offered over TCP, best first.
pub const TCP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN id of HTTP/3.
pub const H3_ALPN: &[u8] = b"h3";

/// Why a certificate directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("http_tls.cert_dirs[{index}]: {path}: {message}")]
pub struct CertError {
    /// Position in `http_tls.cert_dirs`.
    pub index: usize,
    /// The file at fault.
    pub path: String,
    pub message: String,
}

/// One loaded certificate and the names it answers for.
#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the leaf's SANs (`*.example.com` kept as is).
    names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    not_after: i64,
}

/// Every directory's certificate, the first being the default.
#[derive(Debug)]
pub struct CertSet {
    entries: Vec<Entry>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl CertSet {
    /// Loads `tls.crt` and `tls.key` from each of `dirs`; the first error
    /// names the field index and the file.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, CertError> {
        let provider = provider();
        let mut entries = Vec::with_capacity(dirs.len());
        for (index, dir) in dirs.iter().enumerate() {
            entries.push(load_dir(index, dir, &provider)?);
        }
        if entries.is_empty() {
            return Err(CertError {
                index: 0,
                path: String::new(),
                message: "no certificate directory given".into(),
            });
        }
        Ok(Self { entries })
    }

    /// The certificate for `server_name` (SNI): an exact SAN match, else a
    /// wildcard SAN covering its first label, else the default (first).
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            for want in std::iter::once(Some(&name)).chain([wildcard.as_ref()]) {
                let Some(want) = want else { continue };
                if let Some(e) = self.entries.iter().find(|e| e.names.contains(want)) {
                    return e.key.clone();
                }
            }
        }
        self.entries[0].key.clone()
    }

    /// The earliest notAfter among the certificates, Unix seconds.
    pub fn earliest_expiry(&self) -> i64 {
        self.entries.iter().map(|e| e.not_after).min().unwrap_or(0)
    }
}

fn load_dir(index: usize, dir: &Path, provider: &CryptoProvider) -> Result<Entry, CertError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let err = |path: &Path, message: String| CertError {
        index,
        path: path.display().to_string(),
        message,
    };
    let cert_pem = std::fs::read(&cert_path).map_err(|e| err(&cert_path, e.to_string()))?;
    let key_pem = std::fs::read(&key_path).map_err(|e| err(&key_path, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(&cert_path, format!("not PEM certificates: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(err(&cert_path, "holds no certificate".into()));
    };
    let (names, not_after) = leaf_names(leaf).map_err(|m| err(&cert_path, m))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&key_path, format!("not a PEM private key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| err(&key_path, format!("does not fit {CERT_FILE}: {e}")))?;
    Ok(Entry {
        key: Arc::new(key),
        names,
        not_after,
    })
}

fn leaf_names(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("first certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = gn {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Hands every TLS handshake the current certificate for its SNI.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<CertSet>>,
}

impl Resolver {
    pub fn new(set: CertSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
        }
    }

    fn replace(&self, set: CertSet) {
        *self.current.write() = Arc::new(set);
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.current.read().clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().pick(hello.server_name()))
    }
}

/// A rustls server config that asks `resolver` for its certificate and
/// offers `alpn`; TLS 1.3 only when `tls13_only` (QUIC).
pub fn server_config(
    resolver: Arc<Resolver>,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    // No 0-RTT: early data can be replayed, and a PUT must not be.
    config.max_early_data_size = 0;
    Ok(config)
}

/// A digest of every file's contents (a missing file hashes as such), so a
/// change is seen however it was made: in place, by rename, or by the
/// symlink swap of a Kubernetes Secret volume, which inotify on the file
/// would miss.
fn digest(dirs: &[PathBuf]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for dir in dirs {
        for file in [CERT_FILE, KEY_FILE] {
            match std::fs::read(dir.join(file)) {
                Ok(bytes) => {
                    h.update(&(bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(_) => {
                    h.update(b"missing");
                }
            }
        }
    }
    h.finalize()
}

/// Re-reads `dirs` every `interval` and, when their contents changed,
/// loads them for new handshakes, or keeps the old set if they do not load.
/// Each changed state is judged once: a broken file counts one failure, not
/// one per interval.
pub async fn watch(
    resolver: Arc<Resolver>,
    dirs: Vec<PathBuf>,
    interval: Duration,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = digest(&dirs);
    metrics
        .tls_cert_expiry
        .set(resolver.current().earliest_expiry());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = digest(&dirs);
        if now == last {
            continue;
        }
        last = now;
        match CertSet::load(&dirs) {
            Ok(set) => {
                metrics.tls_cert_expiry.set(set.earliest_expiry());
                resolver.replace(set);
                metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("HTTPS certificates changed on disk; new connections get them");
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "HTTPS certificates changed on disk but do not load; keeping the old ones");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, names: &[&str]) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CERT_FILE), ck.cert.pem()).unwrap();
        std::fs::write(dir.join(KEY_FILE), ck.signing_key.serialize_pem()).unwrap();
        ck
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcdn-certs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first_directory() {
        let root = tmp("sni");
        let a = write_pair(&root.join("a"), &["default.test"]);
        let b = write_pair(&root.join("b"), &["cdn.example.com"]);
        let c = write_pair(&root.join("c"), &["*.media.example.com"]);
        let set = CertSet::load(&[root.join("a"), root.join("b"), root.join("c")]).unwrap();
        let leaf = |k: Arc<CertifiedKey>| k.cert[0].to_vec();
        assert_eq!(
            leaf(set.pick(Some("CDN.example.com"))),
            b.cert.der().to_vec()
        );
        assert_eq!(
            leaf(set.pick(Some("eu.media.example.com"))),
            c.cert.der().to_vec()
        );
        // A wildcard covers one label only.
        assert_eq!(
            leaf(set.pick(Some("a.b.media.example.com"))),
            a.cert.der().to_vec()
        );
        assert_eq!(leaf(set.pick(None)), a.cert.der().to_vec());
        assert_eq!(leaf(set.pick(Some("other.test"))), a.cert.der().to_vec());
    }

    #[test]
    fn errors_name_the_field_index_and_the_file() {
        let root = tmp("errors");
        write_pair(&root.join("good"), &["good.test"]);
        let missing = root.join("missing");
        let e = CertSet::load(&[root.join("good"), missing.clone()]).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.to_string().contains("http_tls.cert_dirs[1]"), "{e}");
        assert!(
            e.to_string()
                .contains(&missing.join(CERT_FILE).display().to_string()),
            "{e}"
        );

        // A key that belongs to another certificate.
        let other = write_pair(&root.join("other"), &["other.test"]);
        std::fs::write(
            root.join("good").join(KEY_FILE),
            other.signing_key.serialize_pem(),
        )
        .unwrap();
        let e = CertSet::load(&[root.join("good")]).unwrap_err();
        assert!(
            e.to_string().contains(KEY_FILE) && e.to_string().contains("does not fit"),
            "{e}"
        );

        std::fs::write(root.join("other").join(CERT_FILE), "garbage").unwrap();
        let e = CertSet::load(&[root.join("other")]).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
