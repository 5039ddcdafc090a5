//! Context sessions: many sessions per shared Chrome, each a browser context, the CDP
//! filtered so that a client sees and touches only its own context. Real Chromium, raw CDP
//! clients, Puppeteer, Playwright and dari-python.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A raw CDP client that keeps every event it receives.
struct Cdp {
    ws: Ws,
    next: u64,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        Cdp {
            ws: ws_connect(url).await.expect("the CDP socket opens"),
            next: 0,
            events: Vec::new(),
        }
    }

    /// Sends a command (on `session` if given) and answers the whole reply.
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(message.to_string())).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("an answer to {method} in time"));
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == id {
                        return v;
                    }
                    self.events.push(v);
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended while waiting for {method}: {other:?}"),
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let reply = self.send(None, method, params).await;
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// The error message a refused command gets.
    async fn refused(&mut self, method: &str, params: Value) -> String {
        let reply = self.send(None, method, params).await;
        reply["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} should be refused: {reply}"))
            .to_owned()
    }

    /// (target id, context id) of the page targets the client is shown.
    async fn pages(&mut self) -> Vec<(String, String)> {
        let targets = self.call("Target.getTargets", json!({})).await;
        targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["type"] == "page")
            .map(|t| {
                let field = |k: &str| t[k].as_str().unwrap().to_owned();
                (field("targetId"), field("browserContextId"))
            })
            .collect()
    }

    async fn attach(&mut self, target: &str) -> String {
        let attached = self
            .call("Target.attachToTarget", json!({"targetId": target, "flatten": true}))
            .await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// Evaluates `expression` in the page of `session`, after its load.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let wrapped = format!(
            "new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', () => r()))\
             .then(() => {expression})"
        );
        let params = json!({"expression": wrapped, "awaitPromise": true, "returnByValue": true});
        let reply = self.send(Some(session), "Runtime.evaluate", params).await;
        assert!(reply.get("error").is_none(), "{expression}: {reply}");
        reply["result"]["result"]["value"].clone()
    }

    /// Reads events until one satisfies `found` (within 10 s).
    async fn wait_event(&mut self, found: impl Fn(&Value) -> bool) {
        if self.events.iter().any(&found) {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the awaited event in time");
            if let Some(Ok(Message::Text(t))) = next {
                let v: Value = serde_json::from_str(&t).unwrap();
                let hit = found(&v);
                self.events.push(v);
                if hit {
                    return;
                }
            }
        }
    }
}

async fn create(server: &TestServer, key: &str, body: Value) -> Value {
    let r = server
        .call(Method::POST, "/public/sessions", Some(key), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json
}

fn cdp_url(session: &Value) -> &str {
    session["cdp_url"].as_str().unwrap()
}

fn token(session: &Value) -> &str {
    cdp_url(session).split_once("?token=").unwrap().1
}

/// Context sessions only: no warm process browsers in the way.
async fn start(tweak: impl FnOnce(&mut cdpgate::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.pool_size = 0;
        c.default_isolation = "context".into();
        tweak(c);
    })
    .await
}

