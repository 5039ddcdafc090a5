//! The session endpoints of the wire contract, against the real broker and Chromium.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A session's metadata without the broker's own keys (the live view links).
fn user_metadata(session: &Value) -> Value {
    let mut m = session["metadata"].clone();
    let live = m.as_object_mut().unwrap();
    assert!(
        live.remove("live_url")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("/live/sess_")
    );
    assert!(live.remove("live_url_read_only").is_some());
    m
}

fn parse_time(s: &Value) -> SystemTime {
    humantime::parse_rfc3339(s.as_str().expect("a timestamp string")).expect("ISO 8601 with Z")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_and_keys_are_tenants() {
    let server = TestServer::start().await;
    for key in [None, Some("wrong-key-0123456789")] {
        let r = server.call(Method::GET, "/public/sessions", key, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json, json!({"detail": "Invalid API key"}));
    }
    // A wrong key is refused before the body is even looked at.
    let r = server
        .call(Method::POST, "/public/sessions", None, Some("{not json"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();

    // Bearer works as well as X-API-Key.
    let bearer_header = format!("Bearer {KEY_A}");
    let path = format!("/public/sessions/{id}");
    let bearer = http_with(
        server.addr,
        Method::GET,
        &path,
        &[("authorization", &bearer_header)],
        None,
    )
    .await;
    assert_eq!(bearer.status, StatusCode::OK);

    // Tenant B sees nothing of tenant A's: 404, never 403.
    for (method, path) in [
        (Method::GET, format!("/public/sessions/{id}")),
        (Method::PATCH, format!("/public/sessions/{id}")),
        (Method::POST, format!("/public/sessions/{id}/terminate")),
        (Method::DELETE, format!("/public/sessions/{id}")),
    ] {
        let r = server.call(method, &path, Some(KEY_B), Some("{}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.json, json!({"detail": "Session not found"}));
    }
    let r = server.call(Method::GET, "/public/sessions", Some(KEY_B), None).await;
    assert_eq!(r.json, json!({"sessions": [], "total": 0}));
    assert_eq!(
        server.get(id).await.json["status"],
        "active",
        "B's attempts changed nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_the_contract_shape() {
    let server = TestServer::start().await;
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(r#"{"ttl": 3600, "metadata": {"purpose": "workflow-automation", "user": "john", "live_url": "x"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let s = r.json;
    let id = s["session_id"].as_str().unwrap();
    assert!(
        id.starts_with("sess_") && id.len() == 5 + 32 && id[5..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let cdp_url = s["cdp_url"].as_str().unwrap();
    assert!(
        cdp_url.starts_with(&format!("ws://{}/devtools/browser/{id}?token=", server.addr)),
        "{cdp_url}"
    );
    assert_eq!(s["screen_config"], json!({"width": 1280, "height": 720}));
    assert_eq!(s["status"], "active");
    assert_eq!(
        user_metadata(&s),
        json!({"purpose": "workflow-automation", "user": "john"}),
        "live_url is the broker's"
    );
    assert!(s["profile_id"].is_null() && s["persist_changes"].is_null());
    for field in ["created_at", "updated_at", "expires_at"] {
        assert!(s[field].as_str().unwrap().ends_with('Z'), "{field}");
    }
    let ttl = parse_time(&s["expires_at"])
        .duration_since(parse_time(&s["created_at"]))
        .unwrap();
    assert!((3600..=3601).contains(&ttl.as_secs()), "{ttl:?}");

    // The defaults: 600 s.
    let d = server.create(json!({})).await;
    let ttl = parse_time(&d["expires_at"])
        .duration_since(parse_time(&d["created_at"]))
        .unwrap();
    assert!((600..=601).contains(&ttl.as_secs()), "{ttl:?}");
    // GET answers the same object.
    assert_eq!(server.get(id).await.json, s);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let server = TestServer::start().await;
    let cases: Vec<(&str, StatusCode, Option<&str>)> = vec![
        ("{\"ttl\": ", StatusCode::BAD_REQUEST, None),
        ("not json at all", StatusCode::BAD_REQUEST, None),
        ("[1, 2]", StatusCode::UNPROCESSABLE_ENTITY, None),
        ("\"string\"", StatusCode::UNPROCESSABLE_ENTITY, None),
        (
            r#"{"ttl": 86401}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("TTL cannot exceed 86400 seconds (24 hours)"),
        ),
        (
            r#"{"ttl": 99999999999999999999999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("TTL cannot exceed 86400 seconds (24 hours)"),
        ),
        (r#"{"ttl": 0}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (r#"{"ttl": -1}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (r#"{"ttl": "600"}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (r#"{"ttl": 1.5}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (
            r#"{"screen_config": {"width": 50, "height": 50}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            r#"{"screen_config": {"width": 100000, "height": 720}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            r#"{"screen_config": {"width": 1280}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            r#"{"screen_config": "1280x720"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (r#"{"metadata": [1]}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (r#"{"metadata": "x"}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (r#"{"persist_changes": "yes"}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (
            r#"{"profile_id": "not-a-uuid"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (r#"{"profile_id": 5}"#, StatusCode::UNPROCESSABLE_ENTITY, None),
        (
            r#"{"profile_id": "550e8400-e29b-41d4-a716-446655440000"}"#,
            StatusCode::NOT_FOUND,
            Some("Browser profile not found"),
        ),
    ];
    for (body, status, detail) in &cases {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(body))
            .await;
        assert_eq!(r.status, *status, "{body} → {}", r.body);
        let got = r.json["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}: no detail in {}", r.body));
        assert!(!got.is_empty());
        if let Some(detail) = detail {
            assert_eq!(got, *detail, "{body}");
        }
    }
    // Metadata over 16 KiB, and a body over the 64 KiB limit.
    let big_meta = json!({"metadata": {"blob": "x".repeat(17 * 1024)}}).to_string();
    let r = server
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&big_meta))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let huge = json!({"metadata": {"blob": "x".repeat(200 * 1024)}}).to_string();
    let r = server
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&huge))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(r.json["detail"].as_str().unwrap().contains("too large"));

    // Unknown ids and routes.
    let r = server.get("sess_00000000000000000000000000000000").await;
    assert_eq!(
        (r.status, r.json),
        (StatusCode::NOT_FOUND, json!({"detail": "Session not found"}))
    );
    // Ids that climb out of the data directory's folders (to the token secret beside them,
    // or to /etc/passwd): unknown sessions, and nothing of those files in any answer.
    let secret = std::fs::read_to_string(server.data_dir.path().join("token_secret")).unwrap();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let root_line = passwd.lines().next().unwrap().to_owned();
    for id in [
        "../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "..%2Ftoken_secret",
        "%2E%2E%2Ftoken_secret",
        "..",
    ] {
        for suffix in [
            "",
            "/files",
            "/files/token_secret",
            "/recording",
            "/screenshot",
            "/files.zip",
        ] {
            let r = server
                .call(
                    Method::GET,
                    &format!("/public/sessions/{id}{suffix}"),
                    Some(KEY_A),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}{suffix}: {}", r.body);
            assert!(
                !r.body.contains(secret.trim()) && !r.body.contains(&root_line),
                "{id}{suffix} read outside: {}",
                r.body
            );
        }
    }
    let r = server.call(Method::PUT, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json["detail"].is_string());

    // Bad list queries.
    for query in ["status_filter=running", "limit=0", "limit=101", "limit=x", "offset=-1"] {
        let r = server
            .call(Method::GET, &format!("/public/sessions?{query}"), Some(KEY_A), None)
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
    }

    // Nothing of the above created a session or took a browser.
    let r = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(r.json["total"], 0);
    assert_eq!(server.broker.pool().free_slots(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_pages_and_counts() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = server.create(json!({"metadata": {"n": i}})).await;
        ids.push(s["session_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.terminate(&ids[0]).await.status, StatusCode::NO_CONTENT);

    let list = |q: &'static str| {
        let server = &server;
        async move {
            server
                .call(Method::GET, &format!("/public/sessions{q}"), Some(KEY_A), None)
                .await
                .json
        }
    };
    let all = list("").await;
    assert_eq!(all["total"], 3);
    let order: Vec<&str> = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![ids[2].as_str(), ids[1].as_str(), ids[0].as_str()],
        "newest first"
    );

    let active = list("?status_filter=active").await;
    assert_eq!(active["total"], 2);
    let ended = list("?status_filter=terminated").await;
    assert_eq!(ended["total"], 1);
    assert_eq!(ended["sessions"][0]["session_id"], ids[0].as_str());
    assert_eq!(list("?status_filter=expired").await["total"], 0);

    let page = list("?limit=1&offset=1").await;
    assert_eq!(page["total"], 3, "total counts every match, not the page");
    assert_eq!(page["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(page["sessions"][0]["session_id"], ids[1].as_str());
    let past_end = list("?offset=10").await;
    assert_eq!(
        (past_end["total"].clone(), past_end["sessions"].clone()),
        (json!(3), json!([]))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_extends_ttl_and_merges_metadata_while_active() {
    let server = TestServer::start().await;
    let s = server.create(json!({"ttl": 60, "metadata": {"a": 1, "b": 2}})).await;
    let id = s["session_id"].as_str().unwrap();
    let path = format!("/public/sessions/{id}");

    let r = server
        .call(
            Method::PATCH,
            &path,
            Some(KEY_A),
            Some(r#"{"ttl": 3600, "metadata": {"b": 3, "c": 4, "live_url": "evil"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(user_metadata(&r.json), json!({"a": 1, "b": 3, "c": 4}));
    let left = parse_time(&r.json["expires_at"])
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(3500), "{left:?}");
    assert_ne!(r.json["cdp_url"], s["cdp_url"], "the token follows the new expiry");

    for (body, status) in [
        (r#"{"ttl": 86401}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"metadata": 5}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("{oops", StatusCode::BAD_REQUEST),
    ] {
        let r = server.call(Method::PATCH, &path, Some(KEY_A), Some(body)).await;
        assert_eq!(r.status, status, "{body}");
    }
    assert_eq!(
        user_metadata(&server.get(id).await.json),
        json!({"a": 1, "b": 3, "c": 4}),
        "refused patches changed nothing"
    );

    server.terminate(id).await;
    let r = server
        .call(Method::PATCH, &path, Some(KEY_A), Some(r#"{"ttl": 10}"#))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.json["detail"].as_str().unwrap().contains("terminated"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_and_delete_end_sessions_and_free_browsers() {
    let server = TestServer::start().await;
    let s = server.create(json!({})).await;
    let id = s["session_id"].as_str().unwrap().to_owned();
    let session = server.broker.running_session(None, &id).unwrap();
    let port = session.upstream.authority.clone();
    assert_eq!(server.broker.pool().free_slots(), 3);

    assert_eq!(server.terminate(&id).await.status, StatusCode::NO_CONTENT);
    let got = server.get(&id).await.json;
    assert_eq!(got["status"], "terminated");
    assert_eq!(got["end_reason"], "terminated by request");
    let again = server.terminate(&id).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json, json!({"detail": "Session is already terminated"}));
    assert_eq!(server.broker.pool().free_slots(), 4, "the slot is free again");
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(&port).is_err()).await,
        "the browser is gone"
    );

    // DELETE: forceful on an active session, then the record is gone.
    let s = server.create(json!({})).await;
    let id = s["session_id"].as_str().unwrap().to_owned();
    let r = server
        .call(Method::DELETE, &format!("/public/sessions/{id}"), Some(KEY_A), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    assert_eq!(server.get(&id).await.status, StatusCode::NOT_FOUND);
    let r = server
        .call(Method::DELETE, &format!("/public/sessions/{id}"), Some(KEY_A), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(server.broker.pool().free_slots(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_broker_answers_503_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.max_sessions = 1;
        c.queue_timeout_ms = 300;
    })
    .await;
    let first = server.create(json!({})).await;
    let r = server
        .call(Method::POST, "/public/sessions", Some(KEY_A), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.json["detail"].as_str().unwrap().contains("No browser is available"));

    // A waiting create gets the slot as soon as one frees up.
    let waiting = {
        let addr = server.addr;
        tokio::spawn(async move { http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await })
    };
    // Once it waits for a slot (not before), the slot frees up.
    let metrics = &server.broker.metrics();
    assert!(
        eventually(Duration::from_secs(10), || metrics.queue_waiting.get() == 1).await,
        "the create waits for a slot"
    );
    server.terminate(first["session_id"].as_str().unwrap()).await;
    let r = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("cdpgate_queue_waits_total 2"), "{metrics}");
    assert!(metrics.contains("cdpgate_session_create_rejected_total 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let r = server.call(Method::GET, "/health", None, None).await;
    assert_eq!((r.status, r.json), (StatusCode::OK, json!({"status": "ok"})));
    let r = server.call(Method::GET, "/ready", None, None).await;
    assert_eq!((r.status, &r.json["status"]), (StatusCode::OK, &json!("ready")));
    server.create(json!({})).await;
    let r = server.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    for line in [
        "cdpgate_sessions_active 1",
        "cdpgate_sessions_created_total 1",
        "cdpgate_browser_launch_seconds_count",
        "cdpgate_session_create_seconds_bucket{le=\"+Inf\"} 1\n",
        "cdpgate_session_create_seconds_count 1\n",
        "cdpgate_proxy_messages_total{direction=\"to_browser\"}",
    ] {
        assert!(r.body.contains(line), "{line} missing from\n{}", r.body);
    }
    let r = server.call(Method::GET, "/nope", None, None).await;
    assert_eq!(
        (r.status, r.json),
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dari_python_client_works_against_the_broker() {
    let server = TestServer::start().await;
    let report = python_script("dari_sessions.py", &[&server.url(""), KEY_A]).await;
    assert_eq!(report["created_status"], "active");
    assert_eq!(report["screen_config"], json!({"width": 1920, "height": 1080}));
    assert_eq!(
        report["got_metadata"],
        json!({"purpose": "workflow-automation", "user": "john", "step": 2})
    );
    assert_eq!(report["listed_total"], 1);
    assert_eq!(report["after_terminate"], "terminated");
    assert_eq!(report["terminate_again_status"], 409);
    assert_eq!(report["terminate_again_message"], "Session is already terminated");
    assert_eq!(
        report["too_long_ttl_message"],
        "TTL cannot exceed 86400 seconds (24 hours)"
    );
    assert_eq!(report["bad_key_message"], "Invalid API key");
    assert_eq!(report["after_delete_status"], 404);
    server.stop().await;
}
