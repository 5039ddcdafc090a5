//! Context sessions: many sessions per shared Chrome, each a browser context, the CDP
//! filtered so that a client sees and touches only its own context. Real Chromium, raw CDP
//! clients, Puppeteer, Playwright and dari-python.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(server: &TestServer, key: &str, body: Value) -> Value {
    let r = server
        .call(Method::POST, "/public/sessions", Some(key), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json
}

fn cdp_url(session: &Value) -> &str {
    session["cdp_url"].as_str().unwrap()
}

fn token(session: &Value) -> &str {
    cdp_url(session).split_once("?token=").unwrap().1
}

/// Context sessions only: no warm process browsers in the way.
async fn start(tweak: impl FnOnce(&mut cdpgate::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.pool_size = 0;
        c.default_isolation = "context".into();
        tweak(c);
    })
    .await
}

/// Two tenants (and a second session of one of them) on one shared Chrome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_one_shared_chrome_cannot_see_or_touch_each_other() {
    let server = start(|c| {
        c.context_sharing = "any".into();
        c.context_browsers = 1;
    })
    .await;
    let site = format!("http://{}/", start_site().await);
    let a = create(&server, KEY_A, json!({"isolation": "context"})).await;
    let a2 = create(&server, KEY_A, json!({})).await;
    let b = create(&server, KEY_B, json!({})).await;
    assert_eq!(a["isolation"], "context");
    assert_eq!(b["isolation"], "context");
    let browsers = server.broker.shared().browsers();
    assert_eq!(browsers.len(), 1, "one shared Chrome: {browsers:?}");
    assert_eq!(browsers[0].contexts, 3);

    let (mut ca, mut ca2, mut cb) = (
        CdpClient::connect_url(cdp_url(&a)).await,
        CdpClient::connect_url(cdp_url(&a2)).await,
        CdpClient::connect_url(cdp_url(&b)).await,
    );
    let (a_pages, b_pages, a2_pages) = (ca.pages().await, cb.pages().await, ca2.pages().await);
    assert_eq!(a_pages.len(), 1, "{a_pages:?}");
    assert_eq!(b_pages.len(), 1, "{b_pages:?}");
    assert_eq!(a2_pages.len(), 1, "{a2_pages:?}");
    let (a_context, b_context) = (a_pages[0].1.clone(), b_pages[0].1.clone());
    assert_ne!(a_context, b_context);
    assert_ne!(a_context, a2_pages[0].1);
    let contexts = ca.call(None, "Target.getBrowserContexts", json!({})).await;
    assert_eq!(contexts["browserContextIds"], json!([a_context]));

    // A watches everything it may: discovery, and auto-attach holding new targets.
    ca.call(None, "Target.setDiscoverTargets", json!({"discover": true}))
        .await;
    ca.call(
        None,
        "Target.setAutoAttach",
        json!({"autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true}),
    )
    .await;
    // B opens a page; A's auto-attach does not hold it: B's script runs.
    let b_page = cb.call(None, "Target.createTarget", json!({"url": site})).await["targetId"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_session = cb.attach(&b_page).await;
    assert_eq!(cb.eval(&b_session, "document.title").await, "cdpgate test site");
    // A opens its own; once A has heard of it, it has heard of nothing of B's.
    let a_page = ca.call(None, "Target.createTarget", json!({"url": site})).await["targetId"]
        .as_str()
        .unwrap()
        .to_owned();
    let attached_to_a_page = |e: &Value| {
        e["method"] == "Target.attachedToTarget" && e["params"]["targetInfo"]["targetId"] == a_page.as_str()
    };
    ca.wait_event(attached_to_a_page).await;
    // A's auto-attach holds the page until A lets it run (Chrome's headless shell does not
    // answer the page's own socket before).
    let a_page_session = ca.events.iter().find(|e| attached_to_a_page(e)).unwrap()["params"]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    ca.send(Some(&a_page_session), "Runtime.runIfWaitingForDebugger", json!({}))
        .await;
    let heard = serde_json::to_string(&ca.events).unwrap();
    for other in [&b_page, &b_pages[0].0, &b_context, &a2_pages[0].0] {
        assert!(!heard.contains(other.as_str()), "A heard of {other}: {heard}");
    }
    assert!(heard.contains(&a_page));

    // A cannot reach B's targets by id, nor create, read or dispose in B's context.
    for method in [
        "Target.attachToTarget",
        "Target.activateTarget",
        "Target.closeTarget",
        "Target.getTargetInfo",
    ] {
        let message = ca.refused(method, json!({"targetId": b_page, "flatten": true})).await;
        assert_eq!(message, "No target with given id found", "{method}");
    }
    for (method, params) in [
        (
            "Target.createTarget",
            json!({"url": "about:blank", "browserContextId": b_context}),
        ),
        ("Storage.getCookies", json!({"browserContextId": b_context})),
        ("Target.disposeBrowserContext", json!({"browserContextId": b_context})),
        ("Browser.crash", json!({})),
        ("Browser.getBrowserCommandLine", json!({})),
        ("Target.attachToBrowserTarget", json!({})),
        ("Target.exposeDevToolsProtocol", json!({"targetId": a_page})),
        ("Target.createBrowserContext", json!({})),
        ("SystemInfo.getProcessInfo", json!({})),
        ("Tracing.start", json!({})),
        ("Fetch.enable", json!({})),
    ] {
        ca.refused(method, params).await;
    }
    // Nor open B's page socket, nor list it.
    let b_socket = format!("ws://{}/devtools/page/{b_page}?token={}", server.addr, token(&a));
    assert!(ws_connect(&b_socket).await.is_err(), "A opened B's page socket");
    let listed = server.discovery(&a, "json/list").await;
    assert_eq!(listed.status, StatusCode::OK);
    let ids: Vec<&str> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&a_page.as_str()) && !ids.contains(&b_page.as_str()),
        "{ids:?}"
    );
    assert!(ids.iter().all(|id| *id != a2_pages[0].0), "{ids:?}");
    // /json/new opens in A's context; /json/activate and /json/close reach A's tabs only.
    let a_id = a["session_id"].as_str().unwrap();
    let json_path = |rest: &str| format!("/devtools/browser/{a_id}/json/{rest}?token={}", token(&a));
    let opened = server
        .call(
            Method::PUT,
            &format!("{}&url=about:blank", json_path("new")),
            None,
            None,
        )
        .await;
    assert_eq!(opened.status, StatusCode::OK, "{}", opened.body);
    let new_tab = opened.json["id"].as_str().expect("the new tab").to_owned();
    assert!(ca.pages().await.iter().any(|(t, c)| *t == new_tab && *c == a_context));
    for verb in ["activate", "close"] {
        let r = server
            .call(Method::GET, &json_path(&format!("{verb}/{b_page}")), None, None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{verb}: {}", r.body);
    }
    assert!(
        cb.pages().await.iter().any(|(t, _)| *t == b_page),
        "B's tab is still open"
    );
    let closed = server
        .call(Method::GET, &json_path(&format!("close/{new_tab}")), None, None)
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
    // A's own page socket works.
    let mut a_socket = CdpClient::connect_url(&format!(
        "ws://{}/devtools/page/{a_page}?token={}",
        server.addr,
        token(&a)
    ))
    .await;
    let evaluated = a_socket
        .send(
            None,
            "Runtime.evaluate",
            json!({"expression": "6 * 7", "returnByValue": true}),
        )
        .await;
    assert_eq!(evaluated["result"]["result"]["value"], 42);
    assert!(a_socket.send(None, "Browser.crash", json!({})).await["error"].is_object());
    let listed = a_socket.send(None, "Target.getTargets", json!({})).await;
    let infos = listed["result"]["targetInfos"].as_array().unwrap();
    assert!(!infos.is_empty(), "A's own targets are listed: {listed}");
    assert!(
        infos.iter().all(|t| t["browserContextId"] == a_context.as_str()),
        "{listed}"
    );

    // Cookies and localStorage stay in their context.
    let cookie = json!({"cookies": [{"name": "who", "value": "a", "url": site}]});
    ca.call(None, "Storage.setCookies", cookie).await;
    let names = |cookies: &Value| -> Vec<String> {
        cookies["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&ca.call(None, "Storage.getCookies", json!({})).await), ["who"]);
    assert!(names(&cb.call(None, "Storage.getCookies", json!({})).await).is_empty());
    assert!(names(&ca2.call(None, "Storage.getCookies", json!({})).await).is_empty());
    let a_session = ca.attach(&a_page).await;
    ca.eval(&a_session, "localStorage.setItem('who', 'a')").await;
    assert_eq!(ca.eval(&a_session, "document.cookie").await, "who=a");
    assert_eq!(cb.eval(&b_session, "localStorage.getItem('who')").await, Value::Null);
    assert_eq!(cb.eval(&b_session, "document.cookie").await, "");

    // Browser.close ends A alone.
    let closed = ca.send(None, "Browser.close", json!({})).await;
    assert_eq!(closed["result"], json!({}), "{closed}");
    let (code, reason) = await_close(&mut ca.ws, Duration::from_secs(10))
        .await
        .expect("A is closed");
    assert_eq!((code, reason.as_str()), (4003, "browser closed"));
    let a_id = a["session_id"].as_str().unwrap();
    let record = server.get(a_id).await.json;
    assert_eq!(record["status"], "terminated");
    assert_eq!(record["end_reason"], "browser exited");
    assert_eq!(cb.eval(&b_session, "1 + 1").await, 2);
    assert!(ca2.call(None, "Browser.getVersion", json!({})).await["product"].is_string());
    // Its context is gone from the shared browser; the others remain.
    assert!(
        eventually(Duration::from_secs(10), || shared(&server)[0].1 == 2).await,
        "{:?}",
        shared(&server)
    );
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_context_refused_commands_total{method=\"Browser.crash\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cdpgate_sessions_by_isolation{isolation=\"context\"} 2"),
        "{metrics}"
    );
    server.stop().await;
}

/// Puppeteer, Playwright and dari-python, unchanged, on context sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppeteer_playwright_and_dari_work_unchanged_on_context_sessions() {
    let server = start(|_| {}).await;
    let site = format!("http://{}/", start_site().await);
    for client in ["puppeteer", "playwright"] {
        let session = create(&server, KEY_A, json!({"screen_config": {"width": 1024, "height": 700}})).await;
        let seen = node("drive.mjs", &[client, cdp_url(&session), &site]).await;
        assert_eq!(seen["title"], "cdpgate test site", "{client}: {seen}");
        assert_eq!(seen["sum"], 42, "{client}: {seen}");
        if client == "puppeteer" {
            // The first tab is at the session's size (a new page gets Puppeteer's own).
            assert_eq!(seen["initial"], json!([1024, 700]), "{seen}");
        }
        assert!(seen["screenshot"]["width"].as_u64().unwrap() > 0, "{seen}");
    }

    // Puppeteer writes a cookie and localStorage, then closes its browser: the session ends.
    let a = create(&server, KEY_A, json!({})).await;
    let seen = node("context_session.mjs", &["puppeteer", cdp_url(&a), &site, "a", "close"]).await;
    assert_eq!(seen["pagesAtStart"], 1, "{seen}");
    assert_eq!(seen["pages"], 2, "{seen}");
    assert_eq!(seen["cookies"], json!(["who=a"]), "{seen}");
    assert_eq!(seen["localStorage"], "a", "{seen}");
    assert!(seen["screenshotBytes"].as_u64().unwrap() > 1000, "{seen}");
    let a_id = a["session_id"].as_str().unwrap();
    let ended = eventually_async(Duration::from_secs(10), || async {
        server.get(a_id).await.json["end_reason"] == "browser exited"
    })
    .await;
    assert!(ended, "{}", server.get(a_id).await.json);

    // Playwright on another session of the same tenant: nothing of A's, and its own.
    let b = create(&server, KEY_A, json!({})).await;
    let seen = node("context_session.mjs", &["playwright", cdp_url(&b), &site, "-"]).await;
    assert_eq!(seen["contexts"], 1, "contexts()[0] is the session's: {seen}");
    assert_eq!(seen["pagesAtStart"], 1, "{seen}");
    assert_eq!(seen["cookies"], json!([]), "{seen}");
    assert_eq!(seen["localStorage"], Value::Null, "{seen}");
    let seen = node("context_session.mjs", &["playwright", cdp_url(&b), &site, "b"]).await;
    assert_eq!(seen["cookies"], json!(["who=b"]), "{seen}");
    assert_eq!(seen["storageOrigins"], json!(["who=b"]), "{seen}");
    assert_eq!(
        server.get(b["session_id"].as_str().unwrap()).await.json["status"],
        "active"
    );

    // dari-python's whole session walk, with every session a context session.
    let report = python_script("dari_sessions.py", &[&server.url(""), KEY_B]).await;
    assert_eq!(report["created_status"], "active", "{report}");
    assert_eq!(report["after_terminate"], "terminated", "{report}");
    assert_eq!(report["after_delete_status"], 404, "{report}");
    server.stop().await;
}

/// The shared browsers of `server`: (pid, contexts, draining), oldest first.
fn shared(server: &TestServer) -> Vec<(u32, usize, bool)> {
    server
        .broker
        .shared()
        .browsers()
        .into_iter()
        .map(|b| (b.pid, b.contexts, b.draining))
        .collect()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A shared browser that crashes ends its own sessions and no one else's, and is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_shared_browser_ends_exactly_its_sessions() {
    let server = start(|_| {}).await;
    let a1 = create(&server, KEY_A, json!({})).await;
    let a2 = create(&server, KEY_A, json!({})).await;
    let [(a_browser, 2, false)] = shared(&server)[..] else {
        panic!("{:?}", shared(&server))
    };
    let b = create(&server, KEY_B, json!({})).await;
    let process = create(&server, KEY_A, json!({"isolation": "process"})).await;
    assert_eq!(process["isolation"], "process");
    assert_eq!(shared(&server).len(), 2, "tenants do not share: {:?}", shared(&server));
    let mut a1_client = ws_connect(cdp_url(&a1)).await.unwrap();
    cdp_call(&mut a1_client, 1, "Browser.getVersion", json!({})).await;

    kill(a_browser, libc::SIGKILL);
    let (code, reason) = await_close(&mut a1_client, Duration::from_secs(15))
        .await
        .expect("the client is told");
    assert_eq!((code, reason.as_str()), (4003, "browser crashed"));
    for session in [&a1, &a2] {
        let id = session["session_id"].as_str().unwrap();
        let ended = eventually_async(Duration::from_secs(10), || async {
            server.get(id).await.json["end_reason"] == "browser crashed"
        })
        .await;
        assert!(ended, "{}", server.get(id).await.json);
        assert_eq!(server.get(id).await.json["status"], "terminated");
    }
    for session in [&b, &process] {
        let mut client = ws_connect(cdp_url(session)).await.unwrap();
        let version = cdp_call(&mut client, 1, "Browser.getVersion", json!({})).await;
        assert!(version["result"]["product"].is_string(), "{version}");
    }
    let b_key = server
        .call(
            Method::GET,
            &format!("/public/sessions/{}", b["session_id"].as_str().unwrap()),
            Some(KEY_B),
            None,
        )
        .await;
    assert_eq!(b_key.json["status"], "active");
    // The next session of A's gets a new shared browser.
    let a3 = create(&server, KEY_A, json!({})).await;
    let mut client = ws_connect(cdp_url(&a3)).await.unwrap();
    assert!(cdp_call(&mut client, 1, "Target.getTargets", json!({})).await["result"].is_object());
    let browsers = shared(&server);
    assert!(!browsers.is_empty(), "A's new session runs in a shared browser");
    assert!(browsers.iter().all(|(pid, ..)| *pid != a_browser), "{a_browser}");
    server.stop().await;
}

/// A tenant's sessions fill its shared browsers; a browser is recycled after its allowance,
/// and an empty one of another tenant makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_browsers_serve_one_tenant_and_are_recycled() {
    let server = start(|c| {
        c.context_browsers = 2;
        c.max_contexts_per_browser = 2;
        c.context_recycle_after = 3;
        c.queue_timeout_ms = 300;
    })
    .await;
    let terminate = async |key: &str, session: &Value| {
        let path = format!("/public/sessions/{}/terminate", session["session_id"].as_str().unwrap());
        assert_eq!(
            server.call(Method::POST, &path, Some(key), None).await.status,
            StatusCode::NO_CONTENT
        );
    };
    let a1 = create(&server, KEY_A, json!({})).await;
    let a2 = create(&server, KEY_A, json!({})).await;
    let [(x, 2, false)] = shared(&server)[..] else {
        panic!("{:?}", shared(&server))
    };
    terminate(KEY_A, &a1).await;
    assert!(eventually(Duration::from_secs(10), || shared(&server) == [(x, 1, false)]).await);
    // The third context of X is its last: it drains.
    let a3 = create(&server, KEY_A, json!({})).await;
    assert_eq!(shared(&server), [(x, 2, true)]);
    let a4 = create(&server, KEY_A, json!({})).await;
    let [_, (y, 1, false)] = shared(&server)[..] else {
        panic!("{:?}", shared(&server))
    };
    // Two browsers, both A's and neither empty: B waits, then is refused.
    let refused = server
        .call(Method::POST, "/public/sessions", Some(KEY_B), Some("{}"))
        .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    // X's last sessions end: it is closed.
    terminate(KEY_A, &a2).await;
    terminate(KEY_A, &a3).await;
    assert!(
        eventually(Duration::from_secs(15), || !process_exists(x)).await,
        "X is closed"
    );
    assert_eq!(shared(&server), [(y, 1, false)]);
    let b1 = create(&server, KEY_B, json!({})).await;
    let b2 = create(&server, KEY_B, json!({})).await;
    let [(_, 1, false), (z, 2, false)] = shared(&server)[..] else {
        panic!("{:?}", shared(&server))
    };
    // A's browser empties; B, out of room, gets it retired for a browser of its own.
    terminate(KEY_A, &a4).await;
    assert!(eventually(Duration::from_secs(10), || shared(&server)[0] == (y, 0, false)).await);
    let _b3 = create(&server, KEY_B, json!({})).await;
    assert!(
        eventually(Duration::from_secs(15), || !process_exists(y)).await,
        "Y is retired"
    );
    let now = shared(&server);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&(z, 2, false)), "{now:?}");
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("cdpgate_shared_browser_recycles_total 2"), "{metrics}");
    for session in [&b1, &b2] {
        let mut client = ws_connect(cdp_url(session)).await.unwrap();
        assert!(cdp_call(&mut client, 1, "Browser.getVersion", json!({})).await["result"].is_object());
    }
    server.stop().await;
}

