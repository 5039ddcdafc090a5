//! Every managed browser is confined by the kernel: driven as a hostile tenant would drive
//! it, through nothing but its `cdp_url`, a session's Chrome reads none of the broker's
//! files (the token secret, other sessions' data), writes nowhere but its own directories,
//! connects nowhere but its gateway, and sees none of the broker's environment.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn secret(server: &TestServer) -> String {
    std::fs::read_to_string(server.data_dir.path().join("token_secret")).expect("the broker wrote its secret")
}

/// A page read through the session shows what it should (so that a read that shows
/// nothing is the confinement's doing, not a broken probe).
async fn assert_pages_are_readable(client: &mut CdpClient, context: Option<&str>, url: &str) -> String {
    let page = client.open(url, context).await.expect("a page opens");
    let text = client.settled_text(&page).await;
    assert!(text.contains("control-marker-7f3a"), "the probe reads a page: {text}");
    page
}

/// Every way a tenant's page can name a file of the broker's: a new tab, a navigation, the
/// directory listing, `view-source:`; none shows the secret's bytes or another session's id.
async fn assert_broker_files_unreadable(server: &TestServer, session: &Value, other: &Value) {
    let secret = secret(server);
    let data = server.data_dir.path();
    // A name only a listing of the data directory can show.
    std::fs::write(data.join("listing-marker-91c2"), "").unwrap();
    let other_id = other["session_id"].as_str().unwrap();
    let context = session["isolation"].as_str() == Some("context");
    let mut client = CdpClient::connect(session).await;
    // A context session's tabs go into its own context.
    let own_context = if context {
        let targets = client.send(None, "Target.getTargets", json!({})).await;
        targets["result"]["targetInfos"][0]["browserContextId"]
            .as_str()
            .map(str::to_owned)
    } else {
        None
    };
    let site = serve_pages(|_| (String::new(), "<p>control-marker-7f3a</p>".into())).await;
    let page = assert_pages_are_readable(&mut client, own_context.as_deref(), &format!("http://{site}/")).await;

    let mut seen = Vec::new();
    for url in [
        file_url(&data.join("token_secret")),
        file_url(data),
        file_url(&data.join("sessions")),
        format!("view-source:{}", file_url(&data.join("token_secret"))),
        // The broker's own process (this test's): its environment and command line. (`/proc`
        // is readable for Chrome's own needs; Landlock keeps other processes' environment
        // out, and Chrome reads a `/proc` file's reported size, 0 bytes.)
        format!("file:///proc/{}/environ", std::process::id()),
        format!("file:///proc/{}/cmdline", std::process::id()),
        format!("file:///proc/{}/status", std::process::id()),
    ] {
        if let Ok(tab) = client.open(&url, own_context.as_deref()).await {
            seen.push((url.clone(), client.settled_text(&tab).await));
        }
        seen.push((url.clone(), client.navigate(&page, &url).await));
    }
    for (url, text) in &seen {
        assert!(!text.contains(&secret), "{url} showed the token secret: {text}");
        assert!(!text.contains(other_id), "{url} showed another session's id: {text}");
        assert!(
            !text.contains("listing-marker-91c2"),
            "{url} listed the data directory: {text}"
        );
        // What only the broker's environment and command line hold.
        for leak in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", env!("CARGO_CRATE_NAME")] {
            assert!(
                !text.contains(leak),
                "{url} showed the broker's process ({leak}): {text}"
            );
        }
    }
}

