//! The origin of record: what an origin acknowledged, kept on disk.
//!
//! Each object version is one directory named by its stream id, holding
//! `data` (the object's bytes, contiguous, so chunk `seq` is one positioned
//! read) and `meta.json` (what its manifest says). An upload writes into a
//! `tmp-` directory and becomes visible by one `rename` after both files
//! are synced, so a crash leaves either the whole version or nothing, and
//! the publisher's 201 is sent only after that rename. The store never
//! evicts: a publish that would not fit is refused up front (507) and
//! nothing already acknowledged moves. Superseded versions are removed once
//! two newer ones exist, so a reader mid-download of the previous version
//! can still finish.
//!
//! Payloads are kept unsigned: the origin signs a chunk again when it
//! serves it from here, with the key active then, so a version outlives
//! both the chunk freshness window and key rotations. Signing, the memory
//! cache and the mesh are the node's business, not this module's.

use crate::chunk::StreamId;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What is kept of a published object version besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub name: String,
    pub version: u64,
    pub len: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    /// BLAKE3 of the object, hex.
    pub digest: String,
    pub cache_control: String,
    /// When it was first published (the manifest's timestamp), ms.
    pub published_ms: u64,
    /// Pulled from the origin's upstream with these validators (absent:
    /// published by PUT). Kept so a restarted origin revalidates it
    /// conditionally instead of taking it for the publisher's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<crate::roles::upstream::Validators>,
}

impl StoredObject {
    pub fn stream(&self) -> StreamId {
        StreamId::object(&self.name, self.version)
    }
}

/// Why the origin store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginStoreError {
    #[error(
        "the origin store holds {used} of {capacity} bytes; {wanted} more do not fit (nothing was evicted)"
    )]
    Full {
        used: u64,
        wanted: u64,
        capacity: u64,
    },
    #[error("no upload of {0} is in progress")]
    NoUpload(StreamId),
    #[error("origin store {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OriginStoreError + '_ {
    move |source| OriginStoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

struct Upload {
    dir: PathBuf,
    file: File,
    written: u64,
    /// Bytes counted against capacity for this upload (≥ written).
    reserved: u64,
}

struct Inner {
    /// Bytes of committed versions plus reservations of running uploads.
    used: u64,
    objects: HashMap<StreamId, StoredObject>,
    uploads: HashMap<StreamId, Upload>,
}

/// A directory of published object versions with a byte capacity.
pub struct OriginStore {
    dir: PathBuf,
    capacity: u64,
    inner: Mutex<Inner>,
}

impl OriginStore {
    /// Opens (creating) `dir`, drops uploads a crash left unfinished, and
    /// returns the store with every committed version it holds.
    pub fn open(dir: &Path, capacity: u64) -> Result<Self, OriginStoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut objects = HashMap::new();
        let mut used = 0;
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") {
                // Never acknowledged: the publisher got no 201 for it.
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            let meta = path.join("meta.json");
            let Ok(text) = fs::read_to_string(&meta) else {
                continue;
            };
            let obj: StoredObject =
                serde_json::from_str(&text).map_err(|e| OriginStoreError::Io {
                    path: meta.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
            // A version is committed whole or not at all; a data file of
            // another length is damage, and is never served as the version.
            let data_len = fs::metadata(path.join("data")).map(|m| m.len()).ok();
            if data_len != Some(obj.len) {
                tracing::error!(
                    path = %path.display(),
                    expected = obj.len,
                    found = ?data_len,
                    "origin store: a version's data does not match its meta; not serving it"
                );
                continue;
            }
            used += obj.len;
            objects.insert(obj.stream(), obj);
        }
        Ok(Self {
            dir: dir.to_owned(),
            capacity,
            inner: Mutex::new(Inner {
                used,
                objects,
                uploads: HashMap::new(),
            }),
        })
    }

    /// Every committed version.
    pub fn objects(&self) -> Vec<StoredObject> {
        self.inner.lock().objects.values().cloned().collect()
    }

    pub fn get(&self, stream: StreamId) -> Option<StoredObject> {
        self.inner.lock().objects.get(&stream).cloned()
    }

