//! The reconciler against an in-memory API server (kube-fake-client: real
//! REST semantics, server-side apply, resource versions, owner-reference
//! garbage collection). The StatefulSet controller, kubelet and the nodes'
//! admin APIs are simulated here: pods appear when a test "settles" a tier,
//! and each simulated node reports the keyset generation of the trust
//! bundle ConfigMap as it was when the test last synced it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dcdn_node::crypto::TrustBundle;
use dcdn_operator::crd::{DcdnCluster, RotationPhase};
use dcdn_operator::keys::SigningKeys;
use dcdn_operator::metrics::Metrics;
use dcdn_operator::node_admin::{NodeAdmin, NodeTarget};
use dcdn_operator::reconcile::{Context, reconcile};
use dcdn_operator::rotation::KeyView;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const NS: &str = "cdn";

/// The Prometheus Operator's CRD, as installed next to the operator.
#[derive(
    kube::CustomResource, serde::Serialize, serde::Deserialize, Clone, Debug, schemars::JsonSchema,
)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced
)]
struct ServiceMonitorSpec {
    #[serde(default)]
    endpoints: Vec<serde_json::Value>,
}

/// cert-manager's CRD, in the worlds where cert-manager is installed.
#[derive(
    kube::CustomResource, serde::Serialize, serde::Deserialize, Clone, Debug, schemars::JsonSchema,
)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    namespaced
)]
#[serde(rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    #[serde(default)]
    dns_names: Vec<String>,
    issuer_ref: serde_json::Value,
}

/// Simulated nodes: what each pod's admin API answers.
#[derive(Default, Clone)]
struct FakeNodes {
    /// pod → (generation it runs, key ids it can sign with)
    views: Arc<Mutex<BTreeMap<String, KeyView>>>,
    unreachable: Arc<Mutex<HashSet<String>>>,
    reloads: Arc<AtomicUsize>,
    /// Every bearer token the operator read with (keys, metrics).
    read_with: Arc<Mutex<HashSet<String>>>,
}

impl NodeAdmin for FakeNodes {
    async fn keys(&self, target: &NodeTarget) -> Result<KeyView, String> {
        self.read_with.lock().insert(target.token.clone());
        if self.unreachable.lock().contains(&target.pod) {
            return Err("connection refused".into());
        }
        self.views
            .lock()
            .get(&target.pod)
            .cloned()
            .ok_or_else(|| "not started".into())
    }
    async fn reload(&self, _target: &NodeTarget) -> Result<(), String> {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn origin_offload(&self, target: &NodeTarget) -> Result<Option<f64>, String> {
        self.read_with.lock().insert(target.token.clone());
        // 1 origin copy per relay (2) over the chunk count, as a node would say.
        Ok(self.views.lock().contains_key(&target.pod).then_some(1.996))
    }
}

struct World {
    /// Every delete: (name, whether dependents were to be deleted too).
    deletes: Arc<Mutex<Vec<(String, bool)>>>,
    client: Client,
    ctx: Arc<Context<FakeNodes>>,
    nodes: FakeNodes,
    writes: Arc<AtomicUsize>,
    now: Arc<Mutex<Timestamp>>,
}

const CLUSTER: &str = "apiVersion: dcdn.io/v1alpha1
kind: DcdnCluster
metadata: {name: demo, namespace: cdn}
spec:
  image: dcdn/node:0.1.0
  relay: {replicas: 2}
  edge: {replicas: 3}
";

/// The API server behind a layer answering 403 for ServiceMonitors, as a
/// real one does when RBAC does not grant them.
fn forbid_service_monitors(inner: Client) -> Client {
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        async move {
            if req.uri().path().contains("/servicemonitors") {
                let status = serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": "servicemonitors.monitoring.coreos.com is forbidden",
                });
                let resp = http::Response::builder()
                    .status(403)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&status).unwrap(),
                    ))
                    .unwrap();
                return Ok::<_, kube::Error>(resp);
            }
            inner.send(req).await
        }
    });
    Client::new(svc, NS)
}

impl World {
    async fn new() -> Self {
        Self::build(true, false).await
    }

