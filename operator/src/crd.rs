#![allow(unreachable_pub)] // KubeSchema re-emits each struct inside a private module.
//! The `DcdnCluster` custom resource (`dcdn.io/v1alpha1`).
//!
//! The node-config sections users may set per tier are the node crate's own
//! types, so the CRD schema, the operator's rendering and the node's parser
//! can never disagree about a field, its default or its range.

use dcdn_node::config::{Bounded, FecSection, P2pSection, QuicSection, StorageSection};
use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A DCDN: an origin tier, a relay tier and an edge tier, the keys that sign
/// its content, and how it is rolled out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dcdn.io",
    version = "v1alpha1",
    kind = "DcdnCluster",
    namespaced,
    status = "DcdnClusterStatus",
    shortname = "dcdn",
    category = "dcdn",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Edges","type":"string","jsonPath":".status.tiers.edge.ready"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.activeKeyId"}"#,
    printcolumn = r#"{"name":"Rotation","type":"string","jsonPath":".status.rotationPhase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Child names (`{name}-origin-mesh`, pods `{name}-origin-0`, the
    // StatefulSet's revision label `{name}-origin-<10>`) must be DNS-1035
    // labels of at most 63 characters: refused here, with a message, not
    // by a 422 on every apply. `build::Names::of` holds the same rule.
    validation = Rule::new("self.metadata.name.size() <= 45 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be at most 45 characters of a-z, 0-9 and '-', starting with a letter (no dots): it prefixes the names of Services, StatefulSets and pods")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.edge.replicas >= 1 || self.relay.replicas == 0").message("a cluster with relays needs at least one edge"))]
#[x_kube(validation = Rule::new("self.origin.replicas <= 1").message("origin.replicas must be 0 or 1: one origin signs and publishes"))]
#[x_kube(validation = Rule::new("!has(self.relay.tls)").message("relay.tls: relays serve no clients; set edge.tls (client listener) or origin.tls (ingest API)"))]
#[x_kube(validation = Rule::new("!has(self.relay.upstream) && !has(self.edge.upstream)").message("upstream belongs to the origin (spec.origin.upstream): only the origin pulls from it"))]
pub struct DcdnClusterSpec {
    /// The node image, e.g. `dcdn/node:0.1.0` or a digest reference.
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    pub image: String,
    #[serde(default)]
    pub origin: TierSpec,
    #[serde(default)]
    pub relay: TierSpec,
    #[serde(default)]
    pub edge: TierSpec,
    /// How clients reach the edges.
    #[serde(default)]
    pub edge_service: EdgeServiceSpec,
    #[serde(default)]
    pub key_rotation: KeyRotationSpec,
    /// Secret holding the admin token (key `token`) and the origin's ingest
    /// token (key `ingest-token`); generated if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret: Option<String>,
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// The origin of record's disk: a PersistentVolumeClaim per origin pod.
    #[serde(default)]
    pub origin_storage: OriginStorageSpec,
}

/// One tier's pods and the node-config sections it may override.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// Pods in this tier. The origin tier runs 0 or 1.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub config: TierConfig,
    /// HTTPS (HTTP/1.1 and HTTP/2) and HTTP/3 on the tier's client listener:
    /// the edges' HTTP server, the origin's ingest API. Relays have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TierTlsSpec>,
    /// Origin only: the storage the origin fronts (pull-through). A name
    /// the origin does not hold is fetched from here once, signed and kept
    /// on the origin's volume like a publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,
}