/// Process sessions run the headless shell by default and the full Chromium when asked:
/// each test of a process session holds for both.
const BROWSERS: [&str; 2] = ["shell", "full"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_session_reads_none_of_the_brokers_files() {
    let server = TestServer::start_with(|c| c.pool_size = 2).await;
    for browser in BROWSERS {
        let other = server.create(json!({"browser": browser})).await;
        let session = server.create(json!({"browser": browser})).await;
        assert_eq!(session["browser"], browser);
        assert_broker_files_unreadable(&server, &session, &other).await;
    }
    server.stop().await;
}

/// A shell run as one process (`single_process_shell`) has its pages in the browser
/// process, outside Chrome's sandbox: the kernel's confinement is all that holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_process_session_reads_none_of_the_brokers_files() {
    let server = TestServer::start_with(|c| c.single_process_shell = true).await;
    let other = server.create(json!({})).await;
    let session = server.create(json!({})).await;
    assert_eq!(session["browser"], "shell");
    // The browser behind the session is the one-process shell this is about.
    let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    let browser = browser_pid(&mut ws).await;
    assert!(
        command_line(browser).iter().any(|f| f == "--single-process"),
        "the session's browser runs as one process"
    );
    assert_broker_files_unreadable(&server, &session, &other).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_session_reads_none_of_the_brokers_files() {
    let server = TestServer::start().await;
    let other = server.create(json!({"isolation": "context"})).await;
    let session = server.create(json!({"isolation": "context"})).await;
    assert_broker_files_unreadable(&server, &session, &other).await;
    server.stop().await;
}

/// A site on `ip` that answers every path with the header lines `headers` and
/// `body`, and counts the connections it accepts.
async fn counting_site(
    ip: &str,
    headers: &'static str,
    body: &'static str,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, accepted)
}

/// Every path a download named `token_secret`.
const A_DOWNLOAD: &str =
    "content-type: application/octet-stream\r\ncontent-disposition: attachment; filename=\"token_secret\"\r\n";
/// Every path a page.
const A_PAGE: &str = "content-type: text/html\r\n";

fn digest(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap_or_default()).to_vec()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A process session holds raw CDP to its browser: it may point Chrome's downloads at the
/// broker's data directory; the download still cannot land there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_session_writes_nothing_outside_its_own_directories() {
    let (site, hits) = counting_site("127.0.0.1", A_DOWNLOAD, "attacker-text").await;
    let server = TestServer::start().await;
    let data = server.data_dir.path().to_owned();
    let secret_path = data.join("token_secret");
    let before = (digest(&secret_path), entries(&data));
    for browser in BROWSERS {
        writes_nothing_outside(&server, browser, site, &hits).await;
    }
    let after = (digest(&secret_path), entries(&data));
    assert_eq!(before.0, after.0, "the token secret was overwritten");
    assert_eq!(before.1, after.1, "a file appeared in the data directory");
    assert!(!std::fs::read_to_string(&secret_path).unwrap().contains("attacker-text"));
    server.stop().await;
}

/// A session of `browser` told to download into the data directory: the download is
/// requested (one more hit on the site) and ends in the browser.
async fn writes_nothing_outside(
    server: &TestServer,
    browser: &str,
    site: std::net::SocketAddr,
    hits: &Arc<AtomicUsize>,
) {
    let data = server.data_dir.path().to_owned();
    let hits_before = hits.load(Ordering::SeqCst);
    let session = server.create(json!({"browser": browser})).await;
    assert_eq!(session["browser"], browser);
    let mut client = CdpClient::connect(&session).await;
    let set = client
        .send(
            None,
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": data, "eventsEnabled": true}),
        )
        .await;
    assert!(set.get("result").is_some(), "a process session's CDP is its own: {set}");
    let page = client.open("about:blank", None).await.unwrap();
    client
        .send(
            Some(&page),
            "Page.navigate",
            json!({"url": format!("http://{site}/secret")}),
        )
        .await;
    assert!(
        eventually(Duration::from_secs(10), || hits.load(Ordering::SeqCst) > hits_before).await,
        "the download was requested (so the write was attempted)"
    );
    // The broker hears how the download ended (it watches every download of the session):
    // wait for that, rather than for time.
    let id = session["session_id"].as_str().unwrap();
    let ended = eventually_async(Duration::from_secs(15), || async {
        let files = server
            .call(Method::GET, &format!("/public/sessions/{id}/files"), Some(KEY_A), None)
            .await;
        files.json["files"]
            .as_array()
            .is_some_and(|f| f.iter().any(|e| e["state"] != "in_progress"))
    })
    .await;
    assert!(ended, "the download ended in the browser");
}

/// Landlock lets a process session's browser connect to its gateway's port only: a browser
/// context told to use no proxy (`direct://`) cannot reach a site the egress policy denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_session_cannot_go_around_its_gateway() {
    // Loopback is one /8: the denied site listens on an address of its own.
    let (site, hits) = counting_site("127.0.0.2", A_DOWNLOAD, "never-served").await;
    let server = TestServer::start_with(|c| c.browser_egress_deny = vec!["127.0.0.2/32".into()]).await;
    for browser in BROWSERS {
        cannot_go_around_gateway(&server, browser, site).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the denied site was reached");
    server.stop().await;
}

