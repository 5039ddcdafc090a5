//! Per-key quotas, driven from the hostile tenant's side: a key at its limit of sessions at
//! once is refused (429) with nothing taken, while another key still gets sessions; the same
//! for bring-your-own sessions, across the nodes of a cluster, and for a session's tabs.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn create(server: &TestServer, key: &str, body: Value) -> Response {
    server
        .call(Method::POST, "/public/sessions", Some(key), Some(&body.to_string()))
        .await
}

async fn active_total(server: &TestServer, key: &str) -> u64 {
    let r = server
        .call(Method::GET, "/public/sessions?status=active", Some(key), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["total"].as_u64().unwrap()
}

fn assert_quota_refusal(r: &Response, setting: &str) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let detail = r.json["detail"].as_str().unwrap();
    assert!(detail.contains(setting), "the detail names the limit: {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_limit_is_refused_and_takes_nothing_while_another_key_is_served() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 4;
        c.max_sessions_per_key = 2;
        c.context_browsers = 2;
    })
    .await;
    let first = create(&server, KEY_A, json!({})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // A context session counts against the same limit.
    let second = create(&server, KEY_A, json!({"isolation": "context"})).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);

    // The pool has put back the warm browser the first session took: a launch counted
    // from here is the refused creates'.
    assert!(eventually(Duration::from_secs(30), || server.broker.pool().idle_count() >= 1).await);
    let free_before = server.broker.pool().free_slots();
    let launched_before = server.broker.metrics().browsers_launched.get();
    let contexts_before: usize = server.broker.shared().browsers().iter().map(|b| b.contexts).sum();
    for body in [json!({}), json!({"isolation": "context"}), json!({"ttl": 86400})] {
        let refused = create(&server, KEY_A, body).await;
        assert_quota_refusal(&refused, "max_sessions_per_key");
        assert!(
            refused.json["detail"].as_str().unwrap().contains("(2)"),
            "{}",
            refused.body
        );
    }
    // Nothing taken: no record, no slot, no browser, no context.
    assert_eq!(active_total(&server, KEY_A).await, 2);
    let all = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(all.json["total"], 2, "no record written: {}", all.body);
    assert_eq!(server.broker.pool().free_slots(), free_before);
    assert_eq!(server.broker.metrics().browsers_launched.get(), launched_before);
    let contexts_after: usize = server.broker.shared().browsers().iter().map(|b| b.contexts).sum();
    assert_eq!(contexts_after, contexts_before);
    assert_eq!(server.broker.metrics().create_quota_refused.get(), 3);
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_session_create_quota_refused_total 3"),
        "{metrics}"
    );

    // Another key is served, process and context sessions alike.
    let other = create(&server, KEY_B, json!({})).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    let other = create(&server, KEY_B, json!({"isolation": "context"})).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);

    // A session ended frees its place at once.
    let id = first.json["session_id"].as_str().unwrap();
    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    let again = create(&server, KEY_A, json!({})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    server.stop().await;
}

/// Creates racing for a key's last place: exactly the limit gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_racing_for_the_last_places_pass_the_limit_never() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 4;
        c.max_sessions_per_key = 2;
        c.queue_timeout_ms = 10_000;
    })
    .await;
    let burst = (0..8).map(|_| {
        let addr = server.addr;
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")),
            )
            .await
            .expect("every create is answered")
        })
    });
    let mut statuses = Vec::new();
    for answer in futures_util::future::join_all(burst).await {
        statuses.push(answer.unwrap().status);
    }
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((created, refused), (2, 6), "{statuses:?}");
    assert_eq!(active_total(&server, KEY_A).await, 2);
    server.stop().await;
}

/// A Chromium the "user" runs, on loopback; killed when dropped.
struct ExternalChrome {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    ws_url: String,
}

