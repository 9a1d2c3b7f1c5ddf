//! The CRD embeds the Kubernetes schemas of the `k8s-openapi` version
//! feature the operator builds with, and the chart tells Helm which
//! clusters it supports: the two must name the same oldest Kubernetes, or
//! the chart installs on clusters whose API the CRD's embedded types
//! (probes, affinity, resources) do not describe.

/// The Kubernetes minor version `k8s-openapi` was built for.
// One push per version macro, of which only the built one expands.
#[allow(clippy::vec_init_then_push)]
fn embedded_minor() -> u32 {
    let mut v: Vec<u32> = Vec::new();
    k8s_openapi::k8s_if_1_32! { v.push(32); }
    k8s_openapi::k8s_if_1_33! { v.push(33); }
    k8s_openapi::k8s_if_1_34! { v.push(34); }
    k8s_openapi::k8s_if_1_35! { v.push(35); }
    k8s_openapi::k8s_if_1_36! { v.push(36); }
    assert_eq!(v.len(), 1, "k8s-openapi built for {v:?}");
    v[0]
}

#[test]
fn the_charts_kube_version_floor_is_the_kubernetes_the_crd_embeds() {
    let chart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../helm/dcdn/Chart.yaml"
    ))
    .unwrap_or_else(|e| panic!("reading helm/dcdn/Chart.yaml: {e}"));
    let constraint = chart
        .lines()
        .find_map(|l| l.strip_prefix("kubeVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("helm/dcdn/Chart.yaml has no kubeVersion"));
    // ">=1.32.0-0": the floor is the minor after "1.".
    let floor: u32 = constraint
        .strip_prefix(">=1.")
        .and_then(|r| r.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("kubeVersion {constraint:?} is not a \">=1.N…\" floor"));
    let embedded = embedded_minor();
    assert_eq!(
        floor, embedded,
        "helm/dcdn/Chart.yaml kubeVersion {constraint:?} but the CRD embeds Kubernetes 1.{embedded} \
         schemas (k8s-openapi's version feature in operator/Cargo.toml): change them together"
    );
}