    /// A world whose API server serves cert-manager's `Certificate` or not,
    /// and answers 403 for ServiceMonitors or not.
    async fn build(cert_manager: bool, forbidden_monitors: bool) -> Self {
        let writes = Arc::new(AtomicUsize::new(0));
        let (w1, w2, w3, w4) = (
            writes.clone(),
            writes.clone(),
            writes.clone(),
            writes.clone(),
        );
        let deletes: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let deleted = deletes.clone();
        let funcs = kube_fake_client::interceptor::Funcs::new()
            .patch(move |ctx| {
                w1.fetch_add(1, Ordering::Relaxed);
                // As the real API server: a StatefulSet's
                // volumeClaimTemplates cannot change once created.
                if ctx.patch["kind"] == "StatefulSet"
                    && let Ok(live) = ctx.client.get::<StatefulSet>(ctx.namespace, ctx.name)
                {
                    let claims = |v: &serde_json::Value| -> Vec<(String, String, String)> {
                        v.as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|c| {
                                        (
                                            c["metadata"]["name"].to_string(),
                                            c["spec"]["resources"]["requests"]["storage"]
                                                .to_string(),
                                            c["spec"]["storageClassName"].to_string(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    let live = serde_json::to_value(&live).unwrap();
                    if claims(&live["spec"]["volumeClaimTemplates"])
                        != claims(&ctx.patch["spec"]["volumeClaimTemplates"])
                    {
                        return Err(kube_fake_client::Error::ImmutableField {
                            field: "spec.volumeClaimTemplates".into(),
                        });
                    }
                }
                Ok(None)
            })
            .create(move |_| {
                w2.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            })
            .delete(move |ctx| {
                w3.fetch_add(1, Ordering::Relaxed);
                deleted.lock().push((ctx.name.to_owned(), ctx.cascade));
                Ok(None)
            })
            // Status writes are writes too: an unchanged pass makes none.
            .patch_status(move |_| {
                w4.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            });
        let mut builder = kube_fake_client::ClientBuilder::new()
            .with_resource::<DcdnCluster>()
            .with_resource::<ServiceMonitor>()
            .with_status_subresource::<StatefulSet>()
            .with_interceptor_funcs(funcs);
        if cert_manager {
            builder = builder.with_resource::<Certificate>();
        }
        let client = builder.build().await.unwrap();
        let client = if forbidden_monitors {
            forbid_service_monitors(client)
        } else {
            client
        };
        let nodes = FakeNodes::default();
        let now = Arc::new(Mutex::new(
            "2026-03-01T00:00:00Z".parse::<Timestamp>().unwrap(),
        ));
        let mut ctx = Context::new(client.clone(), nodes.clone(), Metrics::new());
        ctx.recorder = Some(kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "dcdn-operator".into(),
                instance: Some("test".into()),
            },
        ));
        let clock = now.clone();
        ctx.clock = Box::new(move || *clock.lock());
        let w = Self {
            deletes,
            client,
            ctx: Arc::new(ctx),
            nodes,
            writes,
            now,
        };
        w.create(CLUSTER).await;
        w
    }

    async fn create(&self, yaml: &str) {
        let c = dcdn_operator::crd::from_yaml(yaml).unwrap();
        self.clusters()
            .create(&PostParams::default(), &c)
            .await
            .unwrap();
    }

    fn clusters(&self) -> Api<DcdnCluster> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn cluster(&self) -> DcdnCluster {
        self.clusters().get("demo").await.unwrap()
    }

    async fn edit(&self, patch: serde_json::Value) {
        self.clusters()
            .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// One pass; returns the writes it made (status included).
    async fn pass(&self) -> usize {
        let before = self.writes.load(Ordering::Relaxed);
        reconcile(Arc::new(self.cluster().await), self.ctx.clone())
            .await
            .unwrap();
        self.writes.load(Ordering::Relaxed) - before
    }

    fn sts(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn template_of(&self, tier: &str) -> String {
        let s = self.sts().get(&format!("demo-{tier}")).await.unwrap();
        s.annotations()["dcdn.io/template-hash"].clone()
    }

    /// The StatefulSet controller and kubelet: every pod of the tier runs
    /// the current template and is ready; pods exist with IPs.
    async fn settle(&self, tier: &str) {
        let name = format!("demo-{tier}");
        let s = self.sts().get(&name).await.unwrap();
        let replicas = s.spec.as_ref().unwrap().replicas.unwrap_or(1);
        let rev = s.annotations()["dcdn.io/template-hash"].clone();
        let status = StatefulSetStatus {
            observed_generation: s.metadata.generation,
            replicas,
            ready_replicas: Some(replicas),
            updated_replicas: Some(replicas),
            current_replicas: Some(replicas),
            current_revision: Some(rev.clone()),
            update_revision: Some(rev),
            ..Default::default()
        };
        self.set_status(&name, status).await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        for i in 0..replicas {
            let pod_name = format!("{name}-{i}");
            if pods.get_opt(&pod_name).await.unwrap().is_some() {
                continue;
            }
            let mut pod: Pod = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": pod_name, "namespace": NS, "labels": {
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/component": tier,
                }},
                "spec": { "containers": [{ "name": "dcdn", "image": "x" }] },
            }))
            .unwrap();
            pod.status = Some(PodStatus {
                pod_ip: Some(format!("10.0.0.{i}")),
                ..Default::default()
            });
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
    }

    /// A tier whose new template is being rolled: not every pod updated.
    async fn rolling(&self, tier: &str) {
        let name = format!("demo-{tier}");
        let s = self.sts().get(&name).await.unwrap();
        let replicas = s.spec.as_ref().unwrap().replicas.unwrap_or(1);
        let status = StatefulSetStatus {
            observed_generation: s.metadata.generation,
            replicas,
            ready_replicas: Some(replicas - 1),
            updated_replicas: Some(1),
            current_revision: Some("old".into()),
            update_revision: Some("new".into()),
            ..Default::default()
        };
        self.set_status(&name, status).await;
    }

