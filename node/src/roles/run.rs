//! Starting and stopping a node: load credentials, bind the mesh endpoint and
//! the HTTP listeners, spawn the loops, and drain on shutdown.

use crate::crypto::{KeyRing, ReplayGuard, Reputation, Signer, Verifier};
use crate::fec::{Assembler, Encoder};
use crate::metrics::Metrics;
use crate::p2p::Choker;
use crate::roles::discovery;
use crate::roles::flight::SingleFlight;
use crate::roles::ingest::{self, IngestConfig, Publish, PublishError, Published};
use crate::roles::live_http;
use crate::roles::mesh;
use crate::roles::node::{EdgeContent, Manifests, NodeError, Shared};
use crate::roles::origin_store::{OriginStore, OriginStoreError, StoredObject};
use crate::roles::serve::{self, ServeConfig};
use crate::roles::settings::{NodeSettings, Role};
use crate::roles::upstream::Upstream;
use crate::store::ChunkStore;
use crate::transport::{MeshEndpoint, NodeIdentity};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

/// Credentials a node starts with.
pub struct Credentials {
    pub identity: NodeIdentity,
    pub ca_pem: String,
    pub keys: KeyRing,
    /// Secret keys (origin only).
    pub signers: Vec<Signer>,
    /// Token publishers present to the origin's ingest API (its digest).
    pub ingest_token: Option<crate::auth::Token>,
    /// Admin API tokens.
    pub admin_tokens: crate::admin::AdminTokens,
}

/// A started node: its shared state and the addresses it actually bound.
pub struct Running {
    pub shared: Arc<Shared>,
    pub mesh_addr: std::net::SocketAddr,
    pub http_addr: Option<std::net::SocketAddr>,
    pub admin_addr: std::net::SocketAddr,
    /// The client, ingest and admin listeners: drained first.
    http_tasks: tokio::task::JoinSet<()>,
    /// The mesh and upkeep: stopped after the drain.
    tasks: tokio::task::JoinSet<()>,
}

/// The longest a stop waits, after `grace`, for its close frames to reach
/// its peers (`wait_idle`: about three round trips each on a sound link).
pub const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// The longest a drain waits for the mesh to go quiet before it closes
/// the peer sessions anyway.
const MAX_LINGER: Duration = Duration::from_secs(5);

