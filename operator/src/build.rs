//! Builders: pure functions from a `DcdnCluster` to the objects it wants.
//!
//! Nothing here talks to the API server or reads a clock, so every object
//! can be checked in unit tests and printed by `dcdn-operator render`.
//! Objects are JSON in the shape the API server takes (server-side apply
//! bodies); tests parse them back into the k8s-openapi types.

use crate::crd::{DcdnCluster, MAX_SNI_SECRETS, ServiceType, TierSpec, TierTlsSpec};
use dcdn_node::config::{NodeConfig, Role};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Annotation on a tier's pod template: changes exactly when the tier's
/// rendered node config changes, which is what rolls the tier.
pub const CONFIG_HASH_ANNOTATION: &str = "dcdn.io/config-hash";
/// Annotation on a StatefulSet: the hash of the pod template the operator
/// wants. The rollout gate compares it; any template change (config, image,
/// resources) rolls the tier, and only in tier order.
pub const TEMPLATE_HASH_ANNOTATION: &str = "dcdn.io/template-hash";
/// Label on everything the operator owns; pruning lists by it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "dcdn-operator");
/// The node's ports, fixed inside the pod; Services map them.
pub const MESH_PORT: u16 = 7400;
pub const HTTP_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9090;
/// Requests of a tier whose `resources` names none.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";
/// The image's numeric non-root user.
pub const NODE_UID: i64 = 65532;
const CONFIG_DIR: &str = "/etc/dcdn/config";
const SIGNING_DIR: &str = "/etc/dcdn/signing";
/// Each client-facing certificate's Secret is mounted whole at
/// `{HTTP_TLS_DIR}/{secretName}/`: no `subPath`, so kubelet's atomic swap
/// of a renewed Secret reaches the running pod.
pub const HTTP_TLS_DIR: &str = "/etc/dcdn/http-tls";
/// The keys of a `kubernetes.io/tls` Secret, the files the node reads in
/// each certificate directory.
pub const TLS_SECRET_FILES: [&str; 2] = ["tls.crt", "tls.key"];
/// How often a node looks for renewed certificate files. Kubelet refreshes
/// a mounted Secret within its sync period (about a minute), so checking
/// more often than this buys nothing.
pub const HTTP_TLS_RELOAD_SECONDS: u64 = 10;
/// Where the origin finds its S3 upstream's access key: the user's Secret,
/// mounted read-only (no `subPath`, so a rotated key reaches the pod; the
/// node reads the files again before each upstream request).
pub const UPSTREAM_S3_DIR: &str = "/etc/dcdn/upstream-s3";
/// The file names the Secret's two keys are projected as.
pub const UPSTREAM_S3_FILES: [&str; 2] = ["access-key-id", "secret-access-key"];
/// The session token's file there, when the Secret names one.
pub const UPSTREAM_S3_TOKEN_FILE: &str = "session-token";
/// The API group and version of cert-manager's `Certificate`.
pub const CERT_MANAGER_API: &str = "cert-manager.io/v1";

/// Why a cluster cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("the resource has no namespace")]
    NoNamespace,
    #[error("the resource has no name")]
    NoName,
    #[error("metadata.name {name:?} cannot name child objects: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("{tier} config is invalid: {message}")]
    Config { tier: &'static str, message: String },
}

/// The three tiers, in rollout order (edges first, origin last).
pub const TIERS: [Role; 3] = [Role::Edge, Role::Relay, Role::Origin];

pub fn tier_spec(c: &DcdnCluster, role: Role) -> &TierSpec {
    match role {
        Role::Origin => &c.spec.origin,
        Role::Relay => &c.spec.relay,
        Role::Edge => &c.spec.edge,
    }
}

fn tier_name(role: Role) -> &'static str {
    role.as_str()
}

/// Longest cluster name: `{name}-origin` is a StatefulSet, whose revision
/// label `{sts}-<10 chars>` must fit 63 characters.
pub const MAX_NAME: usize = 45;

