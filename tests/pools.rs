//! Named pools: a key's browsers kept ready with a profile and options, handed out logged
//! in and isolated, refilled, invisible to other keys, and gone without a trace when the
//! pool, its profile or the broker goes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A site on loopback: `/login` sets a session cookie and a persistent one and writes
/// localStorage; `/check` reports what the page sees, and whether it could fetch
/// `/tracker` (which pools block).
async fn start_app() -> SocketAddr {
    serve_pages(|path| {
        let (cookies, script) = match path {
            "/login" => (
                "set-cookie: sid=s3cr3t; Path=/\r\nset-cookie: remember=yes; Path=/; Max-Age=86400\r\n",
                "localStorage.setItem('user', 'alice');",
            ),
            _ => ("", ""),
        };
        let page = format!(
            "<html><body><script>{script}
            window.__state = fetch('/tracker').then(() => 'loaded', () => 'blocked').then(tracker => ({{
              cookies: document.cookie.split('; ').filter(Boolean).sort(),
              local: localStorage.getItem('user'),
              agent: navigator.userAgent,
              language: navigator.language,
              width: innerWidth,
              tracker,
            }}));
            </script></body></html>"
        );
        (cookies.to_owned(), page)
    })
    .await
}

/// What `/check` reports in the session's first tab.
async fn check(session: &Value, app: SocketAddr) -> Value {
    let mut cdp = CdpClient::connect(session).await;
    let (_, page) = cdp.own_page().await;
    cdp.load(&page, &format!("http://{app}/check")).await;
    cdp.eval(&page, "window.__state").await
}

async fn call(server: &TestServer, method: Method, path: &str, key: &str, body: Option<Value>) -> Response {
    let body = body.map(|b| b.to_string());
    server.call(method, path, Some(key), body.as_deref()).await
}

/// A profile of `key`, logged in on `app` by a session that saved it.
async fn logged_in_profile(server: &TestServer, key: &str, app: SocketAddr) -> String {
    let profile = call(
        server,
        Method::POST,
        "/public/browser-profiles",
        key,
        Some(json!({"name": "login"})),
    )
    .await;
    assert_eq!(profile.status, StatusCode::CREATED, "{}", profile.body);
    let id = profile.json["id"].as_str().unwrap().to_owned();
    let session = call(
        server,
        Method::POST,
        "/public/sessions",
        key,
        Some(json!({"profile_id": id})),
    )
    .await;
    assert_eq!(session.status, StatusCode::CREATED, "{}", session.body);
    let mut cdp = CdpClient::connect(&session.json).await;
    let (_, page) = cdp.own_page().await;
    cdp.load(&page, &format!("http://{app}/login")).await;
    drop(cdp);
    let sid = session.json["session_id"].as_str().unwrap();
    let ended = call(
        server,
        Method::POST,
        &format!("/public/sessions/{sid}/terminate"),
        key,
        None,
    )
    .await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT);
    let record = call(server, Method::GET, &format!("/public/sessions/{sid}"), key, None).await;
    assert_eq!(record.json["profile_saved"], "saved", "{}", record.body);
    id
}

