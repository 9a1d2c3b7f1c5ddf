//! Live video (HLS, DASH): what the live namespace's files are, what they
//! are called inside the mesh, and the window of them each node keeps.
//!
//! An encoder publishes files under `/live/{stream}/{file}`. Each file is
//! one signed version of an object named [`object_name`] (`live:` + stream +
//! `/` + file): its chunks take the push path (signed chunks, FEC
//! datagrams) and its manifest follows on the control stream, so a segment
//! is at the edges before the playlist that names it. `:` is refused in
//! `/v1/objects` names, so no ordinary object can collide with a live file.
//! [`Windows`] is the DVR window: segments older than it are dropped at
//! every node, playlists keep their newest two versions, and a stream that
//! went quiet for a whole window is forgotten — so a 24/7 stream runs in
//! bounded memory. It reads no clock: callers pass the time. HTTP lives in
//! `live_http`.

use crate::chunk::StreamId;
use std::collections::{HashMap, VecDeque};

/// Prefix of every live file's object name.
pub const PREFIX: &str = "live:";
/// Longest stream name.
pub const MAX_STREAM_LEN: usize = 64;
/// Longest file path inside a stream.
pub const MAX_FILE_LEN: usize = 160;

/// What a live file is, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An HLS media or master playlist (`.m3u8`).
    HlsPlaylist,
    /// A DASH manifest (`.mpd`).
    DashManifest,
    /// Media: `.ts`, `.m4s`, `.mp4`, init segments, subtitles.
    Segment,
}

impl Kind {
    /// Playlists and manifests are rewritten under one name as the stream
    /// goes on; segments are written once.
    pub fn is_playlist(self) -> bool {
        !matches!(self, Self::Segment)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::HlsPlaylist => "playlist",
            Self::DashManifest => "mpd",
            Self::Segment => "segment",
        }
    }

    /// What edges answer with: a playlist is revalidated on every request
    /// (its ETag makes that a 304 when nothing changed), a segment never
    /// changes once published.
    pub fn cache_control(self) -> &'static str {
        match self {
            Self::Segment => "public, max-age=31536000, immutable",
            _ => "no-cache",
        }
    }
}

/// The kind and `Content-Type` of `file`, or None if the live namespace
/// does not carry that kind of file.
pub fn classify(file: &str) -> Option<(Kind, &'static str)> {
    let ext = file.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "m3u8" => (Kind::HlsPlaylist, "application/vnd.apple.mpegurl"),
        "mpd" => (Kind::DashManifest, "application/dash+xml"),
        "ts" => (Kind::Segment, "video/mp2t"),
        "m4s" => (Kind::Segment, "video/iso.segment"),
        "mp4" | "m4v" | "cmfv" => (Kind::Segment, "video/mp4"),
        "m4a" | "cmfa" => (Kind::Segment, "audio/mp4"),
        "aac" => (Kind::Segment, "audio/aac"),
        "vtt" => (Kind::Segment, "text/vtt"),
        _ => return None,
    })
}

/// Why a live path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("stream name {0:?} must be 1-64 characters of [A-Za-z0-9_-]")]
    Stream(String),
    #[error(
        "file {0:?} must be 1-160 characters of [A-Za-z0-9_.-/] without empty, . or .. segments"
    )]
    File(String),
    #[error(
        "file {0:?} is not a playlist, manifest or segment (.m3u8 .mpd .ts .m4s .mp4 .m4a .aac .vtt)"
    )]
    Type(String),
}

impl PathError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Stream(_) => "bad_stream",
            Self::File(_) => "bad_file",
            Self::Type(_) => "bad_type",
        }
    }
}

/// A checked live path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    pub stream: String,
    pub file: String,
    pub kind: Kind,
    pub content_type: &'static str,
}

impl LiveFile {
    /// Checks `stream` and `file` as they came in a URL.
    pub fn parse(stream: &str, file: &str) -> Result<Self, PathError> {
        let stream_ok = !stream.is_empty()
            && stream.len() <= MAX_STREAM_LEN
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !stream_ok {
            return Err(PathError::Stream(cut(stream)));
        }
        let file_ok = !file.is_empty()
            && file.len() <= MAX_FILE_LEN
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && !file
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..");
        if !file_ok {
            return Err(PathError::File(cut(file)));
        }
        let (kind, content_type) = classify(file).ok_or_else(|| PathError::Type(cut(file)))?;
        Ok(Self {
            stream: stream.to_owned(),
            file: file.to_owned(),
            kind,
            content_type,
        })
    }

    /// The object name this file's versions are published under.
    pub fn object_name(&self) -> String {
        object_name(&self.stream, &self.file)
    }
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `live:{stream}/{file}`.
pub fn object_name(stream: &str, file: &str) -> String {
    format!("{PREFIX}{stream}/{file}")
}

/// The stream and file of a live object name; None for any other object.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(PREFIX)?.split_once('/')
}

