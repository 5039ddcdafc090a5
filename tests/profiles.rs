//! Browser profiles: logins that survive from one session to the next, saved safely.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// Reads the page's cookies, localStorage and IndexedDB record into `window.__state`.
const READ_STATE: &str = r#"
function done(extra) {
  const req = indexedDB.open('app', 1);
  req.onupgradeneeded = () => req.result.createObjectStore('kv');
  req.onsuccess = () => {
    const get = req.result.transaction('kv').objectStore('kv').get('token');
    get.onsuccess = () => { window.__state = Object.assign({
      cookies: document.cookie.split('; ').filter(Boolean).sort(),
      local: localStorage.getItem('user'),
      idb: get.result === undefined ? null : get.result,
    }, extra || {}); };
  };
}
"#;

/// A site on loopback: `/login` sets a session cookie and a persistent one and writes
/// localStorage and IndexedDB; `/mutate` changes all four; `/check` only reads.
async fn start_app() -> SocketAddr {
    serve_pages(|path| {
        let (cookies, script) = match path {
            "/login" => (
                "set-cookie: sid=s3cr3t; Path=/\r\nset-cookie: remember=yes; Path=/; Max-Age=86400\r\n",
                "localStorage.setItem('user', 'alice');
                 const r = indexedDB.open('app', 1);
                 r.onupgradeneeded = () => r.result.createObjectStore('kv');
                 r.onsuccess = () => { const tx = r.result.transaction('kv', 'readwrite');
                   tx.objectStore('kv').put('t0k3n', 'token'); tx.oncomplete = () => done(); };",
            ),
            "/mutate" => (
                "set-cookie: sid=changed; Path=/\r\nset-cookie: remember=no; Path=/; Max-Age=86400\r\n",
                "localStorage.setItem('user', 'mallory');
                 const r = indexedDB.open('app', 1);
                 r.onupgradeneeded = () => r.result.createObjectStore('kv');
                 r.onsuccess = () => { const tx = r.result.transaction('kv', 'readwrite');
                   tx.objectStore('kv').put('changed', 'token'); tx.oncomplete = () => done(); };",
            ),
            _ => ("", "done();"),
        };
        let page = format!("<html><body><script>{READ_STATE}\n{script}</script></body></html>");
        (cookies.to_owned(), page)
    })
    .await
}

async fn create_profile(server: &TestServer, key: &str, name: &str) -> Response {
    let body = json!({ "name": name }).to_string();
    server
        .call(Method::POST, "/public/browser-profiles", Some(key), Some(&body))
        .await
}

async fn visit(session: &Value, app: SocketAddr, path: &str) -> Value {
    let cdp_url = session["cdp_url"].as_str().unwrap();
    node("page_state.mjs", &[cdp_url, &format!("http://{app}{path}")]).await
}

fn logged_in() -> Value {
    json!({"cookies": ["remember=yes", "sid=s3cr3t"], "local": "alice", "idb": "t0k3n"})
}

