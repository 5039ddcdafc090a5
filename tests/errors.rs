//! Error answers, end to end: each is counted by whose fault it truly was, and what is
//! answered is what `docs/openapi.json` says (status, content type, body).

mod common;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// `cdpgate_errors_total` by origin, read from `/metrics` as an operator would.
async fn errors_by_origin(server: &TestServer) -> [u64; 3] {
    let text = server.call(Method::GET, "/metrics", None, None).await.body;
    ["client", "upstream", "internal"].map(|origin| {
        let prefix = format!("cdpgate_errors_total{{origin=\"{origin}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}")) as u64
    })
}

/// A browser that stops answering (frozen: the process is there, its answers are not)
/// fails the screenshot, and that is the browser's failure (`upstream`), not the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshot_the_browser_does_not_take_is_counted_as_upstream() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let screenshot = format!("/public/sessions/{id}/screenshot");
    let taken = server.call(Method::GET, &screenshot, Some(KEY_A), None).await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);

    // Chrome says which process is the browser.
    let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    let info = cdp_call(&mut ws, 1, "SystemInfo.getProcessInfo", json!({})).await;
    let browser = info["result"]["processInfo"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "browser")
        .and_then(|p| p["id"].as_u64())
        .expect("the browser process") as u32;

    let before = errors_by_origin(&server).await;
    kill(browser, libc::SIGSTOP);
    let stalled = server.call(Method::GET, &screenshot, Some(KEY_A), None).await;
    kill(browser, libc::SIGCONT);
    assert_eq!(stalled.status, StatusCode::BAD_GATEWAY, "{}", stalled.body);
    // Whether the connection or the capture ran out of time first, the browser failed.
    let detail = stalled.json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("The screen could not be taken") || detail == "The session's browser is not reachable",
        "{}",
        stalled.body
    );
    let after = errors_by_origin(&server).await;
    assert_eq!(
        (after[0] - before[0], after[1] - before[1], after[2] - before[2]),
        (0, 1, 0),
        "(client, upstream, internal) errors counted for the frozen browser's screenshot"
    );
    // Thawed, it answers again: the session was never ended over it.
    let taken = server.call(Method::GET, &screenshot, Some(KEY_A), None).await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);
    server.stop().await;
}

/// The content types `docs/openapi.json` lists for `status` of `method path`.
fn documented_types(path: &str, method: &str, status: StatusCode) -> Vec<String> {
    let doc: Value = serde_json::from_str(cdpgate::http::router::OPENAPI).unwrap();
    let answer = &doc["paths"][path][method]["responses"][status.as_str()];
    assert!(answer.is_object(), "{method} {path} documents no {status}");
    answer["content"]
        .as_object()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default()
}

/// A JSON error body as the document's `Error` schema has it.
fn is_error_body(body: &Value) -> bool {
    let Some(object) = body.as_object() else {
        return false;
    };
    object["detail"].is_string()
        && object
            .keys()
            .all(|k| k == "detail" || (k == "code" && object[k].is_string()))
}

/// The live view's refusals answer what the document says: the page with a page, its
/// socket and recording with the API's JSON error (or a page, to a browser asking for one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_view_refusals_are_what_the_api_document_says() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let live_token = session["metadata"]["live_url"]
        .as_str()
        .unwrap()
        .split_once("token=")
        .unwrap()
        .1;
    let cdp_token = session["cdp_url"].as_str().unwrap().split_once("token=").unwrap().1;
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let browser = [("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
    let check = |path: &'static str, r: &Response, status: StatusCode, html: bool| {
        assert_eq!(r.status, status, "{path}: {}", r.body);
        let answered = r.headers["content-type"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let listed = documented_types(path, "get", status);
        assert!(
            listed.contains(&answered),
            "{path} {status}: answered {answered}, documented {listed:?}"
        );
        if html {
            assert_eq!(answered, "text/html", "{path} {status}");
            assert!(r.body.contains("<p id=\"message\">"), "{}", r.body);
        } else {
            assert_eq!(answered, "application/json", "{path} {status}");
            assert!(is_error_body(&r.json), "{path} {status}: {}", r.body);
        }
    };

    for (token, why) in [("forged.token.here", "forged"), (cdp_token, "a CDP token")] {
        let socket = format!("/live/{id}/cdp?token={token}");
        let r = http_with(server.addr, Method::GET, &socket, &upgrade, None).await;
        check("/live/{session_id}/cdp", &r, StatusCode::UNAUTHORIZED, false);
        assert!(
            r.json["detail"].as_str().unwrap().contains("not valid"),
            "{why}: {}",
            r.body
        );
        let r = http_with(server.addr, Method::GET, &socket, &browser, None).await;
        check("/live/{session_id}/cdp", &r, StatusCode::UNAUTHORIZED, true);
        let recording = format!("/live/{id}/recording?token={token}");
        let r = server.call(Method::GET, &recording, None, None).await;
        check("/live/{session_id}/recording", &r, StatusCode::UNAUTHORIZED, false);
        let r = server
            .call(Method::GET, &format!("/live/{id}?token={token}"), None, None)
            .await;
        check("/live/{session_id}", &r, StatusCode::UNAUTHORIZED, true);
    }
    // A good link of a session that has ended.
    assert!(server.terminate(id).await.status.is_success());
    let socket = format!("/live/{id}/cdp?token={live_token}");
    let r = http_with(server.addr, Method::GET, &socket, &upgrade, None).await;
    check("/live/{session_id}/cdp", &r, StatusCode::GONE, false);
    let r = server
        .call(Method::GET, &format!("/live/{id}?token={live_token}"), None, None)
        .await;
    check("/live/{session_id}", &r, StatusCode::GONE, true);
    let r = server
        .call(
            Method::GET,
            &format!("/live/{id}/recording?token={live_token}"),
            None,
            None,
        )
        .await;
    check("/live/{session_id}/recording", &r, StatusCode::NOT_FOUND, false);
    server.stop().await;
}
