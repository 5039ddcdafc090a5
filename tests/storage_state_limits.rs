//! A storage state import from a hostile or careless client: bad origins are a `422` that
//! changes nothing, too many origins are refused, a slow import is abandoned at its
//! deadline with the profile as it was, and a client that gives up releases the profile.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

async fn new_profile(server: &TestServer) -> String {
    let body = json!({ "name": "imports" }).to_string();
    let r = server
        .call(Method::POST, "/public/browser-profiles", Some(KEY_A), Some(&body))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json["id"].as_str().unwrap().to_owned()
}

/// A digest of every file under the profile's directory (names, link targets, contents).
fn profile_digest(server: &TestServer, id: &str) -> String {
    fn walk(dir: &Path, hasher: &mut Sha256) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            hasher.update(entry.file_name().as_encoded_bytes());
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                hasher.update(std::fs::read_link(&path).unwrap().as_os_str().as_encoded_bytes());
            } else if kind.is_dir() {
                walk(&path, hasher);
            } else {
                hasher.update(std::fs::read(&path).unwrap());
            }
        }
    }
    let mut hasher = Sha256::new();
    walk(&server.data_dir.path().join("profiles").join(id), &mut hasher);
    format!("{:x}", hasher.finalize())
}

fn origins(n: usize) -> Value {
    let origins: Vec<Value> = (0..n)
        .map(|i| json!({"origin": format!("https://o{i}.example"), "localStorage": [{"name": "k", "value": "v"}]}))
        .collect();
    json!({ "cookies": [], "origins": origins })
}

async fn import(server: &TestServer, id: &str, state: &Value) -> Response {
    let path = format!("/public/browser-profiles/{id}/storage-state");
    server
        .call(Method::POST, &path, Some(KEY_A), Some(&state.to_string()))
        .await
}

async fn in_use_by(server: &TestServer, id: &str) -> u64 {
    let r = server
        .call(
            Method::GET,
            &format!("/public/browser-profiles/{id}"),
            Some(KEY_A),
            None,
        )
        .await;
    r.json["in_use_by"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_origins_and_too_many_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let id = new_profile(&server).await;
    let before = profile_digest(&server, &id);
    let launched = || server.broker.metrics().browsers_launched.get();
    // The warm pool's first launch may still be under way: counted from a full pool, a
    // launch is the refused imports'.
    let warm = server.broker.config().pool_size;
    assert!(eventually(Duration::from_secs(30), || server.broker.pool().idle_count() >= warm).await);
    let launched_before = launched();
    for origin in [
        "HTTP://a.b.c*",
        "https://*.example",
        "https://x.example/path",
        "javascript:1",
    ] {
        let state = json!({"origins": [{"origin": origin, "localStorage": []}]});
        let r = import(&server, &id, &state).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{origin}: {}", r.body);
        assert!(
            r.json["detail"].as_str().unwrap().contains("origins[0].origin"),
            "{}",
            r.body
        );
    }
    let r = import(&server, &id, &origins(51)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.json["detail"].as_str().unwrap().contains("at most 50 origins"),
        "{}",
        r.body
    );
    // Refused before any browser was started for it: the profile is as it was, and free.
    assert_eq!(launched(), launched_before);
    assert_eq!(profile_digest(&server, &id), before);
    assert_eq!(in_use_by(&server, &id).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_past_its_deadline_is_abandoned_with_the_profile_unchanged() {
    let server = TestServer::start_with(|c| c.storage_state_timeout_ms = 1_000).await;
    let id = new_profile(&server).await;
    let before = profile_digest(&server, &id);
    let started = Instant::now();
    let r = import(&server, &id, &origins(50)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    assert!(r.json["detail"].as_str().unwrap().contains("unchanged"), "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(profile_digest(&server, &id), before, "nothing saved");
    // The profile is free at once: a session may persist into it.
    assert_eq!(in_use_by(&server, &id).await, 0);
    let session = server.create(json!({"profile_id": id, "persist_changes": true})).await;
    assert_eq!(
        server.terminate(session["session_id"].as_str().unwrap()).await.status,
        StatusCode::NO_CONTENT
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_releases_the_profile_promptly() {
    let server = TestServer::start().await;
    let id = new_profile(&server).await;
    let before = profile_digest(&server, &id);
    // A long import, and a client that hangs up while it runs.
    let body = origins(50).to_string();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /public/browser-profiles/{id}/storage-state HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY_A}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually_async(Duration::from_secs(20), || async { in_use_by(&server, &id).await == 1 }).await,
        "the import holds the profile"
    );
    drop(stream);
    let gave_up = Instant::now();
    assert!(
        eventually_async(Duration::from_secs(5), || async { in_use_by(&server, &id).await == 0 }).await,
        "the profile is released within seconds of the client leaving"
    );
    assert_eq!(
        profile_digest(&server, &id),
        before,
        "the abandoned import saved nothing"
    );
    // Another import takes the profile as its writer.
    let small = json!({"origins": [{"origin": "https://a.example", "localStorage": [{"name": "k", "value": "v"}]}]});
    let r = import(&server, &id, &small).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(gave_up.elapsed() < Duration::from_secs(30), "{:?}", gave_up.elapsed());
    assert_ne!(profile_digest(&server, &id), before, "the second import was saved");
    server.stop().await;
}

/// Directories of profile copies (`*-profile`) anywhere under the data directory.
fn profile_copies(server: &TestServer) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(server.data_dir.path().to_owned(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_string_lossy().ends_with("-profile") {
                found.push(path);
            } else if depth < 3 {
                stack.push((path, depth + 1));
            }
        }
    }
    found
}

/// A client that hangs up while its profile session is being made (here: waiting for a
/// slot, the profile held and copied) leaves the profile free and no copy on disk; before,
/// the hold (the writer lock) stayed until a restart, and the copy with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_profile_session_releases_the_profile_and_its_copy() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 1;
        c.queue_timeout_ms = 30_000;
    })
    .await;
    let id = new_profile(&server).await;
    let busy = server.create(json!({})).await;
    let body = json!({"profile_id": id, "persist_changes": true}).to_string();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /public/sessions HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY_A}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually_async(Duration::from_secs(20), || async { in_use_by(&server, &id).await == 1 }).await,
        "the create holds the profile"
    );
    assert!(
        eventually(Duration::from_secs(20), || !profile_copies(&server).is_empty()).await,
        "the create copies the profile while it waits for a slot"
    );
    drop(stream);
    assert!(
        eventually_async(Duration::from_secs(5), || async { in_use_by(&server, &id).await == 0 }).await,
        "the profile is released within seconds of the client leaving"
    );
    assert!(
        eventually(Duration::from_secs(5), || profile_copies(&server).is_empty()).await,
        "a copy is left: {:?}",
        profile_copies(&server)
    );
    // The slot freed, a persisting session takes the profile as its writer.
    server.terminate(busy["session_id"].as_str().unwrap()).await;
    let session = server.create(json!({"profile_id": id, "persist_changes": true})).await;
    assert!(session["session_id"].is_string(), "{session}");
    server.stop().await;
}
