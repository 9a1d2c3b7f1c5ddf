//! Object uploads still running: readable at the edges before they end.
//!
//! When a publisher's PUT starts, the origin signs an *open* [`UploadFrame`]
//! (name, the new version, chunk size; no length or digest yet) and its
//! chunks are fetchable as each is stored. A `ManifestRequest` for a name
//! with no complete version is answered with that frame, and relays pass it
//! down as they pass manifests. An edge asked for such a name streams the
//! chunks as they arrive (no `Content-Length`) and ends the body cleanly
//! only once the final manifest of the same version verified and the
//! length and BLAKE3 digest of what it sent match it. An upload that ends
//! without a manifest (client gone, 507, wrong length, purge) is signed
//! *aborted*; an open upload with no progress for [`UPLOAD_STALL`] is
//! treated as gone. Either way edge readers reset the body, so no client
//! ever takes part of a version for the whole.
//!
//! [`Uploads`] is the record of those frames (origin: what it signed; relay
//! and edge: what it verified from upstream). It does no I/O and takes the
//! time as an argument; the `impl Shared` below wires it to signing,
//! verification and fetching.

use crate::chunk::wire::{Frame, UploadFrame, UploadState};
use crate::chunk::{Chunk, ChunkId, StreamId};
use crate::roles::node::{Shared, unix_ms};
use crate::roles::settings::Role;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Uploads one origin keeps open at once; one more is refused (503).
pub const MAX_OPEN_UPLOADS: usize = 64;
/// Clients one edge streams uploads in progress to at once; one more is
/// refused (503).
pub const MAX_UPLOAD_READERS: usize = 256;
/// An open upload with no new chunk for this long is treated as gone: the
/// origin stops answering it and edge readers reset their bodies.
pub const UPLOAD_STALL: Duration = Duration::from_secs(30);
/// How long an aborted version is still answered as aborted.
pub const ABORT_MEMORY: Duration = Duration::from_secs(30);
/// How often an edge reader asks for the next chunk or the upload's state
/// when the chunk is not there yet.
pub const UPLOAD_POLL: Duration = Duration::from_millis(50);
/// An origin signs an open frame again when it answers one older than this,
/// so a verified open frame is never older than [`MAX_FRAME_AGE_MS`].
const RESIGN_AFTER_MS: u64 = 5_000;
/// Oldest open frame (beyond clock skew) a relay or edge accepts: a stale
/// frame replayed cannot make readers wait on an upload long ended.
pub const MAX_FRAME_AGE_MS: u64 = 30_000;
/// Upload records a node keeps (open and aborted, all names).
const MAX_RECORDS: usize = 4096;

/// The open and recently aborted uploads a node knows, per object key.
#[derive(Debug, Default)]
pub struct Uploads {
    by_key: HashMap<StreamId, Record>,
}

#[derive(Debug, Clone)]
struct Record {
    frame: UploadFrame,
    /// When the upload last made progress (opened, a chunk stored, learned
    /// from upstream, aborted).
    progress: Instant,
}

impl Record {
    fn alive(&self, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.progress);
        match self.frame.state {
            UploadState::Open => age < UPLOAD_STALL,
            UploadState::Aborted => age < ABORT_MEMORY,
        }
    }
}

/// An origin already has [`MAX_OPEN_UPLOADS`] uploads open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} uploads are open at this origin, the most it takes at once; retry later")]
pub struct TooManyUploads(pub usize);

impl Uploads {
    fn prune(&mut self, now: Instant) {
        self.by_key.retain(|_, r| r.alive(now));
    }

    /// Uploads open (and not stalled) now.
    pub fn open_count(&self, now: Instant) -> usize {
        self.by_key
            .values()
            .filter(|r| r.frame.state == UploadState::Open && r.alive(now))
            .count()
    }

    /// Records an upload the origin just opened.
    pub fn open(&mut self, frame: UploadFrame, now: Instant) -> Result<(), TooManyUploads> {
        self.prune(now);
        let open = self.open_count(now);
        if open >= MAX_OPEN_UPLOADS {
            return Err(TooManyUploads(open));
        }
        self.put(frame, now);
        Ok(())
    }

    /// Records `frame` (an abort signed here, or a frame verified from
    /// upstream) unless a newer version of the name is recorded.
    pub fn record(&mut self, frame: UploadFrame, now: Instant) {
        let key = StreamId::object_key(&frame.name);
        if self
            .by_key
            .get(&key)
            .is_some_and(|r| r.frame.version > frame.version && r.alive(now))
        {
            return;
        }
        self.put(frame, now);
    }

