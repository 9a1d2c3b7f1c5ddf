#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `dcdn` command line as scripts see it: exit codes, `--json` shapes,
//! `fetch -o -` and `--continue`, the `DCDN_*` URL variables, and silence on
//! standard error when it is not a terminal.
//!
//! The binary talks to a stub origin and edge served from this process, so
//! each case takes milliseconds and can make the server misbehave on purpose
//! (wrong token, wrong ETag, wrong bytes).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

const TOKEN: &str = "good-token";

#[derive(Default)]
struct Stub {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    /// Every `Range` header the edge was sent.
    ranges: Mutex<Vec<String>>,
    /// Bodies of `POST /ok/v1/keys`.
    key_posts: Mutex<Vec<serde_json::Value>>,
    /// Uploads received per name.
    puts: Mutex<HashMap<String, usize>>,
}

type S = State<Arc<Stub>>;

fn digest(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// The origin's ingest API: bearer auth, stores the object, answers like
/// the real one (`len`, `chunks`, `digest`, ...).
async fn put_object(State(s): S, Path(name): Path<String>, h: HeaderMap, body: Bytes) -> Response {
    let n = {
        let mut puts = s.puts.lock();
        let n = puts.entry(name.clone()).or_default();
        *n += 1;
        *n
    };
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return (StatusCode::UNAUTHORIZED, r#"{"code":"unauthorized"}"#).into_response();
    }
    // Names starting `flaky` find the origin restarting for two uploads.
    if name.starts_with("flaky") && n <= 2 {
        return (StatusCode::SERVICE_UNAVAILABLE, r#"{"code":"draining"}"#).into_response();
    }
    let reply = serde_json::json!({
        "name": name, "stream": name, "len": body.len(), "chunk_size": 262144,
        "first_seq": 0, "chunks": body.len().div_ceil(262144), "digest": digest(&body),
    });
    s.objects.lock().insert(name, body.to_vec());
    (StatusCode::CREATED, axum::Json(reply)).into_response()
}

/// The edge: ETag = BLAKE3, `Range: bytes=N-`. Names starting `corrupt`
/// get a flipped byte under the right ETag; the `/bad` edge serves other
/// bytes under their own (correct) ETag.
async fn get_object(State(s): S, Path(name): Path<String>, h: HeaderMap) -> Response {
    serve(&s, &name, &h, false)
}

async fn get_bad(State(s): S, Path(name): Path<String>, h: HeaderMap) -> Response {
    serve(&s, &name, &h, true)
}

fn serve(s: &Stub, name: &str, h: &HeaderMap, other_bytes: bool) -> Response {
    let Some(mut body) = s.objects.lock().get(name).cloned() else {
        return (StatusCode::NOT_FOUND, r#"{"code":"not_found"}"#).into_response();
    };
    if other_bytes {
        body.reverse();
    }
    let etag = format!("\"{}\"", digest(&body));
    if name.starts_with("corrupt") {
        body[0] ^= 1;
    }
    if let Some(r) = h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        s.ranges.lock().push(r.to_owned());
        let start: usize = r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap();
        let range = format!("bytes {start}-{}/{}", body.len() - 1, body.len());
        return (
            StatusCode::PARTIAL_CONTENT,
            [(header::ETAG, etag), (header::CONTENT_RANGE, range)],
            body[start..].to_vec(),
        )
            .into_response();
    }
    ([(header::ETAG, etag)], body).into_response()
}

async fn admin_status(h: HeaderMap) -> Response {
    match h.get(header::AUTHORIZATION) {
        None => (StatusCode::UNAUTHORIZED, r#"{"code":"unauthorized"}"#).into_response(),
        Some(_) => (StatusCode::FORBIDDEN, r#"{"code":"forbidden"}"#).into_response(),
    }
}

/// A healthy node's admin API under `/ok` (`role` edge, one active key).
async fn ok_status() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "name": "edge-0", "role": "edge", "version": "0.1.0", "uptime_seconds": 5,
        "config_hash": "x", "keyring_generation": 2, "active_key": "00000000000000aa",
        "peers": 3, "chunks": 10, "store_bytes": 1024,
    }))
}

