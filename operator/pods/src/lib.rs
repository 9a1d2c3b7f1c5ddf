//! Runs the pods the DCDN operator renders, on Docker, so the operator is
//! proven by running what it applies, not only by looking at it.
//!
//! The operator's own reconciler applies a `DcdnCluster` to an in-memory
//! API server (kube-fake-client). This crate plays the parts of a cluster
//! the operator relies on, reading only what the reconciler applied:
//!
//! - the **StatefulSet controller**: one pod per ordinal, all at once
//!   (`Parallel`); on a template change, pods are replaced from the highest
//!   ordinal down, each only once the one before is ready again (what the
//!   controller does for `RollingUpdate`); status counts written back.
//! - the **kubelet**: a container per pod from the template (image,
//!   command, args, env with `fieldRef`/`secretKeyRef`/`configMapKeyRef`
//!   and `$(VAR)`, user/group/read-only root/dropped capabilities), Secret
//!   and ConfigMap volumes projected the kubelet's way (`volumes`), a
//!   killed container restarted, readiness probed and written to the Pod.
//! - **DNS and Services**: Docker network aliases for
//!   `<pod>.<serviceName>.<ns>.svc.cluster.local` and for every Service
//!   whose selector matches the pod.
//!
//! What it does not play is listed in `operator/README.md`.

pub mod docker;
pub mod traffic;
pub mod volumes;

use anyhow::{Context as _, Result, anyhow, bail};
use dcdn_operator::crd::DcdnCluster;
use dcdn_operator::metrics::Metrics;
use dcdn_operator::node_admin::HttpNodeAdmin;
use dcdn_operator::reconcile::{Context, reconcile};
use docker::{LABEL, args, docker};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the runner remembers of a pod it started.
#[derive(Debug, Clone)]
struct PodRun {
    container: String,
    ip: String,
    /// The pod template revision it runs.
    revision: String,
    /// volume name → digest of what is projected.
    volumes: BTreeMap<String, String>,
    ready: bool,
    /// Consecutive readiness failures (against `failureThreshold`).
    failures: u32,
    restarts: u32,
    /// When the kubelet saw the container not running (it waits out the
    /// back-off before starting it again).
    exited_at: Option<Instant>,
    /// Why the container last stopped, as the kubelet reports it in
    /// `lastState.terminated.reason`: `OOMKilled`, `Error` or `Completed`.
    last_termination: Option<(String, i32)>,
    /// Restarts in a row, for the back-off.
    crash_loop: u32,
    started_at: Instant,
    /// `terminationGracePeriodSeconds` (Kubernetes' default 30): how long
    /// a stop waits after SIGTERM before it kills.
    grace_seconds: i64,
}

/// The kubelet's restart back-off: the first restart at once, then 10 s,
/// 20 s, … capped at 5 min; a container that ran 10 min starts over.
fn restart_backoff(crash_loop: u32) -> Duration {
    if crash_loop == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(10u64 << (crash_loop - 1).min(5)).min(Duration::from_secs(300))
    }
}

/// One cluster: the in-memory API server, the operator's context, and the
/// containers that play its pods.
pub struct Runner {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    /// Unique per run: container name prefix, network name, label value.
    pub run: String,
    pub network: String,
    subnet: String,
    work: PathBuf,
    /// Replaces every pod template's image (a run-private tag).
    image: Option<String>,
    ctx: Arc<Context<HttpNodeAdmin>>,
    pods: Mutex<BTreeMap<String, PodRun>>,
    ips: Mutex<BTreeMap<String, u8>>,
    stamp: std::sync::atomic::AtomicU64,
    /// Operator passes that failed, with the error (the runner keeps going).
    pub reconcile_errors: Mutex<Vec<String>>,
    /// Pods replaced (rollout or deletion through the API), in order, with
    /// when: a scenario reads the order tiers rolled in.
    replaced: Mutex<Vec<(Instant, String)>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

fn short_id() -> String {
    let mut b = [0u8; 4];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = blake3::hash(format!("{t}-{}", std::process::id()).as_bytes());
    b.copy_from_slice(&h.as_bytes()[..4]);
    hex::encode(b)
}

/// The pod template revision, as the StatefulSet controller derives one:
/// a hash of the template.
fn revision_of(sts: &StatefulSet) -> String {
    let t = sts
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.template).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    dcdn_operator::build::hash_value(&t)
}

