//! One context watch per shared browser, seen from a hostile tenant's side: two tenants'
//! context sessions in one shared Chrome download files and open tabs past their cap at the
//! same moment. Each session's files hold exactly its own downloads (by content hash), each
//! keeps at most its cap of tabs with the other's untouched, each event log names only its
//! own tabs and downloads; and the broker's DevTools connections to the shared browser do
//! not grow with its live context sessions. Real Chromium, raw CDP clients.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const CAP: usize = 2;

/// Each file's bytes: made from its name, so that whose they are shows in them.
fn bytes_of(name: &str) -> String {
    format!("{name}:").repeat(20_000)
}

fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// A site serving `/{name}.bin` as an attachment, and a page.
async fn start_downloads_site() -> String {
    let addr = serve_pages(
        |path| match path.strip_prefix('/').and_then(|p| p.strip_suffix(".bin")) {
            Some(name) => (
                format!("content-disposition: attachment; filename=\"{name}.bin\"\r\n"),
                bytes_of(name),
            ),
            None => (String::new(), "<title>page</title><p>a page</p>".to_owned()),
        },
    )
    .await;
    format!("http://{addr}")
}

/// Context sessions only, any tenant's in one shared Chrome, each held to `CAP` tabs.
async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.pool_size = 0;
        c.default_isolation = "context".into();
        c.context_browsers = 1;
        c.context_sharing = "any".into();
        c.max_contexts_per_browser = 8;
        c.max_targets_per_session = CAP;
    })
    .await
}

