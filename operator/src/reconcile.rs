//! One reconcile pass: validate → read key state → rotate → build → apply
//! (tier-gated) → prune → status.
//!
//! Writes are skipped when the live object already carries the hash of
//! what would be applied and every field the operator sets still has its
//! value, so a pass over an unchanged cluster writes nothing and a
//! `kubectl scale` or edit of an owned object is put back by the next pass. Every object is server-side applied by the `dcdn-operator`
//! field manager with a controller owner reference to the `DcdnCluster`,
//! so deleting the resource deletes everything (garbage collection), and
//! fields other managers own (`kubectl rollout restart`'s annotation) stay.

use crate::build::{self, BuildError, MANAGED_BY, Names, TEMPLATE_HASH_ANNOTATION, TIERS};
use crate::crd::{Condition, DcdnCluster, DcdnClusterStatus, RotationPhase, TierStatus};
use crate::keys::{AdminTokens, KeyError, MeshCa, SigningKeys};
use crate::metrics::Metrics;
use crate::node_admin::{NodeAdmin, NodeTarget};
use crate::rotation::{self, PodReport, TRIGGER_ANNOTATION};
use dcdn_node::config::Role;
use dcdn_node::crypto::{KeyRing, TrustBundle};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PropagationPolicy,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const FIELD_MANAGER: &str = "dcdn-operator";
/// Hash of what the operator last applied to an object.
pub const APPLIED_HASH_ANNOTATION: &str = "dcdn.io/applied-hash";
/// Annotation on a `DcdnCluster`: `off` lets every tier take its new pod
/// template at once, bypassing the tier order (the escape hatch).
pub const ROLLOUT_GATE_ANNOTATION: &str = "dcdn.io/rollout-gate";
/// Requeue while something is in motion (rollout, rotation).
const BUSY_REQUEUE: Duration = Duration::from_secs(10);
/// Requeue while key material (a user's token Secret) is missing or bad.
const KEY_REQUEUE: Duration = Duration::from_secs(30);
/// Requeue at rest: drift and the rotation schedule are checked this often.
const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// Largest number of clusters whose failure counts are remembered.
const MAX_BACKOFF_ENTRIES: usize = 10_000;