    async fn set_status(&self, name: &str, status: StatefulSetStatus) {
        self.sts()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    async fn settle_all(&self) {
        for t in ["edge", "relay", "origin"] {
            self.settle(t).await;
        }
    }

    async fn bundle(&self) -> TrustBundle {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
        let cm = cms.get("demo-trust-bundle").await.unwrap();
        TrustBundle::from_json(&cm.data.unwrap()["trust-bundle.json"]).unwrap()
    }

    async fn signing(&self) -> SigningKeys {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let s = secrets.get("demo-signing-key").await.unwrap();
        SigningKeys::from_secret(&s, "demo-signing-key").unwrap()
    }

    /// Kubelet syncs the mounted files and every node reloads: each pod
    /// reports the bundle's generation; origins hold both Secret keys.
    async fn sync_nodes(&self) {
        let bundle = self.bundle().await;
        let generation = bundle.generation;
        let ring: BTreeMap<String, dcdn_node::crypto::KeyState> = bundle
            .keys
            .iter()
            .map(|k| (k.id.clone(), k.state))
            .collect();
        let keys = self.signing().await;
        let mut signable = vec![keys.current.key_id().to_string()];
        if let Some(n) = &keys.next {
            signable.push(n.key_id().to_string());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let pods = pods.list(&ListParams::default()).await.unwrap().items;
        let mut views = self.nodes.views.lock();
        for p in pods {
            let origin = p.labels()["app.kubernetes.io/component"] == "origin";
            views.insert(
                p.name_any(),
                KeyView {
                    generation,
                    can_sign: if origin { signable.clone() } else { vec![] },
                    keys: ring.clone(),
                },
            );
        }
    }

    async fn condition(&self, type_: &str) -> (String, String, String) {
        let c = self.cluster().await;
        let cond = c
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (cond.status, cond.reason, cond.message)
    }

    async fn phase(&self) -> RotationPhase {
        self.cluster().await.status.unwrap().rotation_phase.unwrap()
    }
}

#[tokio::test]
async fn from_nothing_every_object_is_created_owned_and_ready_once_tiers_settle() {
    let w = World::new().await;
    assert!(w.pass().await > 10);
    let sts = w.sts().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(sts.len(), 3);
    let uid = w.cluster().await.metadata.uid.unwrap();
    for s in &sts {
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (uid.as_str(), Some(true))
        );
    }
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    for name in [
        "demo-mesh-ca",
        "demo-signing-key",
        "demo-admin-token",
        "demo-edge-tls",
    ] {
        assert!(secrets.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    let edge_tls = secrets.get("demo-edge-tls").await.unwrap().data.unwrap();
    assert!(edge_tls.contains_key("demo-edge-2.crt") && edge_tls.contains_key("demo-edge-2.key"));
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(w.client.clone(), NS);
    assert_eq!(
        pdbs.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    let bundle = w.bundle().await;
    let active = w.signing().await.current.key_id().to_string();
    assert_eq!(bundle.keys.len(), 1);
    assert_eq!(bundle.keys[0].id, active);
    assert_eq!(bundle.keys[0].state, dcdn_node::crypto::KeyState::Active);
    // The private key is nowhere but in its Secret.
    let secret_hex = w.signing().await.current.to_secret_hex();
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), NS);
    for cm in cms.list(&ListParams::default()).await.unwrap().items {
        assert!(!serde_json::to_string(&cm).unwrap().contains(&secret_hex));
    }
    for s in &sts {
        assert!(!serde_json::to_string(s).unwrap().contains(&secret_hex));
    }
    assert!(
        !serde_json::to_string(&w.cluster().await)
            .unwrap()
            .contains(&secret_hex)
    );

    assert_eq!(w.condition("Ready").await.0, "False");
    w.settle_all().await;
    w.pass().await;
    let (ready, _, msg) = w.condition("Ready").await;
    assert_eq!(ready, "True", "{msg}");
    // The operator reads the nodes with the read token only: it is not the
    // admin token, and the nodes hold its digest.
    let tokens = secrets.get("demo-admin-token").await.unwrap().data.unwrap();
    let text = |k: &str| String::from_utf8(tokens[k].0.clone()).unwrap();
    let (admin, read) = (text("token"), text("read-token"));
    assert_ne!(admin, read);
    assert_eq!(
        *w.nodes.read_with.lock(),
        HashSet::from([read.clone()]),
        "every read used the read token"
    );
    let digests = secrets
        .get("demo-token-digests")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(
        String::from_utf8(digests["read-token"].0.clone()).unwrap(),
        dcdn_node::auth::Token::from_secret(&read).unwrap().hashed()
    );
    let status = w.cluster().await.status.unwrap();
    assert_eq!(status.tiers.edge.ready, 3);
    assert_eq!(status.active_key_id.as_deref(), Some(active.as_str()));
    assert_eq!(
        status.origin_offload_ratio, None,
        "no origin has answered yet"
    );
    assert_eq!(
        status.observed_generation,
        w.cluster().await.metadata.generation
    );
}

#[tokio::test]
async fn a_pass_over_an_unchanged_cluster_writes_nothing() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.pass().await;
    assert_eq!(w.pass().await, 0, "second pass with no change wrote");
    assert_eq!(w.pass().await, 0);
}

#[tokio::test]
async fn a_config_change_rolls_only_the_changed_tiers_one_at_a_time_edges_first() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.pass().await;
    let before: Vec<String> =
        futures_util::future::join_all(["edge", "relay", "origin"].map(|t| w.template_of(t))).await;
    // Change relays and edges; the origin's config stays.
    w.edit(serde_json::json!({"spec": {
        "edge": {"config": {"fec": {"default_parity_count": 6}}},
        "relay": {"config": {"fec": {"default_parity_count": 6}}},
    }}))
    .await;
    w.pass().await;
    assert_ne!(w.template_of("edge").await, before[0], "edges roll first");
    assert_eq!(
        w.template_of("relay").await,
        before[1],
        "relays wait for edges"
    );
    // Edges mid-roll: relays still wait, and say why.
    w.rolling("edge").await;
    w.pass().await;
    assert_eq!(w.template_of("relay").await, before[1]);
    let (_, reason, msg) = w.condition("Progressing").await;
    assert_eq!(reason, "WaitingForTier");
    assert!(msg.contains("relay waits for edge"), "{msg}");
    // Edges done: relays roll; the origin never changes.
    w.settle("edge").await;
    w.pass().await;
    assert_ne!(w.template_of("relay").await, before[1]);
    w.settle("relay").await;
    w.pass().await;
    assert_eq!(w.template_of("origin").await, before[2]);
    assert_eq!(w.condition("Ready").await.0, "True");
    assert_eq!(w.pass().await, 0);
}

