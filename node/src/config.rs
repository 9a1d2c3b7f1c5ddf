//! The node's configuration: one schema, read from TOML or YAML, with
//! `DCDN_*` environment overrides and errors that name the file, the field
//! and the allowed range.
//!
//! Defaults live in one place (the `Default` impls below). Values with bounds
//! are newtypes whose deserialisation refuses anything out of range, so a
//! `NodeConfig` that exists is a valid one; the few rules that span fields
//! are checked in [`NodeConfig::validate`]. The Kubernetes operator renders
//! node configs with this same type, and with the `schema` feature these
//! types describe themselves as JSON Schema for its CRD.
//!
//! Names follow the seed module's `config/dcdn.toml` (`ring_buffer_size_mb`,
//! `chunk_ttl_seconds`, `default_block_size`, `default_parity_count`,
//! `max_upload_mbps`, `unchoke_interval_seconds`, `regular_unchoke_count`,
//! `optimistic_unchoke_count`, ...). Where this differs: the seed's single
//! `max_connections` is split into connections and streams per peer, and
//! timeouts carry their unit in the name (`idle_timeout_ms`).

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is the `#[source]`, not in the message too: `error: {e:#}`
    // printed the OS error twice.
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid {format}: {message}")]
    Syntax {
        path: String,
        format: &'static str,
        message: String,
    },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: String,
        field: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: unknown file type; use .toml, .yaml or .yml")]
    Format { path: String },
}

/// A whole number that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// `value` if it is in range.
    pub fn new(value: u64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be between {MIN} and {MAX}, got {value}"))
        }
    }

    /// For defaults written in this file; out-of-range constants are clamped.
    const fn lit(value: u64) -> Self {
        if value < MIN {
            Self(MIN)
        } else if value > MAX {
            Self(MAX)
        } else {
            Self(value)
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i128::deserialize(d)?;
        let v = u64::try_from(v).map_err(|_| {
            serde::de::Error::custom(format!("must be between {MIN} and {MAX}, got {v}"))
        })?;
        Self::new(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
impl<const MIN: u64, const MAX: u64> schemars::JsonSchema for Bounded<MIN, MAX> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Bounded_{MIN}_{MAX}").into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": MIN, "maximum": MAX })
    }
}

/// A node's role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes content in, signs it, feeds relays.
    Origin,
    /// Fans chunks out to edges and answers repairs.
    Relay,
    /// Caches and serves clients; trades with other edges.
    #[default]
    Edge,
}

impl Role {
    /// Whether a node of this role feeds nodes of role `me`.
    pub fn is_upstream_of(self, me: Role) -> bool {
        matches!(
            (self, me),
            (Role::Origin, Role::Relay) | (Role::Origin, Role::Edge) | (Role::Relay, Role::Edge)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Relay => "relay",
            Role::Edge => "edge",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QUIC congestion controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    #[default]
    Cubic,
    NewReno,
    Bbr,
}

/// Chunk signature algorithm. Only Ed25519 exists today; the field is here so
/// a file states what it expects and a future algorithm is a value, not a
/// format change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum SignatureAlgorithm {
    #[default]
    Ed25519,
}

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// The node's role: `origin`, `relay` or `edge`.
    pub role: Role,
    /// The node's name, as in its certificate; used in logs and metrics.
    pub name: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            role: Role::Edge,
            name: "dcdn-node".into(),
        }
    }
}

/// Where the node listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// UDP address of the QUIC mesh endpoint.
    pub mesh_listen: SocketAddr,
    /// Address other nodes reach this node's mesh endpoint at, if it differs
    /// from `mesh_listen` (e.g. listening on 0.0.0.0).
    pub mesh_advertise: Option<SocketAddr>,
    /// TCP address of the client HTTP server (edges) or ingest API (origins).
    pub http_listen: SocketAddr,
    /// TCP address of the admin API (health, readiness, metrics, keys).
    pub admin_listen: SocketAddr,
    /// An HTTP client must send a request's whole header within this many
    /// milliseconds of starting it (slowloris), on every HTTP listener.
    pub http_header_timeout_ms: Bounded<100, 600000>,
    /// An HTTP connection on which no byte moves either way for this many
    /// milliseconds (a stalled body, upload or reader) is closed.
    pub http_idle_timeout_ms: Bounded<100, 3600000>,
    /// Most simultaneous HTTP connections one client IP may hold on each
    /// listener; more are refused at accept.
    pub http_max_connections_per_ip: Bounded<1, 100000>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            mesh_listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            mesh_advertise: None,
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            http_header_timeout_ms: Bounded::lit(10_000),
            http_idle_timeout_ms: Bounded::lit(30_000),
            http_max_connections_per_ip: Bounded::lit(256),
        }
    }
}

