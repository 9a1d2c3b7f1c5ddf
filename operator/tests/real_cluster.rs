//! What only a real cluster can show: the operator running in it with the
//! chart's RBAC, real StatefulSet rollouts and garbage collection. Ignored
//! here (no API server can be obtained on these machines); the kind testbed
//! runs them: `testbed/kind/operator-tests.sh` (needs `testbed/kind/up.sh`
//! first, and uses the current kubeconfig context).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dcdn_operator::crd::DcdnCluster;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::time::{Duration, Instant};

fn namespace() -> String {
    std::env::var("DCDN_NAMESPACE").unwrap_or_else(|_| "dcdn".into())
}

async fn client() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_default()
        .await
        .expect("a kubeconfig for the kind testbed")
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn ready(c: &DcdnCluster) -> bool {
    c.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn template_hash(s: &StatefulSet) -> String {
    s.metadata.annotations.as_ref().unwrap()["dcdn.io/template-hash"].clone()
}

const CLUSTER: &str = "apiVersion: dcdn.io/v1alpha1
kind: DcdnCluster
metadata: {name: optest}
spec:
  image: dcdn/node:0.1.0
  relay: {replicas: 1}
  edge: {replicas: 2}
";

#[tokio::test]
#[ignore = "needs a real cluster: run by testbed/kind/operator-tests.sh"]
async fn a_config_change_rolls_edges_before_relays_and_deletion_cleans_up() {
    let client = client().await;
    let ns = namespace();
    let clusters: Api<DcdnCluster> = Api::namespaced(client.clone(), &ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let _ = clusters.delete("optest", &DeleteParams::foreground()).await;
    let c = dcdn_operator::crd::from_yaml(CLUSTER).unwrap();
    clusters.create(&PostParams::default(), &c).await.unwrap();
    wait_for("optest Ready", Duration::from_secs(300), async || {
        clusters.get("optest").await.is_ok_and(|c| ready(&c))
    })
    .await;
    let relay_before = template_hash(&sts.get("optest-relay").await.unwrap());
    let edge_before = template_hash(&sts.get("optest-edge").await.unwrap());
    let change = serde_json::json!({"spec": {
        "edge": {"config": {"fec": {"default_parity_count": 6}}},
        "relay": {"config": {"fec": {"default_parity_count": 6}}},
    }});
    clusters
        .patch("optest", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    // While edges roll, the relay keeps its template.
    wait_for(
        "edges to take the new template",
        Duration::from_secs(60),
        async || template_hash(&sts.get("optest-edge").await.unwrap()) != edge_before,
    )
    .await;
    let mut relay_moved_while_edges_rolled = false;
    wait_for(
        "the rollout to finish",
        Duration::from_secs(600),
        async || {
            let edge = sts.get("optest-edge").await.unwrap();
            let st = edge.status.clone().unwrap_or_default();
            let edges_done = st.current_revision == st.update_revision
                && st.ready_replicas == Some(2)
                && st.updated_replicas == Some(2);
            let relay = template_hash(&sts.get("optest-relay").await.unwrap());
            if !edges_done && relay != relay_before {
                relay_moved_while_edges_rolled = true;
            }
            relay != relay_before && clusters.get("optest").await.is_ok_and(|c| ready(&c))
        },
    )
    .await;
    assert!(
        !relay_moved_while_edges_rolled,
        "the relay rolled before the edges were done"
    );
    clusters
        .delete("optest", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for("garbage collection", Duration::from_secs(120), async || {
        sts.get_opt("optest-edge").await.unwrap().is_none()
            && sts.get_opt("optest-relay").await.unwrap().is_none()
    })
    .await;
}