/// The rule the CRD's CEL validation states, for resources that got past
/// it (an older CRD): every child name must be a DNS-1035 label.
fn check_name(name: &str) -> Result<(), BuildError> {
    let bad = |reason| {
        Err(BuildError::Name {
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() > MAX_NAME {
        return bad("longer than 45 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("does not start with a letter a-z");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("has a character other than a-z, 0-9 and '-' (a dot, say)");
    }
    if name.ends_with('-') {
        return bad("ends with '-'");
    }
    Ok(())
}

/// Names of everything a cluster owns, derived from the resource's name.
#[derive(Debug, Clone)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
    admin_secret: String,
}

impl Names {
    pub fn of(c: &DcdnCluster) -> Result<Self, BuildError> {
        let cluster = c.metadata.name.clone().ok_or(BuildError::NoName)?;
        check_name(&cluster)?;
        Ok(Self {
            admin_secret: c
                .spec
                .admin_token_secret
                .clone()
                .unwrap_or_else(|| format!("{cluster}-admin-token")),
            namespace: c
                .metadata
                .namespace
                .clone()
                .ok_or(BuildError::NoNamespace)?,
            cluster,
        })
    }
    pub fn workload(&self, role: Role) -> String {
        format!("{}-{}", self.cluster, tier_name(role))
    }
    pub fn mesh_service(&self, role: Role) -> String {
        format!("{}-{}-mesh", self.cluster, tier_name(role))
    }
    pub fn config_map(&self, role: Role) -> String {
        format!("{}-{}-config", self.cluster, tier_name(role))
    }
    pub fn tls_secret(&self, role: Role) -> String {
        format!("{}-{}-tls", self.cluster, tier_name(role))
    }
    pub fn trust_bundle(&self) -> String {
        format!("{}-trust-bundle", self.cluster)
    }
    pub fn signing_secret(&self) -> String {
        format!("{}-signing-key", self.cluster)
    }
    /// The user's Secret when the resource names one, else the generated one.
    pub fn admin_secret(&self) -> String {
        self.admin_secret.clone()
    }
    /// The SHA-256 digests of the admin and ingest tokens: what pods mount
    /// (a node only checks tokens, so no pod holds one it could present).
    pub fn token_digests_secret(&self) -> String {
        format!("{}-token-digests", self.cluster)
    }
    pub fn ca_secret(&self) -> String {
        format!("{}-mesh-ca", self.cluster)
    }
    /// A tier's pod names: `{workload}-{ordinal}`, as the StatefulSet makes them.
    pub fn pods(&self, role: Role, replicas: u32) -> Vec<String> {
        (0..replicas)
            .map(|i| format!("{}-{i}", self.workload(role)))
            .collect()
    }
    pub fn service_account(&self) -> String {
        format!("{}-node", self.cluster)
    }
    pub fn edge_service(&self) -> String {
        format!("{}-edge", self.cluster)
    }
    /// The cert-manager `Certificate` issuing a tier's client certificate.
    pub fn https_certificate(&self, role: Role) -> String {
        format!("{}-{}-https", self.cluster, tier_name(role))
    }
    /// A tier's headless Service as `name:port`, re-resolved by the nodes.
    fn mesh_dns(&self, role: Role) -> String {
        format!(
            "{}.{}.svc:{MESH_PORT}",
            self.mesh_service(role),
            self.namespace
        )
    }
}

/// The `[http_tls]` section of a node's config file: the client listener
/// (an edge's HTTP server, the origin's ingest API) serves TLS with ALPN
/// `h2` and `http/1.1` and, with `http3`, HTTP/3 on UDP at the same port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpTlsSection {
    /// One directory per certificate, each holding `tls.crt` and `tls.key`;
    /// the first is the default, the others are chosen by SNI.
    pub cert_dirs: Vec<PathBuf>,
    pub http3: bool,
    pub reload_interval_seconds: u64,
}

/// The Secrets a tier serves clients with, the default one first.
pub fn tls_secret_names(tls: &TierTlsSpec) -> Vec<&str> {
    std::iter::once(tls.secret_name.as_str())
        .chain(tls.sni_secret_names.iter().map(String::as_str))
        .collect()
}

/// Where a tier's pods find one client certificate Secret.
pub fn http_tls_dir(secret: &str) -> PathBuf {
    PathBuf::from(HTTP_TLS_DIR).join(secret)
}

/// A Secret name as the API server takes it (DNS-1123 subdomain), so it
/// is also a safe single path component under `HTTP_TLS_DIR`.
fn check_secret_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a Secret name (at most 253 characters of a-z, 0-9, '-' and '.')"
        ));
    }
    Ok(())
}

/// A Kubernetes quantity (`128Mi`, `0.5`, `100m`, `1e3`) as an exact
/// fraction `(numerator, power of ten of the denominator)`, so `1Gi` and
/// `1024Mi`, `0.1` and `100m` compare equal, as the API server compares them.
fn quantity(q: &str) -> Option<(i128, u32)> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return None;
    }
    let mut num: i128 = format!("{int}{frac}").parse().ok()?;
    let mut scale = frac.len() as u32;
    let mul = |num: i128, factor: i128| num.checked_mul(factor);
    let pow10 = |e: u32| 10i128.checked_pow(e);
    match suffix {
        "" => {}
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            let i = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                .iter()
                .position(|s| *s == suffix)?;
            num = mul(num, 1i128 << (10 * (i + 1)))?;
        }
        "n" => scale += 9,
        "u" => scale += 6,
        "m" => scale += 3,
        "k" | "M" | "G" | "T" | "P" | "E" => {
            let i = ["k", "M", "G", "T", "P", "E"]
                .iter()
                .position(|s| *s == suffix)?;
            num = mul(num, pow10(3 * (i as u32 + 1))?)?;
        }
        e => {
            let exp: i32 = e.strip_prefix(['e', 'E'])?.parse().ok()?;
            if !(-18..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 {
                num = mul(num, pow10(exp as u32)?)?;
            } else {
                scale += exp.unsigned_abs();
            }
        }
    }
    Some((if negative { -num } else { num }, scale))
}

/// `a <= b` for two parsed quantities, `None` if the comparison overflows.
fn quantity_le((a, sa): (i128, u32), (b, sb): (i128, u32)) -> Option<bool> {
    // a / 10^sa <= b / 10^sb  ⇔  a·10^sb <= b·10^sa
    Some(a.checked_mul(10i128.checked_pow(sb)?)? <= b.checked_mul(10i128.checked_pow(sa)?)?)
}

/// The API server refuses a pod whose request exceeds its limit (and so
/// the StatefulSet that would make it, over and over): refused here with
/// the tier and the resource named.
fn check_resources(spec: &TierSpec, role: Role) -> Result<(), BuildError> {
    let bad = |message: String| BuildError::Config {
        tier: tier_name(role),
        message: format!("resources: {message}"),
    };
    let Some(r) = &spec.resources else {
        return Ok(());
    };
    let parse = |kind: &str, name: &str, q: &str| {
        quantity(q).ok_or_else(|| {
            bad(format!(
                "{kind}.{name} {q:?} is not a quantity (like 128Mi, 500m or 2)"
            ))
        })
    };
    let empty = Default::default();
    let requests = r.requests.as_ref().unwrap_or(&empty);
    let limits = r.limits.as_ref().unwrap_or(&empty);
    for (name, q) in requests {
        parse("requests", name, &q.0)?;
    }
    for (name, limit) in limits {
        let l = parse("limits", name, &limit.0)?;
        let Some(request) = requests.get(name) else {
            continue;
        };
        let q = parse("requests", name, &request.0)?;
        if !quantity_le(q, l).ok_or_else(|| bad(format!("{name} is out of range")))? {
            return Err(bad(format!(
                "requests.{name} {:?} is more than limits.{name} {:?}: the API server refuses such a pod",
                request.0, limit.0
            )));
        }
    }
    Ok(())
}