    fn put(&mut self, frame: UploadFrame, now: Instant) {
        let key = StreamId::object_key(&frame.name);
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_RECORDS {
            self.prune(now);
            if self.by_key.len() >= MAX_RECORDS {
                // Oldest progress out: a stalled or long-aborted upload.
                if let Some(oldest) = self
                    .by_key
                    .iter()
                    .min_by_key(|(_, r)| r.progress)
                    .map(|(k, _)| *k)
                {
                    self.by_key.remove(&oldest);
                }
            }
        }
        self.by_key.insert(
            key,
            Record {
                frame,
                progress: now,
            },
        );
    }

    /// A chunk of `stream` was stored: the upload is alive.
    pub fn progress(&mut self, stream: StreamId, now: Instant) {
        if let Some(r) = self
            .by_key
            .values_mut()
            .find(|r| r.frame.stream == stream && r.frame.state == UploadState::Open)
        {
            r.progress = now;
        }
    }

    /// The open frame of `stream` (to sign its abort), taken out.
    pub fn take_open(&mut self, name: &str, stream: StreamId) -> Option<UploadFrame> {
        let key = StreamId::object_key(name);
        match self.by_key.get(&key) {
            Some(r) if r.frame.stream == stream && r.frame.state == UploadState::Open => {
                self.by_key.remove(&key).map(|r| r.frame)
            }
            _ => None,
        }
    }

    /// Forgets `stream`'s upload: its final manifest is out.
    pub fn finish(&mut self, name: &str, stream: StreamId) {
        let key = StreamId::object_key(name);
        if self
            .by_key
            .get(&key)
            .is_some_and(|r| r.frame.stream == stream)
        {
            self.by_key.remove(&key);
        }
    }

    /// Forgets whatever is recorded for `object` (upstream said nothing is
    /// open, or the name was purged).
    pub fn forget(&mut self, object: StreamId) {
        self.by_key.remove(&object);
    }

