//! The MCP server at `/mcp`, driven by the official Python SDK over Streamable HTTP against
//! a local login page on real Chromium (log in by snapshot references, read the result as
//! markdown, a PNG of the right size, a second key that sees nothing), and its transport
//! fed hostile messages by hand: each answered with a JSON-RPC or HTTP error that names
//! it, nothing changed.

mod common;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// The local site: a login form (a GET form, so the route sees the fields) and its answer.
fn login_site(path: &str) -> (String, String) {
    if path == "/invoice.txt" {
        let headers = "content-disposition: attachment; filename=\"invoice.txt\"\r\n".to_owned();
        return (headers, "Invoice 42: 3 gates, paid.".to_owned());
    }
    let page = if path.starts_with("/welcome?user=alice&password=s3cret") {
        "<html><head><title>Account</title></head><body><main><h1>Welcome, alice</h1>\
         <p>You are signed in to the gate's test site, where the orders of the week wait \
         for you. <a href='/orders'>See your orders</a>.</p>\
         <p><a href='/invoice.txt'>Download your invoice</a></p>\
         <select id='size' aria-label='Size'><option value='s'>Small</option><option value='l'>Large</option></select>\
         </main></body></html>"
    } else if path.starts_with("/welcome") {
        "<html><body><h1>Wrong password</h1></body></html>"
    } else {
        "<html><head><title>Sign in</title></head><body><h1>Sign in</h1>\
         <form action='/welcome' method='get'>\
         <label for='u'>Username</label> <input id='u' name='user'>\
         <label for='p'>Password</label> <input id='p' name='password' type='password'>\
         <button type='submit'>Log in</button></form></body></html>"
    };
    (String::new(), page.to_owned())
}