impl Runner {
    /// A fresh API server holding `yaml` (its namespace defaulted to
    /// `namespace`), a private Docker network, a work directory.
    pub async fn new(yaml: &str, namespace: &str, image: Option<String>) -> Result<Arc<Self>> {
        let mut cluster = dcdn_operator::crd::from_yaml(yaml)
            .map_err(|e| anyhow!("the DcdnCluster does not parse: {e}"))?;
        let namespace = cluster
            .metadata
            .namespace
            .get_or_insert_with(|| namespace.to_owned())
            .clone();
        let name = cluster.name_any();
        let client = kube_fake_client::ClientBuilder::new()
            .with_resource::<DcdnCluster>()
            .with_status_subresource::<StatefulSet>()
            .with_status_subresource::<Pod>()
            .build()
            .await
            .map_err(|e| anyhow!("starting the in-memory API server: {e}"))?;
        // testbed/pods/run.sh names the run, to clean up after a crash too.
        let run = std::env::var("DCDN_PODS_RUN")
            .ok()
            .filter(|r| r.starts_with("dcdn-pods-"))
            .unwrap_or_else(|| format!("dcdn-pods-{}", short_id()));
        let (network, subnet) = docker::create_network(&run).await?;
        let work = std::env::temp_dir().join(&run);
        std::fs::create_dir_all(&work)?;
        let ctx = Context::new(client.clone(), HttpNodeAdmin::default(), Metrics::new());
        let runner = Arc::new(Self {
            client,
            namespace,
            name,
            run,
            network,
            subnet,
            work,
            image,
            ctx: Arc::new(ctx),
            pods: Mutex::new(BTreeMap::new()),
            ips: Mutex::new(BTreeMap::new()),
            stamp: std::sync::atomic::AtomicU64::new(0),
            reconcile_errors: Mutex::new(Vec::new()),
            replaced: Mutex::new(Vec::new()),
        });
        runner
            .clusters()
            .create(&PostParams::default(), &cluster)
            .await
            .context("creating the DcdnCluster")?;
        Ok(runner)
    }

    pub fn clusters(&self) -> Api<DcdnCluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn cluster(&self) -> Result<DcdnCluster> {
        Ok(self.clusters().get(&self.name).await?)
    }

    /// Removes every container, the network and the work directory.
    pub async fn teardown(&self) {
        docker::remove_run(&self.run).await;
        let _ = std::fs::remove_dir_all(&self.work);
    }

    /// One operator pass, as the controller would run it.
    pub async fn reconcile(&self) -> Result<()> {
        let c = self.cluster().await?;
        if let Err(e) = reconcile(Arc::new(c), self.ctx.clone()).await {
            let mut errs = self.reconcile_errors.lock();
            if errs.len() < 100 {
                errs.push(e.to_string());
            }
            return Err(anyhow!("reconcile: {e}"));
        }
        Ok(())
    }