/// The rules the CRD's CEL validations state, for resources that got past
/// them (an older CRD), and the section a tier's config file gets.
pub fn http_tls(c: &DcdnCluster, role: Role) -> Result<Option<HttpTlsSection>, BuildError> {
    let Some(tls) = &tier_spec(c, role).tls else {
        return Ok(None);
    };
    let bad = |message: String| BuildError::Config {
        tier: tier_name(role),
        message: format!("tls: {message}"),
    };
    if role == Role::Relay {
        return Err(bad(
            "relays serve no clients; set edge.tls (client listener) or origin.tls (ingest API)"
                .into(),
        ));
    }
    if tls.sni_secret_names.len() > MAX_SNI_SECRETS {
        return Err(bad(format!(
            "sniSecretNames has {} names, at most {MAX_SNI_SECRETS} are served",
            tls.sni_secret_names.len()
        )));
    }
    let secrets = tls_secret_names(tls);
    for (i, name) in secrets.iter().enumerate() {
        check_secret_name(name).map_err(&bad)?;
        if secrets[..i].contains(name) {
            return Err(bad(format!("Secret {name:?} is named twice")));
        }
    }
    if let Some(cert) = &tls.certificate {
        if cert.dns_names.is_empty() {
            return Err(bad(
                "certificate.dnsNames must name at least one host".into()
            ));
        }
        if cert.issuer_ref.name.is_empty() {
            return Err(bad("certificate.issuerRef.name must not be empty".into()));
        }
    }
    Ok(Some(HttpTlsSection {
        cert_dirs: secrets.into_iter().map(http_tls_dir).collect(),
        http3: tls.http3,
        reload_interval_seconds: HTTP_TLS_RELOAD_SECONDS,
    }))
}

/// A tier's config file as its pods read it: the node's config, then the
/// `[http_tls]` section when the tier serves TLS.
pub fn config_file(c: &DcdnCluster, role: Role) -> Result<String, BuildError> {
    let cfg = node_config(c, role)?;
    let mut text = cfg.to_toml();
    if let Some(section) = http_tls(c, role)? {
        #[derive(serde::Serialize)]
        struct File<'a> {
            http_tls: &'a HttpTlsSection,
        }
        let rendered = toml::to_string_pretty(&File { http_tls: &section }).map_err(|e| {
            BuildError::Config {
                tier: tier_name(role),
                message: format!("tls: cannot render [http_tls]: {e}"),
            }
        })?;
        text.push('\n');
        text.push_str(&rendered);
    }
    Ok(text)
}

/// The node config a tier's pods run: the node crate's own type, with the
/// user's sections from the resource and everything else fixed here.
pub fn node_config(c: &DcdnCluster, role: Role) -> Result<NodeConfig, BuildError> {
    let names = Names::of(c)?;
    let spec = tier_spec(c, role);
    check_resources(spec, role)?;
    let mut cfg = NodeConfig::default();
    cfg.node.role = role;
    // Each pod sets its own name (DCDN_NODE_NAME from the downward API).
    cfg.node.name = names.workload(role);
    match role {
        Role::Origin => {}
        Role::Relay => cfg.discovery.upstream_dns = Some(names.mesh_dns(Role::Origin)),
        Role::Edge => {
            cfg.discovery.upstream_dns = Some(names.mesh_dns(Role::Relay));
            cfg.discovery.peers_dns = Some(names.mesh_dns(Role::Edge));
        }
    }
    if let Some(s) = &spec.config.storage {
        cfg.storage = s.clone();
    }
    if let Some(s) = &spec.config.fec {
        cfg.fec = s.clone();
    }
    if let Some(s) = &spec.config.p2p {
        cfg.p2p = s.clone();
    }
    if let Some(s) = &spec.config.quic {
        cfg.quic = s.clone();
    }
    cfg.crypto.trust_bundle = PathBuf::from("/etc/dcdn/trust/trust-bundle.json");
    // The origin loads both keys of the signing Secret (see `keys`): outside
    // a rotation both hold the active key, during one the next key is
    // already there when the origin is asked to reload, so the config (and
    // the pod template) never changes for a rotation.
    cfg.crypto.signing_keys = if role == Role::Origin {
        [crate::keys::CURRENT_KEY_FILE, crate::keys::NEXT_KEY_FILE]
            .iter()
            .map(|f| PathBuf::from(SIGNING_DIR).join(f))
            .collect()
    } else {
        Vec::new()
    };
    cfg.tls.ca_cert = PathBuf::from("/etc/dcdn/tls/ca.crt");
    // A node's peer id is its certificate's key, so every pod has its own
    // certificate in the tier's Secret; the pod picks it by name through
    // DCDN_TLS_NODE_CERT / DCDN_TLS_NODE_KEY (see `workload`).
    cfg.tls.node_cert = PathBuf::from("/etc/dcdn/tls/node.crt");
    cfg.tls.node_key = PathBuf::from("/etc/dcdn/tls/node.key");
    cfg.admin.token_file = Some(PathBuf::from("/etc/dcdn/admin/token"));
    cfg.admin.read_token_file = Some(PathBuf::from("/etc/dcdn/admin/read-token"));
    cfg.origin.upstream = upstream(c, role)?;
    if role == Role::Origin {
        cfg.origin.ingest_token_file = Some(PathBuf::from("/etc/dcdn/admin/ingest-token"));
        // The origin of record on its claim (see `workload`), filled to at
        // most 95 % so the filesystem's own overhead never makes an
        // acknowledged write fail.
        let mib = c
            .spec
            .origin_storage
            .mebibytes()
            .ok_or_else(|| BuildError::Config {
                tier: tier_name(role),
                message: format!(
                    "originStorage.size {:?} must be like 512Mi, 10Gi or 1Ti",
                    c.spec.origin_storage.size
                ),
            })?;
        cfg.origin.store_dir = Some(PathBuf::from(ORIGIN_STORE_DIR));
        cfg.origin.store_capacity_mb = dcdn_node::config::Bounded::new((mib * 95 / 100).max(1))
            .map_err(|message| BuildError::Config {
                tier: tier_name(role),
                message: format!("originStorage.size: {message}"),
            })?;
    }
    cfg.validate().map_err(|message| BuildError::Config {
        tier: tier_name(role),
        message,
    })?;
    Ok(cfg)
}

