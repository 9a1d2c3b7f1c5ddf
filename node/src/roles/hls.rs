//! HLS media playlists as a Low-Latency HLS CDN reads them: what a
//! playlist holds (segments, partial segments, preload hints,
//! `EXT-X-SERVER-CONTROL`), whether it answers a blocking reload
//! (`_HLS_msn`, `_HLS_part`), and its delta update (`_HLS_skip`).
//!
//! The rules are those of the HLS 2nd edition draft (rfc8216bis) §4.4.3.8,
//! §4.4.4.9, §4.4.5 and §6.2.5. The origin checks every playlist an
//! encoder publishes with [`Playlist::parse`], so edges only ever hold
//! playlists whose server-control promises are consistent; edges use the
//! same parse to decide when to release a held request. Nothing here does
//! I/O or reads a clock: `live_http` owns the waiting.

/// Why a published playlist is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaylistError {
    #[error("a playlist must be UTF-8 and start with #EXTM3U")]
    Header,
    #[error("{tag}: {why}")]
    Tag { tag: &'static str, why: String },
    #[error("an encoder must not publish a delta update (EXT-X-SKIP): edges make those")]
    Skip,
}

/// `EXT-X-SERVER-CONTROL`, as published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerControl {
    pub can_block_reload: bool,
    /// Skip Boundary, seconds: delta updates may skip segments this far
    /// from the playlist's end.
    pub can_skip_until: Option<f64>,
    pub can_skip_dateranges: bool,
    pub hold_back: Option<f64>,
    pub part_hold_back: Option<f64>,
}

/// What a media (or multivariant) playlist says, as far as a CDN cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Playlist {
    pub target_duration: Option<f64>,
    /// `EXT-X-PART-INF:PART-TARGET`, seconds.
    pub part_target: Option<f64>,
    pub media_sequence: u64,
    /// Complete media segments listed.
    pub segments: u64,
    /// Partial segments listed after the last complete segment: those of
    /// the segment being made (Media Sequence Number `media_sequence +
    /// segments`).
    pub trailing_parts: u64,
    pub ended: bool,
    pub control: ServerControl,
    /// `EXT-X-PRELOAD-HINT` URIs, as written.
    pub hints: Vec<String>,
}

/// What to do with a blocking reload request against one playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// The playlist satisfies it: answer now.
    Ready,
    /// Hold the request until a newer playlist does.
    Hold,
    /// Too far ahead to ever be satisfied in time: 400 at once.
    TooFar(String),
}

/// The largest Media Sequence Number or part index taken seriously; beyond
/// this arithmetic could overflow and no stream gets there.
const MAX_SEQUENCE: u64 = 1 << 48;

