//! Per-peer sessions on the mesh: the hello exchange, then one task each for
//! control frames, push datagrams, pull requests and, downstream, loss
//! reports. Sessions hold no state of their own beyond the connection; what
//! they learn goes into [`Shared`], where the next session finds it.

use crate::chunk::wire::Frame;
use crate::chunk::{ChunkId, PeerId, StreamId};
use crate::roles::framing::{self, FramingError};
use crate::roles::node::{HaveSet, Path, Peer, Role, Shared};
use crate::transport::PeerConnection;
use futures_util::FutureExt as _;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::node::{CONTROL_QUEUE, MAX_CONTROL_FRAME, PUSH_QUEUE, SHARD_FRAME_OVERHEAD};

/// How long a peer has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Control streams are long-lived; keep-alives, not this, detect dead peers.
const CONTROL_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Runs one peer session to its end. `outbound` is true when we dialled.
pub(crate) async fn run(shared: Arc<Shared>, pc: PeerConnection, outbound: bool) {
    let conn = pc.connection.clone();
    let name = pc.name.clone();
    // The certificate names the peer as soon as TLS is done: a banned peer
    // gets no hello, no session and no say, whichever side dialled.
    if shared.refuse_if_banned(pc.peer_id, "handshake") {
        shared
            .metrics
            .handshakes_refused
            .with_label_values(&["banned"])
            .inc();
        tracing::info!(peer = %name, "banned peer refused");
        conn.close(quinn::VarInt::from_u32(CLOSE_BANNED), b"banned");
        return;
    }
    match session(shared.clone(), pc, outbound).await {
        Ok(()) => tracing::debug!(peer = %name, "session ended"),
        Err(e) => {
            tracing::info!(peer = %name, error = %e, "session ended");
            conn.close(quinn::VarInt::from_u32(1), e.kind().as_bytes());
        }
    }
}

