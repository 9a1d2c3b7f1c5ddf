//! Data-plane benchmarks: a real cluster of in-process nodes on loopback
//! (real QUIC, certificates, signatures, HTTP) against raw quinn moving the
//! same bytes in the same run.

use super::BenchResult;
use crate::client::Client;
use crate::config::{Bounded, NodeConfig, Role};
use crate::roles::run::{self, Running};
use crate::roles::settings::NodeSettings;
use crate::transport::{ClusterCa, MeshEndpoint, MeshLimits};
use crate::up::plan::{self, Counts, Plan};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Cluster {
    plan: Plan,
    nodes: Vec<(Role, Running)>,
}

impl Cluster {
    async fn start(tag: &str, counts: Counts) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dcdn-bench-{tag}-{}", std::process::id()));
        let plan = plan::plan(&dir, counts, |c: &mut NodeConfig| {
            c.storage.ring_buffer_size_mb =
                Bounded::new(512).unwrap_or(c.storage.ring_buffer_size_mb);
        })?;
        let mut nodes = Vec::new();
        for n in &plan.nodes {
            let config = NodeConfig::from_file(&n.config_path, std::iter::empty::<(&str, &str)>())?;
            let creds = run::load_credentials(&config, None)?;
            nodes.push((
                n.role,
                run::start(NodeSettings::from_config(config), creds).await?,
            ));
        }
        let client = Client::new(Duration::from_secs(2));
        for (_, r) in &nodes {
            let url = format!("http://{}/readyz", r.admin_addr);
            let start = Instant::now();
            while client.get(&url, None).await.is_err() {
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(20),
                    "cluster not ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self { plan, nodes })
    }

    fn of(&self, role: Role) -> Vec<&Running> {
        self.nodes
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, n)| n)
            .collect()
    }

    fn origin_http(&self) -> String {
        format!(
            "http://{}",
            self.of(Role::Origin)[0]
                .http_addr
                .unwrap_or(self.of(Role::Origin)[0].admin_addr)
        )
    }

    async fn publish(&self, name: &str, data: Bytes) -> anyhow::Result<()> {
        let client = Client::new(Duration::from_secs(120));
        let pieces: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
            .step_by(1 << 20)
            .map(|i| Ok(data.slice(i..(i + (1 << 20)).min(data.len()))))
            .collect();
        client
            .put_stream(
                &format!("{}/v1/objects/{name}", self.origin_http()),
                Some(&self.plan.ingest_token),
                futures_util::stream::iter(pieces),
            )
            .await?;
        Ok(())
    }

    async fn stop(self) {
        for (_, n) in self.nodes.into_iter().rev() {
            n.shutdown(Duration::from_secs(2)).await;
        }
        let _ = std::fs::remove_dir_all(&self.plan.dir);
    }
}

fn object(len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9) as u8 ^ (i >> 12) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Raw quinn: one connection with the same mTLS setup, one stream carrying
/// `len` bytes; MB/s.
async fn raw_quinn_throughput(len: usize) -> anyhow::Result<f64> {
    let ca = ClusterCa::generate("bench")?;
    let a = MeshEndpoint::bind(
        "127.0.0.1:0".parse()?,
        &ca.issue_node("a", Role::Relay)?,
        ca.cert_pem(),
        MeshLimits::default(),
    )?;
    let b = MeshEndpoint::bind(
        "127.0.0.1:0".parse()?,
        &ca.issue_node("b", Role::Edge)?,
        ca.cert_pem(),
        MeshLimits::default(),
    )?;
    let addr = a.local_addr()?;
    let server = tokio::spawn(async move {
        let Some(Ok(pc)) = a.accept().await else {
            return;
        };
        if let Ok((mut send, _recv)) = pc.connection.accept_bi().await {
            let data = object(len);
            let _ = send.write_all(&data).await;
            let _ = send.finish();
            let _ = pc.connection.closed().await;
        }
    });
    let pc = b.connect(addr).await?;
    let start = Instant::now();
    let (mut send, mut recv) = pc.connection.open_bi().await?;
    send.write_all(b"go").await?;
    let got = recv.read_to_end(len + 1).await?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        got.len() == len,
        "raw quinn moved {} of {len} bytes",
        got.len()
    );
    pc.connection.close(quinn::VarInt::from_u32(0), b"done");
    server.abort();
    Ok(len as f64 / 1e6 / secs)
}

/// Origin → relay → edge for a 64 MiB object fetched cold through the
/// edge's HTTP; MB/s against raw quinn moving the same bytes.
pub(super) async fn e2e_throughput() -> anyhow::Result<Vec<BenchResult>> {
    const LEN: usize = 64 << 20;
    let c = Cluster::start(
        "tput",
        Counts {
            relays: 1,
            edges: 1,
        },
    )
    .await?;
    c.publish("big.bin", object(LEN)).await?;
    let edge = format!(
        "http://{}",
        c.of(Role::Edge)[0]
            .http_addr
            .unwrap_or(c.of(Role::Edge)[0].admin_addr)
    );
    let client = Client::new(Duration::from_secs(120));
    let start = Instant::now();
    let got = client
        .get(&format!("{edge}/v1/objects/big.bin"), None)
        .await?;
    let ours = LEN as f64 / 1e6 / start.elapsed().as_secs_f64();
    anyhow::ensure!(
        got.body.len() == LEN,
        "fetched {} of {LEN} bytes",
        got.body.len()
    );
    c.stop().await;
    let raw = raw_quinn_throughput(LEN).await?;
    Ok(vec![BenchResult::new(
        "e2e_throughput",
        "MB/s",
        ours,
        raw,
        "raw quinn, one connection, one stream",
    )])
}

