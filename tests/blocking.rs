//! Resource blocking (`block`, `block_urls`) and challenge detection with real Chromium:
//! a local heavy page (stylesheet, font, script, images, a video, a cross-site iframe, a
//! worker fetching an image, XHR, a new tab) whose server logs every request, so that
//! what was blocked is what never arrived; a control session without blocking shows the
//! same page does ask for all of it. Challenges: a page embeds a reCAPTCHA-shaped frame
//! served by a local upstream proxy that answers for `www.google.com`.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every request the site got: `host path?query`.
type Log = Arc<Mutex<Vec<String>>>;

/// The heavy page. Every subresource carries `?t=TAG`, so sessions sharing the site tell
/// their requests apart. `window.settled` resolves once everything has loaded or failed.
fn heavy_page(port: u16, tag: &str) -> String {
    format!(
        r#"<!doctype html><html><head>
<link rel="stylesheet" href="/style.css?t={tag}">
<style>@font-face {{ font-family: f; src: url(/font.woff2?t={tag}); }} body {{ font-family: f; }}</style>
<script src="/app.js?t={tag}"></script>
</head><body><p>heavy page</p>
<img src="/img/a.png?t={tag}"><img src="/img/b.png?t={tag}">
<video src="/video.mp4?t={tag}" autoplay muted></video>
<iframe src="http://localhost:{port}/frame?t={tag}"></iframe>
<script>
const worker = new Promise(r => {{ const w = new Worker('/worker.js?t={tag}'); w.onmessage = e => r(e.data); }});
const xhr = fetch('/data.json?t={tag}').then(r => r.text()).then(t => t, () => 'blocked');
const video = new Promise(r => {{
  const v = document.querySelector('video');
  if (v.error) r('error');
  v.onerror = () => r('error');
  v.onloadeddata = () => r('loaded');
}});
const loaded = new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', () => r()));
window.settled = Promise.all([worker, xhr, video, loaded.then(() => document.fonts.ready)])
  .then(([worker, xhr, video]) => ({{ worker, xhr, video, app: window.app === true,
    images: [...document.images].map(i => i.naturalWidth) }}));
</script></body></html>"#
    )
}

/// A page without workers, frames or media, for clients' own interception (Puppeteer
/// does not answer the requests of a dedicated worker it intercepts).
fn light_page(tag: &str) -> String {
    format!(
        r#"<!doctype html><html><head><link rel="stylesheet" href="/style.css?t={tag}"></head>
<body><img src="/img/a.png?t={tag}"><img src="/img/b.png?t={tag}">
<script>
const xhr = fetch('/data.json?t={tag}').then(r => r.text()).then(t => t, () => 'blocked');
const loaded = new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', () => r()));
window.settled = Promise.all([xhr, loaded]).then(([xhr]) => ({{ xhr, images: [...document.images].map(i => i.naturalWidth) }}));
</script></body></html>"#
    )
}

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xfc, 0xcf, 0xc0, 0x50, 0x0f, 0x00, 0x04, 0x85, 0x01, 0x80, 0x84, 0xa9, 0x8c,
    0x21, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The site: answers by path, to direct requests and to a proxy's absolute-form ones
