//! Every file a rendered node reads exists in the pod: for each example in
//! `deploy/examples/` and each tier, the node config is parsed the way the
//! node parses it (with the pod's own environment, `$(VAR)` expanded and the
//! downward API's pod name filled in), and every absolute path in it — and
//! the `--config` file itself — must be a key of a Secret or ConfigMap
//! volume mounted at that path's directory (respecting `items`), or a
//! directory that is itself a mount.
//!
//! This is the cheap check that catches a config naming a file no volume
//! projects (the origin's signing key once named `signing.key` while the
//! Secret holds `current.key`/`next.key`) in milliseconds, before any pod
//! runs. The Secrets are the ones `keys.rs` builds, so a renamed Secret key
//! is caught too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dcdn_node::config::{Format, NodeConfig};
use dcdn_operator::build::{self, Names, TIERS};
use dcdn_operator::crd::DcdnCluster;
use dcdn_operator::keys::{AdminTokens, MeshCa, SigningKeys};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Volume};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut v: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "{v:?}");
    v
}

/// Every object a cluster has, key material included, as the reconciler
/// would apply it on the first pass. A user-named admin Secret is assumed
/// to carry the documented keys (`token`, `ingest-token`), a tier's client
/// certificate Secrets (the user's, or the one cert-manager writes) those of
/// a `kubernetes.io/tls` Secret.
fn all_objects(c: &DcdnCluster) -> Vec<Value> {
    all_objects_with(c, &AdminTokens::generate())
}

fn all_objects_with(c: &DcdnCluster, tokens: &AdminTokens) -> Vec<Value> {
    let names = Names::of(c).unwrap();
    let mut out = build::build(c).unwrap();
    let ca = MeshCa::generate(&names.cluster).unwrap();
    out.push(ca.to_secret(&names));
    out.push(SigningKeys::generate().to_secret(&names));
    let mut admin = tokens.to_secret(&names);
    admin["metadata"]["name"] = names.admin_secret().into();
    out.push(admin);
    out.push(tokens.digest_secret(&names).unwrap());
    for role in TIERS {
        let replicas = build::tier_spec(c, role).replicas;
        out.push(ca.tier_secret(&names, role, replicas, None).unwrap());
    }
    let ring = dcdn_node::crypto::KeyRing::new();
    out.push(build::trust_bundle(&names, &ring.to_bundle()));
    // The S3 upstream's access key: the user's Secret, with the keys the
    // resource names.
    if let Some(s3) = c.spec.origin.upstream.as_ref().and_then(|u| u.s3.as_ref()) {
        let secret = &s3.credentials_secret;
        out.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": secret.name, "namespace": names.namespace },
            "data": { secret.access_key_id_key.clone(): "", secret.secret_access_key_key.clone(): "" },
        }));
    }
    for role in TIERS {
        if let Some(tls) = &build::tier_spec(c, role).tls {
            for name in build::tls_secret_names(tls) {
                out.push(serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": { "name": name, "namespace": names.namespace },
                    "data": { "tls.crt": "", "tls.key": "" },
                }));
            }
        }
    }
    out
}

/// The files a volume projects: file name → key of the source object.
fn projected_files(vol: &Volume, objects: &[Value]) -> Result<BTreeMap<String, String>, String> {
    let (kind, name, items) = if let Some(s) = &vol.secret {
        (
            "Secret",
            s.secret_name.clone().unwrap_or_default(),
            s.items.clone(),
        )
    } else if let Some(cm) = &vol.config_map {
        ("ConfigMap", cm.name.clone(), cm.items.clone())
    } else {
        return Err(format!(
            "volume {} is neither a Secret nor a ConfigMap",
            vol.name
        ));
    };
    let obj = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name.as_str())
        .ok_or_else(|| {
            format!(
                "volume {} names {kind} {name}, which is not built",
                vol.name
            )
        })?;
    let keys: BTreeSet<String> = match kind {
        "Secret" => serde_json::from_value::<Secret>(obj.clone())
            .unwrap()
            .data
            .unwrap_or_default()
            .into_keys()
            .collect(),
        _ => serde_json::from_value::<ConfigMap>(obj.clone())
            .unwrap()
            .data
            .unwrap_or_default()
            .into_keys()
            .collect(),
    };
    Ok(match items {
        // With `items`, only the listed keys appear, under their paths.
        Some(items) => items
            .into_iter()
            .filter(|i| keys.contains(&i.key))
            .map(|i| (i.path, i.key))
            .collect(),
        None => keys.into_iter().map(|k| (k.clone(), k)).collect(),
    })
}

