//! Data-plane benchmarks: a real cluster of in-process nodes on loopback
//! (real QUIC, certificates, signatures, HTTP) against raw quinn moving the
//! same bytes in the same run.

use super::{BenchOptions, BenchResult};
use crate::client::Client;
use crate::config::{Bounded, NodeConfig, Role};
use crate::roles::run::{self, Running};
use crate::roles::settings::NodeSettings;
use crate::transport::{ClusterCa, MeshEndpoint, MeshLimits};
use crate::up::plan::{self, Counts, Plan};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Cluster {
    plan: Plan,
    nodes: Vec<(Role, Running)>,
}

impl Cluster {
    async fn start(tag: &str, counts: Counts) -> anyhow::Result<Self> {
        Self::start_with(tag, counts, |_| {}).await
    }

    /// A cluster whose node configs `tweak` adjusts after the plan's own.
    async fn start_with(
        tag: &str,
        counts: Counts,
        tweak: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dcdn-bench-{tag}-{}", std::process::id()));
        let plan = plan::plan(&dir, counts, |c: &mut NodeConfig| {
            c.storage.ring_buffer_size_mb =
                Bounded::new(512).unwrap_or(c.storage.ring_buffer_size_mb);
            tweak(c);
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

/// A mesh endpoint on loopback with a certificate from `ca`.
fn endpoint(ca: &ClusterCa, name: &str, role: Role) -> anyhow::Result<MeshEndpoint> {
    Ok(MeshEndpoint::bind(
        "127.0.0.1:0".parse()?,
        &ca.issue_node(name, role)?,
        ca.cert_pem(),
        MeshLimits::default(),
    )?)
}

/// Copies a QUIC receive stream into `write` through a 1 MiB buffer: each
/// read takes everything quinn has ready, so the next hop gets large writes
/// rather than one packet's worth at a time; returns the bytes moved.
async fn pipe<W: tokio::io::AsyncWrite + Unpin>(
    recv: &mut quinn::RecvStream,
    write: &mut W,
) -> anyhow::Result<usize> {
    use tokio::io::AsyncWriteExt;
    let mut moved = 0;
    let mut buf = vec![0u8; 1 << 20];
    while let Some(n) = recv.read(&mut buf).await? {
        moved += n;
        write.write_all(&buf[..n]).await?;
    }
    write.flush().await?;
    Ok(moved)
}

/// The baselines of `e2e_throughput`, raw quinn with the same mTLS setup
/// and the object generated before any clock starts:
/// - `chain`: the same hops and the same concurrency as ours — the edge
///   task asks for the object in pieces of the node's chunk size, keeping
///   as many requests in flight as the edge's read-ahead, each on its own
///   QUIC stream to the relay, which opens one to the origin per request
///   and pipes the answer back; the edge writes the pieces to the client's
///   TCP connection in order. No signatures, no store;
/// - `one_hop`: one QUIC connection, one stream.
struct RawQuinn {
    chain_http: SocketAddr,
    one_hop: MeshEndpoint,
    one_hop_server: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    len: usize,
}

impl RawQuinn {
    async fn start(data: Bytes) -> anyhow::Result<Self> {
        let len = data.len();
        let ca = ClusterCa::generate("bench")?;
        let (o, r, e) = (
            endpoint(&ca, "o", Role::Origin)?,
            endpoint(&ca, "r", Role::Relay)?,
            endpoint(&ca, "e", Role::Edge)?,
        );
        let (o_addr, r_addr) = (o.local_addr()?, r.local_addr()?);
        let mut tasks = Vec::new();
        // Origin: every stream opened on it gets the object.
        let serve = |ep: MeshEndpoint, data: Bytes| async move {
            while let Some(Ok(pc)) = ep.accept().await {
                let data = data.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, _recv)) = pc.connection.accept_bi().await {
                        let data = data.clone();
                        tokio::spawn(async move {
                            let _ = send.write_chunk(data).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        };
        // Origin of the chain: each stream asks for (offset u64, length u32)
        // of the object.
        let serve_pieces = |ep: MeshEndpoint, data: Bytes| async move {
            while let Some(Ok(pc)) = ep.accept().await {
                let data = data.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = pc.connection.accept_bi().await {
                        let data = data.clone();
                        tokio::spawn(async move {
                            let mut ask = [0u8; 12];
                            if recv.read_exact(&mut ask).await.is_err() {
                                return;
                            }
                            let (off, n) = piece_of(&ask);
                            let Some(piece) = data.get(off..off.saturating_add(n)) else {
                                return;
                            };
                            let _ = send.write_chunk(data.slice_ref(piece)).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        };
        tasks.push(tokio::spawn(serve_pieces(o, data.clone())));
        // Relay: each stream from the edge becomes one to the origin carrying
        // the same request, piped back.
        let up = r.connect(o_addr).await?;
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(down)) = r.accept().await {
                let up = up.connection.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = down.connection.accept_bi().await {
                        let up = up.clone();
                        tokio::spawn(async move {
                            let mut ask = [0u8; 12];
                            if recv.read_exact(&mut ask).await.is_err() {
                                return;
                            }
                            let Ok((mut us, mut ur)) = up.open_bi().await else {
                                return;
                            };
                            let _ = us.write_all(&ask).await;
                            let _ = pipe(&mut ur, &mut send).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        }));
        // Edge: each client TCP connection gets the object piece by piece
        // through the relay, `read_ahead` pieces in flight.
        let relay = e.connect(r_addr).await?;
        let piece_len = NodeConfig::default().origin.chunk_size_kb.get() as usize * 1024;
        let read_ahead = crate::roles::serve::ServeConfig::default().read_ahead;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let chain_http = http.local_addr()?;
        tasks.push(tokio::spawn(async move {
            let _e = e;
            while let Ok((mut tcp, _)) = http.accept().await {
                let relay = relay.connection.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    use tokio::io::AsyncWriteExt;
                    let mut request = [0u8; 64];
                    let _ = tcp.read(&mut request).await;
                    let mut pending = std::collections::VecDeque::new();
                    let mut next = 0;
                    loop {
                        while next < len && pending.len() < read_ahead {
                            let n = piece_len.min(len - next);
                            pending.push_back(tokio::spawn(fetch_piece(relay.clone(), next, n)));
                            next += n;
                        }
                        let Some(piece) = pending.pop_front() else {
                            break;
                        };
                        let Ok(Ok(piece)) = piece.await else {
                            break;
                        };
                        if tcp.write_all(&piece).await.is_err() {
                            break;
                        }
                    }
                    for p in pending {
                        p.abort();
                    }
                });
            }
        }));
        // One hop: its own server and client endpoints.
        let server = endpoint(&ca, "a", Role::Relay)?;
        let one_hop_server = server.local_addr()?;
        tasks.push(tokio::spawn(serve(server, data)));
        let one_hop = endpoint(&ca, "b", Role::Edge)?;
        Ok(Self {
            chain_http,
            one_hop,
            one_hop_server,
            tasks,
            len,
        })
    }

    /// MB/s through the chain, timed from connecting to the last byte.
    async fn chain(&self) -> anyhow::Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let start = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(self.chain_http).await?;
        tcp.write_all(b"GET /object\r\n\r\n").await?;
        let mut got = Vec::with_capacity(self.len);
        tcp.read_to_end(&mut got).await?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            got.len() == self.len,
            "raw chain moved {} of {} bytes",
            got.len(),
            self.len
        );
        Ok(self.len as f64 / 1e6 / secs)
    }

    /// MB/s over one connection's one stream, timed from the connect on.
    async fn one_hop(&self) -> anyhow::Result<f64> {
        let start = Instant::now();
        let pc = self.one_hop.connect(self.one_hop_server).await?;
        let (mut send, mut recv) = pc.connection.open_bi().await?;
        send.write_all(b"go").await?;
        let got = recv.read_to_end(self.len + 1).await?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            got.len() == self.len,
            "raw quinn moved {} of {} bytes",
            got.len(),
            self.len
        );
        pc.connection.close(quinn::VarInt::from_u32(0), b"done");
        Ok(self.len as f64 / 1e6 / secs)
    }
}

/// GETs `url` into a buffer of `len` bytes allocated before the request,
/// as the raw chain's client reads: the client's own work is the same on
/// both sides (collecting a body of unknown length grows and copies it).
async fn fetch_into(client: &Client, url: &str, len: usize) -> anyhow::Result<Vec<u8>> {
    use http_body_util::BodyExt;
    let mut got = Vec::with_capacity(len);
    let mut body = client
        .start(
            hyper::Method::GET,
            url,
            None,
            &[],
            axum::body::Body::empty(),
        )
        .await?
        .into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got.extend_from_slice(&data);
        }
    }
    Ok(got)
}

/// The (offset, length) a raw-chain request asks for.
fn piece_of(ask: &[u8; 12]) -> (usize, usize) {
    let mut off = [0u8; 8];
    off.copy_from_slice(&ask[..8]);
    let mut n = [0u8; 4];
    n.copy_from_slice(&ask[8..]);
    (
        u64::from_be_bytes(off) as usize,
        u32::from_be_bytes(n) as usize,
    )
}

/// One piece of the object through the raw relay, on its own stream.
async fn fetch_piece(relay: quinn::Connection, off: usize, n: usize) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = relay.open_bi().await?;
    let mut ask = [0u8; 12];
    ask[..8].copy_from_slice(&(off as u64).to_be_bytes());
    ask[8..].copy_from_slice(&(n as u32).to_be_bytes());
    send.write_all(&ask).await?;
    let piece = recv.read_to_end(n).await?;
    anyhow::ensure!(
        piece.len() == n,
        "piece at {off}: {} of {n} bytes",
        piece.len()
    );
    Ok(piece)
}

impl Drop for RawQuinn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Origin → relay → edge, a 64 MiB object fetched cold through the edge's
/// HTTP (each round a freshly published copy, so nothing is cached);
/// MB/s. Rounds alternate ours, the raw chain of the same hops and one raw
/// hop; each side's median round counts. The first line compares with the
/// chain, the second with one hop.
pub(super) async fn e2e_throughput(options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    let (len, rounds) = if options.quick {
        (2 << 20, 1)
    } else {
        (64 << 20, 5)
    };
    let c = Cluster::start(
        "tput",
        Counts {
            relays: 1,
            edges: 1,
        },
    )
    .await?;
    let data = object(len);
    for r in 0..rounds {
        c.publish(&format!("big-{r}.bin"), data.clone()).await?;
    }
    let raw = RawQuinn::start(data.clone()).await?;
    let edge = format!(
        "http://{}",
        c.of(Role::Edge)[0]
            .http_addr
            .unwrap_or(c.of(Role::Edge)[0].admin_addr)
    );
    let client = Client::new(Duration::from_secs(120));
    let (mut ours, mut chain, mut hop) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let start = Instant::now();
        let got = fetch_into(&client, &format!("{edge}/v1/objects/big-{r}.bin"), len).await?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(got.len() == len, "fetched {} of {len} bytes", got.len());
        anyhow::ensure!(
            got[..] == data[..],
            "the edge served other bytes than published"
        );
        ours.push(len as f64 / 1e6 / secs);
        chain.push(raw.chain().await?);
        hop.push(raw.one_hop().await?);
    }
    drop(raw);
    c.stop().await;
    let ours = super::median(&mut ours);
    Ok(vec![
        BenchResult::new(
            "e2e_throughput",
            "MB/s",
            ours,
            super::median(&mut chain),
            "raw quinn relay chain, same hops and read-ahead (chunk-sized requests, 4 in flight)",
        ),
        BenchResult::new(
            "e2e_throughput_vs_one_hop",
            "MB/s",
            ours,
            super::median(&mut hop),
            "raw quinn, one connection, one stream",
        ),
    ])
}

/// Origin bytes sent for one object fetched through every edge, per byte
/// of object, against the same cluster with edge trading and relay
/// sharing off (every edge fetching from the origin itself, no edge peers).
pub(super) async fn origin_offload(options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    let (len, edges) = if options.quick {
        (1 << 20, 3)
    } else {
        (16 << 20, 8)
    };
    let ours = offload_run("offload", Counts { relays: 1, edges }, len, |_| {}).await?;
    let alone = offload_run(
        "offload-base",
        Counts { relays: 0, edges },
        len,
        |c: &mut NodeConfig| c.discovery.peers.clear(),
    )
    .await?;
    Ok(vec![BenchResult::new(
        "origin_offload",
        "origin bytes / object bytes",
        ours,
        alone,
        "same edges, no relay and no edge trading (each edge from the origin)",
    )])
}

async fn offload_run(
    tag: &str,
    counts: Counts,
    len: usize,
    tweak: impl Fn(&mut NodeConfig),
) -> anyhow::Result<f64> {
    let c = Cluster::start_with(tag, counts, tweak).await?;
    c.publish("shared.bin", object(len)).await?;
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
    let results = futures_util::future::join_all(fetches).await;
    let sent = origin.mesh_bytes_out.load(Ordering::Relaxed) - before;
    c.stop().await;
    for got in results {
        anyhow::ensure!(got? == len, "an edge returned a short object");
    }
    Ok(sent as f64 / len as f64)
}

/// Publish → stored at the edge, 3 nodes on loopback, live chunks of 16 KB
/// pushed as FEC datagrams; p50 and p99 in ms against raw quinn carrying the
/// same chunk over two stream hops. Each of our chunks is followed by one
/// raw message, so both sides see the same moments of machine load.
pub(super) async fn live_latency(options: BenchOptions) -> anyhow::Result<Vec<BenchResult>> {
    let n = if options.quick { 50 } else { 400 };
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
    let mut raw = RawTwoHop::start(16_000, n).await?;
    let mut raw_latencies = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    for seq in 0..n as u64 {
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
        if let Some(ms) = raw.once().await? {
            raw_latencies.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(raw);
    c.stop().await;
    anyhow::ensure!(
        latencies.len() * 100 >= n * 99,
        "only {} of {n} chunks arrived",
        latencies.len()
    );
    anyhow::ensure!(
        !raw_latencies.is_empty(),
        "raw quinn relay delivered nothing"
    );
    latencies.sort_by(f64::total_cmp);
    raw_latencies.sort_by(f64::total_cmp);
    let raw = raw_latencies;
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
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

/// Raw quinn: a relay task that forwards each message from one stream
/// connection to the next; `once` times one `len`-byte message, in ms.
struct RawTwoHop {
    up: crate::transport::PeerConnection,
    arrivals: tokio::sync::mpsc::Receiver<Instant>,
    data: Bytes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Dropping the origin's endpoint would close `up`.
    _origin: MeshEndpoint,
}

impl RawTwoHop {
    async fn start(len: usize, n: usize) -> anyhow::Result<Self> {
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
        let (tx, rx) = tokio::sync::mpsc::channel::<Instant>(n);
        let edge = tokio::spawn(async move {
            let Some(Ok(pc)) = e.accept().await else {
                return;
            };
            // Bidirectional streams: the mesh allows no unidirectional ones.
            while let Ok((_send, mut recv)) = pc.connection.accept_bi().await {
                if recv.read_to_end(len + 16).await.is_ok()
                    && tx.send(Instant::now()).await.is_err()
                {
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
        Ok(Self {
            up,
            arrivals: rx,
            data: object(len),
            tasks: vec![edge, relay],
            _origin: o,
        })
    }

    /// One message's latency, or `None` if it did not arrive within 2 s.
    async fn once(&mut self) -> anyhow::Result<Option<f64>> {
        // A message that came after its 2 s must not stand for this one.
        while self.arrivals.try_recv().is_ok() {}
        let start = Instant::now();
        let (mut send, _recv) = self.up.connection.open_bi().await?;
        send.write_all(&self.data).await?;
        send.finish()?;
        Ok(
            tokio::time::timeout(Duration::from_secs(2), self.arrivals.recv())
                .await
                .ok()
                .flatten()
                .map(|at| at.duration_since(start).as_secs_f64() * 1000.0),
        )
    }
}

impl Drop for RawTwoHop {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