async fn ok_store() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "chunks": 10, "bytes": 1024, "budget_bytes": 4096 }))
}

async fn ok_keys() -> axum::Json<serde_json::Value> {
    axum::Json(
        serde_json::json!({ "generation": 2, "active": "00000000000000aa",
        "keys": [{ "id": "00000000000000aa", "public_key": "ab", "state": "active", "can_sign_here": false }] }),
    )
}

async fn ok_add_key(
    State(s): S,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::Json<serde_json::Value> {
    s.key_posts.lock().push(body);
    axum::Json(serde_json::json!({ "generation": 3, "id": "00000000000000bb" }))
}

/// Serves the stub on a thread of its own; returns its base URL.
fn start_stub() -> (String, Arc<Stub>) {
    let stub = Arc::new(Stub::default());
    let app = Router::new()
        .route("/v1/objects/{*name}", get(get_object).put(put_object))
        .route("/bad/v1/objects/{*name}", get(get_bad))
        .route("/v1/status", get(admin_status))
        .route("/ok/v1/status", get(ok_status))
        .route("/ok/v1/store", get(ok_store))
        .route("/ok/v1/keys", get(ok_keys).post(ok_add_key))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(stub.clone());
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", std_listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (base, stub)
}

/// Runs `dcdn` with a clean environment for the `DCDN_*` variables, stdin
/// from `stdin`; stdout and stderr are pipes, never a terminal.
fn dcdn(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcdn"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "DCDN_ORIGIN",
        "DCDN_EDGE",
        "DCDN_ADMIN_URL",
        "DCDN_INGEST_TOKEN",
        "DCDN_ADMIN_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("running dcdn");
    if let Some(input) = stdin {
        use std::io::Write;
        // A command that fails before reading (a usage error) closes its
        // stdin: a broken pipe here is that, not a test failure.
        if let Err(e) = child.stdin.take().unwrap().write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dcdn-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Publishes `data` as `name` through the CLI; returns the output.
fn publish(base: &str, name: &str, data: &[u8], extra: &[&str]) -> Output {
    let mut args = vec![
        "publish", "-", "--name", name, "--origin", base, "--token", TOKEN,
    ];
    args.extend_from_slice(extra);
    dcdn(&args, &[], Some(data))
}

/// An origin that answers 503 (restarting in a rollout) gets a file again
/// until it takes it; standard input cannot be read twice and is sent once;
/// `--retries` bounds the tries.
#[test]
fn publish_sends_a_file_again_while_the_origin_is_unavailable() {
    let (base, stub) = start_stub();
    let dir = temp_dir("retry");
    let data = sample(300_000);
    let file = dir.join("f.bin");
    std::fs::write(&file, &data).unwrap();
    let f = file.to_str().unwrap();
    let args = |name: &'static str| -> Vec<&str> {
        vec![
            "publish", f, "--name", name, "--origin", &base, "--token", TOKEN,
        ]
    };
    let out = dcdn(&args("flaky-a.bin"), &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert_eq!(stub.puts.lock()["flaky-a.bin"], 3);
    assert!(stub.objects.lock()["flaky-a.bin"] == data);
    assert!(
        stderr.contains("503") && stderr.contains("sending again"),
        "{stderr}"
    );

    let out = publish(&base, "flaky-b.bin", &data, &[]);
    assert_ne!(code(&out), 0);
    assert_eq!(
        stub.puts.lock()["flaky-b.bin"],
        1,
        "standard input is sent once"
    );

    let mut once = args("flaky-c.bin");
    once.extend(["--retries", "1"]);
    let out = dcdn(&once, &[], None);
    assert_ne!(code(&out), 0);
    assert_eq!(stub.puts.lock()["flaky-c.bin"], 2);
    assert!(!stub.objects.lock().contains_key("flaky-c.bin"));

    // A refusal is final: no second try.
    let out = dcdn(
        &[
            "publish", f, "--name", "x.bin", "--origin", &base, "--token", "wrong",
        ],
        &[],
        None,
    );
    assert_eq!(code(&out), 5);
    assert_eq!(stub.puts.lock()["x.bin"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_lists_every_exit_code() {
    let out = dcdn(&["--help"], &[], None);
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "2  usage",
        "3  check failed",
        "4  unreachable",
        "5  refused",
        "6  verification failed",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
}

#[test]
fn exit_codes_say_what_failed() {
    let (base, _) = start_stub();
    let dir = temp_dir("codes");
    let out_file = dir.join("out.bin");
    let out_path = out_file.to_str().unwrap();
    assert_eq!(code(&publish(&base, "ok.bin", b"hello", &[])), 0);

    // 2: usage, from clap and from the command's own checks.
    assert_eq!(code(&dcdn(&["frobnicate"], &[], None)), 2);
    assert_eq!(
        code(&dcdn(&["fetch", "ok.bin", "-o", out_path], &[], None)),
        2
    );
    assert_eq!(
        code(&dcdn(&["fetch", "http://x/y", "-o", "-", "-c"], &[], None)),
        2
    );
    let no_name = dcdn(
        &["publish", "-", "--origin", &base, "--token", TOKEN],
        &[],
        Some(b"x"),
    );
    assert_eq!(code(&no_name), 2);

    // 3: a config that does not validate.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[node]\nbogus = 1\n").unwrap();
    assert_eq!(
        code(&dcdn(
            &["config", "check", bad.to_str().unwrap()],
            &[],
            None
        )),
        3
    );

    // 4: nothing listens.
    let refused_port = dcdn(
        &["fetch", "http://127.0.0.1:1/v1/objects/x", "-o", out_path],
        &[],
        None,
    );
    assert_eq!(code(&refused_port), 4);
    let status = dcdn(&["status", "--admin", "http://127.0.0.1:1"], &[], None);
    assert_eq!(code(&status), 4);

    // 5: wrong token (401) and a read token on an admin route (403).
    let wrong = dcdn(
        &[
            "publish", "-", "--name", "x", "--origin", &base, "--token", "wrong",
        ],
        &[],
        Some(b"x"),
    );
    assert_eq!(
        code(&wrong),
        5,
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert_eq!(
        code(&dcdn(&["admin", "status", "--node", &base], &[], None)),
        5
    );
    let forbidden = dcdn(
        &["admin", "status", "--node", &base, "--token", "read"],
        &[],
        None,
    );
    assert_eq!(code(&forbidden), 5);

    // 6: bytes that do not match the ETag; nothing is left behind to use.
    assert_eq!(code(&publish(&base, "corrupt.bin", &sample(1000), &[])), 0);
    let url = format!("{base}/v1/objects/corrupt.bin");
    let corrupt = dcdn(&["fetch", &url, "-o", out_path], &[], None);
    assert_eq!(
        code(&corrupt),
        6,
        "{}",
        String::from_utf8_lossy(&corrupt.stderr)
    );
    assert!(!out_file.exists());
    assert!(!dir.join("out.bin.part").exists());

    // 1: anything else, e.g. an object the edge does not have.
    let missing = dcdn(
        &["fetch", &format!("{base}/v1/objects/nope"), "-o", out_path],
        &[],
        None,
    );
    assert_eq!(code(&missing), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_exits_0_when_every_edge_serves_the_bytes_and_3_when_one_does_not() {
    let (base, _) = start_stub();
    let check = |edges: &[String], json: bool| {
        let mut args = vec![
            "check".to_owned(),
            "--origin".into(),
            base.clone(),
            "--token".into(),
            TOKEN.into(),
            "--object-bytes".into(),
            "300000".into(),
            "--live-pieces".into(),
            "0".into(),
        ];
        for e in edges {
            args.extend(["--edge".to_owned(), e.clone()]);
        }
        if json {
            args.push("--json".into());
        }
        dcdn(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
            None,
        )
    };
    let good = check(std::slice::from_ref(&base), false);
    let text = String::from_utf8_lossy(&good.stdout);
    assert_eq!(code(&good), 0, "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
    assert!(text.contains("FIGURE publish_to_last_edge_ms"), "{text}");

    let bad = check(&[base.clone(), format!("{base}/bad")], true);
    assert_eq!(code(&bad), 3);
    let report = stdout_json(&bad);
    assert_eq!(report["ok"], false);
    assert_eq!(report["passed"], 2);
    assert_eq!(report["failed"], 1);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    for o in outcomes {
        assert!(o["what"].is_string() && o["ok"].is_boolean() && o["detail"].is_string());
    }
    assert_eq!(outcomes[2]["ok"], false);
    assert!(report["figures"].is_array());
}

#[test]
fn publish_and_fetch_json_shapes() {
    let (base, _) = start_stub();
    let dir = temp_dir("json");
    let data = sample(700_000);
    let out = publish(&base, "dir/a.bin", &data, &["--json"]);
    assert_eq!(code(&out), 0);
    let p = stdout_json(&out);
    assert_eq!(p["name"], "dir/a.bin");
    assert_eq!(p["kind"], "object");
    assert_eq!(p["bytes_sent"], 700_000);
    assert_eq!(p["url"], format!("{base}/v1/objects/dir/a.bin"));
    assert_eq!(p["origin"]["digest"], digest(&data));

    let file = dir.join("a.bin");
    let url = format!("{base}/v1/objects/dir/a.bin");
    let out = dcdn(
        &["fetch", &url, "-o", file.to_str().unwrap(), "--json"],
        &[],
        None,
    );
    assert_eq!(code(&out), 0);
    let f = stdout_json(&out);
    assert_eq!(f["url"], url);
    assert_eq!(f["output"], file.to_str().unwrap());
    assert_eq!(f["bytes"], 700_000);
    assert_eq!(f["resumed_from"], 0);
    assert_eq!(f["blake3"], digest(&data));
    assert_eq!(f["verified"], true);
    assert_eq!(std::fs::read(&file).unwrap(), data);

    let cfg = dcdn(
        &[
            "config",
            "check",
            "--json",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/dcdn.toml"),
        ],
        &[],
        None,
    );
    assert_eq!(code(&cfg), 0, "{}", String::from_utf8_lossy(&cfg.stderr));
    let c = stdout_json(&cfg);
    assert_eq!(c["valid"], true);
    assert!(c["config_hash"].as_str().unwrap().len() == 16);
    assert!(c["config"]["node"].is_object());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fetch_writes_to_stdout_and_resumes_a_part_file_with_range() {
    let (base, stub) = start_stub();
    let dir = temp_dir("resume");
    let data = sample(500_000);
    assert_eq!(code(&publish(&base, "r.bin", &data, &[])), 0);

    // `-o -`: the object on stdout, nothing else there.
    let env = [("DCDN_EDGE", base.as_str())];
    let out = dcdn(&["fetch", "r.bin", "-o", "-"], &env, None);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == data, "stdout is not the object");

    // Half a download in FILE.part: `-c` asks for the rest only.
    let file = dir.join("r.bin");
    let part = dir.join("r.bin.part");
    std::fs::write(&part, &data[..200_000]).unwrap();
    let out = dcdn(
        &[
            "fetch",
            "r.bin",
            "-o",
            file.to_str().unwrap(),
            "-c",
            "--json",
        ],
        &env,
        None,
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stub.ranges.lock().as_slice(), ["bytes=200000-"]);
    assert_eq!(stdout_json(&out)["resumed_from"], 200_000);
    assert!(
        std::fs::read(&file).unwrap() == data,
        "resumed file differs"
    );
    assert!(!part.exists());

    // A part file that is not a prefix of the object fails verification
    // and is removed, so the next try starts clean.
    std::fs::write(&part, vec![0u8; 1000]).unwrap();
    let _ = std::fs::remove_file(&file);
    let out = dcdn(
        &["fetch", "r.bin", "-o", file.to_str().unwrap(), "-c"],
        &env,
        None,
    );
    assert_eq!(code(&out), 6);
    assert!(!part.exists() && !file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn url_flags_read_dcdn_origin_edge_and_admin_url() {
    let (base, _) = start_stub();
    let env = [("DCDN_ORIGIN", base.as_str()), ("DCDN_INGEST_TOKEN", TOKEN)];
    let out = dcdn(
        &["publish", "-", "--name", "env.bin"],
        &env,
        Some(b"from env"),
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = dcdn(
        &["fetch", "env.bin", "-o", "-"],
        &[("DCDN_EDGE", &base)],
        None,
    );
    assert_eq!(out.stdout, b"from env");
    // The stub's admin answers 401 without a token: proof the URL was used.
    let out = dcdn(&["admin", "status"], &[("DCDN_ADMIN_URL", &base)], None);
    assert_eq!(code(&out), 5);
}

#[test]
fn no_progress_output_when_stderr_is_not_a_terminal() {
    let (base, _) = start_stub();
    let dir = temp_dir("quiet");
    let data = sample(3 * 1024 * 1024);
    let file = dir.join("big.bin");
    std::fs::write(&file, &data).unwrap();
    // Publish reads a file with a known size (the bar's case) and fetch
    // streams it back: both must leave stderr empty in a pipe.
    let published = dcdn(
        &[
            "publish",
            file.to_str().unwrap(),
            "--origin",
            &base,
            "--token",
            TOKEN,
        ],
        &[],
        None,
    );
    assert_eq!(
        code(&published),
        0,
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert!(
        published.stderr.is_empty(),
        "publish wrote to stderr: {:?}",
        String::from_utf8_lossy(&published.stderr)
    );
    let fetched = dcdn(
        &[
            "fetch",
            &format!("{base}/v1/objects/big.bin"),
            "-o",
            dir.join("copy").to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(code(&fetched), 0);
    assert!(
        fetched.stderr.is_empty(),
        "fetch wrote to stderr: {:?}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_and_admin_json_shapes() {
    let (base, stub) = start_stub();
    let ok = format!("{base}/ok");
    let out = dcdn(&["status", "--admin", &ok, "--json"], &[], None);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let st = stdout_json(&out);
    assert_eq!(st["rotation"], "steady");
    let node = &st["nodes"][0];
    assert_eq!(node["admin"], ok);
    assert_eq!(node["name"], "edge-0");
    assert_eq!(node["role"], "edge");
    assert_eq!(node["peers"], 3);
    assert_eq!(node["store_bytes"], 1024);
    assert_eq!(node["store_budget_bytes"], 4096);
    assert_eq!(node["active_key"], "00000000000000aa");
    assert_eq!(node["trusted_keys"], 0);
    assert!(node.get("error").is_none());
    // The table names the node and the store fill.
    let out = dcdn(&["status"], &[("DCDN_ADMIN_URL", &ok)], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("edge-0") && table.contains("(25%)"),
        "{table}"
    );

    let key = "ab".repeat(32);
    let out = dcdn(
        &["admin", "--node", &ok, "--token", "t", "keys", "add", &key],
        &[],
        None,
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["id"], "00000000000000bb");
    assert_eq!(stub.key_posts.lock()[0]["public_key"], key);
}

#[test]
fn version_names_the_commit_and_completions_and_man_pages_are_generated() {
    let out = dcdn(&["--version"], &[], None);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("dcdn 0.") && version.contains("(commit "),
        "{version}"
    );
    let out = dcdn(&["completion", "bash"], &[], None);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fetch"));
    let dir = temp_dir("man");
    let out = dcdn(&["man", "--out", dir.to_str().unwrap()], &[], None);
    assert_eq!(code(&out), 0);
    let page = std::fs::read_to_string(dir.join("dcdn-fetch.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("continue"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);
}