/// The container's environment as the kubelet sets it: `fieldRef`
/// `metadata.name` is the pod name, `$(VAR)` expands earlier entries.
fn environment(ctr: &Container, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in ctr.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => {
                let mut v = v.clone();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            }
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.to_owned(),
                Some("metadata.namespace") => "ns".into(),
                Some("status.podIP") => "10.0.0.1".into(),
                other => panic!(
                    "env {} takes {other:?}, which this check does not model",
                    e.name
                ),
            },
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    env
}

fn absolute_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with('/') => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| absolute_paths(x, out)),
        Value::Object(m) => m.values().for_each(|x| absolute_paths(x, out)),
        _ => {}
    }
}

/// What is wrong with one tier's pod, one line per missing file.
fn missing_files(objects: &[Value], sts: &StatefulSet) -> Vec<String> {
    let sts_name = sts.metadata.name.clone().unwrap();
    let pod = format!("{sts_name}-0");
    let spec = sts.spec.clone().unwrap().template.spec.unwrap();
    let ctr = &spec.containers[0];
    let volumes = spec.volumes.clone().unwrap_or_default();
    // mountPath → files under it (None for a directory volume such as emptyDir).
    let mut mounts: BTreeMap<String, Option<BTreeMap<String, String>>> = BTreeMap::new();
    let mut problems = Vec::new();
    let claims: Vec<String> = sts
        .spec
        .clone()
        .unwrap()
        .volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for m in ctr.volume_mounts.clone().unwrap_or_default() {
        // A claim from volumeClaimTemplates is a writable directory, like emptyDir.
        if claims.contains(&m.name) {
            mounts.insert(m.mount_path.trim_end_matches('/').to_owned(), None);
            continue;
        }
        let vol = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("{sts_name}: mount {} has no volume", m.name));
        if m.sub_path.is_some() {
            problems.push(format!(
                "{sts_name}: mount {} uses subPath, which kubelet never updates",
                m.name
            ));
        }
        let files = if vol.secret.is_some() || vol.config_map.is_some() {
            match projected_files(vol, objects) {
                Ok(f) => Some(f),
                Err(e) => {
                    problems.push(format!("{sts_name}: {e}"));
                    Some(BTreeMap::new())
                }
            }
        } else {
            None
        };
        mounts.insert(m.mount_path.trim_end_matches('/').to_owned(), files);
    }
    let env = environment(ctr, &pod);
    let args = ctr.args.clone().unwrap_or_default();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("{sts_name}: no --config argument"));
    // The config file comes from the tier's ConfigMap.
    let cm_name = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| {
            v.config_map
                .as_ref()
                .filter(|c| c.name.ends_with("-config"))
        })
        .map(|c| c.name.clone())
        .unwrap();
    let toml = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm_name.as_str())
        .and_then(|o| {
            let cm: ConfigMap = serde_json::from_value(o.clone()).ok()?;
            cm.data?.into_values().next()
        })
        .unwrap();
    // `[http_tls]` names directories, each of which must be a Secret volume
    // projecting a certificate and its key. The node parses the whole file,
    // [http_tls] included: what the operator renders is what the node reads.
    let table: toml::Table = toml.parse().unwrap();
    if let Some(section) = table.get("http_tls").cloned() {
        let dirs = section["cert_dirs"].as_array().cloned().unwrap_or_default();
        if dirs.is_empty() {
            problems.push(format!("{pod}: [http_tls] names no cert_dirs"));
        }
        for dir in dirs {
            let dir = dir.as_str().unwrap().trim_end_matches('/');
            match mounts.get(dir) {
                Some(Some(files)) => {
                    for f in build::TLS_SECRET_FILES {
                        if !files.contains_key(f) {
                            problems.push(format!(
                                "{pod}: {dir}/{f} is not projected; the volume holds {:?}",
                                files.keys().collect::<Vec<_>>()
                            ));
                        }
                    }
                }
                _ => problems.push(format!(
                    "{pod}: [http_tls] reads certificates in {dir}, where no Secret is mounted (mounts: {:?})",
                    mounts.keys().collect::<Vec<_>>()
                )),
            }
        }
    }
    let toml = toml::to_string(&table).unwrap();
    let dcdn_env = env.iter().filter(|(k, _)| k.starts_with("DCDN_")).cloned();
    let cfg = NodeConfig::parse(&toml, Format::Toml, &config_path, dcdn_env)
        .unwrap_or_else(|e| panic!("{sts_name}: the node refuses its config: {e}"));
    let mut paths = vec![config_path];
    absolute_paths(&serde_json::to_value(&cfg).unwrap(), &mut paths);
    for p in paths {
        if mounts.contains_key(p.trim_end_matches('/')) {
            continue; // a directory the node owns
        }
        let path = Path::new(&p);
        let dir = path.parent().unwrap().to_str().unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        match mounts.get(dir) {
            None => problems.push(format!(
                "{pod}: {p} is in {dir}, where no volume is mounted (mounts: {:?})",
                mounts.keys().collect::<Vec<_>>()
            )),
            Some(None) => {} // a writable directory volume
            Some(Some(files)) if files.contains_key(file) => {}
            Some(Some(files)) => problems.push(format!(
                "{pod}: {p} is not projected; the volume at {dir} holds {:?}",
                files.keys().collect::<Vec<_>>()
            )),
        }
    }
    problems
}

