//! A session's console logs and HAR (`capture_console`, `capture_network`) and its dialog
//! events: real Chromium driven by Puppeteer and the raw client, against a local site that
//! logs every request it answers.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const COOKIE_SECRET: &str = "cookiesecret7f3a91";
const AUTH_SECRET: &str = "authsecret5b2c77";

/// What the site answered: (path, status), and the secret-bearing headers it received.
#[derive(Default)]
struct SiteLog {
    answered: Vec<(String, u16)>,
    heads: Vec<String>,
}

/// The site's pages: `a.html` (an iframe, a missing image, a failed request, console
/// messages, an uncaught exception, a fetch with an Authorization header, a cookie set),
/// `b.html` (a second tab, which sends the cookie back), a page that logs 10,000 lines, a
/// page that opens an alert, and one page per context session.
fn page(path: &str) -> (u16, &'static str, String, String) {
    let html = |body: &str| {
        format!("<!doctype html><html><head><link rel=\"icon\" href=\"data:,\"></head><body>{body}</body></html>")
    };
    match path {
        "/a.html" => (
            200,
            "text/html",
            format!("set-cookie: sid={COOKIE_SECRET}; Path=/\r\n"),
            html(&format!(
                r#"<iframe src="/frame.html"></iframe><img src="/missing.png">
<script>
  let leaks = 0;
  const probe = new Error('probe');
  Object.defineProperty(probe, 'stack', {{ get() {{ leaks++; return ''; }} }});
  console.debug(probe);
  console.log('hello from a', 42);
  console.error('a console error');
  setTimeout(() => {{ throw new Error('an uncaught boom'); }}, 0);
  const failed = fetch('http://127.0.0.1:1/unreachable').catch(() => 'failed');
  const api = fetch('/api?x=1', {{ headers: {{ Authorization: 'Bearer {AUTH_SECRET}' }} }}).then((r) => r.text());
  const answered = fetch('/intercepted').then((r) => r.text());
  const frame = new Promise((r) => document.querySelector('iframe').complete || addEventListener('load', r));
  window.done = Promise.all([failed, api, answered, frame]).then(async ([, , text]) => {{
    await new Promise((r) => setTimeout(r, 100));
    return {{ answered: text, leaks }};
  }});
</script>"#
            )),
        ),
        "/frame.html" => (
            200,
            "text/html",
            String::new(),
            html("<script>console.warn('from the frame');</script>"),
        ),
        "/b.html" => (
            200,
            "text/html",
            String::new(),
            html("<script>console.info('tab b'); window.done = fetch('/api?x=2').then((r) => r.text());</script>"),
        ),
        "/api?x=1" | "/api?x=2" => (200, "application/json", String::new(), "{\"ok\":true}".into()),
        "/noisy.html" => (
            200,
            "text/html",
            String::new(),
            html("<script>for (let i = 0; i < 10000; i++) console.log('line ' + i); window.done = true;</script>"),
        ),
        "/dialog.html" => (
            200,
            "text/html",
            String::new(),
            html("<script>setTimeout(() => alert('a dialog for the client'), 50);</script>"),
        ),
        p if p.ends_with("/own") => (200, "text/plain", String::new(), "own".into()),
        p if p.starts_with("/ctx") => (
            200,
            "text/html",
            String::new(),
            html(&format!(
                "<script>fetch('{p}/own').then(() => {{ window.done = true; }});</script>"
            )),
        ),
        _ => (404, "text/plain", String::new(), "not here".into()),
    }
}

async fn start_logging_site() -> (SocketAddr, Arc<Mutex<SiteLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(SiteLog::default()));
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, _)) = read_request(&mut stream, &mut buf).await {
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, kind, headers, body) = page(&path);
                    {
                        let mut log = seen.lock().unwrap();
                        log.answered.push((path.clone(), status));
                        log.heads.push(head.clone());
                    }
                    let reason = if status == 200 { "OK" } else { "Not Found" };
                    let reply = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\n{headers}content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, log)
}

