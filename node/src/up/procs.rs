//! Child processes of `dcdn up`: start them, wait until ready, stop them.
//!
//! Each node is a separate `dcdn run` process with its own log file, so one
//! machine runs a real multi-process cluster talking real QUIC over loopback.
//! Children are stopped on every way out — success, error, Ctrl-C, panic —
//! because [`Cluster`]'s `Drop` kills what is still running.

use crate::client::Client;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Why a child could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("starting {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited during startup ({status}); last log lines:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("{name} not ready after {after:?} ({url}); last log lines:\n{log}")]
    NotReady {
        name: String,
        url: String,
        after: Duration,
        log: String,
    },
}

impl ProcError {
    /// The node could not bind one of its planned ports. Matched on the OS's
    /// message in the node's log, the only channel a child has to tell us.
    pub fn address_in_use(&self) -> bool {
        matches!(self, Self::Exited { log, .. } if log.contains("Address already in use"))
    }
}

/// One node process to start.
#[derive(Debug, Clone)]
pub struct NodeProc {
    pub name: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// `GET` this until it answers 2xx.
    pub ready_url: String,
}

/// A running child.
#[derive(Debug)]
pub struct Running {
    pub spec: NodeProc,
    child: Child,
}

impl Running {
    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Every child of one `dcdn up`.
#[derive(Debug, Default)]
pub struct Cluster {
    pub nodes: Vec<Running>,
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Cluster {
    /// Starts `spec` running `program`, stdout and stderr to its log file.
    pub fn spawn(&mut self, program: &std::path::Path, spec: NodeProc) -> Result<(), ProcError> {
        let log = std::fs::File::create(&spec.log).map_err(|source| ProcError::Spawn {
            name: spec.name.clone(),
            source,
        })?;
        let err_log = log.try_clone().map_err(|source| ProcError::Spawn {
            name: spec.name.clone(),
            source,
        })?;
        let child = Command::new(program)
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcError::Spawn {
                name: spec.name.clone(),
                source,
            })?;
        self.nodes.push(Running { spec, child });
        Ok(())
    }

    /// Waits until every child answers its readiness URL, failing early when
    /// one exits.
    /// `progress` advances by one per ready node (a hidden bar draws nothing).
    pub async fn wait_ready(
        &mut self,
        deadline: Duration,
        progress: &indicatif::ProgressBar,
    ) -> Result<(), ProcError> {
        let client = Client::new(Duration::from_secs(2));
        let start = Instant::now();
        for node in &mut self.nodes {
            progress.set_message(node.spec.name.clone());
            loop {
                if let Ok(Some(status)) = node.child.try_wait() {
                    return Err(ProcError::Exited {
                        name: node.spec.name.clone(),
                        status: status.to_string(),
                        log: tail(&node.spec.log, 20),
                    });
                }
                if client.get(&node.spec.ready_url, None).await.is_ok() {
                    progress.inc(1);
                    break;
                }
                if start.elapsed() > deadline {
                    return Err(ProcError::NotReady {
                        name: node.spec.name.clone(),
                        url: node.spec.ready_url.clone(),
                        after: deadline,
                        log: tail(&node.spec.log, 20),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Children that have exited, with their status.
    pub fn exited(&mut self) -> Vec<(String, String)> {
        self.nodes
            .iter_mut()
            .filter_map(|n| match n.child.try_wait() {
                Ok(Some(status)) => Some((n.spec.name.clone(), status.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Asks every child to drain (SIGTERM), waits up to `grace`, then kills
    /// what is left. Edges go first so clients lose the leaves before the
    /// trunk.
    pub async fn stop(&mut self, grace: Duration) {
        for node in self.nodes.iter().rev() {
            if let Some(pid) = node.child.id() {
                terminate(pid);
            }
        }
        let start = Instant::now();
        for node in self.nodes.iter_mut().rev() {
            let left = grace.saturating_sub(start.elapsed());
            if tokio::time::timeout(left, node.child.wait()).await.is_err() {
                let _ = node.child.kill().await;
            }
        }
        self.nodes.clear();
    }
}

/// Sends SIGTERM so the node drains. rustix wraps the system call safely;
/// a failure (the child already exited) needs no handling: `stop` waits and
/// then kills whatever is left.
fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_that_exits_during_startup_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("dcdn-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Cluster::default();
        cluster
            .spawn(
                std::path::Path::new("/bin/sh"),
                NodeProc {
                    name: "bad".into(),
                    args: vec!["-c".into(), "echo boom-marker; exit 3".into()],
                    log: dir.join("bad.log"),
                    ready_url: "http://127.0.0.1:1/readyz".into(),
                },
            )
            .unwrap();
        let err = cluster
            .wait_ready(Duration::from_secs(10), &indicatif::ProgressBar::hidden())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad exited"), "{text}");
        assert!(text.contains("boom-marker"), "{text}");
        cluster.stop(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn stop_sends_sigterm_so_children_drain() {
        let dir = std::env::temp_dir().join(format!("dcdn-procs2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Cluster::default();
        // The trap runs only on SIGTERM: a SIGKILL after the grace would
        // leave the log empty.
        cluster
            .spawn(
                std::path::Path::new("/bin/sh"),
                NodeProc {
                    name: "sleeper".into(),
                    args: vec![
                        "-c".into(),
                        "trap 'echo drained; exit 0' TERM; echo up; while :; do sleep 0.05; done"
                            .into(),
                    ],
                    log: dir.join("s.log"),
                    ready_url: String::new(),
                },
            )
            .unwrap();
        // Let the shell install its trap before the signal.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tail(&dir.join("s.log"), 5).contains("up") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = Instant::now();
        cluster.stop(Duration::from_secs(5)).await;
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(cluster.nodes.is_empty());
        assert!(tail(&dir.join("s.log"), 5).contains("drained"));
    }
}
