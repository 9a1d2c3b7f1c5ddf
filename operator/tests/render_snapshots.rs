//! Snapshots of every object the operator builds for each example in
//! `deploy/examples/`: a change to any builder shows up as a reviewable
//! diff. `DCDN_BLESS=1 cargo test -p dcdn-operator --test render_snapshots`
//! rewrites them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn rendered_examples_match_their_snapshots() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let snapshots = root.join("operator/tests/snapshots");
    let mut examples: Vec<_> = std::fs::read_dir(root.join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "{examples:?}");
    let bless = std::env::var_os("DCDN_BLESS").is_some();
    let mut stale = Vec::new();
    for example in examples {
        let mut cluster =
            dcdn_operator::crd::from_yaml(&std::fs::read_to_string(&example).unwrap()).unwrap();
        cluster.metadata.namespace.get_or_insert("default".into());
        let mut text = String::new();
        for o in dcdn_operator::build::build(&cluster).unwrap() {
            text.push_str("---\n");
            text.push_str(&serde_norway::to_string(&o).unwrap());
        }
        let snap = snapshots.join(example.file_name().unwrap());
        if bless {
            std::fs::create_dir_all(&snapshots).unwrap();
            std::fs::write(&snap, &text).unwrap();
        }
        if std::fs::read_to_string(&snap).unwrap_or_default() != text {
            stale.push(snap.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale snapshots (review the diff, then DCDN_BLESS=1 cargo test -p dcdn-operator --test render_snapshots): {stale:?}"
    );
}
