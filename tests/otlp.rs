//! Spans to an OpenTelemetry collector: a broker with `otlp_endpoint` sends its spans over
//! OTLP/HTTP (protobuf) to a collector stand-in that records what it receives.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// One request the collector stand-in received: its head and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP/HTTP posts on loopback, answers 200 with an empty protobuf message.
async fn start_collector() -> (std::net::SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(request) = read_request(&mut stream, &mut buf).await {
                    store.lock().unwrap().push(request);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_creates_launches_connections_and_actions_reach_the_collector() {
    let (collector, received) = start_collector().await;
    let data_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector}");
    let env = [
        ("CDPGATE_API_KEYS", KEY_A),
        ("CDPGATE_OTLP_ENDPOINT", endpoint.as_str()),
        ("CDPGATE_NODE_ID", "node-otel"),
    ];
    let broker = start_binary(data_dir.path(), &env).await;
    let created = http(broker.addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.json["session_id"].as_str().unwrap().to_owned();
    let mut ws = ws_connect(created.json["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    let action = json!({"session_id": id, "action": "go to about:blank"}).to_string();
    let acted = http(
        broker.addr,
        Method::POST,
        "/public/single-actions/run-action",
        Some(KEY_A),
        Some(&action),
    )
    .await;
    assert_eq!(acted.status, StatusCode::OK, "{}", acted.body);
    let path = format!("/public/sessions/{id}/terminate");
    assert_eq!(
        http(broker.addr, Method::POST, &path, Some(KEY_A), None).await.status,
        StatusCode::NO_CONTENT
    );
    let _ = await_close(&mut ws, Duration::from_secs(10)).await;
    // A clean stop sends what is still buffered.
    stop_binary(broker).await;

    let posts = received.lock().unwrap().clone();
    assert!(!posts.is_empty(), "the collector heard from the broker");
    for (head, _) in &posts {
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("content-type: application/x-protobuf"), "{head}");
    }
    // Protobuf keeps strings as they are: the span names, the service and the session's id.
    let all: Vec<u8> = posts.iter().flat_map(|(_, body)| body.clone()).collect();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    for name in [
        "session.create",
        "browser.launch",
        "proxy.connection",
        "action.run",
        "cdpgate",
        "node-otel",
        id.as_str(),
    ] {
        assert!(has(name), "{name} is in the exported spans");
    }
}