async fn cannot_go_around_gateway(server: &TestServer, browser: &str, site: std::net::SocketAddr) {
    let session = server.create(json!({"browser": browser})).await;
    assert_eq!(session["browser"], browser);
    let mut client = CdpClient::connect(&session).await;
    let created = client
        .send(None, "Target.createBrowserContext", json!({"proxyServer": "direct://"}))
        .await;
    let context = created["result"]["browserContextId"]
        .as_str()
        .expect("a context")
        .to_owned();
    // A page without the network: what a tab of that context can show.
    let page =
        assert_pages_are_readable(&mut client, Some(&context), "data:text/html,<p>control-marker-7f3a</p>").await;
    let text = client.navigate(&page, &format!("http://{site}/")).await;
    assert!(!text.contains("never-served"), "{text}");
    // Through the gateway, as every page's connection goes by default: refused there.
    let default_page = client.open("about:blank", None).await.unwrap();
    let text = client.navigate(&default_page, &format!("http://{site}/")).await;
    assert!(!text.contains("never-served"), "{text}");
}

/// A raw CDP client on the browser target of the shared browser that serves `session`
/// (found through the broker, as the broker's own connection reaches it), and its ports.
async fn shared_browser_of(server: &TestServer) -> (CdpClient, Vec<u16>) {
    let shared = server.broker.shared().browsers();
    let [browser] = shared.as_slice() else {
        panic!("one shared browser: {shared:?}");
    };
    let version = http(
        format!("127.0.0.1:{}", browser.port).parse().unwrap(),
        Method::GET,
        "/json/version",
        None,
        None,
    )
    .await;
    let url = version.json["webSocketDebuggerUrl"]
        .as_str()
        .expect("the browser target")
        .to_owned();
    (
        CdpClient::connect(&json!({ "cdp_url": url })).await,
        browser.gateway_ports.clone(),
    )
}

/// Landlock lets a shared browser connect to its own gateways' ports only. A context
/// session's clients never hold raw CDP to it (the context filter stands between, and
/// refuses `Target.createBrowserContext`); this test plays the filter having failed: it
/// drives the shared browser directly, makes a context that uses no proxy (`direct://`),
/// and a page there reaches nothing, while the session's own page reaches the same URL
/// through its context's gateway (loopback allowed by the egress policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_browser_cannot_go_around_its_contexts_gateways() {
    let (site, accepted) = counting_site("127.0.0.1", A_PAGE, "<p>reached-marker-5d1e</p>").await;
    let url = format!("http://{site}/");
    let server = TestServer::start_with(|c| c.browser_egress_allow = vec!["loopback".into()]).await;
    let session = server.create(json!({"isolation": "context"})).await;

    let (mut raw, _) = shared_browser_of(&server).await;
    let created = raw
        .send(None, "Target.createBrowserContext", json!({"proxyServer": "direct://"}))
        .await;
    let direct = created["result"]["browserContextId"]
        .as_str()
        .unwrap_or_else(|| panic!("a context: {created}"))
        .to_owned();
    let page = raw.open("about:blank", Some(&direct)).await.expect("a tab opens");
    let navigated = raw.send(Some(&page), "Page.navigate", json!({ "url": url })).await;
    // The navigation is over (it failed) before Chrome answers: nothing is still on its way.
    assert!(
        navigated["result"]["errorText"].as_str().is_some_and(|e| !e.is_empty()),
        "a page of a context without a proxy connected: {navigated}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the site was reached around the gateway"
    );

    // The control: the session's own page, through its gateway, reaches the same site.
    let mut client = CdpClient::connect(&session).await;
    let targets = client.send(None, "Target.getTargets", json!({})).await;
    let own = targets["result"]["targetInfos"][0]["browserContextId"]
        .as_str()
        .expect("the session's context")
        .to_owned();
    let page = client.open(&url, Some(&own)).await.expect("a tab opens");
    let text = client.settled_text(&page).await;
    assert!(text.contains("reached-marker-5d1e"), "{text}");
    assert!(accepted.load(Ordering::SeqCst) > 0);
    server.stop().await;
}

/// A session's network counters as the API shows them.
async fn network(server: &TestServer, id: &str) -> Value {
    server.get(id).await.json["network"].clone()
}