/// The page targets Chrome itself lists on `port` (every context's).
async fn chrome_pages(port: u16) -> Vec<String> {
    let list = cdpgate::browser::cdp::get_json(&format!("127.0.0.1:{port}"), "/json/list")
        .await
        .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "page")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// With a warm browser and spare contexts, a tenant's first context session takes a tab
/// that was ready before it was asked for, in a browser started before it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_browser_and_spare_contexts_are_ready_before_sessions_come() {
    let server = start(|c| {
        c.context_warm_browsers = 1;
        c.context_spares = 2;
        c.context_browsers = 3;
    })
    .await;
    let ready = || server.broker.shared().browsers();
    assert!(
        eventually(Duration::from_secs(20), || ready().len() == 1).await,
        "a warm browser"
    );
    let warm = ready()[0].clone();
    assert_eq!(warm.contexts, 0);
    // Shared browsers run Chromium's headless shell (setup installs it).
    let shell = cdpgate::browser::find_headless_shell().expect("scripts/setup.sh installs chromium-headless-shell");
    assert_eq!(executable(warm.pid), shell.canonicalize().unwrap());
    // Its first tab (about:blank, in no context) and both spares: a session takes the
    // spare made last, so the list must be taken once both are there.
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            chrome_pages(warm.port).await.len() >= 3
        })
        .await,
        "its spare tabs: {:?}",
        chrome_pages(warm.port).await
    );
    let spares = chrome_pages(warm.port).await;
    let a = create(&server, KEY_A, json!({})).await;
    let mut client = CdpClient::connect_url(cdp_url(&a)).await;
    let pages = client.pages().await;
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert!(
        spares.contains(&pages[0].0),
        "the session's tab {} was a spare: {spares:?}",
        pages[0].0
    );
    assert!(
        ready().iter().any(|b| b.pid == warm.pid && b.contexts == 1),
        "{:?}",
        ready()
    );
    // Another warm browser comes for the next tenant; B's first session is served there.
    assert!(
        eventually(Duration::from_secs(20), || ready().len() == 2).await,
        "{:?}",
        ready()
    );
    let b = create(&server, KEY_B, json!({})).await;
    let mut client = CdpClient::connect_url(cdp_url(&b)).await;
    assert_eq!(client.pages().await.len(), 1);
    let now = ready();
    assert!(
        now.iter().filter(|b| b.contexts == 1).count() == 2,
        "A and B apart: {now:?}"
    );
    server.stop().await;
}