/// How the node finds other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySection {
    /// Upstream nodes (`host:port` of their mesh endpoints): the origin for a
    /// relay, relays (or the origin) for an edge.
    pub upstream: Vec<String>,
    /// A DNS name resolving to every upstream (a headless Service), as
    /// `name:port`; re-resolved every `resolve_interval_seconds`.
    pub upstream_dns: Option<String>,
    /// Other edges to trade with (`host:port`), edges only.
    pub peers: Vec<String>,
    /// A DNS name resolving to every edge, as `name:port`.
    pub peers_dns: Option<String>,
    /// How often DNS names are resolved again, seconds.
    pub resolve_interval_seconds: Bounded<1, 3600>,
    /// Most addresses used from discovery per list.
    pub max_peers: Bounded<1, 10000>,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            upstream: Vec::new(),
            upstream_dns: None,
            peers: Vec::new(),
            peers_dns: None,
            resolve_interval_seconds: Bounded::lit(10),
            max_peers: Bounded::lit(64),
        }
    }
}

/// QUIC transport settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct QuicSection {
    /// Most simultaneous mesh connections; more are refused.
    pub max_connections: Bounded<1, 100000>,
    /// Most concurrent request streams one peer may open.
    pub max_streams_per_peer: Bounded<1, 10000>,
    /// Congestion controller: `cubic` (default), `newreno` or `bbr`. On
    /// links with heavy random loss prefer `bbr`, which does not read loss
    /// as congestion: at 30 % packet loss it moved an object 13x faster.
    pub congestion: Congestion,
    /// A connection silent this long is closed, milliseconds. This is how
    /// fast a crashed upstream is noticed and live push fails over, so keep
    /// it a few keep-alives long.
    pub idle_timeout_ms: Bounded<1000, 600000>,
    /// A handshake not finished in this time fails, milliseconds.
    pub handshake_timeout_ms: Bounded<100, 60000>,
    /// Keep-alive ping interval, milliseconds (must be below the idle timeout).
    pub keep_alive_ms: Bounded<100, 300000>,
    /// UDP socket send and receive buffers, KiB. Small buffers drop datagrams
    /// on bursts, which QUIC mistakes for an MTU black hole.
    pub socket_buffer_kb: Bounded<64, 65536>,
}

impl Default for QuicSection {
    fn default() -> Self {
        Self {
            max_connections: Bounded::lit(1024),
            max_streams_per_peer: Bounded::lit(256),
            congestion: Congestion::Cubic,
            idle_timeout_ms: Bounded::lit(6_000),
            handshake_timeout_ms: Bounded::lit(10_000),
            keep_alive_ms: Bounded::lit(1_000),
            socket_buffer_kb: Bounded::lit(4096),
        }
    }
}

/// The chunk store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Bytes of chunks held in memory, MiB; oldest chunks are evicted first.
    pub ring_buffer_size_mb: Bounded<1, 1048576>,
    /// How long a chunk is kept and served, seconds; also bounds how old a
    /// chunk may be when it arrives.
    pub chunk_ttl_seconds: Bounded<1, 2592000>,
    /// Memory for half-rebuilt FEC groups, MiB; oldest are dropped past it.
    pub reassembly_memory_mb: Bounded<1, 4096>,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            ring_buffer_size_mb: Bounded::lit(512),
            chunk_ttl_seconds: Bounded::lit(3600),
            reassembly_memory_mb: Bounded::lit(32),
        }
    }
}

/// Reed–Solomon forward error correction on the push path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct FecSection {
    /// Data shards per FEC group (k).
    pub default_block_size: Bounded<1, 256>,
    /// Parity shards per group (m) when not adapting, and the starting value.
    pub default_parity_count: Bounded<0, 128>,
    /// Adapt parity per link to the loss its receiver reports.
    pub adaptive: bool,
    /// Least parity when adapting.
    pub min_parity: Bounded<0, 128>,
    /// Most parity when adapting.
    pub max_parity: Bounded<0, 128>,
    /// A group not rebuilt this long after its first shard is given up (and
    /// repaired over a stream), milliseconds.
    pub reassembly_timeout_ms: Bounded<10, 60000>,
}