/// A tier whose pods all run its current template, none of them ready: a
/// crash-looping tier, or one whose upstream is down. `changed_from` is
/// the revision the controller still calls current (the StatefulSet
/// controller only records a rollout complete once the pods are ready).
async fn not_ready(w: &World, tier: &str) {
    let name = format!("demo-{tier}");
    let s = w.sts().get(&name).await.unwrap();
    let replicas = s.spec.as_ref().unwrap().replicas.unwrap_or(1);
    let rev = s.annotations()["dcdn.io/template-hash"].clone();
    let status = StatefulSetStatus {
        observed_generation: s.metadata.generation,
        replicas,
        ready_replicas: Some(0),
        updated_replicas: Some(replicas),
        current_replicas: Some(0),
        current_revision: Some("before".into()),
        update_revision: Some(rev),
        ..Default::default()
    };
    w.set_status(&name, status).await;
}

#[tokio::test]
async fn the_fix_for_a_broken_origin_rolls_although_the_tiers_that_need_it_are_not_ready() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.pass().await;
    // A bad origin config rolls (the only changed tier, the cluster healthy)…
    w.edit(
        serde_json::json!({"spec": {"origin": {"config": {"fec": {"default_parity_count": 7}}}}}),
    )
    .await;
    w.pass().await;
    let broken = w.template_of("origin").await;
    // …the origin crash-loops, so relays lose their upstream and edges theirs.
    for t in ["origin", "relay", "edge"] {
        not_ready(&w, t).await;
    }
    w.pass().await;
    // The edit that fixes it must land: nothing else can make the others ready.
    w.edit(
        serde_json::json!({"spec": {"origin": {"config": {"fec": {"default_parity_count": 4}}}}}),
    )
    .await;
    w.pass().await;
    assert_ne!(
        w.template_of("origin").await,
        broken,
        "the fix is held back"
    );
    let (_, reason, msg) = w.condition("Progressing").await;
    assert_ne!(reason, "WaitingForTier", "{msg}");
    // An edit of every tier while all are down lands everywhere at once:
    // the order protects delivery, and there is none to protect.
    let before: Vec<String> =
        futures_util::future::join_all(["edge", "relay", "origin"].map(|t| w.template_of(t))).await;
    w.edit(serde_json::json!({"spec": {"image": "dcdn/node:0.1.1"}}))
        .await;
    w.pass().await;
    for (t, b) in ["edge", "relay", "origin"].iter().zip(before) {
        assert_ne!(w.template_of(t).await, b, "{t} held back");
    }
}

#[tokio::test]
async fn a_healthy_tier_waits_for_a_rolling_one_unless_the_gate_is_turned_off() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.pass().await;
    let relay = w.template_of("relay").await;
    w.edit(serde_json::json!({"spec": {
        "edge": {"config": {"fec": {"default_parity_count": 6}}},
        "relay": {"config": {"fec": {"default_parity_count": 6}}},
    }}))
    .await;
    w.pass().await;
    w.rolling("edge").await;
    w.pass().await;
    assert_eq!(w.template_of("relay").await, relay, "relays wait for edges");
    let (_, reason, msg) = w.condition("Progressing").await;
    assert_eq!(reason, "WaitingForTier");
    assert!(msg.contains("dcdn.io/rollout-gate=off"), "{msg}");
    // The escape hatch: every tier takes its template now.
    w.clusters()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"dcdn.io/rollout-gate": "off"}}}),
            ),
        )
        .await
        .unwrap();
    w.pass().await;
    assert_ne!(w.template_of("relay").await, relay, "the gate is off");
}

#[tokio::test]
async fn a_scaled_stateful_set_and_an_edited_service_are_put_back_by_the_next_pass() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.pass().await;
    // `kubectl scale` and `kubectl edit`, under their own field managers.
    w.sts()
        .patch(
            "demo-edge",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(w.client.clone(), NS);
    services
        .patch(
            "demo-edge",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .unwrap();
    assert!(w.pass().await >= 2, "the drift is not written back");
    let replicas = w
        .sts()
        .get("demo-edge")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(replicas, Some(3));
    let svc = services.get("demo-edge").await.unwrap();
    assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("ClusterIP"));
    w.settle_all().await;
    w.pass().await;
    assert_eq!(w.pass().await, 0, "nothing drifted, nothing written");
}

#[tokio::test]
async fn a_service_monitor_turned_off_is_pruned() {
    let w = World::new().await;
    w.edit(serde_json::json!({"spec": {"monitoring": {"serviceMonitor": true}}}))
        .await;
    w.pass().await;
    let monitors: Api<ServiceMonitor> = Api::namespaced(w.client.clone(), NS);
    let listed = || async {
        monitors
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
    };
    assert_eq!(listed().await, 1);
    w.edit(serde_json::json!({"spec": {"monitoring": {"serviceMonitor": false}}}))
        .await;
    w.pass().await;
    assert_eq!(listed().await, 0, "the ServiceMonitor outlived its switch");
}

#[tokio::test]
async fn a_rollout_restart_annotation_survives_the_operators_applies() {
    let w = World::new().await;
    w.pass().await;
    // What `kubectl rollout restart` does, under its own field manager.
    w.sts()
        .patch(
            "demo-edge",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": "2026-03-01T00:00:00Z"
                }}}}}),
            ),
        )
        .await
        .unwrap();
    w.settle_all().await;
    w.edit(serde_json::json!({"spec": {"edge": {"config": {"fec": {"default_parity_count": 6}}}}}))
        .await;
    w.pass().await;
    let s = w.sts().get("demo-edge").await.unwrap();
    let ann = s
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(
        ann.get("kubectl.kubernetes.io/restartedAt")
            .map(String::as_str),
        Some("2026-03-01T00:00:00Z")
    );
}

#[tokio::test]
async fn scaling_down_prunes_the_pdb_and_disabling_nothing_else() {
    let w = World::new().await;
    w.pass().await;
    w.edit(serde_json::json!({"spec": {"relay": {"replicas": 1}}}))
        .await;
    w.pass().await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(w.client.clone(), NS);
    let names: Vec<String> = pdbs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names, vec!["demo-edge".to_owned()]);
    let svcs: Api<Service> = Api::namespaced(w.client.clone(), NS);
    assert_eq!(
        svcs.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
}