/// The executable process `pid` runs.
fn executable(pid: u32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// `context_chrome_path` picks the shared browsers' executable: here the full Chromium
/// sessions with a browser of their own run, and a context session works on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_chrome_path_picks_the_shared_browsers_executable() {
    let server = start(|c| c.context_chrome_path = "/usr/bin/chromium".into()).await;
    let site = format!("http://{}/", start_site().await);
    let session = create(&server, KEY_A, json!({})).await;
    let seen = node("drive.mjs", &["puppeteer", cdp_url(&session), &site]).await;
    assert_eq!(seen["title"], "cdpgate test site", "{seen}");
    let shared = server.broker.shared().browsers();
    assert_eq!(
        executable(shared[0].pid),
        std::path::Path::new("/usr/lib/chromium/chromium")
    );
    server.stop().await;

    // One that does not exist stops the broker from starting, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.context_chrome_path = "/nonexistent/headless_shell".into();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let refused = cdpgate::start(&listener, config, Default::default())
        .await
        .err()
        .expect("a start error")
        .to_string();
    assert!(
        refused.contains("context_chrome_path") && refused.contains("/nonexistent/headless_shell"),
        "{refused}"
    );
}

/// A shared browser whose processes pass the memory limit takes no new context and is
/// closed once its sessions end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_browser_past_its_memory_limit_is_recycled() {
    // 1 MiB: any browser that has served a session is past it at its first reading.
    let server = start(|c| c.context_browser_max_memory_mb = 1).await;
    let first = create(&server, KEY_A, json!({})).await;
    let [(x, 1, _)] = shared(&server)[..] else {
        panic!("{:?}", shared(&server))
    };
    assert!(
        eventually(Duration::from_secs(20), || shared(&server) == [(x, 1, true)]).await,
        "{:?}",
        shared(&server)
    );
    let second = create(&server, KEY_A, json!({})).await;
    let [(_, 1, true), (y, 1, _)] = shared(&server)[..] else {
        panic!("{:?}", shared(&server))
    };
    assert_ne!(x, y);
    let path = format!("/public/sessions/{}/terminate", first["session_id"].as_str().unwrap());
    assert_eq!(
        server.call(Method::POST, &path, Some(KEY_A), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        eventually(Duration::from_secs(15), || !process_exists(x)).await,
        "X is closed"
    );
    let mut client = ws_connect(cdp_url(&second)).await.unwrap();
    assert!(cdp_call(&mut client, 1, "Browser.getVersion", json!({})).await["result"].is_object());
    server.stop().await;
}