/// One version of a live file a node holds: what to forget when it leaves
/// the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub stream: StreamId,
    pub chunks: u64,
    pub len: u64,
    pub kind: Kind,
    /// When the origin signed its manifest, ms since the Unix epoch.
    pub published_ms: u64,
}

/// The window's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    pub dvr_window_ms: u64,
    pub max_streams: usize,
    pub max_segments_per_stream: usize,
}

impl WindowConfig {
    pub fn of(c: &crate::config::LiveSection) -> Self {
        Self {
            dvr_window_ms: c.dvr_window_seconds.get() * 1000,
            max_streams: c.max_streams.get() as usize,
            max_segments_per_stream: c.max_segments_per_stream.get() as usize,
        }
    }
}

/// Playlist versions kept per name: the newest, which is served, and the
/// one before, for a player still reading it.
const PLAYLIST_VERSIONS: usize = 2;
/// Playlist names kept per stream (a master, its variants, a DASH MPD).
const MAX_PLAYLISTS_PER_STREAM: usize = 32;

#[derive(Debug, Default)]
struct StreamWindow {
    /// Segments in the order their manifests arrived.
    segments: VecDeque<Held>,
    playlists: HashMap<String, VecDeque<Held>>,
    /// Publish time of the newest file of the stream.
    last_ms: u64,
    bytes: u64,
}

/// What [`Windows::record`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The file is now tracked (false: refused, and listed in `drop`).
    pub kept: bool,
    /// A new stream started being tracked.
    pub new_stream: bool,
    /// Versions to forget now: manifests and chunks.
    pub drop: Vec<Held>,
    /// Streams forgotten as a whole (their metric labels go too).
    pub gone: Vec<String>,
}

/// The live files a node holds, per stream, bounded in count and age.
#[derive(Debug)]
pub struct Windows {
    config: WindowConfig,
    streams: HashMap<String, StreamWindow>,
}

