//! Webhooks with real Chromium and the reference Standard Webhooks verifier (Python's
//! `standardwebhooks`): a receiver that is down, then a broker restart, then the receiver
//! back: every event arrives, signed, in order; and a webhook to a private address without
//! the operator's allowance is refused with nothing sent.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cdpgate::config::KeyWebhook;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn with_webhooks(config: &mut cdpgate::Config) {
    config.webhooks = vec![KeyWebhook {
        tenant: "*".into(),
        secret: SECRET.into(),
        ..KeyWebhook::default()
    }];
    config.webhook_retry_max_ms = 1_000;
    config.webhook_timeout_ms = 2_000;
}

/// A broker on `data_dir` (kept across restarts), serving until `shutdown`.
async fn start_on(
    data_dir: &Path,
    allow_loopback: bool,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = test_config(data_dir);
    with_webhooks(&mut config);
    if allow_loopback {
        config.webhook_allow = vec!["loopback".into()];
    }
    config.validate().unwrap();
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let broker = cdpgate::start(&listener, config, shutdown.clone())
        .await
        .expect("broker starts");
    let serving = tokio::spawn(cdpgate::serve(listener, broker));
    (addr, shutdown, serving)
}

async fn stop(shutdown: CancellationToken, serving: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("the broker stopped within 30 s")
        .unwrap();
}

/// The receiver's lines so far.
fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_reaches_a_receiver_that_was_down_across_a_broker_restart() {
    assert_tools_installed();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let hook = format!("http://127.0.0.1:{port}/hook");

    let (addr, shutdown, serving) = start_on(data.path(), true).await;
    let created = http(
        addr,
        Method::POST,
        "/public/sessions",
        Some(KEY_A),
        Some(&json!({"webhook_url": hook}).to_string()),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.json["session_id"].as_str().unwrap().to_owned();
    let mut cdp = CdpClient::connect(&created.json).await;
    cdp.open("about:blank", None).await.unwrap();
    drop(cdp);
    // The receiver is down: tries fail and are logged.
    let log_path = format!("/public/sessions/{id}/webhooks");
    let failing = eventually_async(Duration::from_secs(20), || async {
        let log = http(addr, Method::GET, &log_path, Some(KEY_A), None).await.json;
        log["deliveries"].as_array().is_some_and(|d| d.len() >= 2)
    })
    .await;
    assert!(failing, "failed tries are logged");
    let log = http(addr, Method::GET, &log_path, Some(KEY_A), None).await.json;
    assert_eq!(log["webhook_url"], hook.as_str());
    assert_eq!(log["delivered_through"], 0);
    assert!(
        log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["delivered"] == false && d["event_id"] == 1 && d["error"].is_string()),
        "{log:#}"
    );
    // The broker stops (the session ends with it) with every delivery pending.
    stop(shutdown, serving).await;

    // Started again on the same data: the sender resumes where it was.
    let (addr, shutdown, serving) = start_on(data.path(), true).await;
    let out = data.path().join("received.jsonl");
    let mut receiver = tokio::process::Command::new(python())
        .arg(repo_root().join("tests/py/webhook_receiver.py"))
        .args([&port.to_string(), SECRET, out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), ready.next_line())
        .await
        .expect("the receiver starts")
        .unwrap();
    assert!(line.unwrap().contains("listening"));

    let events = http(
        addr,
        Method::GET,
        &format!("/public/sessions/{id}/events?limit=1000"),
        Some(KEY_A),
        None,
    )
    .await
    .json["events"]
        .as_array()
        .unwrap()
        .clone();
    let last = events.last().unwrap().clone();
    assert_eq!(last["type"], "ended", "{events:#?}");
    let all_in = eventually(Duration::from_secs(30), || {
        received(&out).iter().any(|l| l["event"]["id"] == last["id"])
    })
    .await;
    assert!(all_in, "the last event arrives: {:#?}", received(&out));

    let lines = received(&out);
    assert!(
        lines.iter().all(|l| l.get("bad").is_none()),
        "every delivery verifies: {lines:#?}"
    );
    // At least once: a repeat carries the same webhook-id; the first sight of each is in order.
    let mut firsts: Vec<Value> = Vec::new();
    for line in &lines {
        let event = &line["event"];
        assert_eq!(
            line["webhook_id"],
            format!("msg_{id}_{}", event["id"]).as_str(),
            "one id per event, the same on every try"
        );
        if !firsts.iter().any(|e| e["id"] == event["id"]) {
            firsts.push(event.clone());
        }
    }
    assert_eq!(firsts, events, "every event, in order, as the API shows it");
    let log = http(addr, Method::GET, &log_path, Some(KEY_A), None).await.json;
    assert_eq!(log["delivered_through"], last["id"]);
    assert!(
        log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["delivered"] == true && d["status"] == 204)
    );
    let done = eventually_async(Duration::from_secs(10), || async {
        http(addr, Method::GET, &log_path, Some(KEY_A), None).await.json["done"] == true
    })
    .await;
    assert!(done);
    stop(shutdown, serving).await;
    let _ = receiver.kill().await;
}

/// Counts the connections a listener accepts.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_to_a_private_address_is_refused_and_nothing_is_sent() {
    let (port, connections) = counting_listener().await;
    let server = TestServer::start_with(with_webhooks).await;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://10.1.2.3:{port}/hook"),
    ] {
        let r = server
            .call(
                Method::POST,
                "/public/sessions",
                Some(KEY_A),
                Some(&json!({"webhook_url": url}).to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {}", r.body);
        assert!(r.body.contains("webhook_allow"), "{}", r.body);
    }
    for (body, why) in [
        (json!({"webhook_url": "ftp://example.com/"}), "http"),
        (json!({"webhook_url": "http://user:pw@example.com/"}), "credentials"),
        (json!({"webhook_url": 5}), "webhook_url"),
        (
            json!({"webhook_url": "https://example.com/", "webhook_events": ["nope"]}),
            "nope",
        ),
    ] {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert!(r.body.contains(why), "{}", r.body);
    }
    // Nothing was created, nothing connected.
    let list = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(list.json["total"], 0, "{}", list.body);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    server.stop().await;

    // Without a signing secret for the key, no webhook at all.
    let server = TestServer::start_with(|c| c.webhook_allow = vec!["loopback".into()]).await;
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(&json!({"webhook_url": format!("http://127.0.0.1:{port}/")}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("secret"), "{}", r.body);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    server.stop().await;
}
