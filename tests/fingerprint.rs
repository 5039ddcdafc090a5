//! A session with a fingerprint preset or a device shows one machine everywhere: the
//! request headers a local server sees (with the high-entropy hints it asks for), the
//! page's, a cross-site iframe's, a dedicated worker's and two new tabs' JavaScript agree
//! with the fingerprint the session object names, for each `os` preset and each device, on
//! process and context sessions, with Puppeteer and with Playwright connected; fpscanner
//! finds no inconsistency and botd no bot. Hostile `fingerprint`/`device` values are
//! refused and create nothing; a profile remembers its fingerprint.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Each request the site saw: its path and its headers (names lower-cased).
type Seen = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

/// The high-entropy client hints the site asks for (`Accept-CH` on every answer).
const ACCEPT_CH: &str =
    "Sec-CH-UA-Platform-Version, Sec-CH-UA-Arch, Sec-CH-UA-Bitness, Sec-CH-UA-Model, Sec-CH-UA-Full-Version-List";

/// Serves `tests/data/fingerprint`, fpscanner and botd on 127.0.0.1 and the same on
/// 127.0.0.2 (another site: its iframe is out of process), recording each request.
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
                        let headers = head
                            .lines()
                            .skip(1)
                            .filter_map(|l| l.split_once(':'))
                            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        seen.lock().unwrap().push((path.clone(), headers));
                        let (kind, body) = page(&path, &frame_origin);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\naccept-ch: {ACCEPT_CH}\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n",
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
            let html = String::from_utf8(read("tests/data/fingerprint/probe.html")).unwrap();
            ("text/html", html.replace("FRAME_ORIGIN", frame_origin).into_bytes())
        }
        "/worker.js" => ("text/javascript", read("tests/data/fingerprint/worker.js")),
        "/fpscanner.js" => (
            "text/javascript",
            read("tests/js/node_modules/fpscanner/dist/fpScanner.es.js"),
        ),
        "/botd.js" => (
            "text/javascript",
            read("tests/js/node_modules/@fingerprintjs/botd/dist/botd.esm.js"),
        ),
        _ => ("text/plain", Vec::new()),
    }
}

/// The checks that failed: a run lists every disagreement, not only the first.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn equal(&mut self, seen: &Value, expected: &Value, what: impl std::fmt::Display) {
        if seen != expected {
            self.0.push(format!("{what}: {seen} (expected {expected})"));
        }
    }
}

