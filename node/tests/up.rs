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

/// A `dcdn up` child process with its stdout read line by line.
struct Up {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Up {
    fn start(tag: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("dcdn-up-{tag}-{}", std::process::id()));
        let stderr = std::env::temp_dir().join(format!("dcdn-up-{tag}-{}.err", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_dcdn"))
            .arg("up")
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("running dcdn up");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr,
            dir,
        }
    }

    /// Reads the node table `up` prints once every node is ready:
    /// (name, pid, serve URL if an edge).
    fn nodes(&self) -> Vec<(String, u32, Option<String>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        let mut nodes = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("dcdn up printed its nodes");
            if line.starts_with("DCDN is up") {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.iter().position(|w| *w == "pid") {
                Some(i) => nodes.push((
                    words[0].to_owned(),
                    words[i + 1].parse().unwrap(),
                    words
                        .iter()
                        .position(|w| *w == "serve")
                        .map(|s| words[s + 1].to_owned()),
                )),
                None if !nodes.is_empty() => return nodes,
                None => {}
            }
        }
    }

    fn signal(&self, sig: &str, pid: u32) {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Waits up to `secs` for `up` to exit.
    fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Whether process `pid` still runs (a zombie, dead but not reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Waits up to 10 s until none of `pids` runs; if some still do, kills
/// them (this test started them) and returns false.
fn all_gone(pids: &[u32]) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if !pids.iter().any(|p| alive(*p)) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for p in pids.iter().filter(|p| alive(**p)) {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    false
}

/// kill -9 of one edge is reported and the rest keep serving; SIGINT then
/// stops `up` and every node it started.
#[test]
fn dcdn_up_survives_a_killed_edge_and_sigint_stops_every_node() {
    let mut up = Up::start("kill-edge", &["--relays", "1", "--edges", "2"]);
    let nodes = up.nodes();
    let pids: Vec<u32> = nodes.iter().map(|n| n.1).collect();
    let edge0 = nodes.iter().find(|n| n.0 == "edge-0").unwrap();
    let edge1 = nodes.iter().find(|n| n.0 == "edge-1").unwrap().clone();
    up.signal("-KILL", edge0.1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !up.stderr().contains("edge-0 exited") {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead edge was not reported: {}",
            up.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Past the next supervision tick: `up` and the other nodes still run.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        up.child.try_wait().unwrap().is_none(),
        "up stopped: {}",
        up.stderr()
    );
    for n in nodes.iter().filter(|n| n.0 != "edge-0") {
        assert!(alive(n.1), "{} was stopped", n.0);
    }
    // The surviving edge answers (a 404 for an unknown object is an answer).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = dcdn_node::client::Client::new(std::time::Duration::from_secs(5));
    let url = format!("{}/v1/objects/nothing-here", edge1.2.unwrap());
    // The client turns a non-2xx answer into an error that quotes it.
    let answer = rt
        .block_on(client.get(&url, None))
        .map(|r| r.status.to_string());
    let answer = answer.unwrap_or_else(|e| e.to_string());
    assert!(answer.contains("answered 404"), "edge-1: {answer}");
    up.signal("-INT", up.child.id());
    let status = up.wait_exit(30).expect("up exits on SIGINT");
    assert!(!status.success(), "a node died, yet up exited 0");
    assert!(all_gone(&pids), "nodes left running after SIGINT");
}

/// SIGINT while `up --check` runs the check stops every node too (before,
/// the signal's default action killed `up` alone).
#[test]
fn sigint_during_dcdn_up_check_stops_every_node() {
    let mut up = Up::start("int-check", &["--check", "--relays", "1", "--edges", "1"]);
    let pids: Vec<u32> = up.nodes().iter().map(|n| n.1).collect();
    up.signal("-INT", up.child.id());
    let status = up.wait_exit(30).expect("up exits on SIGINT");
    assert!(!status.success(), "an interrupted check passed");
    assert!(all_gone(&pids), "nodes left running after SIGINT");
}

/// A planned port taken by someone else before the node binds it (another
/// `dcdn up`, say) makes `up` plan fresh ports and start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcdn_up_plans_again_when_a_planned_port_is_taken() {
    let dir = std::env::temp_dir().join(format!("dcdn-up-taken-{}", std::process::id()));
    let opts = dcdn_node::up::UpOptions {
        counts: dcdn_node::up::plan::Counts {
            relays: 1,
            edges: 1,
        },
        dir: dir.clone(),
        check: true,
        program: env!("CARGO_BIN_EXE_dcdn").into(),
        json: false,
        tls: false,
    };
    let mut squatter = None;
    let mut plans = 0;
    let passed = dcdn_node::up::run_planned(&opts, || {
        plans += 1;
        let plan = dcdn_node::up::plan::plan(&opts.dir, opts.counts, |_| {})?;
        if squatter.is_none() {
            // Take the origin's admin port, as another program would.
            squatter = Some(std::net::TcpListener::bind(plan.nodes[0].admin).unwrap());
        }
        Ok(plan)
    })
    .await
    .unwrap();
    assert!(passed, "the check failed");
    assert_eq!(plans, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
