//! `docs/API.md` against the router: every documented endpoint exists, every route is
//! documented, and a real broker answers each documented endpoint with something other
//! than the router's own "Not Found" or "Method Not Allowed", and never with a `5xx`.

mod common;

use std::collections::BTreeSet;

use common::*;
use hyper::{Method, StatusCode};

/// (method, path) pairs of the endpoint table in `docs/API.md`.
fn documented() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(repo_root().join("docs/API.md")).expect("docs/API.md");
    let table = doc
        .split("## Endpoints")
        .nth(1)
        .expect("an Endpoints section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut pairs = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (methods, path) = (cells[1], cells[2].trim_matches('`'));
        for method in methods.split_whitespace() {
            pairs.insert((method.trim_matches('`').to_owned(), path.to_owned()));
        }
    }
    pairs
}

fn routed() -> BTreeSet<(String, String)> {
    cdpgate::http::router::ROUTES
        .iter()
        .flat_map(|r| r.methods.iter().map(|m| (m.to_string(), r.path.to_owned())))
        .collect()
}

#[test]
fn the_endpoint_table_is_the_route_table() {
    let (doc, code) = (documented(), routed());
    assert!(doc.len() > 20, "the table was read: {doc:?}");
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let unrouted: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/API.md: {undocumented:?}"
    );
    assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
}

/// (method, path) pairs of `docs/openapi.json`.
fn in_openapi() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(cdpgate::http::router::OPENAPI).expect("valid JSON");
    let mut pairs = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys().filter(|k| *k != "parameters") {
            pairs.insert((method.to_uppercase(), path.clone()));
        }
    }
    pairs
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_is_the_route_table() {
    let (doc, code) = (in_openapi(), routed());
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let unrouted: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}"
    );
    assert!(unrouted.is_empty(), "in docs/openapi.json but not routed: {unrouted:?}");
    let validator = repo_root().join("target/test-venv/bin/openapi-spec-validator");
    let out = finished(tokio::process::Command::new(&validator).arg(repo_root().join("docs/openapi.json"))).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Served as it is kept, with this broker's own TTL ceiling.
    let server = TestServer::start_with(|c| c.max_ttl = 3600).await;
    let served = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.headers["content-type"], "application/json");
    assert_eq!(
        served.json["paths"],
        serde_json::from_str::<serde_json::Value>(cdpgate::http::router::OPENAPI).unwrap()["paths"]
    );
    assert_eq!(
        served.json["components"]["schemas"]["NewSession"]["properties"]["ttl"]["maximum"],
        3600
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_endpoint_answers() {
    // With the operator's endpoints on (they are unknown without an admin key).
    let server = TestServer::start_with(|c| c.admin_key = "admin-key-0123456789".into()).await;
    let mut answered = 0;
    for (method, path) in documented() {
        let path = path
            .replace("{session_id}", "sess_00000000000000000000000000000000")
            .replace("{profile_id}", "550e8400-e29b-41d4-a716-446655440000")
            .replace("{target_id}", "E2B5C1A9D7F0431B8C0E5D2A3B4C5D6E");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = server.call(method.clone(), &path, Some(KEY_A), Some("{}")).await;
        let routers_not_found = r.status == StatusCode::NOT_FOUND && r.body == r#"{"detail":"Not Found"}"#;
        assert!(
            !routers_not_found && r.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        // An unknown session or profile, an empty body: the client's fault, never ours.
        assert!(!r.status.is_server_error(), "{method} {path}: {} {}", r.status, r.body);
        answered += 1;
    }
    assert!(answered > 20, "the endpoint table was read: {answered}");
    // And the router's own answers, for contrast.
    let r = server
        .call(Method::GET, "/public/nothing-here", Some(KEY_A), None)
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#)
    );
    let r = server.call(Method::PUT, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}