/// Why a pass failed. Each variant is a `reason` label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid DcdnCluster: {0}")]
    InvalidSpec(#[from] BuildError),
    #[error("key material: {0}")]
    Keys(#[from] KeyError),
    #[error("key rotation: {0}")]
    Rotation(#[from] rotation::RotationError),
    #[error("{context}: {source}")]
    Api {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Precondition(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Keys(_) => "keys",
            Error::Rotation(_) => "rotation",
            Error::Api { .. } => "api",
            Error::Precondition(_) => "precondition",
        }
    }
}

fn api_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |source| Error::Api { context, source }
}

/// Shared by every pass.
pub struct Context<A: NodeAdmin> {
    pub client: kube::Client,
    pub admin: A,
    pub metrics: Metrics,
    pub recorder: Option<Recorder>,
    /// The clock; tests move it to drive time-based phases.
    pub clock: Box<dyn Fn() -> Timestamp + Send + Sync>,
    /// Consecutive failures per cluster, for backoff.
    failures: parking_lot::Mutex<HashMap<String, u32>>,
}

impl<A: NodeAdmin> std::fmt::Debug for Context<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl<A: NodeAdmin> Context<A> {
    pub fn new(client: kube::Client, admin: A, metrics: Metrics) -> Self {
        Self {
            client,
            admin,
            metrics,
            recorder: None,
            clock: Box::new(Timestamp::now),
            failures: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

/// The kinds the operator applies and prunes (Secrets are handled by name:
/// the operator may not list them).
fn pruned_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
    ]
}

/// cert-manager's `Certificate`, for tiers with `tls.certificate`.
fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// The API resource of an object the builders made.
fn resource_of(obj: &Value) -> ApiResource {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or_default();
    if kind == "ServiceMonitor" {
        return service_monitor_resource();
    }
    if kind == "Certificate" {
        return certificate_resource();
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn selector(names: &Names) -> String {
    format!(
        "app.kubernetes.io/instance={},{}={}",
        names.cluster, MANAGED_BY.0, MANAGED_BY.1
    )
}

/// Whether cert-manager's `Certificate` API can be used, as listing it
/// answered: the API server serves a resource exactly when its CRD is
/// installed (404 otherwise), so the list the pruning needs anyway is also
/// the discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertManager {
    Installed,
    /// No `certificates.cert-manager.io/v1` (404).
    Absent,
    /// RBAC does not let the operator read them (403).
    Forbidden,
}

/// What the cluster looks like before this pass writes anything.
struct Live {
    /// (kind, name) → the object and its API resource, for every listed kind.
    objects: BTreeMap<(String, String), (ApiResource, DynamicObject)>,
    cert_manager: CertManager,
    stateful_sets: BTreeMap<Role, StatefulSet>,
    pods: Vec<Pod>,
}

async fn read_live(client: &kube::Client, names: &Names) -> Result<Live, Error> {
    let lp = ListParams::default().labels(&selector(names));
    let mut objects = BTreeMap::new();
    let mut kinds = pruned_kinds();
    // Listed whether or not monitoring (or a Certificate) is asked for, so
    // one turned off is pruned.
    kinds.push(service_monitor_resource());
    kinds.push(certificate_resource());
    let mut cert_manager = CertManager::Installed;
    for ar in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &names.namespace, &ar);
        let list = match api.list(&lp).await {
            Ok(l) => l,
            // The ServiceMonitor or Certificate CRD may not be installed
            // (404) or the operator not allowed to read them (403): nothing
            // to prune then, and applying one, if asked, says so in Degraded.
            Err(kube::Error::Api(s))
                if (s.code == 404 || s.code == 403)
                    && (ar.kind == "ServiceMonitor" || ar.kind == "Certificate") =>
            {
                if ar.kind == "Certificate" {
                    cert_manager = if s.code == 404 {
                        CertManager::Absent
                    } else {
                        CertManager::Forbidden
                    };
                }
                continue;
            }
            Err(e) => return Err(api_err(format!("listing {}", ar.plural))(e)),
        };
        for o in list.items {
            objects.insert((ar.kind.clone(), o.name_any()), (ar.clone(), o));
        }
    }
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let mut stateful_sets = BTreeMap::new();
    for role in TIERS {
        if let Some(s) = sts
            .get_opt(&names.workload(role))
            .await
            .map_err(api_err("reading StatefulSets"))?
        {
            stateful_sets.insert(role, s);
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let pods = pods
        .list(
            &ListParams::default().labels(&format!("app.kubernetes.io/instance={}", names.cluster)),
        )
        .await
        .map_err(api_err("listing pods"))?
        .items;
    Ok(Live {
        objects,
        cert_manager,
        stateful_sets,
        pods,
    })
}

/// A tier is settled when its StatefulSet has rolled every pod to the
/// current template and all of them are ready.
fn settled(sts: &StatefulSet) -> bool {
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &sts.status else {
        return want == 0;
    };
    let generation_seen =
        st.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let revision_done = st.update_revision.is_none() || st.current_revision == st.update_revision;
    generation_seen
        && revision_done
        && st.updated_replicas.unwrap_or(0) >= want
        && st.ready_replicas.unwrap_or(0) >= want
}

fn template_hash(obj: &Value) -> Option<&str> {
    obj["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION].as_str()
}

fn live_template_hash(sts: &StatefulSet) -> Option<&str> {
    sts.metadata
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Whether a StatefulSet is still replacing pods with its current
/// template: the controller has not seen the latest spec, not every pod runs
/// the update revision, or (as the StatefulSet controller records it) the
/// updated pods are not all ready yet.
fn mid_rollout(sts: &StatefulSet) -> bool {
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &sts.status else {
        return false;
    };
    st.observed_generation.unwrap_or(0) < sts.metadata.generation.unwrap_or(0)
        || st.updated_replicas.unwrap_or(0) < want
        || (st.update_revision.is_some() && st.current_revision != st.update_revision)
}

/// Whether a tier has fewer ready pods than it wants.
fn unhealthy(sts: &StatefulSet) -> bool {
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    ready < want
}

/// Which tiers may take a new pod template now, and why the first one that
/// may not waits.
///
/// In a healthy cluster a changed tier rolls only when no other tier is
/// mid-rollout and no tier before it (edges, relays, the origin) still has a
/// change to take: one tier at a time, clients keep reading from the tiers
/// that are not moving. Readiness cascades (an edge needs a relay, a relay
/// the origin), so a tier that is itself unhealthy rolls regardless: its
/// pods are not serving, waiting for the others cannot end (they wait for
/// it), and the edit that fixes it must be able to land. `gate_off` (the
/// `dcdn.io/rollout-gate: "off"` annotation) lets every tier roll at once,
/// for whatever this rule did not foresee.
fn rollout_gate(
    desired: &BTreeMap<Role, Value>,
    live: &BTreeMap<Role, StatefulSet>,
    gate_off: bool,
) -> (BTreeMap<Role, bool>, Option<String>) {
    let changed = |role: Role| {
        live.get(&role).is_some_and(|sts| {
            desired.get(&role).and_then(|o| template_hash(o)) != live_template_hash(sts)
        })
    };
    let mut allowed = BTreeMap::new();
    let mut waiting = None;
    for (i, role) in TIERS.into_iter().enumerate() {
        // A tier that does not exist yet is created, not rolled.
        let Some(sts) = live.get(&role) else {
            allowed.insert(role, true);
            continue;
        };
        if !changed(role) || gate_off || unhealthy(sts) {
            allowed.insert(role, true);
            continue;
        }
        let earlier = TIERS[..i].iter().copied().find(|r| changed(*r));
        let rolling = TIERS
            .iter()
            .copied()
            .find(|r| *r != role && live.get(r).is_some_and(mid_rollout));
        let by = match (rolling, earlier) {
            (Some(r), _) => Some(format!("{} to finish rolling out", r.as_str())),
            (None, Some(e)) => Some(format!("{} to roll first", e.as_str())),
            (None, None) => None,
        };
        allowed.insert(role, by.is_none());
        if let (Some(by), None) = (by, &waiting) {
            waiting = Some(format!(
                "{} waits for {by} (annotate the DcdnCluster {ROLLOUT_GATE_ANNOTATION}=off to roll every tier now)",
                role.as_str()
            ));
        }
    }
    (allowed, waiting)
}

/// Whether a live StatefulSet's `volumeClaimTemplates` differ from the
/// wanted ones (`spec.originStorage` resized, its class changed, or turned
/// on for a StatefulSet made before it existed). The API server refuses
/// any change to them, so such a StatefulSet must be replaced.
fn claims_changed(live: &StatefulSet, want: &Value) -> bool {
    let live_claims = live
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
        .unwrap_or_else(|| json!([]));
    let want_claims = match &want["spec"]["volumeClaimTemplates"] {
        Value::Null => json!([]),
        v => v.clone(),
    };
    !holds(&live_claims, &want_claims)
}

/// A resource quantity in bytes (`10Gi`, `500M`, `1073741824`); None for
/// what a storage size is never written as.
fn quantity_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u128 = n.parse().ok()?;
    let per: u128 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Replaces a StatefulSet whose claim templates changed without touching
/// its pods or data: claims that must grow are expanded in place first
/// (which needs a StorageClass with `allowVolumeExpansion`; a refusal is
/// reported in `problems`), then the StatefulSet is deleted with
/// `propagationPolicy: Orphan` — its pods keep running and its claims stay
/// — and the next pass creates it again with the new templates; it adopts
/// the same pods and claims by name. Returns what happened, for the event
/// and the Progressing condition.
async fn replace_for_claims(
    client: &kube::Client,
    names: &Names,
    live: &StatefulSet,
    want: &Value,
    problems: &mut Vec<String>,
) -> Result<String, Error> {
    let sts_name = live.name_any();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let replicas = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut notes = Vec::new();
    let wanted = want["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for claim in &wanted {
        let (Some(claim_name), Some(size)) = (
            claim["metadata"]["name"].as_str(),
            claim["spec"]["resources"]["requests"]["storage"].as_str(),
        ) else {
            continue;
        };
        let class = claim["spec"]["storageClassName"].as_str();
        for i in 0..replicas {
            let pvc_name = format!("{claim_name}-{sts_name}-{i}");
            let Some(pvc) = pvcs
                .get_opt(&pvc_name)
                .await
                .map_err(api_err(format!("reading PersistentVolumeClaim {pvc_name}")))?
            else {
                continue;
            };
            let spec = pvc.spec.unwrap_or_default();
            let had = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
                .unwrap_or_default();
            match (quantity_bytes(&had), quantity_bytes(size)) {
                (Some(old), Some(new)) if new > old => {
                    let patch =
                        json!({ "spec": { "resources": { "requests": { "storage": size } } } });
                    match pvcs
                        .patch(&pvc_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => notes.push(format!("{pvc_name} expanded from {had} to {size}")),
                        Err(e) => problems.push(format!(
                            "{pvc_name} could not grow from {had} to {size} (does its StorageClass allow volume expansion?): {e}; the origin may then refuse publishes with 507 only once its disk is full"
                        )),
                    }
                }
                (Some(old), Some(new)) if new < old => notes.push(format!(
                    "{pvc_name} keeps {had}: a claim cannot shrink (new claims get {size})"
                )),
                _ => {}
            }
            if let Some(class) = class
                && spec.storage_class_name.as_deref() != Some(class)
            {
                notes.push(format!(
                    "{pvc_name} keeps StorageClass {:?}: a claim's class cannot change (new claims get {class})",
                    spec.storage_class_name.as_deref().unwrap_or("")
                ));
            }
        }
    }
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    match sts.delete(&sts_name, &orphan).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_err(format!("deleting StatefulSet {sts_name}"))(e)),
    }
    notes.push(format!(
        "StatefulSet {sts_name} deleted with its pods and claims kept, to be created again with the new volumeClaimTemplates (they cannot be changed in place)"
    ));
    Ok(notes.join("; "))
}

/// Whether `live` carries every field of `want` with the same value. Fields
/// only the live object has (server defaults, other managers' annotations,
/// status) do not count; list elements are compared pairwise.
fn holds(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| holds(lv, wv)) || wv.is_null()),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| holds(lv, wv))
        }
        (l, w) => l == w,
    }
}

