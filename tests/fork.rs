//! Session fork: a session logged in on a local site (a session cookie the page cannot
//! read, localStorage, each tab's sessionStorage, two tabs, one scrolled) forked into
//! several, through the real broker and real Chromium with the raw CDP client. Each fork is
//! logged in on the same pages; forks are apart from each other and from the source; the
//! source's client sees nothing happen; a fork is all or none.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A site with a login: `/login` sets a session cookie (HttpOnly: only the browser's
/// cookie store has it), a lasting one, localStorage and the tab's sessionStorage;
/// `/page/<name>` shows the Cookie header it was sent and, in its title, what its script
/// found in storage before anything else ran; it is tall enough to scroll.
async fn start_login_site() -> SocketAddr {
    start_login_site_held(tokio::sync::watch::channel(false).1).await
}

/// The same site, whose `/page/<name>` answers wait while `held` says true.
async fn start_login_site_held(held: tokio::sync::watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut held = held.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let cookie = head
                    .lines()
                    .find_map(|l| l.strip_prefix("cookie: ").or_else(|| l.strip_prefix("Cookie: ")))
                    .unwrap_or("")
                    .replace(['<', '&'], "_");
                if path.starts_with("/page/") {
                    let _ = held.wait_for(|held| !held).await;
                }
                let (headers, body) = if path == "/login" {
                    (
                        "set-cookie: sid=s3cr3t; Path=/; HttpOnly\r\nset-cookie: pref=dark; Path=/; Max-Age=3600\r\n",
                        "<script>localStorage.setItem('token', 'tok-1'); sessionStorage.setItem('tab', 'first');</script>logged in".to_owned(),
                    )
                } else {
                    (
                        "",
                        format!(
                            "<html><head><script>document.title = (localStorage.getItem('token') || '-') + '|' + \
                             (sessionStorage.getItem('tab') || '-');</script></head>\
                             <body><pre id=cookie>{cookie}</pre><div style='height: 6000px'></div></body></html>"
                        ),
                    )
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncache-control: no-store\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// What a tab shows: URL, scroll, title (storage seen at load), Cookie header, window size.
const TAB_STATE: &str = "JSON.stringify([location.href, scrollY, document.title, \
                         document.getElementById('cookie')?.textContent ?? '', innerWidth, innerHeight])";

/// Every page's state of the session `client` drives, sorted.
async fn tab_states(client: &mut CdpClient) -> Vec<String> {
    let mut states = Vec::new();
    for (target, _) in client.pages().await {
        let session = client.attach(&target).await;
        let state = client.eval(&session, TAB_STATE).await;
        states.push(state.as_str().unwrap().to_owned());
    }
    states.sort();
    states
}

/// As `tab_states`, of pages that may still be loading: a page whose document is replaced
/// under the question reads as its error.
async fn loading_tab_states(client: &mut CdpClient) -> Vec<String> {
    let mut states = Vec::new();
    for (target, _) in client.pages().await {
        let session = client.attach(&target).await;
        let params = json!({"expression": TAB_STATE, "returnByValue": true});
        let reply = client.send(Some(&session), "Runtime.evaluate", params).await;
        states.push(reply["result"]["result"]["value"].as_str().unwrap_or("-").to_owned());
    }
    states.sort();
    states
}

/// A source session logged in on `site` with two tabs, the second with its own
/// sessionStorage and scrolled; answers the session, its client and the page sessions.
async fn logged_in_source(server: &TestServer, site: SocketAddr, body: Value) -> (Value, CdpClient, Vec<String>) {
    let source = server.create(body).await;
    let mut client = CdpClient::connect(&source).await;
    let (_, first) = client.own_page().await;
    loaded(&mut client, &first, &format!("http://{site}/login")).await;
    loaded(&mut client, &first, &format!("http://{site}/page/a")).await;
    let second = client.open(&format!("http://{site}/page/b"), None).await.unwrap();
    client.eval(&second, "sessionStorage.setItem('tab', 'second')").await;
    loaded(&mut client, &second, &format!("http://{site}/page/b")).await;
    let scrolled = client.eval(&second, "(scrollTo(0, 1234), scrollY)").await;
    assert_eq!(scrolled, json!(1234));
    (source, client, vec![first, second])
}

/// Navigates the page of `session` to `url` and waits for the new document's load event.
async fn loaded(client: &mut CdpClient, session: &str, url: &str) {
    client.call(Some(session), "Page.enable", json!({})).await;
    client.events.clear();
    client.call(Some(session), "Page.navigate", json!({"url": url})).await;
    client
        .wait_event(|e| e["method"] == "Page.loadEventFired" && e["sessionId"] == session)
        .await;
}

/// How many sessions `key` has (`status` ones, or all).
async fn count(server: &TestServer, key: &str, status: Option<&str>) -> u64 {
    let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
    let r = server
        .call(Method::GET, &format!("/public/sessions{query}"), Some(key), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["total"].as_u64().unwrap()
}

/// Forks a logged-in session of `isolation` into three and checks each fork, the
/// isolation between them, and the source.
async fn forks_carry_the_login(isolation: &str, screen: Value) {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 5;
        c.context_spares = 1;
    })
    .await;
    let site = start_login_site().await;
    let body = json!({"isolation": isolation, "screen_config": screen});
    let (source, mut client, tabs) = logged_in_source(&server, site, body).await;
    let before = tab_states(&mut client).await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.iter().all(|s| s.contains("sid=s3cr3t; pref=dark")), "{before:?}");
    assert!(before.iter().any(|s| s.contains("tok-1|first")), "{before:?}");
    assert!(
        before
            .iter()
            .any(|s| s.contains("tok-1|second") && s.contains(",1234,")),
        "{before:?}"
    );

    // The source's client listens for new targets and its pages' navigations.
    client
        .call(None, "Target.setDiscoverTargets", json!({"discover": true}))
        .await;
    for tab in &tabs {
        client.call(Some(tab), "Page.enable", json!({})).await;
    }
    client.call(None, "Target.getTargets", json!({})).await;
    client.events.clear();

    let id = source["session_id"].as_str().unwrap();
    let r = fork(&server, KEY_A, id, json!({"count": 3, "metadata": {"branch": "x"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json["source_session_id"], json!(id));
    let carried = &r.json["carried"];
    assert_eq!(
        (
            &carried["cookies"],
            &carried["local_storage"],
            &carried["session_storage"]
        ),
        (&json!(2), &json!(2), &json!(2)),
        "{carried}"
    );
    assert_eq!(carried["tabs"].as_array().unwrap().len(), 2, "{carried}");
    let forks = r.json["sessions"].as_array().unwrap().clone();
    assert_eq!(forks.len(), 3);

    // Nothing new reached the source's client: no target, no navigation.
    client.call(None, "Target.getTargets", json!({})).await;
    let seen: Vec<&Value> = client
        .events
        .iter()
        .filter(|e| {
            let m = e["method"].as_str().unwrap_or("");
            m == "Target.targetCreated" || m.starts_with("Page.frame") || m == "Page.loadEventFired"
        })
        .collect();
    assert!(seen.is_empty(), "the source's client saw {seen:?}");

    let mut clients = Vec::new();
    for f in &forks {
        assert_ne!(f["session_id"], source["session_id"]);
        assert_eq!(f["status"], "active");
        assert_eq!(f["isolation"], isolation);
        assert_eq!(f["screen_config"], source["screen_config"]);
        assert_eq!(f["metadata"]["branch"], "x");
        let mut fc = CdpClient::connect(f).await;
        let states = tab_states(&mut fc).await;
        assert_eq!(states, before, "fork {}", f["session_id"]);
        clients.push(fc);
    }

    // A cookie and a localStorage item set in one fork are in no other, nor in the source.
    let (target, _) = clients[0].pages().await.into_iter().next().unwrap();
    let page = clients[0].attach(&target).await;
    clients[0]
        .eval(
            &page,
            "(document.cookie = 'forkonly=1; path=/', localStorage.setItem('forkonly', '1'))",
        )
        .await;
    let marked = "document.cookie.includes('forkonly') || localStorage.getItem('forkonly') !== null";
    assert_eq!(clients[0].eval(&page, marked).await, json!(true));
    for other in clients.iter_mut().skip(1) {
        for (target, _) in other.pages().await {
            let page = other.attach(&target).await;
            assert_eq!(other.eval(&page, marked).await, json!(false));
        }
    }
    assert_eq!(client.eval(&tabs[0], marked).await, json!(false));
    // The source is where it was.
    assert_eq!(tab_states(&mut client).await, before);
    server.stop().await;
}

/// `"wait_until": "start"` answers before the forks' pages have loaded (the site holds
/// them until the answer has come), and each fork still ends up logged in on the same
/// pages, its storage seen by the page's first script, scrolled as the source was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_that_does_not_wait_for_its_tabs_still_carries_the_login() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 4;
        c.context_spares = 1;
    })
    .await;
    let (hold, held) = tokio::sync::watch::channel(false);
    let site = start_login_site_held(held).await;
    let (source, mut client, _) = logged_in_source(&server, site, json!({"isolation": "context"})).await;
    let before = tab_states(&mut client).await;
    hold.send_replace(true);
    let id = source["session_id"].as_str().unwrap();
    let body = json!({"count": 2, "wait_until": "start"});
    let r = tokio::time::timeout(Duration::from_secs(30), fork(&server, KEY_A, id, body))
        .await
        .expect("the answer does not wait for the held pages");
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json["carried"]["tabs"].as_array().unwrap().len(), 2, "{}", r.body);
    hold.send_replace(false);
    for f in r.json["sessions"].as_array().unwrap() {
        let mut fc = CdpClient::connect(f).await;
        // The loads and scrolls finish in the background: wait (bounded) until they have.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut states = loading_tab_states(&mut fc).await;
        while states != before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            states = loading_tab_states(&mut fc).await;
        }
        assert_eq!(states, before, "fork {}", f["session_id"]);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_session_forks_into_three_logged_in_sessions() {
    forks_carry_the_login("process", json!({"width": 1000, "height": 700})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_session_forks_into_three_logged_in_sessions() {
    forks_carry_the_login("context", json!({"width": 1280, "height": 720})).await;
}

/// Past the key's quota a fork makes nothing; within it, it counts every fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_past_the_quota_makes_nothing() {
    let server = TestServer::start_with(|c| c.max_sessions_per_key = 3).await;
    let source = server.create(json!({"isolation": "context"})).await;
    let id = source["session_id"].as_str().unwrap();
    let r = fork(&server, KEY_A, id, json!({"count": 3})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("max_sessions_per_key"), "{}", r.body);
    assert_eq!(
        (count(&server, KEY_A, None).await, server.broker.active_sessions()),
        (1, 1)
    );
    let r = fork(&server, KEY_A, id, json!({"count": 2})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(count(&server, KEY_A, Some("active")).await, 3);
    let r = fork(&server, KEY_A, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(count(&server, KEY_A, None).await, 3);
    server.stop().await;
}

/// A fork that runs out of browsers halfway leaves none of its forks behind: not running,
/// not in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_that_fails_halfway_leaves_no_fork() {
    let server = TestServer::start_with(|c| c.max_sessions = 2).await;
    let site = start_login_site().await;
    let (source, _client, _) = logged_in_source(&server, site, json!({"isolation": "process"})).await;
    let id = source["session_id"].as_str().unwrap();
    let r = fork(&server, KEY_A, id, json!({"count": 3})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(
        (count(&server, KEY_A, None).await, server.broker.active_sessions()),
        (1, 1)
    );
    // The browser a fork took is free again: a fork of one now fits.
    let r = fork(&server, KEY_A, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(count(&server, KEY_A, Some("active")).await, 2);
    server.stop().await;
}

/// Another key's session is not found; an ended one or one fronting the user's own browser
/// cannot be forked; a bad count is refused; none of them makes a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_that_cannot_be_are_refused_and_make_nothing() {
    let server = TestServer::start_with(|c| {
        c.byo_allow = vec!["127.0.0.0/8".into()];
    })
    .await;
    let source = server.create(json!({"isolation": "context"})).await;
    let id = source["session_id"].as_str().unwrap();
    let r = fork(&server, KEY_B, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(count(&server, KEY_B, None).await, 0);
    for bad in [json!({"count": 0}), json!({"count": 17}), json!({"isolation": "vm"})] {
        let r = fork(&server, KEY_A, id, bad.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
    }
    let r = fork(&server, KEY_A, "sess_0123456789abcdef0123456789abcdef", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    let chrome = start_external_chrome().await;
    let byo = server.create(json!({"cdp_url": chrome.1})).await;
    let r = fork(&server, KEY_A, byo["session_id"].as_str().unwrap(), json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("cannot be forked"), "{}", r.body);

    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    let r = fork(&server, KEY_A, id, json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body.contains("only an active session can be forked"), "{}", r.body);
    assert_eq!(count(&server, KEY_A, None).await, 2);
    server.stop().await;
}

/// A Chromium the "user" runs on loopback (killed when dropped), and its DevTools URL.
async fn start_external_chrome() -> ((tokio::process::Child, tempfile::TempDir), String) {
    let dir = tempfile::tempdir().unwrap();
    let chrome = cdpgate::browser::find_chrome().expect("Chromium (scripts/setup.sh)");
    let mut child = tokio::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", dir.path().display()))
        .arg("about:blank")
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
    ((child, dir), ws_url)
}
