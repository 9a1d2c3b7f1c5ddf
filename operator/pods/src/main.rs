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
use dcdn_pods::traffic::{Stats, Traffic};
use dcdn_pods::{Runner, docker};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    file: String,
    image: Option<String>,
    namespace: String,
    timeout: Duration,
    /// Scenario names to run after the delivery check, in this order.
    scenarios: Vec<String>,
}

/// Every scenario, in the order `--scenarios` with no list runs them.
const SCENARIOS: [&str; 6] = [
    "kill",
    "scale",
    "relay-restart",
    "broken-origin",
    "rollout",
    "rotation",
];

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        file: String::new(),
        image: None,
        namespace: "dcdn".into(),
        timeout: Duration::from_secs(240),
        scenarios: Vec::new(),
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--image" => a.image = it.next(),
            "--scenarios" => a.scenarios = SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
            x if x.starts_with("--scenarios=") => {
                a.scenarios = x["--scenarios=".len()..]
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = a
                    .scenarios
                    .iter()
                    .find(|s| !SCENARIOS.contains(&s.as_str()))
                {
                    bail!("unknown scenario {bad}; known: {}", SCENARIOS.join(","));
                }
            }
            "--namespace" => a.namespace = it.next().context("--namespace takes a value")?,
            "--timeout" => {
                a.timeout =
                    Duration::from_secs(it.next().context("--timeout takes seconds")?.parse()?)
            }
            f if !f.starts_with('-') && a.file.is_empty() => a.file = f.to_owned(),
            other => bail!(
                "unknown argument {other}; usage: dcdn-pods FILE.yaml [--image IMG] [--namespace NS] [--timeout SECS] [--scenarios[=LIST]]"
            ),
        }
    }
    if a.file.is_empty() {
        bail!(
            "usage: dcdn-pods FILE.yaml [--image IMG] [--namespace NS] [--timeout SECS] [--scenarios[=LIST]]"
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

async fn checks(runner: &Arc<Runner>, args: &Args, report: &mut Report) -> Result<()> {
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
    for s in &args.scenarios {
        match s.as_str() {
            "kill" => kill(runner, &names, &cluster.spec.image, report).await?,
            "scale" => scale(runner, &names, report).await?,
            "relay-restart" => relay_restart(runner, &names, report).await?,
            "rollout" => rollout(runner, &names, report).await?,
            "rotation" => rotation(runner, &names, report).await?,
            "broken-origin" => broken_origin(runner, &names, &cluster.spec.image, report).await?,
            other => bail!("unknown scenario {other}"),
        }
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

/// Scenario 4: a killed pod comes back and delivery continues.
async fn kill(
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
    Ok(())
}

/// Scenario 6: `kubectl scale` through the API; the next pass puts it back.
async fn scale(runner: &Runner, names: &Names, report: &mut Report) -> Result<()> {
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

/// A publisher at the origin pod and a reader through the edge Service's
/// ready endpoints (see `dcdn_pods::traffic`), warmed up: every edge has
/// served something before the scenario starts.
async fn start_traffic(runner: &Arc<Runner>, names: &Names, tag: &str) -> Result<Traffic> {
    let token = runner
        .secret_value(
            &names.admin_secret(),
            dcdn_operator::keys::INGEST_TOKEN_FILE,
        )
        .await?;
    let origin_pod = format!("{}-0", names.workload(Role::Origin));
    let (ip, _) = runner
        .pod_ips()
        .get(&origin_pod)
        .cloned()
        .context("no origin pod")?;
    let traffic = Traffic::start(
        runner.clone(),
        format!("http://{ip}:{}", dcdn_operator::build::HTTP_PORT),
        token,
        names.edge_service(),
        dcdn_operator::build::HTTP_PORT,
        tag,
    );
    let started = Instant::now();
    while traffic.stats().reads_ok < 20 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("traffic did not start: {}", traffic.stats().summary());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(traffic)
}

fn traffic_line(report: &mut Report, what: &str, st: &Stats) {
    report.line(st.clean(), what, &st.summary());
    for f in &st.failures {
        println!("    {f}");
    }
}

/// Edges stay Ready while their relay is down (readiness must not cascade:
/// one relay restart must not empty the edge Service) and keep serving
/// what they hold. The relay container stops (SIGTERM, so the edges see
/// the connection close at once); the kubelet starts it again at once. It
/// stops again, and this time the kubelet's back-off keeps it down 10 s.
async fn relay_restart(runner: &Arc<Runner>, names: &Names, report: &mut Report) -> Result<()> {
    let traffic = start_traffic(runner, names, "relay-restart").await?;
    // What the edges hold is what is read while the relay is down: stop
    // publishing (nothing new could reach them) and read the last items.
    traffic.set_publishing(false);
    let until = Instant::now() + Duration::from_secs(20);
    while !traffic.caught_up() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.reset_stats();
    let edges = runner
        .pod_ips()
        .keys()
        .filter(|p| p.starts_with(&format!("{}-", names.workload(Role::Edge))))
        .count();
    let relays: Vec<String> = runner
        .pod_ips()
        .keys()
        .filter(|p| p.starts_with(&format!("{}-", names.workload(Role::Relay))))
        .cloned()
        .collect();
    let edge_pods: Vec<String> = runner
        .pod_ips()
        .keys()
        .filter(|p| p.starts_with(&format!("{}-", names.workload(Role::Edge))))
        .cloned()
        .collect();
    let started = Instant::now();
    let mut fewest = edges;
    let mut relay_down = Duration::ZERO;
    // Samples in which an edge said (its /readyz body) that it had no
    // upstream: the scenario must really take the edges' upstream away.
    let mut orphaned_samples = 0usize;
    for round in 0..2 {
        let before: Vec<u32> = relays.iter().map(|r| runner.restarts(r)).collect();
        for r in &relays {
            let c = runner.container_of(r).context("no relay container")?;
            docker::docker(&docker::args(["stop", "-t", "10", &c])).await?;
        }
        let stopped = Instant::now();
        // Until every relay has been restarted and is Ready again, sampling
        // the edge Service and the edges' own view meanwhile.
        loop {
            let n = runner.endpoints(&names.edge_service()).await?.len();
            fewest = fewest.min(n);
            let ips = runner.pod_ips();
            for e in &edge_pods {
                let Some((ip, _)) = ips.get(e) else { continue };
                if let Some((_, body)) = dcdn_pods::http_get(
                    ip,
                    i32::from(dcdn_operator::build::ADMIN_PORT),
                    "/readyz",
                    1,
                )
                .await
                    && body.contains(r#""upstream_connected":false"#)
                {
                    orphaned_samples += 1;
                }
            }
            let all_back = relays
                .iter()
                .zip(&before)
                .all(|(r, b)| runner.restarts(r) > *b && ips.get(r).is_some_and(|(_, ok)| *ok));
            if all_back {
                break;
            }
            if stopped.elapsed() > Duration::from_secs(90) {
                bail!("relay {relays:?} not Ready again after 90 s (round {round})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        relay_down = relay_down.max(stopped.elapsed());
    }
    // Reads go on a moment with the relay back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = traffic.finish().await;
    report.line(
        fewest == edges && orphaned_samples > 0,
        &format!("relay {relays:?} stopped twice: edges stay Ready"),
        &format!(
            "fewest ready edge endpoints {fewest} of {edges}; relay down up to {:.1} s (second stop: back-off); {orphaned_samples} samples of an edge with no upstream; {:.1} s in all",
            relay_down.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
    );
    traffic_line(report, "relay down: edges serve what they hold", &st);
    Ok(())
}

/// Scenario 2: a config change rolls every tier, edges first, then relays,
/// then the origin, one pod at a time, while a client keeps publishing and
/// another keeps reading through the edge Service.
async fn rollout(runner: &Arc<Runner>, names: &Names, report: &mut Report) -> Result<()> {
    let traffic = start_traffic(runner, names, "rollout").await?;
    traffic.reset_stats();
    let cluster = runner.cluster().await?;
    // Node-config fields each tier renders: every tier gets a new pod
    // template. The chunk TTL goes down to 40 s so that a key rotation
    // after this one drains in the 1 min overlap, not the TTL.
    let size = |t: &dcdn_operator::crd::TierSpec| {
        t.config
            .storage
            .as_ref()
            .map_or(512, |s| s.ring_buffer_size_mb.get())
    };
    let patch = serde_json::json!({"spec": {
        "origin": {"config": {"storage": {"ring_buffer_size_mb": size(&cluster.spec.origin) + 32, "chunk_ttl_seconds": 40}}},
        "relay": {"config": {"storage": {"ring_buffer_size_mb": size(&cluster.spec.relay) + 32, "chunk_ttl_seconds": 40}}},
        "edge": {"config": {"storage": {"ring_buffer_size_mb": size(&cluster.spec.edge) + 32, "chunk_ttl_seconds": 40}}},
    }});
    let before = runner.pod_ips();
    let started = Instant::now();
    runner
        .clusters()
        .patch(&runner.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("editing the DcdnCluster")?;
    // Done when every pod there was has been replaced and all are Ready.
    let done = loop {
        let replaced: Vec<String> = runner
            .replaced_since(started)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let ips = runner.pod_ips();
        if before.keys().all(|p| replaced.contains(p)) && ips.values().all(|(_, ok)| *ok) {
            break true;
        }
        if started.elapsed() > Duration::from_secs(300) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let took = started.elapsed();
    let ready = done && runner.wait_ready(Duration::from_secs(60)).await.is_ok();
    let order: Vec<String> = runner
        .replaced_since(started)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    // Edges, then relays, then the origin: a tier's pods all before the
    // next tier's first.
    let rank = |p: &str| {
        [Role::Edge, Role::Relay, Role::Origin]
            .iter()
            .position(|r| p.starts_with(&format!("{}-", names.workload(*r))))
            .unwrap_or(9)
    };
    let in_order = order.windows(2).all(|w| rank(&w[0]) <= rank(&w[1]));
    let st = traffic.finish().await;
    report.line(
        ready && in_order,
        "2. config change rolled edges, relays, then the origin",
        &format!(
            "{:.1} s for {} pods: {}",
            took.as_secs_f64(),
            order.len(),
            order.join(" ")
        ),
    );
    traffic_line(
        report,
        "2. reads through the edge Service during the rollout",
        &st,
    );
    Ok(())
}

/// Sum of `dcdn_chunks_rejected_total` over every pod (admin port, open).
async fn rejected_everywhere(runner: &Runner) -> Result<f64> {
    let mut sum = 0.0;
    for (pod, (ip, _)) in runner.pod_ips() {
        let (code, text) = dcdn_pods::http_get(
            &ip,
            i32::from(dcdn_operator::build::ADMIN_PORT),
            "/metrics",
            5,
        )
        .await
        .with_context(|| format!("{pod}: /metrics did not answer"))?;
        if code != 200 {
            bail!("{pod}: /metrics answered {code}");
        }
        sum += text
            .lines()
            .filter(|l| l.starts_with("dcdn_chunks_rejected_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// Scenario 3: a key rotation by annotation, through every phase, on the
/// real pods, while a client keeps publishing and reading (what was signed
/// with the old key is read again after the new one is active): no read
/// fails, no pod rejects a chunk, every pod ends with only the new key.
async fn rotation(runner: &Arc<Runner>, names: &Names, report: &mut Report) -> Result<()> {
    let old = runner
        .cluster()
        .await?
        .status
        .and_then(|s| s.active_key_id)
        .context("no active key in the DcdnCluster status")?;
    let rejected_before = rejected_everywhere(runner).await?;
    let traffic = start_traffic(runner, names, "rotation").await?;
    traffic.reset_stats();
    traffic.pin();
    let started = Instant::now();
    let trigger = format!("pods-scenario-{}", std::process::id());
    runner
        .clusters()
        .patch(
            &runner.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                dcdn_operator::rotation::TRIGGER_ANNOTATION: trigger,
            }}})),
        )
        .await
        .context("annotating the DcdnCluster")?;
    let mut phases: Vec<(String, Duration)> = Vec::new();
    let mut new = None;
    while started.elapsed() < Duration::from_secs(360) {
        let st = runner.cluster().await?.status.unwrap_or_default();
        let phase = format!("{:?}", st.rotation_phase.unwrap_or_default());
        if phases.last().map(|(p, _)| p) != Some(&phase) {
            phases.push((phase.clone(), started.elapsed()));
            if phase == "Retiring" {
                // The old key is revoked now: what it signed is no longer
                // something a client may be served.
                traffic.unpin();
            }
        }
        if phase == "Idle" && st.active_key_id.as_deref().is_some_and(|a| a != old) {
            new = st.active_key_id.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    let st = traffic.finish().await;
    let path: Vec<String> = phases
        .iter()
        .map(|(p, t)| format!("{p}@{:.0}s", t.as_secs_f64()))
        .collect();
    report.line(
        new.is_some(),
        "3. key rotation by annotation through every phase",
        &format!("{:.1} s: {}", took.as_secs_f64(), path.join(" ")),
    );
    let Some(new) = new else {
        return Ok(());
    };
    // Every pod holds only the new key (read token from the admin Secret).
    // The operator goes Idle once it has removed the revoked key from the
    // bundle; each pod drops it when it next reloads the projected bundle,
    // so this is waited for (bounded) and the time it took reported.
    let token = runner
        .secret_value(&names.admin_secret(), dcdn_operator::keys::ADMIN_TOKEN_FILE)
        .await?;
    let client = dcdn_node::client::Client::new(Duration::from_secs(5));
    let idle_at = Instant::now();
    let (wrong, pods) = loop {
        let mut wrong = Vec::new();
        let pods = runner.pod_ips();
        for (pod, (ip, _)) in &pods {
            let url = format!("http://{ip}:{}/v1/keys", dcdn_operator::build::ADMIN_PORT);
            match client.get_json(&url, Some(&token)).await {
                Ok(v) => {
                    let ids: Vec<&str> = v["keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k["id"].as_str())
                        .collect();
                    if ids != [new.as_str()] || v["active"].as_str() != Some(new.as_str()) {
                        wrong.push(format!("{pod}: keys {ids:?} active {}", v["active"]));
                    }
                }
                Err(e) => wrong.push(format!("{pod}: {e}")),
            }
        }
        if wrong.is_empty() || idle_at.elapsed() > Duration::from_secs(90) {
            break (wrong, pods);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.line(
        wrong.is_empty(),
        &format!("3. every pod holds only the new key {new}"),
        &if wrong.is_empty() {
            format!(
                "{} pods; old key {old} gone {:.1} s after the operator went Idle",
                pods.len(),
                idle_at.elapsed().as_secs_f64()
            )
        } else {
            wrong.join("; ")
        },
    );
    let rejected = rejected_everywhere(runner).await? - rejected_before;
    report.line(
        rejected == 0.0,
        "3. chunks rejected on any pod during the rotation",
        &format!("{rejected} (dcdn_chunks_rejected_total, summed over every pod)"),
    );
    traffic_line(
        report,
        "3. reads during the rotation (old-key chunks read until Retiring)",
        &st,
    );
    println!(
        "    {} reads of items signed before the rotation",
        st.pinned_reads_ok
    );
    Ok(())
}

/// The origin memory of scenario 5: a value the schema (and the API
/// server: requests equal limits) admits and a user could well write, but
/// that the node cannot run in: it is OOM-killed by the limit the kubelet
/// (here `docker run --memory`) puts on its cgroup as soon as it takes a
/// publish.
const BROKEN_ORIGIN_MEMORY: &str = "12Mi";

/// Scenario 5: a value the schema admits but the origin cannot run with (a
/// memory limit it is OOM-killed under as soon as it works) rolls out and
/// crash-loops; the edit that fixes it lands (the rollout gate lets an
/// unhealthy tier roll) and the cluster recovers, nothing deleted by hand.
/// The edit back is made whatever happened, so later scenarios never run
/// on a broken origin.
async fn broken_origin(
    runner: &Arc<Runner>,
    names: &Names,
    template_image: &str,
    report: &mut Report,
) -> Result<()> {
    let pod = format!("{}-0", names.workload(Role::Origin));
    let cluster = runner.cluster().await?;
    let resources = cluster.spec.origin.resources.clone();
    let set = |v: serde_json::Value| serde_json::json!({"spec": {"origin": {"resources": v}}});
    let token = runner
        .secret_value(
            &names.admin_secret(),
            dcdn_operator::keys::INGEST_TOKEN_FILE,
        )
        .await?;
    let started = Instant::now();
    // Requests with the limit: a real API server refuses a pod whose
    // request is above its limit.
    runner
        .clusters()
        .patch(
            &runner.name,
            &PatchParams::default(),
            &Patch::Merge(set(serde_json::json!({
                "requests": {"memory": BROKEN_ORIGIN_MEMORY},
                "limits": {"memory": BROKEN_ORIGIN_MEMORY},
            }))),
        )
        .await
        .context("editing the DcdnCluster")?;
    // Broken: the origin pod was replaced with the new template and the
    // kernel's OOM killer stopped it at least once since, while a
    // publisher kept trying to publish at it.
    let client = dcdn_node::client::Client::new(Duration::from_secs(10));
    let body = bytes::Bytes::from(vec![7u8; 4 << 20]);
    let mut n = 0u32;
    let broke = loop {
        let replaced = runner
            .replaced_since(started)
            .iter()
            .any(|(_, p)| *p == pod);
        if replaced
            && runner.restarts(&pod) >= 1
            && runner.last_termination(&pod).as_deref() == Some("OOMKilled")
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(120) {
            break false;
        }
        match runner.pod_ips().get(&pod) {
            Some((ip, _)) if replaced => {
                n += 1;
                let url = format!(
                    "http://{ip}:{}/v1/objects/broken-origin/{n}.bin",
                    dcdn_operator::build::HTTP_PORT
                );
                let chunk = futures_util::stream::iter([Ok::<_, std::io::Error>(body.clone())]);
                let _ = client.put_stream(&url, Some(&token), chunk).await;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    report.line(
        broke,
        &format!("5. origin memory {BROKEN_ORIGIN_MEMORY}: rolled out, OOM-killed, restarted"),
        &format!(
            "{} restarts (last: {}) after {:.1} s, {n} publishes tried",
            runner.restarts(&pod),
            runner.last_termination(&pod).as_deref().unwrap_or("none"),
            started.elapsed().as_secs_f64()
        ),
    );
    let fixed_at = Instant::now();
    runner
        .clusters()
        .patch(
            &runner.name,
            &PatchParams::default(),
            &Patch::Merge(set(serde_json::to_value(&resources)?)),
        )
        .await
        .context("editing the DcdnCluster back")?;
    // Fixed: the origin replaced again, and the whole cluster Ready.
    let recovered = loop {
        let again = runner
            .replaced_since(fixed_at)
            .iter()
            .any(|(_, p)| *p == pod);
        let ready = runner.pod_ips().values().all(|(_, ok)| *ok);
        if again && ready {
            break runner.wait_ready(Duration::from_secs(60)).await.is_ok();
        }
        if fixed_at.elapsed() > Duration::from_secs(120) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    report.line(
        recovered,
        "5. the fix, by an edit of the DcdnCluster: every pod Ready",
        &format!("{:.1} s after the edit", fixed_at.elapsed().as_secs_f64()),
    );
    if recovered {
        delivery(
            runner,
            names,
            template_image,
            "5. delivery through the edge Service after the fix",
            report,
        )
        .await?;
    }
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