impl Running {
    /// Drains, in the order that loses nothing, all within `grace`:
    ///
    /// 1. readiness fails and the HTTP listeners stop accepting; requests
    ///    in flight finish with the mesh still up (an edge's read fetches
    ///    through it, an origin's upload pushes through it);
    /// 2. an origin or relay sends what its push queues hold, then stays
    ///    in the mesh until it has been quiet (no push sent, no pull
    ///    answered) for the time downstream takes to notice a chunk FEC
    ///    could not rebuild and pull it: what was acknowledged to a
    ///    publisher is held downstream before this node goes;
    /// 3. the peer sessions close and every task stops;
    /// 4. for at most [`CLOSE_FLUSH`] more, the peers are told: the close
    ///    frames are sent before the process exits.
    pub async fn shutdown(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        // Requests that do not end (a live upload that goes on) must not
        // take the time the mesh needs to hand over what was acknowledged.
        let linger_budget = if self.shared.settings.role == Role::Edge {
            Duration::ZERO
        } else {
            MAX_LINGER.min(grace / 2)
        };
        self.shared.shutdown();
        let _ = tokio::time::timeout_at(deadline - linger_budget, async {
            while self.http_tasks.join_next().await.is_some() {}
        })
        .await;
        self.http_tasks.abort_all();
        if self.shared.settings.role != Role::Edge {
            let linger_deadline = deadline.min(tokio::time::Instant::now() + MAX_LINGER);
            // With every push confirmed nothing is left to repair from
            // here; one upkeep tick of quiet lets a pull racing the drain
            // arrive.
            let quiet = HOUSEKEEPING_TICK;
            // Once the pushes have had a reassembly timeout to land, and
            // then every upkeep tick, what is still unconfirmed is announced
            // again.
            let mut next_announce = tokio::time::Instant::now()
                + Duration::from_millis(
                    self.shared.settings.config.fec.reassembly_timeout_ms.get(),
                );
            loop {
                let queued = self.shared.pushes_queued();
                let serving = self.shared.pulls_serving.load(Ordering::Relaxed);
                let unconfirmed = self.shared.pushes_unconfirmed();
                let quiet_for = self.shared.mesh_quiet_for();
                // Quiet alone is no proof: a downstream peer under load, or
                // cut off for a while, repairs late.
                if queued == 0 && serving == 0 && unconfirmed == 0 && quiet_for >= quiet {
                    break;
                }
                if tokio::time::Instant::now() >= linger_deadline {
                    tracing::warn!(
                        queued,
                        serving,
                        unconfirmed,
                        quiet_for_ms = quiet_for.as_millis() as u64,
                        "drain: the mesh was still busy when the drain's time ran out"
                    );
                    break;
                }
                let now = tokio::time::Instant::now();
                if unconfirmed > 0 && queued == 0 && now >= next_announce {
                    self.shared.announce_unconfirmed();
                    next_announce = now + HOUSEKEEPING_TICK;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.shared.stop_mesh();
        let _ = tokio::time::timeout_at(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.shared.endpoint.close();
        // The close frames must leave before the process does: a peer that
        // never hears them keeps this node as a source, its requests
        // stalling, until a stateless reset from the process that takes
        // the address next or its idle timeout (in the pods' rollout, 2 of
        // 4 edges kept a relay gone for 6 s). Waiting also answers, while
        // the connections drain, a peer whose close frame was lost.
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.shared.endpoint.wait_idle()).await;
    }
}

/// Starts a node.
pub async fn start(settings: NodeSettings, creds: Credentials) -> Result<Running, NodeError> {
    let metrics = Metrics::new(settings.role.as_str())?;
    let endpoint = MeshEndpoint::bind(
        settings.mesh_listen,
        &creds.identity,
        &creds.ca_pem,
        settings.mesh_limits(),
    )
    .map_err(|source| NodeError::Mesh {
        addr: settings.mesh_listen,
        source,
    })?;
    let mesh_addr = endpoint.local_addr().map_err(|source| NodeError::Bind {
        what: "the mesh endpoint",
        addr: settings.mesh_listen,
        source,
    })?;
    let mut settings = settings;
    if settings.mesh_advertise.port() == 0 {
        settings.mesh_advertise = mesh_addr;
    }
    let keys = Arc::new(RwLock::new(creds.keys));
    let verifier = Verifier::new(keys.clone(), settings.verify_config());
    let signers = creds
        .signers
        .into_iter()
        .map(|s| (s.key_id(), s))
        .collect::<HashMap<_, _>>();
    let (shutdown, _) = watch::channel(false);
    let origin_store = match (&settings.config.origin.store_dir, settings.role) {
        (Some(dir), Role::Origin) => Some(
            OriginStore::open(dir, settings.config.origin.store_capacity_mb.get() << 20).map_err(
                |e| NodeError::Load {
                    what: "the origin store",
                    path: dir.display().to_string(),
                    message: crate::client::error_chain(&e),
                },
            )?,
        ),
        _ => None,
    };
    let upstream = match (&settings.config.origin.upstream, settings.role) {
        (Some(up), Role::Origin) => Some(Arc::new(Upstream::new(up).map_err(|e| {
            NodeError::Load {
                what: "the origin's upstream",
                path: "origin.upstream".into(),
                message: e.to_string(),
            }
        })?)),
        _ => None,
    };
    let shared = Arc::new(Shared {
        refresh: Mutex::new(()),
        store: ChunkStore::new(settings.store_config()),
        verifier,
        keys,
        replay: Mutex::new(ReplayGuard::new(settings.replay_config())),
        reputation: Mutex::new(Reputation::new(settings.reputation_config())),
        signers: RwLock::new(signers),
        manifests: Mutex::new(Manifests::default()),
        arrivals: broadcast::channel(4096).0,
        flight: SingleFlight::new(4096),
        manifest_flight: SingleFlight::new(1024),
        peers: RwLock::new(HashMap::new()),
        metrics,
        endpoint,
        assembler: Mutex::new(Assembler::new(settings.assembler_config())),
        encoder: Mutex::new(Encoder::new()),
        choker: Mutex::new(Choker::new(settings.choker_config())),
        heads: Mutex::new(HashMap::new()),
        catching_up: std::sync::atomic::AtomicUsize::new(0),
        started: Instant::now(),
        ingested_bytes: AtomicU64::new(0),
        mesh_bytes_out: AtomicU64::new(0),
        pull_backlog: AtomicU64::new(0),
        admission: crate::p2p::admission::Admission::new(settings.admission_config()),
        shutdown,
        mesh_stop: watch::channel(false).0,
        mesh_active_ms: AtomicU64::new(0),
        pulls_serving: Default::default(),
        push_upstream: Mutex::new(None),
        last_version: std::sync::atomic::AtomicU64::new(0),
        origin_store,
        swarms: Default::default(),
        preheat_seen: Default::default(),
        upstream,
        pulled: Mutex::new(Default::default()),
        live: Mutex::new(crate::roles::live::Windows::new(
            crate::roles::live::WindowConfig::of(&settings.config.live),
        )),
        live_changed: tokio::sync::watch::channel(0).0,
        uploads: Mutex::default(),
        upload_readers: Arc::default(),
        settings,
    });
    match load_origin_store(&shared) {
        Ok(0) => {}
        Ok(n) => tracing::info!(versions = n, "origin store loaded"),
        Err(e) => {
            return Err(NodeError::Load {
                what: "the origin store",
                path: format!("{:?}", shared.settings.config.origin.store_dir),
                message: e,
            });
        }
    }

    let mut tasks = tokio::task::JoinSet::new();
    let mut http_tasks = tokio::task::JoinSet::new();
    tasks.spawn(mesh::accept_loop(shared.clone()));
    if let Some(up) = shared.settings.upstreams.clone() {
        tasks.spawn(mesh::dial_loop(shared.clone(), discovery::spawn(up), false));
    }
    if let Some(peers) = shared.settings.peers.clone() {
        tasks.spawn(mesh::dial_loop(
            shared.clone(),
            discovery::spawn(peers),
            true,
        ));
    }
    if shared.settings.role == Role::Edge {
        tasks.spawn(mesh::choke_loop(shared.clone()));
    }
    tasks.spawn(housekeeping(shared.clone()));
    tasks.spawn(watch_trust_bundle(
        shared.clone(),
        shared.settings.config.crypto.trust_bundle.clone(),
    ));

    // Loaded before any listener binds: a node whose certificates do not
    // load fails to start, naming the field and file.
    let https = match &shared.settings.config.http_tls {
        Some(t) if shared.settings.role != Role::Relay => {
            let set = super::certs::CertSet::load(&t.cert_dirs).map_err(|e| NodeError::Load {
                what: "the HTTPS certificates",
                path: e.path.clone(),
                message: e.to_string(),
            })?;
            let resolver = Arc::new(super::certs::Resolver::new(set));
            http_tasks.spawn(super::certs::watch(
                resolver.clone(),
                t.cert_dirs.clone(),
                Duration::from_secs(t.reload_interval_seconds.get()),
                shared.metrics.clone(),
                shared.shutdown_signal(),
            ));
            Some(Https {
                resolver,
                http3: t.http3,
            })
        }
        _ => None,
    };
    let http_addr = match shared.settings.role {
        Role::Origin => {
            let publisher = Arc::new(OriginPublisher(shared.clone()));
            let config = IngestConfig {
                chunk_size: shared.settings.chunk_size,
                token: creds.ingest_token.clone().ok_or(NodeError::NoIngestToken)?,
                refused: Some(shared.metrics.auth_refused.clone()),
                max_object_bytes: shared.settings.max_object_bytes,
                cache_control: shared.settings.config.origin.cache_control.clone(),
            };
            let router = ingest::router(publisher.clone(), config.clone()).merge(
                live_http::ingest_router(publisher, config, shared.metrics.clone()),
            );
            Some(
                serve_http(
                    &mut http_tasks,
                    &shared,
                    "http",
                    shared.settings.http_listen,
                    router,
                    https.as_ref(),
                )
                .await?,
            )
        }
        Role::Edge => {
            let content = Arc::new(EdgeContent(shared.clone()));
            let config = ServeConfig {
                read_ahead: shared.settings.read_ahead,
                ..ServeConfig::default()
            };
            let router = serve::router(content.clone(), config).merge(live_http::edge_router(
                content,
                config,
                live_http::HoldConfig::of(&shared.settings.config.live),
                shared.metrics.clone(),
            ));
            Some(
                serve_http(
                    &mut http_tasks,
                    &shared,
                    "http",
                    shared.settings.http_listen,
                    router,
                    https.as_ref(),
                )
                .await?,
            )
        }
        Role::Relay => None,
    };
    let admin_router = crate::admin::router(
        shared.clone(),
        creds.admin_tokens.clone(),
        shared.settings.config_path.clone(),
    );
    let admin_addr = serve_http(
        &mut http_tasks,
        &shared,
        "admin",
        shared.settings.admin_listen,
        admin_router,
        None,
    )
    .await?;
    tracing::info!(
        role = %shared.settings.role,
        name = %shared.settings.name,
        %mesh_addr,
        ?http_addr,
        %admin_addr,
        "node started"
    );
    Ok(Running {
        shared,
        mesh_addr,
        http_addr,
        admin_addr,
        http_tasks,
        tasks,
    })
}

/// TLS on the client or ingest listener (`[http_tls]`).
struct Https {
    resolver: Arc<super::certs::Resolver>,
    http3: bool,
}

async fn serve_http(
    tasks: &mut tokio::task::JoinSet<()>,
    shared: &Arc<Shared>,
    what: &'static str,
    addr: std::net::SocketAddr,
    router: axum::Router,
    https: Option<&Https>,
) -> Result<std::net::SocketAddr, NodeError> {
    // The admin router counts its own requests; the client-facing ones are
    // counted here, after routing, so the route label is the template.
    let router = if what == "http" {
        router.route_layer(axum::middleware::from_fn_with_state(
            Arc::new(shared.metrics.clone()),
            serve::count_requests,
        ))
    } else {
        router
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| NodeError::Bind { what, addr, source })?;
    let tls = match https {
        None => None,
        Some(https) => {
            let tls_error = |e: &dyn std::fmt::Display| NodeError::Load {
                what: "the HTTPS configuration",
                path: "http_tls".into(),
                message: e.to_string(),
            };
            let config =
                super::certs::server_config(https.resolver.clone(), &super::certs::TCP_ALPN, false)
                    .map_err(|e| tls_error(&e))?;
            let mut alt_svc = None;
            if https.http3 {
                // The same port number over UDP, so one URL reaches both.
                let udp = std::net::SocketAddr::new(addr.ip(), bound.port());
                let endpoint =
                    super::http3::bind(udp, https.resolver.clone(), &shared.settings.http_limits)
                        .map_err(|e| match e {
                        super::http3::H3Error::Bind { addr, source } => NodeError::Bind {
                            what: "http3",
                            addr,
                            source,
                        },
                        e => tls_error(&e),
                    })?;
                alt_svc =
                    hyper::header::HeaderValue::from_str(&super::http3::alt_svc(bound.port())).ok();
                tasks.spawn(super::http3::serve(
                    endpoint,
                    router.clone(),
                    shared.settings.http_limits,
                    shared.metrics.clone(),
                    shared.shutdown_signal(),
                ));
            }
            Some(super::listener::Tls {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                alt_svc,
            })
        }
    };
    tasks.spawn(super::listener::serve(
        listener,
        router,
        shared.settings.http_limits,
        shared.metrics.clone(),
        what,
        shared.shutdown_signal(),
        tls,
    ));
    Ok(bound)
}

/// How often the trust-bundle file is checked for a change.
pub const TRUST_BUNDLE_POLL: Duration = Duration::from_secs(1);

/// Reloads the key ring when the trust-bundle file's contents change.
///
/// Polling the contents, not inotify: a Kubernetes ConfigMap volume updates
/// by swapping a symlink to a new directory, which a watch on the file
/// misses, and the bundle is small enough to read every second.
async fn watch_trust_bundle(shared: Arc<Shared>, path: std::path::PathBuf) {
    let digest = |p: &std::path::Path| std::fs::read(p).ok().map(|b| blake3::hash(&b));
    let mut last = digest(&path);
    let mut tick = tokio::time::interval(TRUST_BUNDLE_POLL);
    let mut shutdown = shared.mesh_stop_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = digest(&path);
        // A file briefly missing mid-update is not a change.
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        match shared.reload_trust_bundle(&path) {
            Ok(changed) => {
                tracing::info!(changed, path = %path.display(), "trust bundle file changed; reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "trust bundle file changed but does not load; keeping the old key ring")
            }
        }
    }
}

/// How often `housekeeping` runs.
pub const HOUSEKEEPING_TICK: Duration = Duration::from_millis(500);

/// Periodic upkeep: expire the store and stale FEC groups, refresh gauges.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_TICK);
    let mut shutdown = shared.mesh_stop_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        shared.store.expire(now);
        let left = shared.live.lock().expire(crate::roles::node::unix_ms());
        shared.forget_live(left);
        let expired = shared.assembler.lock().expire(now);
        // A group whose chunk arrived some other way (a repair) did not fail.
        let failed: Vec<_> = expired
            .into_iter()
            .filter(|id| !shared.store.contains(id, now))
            .collect();
        if !failed.is_empty() {
            shared
                .metrics
                .fec_groups
                .with_label_values(&["failed"])
                .inc_by(failed.len() as u64);
            shared.repair_failed(failed);
        }
        shared.refresh_gauges();
    }
}

/// The origin's side of ingest: keep (origin of record), sign, store, push.
pub(crate) struct OriginPublisher(pub(crate) Arc<Shared>);

/// Runs blocking origin-store work on tokio's blocking pool.
async fn blocking(
    f: impl FnOnce() -> Result<(), PublishError> + Send + 'static,
) -> Result<(), PublishError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PublishError::Failed(format!("origin store task: {e}")))?
}

