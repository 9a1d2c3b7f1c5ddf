#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin API on running nodes: auth on every route, metrics after a
//! real transfer, and a key rotation driven through it during a live stream.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use dcdn_node::admin::{AdminTokens, router};
use dcdn_node::client::Client;
use dcdn_node::config::Role;
use dcdn_node::crypto::Signer;
use dcdn_node::up::plan::Counts;
use http_body_util::BodyExt;
use std::time::Duration;
use support::cluster::TestCluster;
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";
const READ: &str = "read-secret";

async fn call(
    shared: &std::sync::Arc<dcdn_node::roles::node::Shared>,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let tokens = AdminTokens::plain(ADMIN, READ);
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let resp = router(shared.clone(), tokens, None)
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_answers_each_kind_of_caller_as_it_must() {
    let c = TestCluster::start(
        "admin-auth",
        Counts {
            relays: 0,
            edges: 1,
        },
        |_| {},
        |_| {},
    )
    .await;
    let shared = c.origin().running().shared.clone();
    let reads = [
        "/v1/status",
        "/v1/peers",
        "/v1/store",
        "/v1/config",
        "/v1/keys",
    ];
    for path in reads {
        assert_eq!(
            call(&shared, Method::GET, path, None, "").await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let (s, body) = call(&shared, Method::GET, path, Some("wrong"), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["code"], "bad_token");
        assert_eq!(
            call(&shared, Method::GET, path, Some(READ), "").await.0,
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(
            call(&shared, Method::GET, path, Some(ADMIN), "").await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let resp = router(shared.clone(), AdminTokens::default(), None)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path} is open");
    }
    let new_key = Signer::generate(&mut rand::rngs::OsRng);
    let add_body = format!(
        "{{\"public_key\":\"{}\"}}",
        hex::encode(new_key.public_key())
    );
    let id = new_key.key_id().to_string();
    let writes = [
        ("/v1/config/reload".to_owned(), String::new()),
        ("/v1/keys".to_owned(), add_body.clone()),
        (format!("/v1/keys/{id}/activate"), String::new()),
        (format!("/v1/keys/{id}/revoke"), String::new()),
    ];
    for (path, body) in &writes {
        let (s, b) = call(&shared, Method::POST, path, None, body).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(b["code"], "no_token");
        assert_eq!(
            call(&shared, Method::POST, path, Some("wrong"), body)
                .await
                .0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let (s, b) = call(&shared, Method::POST, path, Some(READ), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(b["code"], "forbidden");
    }
    // With the admin token: each does its job or says precisely why not.
    let (s, b) = call(&shared, Method::POST, "/v1/config/reload", Some(ADMIN), "").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_config_file"))
    );
    let (s, b) = call(&shared, Method::POST, "/v1/keys", Some(ADMIN), &add_body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["id"], id.as_str());
    let (s, b) = call(
        &shared,
        Method::POST,
        &format!("/v1/keys/{id}/activate"),
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_secret_key")),
        "an origin cannot sign with a key it lacks"
    );
    let (s, _) = call(
        &shared,
        Method::POST,
        &format!("/v1/keys/{id}/revoke"),
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(
        &shared,
        Method::POST,
        "/v1/keys",
        Some(ADMIN),
        "{\"public_key\":\"zz\"}",
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_public_key"))
    );
    let (s, b) = call(
        &shared,
        Method::POST,
        "/v1/keys/nothex/revoke",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_key_id"))
    );
    let (s, b) = call(&shared, Method::GET, "/v1/nope", Some(ADMIN), "").await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    c.stop().await;
}

/// Polls `cond` until it holds; fails the test, naming `what`, after 30 s.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One HTTP/1.1 exchange over a real socket with the `Authorization` header
/// exactly as given: status, `WWW-Authenticate` and body.
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let challenge = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with("www-authenticate:")
            .then(|| l["www-authenticate:".len()..].trim().to_owned())
    });
    (status, challenge, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_kept_hashed_checked_whatever_their_length_and_every_refusal_is_challenged_and_counted()
 {
    // A read token, stored as its digest, beside the planned admin token.
    let read_file = std::env::temp_dir().join(format!(
        "dcdn-read-token-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let read = "read-only-token-0123456789";
    std::fs::write(
        &read_file,
        dcdn_node::auth::Token::from_secret(read).unwrap().hashed(),
    )
    .unwrap();
    let rf = read_file.clone();
    let c = TestCluster::start(
        "admin-tokens",
        Counts {
            relays: 0,
            edges: 1,
        },
        move |cfg| cfg.admin.read_token_file = Some(rf.clone()),
        |_| {},
    )
    .await;
    let admin = std::fs::read_to_string(c.dir.join("admin-token")).unwrap();
    let ingest = c.plan.ingest_token.clone();
    // At rest the nodes hold digests only: no config names a file with a
    // token in it.
    for n in &c.nodes {
        for f in [
            n.config.admin.token_file.as_ref(),
            n.config.admin.read_token_file.as_ref(),
            n.config.origin.ingest_token_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let at_rest = std::fs::read_to_string(f).unwrap();
            assert!(at_rest.starts_with("sha256:"), "{}: {at_rest}", f.display());
            for t in [admin.as_str(), ingest.as_str(), read] {
                assert!(!at_rest.contains(t), "{} holds a token", f.display());
            }
        }
    }
    let origin = c.origin();
    let admin_addr = origin.running().admin_addr;
    let http_addr = origin.running().http_addr.unwrap();
    let counted = |api: &str, reason: &str| {
        origin.metric(
            "dcdn_auth_refused_total",
            &[("api", api), ("reason", reason)],
        )
    };
    let mut longer = admin.clone();
    longer.push('0');
    let shorter = &admin[..admin.len() - 1];
    let mut same_length = admin.clone().into_bytes();
    *same_length.last_mut().unwrap() ^= 1;
    let same_length = String::from_utf8(same_length).unwrap();
    // (Authorization, expected status, expected challenge error, metric reason)
    type Case<'a> = (Option<String>, u16, Option<&'a str>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (None, 401, None, Some("no_token")),
        (
            Some(format!("Bearer {same_length}")),
            401,
            Some("invalid_token"),
            Some("bad_token"),
        ),
        (
            Some(format!("Bearer {longer}")),
            401,
            Some("invalid_token"),
            Some("bad_token"),
        ),
        (
            Some(format!("Bearer {shorter}")),
            401,
            Some("invalid_token"),
            Some("bad_token"),
        ),
        (
            Some("Bearer ".to_owned()),
            401,
            Some("invalid_request"),
            Some("malformed_authorization"),
        ),
        (
            Some(format!("Basic {admin}")),
            401,
            Some("invalid_request"),
            Some("malformed_authorization"),
        ),
        (Some(format!("bearer {admin}")), 200, None, None),
        (Some(format!("BEARER  {admin}")), 200, None, None),
        (Some(format!("bearer {read}")), 200, None, None),
    ];
    for (auth, status, error, reason) in &cases {
        let before = reason.map(|r| counted("admin", r));
        let (s, challenge, body) = raw(admin_addr, "GET", "/v1/status", auth.as_deref(), "").await;
        assert_eq!(s, *status, "{auth:?}: {body}");
        if *status == 401 {
            let challenge = challenge.unwrap_or_else(|| panic!("{auth:?}: no WWW-Authenticate"));
            assert!(
                challenge.starts_with("Bearer realm=\"dcdn-admin\""),
                "{challenge}"
            );
            match error {
                Some(e) => assert!(challenge.contains(&format!("error=\"{e}\"")), "{challenge}"),
                None => assert!(!challenge.contains("error="), "{challenge}"),
            }
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["code"], reason.unwrap(), "{auth:?}");
            assert_eq!(
                counted("admin", reason.unwrap()),
                before.unwrap() + 1.0,
                "{auth:?}"
            );
        }
    }
    // The read token reads but cannot change the node.
    let before = counted("admin", "forbidden");
    let (s, challenge, body) = raw(
        admin_addr,
        "POST",
        "/v1/config/reload",
        Some(&format!("bearer {read}")),
        "",
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(challenge.unwrap().contains("insufficient_scope"));
    assert_eq!(counted("admin", "forbidden"), before + 1.0);
    // Nor any other write route: trusting, activating or revoking a key.
    let key_id = "00".repeat(8);
    for path in [
        "/v1/keys".to_owned(),
        format!("/v1/keys/{key_id}/activate"),
        format!("/v1/keys/{key_id}/revoke"),
    ] {
        let before = counted("admin", "forbidden");
        let (s, challenge, body) = raw(
            admin_addr,
            "POST",
            &path,
            Some(&format!("Bearer {read}")),
            "{}",
        )
        .await;
        assert_eq!(s, 403, "POST {path} with the read token: {body}");
        assert!(challenge.unwrap().contains("insufficient_scope"));
        assert_eq!(counted("admin", "forbidden"), before + 1.0, "{path}");
    }
    // And it reads: the routes the operator polls.
    for path in ["/v1/keys", "/v1/status"] {
        let (s, _, body) = raw(admin_addr, "GET", path, Some(&format!("Bearer {read}")), "").await;
        assert_eq!(s, 200, "GET {path} with the read token: {body}");
    }

    // Ingest: the same rules with its own token; nothing is published by a
    // refused request.
    let put = |auth: Option<String>| async move {
        raw(
            http_addr,
            "PUT",
            "/v1/objects/auth-probe",
            auth.as_deref(),
            "hello",
        )
        .await
    };
    let mut wrong = ingest.clone();
    wrong.push('x');
    for (auth, reason) in [
        (None, "no_token"),
        (Some(format!("Bearer {wrong}")), "bad_token"),
        (Some(format!("Bearer {admin}")), "bad_token"),
        (Some(format!("Bearer {read}")), "bad_token"),
        (Some(format!("Token {ingest}")), "malformed_authorization"),
    ] {
        let before = counted("ingest", reason);
        let (s, challenge, body) = put(auth.clone()).await;
        assert_eq!(s, 401, "{auth:?}: {body}");
        assert!(
            challenge
                .unwrap()
                .starts_with("Bearer realm=\"dcdn-ingest\""),
            "{auth:?}"
        );
        assert_eq!(counted("ingest", reason), before + 1.0, "{auth:?}");
    }
    let edge = c
        .nodes
        .iter()
        .find(|n| n.role == Role::Edge)
        .unwrap()
        .http();
    let client = Client::new(Duration::from_secs(20));
    assert!(
        client
            .get(&format!("{edge}/v1/objects/auth-probe"), None)
            .await
            .is_err(),
        "a refused PUT published nothing"
    );
    let (s, _, body) = put(Some(format!("bEaReR {ingest}"))).await;
    assert_eq!(s, 201, "{body}");
    let _ = std::fs::remove_file(read_file);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_after_a_real_transfer_and_parse_as_prometheus_text() {
    let c = TestCluster::start(
        "admin-metrics",
        Counts {
            relays: 1,
            edges: 1,
        },
        |_| {},
        |_| {},
    )
    .await;
    let client = Client::new(Duration::from_secs(20));
    let data = Bytes::from(vec![42u8; 700_000]);
    client
        .put_stream(
            &format!("{}/v1/objects/m.bin", c.origin().http()),
            Some(&c.plan.ingest_token),
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(data.clone())]),
        )
        .await
        .unwrap();
    let edge = &c.nodes[c.by_role(Role::Edge)[0]];
    let got = client
        .get(&format!("{}/v1/objects/m.bin", edge.http()), None)
        .await
        .unwrap();
    assert_eq!(got.body, data);
    let text = client
        .get(&format!("{}/metrics", edge.admin()), None)
        .await
        .unwrap()
        .body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(value("dcdn_chunks_verified_total", None) >= 3.0);
    assert!(value("dcdn_bytes_total", Some(("direction", "in"))) >= 700_000.0);
    assert!(value("dcdn_store_chunks", None) >= 3.0);
    assert!(value("dcdn_keyring_generation", None) >= 1.0);
    // prometheus-parse's label regex trips on `{` inside a label value, so
    // this one is read with the plain text reader.
    assert!(
        support::cluster::metric_value(
            &text,
            "dcdn_http_requests_total",
            &[("route", "/v1/objects/{*name}"), ("status", "200")]
        ) >= 1.0
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE dcdn_")) {
        let name = line.split(' ').nth(2).unwrap_or_default();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help text"
        );
    }
    let relay_text = client
        .get(
            &format!("{}/metrics", c.nodes[c.by_role(Role::Relay)[0]].admin()),
            None,
        )
        .await
        .unwrap()
        .body;
    assert!(String::from_utf8_lossy(&relay_text).contains("dcdn_quic_rtt_seconds"));
    c.stop().await;
}

async fn admin_post(client: &Client, base: &str, path: &str, token: &str, body: &str) {
    let headers = [(
        axum::http::header::CONTENT_TYPE,
        "application/json".to_owned(),
    )];
    client
        .send(
            Method::POST,
            &format!("{base}{path}"),
            Some(token),
            &headers,
            Body::from(body.to_owned()),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {base}{path}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotation_through_the_admin_api_during_a_live_stream_loses_nothing() {
    let c = TestCluster::start(
        "rotate",
        Counts {
            relays: 1,
            edges: 2,
        },
        |_| {},
        |_| {},
    )
    .await;
    let token = std::fs::read_to_string(c.dir.join("admin-token")).unwrap();
    let client = Client::new(Duration::from_secs(20));
    // The new key's secret goes where the origin's config can load it.
    let new_key = Signer::generate(&mut rand::rngs::OsRng);
    let origin_shared = c.origin().running().shared.clone();
    let key_path = c.dir.join("signing-2.key");
    new_key.save(&key_path).unwrap();
    origin_shared.reload_signers(&[key_path]).unwrap();
    let old_id = origin_shared.keys.read().active().unwrap();

    // Stream continuously while rotating.
    let origin = c.origin().http();
    let ingest = c.plan.ingest_token.clone();
    let streamer = tokio::spawn(async move {
        let client = Client::new(Duration::from_secs(60));
        let pieces = (0..150u32).map(|i| Bytes::from(vec![i as u8; 4000]));
        let paced = futures_util::stream::unfold(pieces, |mut it| async move {
            let next = it.next()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok::<_, std::io::Error>(next), it))
        });
        let resp = client
            .put_stream(&format!("{origin}/v1/streams/rot"), Some(&ingest), paced)
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&resp.body).unwrap()
    });
    let stream = dcdn_node::chunk::StreamId::live("rot");
    let held = |n: &support::cluster::TestNode| -> Vec<u64> {
        n.running().shared.store.seqs(stream, 1 << 16)
    };
    let edges = c.by_role(Role::Edge);
    // The stream is flowing before anything changes.
    wait_until("the origin publishes the stream", || {
        held(c.origin()).len() >= 5
    })
    .await;
    let add = format!(
        "{{\"public_key\":\"{}\"}}",
        hex::encode(new_key.public_key())
    );
    // 1. Trust the new key everywhere.
    for n in &c.nodes {
        admin_post(&client, &n.admin(), "/v1/keys", &token, &add).await;
    }
    // Chunks signed with the old key reach every edge while both are trusted.
    let now = held(c.origin()).len();
    wait_until("edges take more old-key chunks", || {
        edges.iter().all(|&e| held(&c.nodes[e]).len() >= now)
    })
    .await;
    // 2. The origin signs with it (others follow the ring state).
    let id = new_key.key_id().to_string();
    for n in &c.nodes {
        admin_post(
            &client,
            &n.admin(),
            &format!("/v1/keys/{id}/activate"),
            &token,
            "",
        )
        .await;
    }
    // 3. After chunks signed with the old key have drained, revoke it:
    // everything the origin held once it signed with the new key (a
    // superset of the old key's chunks) is at every edge.
    let signed_before = held(c.origin());
    wait_until("old-key chunks drain to the edges", || {
        edges.iter().all(|&e| {
            let h = held(&c.nodes[e]);
            signed_before.iter().all(|s| h.binary_search(s).is_ok())
        })
    })
    .await;
    for n in &c.nodes {
        admin_post(
            &client,
            &n.admin(),
            &format!("/v1/keys/{old_id}/revoke"),
            &token,
            "",
        )
        .await;
    }
    let published = streamer.await.unwrap();
    let first = published["first_seq"].as_u64().unwrap();
    let chunks = published["chunks"].as_u64().unwrap();
    let len = published["len"].as_u64().unwrap();
    for e in c.by_role(Role::Edge) {
        let edge = &c.nodes[e];
        let mut total = 0u64;
        for seq in first..first + chunks {
            let got = client
                .get(&format!("{}/v1/streams/rot/{seq}", edge.http()), None)
                .await
                .unwrap_or_else(|err| panic!("{} gap at {seq}: {err}", edge.name));
            total += got.body.len() as u64;
        }
        assert_eq!(total, len, "{} delivered every byte", edge.name);
        // The reasons, for a failure seen once in CI with none in reruns.
        let reasons: Vec<String> = edge
            .running()
            .shared
            .metrics
            .render()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("dcdn_chunks_rejected_total{"))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            edge.metric("dcdn_chunks_rejected_total", &[]),
            0.0,
            "{} rejected chunks: {reasons:?}",
            edge.name
        );
    }
    assert_eq!(origin_shared.keys.read().active(), Some(new_key.key_id()));
    c.stop().await;
}

