//! Run Single Action against a small site served here (a login form, the page behind it, a
//! page of controls), in real Chromium, with Puppeteer and dari-python on the same sessions.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "s3cret-Pa55!";

/// The test site: `/login` posts (by GET) to `/welcome`, which greets a right password.
fn site(path: &str) -> (String, String) {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(|v| v.replace('+', " ").replace("%21", "!"))
            .unwrap_or_default()
    };
    let page = match route {
        "/login" => r#"<html><head><title>Sign in</title></head><body>
            <h1>Log in</h1>
            <form action="/welcome" method="get">
              <label for="u">Username</label> <input id="u" name="username">
              <input type="password" name="password" placeholder="Password">
              <button id="go" type="submit">Sign in</button>
            </form></body></html>"#
            .to_owned(),
        "/welcome" if param("password") == PASSWORD => format!(
            "<html><head><title>Dashboard</title></head><body><h1>Welcome, {}</h1></body></html>",
            param("username")
        ),
        "/welcome" => "<html><head><title>Denied</title></head><body><h1>Wrong password</h1></body></html>".to_owned(),
        // The same step on two versions of a page: the Continue button moves.
        "/step" if param("v") == "2" => r#"<html><body><h1>Step</h1>
            <button id="next" onclick="document.getElementById('status').textContent='Cancel clicked'">Cancel</button>
            <button id="proceed" onclick="document.getElementById('status').textContent='Continue clicked'">Continue</button>
            <p id="status"></p></body></html>"#
            .to_owned(),
        // Two accounts, picked by a variable's value.
        "/accounts" => r#"<html><body><h1>Accounts</h1>
            <button onclick="document.getElementById('picked').textContent='alice'">Alice Anderson</button>
            <button onclick="document.getElementById('picked').textContent='bob'">Bob Brown</button>
            <p id="picked"></p></body></html>"#
            .to_owned(),
        "/step" => r#"<html><body><h1>Step</h1>
            <button id="next" onclick="document.getElementById('status').textContent='Continue clicked'">Continue</button>
            <p id="status"></p></body></html>"#
            .to_owned(),
        _ => r#"<html><head><title>Controls</title></head><body><h1>Controls</h1>
            <label>Country <select id="country"><option value="us">United States</option>
              <option value="ca">Canada</option></select></label>
            <label><input type="checkbox" id="news"> Newsletter</label>
            <input id="q" aria-label="Search" placeholder="Search…"
              onkeydown="if (event.key === 'Enter') document.getElementById('out').textContent = 'searched:' + this.value">
            <div id="hov" onmouseover="this.textContent = 'hovered'">Hover me</div>
            <button disabled>Locked</button>
            <button onclick="alert('Saved!'); document.getElementById('out').textContent = 'saved'">Save</button>
            <button onclick="const s = 'x'.repeat(4 << 20); for (let i = 0; i < 30; i++) alert(s); document.getElementById('out').textContent = 'flooded'">Flood</button>
            <p id="out"></p>
            <shadow-box></shadow-box>
            <script>customElements.define('shadow-box', class extends HTMLElement {
              connectedCallback() {
                const root = this.attachShadow({ mode: 'open' });
                root.innerHTML = '<div><button>Inside</button></div><button>Shadow action</button>';
                root.querySelectorAll('button')[1].onclick = () =>
                  document.getElementById('out').textContent = 'shadow clicked';
              }
            });</script>
            <iframe style='width: 400px; height: 120px; border: 5px solid black' srcdoc='<label for="n">Nickname</label>
              <input id="n"> <button onclick="parent.document.getElementById(&apos;out&apos;).textContent =
              &apos;framed:&apos; + document.getElementById(&apos;n&apos;).value">Frame submit</button>'></iframe>
            <a href='/login' target='_blank'>Open the login page</a>
            <a href='#end'>Jump to the end</a>
            <div style="height: 3000px"></div><p id="end">The end</p></body></html>"#
            .to_owned(),
    };
    (String::new(), page)
}

