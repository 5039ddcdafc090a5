//! The CDP proxy with real clients: Puppeteer, Playwright and raw WebSockets.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use futures_util::SinkExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

fn cdp_url(session: &Value) -> String {
    session["cdp_url"].as_str().unwrap().to_owned()
}

/// The status code an upgrade attempt was refused with.
async fn refused_status(url: &str) -> StatusCode {
    match ws_connect(url).await {
        Err(tungstenite::Error::Http(response)) => response.status(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade to {url} was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppeteer_and_playwright_drive_a_session_at_its_screen_size() {
    let server = TestServer::start().await;
    let site = format!("http://{}/", start_site().await);

    // A non-default size needs a fresh launch; the default one comes from the warm pool.
    for (screen, clients) in [
        (
            json!({"width": 1024, "height": 600}),
            vec!["puppeteer", "playwright", "playwright-http"],
        ),
        (json!({"width": 1280, "height": 720}), vec!["puppeteer"]),
    ] {
        let session = server.create(json!({"screen_config": screen})).await;
        let url = cdp_url(&session);
        for client in clients {
            let (script_client, endpoint) = match client {
                // Playwright's http form: it fetches …/json/version/ and follows the answer.
                "playwright-http" => ("playwright", url.replacen("ws://", "http://", 1)),
                other => (other, url.clone()),
            };
            let seen = node("drive.mjs", &[script_client, &endpoint, &site]).await;
            assert_eq!(seen["title"], "cdpgate test site", "{client}");
            assert_eq!(seen["text"], "Hello through the proxy", "{client}");
            assert_eq!(seen["sum"], 42, "{client}");
            let (w, h) = (&screen["width"], &screen["height"]);
            assert_eq!((&seen["innerWidth"], &seen["innerHeight"]), (w, h), "{client} viewport");
            assert_eq!((&seen["screenWidth"], &seen["screenHeight"]), (w, h), "{client} screen");
            assert_eq!(seen["screenshot"], screen, "{client} screenshot");
            if script_client == "puppeteer" {
                assert_eq!(seen["initial"], json!([w, h]), "the first tab's viewport");
            }
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_a_browser_and_reconnect() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let url = cdp_url(&session);

    let mut a = ws_connect(&url).await.unwrap();
    let mut b = ws_connect(&url).await.unwrap();
    let created = cdp_call(&mut a, 1, "Target.createTarget", json!({"url": "about:blank#from-a"})).await;
    let target_id = created["result"]["targetId"].as_str().unwrap().to_owned();
    let targets = cdp_call(&mut b, 1, "Target.getTargets", json!({})).await;
    let seen_by_b = targets["result"]["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["targetId"] == target_id.as_str());
    assert!(seen_by_b, "B sees the tab A opened: one browser");

    // A leaves; B goes on working.
    a.close(None).await.unwrap();
    drop(a);
    let v = cdp_call(&mut b, 2, "Browser.getVersion", json!({})).await;
    assert!(v["result"]["product"].as_str().unwrap().contains("Chrome"));

    // A comes back on the same URL.
    let mut a = ws_connect(&url).await.unwrap();
    let v = cdp_call(&mut a, 1, "Browser.getVersion", json!({})).await;
    assert!(v["result"]["product"].is_string());
    assert_eq!(
        server.get(session["session_id"].as_str().unwrap()).await.json["status"],
        "active"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_closes_every_connection_and_refuses_new_ones() {
    let server = TestServer::start().await;
    let session = server.create(json!({"ttl": 2})).await;
    let id = session["session_id"].as_str().unwrap();
    let expires_at = humantime::parse_rfc3339(session["expires_at"].as_str().unwrap()).unwrap();
    let url = cdp_url(&session);
    let mut a = ws_connect(&url).await.unwrap();
    let mut b = ws_connect(&url).await.unwrap();
    cdp_call(&mut a, 1, "Browser.getVersion", json!({})).await;

    for ws in [&mut a, &mut b] {
        let close = await_close(ws, Duration::from_secs(10)).await;
        assert_eq!(close, Some((4001, "session expired".to_owned())));
        // Not before its time. (How soon after is a benchmark, not a test.)
        assert!(SystemTime::now() >= expires_at);
    }
    let got = server.get(id).await.json;
    assert_eq!(got["status"], "expired");
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_proxy_close_frames_total{code=\"4001\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cdpgate_sessions_expired_total 1"), "{metrics}");
    assert_eq!(refused_status(&url).await, StatusCode::GONE);
    let again = server.terminate(id).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json["detail"], "Session has already expired");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_closes_connections_and_kills_the_browser() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let chrome = server
        .broker
        .running_session(None, id)
        .unwrap()
        .upstream
        .authority
        .clone();
    let url = cdp_url(&session);
    let mut a = ws_connect(&url).await.unwrap();
    let mut b = ws_connect(&url).await.unwrap();
    cdp_call(&mut b, 1, "Browser.getVersion", json!({})).await;
    let data_dir = server.data_dir.path().to_string_lossy().into_owned();
    assert!(!processes_mentioning(&data_dir).is_empty());

    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            await_close(ws, Duration::from_secs(5)).await,
            Some((4002, "session terminated".to_owned()))
        );
    }
    assert_eq!(refused_status(&url).await, StatusCode::GONE);
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(&chrome)
            .is_err())
        .await,
        "the session's browser is gone"
    );
    // Only the warm pool's browser is left (its user-data directory, and its downloads
    // directory beside it).
    let browsers_dir = server.data_dir.path().join("browsers");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_dir(&browsers_dir)
            .unwrap()
            .count()
            == 2)
        .await,
        "the session's scratch directory is removed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_close_from_a_client_ends_the_session() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let handle = server.broker.running_session(None, id).expect("running");
    let mut a = ws_connect(&cdp_url(&session)).await.unwrap();
    let mut b = ws_connect(&cdp_url(&session)).await.unwrap();
    cdp_call(&mut a, 1, "Browser.close", json!({})).await;
    assert_eq!(
        await_close(&mut b, Duration::from_secs(10)).await,
        Some((4003, "browser closed".to_owned()))
    );
    let ended = eventually(Duration::from_secs(10), || {
        handle.status() != cdpgate::store::Status::Active
    })
    .await;
    assert!(ended);
    let got = server.get(id).await.json;
    assert_eq!(
        (got["status"].as_str(), got["end_reason"].as_str()),
        (Some("terminated"), Some("browser exited"))
    );
    assert_eq!(server.broker.pool().free_slots(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_reaching_chrome() {
    let server = TestServer::start().await;
    let a = server.create(json!({})).await;
    let b = server.create(json!({})).await;
    let a_id = a["session_id"].as_str().unwrap();
    let a_url = cdp_url(&a);
    let (base, token) = a_url.split_once("?token=").unwrap();
    let b_token = cdp_url(&b).split_once("?token=").unwrap().1.to_owned();

    let tenant_of = |key: &str| {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-api-key", key.parse().unwrap());
        cdpgate::auth::ApiKeys::new(&[key.to_owned()])
            .authenticate(&headers)
            .unwrap()
    };
    let (tenant_a, tenant_b) = (tenant_of(KEY_A), tenant_of(KEY_B));
    let forged = cdpgate::auth::Tokens::new(b"someone-elses-secret-0123456789ab").mint(
        a_id,
        &tenant_a,
        cdpgate::auth::Scope::Cdp,
        SystemTime::now(),
        SystemTime::now() + Duration::from_secs(600),
    );
    let expired = server.broker.tokens().mint(
        a_id,
        &tenant_a,
        cdpgate::auth::Scope::Cdp,
        SystemTime::now() - Duration::from_secs(700),
        SystemTime::now() - Duration::from_secs(100),
    );
    // Signed by this broker, for the right session, but naming another tenant.
    let other_tenants = server.broker.tokens().mint(
        a_id,
        &tenant_b,
        cdpgate::auth::Scope::Cdp,
        SystemTime::now(),
        SystemTime::now() + Duration::from_secs(600),
    );
    assert_eq!(
        refused_status(&format!("{base}?token={other_tenants}")).await,
        StatusCode::NOT_FOUND,
        "a token naming another tenant opens nothing (as for an unknown session)"
    );
    // An unsigned token ("alg": "none") naming the same session.
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = json!({"sid": a_id, "scope": "cdp", "iat": 0, "exp": 4_102_444_800u64});
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        )
    };
    let mut tampered = token.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    for (what, url) in [
        ("missing", base.to_owned()),
        ("empty", format!("{base}?token=")),
        ("garbage", format!("{base}?token=not.a.jwt")),
        ("forged", format!("{base}?token={forged}")),
        ("unsigned alg:none", format!("{base}?token={unsigned}")),
        ("tampered", format!("{base}?token={tampered}")),
        ("expired", format!("{base}?token={expired}")),
        ("other session's", format!("{base}?token={b_token}")),
    ] {
        assert_eq!(refused_status(&url).await, StatusCode::UNAUTHORIZED, "{what} token");
    }
    // Discovery and page endpoints refuse the same way.
    let path = format!("/devtools/browser/{a_id}/json/version?token={b_token}");
    assert_eq!(
        server.call(Method::GET, &path, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let path = "/devtools/page/ABCDEF?token=nope";
    assert_eq!(
        server.call(Method::GET, path, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // No refused attempt reached a browser.
    assert_eq!(server.broker.metrics().proxy_connections.get(), 0);

    // The right token still works, and a wrong API key cannot read the session.
    let mut ws = ws_connect(&a_url).await.unwrap();
    cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    let r = server
        .call(
            Method::GET,
            &format!("/public/sessions/{a_id}"),
            Some("wrong-key-0123456789"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_page_endpoints_go_through_the_broker() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let url = cdp_url(&session);
    let token = url.split_once("?token=").unwrap().1;
    let chrome = server
        .broker
        .running_session(None, id)
        .unwrap()
        .upstream
        .authority
        .clone();
    let chrome_port = chrome.rsplit(':').next().unwrap().to_owned();

    for suffix in ["json/version", "json/version/"] {
        let r = server
            .call(
                Method::GET,
                &format!("/devtools/browser/{id}/{suffix}?token={token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{suffix}: {}", r.body);
        assert_eq!(r.json["webSocketDebuggerUrl"], url.as_str());
        assert!(r.json["Browser"].as_str().unwrap().contains("Chrome"));
        assert!(!r.body.contains(&chrome_port));
    }

    let r = server.discovery(&session, "json/list").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.body.contains(&chrome_port), "Chrome's port leaked: {}", r.body);
    let page = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")
        .clone();
    let page_url = page["webSocketDebuggerUrl"].as_str().unwrap();
    assert!(
        page_url.starts_with(&format!("ws://{}/devtools/page/", server.addr)),
        "{page_url}"
    );

    // The page endpoint works through the broker.
    let mut ws = ws_connect(page_url).await.unwrap();
    let v = cdp_call(
        &mut ws,
        1,
        "Runtime.evaluate",
        json!({"expression": "6 * 7", "returnByValue": true}),
    )
    .await;
    assert_eq!(v["result"]["result"]["value"], 42);
    // A target that does not exist in this browser is a 404, not a hang.
    let missing = format!(
        "ws://{}/devtools/page/0123456789ABCDEF0123456789ABCDEF?token={token}",
        server.addr
    );
    assert_eq!(refused_status(&missing).await, StatusCode::NOT_FOUND);

    let r = server
        .call(
            Method::GET,
            &format!("/devtools/browser/{id}/json/protocol?token={token}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["domains"].as_array().is_some_and(|d| !d.is_empty()));
    let r = server
        .call(
            Method::GET,
            &format!("/devtools/browser/{id}/json/nonsense?token={token}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A plain GET of the WebSocket path explains itself.
    let r = server
        .call(
            Method::GET,
            &format!("/devtools/browser/{id}?token={token}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
    assert!(r.json["detail"].is_string());
    ws.send(Message::Close(None)).await.ok();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_every_client_with_4002() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let mut a = ws_connect(&cdp_url(&session)).await.unwrap();
    let mut b = ws_connect(&cdp_url(&session)).await.unwrap();
    cdp_call(&mut a, 1, "Browser.getVersion", json!({})).await;
    let r = server
        .call(Method::DELETE, &format!("/public/sessions/{id}"), Some(KEY_A), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            await_close(ws, Duration::from_secs(10)).await,
            Some((4002, "session terminated".to_owned()))
        );
    }
    assert_eq!(server.get(id).await.status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_opens_activates_and_closes_tabs() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let token = cdp_url(&session).split_once("?token=").unwrap().1.to_owned();
    let at = |suffix: &str| format!("/devtools/browser/{id}/{suffix}?token={token}");
    let targets = || async {
        let r = server.call(Method::GET, &at("json/list"), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.json
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let before = targets().await;

    // Chrome's method is PUT; GET works too. The new tab's addresses point through here.
    let mut opened = Vec::new();
    for method in [Method::PUT, Method::GET] {
        let path = format!("/devtools/browser/{id}/json/new?token={token}&url=about%3Ablank%23{method}");
        let r = server.call(method.clone(), &path, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
        assert_eq!(r.json["type"], "page");
        assert_eq!(r.json["url"], format!("about:blank#{method}"));
        let ws = r.json["webSocketDebuggerUrl"].as_str().unwrap();
        assert!(ws.starts_with(&format!("ws://{}/devtools/page/", server.addr)), "{ws}");
        opened.push(r.json["id"].as_str().unwrap().to_owned());
    }
    let now = targets().await;
    assert!(opened.iter().all(|t| now.contains(t)), "{now:?}");
    assert_eq!(now.len(), before.len() + 2);

    let r = server
        .call(Method::GET, &at(&format!("json/activate/{}", opened[0])), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for target in &opened {
        let r = server
            .call(Method::GET, &at(&format!("json/close/{target}")), None, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            targets().await.len() == before.len()
        })
        .await,
        "the tabs are closed"
    );
    // An unknown target is the API's 404, JSON as the document says (Chrome's own answer
    // is plain text).
    let r = server
        .call(
            Method::GET,
            &at("json/close/0123456789ABCDEF0123456789ABCDEF"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(
        r.json["detail"], "No such target id: 0123456789ABCDEF0123456789ABCDEF",
        "{}",
        r.body
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_closed_with_1009() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 1 << 20).await;
    let session = server.create(json!({})).await;
    let mut ws = ws_connect(&cdp_url(&session)).await.unwrap();
    let huge = json!({"id": 1, "method": "Runtime.evaluate", "params": {"expression": "x".repeat(2 << 20)}});
    ws.send(Message::text(huge.to_string())).await.unwrap();
    assert_eq!(
        await_close(&mut ws, Duration::from_secs(10)).await.map(|c| c.0),
        Some(1009)
    );
    // The session lives on: a new connection works.
    let mut again = ws_connect(&cdp_url(&session)).await.unwrap();
    cdp_call(&mut again, 1, "Browser.getVersion", json!({})).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_closed_with_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let path = cdp_url(&session)
        .split_once(&server.addr.to_string())
        .unwrap()
        .1
        .to_owned();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    // A masked text frame with RSV1 set, which no extension was agreed for.
    let payload = b"{}";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x80 | 0x40 | 0x1, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    // The broker answers with a close frame (unmasked): 0x88, length, code.
    let mut reply = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut reply))
        .await
        .expect("a close frame in time")
        .unwrap();
    assert_eq!(reply[0], 0x88, "a close frame: {reply:?}");
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 1002);
    server.stop().await;
}

/// Clients beyond Node: Python Playwright (`connect_over_cdp`) and a Rust one
/// (`chromiumoxide`), on the same session, at its screen size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_playwright_and_chromiumoxide_drive_a_session() {
    use futures_util::StreamExt;
    let server = TestServer::start().await;
    let site = format!("http://{}/", start_site().await);
    let session = server
        .create(json!({"screen_config": {"width": 1024, "height": 600}}))
        .await;
    let url = cdp_url(&session);

    let seen = python_script("playwright_drive.py", &[&url, &site]).await;
    assert_eq!(seen["title"], "cdpgate test site");
    assert_eq!(seen["text"], "Hello through the proxy");
    assert_eq!((&seen["innerWidth"], &seen["innerHeight"]), (&json!(1024), &json!(600)));
    assert_eq!(seen["screenshot"], json!({"width": 1024, "height": 600}));

    let (browser, mut handler) = chromiumoxide::Browser::connect(url.clone()).await.unwrap();
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page(site.as_str()).await.unwrap();
    assert_eq!(page.get_title().await.unwrap().as_deref(), Some("cdpgate test site"));
    let heading: String = page
        .evaluate("document.querySelector('h1').textContent")
        .await
        .unwrap()
        .into_value()
        .unwrap();
    assert_eq!(heading, "Hello through the proxy");
    let size: Vec<u32> = page
        .evaluate("[innerWidth, innerHeight]")
        .await
        .unwrap()
        .into_value()
        .unwrap();
    assert_eq!(size, [1024, 600]);
    page.close().await.unwrap();
    drop(browser);
    events.abort();
    assert_eq!(
        server.get(session["session_id"].as_str().unwrap()).await.json["status"],
        "active"
    );
    server.stop().await;
}
