//! The QUIC mesh: quinn endpoints authenticated by the cluster's CA, and the
//! cluster PKI that issues node certificates.
//!
//! Only members of the cluster may join: every connection is mutual TLS 1.3
//! with the cluster CA as the only root, both ways. A node's certificate
//! carries its name and role (as DNS SANs), and its [`PeerId`] is the hash of
//! its public key, so identity comes from what the CA signed, not from what a
//! peer says. Incoming connections from unvalidated addresses are sent a
//! Retry first (address validation); 0-RTT is off (no replayable early
//! data); connection and per-connection stream counts are bounded. UDP socket
//! buffers are raised because with the kernel's default ~208 KiB, drops on
//! bursts make quinn's MTU black-hole detection shrink `max_datagram_size`.
//!
//! Frame contents are `chunk::wire`'s business; this module moves bytes.

use crate::chunk::PeerId;
use crate::config::{Congestion, Role};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The DNS name every node certificate carries and every client asks for:
/// nodes are dialled by address, and the CA, not the name, is what is trusted.
pub const MESH_SERVER_NAME: &str = "mesh.dcdn.internal";
/// ALPN protocol id of the mesh protocol.
pub const ALPN: &[u8] = b"dcdn/1";
const ROLE_SAN_SUFFIX: &str = ".role.dcdn.internal";

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("certificate authority: {0}")]
    Pki(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("handshake with {addr} failed: {message}")]
    Handshake { addr: SocketAddr, message: String },
    #[error("refused {addr}: {reason}")]
    Refused {
        addr: SocketAddr,
        reason: &'static str,
    },
    #[error("peer {addr} presented a certificate without a DCDN identity: {message}")]
    Identity { addr: SocketAddr, message: String },
    #[error("reading {path}: {message}")]
    File { path: String, message: String },
}

impl TransportError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Pki(_) => "pki",
            Self::Tls(_) => "tls_config",
            Self::Bind { .. } => "bind",
            Self::Connect { .. } => "connect",
            Self::Handshake { .. } => "handshake",
            Self::Refused { reason, .. } => reason,
            Self::Identity { .. } => "identity",
            Self::File { .. } => "file",
        }
    }
}

fn pki(e: impl std::fmt::Display) -> TransportError {
    TransportError::Pki(e.to_string())
}