/// An HTTP(S) origin or an S3-compatible bucket the origin pulls from;
/// the freshness fields are the node's `origin.upstream` ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.s3)").message("upstream needs exactly one of url and s3"))]
pub struct UpstreamSpec {
    /// HTTP(S) base URL: NAME is fetched from `{url}/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+')").message("url must start with http:// or https:// and a host"))]
    pub url: Option<String>,
    /// An S3-compatible bucket instead: NAME is the object key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3UpstreamSpec>,
    /// How long a fetched object is fresh when the upstream's
    /// `Cache-Control` gives no `s-maxage`/`max-age`, seconds.
    #[serde(default = "dcdn_node::config::default_upstream_ttl")]
    pub default_ttl_secs: Bounded<0, 31536000>,
    /// When revalidation fails, serve the version held instead of a 502.
    #[serde(default)]
    pub serve_stale_if_error: bool,
    /// Deadline for the upstream's response headers, and between two
    /// pieces of its body, milliseconds.
    #[serde(default = "dcdn_node::config::default_upstream_timeout")]
    pub timeout_ms: Bounded<100, 600000>,
    /// Upstream fetches in flight at once.
    #[serde(default = "dcdn_node::config::default_upstream_concurrency")]
    pub max_concurrent: Bounded<1, 1024>,
    /// How long an upstream 404 is remembered (answered without asking
    /// again), seconds; 0 asks every time. A publish is served at once.
    #[serde(default = "dcdn_node::config::default_not_found_ttl")]
    pub not_found_ttl_secs: Bounded<0, 86400>,
    /// Most names remembered as missing upstream.
    #[serde(default = "dcdn_node::config::default_not_found_max_names")]
    pub not_found_max_names: Bounded<1, 10000000>,
}

/// An S3-compatible bucket, read with SigV4-signed GETs (path style).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3UpstreamSpec {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://minio.storage.svc:9000`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+')").message("s3.endpoint must start with http:// or https:// and a host"))]
    pub endpoint: String,
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]*[a-z0-9]$')").message("s3.bucket must be a bucket name: 3-63 characters of a-z, 0-9, '.' and '-'"))]
    pub bucket: String,
    /// The region requests are signed for.
    #[serde(default = "dcdn_node::config::default_s3_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// The Secret (in the cluster's namespace) holding the access key:
    /// mounted read-only into the origin pod only, never put in a ConfigMap.
    pub credentials_secret: S3CredentialsSecret,
}

/// Where the S3 access key is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("credentialsSecret.name must be a Secret name: at most 253 characters of a-z, 0-9, '-' and '.'"))]
    pub name: String,
    /// The key holding the access key id.
    #[serde(default = "access_key_id_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("accessKeyIdKey must be a Secret key"))]
    pub access_key_id_key: String,
    /// The key holding the secret access key.
    #[serde(default = "secret_access_key_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("secretAccessKeyKey must be a Secret key"))]
    pub secret_access_key_key: String,
    /// The key holding a session token, for temporary credentials
    /// (`AWS_SESSION_TOKEN`); none if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("sessionTokenKey must be a Secret key"))]
    pub session_token_key: Option<String>,
}

fn access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_owned()
}

fn secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_owned()
}

fn one() -> u32 {
    1
}

impl Default for TierSpec {
    fn default() -> Self {
        Self {
            replicas: one(),
            resources: None,
            node_selector: BTreeMap::new(),
            affinity: None,
            tolerations: Vec::new(),
            config: TierConfig::default(),
            tls: None,
            upstream: None,
        }
    }
}

/// Most Secrets a tier serves by SNI besides its default one: each is a
/// volume in every pod of the tier.
pub const MAX_SNI_SECRETS: usize = 16;

/// The certificates a tier serves clients with. Each Secret is a
/// `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`), as cert-manager writes
/// them, mounted whole so a renewal reaches the running pods, which reload it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sniSecretNames) || !self.sniSecretNames.exists(n, n == self.secretName)").message("sniSecretNames must not repeat secretName"))]
pub struct TierTlsSpec {
    /// The default certificate's Secret, served to clients that send no
    /// SNI or a name no other certificate covers. With `certificate`, the
    /// Secret cert-manager writes.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secretName must be a Secret name: at most 253 characters of a-z, 0-9, '-' and '.'"))]
    pub secret_name: String,
    /// More certificates' Secrets, each chosen when a client's SNI matches
    /// one of its names (other domains served by the same pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)), extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))").message("sniSecretNames must be Secret names: at most 253 characters of a-z, 0-9, '-' and '.'"))]
    pub sni_secret_names: Vec<String>,
    /// Also serve HTTP/3 over QUIC on UDP at the same port.
    #[serde(default = "yes")]
    pub http3: bool,
    /// A cert-manager `Certificate` the operator creates (and deletes when
    /// this is removed) to issue `secretName`. Needs cert-manager's CRDs;
    /// without them the cluster is `Degraded` and says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSpec>,
}

