//! Which Chrome a process session runs (`browser`): the headless shell by default where it
//! is installed, the full browser when asked, or when the session needs what only the full
//! browser does (extensions), said in the session object. What ran is read by the client
//! itself (`Browser.getVersion` through the session's `cdp_url`), not from the broker.

mod common;

use std::io::Write;

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// `Browser.getVersion`'s product, as the session's own client reads it: the headless
/// shell calls itself `HeadlessChrome/…`, the full browser `Chrome/…`.
async fn product(session: &Value) -> String {
    let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    let version = cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    version["result"]["product"].as_str().unwrap().to_owned()
}

/// The session object, as created and as read back, says `browser` and `browser_reason`.
async fn reported(server: &TestServer, session: &Value, browser: &str, reason: &str) {
    let read = server.get(session["session_id"].as_str().unwrap()).await;
    for body in [session, &read.json] {
        assert_eq!(body["browser"], browser, "{body}");
        assert_eq!(body["browser_reason"], reason, "{body}");
    }
}

async fn sessions_created(server: &TestServer) -> u64 {
    let metrics = server.call(Method::GET, "/metrics", None, None).await;
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("cdpgate_sessions_created_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the created counter is exposed")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_process_session_runs_the_headless_shell_and_full_is_the_full_browser() {
    // Three sessions and their two forks at once.
    let server = TestServer::start_with(|c| c.max_sessions = 6).await;

    let shell = server.create(json!({})).await;
    reported(&server, &shell, "shell", "default").await;
    let seen = product(&shell).await;
    assert!(seen.starts_with("HeadlessChrome/"), "the shell's product: {seen}");

    let full = server.create(json!({"browser": "full"})).await;
    reported(&server, &full, "full", "asked").await;
    let seen = product(&full).await;
    assert!(seen.starts_with("Chrome/"), "the full browser's product: {seen}");

    // Asked for by name, the shell is the shell too.
    let asked = server.create(json!({"browser": "shell"})).await;
    reported(&server, &asked, "shell", "asked").await;
    assert!(product(&asked).await.starts_with("HeadlessChrome/"));

    // A fork runs what its source asked for; a source that asked nothing, the default.
    for (source, browser, reason, name) in [
        (&full, "full", "asked", "Chrome/"),
        (&shell, "shell", "default", "HeadlessChrome/"),
    ] {
        let id = source["session_id"].as_str().unwrap();
        let forked = server
            .call(
                Method::POST,
                &format!("/public/sessions/{id}/fork"),
                Some(KEY_A),
                Some(r#"{"count": 1}"#),
            )
            .await;
        assert_eq!(forked.status, StatusCode::CREATED, "{}", forked.body);
        let fork = &forked.json["sessions"][0];
        reported(&server, fork, browser, reason).await;
        assert!(product(fork).await.starts_with(name));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn default_browser_full_makes_the_full_browser_the_default() {
    let server = TestServer::start_with(|c| c.default_browser = "full".into()).await;
    let session = server.create(json!({})).await;
    reported(&server, &session, "full", "default").await;
    assert!(product(&session).await.starts_with("Chrome/"));
    server.stop().await;
}

/// An MV3 extension whose content script marks every page.
fn marker_extension() -> Vec<u8> {
    let manifest = json!({
        "manifest_version": 3,
        "name": "cdpgate marker",
        "version": "1.0.0",
        "content_scripts": [{"matches": ["<all_urls>"], "js": ["content.js"], "run_at": "document_start"}]
    })
    .to_string();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        (
            "content.js",
            b"document.documentElement.dataset.cdpgateExt = \"1\";".as_slice(),
        ),
    ] {
        writer.start_file(name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn extensions_fall_back_to_the_full_browser_and_say_so() {
    let server = TestServer::start().await;
    let headers = [("x-api-key", KEY_A), ("content-type", "application/zip")];
    let (status, _, bytes) = http_bytes(
        server.addr,
        Method::POST,
        "/public/extensions",
        &headers,
        Bytes::from(marker_extension()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&bytes));
    let id = serde_json::from_slice::<Value>(&bytes).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let session = server.create(json!({"extensions": [id]})).await;
    reported(&server, &session, "full", "extensions").await;
    assert!(product(&session).await.starts_with("Chrome/"));

    // The shell cannot load them: asked for by name with extensions, it is refused.
    let before = sessions_created(&server).await;
    let refused = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(&json!({"browser": "shell", "extensions": [id]}).to_string()),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(
        refused.json["detail"].as_str().unwrap().contains("extensions"),
        "{}",
        refused.body
    );
    assert_eq!(sessions_created(&server).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_browser_is_refused_and_creates_nothing() {
    let server = TestServer::start().await;
    let list = || server.call(Method::GET, "/public/sessions", Some(KEY_A), None);
    let before = sessions_created(&server).await;
    for bad in [
        json!({"browser": "chrome"}),
        json!({"browser": "Shell"}),
        json!({"browser": 1}),
        json!({"browser": ["full"]}),
        json!({"browser": "full", "cdp_url": "ws://127.0.0.1:9/devtools/browser/x"}),
        // Context sessions run on the shared browsers' executable, the headless shell.
        json!({"browser": "full", "isolation": "context"}),
    ] {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&bad.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
        assert!(
            r.json["detail"].as_str().unwrap().contains("browser"),
            "{bad}: {}",
            r.body
        );
    }
    assert_eq!(list().await.json["total"], 0);
    assert_eq!(sessions_created(&server).await, before);

    // A context session says what it runs on.
    let context = server.create(json!({"isolation": "context"})).await;
    reported(&server, &context, "shell", "context").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_session_gets_the_full_browser_unless_it_asks_for_the_shell() {
    let server = TestServer::start().await;
    // The full browser shows one tab at a time, the one the recording follows.
    let recorded = server.create(json!({"record": true})).await;
    reported(&server, &recorded, "full", "record").await;
    assert!(product(&recorded).await.starts_with("Chrome/"));
    let asked = server.create(json!({"record": true, "browser": "shell"})).await;
    reported(&server, &asked, "shell", "asked").await;
    assert!(product(&asked).await.starts_with("HeadlessChrome/"));
    server.stop().await;
}

/// The browsers (process group leaders) under the server's data directory that run the
/// full Chromium, not the headless shell, as their executables say.
fn full_browsers(server: &TestServer) -> Vec<u32> {
    chrome_groups_under(server.data_dir.path())
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| !exe.to_string_lossy().contains("headless-shell"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_other_kind_is_kept_warm_once_a_create_asked_for_it() {
    let server = TestServer::start().await;
    // Nothing asked for the full browser yet: none runs (the warm pool is the shell's).
    let default = server.create(json!({})).await;
    assert!(product(&default).await.starts_with("HeadlessChrome/"));
    assert_eq!(
        full_browsers(&server),
        Vec::<u32>::new(),
        "a full browser before any asked"
    );

    // A create asks for it: a cold launch, then one is kept ready beside the shells.
    let first = server.create(json!({"browser": "full"})).await;
    let mut ws = ws_connect(first["cdp_url"].as_str().unwrap()).await.unwrap();
    let first_pid = browser_pid(&mut ws).await;
    drop(ws);
    let warm = eventually(std::time::Duration::from_secs(30), || {
        full_browsers(&server).iter().any(|pid| *pid != first_pid)
    })
    .await;
    assert!(warm, "no full browser was made ready: {:?}", full_browsers(&server));
    let ready: Vec<u32> = full_browsers(&server).into_iter().filter(|p| *p != first_pid).collect();
    assert_eq!(ready.len(), 1, "one is kept, not more: {ready:?}");

    // The next such create (a recorded one here) is handed that very browser.
    let second = server.create(json!({"record": true})).await;
    reported(&server, &second, "full", "record").await;
    let mut ws = ws_connect(second["cdp_url"].as_str().unwrap()).await.unwrap();
    assert_eq!(browser_pid(&mut ws).await, ready[0], "the warm one was not handed out");
    drop(ws);

    // And one more is made ready in its place; the default still gets the shell.
    let refilled = eventually(std::time::Duration::from_secs(30), || full_browsers(&server).len() == 3).await;
    assert!(refilled, "{:?}", full_browsers(&server));
    let default = server.create(json!({})).await;
    assert!(product(&default).await.starts_with("HeadlessChrome/"));
    for session in [&first, &second] {
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
}