/// Reads or creates the key material.
struct KeyState {
    ca: MeshCa,
    signing: SigningKeys,
    admin: AdminTokens,
    /// Whether the admin token Secret is the operator's to write.
    admin_generated: bool,
    ring: KeyRing,
    /// Every Secret read above, by name: the apply step compares against
    /// these instead of reading them again.
    secrets: BTreeMap<String, Option<Secret>>,
}

async fn read_keys(
    client: &kube::Client,
    c: &DcdnCluster,
    names: &Names,
) -> Result<KeyState, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let mut secrets = BTreeMap::new();
    let mut wanted = vec![
        names.ca_secret(),
        names.signing_secret(),
        names.admin_secret(),
        names.token_digests_secret(),
    ];
    wanted.extend(TIERS.iter().map(|r| names.tls_secret(*r)));
    for name in wanted {
        let s = api
            .get_opt(&name)
            .await
            .map_err(api_err(format!("reading Secret {name}")))?;
        secrets.insert(name, s);
    }
    let get = |name: String| secrets.get(&name).cloned().flatten();
    let ca = match get(names.ca_secret()) {
        Some(s) => MeshCa::from_secret(&s, &names.ca_secret())?,
        None => MeshCa::generate(&names.cluster)?,
    };
    let signing = match get(names.signing_secret()) {
        Some(s) => SigningKeys::from_secret(&s, &names.signing_secret())?,
        None => SigningKeys::generate(),
    };
    let admin_generated = c.spec.admin_token_secret.is_none();
    let admin = match get(names.admin_secret()) {
        // Origin pods mount the Secret and read `ingest-token` from it.
        Some(s)
            if !admin_generated
                && !s
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(crate::keys::INGEST_TOKEN_FILE)) =>
        {
            return Err(Error::Precondition(format!(
                "spec.adminTokenSecret names Secret {} in namespace {}, which has no key `{}` (origin pods read the ingest token from it)",
                names.admin_secret(),
                names.namespace,
                crate::keys::INGEST_TOKEN_FILE
            )));
        }
        // The operator's own Secret from before read tokens gains one (the
        // apply step writes it back); a user's keeps what it holds.
        Some(s)
            if admin_generated
                && !s
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(crate::keys::READ_TOKEN_FILE)) =>
        {
            AdminTokens::from_secret(&s, &names.admin_secret())?.with_new_read_token()
        }
        Some(s) => AdminTokens::from_secret(&s, &names.admin_secret())?,
        None if admin_generated => AdminTokens::generate(),
        None => {
            return Err(Error::Precondition(format!(
                "spec.adminTokenSecret names Secret {} (keys `token` and `ingest-token`), which does not exist in namespace {}",
                names.admin_secret(),
                names.namespace
            )));
        }
    };
    check_upstream_secret(&api, c, names).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &names.namespace);
    let ring = match cms
        .get_opt(&names.trust_bundle())
        .await
        .map_err(api_err("reading the trust bundle"))?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(build::TRUST_BUNDLE_FILE).cloned())
    {
        Some(text) => TrustBundle::from_json(&text)
            .and_then(|b| KeyRing::from_bundle(&b))
            .map_err(|e| {
                Error::Precondition(format!(
                    "ConfigMap {} holds no valid trust bundle ({e}); delete it to let the operator rebuild it from the signing key",
                    names.trust_bundle()
                ))
            })?,
        // Deleted (or never written): rebuilt from the signing key, but
        // numbered on from the generation the status recorded. Nodes refuse
        // a bundle older than the one they run, so a ring restarted at 0
        // would never reach them.
        None => {
            let generation = c
                .status
                .as_ref()
                .and_then(|s| s.keyset_generation)
                .unwrap_or(0);
            KeyRing::from_bundle(&TrustBundle {
                generation,
                keys: Vec::new(),
            })
            .map_err(|e| Error::Precondition(format!("rebuilding the trust bundle: {e}")))?
        }
    };
    Ok(KeyState {
        ca,
        signing,
        admin,
        admin_generated,
        ring,
        secrets,
    })
}