#[tokio::test]
async fn deleting_the_cluster_deletes_everything_it_owns() {
    let w = World::new().await;
    w.pass().await;
    w.clusters()
        .delete("demo", &DeleteParams::background())
        .await
        .unwrap();
    let sts = w.sts().list(&ListParams::default()).await.unwrap().items;
    assert!(sts.is_empty(), "{} StatefulSets left", sts.len());
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), NS);
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn an_invalid_resource_is_degraded_not_a_crash_loop() {
    let w = World::new().await;
    w.pass().await;
    // Passes the schema (each field in range) but not the node's own check.
    w.edit(serde_json::json!({"spec": {"relay": {"config": {"quic": {"keep_alive_ms": 9000, "idle_timeout_ms": 6000}}}}}))
        .await;
    w.pass().await;
    let (status, reason, msg) = w.condition("Degraded").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        msg.contains("relay") && msg.contains("keep_alive_ms"),
        "{msg}"
    );
    // Nothing applied; a second pass writes nothing.
    assert_eq!(w.pass().await, 0);
    let fixed =
        serde_json::json!({"spec": {"relay": {"config": {"quic": {"keep_alive_ms": 1000}}}}});
    w.edit(fixed).await;
    w.pass().await;
    assert_eq!(w.condition("Degraded").await.0, "False");
}

#[tokio::test]
async fn a_missing_user_admin_secret_is_reported_by_name_and_picked_up_when_it_appears() {
    let w = World::new().await;
    w.edit(serde_json::json!({"spec": {"adminTokenSecret": "my-tokens"}}))
        .await;
    let action = reconcile(Arc::new(w.cluster().await), w.ctx.clone())
        .await
        .unwrap();
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True");
    assert!(msg.contains("my-tokens"), "{msg}");
    // Key material is not an edit away: the pass comes back on its own.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    // Created later, without the ingest token the origin mounts: named.
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    let mut s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "my-tokens", "namespace": NS},
    }))
    .unwrap();
    s.data = Some(
        [(
            "token".to_owned(),
            k8s_openapi::ByteString(b"t0ken".to_vec()),
        )]
        .into(),
    );
    secrets.create(&PostParams::default(), &s).await.unwrap();
    w.pass().await;
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True");
    assert!(
        msg.contains("my-tokens") && msg.contains("ingest-token"),
        "{msg}"
    );
    // Complete: the cluster is built.
    s.data.as_mut().unwrap().insert(
        "ingest-token".into(),
        k8s_openapi::ByteString(b"1ngest".to_vec()),
    );
    secrets
        .replace("my-tokens", &PostParams::default(), &s)
        .await
        .unwrap();
    w.pass().await;
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "False", "{msg}");
    assert!(w.sts().get_opt("demo-origin").await.unwrap().is_some());
}

#[tokio::test]
async fn a_missing_s3_credentials_secret_or_key_is_reported_by_name_until_it_is_complete() {
    let w = World::new().await;
    w.edit(serde_json::json!({"spec": {"origin": {"upstream": {"s3": {
        "endpoint": "http://s3.local:9000", "bucket": "media",
        "credentialsSecret": {"name": "media-s3", "accessKeyIdKey": "id"}}}}}}))
        .await;
    let action = reconcile(Arc::new(w.cluster().await), w.ctx.clone())
        .await
        .unwrap();
    let (status, reason, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True");
    assert_eq!(reason, "KeyMaterial");
    assert!(
        msg.contains("credentialsSecret") && msg.contains("media-s3"),
        "{msg}"
    );
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    assert!(w.sts().get_opt("demo-origin").await.unwrap().is_none());
    // Created with only the id: the missing key is named.
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    let mut s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "media-s3", "namespace": NS},
    }))
    .unwrap();
    s.data = Some([("id".to_owned(), k8s_openapi::ByteString(b"AKIA".to_vec()))].into());
    secrets.create(&PostParams::default(), &s).await.unwrap();
    w.pass().await;
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True");
    assert!(
        msg.contains("media-s3") && msg.contains("AWS_SECRET_ACCESS_KEY") && !msg.contains("`id`"),
        "{msg}"
    );
    // Complete: the cluster is built.
    s.data.as_mut().unwrap().insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        k8s_openapi::ByteString(b"s3cret".to_vec()),
    );
    secrets
        .replace("media-s3", &PostParams::default(), &s)
        .await
        .unwrap();
    w.pass().await;
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "False", "{msg}");
    assert!(w.sts().get_opt("demo-origin").await.unwrap().is_some());
}