impl Windows {
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            streams: HashMap::new(),
        }
    }

    pub fn config(&self) -> WindowConfig {
        self.config
    }

    /// Whether `stream` is tracked, or could start being tracked.
    pub fn has_room_for(&self, stream: &str) -> bool {
        self.streams.contains_key(stream) || self.streams.len() < self.config.max_streams
    }

    /// Tracks a verified live file version; `now_ms` is the wall clock.
    pub fn record(&mut self, held: Held, now_ms: u64) -> Recorded {
        let kind = held.kind;
        let mut out = Recorded::default();
        let Some((stream, file)) = split_name(&held.name) else {
            return out;
        };
        let (stream, file) = (stream.to_owned(), file.to_owned());
        // Already outside the window (a late pull of an old segment): not
        // worth holding.
        if !kind.is_playlist()
            && now_ms.saturating_sub(held.published_ms) > self.config.dvr_window_ms
        {
            out.drop.push(held);
            return out;
        }
        if !self.streams.contains_key(&stream) {
            if self.streams.len() >= self.config.max_streams {
                out.drop.push(held);
                return out;
            }
            out.new_stream = true;
        }
        let w = self.streams.entry(stream).or_default();
        w.last_ms = w.last_ms.max(held.published_ms);
        w.bytes += held.len;
        out.kept = true;
        if kind.is_playlist() {
            if !w.playlists.contains_key(&file) && w.playlists.len() >= MAX_PLAYLISTS_PER_STREAM {
                w.bytes -= held.len;
                out.kept = false;
                out.drop.push(held);
                return out;
            }
            let versions = w.playlists.entry(file).or_default();
            versions.push_back(held);
            while versions.len() > PLAYLIST_VERSIONS {
                if let Some(old) = versions.pop_front() {
                    w.bytes -= old.len;
                    out.drop.push(old);
                }
            }
        } else {
            w.segments.push_back(held);
            while w.segments.len() > self.config.max_segments_per_stream {
                if let Some(old) = w.segments.pop_front() {
                    w.bytes -= old.len;
                    out.drop.push(old);
                }
            }
        }
        out
    }

    /// Drops what left the window by `now_ms`: segments published longer
    /// than the window ago, and whole streams with nothing new for a window.
    pub fn expire(&mut self, now_ms: u64) -> Recorded {
        let mut out = Recorded::default();
        let window = self.config.dvr_window_ms;
        let old = |ms: u64| now_ms.saturating_sub(ms) > window;
        for w in self.streams.values_mut() {
            // Segments arrive roughly in publish order; one published out of
            // order waits behind the one before it, at most a segment longer.
            while w.segments.front().is_some_and(|s| old(s.published_ms)) {
                if let Some(s) = w.segments.pop_front() {
                    w.bytes -= s.len;
                    out.drop.push(s);
                }
            }
        }
        let quiet: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, w)| old(w.last_ms))
            .map(|(name, _)| name.clone())
            .collect();
        for name in quiet {
            if let Some(w) = self.streams.remove(&name) {
                out.drop.extend(w.segments);
                out.drop.extend(w.playlists.into_values().flatten());
                out.gone.push(name);
            }
        }
        out
    }

    /// The playlist and manifest files held for `stream`.
    pub fn playlists(&self, stream: &str) -> Vec<String> {
        self.streams
            .get(stream)
            .map(|w| w.playlists.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Per stream: segments and bytes held.
    pub fn summary(&self) -> Vec<(String, usize, u64)> {
        let mut v: Vec<_> = self
            .streams
            .iter()
            .map(|(name, w)| (name.clone(), w.segments.len(), w.bytes))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(name: &str, published_ms: u64) -> Held {
        let kind = classify(name).map_or(Kind::Segment, |(k, _)| k);
        Held {
            name: name.to_owned(),
            stream: StreamId::object(name, published_ms),
            chunks: 1,
            len: 100,
            kind,
            published_ms,
        }
    }

    fn windows(window_ms: u64) -> Windows {
        Windows::new(WindowConfig {
            dvr_window_ms: window_ms,
            max_streams: 2,
            max_segments_per_stream: 5,
        })
    }

    #[test]
    fn paths_are_checked_and_classified() {
        let f = LiveFile::parse("cam-1", "index.m3u8").unwrap();
        assert_eq!(f.kind, Kind::HlsPlaylist);
        assert_eq!(f.object_name(), "live:cam-1/index.m3u8");
        assert_eq!(split_name(&f.object_name()), Some(("cam-1", "index.m3u8")));
        assert_eq!(
            LiveFile::parse("cam", "v0/seg-00001.m4s").unwrap().kind,
            Kind::Segment
        );
        assert_eq!(
            LiveFile::parse("cam", "a.MPD").unwrap().content_type,
            "application/dash+xml"
        );
        for (stream, file, reason) in [
            ("", "a.ts", "bad_stream"),
            ("c/d", "a.ts", "bad_stream"),
            ("c:d", "a.ts", "bad_stream"),
            ("cam", "../a.ts", "bad_file"),
            ("cam", "a//b.ts", "bad_file"),
            ("cam", "a b.ts", "bad_file"),
            ("cam", "a.exe", "bad_type"),
            ("cam", "noext", "bad_type"),
        ] {
            assert_eq!(
                LiveFile::parse(stream, file).unwrap_err().reason(),
                reason,
                "{stream} {file}"
            );
        }
        assert!(LiveFile::parse(&"s".repeat(65), "a.ts").is_err());
        assert!(LiveFile::parse("s", &format!("{}.ts", "f".repeat(160))).is_err());
        assert_eq!(split_name("cam/a.ts"), None);
    }

    #[test]
    fn segments_leave_the_window_by_publish_time() {
        let mut w = windows(10_000);
        for i in 0..4u64 {
            let r = w.record(
                held(&format!("live:cam/s{i}.ts"), 1_000 + i * 4_000),
                1_000 + i * 4_000,
            );
            assert!(r.kept && r.drop.is_empty());
        }
        // At 14 s, s0 (1 s) is 13 s old: out; s1 (5 s) is 9 s old: in.
        let r = w.expire(14_000);
        let names: Vec<_> = r.drop.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["live:cam/s0.ts"]);
        assert_eq!(w.summary(), vec![("cam".to_owned(), 3, 300)]);
        // A segment already older than the window is not kept at all.
        let r = w.record(held("live:cam/old.ts", 1_000), 14_000);
        assert!(!r.kept);
        assert_eq!(r.drop.len(), 1);
    }

    #[test]
    fn playlists_keep_two_versions_and_segments_a_bounded_count() {
        let mut w = windows(1_000_000);
        let mut dropped = Vec::new();
        for i in 0..4 {
            let r = w.record(held("live:cam/index.m3u8", 10 + i), 20);
            dropped.extend(r.drop.into_iter().map(|h| h.published_ms));
        }
        assert_eq!(dropped, [10, 11]);
        let mut dropped = 0;
        for i in 0..8 {
            dropped += w
                .record(held(&format!("live:cam/{i}.ts"), 20), 20)
                .drop
                .len();
        }
        assert_eq!(dropped, 3);
        assert_eq!(w.summary(), vec![("cam".to_owned(), 5, 700)]);
    }

    #[test]
    fn streams_are_bounded_and_a_quiet_one_is_forgotten() {
        let mut w = windows(10_000);
        assert!(w.record(held("live:a/1.ts", 0), 0).new_stream);
        assert!(w.record(held("live:b/1.ts", 5_000), 5_000).kept);
        assert!(!w.has_room_for("c"));
        let r = w.record(held("live:c/1.ts", 5_000), 5_000);
        assert!(!r.kept && r.drop.len() == 1);
        w.record(held("live:a/p.m3u8", 1_000), 1_000);
        let r = w.expire(12_000);
        assert_eq!(r.gone, ["a"]);
        assert_eq!(r.drop.len(), 2, "a's segment and its playlist");
        assert!(w.has_room_for("c"));
    }
}