async fn run(server: &TestServer, body: Value) -> common::Response {
    server.run_action(KEY_A, &body).await
}

/// Runs an action on `sid` that must succeed; answers its `result`.
async fn ok(server: &TestServer, sid: &str, action: &str) -> String {
    let r = run(server, json!({"session_id": sid, "action": action})).await;
    assert_eq!(r.status, StatusCode::OK, "{action}: {}", r.body);
    assert_eq!(r.json["success"], true, "{action}: {}", r.body);
    assert_eq!(r.json["error"], Value::Null, "{action}: {}", r.body);
    r.json["result"].as_str().unwrap().to_owned()
}

fn url(site: SocketAddr, path: &str) -> String {
    format!("http://{site}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_runs_as_single_actions_and_puppeteer_sees_the_result() {
    let server = TestServer::start().await;
    let site = serve_pages(site).await;
    let session = server.create(json!({})).await;
    let sid = session["session_id"].as_str().unwrap();
    // A CDP client stays connected while the actions run.
    let mut client = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();

    let opened = ok(&server, sid, &format!("Go to {}", url(site, "/login"))).await;
    assert_eq!(opened, format!("Opened {}.", url(site, "/login")));
    let vars = json!({"user": "alice", "password": PASSWORD});
    let r = run(
        &server,
        json!({"session_id": sid, "action": "Type {{user}} into the Username field", "variables": vars}),
    )
    .await;
    assert_eq!(
        r.json["result"], "Typed 5 characters into the Username field.",
        "{}",
        r.body
    );
    assert_eq!(
        (r.json["credits"].as_u64(), r.json["used_cache"].as_bool()),
        (Some(0), Some(false))
    );
    // Found by its placeholder; the answer never repeats what was typed.
    let r = run(
        &server,
        json!({"session_id": sid, "action": "type {{password}} into the Password field", "variables": vars}),
    )
    .await;
    assert_eq!(r.json["success"], true, "{}", r.body);
    assert!(!r.body.contains(PASSWORD), "{}", r.body);

    let clicked = ok(&server, sid, "Click the Sign in button").await;
    assert!(
        clicked.starts_with("Clicked the Sign in button. The page is now at "),
        "{clicked}"
    );
    assert!(clicked.contains("/welcome?username=alice"), "{clicked}");
    assert_eq!(
        ok(&server, sid, "wait for the text \"Welcome\"").await,
        "The text \"Welcome\" appeared."
    );
    assert_eq!(ok(&server, sid, "get the text of the heading").await, "Welcome, alice");
    assert_eq!(ok(&server, sid, "What is the page title?").await, "Dashboard");

    // The CDP client kept working, and sees the tab where the actions left it.
    let targets = cdp_call(&mut client, 1, "Target.getTargets", json!({})).await;
    let urls: Vec<&str> = targets["result"]["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["url"].as_str())
        .collect();
    assert!(urls.iter().any(|u| u.contains("/welcome")), "{urls:?}");
    let seen = node("read_page.mjs", &[session["cdp_url"].as_str().unwrap(), "/welcome"]).await;
    assert_eq!(seen["heading"], "Welcome, alice", "{seen}");

    // Nothing on disk holds the password (no cache entry was asked for, and none holds values).
    let leaked = walk(server.data_dir.path())
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(PASSWORD)))
        .collect::<Vec<_>>();
    assert!(leaked.is_empty(), "{leaked:?}");
    server.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            // Browsers' own scratch directories hold what the page had (form history).
            if !path.ends_with("browsers") {
                files.extend(walk(&path));
            }
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_in_one_action_and_dari_python_runs_actions() {
    let server = TestServer::start().await;
    let site = serve_pages(site).await;
    let session = server.create(json!({})).await;
    let sid = session["session_id"].as_str().unwrap();
    let action = format!(
        "go to {}, type {{{{user}}}} into the Username field, type {{{{pw}}}} into the Password field \
         and click Sign in; then get the heading",
        url(site, "/login")
    );
    let r = run(
        &server,
        json!({"session_id": sid, "action": action, "variables": {"user": "bob", "pw": PASSWORD}}),
    )
    .await;
    assert_eq!(r.json["success"], true, "{}", r.body);
    assert_eq!(r.json["result"], "Welcome, bob");

    let output = finished(
        tokio::process::Command::new(python())
            .arg(repo_root().join("tests/py/dari_action.py"))
            .args([&server.url(""), KEY_A, sid, "get the current URL"]),
    )
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert!(
        answer["result"].as_str().unwrap().contains("/welcome?username=bob"),
        "{answer}"
    );
    for field in ["credits", "error", "used_cache", "set_cache", "cache_failed"] {
        assert!(answer.get(field).is_some(), "{field} missing: {answer}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_id_a_ten_minute_session_is_made() {
    let server = TestServer::start().await;
    let site = serve_pages(site).await;
    let r = run(
        &server,
        json!({
            "action": format!("open {} then read the title", url(site, "/login")),
            "screen_config": {"width": 1024, "height": 700},
        }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.json["success"].as_bool(), r.json["result"].as_str()),
        (Some(true), Some("Sign in"))
    );
    let sid = r.json["session_id"].as_str().unwrap().to_owned();

    let got = server.get(&sid).await.json;
    assert_eq!(got["status"], "active");
    assert_eq!(got["screen_config"], json!({"width": 1024, "height": 700}));
    let created = got["created_at"].as_str().unwrap();
    let expires = got["expires_at"].as_str().unwrap();
    let secs = |t: &str| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).unwrap();
    let ttl = secs(expires).duration_since(secs(created)).unwrap().as_secs_f64();
    assert!((599.0..=601.0).contains(&ttl), "ttl {ttl} s: {got}");
    // It goes on being usable, from where the action left it.
    assert_eq!(ok(&server, &sid, "get the URL").await, url(site, "/login"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_step_replays_and_a_changed_page_recovers() {
    let server = TestServer::start().await;
    let site = serve_pages(site).await;
    let sid = server.create(json!({})).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let click = |server, set_cache: bool| {
        run(
            server,
            json!({"session_id": sid, "action": "click the Continue button", "id": "continue", "set_cache": set_cache}),
        )
    };
    let status = async |server: &TestServer| ok(server, &sid, "get the text of css:#status").await;
    let flags = |r: &common::Response| {
        assert_eq!(r.json["success"], true, "{}", r.body);
        (
            r.json["used_cache"] == true,
            r.json["cache_failed"] == true,
            r.json["set_cache"] == true,
        )
    };

    ok(&server, &sid, &format!("go to {}", url(site, "/step?v=1"))).await;
    // set_cache false: nothing kept.
    assert_eq!(flags(&click(&server, false).await), (false, false, false));
    assert_eq!(flags(&click(&server, true).await), (false, false, true));
    assert_eq!(status(&server).await, "Continue clicked");

    ok(&server, &sid, &format!("go to {}", url(site, "/step?v=1"))).await;
    let replay = click(&server, true).await;
    assert_eq!(flags(&replay), (true, false, false));
    assert_eq!(replay.json["credits"], 0);
    assert_eq!(status(&server).await, "Continue clicked");

    // On the new page the cached path (#next) is the Cancel button: refused by its
    // fingerprint, the step is resolved afresh and the cache updated.
    ok(&server, &sid, &format!("go to {}", url(site, "/step?v=2"))).await;
    let started = Instant::now();
    assert_eq!(flags(&click(&server, true).await), (false, true, true));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status(&server).await, "Continue clicked");
    ok(&server, &sid, &format!("go to {}", url(site, "/step?v=2"))).await;
    assert_eq!(flags(&click(&server, true).await), (true, false, false));
    assert_eq!(status(&server).await, "Continue clicked");

    // The cache is the tenant's own: the other key's same id is a miss.
    let other = server
        .call(Method::POST, "/public/sessions", Some(KEY_B), Some("{}"))
        .await
        .json;
    let r = server
        .run_action(
            KEY_B,
            &json!({"session_id": other["session_id"], "action": format!("go to {}", url(site, "/step?v=2")), "id": "continue"}),
        )
        .await;
    assert_eq!(
        (r.json["success"].as_bool(), r.json["used_cache"].as_bool()),
        (Some(true), Some(false))
    );
    server.stop().await;
}

/// A step whose element is named by a variable is found again at every run: the cached
/// action with another value acts on that value's element, and nothing the cache keeps on
/// disk holds the value the first run matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_step_named_by_a_variable_follows_the_value() {
    let server = TestServer::start().await;
    let site = serve_pages(site).await;
    let sid = server.create(json!({})).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&server, &sid, &format!("go to {}", url(site, "/accounts"))).await;
    for (who, picked) in [
        ("Alice Anderson", "alice"),
        ("Bob Brown", "bob"),
        ("Alice Anderson", "alice"),
    ] {
        let body = json!({"session_id": sid, "action": "click {{who}}", "id": "pick", "set_cache": true,
            "variables": {"who": who}});
        let r = run(&server, body).await;
        assert_eq!(r.json["success"], true, "{}", r.body);
        assert_eq!(ok(&server, &sid, "get the text of css:#picked").await, picked, "{who}");
    }
    let mut stack = vec![server.data_dir.path().join("action-cache")];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(!text.contains("Alice") && !text.contains("Bob"), "{text}");
            }
        }
    }
    assert_eq!(files, 1, "the action's one cache entry");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primitives_act_on_a_page_of_controls() {
    let server = TestServer::start_with(|c| c.action_wait_ms = 1_500).await;
    let site = serve_pages(site).await;
    let sid = server.create(json!({})).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sid = sid.as_str();
    ok(&server, sid, &format!("go to {}", url(site, "/controls"))).await;

    assert_eq!(
        ok(&server, sid, "select \"Canada\" from the Country dropdown").await,
        "Selected \"Canada\" in the Country dropdown."
    );
    assert_eq!(ok(&server, sid, "get the text of css:#country").await, "Canada");
    assert_eq!(
        ok(&server, sid, "check the Newsletter checkbox").await,
        "Checked the Newsletter checkbox."
    );
    assert_eq!(
        ok(&server, sid, "check the Newsletter checkbox").await,
        "The Newsletter checkbox was already checked."
    );
    assert_eq!(ok(&server, sid, "uncheck Newsletter").await, "Unchecked Newsletter.");
    ok(&server, sid, "type hello into the Search box and press Enter").await;
    assert_eq!(ok(&server, sid, "get the text of #out").await, "searched:hello");
    ok(&server, sid, "hover over \"Hover me\"").await;
    assert_eq!(ok(&server, sid, "read the text of css:#hov").await, "hovered");
    // Inside a same-origin frame: found, typed into, clicked at the right place, replayed.
    assert_eq!(
        ok(&server, sid, "type Bo into the Nickname field").await,
        "Typed 2 characters into the Nickname field."
    );
    click_then_replay(&server, sid, "click Frame submit", "framed:Bo").await;
    assert!(ok(&server, sid, "read the page text").await.contains("Nickname"));

    // A link within the page: no load follows, and none is waited for.
    let started = Instant::now();
    let jumped = ok(&server, sid, "click the link Jump to the end").await;
    assert!(jumped.ends_with("/controls#end."), "{jumped}");
    // Waiting for a load would take the 30 s navigation timeout.
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(
        ok(&server, sid, "scroll to the bottom").await,
        "Scrolled to the bottom of the page."
    );
    assert_eq!(
        ok(&server, sid, "wait for \"The end\" to appear").await,
        "The text \"The end\" appeared."
    );

    // A dialog the page opens is accepted and reported.
    let saved = ok(&server, sid, "click Save").await;
    assert!(saved.contains("dialog") && saved.contains("Saved!"), "{saved}");
    assert_eq!(ok(&server, sid, "get the text of #out").await, "saved");
    // A page that opens dialogs in a loop, each 4 MiB: all accepted and counted, the
    // answer quotes a few, cut short (the broker keeps no more).
    let flooded = ok(&server, sid, "click Flood").await;
    assert!(
        flooded.contains("showed 30 dialog(s)") && flooded.contains("and 25 more"),
        "{}",
        &flooded[..flooded.len().min(300)]
    );
    assert!(
        flooded.len() < 2048,
        "the answer carries the dialogs: {} bytes",
        flooded.len()
    );
    assert_eq!(ok(&server, sid, "get the text of #out").await, "flooded");

    // Inside an open shadow root, found by text, then replayed from the cache by its path.
    click_then_replay(&server, sid, "click \"Shadow action\"", "shadow clicked").await;

    let shot = ok(&server, sid, "take a screenshot").await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1280, 720));

    // Failures of the action itself: 200, success false, an error a person can act on,
    // within the configured wait.
    for (action, says) in [
        ("click the Locked button", "stayed disabled for 1.5 s"),
        (
            "click the Nonexistent button",
            "No element matching the Nonexistent button appeared within 1.5 s",
        ),
        ("wait for the text \"never there\"", "did not appear within 1.5 s"),
        (
            "select Mars from the Country dropdown",
            "has no option \"Mars\"; its options are: United States, Canada",
        ),
        ("go to file:///etc/passwd", "Only http and https pages"),
        ("click css:#a[", "is not a valid CSS selector"),
        ("book me a flight to Paris", "is not understood"),
    ] {
        let started = Instant::now();
        let r = run(&server, json!({"session_id": sid, "action": action})).await;
        assert_eq!(r.status, StatusCode::OK, "{action}: {}", r.body);
        assert_eq!(r.json["success"], false, "{action}: {}", r.body);
        let error = r.json["error"].as_str().unwrap();
        assert!(error.contains(says), "{action}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{action} took {:?}",
            started.elapsed()
        );
    }

    // A link that opens a new tab: the action follows it, and so do the next ones.
    let opened = ok(&server, sid, "click the link Open the login page").await;
    assert!(
        opened.contains(&format!("The page is now at {}", url(site, "/login"))),
        "{opened}"
    );
    assert_eq!(ok(&server, sid, "get the title").await, "Sign in");
    server.stop().await;
}

