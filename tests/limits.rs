//! Limits: session creations per API key, connections per session.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_are_limited_per_api_key() {
    let server = TestServer::start_with(|c| c.creates_per_minute = 2).await;
    for _ in 0..2 {
        server.create(json!({})).await;
    }
    let r = server
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=31).contains(&retry), "{retry}");
    assert!(r.json["detail"].as_str().unwrap().contains("at most 2 a minute"));
    // Another key has its own allowance.
    let r = server
        .call(Method::POST, "/public/sessions", Some(KEY_B), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_session_create_rate_limited_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_session_are_limited() {
    let server = TestServer::start_with(|c| c.max_connections_per_session = 2).await;
    let session = server.create(json!({})).await;
    let url = session["cdp_url"].as_str().unwrap();
    let mut a = ws_connect(url).await.unwrap();
    let _b = ws_connect(url).await.unwrap();
    match ws_connect(url).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS),
        other => panic!("a third connection was not refused: {other:?}"),
    }
    // The live view counts too.
    let live = session["metadata"]["live_url"]
        .as_str()
        .unwrap()
        .replacen("http://", "ws://", 1);
    let live_socket = live.replacen("?token=", "/cdp?token=", 1);
    assert!(matches!(ws_connect(&live_socket).await, Err(tungstenite::Error::Http(r)) if r.status() == 429));

    a.close(None).await.unwrap();
    drop(a);
    let mut reconnected = None;
    for _ in 0..50 {
        if let Ok(ws) = ws_connect(url).await {
            reconnected = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = reconnected.expect("a slot frees when a connection closes");
    cdp_call(&mut c, 1, "Browser.getVersion", json!({})).await;
    c.send(tungstenite::Message::Close(None)).await.ok();
    server.stop().await;
}