fn yes() -> bool {
    true
}

/// What cert-manager should issue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub issuer_ref: IssuerRef,
    /// The names the certificate covers (clients' SNI and `Host`).
    #[schemars(length(min = 1, max = 100), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))").message("dnsNames must be lower-case DNS names, optionally starting with '*.'"))]
    pub dns_names: Vec<String>,
}

/// The cert-manager issuer that signs the certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// The issuer's API group; `cert-manager.io` for cert-manager's own,
    /// another for an external issuer.
    #[serde(default = "cert_manager_group")]
    #[schemars(length(max = 253))]
    pub group: String,
}

fn cert_manager_group() -> String {
    "cert-manager.io".to_owned()
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum IssuerKind {
    #[default]
    Issuer,
    ClusterIssuer,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issuer => "Issuer",
            Self::ClusterIssuer => "ClusterIssuer",
        }
    }
}

/// The node-config sections a user may set; each is the node's own type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
pub struct TierConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.min_parity <= self.max_parity && self.default_parity_count <= self.max_parity").message("fec: need min_parity <= default_parity_count <= max_parity"))]
    pub fec: Option<FecSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<P2pSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.keep_alive_ms < self.idle_timeout_ms").message("quic.keep_alive_ms must be below quic.idle_timeout_ms"))]
    pub quic: Option<QuicSection>,
}

/// How clients reach the edges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeServiceSpec {
    #[serde(default, rename = "type")]
    pub service_type: ServiceType,
    /// The plain HTTP port; with `edge.tls` the Service has none.
    #[serde(default = "http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// With `edge.tls`: the HTTPS port (TCP, named `https`) and, with
    /// HTTP/3, the same number over UDP (named `h3`).
    #[serde(default = "https_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub https_port: u16,
}

impl Default for EdgeServiceSpec {
    fn default() -> Self {
        Self {
            service_type: ServiceType::default(),
            port: http_port(),
            https_port: https_port(),
        }
    }
}

fn http_port() -> u16 {
    80
}

fn https_port() -> u16 {
    443
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// Signing-key rotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.periodHours == 0 || self.overlapMinutes * 60 < self.periodHours * 3600").message("overlapMinutes must be shorter than periodHours"))]
pub struct KeyRotationSpec {
    /// Rotate this often; 0 rotates only on the `dcdn.io/rotate-keys` annotation.
    #[serde(default)]
    #[schemars(range(min = 0, max = 8760))]
    pub period_hours: u32,
    /// How long old and new key are both trusted, beyond the chunk TTL.
    #[serde(default = "overlap")]
    #[schemars(range(min = 1, max = 10080))]
    pub overlap_minutes: u32,
    /// Hold a rotation where it is.
    #[serde(default)]
    pub paused: bool,
}

fn overlap() -> u32 {
    10
}

impl Default for KeyRotationSpec {
    fn default() -> Self {
        Self {
            period_hours: 0,
            overlap_minutes: overlap(),
            paused: false,
        }
    }
}

/// The volume each origin pod keeps acknowledged content on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginStorageSpec {
    /// Size of the claim, in `Mi`, `Gi` or `Ti` (e.g. `10Gi`); the origin
    /// accepts publishes up to 95 % of it and refuses (507) beyond. A
    /// StatefulSet's claim templates cannot change in place: on a change
    /// the operator grows the existing claims (if their StorageClass allows
    /// volume expansion; a claim never shrinks) and replaces the origin
    /// StatefulSet, keeping its pods and claims.
    #[serde(default = "origin_storage_size")]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]{0,6}(Mi|Gi|Ti)$')").message("size must be like 512Mi, 10Gi or 1Ti"))]
    pub size: String,
    /// StorageClass of the claim; the cluster's default if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn origin_storage_size() -> String {
    "10Gi".to_owned()
}

