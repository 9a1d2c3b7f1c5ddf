//! An in-process cluster for multi-node tests: real QUIC endpoints on
//! loopback, real certificates and signatures, one tokio runtime.

#![allow(dead_code)]

use dcdn_node::config::{NodeConfig, Role};
use dcdn_node::roles::run::{self, Running};
use dcdn_node::roles::settings::NodeSettings;
use dcdn_node::up::plan::{self, Counts, Plan};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub struct TestNode {
    pub name: String,
    pub role: Role,
    pub config: NodeConfig,
    pub running: Option<Running>,
    /// The node as a `dcdn run` child process instead, for tests that must
    /// kill it as the kernel would (SIGKILL: no goodbye, no close frames).
    pub process: Option<std::process::Child>,
}

impl TestNode {
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("node is running")
    }

    pub fn http(&self) -> String {
        format!(
            "http://{}",
            self.running().http_addr.expect("an http listener")
        )
    }

    /// The client or ingest listener as an https:// URL (with `plan_tls`).
    pub fn https(&self) -> String {
        format!(
            "https://{}",
            self.running().http_addr.expect("an http listener")
        )
    }

    pub fn admin(&self) -> String {
        match &self.running {
            Some(r) => format!("http://{}", r.admin_addr),
            None => format!("http://{}", self.config.network.admin_listen),
        }
    }

    /// SIGKILLs the node's process and reaps it.
    pub fn kill_process(&mut self) {
        let mut child = self.process.take().expect("node runs as a process");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn mesh(&self) -> SocketAddr {
        self.config.network.mesh_listen
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(
            &self.running().shared.metrics.render().unwrap(),
            name,
            labels,
        )
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
        if self.process.is_some() {
            self.kill_process();
        }
    }
}

/// Sums the samples of `name` whose labels include `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0
}