/// The cluster's certificate authority.
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// A node's certificate chain and private key, PEM.
#[derive(Clone)]
pub struct NodeIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|e| TransportError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256) for `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, TransportError> {
        let key = KeyPair::generate().map_err(pki)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("DCDN cluster CA {cluster}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(pki)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn from_pem(cert_pem: String, key_pem: String) -> Self {
        Self { cert_pem, key_pem }
    }

    pub fn load(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        Ok(Self::from_pem(read(cert)?, read(key)?))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for node `name` in `role`.
    pub fn issue_node(&self, name: &str, role: Role) -> Result<NodeIdentity, TransportError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(pki)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(pki)?;
        let key = KeyPair::generate().map_err(pki)?;
        let mut sans = vec![
            MESH_SERVER_NAME.to_owned(),
            format!("{}{ROLE_SAN_SUFFIX}", role_str(role)),
        ];
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            sans.push(name.to_owned());
        }
        let mut params = CertificateParams::new(sans).map_err(pki)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(pki)?;
        Ok(NodeIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl ClusterCa {
    /// Issues a plain HTTPS server certificate (not a mesh identity: no
    /// role name, server auth only) for `dns` names and `ips`.
    pub fn issue_server(
        &self,
        dns: &[&str],
        ips: &[std::net::IpAddr],
    ) -> Result<NodeIdentity, TransportError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(pki)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(pki)?;
        let key = KeyPair::generate().map_err(pki)?;
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .map_err(pki)?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        if let Some(first) = dns.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).map_err(pki)?;
        Ok(NodeIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Origin => "origin",
        Role::Relay => "relay",
        Role::Edge => "edge",
    }
}

impl NodeIdentity {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        Ok(Self {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// The id peers know this identity by (its certificate's public key).
    pub fn peer_id(&self) -> Result<PeerId, TransportError> {
        let chain = self.chain()?;
        let der = chain
            .first()
            .ok_or_else(|| TransportError::Tls("no certificate".into()))?;
        peer_info(der)
            .map(|info| info.peer_id)
            .map_err(TransportError::Tls)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        let chain: Result<Vec<_>, _> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect();
        let chain = chain.map_err(|e| TransportError::Tls(format!("node certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TransportError::Tls(
                "node certificate file holds no certificate".into(),
            ));
        }
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TransportError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TransportError::Tls(format!("node key: {e}")))
    }
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub name: String,
    pub role: Role,
}

/// Reads name, role and id from a node certificate (DER).
pub fn peer_info(der: &[u8]) -> Result<PeerInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let peer_id = PeerId::of_public_key(cert.tbs_certificate.subject_pki.raw);
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut role = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = gn {
                role = match dns.strip_suffix(ROLE_SAN_SUFFIX) {
                    Some("origin") => Some(Role::Origin),
                    Some("relay") => Some(Role::Relay),
                    Some("edge") => Some(Role::Edge),
                    _ => role,
                };
            }
        }
    }
    let role = role.ok_or("no role in the certificate's names")?;
    Ok(PeerInfo {
        peer_id,
        name,
        role,
    })
}

/// Limits and timeouts of a mesh endpoint.
#[derive(Debug, Clone, Copy)]
pub struct MeshLimits {
    pub max_connections: usize,
    pub max_streams_per_peer: u32,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub handshake_timeout: Duration,
    pub socket_buffer_bytes: usize,
    pub congestion: Congestion,
}

impl Default for MeshLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_peer: 256,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            socket_buffer_bytes: 4 << 20,
            congestion: Congestion::Cubic,
        }
    }
}

/// Counters of a mesh endpoint.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub handshakes_ok: AtomicU64,
    pub refused_tls: AtomicU64,
    pub refused_limit: AtomicU64,
    pub refused_identity: AtomicU64,
    pub retries_sent: AtomicU64,
    pub connections_open: AtomicUsize,
}

/// An authenticated connection to a cluster member.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    pub connection: quinn::Connection,
    pub peer_id: PeerId,
    pub name: String,
    pub role: Role,
    pub remote: SocketAddr,
}

/// A bound QUIC endpoint, server and client at once.
#[derive(Debug, Clone)]
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    limits: MeshLimits,
    stats: Arc<TransportStats>,
}

/// The UDP payload every path is assumed to carry (quinn's default, set
/// explicitly because `mesh::push_chunk` sizes FEC shards to fit it).
pub(crate) const MIN_MTU: u16 = 1200;

fn transport_config(limits: &MeshLimits) -> Result<quinn::TransportConfig, TransportError> {
    let mut tc = quinn::TransportConfig::default();
    tc.min_mtu(MIN_MTU);
    tc.max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_streams_per_peer));
    tc.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    tc.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(limits.idle_timeout)
            .map_err(|e| TransportError::Tls(format!("idle timeout: {e}")))?,
    ));
    tc.keep_alive_interval(Some(limits.keep_alive));
    tc.datagram_receive_buffer_size(Some(limits.socket_buffer_bytes));
    tc.datagram_send_buffer_size(limits.socket_buffer_bytes);
    // Room for a few large chunks in flight per stream and per connection.
    tc.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    tc.receive_window(quinn::VarInt::from_u32(64 << 20));
    tc.send_window(64 << 20);
    match limits.congestion {
        Congestion::Cubic => {
            tc.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            tc.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            tc.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    Ok(tc)
}

impl MeshEndpoint {
    /// Binds a mesh endpoint on `addr` for `identity`, trusting only `ca_pem`.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        ca_pem: &str,
        limits: MeshLimits,
    ) -> Result<Self, TransportError> {
        let tls = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| tls(&format!("CA certificate: {e}")))?;
            roots.add(ca).map_err(|e| tls(&e))?;
        }
        if roots.is_empty() {
            return Err(tls(&"the CA file holds no certificate"));
        }
        let roots = Arc::new(roots);
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls(&e))?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(identity.chain()?, identity.key()?)
            .map_err(|e| tls(&e))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        server_tls.max_early_data_size = 0;
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain()?, identity.key()?)
            .map_err(|e| tls(&e))?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        client_tls.enable_early_data = false;

        let tc = Arc::new(transport_config(&limits)?);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server_tls).map_err(|e| tls(&e))?,
        ));
        server.transport_config(tc.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls).map_err(|e| tls(&e))?,
        ));
        client.transport_config(tc);

        let socket = bind_socket(addr, limits.socket_buffer_bytes)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        Ok(Self {
            endpoint,
            limits,
            stats: Arc::new(TransportStats::default()),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }

    fn admit(&self, connection: quinn::Connection) -> Result<PeerConnection, TransportError> {
        let remote = connection.remote_address();
        let certs = connection
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
        let info = certs
            .as_ref()
            .and_then(|c| c.first())
            .ok_or_else(|| "no certificate".to_owned())
            .and_then(|der| peer_info(der));
        match info {
            Ok(info) => {
                self.stats.handshakes_ok.fetch_add(1, Ordering::Relaxed);
                self.stats.connections_open.fetch_add(1, Ordering::Relaxed);
                let stats = self.stats.clone();
                let watched = connection.clone();
                tokio::spawn(async move {
                    watched.closed().await;
                    stats.connections_open.fetch_sub(1, Ordering::Relaxed);
                });
                Ok(PeerConnection {
                    connection,
                    peer_id: info.peer_id,
                    name: info.name,
                    role: info.role,
                    remote,
                })
            }
            Err(message) => {
                self.stats.refused_identity.fetch_add(1, Ordering::Relaxed);
                connection.close(quinn::VarInt::from_u32(403), b"no DCDN identity");
                Err(TransportError::Identity {
                    addr: remote,
                    message,
                })
            }
        }
    }

    /// Dials a cluster member.
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerConnection, TransportError> {
        let connecting =
            self.endpoint
                .connect(addr, MESH_SERVER_NAME)
                .map_err(|e| TransportError::Connect {
                    addr,
                    message: e.to_string(),
                })?;
        let connection = tokio::time::timeout(self.limits.handshake_timeout, connecting)
            .await
            .map_err(|_| TransportError::Handshake {
                addr,
                message: format!("timed out after {:?}", self.limits.handshake_timeout),
            })?
            .map_err(|e| TransportError::Handshake {
                addr,
                message: e.to_string(),
            })?;
        self.admit(connection)
    }

    /// The next authenticated peer, or why the last attempt was refused.
    /// `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Result<PeerConnection, TransportError>> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let addr = incoming.remote_address();
            if !incoming.remote_address_validated() && incoming.may_retry() {
                // Make the client prove it owns its address before we spend
                // a handshake on it.
                if incoming.retry().is_ok() {
                    self.stats.retries_sent.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if self.stats.connections_open.load(Ordering::Relaxed) >= self.limits.max_connections {
                incoming.refuse();
                self.stats.refused_limit.fetch_add(1, Ordering::Relaxed);
                return Some(Err(TransportError::Refused {
                    addr,
                    reason: "connection_limit",
                }));
            }
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    return Some(Err(TransportError::Handshake {
                        addr,
                        message: e.to_string(),
                    }));
                }
            };
            let result = tokio::time::timeout(self.limits.handshake_timeout, connecting).await;
            return Some(match result {
                Ok(Ok(connection)) => self.admit(connection),
                Ok(Err(e)) => {
                    self.stats.refused_tls.fetch_add(1, Ordering::Relaxed);
                    Err(TransportError::Handshake {
                        addr,
                        message: e.to_string(),
                    })
                }
                Err(_) => {
                    self.stats.refused_tls.fetch_add(1, Ordering::Relaxed);
                    Err(TransportError::Handshake {
                        addr,
                        message: "handshake timed out".into(),
                    })
                }
            });
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
    }

    /// Waits until every connection has finished closing.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