/// Two tenants (and a second session of one of them) on one shared Chrome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_one_shared_chrome_cannot_see_or_touch_each_other() {
    let server = start(|c| {
        c.context_sharing = "any".into();
        c.context_browsers = 1;
    })
    .await;
    let site = format!("http://{}/", start_site().await);
    let a = create(&server, KEY_A, json!({"isolation": "context"})).await;
    let a2 = create(&server, KEY_A, json!({})).await;
    let b = create(&server, KEY_B, json!({})).await;
    assert_eq!(a["isolation"], "context");
    assert_eq!(b["isolation"], "context");
    let browsers = server.broker.shared.contexts_by_browser();
    assert_eq!(browsers.len(), 1, "one shared Chrome: {browsers:?}");
    assert_eq!(browsers[0].1, 3);

    let (mut ca, mut ca2, mut cb) = (
        Cdp::connect(cdp_url(&a)).await,
        Cdp::connect(cdp_url(&a2)).await,
        Cdp::connect(cdp_url(&b)).await,
    );
    let (a_pages, b_pages, a2_pages) = (ca.pages().await, cb.pages().await, ca2.pages().await);
    assert_eq!(a_pages.len(), 1, "{a_pages:?}");
    assert_eq!(b_pages.len(), 1, "{b_pages:?}");
    assert_eq!(a2_pages.len(), 1, "{a2_pages:?}");
    let (a_context, b_context) = (a_pages[0].1.clone(), b_pages[0].1.clone());
    assert_ne!(a_context, b_context);
    assert_ne!(a_context, a2_pages[0].1);
    let contexts = ca.call("Target.getBrowserContexts", json!({})).await;
    assert_eq!(contexts["browserContextIds"], json!([a_context]));

    // A watches everything it may: discovery, and auto-attach holding new targets.
    ca.call("Target.setDiscoverTargets", json!({"discover": true})).await;
    ca.call(
        "Target.setAutoAttach",
        json!({"autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true}),
    )
    .await;
    // B opens a page; A's auto-attach does not hold it: B's script runs.
    let b_page = cb.call("Target.createTarget", json!({"url": site})).await["targetId"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_session = cb.attach(&b_page).await;
    assert_eq!(cb.eval(&b_session, "document.title").await, "cdpgate test site");
    // A opens its own; once A has heard of it, it has heard of nothing of B's.
    let a_page = ca.call("Target.createTarget", json!({"url": site})).await["targetId"]
        .as_str()
        .unwrap()
        .to_owned();
    ca.wait_event(|e| {
        e["method"] == "Target.attachedToTarget" && e["params"]["targetInfo"]["targetId"] == a_page.as_str()
    })
    .await;
    let heard = serde_json::to_string(&ca.events).unwrap();
    for other in [&b_page, &b_pages[0].0, &b_context, &a2_pages[0].0] {
        assert!(!heard.contains(other.as_str()), "A heard of {other}: {heard}");
    }
    assert!(heard.contains(&a_page));

    // A cannot reach B's targets by id, nor create, read or dispose in B's context.
    for method in [
        "Target.attachToTarget",
        "Target.activateTarget",
        "Target.closeTarget",
        "Target.getTargetInfo",
    ] {
        let message = ca.refused(method, json!({"targetId": b_page, "flatten": true})).await;
        assert_eq!(message, "No target with given id found", "{method}");
    }
    for (method, params) in [
        (
            "Target.createTarget",
            json!({"url": "about:blank", "browserContextId": b_context}),
        ),
        ("Storage.getCookies", json!({"browserContextId": b_context})),
        ("Target.disposeBrowserContext", json!({"browserContextId": b_context})),
        ("Browser.crash", json!({})),
        ("Browser.getBrowserCommandLine", json!({})),
        ("Target.attachToBrowserTarget", json!({})),
        ("Target.exposeDevToolsProtocol", json!({"targetId": a_page})),
        ("Target.createBrowserContext", json!({})),
        ("SystemInfo.getProcessInfo", json!({})),
        ("Tracing.start", json!({})),
        ("Fetch.enable", json!({})),
    ] {
        ca.refused(method, params).await;
    }
    // Nor open B's page socket, nor list it.
    let b_socket = format!("ws://{}/devtools/page/{b_page}?token={}", server.addr, token(&a));
    assert!(ws_connect(&b_socket).await.is_err(), "A opened B's page socket");
    let listed = server.discovery(&a, "json/list").await;
    assert_eq!(listed.status, StatusCode::OK);
    let ids: Vec<&str> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&a_page.as_str()) && !ids.contains(&b_page.as_str()),
        "{ids:?}"
    );
    assert!(ids.iter().all(|id| *id != a2_pages[0].0), "{ids:?}");
    // A's own page socket works.
    let mut a_socket = Cdp::connect(&format!(
        "ws://{}/devtools/page/{a_page}?token={}",
        server.addr,
        token(&a)
    ))
    .await;
    let evaluated = a_socket
        .send(
            None,
            "Runtime.evaluate",
            json!({"expression": "6 * 7", "returnByValue": true}),
        )
        .await;
    assert_eq!(evaluated["result"]["result"]["value"], 42);
    assert!(a_socket.send(None, "Browser.crash", json!({})).await["error"].is_object());
    assert!(
        a_socket.send(None, "Target.getTargets", json!({})).await["result"]["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["browserContextId"] == a_context.as_str())
    );

    // Cookies and localStorage stay in their context.
    let cookie = json!({"cookies": [{"name": "who", "value": "a", "url": site}]});
    ca.call("Storage.setCookies", cookie).await;
    let names = |cookies: &Value| -> Vec<String> {
        cookies["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&ca.call("Storage.getCookies", json!({})).await), ["who"]);
    assert!(names(&cb.call("Storage.getCookies", json!({})).await).is_empty());
    assert!(names(&ca2.call("Storage.getCookies", json!({})).await).is_empty());
    let a_session = ca.attach(&a_page).await;
    ca.eval(&a_session, "localStorage.setItem('who', 'a')").await;
    assert_eq!(ca.eval(&a_session, "document.cookie").await, "who=a");
    assert_eq!(cb.eval(&b_session, "localStorage.getItem('who')").await, Value::Null);
    assert_eq!(cb.eval(&b_session, "document.cookie").await, "");

    // Browser.close ends A alone.
    let closed = ca.send(None, "Browser.close", json!({})).await;
    assert_eq!(closed["result"], json!({}), "{closed}");
    let (code, reason) = await_close(&mut ca.ws, Duration::from_secs(10))
        .await
        .expect("A is closed");
    assert_eq!((code, reason.as_str()), (4003, "browser closed"));
    let a_id = a["session_id"].as_str().unwrap();
    let record = server.get(a_id).await.json;
    assert_eq!(record["status"], "terminated");
    assert_eq!(record["end_reason"], "browser exited");
    assert_eq!(cb.eval(&b_session, "1 + 1").await, 2);
    assert!(ca2.call("Browser.getVersion", json!({})).await["product"].is_string());
    // Its context is gone from the shared browser; the others remain.
    assert!(
        eventually(Duration::from_secs(10), || server.broker.shared.contexts_by_browser()
            [0]
        .1 == 2)
        .await,
        "{:?}",
        server.broker.shared.contexts_by_browser()
    );
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_context_refused_commands_total{method=\"Browser.crash\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cdpgate_sessions_by_isolation{isolation=\"context\"} 2"),
        "{metrics}"
    );
    server.stop().await;
}