/// The S3 upstream's Secret is the user's: the origin pod mounts the two
/// keys it names, so a missing Secret or key would leave the pod stuck in
/// `ContainerCreating`. Said by name, as for `adminTokenSecret`, before
/// anything is built.
async fn check_upstream_secret(
    api: &Api<Secret>,
    c: &DcdnCluster,
    names: &Names,
) -> Result<(), Error> {
    let Some(secret) = c
        .spec
        .origin
        .upstream
        .as_ref()
        .and_then(|u| u.s3.as_ref())
        .map(|s3| &s3.credentials_secret)
    else {
        return Ok(());
    };
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(api_err(format!("reading Secret {}", secret.name)))?;
    let Some(found) = found else {
        return Err(Error::Precondition(format!(
            "spec.origin.upstream.s3.credentialsSecret names Secret {} (keys `{}` and `{}`), which does not exist in namespace {}",
            secret.name, secret.access_key_id_key, secret.secret_access_key_key, names.namespace
        )));
    };
    let missing: Vec<&str> = [&secret.access_key_id_key, &secret.secret_access_key_key]
        .into_iter()
        .chain(secret.session_token_key.as_ref())
        .filter(|k| {
            !found.data.as_ref().is_some_and(|d| d.contains_key(*k))
                && !found
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(*k))
        })
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Precondition(format!(
            "spec.origin.upstream.s3.credentialsSecret names Secret {} in namespace {}, which has no key {} (the origin pod mounts the S3 access key from it)",
            secret.name,
            names.namespace,
            missing
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(())
}

fn role_of(pod: &Pod) -> Option<Role> {
    match pod.labels().get("app.kubernetes.io/component")?.as_str() {
        "origin" => Some(Role::Origin),
        "relay" => Some(Role::Relay),
        "edge" => Some(Role::Edge),
        _ => None,
    }
}

fn pod_target(pod: &Pod, token: &str) -> Result<NodeTarget, String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or("no pod IP yet")?;
    let address = if ip.contains(':') {
        format!("[{ip}]:{}", build::ADMIN_PORT)
    } else {
        format!("{ip}:{}", build::ADMIN_PORT)
    };
    Ok(NodeTarget {
        pod: pod.name_any(),
        address,
        token: token.to_owned(),
    })
}

async fn pod_reports<A: NodeAdmin>(ctx: &Context<A>, pods: &[Pod], token: &str) -> Vec<PodReport> {
    let calls = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let role = role_of(p)?;
            Some(async move {
                let view = match pod_target(p, token) {
                    Ok(t) => ctx.admin.keys(&t).await,
                    Err(e) => Err(e),
                };
                PodReport {
                    name: p.name_any(),
                    role,
                    view,
                }
            })
        });
    futures_util::future::join_all(calls).await
}

