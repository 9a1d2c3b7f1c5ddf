//! The Docker CLI, the only container runtime this runner talks to.
//!
//! Every container and network carries the label `dcdn.pods=<run>`, so one
//! command removes everything a run made, also after a crash.

use anyhow::{Context as _, Result, bail};
use std::process::Stdio;
use tokio::process::Command;

pub const LABEL: &str = "dcdn.pods";

/// Runs `docker ARGS`, returns stdout; an error carries stderr.
pub async fn docker(args: &[String]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.first().map(String::as_str).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn args<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// A private /24 network for one run: `(name, first three octets)`.
pub async fn create_network(run: &str) -> Result<(String, String)> {
    // Start at an octet derived from the run id so parallel runs rarely
    // race for the same subnet; an existing one makes create fail.
    let seed = u32::from_str_radix(&run[run.len().saturating_sub(4)..], 16).unwrap_or(0);
    for i in 0..120u32 {
        let third = 100 + (seed + i) % 120;
        let subnet = format!("10.233.{third}");
        let created = docker(&args([
            "network",
            "create",
            "--subnet",
            &format!("{subnet}.0/24"),
            "--label",
            &format!("{LABEL}={run}"),
            run,
        ]))
        .await;
        if created.is_ok() {
            return Ok((run.to_owned(), subnet));
        }
    }
    bail!("no free 10.233.x.0/24 subnet for a Docker network")
}

/// Removes every container and the network of a run.
pub async fn remove_run(run: &str) {
    let filter = format!("label={LABEL}={run}");
    if let Ok(ids) = docker(&args(["ps", "-aq", "--filter", &filter])).await {
        let ids: Vec<String> = ids.split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let mut a = args(["rm", "-f"]);
            a.extend(ids);
            let _ = docker(&a).await;
        }
    }
    let _ = docker(&args(["network", "rm", run])).await;
}

/// Container name → running, for every container of a run.
pub async fn states(run: &str) -> Result<std::collections::BTreeMap<String, bool>> {
    let filter = format!("label={LABEL}={run}");
    let out = docker(&args([
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        "{{.Names}} {{.State}}",
    ]))
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (name, state) = l.split_once(' ')?;
            Some((name.to_owned(), state == "running"))
        })
        .collect())
}