    /// Reconciles and plays the cluster every `period` until the task is
    /// dropped. Errors are kept, not fatal: a real cluster retries too.
    pub fn spawn(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let _ = me.reconcile().await;
                if let Err(e) = me.play().await {
                    let mut errs = me.reconcile_errors.lock();
                    if errs.len() < 100 {
                        errs.push(format!("runner: {e:#}"));
                    }
                }
                tokio::time::sleep(period).await;
            }
        })
    }

    fn container_name(&self, pod: &str) -> String {
        format!("{}-{pod}", self.run)
    }

    /// Pod name → (IP, ready) for every pod the runner started.
    pub fn pod_ips(&self) -> BTreeMap<String, (String, bool)> {
        self.pods
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), (p.ip.clone(), p.ready)))
            .collect()
    }

    /// The container playing `pod`, for `docker kill` and logs.
    pub fn container_of(&self, pod: &str) -> Option<String> {
        self.pods.lock().get(pod).map(|p| p.container.clone())
    }

    /// Why `pod`'s container last stopped (`OOMKilled`, `Error`, …).
    pub fn last_termination(&self, pod: &str) -> Option<String> {
        self.pods
            .lock()
            .get(pod)
            .and_then(|p| p.last_termination.as_ref().map(|(r, _)| r.clone()))
    }

    pub fn restarts(&self, pod: &str) -> u32 {
        self.pods.lock().get(pod).map_or(0, |p| p.restarts)
    }

    /// Pods replaced since `since`, in the order they were taken down.
    pub fn replaced_since(&self, since: Instant) -> Vec<(Instant, String)> {
        self.replaced
            .lock()
            .iter()
            .filter(|(t, _)| *t >= since)
            .cloned()
            .collect()
    }

    /// The IPs a Service routes to now, as the endpoints controller lists
    /// them: pods its selector matches that are Ready. A pod being taken
    /// down has already left (`delete_pod` forgets it before stopping it),
    /// as a terminating pod leaves its EndpointSlice before its SIGTERM
    /// matters.
    pub async fn endpoints(&self, service: &str) -> Result<Vec<String>> {
        let svc: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = svc
            .get(service)
            .await?
            .spec
            .and_then(|s| s.selector)
            .unwrap_or_default();
        if selector.is_empty() {
            return Ok(Vec::new());
        }
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let matching: Vec<String> = pod_api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| {
                let labels = p.labels();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|p| p.name_any())
            .collect();
        let pods = self.pods.lock();
        Ok(matching
            .iter()
            .filter_map(|n| pods.get(n).filter(|p| p.ready).map(|p| p.ip.clone()))
            .collect())
    }

    fn ip_for(&self, pod: &str) -> Result<String> {
        let mut ips = self.ips.lock();
        let n = match ips.get(pod) {
            Some(n) => *n,
            None => {
                let n = u8::try_from(ips.len() + 10)
                    .ok()
                    .filter(|n| *n < 250)
                    .ok_or_else(|| anyhow!("more than 240 pods in one run"))?;
                ips.insert(pod.to_owned(), n);
                n
            }
        };
        Ok(format!("{}.{n}", self.subnet))
    }

    /// One pass of the StatefulSet controller and the kubelet over every
    /// StatefulSet the operator applied.
    pub async fn play(&self) -> Result<()> {
        let sts_api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let all = sts_api.list(&ListParams::default()).await?.items;
        let running = docker::states(&self.run).await?;
        // `kubectl delete pod`: a pod the runner plays whose object is gone
        // is stopped (graceful, as the kubelet does), and its StatefulSet
        // makes it again below.
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let objects: Vec<String> = pod_api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let deleted: Vec<String> = self
            .pods
            .lock()
            .keys()
            .filter(|p| !objects.contains(p))
            .cloned()
            .collect();
        for p in deleted {
            self.replaced.lock().push((Instant::now(), p.clone()));
            self.delete_pod(&p).await?;
        }
        let mut wanted_pods = Vec::new();
        for sts in &all {
            wanted_pods.extend(self.play_stateful_set(sts, &running).await?);
        }
        // Pods of StatefulSets that are gone or scaled down.
        let gone: Vec<String> = self
            .pods
            .lock()
            .keys()
            .filter(|p| !wanted_pods.contains(p))
            .cloned()
            .collect();
        for p in gone {
            self.delete_pod(&p).await?;
        }
        Ok(())
    }

    async fn play_stateful_set(
        &self,
        sts: &StatefulSet,
        running: &BTreeMap<String, bool>,
    ) -> Result<Vec<String>> {
        let name = sts.name_any();
        let spec = sts.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let update_rev = revision_of(sts);
        let pod_names: Vec<String> = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        // Create what is missing (Parallel: all at once), restart what died,
        // refresh volumes, probe readiness.
        for pod in &pod_names {
            let known = self.pods.lock().get(pod).cloned();
            match known {
                None => {
                    if let Err(e) = self.start_pod(sts, pod, &update_rev).await {
                        // Like a pod stuck in ContainerCreating: retried next pass.
                        tracing_note(&format!("{pod}: not started: {e:#}"));
                    }
                }
                Some(p) => {
                    if !running.get(&p.container).copied().unwrap_or(false) {
                        // restartPolicy Always: the kubelet starts it again,
                        // after the back-off; not running is not ready.
                        let exited = p.exited_at.unwrap_or_else(Instant::now);
                        if p.exited_at.is_none() {
                            let why = termination_reason(&p.container).await;
                            if let Some(p) = self.pods.lock().get_mut(pod) {
                                p.last_termination = why;
                            }
                        }
                        let crash_loop = if p.started_at.elapsed() > Duration::from_secs(600) {
                            0
                        } else {
                            p.crash_loop
                        };
                        let due = exited.elapsed() >= restart_backoff(crash_loop);
                        if due {
                            docker(&args(["start", &p.container])).await?;
                        }
                        if let Some(p) = self.pods.lock().get_mut(pod) {
                            p.ready = false;
                            if due {
                                p.restarts += 1;
                                p.crash_loop = crash_loop + 1;
                                p.exited_at = None;
                                p.started_at = Instant::now();
                            } else {
                                p.exited_at = Some(exited);
                            }
                        }
                        if !due {
                            continue;
                        }
                    }
                    self.refresh_volumes(sts, pod).await?;
                    self.probe(sts, pod).await;
                }
            }
        }
        // RollingUpdate: the highest ordinal not on the update revision is
        // replaced; the controller then waits for it to be ready.
        for pod in pod_names.iter().rev() {
            let Some(p) = self.pods.lock().get(pod).cloned() else {
                break;
            };
            if p.revision != update_rev {
                self.replaced.lock().push((Instant::now(), pod.clone()));
                self.delete_pod(pod).await?;
                if let Err(e) = self.start_pod(sts, pod, &update_rev).await {
                    tracing_note(&format!("{pod}: not started: {e:#}"));
                }
                break;
            }
            if !p.ready {
                break;
            }
        }
        self.write_status(sts, &pod_names, &update_rev).await?;
        Ok(pod_names)
    }

    async fn write_status(
        &self,
        sts: &StatefulSet,
        pods: &[String],
        update_rev: &str,
    ) -> Result<()> {
        let name = sts.name_any();
        let snapshot: Vec<Option<PodRun>> = {
            let known = self.pods.lock();
            pods.iter().map(|p| known.get(p).cloned()).collect()
        };
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        for (pod, run) in pods.iter().zip(&snapshot) {
            let Some(run) = run else { continue };
            let last_state = match &run.last_termination {
                Some((reason, code)) => {
                    json!({ "terminated": { "reason": reason, "exitCode": code } })
                }
                None => json!({}),
            };
            let status = json!({ "status": {
                "phase": "Running",
                "podIP": run.ip,
                "podIPs": [{ "ip": run.ip }],
                "conditions": [{ "type": "Ready", "status": if run.ready { "True" } else { "False" } }],
                "containerStatuses": [{
                    "name": "dcdn", "ready": run.ready, "restartCount": run.restarts,
                    "image": "", "imageID": "", "started": true,
                    "lastState": last_state,
                }],
            }});
            pod_api
                .patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("writing status of pod {pod}"))?;
        }
        let ready = snapshot.iter().flatten().filter(|p| p.ready).count() as i32;
        let updated = snapshot
            .iter()
            .flatten()
            .filter(|p| p.revision == update_rev)
            .count() as i32;
        let want = pods.len() as i32;
        let old = sts.status.clone().unwrap_or_default();
        // The controller records a rollout complete once every pod is on
        // the update revision and ready.
        let current = if updated == want && ready == want {
            Some(update_rev.to_owned())
        } else {
            old.current_revision.clone().or(Some(update_rev.to_owned()))
        };
        let status = StatefulSetStatus {
            observed_generation: sts.metadata.generation,
            replicas: snapshot.iter().flatten().count() as i32,
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            updated_replicas: Some(updated),
            current_replicas: Some(
                snapshot
                    .iter()
                    .flatten()
                    .filter(|p| Some(&p.revision) == current.as_ref())
                    .count() as i32,
            ),
            current_revision: current,
            update_revision: Some(update_rev.to_owned()),
            ..Default::default()
        };
        if sts.status.as_ref() != Some(&status) {
            let sts_api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
            sts_api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .with_context(|| format!("writing status of StatefulSet {name}"))?;
        }
        Ok(())
    }

    /// Where the claim `<claim>-<pod>` (the PVC a StatefulSet makes from a
    /// volumeClaimTemplate) keeps its files: outside the pod's directory,
    /// so it survives the pod's deletion and replacement, as a PVC does;
    /// it goes only with the run.
    fn claim_dir(&self, claim: &str, pod: &str) -> PathBuf {
        self.work.join("claims").join(format!("{claim}-{pod}"))
    }

    async fn delete_pod(&self, pod: &str) -> Result<()> {
        let Some(p) = self.pods.lock().remove(pod) else {
            return Ok(());
        };
        // SIGTERM, then the pod's grace period, as the kubelet does.
        let grace = p.grace_seconds.max(0).to_string();
        let _ = docker(&args(["stop", "-t", &grace, &p.container])).await;
        let _ = docker(&args(["rm", "-f", &p.container])).await;
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        match pod_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_dir_all(self.work.join(pod));
        Ok(())
    }

    /// A Secret's or ConfigMap's data, decoded; `None` when it does not exist.
    async fn source_data(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        Ok(match kind {
            "Secret" => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                api.get_opt(name).await?.map(|s| {
                    let mut m: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in s.string_data.unwrap_or_default() {
                        m.insert(k, v.into_bytes());
                    }
                    m
                })
            }
            _ => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
                api.get_opt(name).await?.map(|c| {
                    let mut m: BTreeMap<String, Vec<u8>> = c
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    for (k, v) in c.binary_data.unwrap_or_default() {
                        m.insert(k, v.0);
                    }
                    m
                })
            }
        })
    }

    /// Every Secret/ConfigMap volume of the pod, as the kubelet would
    /// project it now. A missing source is an error (the pod cannot start).
    async fn volume_contents(&self, spec: &PodSpec) -> Result<BTreeMap<String, volumes::Contents>> {
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        let mut out = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let (kind, src, items, mode, optional) = if let Some(s) = &v.secret {
                (
                    "Secret",
                    s.secret_name.clone().unwrap_or_default(),
                    s.items.clone(),
                    s.default_mode,
                    s.optional.unwrap_or(false),
                )
            } else if let Some(c) = &v.config_map {
                (
                    "ConfigMap",
                    c.name.clone(),
                    c.items.clone(),
                    c.default_mode,
                    c.optional.unwrap_or(false),
                )
            } else if v.empty_dir.is_some() {
                out.insert(
                    v.name.clone(),
                    volumes::Contents {
                        files: Vec::new(),
                        group: None,
                    },
                );
                continue;
            } else {
                bail!(
                    "volume {}: only Secret, ConfigMap and emptyDir volumes are played",
                    v.name
                );
            };
            let data = match self.source_data(kind, &src).await? {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => bail!("volume {}: {kind} {src} does not exist", v.name),
            };
            let items: Option<Vec<(String, String, Option<i32>)>> =
                items.map(|items| items.into_iter().map(|i| (i.key, i.path, i.mode)).collect());
            if let Some(items) = &items
                && !optional
                && let Some((k, _, _)) = items.iter().find(|(k, _, _)| !data.contains_key(k))
            {
                bail!("volume {}: {kind} {src} has no key {k}", v.name);
            }
            out.insert(
                v.name.clone(),
                volumes::project(&data, items.as_deref(), mode, fs_group),
            );
        }
        Ok(out)
    }

    fn next_stamp(&self) -> String {
        let n = self
            .stamp
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}_{n}", std::process::id())
    }

    async fn refresh_volumes(&self, sts: &StatefulSet, pod: &str) -> Result<()> {
        let Some(spec) = sts.spec.as_ref().and_then(|s| s.template.spec.clone()) else {
            return Ok(());
        };
        // A source deleted under a running pod: the kubelet keeps the last files.
        let Ok(contents) = self.volume_contents(&spec).await else {
            return Ok(());
        };
        let have = self
            .pods
            .lock()
            .get(pod)
            .map(|p| p.volumes.clone())
            .unwrap_or_default();
        for (name, c) in contents {
            let digest = c.digest();
            if have.get(&name) == Some(&digest) || c.files.is_empty() && have.contains_key(&name) {
                continue;
            }
            volumes::write(&self.work.join(pod).join(&name), &c, &self.next_stamp())?;
            if let Some(p) = self.pods.lock().get_mut(pod) {
                p.volumes.insert(name, digest);
            }
        }
        Ok(())
    }

    /// `fieldRef`, `secretKeyRef`, `configMapKeyRef`, and `$(VAR)`
    /// expansion from earlier entries, as the kubelet builds a container's
    /// environment.
    async fn environment(
        &self,
        ctr: &Container,
        pod: &str,
        ip: &str,
    ) -> Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = Vec::new();
        for e in ctr.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                let mut v = v.clone();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            } else if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => pod.to_owned(),
                        "metadata.namespace" => self.namespace.clone(),
                        "status.podIP" => ip.to_owned(),
                        "spec.nodeName" => "docker".to_owned(),
                        other => bail!("env {}: fieldRef {other} is not played", e.name),
                    }
                } else if let Some(s) = &from.secret_key_ref {
                    let data = self
                        .source_data("Secret", &s.name)
                        .await?
                        .unwrap_or_default();
                    match data.get(&s.key) {
                        Some(b) => String::from_utf8_lossy(b).into_owned(),
                        None if s.optional == Some(true) => continue,
                        None => bail!("env {}: Secret {} has no key {}", e.name, s.name, s.key),
                    }
                } else if let Some(c) = &from.config_map_key_ref {
                    let data = self
                        .source_data("ConfigMap", &c.name)
                        .await?
                        .unwrap_or_default();
                    match data.get(&c.key) {
                        Some(b) => String::from_utf8_lossy(b).into_owned(),
                        None if c.optional == Some(true) => continue,
                        None => bail!("env {}: ConfigMap {} has no key {}", e.name, c.name, c.key),
                    }
                } else {
                    bail!("env {}: valueFrom kind not played", e.name);
                }
            } else {
                String::new()
            };
            env.push((e.name.clone(), value));
        }
        Ok(env)
    }

    /// DNS names of a pod: its own under the StatefulSet's governing
    /// Service, and every Service selecting it.
    async fn aliases(
        &self,
        sts: &StatefulSet,
        pod: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        let ns = &self.namespace;
        let mut out = vec![pod.to_owned()];
        if let Some(svc) = sts
            .spec
            .as_ref()
            .and_then(|s| s.service_name.clone())
            .filter(|s| !s.is_empty())
        {
            out.push(format!("{pod}.{svc}.{ns}.svc.cluster.local"));
            out.push(format!("{pod}.{svc}.{ns}.svc"));
            out.push(format!("{pod}.{svc}"));
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        for s in api.list(&ListParams::default()).await?.items {
            let sel = s
                .spec
                .as_ref()
                .and_then(|sp| sp.selector.clone())
                .unwrap_or_default();
            if !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                let n = s.name_any();
                out.extend([
                    n.clone(),
                    format!("{n}.{ns}"),
                    format!("{n}.{ns}.svc"),
                    format!("{n}.{ns}.svc.cluster.local"),
                ]);
            }
        }
        Ok(out)
    }

    async fn start_pod(&self, sts: &StatefulSet, pod: &str, revision: &str) -> Result<()> {
        let template = sts
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let spec = template
            .spec
            .clone()
            .ok_or_else(|| anyhow!("no pod spec"))?;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let ctr = spec
            .containers
            .first()
            .ok_or_else(|| anyhow!("no container"))?;
        let ip = self.ip_for(pod)?;
        // Volumes first: without them the pod does not start.
        let contents = self.volume_contents(&spec).await?;
        let env = self.environment(ctr, pod, &ip).await?;
        let mut digests = BTreeMap::new();
        for (name, c) in &contents {
            volumes::write(&self.work.join(pod).join(name), c, &self.next_stamp())?;
            digests.insert(name.clone(), c.digest());
        }
        // A claim from volumeClaimTemplates outlives its pod (the origin of
        // record keeps what it acknowledged across restarts), so it is made
        // once and never rewritten; with fsGroup the kubelet hands it to that
        // group, setgid and group-writable.
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        for claim in sts
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.as_ref())
            .into_iter()
            .flatten()
        {
            let name = claim.metadata.name.clone().unwrap_or_default();
            let dir = self.claim_dir(&name, pod);
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating claim {}", dir.display()))?;
                use std::os::unix::fs::PermissionsExt;
                let mode = match fs_group {
                    Some(g) => {
                        std::os::unix::fs::chown(&dir, Some(0), u32::try_from(g).ok())?;
                        0o2775
                    }
                    None => 0o777,
                };
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
            }
        }
        // The Pod object, owned by its StatefulSet.
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let _ = pod_api.delete(pod, &DeleteParams::default()).await;
        let mut meta = template.metadata.clone().unwrap_or_default();
        meta.name = Some(pod.to_owned());
        meta.namespace = Some(self.namespace.clone());
        let mut l = labels.clone();
        l.insert("controller-revision-hash".into(), revision.to_owned());
        l.insert("statefulset.kubernetes.io/pod-name".into(), pod.to_owned());
        meta.labels = Some(l);
        meta.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: sts.name_any(),
                uid: sts.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        let obj = Pod {
            metadata: meta,
            spec: Some(spec.clone()),
            status: None,
        };
        pod_api
            .create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating pod {pod}"))?;

        let container = self.container_name(pod);
        let _ = docker(&args(["rm", "-f", &container])).await;
        let mut a = args(["run", "-d", "--name", &container, "--hostname", pod]);
        a.extend(args(["--label", &format!("{LABEL}={}", self.run)]));
        a.extend(args(["--network", &self.network, "--ip", &ip]));
        for alias in self.aliases(sts, pod, &labels).await? {
            a.extend(args(["--network-alias", &alias]));
        }
        for d in [
            format!("{}.svc.cluster.local", self.namespace),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ] {
            a.extend(args(["--dns-search", &d]));
        }
        // Security context: the container's wins over the pod's.
        let psc = spec.security_context.clone().unwrap_or_default();
        let csc = ctr.security_context.clone().unwrap_or_default();
        let uid = csc.run_as_user.or(psc.run_as_user);
        let gid = csc.run_as_group.or(psc.run_as_group);
        if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid.is_none_or(|u| u == 0) {
            bail!(
                "runAsNonRoot without a numeric non-root runAsUser: the kubelet refuses to start it"
            );
        }
        match (uid, gid) {
            (Some(u), Some(g)) => a.extend(args(["--user", &format!("{u}:{g}")])),
            (Some(u), None) => a.extend(args(["--user", &u.to_string()])),
            _ => {}
        }
        if let Some(g) = psc.fs_group {
            a.extend(args(["--group-add", &g.to_string()]));
        }
        for g in psc.supplemental_groups.iter().flatten() {
            a.extend(args(["--group-add", &g.to_string()]));
        }
        if csc.read_only_root_filesystem == Some(true) {
            a.push("--read-only".into());
        }
        if csc.allow_privilege_escalation == Some(false) {
            a.extend(args(["--security-opt", "no-new-privileges"]));
        }
        if let Some(caps) = &csc.capabilities {
            for c in caps.drop.iter().flatten() {
                a.extend(args(["--cap-drop", c]));
            }
            for c in caps.add.iter().flatten() {
                a.extend(args(["--cap-add", c]));
            }
        }
        // The memory limit, enforced as the kubelet's cgroup does: over it,
        // the container is OOM-killed (and restarted after the back-off).
        if let Some(q) = ctr
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
        {
            let bytes = memory_bytes(&q.0)
                .ok_or_else(|| anyhow!("limits.memory {:?} is not a quantity", q.0))?
                // Docker refuses less than 6 MB; the kubelet would start it and
                // see it killed, which is what 6 MB does too.
                .max(6 * 1024 * 1024);
            a.extend(args([
                "--memory",
                &bytes.to_string(),
                "--memory-swap",
                &bytes.to_string(),
            ]));
        }
        for (k, v) in &env {
            a.extend(args(["-e", &format!("{k}={v}")]));
        }
        let claims: Vec<String> = sts
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        for m in ctr.volume_mounts.iter().flatten() {
            if m.sub_path.is_some() {
                bail!("mount {}: subPath is not played", m.name);
            }
            let host = if claims.contains(&m.name) {
                self.claim_dir(&m.name, pod)
            } else {
                self.work.join(pod).join(&m.name)
            };
            let ro = if m.read_only == Some(true) { ":ro" } else { "" };
            a.extend(args([
                "-v",
                &format!("{}:{}{ro}", host.display(), m.mount_path),
            ]));
        }
        let cmd = ctr.command.clone().unwrap_or_default();
        if let Some(first) = cmd.first() {
            a.extend(args(["--entrypoint", first]));
        }
        let image = self
            .image
            .clone()
            .or(ctr.image.clone())
            .ok_or_else(|| anyhow!("no image"))?;
        a.push(image);
        a.extend(cmd.into_iter().skip(1));
        a.extend(ctr.args.clone().unwrap_or_default());
        docker(&a).await?;
        self.pods.lock().insert(
            pod.to_owned(),
            PodRun {
                container,
                ip,
                revision: revision.to_owned(),
                volumes: digests,
                ready: false,
                failures: 0,
                restarts: 0,
                exited_at: None,
                last_termination: None,
                crash_loop: 0,
                started_at: Instant::now(),
                grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
            },
        );
        Ok(())
    }

    /// The readiness probe, as the kubelet runs it: an HTTP GET to the pod
    /// IP; ready after one success, unready after `failureThreshold` misses.
    async fn probe(&self, sts: &StatefulSet, pod: &str) {
        let Some(ctr) = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
        else {
            return;
        };
        let Some(ip) = self.pods.lock().get(pod).map(|p| p.ip.clone()) else {
            return;
        };
        let ok = match ctr
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
        {
            None => true,
            Some(get) => {
                let port = match &get.port {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => Some(*p),
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n) => ctr
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(n.as_str()))
                        .map(|p| p.container_port),
                };
                let timeout = ctr
                    .readiness_probe
                    .as_ref()
                    .and_then(|p| p.timeout_seconds)
                    .unwrap_or(1);
                match port {
                    Some(port) => {
                        http_ok(&ip, port, get.path.as_deref().unwrap_or("/"), timeout).await
                    }
                    None => false,
                }
            }
        };
        let threshold = ctr
            .readiness_probe
            .as_ref()
            .and_then(|p| p.failure_threshold)
            .unwrap_or(3)
            .max(1) as u32;
        if let Some(p) = self.pods.lock().get_mut(pod) {
            if ok {
                p.ready = true;
                p.failures = 0;
            } else {
                p.failures += 1;
                if p.failures >= threshold {
                    p.ready = false;
                }
            }
        }
    }

    /// Plays the cluster until every pod of every tier is ready and the
    /// `DcdnCluster` says `Ready=True`, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let c = self.cluster().await?;
            let ready = c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let msg = c
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                bail!(
                    "not Ready after {timeout:?}: {msg}; last errors: {:?}",
                    self.reconcile_errors
                        .lock()
                        .iter()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A key of a Secret the operator wrote (tokens for the checks).
    pub async fn secret_value(&self, secret: &str, key: &str) -> Result<String> {
        let data = self
            .source_data("Secret", secret)
            .await?
            .ok_or_else(|| anyhow!("no Secret {secret}"))?;
        let v = data
            .get(key)
            .ok_or_else(|| anyhow!("Secret {secret} has no key {key}"))?;
        Ok(String::from_utf8_lossy(v).trim().to_owned())
    }

    /// Runs the node image's CLI in a throwaway container on the cluster's
    /// network (so cluster DNS names resolve), returns its output.
    /// `env` is passed by name only, so values never show in `ps`.
    pub async fn client_run(
        &self,
        image: &str,
        env: &[(&str, &str)],
        cli: &[String],
    ) -> Result<(bool, String)> {
        let mut a = args(["run", "--rm", "--network", &self.network, "--label"]);
        a.push(format!("{LABEL}={}", self.run));
        for (k, _) in env {
            a.extend(args(["-e", k]));
        }
        for d in [
            format!("{}.svc.cluster.local", self.namespace),
            "svc.cluster.local".into(),
        ] {
            a.extend(args(["--dns-search", &d]));
        }
        a.push(image.to_owned());
        a.extend(cli.iter().cloned());
        let out = tokio::process::Command::new("docker")
            .args(&a)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Logs of every container of the run, for a failure report.
    pub async fn logs(&self) -> String {
        let mut out = String::new();
        let pods: Vec<(String, String)> = self
            .pods
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.container.clone()))
            .collect();
        for (pod, c) in pods {
            let text = docker(&args(["logs", "--tail", "20", &c]))
                .await
                .unwrap_or_default();
            let err = tokio::process::Command::new("docker")
                .args(["logs", "--tail", "20", &c])
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            out.push_str(&format!("--- {pod}\n{text}{err}"));
        }
        out
    }

    /// The pod template image the first StatefulSet names (for the client).
    pub fn image_override(&self) -> Option<&str> {
        self.image.as_deref()
    }
}

