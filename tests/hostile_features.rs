//! The newest features (fork, one-call renders, extensions, named pools) attacked from a
//! hostile tenant's side, through the real broker and real Chromium: each test asserts on
//! what leaked or changed (bytes, keys, counts, files), not only on a status.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A site on loopback whose every page is a plain document.
async fn plain_site() -> SocketAddr {
    serve_pages(|_| (String::new(), "<html><body><p>plain</p></body></html>".into())).await
}

async fn fork(server: &TestServer, key: &str, id: &str, body: Value) -> Response {
    server
        .call(
            Method::POST,
            &format!("/public/sessions/{id}/fork"),
            Some(key),
            Some(&body.to_string()),
        )
        .await
}

/// How many sessions `key` has listed, of any status.
async fn listed(server: &TestServer, key: &str) -> u64 {
    let r = server.call(Method::GET, "/public/sessions", Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["total"].as_u64().unwrap()
}

/// A source page rewrites `JSON`, `Object.entries` and `Storage` in its own world so that a
/// fork would carry storage it never had; and keeps keys that shadow `Storage`'s own
/// properties (`__proto__`, `length`, `getItem`), which `Object.entries` never lists. The
/// fork carries the page's real storage, every key, and nothing forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cannot_forge_or_hide_what_a_fork_carries() {
    let server = TestServer::start().await;
    let site = plain_site().await;
    let source = server.create(json!({"isolation": "context"})).await;
    let id = source["session_id"].as_str().unwrap();
    let mut client = CdpClient::connect(&source).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/p")).await;
    let planted = client
        .eval(
            &page,
            r#"(() => {
              localStorage.setItem('real', 'r"1</script>');
              localStorage.setItem('__proto__', 'p');
              localStorage.setItem('length', 'l');
              localStorage.setItem('getItem', 'g');
              sessionStorage.setItem('tab', 't1');
              const forged = '{"x":0,"y":0,"local":[["forged","yes"]],"session":[["forged","yes"]]}';
              JSON.stringify = () => forged;
              Object.entries = () => [['forged', 'yes']];
              Storage.prototype.key = () => 'forged';
              Storage.prototype.getItem = () => 'yes';
              return localStorage.length;
            })()"#,
        )
        .await;
    assert_eq!(planted, json!(4));
    let r = fork(&server, KEY_A, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json["carried"]["local_storage"], 1, "{}", r.body);
    let forked = &r.json["sessions"][0];
    let mut fork_client = CdpClient::connect(forked).await;
    let (_, fork_page) = fork_client.own_page().await;
    let seen = fork_client
        .eval(
            &fork_page,
            "JSON.stringify([location.pathname, \
             Array.from({length: localStorage.length}, (_, i) => localStorage.key(i)).sort(), \
             localStorage.getItem('real'), localStorage.getItem('__proto__'), \
             localStorage.getItem('length'), localStorage.getItem('getItem'), \
             localStorage.getItem('forged'), sessionStorage.getItem('tab'), sessionStorage.getItem('forged')])",
        )
        .await;
    let seen: Value = serde_json::from_str(seen.as_str().unwrap()).unwrap();
    assert_eq!(
        seen,
        json!(["/p", ["__proto__", "getItem", "length", "real"], "r\"1</script>", "p", "l", "g", null, "t1", null]),
        "the fork carries the page's real storage, every key, nothing forged"
    );
    server.stop().await;
}

/// A source whose tabs hold more storage than a fork may carry (the same origin's
/// localStorage read once per tab) is refused with a clear error and makes nothing; the
/// same storage in one tab is carried whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_of_a_source_with_too_much_storage_makes_nothing() {
    let server = TestServer::start().await;
    let site = plain_site().await;
    let source = server.create(json!({"isolation": "context"})).await;
    let id = source["session_id"].as_str().unwrap();
    let mut client = CdpClient::connect(&source).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/a")).await;
    // Most of what Chrome lets one origin keep (10 MiB, two bytes a character).
    let big = 2_000_000;
    let kept = client
        .eval(
            &page,
            &format!("(localStorage.setItem('big', 'x'.repeat({big})), localStorage.getItem('big').length)"),
        )
        .await;
    assert_eq!(kept, json!(big));
    let r = fork(&server, KEY_A, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut fork_client = CdpClient::connect(&r.json["sessions"][0]).await;
    let (_, fork_page) = fork_client.own_page().await;
    let carried = fork_client
        .eval(&fork_page, "(localStorage.getItem('big') || '').length")
        .await;
    assert_eq!(carried, json!(big), "the storage is carried whole");
    assert_eq!(
        server
            .call(
                Method::DELETE,
                &format!("/public/sessions/{}", r.json["sessions"][0]["session_id"].as_str().unwrap()),
                Some(KEY_A),
                None
            )
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // Four more tabs of the same origin: the same storage five times, past what a fork
    // carries.
    for tab in ["b", "c", "d", "e"] {
        let opened = client.open(&format!("http://{site}/{tab}"), None).await.unwrap();
        assert_eq!(client.eval(&opened, "localStorage.length").await, json!(1));
    }
    let (sessions, active) = (listed(&server, KEY_A).await, server.broker.active_sessions());
    let r = fork(&server, KEY_A, id, json!({"count": 4})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.json["detail"].as_str().unwrap().contains("characters of localStorage"), "{}", r.body);
    assert_eq!(
        (listed(&server, KEY_A).await, server.broker.active_sessions()),
        (sessions, active),
        "a refused fork makes nothing"
    );
    assert!(
        eventually(Duration::from_secs(10), || server.broker.active_sessions() == active).await,
        "no fork is left running"
    );
    server.stop().await;
}