fn blank() -> Value {
    json!({"cookies": [], "local": null, "idb": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_survive_terminate_and_ttl_expiry() {
    let server = TestServer::start().await;
    let app = start_app().await;
    for ending in ["terminate", "ttl"] {
        let profile = create_profile(&server, KEY_A, &format!("login via {ending}")).await;
        assert_eq!(profile.status, StatusCode::CREATED, "{}", profile.body);
        let profile_id = profile.json["id"].as_str().unwrap().to_owned();

        // Long enough for the two visits on a loaded machine (each a Node client), short
        // enough to wait for.
        let ttl = if ending == "ttl" { 20 } else { 600 };
        let first = server.create(json!({"profile_id": profile_id, "ttl": ttl})).await;
        assert_eq!(first["profile_id"], profile_id.as_str());
        assert_eq!(first["persist_changes"], true);
        assert_eq!(visit(&first, app, "/check").await, blank(), "a new profile is empty");
        assert_eq!(visit(&first, app, "/login").await, logged_in());
        let id = first["session_id"].as_str().unwrap();
        if ending == "terminate" {
            assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
        } else {
            let s = server.broker.running_session(None, id).expect("running");
            let saved = eventually(Duration::from_secs(45), || {
                s.status() == cdpgate::store::Status::Expired && s.profile_released().is_cancelled()
            })
            .await;
            assert!(saved, "the session expired and its profile was saved");
        }
        let record = server.get(id).await.json;
        assert_eq!(record["profile_saved"], "saved", "{record}");

        let second = server.create(json!({"profile_id": profile_id})).await;
        assert_eq!(visit(&second, app, "/check").await, logged_in(), "after {ending}");
        server.terminate(second["session_id"].as_str().unwrap()).await;
    }
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("cdpgate_profile_saves_total 4"), "{metrics}");
    assert!(metrics.contains("cdpgate_profile_save_failures_total 0"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_session_leaves_the_profile_as_it_was() {
    let server = TestServer::start().await;
    let app = start_app().await;
    let profile_id = create_profile(&server, KEY_A, "shared").await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let writer = server.create(json!({"profile_id": profile_id})).await;
    visit(&writer, app, "/login").await;
    server.terminate(writer["session_id"].as_str().unwrap()).await;

    // Two readers at once; one of them changes everything.
    let reader = server
        .create(json!({"profile_id": profile_id, "persist_changes": false}))
        .await;
    let other = server
        .create(json!({"profile_id": profile_id, "persist_changes": false}))
        .await;
    assert_eq!(reader["persist_changes"], false);
    assert_eq!(visit(&reader, app, "/check").await, logged_in());
    let changed = visit(&reader, app, "/mutate").await;
    assert_eq!(changed["local"], "mallory");
    server.terminate(reader["session_id"].as_str().unwrap()).await;
    server.terminate(other["session_id"].as_str().unwrap()).await;

    let next = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(
        visit(&next, app, "/check").await,
        logged_in(),
        "the read-only changes were not kept"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_rules_and_errors() {
    let server = TestServer::start().await;
    let r = create_profile(&server, KEY_A, "work").await;
    assert_eq!(r.status, StatusCode::CREATED);
    for field in ["id", "name", "created_at"] {
        assert!(r.json[field].is_string(), "{field}");
    }
    let id = r.json["id"].as_str().unwrap().to_owned();

    // Names, providers, duplicates.
    for (body, status) in [
        (json!({"name": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "   "}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "x".repeat(201)}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": 5}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"name": "ok", "provider": "hyperbrowser"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"name": "work"}), StatusCode::CONFLICT),
    ] {
        let r = server
            .call(
                Method::POST,
                "/public/browser-profiles",
                Some(KEY_A),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.json["detail"].is_string());
    }
    let r = create_profile(&server, KEY_B, "work").await;
    assert_eq!(r.status, StatusCode::CREATED, "names are per tenant");
    let r = server
        .call(
            Method::POST,
            "/public/browser-profiles",
            Some(KEY_A),
            Some(r#"{"name":"p2","provider":"local"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Another tenant's profile is unknown, everywhere.
    let path = format!("/public/browser-profiles/{id}");
    assert_eq!(
        server.call(Method::GET, &path, Some(KEY_B), None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.call(Method::DELETE, &path, Some(KEY_B), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_B),
            Some(&json!({"profile_id": id}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.json["detail"].as_str()),
        (StatusCode::NOT_FOUND, Some("Browser profile not found"))
    );

    // One persisting session at a time; readers alongside; no delete while in use.
    let holder = server.create(json!({"profile_id": id})).await;
    let holder_id = holder["session_id"].as_str().unwrap();
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(&json!({"profile_id": id}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.json["detail"].as_str().unwrap().contains(holder_id),
        "names the holder: {}",
        r.body
    );
    let reader = server.create(json!({"profile_id": id, "persist_changes": false})).await;
    let r = server.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    server.terminate(holder_id).await;
    server.terminate(reader["session_id"].as_str().unwrap()).await;

    let list = server
        .call(Method::GET, "/public/browser-profiles", Some(KEY_A), None)
        .await
        .json;
    assert_eq!(list["profiles"].as_array().unwrap().len(), 2);
    assert_eq!(
        server.call(Method::DELETE, &path, Some(KEY_A), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.call(Method::GET, &path, Some(KEY_A), None).await.status,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dari_client_creates_and_lists_profiles() {
    let server = TestServer::start().await;
    let script = "import json, sys\nfrom dari import Dari\n\
                  c = Dari(api_key=sys.argv[2], base_url=sys.argv[1])\n\
                  p = c.create_browser_profile(name='from dari')\n\
                  print(json.dumps({'created': p, 'listed': c.list_browser_profiles()}))";
    let output = finished(tokio::process::Command::new(python()).args(["-c", script, &server.url(""), KEY_A])).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["created"]["name"], "from dari");
    assert_eq!(report["listed"]["profiles"][0]["id"], report["created"]["id"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_close_saves_and_a_crash_keeps_the_last_good_state() {
    let server = TestServer::start().await;
    let app = start_app().await;
    let profile_id = create_profile(&server, KEY_A, "endings").await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A client closes the browser: Chrome shuts down cleanly and its stores are saved
    // (cookies without expiry live only in Chrome's memory, so they cannot be).
    let first = server.create(json!({"profile_id": profile_id})).await;
    visit(&first, app, "/login").await;
    let mut ws = ws_connect(first["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut ws, 1, "Browser.close", json!({})).await;
    let id = first["session_id"].as_str().unwrap().to_owned();
    let session = server.broker.running_session(None, &id).expect("running");
    assert!(eventually(Duration::from_secs(20), || session.profile_released().is_cancelled()).await);
    let record = server.get(&id).await.json;
    assert_eq!(
        (record["status"].as_str(), record["profile_saved"].as_str()),
        (Some("terminated"), Some("saved"))
    );
    let second = server.create(json!({"profile_id": profile_id})).await;
    let state = visit(&second, app, "/check").await;
    assert_eq!(
        state,
        json!({"cookies": ["remember=yes"], "local": "alice", "idb": "t0k3n"}),
        "the persistent state is there"
    );

    // The browser crashes: nothing is saved and the record says why.
    visit(&second, app, "/mutate").await;
    let mut ws = ws_connect(second["cdp_url"].as_str().unwrap()).await.unwrap();
    crash_browser(&mut ws).await;
    let id = second["session_id"].as_str().unwrap().to_owned();
    let session = server.broker.running_session(None, &id).expect("running");
    assert!(eventually(Duration::from_secs(20), || session.profile_released().is_cancelled()).await);
    let record = server.get(&id).await.json;
    assert_eq!(record["profile_saved"], "not saved: the browser crashed", "{record}");
    let third = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(
        visit(&third, app, "/check").await["local"],
        "alice",
        "the last good state"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_saves_persisting_sessions() {
    let data_dir = tempfile::tempdir().unwrap();
    let app = start_app().await;
    let server = TestServer::start_with(|c| c.data_dir = data_dir.path().to_owned()).await;
    let profile_id = create_profile(&server, KEY_A, "shutdown").await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = server.create(json!({"profile_id": profile_id})).await;
    visit(&session, app, "/login").await;
    let kept = server.stop().await;
    drop(kept);

    let server = TestServer::start_with(|c| c.data_dir = data_dir.path().to_owned()).await;
    let again = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(
        visit(&again, app, "/check").await,
        logged_in(),
        "saved at shutdown, loaded after restart"
    );
    server.stop().await;
}

fn mutated() -> Value {
    json!({"cookies": ["remember=no", "sid=changed"], "local": "mallory", "idb": "changed"})
}

/// Where in a save the broker is killed: while the new generation is being written aside,
/// or once the `current` link names it. (Every state in between is checked on disk by the
/// unit test `store::profiles::tests::every_state_a_killed_save_leaves_loads_as_one_whole_generation`.)
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Copy,
    AfterSwap,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_save_leaves_one_whole_generation() {
    let app = start_app().await;
    for moment in [KillAt::Copy, KillAt::AfterSwap] {
        killed_mid_save(app, moment).await;
    }
}

async fn killed_mid_save(app: SocketAddr, moment: KillAt) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut broker = start_binary(data_dir.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    let call = |addr, method, path: String, body: Option<String>| async move {
        http(addr, method, &path, Some(KEY_A), body.as_deref()).await
    };
    let profile = call(
        broker.addr,
        Method::POST,
        "/public/browser-profiles".into(),
        Some(json!({"name": "fragile"}).to_string()),
    )
    .await;
    let profile_id = profile.json["id"].as_str().unwrap().to_owned();
    let body = json!({"profile_id": profile_id}).to_string();
    let create = |addr| call(addr, Method::POST, "/public/sessions".into(), Some(body.clone()));
    let terminate = |addr, session: &Value| {
        let path = format!("/public/sessions/{}/terminate", session["session_id"].as_str().unwrap());
        call(addr, Method::POST, path, None)
    };

    // Known content first: a login, saved.
    let first = create(broker.addr).await.json;
    visit(&first, app, "/login").await;
    assert_eq!(terminate(broker.addr, &first).await.status, StatusCode::NO_CONTENT);

    // Then a session changes everything, with ballast that makes its save take a while.
    let second = create(broker.addr).await.json;
    visit(&second, app, "/mutate").await;
    for dir in std::fs::read_dir(data_dir.path().join("browsers")).unwrap().flatten() {
        std::fs::write(dir.path().join("ballast.bin"), vec![7u8; 200 << 20]).unwrap();
    }
    let profile_dir = data_dir.path().join("profiles").join(&profile_id);
    let current = || std::fs::read_link(profile_dir.join("current")).ok();
    let before = current().expect("a current generation");
    let writing_aside = || {
        std::fs::read_dir(&profile_dir).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("gen-") && name.ends_with(".tmp")
            })
        })
    };
    let saving = tokio::spawn(terminate(broker.addr, &second));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reached = match moment {
            KillAt::Copy => writing_aside(),
            KillAt::AfterSwap => current().is_some_and(|c| c != before),
        };
        if reached {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the save never reached {moment:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    signal(&broker.child, libc::SIGKILL);
    broker.child.wait().await.unwrap();
    saving.abort();

    let mut again = start_binary(data_dir.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    let session = create(again.addr).await;
    assert_eq!(
        session.status,
        StatusCode::CREATED,
        "the profile loads: {}",
        session.body
    );
    let expected = match moment {
        KillAt::Copy => logged_in(),
        KillAt::AfterSwap => mutated(),
    };
    assert_eq!(
        visit(&session.json, app, "/check").await,
        expected,
        "killed at {moment:?}: one generation, whole"
    );
    let mut left: Vec<String> = std::fs::read_dir(&profile_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-") || n.ends_with(".tmp"))
        .collect();
    left.sort();
    assert_eq!(
        left.len(),
        1,
        "killed at {moment:?}: one generation left, nothing half-written: {left:?}"
    );
    signal(&again.child, libc::SIGTERM);
    again.child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_state_moves_logins_out_and_in() {
    let server = TestServer::start().await;
    let app = start_app().await;
    let source = create_profile(&server, KEY_A, "source").await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = server.create(json!({"profile_id": source})).await;
    visit(&session, app, "/login").await;
    server.terminate(session["session_id"].as_str().unwrap()).await;

    let path = format!("/public/browser-profiles/{source}/storage-state");
    let exported = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(exported.status, StatusCode::OK, "{}", exported.body);
    let state = exported.json;
    let mut names: Vec<&str> = state["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["remember", "sid"]);
    let sid = state["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sid")
        .unwrap();
    assert_eq!(sid["expires"], -1, "a session cookie");
    let origin = format!("http://{app}");
    assert_eq!(
        state["origins"],
        json!([{"origin": origin, "localStorage": [{"name": "user", "value": "alice"}]}]),
        "{state}"
    );

    // Into a new profile, in its creation.
    let body = json!({"name": "imported", "storage_state": state}).to_string();
    let created = server
        .call(Method::POST, "/public/browser-profiles", Some(KEY_A), Some(&body))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let imported = created.json["id"].as_str().unwrap().to_owned();
    let session = server.create(json!({"profile_id": imported})).await;
    let seen = visit(&session, app, "/check").await;
    assert_eq!(seen["cookies"], json!(["remember=yes", "sid=s3cr3t"]));
    assert_eq!(seen["local"], "alice");
    server.terminate(session["session_id"].as_str().unwrap()).await;

    // http:// and https:// of a host under a public suffix are two origins: Chrome would
    // upgrade the http:// page to https:// (HTTPS Upgrades) and write one origin's
    // storage into the other (seen: an import that never finished).
    let path = format!("/public/browser-profiles/{imported}/storage-state");
    let two = json!({"cookies": [], "origins": [
        {"origin": "HTTP://Shop.Example.COM", "localStorage": [{"name": "k", "value": "plain"}]},
        {"origin": "https://shop.example.com", "localStorage": [{"name": "k", "value": "tls"}]},
    ]});
    let r = server
        .call(Method::POST, &path, Some(KEY_A), Some(&two.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let back = server.call(Method::GET, &path, Some(KEY_A), None).await.json;
    let value_at = |origin: &str| {
        back["origins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["origin"] == origin)
            .map(|o| o["localStorage"].clone())
    };
    assert_eq!(
        value_at("http://shop.example.com"),
        Some(json!([{"name": "k", "value": "plain"}])),
        "{back}"
    );
    assert_eq!(
        value_at("https://shop.example.com"),
        Some(json!([{"name": "k", "value": "tls"}])),
        "{back}"
    );

    // Bad documents change nothing.
    for bad in [
        json!({"cookies": "x"}),
        json!({"origins": [{"origin": "not an origin", "localStorage": []}]}),
    ] {
        let path = format!("/public/browser-profiles/{imported}/storage-state");
        let r = server
            .call(Method::POST, &path, Some(KEY_A), Some(&bad.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let r = server
        .call(
            Method::GET,
            &format!("/public/browser-profiles/{source}/storage-state"),
            Some(KEY_B),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// A small tmpfs mounted over a directory for the length of a test.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_save_keeps_the_old_profile_and_says_why() {
    let data_dir = tempfile::tempdir().unwrap();
    // The profiles live on a 64 MiB disk: room for a logged-in profile, not for a browser
    // carrying 96 MiB of ballast. Root can always mount a tmpfs (the suite runs as root, as
    // CI does): a machine where it cannot fails this test rather than skipping it.
    let _disk = SmallDisk::mount(&data_dir.path().join("profiles"), "64m")
        .expect("mount a 64 MiB tmpfs for the profiles (needs root: run the suite as CI does)");
    let app = start_app().await;
    let server = TestServer::start_with(|c| c.data_dir = data_dir.path().to_owned()).await;
    let profile_id = create_profile(&server, KEY_A, "cramped").await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Known content first: a login, saved.
    let first = server.create(json!({"profile_id": profile_id})).await;
    visit(&first, app, "/login").await;
    let first_id = first["session_id"].as_str().unwrap();
    assert_eq!(server.terminate(first_id).await.status, StatusCode::NO_CONTENT);
    assert_eq!(server.get(first_id).await.json["profile_saved"], "saved");

    // Then a session that changes everything and cannot fit on the disk.
    let session = server.create(json!({"profile_id": profile_id})).await;
    visit(&session, app, "/mutate").await;
    for dir in std::fs::read_dir(data_dir.path().join("browsers")).unwrap().flatten() {
        std::fs::write(dir.path().join("ballast.bin"), vec![7u8; 96 << 20]).unwrap();
    }
    let id = session["session_id"].as_str().unwrap();
    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    let record = server.get(id).await.json;
    let outcome = record["profile_saved"].as_str().unwrap();
    assert!(
        outcome.starts_with("not saved:") && outcome.contains("space"),
        "{outcome}"
    );
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("cdpgate_profile_save_failures_total 1"), "{metrics}");

    // The profile is exactly as the login left it, and still usable.
    let next = server
        .create(json!({"profile_id": profile_id, "persist_changes": false}))
        .await;
    assert_eq!(visit(&next, app, "/check").await, logged_in());
    let leftovers: Vec<_> = std::fs::read_dir(data_dir.path().join("profiles").join(&profile_id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "the failed generation was cleared: {leftovers:?}");
    server.stop().await;
}

/// A context session starts from a profile's cookies (session cookies too) and
/// localStorage, holds the profile as its one writer, and saves its changes back, where a
/// process session finds them (with the IndexedDB the context never carried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_session_loads_and_saves_a_profile_as_its_storage_state() {
    let server = TestServer::start().await;
    let app = start_app().await;
    let profile_id = create_profile(&server, KEY_A, "context").await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(first["isolation"], "process");
    visit(&first, app, "/login").await;
    server.terminate(first["session_id"].as_str().unwrap()).await;

    let context = server
        .create(json!({"profile_id": profile_id, "isolation": "context"}))
        .await;
    assert_eq!(context["isolation"], "context");
    assert_eq!(context["persist_changes"], true);
    let carried = json!({"cookies": ["remember=yes", "sid=s3cr3t"], "local": "alice", "idb": null});
    assert_eq!(
        visit(&context, app, "/check").await,
        carried,
        "cookies and localStorage, not IndexedDB"
    );
    // One writer at a time, whatever the isolation.
    let body = json!({"profile_id": profile_id}).to_string();
    let second_writer = server
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body))
        .await;
    assert_eq!(second_writer.status, StatusCode::CONFLICT, "{}", second_writer.body);
    visit(&context, app, "/mutate").await;
    let id = context["session_id"].as_str().unwrap();
    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    let record = server.get(id).await.json;
    assert_eq!(record["profile_saved"], "saved", "{record}");

    // A context session from the profile with a fingerprint (its page script its own):
    // the profile's origins are loaded through tabs of a spare's context, and only the
    // spare's own tab was dressed ahead, so nothing is dressed again on a closing tab.
    for _ in 0..2 {
        let body = json!({"profile_id": profile_id, "isolation": "context", "persist_changes": false,
            "fingerprint": {"os": "windows"}});
        let created = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let changed = json!({"cookies": ["remember=no", "sid=changed"], "local": "mallory", "idb": null});
        assert_eq!(visit(&created.json, app, "/check").await, changed);
        let id = created.json["session_id"].as_str().unwrap();
        assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    }

    let after = server
        .create(json!({"profile_id": profile_id, "persist_changes": false}))
        .await;
    let expected = json!({"cookies": ["remember=no", "sid=changed"], "local": "mallory", "idb": "t0k3n"});
    assert_eq!(visit(&after, app, "/check").await, expected);
    server.stop().await;
}

/// A page fills its storage with 24 MiB of random bytes (and changes its login) in a
/// persisting session: past `max_profile_bytes` the save is refused, says why, and the
/// next session starts from the profile as it was saved before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_grown_past_its_limit_is_not_saved_and_stays_as_it_was() {
    let server = TestServer::start_with(|c| c.max_profile_bytes = 16 << 20).await;
    let app = start_app().await;
    let profile = create_profile(&server, KEY_A, "bounded").await;
    let profile_id = profile.json["id"].as_str().unwrap().to_owned();
    let first = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(visit(&first, app, "/login").await, logged_in());
    let first_id = first["session_id"].as_str().unwrap();
    server.terminate(first_id).await;
    assert_eq!(server.get(first_id).await.json["profile_saved"], "saved");

    let second = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(visit(&second, app, "/mutate").await["local"], "mallory");
    let mut client = CdpClient::connect(&second).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("http://{app}/check")).await;
    let filled = client
        .eval(
            &page,
            "new Promise((ok, fail) => {
               const bytes = new Uint8Array(24 << 20);
               for (let i = 0; i < bytes.length; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
               const r = indexedDB.open('ballast', 1);
               r.onupgradeneeded = () => r.result.createObjectStore('s');
               r.onsuccess = () => {
                 const tx = r.result.transaction('s', 'readwrite');
                 tx.objectStore('s').put(new Blob([bytes]), 'k');
                 tx.oncomplete = () => ok(true);
                 tx.onerror = () => fail(String(tx.error));
               };
               r.onerror = () => fail(String(r.error));
             })",
        )
        .await;
    assert_eq!(filled, true);
    drop(client);
    let second_id = second["session_id"].as_str().unwrap();
    server.terminate(second_id).await;
    let outcome = server.get(second_id).await.json["profile_saved"].clone();
    let outcome = outcome.as_str().unwrap_or_default();
    assert!(
        outcome.starts_with("not saved") && outcome.contains("max_profile_bytes"),
        "{outcome}"
    );

    let third = server.create(json!({"profile_id": profile_id})).await;
    assert_eq!(
        visit(&third, app, "/check").await,
        logged_in(),
        "the profile as it was saved before"
    );
    server.terminate(third["session_id"].as_str().unwrap()).await;
    server.stop().await;
}