    /// The upload recorded for `object`, if still alive.
    pub fn get(&self, object: StreamId, now: Instant) -> Option<UploadFrame> {
        self.by_key
            .get(&object)
            .filter(|r| r.alive(now))
            .map(|r| r.frame.clone())
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// One client reading an upload in progress at an edge; the slot is given
/// back on drop.
#[derive(Debug)]
pub struct ReaderSlot(Arc<AtomicUsize>);

impl ReaderSlot {
    /// A slot, or None if [`MAX_UPLOAD_READERS`] are taken.
    pub fn take(readers: &Arc<AtomicUsize>) -> Option<Self> {
        readers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_UPLOAD_READERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(readers.clone()))
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an edge reader gets next from an upload in progress.
#[derive(Debug)]
pub enum Step {
    /// The next chunk, verified.
    Chunk(Chunk),
    /// Every chunk was read: the final manifest of the same version.
    Done(crate::chunk::wire::ManifestFrame),
    /// The upload will not complete (aborted, stalled, purged, superseded).
    Failed(String),
}

/// The marker a `fetch_manifest` error carries when the name has no
/// complete version but an upload of one is open.
pub const UPLOAD_OPEN: &str = "has no manifest yet: an upload is open";

impl Shared {
    fn sign_upload(&self, mut u: UploadFrame) -> Result<UploadFrame, String> {
        let active = self.keys.read().active().ok_or("no active signing key")?;
        let signers = self.signers.read();
        let signer = signers
            .get(&active)
            .ok_or_else(|| format!("the active key {active} has no secret key on this node"))?;
        u.key_id = active;
        u.timestamp_ms = unix_ms();
        u.signature = signer.sign(&u.signing_bytes());
        Ok(u)
    }

    /// Opens an upload of `stream` (origin): signs its open frame, so
    /// edges can read it before it ends. Refused past [`MAX_OPEN_UPLOADS`].
    pub fn open_upload(
        &self,
        name: &str,
        stream: StreamId,
        version: u64,
        cache_control: &str,
        chunk_size: u32,
    ) -> Result<(), crate::roles::ingest::PublishError> {
        use crate::roles::ingest::PublishError;
        let frame = self
            .sign_upload(UploadFrame {
                name: name.to_owned(),
                stream,
                version,
                state: UploadState::Open,
                cache_control: cache_control.to_owned(),
                chunk_size,
                key_id: crate::chunk::KeyId(0),
                timestamp_ms: 0,
                signature: [0; 64],
            })
            .map_err(PublishError::Failed)?;
        if let Err(e) = self.uploads.lock().open(frame, Instant::now()) {
            self.metrics
                .uploads
                .with_label_values(&["refused_too_many"])
                .inc();
            return Err(PublishError::Busy(e.to_string()));
        }
        self.metrics.uploads.with_label_values(&["opened"]).inc();
        Ok(())
    }

    /// A chunk of an upload was stored (origin).
    pub fn upload_progress(&self, stream: StreamId) {
        self.uploads.lock().progress(stream, Instant::now());
    }

    /// The final manifest of `stream` is out (origin).
    pub fn finish_upload(&self, name: &str, stream: StreamId) {
        let mut uploads = self.uploads.lock();
        if uploads
            .get(StreamId::object_key(name), Instant::now())
            .is_some()
        {
            self.metrics.uploads.with_label_values(&["completed"]).inc();
        }
        uploads.finish(name, stream);
    }

    /// The upload of `stream` ended without a manifest (origin): signs its
    /// abort, so edge readers reset rather than wait.
    pub fn abort_upload(&self, name: &str, stream: StreamId) {
        let Some(open) = self.uploads.lock().take_open(name, stream) else {
            return;
        };
        self.metrics.uploads.with_label_values(&["aborted"]).inc();
        match self.sign_upload(UploadFrame {
            state: UploadState::Aborted,
            ..open
        }) {
            Ok(aborted) => self.uploads.lock().record(aborted, Instant::now()),
            Err(e) => tracing::warn!(error = %e, name, "could not sign an upload's abort"),
        }
    }

    /// What a `ManifestRequest` for `object` is answered with when no
    /// complete version is held: the upload recorded, if any. An origin
    /// signs an open frame again when it has aged.
    pub(crate) fn upload_answer(&self, object: StreamId) -> Option<Frame> {
        let now = Instant::now();
        let u = self.uploads.lock().get(object, now)?;
        if self.settings.role == Role::Origin
            && u.state == UploadState::Open
            && unix_ms().saturating_sub(u.timestamp_ms) > RESIGN_AFTER_MS
        {
            if let Ok(fresh) = self.sign_upload(u.clone()) {
                let mut uploads = self.uploads.lock();
                // Only if the upload is still the one recorded.
                if uploads
                    .get(object, now)
                    .is_some_and(|r| r.stream == u.stream && r.state == UploadState::Open)
                {
                    if let Some(r) = uploads.by_key.get_mut(&object) {
                        r.frame = fresh.clone();
                    }
                }
                return Some(Frame::Upload(fresh));
            }
        }
        Some(Frame::Upload(u))
    }

    /// Verifies an upload frame an upstream answered for `object` and
    /// records it; refused (and counted) if it names another object or
    /// version, was purged, is not validly signed or is stale.
    pub(crate) fn accept_upload(&self, u: UploadFrame, object: StreamId) -> Result<(), String> {
        let refuse = |reason: &'static str, message: String| {
            self.metrics
                .chunks_rejected
                .with_label_values(&[reason])
                .inc();
            Err(message)
        };
        if StreamId::object_key(&u.name) != object
            || StreamId::object(&u.name, u.version) != u.stream
        {
            return refuse(
                "upload_stream",
                format!("upload frame for {} names the wrong ids", u.name),
            );
        }
        if self.manifests.lock().is_purged(object, u.version) {
            return refuse("upload_purged", format!("upload of {} was purged", u.name));
        }
        if let Err(e) = self
            .verifier
            .verify_signature(u.key_id, &u.signing_bytes(), &u.signature)
        {
            return refuse(e.reason(), format!("upload frame for {}: {e}", u.name));
        }
        let now_ms = unix_ms();
        let skew = self.settings.max_clock_skew_ms;
        if u.timestamp_ms > now_ms.saturating_add(skew)
            || now_ms.saturating_sub(u.timestamp_ms) > MAX_FRAME_AGE_MS + skew
        {
            return refuse(
                "upload_stale",
                format!("upload frame for {} is stale", u.name),
            );
        }
        self.uploads.lock().record(u, Instant::now());
        Ok(())
    }

    /// After chunk `seq` came, starts fetching the next few in the
    /// background, as a whole-object read does: a reader behind the upload
    /// (or reading after it ended) is not held to one round trip per chunk.
    /// Single flight joins them with the reader's own fetch; a chunk not
    /// stored yet is simply not found.
    fn read_ahead(self: &Arc<Self>, stream: StreamId, seq: u64) {
        let now = Instant::now();
        for next in seq + 1..=seq + crate::roles::settings::READ_AHEAD as u64 {
            let id = ChunkId::new(stream, next);
            if self.store.contains(&id, now) {
                continue;
            }
            let shared = self.clone();
            tokio::spawn(async move {
                let _ = shared.fetch_if_published(id).await;
            });
        }
    }

    /// The next step of reading upload `up` at chunk `seq` (edge): the
    /// chunk once it is stored upstream, the final manifest once every
    /// chunk was read, or why the upload will not complete. `progress` is
    /// when the reader last got a chunk.
    pub async fn upload_step(
        self: &Arc<Self>,
        up: &UploadFrame,
        seq: u64,
        progress: Instant,
    ) -> Step {
        let id = ChunkId::new(up.stream, seq);
        let object = StreamId::object_key(&up.name);
        loop {
            if let Some(m) = self.manifests.lock().get(up.stream) {
                if seq >= m.chunk_count {
                    return Step::Done(m);
                }
            }
            if let Some(c) = self.store.get(&id, Instant::now()) {
                self.read_ahead(up.stream, seq);
                return Step::Chunk(c);
            }
            if let Ok(c) = self.fetch_if_published(id).await {
                self.read_ahead(up.stream, seq);
                return Step::Chunk(c);
            }
            // Not stored upstream yet: ask where the upload stands.
            match self.fetch_manifest(object, &up.name).await {
                Ok(m) if m.stream == up.stream => continue,
                Ok(m) if m.version > up.version => {
                    if self.manifests.lock().get(up.stream).is_some() {
                        continue;
                    }
                    return Step::Failed(format!(
                        "version {} of {} superseded version {} before it completed",
                        m.version, up.name, up.version
                    ));
                }
                _ => {}
            }
            match self.uploads.lock().get(object, Instant::now()) {
                Some(u) if u.stream == up.stream && u.state == UploadState::Open => {}
                Some(u) if u.stream == up.stream => {
                    return Step::Failed(format!(
                        "the upload of {} version {} was aborted",
                        up.name, up.version
                    ));
                }
                _ => {
                    if self.manifests.lock().get(up.stream).is_some() {
                        continue;
                    }
                    return Step::Failed(format!(
                        "the upload of {} version {} is no longer open",
                        up.name, up.version
                    ));
                }
            }
            if progress.elapsed() > UPLOAD_STALL {
                return Step::Failed(format!(
                    "the upload of {} made no progress for {UPLOAD_STALL:?}",
                    up.name
                ));
            }
            tokio::time::sleep(UPLOAD_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::KeyId;

    fn frame(name: &str, version: u64, state: UploadState) -> UploadFrame {
        UploadFrame {
            name: name.into(),
            stream: StreamId::object(name, version),
            version,
            state,
            cache_control: String::new(),
            chunk_size: 16,
            key_id: KeyId(1),
            timestamp_ms: 0,
            signature: [0; 64],
        }
    }

    #[test]
    fn open_uploads_are_bounded_and_stalled_ones_stop_counting() {
        let mut u = Uploads::default();
        let t0 = Instant::now();
        for i in 0..MAX_OPEN_UPLOADS {
            u.open(frame(&format!("n{i}"), 1, UploadState::Open), t0)
                .unwrap();
        }
        assert_eq!(
            u.open(frame("one-more", 1, UploadState::Open), t0),
            Err(TooManyUploads(MAX_OPEN_UPLOADS))
        );
        let later = t0 + UPLOAD_STALL + Duration::from_secs(1);
        assert!(u.get(StreamId::object_key("n0"), later).is_none());
        u.open(frame("one-more", 1, UploadState::Open), later)
            .unwrap();
    }

    #[test]
    fn an_abort_replaces_the_open_frame_and_an_older_version_never_wins() {
        let mut u = Uploads::default();
        let now = Instant::now();
        let key = StreamId::object_key("a");
        u.open(frame("a", 2, UploadState::Open), now).unwrap();
        u.record(frame("a", 1, UploadState::Aborted), now);
        assert_eq!(u.get(key, now).unwrap().version, 2);
        let open = u.take_open("a", StreamId::object("a", 2)).unwrap();
        u.record(
            UploadFrame {
                state: UploadState::Aborted,
                ..open
            },
            now,
        );
        assert_eq!(u.get(key, now).unwrap().state, UploadState::Aborted);
        assert!(u.get(key, now + ABORT_MEMORY).is_none());
        u.finish("a", StreamId::object("a", 2));
        assert!(u.is_empty());
    }

    #[test]
    fn reader_slots_are_bounded_and_given_back() {
        let readers = Arc::new(AtomicUsize::new(0));
        let slots: Vec<_> = (0..MAX_UPLOAD_READERS)
            .map(|_| ReaderSlot::take(&readers).unwrap())
            .collect();
        assert!(ReaderSlot::take(&readers).is_none());
        drop(slots);
        assert!(ReaderSlot::take(&readers).is_some());
    }
}
