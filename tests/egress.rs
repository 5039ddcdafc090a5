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

/// A server on `ip` that counts the TCP connections it accepts (whatever comes on them)
/// and answers each with a small page; a UDP socket on the same address and port counts
/// the datagrams it gets.
async fn counting_listener(ip: &str) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let udp = tokio::net::UdpSocket::bind(addr).await.unwrap();
    let (accepted, datagrams) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // The request read first: closing on unread bytes would reset the connection.
                if read_request(&mut stream, &mut Vec::new()).await.is_some() {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let count = datagrams.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while udp.recv_from(&mut buf).await.is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, accepted, datagrams)
}

/// What `probe` (a JavaScript expression) answers in a page of `session` on `page`.
async fn probe(session: &Value, page: &str, probe: &str) -> Value {
    let seen = node("visit.mjs", &[session["cdp_url"].as_str().unwrap(), page, probe]).await;
    assert_eq!(seen["ok"], true, "the page loads: {seen}");
    seen["value"].clone()
}

/// A request CORS cannot fail: `sent` if any response came back, `refused` on a network
/// error.
fn fetch_probe(url: &str) -> String {
    format!("fetch('{url}', {{mode: 'no-cors', cache: 'no-store'}}).then(() => 'sent', () => 'refused')")
}

/// A WebSocket to `url`: `open`, or `failed` (the test servers answer plain HTTP, so a
/// WebSocket that reached one fails too: the servers' counts tell them apart).
fn websocket_probe(url: &str) -> String {
    format!(
        "new Promise((done) => {{ const w = new WebSocket('{url}'); w.onopen = () => done('open'); \
         w.onerror = () => done('failed'); setTimeout(() => done('timeout'), 8000); }})"
    )
}

/// An RTCPeerConnection gathering candidates with a STUN server (UDP) and a TURN server
/// over TCP at `addr`; answers once gathering is done.
fn webrtc_probe(addr: std::net::SocketAddr) -> String {
    format!(
        "new Promise((done) => {{ const pc = new RTCPeerConnection({{iceServers: [\
         {{urls: 'stun:{addr}'}}, {{urls: 'turn:{addr}?transport=tcp', username: 'u', credential: 'p'}}]}}); \
         pc.createDataChannel('x'); \
         pc.onicegatheringstatechange = () => {{ if (pc.iceGatheringState === 'complete') done('gathered'); }}; \
         pc.createOffer().then((o) => pc.setLocalDescription(o)); setTimeout(() => done('timeout'), 8000); }})"
    )
}

/// Chrome's flag `name` (`--name=value`) of the browser behind `session`'s connection.
async fn browser_flag(session: &Value, name: &str) -> String {
    let mut ws = ws_connect(session["cdp_url"].as_str().unwrap()).await.unwrap();
    let pid = browser_pid(&mut ws).await;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let prefix = format!("--{name}=");
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .find_map(|arg| arg.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("{name} on the browser's command line"))
}

