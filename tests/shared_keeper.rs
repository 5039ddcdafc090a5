//! One identity keeper per shared browser, seen from a hostile tenant's side: two context
//! sessions of two tenants in one shared Chrome, each with its own user agent, locale, time
//! zone and console capture. Their pages (first tab, a new tab, a cross-site iframe each)
//! report what they see and the site logs the headers it gets; each session must see only
//! its own identity, capture only its own pages' messages, and hear only its own dialogs
//! and challenges. Then a spare context's first page, and the keeper's registry once the
//! sessions end. Real Chromium, raw CDP clients.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// What the site got: (host, path with query, user agent, accept-language), lowercased.
type Log = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// What a document shows of its identity, and a console line naming it.
fn probe_script(who: &str) -> String {
    format!(
        "<script>
  const seen = {{ ua: navigator.userAgent, lang: navigator.language,
    tz: Intl.DateTimeFormat().resolvedOptions().timeZone }};
  console.log('console-of-{who}');
  if (parent !== window) parent.postMessage(seen, '*');
  window.seen = seen;
</script>"
    )
}

/// The site, also the sessions' upstream proxy (so `frame.test` is another site): a probe
/// page with a cross-site iframe, the iframe, a dialog page, a page with a reCAPTCHA frame.
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
                while let Some((head, _)) = read_request(&mut stream, &mut buf).await {
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|v| v.trim().to_owned())
                            .unwrap_or_default()
                    };
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (host, path) = match target.strip_prefix("http://") {
                        Some(rest) => {
                            let at = rest.find('/').unwrap_or(rest.len());
                            (rest[..at].to_owned(), rest[at..].to_owned())
                        }
                        None => (header("host:"), target),
                    };
                    let who = path.split("who=").nth(1).unwrap_or("").to_owned();
                    seen.lock()
                        .unwrap()
                        .push((host, path.clone(), header("user-agent:"), header("accept-language:")));
                    let bare = path.split('?').next().unwrap_or("/");
                    let body = match bare {
                        "/probe" => format!(
                            "<p>probe</p><iframe src=\"http://frame.test/frame?who={who}-frame\"></iframe>\
                             <script>window.frameSeen = new Promise(r => addEventListener('message', e => r(e.data)));</script>{}",
                            probe_script(&who)
                        ),
                        "/frame" => probe_script(&who),
                        "/dialog" => format!("<script>setTimeout(() => alert('dialog-of-{who}'), 50);</script>"),
                        "/challenge" => {
                            "<iframe src=\"http://www.google.com/recaptcha/api2/anchor?k=key\"></iframe>".to_owned()
                        }
                        _ => "<p>a page</p>".to_owned(),
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{body}",
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

struct Tenant {
    key: &'static str,
    name: &'static str,
    ua: &'static str,
    locale: &'static str,
    timezone: &'static str,
}

const A: Tenant = Tenant {
    key: KEY_A,
    name: "a",
    ua: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 TenantA",
    locale: "de-DE",
    timezone: "Asia/Tokyo",
};

const B: Tenant = Tenant {
    key: KEY_B,
    name: "b",
    ua: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 TenantB",
    locale: "fr-FR",
    timezone: "America/New_York",
};

async fn create(server: &TestServer, tenant: &Tenant, proxy: SocketAddr) -> Value {
    let body = json!({
        "isolation": "context",
        "user_agent": tenant.ua,
        "locale": tenant.locale,
        "timezone": tenant.timezone,
        "capture_console": true,
        "proxy": { "server": format!("http://{proxy}") },
    });
    create_with(server, tenant.key, body).await
}

/// A session of `key` created with `body`.
async fn create_with(server: &TestServer, key: &str, body: Value) -> Value {
    let created = server
        .call(Method::POST, "/public/sessions", Some(key), Some(&body.to_string()))
        .await;
    assert_eq!(created.status, hyper::StatusCode::CREATED, "{}", created.body);
    created.json
}

fn id(session: &Value) -> &str {
    session["session_id"].as_str().unwrap()
}

/// What a page (loaded in `page`) and its cross-site iframe report.
async fn seen_in(client: &mut CdpClient, page: &str) -> (Value, Value) {
    let own = client.eval(page, "window.seen").await;
    let frame = client.eval(page, "window.frameSeen").await;
    (own, frame)
}

fn assert_identity(tenant: &Tenant, seen: &Value, what: &str) {
    assert_eq!(seen["ua"], tenant.ua, "{}'s {what}: {seen}", tenant.name);
    assert_eq!(seen["lang"], tenant.locale, "{}'s {what}: {seen}", tenant.name);
    assert_eq!(seen["tz"], tenant.timezone, "{}'s {what}: {seen}", tenant.name);
}

async fn events_of(server: &TestServer, key: &str, session: &str) -> Vec<Value> {
    let path = format!("/public/sessions/{session}/events?limit=1000");
    let page = server.call(Method::GET, &path, Some(key), None).await;
    page.json["events"].as_array().cloned().unwrap_or_default()
}

async fn console_of(server: &TestServer, key: &str, session: &str) -> Vec<String> {
    let path = format!("/public/sessions/{session}/logs");
    let logs = server.call(Method::GET, &path, Some(key), None).await;
    logs.json["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", logs.body))
        .iter()
        .filter(|e| e["kind"] == "console")
        .map(|e| e["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// How many console lines of each page the capture holds.
fn counted(lines: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        *counts.entry(line.clone()).or_default() += 1;
    }
    counts
}

fn kept_contexts(server: &TestServer) -> usize {
    server.broker.shared().browsers().iter().map(|b| b.kept_contexts).sum()
}

async fn start(spares: usize) -> TestServer {
    TestServer::start_with(|c| {
        c.pool_size = 0;
        c.context_browsers = 1;
        c.context_sharing = "any".into();
        c.context_spares = spares;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_contexts_identity_and_watch_never_reach_anothers() {
    let (site, log) = start_site().await;
    let server = start(0).await;
    let sessions = [create(&server, &A, site).await, create(&server, &B, site).await];
    let shared = server.broker.shared().browsers();
    assert_eq!(shared.len(), 1, "one shared browser: {shared:?}");
    assert_eq!(shared[0].contexts, 2);
    assert_eq!(kept_contexts(&server), 2, "each session registered with the one keeper");
    let mut clients = Vec::new();
    for session in &sessions {
        clients.push(CdpClient::connect(session).await);
    }
    // Both live at once, their pages made in turn: the first tab, then a new tab.
    let mut pages = Vec::new();
    for (client, tenant) in clients.iter_mut().zip([&A, &B]) {
        let (_, page) = client.own_page().await;
        client
            .load(&page, &format!("http://site.test/probe?who={}-1", tenant.name))
            .await;
        pages.push(page);
    }
    for (client, tenant) in clients.iter_mut().zip([&A, &B]) {
        let url = format!("http://site.test/probe?who={}-2", tenant.name);
        let tab = client.open(&url, None).await.expect("a new tab");
        client.eval(&tab, "location.href").await;
        pages.push(tab);
    }
    for (i, tenant) in [&A, &B, &A, &B].into_iter().enumerate() {
        let client = &mut clients[i % 2];
        let (own, frame) = seen_in(client, &pages[i]).await;
        assert_identity(tenant, &own, "page");
        assert_identity(tenant, &frame, "cross-site iframe");
    }
    // Every request the site got (documents, iframes, the new tabs' first) carried its own
    // session's user agent and language.
    let requests = log.lock().unwrap().clone();
    for tenant in [&A, &B] {
        let own: Vec<_> = requests
            .iter()
            .filter(|(_, path, _, _)| path.contains(&format!("who={}-", tenant.name)))
            .collect();
        assert_eq!(own.len(), 4, "{}: two pages, two iframes: {own:?}", tenant.name);
        for (host, path, ua, lang) in own {
            assert_eq!(*ua, tenant.ua.to_lowercase(), "{host}{path}");
            assert!(lang.starts_with(&tenant.locale.to_lowercase()), "{host}{path}: {lang}");
        }
    }
    // A dialog in each, and a challenge in A's: each heard only by its own session.
    for (i, tenant) in [&A, &B].into_iter().enumerate() {
        let url = format!("http://site.test/dialog?who={}", tenant.name);
        clients[i]
            .send(Some(&pages[i + 2]), "Page.navigate", json!({ "url": url }))
            .await;
    }
    clients[0].load(&pages[0], "http://site.test/challenge").await;
    let heard = eventually_async(Duration::from_secs(15), || async {
        let a = events_of(&server, KEY_A, id(&sessions[0])).await;
        let b = events_of(&server, KEY_B, id(&sessions[1])).await;
        a.iter().any(|e| e["type"] == "dialog")
            && b.iter().any(|e| e["type"] == "dialog")
            && a.iter().any(|e| e["type"] == "challenge_seen")
    })
    .await;
    let events = [
        events_of(&server, KEY_A, id(&sessions[0])).await,
        events_of(&server, KEY_B, id(&sessions[1])).await,
    ];
    assert!(heard, "{events:#?}");
    for (i, tenant) in [&A, &B].into_iter().enumerate() {
        let dialogs: Vec<&Value> = events[i].iter().filter(|e| e["type"] == "dialog").collect();
        assert_eq!(dialogs.len(), 1, "{}: {dialogs:?}", tenant.name);
        assert_eq!(dialogs[0]["data"]["message"], format!("dialog-of-{}", tenant.name));
    }
    let challenges = |events: &[Value]| events.iter().filter(|e| e["type"] == "challenge_seen").count();
    assert_eq!((challenges(&events[0]), challenges(&events[1])), (1, 0), "{events:#?}");
    let path = format!("/public/sessions/{}", id(&sessions[1]));
    let b_session = server.call(Method::GET, &path, Some(KEY_B), None).await.json;
    assert_eq!(b_session["challenges"], json!([]), "{b_session}");

    // Each capture holds exactly its own pages' lines: once each, none of the other's.
    for (i, tenant) in [&A, &B].into_iter().enumerate() {
        let n = tenant.name;
        let expected: HashMap<String, usize> = [
            format!("console-of-{n}-1"),
            format!("console-of-{n}-1-frame"),
            format!("console-of-{n}-2"),
            format!("console-of-{n}-2-frame"),
        ]
        .into_iter()
        .map(|line| (line, 1))
        .collect();
        let got = eventually_async(Duration::from_secs(10), || async {
            counted(&console_of(&server, tenant.key, id(&sessions[i])).await) == expected
        })
        .await;
        let lines = console_of(&server, tenant.key, id(&sessions[i])).await;
        assert!(got, "{n}'s console: {lines:?}");
    }

    // A's end: its registration goes, its capture is finished (the same lines after the
    // end), and B's pages keep B's identity.
    let a_lines = console_of(&server, KEY_A, id(&sessions[0])).await;
    server.terminate(id(&sessions[0])).await;
    assert!(
        eventually(Duration::from_secs(10), || kept_contexts(&server) == 1).await,
        "A's context left the keeper: {:?}",
        server.broker.shared().browsers()
    );
    assert_eq!(console_of(&server, KEY_A, id(&sessions[0])).await, a_lines);
    let fresh = clients[1].open("http://site.test/probe?who=b-3", None).await.unwrap();
    let (own, frame) = seen_in(&mut clients[1], &fresh).await;
    assert_identity(&B, &own, "page after A's end");
    assert_identity(&B, &frame, "iframe after A's end");
    let path = format!("/public/sessions/{}/terminate", id(&sessions[1]));
    server.call(Method::POST, &path, Some(KEY_B), None).await;
    assert!(
        eventually(Duration::from_secs(10), || kept_contexts(&server) == 0).await,
        "{:?}",
        server.broker.shared().browsers()
    );
    server.stop().await;
}

/// A spare context's tab, made before any session wanted it, shows the session's identity
/// from its first request once handed out; sessions that come and go leave nothing in the
/// keeper's registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_gets_its_sessions_identity_and_ended_sessions_leave_the_keeper() {
    let (site, log) = start_site().await;
    let server = start(2).await;
    // The first session starts the browser; its spares are made behind it.
    let first = create(&server, &B, site).await;
    assert!(
        eventually(Duration::from_secs(20), || {
            server
                .broker
                .shared()
                .browsers()
                .first()
                .is_some_and(|b| b.contexts == 1)
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the spares' quiet pause, and their making
    for round in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await; // a spare made again meanwhile
        let session = create(&server, &A, site).await;
        let mut client = CdpClient::connect(&session).await;
        let (_, page) = client.own_page().await;
        let url = format!("http://site.test/probe?who=a-spare{round}");
        client.load(&page, &url).await;
        let (own, frame) = seen_in(&mut client, &page).await;
        assert_identity(&A, &own, "spare's page");
        assert_identity(&A, &frame, "spare's iframe");
        let first_request = log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, path, _, _)| path.contains(&format!("who=a-spare{round}")))
            .cloned()
            .expect("the page's request");
        assert_eq!(first_request.2, A.ua.to_lowercase(), "{first_request:?}");
        assert_eq!(kept_contexts(&server), 2);
        server.terminate(id(&session)).await;
        assert!(
            eventually(Duration::from_secs(10), || kept_contexts(&server) == 1).await,
            "round {round}: {:?}",
            server.broker.shared().browsers()
        );
    }
    let path = format!("/public/sessions/{}/terminate", id(&first));
    server.call(Method::POST, &path, Some(KEY_B), None).await;
    assert!(eventually(Duration::from_secs(10), || kept_contexts(&server) == 0).await);
    server.stop().await;
}

/// A page of one tenant that logs a string larger than a WebSocket frame may be (the
/// keeper's capture hears it whole) does not take the shared keeper away from another
/// tenant: B's next tab still shows B's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_console_message_does_not_unkeep_a_neighbour() {
    let (site, _) = start_site().await;
    let server = start(0).await;
    let a = create(&server, &A, site).await;
    let b = create(&server, &B, site).await;
    let mut attacker = CdpClient::connect(&a).await;
    let (_, page) = attacker.own_page().await;
    attacker.load(&page, "http://site.test/plain").await;
    // 40 MiB of text, logged twice: past tungstenite's default frame (16 MiB) and message
    // (64 MiB) limits once serialized.
    let huge = "(() => { const s = 'x'.repeat(40 * 1024 * 1024); console.log(s, s); return 1; })()";
    attacker.eval(&page, huge).await;
    let mut neighbour = CdpClient::connect(&b).await;
    let tab = neighbour
        .open("http://site.test/probe?who=b-after", None)
        .await
        .unwrap();
    let (own, frame) = seen_in(&mut neighbour, &tab).await;
    assert_identity(&B, &own, "page after A's huge message");
    assert_identity(&B, &frame, "iframe after A's huge message");
    // And A's own keeping goes on too.
    let tab = attacker.open("http://site.test/probe?who=a-after", None).await.unwrap();
    let (own, _) = seen_in(&mut attacker, &tab).await;
    assert_identity(&A, &own, "A's page after its huge message");
    server.stop().await;
}

/// How many frames come before the page's own in a console line the page logs from a
/// named function, as a client with `Runtime` enabled hears it: none once the broker has
/// dropped the console wrappers' frames.
async fn frames_above_the_page(client: &mut CdpClient, page: &str, line: &str) -> usize {
    client.send(Some(page), "Runtime.enable", json!({})).await;
    let call = format!("(function pageFunction() {{ console.log('{line}'); }})()\n//# sourceURL=probe.js");
    client
        .send(Some(page), "Runtime.evaluate", json!({ "expression": call }))
        .await;
    frames_heard(client, line).await
}

/// A DevTools client of the shared browser's own holding `target` (past the broker, which
/// drops nothing of what it hears), with `Runtime` enabled: where the console wrappers'
/// frames are all seen, one per run of a page script in the document.
async fn straight_to_the_browser(server: &TestServer, target: &str) -> CdpClient {
    for browser in server.broker.shared().browsers() {
        let addr = SocketAddr::from(([127, 0, 0, 1], browser.port));
        if !http(addr, Method::GET, "/json/list", None, None)
            .await
            .body
            .contains(target)
        {
            continue;
        }
        let version = http(addr, Method::GET, "/json/version", None, None).await;
        let mut raw = CdpClient::connect_url(version.json["webSocketDebuggerUrl"].as_str().unwrap()).await;
        let session = raw.attach(target).await;
        raw.send(Some(&session), "Runtime.enable", json!({})).await;
        return raw;
    }
    panic!("no shared browser holds {target}");
}

/// How many frames stand above the page's own in the console line `line` `client` heard.
async fn frames_heard(client: &mut CdpClient, line: &str) -> usize {
    let is_line = |e: &Value| e["method"] == "Runtime.consoleAPICalled" && e["params"]["args"][0]["value"] == line;
    client.wait_event(is_line).await;
    let event = client.events.iter().find(|e| is_line(e)).unwrap();
    let frames = event["params"]["stackTrace"]["callFrames"].as_array().unwrap();
    frames
        .iter()
        .position(|f| f["functionName"] == "pageFunction" && f["url"] == "probe.js")
        .unwrap_or_else(|| panic!("the page's frame: {event}"))
}

fn dressed_spares(server: &TestServer) -> (usize, usize) {
    let browsers = server.broker.shared().browsers();
    (
        browsers.iter().map(|b| b.spares).sum(),
        browsers.iter().map(|b| b.dressed_spares).sum(),
    )
}

/// What a session's first document (the spare's blank page, before any navigation) shows.
const FIRST_DOCUMENT: &str = "({ ua: navigator.userAgent, lang: navigator.language, \
     tz: Intl.DateTimeFormat().resolvedOptions().timeZone, webdriver: navigator.webdriver, \
     plugins: navigator.plugins.length, chrome: typeof window.chrome, history: history.length, \
     platform: navigator.platform, \
     natives: [Function.prototype.toString, console.log, console.warn, \
       Object.getOwnPropertyDescriptor(Navigator.prototype, 'webdriver').get, \
       Object.getOwnPropertyDescriptor(Navigator.prototype, 'plugins').get] \
       .map(f => Function.prototype.toString.call(f)) })";

/// A spare's page is dressed ahead, as it opens, for a session that asks for nothing (the
/// user agent without `Headless`, the shell's missing parts, no automation tells): such a
/// session finds it so; one that asks for its own user agent, locale, time zone and capture
/// gets them on top, and one with a fingerprint (another page script) a page dressed again,
/// each on its first blank document too, with nothing of the plain dressing left over (one
/// console wrapper: a client's console event starts at the page's frame; lines captured
/// once; its user agent on every request). Spares made after a fingerprint's registration
/// are left bare, until a session that fits the dressing registers. The keeper dresses
/// exactly the spares the browser holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_dressed_ahead_serves_plain_sessions_and_is_dressed_again_for_others() {
    let (site, log) = start_site().await;
    let server = start(2).await;
    let plain_body = json!({ "isolation": "context", "proxy": { "server": format!("http://{site}") } });
    let create_plain = || create_with(&server, KEY_B, plain_body.clone());
    let first = create_plain().await;
    for round in 0..6 {
        // After a fingerprint's registration the spare made is left bare (its page would be
        // dressed again for the next fingerprint); the plain session after it takes that
        // one, and spares are dressed again.
        let dressed = if round == 4 { 1 } else { 2 };
        let ready = eventually(Duration::from_secs(20), || dressed_spares(&server) == (2, dressed)).await;
        assert!(
            ready,
            "round {round}: two spares, {dressed} dressed: {:?}",
            dressed_spares(&server)
        );
        // Plain, then A's identity and capture (on top of the dressing), then a
        // fingerprint (whose page script differs: dressed again), in turn.
        let plain = round % 2 == 0;
        let fingerprint = round % 4 == 3;
        let session = if plain {
            create_plain().await
        } else if fingerprint {
            let body = json!({
                "isolation": "context",
                "fingerprint": { "os": "windows", "hardware": 5 },
                "proxy": { "server": format!("http://{site}") },
            });
            create_with(&server, KEY_A, body).await
        } else {
            create(&server, &A, site).await
        };
        let mut client = CdpClient::connect(&session).await;
        let (target, page) = client.own_page().await;
        let blank = client.eval(&page, FIRST_DOCUMENT).await;
        let mut raw = straight_to_the_browser(&server, &target).await;
        // The console wrappers' frames all dropped: the page's frame first.
        let line = format!("blank-of-{round}");
        let above = frames_above_the_page(&mut client, &page, &line).await;
        assert_eq!(above, 0, "round {round}: the page's frame first");
        // Chrome runs a new tab's page script twice in one window (on its initial empty
        // document and on the blank page that replaces it, which keeps the window), a page
        // dressed again once (its new blank document): a second page script on top of the
        // dressing would make three.
        let wrappers = frames_heard(&mut raw, &line).await;
        assert!(
            (1..=2).contains(&wrappers),
            "round {round}: {wrappers} wrappers' frames"
        );
        assert_eq!(blank["history"], 1, "round {round}: still the first document: {blank}");
        assert_eq!(blank["webdriver"], false, "round {round}: {blank}");
        assert_eq!(
            blank["plugins"], 5,
            "round {round}: the shell's plugins put back: {blank}"
        );
        assert_eq!(blank["chrome"], "object", "round {round}: {blank}");
        // The page script run twice in the window leaves what it patched reading native.
        for text in blank["natives"].as_array().unwrap() {
            let text = text.as_str().unwrap();
            assert!(
                text.starts_with("function ") && text.ends_with("() { [native code] }"),
                "round {round}: {text}"
            );
        }
        let who = format!("{}-dressed{round}", if plain { "b" } else { "a" });
        client.load(&page, &format!("http://site.test/probe?who={who}")).await;
        let (own, frame) = seen_in(&mut client, &page).await;
        let request_ua = log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, path, _, _)| path.contains(&format!("who={who}")))
            .map(|(_, _, ua, _)| ua.clone())
            .expect("the page's request");
        if fingerprint {
            for seen in [&blank, &own, &frame] {
                assert!(
                    seen["ua"].as_str().unwrap().contains("Windows NT"),
                    "round {round}: {seen}"
                );
            }
            assert_eq!(
                blank["platform"], "Win32",
                "round {round}: the first document too: {blank}"
            );
            assert!(request_ua.contains("windows nt"), "round {round}: {request_ua}");
        } else if plain {
            for seen in [&blank, &own, &frame] {
                let ua = seen["ua"].as_str().unwrap();
                assert!(
                    ua.contains("Chrome/") && !ua.contains("Headless"),
                    "round {round}: {seen}"
                );
                assert!(
                    !ua.contains("Tenant"),
                    "round {round}: no other session's identity: {seen}"
                );
            }
            assert!(!request_ua.contains("headless"), "round {round}: {request_ua}");
        } else {
            assert_identity(&A, &blank, "first document of a dressed spare");
            assert_identity(&A, &own, "page of a dressed spare");
            assert_identity(&A, &frame, "iframe of a dressed spare");
            assert_eq!(request_ua, A.ua.to_lowercase());
            let expected: HashMap<String, usize> = [
                format!("blank-of-{round}"),
                format!("console-of-{who}"),
                format!("console-of-{who}-frame"),
            ]
            .into_iter()
            .map(|line| (line, 1))
            .collect();
            let once = eventually_async(Duration::from_secs(10), || async {
                counted(&console_of(&server, KEY_A, id(&session)).await) == expected
            })
            .await;
            let lines = console_of(&server, KEY_A, id(&session)).await;
            assert!(once, "round {round}: each line captured once: {lines:?}");
        }
        let line = format!("loaded-of-{round}");
        let above = frames_above_the_page(&mut client, &page, &line).await;
        assert_eq!(above, 0, "round {round}: the wrapper's frame dropped");
        let wrappers = frames_heard(&mut raw, &line).await;
        assert_eq!(wrappers, 1, "round {round}: one page script on a loaded document");
        let key = if plain { KEY_B } else { KEY_A };
        let path = format!("/public/sessions/{}/terminate", id(&session));
        server.call(Method::POST, &path, Some(key), None).await;
    }
    let path = format!("/public/sessions/{}/terminate", id(&first));
    server.call(Method::POST, &path, Some(KEY_B), None).await;
    assert!(eventually(Duration::from_secs(10), || kept_contexts(&server) == 0).await);
    let settled = eventually(Duration::from_secs(10), || {
        let (spares, dressed) = dressed_spares(&server);
        spares == dressed
    })
    .await;
    assert!(
        settled,
        "the keeper dresses the spares there are, no more: {:?}",
        dressed_spares(&server)
    );
    server.stop().await;
}