pub(crate) fn bind_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ca: &ClusterCa, role: Role, name: &str, limits: MeshLimits) -> MeshEndpoint {
        let id = ca.issue_node(name, role).unwrap();
        MeshEndpoint::bind("127.0.0.1:0".parse().unwrap(), &id, ca.cert_pem(), limits).unwrap()
    }

    #[test]
    fn certificates_carry_name_role_and_key_id() {
        let ca = ClusterCa::generate("t").unwrap();
        let id = ca.issue_node("relay-7", Role::Relay).unwrap();
        let der = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap();
        let info = peer_info(&der).unwrap();
        assert_eq!(info.name, "relay-7");
        assert_eq!(info.role, Role::Relay);
        let again = peer_info(&der).unwrap();
        assert_eq!(info.peer_id, again.peer_id);
        let other = ca.issue_node("relay-7", Role::Relay).unwrap();
        let der2 = CertificateDer::from_pem_slice(other.cert_pem.as_bytes()).unwrap();
        assert_ne!(peer_info(&der2).unwrap().peer_id, info.peer_id);
    }

    #[tokio::test]
    async fn members_connect_and_exchange_streams_and_datagrams() {
        let ca = ClusterCa::generate("t").unwrap();
        let server = pair(&ca, Role::Relay, "relay-0", MeshLimits::default());
        let client = pair(&ca, Role::Edge, "edge-0", MeshLimits::default());
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn({
            let server = server.clone();
            async move { server.accept().await.unwrap().unwrap() }
        });
        let to_server = client.connect(addr).await.unwrap();
        let at_server = accept.await.unwrap();
        assert_eq!(to_server.role, Role::Relay);
        assert_eq!(to_server.name, "relay-0");
        assert_eq!(at_server.role, Role::Edge);
        assert_eq!(at_server.name, "edge-0");
        assert!(server.stats().retries_sent.load(Ordering::Relaxed) >= 1);

        let (mut send, mut recv) = to_server.connection.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        let (mut s2, mut r2) = at_server.connection.accept_bi().await.unwrap();
        assert_eq!(r2.read_to_end(100).await.unwrap(), b"ping");
        s2.write_all(b"pong").await.unwrap();
        s2.finish().unwrap();
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"pong");

        let max = to_server.connection.max_datagram_size().unwrap();
        assert!(max >= 1200, "max datagram size {max}");
        to_server
            .connection
            .send_datagram_wait(bytes::Bytes::from(vec![1u8; max]))
            .await
            .unwrap();
        assert_eq!(
            at_server.connection.read_datagram().await.unwrap().len(),
            max
        );
    }

    #[tokio::test]
    async fn a_paced_burst_of_datagrams_arrives_nearly_whole() {
        let ca = ClusterCa::generate("t").unwrap();
        let server = pair(&ca, Role::Relay, "relay-0", MeshLimits::default());
        let client = pair(&ca, Role::Edge, "edge-0", MeshLimits::default());
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn({
            let server = server.clone();
            async move { server.accept().await.unwrap().unwrap() }
        });
        let conn = client.connect(addr).await.unwrap();
        let at_server = accept.await.unwrap();
        const N: usize = 5000;
        let receiver = tokio::spawn(async move {
            let mut got = 0usize;
            while let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(500),
                at_server.connection.read_datagram(),
            )
            .await
            {
                got += 1;
            }
            got
        });
        for _ in 0..N {
            let size = conn.connection.max_datagram_size().unwrap();
            conn.connection
                .send_datagram_wait(bytes::Bytes::from(vec![7u8; size]))
                .await
                .unwrap();
        }
        let got = receiver.await.unwrap();
        assert!(got * 100 >= N * 99, "received {got} of {N}");
    }

    #[tokio::test]
    async fn a_stranger_from_another_ca_is_refused_and_counted() {
        let ca = ClusterCa::generate("ours").unwrap();
        let server = pair(&ca, Role::Relay, "relay-0", MeshLimits::default());
        let evil_ca = ClusterCa::generate("theirs").unwrap();
        let stranger = pair(&evil_ca, Role::Edge, "edge-x", MeshLimits::default());
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn({
            let server = server.clone();
            async move { server.accept().await.unwrap() }
        });
        let dialled = stranger.connect(addr).await;
        assert!(dialled.is_err(), "a stranger must not connect");
        let at_server = accept.await.unwrap();
        assert!(at_server.is_err());
        assert_eq!(server.stats().refused_tls.load(Ordering::Relaxed), 1);
        assert_eq!(server.stats().handshakes_ok.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let ca = ClusterCa::generate("ours").unwrap();
        let server = pair(&ca, Role::Relay, "relay-0", MeshLimits::default());
        let addr = server.local_addr().unwrap();
        // A client that trusts our CA but has no certificate of its own.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut anon = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        anon.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).unwrap(),
        )));
        let accept = tokio::spawn({
            let server = server.clone();
            async move { server.accept().await.unwrap() }
        });
        let conn = anon.connect(addr, MESH_SERVER_NAME).unwrap().await;
        // TLS 1.3 may finish the client side before the server refuses; any
        // stream attempt must then fail.
        if let Ok(c) = conn {
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                let (mut s, mut r) = c.open_bi().await?;
                s.write_all(b"x").await?;
                s.finish()?;
                r.read_to_end(10).await.map_err(anyhow::Error::from)?;
                anyhow::Ok(())
            })
            .await;
            assert!(!matches!(r, Ok(Ok(()))));
        }
        assert!(accept.await.unwrap().is_err());
        assert_eq!(server.stats().handshakes_ok.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_refused() {
        let ca = ClusterCa::generate("t").unwrap();
        let limits = MeshLimits {
            max_connections: 1,
            ..MeshLimits::default()
        };
        let server = pair(&ca, Role::Relay, "relay-0", limits);
        let addr = server.local_addr().unwrap();
        let a = pair(&ca, Role::Edge, "edge-a", MeshLimits::default());
        let b = pair(&ca, Role::Edge, "edge-b", MeshLimits::default());
        let s2 = server.clone();
        let acceptor = tokio::spawn(async move {
            let first = s2.accept().await.unwrap();
            let second = s2.accept().await.unwrap();
            (first.is_ok(), second.err().map(|e| e.reason()))
        });
        let _keep = a.connect(addr).await.unwrap();
        assert!(b.connect(addr).await.is_err());
        let (first_ok, second) = acceptor.await.unwrap();
        assert!(first_ok);
        assert_eq!(second, Some("connection_limit"));
    }
}