/// One object fetched through 8 edges: bytes the origin sent / object size,
/// against 8 (every edge fetching from the origin).
pub(super) async fn origin_offload() -> anyhow::Result<Vec<BenchResult>> {
    const LEN: usize = 16 << 20;
    const EDGES: usize = 8;
    let c = Cluster::start(
        "offload",
        Counts {
            relays: 1,
            edges: EDGES,
        },
    )
    .await?;
    c.publish("shared.bin", object(LEN)).await?;
    let origin = c.of(Role::Origin)[0].shared.clone();
    let before = origin.mesh_bytes_out.load(Ordering::Relaxed);
    let client = Client::new(Duration::from_secs(120));
    let fetches = c.of(Role::Edge).into_iter().map(|e| {
        let url = format!(
            "http://{}/v1/objects/shared.bin",
            e.http_addr.unwrap_or(e.admin_addr)
        );
        let client = client.clone();
        async move { client.get(&url, None).await.map(|r| r.body.len()) }
    });
    for got in futures_util::future::join_all(fetches).await {
        anyhow::ensure!(got? == LEN, "an edge returned a short object");
    }
    let sent = origin.mesh_bytes_out.load(Ordering::Relaxed) - before;
    c.stop().await;
    let ours = sent as f64 / LEN as f64;
    Ok(vec![BenchResult::new(
        "origin_offload",
        "origin bytes / object bytes",
        ours,
        EDGES as f64,
        "8 edges each fetching from the origin",
    )])
}

/// Publish → stored at the edge, 3 nodes on loopback, live chunks of 16 KB
/// pushed as FEC datagrams; p50 and p99 in ms against raw quinn carrying the
/// same chunk over two stream hops.
pub(super) async fn live_latency() -> anyhow::Result<Vec<BenchResult>> {
    const N: usize = 400;
    let c = Cluster::start(
        "latency",
        Counts {
            relays: 1,
            edges: 1,
        },
    )
    .await?;
    let origin = c.of(Role::Origin)[0].shared.clone();
    let edge = c.of(Role::Edge)[0].shared.clone();
    let mut at_edge = edge.arrivals.subscribe();
    let stream = crate::chunk::StreamId::live("latency");
    let mut latencies = Vec::with_capacity(N);
    for seq in 0..N as u64 {
        let payload = object(16_000);
        let start = Instant::now();
        origin
            .publish(stream, seq, payload, true)
            .map_err(anyhow::Error::msg)?;
        let want = crate::chunk::ChunkId::new(stream, seq);
        let arrived = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match at_edge.recv().await {
                    Ok(id) if id == want => return true,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if arrived {
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.stop().await;
    anyhow::ensure!(
        latencies.len() * 100 >= N * 99,
        "only {} of {N} chunks arrived",
        latencies.len()
    );
    latencies.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let raw = raw_two_hop_latency(16_000, 200).await?;
    Ok(vec![
        BenchResult::new(
            "live_latency_p50",
            "ms",
            pct(&latencies, 0.50),
            pct(&raw, 0.50),
            "raw quinn, same bytes, two stream hops",
        ),
        BenchResult::new(
            "live_latency_p99",
            "ms",
            pct(&latencies, 0.99),
            pct(&raw, 0.99),
            "raw quinn, same bytes, two stream hops",
        ),
    ])
}

/// Raw quinn: a relay process that forwards each message from one stream
/// connection to the next; latency of `len`-byte messages, sorted, ms.
async fn raw_two_hop_latency(len: usize, n: usize) -> anyhow::Result<Vec<f64>> {
    let ca = ClusterCa::generate("bench")?;
    let bind = |name: &str, role| -> anyhow::Result<MeshEndpoint> {
        Ok(MeshEndpoint::bind(
            "127.0.0.1:0".parse()?,
            &ca.issue_node(name, role)?,
            ca.cert_pem(),
            MeshLimits::default(),
        )?)
    };
    let (o, r, e) = (
        bind("o", Role::Origin)?,
        bind("r", Role::Relay)?,
        bind("e", Role::Edge)?,
    );
    let (r_addr, e_addr) = (r.local_addr()?, e.local_addr()?);
    // Edge: echo arrival over a channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(n);
    let edge = tokio::spawn(async move {
        let Some(Ok(pc)) = e.accept().await else {
            return;
        };
        // Bidirectional streams: the mesh allows no unidirectional ones.
        while let Ok((_send, mut recv)) = pc.connection.accept_bi().await {
            if recv.read_to_end(len + 16).await.is_ok() && tx.send(Instant::now()).await.is_err() {
                break;
            }
        }
    });
    let relay = tokio::spawn(async move {
        let Ok(down) = r.connect(e_addr).await else {
            return;
        };
        let Some(Ok(up)) = r.accept().await else {
            return;
        };
        while let Ok((_back, mut recv)) = up.connection.accept_bi().await {
            let Ok(data) = recv.read_to_end(len + 16).await else {
                break;
            };
            let Ok((mut send, _)) = down.connection.open_bi().await else {
                break;
            };
            let _ = send.write_all(&data).await;
            let _ = send.finish();
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let up = o.connect(r_addr).await?;
    let data = object(len);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (mut send, _recv) = up.connection.open_bi().await?;
        send.write_all(&data).await?;
        send.finish()?;
        let Some(at) = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .ok()
            .flatten()
        else {
            continue;
        };
        out.push(at.duration_since(start).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    edge.abort();
    relay.abort();
    anyhow::ensure!(!out.is_empty(), "raw quinn relay delivered nothing");
    out.sort_by(f64::total_cmp);
    Ok(out)
}
