//! `dcdn-pods FILE.yaml`: try a `DcdnCluster` without a Kubernetes cluster.
//!
//! Reconciles the file in-process into an in-memory API server, runs the
//! pods the operator rendered on Docker (see the library), then publishes
//! an object and a live stream at the origin and reads both through the
//! edge Service. One line per check, a summary; exit 0 only if every byte
//! arrived verified. Everything it made is removed on exit.
//!
//! Flags: `--image IMG` runs every pod from IMG instead of the template's
//! image (a run-private tag); `--namespace NS` (default `dcdn`) when the
//! file names none; `--timeout SECS` for readiness (default 240).

use anyhow::{Context as _, Result, bail};
use dcdn_node::config::Role;
use dcdn_operator::build::Names;
use dcdn_pods::{Runner, docker};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};
use std::time::{Duration, Instant};

struct Args {
    file: String,
    image: Option<String>,
    namespace: String,
    timeout: Duration,
    scenarios: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        file: String::new(),
        image: None,
        namespace: "dcdn".into(),
        timeout: Duration::from_secs(240),
        scenarios: false,
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--image" => a.image = it.next(),
            "--scenarios" => a.scenarios = true,
            "--namespace" => a.namespace = it.next().context("--namespace takes a value")?,
            "--timeout" => {
                a.timeout =
                    Duration::from_secs(it.next().context("--timeout takes seconds")?.parse()?)
            }
            f if !f.starts_with('-') && a.file.is_empty() => a.file = f.to_owned(),
            other => bail!(
                "unknown argument {other}; usage: dcdn-pods FILE.yaml [--image IMG] [--namespace NS] [--timeout SECS] [--scenarios]"
            ),
        }
    }
    if a.file.is_empty() {
        bail!(
            "usage: dcdn-pods FILE.yaml [--image IMG] [--namespace NS] [--timeout SECS] [--scenarios]"
        );
    }
    Ok(a)
}

struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn line(&mut self, ok: bool, what: &str, detail: &str) {
        println!("{} {what:<52} {detail}", if ok { "PASS" } else { "FAIL" });
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

async fn checks(runner: &Runner, args: &Args, report: &mut Report) -> Result<()> {
    let cluster = runner.cluster().await?;
    let names = Names::of(&cluster)?;
    let pods: u32 = [
        &cluster.spec.origin,
        &cluster.spec.relay,
        &cluster.spec.edge,
    ]
    .iter()
    .map(|t| t.replicas)
    .sum();
    let applied = Instant::now();
    match runner.wait_ready(args.timeout).await {
        Ok(_) => report.line(
            true,
            &format!("every pod Ready ({pods} pods, DcdnCluster Ready=True)"),
            &format!(
                "{:.1} s from DcdnCluster applied",
                applied.elapsed().as_secs_f64()
            ),
        ),
        Err(e) => {
            report.line(false, "every pod Ready", &format!("{e:#}"));
            eprintln!("{}", runner.logs().await);
            return Ok(());
        }
    }
    delivery(
        runner,
        &names,
        &cluster.spec.image,
        "object + live stream through the edge Service",
        report,
    )
    .await?;
    if args.scenarios {
        scenarios(runner, &names, &cluster.spec.image, report).await?;
    }
    Ok(())
}

/// Publishes an object and a live stream at the origin and reads both
/// through the edge Service, from a client container on the network.
async fn delivery(
    runner: &Runner,
    names: &Names,
    template_image: &str,
    what: &str,
    report: &mut Report,
) -> Result<bool> {
    let ns = &runner.namespace;
    let token = runner
        .secret_value(
            &names.admin_secret(),
            dcdn_operator::keys::INGEST_TOKEN_FILE,
        )
        .await?;
    let origin = format!(
        "http://{}-0.{}.{ns}.svc.cluster.local:{}",
        names.workload(Role::Origin),
        names.mesh_service(Role::Origin),
        dcdn_operator::build::HTTP_PORT
    );
    // The edge Service by its cluster DNS name; its port maps to the pods'
    // `http` port, which is where the aliases lead (no kube-proxy here).
    let edge = format!(
        "http://{}.{ns}.svc.cluster.local:{}",
        names.edge_service(),
        dcdn_operator::build::HTTP_PORT
    );
    let image = runner
        .image_override()
        .map_or_else(|| template_image.to_owned(), str::to_owned);
    let cli: Vec<String> = [
        "check",
        "--origin",
        &origin,
        "--edge",
        &edge,
        "--object-bytes",
        "4194304",
        "--live-pieces",
        "60",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (ok, out) = runner
        .client_run(&image, &[("DCDN_INGEST_TOKEN", &token)], &cli)
        .await?;
    for l in out
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
    {
        println!("  {l}");
    }
    report.line(
        ok,
        what,
        if ok {
            "byte-identical, verified"
        } else {
            "see the lines above"
        },
    );
    if !ok {
        eprintln!("{out}\n{}", runner.logs().await);
    }
    Ok(ok)
}

/// Scenarios on the running cluster: a killed pod comes back (4), a
/// `kubectl scale` through the API is put back (6).
async fn scenarios(
    runner: &Runner,
    names: &Names,
    template_image: &str,
    report: &mut Report,
) -> Result<()> {
    // 4. docker kill an edge pod: the kubelet restarts it, it is Ready again,
    //    delivery through the edge Service continues.
    let pod = format!("{}-0", names.workload(Role::Edge));
    let container = runner
        .container_of(&pod)
        .context("no container for the first edge pod")?;
    let before = runner.restarts(&pod);
    docker::docker(&docker::args(["kill", &container])).await?;
    let killed = Instant::now();
    let back = loop {
        let ready = runner.pod_ips().get(&pod).is_some_and(|(_, r)| *r);
        if runner.restarts(&pod) > before && ready {
            break true;
        }
        if killed.elapsed() > Duration::from_secs(90) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    report.line(
        back,
        &format!("4. {pod} killed: restarted and Ready"),
        &format!("{:.1} s", killed.elapsed().as_secs_f64()),
    );
    runner.wait_ready(Duration::from_secs(90)).await?;
    delivery(
        runner,
        names,
        template_image,
        "4. delivery through the edge Service after the kill",
        report,
    )
    .await?;

    // 6. kubectl scale through the API: the next pass puts it back.
    let sts: Api<StatefulSet> = Api::namespaced(runner.client.clone(), &runner.namespace);
    let edge = names.workload(Role::Edge);
    let want = sts.get(&edge).await?.spec.and_then(|s| s.replicas);
    sts.patch(
        &edge,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": want.unwrap_or(1) + 2}})),
    )
    .await?;
    let scaled = Instant::now();
    let restored = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sts.get(&edge).await?.spec.and_then(|s| s.replicas);
        if now == want {
            break true;
        }
        if scaled.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    // Then the pods follow the StatefulSet back.
    let settled = restored && runner.wait_ready(Duration::from_secs(90)).await.is_ok();
    let pods = runner
        .pod_ips()
        .keys()
        .filter(|p| p.starts_with(&format!("{edge}-")))
        .count();
    report.line(
        settled && Some(pods as i32) == want,
        &format!("6. {edge} scaled through the API: put back"),
        &format!(
            "replicas {} after {:.1} s (spec {want:?}), {pods} edge pods",
            if restored { "restored" } else { "NOT restored" },
            scaled.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let yaml = match std::fs::read_to_string(&args.file) {
        Ok(y) => y,
        Err(e) => {
            eprintln!("error: reading {}: {e}", args.file);
            return std::process::ExitCode::from(2);
        }
    };
    let runner = match Runner::new(&yaml, &args.namespace, args.image.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "==> {} on Docker network {} ({})",
        args.file, runner.network, runner.run
    );
    let controllers = runner.spawn(Duration::from_secs(1));
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    let result = tokio::select! {
        r = checks(&runner, &args, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = result {
        report.line(false, "run", &format!("{e:#}"));
    }
    controllers.abort();
    runner.teardown().await;
    println!("{} passed, {} failed", report.passed, report.failed);
    if report.failed == 0 && report.passed > 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