/// The origin's `[origin.upstream]`: the resource's fields, with S3
/// credentials read from files of the mounted Secret. Repeats the CRD's
/// rules for resources that got past them (an older CRD).
fn upstream(
    c: &DcdnCluster,
    role: Role,
) -> Result<Option<dcdn_node::config::UpstreamSection>, BuildError> {
    let bad = |message: String| BuildError::Config {
        tier: tier_name(role),
        message: format!("upstream: {message}"),
    };
    let Some(up) = &tier_spec(c, role).upstream else {
        return Ok(None);
    };
    if role != Role::Origin {
        return Err(bad(
            "only the origin pulls from an upstream; set spec.origin.upstream".into(),
        ));
    }
    let s3 = match &up.s3 {
        None => None,
        Some(s3) => {
            let secret = &s3.credentials_secret;
            check_secret_name(&secret.name)
                .map_err(|e| bad(format!("s3.credentialsSecret: {e}")))?;
            Some(dcdn_node::config::S3Section {
                endpoint: s3.endpoint.clone(),
                bucket: s3.bucket.clone(),
                region: s3.region.clone(),
                access_key_id_file: Some(PathBuf::from(UPSTREAM_S3_DIR).join(UPSTREAM_S3_FILES[0])),
                secret_access_key_file: Some(
                    PathBuf::from(UPSTREAM_S3_DIR).join(UPSTREAM_S3_FILES[1]),
                ),
                session_token_file: secret
                    .session_token_key
                    .as_ref()
                    .map(|_| PathBuf::from(UPSTREAM_S3_DIR).join(UPSTREAM_S3_TOKEN_FILE)),
            })
        }
    };
    Ok(Some(dcdn_node::config::UpstreamSection {
        url: up.url.clone(),
        s3,
        default_ttl_secs: up.default_ttl_secs,
        serve_stale_if_error: up.serve_stale_if_error,
        timeout_ms: up.timeout_ms,
        max_concurrent: up.max_concurrent,
        not_found_ttl_secs: up.not_found_ttl_secs,
        not_found_max_names: up.not_found_max_names,
    }))
}

fn labels(names: &Names, role: Role) -> Value {
    json!({
        "app.kubernetes.io/name": "dcdn",
        "app.kubernetes.io/instance": names.cluster,
        "app.kubernetes.io/component": tier_name(role),
        "app.kubernetes.io/managed-by": "dcdn-operator",
    })
}

pub(crate) fn meta(names: &Names, name: String, role: Option<Role>) -> Value {
    let mut m = json!({ "name": name, "namespace": names.namespace });
    m["labels"] = match role {
        Some(r) => labels(names, r),
        None => json!({
            "app.kubernetes.io/name": "dcdn",
            "app.kubernetes.io/instance": names.cluster,
            "app.kubernetes.io/managed-by": "dcdn-operator",
        }),
    };
    m
}

fn config_map(names: &Names, role: Role, text: String) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(names, names.config_map(role), Some(role)),
        "data": { "dcdn.toml": text },
    })
}

fn mesh_service(names: &Names, role: Role) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(names, names.mesh_service(role), Some(role)),
        "spec": {
            "clusterIP": "None",
            // Peers must find a starting pod before it is ready: readiness
            // itself waits for an upstream connection.
            "publishNotReadyAddresses": true,
            "selector": selector(names, role),
            "ports": [
                { "name": "mesh", "port": MESH_PORT, "protocol": "UDP" },
                { "name": "admin", "port": ADMIN_PORT, "protocol": "TCP" },
            ],
        },
    })
}

fn selector(names: &Names, role: Role) -> Value {
    json!({
        "app.kubernetes.io/instance": names.cluster,
        "app.kubernetes.io/component": tier_name(role),
    })
}

fn restricted_container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": NODE_UID,
        "runAsGroup": NODE_UID,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn token_items(role: Role) -> Value {
    let mut keys = vec![crate::keys::ADMIN_TOKEN_FILE, crate::keys::READ_TOKEN_FILE];
    if role == Role::Origin {
        keys.push(crate::keys::INGEST_TOKEN_FILE);
    }
    keys.iter()
        .map(|k| json!({ "key": k, "path": k }))
        .collect()
}