/// Drives a rotation through every phase; at each gate the nodes lag first.
#[tokio::test]
async fn a_full_key_rotation_gated_on_every_pod_and_resumable() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.sync_nodes().await;
    w.pass().await;
    let old = w.signing().await.current.key_id();
    w.edit(serde_json::json!({"metadata": {"annotations": {"dcdn.io/rotate-keys": "now"}}}))
        .await;
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Staged);
    let new = w.signing().await.next.unwrap().key_id();
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Distributing);
    // Nodes have not seen the new bundle: the phase holds and names them.
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Distributing);
    let (_, _, msg) = w.condition("KeyRotation").await;
    assert!(msg.contains("6 of 6 pods"), "{msg}");
    // An operator restart here resumes from the recorded phase: a fresh
    // context (no memory) continues the same rotation.
    let ctx = Arc::new({
        let mut c = Context::new(w.client.clone(), w.nodes.clone(), Metrics::new());
        c.recorder = Some(kube::runtime::events::Recorder::new(
            w.client.clone(),
            kube::runtime::events::Reporter {
                controller: "dcdn-operator".into(),
                instance: Some("restarted".into()),
            },
        ));
        let clock = w.now.clone();
        c.clock = Box::new(move || *clock.lock());
        c
    });
    w.sync_nodes().await;
    reconcile(Arc::new(w.cluster().await), ctx).await.unwrap();
    assert_eq!(w.phase().await, RotationPhase::Activating);
    assert_eq!(
        w.bundle()
            .await
            .keys
            .iter()
            .find(|k| k.id == new.to_string())
            .unwrap()
            .state,
        dcdn_node::crypto::KeyState::Active
    );
    // One edge cannot be reached: Activating waits for it.
    w.nodes.unreachable.lock().insert("demo-edge-1".into());
    w.sync_nodes().await;
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Activating);
    assert!(
        w.condition("KeyRotation")
            .await
            .2
            .contains("demo-edge-1 (connection refused)")
    );
    w.nodes.unreachable.lock().clear();
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Draining);
    // Draining lasts the chunk TTL (1 h by default) plus skew.
    *w.now.lock() += SignedDuration::from_mins(30);
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Draining);
    *w.now.lock() += SignedDuration::from_mins(31);
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Retiring);
    let revoked = w.bundle().await;
    assert_eq!(
        revoked
            .keys
            .iter()
            .find(|k| k.id == old.to_string())
            .unwrap()
            .state,
        dcdn_node::crypto::KeyState::Revoked
    );
    w.pass().await;
    assert_eq!(
        w.phase().await,
        RotationPhase::Retiring,
        "pods must report the revocation"
    );
    w.sync_nodes().await;
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Idle);
    // What the rotation no longer has is gone from the status, not left
    // behind by a merge patch that omits it.
    let rotation = w.cluster().await.status.unwrap().rotation;
    assert_eq!(rotation.next_key_id, None, "{rotation:?}");
    assert_eq!(rotation.waiting_for, None, "{rotation:?}");
    let keys = w.signing().await;
    assert_eq!(keys.current.key_id(), new);
    assert!(keys.next.is_none());
    let bundle = w.bundle().await;
    assert_eq!(bundle.keys.len(), 1);
    assert_eq!(
        w.cluster().await.status.unwrap().active_key_id,
        Some(new.to_string())
    );
    // Rotation never rolled a pod.
    assert_eq!(w.condition("Ready").await.0, "True");
    // Each phase was announced as an event on the DcdnCluster; no event
    // carries key material.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(w.client.clone(), NS);
    let events = events.list(&ListParams::default()).await.unwrap().items;
    let notes: Vec<String> = events
        .iter()
        .filter(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("KeyRotation"))
        })
        .filter_map(|e| e.note.clone())
        .collect();
    assert!(notes.iter().any(|n| n.contains("staged")), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("rotation done")),
        "{notes:?}"
    );
    assert_eq!(notes.len(), 6, "one event per phase entered: {notes:?}");
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(&keys.current.to_secret_hex()));
}

#[tokio::test]
async fn the_origin_is_asked_to_reload_until_it_holds_the_next_key() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.sync_nodes().await;
    w.edit(serde_json::json!({"metadata": {"annotations": {"dcdn.io/rotate-keys": "1"}}}))
        .await;
    w.pass().await;
    w.pass().await;
    // Every pod runs the new bundle but the origin has only the old key file.
    w.sync_nodes().await;
    let current = w.signing().await.current.key_id().to_string();
    w.nodes
        .views
        .lock()
        .get_mut("demo-origin-0")
        .unwrap()
        .can_sign = vec![current];
    w.pass().await;
    assert_eq!(w.phase().await, RotationPhase::Distributing);
    assert!(w.nodes.reloads.load(Ordering::Relaxed) >= 1);
    assert!(
        w.condition("KeyRotation")
            .await
            .2
            .contains("origin to load")
    );
}

/// A `kubernetes.io/tls` Secret as a user (or cert-manager) writes it.
async fn tls_secret(w: &World, name: &str) {
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    let s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": { "name": name, "namespace": NS },
        "data": { "tls.crt": "Y2VydA==", "tls.key": "a2V5" },
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
}

