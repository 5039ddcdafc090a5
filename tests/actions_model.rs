//! The model-driven executor against a scripted stand-in that speaks the chat-completions
//! protocol with tool calls. In its own test binary: it sets the key's environment variable.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const PASSWORD: &str = "m0del-never-sees-this";
const MODEL_KEY: &str = "test-model-key-123";

/// A login form that checks the password in the page (the model must not see it in a URL).
fn site(path: &str) -> (String, String) {
    let page = if let Some(user) = path.strip_prefix("/welcome?username=") {
        format!("<html><head><title>Dashboard</title></head><body><h1>Welcome, {user}</h1></body></html>")
    } else {
        format!(
            r#"<html><head><title>Sign in</title></head><body><h1>Log in</h1>
            <form onsubmit="event.preventDefault(); location.href = this.password.value === '{PASSWORD}'
                ? '/welcome?username=' + this.username.value : '/denied'">
              <label for="u">Username</label> <input id="u" name="username">
              <input type="password" name="password" placeholder="Password">
              <button type="submit">Sign in</button>
            </form></body></html>"#
        )
    };
    (String::new(), page)
}

/// Requests the stand-in received: headers (lower-cased) and the JSON body.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// The element number of the line `[n] <role> "<name>"` in a snapshot.
fn element(snapshot: &str, role: &str, name: &str) -> u64 {
    let wanted = format!("] {role} \"{name}\"");
    let line = snapshot
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("no {role} {name} in:\n{snapshot}"));
    line[1..line.find(']').unwrap()].parse().unwrap()
}

fn tool_call(id: &str, name: &str, arguments: Value) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments.to_string()}})
}

/// What the scripted model answers to a conversation.
fn answer(request: &Value) -> Value {
    let messages = request["messages"].as_array().unwrap();
    let instruction = messages[1]["content"].as_str().unwrap();
    let last = messages.last().unwrap()["content"].as_str().unwrap_or("");
    let message = if instruction.contains("impossible") {
        json!({"role": "assistant", "content": null, "tool_calls": [
            tool_call("c1", "fail", json!({"reason": "there is no such thing on this page"}))]})
    } else if messages.len() == 2 {
        json!({"role": "assistant", "content": null, "tool_calls": [
            tool_call("c1", "type_text", json!({"element": element(last, "textbox", "username"), "text": "{{user}}"})),
            tool_call("c2", "type_text", json!({"element": element(last, "textbox", "password"), "text": "{{password}}"})),
            tool_call("c3", "click", json!({"element": element(last, "button", "sign in")})),
        ]})
    } else {
        // The snapshot after the tools shows the page behind the form.
        let heading = last.lines().find(|l| l.starts_with("Welcome")).unwrap_or("no greeting");
        // Arguments as an object, as some compatible servers send them.
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c4", "type": "function", "function": {"name": "done", "arguments": {"result": format!("Logged in: {heading}")}}}]})
    };
    json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
}

async fn stand_in_model() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut stream, &mut Vec::new()).await else {
                    return;
                };
                let request: Value = serde_json::from_slice(&body).unwrap();
                let reply = answer(&request).to_string();
                log.lock().unwrap().push((head, request));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_performs_tool_calls_is_charged_and_then_cached() {
    // The only test of this binary: nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("CDPGATE_TEST_MODEL_KEY", MODEL_KEY)
    };
    let (model, seen) = stand_in_model().await;
    let server = TestServer::start_with(|c| {
        c.model_url = format!("http://{model}/v1/chat/completions");
        c.model_name = "stand-in-model".into();
        c.model_api_key_env = "CDPGATE_TEST_MODEL_KEY".into();
    })
    .await;
    let site = serve_pages(site).await;
    let sid = server.create(json!({})).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = async |body: Value| server.run_action(KEY_A, &body).await;
    let go_to_login = json!({"session_id": sid, "action": format!("go to http://{site}/login")});
    assert_eq!(run(go_to_login.clone()).await.json["success"], true);

    // The interpreter does not know "log me in": the model does it.
    let login = json!({
        "session_id": sid,
        "action": "Log me in with my account",
        "id": "login-by-model",
        "variables": {"user": "alice", "password": PASSWORD},
    });
    let r = run(login.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json["success"], true, "{}", r.body);
    assert_eq!(r.json["result"], "Logged in: Welcome, alice");
    assert_eq!(
        (r.json["credits"].as_u64(), r.json["set_cache"].as_bool()),
        (Some(2), Some(true))
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        for (head, body) in seen.iter() {
            assert!(head.starts_with("post /v1/chat/completions "), "{head}");
            assert!(head.contains(&format!("authorization: bearer {MODEL_KEY}")), "{head}");
            assert_eq!(body["model"], "stand-in-model");
            assert!(
                body["tools"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["function"]["name"] == "click")
            );
            // Values stay with the broker: the model sees only the names.
            assert!(!body.to_string().contains(PASSWORD), "{body}");
        }
        let system = seen[0].1["messages"][0]["content"].as_str().unwrap();
        assert!(system.contains("password, user"), "{system}");
    }

    // Again with the same id: replayed, no model call, no credit.
    assert_eq!(run(go_to_login).await.json["success"], true);
    let r = run(login).await;
    assert_eq!(r.json["success"], true, "{}", r.body);
    assert_eq!(
        (r.json["used_cache"].as_bool(), r.json["credits"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    let heading = run(json!({"session_id": sid, "action": "get the text of the heading"})).await;
    assert_eq!(heading.json["result"], "Welcome, alice");

    // The model gives up: a failure with its reason, charged for the call.
    let r = run(json!({"session_id": sid, "action": "do the impossible"})).await;
    assert_eq!(r.json["success"], false);
    assert_eq!(r.json["credits"], 1);
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("there is no such thing on this page"),
        "{}",
        r.body
    );
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_single_action_model_calls_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cdpgate_single_action_cache_hits_total 1\n"),
        "{metrics}"
    );
    // Six actions answered (two openings, two logins, a read, the impossible one).
    assert!(metrics.contains("cdpgate_single_action_seconds_count 6\n"), "{metrics}");
    assert!(metrics.contains("cdpgate_single_actions_failed_total 1\n"), "{metrics}");
    server.stop().await;
}