impl Default for FecSection {
    fn default() -> Self {
        Self {
            default_block_size: Bounded::lit(16),
            default_parity_count: Bounded::lit(4),
            adaptive: true,
            min_parity: Bounded::lit(1),
            max_parity: Bounded::lit(16),
            reassembly_timeout_ms: Bounded::lit(2000),
        }
    }
}

/// Edge-to-edge trading (BitTorrent's tit-for-tat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    /// Upload budget shared among unchoked peers, Mbit/s.
    pub max_upload_mbps: Bounded<1, 400000>,
    /// Download budget, Mbit/s.
    pub max_download_mbps: Bounded<1, 400000>,
    /// How often the choker re-ranks peers, seconds.
    pub unchoke_interval_seconds: Bounded<1, 300>,
    /// Peers unchoked for what they give back.
    pub regular_unchoke_count: Bounded<0, 64>,
    /// Peers unchoked at random to discover better partners.
    pub optimistic_unchoke_count: Bounded<0, 16>,
    /// Window over which give-and-take is measured, seconds.
    pub rate_window_seconds: Bounded<1, 600>,
    /// Edges swarm: the first client request for an object (or a preheat)
    /// makes an edge pull the whole object, trading pieces with its
    /// neighbours. `false`: an edge fetches only what its clients read (with
    /// read-ahead), and refuses preheats.
    pub swarm: bool,
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            max_upload_mbps: Bounded::lit(1000),
            max_download_mbps: Bounded::lit(1000),
            unchoke_interval_seconds: Bounded::lit(10),
            regular_unchoke_count: Bounded::lit(4),
            optimistic_unchoke_count: Bounded::lit(1),
            rate_window_seconds: Bounded::lit(20),
            swarm: true,
        }
    }
}

/// Signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CryptoSection {
    /// Chunk signature algorithm; `ed25519`.
    pub signature_algorithm: SignatureAlgorithm,
    /// How often the operator rotates the signing key, hours; 0 = only on
    /// request.
    pub key_rotation_period_hours: Bounded<0, 87600>,
    /// Secret signing key files (origins only), hex seed, mode 0600. The
    /// trust bundle's active key must be among them.
    pub signing_keys: Vec<PathBuf>,
    /// Trust bundle (JSON: public keys and their states); re-read on SIGHUP
    /// and when it changes.
    pub trust_bundle: PathBuf,
    /// How far a chunk's timestamp may be ahead of this node's clock, ms.
    pub max_clock_skew_ms: Bounded<0, 600000>,
    /// Sequence numbers remembered per stream against replays.
    pub replay_window: Bounded<64, 1048576>,
}

impl Default for CryptoSection {
    fn default() -> Self {
        Self {
            signature_algorithm: SignatureAlgorithm::Ed25519,
            key_rotation_period_hours: Bounded::lit(0),
            signing_keys: Vec::new(),
            trust_bundle: PathBuf::from("/etc/dcdn/keys/trust-bundle.json"),
            max_clock_skew_ms: Bounded::lit(5000),
            replay_window: Bounded::lit(4096),
        }
    }
}

/// Mesh certificates (mTLS from the cluster CA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The cluster CA certificate (PEM); peers must present certificates it signed.
    pub ca_cert: PathBuf,
    /// This node's certificate chain (PEM).
    pub node_cert: PathBuf,
    /// This node's private key (PEM, PKCS#8).
    pub node_key: PathBuf,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca_cert: PathBuf::from("/etc/dcdn/tls/ca.pem"),
            node_cert: PathBuf::from("/etc/dcdn/tls/node.pem"),
            node_key: PathBuf::from("/etc/dcdn/tls/node.key"),
        }
    }
}

/// Content ingest (origins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    /// Size objects are cut into, KiB; live pieces larger than this are split.
    pub chunk_size_kb: Bounded<1, 4096>,
    /// Largest object accepted, MiB.
    pub max_object_mb: Bounded<1, 1048576>,
    /// File holding the bearer token publishers present (or set
    /// `DCDN_INGEST_TOKEN`).
    pub ingest_token_file: Option<PathBuf>,
    /// `Cache-Control` edges answer with for an object published without
    /// one. The default makes clients revalidate (cheap: a 304), so a
    /// re-publish is seen at once; publishers of immutable names can send
    /// `public, max-age=31536000, immutable` with the PUT.
    pub cache_control: String,
    /// Directory of the origin of record: every acknowledged object version
    /// is kept here (synced before the 201) and survives restarts; a
    /// publish that would not fit is refused with 507, nothing is evicted.
    /// Unset, the origin keeps objects only in its memory store, which
    /// evicts — for trying things out, not for content you need to keep.
    pub store_dir: Option<PathBuf>,
    /// Capacity of `store_dir`, MiB.
    pub store_capacity_mb: Bounded<1, 1073741824>,
    /// Where the origin fetches an object it does not hold (pull-through):
    /// an HTTP origin or an S3-compatible bucket. Needs `store_dir`.
    pub upstream: Option<UpstreamSection>,
}