#[test]
fn every_file_a_rendered_node_reads_is_projected_into_its_pod() {
    let mut problems = Vec::new();
    for example in examples() {
        let mut c =
            dcdn_operator::crd::from_yaml(&std::fs::read_to_string(&example).unwrap()).unwrap();
        c.metadata.namespace.get_or_insert("default".into());
        let objects = all_objects(&c);
        let names = Names::of(&c).unwrap();
        for role in TIERS {
            let sts = objects
                .iter()
                .find(|o| {
                    o["kind"] == "StatefulSet"
                        && o["metadata"]["name"] == names.workload(role).as_str()
                })
                .unwrap();
            let sts: StatefulSet = serde_json::from_value(sts.clone()).unwrap();
            for p in missing_files(&objects, &sts) {
                problems.push(format!(
                    "{}: {p}",
                    example.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "files nodes read but no volume projects:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_a_file_no_volume_projects() {
    // The checker itself can fail: an origin told to read a key the signing
    // Secret does not hold is reported, naming the file and what is there.
    let mut c = dcdn_operator::crd::from_yaml(
        "apiVersion: dcdn.io/v1alpha1\nkind: DcdnCluster\nmetadata: {name: demo, namespace: x}\nspec: {image: 'dcdn/node:0.1.0'}\n",
    )
    .unwrap();
    c.metadata.namespace = Some("x".into());
    let objects = all_objects(&c);
    let mut sts: StatefulSet = serde_json::from_value(
        objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == "demo-origin")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let ctr = &mut sts
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    ctr.env
        .get_or_insert_default()
        .push(k8s_openapi::api::core::v1::EnvVar {
            name: "DCDN_CRYPTO_SIGNING_KEYS".into(),
            value: Some(r#"["/etc/dcdn/signing/signing.key"]"#.into()),
            value_from: None,
        });
    let problems = missing_files(&objects, &sts);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("/etc/dcdn/signing/signing.key")
            && problems[0].contains("current.key"),
        "{problems:?}"
    );
}

#[test]
fn the_check_sees_a_certificate_directory_no_secret_is_mounted_at() {
    // Drop the edge's SNI certificate volume: the [http_tls] directory the
    // config still names is reported.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/tls.yaml");
    let mut c = dcdn_operator::crd::from_yaml(&std::fs::read_to_string(example).unwrap()).unwrap();
    c.metadata.namespace = Some("x".into());
    let objects = all_objects(&c);
    let mut sts: StatefulSet = serde_json::from_value(
        objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == "secure-edge")
            .unwrap()
            .clone(),
    )
    .unwrap();
    assert!(missing_files(&objects, &sts).is_empty());
    let ctr = &mut sts
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    ctr.volume_mounts
        .as_mut()
        .unwrap()
        .retain(|m| m.name != "http-tls-1");
    let problems = missing_files(&objects, &sts);
    assert!(!problems.is_empty());
    assert!(
        problems
            .iter()
            .all(|p| p.contains("/etc/dcdn/http-tls/media-example-org-tls")),
        "{problems:?}"
    );
}

#[test]
fn pods_mount_token_digests_only_and_each_tier_only_those_it_checks() {
    let tokens = AdminTokens::generate();
    for example in examples() {
        let mut c =
            dcdn_operator::crd::from_yaml(&std::fs::read_to_string(&example).unwrap()).unwrap();
        c.metadata.namespace.get_or_insert("default".into());
        let objects = all_objects_with(&c, &tokens);
        let names = Names::of(&c).unwrap();
        for role in TIERS {
            let sts: StatefulSet = serde_json::from_value(
                objects
                    .iter()
                    .find(|o| {
                        o["kind"] == "StatefulSet"
                            && o["metadata"]["name"] == names.workload(role).as_str()
                    })
                    .unwrap()
                    .clone(),
            )
            .unwrap();
            let spec = sts.spec.unwrap().template.spec.unwrap();
            let mut admin_files = BTreeMap::new();
            for vol in spec.volumes.unwrap_or_default() {
                let Some(secret) = &vol.secret else { continue };
                let data = objects
                    .iter()
                    .find(|o| {
                        o["kind"] == "Secret"
                            && o["metadata"]["name"] == secret.secret_name.as_deref().unwrap()
                    })
                    .map(|o| serde_json::from_value::<Secret>(o.clone()).unwrap())
                    .unwrap()
                    .data
                    .unwrap_or_default();
                for (file, key) in projected_files(&vol, &objects).unwrap() {
                    let text = String::from_utf8_lossy(&data[&key].0).into_owned();
                    for t in [&tokens.admin, &tokens.ingest] {
                        assert!(
                            !text.contains(t.as_str()),
                            "{}: {role:?} pods get a token in {}/{file}",
                            example.display(),
                            vol.name
                        );
                    }
                    if vol.name == "admin" {
                        admin_files.insert(file, text);
                    }
                }
            }
            let check = |file: &str, token: &str| {
                let digest = dcdn_node::auth::Token::parse(&admin_files[file]).unwrap();
                assert!(digest.matches(token), "{role:?} {file}");
                assert!(!digest.matches("something else"));
            };
            check("token", &tokens.admin);
            if role == dcdn_node::config::Role::Origin {
                check("ingest-token", &tokens.ingest);
            } else {
                assert!(
                    !admin_files.contains_key("ingest-token"),
                    "{role:?} pods take no publishes, so they get no ingest digest"
                );
            }
        }
    }
}

#[test]
fn the_origin_reads_its_s3_key_from_the_users_secret_and_the_check_sees_a_wrong_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/upstream.yaml");
    let mut c = dcdn_operator::crd::from_yaml(&std::fs::read_to_string(example).unwrap()).unwrap();
    c.metadata.namespace = Some("x".into());
    let objects = all_objects(&c);
    let origin = |objects: &[Value]| -> StatefulSet {
        serde_json::from_value(
            objects
                .iter()
                .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == "pull-origin")
                .unwrap()
                .clone(),
        )
        .unwrap()
    };
    assert!(missing_files(&objects, &origin(&objects)).is_empty());
    // The node parses the rendered [origin.upstream] and reads the key from
    // the Secret's files; the ConfigMap names files, never a key.
    let cfg = build::node_config(&c, dcdn_node::config::Role::Origin).unwrap();
    let s3 = cfg.origin.upstream.unwrap().s3.unwrap();
    assert_eq!(
        s3.access_key_id_file.unwrap(),
        Path::new(build::UPSTREAM_S3_DIR).join("access-key-id")
    );
    // The resource names a key the user's Secret does not have: the file
    // the node reads is not projected, and the check says so.
    let mut wrong = c.clone();
    wrong
        .spec
        .origin
        .upstream
        .as_mut()
        .unwrap()
        .s3
        .as_mut()
        .unwrap()
        .credentials_secret
        .access_key_id_key = "id".into();
    let mut objects = build::build(&wrong).unwrap();
    objects.extend(
        all_objects(&c)
            .into_iter()
            .filter(|o| o["kind"] != "StatefulSet"),
    );
    let problems = missing_files(&objects, &origin(&objects));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("/etc/dcdn/upstream-s3/access-key-id"),
        "{problems:?}"
    );
}
