//! `docs/API.md` against the router: every documented endpoint exists, every route is
//! documented, and a real broker answers each documented endpoint with something other
//! than the router's own "Not Found" or "Method Not Allowed".

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_endpoint_answers() {
    // With the operator's endpoints on (they are unknown without an admin key).
    let server = TestServer::start_with(|c| c.admin_key = "admin-key-0123456789".into()).await;
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
    }
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