fn workload(
    c: &DcdnCluster,
    names: &Names,
    role: Role,
    cfg: &NodeConfig,
    http_tls: Option<&HttpTlsSection>,
) -> Value {
    let spec = tier_spec(c, role);
    let mut volumes = vec![
        json!({ "name": "config", "configMap": { "name": names.config_map(role) } }),
        json!({ "name": "trust", "configMap": { "name": names.trust_bundle() } }),
        json!({ "name": "tls", "secret": { "secretName": names.tls_secret(role), "defaultMode": 0o400 } }),
        // Each tier gets the digests it checks and no more: only origins
        // take publishes, so only they see the ingest token's digest.
        json!({ "name": "admin", "secret": {
            "secretName": names.token_digests_secret(),
            "defaultMode": 0o400,
            "items": token_items(role),
        } }),
    ];
    let mut mounts = vec![
        json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true }),
        json!({ "name": "trust", "mountPath": "/etc/dcdn/trust", "readOnly": true }),
        json!({ "name": "tls", "mountPath": "/etc/dcdn/tls", "readOnly": true }),
        json!({ "name": "admin", "mountPath": "/etc/dcdn/admin", "readOnly": true }),
    ];
    if role == Role::Origin {
        // The signing key is mounted into origin pods only.
        volumes.push(json!({ "name": "signing", "secret": { "secretName": names.signing_secret(), "defaultMode": 0o400 } }));
        mounts.push(json!({ "name": "signing", "mountPath": SIGNING_DIR, "readOnly": true }));
        // The origin of record; the volume comes from volumeClaimTemplates.
        mounts.push(json!({ "name": ORIGIN_STORE_VOLUME, "mountPath": ORIGIN_STORE_DIR }));
        // The S3 upstream's key, from the user's Secret: only the two keys
        // named, as files, in the origin pod only.
        if let Some(secret) = spec
            .upstream
            .as_ref()
            .and_then(|u| u.s3.as_ref())
            .map(|s3| &s3.credentials_secret)
        {
            volumes.push(json!({ "name": "upstream-s3", "secret": {
                "secretName": secret.name,
                "defaultMode": 0o400,
                "items": [
                    { "key": secret.access_key_id_key, "path": UPSTREAM_S3_FILES[0] },
                    { "key": secret.secret_access_key_key, "path": UPSTREAM_S3_FILES[1] },
                ],
            } }));
            if let (Some(key), Some(items)) = (
                &secret.session_token_key,
                volumes
                    .last_mut()
                    .and_then(|v| v["secret"]["items"].as_array_mut()),
            ) {
                items.push(json!({ "key": key, "path": UPSTREAM_S3_TOKEN_FILE }));
            }
            mounts.push(
                json!({ "name": "upstream-s3", "mountPath": UPSTREAM_S3_DIR, "readOnly": true }),
            );
        }
    }
    let mut ports = vec![
        json!({ "name": "mesh", "containerPort": MESH_PORT, "protocol": "UDP" }),
        json!({ "name": "http", "containerPort": HTTP_PORT, "protocol": "TCP" }),
        json!({ "name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP" }),
    ];
    if let Some(tls) = spec.tls.as_ref().filter(|_| http_tls.is_some()) {
        // Volume names are DNS labels of at most 63 characters, Secret
        // names are not: volumes are numbered, directories carry the name.
        for (i, secret) in tls_secret_names(tls).into_iter().enumerate() {
            let volume = format!("http-tls-{i}");
            volumes.push(
                json!({ "name": volume, "secret": { "secretName": secret, "defaultMode": 0o400 } }),
            );
            mounts.push(
                json!({ "name": volume, "mountPath": http_tls_dir(secret), "readOnly": true }),
            );
        }
        if tls.http3 {
            // HTTP/3 listens on UDP at the HTTP port's number; the edge
            // Service's `h3` port targets this name.
            ports.push(json!({ "name": "h3", "containerPort": HTTP_PORT, "protocol": "UDP" }));
        }
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": "admin" },
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 2,
        })
    };
    let mut pod_spec = json!({
        "serviceAccountName": names.service_account(),
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": NODE_UID,
            "runAsGroup": NODE_UID,
            "fsGroup": NODE_UID,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        // SIGTERM drains in up to 10 s; leave room.
        "terminationGracePeriodSeconds": 30,
        "containers": [{
            "name": "dcdn",
            "image": c.spec.image,
            "args": ["run", "--config", format!("{CONFIG_DIR}/dcdn.toml"), "--log-json"],
            "env": [
                { "name": "DCDN_NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                // Kubernetes expands $(VAR) from earlier entries.
                { "name": "DCDN_TLS_NODE_CERT", "value": "/etc/dcdn/tls/$(DCDN_NODE_NAME).crt" },
                { "name": "DCDN_TLS_NODE_KEY", "value": "/etc/dcdn/tls/$(DCDN_NODE_NAME).key" },
            ],
            "ports": ports,
            // Probes use the admin port, which stays plain HTTP with TLS on
            // the client listener.
            "readinessProbe": probe("/readyz", 2, 3),
            "livenessProbe": probe("/healthz", 10, 6),
            "securityContext": restricted_container_security(),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    // Without requests a pod is BestEffort: first evicted under pressure and
    // invisible to the scheduler's packing. A tier that names none gets
    // modest ones (the node's defaults run in far less than 256 MiB).
    pod_spec["containers"][0]["resources"] = match &spec.resources {
        Some(r) => serde_json::to_value(r).unwrap_or(Value::Null),
        None => {
            json!({ "requests": { "cpu": DEFAULT_CPU_REQUEST, "memory": DEFAULT_MEMORY_REQUEST } })
        }
    };
    // Spread each tier's pods over zones when the scheduler can; never
    // refuse to schedule for it (ScheduleAnyway).
    pod_spec["topologySpreadConstraints"] = json!([{
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": { "matchLabels": selector(names, role) },
    }]);
    if !spec.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(spec.node_selector);
    }
    if let Some(a) = &spec.affinity {
        pod_spec["affinity"] = serde_json::to_value(a).unwrap_or(Value::Null);
    }
    if !spec.tolerations.is_empty() {
        pod_spec["tolerations"] = serde_json::to_value(&spec.tolerations).unwrap_or(Value::Null);
    }
    let template = json!({
        "metadata": {
            "labels": labels(names, role),
            "annotations": { CONFIG_HASH_ANNOTATION: match http_tls {
                None => cfg.config_hash(),
                Some(t) => hash_value(&json!([cfg.config_hash(), t])),
            } },
        },
        "spec": pod_spec,
    });
    let mut metadata = meta(names, names.workload(role), Some(role));
    metadata["annotations"] = json!({ TEMPLATE_HASH_ANNOTATION: hash_value(&template) });
    // A StatefulSet: stable pod names carry per-pod certificates, and a pod
    // is never run twice at once (so never two origins signing).
    let mut set = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "serviceName": names.mesh_service(role),
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": selector(names, role) },
            "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
            "template": template,
        },
    });
    if role == Role::Origin {
        let mut claim_spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": c.spec.origin_storage.size } },
        });
        if let Some(class) = &c.spec.origin_storage.storage_class_name {
            claim_spec["storageClassName"] = json!(class);
        }
        set["spec"]["volumeClaimTemplates"] = json!([{
            "metadata": { "name": ORIGIN_STORE_VOLUME },
            "spec": claim_spec,
        }]);
    }
    set
}

/// Where origin pods keep the origin of record, and the claim's name.
const ORIGIN_STORE_DIR: &str = "/var/lib/dcdn/origin";
const ORIGIN_STORE_VOLUME: &str = "origin-store";

fn pdb(names: &Names, role: Role) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(names, names.workload(role), Some(role)),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": selector(names, role) },
            // A pod that is not ready serves nobody: draining its node must
            // not wait for it (the default, IfHealthyBudget, can block a
            // node drain behind a crash-looping pod).
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    })
}

