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
    /// Print [`UpReport`] as JSON instead of text.
    pub json: bool,
    /// Serve clients and publishers over HTTPS and HTTP/3 with a throwaway CA.
    pub tls: bool,
}

/// One node of a local DCDN, as `dcdn up --json` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeUrls {
    pub name: String,
    pub role: crate::config::Role,
    pub mesh: String,
    /// Origin ingest base URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<String>,
    /// Edge client base URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<String>,
    pub admin: String,
}

/// What `dcdn up --json` prints: once every node is ready, or with
/// `--check`, after the check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpReport {
    pub dir: std::path::PathBuf,
    /// The throwaway ingest token of this local DCDN.
    pub ingest_token: String,
    /// With `--tls`: the CA certificate clients must trust (`--cacert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    pub nodes: Vec<NodeUrls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<check::Report>,
}

impl UpReport {
    fn new(plan: &plan::Plan) -> Self {
        use crate::config::Role;
        Self {
            dir: plan.dir.clone(),
            ingest_token: plan.ingest_token.clone(),
            ca_file: plan.https_ca.clone(),
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeUrls {
                    name: n.name.clone(),
                    role: n.role,
                    mesh: n.mesh.to_string(),
                    ingest: (n.role == Role::Origin).then(|| plan.client_url(n)),
                    serve: (n.role == Role::Edge).then(|| plan.client_url(n)),
                    admin: format!("http://{}", n.admin),
                })
                .collect(),
            check: None,
        }
    }
}

/// Starts the cluster; with `check`, runs the check and stops; otherwise runs
/// until Ctrl-C. Returns whether everything passed.
pub async fn run(opts: UpOptions) -> anyhow::Result<bool> {
    // The check fetches through every edge: with none it would check nothing
    // and pass.
    if opts.check && opts.counts.edges == 0 {
        return Err(crate::cli::Failure::Usage(
            "--check needs at least one edge to fetch through (--edges 0 was given)".into(),
        )
        .into());
    }
    run_planned(&opts, || {
        plan::plan_with(&opts.dir, opts.counts, opts.tls, |_| {})
    })
    .await
}

/// How many times `up` plans fresh ports and starts again when a node could
/// not bind a planned one.
pub const START_ATTEMPTS: usize = 3;

/// `run` with the planning step given: `make_plan` is called once per start
/// attempt (tests use it to take a planned port first).
pub async fn run_planned(
    opts: &UpOptions,
    mut make_plan: impl FnMut() -> Result<plan::Plan, plan::PlanError>,
) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    // Signals are caught from the very start, not only once serving: before,
    // a Ctrl-C during startup or the check took the default action, killed
    // `up` at once (no destructor runs) and left every node running.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut cluster = procs::Cluster::default();
    let result = tokio::select! {
        r = start_and_serve(opts, &mut make_plan, &mut cluster) => Some(r),
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
    };
    let result = match result {
        Some(r) => r,
        None => {
            eprintln!("stopping");
            // Interrupted: a check did not finish, so it did not pass; a
            // serving cluster passed if no node died.
            Ok(!opts.check && cluster.exited().is_empty() && !cluster.nodes.is_empty())
        }
    };
    cluster.stop(Duration::from_secs(10)).await;
    result
}