/// An object published before a key rotation stays readable after it: the
/// origin answers its manifest signed with the key active now, so no node
/// that revalidates it (or asks for it the first time) refuses it as signed
/// by a revoked key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_published_before_a_key_rotation_is_served_after_it_with_nothing_rejected() {
    let c = TestCluster::start(
        "rotate-obj",
        Counts {
            relays: 1,
            edges: 2,
        },
        |_| {},
        |_| {},
    )
    .await;
    let token = std::fs::read_to_string(c.dir.join("admin-token")).unwrap();
    let client = Client::new(Duration::from_secs(20));
    let data = Bytes::from(
        (0..300_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(data.clone())]);
    client
        .put_stream(
            &format!("{}/v1/objects/before/rotation.bin", c.origin().http()),
            Some(&c.plan.ingest_token),
            body,
        )
        .await
        .unwrap();
    let edges = c.by_role(Role::Edge);
    // Read through one edge only: the other learns of it from pushes, and
    // both hold the manifest signed with the old key.
    let first = &c.nodes[edges[0]];
    let got = client
        .get(
            &format!("{}/v1/objects/before/rotation.bin", first.http()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(got.body, data);

    // Rotate: trust the new key, make it active, revoke the old one.
    let new_key = Signer::generate(&mut rand::rngs::OsRng);
    let origin_shared = c.origin().running().shared.clone();
    let key_path = c.dir.join("signing-2.key");
    new_key.save(&key_path).unwrap();
    origin_shared.reload_signers(&[key_path]).unwrap();
    let old_id = origin_shared.keys.read().active().unwrap();
    let add = format!(
        "{{\"public_key\":\"{}\"}}",
        hex::encode(new_key.public_key())
    );
    let id = new_key.key_id().to_string();
    for step in ["add", "activate", "revoke"] {
        for n in &c.nodes {
            let (path, body) = match step {
                "add" => ("/v1/keys".to_owned(), add.as_str()),
                "activate" => (format!("/v1/keys/{id}/activate"), ""),
                _ => (format!("/v1/keys/{old_id}/revoke"), ""),
            };
            admin_post(&client, &n.admin(), &path, &token, body).await;
        }
    }
    // Past the manifest revalidation interval (1 s), every read asks
    // upstream again, and the relay asks the origin.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for &e in &edges {
        let edge = &c.nodes[e];
        let got = client
            .get(
                &format!("{}/v1/objects/before/rotation.bin", edge.http()),
                None,
            )
            .await
            .unwrap_or_else(|err| panic!("{} after the rotation: {err}", edge.name));
        assert_eq!(got.body, data, "{} served the published bytes", edge.name);
    }
    for n in &c.nodes {
        assert_eq!(
            n.metric("dcdn_chunks_rejected_total", &[]),
            0.0,
            "{} rejected something signed during the rotation",
            n.name
        );
    }
    // The manifest now held everywhere is signed with the new key.
    let key = dcdn_node::chunk::StreamId::object_key("before/rotation.bin");
    for n in &c.nodes {
        let held = n.running().shared.manifests.lock().newest(key);
        let (m, _) = held.unwrap_or_else(|| panic!("{} holds no manifest", n.name));
        assert_eq!(
            m.key_id,
            new_key.key_id(),
            "{} holds an old-key manifest",
            n.name
        );
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_in_flight_responses() {
    let mut c = TestCluster::start(
        "drain",
        Counts {
            relays: 1,
            edges: 1,
        },
        |_| {},
        |_| {},
    )
    .await;
    let client = Client::new(Duration::from_secs(30));
    let data = Bytes::from(
        (0..8_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    client
        .put_stream(
            &format!("{}/v1/objects/drain.bin", c.origin().http()),
            Some(&c.plan.ingest_token),
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(data.clone())]),
        )
        .await
        .unwrap();
    let e = c.by_role(Role::Edge)[0];
    let url = format!("{}/v1/objects/drain.bin", c.nodes[e].http());
    // Warm the edge, start a download, and begin draining the edge while
    // the body is still being read (slowly) by the client.
    client.get(&url, None).await.unwrap();
    let resp = client
        .start(Method::GET, &url, None, &[], Body::empty())
        .await
        .unwrap();
    let node = c.nodes[e].running.take().unwrap();
    let shared = node.shared.clone();
    let stopper = tokio::spawn(async move {
        node.shutdown(Duration::from_secs(10)).await;
    });
    wait_until("the edge starts draining", || shared.is_shutting_down()).await;
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("an in-flight response was cut off");
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got[..] == data[..]);
    stopper.await.unwrap();
    // Once drained, new connections are refused.
    assert!(client.get(&url, None).await.is_err());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_trust_bundle_file_is_reloaded_without_a_restart() {
    let c = TestCluster::start(
        "bundle-watch",
        Counts {
            relays: 1,
            edges: 1,
        },
        |_| {},
        |_| {},
    )
    .await;
    let path = c.dir.join("trust-bundle.json");
    let before = c.origin().running().shared.keys.read().generation();
    // Add a key to the bundle the way an operator's ConfigMap update would.
    let mut ring = dcdn_node::crypto::KeyRing::from_bundle(
        &dcdn_node::crypto::TrustBundle::from_json(&std::fs::read_to_string(&path).unwrap())
            .unwrap(),
    )
    .unwrap();
    let next = Signer::generate(&mut rand::rngs::OsRng);
    let id = ring.add_trusted(next.public_key()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, ring.to_bundle().to_json()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in &c.nodes {
        // The ring changes a moment before the reload is counted: wait for
        // both.
        while n.running().shared.keys.read().state(id).is_none()
            || n.metric("dcdn_trust_bundle_reloads_total", &[("result", "ok")]) < 1.0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never reloaded the bundle",
                n.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(n.running().shared.keys.read().generation() > before);
        assert_eq!(
            n.metric("dcdn_trust_bundle_reloads_total", &[("result", "ok")]),
            1.0
        );
    }
    // A broken file is refused and counted; the ring that works stays.
    let generation = c.origin().running().shared.keys.read().generation();
    std::fs::write(&path, "{ not json").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c
        .origin()
        .metric("dcdn_trust_bundle_reloads_total", &[("result", "failed")])
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "broken bundle not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let keys = c.origin().running().shared.keys.read();
        assert_eq!(keys.generation(), generation);
        assert!(keys.state(id).is_some());
    }
    c.stop().await;
}

/// The OpenAPI document committed under `deploy/` is the one the code makes.
/// `DCDN_BLESS=1 cargo test --test admin openapi` rewrites it.
#[test]
fn the_committed_openapi_document_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/openapi/admin.json");
    let fresh = dcdn_node::admin::openapi_json();
    if std::env::var_os("DCDN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: run `DCDN_BLESS=1 cargo test -p dcdn-node --test admin openapi` and commit it",
        path.display()
    );
    // Every route the auth matrix above exercises is documented, and no more.
    let doc: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/config",
            "/v1/config/reload",
            "/v1/keys",
            "/v1/keys/{id}/activate",
            "/v1/keys/{id}/revoke",
            "/v1/openapi.json",
            "/v1/peers",
            "/v1/status",
            "/v1/store",
        ]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_public_keys_are_refused_over_the_admin_api() {
    let c = TestCluster::start(
        "weak-keys",
        Counts {
            relays: 0,
            edges: 1,
        },
        |_| {},
        |_| {},
    )
    .await;
    let token = std::fs::read_to_string(c.dir.join("admin-token")).unwrap();
    let client = Client::new(Duration::from_secs(20));
    let edge = &c.nodes[c.by_role(Role::Edge)[0]];
    let generation = edge.running().shared.keys.read().generation();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    // All-zero (order 4), the identity, and an order-8 torsion point.
    let weak = [
        hex::encode([0u8; 32]),
        hex::encode(identity),
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a".to_owned(),
    ];
    for key in weak {
        let headers = [(
            axum::http::header::CONTENT_TYPE,
            "application/json".to_owned(),
        )];
        let result = client
            .send(
                Method::POST,
                &format!("{}/v1/keys", edge.admin()),
                Some(token.trim()),
                &headers,
                Body::from(format!("{{\"public_key\":\"{key}\"}}")),
            )
            .await;
        match result {
            Err(dcdn_node::client::ClientError::Status { status, body, .. }) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
                let b: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(b["code"], "bad_public_key", "{key}: {body}");
                assert!(b["message"].as_str().unwrap().contains("weak"), "{body}");
            }
            other => panic!("{key} was not refused: {other:?}"),
        }
    }
    assert_eq!(
        edge.running().shared.keys.read().generation(),
        generation,
        "no weak key entered the ring"
    );
    c.stop().await;
}