async fn session(
    shared: Arc<Shared>,
    pc: PeerConnection,
    outbound: bool,
) -> Result<(), FramingError> {
    let conn = pc.connection.clone();
    let (mut ctl_send, mut ctl_recv) = if outbound {
        conn.open_bi()
            .await
            .map_err(|e| FramingError::Write(e.to_string()))?
    } else {
        tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
            .await
            .map_err(|_| FramingError::Timeout(HELLO_TIMEOUT))?
            .map_err(|e| FramingError::Read(e.to_string()))?
    };
    let hello = shared.hello();
    if outbound {
        framing::write_frame(&mut ctl_send, &hello).await?;
    }
    match framing::read_frame(&mut ctl_recv, MAX_CONTROL_FRAME, HELLO_TIMEOUT).await? {
        Frame::Hello { .. } => {}
        other => {
            return Err(FramingError::Read(format!(
                "expected hello, got {}",
                other.kind()
            )));
        }
    }
    // A ban can land while the hello is in flight (the peer's other
    // connection misbehaved): check again before the peer joins the map.
    if shared.refuse_if_banned(pc.peer_id, "hello") {
        conn.close(quinn::VarInt::from_u32(CLOSE_BANNED), b"banned");
        return Ok(());
    }
    if !outbound {
        framing::write_frame(&mut ctl_send, &hello).await?;
    }
    // The role comes from the peer's certificate, which the cluster CA
    // signed; the hello only confirms the peer speaks our protocol version.
    let role = pc.role;
    let (control_tx, mut control_rx) = mpsc::channel::<Frame>(CONTROL_QUEUE);
    let (push_tx, mut push_rx) = mpsc::channel(PUSH_QUEUE);
    let peer = Arc::new(Peer {
        id: pc.peer_id,
        name: pc.name.clone(),
        role,
        conn: conn.clone(),
        control: control_tx,
        subscribed: AtomicBool::new(false),
        push: push_tx,
        parity: Mutex::new(shared.settings.parity_policy()),
        current_parity: AtomicU16::new(shared.settings.fec_parity),
        lost_packets_counted: AtomicU64::new(0),
        black_holes_counted: AtomicU64::new(0),
        unchoked_us: AtomicBool::new(false),
        have: Mutex::new(HaveSet::default()),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        chunks_pushed_in: AtomicU64::new(0),
        shards_received: AtomicU64::new(0),
        shards_expected: AtomicU64::new(0),
        groups_seen: Mutex::new(HaveSet::default()),
        unconfirmed: Mutex::new(std::collections::HashSet::new()),
    });
    if let Some(old) = shared.peers.write().insert(peer.id, peer.clone()) {
        old.conn.close(
            quinn::VarInt::from_u32(2),
            b"replaced by a newer connection",
        );
    }
    if role == Role::Edge && shared.settings.role == Role::Edge {
        shared.choker.lock().add_peer(peer.id, Instant::now()).ok();
        shared.choker.lock().set_interested(peer.id, true);
    }
    if outbound && role.is_upstream_of(shared.settings.role) {
        // Pushes come from one upstream at a time, or every chunk would
        // arrive once per upstream; the others answer pulls.
        let mut current = shared.push_upstream.lock();
        // A new connection to the current push upstream (it replaced the
        // old one) must subscribe again.
        if current.is_none_or(|id| id == peer.id || !shared.peers.read().contains_key(&id)) {
            *current = Some(peer.id);
            let _ = peer.control.try_send(Frame::Subscribe);
        }
    }
    tracing::info!(peer = %peer.name, role = ?role, addr = %conn.remote_address(), "peer connected");

    let mut tasks = tokio::task::JoinSet::new();
    // Control writer.
    tasks.spawn(async move {
        while let Some(frame) = control_rx.recv().await {
            if framing::write_frame(&mut ctl_send, &frame).await.is_err() {
                break;
            }
        }
    });
    // Control reader.
    {
        let (shared, peer) = (shared.clone(), peer.clone());
        tasks.spawn(async move {
            loop {
                match framing::read_frame(&mut ctl_recv, MAX_CONTROL_FRAME, CONTROL_IDLE).await {
                    Ok(_) if shared.refuse_if_banned(peer.id, "control") => {
                        peer.conn
                            .close(quinn::VarInt::from_u32(CLOSE_BANNED), b"banned");
                        break;
                    }
                    Ok(frame) => on_control(&shared, &peer, frame),
                    Err(FramingError::Finished) => break,
                    Err(e) => {
                        shared
                            .metrics
                            .frames_malformed
                            .with_label_values(&[e.kind()])
                            .inc();
                        break;
                    }
                }
            }
        });
    }
    // Datagrams in.
    {
        let (shared, peer) = (shared.clone(), peer.clone());
        tasks.spawn(async move {
            // Datagrams already queued are taken with the one awaited, and
            // the chunks they complete are verified as one batch; a lone
            // chunk (nothing else queued) is verified at once on its own.
            let mut burst = Vec::new();
            while let Ok(datagram) = peer.conn.read_datagram().await {
                burst.extend(on_datagram(&shared, &peer, &datagram));
                for _ in 0..MAX_DATAGRAM_BURST {
                    match peer.conn.read_datagram().now_or_never() {
                        Some(Ok(d)) => burst.extend(on_datagram(&shared, &peer, &d)),
                        _ => break,
                    }
                }
                if !burst.is_empty() {
                    let from = Some(peer.id);
                    let chunks = burst.drain(..).map(|c| (c, from)).collect();
                    shared.accept_chunks(chunks, Path::Push);
                }
            }
        });
    }
    // Pull requests in.
    {
        let (shared, peer) = (shared.clone(), peer.clone());
        tasks.spawn(async move {
            while let Ok((send, recv)) = peer.conn.accept_bi().await {
                let (shared, peer) = (shared.clone(), peer.clone());
                tokio::spawn(async move {
                    // A drain waits for requests being answered.
                    shared.note_mesh_activity();
                    shared.pulls_serving.fetch_add(1, Ordering::Relaxed);
                    serve_request(&shared, &peer, send, recv).await;
                    shared.pulls_serving.fetch_sub(1, Ordering::Relaxed);
                    shared.note_mesh_activity();
                });
            }
        });
    }
    // Pushes out.
    {
        let (shared, peer) = (shared.clone(), peer.clone());
        tasks.spawn(async move {
            while let Some(chunk) = push_rx.recv().await {
                if let Err(e) = push_chunk(&shared, &peer, &chunk).await {
                    // The receiver repairs what a failed push did not bring;
                    // only a closed connection ends the push task.
                    shared
                        .metrics
                        .chunks
                        .with_label_values(&["failed", "push"])
                        .inc();
                    tracing::warn!(peer = %peer.name, error = %e, "push failed");
                    if peer.conn.close_reason().is_some() {
                        break;
                    }
                }
            }
        });
    }
    // Loss reports to our upstream.
    if outbound && role.is_upstream_of(shared.settings.role) {
        let peer = peer.clone();
        let every = shared.settings.loss_report_every;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let expected = peer.shards_expected.swap(0, Ordering::Relaxed);
                let received = peer.shards_received.swap(0, Ordering::Relaxed);
                if expected == 0 {
                    continue;
                }
                let report = Frame::LossReport {
                    stream: StreamId::default(),
                    window_start: 0,
                    expected_shards: expected.min(u64::from(u32::MAX)) as u32,
                    received_shards: received.min(expected).min(u64::from(u32::MAX)) as u32,
                    rebuilt: 0,
                    failed: 0,
                };
                if peer.control.send(report).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut shutdown = shared.mesh_stop_signal();
    tokio::select! {
        _ = conn.closed() => {}
        _ = shutdown.changed() => {
            conn.close(quinn::VarInt::from_u32(0), b"shutting down");
        }
    }
    tasks.abort_all();
    {
        let mut peers = shared.peers.write();
        if peers
            .get(&peer.id)
            .is_some_and(|p| p.conn.stable_id() == conn.stable_id())
        {
            peers.remove(&peer.id);
        }
    }
    if role == Role::Edge && shared.settings.role == Role::Edge {
        shared.choker.lock().remove_peer(peer.id);
    }
    fail_over_push(&shared, peer.id);
    tracing::info!(peer = %peer.name, "peer disconnected");
    Ok(())
}

/// If `gone` was our push upstream, subscribe to another connected upstream.
fn fail_over_push(shared: &Arc<Shared>, gone: PeerId) {
    let mut current = shared.push_upstream.lock();
    if *current != Some(gone) {
        return;
    }
    *current = None;
    let next = shared
        .peers
        .read()
        .values()
        .find(|p| p.role.is_upstream_of(shared.settings.role))
        .cloned();
    if let Some(next) = next {
        if next.control.try_send(Frame::Subscribe).is_ok() {
            tracing::info!(peer = %next.name, "taking pushes from another upstream");
            *current = Some(next.id);
        }
    }
}

fn on_control(shared: &Arc<Shared>, peer: &Arc<Peer>, frame: Frame) {
    match frame {
        Frame::Subscribe => peer.subscribed.store(true, Ordering::Relaxed),
        Frame::Have { id } if shared.settings.role.is_upstream_of(peer.role) => {
            // A downstream peer confirms a chunk it holds (a drain waits
            // for these); its holdings are not traded with.
            peer.unconfirmed.lock().remove(&id);
        }
        Frame::Have { id } => {
            peer.have.lock().insert(id);
            shared.swarms.on_have(peer.id, id);
            if peer.role.is_upstream_of(shared.settings.role) {
                shared.head_announced(id, peer.id);
            }
        }
        Frame::Bitfield {
            stream,
            base_seq,
            bits,
        } => {
            let mut have = peer.have.lock();
            for (i, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (0x80 >> bit) != 0 {
                        let seq = base_seq.saturating_add((i * 8 + bit) as u64);
                        have.insert(ChunkId::new(stream, seq));
                        shared.swarms.on_have(peer.id, ChunkId::new(stream, seq));
                    }
                }
            }
        }
        Frame::Choke => peer.unchoked_us.store(false, Ordering::Relaxed),
        Frame::Unchoke => peer.unchoked_us.store(true, Ordering::Relaxed),
        Frame::Interested { .. } => shared.choker.lock().set_interested(peer.id, true),
        Frame::NotInterested { .. } => shared.choker.lock().set_interested(peer.id, false),
        Frame::LossReport {
            expected_shards,
            received_shards,
            ..
        } => {
            let m = peer
                .parity
                .lock()
                .handle_report(u64::from(expected_shards), u64::from(received_shards));
            // The metric is the per-class maximum, set at scrape time.
            peer.current_parity.store(m, Ordering::Relaxed);
        }
        Frame::Manifest(m) => {
            let (stream, chunks, name) = (m.stream, m.chunk_count, m.name.clone());
            match shared.accept_manifest(m, Some(peer.id)) {
                Ok(()) => shared.complete_live(stream, &name, chunks),
                Err(e) => tracing::warn!(peer = %peer.name, error = %e, "manifest refused"),
            }
        }
        Frame::Purge(p) => {
            if let Err(e) = shared.accept_purge(p, Some(peer.id)) {
                tracing::warn!(peer = %peer.name, error = %e, "purge refused");
            }
        }
        Frame::Preheat(p) => {
            crate::roles::swarm::on_preheat(shared, peer, p);
        }
        other => {
            shared
                .metrics
                .frames_malformed
                .with_label_values(&["unexpected_on_control"])
                .inc();
            tracing::debug!(peer = %peer.name, kind = other.kind(), "unexpected control frame");
        }
    }
}

