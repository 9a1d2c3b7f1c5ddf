#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `dcdn config check` as a user runs it: what it refuses and how it says so.

use std::process::Command;

fn check(file: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args(["config", "check"])
        .arg(file)
        .output()
        .expect("running dcdn config check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dcdn-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_missing_file_is_reported_with_its_cause_once() {
    let (ok, _, err) = check(std::path::Path::new("/nonexistent/dcdn.toml"));
    assert!(!ok);
    assert!(err.contains("reading /nonexistent/dcdn.toml"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn an_edge_or_relay_without_an_upstream_is_refused() {
    // An empty file is the default config: an edge with no upstream.
    for (name, text, role) in [
        ("empty.toml", "", "edge"),
        ("relay.toml", "[node]\nrole = \"relay\"\n", "relay"),
    ] {
        let (ok, out, err) = check(&temp(name, text));
        assert!(!ok, "{name} was valid: {out}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(&format!("an {role} needs an upstream")),
            "{err}"
        );
    }
    for text in [
        "[discovery]\nupstream = [\"relay-0:7400\"]\n",
        "[discovery]\nupstream_dns = \"relays.dcdn:7400\"\n",
        "[node]\nrole = \"origin\"\n",
    ] {
        let (ok, _, err) = check(&temp("good.toml", text));
        assert!(ok, "{text}: {err}");
    }
}
