#![allow(unreachable_pub)] // KubeSchema re-emits each struct inside a private module.
//! The `DcdnCluster` custom resource (`dcdn.io/v1alpha1`).
//!
//! The node-config sections users may set per tier are the node crate's own
//! types, so the CRD schema, the operator's rendering and the node's parser
//! can never disagree about a field, its default or its range.

use dcdn_node::config::{FecSection, P2pSection, QuicSection, StorageSection};
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
    #[serde(default = "http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

impl Default for EdgeServiceSpec {
    fn default() -> Self {
        Self {
            service_type: ServiceType::default(),
            port: http_port(),
        }
    }
}

fn http_port() -> u16 {
    80
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
        assert_eq!(
            spec["x-kubernetes-validations"].as_array().unwrap().len(),
            2
        );
        // Names that would make invalid child names are refused at admission.
        let root = schema["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap_or_default();
        assert!(root.contains("self.metadata.name.size() <= 45"), "{root}");
    }
}