fn store_error(e: OriginStoreError) -> PublishError {
    match e {
        OriginStoreError::Full { .. } => PublishError::Full(e.to_string()),
        other => PublishError::Failed(crate::client::error_chain(&other)),
    }
}

impl Publish for OriginPublisher {
    fn begin_object(
        &self,
        stream: crate::chunk::StreamId,
        len_hint: u64,
    ) -> Result<(), PublishError> {
        match &self.0.origin_store {
            Some(store) => store.begin(stream, len_hint).map_err(|e| {
                self.0
                    .metrics
                    .chunks_rejected
                    .with_label_values(&["origin_store_full"])
                    .inc();
                store_error(e)
            }),
            None => Ok(()),
        }
    }

    fn open_upload(&self, upload: &ingest::ObjectUpload) -> Result<(), PublishError> {
        self.0.open_upload(
            &upload.name,
            upload.stream,
            upload.version,
            &upload.cache_control,
            upload.chunk_size as u32,
        )
    }

    fn abort_object(&self, name: &str, stream: crate::chunk::StreamId) {
        if let Some(store) = &self.0.origin_store {
            store.abort(stream);
        }
        self.0.abort_upload(name, stream);
    }

    fn publish_chunk(
        &self,
        stream: crate::chunk::StreamId,
        seq: u64,
        payload: Bytes,
        live: bool,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        let shared = self.0.clone();
        async move {
            if shared.origin_store.is_some() && !live {
                // Disk writes off the async workers: a slow disk must not
                // stall every other connection this runtime serves.
                let (s, bytes) = (shared.clone(), payload.clone());
                blocking(move || match &s.origin_store {
                    Some(store) => store.append(stream, &bytes).map_err(store_error),
                    None => Ok(()),
                })
                .await?;
            }
            shared.publish(stream, seq, payload, live)?;
            if !live {
                shared.upload_progress(stream);
            }
            Ok(())
        }
    }

