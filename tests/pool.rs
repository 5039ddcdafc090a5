//! The warm pool: browsers are handed out once, replaced in the background, and a dead one
//! (idle or in use) is noticed and dealt with.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// PIDs of the main Chromium processes (not renderers or helpers) under `data_dir`.
fn main_browser_pids(data_dir: &std::path::Path) -> Vec<u32> {
    let needle = format!("--user-data-dir={}", data_dir.join("browsers").display());
    processes_mentioning(&needle)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !String::from_utf8_lossy(&cmdline).contains("--type=")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_idle_browser_is_replaced() {
    let server = TestServer::start().await;
    let pool = server.broker.pool().clone();
    assert!(eventually(Duration::from_secs(20), || pool.idle_count() == 1).await);
    let before = main_browser_pids(server.data_dir.path());
    assert_eq!(before.len(), 1, "one warm browser: {before:?}");
    let launched = server.broker.metrics().browsers_launched.get();

    kill(before[0], libc::SIGKILL);
    let replaced = eventually(Duration::from_secs(20), || {
        let now = main_browser_pids(server.data_dir.path());
        pool.idle_count() == 1 && now.len() == 1 && now[0] != before[0]
    })
    .await;
    assert!(replaced, "the pool started a new browser");
    assert!(server.broker.metrics().browsers_launched.get() > launched);

    // And the replacement serves a session.
    let s = server.create(json!({})).await;
    let mut ws = ws_connect(s["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_never_shared_and_a_crash_ends_only_its_session() {
    let server = TestServer::start().await;
    let a = server.create(json!({})).await;
    let b = server.create(json!({})).await;
    let (a_id, b_id) = (a["session_id"].as_str().unwrap(), b["session_id"].as_str().unwrap());
    let upstream = |id: &str| {
        server
            .broker
            .running_session(None, id)
            .unwrap()
            .upstream
            .authority
            .clone()
    };
    assert_ne!(upstream(a_id), upstream(b_id), "each session has its own browser");

    let port = upstream(a_id).rsplit(':').next().unwrap().to_owned();
    let mut ws_a = ws_connect(a["cdp_url"].as_str().unwrap()).await.unwrap();
    crash_browser(&mut ws_a).await;

    assert_eq!(
        await_close(&mut ws_a, Duration::from_secs(10)).await.map(|c| c.0),
        Some(4003)
    );
    let got = server.get(a_id).await.json;
    assert_eq!(
        (got["status"].as_str(), got["end_reason"].as_str()),
        (Some("terminated"), Some("browser exited"))
    );
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
    // B never noticed.
    let mut ws_b = ws_connect(b["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut ws_b, 1, "Browser.getVersion", json!({})).await;
    assert_eq!(server.get(b_id).await.json["status"], "active");
    assert_eq!(server.broker.pool().free_slots(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chromium_that_will_not_start_gets_a_clear_503_and_no_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("chromium");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The full Chromium is the one broken: the pool keeps it warm.
    let server = TestServer::start_with(|c| {
        c.chrome_path = broken.to_string_lossy().into_owned();
        c.default_browser = "full".into();
    })
    .await;

    let r = server
        .call(hyper::Method::POST, "/public/sessions", Some(KEY_A), Some("{}"))
        .await;
    assert_eq!(r.status, hyper::StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    let detail = r.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("could not be started") && detail.contains("exited before it was ready"),
        "{detail}"
    );
    assert_eq!(server.broker.pool().free_slots(), 4, "the failed create holds no slot");

    // The pool keeps trying in the background, with a growing pause rather than a spin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = server.broker.metrics().browser_launch_failures.get();
    assert!((2..=12).contains(&failures), "{failures} launches failed in 2 s");
    let r = server.call(hyper::Method::GET, "/health", None, None).await;
    assert_eq!(r.status, hyper::StatusCode::OK, "the API stays up");
    // Alive, not ready: a load balancer sends its creates elsewhere.
    let r = server.call(hyper::Method::GET, "/ready", None, None).await;
    assert_eq!(r.status, hyper::StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        r.json["detail"].as_str().unwrap().contains("does not start"),
        "{}",
        r.body
    );
    // The browser is mended: the pool's next try starts it, and the node is ready.
    std::fs::remove_file(&broken).unwrap();
    std::os::unix::fs::symlink(cdpgate::browser::find_chrome().unwrap(), &broken).unwrap();
    let ready = eventually_async(Duration::from_secs(60), || async {
        server.call(hyper::Method::GET, "/ready", None, None).await.status == hyper::StatusCode::OK
    })
    .await;
    assert!(ready, "ready once a browser starts");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_start_without_the_hidden_omnibox_webui() {
    // Headless Chromium would preload the omnibox popup (hidden `browser_ui` targets with a
    // renderer of their own): most of a launch's CPU, for a popup no session shows.
    let server = TestServer::start_with(|c| c.chrome_flags = vec!["--disable-features=Translate".into()]).await;
    // The full Chromium's window (the headless shell has none).
    let session = server.create(json!({"browser": "full"})).await;
    let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    // Chrome makes the popup's targets with its window (measured: in the same moment as
    // the window's `tab` target), so once the window's tab is listed and its page has
    // loaded, they would be listed too.
    let mut id = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let targets = loop {
        id += 1;
        let targets = cdp_call(&mut ws, id, "Target.getTargets", json!({"filter": [{}]})).await;
        let infos = targets["result"]["targetInfos"].as_array().cloned().unwrap_or_default();
        let tab = infos.iter().any(|t| t["type"] == "tab");
        let loaded = match infos.iter().find(|t| t["type"] == "page") {
            Some(page) => {
                let attached = cdp_call(
                    &mut ws,
                    id + 1000,
                    "Target.attachToTarget",
                    json!({"targetId": page["targetId"], "flatten": true}),
                )
                .await;
                let on = attached["result"]["sessionId"].as_str().unwrap_or_default().to_owned();
                let state = page_ready_state(&mut ws, id + 2000, &on).await;
                state == "complete"
            }
            None => false,
        };
        if tab && loaded {
            break targets;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window never settled: {targets}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<&str> = targets["result"]["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    assert!(kinds.contains(&"page"), "{targets}");
    assert!(!kinds.contains(&"browser_ui"), "{targets}");
    server.stop().await;
}

/// `document.readyState` of the page attached as `on`.
async fn page_ready_state(ws: &mut Ws, id: u64, on: &str) -> String {
    let ask = json!({"id": id, "sessionId": on, "method": "Runtime.evaluate",
                     "params": {"expression": "document.readyState", "returnByValue": true}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("an answer in time");
        let Some(Ok(Message::Text(text))) = next else {
            panic!("the connection ended: {next:?}");
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["id"] == id {
            return v["result"]["result"]["value"].as_str().unwrap_or_default().to_owned();
        }
    }
}