/// SECURITY.md: a page cannot reach another session's DevTools port or its gateway, even
/// with loopback open to pages, nor a denied address by WebSocket or WebRTC. Each probe
/// has a control that does arrive at an allowed listener of the same kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reaches_no_other_sessions_browser_or_gateway_nor_denied_addresses_by_websocket_or_webrtc() {
    let site = start_site().await;
    let (allowed, allowed_tcp, _) = counting_listener("127.0.0.1").await;
    let (denied, denied_tcp, denied_udp) = counting_listener("127.0.0.2").await;
    // Loopback open to pages (the tests' local opt-in), 127.0.0.2 denied.
    let server = TestServer::start_with(|c| {
        c.pool_size = 2;
        c.browser_egress_deny = vec!["127.0.0.2/32".into()];
    })
    .await;
    let a = server.create(json!({})).await;
    let b = server.create(json!({})).await;
    let page = format!("http://{site}/");

    // B's DevTools port (Chrome writes it beside its profile) and its gateway's port.
    let b_profile = std::path::PathBuf::from(browser_flag(&b, "user-data-dir").await);
    let devtools_port: u16 = std::fs::read_to_string(b_profile.join("DevToolsActivePort"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let b_gateway = browser_flag(&b, "proxy-server").await;
    let gateway_port: u16 = b_gateway.rsplit(':').next().unwrap().parse().unwrap();

    // The control: a loopback listener hears A's probes of each kind.
    assert_eq!(
        probe(&a, &page, &fetch_probe(&format!("http://{allowed}/"))).await,
        "sent"
    );
    let after_fetch = allowed_tcp.load(Ordering::SeqCst);
    assert!(after_fetch >= 1, "the control fetch arrived");
    probe(&a, &page, &websocket_probe(&format!("ws://{allowed}/"))).await;
    let after_websocket = allowed_tcp.load(Ordering::SeqCst);
    assert!(after_websocket > after_fetch, "the control WebSocket arrived");
    // WebRTC is held to the proxy (no UDP leaves); its TURN over TCP goes through the
    // gateway like any connection.
    probe(&a, &page, &webrtc_probe(allowed)).await;
    assert!(
        allowed_tcp.load(Ordering::SeqCst) > after_websocket,
        "the control TURN connection arrived"
    );

    // B's DevTools and gateway, from A's page: refused by A's gateway (counted), by fetch
    // and by WebSocket.
    for port in [devtools_port, gateway_port] {
        for host in ["127.0.0.1", "localhost"] {
            let before = refused(&server).await;
            let url = format!("http://{host}:{port}/json/version");
            assert_eq!(probe(&a, &page, &fetch_probe(&url)).await, "refused", "{url}");
            let ws = format!("ws://{host}:{port}/devtools/browser");
            assert_eq!(probe(&a, &page, &websocket_probe(&ws)).await, "failed", "{ws}");
            assert!(
                refused(&server).await >= before + 2,
                "{host}:{port} refused by the policy"
            );
        }
    }
    // B still answers its own client: nothing of A's closed or took its browser.
    let mut b_client = ws_connect(b["cdp_url"].as_str().unwrap()).await.unwrap();
    cdp_call(&mut b_client, 1, "Browser.getVersion", json!({})).await;

    // A denied address, by WebSocket and WebRTC: its listeners hear nothing.
    let before = refused(&server).await;
    assert_eq!(
        probe(&a, &page, &websocket_probe(&format!("ws://{denied}/"))).await,
        "failed"
    );
    probe(&a, &page, &webrtc_probe(denied)).await;
    assert!(refused(&server).await > before, "refused by the policy");
    assert_eq!(
        denied_tcp.load(Ordering::SeqCst),
        0,
        "a connection reached the denied address"
    );
    assert_eq!(
        denied_udp.load(Ordering::SeqCst),
        0,
        "a datagram reached the denied address"
    );
    server.stop().await;
}

/// WebRTC cannot go around a session's gateway over UDP on either Chrome a process session
/// runs, nor in a context session (shared browsers run the headless shell): a page's STUN
/// packets to a denied address never arrive, while its TURN over TCP goes through the
/// gateway (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_sends_no_udp_around_the_gateway_on_any_browser() {
    let site = start_site().await;
    let (allowed, allowed_tcp, allowed_udp) = counting_listener("127.0.0.1").await;
    let (denied, _, denied_udp) = counting_listener("127.0.0.2").await;
    let server = TestServer::start_with(|c| c.browser_egress_deny = vec!["127.0.0.2/32".into()]).await;
    let page = format!("http://{site}/");
    for body in [
        json!({"browser": "shell"}),
        json!({"browser": "full"}),
        json!({"isolation": "context"}),
    ] {
        let session = server.create(body.clone()).await;
        let before = allowed_tcp.load(Ordering::SeqCst);
        probe(&session, &page, &webrtc_probe(allowed)).await;
        assert!(
            allowed_tcp.load(Ordering::SeqCst) > before,
            "{body}: the control TURN connection arrived"
        );
        probe(&session, &page, &webrtc_probe(denied)).await;
        assert_eq!(
            denied_udp.load(Ordering::SeqCst),
            0,
            "{body}: a datagram reached the denied address"
        );
        assert_eq!(
            allowed_udp.load(Ordering::SeqCst),
            0,
            "{body}: a datagram left around the gateway"
        );
        server.terminate(session["session_id"].as_str().unwrap()).await;
    }
    server.stop().await;
}