async fn start_external_chrome() -> ExternalChrome {
    let dir = tempfile::tempdir().unwrap();
    let chrome = cdpgate::browser::find_chrome().expect("Chromium (scripts/setup.sh)");
    let mut child = tokio::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", dir.path().display()))
        .arg("about:blank")
        .env("TMPDIR", dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ws_url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("the external Chromium exited");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ExternalChrome {
        _child: child,
        _dir: dir,
        ws_url,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_your_own_sessions_have_their_own_limit() {
    let chrome = start_external_chrome().await;
    let server = TestServer::start_with(|c| {
        c.byo_allow = vec!["127.0.0.0/8".into()];
        c.max_byo_sessions_per_key = 2;
        c.max_sessions_per_key = 1;
    })
    .await;
    let byo = json!({"cdp_url": chrome.ws_url});
    for _ in 0..2 {
        let r = create(&server, KEY_A, byo.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let refused = create(&server, KEY_A, byo.clone()).await;
    assert_quota_refusal(&refused, "max_byo_sessions_per_key");
    assert_eq!(active_total(&server, KEY_A).await, 2, "no record written");
    // The two limits are apart: a managed session still fits, and then that one is full.
    let managed = create(&server, KEY_A, json!({})).await;
    assert_eq!(managed.status, StatusCode::CREATED, "{}", managed.body);
    assert_quota_refusal(&create(&server, KEY_A, json!({})).await, "max_sessions_per_key");
    // Another key fronts the same browser.
    let other = create(&server, KEY_B, byo).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    assert_eq!(active_total(&server, KEY_A).await, 3);
    server.stop().await;
}

/// Tabs (page targets) the session's own browser has, through its `cdp_url`.
async fn open_tabs(ws: &mut Ws, id: u64) -> usize {
    let targets = cdp_call(ws, id, "Target.getTargets", json!({})).await;
    targets["result"]["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "page")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_at_most_its_tabs_whatever_a_client_opens() {
    let server = TestServer::start_with(|c| {
        c.max_targets_per_session = 3;
        c.context_browsers = 1;
    })
    .await;
    for isolation in ["process", "context"] {
        let session = server.create(json!({"isolation": isolation})).await;
        let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
        let before = server.broker.metrics().targets_closed.get();
        let mut id = 0;
        // Ten new tabs asked for, one after another.
        for _ in 0..10 {
            id += 1;
            cdp_call(&mut ws, id, "Target.createTarget", json!({"url": "about:blank"})).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last;
        loop {
            id += 1;
            last = open_tabs(&mut ws, id).await;
            if last == 3 || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, 3, "{isolation}: tabs open, at most 3 allowed");
        // Still three a moment later: none comes back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        id += 1;
        assert_eq!(open_tabs(&mut ws, id).await, 3, "{isolation}");
        let closed = server.broker.metrics().targets_closed.get() - before;
        assert!(closed >= 8, "{isolation}: the broker closed {closed} tabs");
        // Closing one makes room for one.
        let targets = cdp_call(&mut ws, 900, "Target.getTargets", json!({})).await;
        let page = targets["result"]["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap()["targetId"]
            .clone();
        cdp_call(&mut ws, 901, "Target.closeTarget", json!({"targetId": page})).await;
        // A tab counts until Chrome reports it gone (as Puppeteer's `page.close` waits for).
        let mut gone = false;
        for probe in 910..1110 {
            if open_tabs(&mut ws, probe).await == 2 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "{isolation}: the closed tab went");
        cdp_call(&mut ws, 902, "Target.createTarget", json!({"url": "about:blank"})).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(open_tabs(&mut ws, 903).await, 3, "{isolation}");
        let id = session["session_id"].as_str().unwrap();
        assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    }
    server.stop().await;
}

/// A node of the cluster under `prefix` on `redis`, with a limit of `per_key` sessions.
async fn cluster_node(redis: &TestRedis, prefix: &str, name: &str, per_key: usize) -> TestServer {
    let (url, prefix, name) = (redis.url.clone(), prefix.to_owned(), name.to_owned());
    let profiles = redis.profiles.path().to_string_lossy().into_owned();
    TestServer::start_with(move |c| {
        c.redis_url = url;
        c.profile_store = profiles;
        c.redis_prefix = prefix;
        c.node_id = name;
        c.max_sessions_per_key = per_key;
        c.cluster_secret = CLUSTER_SECRET.into();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_the_nodes_of_a_cluster() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "quota:", "node-a", 2).await;
    let b = cluster_node(&redis, "quota:", "node-b", 2).await;
    let on_a = create(&a, KEY_A, json!({})).await;
    assert_eq!(on_a.status, StatusCode::CREATED, "{}", on_a.body);
    let on_b = create(&b, KEY_A, json!({})).await;
    assert_eq!(on_b.status, StatusCode::CREATED, "{}", on_b.body);
    // Each node runs one of the key's sessions and has slots free: the cluster's count refuses.
    for node in [&a, &b] {
        assert_quota_refusal(&create(node, KEY_A, json!({})).await, "max_sessions_per_key");
    }
    assert_eq!(active_total(&a, KEY_A).await, 2, "no record written on any node");
    let other = create(&b, KEY_B, json!({})).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    // A session ended on one node frees a place on the other.
    let id = on_a.json["session_id"].as_str().unwrap();
    assert_eq!(a.terminate(id).await.status, StatusCode::NO_CONTENT);
    let again = create(&b, KEY_A, json!({})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    a.stop().await;
    b.stop().await;
}

const ADMIN_KEY: &str = "admin-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_what_each_key_uses_by_label_never_by_key() {
    let site = start_site().await;
    let server = TestServer::start_with(|c| c.admin_key = ADMIN_KEY.into()).await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let page = node(
        "visit.mjs",
        &[session["cdp_url"].as_str().unwrap(), &format!("http://{site}/"), ""],
    )
    .await;
    assert_eq!(page["ok"], true, "{page}");
    let upload = server
        .call(
            Method::POST,
            &format!("/public/sessions/{id}/files?name=report.txt"),
            Some(KEY_A),
            Some("twelve bytes"),
        )
        .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.body);

    let tenants = |key: Option<&'static str>| {
        let addr = server.addr;
        async move {
            let mut headers = vec![];
            if let Some(k) = key {
                headers.push(("x-admin-key", k));
            }
            http_with(addr, Method::GET, "/admin/tenants", &headers, None).await
        }
    };
    assert_eq!(tenants(None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        tenants(Some("wrong-admin-key-0000")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = tenants(Some(ADMIN_KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        !r.body.contains(KEY_A) && !r.body.contains(KEY_B),
        "keys never shown: {}",
        r.body
    );
    let list = r.json["tenants"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", r.body);
    let record = server.get(id).await.json;
    let (a, b) = (&list[0], &list[1]);
    assert!(a["tenant"].as_str().unwrap().starts_with("t_"), "{a}");
    assert_eq!(a["sessions_active"], 1, "{a}");
    assert_eq!(a["sessions_recorded"], 1, "{a}");
    assert!(a["bytes_in"].as_u64().unwrap() > 0, "the page's bytes: {a}");
    assert!(a["bytes_in"].as_u64().unwrap() >= record["network"]["bytes_in"].as_u64().unwrap());
    assert_eq!(
        (a["files"].as_u64(), a["files_bytes"].as_u64()),
        (Some(1), Some(12)),
        "{a}"
    );
    assert_eq!(
        (b["sessions_active"].as_u64(), b["bytes_in"].as_u64()),
        (Some(0), Some(0)),
        "{b}"
    );
    // Session-seconds grow while it runs and stop when it ends.
    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    let ended = tenants(Some(ADMIN_KEY)).await.json["tenants"][0].clone();
    assert_eq!(ended["sessions_active"], 0, "{ended}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = tenants(Some(ADMIN_KEY)).await.json["tenants"][0].clone();
    assert_eq!(later["session_seconds"], ended["session_seconds"], "{later}");
    server.stop().await;
}

/// A profile's storage-state export and import each start a browser of their own: a key
/// at its limit starts none that way either (before, such requests took every slot of the
/// node while other keys' creates waited), and no profile is left by a refused import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_limit_starts_no_browser_through_a_profiles_storage_state() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 4;
        c.max_sessions_per_key = 1;
    })
    .await;
    let first = create(&server, KEY_A, json!({})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let made = server
        .call(
            Method::POST,
            "/public/browser-profiles",
            Some(KEY_A),
            Some(r#"{"name": "p"}"#),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let profile = made.json["id"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(30), || server.broker.pool().idle_count() >= 1).await);
    let launched_before = server.broker.metrics().browsers_launched.get();
    let free_before = server.broker.pool().free_slots();
    let path = format!("/public/browser-profiles/{profile}/storage-state");
    let export = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_quota_refusal(&export, "max_sessions_per_key");
    let state = json!({"cookies": [], "origins": []}).to_string();
    let import = server.call(Method::POST, &path, Some(KEY_A), Some(&state)).await;
    assert_quota_refusal(&import, "max_sessions_per_key");
    let body = json!({"name": "imported", "storage_state": {"cookies": [], "origins": []}}).to_string();
    let made = server
        .call(Method::POST, "/public/browser-profiles", Some(KEY_A), Some(&body))
        .await;
    assert_quota_refusal(&made, "max_sessions_per_key");
    // Nothing started, no slot taken, no profile left by the refused import.
    assert_eq!(server.broker.metrics().browsers_launched.get(), launched_before);
    assert_eq!(server.broker.pool().free_slots(), free_before);
    let profiles = server
        .call(Method::GET, "/public/browser-profiles", Some(KEY_A), None)
        .await;
    let names: Vec<&str> = profiles.json["profiles"]
        .as_array()
        .or(profiles.json.as_array())
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p"], "{}", profiles.body);
    // With its session ended, the same export runs.
    let id = first.json["session_id"].as_str().unwrap();
    let ended = server
        .call(Method::DELETE, &format!("/public/sessions/{id}"), Some(KEY_A), None)
        .await;
    assert!(ended.status.is_success(), "{}", ended.body);
    let export = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.body);
    server.stop().await;
}
