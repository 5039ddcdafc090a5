//! Session events with real Chromium: a scripted visit (two tabs, a navigation, a download,
//! a crashed tab, a disconnect) read back as JSON and as a server-sent event stream resumed
//! after a drop; another key sees none of it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A server-sent event stream, read event by event.
struct Sse {
    body: Incoming,
    buf: String,
}

impl Sse {
    /// `GET path` with `Accept: text/event-stream` (and `Last-Event-ID`, if given).
    async fn open(addr: SocketAddr, path: &str, key: &str, last: Option<u64>) -> Result<Sse, (StatusCode, String)> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let mut request = Request::get(path)
            .header("host", addr.to_string())
            .header("x-api-key", key)
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        let answer = sender
            .send_request(request.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap())
            .await
            .unwrap();
        if answer.status() != StatusCode::OK {
            let (parts, body) = answer.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            return Err((parts.status, String::from_utf8_lossy(&bytes).into_owned()));
        }
        assert_eq!(answer.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            body: answer.into_body(),
            buf: String::new(),
        })
    }

    /// The next event (`id`, if it has one, and its data as JSON); `None` once the stream
    /// ends. Comments (keep-alives) and `retry:` are skipped.
    async fn next(&mut self) -> Option<(Option<u64>, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                match data {
                    Some(data) => return Some((id, data)),
                    None => continue,
                }
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("the stream moves within 30 s")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

async fn events_json(server: &TestServer, key: &str, id: &str, query: &str) -> Response {
    server
        .call(
            Method::GET,
            &format!("/public/sessions/{id}/events{query}"),
            Some(key),
            None,
        )
        .await
}

/// Every event of the session so far, read page by page (3 at a time, so paging is used).
async fn all_events(server: &TestServer, id: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let page = events_json(server, KEY_A, id, &format!("?after={after}&limit=3")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let events = page.json["events"].as_array().unwrap().clone();
        out.extend(events);
        after = page.json["next_after"].as_u64().unwrap();
        if page.json["has_more"] != true {
            return out;
        }
    }
}

/// Waits until the session has an event that satisfies `found` (polled, within 20 s).
async fn await_event(server: &TestServer, id: &str, what: &str, found: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = all_events(server, id).await;
        if seen.iter().any(&found) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {what} among {seen:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an expected event's data must satisfy.
type Check<'a> = Box<dyn Fn(&Value) -> bool + 'a>;

fn page_route(path: &str) -> (String, String) {
    match path {
        "/report.txt" => (
            "content-disposition: attachment; filename=\"report.txt\"\r\n".into(),
            "a report".into(),
        ),
        "/second" => (String::new(), "<title>second</title>two".into()),
        _ => (String::new(), "<title>first</title>one".into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scripted_visit_reads_back_in_order_as_json_and_as_a_resumed_stream() {
    let server = TestServer::start().await;
    let site = serve_pages(page_route).await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap().to_owned();
    let path = format!("/public/sessions/{id}/events");

    // A reader that follows from the start, reads two events (created, the first tab), and drops.
    let mut early = Sse::open(server.addr, &path, KEY_A, None).await.unwrap();
    let mut streamed = Vec::new();
    for _ in 0..2 {
        streamed.push(early.next().await.expect("an event"));
    }
    drop(early);

    let mut cdp = CdpClient::connect(&session).await;
    let (first, first_page) = cdp.own_page().await;
    cdp.load(&first_page, &format!("http://{site}/first")).await;
    await_event(&server, &id, "navigation", |e| {
        e["type"] == "tab_navigated" && e["data"]["url"].as_str().unwrap().ends_with("/first")
    })
    .await;
    let second_page = cdp.open(&format!("http://{site}/second"), None).await.unwrap();
    let second = cdp
        .pages()
        .await
        .into_iter()
        .map(|(t, _)| t)
        .find(|t| *t != first)
        .unwrap();
    await_event(&server, &id, "second tab", |e| {
        e["type"] == "tab_opened" && e["data"]["target_id"] == second
    })
    .await;
    cdp.call(
        Some(&first_page),
        "Page.navigate",
        json!({"url": format!("http://{site}/report.txt")}),
    )
    .await;
    await_event(&server, &id, "finished download", |e| e["type"] == "download_finished").await;
    // Page.crash never answers: the renderer is gone.
    let crash = json!({"id": 9_000, "method": "Page.crash", "params": {}, "sessionId": second_page});
    cdp.ws.send(Message::text(crash.to_string())).await.unwrap();
    await_event(&server, &id, "crash", |e| e["type"] == "page_crashed").await;
    cdp.call(None, "Target.closeTarget", json!({"targetId": second})).await;
    await_event(&server, &id, "closed tab", |e| {
        e["type"] == "tab_closed" && e["data"]["target_id"] == second
    })
    .await;
    cdp.ws.close(None).await.unwrap();
    drop(cdp);
    await_event(&server, &id, "disconnect", |e| e["type"] == "client_disconnected").await;

    // Resumed after the drop while the session runs; it ends with the session's end.
    let mut resumed = Sse::open(server.addr, &path, KEY_A, Some(streamed[1].0.unwrap()))
        .await
        .unwrap();
    let rest = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(event) = resumed.next().await {
            got.push(event);
        }
        got
    });
    assert_eq!(server.terminate(&id).await.status, StatusCode::NO_CONTENT);
    streamed.extend(rest.await.unwrap());

    let events = all_events(&server, &id).await;
    // Ids 1, 2, 3… with no gap; the stream carried exactly the same events.
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
    let streamed_ids: Vec<u64> = streamed.iter().map(|(i, _)| i.unwrap()).collect();
    assert_eq!(streamed_ids, ids, "no gap, no duplicate across the drop");
    assert_eq!(streamed.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), events);

    // The visit, in order (other events may come between these).
    let expected: Vec<(&str, Check)> = vec![
        ("created", Box::new(|_| true)),
        ("tab_opened", Box::new(|d| d["target_id"] == first)),
        ("client_connected", Box::new(|d| d["kind"] == "cdp")),
        (
            "tab_navigated",
            Box::new(|d| d["url"].as_str().unwrap().ends_with("/first")),
        ),
        ("tab_opened", Box::new(|d| d["target_id"] == second)),
        (
            "download_started",
            Box::new(|d| d["suggested_filename"] == "report.txt"),
        ),
        ("download_finished", Box::new(|d| d["state"] == "completed")),
        ("page_crashed", Box::new(|d| d["target_id"] == second)),
        ("tab_closed", Box::new(|d| d["target_id"] == second)),
        ("client_disconnected", Box::new(|d| d["kind"] == "cdp")),
        ("ended", Box::new(|d| d["end_reason"] == "terminated")),
    ];
    let mut at = 0;
    for (kind, check) in &expected {
        let found = events[at..]
            .iter()
            .position(|e| e["type"] == *kind && e["session_id"] == id.as_str() && check(&e["data"]));
        let Some(found) = found else {
            panic!("no {kind} after event {at} in {events:#?}");
        };
        at += found + 1;
    }
    assert_eq!(at, events.len(), "ended is the last event");
    // The stream of an ended session sends what there is and closes.
    let mut after_end = Sse::open(server.addr, &path, KEY_A, Some(ids[ids.len() - 2]))
        .await
        .unwrap();
    assert_eq!(after_end.next().await.unwrap().1["type"], "ended");
    assert!(after_end.next().await.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_key_reads_nothing_of_a_sessions_events() {
    let server = TestServer::start().await;
    let mut stream_a = Sse::open(server.addr, "/public/events", KEY_A, None).await.unwrap();
    let mut stream_b = Sse::open(server.addr, "/public/events", KEY_B, None).await.unwrap();
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap().to_owned();
    let mut cdp = CdpClient::connect(&session).await;
    cdp.own_page().await;
    drop(cdp);
    await_event(&server, &id, "disconnect", |e| e["type"] == "client_disconnected").await;

    // Key B: unknown, whichever way it asks; the answer carries nothing of A's.
    for query in ["", "?after=0&limit=1000"] {
        let r = events_json(&server, KEY_B, &id, query).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(
            !r.body.contains("tab_opened") && !r.body.contains("client_connected"),
            "{}",
            r.body
        );
    }
    let r = server
        .call(
            Method::GET,
            &format!("/public/sessions/{id}/webhooks"),
            Some(KEY_B),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let refused = Sse::open(server.addr, &format!("/public/sessions/{id}/events"), KEY_B, None).await;
    assert_eq!(refused.err().map(|r| r.0), Some(StatusCode::NOT_FOUND));
    // Bad cursors are refused, not guessed at.
    for query in ["?after=-1", "?limit=0", "?limit=1001", "?after=x"] {
        assert_eq!(
            events_json(&server, KEY_A, &id, query).await.status,
            StatusCode::BAD_REQUEST,
            "{query}"
        );
    }
    // The all-sessions stream is a stream only.
    let r = server.call(Method::GET, "/public/events", Some(KEY_A), None).await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);

    assert_eq!(server.terminate(&id).await.status, StatusCode::NO_CONTENT);
    // Key A's stream carries the whole session, up to its end.
    let mut seen_a = Vec::new();
    while let Some((_, event)) = stream_a.next().await {
        let ended = event["type"] == "ended";
        seen_a.push(event);
        if ended {
            break;
        }
    }
    assert_eq!(seen_a, all_events(&server, &id).await);

    // Then a session of B's: the first thing B's stream carries is its creation, and every
    // event on it up to its end is B's own.
    let r = server
        .call(Method::POST, "/public/sessions", Some(KEY_B), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id_b = r.json["session_id"].as_str().unwrap().to_owned();
    let r = server
        .call(
            Method::POST,
            &format!("/public/sessions/{id_b}/terminate"),
            Some(KEY_B),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let mut seen_b = Vec::new();
    while let Some((_, event)) = stream_b.next().await {
        let ended = event["type"] == "ended";
        seen_b.push(event);
        if ended {
            break;
        }
    }
    assert_eq!(seen_b[0]["type"], "created");
    assert!(seen_b.iter().all(|e| e["session_id"] == id_b.as_str()), "{seen_b:#?}");
    server.stop().await;
}

/// A node of a cluster on `redis`.
async fn cluster_node(redis: &TestRedis, name: &str) -> TestServer {
    let (url, name) = (redis.url.clone(), name.to_owned());
    let profiles = redis.profiles.path().to_string_lossy().into_owned();
    TestServer::start_with(move |c| {
        c.redis_url = url;
        c.profile_store = profiles;
        c.redis_prefix = "events:".into();
        c.node_id = name;
        c.cluster_secret = CLUSTER_SECRET.into();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_of_a_cluster_answers_with_the_running_nodes_events() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "node-a").await;
    let b = cluster_node(&redis, "node-b").await;
    let session = a.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap().to_owned();
    let path = format!("/public/sessions/{id}/events");

    // A stream through B, of the session A runs: what A writes, as it writes it.
    let mut via_b = Sse::open(b.addr, &path, KEY_A, None).await.unwrap();
    let mut streamed = vec![via_b.next().await.unwrap(), via_b.next().await.unwrap()];
    let mut cdp = CdpClient::connect(&session).await;
    cdp.own_page().await;
    drop(cdp);
    await_event(&a, &id, "disconnect", |e| e["type"] == "client_disconnected").await;
    let r = b
        .call(
            Method::POST,
            &format!("/public/sessions/{id}/terminate"),
            Some(KEY_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    while let Some(event) = via_b.next().await {
        streamed.push(event);
    }
    let on_a = all_events(&a, &id).await;
    assert_eq!(on_a.last().unwrap()["type"], "ended");
    assert_eq!(streamed.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), on_a);
    // The JSON page through B is A's, and another key learns nothing through B either.
    assert_eq!(all_events(&b, &id).await, on_a);
    let r = events_json(&b, KEY_B, &id, "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_holds_a_bounded_number_of_event_streams() {
    let server = TestServer::start_with(|c| {
        c.pool_size = 0;
        c.max_event_streams_per_key = 2;
    })
    .await;
    let first = Sse::open(server.addr, "/public/events", KEY_A, None).await.unwrap();
    let _second = Sse::open(server.addr, "/public/events", KEY_A, None).await.unwrap();
    let Err((status, said)) = Sse::open(server.addr, "/public/events", KEY_A, None).await else {
        panic!("a third stream of one key was opened");
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{said}");
    assert!(said.contains("At most 2 event streams per API key"), "{said}");
    // The other key is not held back by the first one's streams.
    let _other = Sse::open(server.addr, "/public/events", KEY_B, None).await.unwrap();
    // A stream the client leaves gives its place back (its task notices at its next
    // write: a keep-alive comes every 15 s).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        match Sse::open(server.addr, "/public/events", KEY_A, None).await {
            Ok(_) => break,
            Err((StatusCode::TOO_MANY_REQUESTS, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the place of a closed stream was not given back: {e:?}"),
        }
    }
    server.stop().await;
}

fn erring_route(_: &str) -> (String, String) {
    let page = "<title>errs</title><script>console.error('boom', 1); console.log('fine');\
                for (let i = 2; i <= 26; i++) console.error('boom', i);\
                setTimeout(() => { throw new Error('kaboom'); }, 0);</script>";
    (String::new(), page.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_errors_and_the_idle_end_are_told_the_first_errors_in_full() {
    let server = TestServer::start().await;
    let site = serve_pages(erring_route).await;
    let session = server.create(json!({"capture_console": true, "idle_timeout": 6})).await;
    let id = session["session_id"].as_str().unwrap().to_owned();
    let mut cdp = CdpClient::connect(&session).await;
    let (_, page) = cdp.own_page().await;
    cdp.load(&page, &format!("http://{site}/")).await;
    await_event(&server, &id, "page error", |e| e["type"] == "page_error").await;
    cdp.ws.close(None).await.unwrap();
    drop(cdp);
    await_event(&server, &id, "end", |e| e["type"] == "ended").await;

    let events = all_events(&server, &id).await;
    let of = |kind: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .map(|e| e["data"].clone())
            .collect()
    };
    // 26 console errors: the first 20 told in order, in full; the log at info is not one.
    let errors = of("console_error");
    assert_eq!(errors.len(), 20, "{errors:#?}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["text"], format!("boom {}", i + 1), "{e}");
        assert_eq!(e["count"], i + 1);
        assert!(e["url"].as_str().unwrap().starts_with("http://127.0.0.1"), "{e}");
        assert_eq!(e["line"], 1, "{e}");
    }
    let uncaught = of("page_error");
    assert_eq!(uncaught.len(), 1, "{uncaught:#?}");
    assert!(uncaught[0]["text"].as_str().unwrap().contains("kaboom"), "{uncaught:?}");
    // The session's log counts them all.
    let logs = server
        .call(Method::GET, &format!("/public/sessions/{id}/logs"), Some(KEY_A), None)
        .await;
    assert_eq!(
        (&logs.json["console_errors"], &logs.json["page_errors"]),
        (&json!(26), &json!(1)),
        "{}",
        logs.body
    );
    // Told before the idle end, once, with the time left.
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let warned = kinds
        .iter()
        .position(|k| *k == "idle_warning")
        .expect("an idle warning");
    assert_eq!(kinds.iter().filter(|k| **k == "idle_warning").count(), 1, "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 1], "ended");
    assert!(warned > kinds.iter().position(|k| *k == "client_disconnected").unwrap());
    let warning = &events[warned]["data"];
    assert_eq!(warning["idle_timeout"], 6);
    assert!(warning["ends_in"].as_u64().unwrap() <= 3, "{warning}");
    assert_eq!(events.last().unwrap()["data"]["end_reason"], "idle");
    server.stop().await;
}

/// Creates sessions of `key` on `node` until `stream` carries one's `created` (another
/// node's events reach the stream once it has found that node); answers the sessions it
/// made and the events it read.
async fn until_streamed(node: &TestServer, key: &str, stream: &mut Sse) -> (Vec<String>, Vec<Value>) {
    let (mut made_ids, mut read) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let made = node.call(Method::POST, "/public/sessions", Some(key), Some("{}")).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        let id = made.json["session_id"].as_str().unwrap().to_owned();
        made_ids.push(id.clone());
        let path = format!("/public/sessions/{id}/terminate");
        assert_eq!(
            node.call(Method::POST, &path, Some(key), None).await.status,
            StatusCode::NO_CONTENT
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            let Ok(Some((_, event))) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await else {
                continue;
            };
            read.push(event.clone());
            if event["session_id"] == id.as_str() {
                return (made_ids, read);
            }
        }
    }
    panic!("the stream never carried another node's session: {read:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_stream_on_any_node_carries_every_nodes_sessions_and_no_other_keys() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "node-a").await;
    let b = cluster_node(&redis, "node-b").await;
    let mut key_a = Sse::open(a.addr, "/public/events", KEY_A, None).await.unwrap();
    let mut key_b = Sse::open(a.addr, "/public/events", KEY_B, None).await.unwrap();
    let (mut of_key_a, _) = until_streamed(&b, KEY_A, &mut key_a).await;
    let (_, mut seen_by_b) = until_streamed(&b, KEY_B, &mut key_b).await;

    // A session B runs, used and ended: every event of it on A's stream, in B's order.
    let session = b.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap().to_owned();
    assert_eq!(b.broker.active_sessions(), 1, "the session runs on node B");
    let mut cdp = CdpClient::connect(&session).await;
    cdp.own_page().await;
    drop(cdp);
    await_event(&b, &id, "disconnect", |e| e["type"] == "client_disconnected").await;
    assert_eq!(b.terminate(&id).await.status, StatusCode::NO_CONTENT);
    let on_b = all_events(&b, &id).await;
    let mut streamed = Vec::new();
    while streamed.last().is_none_or(|e: &Value| e["type"] != "ended") {
        let (_, event) = key_a.next().await.expect("the stream goes on");
        if event["session_id"] == id.as_str() {
            streamed.push(event);
        }
    }
    assert_eq!(streamed, on_b, "A's stream carried B's events as B wrote them");

    // Key B's stream on A carried none of key A's sessions: a last session of key B's on B
    // comes after everything above, and nothing before it was key A's.
    seen_by_b.extend(until_streamed(&b, KEY_B, &mut key_b).await.1);
    of_key_a.push(id);
    assert!(
        seen_by_b
            .iter()
            .all(|e| !of_key_a.iter().any(|a| e["session_id"] == a.as_str())),
        "key B heard key A's sessions: {seen_by_b:#?}"
    );

    // A node that leaves mid-stream does not end the stream: A's own sessions still come;
    // a node that joins mid-stream is heard from (nodes are looked for every few seconds).
    b.stop().await;
    until_streamed(&a, KEY_A, &mut key_a).await;
    let c = cluster_node(&redis, "node-c").await;
    until_streamed(&c, KEY_A, &mut key_a).await;
    c.stop().await;
    a.stop().await;
}
