//! The newest features (fork, one-call renders, extensions, named pools) attacked from a
//! hostile tenant's side, through the real broker and real Chromium: each test asserts on
//! what leaked or changed (bytes, keys, counts, files), not only on a status.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A site on loopback whose every page is a plain document.
async fn plain_site() -> SocketAddr {
    serve_pages(|_| (String::new(), "<html><body><p>plain</p></body></html>".into())).await
}

/// How many sessions `key` has listed, of any status.
async fn listed(server: &TestServer, key: &str) -> u64 {
    let r = server.call(Method::GET, "/public/sessions", Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["total"].as_u64().unwrap()
}

/// A source page rewrites `JSON`, `Object.entries` and `Storage` in its own world so that a
/// fork would carry storage it never had; and keeps keys that shadow `Storage`'s own
/// properties (`__proto__`, `length`, `getItem`), which `Object.entries` never lists. The
/// fork carries the page's real storage, every key, and nothing forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cannot_forge_or_hide_what_a_fork_carries() {
    let server = TestServer::start().await;
    let site = plain_site().await;
    let source = server.create(json!({"isolation": "context"})).await;
    let id = source["session_id"].as_str().unwrap();
    let mut client = CdpClient::connect(&source).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/p")).await;
    let planted = client
        .eval(
            &page,
            r#"(() => {
              localStorage.setItem('real', 'r"1</script>');
              localStorage.setItem('__proto__', 'p');
              localStorage.setItem('length', 'l');
              localStorage.setItem('getItem', 'g');
              sessionStorage.setItem('tab', 't1');
              const forged = '{"x":0,"y":0,"local":[["forged","yes"]],"session":[["forged","yes"]]}';
              JSON.stringify = () => forged;
              Object.entries = () => [['forged', 'yes']];
              Storage.prototype.key = () => 'forged';
              Storage.prototype.getItem = () => 'yes';
              return localStorage.length;
            })()"#,
        )
        .await;
    assert_eq!(planted, json!(4));
    let r = fork(&server, KEY_A, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json["carried"]["local_storage"], 1, "{}", r.body);
    let forked = &r.json["sessions"][0];
    let mut fork_client = CdpClient::connect(forked).await;
    let (_, fork_page) = fork_client.own_page().await;
    let seen = fork_client
        .eval(
            &fork_page,
            "JSON.stringify([location.pathname, \
             Array.from({length: localStorage.length}, (_, i) => localStorage.key(i)).sort(), \
             localStorage.getItem('real'), localStorage.getItem('__proto__'), \
             localStorage.getItem('length'), localStorage.getItem('getItem'), \
             localStorage.getItem('forged'), sessionStorage.getItem('tab'), sessionStorage.getItem('forged')])",
        )
        .await;
    let seen: Value = serde_json::from_str(seen.as_str().unwrap()).unwrap();
    assert_eq!(
        seen,
        json!([
            "/p",
            ["__proto__", "getItem", "length", "real"],
            "r\"1</script>",
            "p",
            "l",
            "g",
            null,
            "t1",
            null
        ]),
        "the fork carries the page's real storage, every key, nothing forged"
    );
    server.stop().await;
}

