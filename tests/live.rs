//! Live view: a real headless Chromium opens `live_url` and watches and drives the session
//! while Puppeteer automates it.

mod common;

use std::net::SocketAddr;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;

/// `/first`: a plain page. `/form`: a button that counts clicks and a form that records
/// what was submitted.
async fn start_pages() -> SocketAddr {
    serve_pages(|path| {
        let page = if path == "/form" {
            "<html><head><title>form</title></head><body style=\"font-size:24px\">\
             <button id=\"press\" style=\"width:200px;height:80px\" onclick=\"window.clicks=(window.clicks||0)+1\">Press</button>\
             <form onsubmit=\"event.preventDefault(); window.submitted=document.getElementById('name').value\">\
             <input id=\"name\" style=\"width:300px;height:40px\"></form></body></html>"
        } else {
            "<html><head><title>first</title></head><body style=\"background:#fc0\"><h1>First page</h1></body></html>"
        };
        (String::new(), page.to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_watches_and_drives_the_session() {
    let server = TestServer::start().await;
    let pages = start_pages().await;
    let session = server
        .create(json!({"screen_config": {"width": 1024, "height": 640}}))
        .await;
    let id = session["session_id"].as_str().unwrap();
    let live = session["metadata"]["live_url"].as_str().unwrap();
    let read_only = session["metadata"]["live_url_read_only"].as_str().unwrap();
    assert!(
        live.starts_with(&format!("http://{}/live/{id}?token=", server.addr)),
        "{live}"
    );
    assert!(!live.contains(session["cdp_url"].as_str().unwrap().split("token=").nth(1).unwrap()));

    let seen = node(
        "live_view.mjs",
        &[
            session["cdp_url"].as_str().unwrap(),
            live,
            read_only,
            &format!("http://{pages}"),
            &server.url(""),
            KEY_A,
            id,
        ],
    )
    .await;
    eprintln!("live view measurements: {seen}");
    assert!(
        seen["firstFrameMs"].as_u64().unwrap() < 2000,
        "a first frame within two seconds: {seen}"
    );
    assert_eq!(seen["followedNavigation"], true);
    assert_eq!(seen["clicks"], 1, "the click reached the button: {seen}");
    assert_eq!(
        seen["typed"], "alice",
        "typing, Backspace and Enter reached the input: {seen}"
    );
    assert_eq!(seen["followedNewTab"], true);
    assert_eq!(seen["tabButtons"], 2, "both tabs are listed: {seen}");
    assert_eq!(seen["switchedBack"], true);
    assert_eq!(seen["clicksAfterReadOnly"], 1, "the read-only view forwarded nothing");
    assert_eq!(seen["readOnlyMode"], "view only");
    assert_eq!(seen["endedShown"], true);
    assert_eq!(seen["endedMessage"], "This session was terminated.");

    // An ended session's link, and forged or mis-scoped tokens, get readable pages.
    let path = live.split_once(&server.addr.to_string()).unwrap().1;
    let r = server.call(Method::GET, path, None, None).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert!(r.body.contains("This session has ended."), "{}", r.body);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let cdp_token = session["cdp_url"].as_str().unwrap().split("token=").nth(1).unwrap();
    for bad in ["forged.token.here", cdp_token] {
        let r = server
            .call(Method::GET, &format!("/live/{id}?token={bad}"), None, None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.contains("not valid"), "{}", r.body);
    }
    server.stop().await;
}
