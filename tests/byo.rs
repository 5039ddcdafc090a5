//! Bring your own browser: sessions that front a Chromium the user runs, started here
//! independently of the broker, and the doors that must stay shut.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A Chromium the "user" runs, on loopback; killed when dropped.
struct ExternalChrome {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    /// `ws://127.0.0.1:PORT/devtools/browser/UUID`
    ws_url: String,
    port: u16,
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
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", dir.path().display()))
        .arg("about:blank")
        // Killed, Chrome would leave its socket directory in /tmp; in here it goes with the rest.
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
    let port = ws_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    ExternalChrome {
        _child: child,
        _dir: dir,
        ws_url,
        port,
    }
}

async fn create_byo(server: &TestServer, body: Value) -> Response {
    server
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
        .await
}

async fn still_answers_directly(chrome: &ExternalChrome) {
    let mut ws = ws_connect(&chrome.ws_url)
        .await
        .expect("the external Chromium still runs");
    let v = cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    assert!(v["result"]["product"].is_string());
}

async fn loopback_allowed() -> TestServer {
    TestServer::start_with(|c| {
        c.byo_allow = vec!["127.0.0.0/8".into()];
        c.byo_timeout_ms = 1_500;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppeteer_and_playwright_drive_an_external_browser() {
    let chrome = start_external_chrome().await;
    let server = loopback_allowed().await;
    let site = format!("http://{}/", start_site().await);
    let pool = server.broker.pool().clone();
    assert!(eventually(Duration::from_secs(20), || pool.idle_count() == 1).await);
    let launched = server.broker.metrics().browsers_launched.get();

    for user_url in [chrome.ws_url.clone(), format!("http://127.0.0.1:{}", chrome.port)] {
        let r = create_byo(&server, json!({"cdp_url": user_url, "ttl": 120})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let cdp_url = r.json["cdp_url"].as_str().unwrap();
        assert!(cdp_url.starts_with(&format!("ws://{}/devtools/browser/sess_", server.addr)));
        assert!(
            !r.body.contains(&chrome.port.to_string()),
            "the user's URL is never echoed"
        );
        for (client, endpoint) in [
            ("puppeteer", cdp_url.to_owned()),
            ("playwright", cdp_url.to_owned()),
            ("playwright", cdp_url.replacen("ws://", "http://", 1)),
        ] {
            let seen = node("drive.mjs", &[client, &endpoint, &site]).await;
            assert_eq!(seen["title"], "cdpgate test site", "{client} via {user_url}");
        }
        // Discovery answers point through the broker, not at the user's browser.
        let list = server.discovery(&r.json, "json/list").await;
        assert_eq!(list.status, StatusCode::OK, "{}", list.body);
        assert!(
            !list.body.contains(&format!("127.0.0.1:{}", chrome.port)),
            "{}",
            list.body
        );
    }
    assert_eq!(
        server.broker.metrics().browsers_launched.get(),
        launched,
        "no managed browser was used"
    );
    server.stop().await;
    still_answers_directly(&chrome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_terminate_close_clients_but_leave_the_external_browser_running() {
    let chrome = start_external_chrome().await;
    let server = loopback_allowed().await;

    let short = create_byo(&server, json!({"cdp_url": chrome.ws_url, "ttl": 2}))
        .await
        .json;
    let long = create_byo(&server, json!({"cdp_url": chrome.ws_url})).await.json;
    let mut a = ws_connect(short["cdp_url"].as_str().unwrap()).await.unwrap();
    let mut b = ws_connect(long["cdp_url"].as_str().unwrap()).await.unwrap();
    let mut b2 = ws_connect(long["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut a, 1, "Browser.getVersion", json!({})).await;
    cdp_call(&mut b, 1, "Browser.getVersion", json!({})).await;

    assert_eq!(
        await_close(&mut a, Duration::from_secs(10)).await,
        Some((4001, "session expired".into()))
    );
    assert_eq!(
        server.get(short["session_id"].as_str().unwrap()).await.json["status"],
        "expired"
    );
    still_answers_directly(&chrome).await;

    assert_eq!(
        server.terminate(long["session_id"].as_str().unwrap()).await.status,
        StatusCode::NO_CONTENT
    );
    for ws in [&mut b, &mut b2] {
        assert_eq!(
            await_close(ws, Duration::from_secs(5)).await,
            Some((4002, "session terminated".into()))
        );
    }
    still_answers_directly(&chrome).await;
    server.stop().await;
    still_answers_directly(&chrome).await;
}

/// A listener that accepts connections and never says a word.
async fn silent_listener() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A server whose `/json/version` names `ws_url` as its browser.
async fn fake_discovery(ws_url: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = json!({"Browser": "Chrome/1", "webSocketDebuggerUrl": ws_url}).to_string();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_get_distinct_clear_errors_quickly() {
    let server = loopback_allowed().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let site = start_site().await;
    let silent = silent_listener().await;

    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!(format!("ws://user:hunter2@{closed}/devtools/browser/x")),
            "byo_unreachable",
            "could not be reached",
        ),
        (
            json!(format!("http://{site}")),
            "byo_not_devtools",
            "not a Chrome DevTools endpoint",
        ),
        (
            json!(format!("ws://{site}/devtools/browser/x")),
            "byo_not_devtools",
            "WebSocket upgrade was answered",
        ),
        (
            json!(format!("ws://{silent}/devtools/browser/x")),
            "byo_timeout",
            "did not answer within",
        ),
        (
            json!("ftp://example.com/x"),
            "byo_invalid_url",
            "ws://, wss://, http:// or https://",
        ),
        (json!("not a url"), "byo_invalid_url", "not usable"),
        (
            json!(format!("ws://10.1.2.3:9222/devtools/browser/x")),
            "byo_forbidden",
            "a private address",
        ),
        (
            json!("ws://169.254.169.254/latest"),
            "byo_forbidden",
            "a cloud metadata address",
        ),
        (
            json!("ws://no-such-host.invalid/x"),
            "byo_unreachable",
            "cannot resolve",
        ),
    ];
    for (url, code, words) in cases {
        let started = Instant::now();
        let r = create_byo(&server, json!({"cdp_url": url})).await;
        let took = started.elapsed();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {}", r.body);
        assert_eq!(r.json["code"], code, "{url}: {}", r.body);
        let detail = r.json["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{url}: {detail}");
        assert!(!detail.contains("hunter2"), "credentials are never echoed: {detail}");
        // No hang: the probe gives up after its configured time (1.5 s per step); a
        // generous bound, so a busy machine does not fail it.
        assert!(took < Duration::from_secs(30), "{url} took {took:?}");
    }
    for body in [
        json!({"cdp_url": 5}),
        json!({"cdp_url": "ws://127.0.0.1:1/x", "profile_id": "550e8400-e29b-41d4-a716-446655440000"}),
    ] {
        let r = create_byo(&server, body.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let r = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(r.json["total"], 0, "nothing was created");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_refused_unless_allowed() {
    let chrome = start_external_chrome().await;
    let server = TestServer::start().await;
    let r = create_byo(&server, json!({"cdp_url": chrome.ws_url})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["code"], "byo_forbidden");
    assert!(r.json["detail"].as_str().unwrap().contains("a loopback address"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_browsers_are_out_of_reach_even_with_loopback_allowed() {
    let server = loopback_allowed().await;
    let managed = server.create(json!({})).await;
    let id = managed["session_id"].as_str().unwrap();
    let upstream = server.broker.running_session(None, id).unwrap().upstream.clone();
    let port = upstream.authority.rsplit(':').next().unwrap().to_owned();
    let direct = format!("ws://127.0.0.1:{port}{}", upstream.browser_path);
    let discovery = fake_discovery(direct.clone()).await;

    for url in [
        direct.clone(),
        format!("ws://localhost:{port}{}", upstream.browser_path),
        format!("http://127.0.0.1:{port}"),
        // A discovery answer that points at a managed browser is checked too.
        format!("http://{discovery}"),
        // Nor the broker itself.
        format!("ws://{}/devtools/browser/{id}", server.addr),
    ] {
        let r = create_byo(&server, json!({"cdp_url": url})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {}", r.body);
        assert_eq!(r.json["code"], "byo_forbidden", "{url}: {}", r.body);
        assert!(
            r.json["detail"].as_str().unwrap().contains("own browsers"),
            "{}",
            r.body
        );
    }
    server.stop().await;
}

/// The broker's peak memory (VmHWM) since the last reset, and a reset. Tests of this binary
/// run side by side, so it is this process's whole peak: bounds are set far above theirs.
fn peak_rss_mib(reset: bool) -> u64 {
    if reset {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// The cheapest JSON to send and the dearest to parse: `[0,0,…]` of about `bytes` bytes
/// (some 40 times its size once parsed).
fn zeros(bytes: usize) -> Vec<u8> {
    let mut json = b"[".to_vec();
    json.extend(b"0,".repeat((bytes - 3) / 2));
    json.extend(b"0]");
    json
}

/// A tenant's own "browser" that answers the probe, then every other command with 48 MiB
/// of `[0,0,…]` in 16 MiB frames, and `/json/list` with 15 MiB of the same.
async fn memory_hungry_devtools() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 2048];
                let n = stream.peek(&mut head).await.unwrap_or(0);
                if !String::from_utf8_lossy(&head[..n])
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket")
                {
                    let mut stream = stream;
                    let _ = stream.read(&mut head).await;
                    let body = zeros(15 << 20);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    return;
                }
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let command: Value = serde_json::from_str(&text).unwrap();
                    if command["method"] == "Browser.getVersion" {
                        let reply = json!({"id": command["id"], "result": {"product": "Chrome/150.0.0.0",
                            "protocolVersion": "1.3", "userAgent": "Chrome", "jsVersion": "1", "revision": "1"}});
                        if ws.send(Message::text(reply.to_string())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // One text message in three frames, written by hand (tungstenite sends
                    // a message as one frame, which a 16 MiB frame limit alone refuses).
                    let message = zeros(48 << 20);
                    let stream = ws.get_mut();
                    for (i, part) in message.chunks(16 << 20).enumerate() {
                        let last = (i + 1) * (16 << 20) >= message.len();
                        let opcode = if i == 0 { 0x1 } else { 0x0 };
                        let mut frame = vec![if last { 0x80 | opcode } else { opcode }, 127];
                        frame.extend_from_slice(&(part.len() as u64).to_be_bytes());
                        if stream.write_all(&frame).await.is_err() || stream.write_all(part).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A tenant's own endpoint answering with what costs the broker most to parse: the
/// dashboard's screenshot and the discovery list are refused, and the broker's memory
/// does not follow (before, each screenshot cost it about 2 GB, each list about 0.6 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byo_endpoint_answering_hugely_gets_errors_and_costs_little_memory() {
    let server = loopback_allowed().await;
    let devtools = memory_hungry_devtools().await;
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(&json!({"cdp_url": format!("ws://{devtools}/devtools/browser/own")}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json["session_id"].as_str().unwrap().to_owned();
    let before = peak_rss_mib(true);
    let screenshot = format!("/public/sessions/{id}/screenshot");
    let (shot_a, shot_b, list_a, list_b) = tokio::join!(
        server.call(Method::GET, &screenshot, Some(KEY_A), None),
        server.call(Method::GET, &screenshot, Some(KEY_A), None),
        server.discovery(&r.json, "json/list"),
        server.discovery(&r.json, "json/list"),
    );
    let grew = peak_rss_mib(false).saturating_sub(before);
    for shot in [&shot_a, &shot_b] {
        assert_eq!(
            shot.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            &shot.body[..shot.body.len().min(300)]
        );
    }
    for list in [&list_a, &list_b] {
        assert_eq!(
            list.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            &list.body[..list.body.len().min(300)]
        );
    }
    assert!(grew < 600, "the broker's peak memory grew by {grew} MiB");
    let health = server.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    server.stop().await;
}
