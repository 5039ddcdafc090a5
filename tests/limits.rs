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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_creates_against_a_small_cap_answers_all_and_leaks_nothing() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 2;
        c.queue_timeout_ms = 300;
        c.creates_per_minute = 150;
    })
    .await;
    let data_dir = server.data_dir.path().to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let burst = (0..200).map(|_| {
        let addr = server.addr;
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")),
            )
            .await
            .expect("every request is answered")
        })
    });
    let answers = futures_util::future::join_all(burst).await;
    let lasted = started.elapsed();
    let mut counts = std::collections::BTreeMap::new();
    let mut created = Vec::new();
    for answer in answers {
        let r = answer.unwrap();
        *counts.entry(r.status.as_u16()).or_insert(0) += 1;
        match r.status {
            StatusCode::CREATED => created.push(r.json["session_id"].as_str().unwrap().to_owned()),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers.contains_key("retry-after"));
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(created.len(), 2, "exactly the cap: {counts:?}");
    // The bucket holds 150 and refills at 2.5 a second: however long the burst lasted, the
    // limiter let through at least the bucket and at most the bucket plus its refill.
    let limited = counts.get(&429).copied().unwrap_or(0);
    let let_through = 200 - limited;
    let refill = (lasted.as_secs_f64() * 2.5).ceil() as usize + 1;
    assert!(
        (150..=150 + refill).contains(&let_through),
        "{let_through} let through in {lasted:?}: {counts:?}"
    );

    for id in &created {
        assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    }
    let dir = server.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || processes_mentioning(&data_dir).is_empty()).await,
        "browsers left: {:?}",
        processes_mentioning(&data_dir)
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("browsers")).unwrap().count(),
        0,
        "no directory left"
    );
}

/// A line of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_held_in_bounded_memory_then_dropped() {
    // The broker as a process of its own, so that its peak memory (VmHWM) is its own:
    // memory read after the drop would miss whatever it held and freed.
    let data_dir = tempfile::tempdir().unwrap();
    let env = [("CDPGATE_API_KEYS", KEY_A), ("CDPGATE_WRITE_STALL_TIMEOUT_MS", "1000")];
    let Binary {
        mut child,
        mut lines,
        addr,
        ..
    } = start_binary(data_dir.path(), &env).await;
    let pid = child.id().unwrap();
    // Its log is read as it comes (a pipe nobody reads would stall it).
    let logging = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let created = http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let session = created.json;
    let id = session["session_id"].as_str().unwrap();
    let token = session["cdp_url"].as_str().unwrap().split_once("?token=").unwrap().1;
    let list = http(
        addr,
        Method::GET,
        &format!("/devtools/browser/{id}/json/list?token={token}"),
        None,
        None,
    )
    .await
    .json;
    let page_url = list.as_array().unwrap().iter().find(|t| t["type"] == "page").unwrap()["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let open = async || -> u64 {
        let metrics = http(addr, Method::GET, "/metrics", None, None).await.body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("cdpgate_proxy_connections_open "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("cdpgate_proxy_connections_open in {metrics}"))
    };

    // The peak starts again from here (5: VmHWM reset to the current RSS).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = status_kib(pid, "VmRSS");
    // Ask for 64 MB of answers and read none of them.
    let mut greedy = ws_connect(&page_url).await.unwrap();
    for i in 0..64 {
        let ask = json!({"id": i, "method": "Runtime.evaluate",
                         "params": {"expression": "'x'.repeat(1 << 20)", "returnByValue": true}});
        greedy.send(tungstenite::Message::text(ask.to_string())).await.unwrap();
    }
    assert!(open().await >= 1, "the greedy client is relayed");
    assert!(
        eventually_async(Duration::from_secs(20), || async { open().await == 0 }).await,
        "the stalled connection was dropped"
    );
    let peak_mib = status_kib(pid, "VmHWM").saturating_sub(before) / 1024;
    assert!(
        peak_mib < 24,
        "the broker held up to {peak_mib} MiB for a client that does not read"
    );

    // What the client does read ends without a close handshake: the broker hung up.
    let mut received = 0;
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut greedy)).await
    {
        if m.is_text() {
            received += 1;
        }
    }
    assert!(received < 64, "the broker did not queue every answer: {received}");

    // The session is unharmed.
    let mut fresh = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut fresh, 1, "Browser.getVersion", json!({})).await;
    signal(&child, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    logging.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_shutdown_new_requests_get_503_and_new_connections_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let mut client = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    // A request half-sent when the stop begins is answered, with 503.
    let mut late = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    late.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    server.shutdown.cancel();
    // Proxied connections get the going-away close frame.
    assert_eq!(
        await_close(&mut client, Duration::from_secs(10)).await,
        Some((1001, "broker shutting down".into()))
    );
    late.write_all(b"\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), late.read_to_string(&mut answer))
        .await
        .expect("answered, not held")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("The broker is shutting down"), "{answer}");
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(server.addr)
            .is_err())
        .await,
        "still accepting connections"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_slow_clients_are_dropped_not_held() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.request_read_timeout_ms = 1_000).await;
    let read_all = async |stream: &mut tokio::net::TcpStream| {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the broker let go of the connection in time")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    };

    // 100 KiB of headers: refused with 431.
    let mut big = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let filler = "x".repeat(100 * 1024);
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
    let _ = big.write_all(request.as_bytes()).await;
    let answer = read_all(&mut big).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    // Headers that never finish: the connection is closed after the read timeout.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_all(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A body that trickles: 408, and nothing created.
    let mut trickle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /public/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\nContent-Length: 100\r\n\r\n{{\"ttl\""
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let answer = read_all(&mut trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert_eq!(server.broker.metrics().sessions_created.get(), 0);

    // The broker goes on serving.
    let r = server.call(Method::GET, "/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    server.stop().await;
}