impl Playlist {
    /// Parses and checks a playlist. Refuses what would make an edge's
    /// promises false: parts without `EXT-X-PART-INF`, a server control
    /// whose hold-backs or skip boundary are shorter than the spec's
    /// minimums, a hint without a URI, a delta update.
    pub fn parse(text: &str) -> Result<Self, PlaylistError> {
        if !text.starts_with("#EXTM3U") {
            return Err(PlaylistError::Header);
        }
        let mut p = Playlist::default();
        let mut parts_since_segment = 0u64;
        let mut saw_part = false;
        let mut hint_types = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() {
                continue;
            }
            if !line.starts_with('#') {
                p.segments += 1;
                parts_since_segment = 0;
                continue;
            }
            let (tag, value) = line.split_once(':').unwrap_or((line, ""));
            match tag {
                "#EXT-X-TARGETDURATION" => {
                    p.target_duration = Some(number("EXT-X-TARGETDURATION", value)?);
                }
                "#EXT-X-MEDIA-SEQUENCE" => {
                    let n = value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| PlaylistError::Tag {
                            tag: "EXT-X-MEDIA-SEQUENCE",
                            why: format!("{value:?} is not a decimal integer"),
                        })?;
                    if n > MAX_SEQUENCE {
                        return Err(PlaylistError::Tag {
                            tag: "EXT-X-MEDIA-SEQUENCE",
                            why: format!("{n} is past {MAX_SEQUENCE}"),
                        });
                    }
                    p.media_sequence = n;
                }
                "#EXT-X-ENDLIST" => p.ended = true,
                "#EXT-X-SKIP" => return Err(PlaylistError::Skip),
                "#EXT-X-PART-INF" => {
                    let attrs = attributes(value);
                    let target = attr(&attrs, "PART-TARGET").ok_or(PlaylistError::Tag {
                        tag: "EXT-X-PART-INF",
                        why: "PART-TARGET is required".into(),
                    })?;
                    p.part_target = Some(number("EXT-X-PART-INF PART-TARGET", target)?);
                }
                "#EXT-X-PART" => {
                    let attrs = attributes(value);
                    if attr(&attrs, "URI").is_none_or(str::is_empty) {
                        return Err(PlaylistError::Tag {
                            tag: "EXT-X-PART",
                            why: "URI is required".into(),
                        });
                    }
                    let d = attr(&attrs, "DURATION").ok_or(PlaylistError::Tag {
                        tag: "EXT-X-PART",
                        why: "DURATION is required".into(),
                    })?;
                    number("EXT-X-PART DURATION", d)?;
                    saw_part = true;
                    parts_since_segment += 1;
                }
                "#EXT-X-PRELOAD-HINT" => {
                    let attrs = attributes(value);
                    let kind = attr(&attrs, "TYPE").unwrap_or_default().to_owned();
                    if kind != "PART" && kind != "MAP" {
                        return Err(PlaylistError::Tag {
                            tag: "EXT-X-PRELOAD-HINT",
                            why: format!("TYPE {kind:?} must be PART or MAP"),
                        });
                    }
                    if hint_types.contains(&kind) {
                        return Err(PlaylistError::Tag {
                            tag: "EXT-X-PRELOAD-HINT",
                            why: format!("more than one hint of TYPE {kind}"),
                        });
                    }
                    let uri = attr(&attrs, "URI").filter(|u| !u.is_empty()).ok_or(
                        PlaylistError::Tag {
                            tag: "EXT-X-PRELOAD-HINT",
                            why: "URI is required".into(),
                        },
                    )?;
                    p.hints.push(uri.to_owned());
                    hint_types.push(kind);
                }
                "#EXT-X-SERVER-CONTROL" => {
                    let attrs = attributes(value);
                    let c = &mut p.control;
                    c.can_block_reload = attr(&attrs, "CAN-BLOCK-RELOAD") == Some("YES");
                    c.can_skip_dateranges = attr(&attrs, "CAN-SKIP-DATERANGES") == Some("YES");
                    let num = |key: &'static str| {
                        attr(&attrs, key)
                            .map(|v| number("EXT-X-SERVER-CONTROL", v))
                            .transpose()
                    };
                    c.can_skip_until = num("CAN-SKIP-UNTIL")?;
                    c.hold_back = num("HOLD-BACK")?;
                    c.part_hold_back = num("PART-HOLD-BACK")?;
                }
                _ => {}
            }
        }
        p.trailing_parts = parts_since_segment;
        if p.segments + p.trailing_parts > 0 && p.target_duration.is_none() {
            return Err(PlaylistError::Tag {
                tag: "EXT-X-TARGETDURATION",
                why: "a media playlist must have one".into(),
            });
        }
        p.check_control(saw_part)?;
        Ok(p)
    }

    fn check_control(&self, saw_part: bool) -> Result<(), PlaylistError> {
        let c = &self.control;
        let bad = |why: String| {
            Err(PlaylistError::Tag {
                tag: "EXT-X-SERVER-CONTROL",
                why,
            })
        };
        if saw_part && self.part_target.is_none() {
            return Err(PlaylistError::Tag {
                tag: "EXT-X-PART",
                why: "partial segments need EXT-X-PART-INF".into(),
            });
        }
        let target = self.target_duration.unwrap_or(0.0);
        if let Some(skip) = c.can_skip_until {
            if skip < 6.0 * target {
                return bad(format!(
                    "CAN-SKIP-UNTIL {skip} is less than six target durations ({})",
                    6.0 * target
                ));
            }
        } else if c.can_skip_dateranges {
            return bad("CAN-SKIP-DATERANGES needs CAN-SKIP-UNTIL".into());
        }
        if let Some(hold) = c.hold_back {
            if hold < 3.0 * target {
                return bad(format!(
                    "HOLD-BACK {hold} is less than three target durations ({})",
                    3.0 * target
                ));
            }
        }
        if let Some(part_target) = self.part_target {
            match c.part_hold_back {
                None => return bad("PART-HOLD-BACK is required with EXT-X-PART-INF".into()),
                Some(h) if h < 2.0 * part_target => {
                    return bad(format!(
                        "PART-HOLD-BACK {h} is less than two part targets ({})",
                        2.0 * part_target
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The Media Sequence Number of the segment being made: the first one
    /// not yet listed complete.
    pub fn next_msn(&self) -> u64 {
        self.media_sequence + self.segments
    }

    /// Whether this playlist answers `_HLS_msn=msn` (and `_HLS_part=part`):
    /// it lists that segment complete, or that partial segment of it, or
    /// the stream ended (§6.2.5.2).
    pub fn block(&self, msn: u64, part: Option<u64>) -> Block {
        if self.ended {
            return Block::Ready;
        }
        let next = self.next_msn();
        let part = part.filter(|_| self.part_target.is_some());
        match part {
            _ if msn < next => return Block::Ready,
            Some(p) if msn == next && p < self.trailing_parts => return Block::Ready,
            _ => {}
        }
        // "greater than the Media Sequence Number of the last Media Segment
        // in the current Playlist plus two": the last is next - 1.
        if msn > next + 1 {
            return Block::TooFar(format!(
                "_HLS_msn={msn} is more than two segments past the last one listed ({})",
                i128::from(next) - 1
            ));
        }
        if let (Some(p), Some(pt), Some(td)) = (part, self.part_target, self.target_duration) {
            // Positions in parts, counting a segment as its expected parts.
            let per_segment = (td / pt).ceil().max(1.0) as u64;
            let last = (next * per_segment + self.trailing_parts) as i128 - 1;
            let asked = i128::from(msn) * i128::from(per_segment) + i128::from(p.min(MAX_SEQUENCE));
            let limit = if pt < 1.0 {
                (3.0 / pt).floor() as i128
            } else {
                3
            };
            if asked - last > limit {
                return Block::TooFar(format!(
                    "_HLS_part={p} of segment {msn} is more than {limit} parts past the last one listed"
                ));
            }
        }
        Block::Hold
    }
}

fn number(tag: &'static str, v: &str) -> Result<f64, PlaylistError> {
    // EXTINF-like values may carry a title after a comma.
    let v = v.split(',').next().unwrap_or_default().trim();
    match v.parse::<f64>() {
        Ok(n) if (0.0..1e9).contains(&n) => Ok(n),
        _ => Err(PlaylistError::Tag {
            tag,
            why: format!("{v:?} is not a non-negative decimal number"),
        }),
    }
}

/// An attribute list (`A=1,B="x,y",C=NO`) as (name, value) pairs, quotes
/// removed.
fn attributes(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, n)) => (v, n),
                None => (q, ""),
            }
        } else {
            after.split_once(',').map_or((after, ""), |(v, n)| (v, n))
        };
        out.push((name.trim(), value));
        rest = next.trim_start_matches(',').trim_start();
    }
    out
}

