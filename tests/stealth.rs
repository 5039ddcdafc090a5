//! A default session has no automation tells: a third-party detector (`@fingerprintjs/botd`)
//! and probes of each tell find none, on process and context sessions, with Puppeteer and
//! with Playwright connected, on a page, a cross-site iframe, a dedicated and a service
//! worker, a tab the page opens and a tab the client opens; the request headers a local
//! server sees agree with what scripts see.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Request headers the site saw: (path, user-agent, sec-ch-ua, sec-ch-ua-platform,
/// sec-ch-ua-mobile).
type Seen = Arc<Mutex<Vec<[String; 5]>>>;

/// Serves `tests/data/stealth` and botd on 127.0.0.1, and the same on 127.0.0.2 (another
/// site: its iframe is out of process), recording each request's headers.
async fn start_probe_site() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let frame_origin = format!("http://{}", other.local_addr().unwrap());
    let addr = main.local_addr().unwrap();
    for listener in [main, other] {
        let (seen, frame_origin) = (seen.clone(), frame_origin.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (seen, frame_origin) = (seen.clone(), frame_origin.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(head) = read_head(&mut stream, &mut buf).await {
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        let header = |name: &str| {
                            head.lines()
                                .find_map(|l| {
                                    let (n, v) = l.split_once(':')?;
                                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                                })
                                .unwrap_or_default()
                        };
                        let row = [
                            path.clone(),
                            header("user-agent"),
                            header("sec-ch-ua"),
                            header("sec-ch-ua-platform"),
                            header("sec-ch-ua-mobile"),
                        ];
                        seen.lock().unwrap().push(row);
                        let (kind, body) = page(&path, &frame_origin);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(reply.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    (addr, seen)
}

/// One request's head, as sent (the probes send no bodies); `None` once the peer closes.
async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn page(path: &str, frame_origin: &str) -> (&'static str, Vec<u8>) {
    let root = repo_root();
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    match path.split('?').next().unwrap_or("") {
        "/probe.html" => {
            let html = String::from_utf8(read("tests/data/stealth/probe.html")).unwrap();
            ("text/html", html.replace("FRAME_ORIGIN", frame_origin).into_bytes())
        }
        "/worker.js" => ("text/javascript", read("tests/data/stealth/worker.js")),
        "/watch.html" => ("text/html", read("tests/data/stealth/watch.html")),
        "/blank.html" => ("text/html", b"<!doctype html><title>blank</title>".to_vec()),
        "/botd.js" => (
            "text/javascript",
            read("tests/js/node_modules/@fingerprintjs/botd/dist/botd.esm.js"),
        ),
        _ => ("text/plain", Vec::new()),
    }
}

/// The checks that failed, each with what it saw: a run lists every tell it found, not
/// only the first.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        if !ok {
            self.0.push(what.to_string());
        }
    }

    fn equal(&mut self, seen: &Value, expected: &Value, what: impl std::fmt::Display) {
        self.check(seen == expected, format_args!("{what}: {seen} (expected {expected})"));
    }
}

/// Every tell a document can show, checked in `report` (one document's probe).
fn check_document(f: &mut Failures, report: &Value, what: &str) {
    f.equal(
        &report["botd"],
        &json!({"bot": false}),
        format_args!("botd on {what} ({})", report["botdDetections"]),
    );
    check_no_headless(f, report, what);
    f.equal(
        &report["webdriver"],
        &json!(false),
        format_args!("navigator.webdriver on {what}"),
    );
    let outer = &report["outer"];
    f.check(
        outer[0].as_u64().unwrap_or(0) > 0 && outer[1].as_u64().unwrap_or(0) > 0,
        format_args!("outerWidth/outerHeight on {what}: {outer}"),
    );
    f.equal(
        &report["chrome"],
        &json!("object"),
        format_args!("typeof window.chrome on {what}"),
    );
    for list in ["plugins", "mimeTypes"] {
        f.check(
            report[list].as_u64().unwrap_or(0) > 0,
            format_args!("navigator.{list}.length on {what}: {}", report[list]),
        );
    }
    f.equal(
        &report["pluginsArray"],
        &json!(true),
        format_args!("plugins instanceof PluginArray on {what}"),
    );
    // A person's Chrome asks before it shows notifications: "default" and "prompt" agree
    // (a cross-site frame may not ask: "denied" both).
    let permission = json!([report["notification"], report["notificationQuery"]]);
    f.check(
        permission == json!(["default", "prompt"]) || permission == json!(["denied", "denied"]),
        format_args!("Notification.permission and permissions.query on {what}: {permission}"),
    );
    // Puppeteer's own binding (`Runtime.addBinding` for its ARIA queries) may show on a
    // page it opened; it shows without the broker too. The broker's own are never allowed.
    let globals: Vec<&Value> = report["globals"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter(|name| *name != "puppeteer___ariaQuerySelector")
                .collect()
        })
        .unwrap_or_default();
    f.check(
        globals.is_empty(),
        format_args!("automation globals on {what}: {}", report["globals"]),
    );
}