/// Runs a click with an id twice on the page of controls: found, then replayed from the
/// cache; each time `#out` must say `expected`.
async fn click_then_replay(server: &TestServer, sid: &str, action: &str, expected: &str) {
    for used_cache in [false, true] {
        let r = run(server, json!({"session_id": sid, "action": action, "id": action})).await;
        let flags = (r.json["success"].as_bool(), r.json["used_cache"].as_bool());
        assert_eq!(flags, (Some(true), Some(used_cache)), "{action}: {}", r.body);
        assert_eq!(ok(server, sid, "get the text of #out").await, expected);
        // Reset the output for the next round (Save writes "saved").
        ok(server, sid, "click Save").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let sid = session["session_id"].as_str().unwrap();

    let r = run(
        &server,
        json!({"session_id": sid, "action": "type {{password}} into {{field}}", "variables": {"field": "Password"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .starts_with("Missing variable: password"),
        "{}",
        r.body
    );
    assert_eq!(r.json["code"], "missing_variable");

    let r = run(&server, json!({"session_id": "sess_nope", "action": "get the title"})).await;
    assert_eq!(
        (r.status, r.json["detail"].as_str()),
        (StatusCode::NOT_FOUND, Some("Session not found"))
    );
    // Another tenant's session does not exist for this key.
    let r = server
        .run_action(KEY_B, &json!({"session_id": sid, "action": "get the title"}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    for (body, status) in [
        ("{not json", StatusCode::BAD_REQUEST),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"action": ["x"]}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"action": "x", "variables": "a=b"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let r = server
            .call(
                Method::POST,
                "/public/single-actions/run-action",
                Some(KEY_A),
                Some(body),
            )
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let big = json!({"action": "x".repeat(100_000)}).to_string();
    let r = server
        .call(
            Method::POST,
            "/public/single-actions/run-action",
            Some(KEY_A),
            Some(&big),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = server
        .call(Method::POST, "/public/single-actions/run-action", None, Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = server
        .call(Method::GET, "/public/single-actions/run-action", Some(KEY_A), None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // An ended session: 409, and nothing was run.
    assert_eq!(server.terminate(sid).await.status, StatusCode::NO_CONTENT);
    let r = run(&server, json!({"session_id": sid, "action": "get the title"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.json["detail"].as_str().unwrap().contains("terminated"), "{}", r.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_a_session_run_in_turn_and_end_with_it() {
    let server = TestServer::start().await;
    let sid = server.create(json!({})).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let session = server.broker.running_session(None, &sid).unwrap();
    // An action is running once it holds the session's turn.
    let running = || async {
        assert!(
            eventually(Duration::from_secs(10), || session.actions.try_lock().is_err()).await,
            "the action never started"
        );
    };

    // Two at once: the second, sent while the first runs, waits for it.
    let first = async {
        let r = run(&server, json!({"session_id": sid, "action": "wait 1 second"})).await;
        (r, Instant::now())
    };
    let second = async {
        running().await;
        let r = run(&server, json!({"session_id": sid, "action": "get the URL"})).await;
        (r, Instant::now())
    };
    let ((first, first_done), (second, second_done)) = tokio::join!(first, second);
    assert_eq!(first.json["result"], "Waited 1 s.", "{}", first.body);
    assert_eq!(second.json["success"], true, "{}", second.body);
    assert!(first_done <= second_done, "the second finished before the first");

    // A long action does not outlive its session.
    let long = run(&server, json!({"session_id": sid, "action": "wait 30 seconds"}));
    let end = async {
        running().await;
        server.terminate(&sid).await
    };
    let started = Instant::now();
    let (long, ended) = tokio::join!(long, end);
    assert_eq!(ended.status, StatusCode::NO_CONTENT);
    assert_eq!(long.status, StatusCode::CONFLICT, "{}", long.body);
    assert!(long.json["detail"].as_str().unwrap().contains("ended"), "{}", long.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    server.stop().await;
}

/// Single actions on a context session: an auto-session asked to be one, then a login in
/// it, which a Puppeteer client of the session sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_run_on_a_context_session() {
    let server = TestServer::start_with(|c| c.pool_size = 0).await;
    let site = serve_pages(site).await;
    // A neighbour in the same shared browser, whose tab the actions must not pick.
    server.create(json!({"isolation": "context"})).await;
    let r = run(
        &server,
        json!({"action": format!("open {} then read the title", url(site, "/login")), "isolation": "context"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json["result"], "Sign in", "{}", r.body);
    let sid = r.json["session_id"].as_str().unwrap().to_owned();
    let got = server.get(&sid).await.json;
    assert_eq!(got["isolation"], "context", "{got}");
    assert_eq!(server.broker.shared().browsers().len(), 1, "both in one shared browser");
    let vars = json!({"user": "alice", "password": PASSWORD});
    for action in [
        "Type {{user}} into the Username field",
        "type {{password}} into the Password field",
    ] {
        let r = run(&server, json!({"session_id": sid, "action": action, "variables": vars})).await;
        assert_eq!(r.json["success"], true, "{action}: {}", r.body);
    }
    ok(&server, &sid, "Click the Sign in button").await;
    assert_eq!(ok(&server, &sid, "get the text of the heading").await, "Welcome, alice");
    let seen = node("read_page.mjs", &[got["cdp_url"].as_str().unwrap(), "/welcome"]).await;
    assert_eq!(seen["heading"], "Welcome, alice", "{seen}");
    server.stop().await;
}
