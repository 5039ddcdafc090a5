//! Where a page of a managed browser may go by default, seen from a hostile page: the
//! broker's host and its network are closed in every spelling, and the one-line opt-in
//! for local use opens loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use hyper::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const SECRET: &str = "secret-of-the-broker-host-7f3a";

/// A server on every address of this host (IPv6 and IPv4, `[::]`) that answers every
/// request with `SECRET`; answers its port and how many requests it has seen.
async fn start_secret_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("[::]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut stream, &mut buf).await.is_some() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = format!("<html><body>{SECRET}</body></html>");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                }
            });
        }
    });
    (port, seen)
}

async fn visit(session: &Value, url: &str) -> Value {
    node(
        "visit.mjs",
        &[
            session["cdp_url"].as_str().unwrap(),
            url,
            "document.documentElement.outerHTML",
        ],
    )
    .await
}

async fn refused(server: &TestServer) -> u64 {
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("cdpgate_browser_egress_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_page_reaches_nothing_on_the_brokers_host() {
    let (port, seen) = start_secret_server().await;
    // The default policy, not the tests' loopback opt-in.
    let server = TestServer::start_with(|c| c.browser_egress_allow = Vec::new()).await;
    let session = server.create(json!({})).await;
    let before = refused(&server).await;
    let urls = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://127.9.9.9:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::]:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://anything.localhost:{port}/"),
    ];
    for url in &urls {
        let page = visit(&session, url).await;
        assert!(
            !page.to_string().contains(SECRET),
            "{url} loaded the host's page: {page}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 0, "{url} reached the host's server");
    }
    // Refused by the broker's policy (counted), not merely by Chrome or the network.
    let after = refused(&server).await;
    assert!(after >= before + 3, "refusals counted: {before} -> {after}");
    server.stop().await;

    // The one-line opt-in for local use opens loopback: the same page loads.
    let local = TestServer::start_with(|c| c.browser_egress_allow = vec!["loopback".into()]).await;
    let session = local.create(json!({})).await;
    let page = visit(&session, &format!("http://127.0.0.1:{port}/")).await;
    assert!(page["value"].as_str().unwrap_or_default().contains(SECRET), "{page}");
    assert!(seen.load(Ordering::SeqCst) >= 1);
    local.stop().await;
}