/// Why a stopped container stopped, the kubelet's way: the kernel's OOM
/// killer (the cgroup's memory limit) is `OOMKilled`, a non-zero exit
/// `Error`, a zero exit `Completed`.
async fn termination_reason(container: &str) -> Option<(String, i32)> {
    let out = docker(&args([
        "inspect",
        "--format",
        "{{.State.OOMKilled}} {{.State.ExitCode}}",
        container,
    ]))
    .await
    .ok()?;
    let (oom, code) = out.trim().split_once(' ')?;
    let code: i32 = code.parse().ok()?;
    let reason = if oom == "true" {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Some((reason.to_owned(), code))
}

/// A memory quantity (`512Mi`, `1G`, `64M`, `100000`) in bytes.
pub fn memory_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    Some((n * mult) as u64)
}

fn tracing_note(msg: &str) {
    if std::env::var_os("DCDN_PODS_VERBOSE").is_some() {
        eprintln!("dcdn-pods: {msg}");
    }
}

/// An HTTP/1.0 GET: 200–399 is a success, as for a kubelet probe.
pub async fn http_ok(ip: &str, port: i32, path: &str, timeout_s: i32) -> bool {
    http_get(ip, port, path, timeout_s)
        .await
        .is_some_and(|(code, _)| (200..400).contains(&code))
}

/// An HTTP/1.0 GET returning the status code and body (bounded at 4 MiB).
pub async fn http_get(ip: &str, port: i32, path: &str, timeout_s: i32) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(format!("{ip}:{port}"))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.take(4 << 20).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(timeout_s.max(1) as u64), fut)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_as_the_api_server_reads_them() {
        assert_eq!(memory_bytes("512Mi"), Some(512 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("64M"), Some(64_000_000));
        assert_eq!(memory_bytes("100000"), Some(100_000));
        assert_eq!(memory_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(memory_bytes("12parsecs"), None);
    }

    #[test]
    fn the_kubelet_back_off_starts_at_once_then_doubles_from_10_s_to_5_min() {
        let steps: Vec<u64> = (0..9).map(|n| restart_backoff(n).as_secs()).collect();
        assert_eq!(steps, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