impl Default for OriginStorageSpec {
    fn default() -> Self {
        Self {
            size: origin_storage_size(),
            storage_class_name: None,
        }
    }
}

impl OriginStorageSpec {
    /// The claim's size in MiB, if `size` is well formed.
    pub fn mebibytes(&self) -> Option<u64> {
        let (n, unit) = self.size.split_at(self.size.len().checked_sub(2)?);
        let n: u64 = n.parse().ok()?;
        let per = match unit {
            "Mi" => 1,
            "Gi" => 1 << 10,
            "Ti" => 1 << 20,
            _ => return None,
        };
        n.checked_mul(per).filter(|&m| m > 0)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a prometheus-operator ServiceMonitor for every tier.
    #[serde(default)]
    pub service_monitor: bool,
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DcdnClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `KeyRotation`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub tiers: TierStatuses,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_phase: Option<RotationPhase>,
    /// Where a key rotation stands; kept so a restarted operator resumes.
    #[serde(default)]
    pub rotation: RotationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_offload_ratio: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
pub struct TierStatuses {
    #[serde(default)]
    pub origin: TierStatus,
    #[serde(default)]
    pub relay: TierStatus,
    #[serde(default)]
    pub edge: TierStatus,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    pub replicas: u32,
    pub ready: u32,
    pub updated: u32,
}

/// A status condition, Kubernetes style.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// Where a key rotation is; recorded so a restarted operator resumes it.
/// The bookkeeping of key rotation (public key ids and times only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The key being rolled in, from `Staged` until `Retiring` ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_key_id: Option<String>,
    /// When the current phase began (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<String>,
    /// When the last rotation finished (RFC 3339); the schedule counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    /// The last `dcdn.io/rotate-keys` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_trigger: Option<String>,
    /// What the current phase waits for, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum RotationPhase {
    #[default]
    Idle,
    Staged,
    Distributing,
    Activating,
    Draining,
    Retiring,
}

impl RotationPhase {
    pub const ALL: [RotationPhase; 6] = [
        Self::Idle,
        Self::Staged,
        Self::Distributing,
        Self::Activating,
        Self::Draining,
        Self::Retiring,
    ];

    /// The name used in status, events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "Idle",
            Self::Staged => "Staged",
            Self::Distributing => "Distributing",
            Self::Activating => "Activating",
            Self::Draining => "Draining",
            Self::Retiring => "Retiring",
        }
    }
}

