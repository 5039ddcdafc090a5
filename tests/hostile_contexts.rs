//! A context session driven by a hostile tenant with nothing but its `cdp_url` (issue #27):
//! it tries to write where the broker can, to hand its pages the broker's files, to hear
//! other contexts' downloads, to open local and Chrome pages, and to blow up the broker's
//! memory with one message. Real Chromium, raw WebSockets; each test asserts on what leaked
//! or changed (bytes, file lists, events), not on status codes alone.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A site for the hostile tenant: files served as attachments, a page with a file input,
/// a page whose download link is in a subframe.
async fn start_hostile_site() -> String {
    let addr = serve_pages(|path| {
        let attachment = |name: &str| format!("content-disposition: attachment; filename=\"{name}\"\r\n");
        match path {
            "/token_secret" => (attachment("token_secret"), "ATTACKER TEXT".to_owned()),
            "/planted.txt" => (attachment("planted.txt"), "PLANTED".to_owned()),
            "/b-secret.bin" => (attachment("b-secret.bin"), "B's private download".to_owned()),
            "/a-own.bin" => (attachment("a-own.bin"), "A's own download".to_owned()),
            "/input" => (String::new(), "<title>input</title><input type=file id=f>".to_owned()),
            "/framed" => (
                String::new(),
                "<title>framed</title><iframe id=inner src=/links></iframe>".to_owned(),
            ),
            _ => (
                String::new(),
                "<title>links</title><a id=a-own href=/a-own.bin>a</a> <a id=b-secret href=/b-secret.bin>b</a>"
                    .to_owned(),
            ),
        }
    })
    .await;
    format!("http://{addr}")
}

/// JavaScript that clicks a link to `path` (a download, as a person's click would start).
fn click(path: &str) -> String {
    format!(
        "(() => {{ const a = document.createElement('a'); a.href = '{path}'; document.body.append(a); a.click(); return 1; }})()"
    )
}

/// Context sessions only, on one shared Chrome that any tenant's sessions share.
async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.pool_size = 0;
        c.default_isolation = "context".into();
        c.context_browsers = 1;
        c.context_sharing = "any".into();
    })
    .await
}

async fn create(server: &TestServer, key: &str, body: Value) -> Value {
    let r = server
        .call(Method::POST, "/public/sessions", Some(key), Some(&body.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json
}

fn id(session: &Value) -> &str {
    session["session_id"].as_str().unwrap()
}

fn cdp_url(session: &Value) -> &str {
    session["cdp_url"].as_str().unwrap()
}

fn token(session: &Value) -> &str {
    cdp_url(session).split_once("?token=").unwrap().1
}

async fn files_of(server: &TestServer, key: &str, session: &str) -> Value {
    let r = server
        .call(
            Method::GET,
            &format!("/public/sessions/{session}/files"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["files"].clone()
}

/// Waits until the session's files show `name` complete.
async fn until_complete(server: &TestServer, key: &str, session: &str, name: &str) {
    let done = eventually_async(Duration::from_secs(20), || async {
        files_of(server, key, session)
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == name && f["state"] == "complete")
    })
    .await;
    assert!(done, "{name} never completed: {}", files_of(server, key, session).await);
}

/// Every file under `dir` with its bytes' digest, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::hash::{Hash, Hasher};
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut hasher);
                found.push((path, hasher.finish()));
            }
        }
    }
    found.sort();
    found
}