    /// Bytes held and reserved, and the capacity.
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.lock().used, self.capacity)
    }

    /// Starts an upload of version `stream`, reserving `len_hint` bytes
    /// (the request's Content-Length) so a publish that cannot fit is
    /// refused before its body is read.
    pub fn begin(&self, stream: StreamId, len_hint: u64) -> Result<(), OriginStoreError> {
        let dir = self.dir.join(format!("tmp-{stream}"));
        let mut inner = self.inner.lock();
        Self::reserve(&mut inner, self.capacity, len_hint)?;
        let opened = fs::create_dir_all(&dir)
            .and_then(|()| File::create(dir.join("data")))
            .map_err(io(&dir));
        match opened {
            Ok(file) => {
                inner.uploads.insert(
                    stream,
                    Upload {
                        dir,
                        file,
                        written: 0,
                        reserved: len_hint,
                    },
                );
                Ok(())
            }
            Err(e) => {
                inner.used -= len_hint;
                Err(e)
            }
        }
    }

    fn reserve(inner: &mut Inner, capacity: u64, wanted: u64) -> Result<(), OriginStoreError> {
        if inner.used.saturating_add(wanted) > capacity {
            return Err(OriginStoreError::Full {
                used: inner.used,
                wanted,
                capacity,
            });
        }
        inner.used += wanted;
        Ok(())
    }

    /// Appends the next piece of an upload; refuses (nothing evicted) when
    /// the upload grows past what fits.
    pub fn append(&self, stream: StreamId, bytes: &[u8]) -> Result<(), OriginStoreError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let upload = inner
            .uploads
            .get_mut(&stream)
            .ok_or(OriginStoreError::NoUpload(stream))?;
        let after = upload.written + bytes.len() as u64;
        if after > upload.reserved {
            let more = after - upload.reserved;
            if inner.used.saturating_add(more) > self.capacity {
                return Err(OriginStoreError::Full {
                    used: inner.used,
                    wanted: more,
                    capacity: self.capacity,
                });
            }
            inner.used += more;
            upload.reserved = after;
        }
        let path = upload.dir.join("data");
        upload.file.write_all(bytes).map_err(io(&path))?;
        upload.written = after;
        Ok(())
    }

    /// Makes an upload a committed version: data and meta synced, then one
    /// rename. Returns the versions of the same name now superseded twice
    /// over, already removed from disk.
    pub fn commit(&self, obj: &StoredObject) -> Result<Vec<StreamId>, OriginStoreError> {
        let stream = obj.stream();
        let upload = self
            .inner
            .lock()
            .uploads
            .remove(&stream)
            .ok_or(OriginStoreError::NoUpload(stream))?;
        let result = (|| {
            upload.file.sync_all().map_err(io(&upload.dir))?;
            let meta = upload.dir.join("meta.json");
            let mut f = File::create(&meta).map_err(io(&meta))?;
            let text = serde_json::to_vec_pretty(obj).map_err(|e| OriginStoreError::Io {
                path: meta.display().to_string(),
                source: std::io::Error::other(e),
            })?;
            f.write_all(&text).map_err(io(&meta))?;
            f.sync_all().map_err(io(&meta))?;
            // The files' names live in the version's directory: synced
            // too, or a crash could keep the directory without them.
            sync_dir(&upload.dir)?;
            let final_dir = self.dir.join(stream.to_string());
            fs::rename(&upload.dir, &final_dir).map_err(io(&final_dir))?;
            // The rename is durable only once the parent directory is, and
            // the 201 promises durability: a failure here fails the publish.
            sync_dir(&self.dir)?;
            Ok(())
        })();
        let mut inner = self.inner.lock();
        // Give back what was reserved beyond the bytes written.
        inner.used -= upload.reserved - upload.written;
        if let Err(e) = result {
            inner.used -= upload.written;
            let _ = fs::remove_dir_all(&upload.dir);
            return Err(e);
        }
        inner.objects.insert(stream, obj.clone());
        let mut same: Vec<(u64, StreamId)> = inner
            .objects
            .values()
            .filter(|o| o.name == obj.name)
            .map(|o| (o.version, o.stream()))
            .collect();
        same.sort_unstable_by(|a, b| b.cmp(a));
        let superseded: Vec<StreamId> = same.iter().skip(2).map(|&(_, s)| s).collect();
        for s in &superseded {
            if let Some(o) = inner.objects.remove(s) {
                inner.used -= o.len;
                self.remove_version_dir(*s);
            }
        }
        Ok(superseded)
    }

    /// Drops an upload that will not be acknowledged.
    pub fn abort(&self, stream: StreamId) {
        let mut inner = self.inner.lock();
        if let Some(upload) = inner.uploads.remove(&stream) {
            inner.used -= upload.reserved;
            let _ = fs::remove_dir_all(&upload.dir);
        }
    }

    /// Removes every committed version of `name` (a purge); how many.
    pub fn remove_name(&self, name: &str) -> usize {
        let mut inner = self.inner.lock();
        let gone: Vec<StreamId> = inner
            .objects
            .values()
            .filter(|o| o.name == name)
            .map(StoredObject::stream)
            .collect();
        for s in &gone {
            if let Some(o) = inner.objects.remove(s) {
                inner.used -= o.len;
                self.remove_version_dir(*s);
            }
        }
        gone.len()
    }

    /// Removes a version's directory: first renamed to a `tmp-` name (one
    /// atomic step), so a crash half-way through the removal leaves
    /// something `open` discards, never a version missing some bytes.
    fn remove_version_dir(&self, stream: StreamId) {
        let dir = self.dir.join(stream.to_string());
        let doomed = self.dir.join(format!("tmp-gone-{stream}"));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {
                let _ = sync_dir(&self.dir);
                let _ = fs::remove_dir_all(&doomed);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "origin store: removing a version")
            }
        }
    }

    /// Chunk `seq` of committed version `stream`, read from disk.
    pub fn read_chunk(&self, stream: StreamId, seq: u64) -> Option<Bytes> {
        use std::os::unix::fs::FileExt;
        let obj = self.get(stream)?;
        if seq >= obj.chunks {
            return None;
        }
        let size = u64::from(obj.chunk_size);
        let start = seq * size;
        let len = (obj.len - start).min(size) as usize;
        let file = File::open(self.dir.join(stream.to_string()).join("data")).ok()?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, start).ok()?;
        Some(Bytes::from(buf))
    }
}