async fn warnings(w: &World) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(w.client.clone(), NS);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn edge_tls_mounts_its_secrets_renders_http_tls_and_serves_443_over_tcp_and_udp() {
    let w = World::new().await;
    tls_secret(&w, "cdn-tls").await;
    w.edit(serde_json::json!({"spec": {"edge": {"tls": {
        "secretName": "cdn-tls", "sniSecretNames": ["other-tls"],
    }}}}))
    .await;
    w.pass().await;
    let sts = w.sts().get("demo-edge").await.unwrap();
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let ctr = &pod.containers[0];
    let volumes = pod.volumes.unwrap();
    for (volume, secret) in [("http-tls-0", "cdn-tls"), ("http-tls-1", "other-tls")] {
        let v = volumes.iter().find(|v| v.name == volume).unwrap();
        assert_eq!(
            v.secret.as_ref().unwrap().secret_name.as_deref(),
            Some(secret)
        );
        let m = ctr
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == volume)
            .unwrap();
        // Whole (no subPath): kubelet's swap of a renewed Secret reaches the pod.
        assert_eq!(m.mount_path, format!("/etc/dcdn/http-tls/{secret}"));
        assert_eq!((m.read_only, m.sub_path.as_ref()), (Some(true), None));
    }
    let ports = ctr.ports.as_ref().unwrap();
    let h3 = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("h3"))
        .unwrap();
    assert_eq!(
        (h3.container_port, h3.protocol.as_deref()),
        (8080, Some("UDP"))
    );
    // Probes stay on the plain admin port.
    let probe = ctr
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into())
    );

    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), NS);
    let toml = cms.get("demo-edge-config").await.unwrap().data.unwrap()["dcdn.toml"].clone();
    let table: toml::Table = toml.parse().unwrap();
    // The contract with the node: default certificate first, SNI ones after.
    let want: toml::Table = "cert_dirs = [\"/etc/dcdn/http-tls/cdn-tls\", \"/etc/dcdn/http-tls/other-tls\"]\nhttp3 = true\nreload_interval_seconds = 10\n"
        .parse()
        .unwrap();
    assert_eq!(table["http_tls"], toml::Value::Table(want));
    // Relays have no client listener; the origin was not asked for TLS.
    for tier in ["relay", "origin"] {
        let toml = cms
            .get(&format!("demo-{tier}-config"))
            .await
            .unwrap()
            .data
            .unwrap()["dcdn.toml"]
            .clone();
        assert!(!toml.contains("http_tls"), "{tier}");
    }

    let services: Api<Service> = Api::namespaced(w.client.clone(), NS);
    let ports: Vec<_> = services
        .get("demo-edge")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap(),
                p.port,
                p.protocol.unwrap(),
                p.target_port.unwrap(),
            )
        })
        .collect();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String as Named;
    assert_eq!(
        ports,
        vec![
            (
                "https".to_owned(),
                443,
                "TCP".to_owned(),
                Named("http".into())
            ),
            ("h3".to_owned(), 443, "UDP".to_owned(), Named("h3".into())),
        ]
    );

    // The SNI Secret does not exist: named in Degraded and in one event.
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True", "{msg}");
    assert!(msg.contains("Secret other-tls does not exist"), "{msg}");
    assert!(!msg.contains("cdn-tls"), "{msg}");
    let events = warnings(&w).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].1.contains("other-tls"), "{events:?}");
    w.settle_all().await;
    w.pass().await;
    assert_eq!(w.pass().await, 0, "a standing problem is written once");
    assert_eq!(warnings(&w).await.len(), 1);
    tls_secret(&w, "other-tls").await;
    w.pass().await;
    assert_eq!(w.condition("Degraded").await.0, "False");
    assert_eq!(w.condition("Ready").await.0, "True");

    // HTTP/3 off: no UDP port in the pod or the Service.
    w.edit(serde_json::json!({"spec": {"edge": {"tls": {"http3": false}}}}))
        .await;
    w.pass().await;
    let svc = services.get("demo-edge").await.unwrap().spec.unwrap();
    let names: Vec<_> = svc
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.name.unwrap())
        .collect();
    assert_eq!(names, ["https"]);
}