/// A client sets a download folder of its choosing on its own page's session (the
/// broker's data directory, another session's files): its downloads still land in its
/// own session's files, and nothing outside changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_where_its_downloads_land() {
    let server = start().await;
    let site = start_hostile_site().await;
    let data_dir = server.data_dir.path().to_owned();
    let neighbour = create(&server, KEY_B, json!({})).await;
    let ours = create(&server, KEY_A, json!({})).await;
    let neighbour_files = data_dir.join("artifacts").join(id(&neighbour)).join("files");
    let secret = data_dir.join("token_secret");
    let secret_before = std::fs::read(&secret).expect("the broker's token secret");
    let neighbour_before = snapshot(&data_dir.join("artifacts").join(id(&neighbour)));

    let mut client = CdpClient::connect_url(cdp_url(&ours)).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("{site}/links")).await;
    // The page's own download setting, aimed at the broker's data directory.
    client
        .send(
            Some(&page),
            "Page.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": data_dir}),
        )
        .await;
    client.eval(&page, &click("/token_secret")).await;
    until_complete(&server, KEY_A, id(&ours), "token_secret").await;
    // The browser-wide one, on the page's session, aimed at the neighbour's files.
    client
        .send(
            Some(&page),
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": neighbour_files, "eventsEnabled": true}),
        )
        .await;
    client.eval(&page, &click("/planted.txt")).await;
    until_complete(&server, KEY_A, id(&ours), "planted.txt").await;

    let secret_after = std::fs::read(&secret).ok();
    let now = secret_after.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    assert_eq!(
        secret_after.as_deref(),
        Some(&secret_before[..]),
        "the broker's token secret was replaced or moved (now {now:?})"
    );
    assert!(!data_dir.join("token_secret.crdownload").exists());
    assert_eq!(
        snapshot(&data_dir.join("artifacts").join(id(&neighbour))),
        neighbour_before,
        "the neighbour's files changed"
    );
    assert_eq!(files_of(&server, KEY_B, id(&neighbour)).await, json!([]));
    let mine = files_of(&server, KEY_A, id(&ours)).await;
    assert_eq!(mine.as_array().unwrap().len(), 2, "{mine}");
    server.stop().await;
}

/// A client hands a file input the broker's secret, a system file, a path that climbs out
/// of its files, and another session's upload: every one is refused and the page reads
/// nothing; its own upload is given to the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_given_only_its_sessions_own_files() {
    let server = start().await;
    let site = start_hostile_site().await;
    let data_dir = server.data_dir.path().to_owned();
    let neighbour = create(&server, KEY_B, json!({})).await;
    let ours = create(&server, KEY_A, json!({})).await;
    let upload = |key: &'static str, session: String, name: &'static str, body: &'static str| {
        let addr = server.addr;
        async move {
            let r = http(
                addr,
                Method::POST,
                &format!("/public/sessions/{session}/files?name={name}"),
                Some(key),
                Some(body),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.json["path"].as_str().unwrap().to_owned()
        }
    };
    let theirs = upload(KEY_B, id(&neighbour).to_owned(), "theirs.txt", "the neighbour's letter").await;
    let mine = upload(KEY_A, id(&ours).to_owned(), "mine.txt", "my own letter").await;
    let secret = data_dir.join("token_secret");
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    let climbing = format!("{}/../../../token_secret", Path::new(&mine).parent().unwrap().display());

    let mut client = CdpClient::connect_url(cdp_url(&ours)).await;
    let (_, page) = client.own_page().await;
    client.load(&page, &format!("{site}/input")).await;
    let input = client
        .call(
            Some(&page),
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('#f')"}),
        )
        .await["result"]["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    let read_back = "(async () => { const f = document.querySelector('#f').files; \
                     return f.length ? await f[0].text() : null })()";
    for path in [secret.to_str().unwrap(), "/etc/passwd", &climbing, &theirs] {
        let reply = client
            .send(
                Some(&page),
                "DOM.setFileInputFiles",
                json!({"files": [path], "objectId": input}),
            )
            .await;
        let read = client.eval(&page, read_back).await;
        assert_eq!(read, Value::Null, "the page read {path}: {read}");
        assert!(reply["error"].is_object(), "{path}: {reply}");
    }
    // Dropping the file on the page is the same door.
    let drop = json!({"type": "drop", "x": 5, "y": 5,
        "data": {"items": [], "files": [secret], "dragOperationsMask": 1}});
    let reply = client.send(Some(&page), "Input.dispatchDragEvent", drop).await;
    assert!(reply["error"].is_object(), "{reply}");

    client
        .call(
            Some(&page),
            "DOM.setFileInputFiles",
            json!({"files": [mine], "objectId": input}),
        )
        .await;
    assert_eq!(client.eval(&page, read_back).await, "my own letter");
    assert!(!secret_text.is_empty());
    server.stop().await;
}