fn edge_service(c: &DcdnCluster, names: &Names) -> Value {
    let svc = &c.spec.edge_service;
    let kind = match svc.service_type {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    // With TLS the client listener speaks nothing but TLS (and QUIC on
    // the same number), so the plain port goes: HTTPS on TCP and, with
    // HTTP/3, the same number on UDP. A LoadBalancer carrying both
    // protocols on one port needs Kubernetes 1.26 (MixedProtocolLBService).
    let ports = match &c.spec.edge.tls {
        None => {
            json!([{ "name": "http", "port": svc.port, "targetPort": "http", "protocol": "TCP" }])
        }
        Some(tls) => {
            let mut p = vec![
                json!({ "name": "https", "port": svc.https_port, "targetPort": "http", "protocol": "TCP" }),
            ];
            if tls.http3 {
                p.push(json!({ "name": "h3", "port": svc.https_port, "targetPort": "h3", "protocol": "UDP" }));
            }
            json!(p)
        }
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(names, names.edge_service(), Some(Role::Edge)),
        "spec": {
            "type": kind,
            "selector": selector(names, Role::Edge),
            "ports": ports,
        },
    })
}

/// A cert-manager `Certificate` writing a tier's client certificate into
/// the Secret its pods mount.
fn https_certificate(names: &Names, role: Role, tls: &TierTlsSpec) -> Option<Value> {
    let cert = tls.certificate.as_ref()?;
    Some(json!({
        "apiVersion": CERT_MANAGER_API,
        "kind": "Certificate",
        "metadata": meta(names, names.https_certificate(role), Some(role)),
        "spec": {
            "secretName": tls.secret_name,
            "dnsNames": cert.dns_names,
            "issuerRef": {
                "name": cert.issuer_ref.name,
                "kind": cert.issuer_ref.kind.as_str(),
                "group": cert.issuer_ref.group,
            },
            // A fresh key with every renewal: a leaked key dies with its
            // certificate. Nodes pick the new pair up without a restart.
            "privateKey": { "rotationPolicy": "Always" },
        },
    }))
}

/// A Prometheus Operator ServiceMonitor scraping every tier's admin port.
fn service_monitor(names: &Names) -> Value {
    let mut selector = serde_json::Map::new();
    selector.insert("app.kubernetes.io/instance".into(), json!(names.cluster));
    selector.insert(MANAGED_BY.0.into(), json!(MANAGED_BY.1));
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta(names, format!("{}-nodes", names.cluster), None),
        "spec": {
            // The headless mesh Services list every pod, ready or not.
            "selector": { "matchLabels": selector },
            "endpoints": [{ "port": "admin", "path": "/metrics", "interval": "30s" }],
        },
    })
}

/// The trust bundle every node reads: public keys and their states only.
pub fn trust_bundle(names: &Names, bundle: &dcdn_node::crypto::TrustBundle) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(names, names.trust_bundle(), None),
        "data": { TRUST_BUNDLE_FILE: bundle.to_json() },
    })
}

/// The file name of the trust bundle inside its ConfigMap.
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.json";

/// A stable short hash of a JSON value (serde_json keeps map keys sorted).
pub fn hash_value(v: &Value) -> String {
    let h = blake3::hash(v.to_string().as_bytes());
    hex::encode(&h.as_bytes()[..8])
}

fn service_account(names: &Names) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(names, names.service_account(), None),
        // Nodes never call the Kubernetes API.
        "automountServiceAccountToken": false,
    })
}