/// Plans, starts every node and waits until all are ready; when a node could
/// not bind a planned port, plans fresh ports and starts again.
async fn start(
    opts: &UpOptions,
    make_plan: &mut impl FnMut() -> Result<plan::Plan, plan::PlanError>,
    cluster: &mut procs::Cluster,
) -> anyhow::Result<plan::Plan> {
    let mut attempt = 1;
    loop {
        let plan = make_plan()?;
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
        let bar = crate::cli::progress::steps(plan.nodes.len() as u64, "starting");
        let ready = cluster.wait_ready(Duration::from_secs(30), &bar).await;
        bar.finish_and_clear();
        match ready {
            Ok(()) => return Ok(plan),
            // Ports are planned free, then released for the nodes to bind:
            // in between another program (often another `dcdn up`) can take
            // one. The ports are not handed over as open sockets, so the cure
            // is fresh ports.
            Err(e) if e.address_in_use() && attempt < START_ATTEMPTS => {
                eprintln!("{e}\na planned port was taken meanwhile; planning new ports");
                cluster.stop(Duration::from_secs(5)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn start_and_serve(
    opts: &UpOptions,
    make_plan: &mut impl FnMut() -> Result<plan::Plan, plan::PlanError>,
    cluster: &mut procs::Cluster,
) -> anyhow::Result<bool> {
    let plan = start(opts, make_plan, cluster).await?;
    let mut report = UpReport::new(&plan);
    if !opts.json {
        print_urls(&plan, &plan.dir, cluster);
    } else if !opts.check {
        println!("{}", serde_json::to_string(&report)?);
    }
    let origin = plan
        .origin()
        .ok_or_else(|| anyhow::anyhow!("the plan has no origin"))?;
    if opts.check {
        let targets = check::Targets {
            origin: plan.client_url(origin),
            ingest_token: plan.ingest_token.clone(),
            edges: plan.edges().map(|e| plan.client_url(e)).collect(),
            origin_admin: Some(format!("http://{}", origin.admin)),
            ca_file: plan.https_ca.clone(),
        };
        let outcome = check::run(&targets, check::CheckSizes::default()).await;
        let mut ok = outcome.ok;
        if opts.json {
            report.check = Some(outcome);
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{outcome}");
        }
        for (name, status) in cluster.exited() {
            eprintln!("{name} exited ({status}) during the check");
            ok = false;
        }
        if !ok {
            eprintln!("logs: {}", plan.dir.display());
        }
        return Ok(ok);
    }
    if !opts.json {
        println!("\nPress Ctrl-C to stop.");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = std::collections::BTreeSet::new();
    loop {
        tick.tick().await;
        // One node dying is reported, once; the others keep serving (an
        // edge's clients can use another edge, a relay's edges fail over).
        for (name, status) in cluster.exited() {
            if reported.insert(name.clone()) {
                eprintln!(
                    "{name} exited ({status}); the other nodes keep serving; see {}",
                    plan.dir.join(format!("{name}.log")).display()
                );
            }
        }
        if reported.len() == cluster.nodes.len() {
            eprintln!("every node has exited");
            return Ok(false);
        }
    }
}

fn print_urls(plan: &plan::Plan, dir: &Path, cluster: &procs::Cluster) {
    println!(
        "DCDN is up ({} nodes); files and logs in {}",
        plan.nodes.len(),
        dir.display()
    );
    for n in &plan.nodes {
        let http = match n.role {
            crate::config::Role::Origin => format!("ingest {}", plan.client_url(n)),
            crate::config::Role::Edge => format!("serve  {}", plan.client_url(n)),
            crate::config::Role::Relay => "-".to_owned(),
        };
        let pid = cluster
            .nodes
            .iter()
            .find(|r| r.spec.name == n.name)
            .and_then(procs::Running::pid)
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "  {:<10} {:<7} mesh {:<21} {:<32} admin http://{:<21} pid {pid}",
            n.name, n.role, n.mesh, http, n.admin
        );
    }
    if let Some(o) = plan.origin() {
        // With --tls every client command needs the CA: one flag for dcdn,
        // one for curl.
        let (cacert, curl_ca) = match &plan.https_ca {
            Some(ca) => (
                format!(" --cacert {}", ca.display()),
                format!(" --cacert {}", ca.display()),
            ),
            None => (String::new(), String::new()),
        };
        if let Some(ca) = &plan.https_ca {
            println!(
                "\nHTTPS (HTTP/2, HTTP/1.1) and HTTP/3 on the same ports; trust this CA: {}",
                ca.display()
            );
        }
        let origin_url = plan.client_url(o);
        println!(
            "\npublish: dcdn publish FILE --origin {origin_url} --token {}{cacert}",
            plan.ingest_token
        );
        println!(
            "         (curl{curl_ca} -T FILE -H 'Authorization: Bearer {}' {origin_url}/v1/objects/NAME)",
            plan.ingest_token
        );
        if let Some(e) = plan.edges().next() {
            let edge_url = plan.client_url(e);
            println!("fetch:   dcdn fetch {edge_url}/v1/objects/NAME -o FILE{cacert}");
            println!("         (curl{curl_ca} -o FILE {edge_url}/v1/objects/NAME)");
        }
        let admins: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| format!("http://{}", n.admin))
            .collect();
        println!(
            "status:  dcdn status --admin {} --token $(cat {})",
            admins.join(","),
            plan.dir.join("admin-token").display()
        );
    }
}