/// A client that asks for download events hears only its own context's downloads (its
/// page's, and a subframe's), and never the broker's paths; before, it heard every
/// download of every context in its Chrome, with the other session's folder in `filePath`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_events_reach_only_their_own_context() {
    let server = start().await;
    let site = start_hostile_site().await;
    let a = create(&server, KEY_A, json!({})).await;
    let b = create(&server, KEY_A, json!({})).await;
    assert_eq!(server.broker.shared().browsers().len(), 1, "one shared Chrome");

    let mut listener = CdpClient::connect_url(cdp_url(&a)).await;
    listener
        .call(
            None,
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "eventsEnabled": true}),
        )
        .await;
    let (_, a_page) = listener.own_page().await;
    listener.call(Some(&a_page), "Page.enable", json!({})).await;

    // B downloads; A's listener must not hear of it.
    let mut other = CdpClient::connect_url(cdp_url(&b)).await;
    let (_, b_page) = other.own_page().await;
    other.load(&b_page, &format!("{site}/links")).await;
    other.eval(&b_page, &click("/b-secret.bin")).await;
    until_complete(&server, KEY_A, id(&b), "b-secret.bin").await;

    // A downloads from a subframe of its own page; once A has heard its own download
    // finish, it has heard whatever it was going to hear of B's, which came first.
    listener.load(&a_page, &format!("{site}/framed")).await;
    listener
        .eval(
            &a_page,
            "new Promise(r => { const f = document.querySelector('#inner'); \
             const go = () => { f.contentDocument.querySelector('#a-own').click(); r(1); }; \
             f.contentDocument && f.contentDocument.readyState === 'complete' ? go() : f.onload = go; })",
        )
        .await;
    listener
        .wait_event(|e| e["method"] == "Browser.downloadProgress" && e["params"]["state"] == "completed")
        .await;
    until_complete(&server, KEY_A, id(&a), "a-own.bin").await;

    let downloads: Vec<&Value> = listener
        .events
        .iter()
        .filter(|e| e["method"].as_str().is_some_and(|m| m.starts_with("Browser.download")))
        .collect();
    let heard = serde_json::to_string(&downloads).unwrap();
    assert!(!heard.contains("b-secret"), "A heard B's download: {heard}");
    assert!(!heard.contains(id(&b)), "A heard B's session: {heard}");
    assert!(!heard.contains("filePath"), "a broker path reached the client: {heard}");
    assert!(
        downloads
            .iter()
            .any(|e| e["method"] == "Browser.downloadWillBegin" && e["params"]["suggestedFilename"] == "a-own.bin"),
        "A heard its own subframe's download: {heard}"
    );
    server.stop().await;
}

