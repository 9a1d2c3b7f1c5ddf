#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live video with the real encoder and the real player through a cluster
//! under stress (issue #16): ffmpeg publishes HLS to the origin with
//! `-method PUT` in real time, ffmpeg plays it from an edge, and the test
//! compares every decoded frame with the source (framemd5) while timing
//! when the player decoded each one. In-process origin and edges (real
//! QUIC, signatures, HTTP); relays that must die as the kernel kills
//! processes run as `dcdn run` children. ffmpeg comes from apt
//! (`scripts/test` installs it).

mod support;

use dcdn_node::config::{Bounded, NodeConfig, Role};
use dcdn_node::up::plan::Counts;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;

/// Seconds of media per HLS segment (the source has a keyframe every 2 s).
const SEGMENT_S: f64 = 2.0;
const FPS: f64 = 25.0;

fn ffmpeg() -> Command {
    let probe = Command::new("ffmpeg").arg("-version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "these tests need ffmpeg on PATH: apt-get install ffmpeg (scripts/test does)"
    );
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    c
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The frames' hashes of a framemd5 listing.
fn hashes(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
        .collect()
}

/// Encodes `secs` of test pattern once (a keyframe per segment) and returns
/// the file and the hash of every frame a player must decode from it.
/// `noisy`: temporal noise over the pattern, so the video costs a few
/// Mbit/s (~4.5 at 640x360) as camera pictures do (the bare pattern compresses to ~60 KB a
/// segment, too few packets for a loss test).
fn source(dir: &Path, secs: u32, noisy: bool) -> (PathBuf, Vec<String>) {
    let src = dir.join("src.ts");
    let mut enc = ffmpeg();
    let pattern = if noisy {
        format!("testsrc=size=640x360:rate={FPS},noise=alls=30:allf=t+u")
    } else {
        format!("testsrc=size=320x240:rate={FPS}")
    };
    enc.args(["-f", "lavfi", "-i"])
        .arg(pattern)
        .args([
            "-t",
            &secs.to_string(),
            "-c:v",
            "libx264",
            "-crf",
            "18",
            "-g",
            "50",
        ])
        .args([
            "-keyint_min",
            "50",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&src);
    run(enc, "encoding the source");
    let mut md5 = ffmpeg();
    md5.arg("-i").arg(&src).args(["-f", "framemd5", "-"]);
    let out = md5.output().unwrap();
    assert!(out.status.success());
    (src, hashes(&String::from_utf8_lossy(&out.stdout)))
}

/// ffmpeg publishing `src` in real time as HLS (2 s segments) to the origin.
fn publish(c: &TestCluster, src: &Path, stream: &str) -> Child {
    let mut p = ffmpeg();
    p.args(["-re", "-i"])
        .arg(src)
        .args([
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            "2",
            "-hls_list_size",
            "6",
        ])
        .args([
            "-hls_flags",
            "delete_segments",
            "-method",
            "PUT",
            "-headers",
        ])
        .arg(format!("Authorization: Bearer {}\r\n", c.plan.ingest_token))
        .arg(format!("{}/live/{stream}/index.m3u8", c.origin().http()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    p.spawn().unwrap()
}

/// A player reading from an edge: each decoded frame's hash with the
/// instant it came out of the decoder.
struct Player {
    child: Child,
    frames: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Player {
    /// `realtime`: play at the media's pace (`-re`), as a viewer watches,
    /// so a stall is a frozen picture; otherwise decode as fast as segments
    /// arrive. `start`: ffmpeg's `-live_start_index`.
    fn start(url: &str, realtime: bool, start: i32) -> Self {
        let mut p = ffmpeg();
        p.args(["-loglevel", "warning"]);
        if realtime {
            p.arg("-re");
        }
        p.args(["-live_start_index", &start.to_string(), "-i", url])
            .args(["-f", "framemd5", "-flush_packets", "1", "pipe:1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = p.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = frames.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                let hash = line.rsplit(',').next().unwrap().trim().to_string();
                sink.lock().unwrap().push((Instant::now(), hash));
            }
        });
        Self {
            child,
            frames,
            reader,
        }
    }

    fn decoded(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    /// Waits (up to `limit`) for the player to end; its frames and what it
    /// said on stderr.
    async fn finish(mut self, limit: Duration) -> (Vec<(Instant, String)>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                assert!(status.success(), "the player failed: {err}");
                self.reader.join().unwrap();
                let frames = std::mem::take(&mut *self.frames.lock().unwrap());
                return (frames, err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the player did not finish in {limit:?} ({} frames)",
                    self.decoded()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn wait_publisher(mut p: Child) {
    loop {
        if let Some(status) = p.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = p.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "the publisher failed: {err}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `url` answers 200.
async fn until_served(url: &str) {
    let client = dcdn_node::client::Client::new(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(url, None).await.is_err() {
        assert!(Instant::now() < deadline, "{url} never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The played frames are a run of the source's, in order, bit-identical:
/// where in the source the player started.
fn played_run_of_source(played: &[String], source: &[String], what: &str) -> usize {
    assert!(!played.is_empty(), "{what}: the player decoded nothing");
    let first = source
        .iter()
        .position(|h| *h == played[0])
        .unwrap_or_else(|| panic!("{what}: the first frame played is not in the source"));
    let want = &source[first..];
    if played != want {
        let at = played
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(played.len().min(want.len()));
        panic!(
            "{what}: from source frame {first} the player decoded {} frames, the source has {} more; first difference at {at}",
            played.len(),
            want.len()
        );
    }
    first
}

/// The longest time the player showed one frame: the largest gap between
/// two frames coming out of the decoder, less one frame's own duration.
fn longest_stall(frames: &[(Instant, String)]) -> Duration {
    frames
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs_f64(1.0 / FPS))
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dcdn-player-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The relay feeding the edge its pushes, as the edge's admin API says.
async fn push_upstream_of(admin: &str, token: &str) -> Option<String> {
    let client = dcdn_node::client::Client::new(Duration::from_secs(5));
    let resp = client
        .get(&format!("{admin}/v1/peers"), Some(token))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "relay" && p["push_upstream"] == true)
        .map(|p| p["name"].as_str().unwrap().to_string())
}

/// A relay SIGKILLed while a viewer watches: the edge notices when the
/// QUIC connection goes idle (`quic.idle_timeout_ms`, here 3 s), takes
/// pushes from the other relay, and catches up on what it missed. The
/// viewer (ffmpeg at real-time pace, one segment behind live) sees every
/// frame, bit-identical, and its longest frozen picture is bounded by the
/// failover time plus one segment (the player's playlist reload cadence)
/// and a second of slack. The same run's longest stall before the kill is
/// the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_stream_stalls_the_player_at_most_the_failover_time() {
    const IDLE_MS: u64 = 3_000;
    let dir = temp("relay-kill");
    let (src, reference) = source(&dir, 24, false);
    let (plan, cdir) = TestCluster::plan(
        "live-relay-kill",
        Counts {
            relays: 2,
            edges: 1,
        },
        |cfg: &mut NodeConfig| {
            cfg.quic.idle_timeout_ms = Bounded::new(IDLE_MS).unwrap();
            cfg.quic.keep_alive_ms = Bounded::new(500).unwrap();
        },
    );
    let mut c =
        TestCluster::start_planned_with_processes(plan, cdir, |_| {}, |r| r == Role::Relay).await;
    let edge = c.by_role(Role::Edge)[0];
    let playlist = format!("{}/live/cam/index.m3u8", c.nodes[edge].http());
    let publisher = publish(&c, &src, "cam");
    until_served(&playlist).await;
    let player = Player::start(&playlist, true, -1);
    // Watch for a while before the kill, for the baseline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while player.decoded() < (3.0 * SEGMENT_S * FPS) as usize {
        assert!(Instant::now() < deadline, "the player decoded too little");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (admin, token) = (c.nodes[edge].admin(), c.plan.admin_token.clone());
    let victim = push_upstream_of(&admin, &token)
        .await
        .expect("the edge takes pushes from a relay");
    let relay = c.nodes.iter().position(|n| n.name == victim).unwrap();
    let killed = Instant::now();
    c.nodes[relay].kill_process();
    // When the edge took pushes from the other relay.
    let failover = tokio::spawn({
        let victim = victim.clone();
        async move {
            loop {
                match push_upstream_of(&admin, &token).await {
                    Some(r) if r != victim => return Some(killed.elapsed()),
                    _ if killed.elapsed() > Duration::from_secs(30) => return None,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    });
    wait_publisher(publisher).await;
    let (frames, said) = player.finish(Duration::from_secs(60)).await;
    let failover = failover.await.unwrap().expect("the edge did not fail over");

    if !said.trim().is_empty() {
        println!("the player said: {said}");
    }
    let played: Vec<String> = frames.iter().map(|(_, h)| h.clone()).collect();
    let first = played_run_of_source(&played, &reference, "relay killed");
    let before: Vec<_> = frames.iter().filter(|f| f.0 < killed).cloned().collect();
    let after: Vec<_> = frames.iter().filter(|f| f.0 >= killed).cloned().collect();
    let baseline = longest_stall(&before);
    let stall = longest_stall(&frames[before.len().saturating_sub(1)..]);
    let bound = Duration::from_millis(IDLE_MS) + Duration::from_secs_f64(SEGMENT_S + 1.0);
    println!(
        "FIGURE relay killed mid-stream (idle timeout {IDLE_MS} ms, 2 s segments, player -re one segment behind live): \
         edge took pushes from the other relay {:.2} s after the kill; \
         {} frames from source frame {first} all bit-identical; longest stall before the kill {:.2} s, \
         from the kill on {:.2} s (bound {:.1} s); {} frames after the kill",
        failover.as_secs_f64(),
        played.len(),
        baseline.as_secs_f64(),
        stall.as_secs_f64(),
        bound.as_secs_f64(),
        after.len()
    );
    assert!(
        played.len() as f64 >= (reference.len() - first) as f64,
        "frames lost"
    );
    assert!(
        stall <= bound,
        "the player froze {stall:?} after the relay died; failover bound {bound:?}"
    );
    c.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// 5 % of packets both ways between relay and edge dropped (a seeded UDP
/// proxy, as `iptables -m statistic` would): FEC rebuilds the pushed
/// segments and the player decodes every frame the encoder sent, in order
/// and bit-identical. Fails if the proxy dropped nothing or the edge's
/// FEC rebuilt nothing (then the loss was not exercised).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_player_behind_5_percent_loss_sees_every_frame() {
    let dir = temp("loss");
    let (src, reference) = source(&dir, 12, true);
    let (c, proxy) = TestCluster::start_with_lossy_relay_link(
        "live-player-loss",
        Counts {
            relays: 1,
            edges: 1,
        },
        // 64 KB chunks: more FEC groups for the loss to hit.
        |cfg: &mut NodeConfig| cfg.origin.chunk_size_kb = Bounded::new(64).unwrap(),
        0.05,
    )
    .await;
    let edge = c.by_role(Role::Edge)[0];
    let playlist = format!("{}/live/cam/index.m3u8", c.nodes[edge].http());
    let publisher = publish(&c, &src, "cam");
    until_served(&playlist).await;
    let player = Player::start(&playlist, false, 0);
    wait_publisher(publisher).await;
    let (frames, said) = player.finish(Duration::from_secs(60)).await;
    // An edge that lists a segment it cannot serve shows as a 404 the
    // player retries (or skips the segment).
    assert!(said.trim().is_empty(), "the player hit errors: {said}");
    let played: Vec<String> = frames.iter().map(|(_, h)| h.clone()).collect();
    let first = played_run_of_source(&played, &reference, "5% loss");
    assert_eq!(first, 0, "the player started at frame {first}, not 0");
    let dropped = proxy
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    let e = &c.nodes[edge];
    let rebuilt = e.metric("dcdn_fec_groups_total", &[("outcome", "rebuilt")]);
    let complete = e.metric("dcdn_fec_groups_total", &[("outcome", "complete")]);
    let pulled = e.metric(
        "dcdn_chunks_total",
        &[("direction", "in"), ("path", "pull")],
    );
    let pushed = e.metric(
        "dcdn_chunks_total",
        &[("direction", "in"), ("path", "push")],
    );
    println!(
        "FIGURE player behind 5% loss: all {} frames bit-identical; proxy dropped {dropped} packets; \
         edge FEC groups complete {complete}, rebuilt {rebuilt}; chunks pushed {pushed}, pulled {pulled}; \
         longest gap between decoded frames {:.2} s",
        played.len(),
        longest_stall(&frames).as_secs_f64()
    );
    assert!(dropped > 100, "the proxy dropped only {dropped} packets");
    assert!(
        rebuilt > 0.0,
        "FEC rebuilt no group: the loss never hit a push"
    );
    c.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