/// A source whose tabs hold more storage than a fork may carry (the same origin's
/// localStorage read once per tab) is refused with a clear error and makes nothing; the
/// same storage in one tab is carried whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_of_a_source_with_too_much_storage_makes_nothing() {
    let server = TestServer::start().await;
    let site = plain_site().await;
    let source = server.create(json!({"isolation": "context"})).await;
    let id = source["session_id"].as_str().unwrap();
    let mut client = CdpClient::connect(&source).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/a")).await;
    // Most of what Chrome lets one origin keep (10 MiB, two bytes a character).
    let big = 2_000_000;
    let kept = client
        .eval(
            &page,
            &format!("(localStorage.setItem('big', 'x'.repeat({big})), localStorage.getItem('big').length)"),
        )
        .await;
    assert_eq!(kept, json!(big));
    let r = fork(&server, KEY_A, id, json!({"count": 1})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut fork_client = CdpClient::connect(&r.json["sessions"][0]).await;
    let (_, fork_page) = fork_client.own_page().await;
    let carried = fork_client
        .eval(&fork_page, "(localStorage.getItem('big') || '').length")
        .await;
    assert_eq!(carried, json!(big), "the storage is carried whole");
    assert_eq!(
        server
            .call(
                Method::DELETE,
                &format!(
                    "/public/sessions/{}",
                    r.json["sessions"][0]["session_id"].as_str().unwrap()
                ),
                Some(KEY_A),
                None
            )
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // Four more tabs of the same origin: the same storage five times, past what a fork
    // carries.
    for tab in ["b", "c", "d", "e"] {
        let opened = client.open(&format!("http://{site}/{tab}"), None).await.unwrap();
        assert_eq!(client.eval(&opened, "localStorage.length").await, json!(1));
    }
    let (sessions, active) = (listed(&server, KEY_A).await, server.broker.active_sessions());
    let r = fork(&server, KEY_A, id, json!({"count": 4})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("characters of localStorage"),
        "{}",
        r.body
    );
    assert_eq!(
        (listed(&server, KEY_A).await, server.broker.active_sessions()),
        (sessions, active),
        "a refused fork makes nothing"
    );
    assert!(
        eventually(Duration::from_secs(10), || server.broker.active_sessions() == active).await,
        "no fork is left running"
    );
    server.stop().await;
}

/// A render's record is its key's alone: another key can neither read, list, end, delete
/// nor reach the files of it, and after every try it is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renders_record_is_its_keys_alone() {
    let server = TestServer::start_with(|c| c.context_browsers = 1).await;
    let (status, headers, _) = render_as(&server, KEY_A, "content", json!({"html": "<p>mine</p>"})).await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-session-id"].to_str().unwrap().to_owned();
    let path = format!("/public/sessions/{id}");
    let before = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    let tries = [
        (Method::GET, path.clone()),
        (Method::DELETE, path.clone()),
        (Method::PATCH, path.clone()),
        (Method::POST, format!("{path}/terminate")),
        (Method::POST, format!("{path}/fork")),
        (Method::GET, format!("{path}/files")),
        (Method::POST, format!("{path}/files")),
        (Method::GET, format!("{path}/files.zip")),
        (Method::GET, format!("{path}/files/x.txt")),
        (Method::GET, format!("{path}/recording")),
        (Method::GET, format!("{path}/events")),
        (Method::GET, format!("{path}/logs")),
        (Method::GET, format!("{path}/har")),
    ];
    for (method, at) in tries {
        let r = server
            .call(method.clone(), &at, Some(KEY_B), Some("{\"ttl\": 60}"))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {at}: {}", r.body);
        assert!(!r.body.contains("mine"), "{method} {at}: {}", r.body);
    }
    let theirs = server.call(Method::GET, "/public/sessions", Some(KEY_B), None).await;
    assert!(!theirs.body.contains(&id), "{}", theirs.body);
    let after = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(after.json, before.json, "the record is as it was");
    assert!(
        !server.data_dir.path().join("files").join(&id).exists(),
        "no files directory was made for it"
    );
    server.stop().await;
}

/// Pages that open a flood of windows and then block on a dialog, that hold a
/// `beforeunload` prompt, or that try to reach the broker's disk: each render ends within
/// its limits, reads no file, and leaves no context, tab or active record behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_in_a_render_read_no_file_and_leave_nothing() {
    let server = TestServer::start_with(|c| {
        c.context_browsers = 1;
        c.max_contexts_per_browser = 4;
        // Chrome's holdings are compared before and after: spares stay at their number.
        c.context_spares_burst = 0;
    })
    .await;
    let (status, _, _) = render_as(&server, KEY_A, "content", json!({"html": "<p>first</p>"})).await;
    assert_eq!(status, StatusCode::OK);
    let baseline = settled_holdings(&server).await;
    let flood = "<script>onbeforeunload = e => { e.preventDefault(); return 'stay'; };\
                 for (let i = 0; i < 100; i++) window.open('about:blank#' + i); alert('stuck');</script>";
    let (status, _, body) = render_as(&server, KEY_A, "content", json!({"html": flood, "timeout_ms": 3000})).await;
    assert!(
        status == StatusCode::GATEWAY_TIMEOUT || status == StatusCode::OK,
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    nothing_left(&server, KEY_A, baseline, "a window flood and a dialog").await;

    let reach = "<body><pre id=out>start</pre><script>\
                 fetch('file:///etc/passwd').then(r => r.text()).then(t => out.textContent = t, \
                 () => out.textContent += ' fetch-refused');\
                 try { const x = new XMLHttpRequest(); x.open('GET', 'file:///etc/passwd', false); x.send(); \
                 out.textContent += x.responseText } catch (e) { out.textContent += ' xhr-refused' }\
                 setTimeout(() => { location.href = 'file:///etc/passwd' }, 50);</script></body>";
    let (status, headers, body) = render_as(
        &server,
        KEY_A,
        "content",
        json!({"html": reach, "wait_until": {"delay_ms": 500}}),
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!text.contains("root:"), "a file of the broker's disk was read: {text}");
    assert!(text.contains("xhr-refused") && text.contains("fetch-refused"), "{text}");
    assert!(
        !headers["x-page-url"].to_str().unwrap().starts_with("file:"),
        "{:?}",
        headers["x-page-url"]
    );
    for url in ["view-source:file:///etc/passwd", "data:text/html,<p>x", "about:blank"] {
        let (status, _, body) = render_as(&server, KEY_A, "content", json!({"url": url})).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{url}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    nothing_left(&server, KEY_A, baseline, "pages reaching for files").await;
    server.stop().await;
}

/// A site whose `/hold` pages are answered only once `release` says so, counting how many
/// are held at once (now, and at most).
async fn holding_site(release: tokio::sync::watch::Receiver<bool>) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, p) = (held.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (held, peak, mut release) = (h.clone(), p.clone(), release.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                if head.split_whitespace().nth(1).is_some_and(|t| t.contains("/hold")) {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let _ = release.wait_for(|r| *r).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                }
                let body = "<p>held</p>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, held, peak)
}

/// Ten renders at once with a quota of two: two run (their pages held by the site), eight
/// are refused at once and make nothing; never more than two pages at the same time; once
/// released, the two answer and the key's places are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renders_stay_within_the_keys_quota() {
    let server = Arc::new(
        TestServer::start_with(|c| {
            c.max_sessions_per_key = 2;
            c.context_browsers = 1;
            c.max_contexts_per_browser = 4;
            // A loaded machine may take a while to make a context: a wait is no refusal.
            c.queue_timeout_ms = 30_000;
        })
        .await,
    );
    // The shared browser runs before the rush.
    let (status, _, _) = render_as(&server, KEY_A, "content", json!({"html": "<p>warm</p>"})).await;
    assert_eq!(status, StatusCode::OK);
    let (release, released) = tokio::sync::watch::channel(false);
    let (site, held, peak) = holding_site(released).await;
    let refused_before = server.broker.metrics().create_quota_refused.get();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                render_as(
                    &server,
                    KEY_A,
                    "content",
                    json!({"url": format!("http://{site}/hold?{i}"), "timeout_ms": 60_000}),
                )
                .await
                .0
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || {
            server.broker.metrics().create_quota_refused.get() - refused_before == 8 && held.load(Ordering::SeqCst) == 2
        })
        .await,
        "{} refused, {} held, {} contexts",
        server.broker.metrics().create_quota_refused.get() - refused_before,
        held.load(Ordering::SeqCst),
        context_sessions(&server)
    );
    assert_eq!(
        context_sessions(&server),
        2,
        "only the two placed renders hold a context"
    );
    release.send(true).unwrap();
    let mut answered = Vec::new();
    for call in calls {
        answered.push(call.await.unwrap());
    }
    let ok = answered.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = answered.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((ok, refused), (2, 8), "{answered:?}");
    assert_eq!(peak.load(Ordering::SeqCst), 2, "never more than two pages at once");
    assert!(eventually(Duration::from_secs(10), || context_sessions(&server) == 0).await);
    let (status, _, _) = render_as(&server, KEY_A, "content", json!({"html": "<p>again</p>"})).await;
    assert_eq!(status, StatusCode::OK, "the places are free again");
    let listed = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(
        listed.json["total"], 4,
        "only the renders that ran are listed: {}",
        listed.body
    );
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
}