/// The files a playlist lists as media a player may fetch now: segment
/// URIs, `EXT-X-PART` and `EXT-X-MAP` URIs — not `EXT-X-PRELOAD-HINT`s,
/// which name files that may still be on their way. As written.
pub fn listed_uris(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| match l.strip_prefix('#') {
            None => Some(l),
            Some(_) => ["#EXT-X-PART:", "#EXT-X-MAP:"]
                .iter()
                .find_map(|tag| l.strip_prefix(tag))
                .and_then(|a| attr(&attributes(a), "URI")),
        })
        .collect()
}

fn attr<'a>(attrs: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Tags that describe the whole playlist rather than the segment after
/// them: never skipped by a delta update.
const PLAYLIST_TAGS: &[&str] = &[
    "#EXTM3U",
    "#EXT-X-VERSION",
    "#EXT-X-TARGETDURATION",
    "#EXT-X-MEDIA-SEQUENCE",
    "#EXT-X-DISCONTINUITY-SEQUENCE",
    "#EXT-X-PLAYLIST-TYPE",
    "#EXT-X-SERVER-CONTROL",
    "#EXT-X-PART-INF",
    "#EXT-X-INDEPENDENT-SEGMENTS",
    "#EXT-X-START",
    "#EXT-X-DEFINE",
    "#EXT-X-I-FRAMES-ONLY",
    "#EXT-X-ENDLIST",
    "#EXT-X-PRELOAD-HINT",
    "#EXT-X-RENDITION-REPORT",
    // Kept, not skipped: the edge does not track which date ranges a
    // publisher removed, so it never claims RECENTLY-REMOVED-DATERANGES.
    "#EXT-X-DATERANGE",
];

