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

fn run_node(config: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running dcdn run");
    // A node that starts would run forever: give it a bounded while to
    // refuse, then stop it so a regression fails instead of hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("dcdn run --config {} kept running", config.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn dcdn_run_refuses_what_config_check_refuses_with_exit_3() {
    for (name, text, role) in [
        ("run-empty.toml", "", "edge"),
        ("run-relay.toml", "[node]\nrole = \"relay\"\n", "relay"),
    ] {
        let (code, err) = run_node(&temp(name, text));
        assert_eq!(code, Some(3), "{name}: {err}");
        assert_eq!(
            err.matches(&format!("an {role} needs an upstream")).count(),
            1,
            "{err}"
        );
    }
}

#[test]
fn a_node_that_cannot_start_says_why_once() {
    let dir = std::env::temp_dir().join(format!(
        "dcdn-run-cause-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let plan = dcdn_node::up::plan::plan(
        &dir,
        dcdn_node::up::plan::Counts {
            relays: 0,
            edges: 0,
        },
        |_| {},
    )
    .unwrap();
    let origin = &plan.nodes[0];
    let config = std::fs::read_to_string(&origin.config_path).unwrap();
    // The admin port is taken: binding fails with the OS's reason.
    let squatter = std::net::TcpListener::bind(origin.admin).unwrap();
    let (code, err) = run_node(&origin.config_path);
    drop(squatter);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("binding admin on {}", origin.admin)),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    // A credential file that is not there.
    let cert = dir.join("origin-0.pem");
    std::fs::rename(&cert, dir.join("moved.crt")).unwrap();
    let (code, err) = run_node(&origin.config_path);
    assert_eq!(code, Some(1), "{config}\n{err}");
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
