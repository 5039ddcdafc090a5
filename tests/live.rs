//! Live view: a real headless Chromium opens `live_url` and watches and drives the session
//! while Puppeteer automates it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;

/// `/first`: a plain page. `/form`: a button that counts clicks and a form that records
/// what was submitted.
async fn start_pages() -> SocketAddr {
    serve_pages(|path| {
        let page = if path == "/form" {
            "<html><head><title>form</title></head><body style=\"font-size:24px\">\
             <button id=\"press\" style=\"width:200px;height:80px\" onclick=\"window.clicks=(window.clicks||0)+1\">Press</button>\
             <form onsubmit=\"event.preventDefault(); window.submitted=document.getElementById('name').value\">\
             <input id=\"name\" style=\"width:300px;height:40px\"></form></body></html>"
        } else {
            "<html><head><title>first</title></head><body style=\"background:#fc0\"><h1>First page</h1></body></html>"
        };
        (String::new(), page.to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_watches_and_drives_the_session() {
    watch_and_drive("process").await;
}

/// The same on a context session: the viewer sees and drives the context's tabs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_watches_and_drives_a_context_session() {
    watch_and_drive("context").await;
}

async fn watch_and_drive(isolation: &str) {
    let server = TestServer::start_with(|c| {
        if isolation == "context" {
            c.pool_size = 0;
        }
    })
    .await;
    let pages = start_pages().await;
    let session = server
        .create(json!({"screen_config": {"width": 1024, "height": 640}, "isolation": isolation}))
        .await;
    // Another context session in the same shared browser, whose tab the viewer must not see.
    if isolation == "context" {
        server.create(json!({"isolation": isolation})).await;
    }
    let id = session["session_id"].as_str().unwrap();
    let live = session["metadata"]["live_url"].as_str().unwrap();
    let read_only = session["metadata"]["live_url_read_only"].as_str().unwrap();
    assert!(
        live.starts_with(&format!("http://{}/live/{id}?token=", server.addr)),
        "{live}"
    );
    assert!(!live.contains(session["cdp_url"].as_str().unwrap().split("token=").nth(1).unwrap()));

    let seen = node(
        "live_view.mjs",
        &[
            session["cdp_url"].as_str().unwrap(),
            live,
            read_only,
            &format!("http://{pages}"),
            &server.url(""),
            KEY_A,
            id,
        ],
    )
    .await;
    eprintln!("live view measurements: {seen}");
    // How fast is measured (docs/benchmarks.md); here only that a frame came, well before
    // the script's own deadline.
    assert!(seen["firstFrameMs"].as_u64().is_some(), "a first frame: {seen}");
    assert_eq!(seen["followedNavigation"], true);
    assert_eq!(seen["clicks"], 1, "the click reached the button: {seen}");
    assert_eq!(
        seen["typed"], "alice",
        "typing, Backspace and Enter reached the input: {seen}"
    );
    assert_eq!(seen["followedNewTab"], true);
    assert_eq!(seen["tabButtons"], 2, "both tabs are listed: {seen}");
    assert_eq!(seen["switchedBack"], true);
    assert_eq!(seen["clicksAfterReadOnly"], 1, "the read-only view forwarded nothing");
    assert_eq!(seen["readOnlyMode"], "view only");
    assert_eq!(seen["endedShown"], true);
    assert_eq!(seen["endedMessage"], "This session was terminated.");

    // An ended session's link, and forged or mis-scoped tokens, get readable pages.
    let path = live.split_once(&server.addr.to_string()).unwrap().1;
    let r = server.call(Method::GET, path, None, None).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert!(r.body.contains("This session has ended."), "{}", r.body);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let cdp_token = session["cdp_url"].as_str().unwrap().split("token=").nth(1).unwrap();
    for bad in ["forged.token.here", cdp_token] {
        let r = server
            .call(Method::GET, &format!("/live/{id}?token={bad}"), None, None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.contains("not valid"), "{}", r.body);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_link_cannot_drive_and_live_tokens_cannot_open_cdp() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let socket = |link: &str| {
        link.replacen("http://", "ws://", 1)
            .replacen("?token=", "/cdp?token=", 1)
    };
    let read_only = session["metadata"]["live_url_read_only"].as_str().unwrap();
    let interactive = session["metadata"]["live_url"].as_str().unwrap();

    // The read-only socket itself, spoken to directly: input and scripts are refused with
    // a CDP error, viewing commands pass.
    let mut ws = ws_connect(&socket(read_only)).await.unwrap();
    let targets = cdp_call(&mut ws, 1, "Target.getTargets", json!({})).await;
    assert!(targets["result"]["targetInfos"].is_array(), "{targets}");
    for (n, (method, params)) in [
        (
            "Input.dispatchMouseEvent",
            json!({"type": "mousePressed", "x": 10, "y": 10, "button": "left", "clickCount": 1}),
        ),
        ("Input.dispatchKeyEvent", json!({"type": "keyDown", "key": "a"})),
        ("Input.insertText", json!({"text": "typed"})),
        ("Target.activateTarget", json!({"targetId": "x"})),
        ("Runtime.evaluate", json!({"expression": "document.title = 'pwned'"})),
        ("Browser.close", json!({})),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = cdp_call(&mut ws, 10 + n as u64, method, params).await;
        // Refused by the broker (its words), never passed to the browser.
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(answer["error"]["code"], -32601, "{method}: {answer}");
        let why = if method.starts_with("Input.") || method == "Target.activateTarget" {
            "this live view link is read-only"
        } else {
            "not available to a live view"
        };
        assert_eq!(message, format!("{method}: {why}"), "{answer}");
    }
    // An interactive link's input reaches the browser (which answers it itself: input
    // needs a page session), but a script never does.
    let mut ws = ws_connect(&socket(interactive)).await.unwrap();
    let typed = cdp_call(&mut ws, 1, "Input.insertText", json!({"text": ""})).await;
    let said = typed["error"]["message"].as_str().unwrap_or_default();
    assert!(!said.contains("live view"), "passed on to the browser: {typed}");
    let script = cdp_call(&mut ws, 2, "Runtime.evaluate", json!({"expression": "1"})).await;
    assert_eq!(script["error"]["code"], -32601, "{script}");

    // Live tokens do not open the CDP endpoint, and a CDP token does not open live view.
    for link in [read_only, interactive] {
        let token = link.split_once("token=").unwrap().1;
        let cdp = format!("ws://{}/devtools/browser/{id}?token={token}", server.addr);
        match ws_connect(&cdp).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED)
            }
            other => panic!("a live token opened the CDP endpoint: {other:?}"),
        }
    }
    let cdp_token = session["cdp_url"].as_str().unwrap().split_once("token=").unwrap().1;
    let live_with_cdp_token = format!("ws://{}/live/{id}/cdp?token={cdp_token}", server.addr);
    assert!(ws_connect(&live_with_cdp_token).await.is_err());
    server.stop().await;
}

/// Whoever holds a live link (a read-only one shared with a person) takes at most half of a
/// session's connections: the session's own clients keep the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_viewers_take_at_most_half_of_a_sessions_connections() {
    let server = TestServer::start_with(|c| c.max_connections_per_session = 4).await;
    let session = server.create(json!({})).await;
    let read_only = session["metadata"]["live_url_read_only"].as_str().unwrap();
    let socket = read_only
        .replacen("http://", "ws://", 1)
        .replacen("?token=", "/cdp?token=", 1);
    let mut viewers = Vec::new();
    for _ in 0..2 {
        viewers.push(ws_connect(&socket).await.unwrap());
    }
    match ws_connect(&socket).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("a third viewer got in: {:?}", other.map(|_| ())),
    }
    let cdp_url = session["cdp_url"].as_str().unwrap();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_connect(cdp_url).await.unwrap();
        let version = cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
        assert!(version["result"]["product"].is_string(), "{version}");
        clients.push(ws);
    }
    // A viewer gone frees a viewer's place.
    drop(viewers.pop());
    assert!(
        eventually_async(Duration::from_secs(5), || async { ws_connect(&socket).await.is_ok() }).await,
        "a viewer's place came back"
    );
    server.stop().await;
}