/// Waits until `stream` is closed by the server (EOF or reset) and returns
/// how long that took, or `None` if it is still open after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(start + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            // A response (e.g. 408) before the close is fine.
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `metric` on `node` until it reaches `at_least` (or 10 s pass).
async fn metric_reaches(
    node: &support::cluster::TestNode,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = node.metric(name, labels);
        if v >= at_least || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_one_ip_cannot_hold_every_connection() {
    use dcdn_node::config::Bounded;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::start(
        "slowloris",
        Counts {
            relays: 0,
            edges: 1,
        },
        |cfg| {
            cfg.network.http_header_timeout_ms = Bounded::new(500).unwrap();
            cfg.network.http_idle_timeout_ms = Bounded::new(800).unwrap();
            cfg.network.http_max_connections_per_ip = Bounded::new(4).unwrap();
        },
        |_| {},
    )
    .await;
    let edge = &c.nodes[c.by_role(Role::Edge)[0]];
    let origin = c.origin();
    let addr = |url: String| url.trim_start_matches("http://").to_owned();
    // Far longer than any limit: the old listeners held these forever.
    let never = Duration::from_secs(5);

    // A header that never ends, on the edge and on the admin listener.
    for (node, url, listener) in [
        (edge, edge.http(), "http"),
        (origin, origin.admin(), "admin"),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr(url)).await.unwrap();
        s.write_all(b"GET /v1/objects/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let took = closed_within(&mut s, never).await;
        assert!(
            took.is_some(),
            "{listener}: a partial header held the connection"
        );
        assert!(
            metric_reaches(
                node,
                "dcdn_http_refused_total",
                &[("listener", listener), ("reason", "header_timeout")],
                1.0
            )
            .await
                >= 1.0
        );
    }

    // A request body that stalls, on the origin's ingest listener.
    let mut s = tokio::net::TcpStream::connect(addr(origin.http()))
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/objects/stalled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n",
        c.plan.ingest_token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[7u8; 1000]).await.unwrap();
    assert!(
        closed_within(&mut s, never).await.is_some(),
        "a stalled upload held the connection"
    );
    assert!(
        metric_reaches(
            origin,
            "dcdn_http_refused_total",
            &[("listener", "http"), ("reason", "idle_timeout")],
            1.0
        )
        .await
            >= 1.0
    );

    // Per-IP limit: four idle connections are what one IP may hold; the
    // fifth is closed at once, and a slot frees when one goes.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(addr(edge.http()))
                .await
                .unwrap(),
        );
    }
    let mut fifth = tokio::net::TcpStream::connect(addr(edge.http()))
        .await
        .unwrap();
    let took = closed_within(&mut fifth, Duration::from_millis(400)).await;
    assert!(took.is_some(), "a fifth connection from one IP was kept");
    assert!(
        metric_reaches(
            edge,
            "dcdn_http_refused_total",
            &[("listener", "http"), ("reason", "per_ip_limit")],
            1.0
        )
        .await
            >= 1.0
    );
    drop(held);
    let client = Client::new(Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Freed slots: a real request is answered again (404: no object).
        match client
            .get(&format!("{}/v1/objects/none", edge.http()), None)
            .await
        {
            Err(dcdn_node::client::ClientError::Status { status, .. })
                if status == StatusCode::NOT_FOUND =>
            {
                break;
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "edge did not answer after slots freed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop().await;
}

/// An edge that has been ready stays ready when its only relay goes away
/// (readiness must not cascade: one relay restart would otherwise empty the
/// edge Service) and keeps serving what it holds; it says in the body that
/// no upstream is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_stays_ready_and_serves_what_it_holds_while_its_relay_is_gone() {
    let mut c = TestCluster::start(
        "admin-ready-cascade",
        Counts {
            relays: 1,
            edges: 1,
        },
        |_| {},
        |_| {},
    )
    .await;
    let client = Client::new(Duration::from_secs(5));
    let data = Bytes::from(vec![7u8; 300_000]);
    client
        .put_stream(
            &format!("{}/v1/objects/held.bin", c.origin().http()),
            Some(&c.plan.ingest_token),
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(data.clone())]),
        )
        .await
        .unwrap();
    let edge = c.by_role(Role::Edge)[0];
    let (edge_http, edge_admin) = (c.nodes[edge].http(), c.nodes[edge].admin());
    let url = format!("{edge_http}/v1/objects/held.bin");
    assert_eq!(client.get(&url, None).await.unwrap().body, data);
    let ready = client
        .get_json(&format!("{edge_admin}/readyz"), None)
        .await
        .unwrap();
    assert_eq!(ready["upstream_connected"], true, "{ready}");

    let relay = c.by_role(Role::Relay)[0];
    c.nodes[relay].stop().await;
    // Until the edge has noticed: its body says no upstream is connected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let resp = get_any_status(&client, &format!("{edge_admin}/readyz")).await;
        if resp.1["upstream_connected"] == false {
            break resp;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never noticed its relay had gone: {:?}",
            resp
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        body.0, 200,
        "an edge that was ready stays ready: {:?}",
        body
    );
    assert_eq!(body.1["ready"], true);
    assert_eq!(client.get(&url, None).await.unwrap().body, data);
    c.stop().await;
}

/// Status and JSON body of a GET whatever the status (`Client::get` turns
/// a 503 into an error).
async fn get_any_status(client: &Client, url: &str) -> (u16, serde_json::Value) {
    match client.get(url, None).await {
        Ok(r) => (
            r.status.as_u16(),
            serde_json::from_slice(&r.body).unwrap_or_default(),
        ),
        Err(dcdn_node::client::ClientError::Status { status, body, .. }) => (
            status.as_u16(),
            serde_json::from_str(&body).unwrap_or_default(),
        ),
        Err(e) => panic!("GET {url}: {e}"),
    }
}