async fn get(server: &TestServer, key: &str, path: &str) -> Response {
    server.call(Method::GET, path, Some(key), None).await
}

/// Reads `path` (tenant A's) until `done` holds of its JSON (within 20 s); answers the last.
async fn read_until(server: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = get(server, KEY_A, path).await.json;
        if done(&last) {
            return last;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never got there: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A path of the site's (`/a.html`), or the whole URL of anything elsewhere.
fn path_of(url: &str, site: SocketAddr) -> String {
    url.strip_prefix(&format!("http://{site}"))
        .map(str::to_owned)
        .unwrap_or_else(|| url.to_owned())
}

/// The HAR validates with har-validator; answers its entries.
async fn validated(har: &Response, name: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.har"));
    std::fs::write(&file, har.body.as_bytes()).unwrap();
    let verdict = node("har_validate.mjs", &[file.to_str().unwrap()]).await;
    assert_eq!(verdict["valid"], true, "{name}: {verdict}");
    har.json["log"]["entries"].as_array().unwrap().clone()
}

/// Two tabs, an iframe, a missing image, a failed request, console messages and an
/// uncaught exception under Puppeteer (with its request interception on): the logs hold
/// them, the HAR validates and holds exactly the requests the site answered, plus the
/// failed one and the one the client answered itself, and no secret header value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_leaves_its_logs_and_an_exact_har() {
    let (site, log) = start_logging_site().await;
    let server = TestServer::start().await;
    for isolation in ["process", "context"] {
        log.lock().unwrap().answered.clear();
        let session = server
            .create(json!({"isolation": isolation, "capture_console": true, "capture_network": true}))
            .await;
        let sid = session["session_id"].as_str().unwrap();
        assert_eq!(
            (session["capture_console"].clone(), session["capture_network"].clone()),
            (json!(true), json!(true))
        );
        let visit = node(
            "capture_visit.mjs",
            &[session["cdp_url"].as_str().unwrap(), &format!("http://{site}")],
        )
        .await;
        assert_eq!(visit["answered"], "answered by the client", "{isolation}: {visit}");
        assert!(visit["intercepted"].as_u64().unwrap() >= 5, "{isolation}: {visit}");
        assert_eq!(visit["leaks"], 0, "{isolation}: console serialization seen by the page");
        let (tab_a, tab_b) = (visit["tabs"][0].as_str().unwrap(), visit["tabs"][1].as_str().unwrap());
        {
            let log = log.lock().unwrap();
            // The page did send the secrets: a HAR without them is redaction, not absence.
            assert!(log.heads.iter().any(|h| h.contains(AUTH_SECRET)));
            assert!(log.heads.iter().any(|h| h.contains(COOKIE_SECRET)));
        }

        // The logs, live.
        let logs = get(&server, KEY_A, &format!("/public/sessions/{sid}/logs")).await;
        assert_eq!(logs.status, StatusCode::OK, "{}", logs.body);
        let entries = logs.json["entries"].as_array().unwrap();
        let find = |kind: &str, text: &str| {
            entries
                .iter()
                .find(|e| e["kind"] == kind && e["text"].as_str().unwrap_or("").contains(text))
                .unwrap_or_else(|| panic!("{isolation}: no {kind} entry with {text:?} in {}", logs.body))
        };
        let hello = find("console", "hello from a 42");
        assert_eq!(
            (hello["level"].as_str(), hello["target_id"].as_str()),
            (Some("log"), Some(tab_a))
        );
        assert_eq!(hello["url"], format!("http://{site}/a.html"));
        assert!(hello["line"].as_u64().unwrap() > 1);
        assert_eq!(find("console", "a console error")["level"], "error");
        assert_eq!(find("exception", "an uncaught boom")["level"], "error");
        assert_eq!(find("console", "from the frame")["level"], "warning");
        assert_eq!(find("console", "tab b")["target_id"], tab_b);
        assert!(
            find("request_failed", "404")["url"]
                .as_str()
                .unwrap()
                .ends_with("/missing.png")
        );
        assert_eq!(
            find("request_failed", "ERR_UNSAFE_PORT")["url"],
            "http://127.0.0.1:1/unreachable"
        );
        assert!(!logs.body.contains(COOKIE_SECRET) && !logs.body.contains(AUTH_SECRET));

        // The HAR, live and after the end.
        let live = get(&server, KEY_A, &format!("/public/sessions/{sid}/har")).await;
        assert_eq!(live.status, StatusCode::OK, "{}", live.body);
        validated(&live, "live").await;
        server.terminate(sid).await;
        let har = get(&server, KEY_A, &format!("/public/sessions/{sid}/har")).await;
        assert_eq!(har.status, StatusCode::OK, "{}", har.body);
        let entries = validated(&har, isolation).await;
        for secret in [COOKIE_SECRET, AUTH_SECRET] {
            assert!(!har.body.contains(secret), "{isolation}: {secret} in the HAR");
        }
        let mut from_site: Vec<(String, u16)> = Vec::new();
        let mut others: Vec<(String, Value)> = Vec::new();
        for e in &entries {
            let url = e["request"]["url"].as_str().unwrap();
            let status = e["response"]["status"].as_u64().unwrap() as u16;
            let path = path_of(url, site);
            if path.starts_with('/') && path != "/intercepted" {
                from_site.push((path, status));
            } else {
                others.push((path, e.clone()));
            }
        }
        let mut answered = log.lock().unwrap().answered.clone();
        answered.sort();
        from_site.sort();
        assert_eq!(
            from_site, answered,
            "{isolation}: the HAR's requests to the site and the site's log"
        );
        let other_urls: Vec<&str> = others.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(other_urls.len(), 2, "{isolation}: {other_urls:?}");
        let failed = &others
            .iter()
            .find(|(u, _)| u == "http://127.0.0.1:1/unreachable")
            .unwrap()
            .1;
        assert_eq!(failed["response"]["status"], 0);
        assert!(failed["_error"].as_str().unwrap().contains("ERR_UNSAFE_PORT"));
        let intercepted = &others.iter().find(|(u, _)| u == "/intercepted").unwrap().1;
        assert_eq!(intercepted["response"]["status"], 200);
        // Headers are there, with the secrets' values redacted.
        let api = entries
            .iter()
            .find(|e| e["request"]["url"].as_str().unwrap().ends_with("/api?x=1"))
            .unwrap();
        let auth = api["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"].as_str().unwrap().eq_ignore_ascii_case("authorization"))
            .unwrap_or_else(|| panic!("{isolation}: no Authorization header in {api}"));
        assert_eq!(auth["value"], "[redacted]");
        assert_eq!(api["request"]["queryString"], json!([{"name": "x", "value": "1"}]));
        assert_eq!(api["response"]["content"]["size"], 11);
        assert!(
            api["response"]["content"].get("text").is_none(),
            "bodies are off by default"
        );
        assert!(api["timings"]["wait"].as_f64().unwrap() >= 0.0);
        let document = entries
            .iter()
            .find(|e| e["request"]["url"].as_str().unwrap().ends_with("/a.html"))
            .unwrap();
        assert!(
            document["response"]["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"].as_str().unwrap().eq_ignore_ascii_case("set-cookie") && h["value"] == "[redacted]"),
            "{isolation}: {document}"
        );
        let tabs: std::collections::HashSet<&str> = entries.iter().filter_map(|e| e["_targetId"].as_str()).collect();
        assert!(tabs.contains(tab_a) && tabs.contains(tab_b), "{isolation}: {tabs:?}");
        // The logs after the end.
        let after = get(&server, KEY_A, &format!("/public/sessions/{sid}/logs")).await;
        assert_eq!(after.status, StatusCode::OK);
        assert_eq!(after.json["entries"].as_array().unwrap().len(), entries_len(&logs));
    }
    server.stop().await;
}