/// The user agent and client hints of a document or worker carry no `Headless`, and its
/// high-entropy hints are there (a bare `--user-agent` flag would leave them empty).
fn check_no_headless(f: &mut Failures, report: &Value, what: &str) {
    let ua = report["userAgent"].as_str().unwrap_or("");
    f.check(
        ua.starts_with("Mozilla/5.0") && ua.contains(" Chrome/"),
        format_args!("user agent on {what}: {ua}"),
    );
    for field in ["userAgent", "appVersion", "brands", "fullVersionList"] {
        f.check(
            !report[field].to_string().contains("Headless"),
            format_args!("{field} on {what}: {}", report[field]),
        );
    }
    f.check(
        report["brands"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b.as_str().unwrap_or("").starts_with("Chromium/"))),
        format_args!("brands on {what}: {}", report["brands"]),
    );
    f.check(
        report["fullVersionList"].as_array().is_some_and(|b| !b.is_empty()),
        format_args!("fullVersionList on {what}: {}", report["fullVersionList"]),
    );
}

/// Runs `client` on `session` and checks every surface, in its JavaScript and in the
/// headers the site saw.
async fn check_session(f: &mut Failures, session: &Value, client: &str, site: SocketAddr, seen: &Seen) {
    seen.lock().unwrap().clear();
    let endpoint = session["cdp_url"].as_str().unwrap();
    let report = node("stealth.mjs", &[client, endpoint, &format!("http://{site}")]).await;
    let label = |part: &str| format!("{part} ({client}, {} session)", session["isolation"]);
    let first = &report["first"];
    for part in ["page", "frame", "tab"] {
        check_document(f, &first[part], &label(part));
    }
    check_document(f, &report["created"], &label("a tab the client opened"));
    for part in ["worker", "serviceWorker"] {
        check_no_headless(f, &first[part], &label(part));
        f.equal(&first[part]["globals"], &json!([]), label(part));
    }
    // One user agent everywhere.
    let ua = first["page"]["userAgent"].as_str().unwrap_or("").to_owned();
    for (part, r) in [
        ("frame", &first["frame"]),
        ("worker", &first["worker"]),
        ("serviceWorker", &first["serviceWorker"]),
        ("tab", &first["tab"]),
        ("created", &report["created"]),
    ] {
        let what = format!("as on the page: {}", label(part));
        f.equal(&r["userAgent"], &json!(ua), format_args!("userAgent {what}"));
        f.equal(&r["brands"], &first["page"]["brands"], format_args!("brands {what}"));
        f.equal(
            &r["fullVersionList"],
            &first["page"]["fullVersionList"],
            format_args!("fullVersionList {what}"),
        );
    }
    // The headers of every request (documents, scripts, the workers' fetches) say the same.
    let rows = seen.lock().unwrap().clone();
    for path in [
        "/probe.html",
        "/botd.js",
        "/worker.js?kind=dedicated",
        "/ping?from=dedicated",
        "/ping?from=service",
    ] {
        f.check(
            rows.iter().any(|r| r[0] == path),
            format_args!("{}: the site never saw {path}", label("request")),
        );
    }
    let brands_header = first["page"]["brands"]
        .as_array()
        .map(|brands| {
            brands
                .iter()
                .filter_map(|b| b.as_str()?.rsplit_once('/'))
                .map(|(brand, version)| format!("\"{brand}\";v=\"{version}\""))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    for [path, user_agent, ch_ua, platform, mobile] in &rows {
        let what = label(&format!("request {path}"));
        f.check(
            user_agent == &ua,
            format_args!("User-Agent of {what}: {user_agent} (scripts: {ua})"),
        );
        f.check(
            !ch_ua.contains("Headless"),
            format_args!("Sec-CH-UA of {what}: {ch_ua}"),
        );
        // Chromium sends no client hints with workers' requests (measured with no broker
        // in between): none is fine there, others must agree.
        let by_worker = path.starts_with("/worker.js") || path.starts_with("/ping");
        if by_worker && ch_ua.is_empty() && platform.is_empty() && mobile.is_empty() {
            continue;
        }
        f.check(
            ch_ua == &brands_header,
            format_args!("Sec-CH-UA of {what}: {ch_ua} (scripts: {brands_header})"),
        );
        f.check(
            platform == "\"Linux\"",
            format_args!("Sec-CH-UA-Platform of {what}: {platform}"),
        );
        f.check(mobile == "?0", format_args!("Sec-CH-UA-Mobile of {what}: {mobile}"));
    }
}

/// Every check on a session of `isolation`, with each client.
async fn no_tells(isolation: &str) {
    assert!(
        repo_root().join("tests/js/node_modules/@fingerprintjs/botd").exists(),
        "botd is missing: run scripts/setup.sh --test"
    );
    let (site, seen) = start_probe_site().await;
    let server = TestServer::start().await;
    let mut failures = Failures::default();
    for client in ["puppeteer", "playwright"] {
        let session = server.create(json!({"isolation": isolation})).await;
        assert_eq!(session["isolation"], isolation);
        check_session(&mut failures, &session, client, site, &seen).await;
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
    assert!(
        failures.0.is_empty(),
        "{} tells:\n{}",
        failures.0.len(),
        failures.0.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_session_shows_no_automation_tells() {
    no_tells("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_session_shows_no_automation_tells() {
    no_tells("context").await;
}

/// What the page at `page` has seen (`tests/data/stealth/watch.html`), read without
/// touching what it watches.
async fn watched(client: &mut CdpClient, page: &str) -> Value {
    let expression = "window.__watch ? JSON.stringify(window.__watch) : ''";
    for _ in 0..100 {
        let reply = client
            .send(
                Some(page),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        if let Some(text) = reply["result"]["result"]["value"].as_str().filter(|t| !t.is_empty()) {
            return serde_json::from_str(text).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the watching page did not load");
}

/// Nothing the broker itself runs in a page shows to the page's scripts: the identity
/// keeper, the recorder (which looks for the tab in front when another is hidden) and a
/// single action call nothing of the page's world and enable no `Runtime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_runs_in_pages_is_invisible() {
    let (site, _) = start_probe_site().await;
    let server = TestServer::start().await;
    let mut failures = Failures::default();
    for isolation in ["process", "context"] {
        let session = server.create(json!({"isolation": isolation, "record": true})).await;
        let sid = session["session_id"].as_str().unwrap();
        // A single action loads the page and clicks in it.
        let action = format!("go to http://{site}/watch.html, then click the Continue button");
        let acted = server
            .run_action(KEY_A, &json!({"session_id": sid, "action": action}))
            .await;
        check_action(&mut failures, &acted.json, isolation);
        // A raw client that enables no Runtime of its own finds that tab.
        let mut client = CdpClient::connect(&session).await;
        let targets = client.send(None, "Target.getTargets", json!({})).await;
        let target = targets["result"]["targetInfos"]
            .as_array()
            .and_then(|t| {
                t.iter()
                    .find(|t| t["url"].as_str().unwrap_or("").ends_with("/watch.html"))
            })
            .and_then(|t| t["targetId"].as_str())
            .unwrap_or_else(|| panic!("the action's tab: {targets}"))
            .to_owned();
        let attached = client
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        let page = attached["result"]["sessionId"].as_str().unwrap().to_owned();
        watched(&mut client, &page).await;
        // Another tab comes to the front and goes back: the recorder follows the tab that
        // shows, asking each page whether it does.
        let other = client.open("about:blank", None).await.unwrap();
        client.send(Some(&other), "Page.bringToFront", json!({})).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        client.send(Some(&page), "Page.bringToFront", json!({})).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let seen = watched(&mut client, &page).await;
        failures.equal(
            &seen["foreign"],
            &json!([]),
            format_args!("calls from scripts not the page's ({isolation} session)"),
        );
        failures.equal(
            &seen["runtimeLeaks"],
            &json!(0),
            format_args!("console messages serialized for a Runtime client ({isolation} session)"),
        );
        let clicked = client
            .send(
                Some(&page),
                "Runtime.evaluate",
                json!({"expression": "document.getElementById('verdict').dataset.clicked || 'no'", "returnByValue": true}),
            )
            .await;
        failures.equal(
            &clicked["result"]["result"]["value"],
            &json!("yes"),
            format_args!("the action's click ({isolation} session)"),
        );
        server.terminate(sid).await;
    }
    server.stop().await;
    assert!(
        failures.0.is_empty(),
        "{} traces:\n{}",
        failures.0.len(),
        failures.0.join("\n")
    );
}

fn check_action(failures: &mut Failures, acted: &Value, isolation: &str) {
    failures.equal(
        &acted["success"],
        &json!(true),
        format_args!("the single action ({isolation} session): {acted}"),
    );
}

/// What the headless shell's patch puts back reads as the full Chromium's own: a page
/// probing each function and getter it stands in for (navigator.plugins, mimeTypes,
/// pdfViewerEnabled, their lists' methods and getters, Notification.permission,
/// window.chrome's loadTimes, csi and app functions: the full Chromium has no
/// chrome.runtime on a web page, nor does the patch) gets the same answer on a shell
/// session as on a full-Chromium one: source text, name, length, prototype, `new`, the
/// call on another object, the descriptor and where it is, and nothing left behind. So
/// does a shell session with a fingerprint, whose page script has the fingerprint's part
/// too (one `native`, one toString patch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_patch_reads_as_the_full_chromium() {
    let (site, _) = start_probe_site().await;
    let server = TestServer::start().await;
    let url = format!("http://{site}/blank.html");
    let sessions = [
        ("full", json!({"browser": "full"})),
        ("shell", json!({"browser": "shell"})),
        (
            "shell with a fingerprint",
            json!({"browser": "shell", "fingerprint": {"os": "linux"}}),
        ),
    ];
    let mut answers = Vec::new();
    for (what, mut body) in sessions {
        body["isolation"] = json!("process");
        let session = server.create(body.clone()).await;
        assert_eq!(session["browser"], body["browser"], "{session}");
        let endpoint = session["cdp_url"].as_str().unwrap();
        answers.push((what, node("shell_natives.mjs", &[endpoint, &url]).await));
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
    let full = &answers[0].1;
    assert!(
        full["navigator.plugins.item"]["value"]["toString"] == "function item() { [native code] }",
        "the full Chromium's own: {full}"
    );
    let mut differ = Vec::new();
    for (what, shell) in &answers[1..] {
        for (key, expected) in full.as_object().unwrap() {
            if &shell[key.as_str()] != expected {
                differ.push(format!(
                    "{key} ({what}):\n  shell: {}\n  full:  {expected}",
                    shell[key.as_str()]
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} differ from the full Chromium:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