async fn drive(server: &TestServer, site: &str, session: &str, step: &str) -> Value {
    let url = server.url("/mcp");
    python_script("mcp_drive.py", &[&url, KEY_A, KEY_B, site, session, step]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_logs_in_by_references_and_a_second_key_sees_nothing() {
    let server = TestServer::start().await;
    let site = format!("http://{}", serve_pages(login_site).await);
    let a = drive(&server, &site, "-", "first").await;

    assert_eq!(a["protocol"], "2025-11-25", "{a}");
    let tools: Vec<&str> = a["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "create_session",
        "end_session",
        "list_sessions",
        "navigate",
        "snapshot",
        "click",
        "type",
        "select",
        "press",
        "scroll",
        "screenshot",
        "markdown",
        "run_action",
        "list_files",
        "get_file",
        "live_view_url",
    ] {
        assert!(tools.contains(&t), "{t} missing from {tools:?}");
    }
    assert_eq!(a["schemas_are_objects"], true);
    let snap = a["login_snapshot"].as_str().unwrap();
    assert!(snap.contains("heading \"Sign in\" [level=1]"), "{snap}");
    // The password is typed but never shown back.
    let typed = a["typed_snapshot"].as_str().unwrap();
    assert!(typed.contains("value=\"alice\""), "{typed}");
    assert!(!typed.contains("s3cret"), "{typed}");
    let md = a["markdown"].as_str().unwrap();
    assert!(md.contains("# Welcome, alice"), "{md}");
    assert!(md.contains("[See your orders]("), "{md}");
    assert_eq!(a["png_magic"], true);
    assert_eq!(a["png_size"], json!([800, 600]));
    assert_eq!(a["png_mime"], "image/png");
    let sid = a["session_id"].as_str().unwrap().to_owned();
    assert_eq!(a["a_lists"], json!([sid]));
    assert_eq!(a["live_view"], true);
    // A file the page downloaded, fetched through the tools.
    let invoice = &a["invoice"];
    assert_eq!(invoice["resource"]["text"], "Invoice 42: 3 gates, paid.", "{a}");
    assert_eq!(invoice["listed"]["name"], "invoice.txt");
    assert_eq!(invoice["listed"]["kind"], "download");
    assert!(a["selected"].as_str().unwrap().contains("Large"), "{a}");
    let errors = a["tool_errors"].as_object().unwrap();
    assert_eq!(errors.len(), 8);
    for (call, answer) in errors {
        assert_eq!(answer[0], true, "{call} was not a tool error: {answer}");
        assert!(!answer[1].as_str().unwrap().is_empty(), "{call}");
    }
    let said = |needle: &str| errors.iter().any(|(_, a)| a[1].as_str().unwrap().contains(needle));
    assert!(said("take a new snapshot"), "{errors:?}");
    assert!(said("http or https"), "{errors:?}");
    assert!(said("unknown key"), "{errors:?}");
    assert!(said("unknown argument \"extra\""), "{errors:?}");
    assert!(a["unknown_tool"].as_str().unwrap().contains("Unknown tool"), "{a}");
    assert_eq!(a["still_there"], true);

    // The references live in the broker, not in the page: a page script finds no trace
    // of them on the welcome page the agent took snapshots of and acted on.
    let record = server.get(&sid).await.json;
    let mut cdp = CdpClient::connect(&record).await;
    let (target, _) = cdp.pages().await.remove(0);
    let page = cdp.attach(&target).await;
    let at = cdp.eval(&page, "location.pathname").await;
    assert_eq!(at, "/welcome", "the page the agent acted on");
    let traces = cdp
        .eval(
            &page,
            "[...document.querySelectorAll('*')].flatMap((e) => [...e.attributes]).filter((a) => /cdpgate/i.test(a.name + a.value) || a.name.startsWith('data-')).length + (document.documentElement.outerHTML.includes('cdpgate') ? 1000 : 0) + Object.keys(window).filter((k) => /snapshot|cdpgate/i.test(k)).length * 100",
        )
        .await;
    assert_eq!(traces, json!(0), "the page sees the broker's references");
    drop(cdp);

    // An MCP session is an ordinary one: the API lists it for key A.
    let listed = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(listed.json["sessions"][0]["session_id"], sid.as_str());

    // Key B sees none of it and can end none of it.
    let b = drive(&server, &site, &sid, "second").await;
    assert_eq!(b["b_lists"], json!([]), "{b}");
    for tool in ["end_session", "snapshot", "screenshot", "live_view_url", "list_files"] {
        assert_eq!(b[format!("b_{tool}")][0], true, "{tool}: {b}");
    }
    assert_eq!(server.broker.active_sessions(), 1, "key B ended key A's session");

    let end = drive(&server, &site, &sid, "end").await;
    assert_eq!(end["ended"][0], false, "{end}");
    assert_eq!(end["active_after"], 0);
    assert_eq!(server.broker.active_sessions(), 0);
    let got = server.get(&sid).await;
    assert_eq!(got.json["status"], "terminated");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_logs_in_and_a_second_key_sees_nothing() {
    let server = TestServer::start().await;
    let site = format!("http://{}", serve_pages(login_site).await);
    let url = server.url("/mcp");
    let r = node("mcp_drive.mjs", &[&url, KEY_A, KEY_B, &site]).await;
    assert_eq!(r["protocol"], "2025-11-25", "{r}");
    assert_eq!(r["tools"].as_array().unwrap().len(), 16, "{r}");
    assert!(r["markdown"].as_str().unwrap().contains("# Welcome, alice"), "{r}");
    assert_eq!(r["b_lists"], json!([]), "{r}");
    assert_eq!(r["b_end"][0], true, "{r}");
    assert_eq!(r["active_after"], 0, "{r}");
    assert_eq!(server.broker.active_sessions(), 0);
    server.stop().await;
}

async fn post(server: &TestServer, key: Option<&str>, session: Option<&str>, body: &str) -> Response {
    let mut headers = vec![("accept", "application/json, text/event-stream")];
    if let Some(k) = key {
        headers.push(("authorization", k));
    }
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    http_with(server.addr, Method::POST, "/mcp", &headers, Some(body)).await
}

fn init_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_refuses_hostile_messages_and_changes_nothing() {
    let server = TestServer::start().await;
    let bearer_a = format!("Bearer {KEY_A}");
    let bearer_b = format!("Bearer {KEY_B}");
    let (a, b) = (Some(bearer_a.as_str()), Some(bearer_b.as_str()));

    // No key, a wrong key: 401 before anything is read.
    assert_eq!(
        post(&server, None, None, &init_body()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&server, Some("Bearer nope"), None, &init_body()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The broker's usual X-API-Key works as well as the Bearer token.
    let by_header = http_with(
        server.addr,
        Method::POST,
        "/mcp",
        &[("x-api-key", KEY_A)],
        Some(&init_body()),
    )
    .await;
    assert_eq!(by_header.status, StatusCode::OK);

    let init = post(&server, a, None, &init_body()).await;
    assert_eq!(init.status, StatusCode::OK);
    assert_eq!(init.json["result"]["protocolVersion"], "2025-06-18");
    let sid = init.headers["mcp-session-id"].to_str().unwrap().to_owned();
    // A revision the server does not speak: it answers its newest.
    let old = post(&server, a, None, &init_body().replace("2025-06-18", "1999-01-01")).await;
    assert_eq!(old.json["result"]["protocolVersion"], "2025-11-25");

    let s = Some(sid.as_str());
    let rpc = |id: u32, method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    };
    let r = post(&server, a, s, "{not json").await;
    assert_eq!(
        (r.status, r.json["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32700))
    );
    let r = post(&server, a, s, &format!("[{}]", rpc(2, "ping", json!({})))).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32600))
    );
    let r = post(&server, a, s, r#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#).await;
    assert_eq!(r.json["error"]["code"], -32600);
    let r = post(&server, a, s, r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#).await;
    assert_eq!(r.json["error"]["code"], -32600);
    let r = post(&server, a, s, &rpc(4, "resources/list", json!({}))).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].clone()),
        (StatusCode::OK, json!(-32601))
    );
    let r = post(&server, a, s, &rpc(5, "tools/call", json!({"name": "nope"}))).await;
    assert_eq!(r.json["error"]["code"], -32602);
    let r = post(
        &server,
        a,
        s,
        &rpc(6, "tools/call", json!({"name": "navigate", "arguments": [1]})),
    )
    .await;
    assert_eq!(r.json["error"]["code"], -32602);
    let r = post(&server, a, s, &rpc(7, "ping", json!({}))).await;
    assert_eq!(
        (r.status, r.json["result"].clone(), r.json["id"].clone()),
        (StatusCode::OK, json!({}), json!(7))
    );
    // A notification is taken with 202 and no body.
    let r = post(
        &server,
        a,
        s,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::ACCEPTED, ""));

    // Without the session header, with another key's or a made-up one.
    let r = post(&server, a, None, &rpc(8, "tools/list", json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(&server, b, s, &rpc(9, "tools/list", json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "key B used key A's MCP session");
    let r = post(&server, a, Some("0123456789abcdef"), &rpc(10, "tools/list", json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A body over the limit is refused whole; a bad tool argument creates nothing.
    let huge = rpc(
        11,
        "tools/call",
        json!({"name": "run_action", "arguments": {"action": "x".repeat(1 << 20)}}),
    );
    let r = post(&server, a, s, &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = post(
        &server,
        a,
        s,
        &rpc(
            12,
            "tools/call",
            json!({"name": "create_session", "arguments": {"ttl": -5}}),
        ),
    )
    .await;
    assert_eq!(r.json["result"]["isError"], true, "{}", r.body);
    assert_eq!(server.broker.active_sessions(), 0);

    // GET offers no stream (405 with Allow); DELETE ends the MCP session, B cannot.
    let r = http_with(server.addr, Method::GET, "/mcp", &[("authorization", &bearer_a)], None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let del = |key: String| {
        let sid = sid.clone();
        let addr = server.addr;
        async move {
            http_with(
                addr,
                Method::DELETE,
                "/mcp",
                &[("authorization", &key), ("mcp-session-id", &sid)],
                None,
            )
            .await
            .status
        }
    };
    assert_eq!(del(bearer_b.clone()).await, StatusCode::NOT_FOUND);
    assert_eq!(del(bearer_a.clone()).await, StatusCode::NO_CONTENT);
    let r = post(&server, a, s, &rpc(13, "ping", json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A key's MCP sessions are bounded: the oldest give way.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = post(&server, b, None, &init_body()).await;
        ids.push(r.headers["mcp-session-id"].to_str().unwrap().to_owned());
    }
    let r = post(&server, b, Some(&ids[0]), &rpc(14, "ping", json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(&server, b, Some(&ids[19]), &rpc(15, "ping", json!({}))).await;
    assert_eq!(r.status, StatusCode::OK);
    server.stop().await;
}

/// Two pages of one tenant: an iframe's input; a button counting its clicks and a panel
/// (no control, so in no snapshot's references) counting its own.
fn two_sites(path: &str) -> (String, String) {
    let page = match path {
        "/frame" => "<html><body><input id='inner' aria-label='Inner'></body></html>",
        "/a" => "<html><body><h1>Alpha</h1><iframe src='/frame'></iframe></body></html>",
        _ => {
            "<html><body><h1>Bravo private page</h1>\
             <button onclick='window.clicks=(window.clicks||0)+1'>Count</button>\
             <input id='field' aria-label='Field'>\
             <div id='panel' style='width:200px;height:80px'>Panel</div>\
             <script>panel.addEventListener('click', () => window.panelClicks = (window.panelClicks || 0) + 1)\
             </script></body></html>"
        }
    };
    (String::new(), page.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_from_another_session_or_document_acts_on_nothing() {
    let server = TestServer::start().await;
    let site = format!("http://{}", serve_pages(two_sites).await);
    let bearer = format!("Bearer {KEY_A}");
    let key = Some(bearer.as_str());
    let init = post(&server, key, None, &init_body()).await;
    let mcp = init.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let mcp = Some(mcp.as_str());
    let mut next = 100;
    let mut tool = async |name: &str, args: Value| -> (bool, String) {
        next += 1;
        let body = json!({"jsonrpc": "2.0", "id": next, "method": "tools/call",
            "params": {"name": name, "arguments": args}});
        let r = post(&server, key, mcp, &body.to_string()).await;
        let result = &r.json["result"];
        let text = result["content"][0]["text"].as_str().unwrap_or_default().to_owned();
        (result["isError"] == true, text)
    };
    // The nearest neighbours there are: two context sessions of one key, one shared browser.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let made = server
            .call(
                Method::POST,
                "/public/sessions",
                Some(KEY_A),
                Some(r#"{"isolation":"context"}"#),
            )
            .await;
        ids.push(made.json["session_id"].as_str().unwrap().to_owned());
    }
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    let went = tool("navigate", json!({"session_id": a, "url": format!("{site}/a")})).await;
    assert!(!went.0, "{went:?}");
    let went = tool("navigate", json!({"session_id": b, "url": format!("{site}/b")})).await;
    assert!(!went.0, "{went:?}");
    let (_, snapshot_b) = tool("snapshot", json!({"session_id": b})).await;
    let refs_b: Vec<String> = snapshot_b
        .split("[ref=")
        .skip(1)
        .map(|s| s.split(']').next().unwrap().to_owned())
        .collect();
    assert_eq!(refs_b.len(), 2, "{snapshot_b}");

    // B's references, used on A: whatever they name there, nothing of B is touched or read.
    for r in &refs_b {
        for (name, args) in [
            ("click", json!({"session_id": a, "ref": r})),
            ("type", json!({"session_id": a, "ref": r, "text": "INJECTED"})),
        ] {
            let (_, text) = tool(name, args).await;
            assert!(!text.contains("Bravo"), "{name} {r} on A read B: {text}");
        }
    }

    // A node of another document in A's own tab (its iframe's input, by Chrome's id as a
    // client sees it): not an element of the page's snapshot, so refused, nothing typed.
    let record_a = server.get(a).await.json;
    let mut cdp = CdpClient::connect(&record_a).await;
    let (target, _) = cdp.pages().await.remove(0);
    let page_a = cdp.attach(&target).await;
    let doc = cdp
        .call(Some(&page_a), "DOM.getDocument", json!({"depth": -1, "pierce": true}))
        .await;
    let inner = find_node(&doc["root"], "inner").expect("the iframe's input");
    let (refused, text) = tool(
        "type",
        json!({"session_id": a, "ref": format!("e{inner}"), "text": "INJECTED"}),
    )
    .await;
    assert!(refused && text.contains("take a new snapshot"), "{text}");
    let typed = cdp
        .eval(
            &page_a,
            "document.querySelector('iframe').contentDocument.getElementById('inner').value",
        )
        .await;
    assert_eq!(typed, json!(""), "the iframe's input was typed into");
    drop(cdp);

    // B's own page, an element its snapshot gave no reference (found by a CDP client's
    // own DOM calls), and a reference made up: refused, nothing clicked.
    let record_b = server.get(b).await.json;
    let mut cdp = CdpClient::connect(&record_b).await;
    let (target, _) = cdp.pages().await.remove(0);
    let page_b = cdp.attach(&target).await;
    let doc = cdp
        .call(Some(&page_b), "DOM.getDocument", json!({"depth": -1, "pierce": true}))
        .await;
    let panel = find_node(&doc["root"], "panel").expect("the panel");
    assert!(!refs_b.contains(&format!("e{panel}")), "{snapshot_b}");
    for r in [format!("e{panel}"), format!("e{}", panel + 1), "e1".into()] {
        for (name, args) in [
            ("click", json!({"session_id": b, "ref": r})),
            ("scroll", json!({"session_id": b, "ref": r})),
        ] {
            let (refused, text) = tool(name, args).await;
            assert!(refused && text.contains("take a new snapshot"), "{name} {r}: {text}");
        }
    }

    // B is as it was: no click counted, nothing typed.
    let state = cdp
        .eval(
            &page_b,
            "[window.clicks || 0, window.panelClicks || 0, document.getElementById('field').value, \
             document.body.innerHTML.includes('INJECTED')]",
        )
        .await;
    assert_eq!(state, json!([0, 0, "", false]), "calls outside the snapshot changed B");

    // The snapshot's own references still act: its button counts one click.
    let line = snapshot_b.lines().find(|l| l.contains("Count")).expect(&snapshot_b);
    let button = line
        .split("[ref=")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect(line);
    let clicked = tool("click", json!({"session_id": b, "ref": button})).await;
    assert!(!clicked.0, "{clicked:?}");
    assert_eq!(cdp.eval(&page_b, "window.clicks || 0").await, json!(1));
    server.stop().await;
}

/// The `backendNodeId` of the element with `id` in a `DOM.getDocument` tree (frames pierced).
fn find_node(node: &Value, id: &str) -> Option<u64> {
    let attributes = node["attributes"].as_array();
    let has_id = attributes.is_some_and(|a| a.chunks(2).any(|kv| kv[0] == "id" && kv[1] == id));
    if has_id {
        return node["backendNodeId"].as_u64();
    }
    let children = node["children"].as_array().into_iter().flatten();
    let content = node.get("contentDocument").into_iter();
    children.chain(content).find_map(|child| find_node(child, id))
}

/// A Chrome DevTools endpoint that is a tenant's own and answers whatever hurts most: page
/// HTML nested 200,000 deep, an outline whose lines are short, and a list of elements with
/// an index of 2^40 (a table that large, were it made, would end the broker).
async fn hostile_devtools() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let command: Value = serde_json::from_str(&text).unwrap();
                    let expression = command["params"]["expression"].as_str().unwrap_or_default();
                    let result = match command["method"].as_str().unwrap_or_default() {
                        "Browser.getVersion" => json!({"product": "Chrome/150.0.0.0", "protocolVersion": "1.3",
                            "userAgent": "Chrome", "jsVersion": "1", "revision": "1"}),
                        "Target.getTargets" => json!({"targetInfos": [{"targetId": "T1", "type": "page",
                            "url": "http://own.test/", "title": "own", "attached": false}]}),
                        "Target.attachToTarget" => json!({"sessionId": "S1"}),
                        "Page.createIsolatedWorld" => json!({"executionContextId": 7}),
                        "Runtime.evaluate" if expression.contains(".main(") => {
                            json!({"result": {"type": "object", "value": {"html": "<div>".repeat(200_000), "title": "deep"}}})
                        }
                        "Runtime.evaluate" if expression.contains(".snapshot(") => {
                            json!({"result": {"type": "object", "value": {"url": "http://own.test/", "title": "own",
                                "lines": [[], ["a"], ["x", 1_099_511_627_776_u64, "y"], "plain"]}}})
                        }
                        "Runtime.evaluate" => json!({"result": {"type": "object", "objectId": "L1"}}),
                        "Runtime.getProperties" => json!({"result": [
                            {"name": "1099511627776", "value": {"objectId": "O1"}},
                            {"name": "0", "value": {"objectId": "O0"}}]}),
                        "DOM.describeNode" => json!({"node": {"backendNodeId": 5}}),
                        _ => json!({}),
                    };
                    let mut reply = json!({"id": command["id"], "result": result});
                    if let Some(session) = command.get("sessionId") {
                        reply["sessionId"] = session.clone();
                    }
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_browser_answering_to_hurt_gets_errors_and_the_broker_goes_on() {
    let server = TestServer::start_with(|c| c.byo_allow = vec!["127.0.0.0/8".into()]).await;
    let devtools = hostile_devtools().await;
    let session = server
        .create(json!({"cdp_url": format!("ws://{devtools}/devtools/browser/own")}))
        .await;
    let id = session["session_id"].as_str().unwrap();
    let bearer = format!("Bearer {KEY_A}");
    let init = post(&server, Some(&bearer), None, &init_body()).await;
    let mcp = init.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let call = |n: u32, tool: &str| {
        json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
               "params": {"name": tool, "arguments": {"session_id": id}}})
        .to_string()
    };

    // A stack overflow in the converter would end this whole process, test and broker.
    let r = post(&server, Some(&bearer), Some(&mcp), &call(2, "markdown")).await;
    assert_eq!(r.json["result"]["isError"], true, "{}", r.body);
    let said = r.json["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(said.contains("nest 200000 deep"), "{said}");

    // Short lines read as empty; the index of 2^40 names nothing and sizes nothing.
    let r = post(&server, Some(&bearer), Some(&mcp), &call(3, "snapshot")).await;
    assert_eq!(r.json["result"]["isError"], false, "{}", r.body);
    let text = r.json["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("xy") && text.contains("plain") && !text.contains("ref="),
        "{text}"
    );

    let health = server.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    server.stop().await;
}