/// An origin's upstream: the storage users already have. A request for a
/// name the origin does not hold is fetched from here once, signed and
/// kept as a version; it is revalidated (`If-None-Match` /
/// `If-Modified-Since`) when its freshness runs out, and a changed object
/// becomes a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// HTTP(S) base URL: NAME is fetched from `{url}/NAME`.
    #[serde(default)]
    pub url: Option<String>,
    /// An S3-compatible bucket instead: NAME is the object key.
    #[serde(default)]
    pub s3: Option<S3Section>,
    /// How long a fetched object is fresh when the upstream's
    /// `Cache-Control` gives no `s-maxage`/`max-age`, seconds; `no-cache`,
    /// `no-store` and `private` mean 0 (revalidate on every request that
    /// reaches the origin).
    #[serde(default = "default_upstream_ttl")]
    pub default_ttl_secs: Bounded<0, 31536000>,
    /// When revalidation fails (upstream unreachable, 5xx), serve the
    /// version held instead of answering 502. Off: a stale copy is never
    /// passed off as current.
    #[serde(default)]
    pub serve_stale_if_error: bool,
    /// Deadline for the upstream's response headers, and between two
    /// pieces of its body, milliseconds.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_ms: Bounded<100, 600000>,
    /// Upstream fetches in flight at once; more wait up to `timeout_ms`,
    /// then get 502.
    #[serde(default = "default_upstream_concurrency")]
    pub max_concurrent: Bounded<1, 1024>,
    /// How long a name the upstream answered 404 for is answered 404 at
    /// once, without asking the upstream again, seconds; 0 asks every
    /// time. A publish of the name (PUT) is served at once regardless.
    #[serde(default = "default_not_found_ttl")]
    pub not_found_ttl_secs: Bounded<0, 86400>,
    /// Most names remembered as missing upstream; past it the oldest go
    /// (and are asked about again).
    #[serde(default = "default_not_found_max_names")]
    pub not_found_max_names: Bounded<1, 10000000>,
}

/// `origin.upstream.default_ttl_secs` when unset.
pub fn default_upstream_ttl() -> Bounded<0, 31536000> {
    Bounded::lit(60)
}
/// `origin.upstream.timeout_ms` when unset.
pub fn default_upstream_timeout() -> Bounded<100, 600000> {
    Bounded::lit(10000)
}
/// `origin.upstream.max_concurrent` when unset.
pub fn default_upstream_concurrency() -> Bounded<1, 1024> {
    Bounded::lit(16)
}
/// `origin.upstream.not_found_ttl_secs` when unset.
pub fn default_not_found_ttl() -> Bounded<0, 86400> {
    Bounded::lit(10)
}
/// `origin.upstream.not_found_max_names` when unset.
pub fn default_not_found_max_names() -> Bounded<1, 10000000> {
    Bounded::lit(65536)
}

/// An S3-compatible bucket, read with SigV4-signed `GET`s (path style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://minio:9000`.
    pub endpoint: String,
    pub bucket: String,
    /// The region requests are signed for.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// File holding the access key id (or `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key (or `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// File holding a session token, for temporary credentials (or
    /// `AWS_SESSION_TOKEN`); read again with the key before each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_file: Option<PathBuf>,
}

/// `origin.upstream.s3.region` when unset.
pub fn default_s3_region() -> String {
    "us-east-1".to_owned()
}

impl Default for OriginSection {
    fn default() -> Self {
        Self {
            chunk_size_kb: Bounded::lit(256),
            max_object_mb: Bounded::lit(65536),
            ingest_token_file: None,
            cache_control: "public, no-cache".to_owned(),
            store_dir: None,
            store_capacity_mb: Bounded::lit(10240),
            upstream: None,
        }
    }
}

/// A `Cache-Control` value a manifest may carry: 1–255 bytes of visible
/// ASCII and spaces (what a header value allows and a manifest field holds).
pub fn check_cache_control(value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > crate::chunk::wire::MAX_NAME_LEN
        || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(format!(
            "cache control {value:?} must be 1-255 characters of visible ASCII"
        ));
    }
    Ok(())
}