#[tokio::test]
async fn a_tls_secret_without_a_key_is_named_in_degraded() {
    let w = World::new().await;
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    let s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "ingest-tls", "namespace": NS },
        "data": { "tls.crt": "Y2VydA==" },
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    w.edit(serde_json::json!({"spec": {"origin": {"tls": {"secretName": "ingest-tls"}}}}))
        .await;
    w.pass().await;
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True");
    assert!(
        msg.contains("origin.tls: Secret ingest-tls has no tls.key"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_certificate_is_made_for_the_issuer_when_cert_manager_is_installed_and_pruned_when_removed()
 {
    let w = World::new().await;
    w.edit(serde_json::json!({"spec": {"edge": {"tls": {
        "secretName": "cdn-tls",
        "certificate": {
            "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
            "dnsNames": ["cdn.example.com"],
        },
    }}}}))
    .await;
    w.pass().await;
    let certs: Api<Certificate> = Api::namespaced(w.client.clone(), NS);
    let cert = certs.get("demo-edge-https").await.unwrap();
    assert_eq!(cert.spec.secret_name, "cdn-tls");
    assert_eq!(cert.spec.dns_names, ["cdn.example.com"]);
    assert_eq!(
        cert.spec.issuer_ref,
        serde_json::json!({"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let uid = w.cluster().await.metadata.uid.unwrap();
    assert_eq!(cert.owner_references()[0].uid, uid);
    let (status, _, msg) = w.condition("Degraded").await;
    assert_eq!(status, "True");
    assert!(
        msg.contains("waiting for cert-manager to issue Secret cdn-tls"),
        "{msg}"
    );
    // cert-manager issues; the pods can start.
    tls_secret(&w, "cdn-tls").await;
    w.settle_all().await;
    w.pass().await;
    assert_eq!(w.condition("Degraded").await.0, "False");
    assert_eq!(
        w.pass().await,
        0,
        "an unchanged Certificate is not rewritten"
    );
    // Dropped from the spec: the Certificate goes (the Secret stays: it is
    // cert-manager's, and may be reused).
    w.edit(serde_json::json!({"spec": {"edge": {"tls": {"certificate": null}}}}))
        .await;
    w.pass().await;
    assert!(certs.get_opt("demo-edge-https").await.unwrap().is_none());
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    assert!(secrets.get_opt("cdn-tls").await.unwrap().is_some());
}

#[tokio::test]
async fn without_cert_manager_a_certificate_is_reported_and_the_rest_applied() {
    let w = World::build(false, false).await;
    w.edit(serde_json::json!({"spec": {"edge": {"tls": {
        "secretName": "cdn-tls",
        "certificate": {"issuerRef": {"name": "ca"}, "dnsNames": ["cdn.example.com"]},
    }}}}))
    .await;
    w.pass().await;
    let (status, reason, msg) = w.condition("Degraded").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Unavailable"));
    assert!(
        msg.contains("cert-manager is not installed") && msg.contains("demo-edge-https"),
        "{msg}"
    );
    let events = warnings(&w).await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "Degraded" && n.contains("cert-manager")),
        "{events:?}"
    );
    // Everything else is there: the edges mount the Secret a user may still create.
    let sts = w.sts().get("demo-edge").await.unwrap();
    let volumes = sts.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    assert!(volumes.iter().any(|v| v.name == "http-tls-0"));
    w.settle_all().await;
    w.pass().await;
    assert_eq!(w.pass().await, 0);
}

#[tokio::test]
async fn tls_on_relays_or_with_a_bad_secret_name_is_refused_naming_the_field() {
    let w = World::new().await;
    w.pass().await;
    for (patch, want) in [
        (
            serde_json::json!({"spec": {"relay": {"tls": {"secretName": "x"}}}}),
            "relays serve no clients",
        ),
        (
            serde_json::json!({"spec": {"relay": {"tls": null}, "edge": {"tls": {"secretName": "../etc"}}}}),
            "\"../etc\" is not a Secret name",
        ),
        (
            serde_json::json!({"spec": {"edge": {"tls": {"secretName": "a", "sniSecretNames": ["a"]}}}}),
            "named twice",
        ),
    ] {
        w.edit(patch).await;
        w.pass().await;
        let (status, reason, msg) = w.condition("Degraded").await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "InvalidSpec"),
            "{msg}"
        );
        assert!(msg.contains(want) && msg.contains("tls"), "{msg}");
    }
}

/// `spec.originStorage` resized on a running cluster: the API server
/// refuses any change to a StatefulSet's volumeClaimTemplates (the fake
/// here refuses it too), so the operator grows the existing claim in place,
/// deletes the origin StatefulSet with its pods and claims orphaned, says
/// so in an event and the Progressing condition, and creates it again with
/// the new templates on the next pass.
#[tokio::test]
async fn resizing_origin_storage_replaces_the_origin_statefulset_and_grows_its_claim() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.sync_nodes().await;
    w.pass().await;
    assert_eq!(w.condition("Ready").await.0, "True");
    // The claim the StatefulSet controller made for the origin pod.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(w.client.clone(), NS);
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "origin-store-demo-origin-0", "namespace": NS },
        "spec": { "accessModes": ["ReadWriteOnce"],
                  "resources": { "requests": { "storage": "10Gi" } } },
    }))
    .unwrap();
    pvcs.create(&PostParams::default(), &claim).await.unwrap();
    w.deletes.lock().clear();

    w.edit(serde_json::json!({ "spec": { "originStorage": { "size": "20Gi" } } }))
        .await;
    w.pass().await;
    assert_eq!(
        *w.deletes.lock(),
        vec![("demo-origin".to_owned(), false)],
        "the origin StatefulSet is deleted with its pods orphaned, nothing else"
    );
    assert!(w.sts().get_opt("demo-origin").await.unwrap().is_none());
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    assert!(pods.get_opt("demo-origin-0").await.unwrap().is_some());
    let grown = pvcs.get("origin-store-demo-origin-0").await.unwrap();
    assert_eq!(
        grown.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "20Gi"
    );
    let (status, reason, message) = w.condition("Progressing").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ReplacingStatefulSet")
    );
    assert!(message.contains("expanded from 10Gi to 20Gi"), "{message}");

    // The next pass creates it again, with the new claim template.
    w.pass().await;
    let origin = w.sts().get("demo-origin").await.unwrap();
    let templates = origin.spec.unwrap().volume_claim_templates.unwrap();
    assert_eq!(
        templates[0]
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "20Gi"
    );
    w.settle_all().await;
    w.sync_nodes().await;
    w.pass().await;
    assert_eq!(w.condition("Ready").await.0, "True");
    assert_eq!(w.deletes.lock().len(), 1, "replaced once");
}

/// A deleted trust-bundle ConfigMap is rebuilt numbered on from the
/// generation the status recorded: nodes refuse a bundle older than the one
/// they run, so one restarted at 0 would never reach them (and a rotation
/// comparing generations would wait for ever, or take a stale node for
/// current).
#[tokio::test]
async fn a_deleted_trust_bundle_is_rebuilt_newer_than_what_the_nodes_run() {
    let w = World::new().await;
    w.pass().await;
    w.settle_all().await;
    w.sync_nodes().await;
    w.pass().await;
    let before = w.bundle().await;
    let recorded = w.cluster().await.status.unwrap().keyset_generation;
    assert_eq!(recorded, Some(before.generation));
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), NS);
    cms.delete("demo-trust-bundle", &DeleteParams::default())
        .await
        .unwrap();
    w.pass().await;
    let after = w.bundle().await;
    assert!(
        after.generation > before.generation,
        "rebuilt at generation {} while nodes run {}",
        after.generation,
        before.generation
    );
    // Same keys, same active one: only the number moved on.
    let ids = |b: &TrustBundle| {
        b.keys
            .iter()
            .map(|k| (k.id.clone(), k.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(
        w.cluster().await.status.unwrap().keyset_generation,
        Some(after.generation)
    );
}

/// An operator RBAC may not list or write ServiceMonitors: with monitoring
/// off that is nothing to prune and no error; with it on, the pass still
/// applies everything else and names the missing permission in Degraded.
#[tokio::test]
async fn a_403_on_service_monitors_fails_no_pass_and_is_named_when_one_is_wanted() {
    let w = World::build(true, true).await;
    w.pass().await;
    w.settle_all().await;
    w.pass().await;
    let (ready, _, msg) = w.condition("Ready").await;
    assert_eq!(ready, "True", "{msg}");
    w.edit(serde_json::json!({"spec": {"monitoring": {"serviceMonitor": true}}}))
        .await;
    w.pass().await;
    let (degraded, _, msg) = w.condition("Degraded").await;
    assert_eq!(degraded, "True", "{msg}");
    assert!(msg.contains("RBAC"), "{msg}");
    // Everything else is still there and owned.
    assert!(w.sts().get("demo-edge").await.is_ok());
}