fn entries_len(logs: &Response) -> usize {
    logs.json["entries"].as_array().unwrap().len()
}

/// A page that logs 10,000 lines leaves at most the cap, the rest counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_bounded() {
    let (site, _) = start_logging_site().await;
    let server = TestServer::start_with(|c| c.max_log_entries_per_session = 300).await;
    let session = server.create(json!({"capture_console": true})).await;
    let sid = session["session_id"].as_str().unwrap();
    let mut client = CdpClient::connect(&session).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/noisy.html")).await;
    let path = format!("/public/sessions/{sid}/logs");
    // Every line arrives (the last one is kept): 300 entries, the 9,700 before counted.
    let last = read_until(&server, &path, |logs| {
        logs["entries"]
            .as_array()
            .and_then(|e| e.last())
            .is_some_and(|e| e["text"] == "line 9999")
    })
    .await;
    assert_eq!(last["entries"].as_array().unwrap().len(), 300);
    assert_eq!(last["dropped"], 9700);
    assert_eq!(last["entries"][0]["text"], "line 9700");
    server.terminate(sid).await;
    server.stop().await;
}

/// Two context sessions on one shared browser: each HAR holds its own context's traffic
/// only; bodies when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_session_records_only_its_own_traffic() {
    let (site, _) = start_logging_site().await;
    let server = TestServer::start_with(|c| {
        c.pool_size = 0;
        c.context_browsers = 1;
    })
    .await;
    let mut sessions = Vec::new();
    for (n, bodies) in [(1, true), (2, false)] {
        let session = server
            .create(json!({"isolation": "context", "capture_network": true, "capture_bodies": bodies}))
            .await;
        let mut client = CdpClient::connect(&session).await;
        let (_, page) = client.own_page().await;
        client.load(&page, &format!("http://{site}/ctx{n}")).await;
        client
            .eval(
                &page,
                "new Promise((r) => { const t = setInterval(() => window.done && r(clearInterval(t)), 20); })",
            )
            .await;
        sessions.push((session, client));
    }
    for (n, (session, _)) in sessions.iter().enumerate() {
        let sid = session["session_id"].as_str().unwrap();
        let har = get(&server, KEY_A, &format!("/public/sessions/{sid}/har")).await;
        let entries = validated(&har, &format!("ctx{}", n + 1)).await;
        let urls: Vec<String> = entries
            .iter()
            .map(|e| path_of(e["request"]["url"].as_str().unwrap(), site))
            .collect();
        let own = format!("/ctx{}", n + 1);
        assert_eq!(urls, vec![own.clone(), format!("{own}/own")], "session {}", n + 1);
        let body = &entries[1]["response"]["content"];
        if n == 0 {
            assert_eq!(body["text"], "own");
        } else {
            assert!(body.get("text").is_none(), "{body}");
        }
    }
    for (session, _) in &sessions {
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
}