/// Live video (HLS, DASH): the window each node keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LiveSection {
    /// DVR window, seconds: a segment published longer ago than this is
    /// dropped (manifest and chunks) at every node, so a 24/7 stream runs
    /// in bounded memory. Players can seek back this far.
    pub dvr_window_seconds: Bounded<2, 86400>,
    /// Live streams a node tracks at once; a new stream past this is
    /// refused at the origin and not tracked elsewhere.
    pub max_streams: Bounded<1, 4096>,
    /// Segments a node keeps per stream, whatever the window says: the
    /// bound when a publisher sends many tiny segments.
    pub max_segments_per_stream: Bounded<4, 65536>,
    /// LL-HLS requests an edge holds at once (blocking playlist reloads
    /// and preload-hinted parts waiting for their bytes); one past this is
    /// answered 503 and counted.
    pub max_held_requests: Bounded<1, 100000>,
    /// The same bound per stream, so one busy stream cannot take every
    /// slot.
    pub max_held_per_stream: Bounded<1, 100000>,
}

impl Default for LiveSection {
    fn default() -> Self {
        Self {
            dvr_window_seconds: Bounded::lit(120),
            max_streams: Bounded::lit(64),
            max_segments_per_stream: Bounded::lit(2048),
            max_held_requests: Bounded::lit(4096),
            max_held_per_stream: Bounded::lit(1024),
        }
    }
}

/// HTTPS for clients: when this section is present, the client listener of
/// an edge and the ingest listener of an origin (`network.http_listen`)
/// serve TLS only (HTTP/2 and HTTP/1.1 by ALPN), and HTTP/3 on UDP at the
/// same port number if `http3` is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct HttpTlsSection {
    /// Directories that each hold `tls.crt` (the chain, PEM) and `tls.key`
    /// (PEM): a Kubernetes TLS Secret mounted as it is, so cert-manager
    /// certificates work. The first is the default certificate; the others
    /// are chosen by SNI from their DNS names (SANs).
    pub cert_dirs: Vec<PathBuf>,
    /// Also serve HTTP/3 over QUIC on UDP at `network.http_listen`'s port,
    /// advertised to TCP clients with `Alt-Svc`.
    pub http3: bool,
    /// How often the certificate files are checked for a change, seconds: a
    /// change is loaded for new connections (open ones finish on the old
    /// certificate); a file that does not load is refused and the old
    /// certificate kept.
    pub reload_interval_seconds: Bounded<1, 86400>,
}

impl Default for HttpTlsSection {
    fn default() -> Self {
        Self {
            cert_dirs: vec![PathBuf::from("/etc/dcdn/http-tls/default")],
            http3: true,
            reload_interval_seconds: Bounded::lit(10),
        }
    }
}

/// The admin API's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// File holding the admin-scope bearer token (or `DCDN_ADMIN_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// File holding the read-scope bearer token (or `DCDN_ADMIN_READ_TOKEN`).
    pub read_token_file: Option<PathBuf>,
}

/// A node's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub network: NetworkSection,
    pub discovery: DiscoverySection,
    pub quic: QuicSection,
    pub storage: StorageSection,
    pub fec: FecSection,
    pub p2p: P2pSection,
    pub crypto: CryptoSection,
    pub tls: TlsSection,
    /// HTTPS (and HTTP/3) on the client or ingest listener; absent: plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls: Option<HttpTlsSection>,
    pub origin: OriginSection,
    pub live: LiveSection,
    pub admin: AdminSection,
}

/// File formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    pub fn of_path(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Some(Self::Toml),
            Some("yaml" | "yml") => Some(Self::Yaml),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Toml => "TOML",
            Self::Yaml => "YAML",
        }
    }
}

/// `DCDN_` variables that are not config-field overrides.
pub const RESERVED_ENV: &[&str] = &[
    "DCDN_LOG",
    "DCDN_LOG_FORMAT",
    "DCDN_CONFIG",
    "DCDN_ADMIN_TOKEN",
    "DCDN_ADMIN_READ_TOKEN",
    "DCDN_INGEST_TOKEN",
    "DCDN_CACERT",
];

