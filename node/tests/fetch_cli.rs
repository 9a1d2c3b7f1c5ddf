#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `dcdn fetch` against servers that misbehave: it must give up on a
//! stalled server, and never leave a truncated or unverified body in place
//! of the file that was there.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// What the one-shot server does after reading the request.
#[derive(Clone, Copy)]
enum Script {
    /// Headers, then nothing, holding the connection open.
    StallBeforeHeaders,
    /// `Content-Length: 1000`, 10 bytes, then nothing, connection open.
    StallMidBody,
    /// `Content-Length: 1000`, 10 bytes, then close.
    Truncated,
    /// The whole body, with an ETag that is not its BLAKE3.
    WrongEtag,
    /// The whole body and its true ETag.
    Good,
}

const BODY: &[u8] = b"the new bytes of the object";

fn serve_once(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let hold = || std::thread::sleep(Duration::from_secs(30));
        match script {
            Script::StallBeforeHeaders => hold(),
            Script::StallMidBody | Script::Truncated => {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                    .unwrap();
                if matches!(script, Script::StallMidBody) {
                    hold();
                }
            }
            Script::WrongEtag | Script::Good => {
                let etag = if matches!(script, Script::Good) {
                    blake3::hash(BODY).to_hex().to_string()
                } else {
                    "00".repeat(32)
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\n\r\n",
                    BODY.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(BODY).unwrap();
            }
        }
    });
    format!("http://{addr}/v1/objects/x")
}

/// Runs `dcdn fetch` into a file that holds "old"; returns whether it
/// succeeded, how long it took, what the file holds after, and stderr.
fn fetch(script: Script, tag: &str) -> (bool, Duration, Vec<u8>, String) {
    let dir = std::env::temp_dir().join(format!("dcdn-fetch-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("object.bin");
    std::fs::write(&out, b"old").unwrap();
    let url = serve_once(script);
    let start = Instant::now();
    let result = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args(["fetch", &url, "-o"])
        .arg(&out)
        .args(["--response-timeout-secs", "1", "--idle-timeout-secs", "1"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let after = std::fs::read(&out).unwrap();
    // Nothing but the output is left in the directory: no partial file.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("object.bin")], "{tag}");
    std::fs::remove_dir_all(&dir).unwrap();
    (
        result.status.success(),
        took,
        after,
        String::from_utf8_lossy(&result.stderr).into_owned(),
    )
}

#[test]
fn a_stalled_server_fails_the_fetch_within_its_timeouts() {
    for (script, tag) in [
        (Script::StallBeforeHeaders, "stall-headers"),
        (Script::StallMidBody, "stall-body"),
    ] {
        let (ok, took, after, err) = fetch(script, tag);
        assert!(!ok, "{tag}: a stalled fetch succeeded");
        assert!(took < Duration::from_secs(10), "{tag}: took {took:?}");
        assert!(
            err.contains("timed out") || err.contains("no byte"),
            "{tag}: {err}"
        );
        assert_eq!(after, b"old", "{tag}: the old file was touched");
    }
}

#[test]
fn a_truncated_or_unverified_body_never_replaces_the_old_file() {
    for (script, tag, says) in [
        (Script::Truncated, "truncated", "reading the body"),
        (Script::WrongEtag, "etag", "does not match the ETag"),
    ] {
        let (ok, _, after, err) = fetch(script, tag);
        assert!(!ok, "{tag}: succeeded");
        assert!(err.contains(says), "{tag}: {err}");
        assert_eq!(after, b"old", "{tag}: partial bytes replaced the old file");
    }
    let (ok, _, after, err) = fetch(Script::Good, "good");
    assert!(ok, "{err}");
    assert_eq!(after, BODY);
}

/// With `--continue` an interrupted fetch keeps what arrived in FILE.part
/// (the next `-c` asks for the rest with `Range`), exits 4 (unreachable),
/// and still leaves FILE alone.
#[test]
fn an_interrupted_continue_fetch_keeps_its_part() {
    let dir = std::env::temp_dir().join(format!("dcdn-fetch-keep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("object.bin");
    std::fs::write(&out, b"old").unwrap();
    let url = serve_once(Script::Truncated);
    let result = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args(["fetch", &url, "-c", "-o"])
        .arg(&out)
        .args(["--response-timeout-secs", "1", "--idle-timeout-secs", "1"])
        .output()
        .unwrap();
    assert_eq!(
        result.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("object.bin.part")).unwrap(),
        b"0123456789"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    std::fs::remove_dir_all(&dir).unwrap();
}