/// Parses a `DcdnCluster` manifest, naming the path of a bad field.
pub fn from_yaml(text: &str) -> Result<DcdnCluster, String> {
    let value: serde_json::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

/// The CRD as YAML, as `dcdn-operator crd` prints it and the chart ships it.
pub fn crd_yaml() -> String {
    let crd = DcdnCluster::crd();
    let mut text = String::from("# Generated by `dcdn-operator crd`; do not edit.\n");
    text.push_str(&serde_norway::to_string(&crd).unwrap_or_default());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD the chart ships is the one the types make.
    /// `DCDN_BLESS=1 cargo test -p dcdn-operator crd` rewrites it.
    #[test]
    fn the_committed_crd_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../helm/dcdn/crds/dcdnclusters.dcdn.io.yaml");
        let fresh = crd_yaml();
        if std::env::var_os("DCDN_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{} is stale: run `DCDN_BLESS=1 cargo test -p dcdn-operator crd` and commit it",
            path.display()
        );
    }

    #[test]
    fn a_minimal_resource_gets_the_documented_defaults() {
        let c = from_yaml("kind: DcdnCluster\napiVersion: dcdn.io/v1alpha1\nmetadata: {name: x}\nspec: {image: 'dcdn/node:0.1.0'}\n")
            .unwrap()
            .spec;
        assert_eq!(c.origin.replicas, 1);
        assert_eq!(c.edge.replicas, 1);
        assert_eq!(c.edge_service.port, 80);
        assert_eq!(c.key_rotation.overlap_minutes, 10);
        assert!(c.origin.config.fec.is_none());
    }

    #[test]
    fn the_schema_is_structural_and_carries_ranges_and_rules() {
        let crd = serde_json::to_value(DcdnCluster::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        fn walk(n: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
            match n {
                serde_json::Value::Object(m) => {
                    if m.contains_key("properties") && m.contains_key("additionalProperties") {
                        bad.push(format!("{path}: properties and additionalProperties"));
                    }
                    if m.get("type").is_some_and(|t| t.is_array()) {
                        bad.push(format!("{path}: type is a list"));
                    }
                    if m.contains_key("$ref")
                        || m.contains_key("anyOf") && !m.contains_key("x-kubernetes-int-or-string")
                    {
                        bad.push(format!("{path}: not inlined"));
                    }
                    for (k, v) in m {
                        walk(v, &format!("{path}/{k}"), bad);
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        walk(v, &format!("{path}[{i}]"), bad);
                    }
                }
                _ => {}
            }
        }
        let mut bad = Vec::new();
        walk(schema, "", &mut bad);
        assert!(bad.is_empty(), "not a structural schema: {bad:?}");
        let spec = &schema["properties"]["spec"];
        let fec = &spec["properties"]["relay"]["properties"]["config"]["properties"]["fec"];
        assert_eq!(fec["properties"]["default_block_size"]["maximum"], 256.0);
        assert!(
            fec["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap()
                .contains("min_parity")
        );
        let rules: Vec<&str> = spec["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert_eq!(rules.len(), 4, "{rules:?}");
        assert!(
            rules.contains(&"!has(self.relay.upstream) && !has(self.edge.upstream)"),
            "{rules:?}"
        );
        // Upstream: one of url and s3, credentials by Secret name only.
        let up = &spec["properties"]["origin"]["properties"]["upstream"];
        assert_eq!(
            up["x-kubernetes-validations"][0]["rule"],
            "has(self.url) != has(self.s3)"
        );
        assert_eq!(up["properties"]["defaultTtlSecs"]["default"], 60);
        assert_eq!(up["properties"]["notFoundTtlSecs"]["maximum"], 86400.0);
        let s3 = &up["properties"]["s3"];
        assert_eq!(
            s3["required"],
            serde_json::json!(["bucket", "credentialsSecret", "endpoint"])
        );
        assert_eq!(
            s3["properties"]["credentialsSecret"]["required"],
            serde_json::json!(["name"])
        );
        assert!(rules.contains(&"!has(self.relay.tls)"), "{rules:?}");
        // TLS: Secret names checked at admission, SNI Secrets a bounded set.
        let tls = &spec["properties"]["edge"]["properties"]["tls"];
        assert_eq!(tls["required"], serde_json::json!(["secretName"]));
        assert_eq!(tls["properties"]["http3"]["default"], true);
        let sni = &tls["properties"]["sniSecretNames"];
        assert_eq!(sni["maxItems"], MAX_SNI_SECRETS);
        assert_eq!(sni["x-kubernetes-list-type"], "set");
        assert!(
            tls["properties"]["secretName"]["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap()
                .contains("matches")
        );
        let issuer = &tls["properties"]["certificate"]["properties"]["issuerRef"];
        assert_eq!(
            issuer["properties"]["kind"]["enum"],
            serde_json::json!(["Issuer", "ClusterIssuer"])
        );
        // Names that would make invalid child names are refused at admission.
        let root = schema["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap_or_default();
        assert!(root.contains("self.metadata.name.size() <= 45"), "{root}");
    }
}