/// The delta update of `text` (parsed as `p`) for `_HLS_skip=YES` or `v2`:
/// the segments whose end is at least the Skip Boundary before the
/// playlist's end replaced by `EXT-X-SKIP` (§6.2.5.1). None if the
/// playlist does not offer delta updates or nothing is old enough; then
/// the whole playlist is the answer.
pub fn delta(text: &str, p: &Playlist) -> Option<String> {
    let boundary = p.control.can_skip_until?;
    // Segment blocks: the lines of each segment up to its URI; playlist
    // tags apart.
    let mut header: Vec<&str> = Vec::new();
    let mut blocks: Vec<(Vec<&str>, f64)> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut duration = 0.0;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let tag = t.split_once(':').map_or(t, |(tag, _)| tag);
        if t.starts_with('#') && PLAYLIST_TAGS.contains(&tag) {
            header.push(line);
            continue;
        }
        if tag == "#EXTINF" {
            duration = number("EXTINF", t.split_once(':').map_or("", |x| x.1)).unwrap_or(0.0);
        }
        current.push(line);
        if !t.starts_with('#') {
            blocks.push((std::mem::take(&mut current), duration));
            duration = 0.0;
        }
    }
    // `current` now holds the segment being made (its parts): never skipped.
    let total: f64 = blocks.iter().map(|(_, d)| d).sum();
    let mut start = 0.0;
    let mut skipped = 0usize;
    for (_, d) in &blocks {
        if total - (start + d) < boundary {
            break;
        }
        start += d;
        skipped += 1;
    }
    if skipped == 0 {
        return None;
    }
    // The last EXT-X-MAP / EXT-X-KEY of what is skipped still applies to
    // what follows unless a kept segment restates it.
    let carried = |name: &str| {
        blocks[..skipped]
            .iter()
            .flat_map(|(lines, _)| lines.iter())
            .rev()
            .find(|l| l.trim().starts_with(name))
            .copied()
    };
    let first_kept: &[&str] = blocks.get(skipped).map_or(&current[..], |(l, _)| &l[..]);
    let restated = |name: &str| first_kept.iter().any(|l| l.trim().starts_with(name));
    let mut out = String::with_capacity(text.len());
    for line in &header {
        // The header tags stay first, the trailing ones (hints, reports,
        // ENDLIST) last.
        if is_trailing_tag(line) {
            continue;
        }
        if let Some(v) = line.trim().strip_prefix("#EXT-X-VERSION:") {
            let v = v.trim().parse::<u32>().unwrap_or(0).max(9);
            out.push_str(&format!("#EXT-X-VERSION:{v}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
            if line.trim() == "#EXTM3U" && !text.contains("#EXT-X-VERSION:") {
                out.push_str("#EXT-X-VERSION:9\n");
            }
        }
    }
    out.push_str(&format!("#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}\n"));
    for name in ["#EXT-X-MAP", "#EXT-X-KEY"] {
        if let Some(l) = carried(name).filter(|_| !restated(name)) {
            out.push_str(l);
            out.push('\n');
        }
    }
    for (lines, _) in &blocks[skipped..] {
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    for l in &current {
        out.push_str(l);
        out.push('\n');
    }
    for line in header.iter().filter(|l| is_trailing_tag(l)) {
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

fn is_trailing_tag(line: &str) -> bool {
    let t = line.trim();
    [
        "#EXT-X-PRELOAD-HINT",
        "#EXT-X-RENDITION-REPORT",
        "#EXT-X-ENDLIST",
    ]
    .iter()
    .any(|tag| t.starts_with(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A playlist as the test publisher writes one: 2 s segments of four
    /// 0.5 s parts, parts listed for the newest segments.
    fn ll(first: u64, complete: u64, trailing: u64) -> String {
        let mut s = String::from(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.0,PART-HOLD-BACK=1.5\n\
             #EXT-X-PART-INF:PART-TARGET=0.5\n",
        );
        s += &format!("#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-MAP:URI=\"init.mp4\"\n");
        for msn in first..first + complete {
            if msn + 2 >= first + complete {
                for i in 0..4 {
                    s += &format!("#EXT-X-PART:DURATION=0.5,URI=\"s{msn}.{i}.m4s\"");
                    s += if i == 0 { ",INDEPENDENT=YES\n" } else { "\n" };
                }
            }
            s += &format!("#EXTINF:2.0,\ns{msn}.m4s\n");
        }
        let next = first + complete;
        for i in 0..trailing {
            s += &format!("#EXT-X-PART:DURATION=0.5,URI=\"s{next}.{i}.m4s\"\n");
        }
        s += &format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s{next}.{trailing}.m4s\"\n");
        s
    }

    #[test]
    fn a_low_latency_playlist_is_read() {
        let p = Playlist::parse(&ll(10, 8, 2)).unwrap();
        assert_eq!(p.media_sequence, 10);
        assert_eq!(p.segments, 8);
        assert_eq!(p.next_msn(), 18);
        assert_eq!(p.trailing_parts, 2);
        assert_eq!(p.part_target, Some(0.5));
        assert_eq!(p.hints, ["s18.2.m4s"]);
        assert!(p.control.can_block_reload);
        assert_eq!(p.control.can_skip_until, Some(12.0));
        assert!(!p.ended);
    }

    #[test]
    fn a_blocking_reload_is_answered_held_or_refused_as_the_spec_says() {
        let p = Playlist::parse(&ll(10, 8, 2)).unwrap();
        // Complete segments, and parts listed of the one being made.
        assert_eq!(p.block(17, None), Block::Ready);
        assert_eq!(p.block(12, Some(3)), Block::Ready);
        assert_eq!(p.block(18, Some(1)), Block::Ready);
        // Not yet listed: held.
        assert_eq!(p.block(18, None), Block::Hold);
        assert_eq!(p.block(18, Some(2)), Block::Hold);
        assert_eq!(p.block(19, None), Block::Hold);
        // More than two segments past the last listed (17): refused.
        assert!(matches!(p.block(20, None), Block::TooFar(_)));
        // Advance Part Limit at a 0.5 s part target: 6 parts.
        assert_eq!(p.block(19, Some(3)), Block::Hold);
        assert!(matches!(p.block(19, Some(4)), Block::TooFar(_)));
        assert!(matches!(p.block(18, Some(u64::MAX)), Block::TooFar(_)));
        // An ended stream answers at once.
        let ended = Playlist::parse(&format!("{}#EXT-X-ENDLIST\n", ll(0, 3, 0))).unwrap();
        assert_eq!(ended.block(19, None), Block::Ready);
        // Without parts, _HLS_part is ignored.
        let plain = Playlist::parse(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n#EXTINF:2,\na.ts\n",
        )
        .unwrap();
        assert_eq!(plain.block(4, Some(7)), Block::Ready);
        assert_eq!(plain.block(5, Some(0)), Block::Hold);
    }

    #[test]
    fn inconsistent_server_control_and_parts_are_refused() {
        let base = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n";
        for (extra, want) in [
            (
                "#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=6\n",
                "less than six target durations",
            ),
            ("#EXT-X-SERVER-CONTROL:HOLD-BACK=4\n", "less than three"),
            (
                "#EXT-X-SERVER-CONTROL:CAN-SKIP-DATERANGES=YES\n",
                "needs CAN-SKIP-UNTIL",
            ),
            (
                "#EXT-X-PART-INF:PART-TARGET=0.5\n",
                "PART-HOLD-BACK is required",
            ),
            (
                "#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-SERVER-CONTROL:PART-HOLD-BACK=0.9\n",
                "less than two part targets",
            ),
            (
                "#EXT-X-PART:DURATION=0.5,URI=\"a.m4s\"\n",
                "need EXT-X-PART-INF",
            ),
            (
                "#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-SERVER-CONTROL:PART-HOLD-BACK=1.5\n\
                 #EXT-X-PART:URI=\"a.m4s\"\n",
                "DURATION is required",
            ),
            ("#EXT-X-PRELOAD-HINT:TYPE=PART\n", "URI is required"),
            (
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"a\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"b\"\n",
                "more than one hint",
            ),
            ("#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n", "delta update"),
            ("#EXT-X-MEDIA-SEQUENCE:-1\n", "not a decimal integer"),
        ] {
            let e = Playlist::parse(&format!("{base}{extra}")).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
        assert_eq!(Playlist::parse("hello"), Err(PlaylistError::Header));
        assert!(
            Playlist::parse("#EXTM3U\n#EXTINF:2,\na.ts\n")
                .unwrap_err()
                .to_string()
                .contains("TARGETDURATION")
        );
        // What ffmpeg's hls muxer writes passes.
        Playlist::parse(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXTINF:2.000000,\nindex0.ts\n#EXT-X-ENDLIST\n",
        )
        .unwrap();
    }

    #[test]
    fn a_delta_update_skips_only_what_is_past_the_skip_boundary() {
        let text = ll(10, 12, 1);
        let p = Playlist::parse(&text).unwrap();
        let d = delta(&text, &p).unwrap();
        // 12 segments of 2 s = 24 s, boundary 12 s: the first 6 end at
        // least 12 s before the end and are skipped.
        assert!(d.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=6\n"), "{d}");
        assert!(!d.contains("s15.m4s\n") && d.contains("s16.m4s\n"), "{d}");
        assert!(d.starts_with("#EXTM3U\n#EXT-X-VERSION:9\n"), "{d}");
        // The init segment still applies to what is kept.
        assert!(d.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"), "{d}");
        // Parts, hint and media sequence stay.
        assert!(d.contains("#EXT-X-MEDIA-SEQUENCE:10\n"));
        assert!(d.contains("s22.0.m4s"));
        assert!(
            d.trim_end()
                .ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s22.1.m4s\"")
        );
        // Read as a client would: skipped + listed = the whole playlist.
        let listed = d.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(listed + 6, 12);
        // Too short to skip anything, or no CAN-SKIP-UNTIL: no delta.
        let short = ll(0, 6, 0);
        assert_eq!(delta(&short, &Playlist::parse(&short).unwrap()), None);
        let plain = text.replace("CAN-SKIP-UNTIL=12.0,", "");
        assert_eq!(delta(&plain, &Playlist::parse(&plain).unwrap()), None);
    }

    #[test]
    fn attribute_lists_keep_quoted_commas() {
        assert_eq!(
            attributes("URI=\"a,b.m4s\",DURATION=0.5,INDEPENDENT=YES"),
            [
                ("URI", "a,b.m4s"),
                ("DURATION", "0.5"),
                ("INDEPENDENT", "YES")
            ]
        );
    }

    #[test]
    fn listed_uris_are_segments_parts_and_the_map_not_hints() {
        let text = ll(0, 3, 2);
        let uris = listed_uris(&text);
        assert_eq!(uris.first(), Some(&"init.mp4"));
        assert!(uris.contains(&"s0.m4s"), "{uris:?}");
        assert!(uris.contains(&"s3.1.m4s"), "{uris:?}");
        let hints = Playlist::parse(&text).unwrap().hints;
        assert!(!hints.is_empty());
        for h in &hints {
            assert!(!uris.contains(&h.as_str()), "hint {h} listed");
        }
        assert_eq!(
            listed_uris("#EXTM3U\n#EXTINF:2,\na.ts\n#EXTINF:2,\nb.ts\n"),
            ["a.ts", "b.ts"]
        );
    }
}