/// (so it is also the upstream proxy of the challenge test), and logs each.
async fn start_site() -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let host_header = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("host:")
                            .map(|h| h.trim().to_owned())
                    })
                    .unwrap_or_default();
                let (host, path) = match target.strip_prefix("http://") {
                    Some(rest) => {
                        let at = rest.find('/').unwrap_or(rest.len());
                        (rest[..at].to_owned(), rest[at..].to_owned())
                    }
                    None => (host_header, target),
                };
                seen.lock().unwrap().push(format!("{host} {path}"));
                let bare = path.split('?').next().unwrap_or("/");
                let tag = path.split("t=").nth(1).unwrap_or("").to_owned();
                let (kind, body): (&str, Vec<u8>) = match bare {
                    "/" | "/heavy" => ("text/html", heavy_page(addr.port(), &tag).into_bytes()),
                    "/light" => ("text/html", light_page(&tag).into_bytes()),
                    "/frame" => ("text/html", format!("<p>frame</p><img src=\"/img/frame.png?t={tag}\">").into_bytes()),
                    "/popup" => ("text/html", format!("<p>popup</p><img src=\"/img/popup.png?t={tag}\">").into_bytes()),
                    "/worker.js" => (
                        "text/javascript",
                        format!("fetch('/img/worker.png?t={tag}').then(r => r.blob()).then(() => postMessage('loaded'), () => postMessage('blocked'));").into_bytes(),
                    ),
                    "/app.js" => ("text/javascript", b"window.app = true;".to_vec()),
                    "/style.css" => ("text/css", b"p { color: red; }".to_vec()),
                    "/data.json" => ("text/plain", b"from the site".to_vec()),
                    "/font.woff2" => ("font/woff2", vec![0u8; 2048]),
                    "/video.mp4" => ("video/mp4", vec![0u8; 64 * 1024]),
                    "/challenge" => (
                        "text/html",
                        b"<p>sign in</p><iframe src=\"http://www.google.com/recaptcha/api2/anchor?k=site-key&co=x\"></iframe>".to_vec(),
                    ),
                    "/no-challenge" => (
                        "text/html",
                        b"<p>search</p><iframe src=\"http://www.google.com/search?q=recaptcha\"></iframe>".to_vec(),
                    ),
                    "/recaptcha/api2/anchor" | "/search" => ("text/html", b"<p>a frame</p>".to_vec()),
                    b if b.starts_with("/img/") => ("image/png", PNG.to_vec()),
                    _ => ("text/plain", b"not here".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (addr, log)
}

/// The paths (without query) the site got for `tag`.
fn requested(log: &Log, tag: &str) -> Vec<String> {
    let suffix = format!("t={tag}");
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.ends_with(&suffix))
        .map(|l| l.split(' ').nth(1).unwrap().split('?').next().unwrap().to_owned())
        .collect()
}