    fn publish_manifest(
        &self,
        object: &Published,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        let shared = self.0.clone();
        let object = object.clone();
        async move {
            let at = crate::roles::node::unix_ms();
            // A PUT makes the name the publisher's: the upstream no longer
            // revalidates it (a pull records itself again after this).
            let key = crate::chunk::StreamId::object_key(&object.name);
            shared.pulled.lock().remove(key);
            // Nor does a 404 remembered from it stand any longer.
            if let Some(up) = &shared.upstream {
                up.forget_missing(key);
            }
            if shared.origin_store.is_some() {
                // Durable before the manifest goes out and before the 201;
                // the syncs run off the async workers.
                let kept = StoredObject {
                    name: object.name.clone(),
                    version: object.version,
                    len: object.len,
                    chunk_size: object.chunk_size,
                    chunks: object.chunks,
                    digest: object.digest.clone(),
                    cache_control: object.cache_control.clone(),
                    published_ms: at,
                    upstream: object.upstream.clone(),
                };
                let s = shared.clone();
                blocking(move || match &s.origin_store {
                    Some(store) => store.commit(&kept).map(|_| ()).map_err(store_error),
                    None => Ok(()),
                })
                .await?;
            }
            shared.publish_manifest_at(&object, at)?;
            shared.finish_upload(&object.name, object.stream_id);
            Ok(())
        }
    }