/// `"a";v="1", "b";v="2"` from the fingerprint's brand list.
fn brand_header(list: &Value) -> String {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "\"{}\";v=\"{}\"",
                b["brand"].as_str().unwrap(),
                b["version"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn brand_list(list: &Value) -> Value {
    json!(
        list.as_array()
            .unwrap()
            .iter()
            .map(|b| format!("{}/{}", b["brand"].as_str().unwrap(), b["version"].as_str().unwrap()))
            .collect::<Vec<_>>()
    )
}

/// Runs `client` on `session` and compares every surface with the session's fingerprint.
async fn check_session(f: &mut Failures, session: &Value, client: &str, site: SocketAddr, seen: &Seen) {
    seen.lock().unwrap().clear();
    let fp = &session["fingerprint"];
    let endpoint = session["cdp_url"].as_str().unwrap();
    let report = node("fingerprint.mjs", &[client, endpoint, &format!("http://{site}")]).await;
    let name = fp["device"].as_str().unwrap_or(fp["os"].as_str().unwrap_or("?"));
    let label = |part: &str| format!("{part} ({name}, {client}, {} session)", session["isolation"]);
    let first = &report["first"];
    let hints = &fp["client_hints"];
    let documents = [
        ("page", &first["page"]),
        ("frame", &first["frame"]),
        ("tab", &first["tab"]),
        ("created tab", &report["created"]),
    ];
    let workers = [
        ("worker", &first["worker"]),
        ("service worker", &first["serviceWorker"]),
    ];
    for (part, r) in documents.iter().copied().chain(workers) {
        let what = label(part);
        f.equal(
            &r["prepareStackTraceRan"],
            &json!(false),
            format_args!("Error.prepareStackTrace run by a console call on {what}"),
        );
        f.equal(&r["userAgent"], &fp["user_agent"], format_args!("userAgent on {what}"));
        f.equal(
            &r["platform"],
            &fp["platform"],
            format_args!("navigator.platform on {what}"),
        );
        f.equal(
            &r["hardwareConcurrency"],
            &fp["hardware_concurrency"],
            format_args!("hardwareConcurrency on {what}"),
        );
        let memory = fp["device_memory"].as_f64().map_or(Value::Null, |m| json!(m));
        let seen_memory = r["deviceMemory"].as_f64().map_or(Value::Null, |m| json!(m));
        f.equal(&seen_memory, &memory, format_args!("deviceMemory on {what}"));
        f.equal(
            &r["hasUserAgentData"],
            &json!(hints.is_object()),
            format_args!("navigator.userAgentData on {what}"),
        );
        if hints.is_object() {
            f.equal(
                &r["brands"],
                &brand_list(&hints["brands"]),
                format_args!("brands on {what}"),
            );
            f.equal(
                &r["uaPlatform"],
                &hints["platform"],
                format_args!("userAgentData.platform on {what}"),
            );
            f.equal(
                &r["mobile"],
                &hints["mobile"],
                format_args!("userAgentData.mobile on {what}"),
            );
            f.equal(
                &r["high"]["platformVersion"],
                &hints["platformVersion"],
                format_args!("platformVersion on {what}"),
            );
        }
        let webgl = json!([fp["webgl_vendor"], fp["webgl_renderer"]]);
        f.equal(&r["webgl"], &webgl, format_args!("WebGL vendor/renderer on {what}"));
    }
    for (part, r) in documents {
        let what = label(part);
        f.equal(
            &r["screen"],
            &json!([fp["screen"]["width"], fp["screen"]["height"]]),
            format_args!("screen on {what}"),
        );
        f.equal(
            &json!(r["dpr"].as_f64()),
            &json!(fp["device_pixel_ratio"].as_f64()),
            format_args!("devicePixelRatio on {what}"),
        );
        f.equal(
            &r["maxTouchPoints"],
            &fp["max_touch_points"],
            format_args!("maxTouchPoints on {what}"),
        );
        // A tab a page opens may run its first script before touch emulation lands on it
        // (the same race as its first request; docs/API.md).
        let touch_race = part == "tab";
        f.equal(
            &json!(r["touchEvents"].as_bool().unwrap_or(false) || touch_race),
            &json!(fp["max_touch_points"].as_u64() > Some(0) || touch_race),
            format_args!("touch events on {what}"),
        );
        if let Some(vendor) = fp["vendor"].as_str() {
            f.equal(&r["vendor"], &json!(vendor), format_args!("navigator.vendor on {what}"));
        }
        if hints.is_object() {
            let high = &r["high"];
            f.equal(
                &high["fullVersionList"],
                &brand_list(&hints["fullVersionList"]),
                format_args!("fullVersionList on {what}"),
            );
            for key in ["architecture", "bitness", "model"] {
                f.equal(&high[key], &hints[key], format_args!("{key} on {what}"));
            }
        }
        // What was patched reads as native.
        for text in r["natives"].as_array().into_iter().flatten() {
            let text = text.as_str().unwrap_or("");
            if !text.ends_with("{ [native code] }") || text.starts_with("function ()") {
                f.0.push(format!("a patched function's source on {what}: {text}"));
            }
        }
    }
    if let Some(view) = fp.get("viewport").filter(|v| v.is_object()) {
        f.equal(
            &first["page"]["inner"],
            &json!([view["width"], view["height"]]),
            format_args!("the viewport on {}", label("page")),
        );
    }
    // fpscanner's `hasCDP` does not see the client's own `Runtime.enable` (Puppeteer's and
    // Playwright's): the console patch hides `Error.prepareStackTrace` from it. Every
    // surface runs the same probe (`prepareStackTraceRan`, checked above).
    f.equal(
        &first["fpscanner"],
        &json!([]),
        format_args!("fpscanner on {}", label("page")),
    );
    f.equal(
        &first["botd"],
        &json!({"bot": false}),
        format_args!("botd on {}", label("page")),
    );
    // Every request's headers say the same; documents carry the hints the site asked for.
    let rows = seen.lock().unwrap().clone();
    for must in [
        "/probe.html",
        "/worker.js?kind=dedicated",
        "/ping?from=dedicated",
        "/ping?from=service",
        "/probe.html?role=tab",
    ] {
        if !rows.iter().any(|(p, _)| p == must) {
            f.0.push(format!("{}: the site never saw {must}", label("request")));
        }
    }
    let mut asked = 0;
    for (path, headers) in &rows {
        // Known gaps (docs/API.md, "Fingerprints and devices"): a service worker's script
        // request carries the browser's launch user agent, and the first request of a tab
        // a page opens may leave before the keeper's override lands on it.
        if path == "/worker.js?kind=service" || path == "/probe.html?role=tab" {
            continue;
        }
        let what = label(&format!("request {path}"));
        let header = |name: &str| json!(headers.get(name).cloned().unwrap_or_default());
        f.equal(
            &header("user-agent"),
            &fp["user_agent"],
            format_args!("User-Agent of {what}"),
        );
        let by_worker = path.starts_with("/worker.js") || path.starts_with("/ping");
        if !hints.is_object() {
            // Like Safari: no client hints at all.
            f.equal(&header("sec-ch-ua"), &json!(""), format_args!("Sec-CH-UA of {what}"));
            continue;
        }
        // Chromium sends no client hints with workers' requests.
        if by_worker && header("sec-ch-ua") == json!("") {
            continue;
        }
        f.equal(
            &header("sec-ch-ua"),
            &json!(brand_header(&hints["brands"])),
            format_args!("Sec-CH-UA of {what}"),
        );
        f.equal(
            &header("sec-ch-ua-platform"),
            &json!(format!("\"{}\"", hints["platform"].as_str().unwrap())),
            format_args!("Sec-CH-UA-Platform of {what}"),
        );
        let mobile = if hints["mobile"] == json!(true) { "?1" } else { "?0" };
        f.equal(
            &header("sec-ch-ua-mobile"),
            &json!(mobile),
            format_args!("Sec-CH-UA-Mobile of {what}"),
        );
        // Asked for by the site's answers (`Accept-CH`): Chrome sends them with the later
        // documents of that origin (the tabs), not to another site's frame.
        if headers.contains_key("sec-ch-ua-platform-version") {
            asked += 1;
            let quoted = |key: &str| json!(format!("\"{}\"", hints[key].as_str().unwrap()));
            f.equal(
                &header("sec-ch-ua-platform-version"),
                &quoted("platformVersion"),
                format_args!("Sec-CH-UA-Platform-Version of {what}"),
            );
            f.equal(
                &header("sec-ch-ua-model"),
                &quoted("model"),
                format_args!("Sec-CH-UA-Model of {what}"),
            );
            f.equal(
                &header("sec-ch-ua-arch"),
                &quoted("architecture"),
                format_args!("Sec-CH-UA-Arch of {what}"),
            );
            f.equal(
                &header("sec-ch-ua-bitness"),
                &quoted("bitness"),
                format_args!("Sec-CH-UA-Bitness of {what}"),
            );
            f.equal(
                &header("sec-ch-ua-full-version-list"),
                &json!(brand_header(&hints["fullVersionList"])),
                format_args!("Sec-CH-UA-Full-Version-List of {what}"),
            );
        }
    }
    if hints.is_object() && asked == 0 {
        f.0.push(format!(
            "{}: no request carried the high-entropy hints asked for",
            label("request")
        ));
    }
}

fn assert_no_failures(failures: Failures) {
    assert!(
        failures.0.is_empty(),
        "{} disagreements:\n{}",
        failures.0.len(),
        failures.0.join("\n")
    );
}

fn assert_detectors_installed() {
    for dir in [
        "tests/js/node_modules/fpscanner",
        "tests/js/node_modules/@fingerprintjs/botd",
    ] {
        assert!(
            repo_root().join(dir).exists(),
            "{dir} is missing: run scripts/setup.sh --test"
        );
    }
}

/// Each `os` preset with each client, on sessions of `isolation`.
async fn presets_agree(isolation: &str) {
    assert_detectors_installed();
    let (site, seen) = start_probe_site().await;
    let server = TestServer::start().await;
    let mut failures = Failures::default();
    for (i, os) in ["windows", "macos", "linux"].into_iter().enumerate() {
        for client in ["puppeteer", "playwright"] {
            let body = json!({
                "isolation": isolation,
                "fingerprint": {"os": os, "hardware": {"seed": i}},
                "locale": "de-DE",
                "timezone": "Europe/Berlin",
            });
            let session = server.create(body).await;
            assert_eq!(session["fingerprint"]["os"], os, "{session}");
            check_session(&mut failures, &session, client, site, &seen).await;
            server.terminate(session["session_id"].as_str().unwrap()).await;
        }
    }
    server.stop().await;
    assert_no_failures(failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_os_preset_agrees_everywhere_in_a_process_session() {
    presets_agree("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_os_preset_agrees_everywhere_in_a_context_session() {
    presets_agree("context").await;
}

/// Every device of `GET /public/devices`, alternating isolation and client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_agrees_everywhere() {
    assert_detectors_installed();
    let (site, seen) = start_probe_site().await;
    let server = TestServer::start().await;
    let listed = server.call(Method::GET, "/public/devices", Some(KEY_A), None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let devices = listed.json["devices"].as_array().unwrap().clone();
    assert!(devices.len() >= 12, "{}", listed.body);
    let mut failures = Failures::default();
    for (i, device) in devices.iter().enumerate() {
        let name = device["name"].as_str().unwrap();
        let isolation = if i % 2 == 0 { "process" } else { "context" };
        let client = if i % 4 < 2 { "puppeteer" } else { "playwright" };
        let body = json!({"isolation": isolation, "device": name, "timezone": "America/New_York"});
        let session = server.create(body).await;
        assert_eq!(session["device"], name);
        assert_eq!(session["fingerprint"]["viewport"], device["viewport"]);
        check_session(&mut failures, &session, client, site, &seen).await;
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
    assert_no_failures(failures);
}

/// With a client that enables no `Runtime` (the broker's own keeper included), fpscanner
/// finds nothing at all on any preset or device, process or context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fpscanner_finds_nothing_without_a_runtime_client() {
    assert_detectors_installed();
    let (site, _) = start_probe_site().await;
    let server = TestServer::start().await;
    let mut failures = Failures::default();
    let faces = [
        json!({"fingerprint": {"os": "windows"}}),
        json!({"fingerprint": {"os": "macos"}}),
        json!({"fingerprint": {"os": "linux"}}),
        json!({"device": "Pixel 8"}),
        json!({"device": "iPhone 15"}),
    ];
    for (i, face) in faces.iter().enumerate() {
        let mut body = face.clone();
        body["isolation"] = json!(if i % 2 == 0 { "process" } else { "context" });
        body["timezone"] = json!("Europe/Paris");
        let session = server.create(body.clone()).await;
        let mut client = CdpClient::connect(&session).await;
        let page = client.open("about:blank", None).await.unwrap();
        client.load(&page, &format!("http://{site}/probe.html")).await;
        let report = client
            .eval(
                &page,
                "new Promise((resolve) => { const t = setInterval(() => { if (window.__report) { clearInterval(t);                  resolve({fpscanner: window.__report.fpscanner, botd: window.__report.botd}); } }, 50); })",
            )
            .await;
        failures.equal(&report["fpscanner"], &json!([]), format_args!("fpscanner with {body}"));
        failures.equal(
            &report["botd"],
            &json!({"bot": false}),
            format_args!("botd with {body}"),
        );
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
    assert_no_failures(failures);
}

/// Bad `fingerprint` and `device` values get a 422 that names the field, and no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fingerprints_are_refused_and_create_nothing() {
    let server = TestServer::start().await;
    let huge = "x".repeat(10_000);
    let bad = [
        (json!({"fingerprint": {"os": "solaris"}}), "fingerprint.os"),
        (json!({"fingerprint": "windows"}), "fingerprint"),
        (
            json!({"fingerprint": {"os": "windows", "browser_version": "99999999"}}),
            "browser_version",
        ),
        (
            json!({"fingerprint": {"os": "windows", "browser_version": "1"}}),
            "browser_version",
        ),
        (
            json!({"fingerprint": {"os": "windows", "browser_version": "9999"}}),
            "browser_version",
        ),
        (
            json!({"fingerprint": {"os": "windows", "hardware": {"cores": 100000}}}),
            "hardware.cores",
        ),
        (
            json!({"fingerprint": {"os": "windows", "hardware": {"memory": -1}}}),
            "hardware.memory",
        ),
        (
            json!({"fingerprint": {"os": "windows", "hardware": {"gpu": huge}}}),
            "hardware",
        ),
        (
            json!({"fingerprint": {"os": "windows", huge.clone(): 1}}),
            "fingerprint",
        ),
        (json!({"device": "Nokia 3310"}), "device"),
        (json!({"device": 7}), "device"),
        (
            json!({"device": "Pixel 8", "fingerprint": {"os": "windows"}}),
            "device and fingerprint",
        ),
        (
            json!({"fingerprint": {"os": "linux"}, "user_agent": "Mozilla/5.0"}),
            "user_agent",
        ),
        (json!({"device": "Pixel 8", "cdp_url": "ws://127.0.0.1:9/x"}), "cdp_url"),
    ];
    for (body, names) in bad {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        let sent: String = body.to_string().chars().take(200).collect();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{sent}: {}", r.body);
        let detail = r.json["detail"].as_str().unwrap_or("");
        assert!(detail.contains(names), "{sent}: {detail}");
        assert!(detail.len() < 400, "the answer echoes the input: {}", &detail[..500]);
    }
    let list = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(list.json["total"], 0, "{}", list.body);
    server.stop().await;
}

/// A session from a profile shows the fingerprint the profile was first used with; the
/// same seed gives the same fingerprint, and a session without one shows the browser's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_remembers_its_fingerprint() {
    let server = TestServer::start().await;
    let made = server
        .call(
            Method::POST,
            "/public/browser-profiles",
            Some(KEY_A),
            Some(r#"{"name": "returning"}"#),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let profile = made.json["id"].as_str().unwrap().to_owned();
    let first = server
        .create(json!({"profile_id": profile, "persist_changes": false, "fingerprint": {"os": "macos"}}))
        .await;
    let fp = first["fingerprint"].clone();
    assert_eq!(fp["os"], "macos");
    server.terminate(first["session_id"].as_str().unwrap()).await;
    let again = server
        .create(json!({"profile_id": profile, "persist_changes": false}))
        .await;
    assert_eq!(again["fingerprint"], fp);
    // What the page sees is the remembered machine.
    let mut client = CdpClient::connect(&again).await;
    let page = client.open("about:blank", None).await.unwrap();
    let seen = client
        .eval(&page, "navigator.userAgent + '|' + navigator.platform")
        .await;
    assert_eq!(seen, json!(format!("{}|MacIntel", fp["user_agent"].as_str().unwrap())));
    server.terminate(again["session_id"].as_str().unwrap()).await;
    // The same seed picks the same machine; no fingerprint, none shown.
    let seeded = |seed: u64| json!({"fingerprint": {"os": "windows", "hardware": seed}});
    let a = server.create(seeded(42)).await;
    let b = server.create(seeded(42)).await;
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    let plain = server.create(json!({})).await;
    assert!(plain.get("fingerprint").is_none(), "{plain}");
    server.stop().await;
}