/// Datagrams taken without awaiting after the one awaited: enough for a
/// few 64 KiB chunks (~55 datagrams each) to complete together, few enough
/// that the first of them is not held back long.
const MAX_DATAGRAM_BURST: usize = 256;

/// Feeds one push datagram to the assembler; returns the chunk it
/// completed, if any, still unverified.
fn on_datagram(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    datagram: &[u8],
) -> Option<crate::chunk::Chunk> {
    // Shards already in flight when the ban closed the connection, or sent
    // on a connection the ban did not find, cost nothing: not even a decode.
    if shared.refuse_if_banned(peer.id, "datagram") {
        peer.conn
            .close(quinn::VarInt::from_u32(CLOSE_BANNED), b"banned");
        return None;
    }
    let shard = match Frame::decode(datagram) {
        Ok(Frame::Shard(s)) => s,
        Ok(other) => {
            tracing::debug!(peer = %peer.name, kind = other.kind(), "unexpected datagram");
            shared
                .metrics
                .frames_malformed
                .with_label_values(&["unexpected_datagram"])
                .inc();
            return None;
        }
        Err(e) => {
            shared
                .metrics
                .frames_malformed
                .with_label_values(&["datagram"])
                .inc();
            tracing::debug!(peer = %peer.name, error = %e, "malformed datagram");
            return None;
        }
    };
    peer.shards_received.fetch_add(1, Ordering::Relaxed);
    shared.metrics.push_shards_received.inc();
    {
        // Count what each group promised once, when its first shard shows up.
        let group = ChunkId::new(
            shard.chunk.stream,
            shard.chunk.seq ^ (u64::from(shard.block) << 48),
        );
        let mut seen = peer.groups_seen.lock();
        if !seen.contains(&group) {
            seen.insert(group);
            peer.shards_expected
                .fetch_add(u64::from(shard.k) + u64::from(shard.m), Ordering::Relaxed);
            shared
                .metrics
                .push_shards_expected
                .inc_by(u64::from(shard.k) + u64::from(shard.m));
        }
    }
    if shared.store.contains(&shard.chunk, Instant::now()) {
        return None;
    }
    let outcome = shared
        .assembler
        .lock()
        .insert(peer.id.0, shard, Instant::now());
    match outcome {
        Ok(Some(done)) => {
            shared
                .metrics
                .fec_groups
                .with_label_values(&[if done.recovered {
                    "rebuilt"
                } else {
                    "complete"
                }])
                .inc();
            match Frame::decode(&done.bytes) {
                Ok(Frame::Chunk(chunk)) => return Some(chunk),
                _ => {
                    // The rebuilt bytes are not a chunk: a corrupt or forged
                    // shard. Count it against the sender like a bad signature.
                    shared
                        .metrics
                        .chunks_rejected
                        .with_label_values(&["malformed"])
                        .inc();
                    shared.strike(peer.id, crate::crypto::Rejection::Malformed);
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            shared
                .metrics
                .fec_groups
                .with_label_values(&["refused"])
                .inc();
            tracing::debug!(peer = %peer.name, error = %e, "shard refused");
        }
    }
    None
}

async fn push_chunk(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    chunk: &crate::chunk::Chunk,
) -> Result<(), String> {
    let max = peer
        .conn
        .max_datagram_size()
        .ok_or("peer does not accept datagrams")?;
    // Shards fit the path's minimum MTU, not the discovered one. Under
    // random loss QUIC's black-hole detection now and then judges the path
    // MTU gone and falls back to the minimum, and quinn then silently drops
    // every queued datagram larger than that: whole chunks vanished between
    // the relay's push and the wire (12–22 of 213 at 5 % loss in the mesh
    // test, every shard of each). Smaller shards cost ~20 % more packets on
    // the push path; they cannot be dropped for their size.
    let mtu = peer.conn.stats().path.current_mtu;
    let floor = max.saturating_sub(usize::from(mtu.saturating_sub(crate::transport::MIN_MTU)));
    let shard_len = floor.saturating_sub(SHARD_FRAME_OVERHEAD);
    if shard_len < crate::fec::MIN_SHARD_LEN {
        return Err(format!("datagram size {floor} too small for FEC shards"));
    }
    // And long enough that two never share a packet at the current MTU.
    let min_shard_len = crate::fec::min_shard_len(max);
    let bytes = framing::encode(&Frame::Chunk(chunk.clone()));
    let m = peer.current_parity.load(Ordering::Relaxed);
    let blocks = shared
        .encoder
        .lock()
        .encode_blocks(
            chunk.id(),
            &bytes,
            shard_len,
            min_shard_len,
            shared.settings.fec_k,
            m,
        )
        .map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    for block in &blocks {
        for i in 0..block.shards() {
            let frame = block.encode_frame(i);
            sent += frame.len() as u64;
            peer.conn
                .send_datagram_wait(frame)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    peer.bytes_out
        .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
    shared.mesh_bytes_out.fetch_add(sent, Ordering::Relaxed);
    shared.note_mesh_activity();
    shared
        .metrics
        .chunks
        .with_label_values(&["out", "push"])
        .inc();
    shared
        .metrics
        .bytes
        .with_label_values(&["out", "push"])
        .inc_by(chunk.payload.len() as u64);
    Ok(())
}

async fn serve_request(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let timeout = shared.settings.request_timeout;
    let request = match framing::read_frame(&mut recv, MAX_CONTROL_FRAME, timeout).await {
        Ok(f) => f,
        Err(e) => {
            shared
                .metrics
                .frames_malformed
                .with_label_values(&[e.kind()])
                .inc();
            return;
        }
    };
    let reply = answer(shared, peer, request).await;
    let len = match &reply {
        Frame::Chunk(c) => c.payload.len() as u64,
        _ => 0,
    };
    // A relay's admission judges its uplink by the pull replies it has
    // written and the receivers have not acknowledged yet: quinn takes a
    // write into its buffers long before the bytes leave, so "written" alone
    // would read an uplink hours behind as idle.
    let relay = shared.settings.role == Role::Relay;
    let _queued = (relay && len > 0).then(|| Backlog::add(&shared.pull_backlog, len));
    if framing::write_frame(&mut send, &reply).await.is_ok() {
        let _ = send.finish();
        if relay && len > 0 {
            // Bounded: a receiver that never acknowledges (gone, or
            // stalled) stops counting against the queue after the request
            // timeout.
            let _ = tokio::time::timeout(shared.settings.request_timeout, send.stopped()).await;
        }
        if len > 0 {
            shared
                .metrics
                .chunks
                .with_label_values(&["out", "pull"])
                .inc();
            shared
                .metrics
                .bytes
                .with_label_values(&["out", "pull"])
                .inc_by(len);
            shared.mesh_bytes_out.fetch_add(len, Ordering::Relaxed);
            peer.bytes_out.fetch_add(len, Ordering::Relaxed);
            if peer.role == Role::Edge && shared.settings.role == Role::Edge {
                shared
                    .choker
                    .lock()
                    .record_uploaded(peer.id, len, Instant::now());
            }
        }
    }
}

/// Bytes added to a backlog counter while this lives.
struct Backlog<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl<'a> Backlog<'a> {
    fn add(counter: &'a AtomicU64, bytes: u64) -> Self {
        counter.fetch_add(bytes, Ordering::Relaxed);
        Self { counter, bytes }
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Error codes in `Frame::Error` replies (and
/// `p2p::admission::CODE_BUSY`, a relay's uplink queue is full).
pub(crate) const CODE_CHOKED: u16 = 429;
pub(crate) const CODE_BANNED: u16 = 403;
/// A relay cannot reach its upstream for a chunk now (restart, outage):
/// ask again, unlike `NotFound`.
pub(crate) const CODE_UNAVAILABLE: u16 = 503;
/// The QUIC application close code a banned peer's connection carries.
pub const CLOSE_BANNED: u32 = 403;

async fn answer(shared: &Arc<Shared>, peer: &Arc<Peer>, request: Frame) -> Frame {
    if shared.refuse_if_banned(peer.id, "request") {
        return Frame::Error {
            code: CODE_BANNED,
            message: "banned".into(),
        };
    }
    match request {
        Frame::Request { id } => {
            if peer.role == Role::Edge
                && shared.settings.role == Role::Edge
                && !shared.choker.lock().is_unchoked(peer.id)
            {
                return Frame::Error {
                    code: CODE_CHOKED,
                    message: "choked".into(),
                };
            }
            // A relay admits an edge's pull only while the replies queued
            // on its uplink go out within the admission bound; past it the
            // edge hears "busy" at once and takes the piece from a
            // neighbour or asks later (`p2p::admission`). Relays and the
            // origin pulling from it are never refused: they fan out.
            if shared.settings.role == Role::Relay
                && peer.role == Role::Edge
                && shared
                    .admission
                    .decide(shared.pull_backlog.load(Ordering::Relaxed))
                    == crate::p2p::admission::Verdict::Busy
            {
                shared.metrics.pulls_busy.inc();
                return Frame::Error {
                    code: crate::p2p::admission::CODE_BUSY,
                    message: "busy".into(),
                };
            }
            if let Some(c) = shared.store.get(&id, Instant::now()) {
                return Frame::Chunk(c);
            }
            if let Some(c) = shared.chunk_from_origin_store(id) {
                return Frame::Chunk(c);
            }
            // A relay answers what it lacks by fetching upstream once; an
            // edge asked by a peer only offers what it holds.
            if shared.settings.role == Role::Relay {
                // Admitted, the reply is promised while the chunk comes
                // from upstream: it counts against the queue at the
                // object's chunk size, or a burst of requests for chunks
                // not here yet would all be admitted and all queue later.
                let promised = if peer.role == Role::Edge {
                    shared
                        .manifests
                        .lock()
                        .get(id.stream)
                        .map_or(0, |m| u64::from(m.chunk_size))
                } else {
                    0
                };
                let _promised =
                    (promised > 0).then(|| Backlog::add(&shared.pull_backlog, promised));
                match shared.fetch(id).await {
                    Ok(c) => return Frame::Chunk(c),
                    // Only the upstream's "not found" is one: an upstream
                    // that cannot be reached says nothing about the chunk,
                    // and a NotFound here becomes a client's 404 for an
                    // object that exists.
                    Err(crate::roles::node::FetchError::Unavailable(e)) => {
                        return Frame::Error {
                            code: CODE_UNAVAILABLE,
                            message: format!("cannot get {id} upstream now: {e}"),
                        };
                    }
                    Err(_) => {}
                }
            }
            Frame::NotFound { id }
        }
        Frame::ManifestRequest { object, name } => {
            // An origin answers what it published (or pulls it from its
            // upstream); a relay revalidates a stale entry upstream first;
            // an edge answers what it holds.
            // A name with no complete version may have an upload open
            // (`roles::uploads`): an origin answers it without asking its
            // upstream; a relay passes on what its own upstream answered.
            if shared.settings.role == Role::Origin
                && shared.manifests.lock().newest(object).is_none()
            {
                if let Some(upload) = shared.upload_answer(object) {
                    return upload;
                }
            }
            let answer = if shared.settings.role == Role::Edge {
                shared
                    .manifests
                    .lock()
                    .newest(object)
                    .map(|(m, _)| m)
                    .ok_or_else(String::new)
            } else {
                shared.fetch_manifest(object, &name).await
            };
            match answer {
                Ok(m) => Frame::Manifest(m),
                Err(e) if e.contains(crate::roles::upstream::UPSTREAM_FAILED) => Frame::Error {
                    code: crate::roles::upstream::CODE_UPSTREAM_FAILED,
                    message: e,
                },
                // A relay says "not found" only when its upstream said so;
                // an upstream it cannot reach now (the origin restarting)
                // says nothing about the name, and a NotFound here became a
                // client's 404 for an object that exists.
                Err(e)
                    if shared.settings.role == Role::Relay
                        && !e.contains("has no manifest")
                        && !e.contains(crate::roles::uploads::UPLOAD_OPEN) =>
                {
                    shared.upload_answer(object).unwrap_or(Frame::Error {
                        code: CODE_UNAVAILABLE,
                        message: format!("cannot get the manifest of {object} upstream now: {e}"),
                    })
                }
                Err(_) => shared.upload_answer(object).unwrap_or(Frame::NotFound {
                    id: ChunkId::new(object, u64::MAX),
                }),
            }
        }
        other => {
            shared
                .metrics
                .frames_malformed
                .with_label_values(&["unexpected_request"])
                .inc();
            Frame::Error {
                code: 400,
                message: format!("{} is not a request", other.kind()),
            }
        }
    }
}

/// Keeps a connection to every address in `wanted`, re-dialling with backoff.
pub(crate) async fn dial_loop(
    shared: Arc<Shared>,
    discovery: crate::roles::discovery::Discovery,
    only_if_greater: bool,
) {
    use std::collections::HashMap;
    let crate::roles::discovery::Discovery {
        addrs: mut wanted,
        lost,
    } = discovery;
    let own = shared.settings.mesh_advertise;
    let mut attempts: HashMap<std::net::SocketAddr, (Instant, u32)> = HashMap::new();
    let connected: Arc<Mutex<HashMap<std::net::SocketAddr, PeerId>>> = Arc::default();
    // Addresses with a dial or session in progress: never two at once, or
    // the second connection would replace the first mid-handshake.
    let busy: Arc<Mutex<std::collections::HashSet<std::net::SocketAddr>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut shutdown = shared.mesh_stop_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wanted.changed() => {}
            _ = shutdown.changed() => return,
        }
        let addrs = wanted.borrow().clone();
        for addr in addrs {
            let me = own_address_towards(own, addr);
            // A headless Service lists this node too.
            if addr == me {
                continue;
            }
            // Edges dial only peers "above" them, so two edges make one
            // connection between them, not two: both ends must agree on
            // the order, so compare the addresses each side sees.
            if only_if_greater && addr <= me {
                continue;
            }
            if busy.lock().contains(&addr) {
                continue;
            }
            let now = Instant::now();
            let (next_at, failures) = attempts.get(&addr).copied().unwrap_or((now, 0));
            if now < next_at {
                continue;
            }
            // Back off exponentially to 5 s so a dead peer costs little.
            let backoff =
                Duration::from_millis(200 * 2u64.pow(failures.min(5))).min(Duration::from_secs(5));
            attempts.insert(addr, (now + backoff, failures.saturating_add(1)));
            busy.lock().insert(addr);
            let (shared, connected, busy) = (shared.clone(), connected.clone(), busy.clone());
            let lost = lost.clone();
            tokio::spawn(async move {
                match shared.endpoint.connect(addr).await {
                    Ok(pc) => {
                        connected.lock().insert(addr, pc.peer_id);
                        run(shared, pc, true).await;
                        // An upstream may be back soon under a new address,
                        // and without one nothing flows. Not for edge peers:
                        // one neighbour of dozens is missed little, and in a
                        // rollout of a large tier every edge would re-resolve
                        // a name of a thousand addresses every second.
                        if !only_if_greater {
                            lost.notify();
                        }
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "dial failed"),
                }
                busy.lock().remove(&addr);
            });
        }
        attempts.retain(|_, (_, failures)| *failures > 0);
        // A peer that connected resets its backoff.
        for (addr, id) in connected.lock().iter() {
            if shared.peers.read().contains_key(id) {
                attempts.remove(addr);
            }
        }
    }
}

/// This node's mesh address as seen from `addr`. With a wildcard listen
/// address (`0.0.0.0`, as in containers and pods) the advertised address
/// says nothing, so ask the routing table which local address reaches
/// `addr`: connecting a UDP socket sends nothing.
pub(crate) fn own_address_towards(
    own: std::net::SocketAddr,
    addr: std::net::SocketAddr,
) -> std::net::SocketAddr {
    if !own.ip().is_unspecified() {
        return own;
    }
    let any: std::net::SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(addr)?;
            s.local_addr()
        })
        .map(|local| std::net::SocketAddr::new(local.ip(), own.port()))
        .unwrap_or(own)
}

/// Accepts authenticated peers until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.mesh_stop_signal();
    loop {
        let accepted = tokio::select! {
            a = shared.endpoint.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Some(Ok(pc)) => {
                tokio::spawn(run(shared.clone(), pc, false));
            }
            Some(Err(e)) => {
                shared
                    .metrics
                    .handshakes_refused
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::info!(error = %e, "connection refused");
            }
            None => return,
        }
    }
}

/// Runs the choker every unchoke interval and tells peers what changed (edges).
pub(crate) async fn choke_loop(shared: Arc<Shared>) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::from_entropy();
    let mut tick = tokio::time::interval(shared.settings.unchoke_interval);
    let mut shutdown = shared.mesh_stop_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let changes = shared.choker.lock().handle_tick(Instant::now(), &mut rng);
        let peers = shared.peers.read().clone();
        for change in changes {
            if let Some(peer) = peers.get(&change.peer) {
                let frame = if change.unchoked {
                    Frame::Unchoke
                } else {
                    Frame::Choke
                };
                let _ = peer.control.try_send(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::own_address_towards;

    #[test]
    fn a_wildcard_listen_address_becomes_the_address_that_reaches_the_peer() {
        let any = "0.0.0.0:7400".parse().unwrap();
        let peer = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            own_address_towards(any, peer),
            "127.0.0.1:7400".parse().unwrap()
        );
        let fixed = "10.1.2.3:7400".parse().unwrap();
        assert_eq!(own_address_towards(fixed, peer), fixed);
    }
}