/// Another key gets 404, an unknown id 404, a session without capture 409; the options are
/// refused with `cdp_url`, and `capture_bodies` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_har_belong_to_the_session_that_asked() {
    let server = TestServer::start().await;
    let captured = server
        .create(json!({"capture_console": true, "capture_network": true}))
        .await;
    let plain = server.create(json!({})).await;
    let (captured, plain) = (
        captured["session_id"].as_str().unwrap(),
        plain["session_id"].as_str().unwrap(),
    );
    for doc in ["logs", "har"] {
        let path = format!("/public/sessions/{captured}/{doc}");
        assert_eq!(get(&server, KEY_A, &path).await.status, StatusCode::OK);
        let other = get(&server, KEY_B, &path).await;
        assert_eq!(other.status, StatusCode::NOT_FOUND, "{doc}: {}", other.body);
        assert!(!other.body.contains("entries"));
        let unknown = get(&server, KEY_A, &format!("/public/sessions/sess_0000/{doc}")).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        let without = get(&server, KEY_A, &format!("/public/sessions/{plain}/{doc}")).await;
        assert_eq!(without.status, StatusCode::CONFLICT, "{doc}: {}", without.body);
        assert!(without.json["detail"].as_str().unwrap().contains("capture_"));
    }
    for body in [
        json!({"cdp_url": "ws://127.0.0.1:9/devtools/browser/x", "capture_console": true}),
        json!({"cdp_url": "ws://127.0.0.1:9/devtools/browser/x", "capture_network": true}),
        json!({"capture_bodies": true}),
        json!({"capture_console": "yes"}),
    ] {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
    }
    for id in [captured, plain] {
        server.terminate(id).await;
    }
    server.stop().await;
}

