//! A UDP impairment proxy for tests: sits between a QUIC client and server
//! and drops, delays or corrupts packets by seeded chance, because the
//! kernel's netem is not available on these machines.

#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// What to do to packets, per direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Probability in [0, 1] that a packet is dropped.
    pub loss: f64,
    /// Added one-way delay.
    pub delay: Duration,
    /// Probability that one byte of a packet is flipped.
    pub corrupt: f64,
}

/// Counters, readable while the proxy runs.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub corrupted: AtomicU64,
}

/// A UDP socket on 127.0.0.1 with 4 MiB buffers, so the proxy itself drops
/// nothing the test did not ask it to.
fn bind_big() -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(
        &"127.0.0.1:0"
            .parse::<SocketAddr>()
            .map_err(std::io::Error::other)?
            .into(),
    )?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// A running proxy: clients send to `addr`, the proxy relays to `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    /// While set, every packet both ways is dropped: the path is cut without
    /// either end being told (a blackhole, not a close).
    pub blackhole: Arc<std::sync::atomic::AtomicBool>,
    /// While non-zero, packets larger than this many bytes are dropped both
    /// ways: the path's MTU fell (a route into a tunnel), unannounced.
    pub max_packet: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream`, impairing packets
    /// going to the upstream (`to_server`) and coming back (`to_client`).
    pub async fn start(
        upstream: SocketAddr,
        to_server: Impairment,
        to_client: Impairment,
        seed: u64,
    ) -> std::io::Result<Self> {
        let front = Arc::new(bind_big()?);
        let addr = front.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let blackhole = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let max_packet = Arc::new(AtomicUsize::new(0));
        let too_big = {
            let max_packet = max_packet.clone();
            move |n: usize| {
                let max = max_packet.load(Ordering::Relaxed);
                max > 0 && n > max
            }
        };
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
        let task = {
            let stats = stats.clone();
            let blackhole = blackhole.clone();
            let too_big = too_big.clone();
            tokio::spawn(async move {
                // One upstream socket per client, so replies find their way back.
                let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, from)) = front.recv_from(&mut buf).await else {
                        return;
                    };
                    let back = match clients.get(&from) {
                        Some(s) => s.clone(),
                        None => {
                            let Ok(sock) = bind_big() else {
                                continue;
                            };
                            if sock.connect(upstream).await.is_err() {
                                continue;
                            }
                            let sock = Arc::new(sock);
                            clients.insert(from, sock.clone());
                            let (front, sock2, stats, rng, blackhole, too_big) = (
                                front.clone(),
                                sock.clone(),
                                stats.clone(),
                                rng.clone(),
                                blackhole.clone(),
                                too_big.clone(),
                            );
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65536];
                                while let Ok(n) = sock2.recv(&mut buf).await {
                                    if blackhole.load(Ordering::Relaxed) || too_big(n) {
                                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    let pkt = buf[..n].to_vec();
                                    forward(&front, Some(from), pkt, to_client, &stats, &rng).await;
                                }
                            });
                            sock
                        }
                    };
                    if blackhole.load(Ordering::Relaxed) || too_big(n) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let pkt = buf[..n].to_vec();
                    forward(&back, None, pkt, to_server, &stats, &rng).await;
                }
            })
        };
        Ok(Self {
            addr,
            stats,
            blackhole,
            max_packet,
            task,
        })
    }
}

async fn forward(
    sock: &Arc<UdpSocket>,
    to: Option<SocketAddr>,
    mut pkt: Vec<u8>,
    imp: Impairment,
    stats: &ProxyStats,
    rng: &Mutex<ChaCha8Rng>,
) {
    let (drop_it, corrupt_at) = {
        let mut rng = rng.lock().await;
        let drop_it = imp.loss > 0.0 && rng.gen_bool(imp.loss.min(1.0));
        let corrupt_at = (imp.corrupt > 0.0 && rng.gen_bool(imp.corrupt.min(1.0)))
            .then(|| rng.gen_range(0..pkt.len().max(1)));
        (drop_it, corrupt_at)
    };
    if drop_it {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(i) = corrupt_at {
        if let Some(b) = pkt.get_mut(i) {
            *b ^= 0x5a;
            stats.corrupted.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let send = {
        let sock = sock.clone();
        async move {
            let _ = match to {
                Some(addr) => sock.send_to(&pkt, addr).await,
                None => sock.send(&pkt).await,
            };
        }
    };
    if imp.delay.is_zero() {
        send.await;
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(imp.delay).await;
            send.await;
        });
    }
}
