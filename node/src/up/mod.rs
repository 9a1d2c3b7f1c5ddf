//! `dcdn up`: a whole DCDN on one machine — origin, relays and edges as
//! separate processes on 127.0.0.1, with a throwaway CA and signing key.

pub mod check;
pub mod plan;
pub mod procs;

use std::path::Path;
use std::time::Duration;

/// Options of `dcdn up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub counts: plan::Counts,
    pub dir: std::path::PathBuf,
    pub check: bool,
    /// The `dcdn` binary to start for each node.
    pub program: std::path::PathBuf,
}

/// Starts the cluster; with `check`, runs the check and stops; otherwise runs
/// until Ctrl-C. Returns whether everything passed.
pub async fn run(opts: UpOptions) -> anyhow::Result<bool> {
    // The check fetches through every edge: with none it would check nothing
    // and pass.
    anyhow::ensure!(
        !(opts.check && opts.counts.edges == 0),
        "--check needs at least one edge to fetch through (--edges 0 was given)"
    );
    let plan = plan::plan(&opts.dir, opts.counts, |_| {})?;
    let mut cluster = procs::Cluster::default();
    let result = start_and_serve(&opts, &plan, &mut cluster).await;
    cluster.stop(Duration::from_secs(10)).await;
    result
}

async fn start_and_serve(
    opts: &UpOptions,
    plan: &plan::Plan,
    cluster: &mut procs::Cluster,
) -> anyhow::Result<bool> {
    for n in &plan.nodes {
        cluster.spawn(
            &opts.program,
            procs::NodeProc {
                name: n.name.clone(),
                args: vec![
                    "run".into(),
                    "--config".into(),
                    n.config_path.display().to_string(),
                ],
                log: plan.dir.join(format!("{}.log", n.name)),
                ready_url: format!("http://{}/readyz", n.admin),
            },
        )?;
    }
    cluster.wait_ready(Duration::from_secs(30)).await?;
    print_urls(plan, &plan.dir);
    let origin = plan
        .origin()
        .ok_or_else(|| anyhow::anyhow!("the plan has no origin"))?;
    if opts.check {
        let targets = check::Targets {
            origin: format!("http://{}", origin.http),
            ingest_token: plan.ingest_token.clone(),
            edges: plan.edges().map(|e| format!("http://{}", e.http)).collect(),
            origin_admin: Some(format!("http://{}", origin.admin)),
        };
        let outcomes = check::run(&targets, check::CheckSizes::default()).await;
        let ok = check::report(&outcomes);
        if !ok {
            eprintln!("logs: {}", plan.dir.display());
        }
        return Ok(ok);
    }
    println!("\nPress Ctrl-C to stop.");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let exited = cluster.exited();
                if !exited.is_empty() {
                    for (name, status) in exited {
                        eprintln!("{name} exited ({status}); see {}", plan.dir.join(format!("{name}.log")).display());
                    }
                    return Ok(false);
                }
            }
        }
    }
    println!("stopping");
    Ok(true)
}

fn print_urls(plan: &plan::Plan, dir: &Path) {
    println!(
        "DCDN is up ({} nodes); files and logs in {}",
        plan.nodes.len(),
        dir.display()
    );
    for n in &plan.nodes {
        let http = match n.role {
            crate::config::Role::Origin => format!("ingest http://{}", n.http),
            crate::config::Role::Edge => format!("serve  http://{}", n.http),
            crate::config::Role::Relay => "-".to_owned(),
        };
        println!(
            "  {:<10} {:<7} mesh {:<21} {:<32} admin http://{}",
            n.name, n.role, n.mesh, http, n.admin
        );
    }
    if let Some(o) = plan.origin() {
        println!(
            "\npublish: curl -T FILE -H 'Authorization: Bearer {}' http://{}/v1/objects/NAME",
            plan.ingest_token, o.http
        );
        if let Some(e) = plan.edges().next() {
            println!("fetch:   curl http://{}/v1/objects/NAME", e.http);
        }
    }
}