async fn create(server: &TestServer, key: &str) -> Value {
    let r = server
        .call(Method::POST, "/public/sessions", Some(key), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json
}

fn id(session: &Value) -> &str {
    session["session_id"].as_str().unwrap()
}

async fn files_of(server: &TestServer, key: &str, session: &str) -> Vec<Value> {
    let r = server
        .call(
            Method::GET,
            &format!("/public/sessions/{session}/files"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["files"].as_array().unwrap().clone()
}

async fn events_of(server: &TestServer, key: &str, session: &str) -> Vec<Value> {
    let r = server
        .call(
            Method::GET,
            &format!("/public/sessions/{session}/events?limit=1000"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["events"].as_array().unwrap().clone()
}

/// JavaScript that clicks a link to `/{name}.bin` (a download, as a person's click would
/// start it).
fn click(name: &str) -> String {
    format!(
        "(() => {{ const a = document.createElement('a'); a.href = '/{name}.bin'; document.body.append(a); a.click(); return 1; }})()"
    )
}

/// What one tenant does: downloads `names` (one per tab: its first and one more) and opens
/// `CAP + 2` more tabs, without waiting for any of it; answers every tab id it was given
/// (its first one first).
async fn burst(client: &mut CdpClient, site: &str, names: &[&str; 2]) -> Vec<String> {
    let (first, page) = client.own_page().await;
    let second = client.open(&format!("{site}/page"), None).await.expect("a second tab");
    let mut tabs = vec![first];
    tabs.push(
        client
            .pages()
            .await
            .into_iter()
            .map(|(t, _)| t)
            .find(|t| t != &tabs[0])
            .unwrap(),
    );
    client.load(&page, &format!("{site}/page")).await;
    client.eval(&page, &click(names[0])).await;
    client.eval(&second, &click(names[1])).await;
    for _ in 0..CAP + 2 {
        let created = client
            .send(None, "Target.createTarget", json!({"url": format!("{site}/page")}))
            .await;
        // A tab closed at once by the cap may be gone before it answers.
        if let Some(target) = created["result"]["targetId"].as_str() {
            tabs.push(target.to_owned());
        }
    }
    tabs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_downloading_and_opening_tabs_at_once_each_get_only_their_own() {
    let server = start().await;
    let site = start_downloads_site().await;
    let a = create(&server, KEY_A).await;
    let b = create(&server, KEY_B).await;
    let browsers = server.broker.shared().browsers();
    assert_eq!(browsers.len(), 1, "one shared Chrome");
    assert_eq!(browsers[0].watched_contexts, 2, "both registered with the one watch");

    let (mut client_a, mut client_b) = (CdpClient::connect(&a).await, CdpClient::connect(&b).await);
    let (a_names, b_names) = (["a-one", "a-two"], ["b-one", "b-two"]);
    let (tabs_a, tabs_b) = tokio::join!(
        burst(&mut client_a, &site, &a_names),
        burst(&mut client_b, &site, &b_names)
    );

    // Bytes: each session's files are exactly its own downloads.
    for (key, session, names) in [(KEY_A, &a, &a_names), (KEY_B, &b, &b_names)] {
        let want: HashSet<String> = names.iter().map(|n| format!("{n}.bin")).collect();
        let done = eventually_async(Duration::from_secs(30), || async {
            let files = files_of(&server, key, id(session)).await;
            files.iter().filter(|f| f["state"] == "complete").count() == names.len()
        })
        .await;
        let files = files_of(&server, key, id(session)).await;
        assert!(done, "{} never got its downloads: {files:?}", id(session));
        let got: HashSet<String> = files.iter().map(|f| f["name"].as_str().unwrap().to_owned()).collect();
        assert_eq!(got, want, "{}'s files", id(session));
        for name in names {
            let path = format!("/public/sessions/{}/files/{name}.bin", id(session));
            let r = server.call(Method::GET, &path, Some(key), None).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(
                digest(r.body.as_bytes()),
                digest(bytes_of(name).as_bytes()),
                "{name}.bin holds its own bytes"
            );
        }
    }

    // Counts: each holds its cap, its first tab among them; the other's are untouched.
    for (client, tabs, who) in [(&mut client_a, &tabs_a, "a"), (&mut client_b, &tabs_b, "b")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut open: Vec<String>;
        let capped = loop {
            open = client.pages().await.into_iter().map(|(t, _)| t).collect();
            if open.len() == CAP || tokio::time::Instant::now() > deadline {
                break open.len() == CAP;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(capped, "{who} keeps {CAP} tabs, has {open:?}");
        assert!(open.contains(&tabs[0]), "{who}'s first tab was left open: {open:?}");
        assert!(
            open.iter().all(|t| tabs.contains(t)),
            "{who}'s tabs are its own: {open:?}"
        );
    }

    // Events: each log names only its own tabs and downloads.
    for (key, session, tabs, names, others) in [
        (KEY_A, &a, &tabs_a, &a_names, &tabs_b),
        (KEY_B, &b, &tabs_b, &b_names, &tabs_a),
    ] {
        let events = events_of(&server, key, id(session)).await;
        let log = serde_json::to_string(&events).unwrap();
        let named: Vec<&str> = events.iter().filter_map(|e| e["data"]["target_id"].as_str()).collect();
        assert!(!named.is_empty(), "{log}");
        for target in &named {
            assert!(
                tabs.contains(&(*target).to_owned()),
                "{} heard of {target}: {log}",
                id(session)
            );
            assert!(!others.contains(&(*target).to_owned()), "{log}");
        }
        let downloads: HashSet<&str> = events
            .iter()
            .filter(|e| e["type"] == "download_started")
            .filter_map(|e| e["data"]["suggested_filename"].as_str())
            .collect();
        let want: HashSet<String> = names.iter().map(|n| format!("{n}.bin")).collect();
        assert_eq!(
            downloads,
            want.iter().map(String::as_str).collect(),
            "{}'s downloads: {log}",
            id(session)
        );
    }
    let closed = server.broker.metrics().targets_closed.get();
    assert_eq!(closed, 8, "each had the 4 tabs it opened past its cap closed");
    server.stop().await;
}

/// The broker's established TCP connections to `port` on loopback (its own sockets).
fn connections_to(port: u16) -> usize {
    let own: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 01: established; field 9 is the socket's inode.
            fields[3] == "01" && remote_port == Some(port) && own.contains(fields[9])
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_holds_as_many_connections_to_a_shared_browser_whatever_its_live_contexts() {
    let server = start().await;
    let first = create(&server, KEY_A).await;
    let browser = server.broker.shared().browsers()[0].clone();
    let watched = |server: &TestServer| -> usize {
        server
            .broker
            .shared()
            .browsers()
            .iter()
            .map(|b| b.watched_contexts)
            .sum()
    };
    // Once the create's own short-lived connections have closed.
    let settle =
        |want: usize| async move { eventually(Duration::from_secs(10), || connections_to(browser.port) == want).await };
    let one = connections_to(browser.port);
    assert!(settle(one).await);
    let mut sessions = vec![(KEY_A, first)];
    for key in [KEY_A, KEY_B, KEY_B] {
        sessions.push((key, create(&server, key).await));
    }
    assert_eq!(server.broker.shared().browsers().len(), 1, "one shared Chrome");
    assert_eq!(watched(&server), 4);
    assert!(
        settle(one).await,
        "connections with 1 live context: {one}; with 4: {}",
        connections_to(browser.port)
    );
    for (key, session) in &sessions {
        let path = format!("/public/sessions/{}/terminate", id(session));
        let r = server.call(Method::POST, &path, Some(key), None).await;
        assert!(r.status.is_success(), "{}", r.body);
    }
    assert!(
        eventually(Duration::from_secs(10), || watched(&server) == 0).await,
        "no context left registered: {}",
        watched(&server)
    );
    server.stop().await;
}