/// A burst of creates that finds no spare raises the spares a shared browser keeps, never
/// past `context_spares_burst` however many a tenant asks for, and once the burst has been
/// over `context_spares_burst_seconds` the extra ones are closed in Chrome (not only
/// forgotten by the broker): Chrome's own count of contexts is back to sessions + spares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_raises_the_spares_to_the_ceiling_and_quiet_closes_the_extra_ones() {
    let server = start(|c| {
        c.context_warm_browsers = 1;
        c.context_spares = 1;
        c.context_spares_burst = 4;
        c.context_spares_burst_seconds = 12;
        c.max_contexts_per_browser = 20;
        // One browser: no second warm one (and its spare) once this one is claimed.
        c.context_browsers = 1;
    })
    .await;
    let shared = server.broker.shared().clone();
    let spares = move || shared.browsers().iter().map(|b| b.spares).sum::<usize>();
    assert!(
        eventually(Duration::from_secs(20), || spares() == 1).await,
        "one at rest"
    );
    // The most spares held at once, read all along.
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (most, spares) = (most.clone(), spares.clone());
        tokio::spawn(async move {
            loop {
                most.fetch_max(spares(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Creates that come faster than Chrome makes contexts: eight at once, each ended once
    // made; then eight more.
    let burst = || async {
        let made = futures_util::future::join_all((0..8).map(|_| create(&server, KEY_A, json!({})))).await;
        for s in made {
            let id = s["session_id"].as_str().unwrap();
            assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
        }
    };
    burst().await;
    burst().await;
    let reached = eventually(Duration::from_secs(20), || most.load(Ordering::SeqCst) >= 4).await;
    assert!(reached, "the burst raised the spares to the ceiling: most {most:?}");

    // Quiet: back to one, in the broker and in Chrome (no session is left).
    assert!(
        eventually(Duration::from_secs(40), || spares() == 1).await,
        "back at rest: {}",
        spares()
    );
    assert_eq!(most.load(Ordering::SeqCst), 4, "never past the ceiling");
    let (contexts, _) = settled_holdings(&server).await;
    assert_eq!(contexts, 1, "the extra spares' contexts were closed in Chrome");
    // The identity keeper dresses the one spare left, not the ones closed.
    let dressed = || {
        server
            .broker
            .shared()
            .browsers()
            .iter()
            .map(|b| b.dressed_spares)
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(10), || dressed() == 1).await,
        "dressed: {}",
        dressed()
    );
    // And a new burst raises them as before.
    most.store(0, Ordering::SeqCst);
    burst().await;
    let reached = eventually(Duration::from_secs(20), || most.load(Ordering::SeqCst) >= 4).await;
    assert!(reached, "a second burst: most {most:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(most.load(Ordering::SeqCst), 4, "never past the ceiling");
    sampler.abort();
    server.stop().await;
}