/// Reads `stream` until it ends (or `limit` passes); answers what came and whether it ended.
async fn read_to_end_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let ended = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, ended)
}

/// A shared browser's one gateway port serves one context after another: the next
/// session starts with zero bytes, the first one's tunnel is closed when it ends, and a
/// connection left queued on the port between the two is closed unserved, not counted on
/// the second session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_port_serves_the_next_context_with_nothing_of_the_last() {
    let (site, _) = counting_site("127.0.0.1", A_PAGE, "<p>reached-marker-5d1e</p>").await;
    let server = TestServer::start_with(|c| {
        c.context_browsers = 1;
        c.max_contexts_per_browser = 1;
        c.context_spares = 0;
    })
    .await;
    let first = server.create(json!({"isolation": "context"})).await;
    let first_id = first["session_id"].as_str().unwrap().to_owned();
    let (_, ports) = shared_browser_of(&server).await;
    let [port] = ports.as_slice() else {
        panic!("one gateway port: {ports:?}");
    };
    // The first session's page uses the network, and a tunnel is open through its gateway.
    let mut client = CdpClient::connect(&first).await;
    let targets = client.send(None, "Target.getTargets", json!({})).await;
    let own = targets["result"]["targetInfos"][0]["browserContextId"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = client.open(&format!("http://{site}/"), Some(&own)).await.unwrap();
    assert!(client.settled_text(&page).await.contains("reached-marker-5d1e"));
    assert!(network(&server, &first_id).await["bytes_in"].as_u64().unwrap() > 0);
    let mut tunnel = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await.unwrap();
    tunnel
        .write_all(format!("CONNECT {site} HTTP/1.1\r\nHost: {site}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = tunnel.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );

    assert_eq!(server.terminate(&first_id).await.status, StatusCode::NO_CONTENT);
    let (_, closed) = read_to_end_within(&mut tunnel, Duration::from_secs(10)).await;
    assert!(closed, "the first session's tunnel outlived it");
    // A connection that reaches the port between two contexts waits in its queue.
    let mut queued = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await.unwrap();
    queued
        .write_all(format!("GET http://{site}/ HTTP/1.1\r\nHost: {site}\r\n\r\n").as_bytes())
        .await
        .unwrap();

    let second = server.create(json!({"isolation": "context"})).await;
    let second_id = second["session_id"].as_str().unwrap().to_owned();
    let (_, again) = shared_browser_of(&server).await;
    assert_eq!(again, ports, "the second context is served on the same port");
    let stats = network(&server, &second_id).await;
    assert_eq!(
        (stats["bytes_in"].as_u64(), stats["bytes_out"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    let (answer, closed) = read_to_end_within(&mut queued, Duration::from_secs(10)).await;
    assert!(
        answer.is_empty(),
        "the queued connection was served: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(closed, "the queued connection was left open");
    let stats = network(&server, &second_id).await;
    assert_eq!(
        (stats["bytes_in"].as_u64(), stats["bytes_out"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    server.stop().await;
}

/// The environment of every Chrome process the broker started (each browser's process
/// group: the headless shell's helpers do not name the data directory).
fn browser_environments(under: &Path) -> Vec<Vec<String>> {
    chrome_processes_under(under)
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/environ")).ok())
        .map(|env| {
            env.split(|b| *b == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chrome_sees_none_of_the_brokers_environment() {
    // This test process runs under cargo, whose variables a browser would inherit.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let server = TestServer::start().await;
    for browser in BROWSERS {
        let session = server.create(json!({"browser": browser})).await;
        let mut client = CdpClient::connect(&session).await;
        client.open("about:blank", None).await.unwrap();
    }
    let environments = browser_environments(server.data_dir.path());
    assert!(!environments.is_empty(), "the browser's processes were found");
    for env in environments {
        for var in &env {
            let name = var.split('=').next().unwrap_or_default();
            assert!(
                !(name.starts_with("CARGO") || name.starts_with("CDPGATE") || name.starts_with("AWS")),
                "a browser inherited {name}: {env:?}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_how_browsers_are_confined() {
    let server = TestServer::start().await;
    let ready = server.call(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert!(
        ready.json["browser_confinement"]
            .as_str()
            .is_some_and(|c| c.starts_with("landlock (ABI ")),
        "{}",
        ready.body
    );
    server.stop().await;
}