pub struct TestCluster {
    pub plan: Plan,
    pub nodes: Vec<TestNode>,
    pub dir: PathBuf,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dcdn-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestCluster {
    /// Plans 1 origin, `relays` relays and `edges` edges; `adjust` may
    /// change each node's config (e.g. point an edge at a proxy) before start.
    pub async fn start(
        tag: &str,
        counts: Counts,
        tweak: impl Fn(&mut NodeConfig),
        adjust: impl Fn(&mut NodeConfig),
    ) -> Self {
        let (plan, dir) = Self::plan(tag, counts, tweak);
        Self::start_planned(plan, dir, adjust).await
    }

    /// A cluster whose edges reach the (first) relay only through a seeded
    /// UDP proxy dropping `loss` of datagrams both ways.
    pub async fn start_with_lossy_relay_link(
        tag: &str,
        counts: Counts,
        tweak: impl Fn(&mut NodeConfig),
        loss: f64,
    ) -> (Self, crate::support::impair::Proxy) {
        Self::start_behind_proxy(tag, counts, tweak, Role::Relay, loss, 42).await
    }

    /// A cluster whose relays reach the origin only through a UDP proxy
    /// seeded with `seed`, dropping `loss` of datagrams both ways.
    pub async fn start_with_lossy_origin_link(
        tag: &str,
        counts: Counts,
        tweak: impl Fn(&mut NodeConfig),
        loss: f64,
        seed: u64,
    ) -> (Self, crate::support::impair::Proxy) {
        Self::start_behind_proxy(tag, counts, tweak, Role::Origin, loss, seed).await
    }

    /// The proxy sits in front of the first node of role `upstream`; the
    /// nodes of the tier below it are told to reach it there.
    async fn start_behind_proxy(
        tag: &str,
        counts: Counts,
        tweak: impl Fn(&mut NodeConfig),
        upstream: Role,
        loss: f64,
        seed: u64,
    ) -> (Self, crate::support::impair::Proxy) {
        use crate::support::impair::{Impairment, Proxy};
        let downstream = if upstream == Role::Origin {
            Role::Relay
        } else {
            Role::Edge
        };
        let (plan, dir) = Self::plan(tag, counts, tweak);
        let mesh = plan.nodes.iter().find(|n| n.role == upstream).unwrap().mesh;
        let imp = Impairment {
            loss,
            ..Impairment::default()
        };
        let proxy = Proxy::start(mesh, imp, imp, seed).await.unwrap();
        let proxy_addr = proxy.addr.to_string();
        let cluster = Self::start_planned(plan, dir, move |cfg| {
            if cfg.node.role == downstream {
                cfg.discovery.upstream = vec![proxy_addr.clone()];
            }
        })
        .await;
        (cluster, proxy)
    }

    /// Lays the cluster out without starting it (to learn its addresses).
    pub fn plan(tag: &str, counts: Counts, tweak: impl Fn(&mut NodeConfig)) -> (Plan, PathBuf) {
        let dir = temp_dir(tag);
        let plan = plan::plan(&dir, counts, tweak).unwrap();
        (plan, dir)
    }

    /// Like `plan`, with HTTPS and HTTP/3 on the origin's and edges'
    /// listeners from a throwaway CA (`plan.https_ca`).
    pub fn plan_tls(tag: &str, counts: Counts, tweak: impl Fn(&mut NodeConfig)) -> (Plan, PathBuf) {
        let dir = temp_dir(tag);
        let plan = plan::plan_with(&dir, counts, true, tweak).unwrap();
        (plan, dir)
    }

    pub async fn start_planned(plan: Plan, dir: PathBuf, adjust: impl Fn(&mut NodeConfig)) -> Self {
        Self::start_planned_with_processes(plan, dir, adjust, |_| false).await
    }

    /// Like `start_planned`, but the nodes `as_process` picks run as `dcdn
    /// run` child processes from their planned config file (`adjust` does
    /// not reach them).
    pub async fn start_planned_with_processes(
        plan: Plan,
        dir: PathBuf,
        adjust: impl Fn(&mut NodeConfig),
        as_process: impl Fn(Role) -> bool,
    ) -> Self {
        let mut nodes = Vec::new();
        for n in &plan.nodes {
            let mut config =
                NodeConfig::from_file(&n.config_path, std::iter::empty::<(&str, &str)>()).unwrap();
            adjust(&mut config);
            nodes.push(TestNode {
                name: n.name.clone(),
                role: n.role,
                config,
                running: None,
                process: None,
            });
        }
        let mut cluster = Self { plan, nodes, dir };
        for i in 0..cluster.nodes.len() {
            if as_process(cluster.nodes[i].role) {
                let config_path = &cluster.plan.nodes[i].config_path;
                let child = std::process::Command::new(env!("CARGO_BIN_EXE_dcdn"))
                    .arg("run")
                    .arg("--config")
                    .arg(config_path)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                cluster.nodes[i].process = Some(child);
            } else {
                cluster.start_node(i).await;
            }
        }
        cluster.wait_ready().await;
        cluster
    }

    pub async fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let creds = run::load_credentials(&node.config, None).unwrap();
        let running = run::start(NodeSettings::from_config(node.config.clone()), creds)
            .await
            .unwrap();
        node.running = Some(running);
    }

    /// Starts node `i` again after a stop, retrying while the old
    /// process's sockets are still being released.
    pub async fn restart_node(&mut self, i: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let node = &mut self.nodes[i];
            let creds = run::load_credentials(&node.config, None).unwrap();
            match run::start(NodeSettings::from_config(node.config.clone()), creds).await {
                Ok(running) => {
                    node.running = Some(running);
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "restart: retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("restarting {}: {e}", node.name),
            }
        }
    }

    /// Waits until every running node says it is ready and every edge has
    /// its peers.
    pub async fn wait_ready(&self) {
        let client = dcdn_node::client::Client::new(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let up = |n: &&TestNode| n.running.is_some() || n.process.is_some();
        for n in self.nodes.iter().filter(up) {
            loop {
                if client
                    .get(&format!("{}/readyz", n.admin()), None)
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} never became ready",
                    n.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Edge-to-edge connections follow readiness: wait until every
        // in-process edge holds its upstream and every other edge, for a
        // bounded time only (a test may keep edges apart on purpose).
        let edges = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Edge && n.running.is_some())
            .count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline
            && self
                .nodes
                .iter()
                .filter(|n| n.role == Role::Edge)
                .filter_map(|n| n.running.as_ref())
                .any(|r| r.shared.peer_list_len() < edges)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn by_role(&self, role: Role) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].role == role)
            .collect()
    }

    pub fn origin(&self) -> &TestNode {
        &self.nodes[self.by_role(Role::Origin)[0]]
    }

    pub async fn stop(mut self) {
        for n in self.nodes.iter_mut().rev() {
            n.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A failing test must not leave node processes behind.
impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