/// Every object the cluster wants that does not hold key material, in
/// apply order. Secrets and the trust bundle come from the key state
/// (`keys`), which the reconciler reads from the cluster.
pub fn build(c: &DcdnCluster) -> Result<Vec<Value>, BuildError> {
    let names = Names::of(c)?;
    let mut out = vec![service_account(&names)];
    for role in [Role::Origin, Role::Relay, Role::Edge] {
        let cfg = node_config(c, role)?;
        let tls = http_tls(c, role)?;
        out.push(config_map(&names, role, config_file(c, role)?));
        out.push(mesh_service(&names, role));
        out.push(workload(c, &names, role, &cfg, tls.as_ref()));
        if role != Role::Origin && tier_spec(c, role).replicas > 1 {
            out.push(pdb(&names, role));
        }
    }
    out.push(edge_service(c, &names));
    for role in [Role::Origin, Role::Edge] {
        if let Some(cert) = tier_spec(c, role)
            .tls
            .as_ref()
            .and_then(|t| https_certificate(&names, role, t))
        {
            out.push(cert);
        }
    }
    if c.spec.monitoring.service_monitor {
        out.push(service_monitor(&names));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;

    fn cluster(yaml: &str) -> DcdnCluster {
        let mut c = crate::crd::from_yaml(yaml).unwrap();
        c.metadata.namespace = Some("cdn".into());
        c
    }

    const MINIMAL: &str = "apiVersion: dcdn.io/v1alpha1\nkind: DcdnCluster\nmetadata: {name: demo}\nspec: {image: 'dcdn/node:0.1.0', relay: {replicas: 2}, edge: {replicas: 3}}\n";

    fn stateful_set(objects: &[Value], name: &str) -> StatefulSet {
        let v = objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == name)
            .unwrap();
        serde_json::from_value(v.clone()).unwrap()
    }

    fn hash(d: &StatefulSet) -> String {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    }

    #[test]
    fn the_origin_gets_a_claim_for_its_store_and_no_other_tier_does() {
        let yaml = MINIMAL.replace(
            "edge: {replicas: 3}}",
            "edge: {replicas: 3}, originStorage: {size: 20Gi, storageClassName: fast}}",
        );
        let c = cluster(&yaml);
        let objects = build(&c).unwrap();
        for role in [Role::Origin, Role::Relay, Role::Edge] {
            let name = Names::of(&c).unwrap().workload(role);
            let set = stateful_set(&objects, &name);
            let spec = set.spec.unwrap();
            let claims = spec.volume_claim_templates.unwrap_or_default();
            let mounts = spec.template.spec.unwrap().containers[0]
                .volume_mounts
                .clone()
                .unwrap_or_default();
            let mounted = mounts.iter().any(|m| m.name == ORIGIN_STORE_VOLUME);
            if role == Role::Origin {
                assert_eq!(claims.len(), 1);
                let claim = claims[0].spec.as_ref().unwrap();
                assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
                assert_eq!(
                    claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
                    "20Gi"
                );
                assert!(mounted);
                let cfg = node_config(&c, role).unwrap();
                assert_eq!(cfg.origin.store_dir, Some(PathBuf::from(ORIGIN_STORE_DIR)));
                assert_eq!(cfg.origin.store_capacity_mb.get(), 20 * 1024 * 95 / 100);
            } else {
                assert!(claims.is_empty() && !mounted, "{name}");
            }
        }
    }

    #[test]
    fn every_object_parses_as_its_kubernetes_type() {
        let objects = build(&cluster(MINIMAL)).unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == "StatefulSet").count(), 3);
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "PodDisruptionBudget")
                .count(),
            2
        );
        for o in &objects {
            match o["kind"].as_str().unwrap() {
                "StatefulSet" => drop(serde_json::from_value::<StatefulSet>(o.clone()).unwrap()),
                "Service" => drop(
                    serde_json::from_value::<k8s_openapi::api::core::v1::Service>(o.clone())
                        .unwrap(),
                ),
                "ConfigMap" => {
                    let cm: k8s_openapi::api::core::v1::ConfigMap =
                        serde_json::from_value(o.clone()).unwrap();
                    let toml = &cm.data.unwrap()["dcdn.toml"];
                    // The rendered file is one the node itself accepts.
                    NodeConfig::parse(
                        toml,
                        dcdn_node::config::Format::Toml,
                        "rendered",
                        std::iter::empty::<(String, String)>(),
                    )
                    .unwrap();
                }
                _ => {}
            }
        }
    }

    #[test]
    fn pods_run_restricted_with_probes_and_only_origins_get_the_signing_key() {
        let objects = build(&cluster(MINIMAL)).unwrap();
        for role in TIERS {
            let d = stateful_set(&objects, &format!("demo-{}", role.as_str()));
            let pod = d.spec.unwrap().template.spec.unwrap();
            let ctr = &pod.containers[0];
            let sc = ctr.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
                &["ALL"]
            );
            assert!(ctr.readiness_probe.is_some() && ctr.liveness_probe.is_some());
            // Each pod presents its own certificate (its peer id).
            let env = ctr.env.as_ref().unwrap();
            assert!(env.iter().any(|e| e.name == "DCDN_TLS_NODE_CERT"
                && e.value.as_deref() == Some("/etc/dcdn/tls/$(DCDN_NODE_NAME).crt")));
            let has_signing = pod.volumes.unwrap().iter().any(|v| v.name == "signing");
            assert_eq!(has_signing, role == Role::Origin, "{role:?}");
        }
    }

    #[test]
    fn the_config_hash_changes_with_a_tiers_config_and_only_that_tier() {
        let before = build(&cluster(MINIMAL)).unwrap();
        let changed = cluster(&MINIMAL.replace(
            "edge: {replicas: 3}",
            "edge: {replicas: 3, config: {fec: {default_parity_count: 6}}}",
        ));
        let after = build(&changed).unwrap();
        let h = |objs: &[Value], t: &str| hash(&stateful_set(objs, &format!("demo-{t}")));
        assert_ne!(h(&before, "edge"), h(&after, "edge"));
        assert_eq!(h(&before, "relay"), h(&after, "relay"));
        assert_eq!(h(&before, "origin"), h(&after, "origin"));
        // Replicas are not config: scaling does not roll pods.
        let scaled = build(&cluster(
            &MINIMAL.replace("edge: {replicas: 3}", "edge: {replicas: 9}"),
        ))
        .unwrap();
        assert_eq!(h(&before, "edge"), h(&scaled, "edge"));
        // Building twice gives the same objects.
        assert_eq!(before, build(&cluster(MINIMAL)).unwrap());
    }

    #[test]
    fn platform_defaults_requests_zone_spread_and_pdbs_that_let_unhealthy_pods_go() {
        let objects = build(&cluster(MINIMAL)).unwrap();
        for role in TIERS {
            let d = stateful_set(&objects, &format!("demo-{}", role.as_str()));
            let pod = d.spec.unwrap().template.spec.unwrap();
            let req = pod.containers[0]
                .resources
                .as_ref()
                .and_then(|r| r.requests.clone())
                .unwrap_or_default();
            assert_eq!(req["cpu"].0, DEFAULT_CPU_REQUEST, "{role:?}");
            assert_eq!(req["memory"].0, DEFAULT_MEMORY_REQUEST, "{role:?}");
            let spread = pod.topology_spread_constraints.unwrap();
            assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
            assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
        }
        for o in objects
            .iter()
            .filter(|o| o["kind"] == "PodDisruptionBudget")
        {
            let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget =
                serde_json::from_value(o.clone()).unwrap();
            assert_eq!(
                pdb.spec.unwrap().unhealthy_pod_eviction_policy.as_deref(),
                Some("AlwaysAllow")
            );
        }
        // A tier's own resources win.
        let own = build(&cluster(&MINIMAL.replace(
            "edge: {replicas: 3}",
            "edge: {replicas: 3, resources: {requests: {cpu: '2'}}}",
        )))
        .unwrap();
        let pod = stateful_set(&own, "demo-edge")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let req = pod.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(req["cpu"].0, "2");
        assert!(!req.contains_key("memory"));
    }

    #[test]
    fn a_name_that_makes_invalid_child_names_is_refused_with_the_reason() {
        for (name, reason) in [
            ("my.cdn", "other than"),
            ("a-very-long-cluster-name-that-does-not-fit-in-63", "45"),
            ("9cdn", "start with a letter"),
        ] {
            let mut c = cluster(MINIMAL);
            c.metadata.name = Some(name.into());
            match build(&c) {
                Err(e @ BuildError::Name { .. }) => {
                    assert!(e.to_string().contains(reason), "{e}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut c = cluster(MINIMAL);
        c.metadata.name = Some("a".repeat(MAX_NAME));
        assert!(build(&c).is_ok());
    }

    #[test]
    fn the_origins_upstream_is_rendered_with_its_s3_key_from_the_users_secret() {
        let c = cluster(&MINIMAL.replace(
            "spec: {",
            "spec: {origin: {upstream: {s3: {endpoint: 'http://minio:9000', bucket: media, \
             credentialsSecret: {name: media-s3, accessKeyIdKey: id, sessionTokenKey: tok}}, notFoundTtlSecs: 5}}, ",
        ));
        let objects = build(&c).unwrap();
        let cm = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "demo-origin-config")
            .unwrap();
        let text = cm["data"]["dcdn.toml"].as_str().unwrap();
        let cfg = NodeConfig::parse(
            text,
            dcdn_node::config::Format::Toml,
            "rendered",
            std::iter::empty::<(String, String)>(),
        )
        .unwrap();
        let up = cfg.origin.upstream.unwrap();
        assert_eq!(up.not_found_ttl_secs.get(), 5);
        assert_eq!(up.default_ttl_secs.get(), 60, "the node's default");
        let s3 = up.s3.unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("media", "us-east-1")
        );
        assert_eq!(
            s3.secret_access_key_file.unwrap(),
            PathBuf::from("/etc/dcdn/upstream-s3/secret-access-key")
        );
        assert_eq!(
            s3.session_token_file.unwrap(),
            PathBuf::from("/etc/dcdn/upstream-s3/session-token")
        );
        let pod = stateful_set(&objects, "demo-origin")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "upstream-s3")
            .unwrap();
        let secret = vol.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("media-s3"));
        let items: Vec<(String, String)> = secret
            .items
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            items,
            [
                ("id".to_owned(), "access-key-id".to_owned()),
                (
                    "AWS_SECRET_ACCESS_KEY".to_owned(),
                    "secret-access-key".to_owned()
                ),
                ("tok".to_owned(), "session-token".to_owned())
            ]
        );
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == "upstream-s3")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (UPSTREAM_S3_DIR, Some(true))
        );
        // No other tier sees the key, or gets an upstream.
        for t in ["relay", "edge"] {
            let pod = stateful_set(&objects, &format!("demo-{t}"))
                .spec
                .unwrap()
                .template
                .spec
                .unwrap();
            assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "upstream-s3"));
        }
        // An upstream on another tier is refused, naming it.
        let relay = cluster(&MINIMAL.replace(
            "relay: {replicas: 2}",
            "relay: {replicas: 2, upstream: {url: 'http://x'}}",
        ));
        match build(&relay) {
            Err(BuildError::Config { tier, message }) => {
                assert_eq!(tier, "relay");
                assert!(message.contains("spec.origin.upstream"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Both url and s3: the node's own rule, at build time.
        let both = cluster(&MINIMAL.replace(
            "spec: {",
            "spec: {origin: {upstream: {url: 'http://x', s3: {endpoint: 'http://m', bucket: b1b, credentialsSecret: {name: s}}}}, ",
        ));
        assert!(
            matches!(build(&both), Err(BuildError::Config { tier: "origin", ref message }) if message.contains("exactly one")),
            "{:?}",
            build(&both)
        );
    }

    #[test]
    fn quantities_compare_as_the_api_server_compares_them() {
        let q = |s| quantity(s).unwrap_or_else(|| panic!("{s} did not parse"));
        let le = |a, b| quantity_le(q(a), q(b)).unwrap();
        for (a, b) in [
            ("1Gi", "1024Mi"),
            ("0.1", "100m"),
            ("1k", "1000"),
            ("1e3", "1k"),
            ("1500m", "1.5"),
            ("2", "2000000000n"),
            ("1E-3", "1m"),
        ] {
            assert!(le(a, b) && le(b, a), "{a} == {b}");
        }
        for (small, big) in [("64Mi", "128Mi"), ("999m", "1"), ("1M", "1Mi"), ("-1", "0")] {
            assert!(le(small, big) && !le(big, small), "{small} < {big}");
        }
        for bad in ["", "Mi", "1.2.3", "12x", "1e99", "1.0000000001", "--1"] {
            assert_eq!(quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_above_its_limit_is_refused_naming_tier_and_resource() {
        let with = |resources: &str| {
            cluster(&MINIMAL.replace(
                "edge: {replicas: 3}",
                &format!("edge: {{replicas: 3, resources: {resources}}}"),
            ))
        };
        match build(&with("{requests: {memory: 128Mi}, limits: {memory: 64Mi}}")) {
            Err(BuildError::Config { tier, message }) => {
                assert_eq!(tier, "edge");
                assert!(
                    message
                        .contains("requests.memory \"128Mi\" is more than limits.memory \"64Mi\""),
                    "{message}"
                );
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        match build(&with("{limits: {cpu: lots}}")) {
            Err(BuildError::Config { tier, message }) => {
                assert_eq!(tier, "edge");
                assert!(
                    message.contains("limits.cpu \"lots\" is not a quantity"),
                    "{message}"
                );
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        // Equal amounts in other units, and a limit with no request, pass.
        build(&with(
            "{requests: {memory: 1Gi, cpu: '0.5'}, limits: {memory: 1024Mi, cpu: 500m}}",
        ))
        .unwrap();
        build(&with("{limits: {memory: 64Mi}}")).unwrap();
    }

    #[test]
    fn an_invalid_tier_config_is_a_build_error_naming_the_tier() {
        let bad = cluster(&MINIMAL.replace(
            "relay: {replicas: 2}",
            "relay: {replicas: 2, config: {quic: {keep_alive_ms: 9000, idle_timeout_ms: 6000}}}",
        ));
        match build(&bad) {
            Err(BuildError::Config { tier, message }) => {
                assert_eq!(tier, "relay");
                assert!(message.contains("keep_alive_ms"), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