/// What is wrong with the Secrets the tiers serve clients with: one that
/// does not exist leaves the tier's new pods waiting to start, one without
/// `tls.crt`/`tls.key` would be refused by the node. Read by name, as every
/// Secret the operator looks at.
async fn tls_secret_problems(
    secrets: &Api<Secret>,
    c: &DcdnCluster,
    cert_manager: CertManager,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    for role in [Role::Edge, Role::Origin] {
        let Some(tls) = &build::tier_spec(c, role).tls else {
            continue;
        };
        let field = format!("{}.tls", role.as_str());
        for name in build::tls_secret_names(tls) {
            let issued_here = tls.certificate.is_some() && name == tls.secret_name;
            match secrets
                .get_opt(name)
                .await
                .map_err(api_err(format!("reading Secret {name}")))?
            {
                None if issued_here && cert_manager == CertManager::Installed => problems.push(
                    format!("{field}: waiting for cert-manager to issue Secret {name}; {} pods start once it exists", role.as_str()),
                ),
                // Without cert-manager the Certificate problem says why.
                None if issued_here => {}
                None => problems.push(format!(
                    "{field}: Secret {name} does not exist; {} pods start once it does (a kubernetes.io/tls Secret with tls.crt and tls.key)",
                    role.as_str()
                )),
                Some(s) => {
                    let data = s.data.unwrap_or_default();
                    let missing: Vec<&str> = build::TLS_SECRET_FILES
                        .into_iter()
                        .filter(|k| data.get(*k).is_none_or(|v| v.0.is_empty()))
                        .collect();
                    if !missing.is_empty() {
                        problems.push(format!(
                            "{field}: Secret {name} has no {} (a kubernetes.io/tls Secret is needed)",
                            missing.join(" and ")
                        ));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// The origin's offload ratio, rounded so that noise does not rewrite the
/// status every pass; `None` when no origin answers.
async fn origin_offload<A: NodeAdmin>(ctx: &Context<A>, pods: &[Pod], token: &str) -> Option<f64> {
    let origin = pods.iter().find(|p| role_of(p) == Some(Role::Origin))?;
    let target = pod_target(origin, token).ok()?;
    let ratio = ctx.admin.origin_offload(&target).await.ok()??;
    Some((ratio * 100.0).round() / 100.0)
}

/// How long Draining lasts: the longest chunk TTL of any tier plus the
/// clock skew nodes accept, and at least the spec's overlap.
fn drain_time(c: &DcdnCluster) -> Duration {
    let mut longest = Duration::ZERO;
    for role in TIERS {
        if let Ok(cfg) = build::node_config(c, role) {
            let ttl = Duration::from_secs(cfg.storage.chunk_ttl_seconds.get())
                + Duration::from_millis(cfg.crypto.max_clock_skew_ms.get());
            longest = longest.max(ttl);
        }
    }
    longest.max(Duration::from_secs(
        u64::from(c.spec.key_rotation.overlap_minutes) * 60,
    ))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: String::new(),
    }
}

/// Keeps a condition's transition time unless its status flipped.
fn carry_times(old: &[Condition], new: &mut [Condition], now: &str) {
    for c in new {
        c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => now.to_owned(),
        };
    }
}

fn tier_status(sts: Option<&StatefulSet>) -> TierStatus {
    let st = sts.and_then(|s| s.status.as_ref());
    let n = |v: Option<i32>| u32::try_from(v.unwrap_or(0)).unwrap_or(0);
    TierStatus {
        replicas: n(sts.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas)),
        ready: n(st.and_then(|s| s.ready_replicas)),
        updated: n(st.and_then(|s| s.updated_replicas)),
    }
}

async fn publish_event<A: NodeAdmin>(
    ctx: &Context<A>,
    c: &DcdnCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &c.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

async fn patch_status(
    client: &kube::Client,
    c: &DcdnCluster,
    status: &DcdnClusterStatus,
) -> Result<(), Error> {
    if c.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<DcdnCluster> = Api::namespaced(
        client.clone(),
        c.namespace().as_deref().unwrap_or("default"),
    );
    // A merge patch keeps every field it does not mention; fields this
    // status no longer has (a finished rotation's `nextKeyId`, a `waitingFor`
    // that is over) are sent as null so they clear.
    let old = serde_json::to_value(&c.status).unwrap_or(Value::Null);
    let new = serde_json::to_value(status).unwrap_or(Value::Null);
    api.patch_status(
        &c.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": with_removals(&old, new) })),
    )
    .await
    .map_err(api_err("writing status"))?;
    Ok(())
}

/// `new` as a merge patch over `old`: every object key `old` has and `new`
/// lacks becomes `null` (removed by the API server), recursively.
fn with_removals(old: &Value, mut new: Value) -> Value {
    if let (Value::Object(o), Value::Object(n)) = (old, &mut new) {
        for (k, ov) in o {
            match n.get_mut(k) {
                None => {
                    n.insert(k.clone(), Value::Null);
                }
                Some(nv) => *nv = with_removals(ov, nv.take()),
            }
        }
    }
    new
}

/// Records a resource that cannot be built as `Degraded` instead of failing
/// the pass; `then` says when to look again (an invalid spec waits for an
/// edit, missing key material is looked for again soon).
async fn degrade<A: NodeAdmin>(
    ctx: &Context<A>,
    c: &DcdnCluster,
    reason: &str,
    message: String,
    then: Action,
) -> Result<Action, Error> {
    let now = (ctx.clock)().to_string();
    let old = c.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = c.metadata.generation;
    status.observed_generation = generation;
    let mut conds = vec![
        condition("Ready", false, reason, message.clone(), generation),
        condition(
            "Progressing",
            false,
            reason,
            "nothing is applied until the resource is fixed".into(),
            generation,
        ),
        condition("Degraded", true, reason, message.clone(), generation),
    ];
    if let Some(k) = old.conditions.iter().find(|c| c.type_ == "KeyRotation") {
        conds.push(k.clone());
    }
    carry_times(&old.conditions, &mut conds, &now);
    status.conditions = conds;
    if c.status.as_ref() != Some(&status) {
        publish_event(ctx, c, EventType::Warning, reason, message).await;
    }
    patch_status(&ctx.client, c, &status).await?;
    Ok(then)
}

/// One pass for one cluster.
pub async fn reconcile<A: NodeAdmin>(
    c: Arc<DcdnCluster>,
    ctx: Arc<Context<A>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&c, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    match &result {
        Ok(_) => {
            ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
            ctx.failures.lock().remove(&key);
        }
        Err(e) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics.failures.with_label_values(&[e.reason()]).inc();
        }
    }
    result
}

/// Retries with per-cluster exponential backoff: 5 s, 10 s, … 5 min.
pub fn error_policy<A: NodeAdmin>(
    c: Arc<DcdnCluster>,
    error: &Error,
    ctx: Arc<Context<A>>,
) -> Action {
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    let mut failures = ctx.failures.lock();
    if failures.len() >= MAX_BACKOFF_ENTRIES && !failures.contains_key(&key) {
        failures.clear();
    }
    let n = failures.entry(key.clone()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff(*n);
    tracing::warn!(cluster = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

async fn reconcile_inner<A: NodeAdmin>(c: &DcdnCluster, ctx: &Context<A>) -> Result<Action, Error> {
    let client = &ctx.client;
    // Build first: a resource that cannot be built (its name included) is
    // Degraded and waits for an edit, not retried in a loop.
    let wanted = match build::build(c) {
        Ok(w) => w,
        Err(e) => {
            ctx.metrics
                .failures
                .with_label_values(&["invalid_spec"])
                .inc();
            // Only an edit can fix the spec: wait for it.
            return degrade(ctx, c, "InvalidSpec", e.to_string(), Action::await_change()).await;
        }
    };
    let names = Names::of(c)?;
    let mut keys = match read_keys(client, c, &names).await {
        Ok(k) => k,
        Err(e @ (Error::Keys(_) | Error::Precondition(_))) => {
            ctx.metrics.failures.with_label_values(&[e.reason()]).inc();
            // A Secret created or fixed later is no edit of the resource
            // (the operator does not watch Secrets): look again soon.
            return degrade(
                ctx,
                c,
                "KeyMaterial",
                e.to_string(),
                Action::requeue(KEY_REQUEUE),
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    let live = read_live(client, &names).await?;
    let now = (ctx.clock)();
    let old_status = c.status.clone().unwrap_or_default();

    // Key rotation.
    let phase = old_status.rotation_phase.unwrap_or_default();
    let in_motion = phase != RotationPhase::Idle || keys.signing.next.is_some();
    let reports = if in_motion {
        pod_reports(ctx, &live.pods, &keys.admin.read).await
    } else {
        Vec::new()
    };
    let expected_pods: usize = TIERS
        .iter()
        .map(|r| build::tier_spec(c, *r).replicas as usize)
        .sum();
    let trigger = c.annotations().get(TRIGGER_ANNOTATION).map(String::as_str);
    let created = c.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let input = rotation::Input {
        spec: &c.spec.key_rotation,
        trigger,
        phase,
        status: &old_status.rotation,
        created,
        now,
        drain: drain_time(c),
        pods: &reports,
        expected_pods,
    };
    let outcome = rotation::step(&input, &mut keys.signing, &mut keys.ring)?;
    if outcome.reload_origins {
        for p in live
            .pods
            .iter()
            .filter(|p| role_of(p) == Some(Role::Origin))
        {
            if let Ok(t) = pod_target(p, &keys.admin.admin)
                && let Err(e) = ctx.admin.reload(&t).await
            {
                tracing::info!(pod = %t.pod, error = %e, "origin reload not done yet");
            }
        }
    }

    // Everything the cluster should have, key material first so a pod
    // never starts before its certificate exists.
    let mut desired = vec![wanted[0].clone()];
    desired.push(keys.ca.to_secret(&names));
    desired.push(keys.signing.to_secret(&names));
    if keys.admin_generated {
        desired.push(keys.admin.to_secret(&names));
    }
    desired.push(keys.admin.digest_secret(&names)?);
    for role in TIERS {
        let replicas = build::tier_spec(c, role).replicas;
        let existing = keys
            .secrets
            .get(&names.tls_secret(role))
            .and_then(Option::as_ref);
        desired.push(keys.ca.tier_secret(&names, role, replicas, existing)?);
    }
    desired.push(build::trust_bundle(&names, &keys.ring.to_bundle()));
    desired.extend(wanted.into_iter().skip(1));

    let owner = c
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Precondition("the DcdnCluster has no uid yet".into()))?;
    let owner = serde_json::to_value(&owner).unwrap_or(Value::Null);
    let sts_desired: BTreeMap<Role, Value> = desired
        .iter()
        .filter(|o| o["kind"] == "StatefulSet")
        .filter_map(|o| {
            let name = o["metadata"]["name"].as_str()?;
            TIERS
                .iter()
                .find(|r| names.workload(**r) == name)
                .map(|r| (*r, o.clone()))
        })
        .collect();
    let gate_off = c
        .annotations()
        .get(ROLLOUT_GATE_ANNOTATION)
        .is_some_and(|v| v == "off");
    let (allowed, rollout_wait) = rollout_gate(&sts_desired, &live.stateful_sets, gate_off);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let mut applied_names: Vec<(String, String)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut replaced: Vec<String> = Vec::new();
    for mut obj in desired {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        applied_names.push((kind.clone(), name.clone()));
        if kind == "Certificate" {
            match live.cert_manager {
                CertManager::Installed => {}
                CertManager::Absent => {
                    problems.push(format!("tls.certificate asks for Certificate {name}, but cert-manager is not installed (no {} Certificate API); install cert-manager or create Secret {} yourself", build::CERT_MANAGER_API, obj["spec"]["secretName"].as_str().unwrap_or_default()));
                    continue;
                }
                CertManager::Forbidden => {
                    problems.push(format!("tls.certificate asks for Certificate {name}, but the operator may not manage Certificates (RBAC: cert-manager.io certificates)"));
                    continue;
                }
            }
        }
        if kind == "StatefulSet" {
            let role = TIERS.iter().find(|r| names.workload(**r) == name).copied();
            if role.is_some_and(|r| !allowed.get(&r).copied().unwrap_or(true)) {
                continue;
            }
            if let Some(live_sts) = role.and_then(|r| live.stateful_sets.get(&r))
                && claims_changed(live_sts, &obj)
            {
                let note =
                    replace_for_claims(client, &names, live_sts, &obj, &mut problems).await?;
                ctx.metrics
                    .writes
                    .with_label_values(&["StatefulSet", "delete"])
                    .inc();
                tracing::info!(statefulset = %name, %note, "volumeClaimTemplates changed");
                replaced.push(note);
                // Created again by the next pass, once it is gone.
                continue;
            }
        }
        obj["metadata"]["ownerReferences"] = json!([owner]);
        let unchanged = if kind == "Secret" {
            // Secrets carry no hash annotation (not even a hash of a key
            // leaves the Secret); compare the data itself.
            match keys.secrets.get(&name).and_then(Option::as_ref) {
                Some(s) => serde_json::to_value(&s.data).unwrap_or(Value::Null) == obj["data"],
                None => false,
            }
        } else {
            let hash = build::hash_value(&obj);
            obj["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = json!(hash);
            // The hash says what the operator last applied; the live fields
            // say whether someone changed them since (`kubectl scale`, an
            // edited Service): then the apply puts them back.
            live.objects
                .get(&(kind.clone(), name.clone()))
                .is_some_and(|(_, o)| {
                    o.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
                        && serde_json::to_value(o).is_ok_and(|l| holds(&l, &obj))
                })
        };
        if unchanged {
            continue;
        }
        let ar = resource_of(&obj);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &names.namespace, &ar);
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => ctx
                .metrics
                .writes
                .with_label_values(&[&kind, "apply"])
                .inc(),
            Err(kube::Error::Api(s)) if s.code == 404 && kind == "ServiceMonitor" => {
                problems.push("spec.monitoring.serviceMonitor is on but the ServiceMonitor CRD (Prometheus Operator) is not installed".into());
            }
            Err(kube::Error::Api(s)) if s.code == 403 && kind == "ServiceMonitor" => {
                problems.push("spec.monitoring.serviceMonitor is on but the operator may not write ServiceMonitors (RBAC: monitoring.coreos.com servicemonitors)".into());
            }
            // Removed between the list above and this write.
            Err(kube::Error::Api(s)) if s.code == 404 && kind == "Certificate" => {
                problems.push(format!("tls.certificate asks for Certificate {name}, but cert-manager is not installed (no {} Certificate API)", build::CERT_MANAGER_API));
            }
            Err(kube::Error::Api(s)) if s.code == 403 && kind == "Certificate" => {
                problems.push(format!("tls.certificate asks for Certificate {name}, but the operator may not write Certificates (RBAC: cert-manager.io certificates)"));
            }
            Err(e) => return Err(api_err(format!("applying {kind} {name}"))(e)),
        }
    }

    // Prune what is no longer wanted.
    for ((kind, name), (ar, _)) in &live.objects {
        if applied_names.iter().any(|(k, n)| k == kind && n == name) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &names.namespace, ar);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => ctx
                .metrics
                .writes
                .with_label_values(&[kind, "delete"])
                .inc(),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting {kind} {name}"))(e)),
        }
    }
    if !keys.admin_generated {
        let generated = format!("{}-admin-token", names.cluster);
        if let Some(s) = secrets
            .get_opt(&generated)
            .await
            .map_err(api_err("reading Secrets"))?
            && s.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == c.metadata.uid.as_ref())
        {
            secrets
                .delete(&generated, &DeleteParams::background())
                .await
                .map_err(api_err(format!("deleting Secret {generated}")))?;
            ctx.metrics
                .writes
                .with_label_values(&["Secret", "delete"])
                .inc();
        }
    }

    problems.extend(tls_secret_problems(&secrets, c, live.cert_manager).await?);

    // Status.
    let generation = c.metadata.generation;
    let tiers = crate::crd::TierStatuses {
        origin: tier_status(live.stateful_sets.get(&Role::Origin)),
        relay: tier_status(live.stateful_sets.get(&Role::Relay)),
        edge: tier_status(live.stateful_sets.get(&Role::Edge)),
    };
    let all_current = TIERS.iter().all(|r| {
        live.stateful_sets.get(r).is_some_and(|s| {
            settled(s)
                && sts_desired.get(r).and_then(|o| template_hash(o)) == live_template_hash(s)
                && s.spec.as_ref().and_then(|sp| sp.replicas)
                    == Some(build::tier_spec(c, *r).replicas as i32)
        })
    });
    let rotating = outcome.phase != RotationPhase::Idle;
    if !replaced.is_empty() {
        publish_event(
            ctx,
            c,
            EventType::Normal,
            "VolumeClaimTemplatesChanged",
            replaced.join("; "),
        )
        .await;
    }
    let all_current = all_current && replaced.is_empty();
    let progressing_msg = if replaced.is_empty() {
        rollout_wait.clone().unwrap_or_else(|| {
            if all_current {
                "every tier runs the current template".into()
            } else {
                "tiers are rolling out or starting".into()
            }
        })
    } else {
        replaced.join("; ")
    };
    let mut conds = vec![
        condition(
            "Ready",
            all_current && problems.is_empty(),
            if all_current {
                "AllTiersReady"
            } else {
                "TiersNotReady"
            },
            format!(
                "ready pods: origin {}/{}, relay {}/{}, edge {}/{}",
                tiers.origin.ready,
                build::tier_spec(c, Role::Origin).replicas,
                tiers.relay.ready,
                build::tier_spec(c, Role::Relay).replicas,
                tiers.edge.ready,
                build::tier_spec(c, Role::Edge).replicas
            ),
            generation,
        ),
        condition(
            "Progressing",
            !all_current,
            if !replaced.is_empty() {
                "ReplacingStatefulSet"
            } else if rollout_wait.is_some() {
                "WaitingForTier"
            } else if all_current {
                "RolloutComplete"
            } else {
                "RollingOut"
            },
            progressing_msg,
            generation,
        ),
        condition(
            "Degraded",
            !problems.is_empty(),
            if problems.is_empty() {
                "AsExpected"
            } else {
                "Unavailable"
            },
            if problems.is_empty() {
                "nothing is wrong".into()
            } else {
                problems.join("; ")
            },
            generation,
        ),
        condition(
            "KeyRotation",
            rotating,
            outcome.phase.as_str(),
            outcome
                .status
                .waiting_for
                .clone()
                .unwrap_or_else(|| match outcome.phase {
                    RotationPhase::Idle => "no rotation in progress".into(),
                    p => p.as_str().into(),
                }),
            generation,
        ),
    ];
    let now_s = now.to_string();
    carry_times(&old_status.conditions, &mut conds, &now_s);
    let config_hash = {
        let hashes: Vec<Value> = sts_desired
            .values()
            .map(|o| {
                o["spec"]["template"]["metadata"]["annotations"][build::CONFIG_HASH_ANNOTATION]
                    .clone()
            })
            .collect();
        build::hash_value(&json!(hashes))
    };
    let status = DcdnClusterStatus {
        observed_generation: generation,
        conditions: conds,
        tiers,
        active_key_id: keys.ring.active().map(|k| k.to_string()),
        keyset_generation: Some(keys.ring.generation()),
        rotation_phase: Some(outcome.phase),
        rotation: outcome.status.clone(),
        config_hash: Some(config_hash),
        origin_offload_ratio: origin_offload(ctx, &live.pods, &keys.admin.read)
            .await
            .or(old_status.origin_offload_ratio),
    };
    if let Some((reason, note)) = &outcome.event {
        publish_event(ctx, c, EventType::Normal, reason, note.clone()).await;
    }
    // A new problem is an event too, once (not every pass while it lasts).
    let degraded = status.conditions.iter().find(|k| k.type_ == "Degraded");
    let was = old_status.conditions.iter().find(|k| k.type_ == "Degraded");
    if let Some(d) = degraded.filter(|d| d.status == "True")
        && was.is_none_or(|w| w.status != "True" || w.message != d.message)
    {
        publish_event(ctx, c, EventType::Warning, "Degraded", d.message.clone()).await;
    }
    if outcome.phase != phase || outcome.phase != RotationPhase::Idle {
        let ns = names.namespace.as_str();
        let cl = names.cluster.as_str();
        for p in RotationPhase::ALL {
            let _ = ctx
                .metrics
                .rotation_phase_seconds
                .remove_label_values(&[ns, cl, p.as_str()]);
        }
        let since = outcome
            .status
            .phase_since
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(now);
        ctx.metrics
            .rotation_phase_seconds
            .with_label_values(&[ns, cl, outcome.phase.as_str()])
            .set(now.duration_since(since).as_secs_f64());
    }
    patch_status(client, c, &status).await?;
    Ok(if rotating || !all_current {
        Action::requeue(BUSY_REQUEUE)
    } else {
        Action::requeue(IDLE_REQUEUE)
    })
}