    fn purge(&self, name: &str) -> Result<Option<u64>, PublishError> {
        Ok(self.0.purge(name)?)
    }

    fn publish_live_manifest(
        &self,
        file: &Published,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        // Live files are not kept by the origin of record: the DVR window
        // decides how long they live, here as at every node.
        let result = self.0.publish_manifest(file).map_err(PublishError::from);
        std::future::ready(result)
    }

    fn live_has_room(&self, stream: &str) -> bool {
        self.0.live.lock().has_room_for(stream)
    }

    fn preheat(&self, name: &str) -> Result<Option<(u64, usize)>, String> {
        crate::roles::swarm::preheat(&self.0, name)
    }

    fn next_live_seq(&self, stream: crate::chunk::StreamId) -> u64 {
        self.0.head(stream).map_or(0, |h| h + 1)
    }

    fn live_upload_ended(&self, last: crate::chunk::ChunkId) {
        self.0.announce_head(last, None);
    }

    fn next_version(&self) -> u64 {
        self.0.next_version()
    }
}

/// Signs the manifests of every version the origin store kept, so a
/// restarted origin serves what it acknowledged before; versions continue
/// above the highest kept. Signed with today's active key and the original
/// publish time (the `Last-Modified`).
fn load_origin_store(shared: &Arc<Shared>) -> Result<usize, String> {
    let Some(store) = &shared.origin_store else {
        return Ok(0);
    };
    let objects = store.objects();
    for o in &objects {
        let digest: [u8; 32] = hex::decode(&o.digest)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| format!("origin store: {} has a bad digest", o.name))?;
        shared.publish_manifest_at(
            &Published {
                name: o.name.clone(),
                stream: o.stream().to_string(),
                stream_id: o.stream(),
                version: o.version,
                cache_control: o.cache_control.clone(),
                len: o.len,
                chunk_size: o.chunk_size,
                first_seq: 0,
                chunks: o.chunks,
                digest: o.digest.clone(),
                digest_bytes: digest,
                upstream: o.upstream.clone(),
            },
            o.published_ms,
        )?;
        if let Some(validators) = &o.upstream {
            // Stale at once: the first request after a restart revalidates
            // (conditionally, so an unchanged object keeps its version).
            let key = crate::chunk::StreamId::object_key(&o.name);
            let mut pulled = shared.pulled.lock();
            if pulled.get(key).is_none_or(|p| p.version < o.version) {
                pulled.insert(
                    key,
                    crate::roles::upstream::PullState {
                        version: o.version,
                        validators: validators.clone(),
                        fresh_until: Instant::now(),
                    },
                );
            }
        }
        shared
            .last_version
            .fetch_max(o.version, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(objects.len())
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("mesh_addr", &self.mesh_addr)
            .field("http_addr", &self.http_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("an origin needs an ingest token: set origin.ingest_token_file or DCDN_INGEST_TOKEN")]
    NoIngestToken,
    #[error("the token in {what}: {message}")]
    Token { what: String, message: String },
    #[error("an origin needs at least one signing key in crypto.signing_keys")]
    NoSigningKey,
}

fn read_trimmed(path: &std::path::Path) -> Result<String, CredentialsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| CredentialsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Reads the node's certificate, the CA, the trust bundle and (origins) the
/// signing keys and ingest token named by `config`. `env_token` is
/// `DCDN_INGEST_TOKEN`, which wins over the token file.
pub fn load_credentials(
    config: &crate::config::NodeConfig,
    env_token: Option<String>,
) -> Result<Credentials, CredentialsError> {
    let parse = |what: String, text: &str| {
        crate::auth::Token::parse(text).map_err(|e| CredentialsError::Token {
            what,
            message: e.to_string(),
        })
    };
    let token = |env: &str,
                 file: &Option<std::path::PathBuf>|
     -> Result<Option<crate::auth::Token>, CredentialsError> {
        match (std::env::var(env).ok().filter(|t| !t.is_empty()), file) {
            (Some(t), _) => parse(env.to_owned(), &t).map(Some),
            (None, Some(path)) => parse(path.display().to_string(), &read_trimmed(path)?).map(Some),
            (None, None) => Ok(None),
        }
    };
    let admin_tokens = crate::admin::AdminTokens {
        admin: token("DCDN_ADMIN_TOKEN", &config.admin.token_file)?,
        read: token("DCDN_ADMIN_READ_TOKEN", &config.admin.read_token_file)?,
    };
    let identity = NodeIdentity::load(&config.tls.node_cert, &config.tls.node_key)?;
    let ca_pem = read_trimmed(&config.tls.ca_cert)?;
    let bundle =
        crate::crypto::TrustBundle::from_json(&read_trimmed(&config.crypto.trust_bundle)?)?;
    let keys = KeyRing::from_bundle(&bundle)?;
    let signers = config
        .crypto
        .signing_keys
        .iter()
        .map(|p| Signer::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let ingest_token = match (env_token, &config.origin.ingest_token_file) {
        (Some(t), _) if !t.is_empty() => Some(parse("DCDN_INGEST_TOKEN".into(), &t)?),
        (_, Some(path)) => match read_trimmed(path)? {
            t if t.is_empty() => None,
            t => Some(parse(path.display().to_string(), &t)?),
        },
        _ => None,
    };
    if config.node.role == Role::Origin {
        if ingest_token.is_none() {
            return Err(CredentialsError::NoIngestToken);
        }
        if signers.is_empty() {
            return Err(CredentialsError::NoSigningKey);
        }
    }
    Ok(Credentials {
        identity,
        ca_pem,
        keys,
        signers,
        ingest_token,
        admin_tokens,
    })
}