fn sync_dir(dir: &Path) -> Result<(), OriginStoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl std::fmt::Debug for OriginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginStore")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, version: u64, len: u64) -> StoredObject {
        StoredObject {
            name: name.into(),
            version,
            len,
            chunk_size: 4,
            chunks: len.div_ceil(4),
            digest: String::new(),
            cache_control: "no-cache".into(),
            published_ms: 1,
            upstream: None,
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir() -> TempDir {
        let d = std::env::temp_dir().join(format!("dcdn-ostore-{}", rand::random::<u64>()));
        TempDir(d)
    }

    fn put(s: &OriginStore, o: &StoredObject, data: &[u8]) -> Result<(), OriginStoreError> {
        s.begin(o.stream(), 0)?;
        if let Err(e) = s.append(o.stream(), data) {
            s.abort(o.stream());
            return Err(e);
        }
        s.commit(o).map(|_| ())
    }

    #[test]
    fn committed_versions_survive_reopening_and_read_back_by_chunk() {
        let dir = tempdir();
        let s = OriginStore::open(dir.path(), 100).unwrap();
        let o = obj("a", 1, 10);
        put(&s, &o, b"0123456789").unwrap();
        // An upload never committed is gone after a restart.
        s.begin(obj("b", 1, 4).stream(), 4).unwrap();
        drop(s);
        let s = OriginStore::open(dir.path(), 100).unwrap();
        assert_eq!(s.objects(), vec![o.clone()]);
        assert_eq!(s.usage(), (10, 100));
        assert_eq!(s.read_chunk(o.stream(), 2).unwrap(), &b"89"[..]);
        assert_eq!(s.read_chunk(o.stream(), 3), None);
    }

    #[test]
    fn a_publish_that_does_not_fit_is_refused_and_nothing_moves() {
        let dir = tempdir();
        let s = OriginStore::open(dir.path(), 16).unwrap();
        put(&s, &obj("a", 1, 10), &[1; 10]).unwrap();
        assert!(matches!(
            s.begin(obj("b", 1, 7).stream(), 7),
            Err(OriginStoreError::Full { .. })
        ));
        assert!(matches!(
            put(&s, &obj("b", 1, 7), &[2; 7]),
            Err(OriginStoreError::Full { .. })
        ));
        assert_eq!(s.usage(), (10, 16));
        assert_eq!(s.objects().len(), 1);
        put(&s, &obj("b", 1, 6), &[2; 6]).unwrap();
    }

    #[test]
    fn a_version_whose_data_is_damaged_is_not_loaded() {
        let dir = tempdir();
        let s = OriginStore::open(dir.path(), 100).unwrap();
        let (a, b) = (obj("a", 1, 10), obj("b", 1, 10));
        put(&s, &a, b"0123456789").unwrap();
        put(&s, &b, b"abcdefghij").unwrap();
        drop(s);
        let data = dir.path().join(b.stream().to_string()).join("data");
        fs::write(&data, b"abc").unwrap();
        let s = OriginStore::open(dir.path(), 100).unwrap();
        assert_eq!(s.objects(), vec![a]);
        assert_eq!(s.read_chunk(b.stream(), 0), None);
    }

    #[test]
    fn versions_older_than_the_previous_one_are_removed() {
        let dir = tempdir();
        let s = OriginStore::open(dir.path(), 100).unwrap();
        for v in 1..=3 {
            put(&s, &obj("a", v, 4), &[v as u8; 4]).unwrap();
        }
        let mut versions: Vec<u64> = s.objects().iter().map(|o| o.version).collect();
        versions.sort_unstable();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(s.usage().0, 8);
    }
}