/// A page's alert becomes a `dialog` event; the broker leaves it open for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialog_is_told_and_left_to_the_client() {
    let (site, _) = start_logging_site().await;
    let server = TestServer::start().await;
    for isolation in ["process", "context"] {
        let session = server.create(json!({"isolation": isolation})).await;
        let sid = session["session_id"].as_str().unwrap();
        let mut client = CdpClient::connect(&session).await;
        let (target, page) = client.own_page().await;
        client.call(Some(&page), "Page.enable", json!({})).await;
        client
            .call(
                Some(&page),
                "Page.navigate",
                json!({"url": format!("http://{site}/dialog.html")}),
            )
            .await;
        client
            .wait_event(|e| e["method"] == "Page.javascriptDialogOpening")
            .await;
        let path = format!("/public/sessions/{sid}/events");
        let dialog_of = |events: &Value| {
            events["events"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["type"] == "dialog").cloned())
        };
        let events = read_until(&server, &path, |events| dialog_of(events).is_some()).await;
        let dialog = dialog_of(&events).unwrap();
        assert_eq!(dialog["data"]["type"], "alert");
        assert_eq!(dialog["data"]["message"], "a dialog for the client");
        assert_eq!(dialog["data"]["target_id"], target.as_str());
        // Still open: the client's answer is the one that closes it.
        client
            .call(Some(&page), "Page.handleJavaScriptDialog", json!({"accept": true}))
            .await;
        server.terminate(sid).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_keeps_what_its_running_sessions_captured() {
    let (site, _) = start_logging_site().await;
    let data = tempfile::tempdir().unwrap();
    let mut broker = start_binary(data.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    let created = http(
        broker.addr,
        Method::POST,
        "/public/sessions",
        Some(KEY_A),
        Some(r#"{"capture_console": true, "capture_network": true}"#),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.json["session_id"].as_str().unwrap().to_owned();
    let mut client = CdpClient::connect(&created.json).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/a.html")).await;
    // Written down while the session runs, without waiting for its end.
    let dir = data.path().join("capture");
    let on_disk = |suffix: &str, needle: &str| {
        std::fs::read_to_string(dir.join(format!("{id}.{suffix}"))).is_ok_and(|t| t.contains(needle))
    };
    let written = eventually(Duration::from_secs(20), || {
        on_disk("logs.json", "hello from a 42") && on_disk("har.json", "/a.html")
    })
    .await;
    assert!(written, "the running session's capture was not written down");
    signal(&broker.child, libc::SIGKILL);
    let _ = broker.child.wait().await;
    drop(client);

    // After the restart, the ended session's capture reads back.
    let broker = start_binary(data.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    let path = |doc: &str| format!("/public/sessions/{id}/{doc}");
    let logs = http(broker.addr, Method::GET, &path("logs"), Some(KEY_A), None).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.body);
    let texts: Vec<&str> = logs.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(texts.contains(&"hello from a 42"), "{texts:?}");
    assert!(texts.contains(&"a console error"), "{texts:?}");
    let har = http(broker.addr, Method::GET, &path("har"), Some(KEY_A), None).await;
    assert_eq!(har.status, StatusCode::OK, "{}", har.body);
    let urls: Vec<&str> = har.json["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["request"]["url"].as_str())
        .collect();
    assert!(urls.iter().any(|u| u.ends_with("/a.html")), "{urls:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
