//! The operator's rotation state machine and its HTTP admin client driving
//! real nodes (origin, relay, two edges over real QUIC with mTLS) through
//! a whole key rotation during a live stream. The test plays kubelet: after
//! each step it writes what the operator put in the signing Secret and the
//! trust-bundle ConfigMap into the files the nodes mount, as Kubernetes
//! projects them (atomic swap, keys mode 0440).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use dcdn_node::client::Client;
use dcdn_node::config::{NodeConfig, Role};
use dcdn_node::crypto::{KeyRing, Signer, TrustBundle};
use dcdn_node::roles::run;
use dcdn_node::roles::settings::NodeSettings;
use dcdn_node::up::plan::{self, Counts};
use dcdn_operator::crd::{KeyRotationSpec, RotationPhase, RotationStatus};
use dcdn_operator::keys::SigningKeys;
use dcdn_operator::node_admin::{HttpNodeAdmin, NodeAdmin, NodeTarget};
use dcdn_operator::rotation::{self, PodReport};
use k8s_openapi::jiff::Timestamp;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn project(path: &Path, text: &str, mode: u32) {
    let tmp = path.with_extension("projecting");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// kubelet: the Secret's two key files and the bundle ConfigMap's file.
fn sync_files(dir: &Path, keys: &SigningKeys, ring: &KeyRing) {
    let next = keys.next.as_ref().unwrap_or(&keys.current);
    project(
        &dir.join("current.key"),
        &keys.current.to_secret_hex(),
        0o440,
    );
    project(&dir.join("next.key"), &next.to_secret_hex(), 0o440);
    project(
        &dir.join("trust-bundle.json"),
        &ring.to_bundle().to_json(),
        0o644,
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_driven_by_the_operator_through_real_nodes_rejects_nothing() {
    let dir = std::env::temp_dir().join(format!("dcdn-op-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let counts = Counts {
        relays: 1,
        edges: 2,
    };
    let d = dir.clone();
    let plan = plan::plan(&dir, counts, move |c: &mut NodeConfig| {
        if c.node.role == Role::Origin {
            c.crypto.signing_keys = vec![d.join("current.key"), d.join("next.key")];
        }
    })
    .unwrap();
    // What the operator starts from: the plan's key, as its Secret would hold it.
    let mut keys = SigningKeys {
        current: Signer::load(&dir.join("signing.key")).unwrap(),
        next: None,
    };
    let mut ring = KeyRing::from_bundle(
        &TrustBundle::from_json(&std::fs::read_to_string(dir.join("trust-bundle.json")).unwrap())
            .unwrap(),
    )
    .unwrap();
    sync_files(&dir, &keys, &ring);

    let mut nodes = Vec::new();
    for n in &plan.nodes {
        let config =
            NodeConfig::from_file(&n.config_path, std::iter::empty::<(&str, &str)>()).unwrap();
        let creds = run::load_credentials(&config, None).unwrap();
        let mut settings = NodeSettings::from_config(config);
        settings.config_path = Some(n.config_path.clone());
        nodes.push((n.clone(), run::start(settings, creds).await.unwrap()));
    }
    let client = Client::new(Duration::from_secs(20));
    for (n, _) in &nodes {
        let url = format!("http://{}/readyz", n.admin);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !client.get(&url, None).await.is_ok_and(|r| r.status == 200) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never ready",
                n.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A live stream runs through the whole rotation.
    let origin = plan.origin().unwrap().http;
    let ingest = plan.ingest_token.clone();
    let streamer = tokio::spawn(async move {
        let client = Client::new(Duration::from_secs(120));
        let pieces = (0..400u32).map(|i| Bytes::from(vec![i as u8; 4000]));
        let paced = futures_util::stream::unfold(pieces, |mut it| async move {
            let next = it.next()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok::<_, std::io::Error>(next), it))
        });
        let resp = client
            .put_stream(
                &format!("http://{origin}/v1/streams/rot"),
                Some(&ingest),
                paced,
            )
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&resp.body).unwrap()
    });

    let admin = HttpNodeAdmin::default();
    let targets: Vec<(NodeTarget, Role)> = plan
        .nodes
        .iter()
        .map(|n| {
            (
                NodeTarget {
                    pod: n.name.clone(),
                    address: n.admin.to_string(),
                    token: plan.admin_token.clone(),
                },
                n.role,
            )
        })
        .collect();
    let old = keys.current.key_id();
    let spec = KeyRotationSpec::default();
    let mut phase = RotationPhase::Idle;
    let mut status = RotationStatus::default();
    let mut seen = vec![phase];
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stuck in {phase:?}: {status:?}"
        );
        let mut reports = Vec::new();
        for (t, role) in &targets {
            reports.push(PodReport {
                name: t.pod.clone(),
                role: *role,
                view: admin.keys(t).await,
            });
        }
        let input = rotation::Input {
            spec: &spec,
            trigger: Some("e2e"),
            phase,
            status: &status,
            created: None,
            now: Timestamp::now(),
            // Short here: the stream's chunks are checked for rejections, not expiry.
            drain: Duration::from_millis(300),
            pods: &reports,
            expected_pods: targets.len(),
        };
        let out = rotation::step(&input, &mut keys, &mut ring).unwrap();
        sync_files(&dir, &keys, &ring);
        if out.reload_origins {
            for (t, role) in &targets {
                if *role == Role::Origin {
                    admin.reload(t).await.unwrap();
                }
            }
        }
        if out.phase != phase {
            seen.push(out.phase);
        }
        phase = out.phase;
        status = out.status;
        if phase == RotationPhase::Idle && seen.len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use RotationPhase::*;
    assert_eq!(
        seen,
        vec![
            Idle,
            Staged,
            Distributing,
            Activating,
            Draining,
            Retiring,
            Idle
        ]
    );
    let new = keys.current.key_id();
    assert_ne!(new, old);

    let published = streamer.await.unwrap();
    let (first, chunks, len) = (
        published["first_seq"].as_u64().unwrap(),
        published["chunks"].as_u64().unwrap(),
        published["len"].as_u64().unwrap(),
    );
    for n in plan.edges() {
        let mut total = 0u64;
        for seq in first..first + chunks {
            let got = client
                .get(&format!("http://{}/v1/streams/rot/{seq}", n.http), None)
                .await
                .unwrap_or_else(|e| panic!("{} gap at {seq}: {e}", n.name));
            total += got.body.len() as u64;
        }
        assert_eq!(total, len, "{} delivered every byte", n.name);
    }
    for (n, running) in &nodes {
        let text = client
            .get(&format!("http://{}/metrics", n.admin), None)
            .await
            .unwrap()
            .body;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(
            metric(&text, "dcdn_chunks_rejected_total"),
            0.0,
            "{} rejected chunks",
            n.name
        );
        let ring = running.shared.keys.read();
        assert_eq!(ring.active(), Some(new), "{}", n.name);
        assert!(
            ring.state(old).is_none(),
            "{} still knows the old key",
            n.name
        );
    }
    // What the status's originOffloadRatio is read from.
    let origin_target = &targets.iter().find(|(_, r)| *r == Role::Origin).unwrap().0;
    let ratio = admin.origin_offload(origin_target).await.unwrap();
    assert!(ratio.is_some_and(|r| r > 0.0), "{ratio:?}");
    for (_, r) in nodes {
        r.shutdown(Duration::from_secs(2)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
