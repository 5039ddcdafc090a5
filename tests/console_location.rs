//! The console patch (which keeps a client's `Runtime.enable` out of a page's sight) leaves
//! console messages where the page logged them: Puppeteer's and Playwright's `location()`
//! on process and context sessions, and the broker's own `capture_console`, name the page's
//! line exactly as against a plain Chromium the test launches; the page's
//! `Error.prepareStackTrace` is not run by logging an `Error`; and the wrapped console
//! methods read as the plain Chromium's.

mod common;

use common::*;
use hyper::Method;
use serde_json::{Value, json};

/// Logs from known places: `console.log` at line 2, `console.warn` at line 3 (0-based),
/// each call's method name at column 10.
const LOG_JS: &str = "// Logs from known places (tests/console_location.rs).
function logBoth() {
  console.log('x', new Error('e'));
  console.warn({ a: 1 });
}
logBoth();
";

fn route(path: &str) -> (String, String) {
    if path == "/log.js" {
        (String::new(), LOG_JS.to_owned())
    } else {
        (
            String::new(),
            "<!doctype html><title>console</title><script src=\"/log.js\"></script>".to_owned(),
        )
    }
}

/// Each message's place as the client tells it.
fn places(report: &Value) -> Vec<Value> {
    report["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {report}"))
        .iter()
        .map(|m| json!([m["url"], m["lineNumber"], m["columnNumber"]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_messages_keep_the_pages_location_and_hide_the_runtime() {
    assert_tools_installed();
    let site = serve_pages(route).await;
    let page = format!("http://{site}/console.html");
    let script = format!("http://{site}/log.js");
    let server = TestServer::start().await;
    let mut failures = Vec::new();
    for client in ["puppeteer", "playwright"] {
        // Without the broker: where the messages are, and the tell the patch hides.
        let plain = node("console_location.mjs", &[client, "launch", &page]).await;
        assert_eq!(
            places(&plain),
            vec![json!([script, 2, 10]), json!([script, 3, 10])],
            "{client} against a plain Chromium: {plain}"
        );
        assert_eq!(plain["ran"], json!(true), "the probe sees a plain Chromium's Runtime");
        for isolation in ["process", "context"] {
            let session = server
                .create(json!({"isolation": isolation, "capture_console": true}))
                .await;
            let id = session["session_id"].as_str().unwrap().to_owned();
            let endpoint = session["cdp_url"].as_str().unwrap();
            let seen = node("console_location.mjs", &[client, endpoint, &page]).await;
            let what = format!("{client} on a {isolation} session");
            if places(&seen) != places(&plain) {
                failures.push(format!("locations with {what}: {:?}", places(&seen)));
            }
            if seen["messages"] != plain["messages"] {
                failures.push(format!("messages with {what}: {}", seen["messages"]));
            }
            if seen["ran"] != json!(false) {
                failures.push(format!("Error.prepareStackTrace ran for a console call with {what}"));
            }
            for key in ["kept", "natives", "context", "toStringItself"] {
                if seen[key] != plain[key] {
                    failures.push(format!("{key} with {what}: {} (plain: {})", seen[key], plain[key]));
                }
            }
            // The broker's own capture names the page's line (1-based) too.
            let mut entries = Vec::new();
            for _ in 0..100 {
                let logs = server
                    .call(Method::GET, &format!("/public/sessions/{id}/logs"), Some(KEY_A), None)
                    .await;
                entries = logs.json["entries"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e["kind"] == "console" && e["url"] == json!(script))
                    .map(|e| json!([e["level"], e["url"], e["line"], e["column"]]))
                    .collect();
                if entries.len() >= 2 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let expected = [json!(["log", script, 3, 11]), json!(["warning", script, 4, 11])];
            if entries.get(..2) != Some(&expected[..]) {
                failures.push(format!("capture_console with {what}: {entries:?}"));
            }
            server.terminate(&id).await;
        }
    }
    server.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
