#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The README's first command, as separate processes: `dcdn up --check`
//! must publish, deliver and verify through every edge and exit 0.

use std::process::Command;

/// Run with `--json` so the shape scripts read is pinned too; the text
/// report is the same `check::Report` (see `tests/cli.rs`).
#[test]
fn dcdn_up_check_passes_with_separate_processes() {
    let dir = std::env::temp_dir().join(format!("dcdn-up-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args([
            "up", "--check", "--json", "--relays", "1", "--edges", "2", "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("running dcdn up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "dcdn up --check failed");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let role = |r: &str| nodes.iter().filter(|n| n["role"] == r).count();
    assert_eq!((role("origin"), role("relay"), role("edge")), (1, 1, 2));
    assert!(
        nodes
            .iter()
            .all(|n| n["admin"].as_str().unwrap().starts_with("http://"))
    );
    assert!(report["check"]["ok"].as_bool().unwrap());
    assert_eq!(report["check"]["failed"], 0);
    // Not a terminal: no progress bar redraws in the log.
    assert!(!stderr.contains('\r'), "progress output without a terminal");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts `dcdn up` must refuse before it writes or starts anything.
#[test]
fn dcdn_up_refuses_no_edges_with_check_and_unbounded_counts() {
    for (args, says) in [
        (vec!["--edges", "0", "--check"], "at least one edge"),
        (vec!["--edges", "100000"], "edges must be at most 64"),
        (vec!["--relays", "1000"], "relays must be at most 16"),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "dcdn-up-refuse-{}-{}",
            std::process::id(),
            args.join("")
        ));
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_dcdn"))
            .arg("up")
            .args(&args)
            .arg("--dir")
            .arg(&dir)
            .output()
            .expect("running dcdn up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: not a usage error");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Nothing was laid out.
        assert!(
            std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()),
            "{args:?} wrote files"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
