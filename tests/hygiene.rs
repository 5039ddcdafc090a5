//! Process and disk hygiene: no browser or scratch directory outlives its session or the
//! broker, however the broker ends; and the first-start experience of the real binary.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_sessions_or_a_stopped_broker() {
    let server = TestServer::start().await;
    let data_dir = server.data_dir.path().to_string_lossy().into_owned();
    // The full Chromium (which keeps a socket in the temp dir) and the headless shell (the
    // default, whose helpers do not name the data directory: found by process group).
    let a = server.create(json!({"browser": "full"})).await;
    let b = server
        .create(json!({"screen_config": {"width": 800, "height": 600}}))
        .await;
    assert_eq!(b["browser"], "shell");
    let mut ws = ws_connect(a["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    let groups = chrome_groups_under(server.data_dir.path());
    assert!(groups.len() >= 3, "two sessions and a warm browser run: {groups:?}");
    let in_groups = || groups.iter().flat_map(|g| processes_in_group(*g)).collect::<Vec<_>>();
    assert!(in_groups().len() > groups.len(), "each with its helpers");

    let socket_dirs = chrome_socket_dirs(server.data_dir.path());
    assert!(
        !socket_dirs.is_empty(),
        "the full Chromium links its socket: {socket_dirs:?}"
    );

    server.terminate(b["session_id"].as_str().unwrap()).await;
    let dir = server.stop().await;
    // Shutdown closes client connections with "going away".
    assert_eq!(
        await_close(&mut ws, Duration::from_secs(5)).await.map(|c| c.0),
        Some(1001)
    );
    assert!(
        eventually(Duration::from_secs(10), || processes_mentioning(&data_dir).is_empty()
            && in_groups().is_empty())
        .await,
        "Chromium processes left: {:?} {:?}",
        processes_mentioning(&data_dir),
        in_groups()
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("browsers")).unwrap().collect();
    assert!(left.is_empty(), "scratch directories left: {left:?}");
    // Killed browsers cannot remove their socket directories from the temp dir themselves.
    let kept: Vec<_> = socket_dirs.iter().filter(|d| d.exists()).collect();
    assert!(kept.is_empty(), "Chrome's socket directories left: {kept:?}");
}

/// The directories the browsers under `data_dir` made in the temp dir for their
/// single-instance sockets, as their user-data dirs link them.
fn chrome_socket_dirs(data_dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data_dir.join("browsers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("SingletonSocket")).ok())
        .filter_map(|socket| socket.parent().map(Path::to_path_buf))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_directories_are_swept_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let stale = data_dir.path().join("browsers/0123abcd/Default");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("Cookies"), b"old").unwrap();
    let server = TestServer::start_with(|c| c.data_dir = data_dir.path().to_owned()).await;
    assert!(!data_dir.path().join("browsers/0123abcd").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_leaves_no_chromium_behind() {
    let data_dir = tempfile::tempdir().unwrap();
    let needle = data_dir.path().to_string_lossy().into_owned();
    let mut broker = start_binary(data_dir.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    // The full Chromium, which keeps a socket in the temp dir; the warm one is the shell.
    let r = http(
        broker.addr,
        Method::POST,
        "/public/sessions",
        Some(KEY_A),
        Some(r#"{"browser":"full"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let active_id = r.json["session_id"].as_str().unwrap().to_owned();
    let ended = http(
        broker.addr,
        Method::POST,
        "/public/sessions",
        Some(KEY_A),
        Some(r#"{"metadata":{"n":2}}"#),
    )
    .await;
    let ended_id = ended.json["session_id"].as_str().unwrap().to_owned();
    let terminate = format!("/public/sessions/{ended_id}/terminate");
    assert_eq!(
        http(broker.addr, Method::POST, &terminate, Some(KEY_A), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let groups = chrome_groups_under(data_dir.path());
    assert!(groups.len() >= 2, "a session browser and a warm one: {groups:?}");
    let in_groups = || groups.iter().flat_map(|g| processes_in_group(*g)).collect::<Vec<_>>();

    signal(&broker.child, libc::SIGKILL);
    broker.child.wait().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || processes_mentioning(&needle).is_empty()
            && in_groups().is_empty())
        .await,
        "orphaned Chromium: {:?} {:?}",
        processes_mentioning(&needle),
        in_groups()
    );

    // The next start sweeps the directories the killed broker could not remove.
    let names = |dir: &Path| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir.join("browsers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let stale = names(data_dir.path());
    assert!(stale.len() >= 2, "a killed broker cannot clean up: {stale:?}");
    let stale_sockets = chrome_socket_dirs(data_dir.path());
    assert!(!stale_sockets.is_empty() && stale_sockets.iter().all(|d| d.exists()));
    let mut again = start_binary(data_dir.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    let now = names(data_dir.path());
    assert!(stale.iter().all(|d| !now.contains(d)), "stale {stale:?}, now {now:?}");
    let kept: Vec<_> = stale_sockets.iter().filter(|d| d.exists()).collect();
    assert!(kept.is_empty(), "Chrome's socket directories left: {kept:?}");

    // Ended sessions are still readable; the one the kill cut short says so.
    let addr = again.addr;
    let get = |id: &str| {
        let path = format!("/public/sessions/{id}");
        async move { http(addr, Method::GET, &path, Some(KEY_A), None).await }
    };
    let was_ended = get(&ended_id).await.json;
    assert_eq!(
        (was_ended["status"].as_str(), was_ended["end_reason"].as_str()),
        (Some("terminated"), Some("terminated by request"))
    );
    assert_eq!(was_ended["metadata"]["n"], 2);
    let was_active = get(&active_id).await.json;
    assert_eq!(
        (was_active["status"].as_str(), was_active["end_reason"].as_str()),
        (Some("terminated"), Some("broker restarted"))
    );
    let list = http(
        again.addr,
        Method::GET,
        "/public/sessions?status_filter=terminated",
        Some(KEY_A),
        None,
    )
    .await;
    assert_eq!(list.json["total"], 2);
    let terminate_again = format!("/public/sessions/{active_id}/terminate");
    assert_eq!(
        http(again.addr, Method::POST, &terminate_again, Some(KEY_A), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    let delete = format!("/public/sessions/{ended_id}");
    assert_eq!(
        http(again.addr, Method::DELETE, &delete, Some(KEY_A), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&ended_id).await.status, StatusCode::NOT_FOUND);
    assert!(!data_dir.path().join(format!("sessions/{ended_id}.json")).exists());
    signal(&again.child, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), again.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}");
    assert!(eventually(Duration::from_secs(10), || processes_mentioning(&needle).is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_api_key_is_printed_once_and_kept() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut first = start_binary(data_dir.path(), &[]).await;
    let announced = first
        .printed
        .iter()
        .find_map(|l| l.strip_prefix("cdpgate: generated an API key"))
        .expect("the new key is printed")
        .to_owned();
    let key = announced.rsplit(": ").next().unwrap().trim().to_owned();
    assert!(key.starts_with("cdpg_") && key.len() > 30, "{key}");
    let stored = std::fs::read_to_string(data_dir.path().join("api_key")).unwrap();
    assert_eq!(stored.trim(), key);

    let r = http(first.addr, Method::GET, "/public/sessions", Some(&key), None).await;
    assert_eq!(r.status, StatusCode::OK);
    signal(&first.child, libc::SIGTERM);
    first.child.wait().await.unwrap();
    while let Ok(Some(line)) = first.lines.next_line().await {
        assert!(!line.contains(&key), "the key was printed again: {line}");
    }

    let mut second = start_binary(data_dir.path(), &[]).await;
    assert!(
        second.printed.iter().all(|l| !l.contains(&key)),
        "a restart does not print the key"
    );
    let r = http(second.addr, Method::GET, "/public/sessions", Some(&key), None).await;
    assert_eq!(r.status, StatusCode::OK, "the kept key still works");
    signal(&second.child, libc::SIGTERM);
    second.child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let needle = data_dir.path().to_string_lossy().into_owned();
    let mut broker = start_binary(data_dir.path(), &[("CDPGATE_API_KEYS", KEY_A)]).await;
    // A persisting session gives the graceful stop something to wait for (its save).
    let profile = http(
        broker.addr,
        Method::POST,
        "/public/browser-profiles",
        Some(KEY_A),
        Some(r#"{"name":"p"}"#),
    )
    .await;
    let body = json!({"profile_id": profile.json["id"]}).to_string();
    let r = http(broker.addr, Method::POST, "/public/sessions", Some(KEY_A), Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // And a client that never answers the close frame: the graceful stop waits for it
    // (about a second), so the second signal always comes while it is under way.
    let _silent = ws_connect(r.json["cdp_url"].as_str().unwrap()).await.unwrap();

    signal(&broker.child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(50)).await;
    signal(&broker.child, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(5), broker.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "the second signal cut the graceful stop short: {status}"
    );
    // Even so, no browser outlives it.
    assert!(eventually(Duration::from_secs(10), || processes_mentioning(&needle).is_empty()).await);
}

/// `log_format = "json"`: every line is one JSON object, and every line about a session
/// carries its id and tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_session_and_tenant_on_every_line_about_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let env = [
        ("CDPGATE_API_KEYS", KEY_A),
        ("CDPGATE_LOG_FORMAT", "json"),
        ("RUST_LOG", "cdpgate=debug"),
    ];
    let broker = start_binary(data_dir.path(), &env).await;
    let (mut child, addr, mut out) = (broker.child, broker.addr, broker.lines);
    // Read the log as it comes: a pipe nobody reads would stall the broker.
    let reader_saw_gateway = Arc::new(AtomicBool::new(false));
    let saw_gateway = reader_saw_gateway.clone();
    let reader = tokio::spawn(async move {
        let mut lines = broker.printed;
        while let Ok(Some(line)) = out.next_line().await {
            if line.contains("cdpgate-test.invalid") {
                saw_gateway.store(true, Relaxed);
            }
            lines.push(line);
        }
        lines
    });
    let created = http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.json["session_id"].as_str().unwrap().to_owned();
    let mut ws = ws_connect(created.json["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut ws, 1, "Browser.getVersion", json!({})).await;
    // What else names this session's doings in a line: its browser's process and scratch
    // directory, and its tab.
    let pid = browser_pid(&mut ws).await;
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).into_owned();
    let browser_dir = cmdline
        .split('\0')
        .find_map(|a| a.strip_prefix("--user-data-dir="))
        .and_then(|d| d.rsplit('/').next())
        .unwrap()
        .to_owned();
    // A page that asks for a name that cannot resolve: the browser's gateway logs it, and
    // that line too must name the session and its tenant.
    let tab = cdp_call(
        &mut ws,
        2,
        "Target.createTarget",
        json!({"url": "http://cdpgate-test.invalid/"}),
    )
    .await;
    let target = tab["result"]["targetId"].as_str().unwrap().to_owned();
    let gateway_logged = async {
        while !reader_saw_gateway.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), gateway_logged)
        .await
        .expect("the gateway logs the unreachable destination");
    let path = format!("/public/sessions/{id}/terminate");
    assert_eq!(
        http(addr, Method::POST, &path, Some(KEY_A), None).await.status,
        StatusCode::NO_CONTENT
    );
    let _ = await_close(&mut ws, Duration::from_secs(10)).await;
    signal(&child, libc::SIGTERM);
    child.wait().await.unwrap();
    let lines = reader.await.unwrap();
    // A line is about the session if it names it, or names what only the session did
    // (the unresolvable site, its tab), or its browser once the session holds it (before,
    // the browser was the pool's), or comes from one of its connections. Every such line
    // names the session and its tenant: a line that lost them cannot be found by its id.
    let created_at = lines
        .iter()
        .position(|l| l.contains("\"session created\""))
        .unwrap_or_else(|| panic!("no 'session created' line: {lines:#?}"));
    let pid_field = format!("\"pid\":{pid}");
    let mut about_session = 0;
    let mut gateway_lines = 0;
    for (n, line) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.starts_with("cdpgate: listening on"))
    {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["fields"].is_object(), "{line}");
        let mut scopes = entry["spans"].as_array().cloned().unwrap_or_default();
        let of_a_connection = scopes.iter().any(|s| s["name"] == "proxy.connection");
        let its_browser = n > created_at && (line.contains(&browser_dir) || line.contains(&pid_field));
        let only_its_own = line.contains("cdpgate-test.invalid") || line.contains(&target);
        if line.contains("cdpgate-test.invalid") {
            gateway_lines += 1;
        }
        if line.contains(&id) || of_a_connection || its_browser || only_its_own {
            about_session += 1;
            // In the session's span, or with both as fields of the line itself.
            scopes.push(entry["fields"].clone());
            let named = scopes
                .iter()
                .any(|s| s["session"] == id.as_str() && s["tenant"].as_str().is_some_and(|t| t.starts_with("t_")));
            assert!(named, "a line about the session without its id and tenant: {line}");
        }
    }
    assert!(gateway_lines >= 1, "the gateway's line was read: {lines:#?}");
    assert!(about_session >= 3, "created, connected, ended: {lines:#?}");
}