impl NodeConfig {
    /// Loads `path` (TOML or YAML by extension) with overrides from `env`.
    pub fn from_file<I, K, V>(path: &Path, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let shown = path.display().to_string();
        let format = Format::of_path(path).ok_or(ConfigError::Format {
            path: shown.clone(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, format, &shown, env)
    }

    /// Parses `text`; `origin` names it in errors.
    pub fn parse<I, K, V>(
        text: &str,
        format: Format,
        origin: &str,
        env: I,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let syntax = |message: String| ConfigError::Syntax {
            path: origin.to_owned(),
            format: format.name(),
            message,
        };
        let mut value: serde_json::Value = match format {
            Format::Toml => {
                let table: toml::Table = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
                serde_json::to_value(table).map_err(|e| syntax(e.to_string()))?
            }
            Format::Yaml => {
                if text.trim().is_empty() {
                    serde_json::Value::Object(serde_json::Map::new())
                } else {
                    serde_norway::from_str(text).map_err(|e| syntax(e.to_string()))?
                }
            }
        };
        if value.is_null() {
            value = serde_json::Value::Object(serde_json::Map::new());
        }
        apply_env(&mut value, env)?;
        let config: NodeConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Field {
                path: origin.to_owned(),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Rules that span fields.
    pub fn validate(&self) -> Result<(), String> {
        check_cache_control(&self.origin.cache_control)
            .map_err(|e| format!("origin.cache_control: {e}"))?;
        if let Some(up) = &self.origin.upstream {
            let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
            match (&up.url, &up.s3) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err("origin.upstream needs exactly one of url and s3".into());
                }
                (Some(u), None) if !url_ok(u) => {
                    return Err(format!(
                        "origin.upstream.url {u:?} must start with http:// or https://"
                    ));
                }
                (None, Some(s3)) if !url_ok(&s3.endpoint) => {
                    return Err(format!(
                        "origin.upstream.s3.endpoint {:?} must start with http:// or https://",
                        s3.endpoint
                    ));
                }
                (None, Some(s3)) if s3.bucket.is_empty() || s3.bucket.contains('/') => {
                    return Err(format!(
                        "origin.upstream.s3.bucket {:?} must be a bucket name",
                        s3.bucket
                    ));
                }
                _ => {}
            }
            if self.origin.store_dir.is_none() {
                // What was pulled must stay readable chunk by chunk for as
                // long as edges may ask; the memory store would evict it.
                return Err("origin.upstream needs origin.store_dir".into());
            }
        }
        let f = &self.fec;
        if f.min_parity > f.max_parity {
            return Err(format!(
                "fec.min_parity ({}) must not exceed fec.max_parity ({})",
                f.min_parity.get(),
                f.max_parity.get()
            ));
        }
        if !(f.min_parity..=f.max_parity).contains(&f.default_parity_count) {
            return Err(format!(
                "fec.default_parity_count ({}) must be between fec.min_parity ({}) and fec.max_parity ({})",
                f.default_parity_count.get(),
                f.min_parity.get(),
                f.max_parity.get()
            ));
        }
        let shards = f.default_block_size.get() + f.max_parity.get();
        let limit = u64::from(crate::chunk::wire::MAX_SHARDS_PER_GROUP);
        if shards > limit {
            return Err(format!(
                "fec.default_block_size + fec.max_parity is {shards}; at most {limit} shards fit a group"
            ));
        }
        if self.quic.keep_alive_ms.get() >= self.quic.idle_timeout_ms.get() {
            return Err(format!(
                "quic.keep_alive_ms ({}) must be below quic.idle_timeout_ms ({})",
                self.quic.keep_alive_ms.get(),
                self.quic.idle_timeout_ms.get()
            ));
        }
        let p = &self.p2p;
        if p.regular_unchoke_count.get() + p.optimistic_unchoke_count.get() == 0 {
            return Err(
                "p2p.regular_unchoke_count + p2p.optimistic_unchoke_count must be at least 1"
                    .into(),
            );
        }
        if self.origin.chunk_size_kb.get() * 1024 > u64::from(crate::chunk::MAX_CHUNK_LEN) {
            return Err(format!(
                "origin.chunk_size_kb must be at most {} KiB",
                crate::chunk::MAX_CHUNK_LEN / 1024
            ));
        }
        if self.node.name.is_empty() || self.node.name.len() > crate::chunk::wire::MAX_NAME_LEN {
            return Err(format!(
                "node.name must be 1 to {} characters",
                crate::chunk::wire::MAX_NAME_LEN
            ));
        }
        if let Some(t) = &self.http_tls {
            if t.cert_dirs.is_empty() {
                return Err(
                    "http_tls.cert_dirs must name at least one directory (with tls.crt and tls.key)"
                        .into(),
                );
            }
            if self.node.role == Role::Relay {
                return Err("http_tls: a relay has no HTTP listener to serve TLS on".into());
            }
        }
        for (field, v) in [
            ("discovery.upstream_dns", &self.discovery.upstream_dns),
            ("discovery.peers_dns", &self.discovery.peers_dns),
        ] {
            if let Some(v) = v {
                split_host_port(v).map_err(|e| format!("{field}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Rules for a config a node will run, on top of `validate`: an edge or
    /// relay must name an upstream (`discovery.upstream` or
    /// `discovery.upstream_dns`), or it serves nothing and waits forever.
    ///
    /// Not part of `validate`, on purpose: the default config (an edge with
    /// no upstream) must stay valid as a template, since the operator
    /// validates it before filling in the upstream Service, and partial
    /// configs are layered under environment overrides. `dcdn config check`
    /// judges the file a node will actually get, so it applies this too.
    pub fn validate_runnable(&self) -> Result<(), String> {
        self.validate()?;
        let needs_upstream = matches!(self.node.role, Role::Edge | Role::Relay);
        if needs_upstream
            && self.discovery.upstream.is_empty()
            && self.discovery.upstream_dns.is_none()
        {
            return Err(format!(
                "an {} needs an upstream: set discovery.upstream or discovery.upstream_dns",
                self.node.role.as_str()
            ));
        }
        Ok(())
    }

    /// BLAKE3 of the canonical JSON form, hex: equal configs hash equal.
    pub fn config_hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&bytes).to_hex()[..16].to_owned()
    }

    /// The config as TOML, for `dcdn config check` and rendered files.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Splits `name:port`.
pub fn split_host_port(v: &str) -> Result<(String, u16), String> {
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| format!("{v:?} must be name:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{v:?}: port must be 0-65535"))?;
    if host.is_empty() {
        return Err(format!("{v:?}: the name is empty"));
    }
    Ok((host.to_owned(), port))
}

/// Applies `DCDN_<SECTION>_<FIELD>` overrides. A value is read as JSON when
/// it parses as JSON (numbers, booleans, `["a","b"]`), else as a string; a
/// list field also takes a comma-separated string.
fn apply_env<I, K, V>(value: &mut serde_json::Value, env: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let defaults = serde_json::to_value(NodeConfig::default()).unwrap_or_default();
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in env {
        let k = k.as_ref();
        if k.starts_with("DCDN_") && !RESERVED_ENV.contains(&k) {
            overrides.insert(k.to_owned(), v.as_ref().to_owned());
        }
    }
    let Some(sections) = defaults.as_object() else {
        return Ok(());
    };
    for (var, raw) in overrides {
        let rest = var["DCDN_".len()..].to_ascii_lowercase();
        let Some((section, field)) = sections.keys().find_map(|s| {
            rest.strip_prefix(&format!("{s}_"))
                .map(|f| (s.clone(), f.to_owned()))
        }) else {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "not a config override (sections: {}; reserved: {})",
                    sections.keys().cloned().collect::<Vec<_>>().join(", "),
                    RESERVED_ENV.join(", ")
                ),
            });
        };
        let Some(default_field) = sections[&section].get(&field) else {
            return Err(ConfigError::Env {
                var,
                message: format!("section `{section}` has no field `{field}`"),
            });
        };
        let parsed = if default_field.is_array() && !raw.trim_start().starts_with('[') {
            serde_json::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| serde_json::Value::String(s.to_owned()))
                    .collect(),
            )
        } else if default_field.is_string() || default_field.is_null() && !raw.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(&raw)
                .ok()
                .filter(|v| v.is_string())
                .unwrap_or(serde_json::Value::String(raw.clone()))
        } else {
            serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw.clone()))
        };
        let root = value.as_object_mut().ok_or_else(|| ConfigError::Env {
            var: var.clone(),
            message: "the config file's top level is not a table".into(),
        })?;
        let sec = root
            .entry(section.clone())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        match sec.as_object_mut() {
            Some(m) => {
                m.insert(field, parsed);
            }
            None => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("`{section}` in the file is not a table"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn toml(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Format::Toml, "test.toml", NO_ENV)
    }

    #[test]
    fn empty_file_gives_valid_defaults() {
        let c = toml("").unwrap();
        assert_eq!(c, NodeConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn out_of_range_values_name_file_field_and_range() {
        let e = toml("[storage]\nchunk_ttl_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml"), "{e}");
        assert!(e.contains("storage.chunk_ttl_seconds"), "{e}");
        assert!(e.contains("between 1 and 2592000, got 0"), "{e}");
        let e = toml("[fec]\ndefault_block_size = -3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fec.default_block_size") && e.contains("got -3"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_and_sections_are_refused_by_name() {
        let e = toml("[storage]\nring_buffer_mb = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ring_buffer_mb"), "{e}");
        let e = toml("[storrage]\n").unwrap_err().to_string();
        assert!(e.contains("storrage"), "{e}");
    }

    #[test]
    fn cross_field_rules_are_checked() {
        let e = toml("[fec]\nmin_parity = 5\nmax_parity = 2\ndefault_parity_count = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fec.min_parity"), "{e}");
        let e = toml("[quic]\nkeep_alive_ms = 40000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("quic.keep_alive_ms"), "{e}");
        let e = toml("[discovery]\nupstream_dns = \"no-port\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("discovery.upstream_dns"), "{e}");
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let c = NodeConfig::parse(
            "[storage]\nchunk_ttl_seconds = 60\n[node]\nrole = \"relay\"\n",
            Format::Toml,
            "t.toml",
            [
                ("DCDN_STORAGE_CHUNK_TTL_SECONDS", "30"),
                ("DCDN_NODE_ROLE", "edge"),
                ("DCDN_DISCOVERY_UPSTREAM", "a:1, b:2"),
                ("DCDN_FEC_ADAPTIVE", "false"),
                ("DCDN_NETWORK_MESH_ADVERTISE", "127.0.0.1:9"),
                ("DCDN_LOG", "debug"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.storage.chunk_ttl_seconds.get(), 30);
        assert_eq!(c.node.role, Role::Edge);
        assert_eq!(c.discovery.upstream, vec!["a:1", "b:2"]);
        assert!(!c.fec.adaptive);
        assert_eq!(
            c.network.mesh_advertise,
            Some("127.0.0.1:9".parse().unwrap())
        );
    }

    #[test]
    fn bad_or_unknown_env_overrides_are_errors_naming_the_variable() {
        let e = NodeConfig::parse("", Format::Toml, "t", [("DCDN_STORAGE_TTL", "5")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DCDN_STORAGE_TTL") && e.contains("no field `ttl`"),
            "{e}"
        );
        let e = NodeConfig::parse("", Format::Toml, "t", [("DCDN_FOO", "5")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("DCDN_FOO"), "{e}");
        let e = NodeConfig::parse(
            "",
            Format::Toml,
            "t",
            [("DCDN_STORAGE_CHUNK_TTL_SECONDS", "abc")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("storage.chunk_ttl_seconds"), "{e}");
    }

    #[test]
    fn toml_and_yaml_share_one_schema() {
        let t =
            toml("[node]\nrole = \"origin\"\nname = \"o1\"\n[fec]\nadaptive = false\n").unwrap();
        let y = NodeConfig::parse(
            "node:\n  role: origin\n  name: o1\nfec:\n  adaptive: false\n",
            Format::Yaml,
            "t.yaml",
            NO_ENV,
        )
        .unwrap();
        assert_eq!(t, y);
        assert_eq!(t.config_hash(), y.config_hash());
        assert_ne!(t.config_hash(), NodeConfig::default().config_hash());
    }

    #[test]
    fn rendered_toml_parses_back_to_the_same_config() {
        let mut c = NodeConfig::default();
        c.discovery.upstream = vec!["relay-0:7400".into()];
        c.crypto.signing_keys = vec!["/k/a.key".into()];
        c.origin.ingest_token_file = Some("/t".into());
        assert_eq!(toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn the_example_files_are_complete_valid_and_equal() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        let t = NodeConfig::from_file(&dir.join("dcdn.toml"), NO_ENV).unwrap();
        let y = NodeConfig::from_file(&dir.join("dcdn.yaml"), NO_ENV).unwrap();
        assert_eq!(t, y);
        // Every field is written out in the example: rendering it back gives
        // no field the file lacked.
        let text = std::fs::read_to_string(dir.join("dcdn.toml")).unwrap();
        let defaults = serde_json::to_value(NodeConfig::default()).unwrap();
        for (section, fields) in defaults.as_object().unwrap() {
            assert!(
                text.contains(&format!("[{section}]")),
                "example lacks [{section}]"
            );
            for field in fields.as_object().unwrap().keys() {
                assert!(
                    text.contains(&format!("{field} =")) || text.contains(&format!("# {field} =")),
                    "example lacks {section}.{field}"
                );
            }
        }
    }
}