/// Forks of a session on a profile that saves its changes get no profile: what they do is
/// never written into it (its files hash the same after the forks ended), while the
/// source's own end still saves it; a later session on the profile finds the source's
/// storage and none of the forks'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_of_a_profile_session_never_writes_the_profile() {
    let server = TestServer::start_with(|c| c.max_sessions = 4).await;
    let site = plain_site().await;
    let made = server
        .call(
            Method::POST,
            "/public/browser-profiles",
            Some(KEY_A),
            Some(&json!({"name": "login"}).to_string()),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let profile = made.json["id"].as_str().unwrap().to_owned();
    let source = server
        .create(json!({"profile_id": profile, "persist_changes": true}))
        .await;
    let id = source["session_id"].as_str().unwrap().to_owned();
    let mut client = CdpClient::connect(&source).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{site}/p")).await;
    client.eval(&page, "localStorage.setItem('source', 's1')").await;
    let before = profile_digest(server.data_dir.path(), &profile);

    let r = fork(&server, KEY_A, &id, json!({"count": 2})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for forked in r.json["sessions"].as_array().unwrap() {
        assert!(forked["profile_id"].is_null(), "{forked}");
        let mut fork_client = CdpClient::connect(forked).await;
        let (_, fork_page) = fork_client.own_page().await;
        let carried = fork_client
            .eval(
                &fork_page,
                "(localStorage.setItem('forkonly', '1'), localStorage.getItem('source'))",
            )
            .await;
        assert_eq!(carried, json!("s1"));
        let fork_id = forked["session_id"].as_str().unwrap();
        assert_eq!(server.terminate(fork_id).await.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(
        profile_digest(server.data_dir.path(), &profile),
        before,
        "the forks wrote the profile"
    );

    drop(client);
    assert_eq!(server.terminate(&id).await.status, StatusCode::NO_CONTENT);
    let ended = server.get(&id).await;
    assert_eq!(ended.json["profile_saved"], "saved", "{}", ended.body);
    assert_ne!(
        profile_digest(server.data_dir.path(), &profile),
        before,
        "the source's end saves the profile"
    );
    let later = server.create(json!({"profile_id": profile})).await;
    let mut later_client = CdpClient::connect(&later).await;
    let (_, later_page) = later_client.own_page().await;
    later_client.load(&later_page, &format!("http://{site}/p")).await;
    let seen = later_client
        .eval(
            &later_page,
            "JSON.stringify([localStorage.getItem('source'), localStorage.getItem('forkonly')])",
        )
        .await;
    assert_eq!(
        seen,
        json!("[\"s1\",null]"),
        "the profile holds the source's storage only"
    );
    server.stop().await;
}