/// Local files, Chrome's own pages and another scheme's source cannot be opened in a tab,
/// however the URL is spelled, through CDP or discovery's `/json/new`, for context and
/// process sessions; no tab shows their content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_cannot_be_opened_at_local_or_chrome_urls() {
    let server = start().await;
    let ours = create(&server, KEY_A, json!({})).await;
    let hostile = [
        "file:///etc/passwd",
        " \t FiLe:///etc/passwd",
        "fi\nle:/etc/passwd",
        "view-source:file:///etc/passwd",
        "chrome://version",
        "devtools://devtools/bundled/inspector.html",
        "about:version",
        "filesystem:file:///etc/passwd",
    ];
    let mut client = CdpClient::connect_url(cdp_url(&ours)).await;
    let (_, page) = client.own_page().await;
    for url in hostile {
        let reply = client.send(None, "Target.createTarget", json!({"url": url})).await;
        assert!(reply["error"].is_object(), "createTarget {url:?}: {reply}");
        let reply = client.send(Some(&page), "Page.navigate", json!({"url": url})).await;
        assert!(reply["error"].is_object(), "navigate {url:?}: {reply}");
    }
    // A JSON escape is read as Chrome reads it.
    let n = client.next_id();
    let escaped =
        format!(r#"{{"id":{n},"method":"Target.createTarget","params":{{"url":"\u0066ile:///etc/passwd"}}}}"#);
    let reply = client.send_raw(n, &escaped).await;
    assert!(reply["error"].is_object(), "{reply}");

    let json_new = |session: &Value, url: &str| {
        let path = format!(
            "/devtools/browser/{}/json/new?token={}&url={}",
            id(session),
            token(session),
            percent_encode(url)
        );
        let addr = server.addr;
        async move { http(addr, Method::PUT, &path, None, None).await }
    };
    let process = create(&server, KEY_A, json!({"isolation": "process"})).await;
    for session in [&ours, &process] {
        for url in hostile {
            let r = json_new(session, url).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "/json/new?url={url:?}: {}", r.body);
        }
        let opened = json_new(session, "about:blank").await;
        assert_eq!(opened.status, StatusCode::OK, "{}", opened.body);
    }

    // What every tab of both sessions shows: nothing local.
    for session in [&ours, &process] {
        let listed = server.discovery(session, "json/list").await;
        for tab in listed.json.as_array().unwrap() {
            let url = tab["url"].as_str().unwrap_or_default();
            assert!(
                url.starts_with("about:") || url.starts_with("http"),
                "a tab shows {url}: {}",
                listed.body
            );
        }
    }
    let shown = client
        .eval(&page, "location.href + document.documentElement.innerText")
        .await;
    assert!(!shown.as_str().unwrap().contains("root:"), "{shown}");
    server.stop().await;
}

/// One message past `max_parsed_message_bytes` (16 MiB by default) on a context session's
/// `cdp_url` or a live view socket is refused with close 1009 before the broker reads it,
/// and the session works on; a process session's bytes, relayed unparsed, keep the larger
/// `max_message_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_the_parsing_budget_is_refused_and_the_session_works_on() {
    let server = TestServer::start_with(|c| {
        c.pool_size = 0;
        c.context_browsers = 1;
    })
    .await;
    let ours = create(&server, KEY_A, json!({"isolation": "context"})).await;
    let over = 17 << 20;
    // A long string: cheap to parse, so the old broker answered it with an error instead.
    let big = format!("\"{}\"", "x".repeat(over));

    let mut ws = ws_connect(cdp_url(&ours)).await.unwrap();
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(
        await_close(&mut ws, Duration::from_secs(10)).await.map(|c| c.0),
        Some(1009)
    );
    let mut client = CdpClient::connect_url(cdp_url(&ours)).await;
    client.own_page().await;

    let read_only = ours["metadata"]["live_url_read_only"].as_str().unwrap();
    let socket = read_only
        .replacen("http://", "ws://", 1)
        .replacen("?token=", "/cdp?token=", 1);
    let mut viewer = ws_connect(&socket).await.unwrap();
    viewer.send(Message::text(big)).await.unwrap();
    assert_eq!(
        await_close(&mut viewer, Duration::from_secs(10)).await.map(|c| c.0),
        Some(1009)
    );
    let mut viewer = CdpClient::connect_url(&socket).await;
    viewer.call(None, "Target.getTargets", json!({})).await;

    let process = create(&server, KEY_A, json!({"isolation": "process"})).await;
    let mut direct = CdpClient::connect_url(cdp_url(&process)).await;
    let (_, page) = direct.own_page().await;
    let long = "y".repeat(over);
    let echoed = direct
        .call(
            Some(&page),
            "Runtime.evaluate",
            json!({"expression": format!("'{long}'.length"), "returnByValue": true}),
        )
        .await;
    assert_eq!(echoed["result"]["value"], over);
    server.stop().await;
}

fn percent_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