/// Loads the heavy page (tagged `tag`) in the session's first tab and a second tab the
/// client opens, and answers what the page saw once everything settled.
async fn load_heavy(session: &Value, site: SocketAddr, tag: &str) -> Value {
    let mut client = CdpClient::connect(session).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/heavy?t={tag}")).await;
    let seen = client.eval(&page, "window.settled").await;
    let tab = client
        .open(&format!("http://{site}/popup?t={tag}"), None)
        .await
        .expect("a new tab");
    // The tab starts on about:blank: its first document's context is replaced by the popup's.
    let probe = "location.pathname === '/popup' ? new Promise(r => { const go = () => { const i = document.images[0]; if (!i) return setTimeout(go, 20); i.complete ? r(i.naturalWidth) : (i.onload = i.onerror = () => r(i.naturalWidth)); }; go(); }) : null";
    let mut popup = Value::Null;
    for _ in 0..200 {
        let reply = client
            .send(
                Some(&tab),
                "Runtime.evaluate",
                json!({"expression": probe, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        popup = reply["result"]["result"]["value"].clone();
        if !popup.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    json!({ "page": seen, "popup": popup })
}

/// What a blocked type never asks the site for, and what the page itself still loads.
const BLOCKED_PATHS: &[&str] = &[
    "/style.css",
    "/font.woff2",
    "/img/a.png",
    "/img/b.png",
    "/video.mp4",
    "/img/frame.png",
    "/img/worker.png",
    "/data.json",
    "/img/popup.png",
];
const LOADED_PATHS: &[&str] = &["/heavy", "/app.js", "/frame", "/worker.js", "/popup"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_types_and_urls_never_leave_the_browser_on_any_target() {
    let (site, log) = start_site().await;
    let server = TestServer::start_with(|c| c.pool_size = 2).await;

    // The control: without blocking, the page asks for everything.
    let open = server.create(json!({})).await;
    let seen = load_heavy(&open, site, "open").await;
    assert_eq!(seen["page"]["worker"], "loaded", "{seen}");
    let got = requested(&log, "open");
    for path in BLOCKED_PATHS.iter().chain(LOADED_PATHS) {
        assert!(got.iter().any(|p| p == path), "the control asked for {path}: {got:?}");
    }
    assert_eq!(
        server.terminate(open["session_id"].as_str().unwrap()).await.status,
        StatusCode::NO_CONTENT
    );

    // By type: none of the blocked reaches the site, from the page, its cross-site frame,
    // its worker or a new tab; the page itself, its script, frame and worker still load.
    let types = ["image", "media", "font", "stylesheet", "xhr", "fetch", "texttrack"];
    let blocked = server.create(json!({ "block": types })).await;
    assert_eq!(blocked["block"], json!(types));
    assert_eq!(blocked["block_urls"], json!([]));
    let seen = load_heavy(&blocked, site, "typed").await;
    assert_eq!(seen["page"]["worker"], "blocked", "{seen}");
    assert_eq!(seen["page"]["xhr"], "blocked", "{seen}");
    assert_eq!(seen["page"]["video"], "error", "{seen}");
    assert_eq!(seen["page"]["app"], true, "the script still ran: {seen}");
    assert_eq!(seen["page"]["images"], json!([0, 0]), "{seen}");
    assert_eq!(seen["popup"], 0, "{seen}");
    let got = requested(&log, "typed");
    for path in BLOCKED_PATHS {
        assert!(!got.iter().any(|p| p == path), "{path} reached the site: {got:?}");
    }
    for path in LOADED_PATHS {
        assert!(got.iter().any(|p| p == path), "{path} still loads: {got:?}");
    }
    let id = blocked["session_id"].as_str().unwrap();
    let shown = server.get(id).await.json;
    let count = shown["network"]["blocked_requests"].as_u64().unwrap();
    assert!(
        count >= BLOCKED_PATHS.len() as u64,
        "each blocked request counted: {shown}"
    );
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.lines().any(|l| l
            .strip_prefix("cdpgate_browser_requests_blocked_total ")
            .is_some_and(|v| v.parse::<f64>().unwrap() >= count as f64)),
        "the metric counts them"
    );
    server.terminate(id).await;

    // By URL pattern: only what matches.
    let urls = ["*/img/*", "*.mp4?*"];
    let by_url = server.create(json!({ "block_urls": urls })).await;
    assert_eq!(by_url["block_urls"], json!(urls));
    let seen = load_heavy(&by_url, site, "urls").await;
    assert_eq!(seen["page"]["worker"], "blocked", "{seen}");
    assert_eq!(seen["page"]["xhr"], "from the site", "{seen}");
    let got = requested(&log, "urls");
    for path in [
        "/img/a.png",
        "/img/b.png",
        "/img/frame.png",
        "/img/worker.png",
        "/img/popup.png",
        "/video.mp4",
    ] {
        assert!(!got.iter().any(|p| p == path), "{path} reached the site: {got:?}");
    }
    for path in ["/style.css", "/font.woff2", "/data.json", "/heavy", "/frame", "/popup"] {
        assert!(got.iter().any(|p| p == path), "{path} still loads: {got:?}");
    }
    server.stop().await;
}

/// An operator's ad list: by path, by type, by party (read from the `Referer`), and an
/// exception.
const AD_LIST: &str = "! Title: cdpgate test list
/img/a.png
/data.json$xmlhttprequest
/style.css$script
/img/frame.png$~third-party
/img/popup.png$third-party
/img/worker.png$image
@@/img/worker.png
example.com##.ad
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_are_blocked_by_the_operators_lists_on_every_target() {
    let (site, log) = start_site().await;
    let lists = tempfile::tempdir().unwrap();
    let list = lists.path().join("ads.txt");
    std::fs::write(&list, AD_LIST).unwrap();
    let list_path = list.to_str().unwrap().to_owned();
    let server = TestServer::start_with(move |c| {
        c.pool_size = 1;
        c.adblock_lists = vec![list_path];
    })
    .await;

    // The lists, with a type and a pattern of the session's own.
    let body = json!({ "block": ["ads", "font"], "block_urls": ["*/img/b.png?*"] });
    let ads = server.create(body).await;
    assert_eq!(ads["block"], json!(["ads", "font"]), "{ads}");
    let seen = load_heavy(&ads, site, "ads").await;
    assert_eq!(
        seen["page"]["xhr"], "blocked",
        "fetch is xmlhttprequest to the lists: {seen}"
    );
    assert_eq!(seen["page"]["worker"], "loaded", "the exception holds: {seen}");
    assert_eq!(seen["page"]["app"], true, "{seen}");
    assert_eq!(seen["popup"], 1, "a first-party image is not $third-party: {seen}");
    let got = requested(&log, "ads");
    for path in [
        "/img/a.png",
        "/data.json",
        "/font.woff2",
        "/img/b.png",
        "/img/frame.png",
    ] {
        assert!(!got.iter().any(|p| p == path), "{path} reached the site: {got:?}");
    }
    for path in [
        "/heavy",
        "/style.css",
        "/app.js",
        "/video.mp4",
        "/frame",
        "/worker.js",
        "/img/worker.png",
        "/popup",
        "/img/popup.png",
    ] {
        assert!(got.iter().any(|p| p == path), "{path} still loads: {got:?}");
    }
    let id = ads["session_id"].as_str().unwrap();
    let shown = server.get(id).await.json;
    assert!(
        shown["network"]["blocked_requests"].as_u64().unwrap() >= 5,
        "each blocked request counted: {shown}"
    );
    server.terminate(id).await;

    // A session that did not ask: the same lists change nothing for it.
    let plain = server.create(json!({})).await;
    load_heavy(&plain, site, "plain").await;
    let got = requested(&log, "plain");
    for path in ["/img/a.png", "/data.json", "/img/frame.png", "/img/b.png"] {
        assert!(got.iter().any(|p| p == path), "{path} was blocked without ads: {got:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_sessions_blocking_stays_in_its_context() {
    let (site, log) = start_site().await;
    let server = TestServer::start_with(|c| {
        c.context_browsers = 1;
        c.max_contexts_per_browser = 4;
    })
    .await;
    let blocked = server
        .create(json!({ "isolation": "context", "block": ["image", "media", "font", "stylesheet", "xhr", "fetch"] }))
        .await;
    let open = server.create(json!({ "isolation": "context" })).await;
    assert_eq!(blocked["isolation"], "context");
    let seen = load_heavy(&blocked, site, "ctx-blocked").await;
    assert_eq!(seen["page"]["worker"], "blocked", "{seen}");
    let seen = load_heavy(&open, site, "ctx-open").await;
    assert_eq!(seen["page"]["worker"], "loaded", "{seen}");
    assert_eq!(seen["page"]["images"], json!([1, 1]), "{seen}");
    let (got_blocked, got_open) = (requested(&log, "ctx-blocked"), requested(&log, "ctx-open"));
    for path in BLOCKED_PATHS {
        assert!(
            !got_blocked.iter().any(|p| p == path),
            "{path} reached the site: {got_blocked:?}"
        );
        assert!(
            got_open.iter().any(|p| p == path),
            "the other context loads {path}: {got_open:?}"
        );
    }
    let shown = server.get(open["session_id"].as_str().unwrap()).await.json;
    assert_eq!(shown["network"]["blocked_requests"], 0, "{shown}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_interception_works_and_cannot_unblock() {
    let (site, log) = start_site().await;
    let server = TestServer::start().await;
    let session = server.create(json!({ "block": ["image"] })).await;
    let cdp_url = session["cdp_url"].as_str().unwrap();
    for client in ["puppeteer", "playwright"] {
        let tag = format!("intercept-{client}");
        let url = format!("http://{site}/light?t={tag}");
        let seen = node("block_intercept.mjs", &[client, cdp_url, &url]).await;
        // The client's handler saw requests and answered one itself; what it let through
        // of the blocked type still never reached the site.
        assert!(seen["intercepted"].as_u64().unwrap() >= 3, "{client}: {seen}");
        assert_eq!(seen["data"], "from the client", "{client}: {seen}");
        assert_eq!(seen["images"], json!([0, 0]), "{client}: {seen}");
        let got = requested(&log, &tag);
        assert!(!got.iter().any(|p| p.starts_with("/img/")), "{client}: {got:?}");
        assert!(got.iter().any(|p| p == "/style.css"), "{client}: {got:?}");
        assert!(!got.iter().any(|p| p == "/data.json"), "{client} answered it: {got:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_blocking_options_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let long = "a".repeat(513);
    let many: Vec<String> = (0..65).map(|i| format!("*/{i}/*")).collect();
    let cases = [
        (json!({ "block": "image" }), "block must be a list of strings"),
        (json!({ "block": [1] }), "block must be a list of strings"),
        (json!({ "block": ["document"] }), "is not a resource type"),
        (json!({ "block": ["Image"] }), "is not a resource type"),
        (json!({ "block": ["websocket"] }), "is not a resource type"),
        (json!({ "block": ["ads"] }), "this broker has none (adblock_lists)"),
        (json!({ "block": vec!["image"; 300] }), "block holds too many entries"),
        (json!({ "block_urls": [long] }), "block_urls entries must be 1 to 512"),
        (json!({ "block_urls": ["a b"] }), "block_urls entries must be"),
        (json!({ "block_urls": [""] }), "block_urls entries must be"),
        (json!({ "block_urls": ["*"] }), "would block every page"),
        (json!({ "block_urls": many }), "block_urls holds at most 64 patterns"),
        (
            json!({ "block": ["image"], "cdp_url": "ws://127.0.0.1:1/devtools/browser/x" }),
            "cannot be combined with cdp_url",
        ),
    ];
    for (body, detail) in cases {
        let answer = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let said = answer.json["detail"].as_str().unwrap().to_owned();
        assert!(said.contains(detail), "{body}: {said}");
    }
    let listed = server
        .call(Method::GET, "/public/sessions", Some(KEY_A), None)
        .await
        .json;
    assert_eq!(listed["total"], 0, "no session was made: {listed}");
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("\ncdpgate_sessions_created_total 0\n"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_frame_is_recorded_on_the_session() {
    let (proxy, log) = start_site().await;
    let server = TestServer::start_with(|c| {
        c.context_browsers = 1;
        c.max_contexts_per_browser = 2;
    })
    .await;
    for isolation in ["process", "context"] {
        let session = server
            .create(json!({ "isolation": isolation, "proxy": { "server": format!("http://{proxy}") } }))
            .await;
        assert_eq!(session["challenges"], json!([]), "{session}");
        let id = session["session_id"].as_str().unwrap();
        let mut client = CdpClient::connect(&session).await;
        let (_, page) = client.own_page().await;
        // A frame of Google that is no challenge is not one.
        client.load(&page, "http://site.test/no-challenge").await;
        assert!(
            log.lock()
                .unwrap()
                .iter()
                .any(|l| l == "www.google.com /search?q=recaptcha")
        );
        client.load(&page, "http://site.test/challenge").await;
        assert!(
            log.lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("www.google.com /recaptcha/api2/anchor")),
            "the frame came through the proxy"
        );
        let recorded = eventually_async(Duration::from_secs(10), || async {
            server.get(id).await.json["challenges"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        })
        .await;
        let shown = server.get(id).await.json;
        assert!(recorded, "{isolation}: {shown}");
        let challenges = shown["challenges"].as_array().unwrap();
        assert_eq!(challenges.len(), 1, "{isolation}: {shown}");
        assert_eq!(challenges[0]["kind"], "recaptcha");
        assert_eq!(challenges[0]["url"], "http://www.google.com/recaptcha/api2/anchor");
        assert!(challenges[0]["at"].as_str().unwrap().ends_with('Z'));
        // The live view is how a person passes it: its page says so, on both links; a
        // neighbour's (in the same shared browser for context sessions) says nothing.
        let neighbour = server.create(json!({ "isolation": isolation })).await;
        let links = [
            shown["metadata"]["live_url"].as_str().unwrap(),
            shown["metadata"]["live_url_read_only"].as_str().unwrap(),
            neighbour["metadata"]["live_url"].as_str().unwrap(),
        ];
        let views = node("live_challenge.mjs", &links).await;
        for view in &views.as_array().unwrap()[..2] {
            assert_eq!(
                view["challenges"],
                json!([{"kind": "recaptcha", "url": "http://www.google.com/recaptcha/api2/anchor"}]),
                "{isolation}: {views}"
            );
            assert!(
                view["banner"]
                    .as_str()
                    .unwrap()
                    .contains("A reCAPTCHA is on this session's page")
            );
        }
        assert!(views[0]["banner"].as_str().unwrap().contains("Pass it here"), "{views}");
        assert!(views[1]["banner"].as_str().unwrap().contains("view only"), "{views}");
        assert_eq!(
            views[2],
            json!({"challenges": [], "banner": null}),
            "{isolation}: {views}"
        );
        server.terminate(neighbour["session_id"].as_str().unwrap()).await;
        // Told as an event too, once.
        let events = server
            .call(
                Method::GET,
                &format!("/public/sessions/{id}/events?limit=1000"),
                Some(KEY_A),
                None,
            )
            .await
            .json;
        let seen: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "challenge_seen")
            .collect();
        assert_eq!(seen.len(), 1, "{isolation}: {events}");
        assert_eq!(seen[0]["data"]["kind"], "recaptcha");
        assert!(
            seen[0]["data"]["url"]
                .as_str()
                .unwrap()
                .contains("/recaptcha/api2/anchor")
        );
        server.terminate(id).await;
    }
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("\ncdpgate_challenges_total{kind=\"recaptcha\"} 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\ncdpgate_challenges_total{kind=\"hcaptcha\"} 0\n"));
    server.stop().await;
}