/// The pool's stats once `ready` browsers are ready (polled, within a minute).
async fn await_ready(server: &TestServer, key: &str, name: &str, ready: u64) -> Value {
    let path = format!("/public/pools/{name}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut reached) = (Value::Null, false);
    while !reached && tokio::time::Instant::now() < deadline {
        last = call(server, Method::GET, &path, key, None).await.json;
        reached = last["stats"]["ready"] == ready;
        if !reached {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(reached, "pool {name} reaches {ready} ready: {last}");
    last
}

/// Browser processes on profile copies (a pool's, or a profile session's) of this broker,
/// and those copies' directories.
fn profile_browsers(data_dir: &Path) -> (usize, usize) {
    let browsers = data_dir.join("browsers");
    let flag = format!("--user-data-dir={}", browsers.display());
    let processes = processes_mentioning(&flag)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|arg| arg.starts_with(&flag) && arg.ends_with("-profile"))
        })
        .count();
    let dirs = std::fs::read_dir(&browsers)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with("-profile"))
                .count()
        })
        .unwrap_or(0);
    (processes, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_hands_out_logged_in_isolated_sessions_with_its_settings_and_refills() {
    let server = TestServer::start_with(|c| c.max_sessions = 8).await;
    let app = start_app().await;
    let profile = logged_in_profile(&server, KEY_A, app).await;
    let before = profile_digest(server.data_dir.path(), &profile);

    let settings = json!({
        "profile_id": profile,
        "screen_config": {"width": 1111, "height": 700},
        "user_agent": "PoolAgent/1.0 (cdpgate test)",
        "locale": "de-DE",
        "block_urls": ["*/tracker*"],
        "ttl": 300,
    });
    let mut body = settings.clone();
    body["name"] = json!("login");
    body["size"] = json!(2);
    let created = call(&server, Method::POST, "/public/pools", KEY_A, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.json["name"], "login");
    assert_eq!(created.json["size"], 2);
    assert_eq!(created.json["persist_changes"], false);
    assert_eq!(created.json["isolation"], "process");
    assert_eq!(created.json["screen_config"], json!({"width": 1111, "height": 700}));
    await_ready(&server, KEY_A, "login", 2).await;

    let take = json!({"pool": "login", "metadata": {"job": 1}});
    let first = call(&server, Method::POST, "/public/sessions", KEY_A, Some(take.clone())).await;
    let second = call(&server, Method::POST, "/public/sessions", KEY_A, Some(take)).await;
    for s in [&first, &second] {
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.body);
        assert_eq!(s.json["pool"], "login");
        assert_eq!(s.json["pool_hit"], true, "a ready browser was there: {}", s.body);
        // A profile runs on the full Chromium, whether ready or cold.
        assert_eq!(
            (&s.json["browser"], &s.json["browser_reason"]),
            (&json!("full"), &json!("profile"))
        );
        assert_eq!(s.json["persist_changes"], false);
        assert_eq!(s.json["metadata"]["job"], 1);
        let seen = check(&s.json, app).await;
        assert_eq!(
            seen,
            json!({
                "cookies": ["remember=yes", "sid=s3cr3t"],
                "local": "alice",
                "agent": "PoolAgent/1.0 (cdpgate test)",
                "language": "de-DE",
                "width": 1111,
                "tracker": "blocked",
            }),
            "a pooled session is logged in, with the pool's screen, identity and blocking"
        );
    }

    // A cookie set in one is not in the other.
    let mut cdp = CdpClient::connect(&first.json).await;
    let (_, page) = cdp.own_page().await;
    cdp.eval(&page, "document.cookie = 'mine=1; Max-Age=3600'").await;
    assert!(
        cdp.eval(&page, "document.cookie")
            .await
            .as_str()
            .unwrap()
            .contains("mine=1")
    );
    drop(cdp);
    let other = check(&second.json, app).await;
    assert_eq!(
        other["cookies"],
        json!(["remember=yes", "sid=s3cr3t"]),
        "isolated: {other}"
    );

    // A pool with nothing ready answers with a cold start of the same settings.
    let mut body = settings.clone();
    body["name"] = json!("cold");
    body["size"] = json!(0);
    let cold_pool = call(&server, Method::POST, "/public/pools", KEY_A, Some(body)).await;
    assert_eq!(cold_pool.status, StatusCode::CREATED, "{}", cold_pool.body);
    let cold = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "cold"})),
    )
    .await;
    assert_eq!(cold.status, StatusCode::CREATED, "{}", cold.body);
    assert_eq!(cold.json["pool_hit"], false);
    assert_eq!(
        (&cold.json["browser"], &cold.json["browser_reason"]),
        (&json!("full"), &json!("profile"))
    );
    assert_eq!(
        check(&cold.json, app).await["cookies"],
        json!(["remember=yes", "sid=s3cr3t"])
    );

    // The pool refills to its size.
    let stats = await_ready(&server, KEY_A, "login", 2).await;
    assert_eq!(stats["stats"]["taken"], 2, "{stats}");
    assert!(stats["stats"]["last_refill_ms"].as_u64().is_some(), "{stats}");
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_named_pool_takes_total{result=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cdpgate_named_pool_takes_total{result=\"miss\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cdpgate_named_pools 2"), "{metrics}");
    assert!(metrics.contains("cdpgate_named_pool_ready 2"), "{metrics}");

    // Ended sessions never wrote the profile.
    for s in [&first, &second, &cold] {
        let id = s.json["session_id"].as_str().unwrap();
        let session = server.broker.running_session(None, id).expect("running");
        let ended = call(
            &server,
            Method::POST,
            &format!("/public/sessions/{id}/terminate"),
            KEY_A,
            None,
        )
        .await;
        assert_eq!(ended.status, StatusCode::NO_CONTENT);
        assert!(
            eventually(Duration::from_secs(20), || session.profile_released().is_cancelled()).await,
            "the session let go of its profile"
        );
    }
    assert_eq!(
        profile_digest(server.data_dir.path(), &profile),
        before,
        "the profile's bytes are as before"
    );

    // PATCH: a smaller pool lets its extra browsers go.
    let patched = call(
        &server,
        Method::PATCH,
        "/public/pools/login",
        KEY_A,
        Some(json!({"size": 1, "ttl": 60})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(
        (patched.json["size"].clone(), patched.json["ttl"].clone()),
        (json!(1), json!(60))
    );
    assert_eq!(patched.json["stats"]["ready"], 1);

    // DELETE: no ready browser is left, nor its profile copy.
    let deleted = call(&server, Method::DELETE, "/public/pools/login", KEY_A, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = call(&server, Method::GET, "/public/pools/login", KEY_A, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let data_dir = server.data_dir.path().to_owned();
    assert!(
        eventually(Duration::from_secs(10), || profile_browsers(&data_dir) == (0, 0)).await,
        "no pooled browser or profile copy left: {:?}",
        profile_browsers(&data_dir)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_cannot_see_use_change_or_delete_a_pool() {
    let server = TestServer::start().await;
    let created = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "mine", "size": 1, "locale": "fr-FR"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let stats = await_ready(&server, KEY_A, "mine", 1).await;

    let listed = call(&server, Method::GET, "/public/pools", KEY_B, None).await;
    assert_eq!(listed.json, json!({"pools": []}));
    for (method, path, body) in [
        (Method::GET, "/public/pools/mine", None),
        (Method::PATCH, "/public/pools/mine", Some(json!({"size": 0}))),
        (Method::DELETE, "/public/pools/mine", None),
        (Method::POST, "/public/sessions", Some(json!({"pool": "mine"}))),
    ] {
        let r = call(&server, method.clone(), path, KEY_B, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {}", r.body);
        assert_eq!(r.json["detail"], "Pool not found");
    }
    let after = call(&server, Method::GET, "/public/pools/mine", KEY_A, None).await.json;
    assert_eq!(after["size"], 1);
    assert_eq!(after["stats"], stats["stats"], "nothing was taken or changed");
    let sessions = call(&server, Method::GET, "/public/sessions", KEY_B, None).await;
    assert_eq!(sessions.json["total"], 0);

    // Names are per key: B may have a "mine" of its own.
    let own = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_B,
        Some(json!({"name": "mine", "size": 0})),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let mine = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "mine"})),
    )
    .await;
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.body);
    assert_eq!(
        (mine.json["pool_hit"].clone(), mine.json["locale"].clone()),
        (json!(true), json!("fr-FR"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pool_requests_are_refused_and_create_nothing() {
    let server = TestServer::start_with(|c| {
        c.max_sessions_per_key = 3;
        c.max_pools_per_key = 2;
    })
    .await;
    let theirs = call(
        &server,
        Method::POST,
        "/public/browser-profiles",
        KEY_B,
        Some(json!({"name": "b"})),
    )
    .await;
    let their_profile = theirs.json["id"].as_str().unwrap().to_owned();
    let name_rule =
        "name must be a pool name: 1 to 48 lowercase letters, digits, '-' or '_', beginning with a letter or digit";
    let refusals = [
        (json!({"size": 1}), 422, name_rule.to_owned()),
        (json!({"name": "", "size": 1}), 422, name_rule.to_owned()),
        (json!({"name": "../etc", "size": 1}), 422, name_rule.to_owned()),
        (json!({"name": "Upper", "size": 1}), 422, name_rule.to_owned()),
        (json!({"name": "x".repeat(49), "size": 1}), 422, name_rule.to_owned()),
        (json!({"name": 7, "size": 1}), 422, name_rule.to_owned()),
        (json!({"name": "p"}), 422, "size must be a whole number from 0 to 8 (max_pool_size)".to_owned()),
        (json!({"name": "p", "size": -1}), 422, "size must be a whole number from 0 to 8 (max_pool_size)".to_owned()),
        (json!({"name": "p", "size": 9}), 422, "size must be a whole number from 0 to 8 (max_pool_size)".to_owned()),
        (json!({"name": "p", "size": 1e12}), 422, "size must be a whole number from 0 to 8 (max_pool_size)".to_owned()),
        (json!({"name": "p", "size": "2"}), 422, "size must be a whole number from 0 to 8 (max_pool_size)".to_owned()),
        (
            json!({"name": "p", "size": 4}),
            422,
            "The pools of this API key would keep 4 browsers ready, more than max_sessions_per_key allows (3): a ready browser counts as a session of its key".to_owned(),
        ),
        (json!({"name": "p", "size": 1, "profile_id": their_profile}), 404, "Browser profile not found".to_owned()),
        (
            json!({"name": "p", "size": 1, "profile_id": "550e8400-e29b-41d4-a716-446655440000"}),
            404,
            "Browser profile not found".to_owned(),
        ),
        (
            json!({"name": "p", "size": 1, "extensions": ["ext_000000000000000000000000"]}),
            422,
            "extensions: \"ext_000000000000000000000000\" is not an extension of this API key".to_owned(),
        ),
        (
            json!({"name": "p", "size": 1, "cdp_url": "ws://127.0.0.1:9222/devtools/browser/x"}),
            422,
            "cdp_url is not a pool field: a pool takes a create's options except cdp_url, metadata and webhooks (given per session)".to_owned(),
        ),
        (
            json!({"name": "p", "size": 1, "persist_changes": true}),
            422,
            "persist_changes must be false for a pool: its sessions never write their profile".to_owned(),
        ),
        (
            json!({"name": "p", "size": 1, "isolation": "context", "extensions": ["ext_000000000000000000000000"]}),
            422,
            "extensions need isolation \"process\": a context session shares its browser, which loads no extensions".to_owned(),
        ),
        (
            json!({"name": "p", "size": 1, "isolation": "context", "cdp_url": "ws://127.0.0.1:9/devtools/browser/x"}),
            422,
            "cdp_url is not a pool field: a pool takes a create's options except cdp_url, metadata and webhooks (given per session)".to_owned(),
        ),
        (json!({"name": "p", "size": 1, "ttl": 0}), 422, "TTL must be at least 1 second".to_owned()),
        (
            json!({"name": "p", "size": 1, "locale": "no such locale!"}),
            422,
            "locale must be a BCP 47 language tag such as \"en-US\"".to_owned(),
        ),
    ];
    for (body, status, detail) in refusals {
        let r = call(&server, Method::POST, "/public/pools", KEY_A, Some(body.clone())).await;
        assert_eq!(
            (r.status.as_u16(), r.json["detail"].as_str().unwrap_or_default()),
            (status, detail.as_str()),
            "{body}"
        );
    }
    let listed = call(&server, Method::GET, "/public/pools", KEY_A, None).await;
    assert_eq!(listed.json, json!({"pools": []}), "nothing was created");

    // Within the limits: two pools of 2 + 1 = 3 ready at most.
    let a = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "a", "size": 2})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let again = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "a", "size": 0})),
    )
    .await;
    assert_eq!(
        (again.status, again.json["detail"].clone()),
        (StatusCode::CONFLICT, json!("A pool named \"a\" already exists"))
    );
    let over = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "b", "size": 2})),
    )
    .await;
    assert_eq!(over.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", over.body);
    let b = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "b", "size": 1})),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    let third = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "c", "size": 0})),
    )
    .await;
    assert_eq!(third.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", third.body);
    assert!(third.body.contains("max_pools_per_key"), "{}", third.body);
    for (body, needle) in [
        (json!({"size": 2}), "max_sessions_per_key"),
        (json!({"size": 9}), "max_pool_size"),
        (json!({"locale": "de-DE"}), "locale cannot be changed"),
        (json!({"ttl": 0}), "TTL must be at least 1 second"),
    ] {
        let r = call(&server, Method::PATCH, "/public/pools/b", KEY_A, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert!(r.body.contains(needle), "{body}: {}", r.body);
    }
    assert_eq!(
        call(&server, Method::GET, "/public/pools/b", KEY_A, None).await.json["size"],
        1
    );

    // A create from a pool takes only metadata, ttl and idle_timeout.
    for (body, needle) in [
        (
            json!({"pool": "a", "user_agent": "x"}),
            "user_agent cannot be combined with pool",
        ),
        (
            json!({"pool": "a", "profile_id": their_profile}),
            "profile_id cannot be combined with pool",
        ),
        (json!({"pool": "../a"}), "pool must be a pool name"),
        (json!({"pool": 1}), "pool must be a pool name"),
        (json!({"pool": "a", "ttl": -5}), "TTL must be at least 1 second"),
    ] {
        let r = call(&server, Method::POST, "/public/sessions", KEY_A, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert!(r.body.contains(needle), "{body}: {}", r.body);
    }
    let none = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "zzz"})),
    )
    .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.body);
    let sessions = call(&server, Method::GET, "/public/sessions", KEY_A, None).await;
    assert_eq!(sessions.json["total"], 0, "no session was made");

    // Ready browsers hold their key's places: with 3 ready, a plain create is over quota.
    await_ready(&server, KEY_A, "a", 2).await;
    await_ready(&server, KEY_A, "b", 1).await;
    let plain = call(&server, Method::POST, "/public/sessions", KEY_A, Some(json!({}))).await;
    assert_eq!(plain.status, StatusCode::TOO_MANY_REQUESTS, "{}", plain.body);
    // ... and pass them to the sessions taken from them.
    let taken = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "a"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.body);
    assert_eq!(taken.json["pool_hit"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_profile_or_a_stopping_broker_leaves_no_pooled_browser() {
    let server = TestServer::start_with(|c| c.max_sessions = 6).await;
    let app = start_app().await;
    let profile = logged_in_profile(&server, KEY_A, app).await;
    let body = json!({"name": "p", "size": 2, "profile_id": profile});
    let created = call(&server, Method::POST, "/public/pools", KEY_A, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    await_ready(&server, KEY_A, "p", 2).await;
    let data_dir = server.data_dir.path().to_owned();
    assert_eq!(profile_browsers(&data_dir).1, 2, "two profile copies are ready");

    // Ready browsers do not hold the profile: it can be deleted, and they go with it.
    let deleted = call(
        &server,
        Method::DELETE,
        &format!("/public/browser-profiles/{profile}"),
        KEY_A,
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert!(
        eventually(Duration::from_secs(10), || profile_browsers(&data_dir) == (0, 0)).await,
        "the deleted profile's copies are gone: {:?}",
        profile_browsers(&data_dir)
    );
    let taken = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "p"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::NOT_FOUND, "{}", taken.body);
    assert_eq!(taken.json["detail"], "Browser profile not found");
    let stats = call(&server, Method::GET, "/public/pools/p", KEY_A, None).await.json;
    assert_eq!(stats["stats"]["ready"], 0, "{stats}");

    // A pool that is full when the broker stops leaves no browser and no directory.
    let full = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "q", "size": 2})),
    )
    .await;
    assert_eq!(full.status, StatusCode::CREATED, "{}", full.body);
    await_ready(&server, KEY_A, "q", 2).await;
    let dir = server.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || chrome_processes_under(dir.path())
            .is_empty())
        .await,
        "no browser outlives the broker: {:?}",
        chrome_processes_under(dir.path())
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("browsers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no browser directory is left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_defined_again_after_a_restart_except_those_of_removed_keys() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let server = TestServer::start_with(|c| c.data_dir = dir.clone()).await;
    let body = json!({"name": "kept", "size": 1, "locale": "fr-FR", "ttl": 120});
    assert_eq!(
        call(&server, Method::POST, "/public/pools", KEY_A, Some(body))
            .await
            .status,
        StatusCode::CREATED
    );
    let patched = call(
        &server,
        Method::PATCH,
        "/public/pools/kept",
        KEY_A,
        Some(json!({"ttl": 90})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let deleted = json!({"name": "deleted", "size": 0});
    assert_eq!(
        call(&server, Method::POST, "/public/pools", KEY_A, Some(deleted))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&server, Method::DELETE, "/public/pools/deleted", KEY_A, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let theirs = json!({"name": "theirs", "size": 1});
    assert_eq!(
        call(&server, Method::POST, "/public/pools", KEY_B, Some(theirs))
            .await
            .status,
        StatusCode::CREATED
    );
    await_ready(&server, KEY_A, "kept", 1).await;
    await_ready(&server, KEY_B, "theirs", 1).await;
    server.stop().await;
    assert!(
        chrome_processes_under(&dir).is_empty(),
        "no browser outlives the broker"
    );

    // Key B is no longer configured: its pool is not defined again, and its definition goes.
    let server = TestServer::start_with(|c| {
        c.data_dir = dir.clone();
        c.api_keys = vec![KEY_A.into()];
    })
    .await;
    let listed = call(&server, Method::GET, "/public/pools", KEY_A, None).await.json;
    let names: Vec<&str> = listed["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept"], "{listed}");
    assert_eq!(
        (listed["pools"][0]["ttl"].clone(), listed["pools"][0]["locale"].clone()),
        (json!(90), json!("fr-FR"))
    );
    assert_eq!(
        std::fs::read_dir(dir.join("pools")).unwrap().count(),
        1,
        "only the kept pool's definition is left"
    );
    await_ready(&server, KEY_A, "kept", 1).await;
    let taken = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "kept"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.body);
    assert_eq!(
        (taken.json["pool_hit"].clone(), taken.json["locale"].clone()),
        (json!(true), json!("fr-FR"))
    );
    server.stop().await;
}

/// The contexts Chrome itself has on the shared browser at `port` (every session's, and
/// every ready one's), and its page targets with their contexts, asked past the broker.
async fn chrome_contexts(port: u16) -> (Vec<String>, Vec<(String, String)>) {
    let version = cdpgate::browser::cdp::get_json(&format!("127.0.0.1:{port}"), "/json/version")
        .await
        .unwrap();
    let mut ws = ws_connect(version["webSocketDebuggerUrl"].as_str().unwrap())
        .await
        .unwrap();
    let contexts = cdp_call(&mut ws, 1, "Target.getBrowserContexts", json!({})).await;
    let targets = cdp_call(&mut ws, 2, "Target.getTargets", json!({})).await;
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    };
    let pages = targets["result"]["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "page")
        .map(|t| {
            let field = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (field("targetId"), field("browserContextId"))
        })
        .collect();
    (ids(&contexts["result"]["browserContextIds"]), pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_pool_hands_out_logged_in_contexts_its_neighbours_never_see() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 8;
        c.context_browsers = 1;
        c.context_sharing = "any".into();
        // No spare contexts: every context Chrome has is a session's or the pool's.
        c.context_spares = 0;
    })
    .await;
    let app = start_app().await;
    let profile = logged_in_profile(&server, KEY_A, app).await;
    let before = profile_digest(server.data_dir.path(), &profile);

    // Neighbours in the same shared Chrome: another key's context session, and one of the
    // pool's own key, both watching every target they may.
    let mut neighbours = Vec::new();
    for key in [KEY_B, KEY_A] {
        let s = call(
            &server,
            Method::POST,
            "/public/sessions",
            key,
            Some(json!({"isolation": "context"})),
        )
        .await;
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.body);
        let mut cdp = CdpClient::connect(&s.json).await;
        cdp.call(None, "Target.setDiscoverTargets", json!({"discover": true}))
            .await;
        let (_, page) = cdp.own_page().await;
        neighbours.push((s.json, cdp, page));
    }
    let shared = server.broker.shared().browsers();
    assert_eq!(shared.len(), 1, "{shared:?}");
    let port = shared[0].port;
    let (at_start, _) = chrome_contexts(port).await;

    let body = json!({
        "name": "ctx",
        "size": 2,
        "isolation": "context",
        "profile_id": profile,
        "screen_config": {"width": 1111, "height": 700},
        "locale": "de-DE",
        "block_urls": ["*/tracker*"],
    });
    let created = call(&server, Method::POST, "/public/pools", KEY_A, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.json["isolation"], "context");
    await_ready(&server, KEY_A, "ctx", 2).await;
    let (with_ready, pages) = chrome_contexts(port).await;
    let ready: Vec<String> = with_ready.into_iter().filter(|c| !at_start.contains(c)).collect();
    assert_eq!(ready.len(), 2, "two contexts are ready in the shared Chrome");
    let ready_pages: Vec<String> = pages
        .iter()
        .filter(|(_, c)| ready.contains(c))
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(ready_pages.len(), 2, "each with its first tab: {pages:?}");

    // The neighbours look for them every way they can: nothing of the pool shows.
    for (session, cdp, page) in &mut neighbours {
        let own = cdp.pages().await;
        assert_eq!(own.len(), 1, "{own:?}");
        let contexts = cdp.call(None, "Target.getBrowserContexts", json!({})).await;
        assert_eq!(contexts["browserContextIds"], json!([own[0].1]));
        for target in &ready_pages {
            for method in ["Target.attachToTarget", "Target.getTargetInfo", "Target.closeTarget"] {
                let refused = cdp.refused(method, json!({"targetId": target, "flatten": true})).await;
                assert_eq!(refused, "No target with given id found", "{method}");
            }
        }
        for context in &ready {
            for (method, params) in [
                ("Storage.getCookies", json!({"browserContextId": context})),
                (
                    "Target.createTarget",
                    json!({"url": "about:blank", "browserContextId": context}),
                ),
                ("Target.disposeBrowserContext", json!({"browserContextId": context})),
            ] {
                cdp.refused(method, params).await;
            }
        }
        let cookies = cdp.call(None, "Storage.getCookies", json!({})).await;
        assert_eq!(cookies["cookies"], json!([]), "no cookie of the pool's profile");
        cdp.load(page, &format!("http://{app}/check")).await;
        assert_eq!(cdp.eval(page, "document.cookie").await, "");
        let listed = server.discovery(session, "json/list").await;
        assert_eq!(listed.status, StatusCode::OK);
        let heard = serde_json::to_string(&cdp.events).unwrap() + &listed.body;
        for secret in ready.iter().chain(&ready_pages) {
            assert!(
                !heard.contains(secret.as_str()),
                "a neighbour heard of {secret}: {heard}"
            );
        }
    }

    // A take is one of the ready contexts, logged in, with the pool's settings.
    let taken = call(
        &server,
        Method::POST,
        "/public/sessions",
        KEY_A,
        Some(json!({"pool": "ctx"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.body);
    assert_eq!(taken.json["pool_hit"], true, "{}", taken.body);
    assert_eq!(taken.json["isolation"], "context");
    let mut cdp = CdpClient::connect(&taken.json).await;
    let own = cdp.pages().await;
    assert_eq!(own.len(), 1, "only its own tab: {own:?}");
    assert!(ready.contains(&own[0].1), "a ready context: {own:?}");
    let contexts = cdp.call(None, "Target.getBrowserContexts", json!({})).await;
    assert_eq!(contexts["browserContextIds"], json!([own[0].1]));
    drop(cdp);
    let seen = check(&taken.json, app).await;
    assert_eq!(
        (
            &seen["cookies"],
            &seen["local"],
            &seen["language"],
            &seen["width"],
            &seen["tracker"]
        ),
        (
            &json!(["remember=yes", "sid=s3cr3t"]),
            &json!("alice"),
            &json!("de-DE"),
            &json!(1111),
            &json!("blocked")
        ),
        "logged in from the profile, with the pool's screen, locale and blocking: {seen}"
    );
    // Its neighbours still see nothing of it, even once it runs.
    for (_, cdp, _) in &mut neighbours {
        cdp.call(None, "Target.getTargets", json!({})).await;
        let heard = serde_json::to_string(&cdp.events).unwrap();
        assert!(!heard.contains(own[0].1.as_str()), "{heard}");
        let cookies = cdp.call(None, "Storage.getCookies", json!({})).await;
        assert!(!cookies.to_string().contains("s3cr3t"), "{cookies}");
    }

    // Deleting the pool disposes of its ready contexts; the taken session keeps running.
    await_ready(&server, KEY_A, "ctx", 2).await;
    let deleted = call(&server, Method::DELETE, "/public/pools/ctx", KEY_A, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let (left, _) = chrome_contexts(port).await;
    let mut expected: Vec<String> = at_start.iter().cloned().chain([own[0].1.clone()]).collect();
    let mut left_sorted = left.clone();
    expected.sort();
    left_sorted.sort();
    assert_eq!(left_sorted, expected, "no ready context is left in Chrome");
    let id = taken.json["session_id"].as_str().unwrap();
    assert_eq!(server.get(id).await.json["status"], "active");
    let session = server.broker.running_session(None, id).expect("running");
    assert_eq!(server.terminate(id).await.status, StatusCode::NO_CONTENT);
    assert!(
        eventually(Duration::from_secs(20), || session.profile_released().is_cancelled()).await,
        "the session let go of its profile"
    );
    assert_eq!(
        profile_digest(server.data_dir.path(), &profile),
        before,
        "the profile's bytes are as before"
    );
    server.stop().await;
}

/// A pool's browsers are launched for its key: a loop of pool writes (define, resize)
/// takes from the key's creates per minute like creates do, and past them is `429` with
/// nothing launched; a change that launches nothing (a TTL) is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_writes_take_from_the_keys_creates_per_minute() {
    let server = TestServer::start_with(|c| c.creates_per_minute = 3).await;
    let created = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "churn", "size": 0})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    // Growing takes a create; shrinking launches nothing and takes none.
    for size in [1, 0, 1, 0] {
        let r = call(
            &server,
            Method::PATCH,
            "/public/pools/churn",
            KEY_A,
            Some(json!({"size": size})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let refused = call(
        &server,
        Method::PATCH,
        "/public/pools/churn",
        KEY_A,
        Some(json!({"size": 1})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.body);
    assert!(refused.headers.contains_key("retry-after"), "{:?}", refused.headers);
    let other = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_A,
        Some(json!({"name": "other", "size": 1})),
    )
    .await;
    assert_eq!(other.status, StatusCode::TOO_MANY_REQUESTS, "{}", other.body);
    // The refused resize changed nothing: no size, and nothing made ready for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = call(&server, Method::GET, "/public/pools/churn", KEY_A, None).await;
    assert_eq!(
        (view.json["size"].as_u64(), view.json["stats"]["ready"].as_u64()),
        (Some(0), Some(0)),
        "{}",
        view.body
    );
    let listed = call(&server, Method::GET, "/public/pools", KEY_A, None).await;
    assert_eq!(
        listed.json["pools"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.body
    );
    // A change that launches nothing is not counted; another key has its own allowance.
    let ttl = call(
        &server,
        Method::PATCH,
        "/public/pools/churn",
        KEY_A,
        Some(json!({"ttl": 600})),
    )
    .await;
    assert_eq!(ttl.status, StatusCode::OK, "{}", ttl.body);
    let b = call(
        &server,
        Method::POST,
        "/public/pools",
        KEY_B,
        Some(json!({"name": "b", "size": 0})),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    server.stop().await;
}
