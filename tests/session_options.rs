//! Session options with real Chromium and Puppeteer: an upstream proxy with credentials
//! (HTTP with CONNECT, and SOCKS5, both written here), `bypass`, two sessions on two
//! proxies at once, the identity (user agent, locale, time zone), the idle timeout, and
//! the egress policy of managed browsers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

const USER: &str = "scraper";
const PASSWORD: &str = "pw-5ecret-Zq9";

/// Names the test proxies resolve (Chrome sends them names; this closed network has no DNS).
type Hosts = Arc<HashMap<String, SocketAddr>>;

/// What a test proxy saw: each request's method and target, and whether its credentials
/// were right.
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

fn seen_targets(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(m, t, _)| format!("{m} {t}"))
        .collect()
}

/// An HTTP proxy requiring `Proxy-Authorization` (Basic USER:PASSWORD): `CONNECT` tunnels
/// and absolute-form requests, to the names in `hosts` only.
async fn start_http_proxy(hosts: Hosts) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let expected = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
    .to_ascii_lowercase();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (hosts, log, expected) = (hosts.clone(), log.clone(), expected.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some((head, body)) = read_request(&mut client, &mut buf).await else {
                    return;
                };
                let first = head.lines().next().unwrap_or("").to_owned();
                let mut words = first.split_whitespace();
                let (method, target) = (
                    words.next().unwrap_or("").to_ascii_uppercase(),
                    words.next().unwrap_or("").to_owned(),
                );
                let authorized = head
                    .lines()
                    .any(|l| l.trim() == format!("proxy-authorization: {expected}"));
                log.lock().unwrap().push((method.clone(), target.clone(), authorized));
                if !authorized {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"t\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if method == "CONNECT" {
                    let Some(to) = hosts.get(&target).copied() else {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                // Absolute form: `GET http://host[:port]/path`.
                let url = url::Url::parse(&target).unwrap();
                let key = format!("{}:{}", url.host_str().unwrap(), url.port_or_known_default().unwrap());
                let Some(to) = hosts.get(&key).copied() else { return };
                let Ok(mut upstream) = TcpStream::connect(to).await else {
                    return;
                };
                let rest: String = head
                    .lines()
                    .skip(1)
                    .filter(|l| !l.starts_with("proxy-authorization"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let request = format!("{method} {} HTTP/1.1\r\n{rest}\r\n", url.path());
                let _ = upstream.write_all(request.as_bytes()).await;
                let _ = upstream.write_all(&body).await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

/// A SOCKS5 proxy (RFC 1928) requiring username and password (RFC 1929).
async fn start_socks5_proxy(hosts: Hosts) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let (hosts, log) = (hosts.clone(), log.clone());
            tokio::spawn(async move {
                let mut greeting = [0u8; 2];
                c.read_exact(&mut greeting).await.ok()?;
                let mut methods = vec![0u8; greeting[1] as usize];
                c.read_exact(&mut methods).await.ok()?;
                if !methods.contains(&2) {
                    c.write_all(&[5, 0xff]).await.ok()?;
                    return None;
                }
                c.write_all(&[5, 2]).await.ok()?;
                let mut v = [0u8; 2];
                c.read_exact(&mut v).await.ok()?;
                let mut user = vec![0u8; v[1] as usize];
                c.read_exact(&mut user).await.ok()?;
                let mut n = [0u8; 1];
                c.read_exact(&mut n).await.ok()?;
                let mut password = vec![0u8; n[0] as usize];
                c.read_exact(&mut password).await.ok()?;
                let authorized = user == USER.as_bytes() && password == PASSWORD.as_bytes();
                c.write_all(&[1, if authorized { 0 } else { 1 }]).await.ok()?;
                if !authorized {
                    log.lock().unwrap().push(("AUTH".into(), String::new(), false));
                    return None;
                }
                let mut request = [0u8; 4];
                c.read_exact(&mut request).await.ok()?;
                let host = match request[3] {
                    3 => {
                        c.read_exact(&mut n).await.ok()?;
                        let mut name = vec![0u8; n[0] as usize];
                        c.read_exact(&mut name).await.ok()?;
                        String::from_utf8(name).ok()?
                    }
                    1 => {
                        let mut ip = [0u8; 4];
                        c.read_exact(&mut ip).await.ok()?;
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    _ => return None,
                };
                let mut port = [0u8; 2];
                c.read_exact(&mut port).await.ok()?;
                let target = format!("{host}:{}", u16::from_be_bytes(port));
                log.lock().unwrap().push(("CONNECT".into(), target.clone(), true));
                let Some(to) = hosts.get(&target).copied() else {
                    c.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await.ok()?;
                    return None;
                };
                let mut upstream = TcpStream::connect(to).await.ok()?;
                c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await.ok()?;
                let _ = tokio::io::copy_bidirectional(&mut c, &mut upstream).await;
                Some(())
            });
        }
    });
    (addr, seen)
}

/// A WebSocket server that echoes every text message.
async fn start_ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTPS site (a self-signed certificate, which the test's browsers are told to accept)
/// answering every request with a page titled "secure page".
async fn start_https_site(dir: &std::path::Path) -> SocketAddr {
    let (cert, key) = make_certificate(dir);
    let acceptor = cdpgate::tls::acceptor(std::path::Path::new(&cert), std::path::Path::new(&key)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let page = "<html><head><title>secure page</title></head><body><h1>over TLS</h1></body></html>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A site that keeps the head of every request it gets (to read the `User-Agent` sent).
async fn start_recording_site() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Some((head, _)) = read_request(&mut stream, &mut buf).await {
                    log.lock().unwrap().push(head);
                    let page = "<html><head><title>recorded</title></head><body><h1>hi</h1></body></html>";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
            });
        }
    });
    (addr, heads)
}

/// A server on `ip` that counts the connections it accepts (whatever they ask) and answers
/// each with a small page.
async fn counting_site(ip: &str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                // The request read first: closing on unread bytes would reset the connection.
                if read_request(&mut s, &mut Vec::new()).await.is_some() {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecret")
                        .await;
                }
            });
        }
    });
    (addr, accepted)
}

fn hits(counter: &std::sync::atomic::AtomicUsize) -> usize {
    counter.load(std::sync::atomic::Ordering::SeqCst)
}

/// A page's request to `url` that CORS cannot fail: `'sent'` if a response came back
/// (opaque), `'refused'` on a network error.
fn no_cors_probe(url: &str) -> String {
    format!("fetch('{url}', {{mode: 'no-cors', cache: 'no-store'}}).then(() => 'sent', () => 'refused')")
}

fn heads_seen(heads: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    heads.lock().unwrap().clone()
}

async fn create(addr: SocketAddr, body: Value) -> Value {
    let r = http(
        addr,
        Method::POST,
        "/public/sessions",
        Some(KEY_A),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json
}

async fn get(addr: SocketAddr, id: &str) -> Response {
    http(addr, Method::GET, &format!("/public/sessions/{id}"), Some(KEY_A), None).await
}

async fn visit(session: &Value, url: &str, expression: &str) -> Value {
    node("visit.mjs", &[session["cdp_url"].as_str().unwrap(), url, expression]).await
}

const WS_ECHO: &str = "new Promise((done) => { const w = new WebSocket('ws://ws.test/'); \
    w.onopen = () => w.send('ping'); w.onmessage = (e) => done(e.data); \
    w.onerror = () => done('error'); setTimeout(() => done('timeout'), 5000); })";
const FETCH_HTTPS_MISSING: &str = "fetch('https://missing.test/').then(() => 'loaded', () => 'failed')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_proxies_carry_every_request_with_credentials_no_one_sees() {
    let site = start_site().await;
    let echo = start_ws_echo().await;
    let certs = tempfile::tempdir().unwrap();
    let secure = start_https_site(certs.path()).await;
    let hosts: Hosts = Arc::new(HashMap::from([
        ("site.test:80".to_owned(), site),
        ("secure.test:443".to_owned(), secure),
        ("other.test:80".to_owned(), site),
        ("ws.test:80".to_owned(), echo),
    ]));
    let (http_proxy, http_seen) = start_http_proxy(hosts.clone()).await;
    let (socks_proxy, socks_seen) = start_socks5_proxy(hosts.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let broker = start_binary(
        data.path(),
        &[
            ("RUST_LOG", "cdpgate=debug"),
            ("CDPGATE_MAX_SESSIONS", "5"),
            ("CDPGATE_API_KEYS", KEY_A),
            // The test's HTTPS site has a self-signed certificate.
            ("CDPGATE_CHROME_FLAGS", "--ignore-certificate-errors"),
        ],
    )
    .await;
    // Its debug log is read all along: a full pipe would stall the broker's logging.
    let Binary {
        child,
        mut lines,
        printed,
        addr,
    } = broker;
    let log = Arc::new(Mutex::new(printed));
    let reading = {
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line);
            }
        })
    };
    let proxy = |server: String, password: &str| json!({"proxy": {"server": server, "username": USER, "password": password, "bypass": ["127.0.0.1"]}});

    // Two sessions at once, each on its own proxy: HTTP and SOCKS5.
    let on_http = create(addr, proxy(format!("http://{http_proxy}"), PASSWORD)).await;
    let on_socks = create(addr, proxy(format!("socks5://{socks_proxy}"), PASSWORD)).await;
    assert_eq!(on_http["proxy"]["server"], format!("http://{http_proxy}"));
    assert_eq!(on_http["proxy"]["username"], USER);
    assert!(!on_http.to_string().contains(PASSWORD), "{on_http}");
    let (a, b) = tokio::join!(
        visit(&on_http, "http://site.test/", WS_ECHO),
        visit(&on_socks, "http://other.test/", WS_ECHO)
    );
    for seen in [&a, &b] {
        assert_eq!(seen["ok"], true, "{seen}");
        assert_eq!(seen["title"], "cdpgate test site", "{seen}");
        assert_eq!(seen["value"], "ping", "the WebSocket went through the proxy: {seen}");
    }
    let https = visit(&on_http, "https://secure.test/", "document.title").await;
    assert_eq!(https["title"], "secure page", "an https page through CONNECT: {https}");
    let missing = visit(&on_http, "http://site.test/", FETCH_HTTPS_MISSING).await;
    assert_eq!(
        missing["value"], "failed",
        "no such https site behind the test proxy: {missing}"
    );

    let through_http = seen_targets(&http_seen);
    for expected in [
        "GET http://site.test/",
        "CONNECT ws.test:80",
        "CONNECT secure.test:443",
        "CONNECT missing.test:443",
    ] {
        assert!(
            through_http.iter().any(|t| t == expected),
            "{expected} in {through_http:?}"
        );
    }
    assert!(
        http_seen.lock().unwrap().iter().all(|(_, _, ok)| *ok),
        "{through_http:?}"
    );
    assert!(
        !through_http.iter().any(|t| t.contains("other.test")),
        "{through_http:?}"
    );
    let through_socks = seen_targets(&socks_seen);
    for expected in ["CONNECT other.test:80", "CONNECT ws.test:80"] {
        assert!(
            through_socks.iter().any(|t| t == expected),
            "{expected} in {through_socks:?}"
        );
    }
    assert!(
        !through_socks.iter().any(|t| t.contains("site.test")),
        "{through_socks:?}"
    );

    // `bypass`: a direct address goes around the proxy. (Chrome's own background requests
    // may reach the proxy meanwhile: only this page's are looked for.)
    let direct = visit(&on_http, &format!("http://{site}/direct"), "document.title").await;
    assert_eq!(direct["title"], "cdpgate test site", "{direct}");
    let through_http = seen_targets(&http_seen);
    assert!(
        !through_http
            .iter()
            .any(|t| t.contains("/direct") || t.contains(&site.to_string())),
        "{through_http:?}"
    );

    // The pages' bytes are counted for the session.
    let shown = get(addr, on_http["session_id"].as_str().unwrap()).await.json;
    assert!(shown["network"]["bytes_in"].as_u64().unwrap() > 0, "{shown}");
    assert!(shown["network"]["bytes_out"].as_u64().unwrap() > 0, "{shown}");
    // Chrome tries a failed tunnel more than once.
    assert!(shown["network"]["proxy_errors"].as_u64().unwrap() >= 1, "{shown}");
    // (Chrome's own background requests, accounts.google.com, go through it too.)
    assert!(
        shown["network"]["last_proxy_error"]
            .as_str()
            .unwrap()
            .starts_with("the proxy answered 502 to CONNECT"),
        "{shown}"
    );

    // A raw CDP client watching the network sees no credentials in any message.
    let mut raw = ws_connect(on_http["cdp_url"].as_str().unwrap()).await.unwrap();
    let target = cdp_call(&mut raw, 1, "Target.createTarget", json!({"url": "about:blank"})).await;
    let attached = cdp_call(
        &mut raw,
        2,
        "Target.attachToTarget",
        json!({"targetId": target["result"]["targetId"], "flatten": true}),
    )
    .await;
    let session = attached["result"]["sessionId"].as_str().unwrap().to_owned();
    let send = |id: u64, method: &str, params: Value| {
        json!({"id": id, "method": method, "params": params, "sessionId": session}).to_string()
    };
    raw.send(tokio_tungstenite::tungstenite::Message::text(send(
        3,
        "Network.enable",
        json!({}),
    )))
    .await
    .unwrap();
    raw.send(tokio_tungstenite::tungstenite::Message::text(send(
        4,
        "Page.navigate",
        json!({"url": "http://site.test/watched"}),
    )))
    .await
    .unwrap();
    let mut messages = Vec::new();
    let watched = async {
        // Until the load finished, or its response and the headers as sent and received
        // are all in (the headless shell may report the finish late): what the check reads.
        let (mut response, mut extra) = (false, false);
        while let Some(Ok(m)) = raw.next().await {
            let text = m.into_text().unwrap_or_default().to_string();
            response |= text.contains("\"Network.responseReceived\"");
            extra |= text.contains("\"Network.responseReceivedExtraInfo\"");
            let done = text.contains("Network.loadingFinished") || (response && extra);
            messages.push(text);
            if done {
                break;
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(15), watched).await.is_ok(),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("site.test/watched")), "{messages:?}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for m in &messages {
        assert!(!m.contains(PASSWORD) && !m.contains(&encoded), "{m}");
    }
    drop(raw);

    // A proxy that is down: a network error, and the session says why.
    let down = create(addr, proxy("http://127.0.0.1:1".into(), PASSWORD)).await;
    let failed = visit(&down, "http://site.test/", "").await;
    assert_eq!(failed["ok"], false, "{failed}");
    let shown = get(addr, down["session_id"].as_str().unwrap()).await.json;
    assert!(
        shown["network"]["last_proxy_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the proxy http://127.0.0.1:1"),
        "{shown}"
    );

    // Wrong credentials: the page gets a network error, not a prompt; the session says why.
    let wrong = create(addr, proxy(format!("http://{http_proxy}"), "wrong")).await;
    let refused = visit(&wrong, "http://site.test/", "").await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("net::ERR_"), "{refused}");
    let tunnel = visit(&wrong, "http://127.0.0.1:9/", FETCH_HTTPS_MISSING).await;
    assert_eq!(tunnel["value"], "failed", "{tunnel}");
    let shown = get(addr, wrong["session_id"].as_str().unwrap()).await.json;
    assert!(shown["network"]["proxy_errors"].as_u64().unwrap() >= 2, "{shown}");
    assert!(
        shown["network"]["last_proxy_error"].as_str().unwrap().contains("407"),
        "{shown}"
    );
    let wrong_socks = create(addr, proxy(format!("socks5://{socks_proxy}"), "wrong")).await;
    let refused = visit(&wrong_socks, "http://site.test/", "").await;
    assert_eq!(refused["ok"], false, "{refused}");
    let shown = get(addr, wrong_socks["session_id"].as_str().unwrap()).await.json;
    assert!(
        shown["network"]["last_proxy_error"]
            .as_str()
            .unwrap()
            .contains("refused the credentials"),
        "{shown}"
    );

    let metrics = http(addr, Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cdpgate_upstream_proxy_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    signal(&child, libc::SIGTERM);
    assert!(tokio::time::timeout(Duration::from_secs(30), reading).await.is_ok());
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("upstream proxy error")), "{log:?}");
    for line in &log {
        assert!(!line.contains(PASSWORD) && !line.contains(&encoded), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reaches_every_page_and_the_wire() {
    let (site, heads) = start_recording_site().await;
    let server = TestServer::start().await;
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let session = server
        .create(json!({"user_agent": ua, "locale": "de-DE", "timezone": "Asia/Tokyo"}))
        .await;
    assert_eq!(session["user_agent"], ua);
    assert_eq!(session["locale"], "de-DE");
    assert_eq!(session["timezone"], "Asia/Tokyo");
    let probe = "(async () => { const worker = new Worker(URL.createObjectURL(new Blob(\
        ['postMessage(navigator.userAgent)'], {type: 'text/javascript'}))); \
        const fromWorker = await new Promise((done) => { worker.onmessage = (e) => done(e.data); \
        setTimeout(() => done('no answer'), 5000); }); \
        return { ua: navigator.userAgent, language: navigator.language, platform: navigator.platform, \
        zone: Intl.DateTimeFormat().resolvedOptions().timeZone, offset: new Date(2024, 0, 1).getTimezoneOffset(), \
        number: (1234.5).toLocaleString(), worker: fromWorker, \
        hints: navigator.userAgentData ? navigator.userAgentData.platform : null }; })()";
    let url = format!("http://{site}/");
    // The tab the session started with, and a tab the client opens.
    for which in ["new", "first"] {
        let seen = node("visit.mjs", &[session["cdp_url"].as_str().unwrap(), &url, probe, which]).await;
        assert_eq!(seen["ok"], true, "{which}: {seen}");
        let v = &seen["value"];
        assert_eq!(v["ua"], ua, "{which}: {seen}");
        assert_eq!(v["worker"], ua, "a worker too ({which}): {seen}");
        assert_eq!(v["language"], "de-DE", "{which}: {seen}");
        assert_eq!(v["zone"], "Asia/Tokyo", "{which}: {seen}");
        assert_eq!(v["offset"], -540, "{which}: {seen}");
        assert_eq!(v["number"], "1.234,5", "{which}: {seen}");
        assert_eq!(v["hints"], "Windows", "client hints to match ({which}): {seen}");
    }
    let first_heads = heads_seen(&heads);
    assert!(!first_heads.is_empty());
    for head in &first_heads {
        assert!(
            head.contains(&format!("user-agent: {}", ua.to_ascii_lowercase())),
            "{head}"
        );
        assert!(head.contains("accept-language: de-de"), "{head}");
        assert!(head.contains("sec-ch-ua-platform: \"windows\""), "{head}");
    }
    // A single action's own session takes the options too.
    let acted = server
        .run_action(
            KEY_A,
            &json!({"action": format!("go to {url}action"), "user_agent": "cdpgate-action-agent/1.0", "timezone": "UTC"}),
        )
        .await;
    assert_eq!(acted.status, StatusCode::OK, "{}", acted.body);
    assert_eq!(acted.json["success"], true, "{}", acted.body);
    let own = server.get(acted.json["session_id"].as_str().unwrap()).await.json;
    assert_eq!(own["user_agent"], "cdpgate-action-agent/1.0", "{own}");
    assert_eq!(own["timezone"], "UTC", "{own}");
    assert!(
        heads_seen(&heads)
            .iter()
            .any(|h| h.starts_with("get /action") && h.contains("user-agent: cdpgate-action-agent/1.0")),
        "{:?}",
        heads_seen(&heads)
    );
    // A session without options keeps Chrome's own identity, without `Headless`.
    let plain = server.create(json!({})).await;
    assert!(plain.get("user_agent").is_none(), "{plain}");
    let seen = node(
        "visit.mjs",
        &[plain["cdp_url"].as_str().unwrap(), &url, "navigator.userAgent"],
    )
    .await;
    let own = seen["value"].as_str().unwrap();
    assert!(own.contains(" Chrome/") && !own.contains("Headless"), "{seen}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_and_used_ones_do_not() {
    let server = TestServer::start_with(|c| c.max_sessions = 6).await;
    let status = |s: Value| (s["status"].clone(), s["end_reason"].clone());

    // No client at all: ended after 3 s, as expired with end_reason idle.
    let forgotten = server.create(json!({"idle_timeout": 3})).await;
    assert_eq!(forgotten["idle_timeout"], 3);
    let id = forgotten["session_id"].as_str().unwrap().to_owned();
    let ended = eventually_async(Duration::from_secs(10), || async {
        server.get(&id).await.json["status"] != "active"
    })
    .await;
    assert!(ended);
    assert_eq!(status(server.get(&id).await.json), (json!("expired"), json!("idle")));

    // A client connected the whole time keeps it; a reconnect before the timeout resets it.
    let used = server.create(json!({"idle_timeout": 3})).await;
    let used_id = used["session_id"].as_str().unwrap().to_owned();
    let viewed = server.create(json!({"idle_timeout": 3})).await;
    let viewed_id = viewed["session_id"].as_str().unwrap().to_owned();
    let mut client = ws_connect(used["cdp_url"].as_str().unwrap()).await.unwrap();
    // The live view page's own connection: `/live/{id}/cdp?token=…`.
    let live = viewed["metadata"]["live_url"].as_str().unwrap();
    let (page, token) = live.split_once('?').unwrap();
    let viewer = ws_connect(&format!("{}/cdp?{token}", page.replacen("http", "ws", 1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(viewer);
    assert_eq!(server.get(&used_id).await.json["status"], "active");
    assert_eq!(
        server.get(&viewed_id).await.json["status"],
        "active",
        "a live viewer is activity"
    );
    drop(client);
    // Reconnecting two seconds later, for a moment, starts the count again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    client = ws_connect(used["cdp_url"].as_str().unwrap()).await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(server.get(&used_id).await.json["status"], "active");
    let ended = eventually_async(Duration::from_secs(10), || async {
        server.get(&used_id).await.json["status"] != "active"
    })
    .await;
    assert!(ended);
    assert_eq!(
        status(server.get(&used_id).await.json),
        (json!("expired"), json!("idle"))
    );

    // An idle session has no connection left to hear 4004 (that needs one opening in the
    // very moment it ends; the code itself is pinned in store::record's unit test); a new
    // one is refused.
    let late = ws_connect(used["cdp_url"].as_str().unwrap()).await;
    assert!(late.is_err(), "an ended session refuses new connections");
    // The viewed session idles out too, once its viewer has gone.
    let ended = eventually_async(Duration::from_secs(10), || async {
        server.get(&viewed_id).await.json["status"] != "active"
    })
    .await;
    assert!(ended);
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("cdpgate_sessions_idle_total 3"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_browsers_cannot_reach_denied_addresses() {
    // 127.0.0.2 stands in for a denied address (a metadata server or an internal host);
    // the same kind of server on 127.0.0.1 (allowed) is the control: the probe does arrive.
    let (denied_addr, denied_hits) = counting_site("127.0.0.2").await;
    let (allowed_addr, allowed_hits) = counting_site("127.0.0.1").await;
    let site = start_site().await;
    let server = TestServer::start_with(|c| {
        c.browser_egress_deny = vec![
            "link-local".into(),
            "metadata".into(),
            "private".into(),
            "127.0.0.2/32".into(),
        ];
    })
    .await;
    let session = server.create(json!({})).await;
    let broker_api = format!("http://{}/health", server.addr);
    let denied_url = format!("http://{denied_addr}/");
    let refused = async || -> u64 {
        let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("cdpgate_browser_egress_refused_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let seen = visit(
        &session,
        &format!("http://{site}/"),
        &no_cors_probe(&format!("http://{allowed_addr}/")),
    )
    .await;
    assert_eq!(seen["value"], "sent", "the control probe: {seen}");
    assert!(hits(&allowed_hits) >= 1, "the control probe arrived");
    // Each one refused by the policy (counted), not merely unreachable; the denied server
    // never hears of it.
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        &denied_url,
        &broker_api,
        "http://10.11.12.13/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ] {
        let before = refused().await;
        let seen = visit(&session, &format!("http://{site}/"), &no_cors_probe(url)).await;
        assert_eq!(seen["ok"], true, "the allowed site loads: {seen}");
        assert_eq!(seen["value"], "refused", "{url}: {seen}");
        assert!(refused().await > before, "{url} counted as refused");
    }
    let before = refused().await;
    let navigation = visit(&session, &denied_url, "").await;
    assert_eq!(navigation["ok"], false, "{navigation}");
    assert!(refused().await > before);
    assert_eq!(hits(&denied_hits), 0, "a request reached the denied server");

    // A session's proxy is held to the same policy, at create.
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(&json!({"proxy": {"server": "http://169.254.169.254:3128"}}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("proxy.server"), "{}", r.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_refused_by_name_and_change_nothing() {
    let server = TestServer::start().await;
    let cases = [
        (json!({"timezone": "Mars/Olympus_Mons"}), "timezone"),
        (json!({"timezone": "../../etc/passwd"}), "timezone"),
        (json!({"locale": "english"}), "locale"),
        (json!({"user_agent": "a\r\nX-Injected: 1"}), "user_agent"),
        (json!({"user_agent": ""}), "user_agent"),
        (json!({"idle_timeout": -1}), "idle_timeout"),
        (json!({"idle_timeout": 86401}), "idle_timeout"),
        (json!({"idle_timeout": "3"}), "idle_timeout"),
        (json!({"proxy": "http://x:1"}), "proxy"),
        (json!({"proxy": {"server": "ftp://x:1"}}), "proxy.server"),
        (json!({"proxy": {"server": "http://u:p@x:1"}}), "proxy.server"),
        (json!({"proxy": {"server": "http://x:1/path"}}), "proxy.server"),
        (json!({"proxy": {"server": "not a url"}}), "proxy.server"),
        (
            json!({"proxy": {"server": "http://x:1", "password": "p"}}),
            "proxy.password",
        ),
        (
            json!({"proxy": {"server": "http://x:1", "username": "a:b"}}),
            "proxy.username",
        ),
        (
            json!({"proxy": {"server": "http://x:1", "bypass": "x"}}),
            "proxy.bypass",
        ),
        (
            json!({"proxy": {"server": "http://x:1", "bypass": ["bad host!"]}}),
            "proxy.bypass",
        ),
        (json!({"proxy": {"server": "http://x:1", "extra": 1}}), "proxy.extra"),
        (
            json!({"cdp_url": "ws://127.0.0.1:9/devtools/browser/x", "user_agent": "x"}),
            "cdp_url",
        ),
    ];
    for (body, field) in cases {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert!(r.json["detail"].as_str().unwrap().contains(field), "{body}: {}", r.body);
    }
    // The single action's own session takes the same options, and refuses them beside a
    // session_id.
    let r = server
        .run_action(
            KEY_A,
            &json!({"action": "go to about:blank", "timezone": "Nowhere/Else"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = server
        .run_action(
            KEY_A,
            &json!({"action": "go to about:blank", "session_id": "sess_x", "idle_timeout": 5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let list = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(list.json["total"], 0, "{}", list.body);
    server.stop().await;
}

/// A context session's pages go through its own gateway (the context's `proxyServer`): its
/// proxy, the egress policy and its byte counts, apart from its neighbours in the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_sessions_have_their_own_proxy_and_policy() {
    let site = start_site().await;
    let hosts: Hosts = Arc::new(HashMap::from([("site.test:80".to_owned(), site)]));
    let (http_proxy, http_seen) = start_http_proxy(hosts).await;
    let (denied_addr, denied_hits) = counting_site("127.0.0.2").await;
    let (allowed_addr, allowed_hits) = counting_site("127.0.0.1").await;
    let server = TestServer::start_with(|c| {
        c.pool_size = 0;
        c.browser_egress_deny = vec!["127.0.0.2/32".into()];
    })
    .await;
    let proxy = json!({"server": format!("http://{http_proxy}"), "username": USER, "password": PASSWORD});
    let proxied = create(server.addr, json!({"isolation": "context", "proxy": proxy})).await;
    let direct = create(server.addr, json!({"isolation": "context"})).await;
    assert_eq!(server.broker.shared().browsers().len(), 1, "one shared browser");
    assert_eq!(proxied["proxy"]["server"], format!("http://{http_proxy}"));

    let seen = visit(&proxied, "http://site.test/", "document.title").await;
    assert_eq!(seen["title"], "cdpgate test site", "{seen}");
    assert!(seen_targets(&http_seen).contains(&"GET http://site.test/".to_owned()));
    // The neighbour has no proxy: the name does not resolve, and the proxy saw nothing of it.
    let before = seen_targets(&http_seen).len();
    let seen = visit(&direct, "http://site.test/", "").await;
    assert_eq!(seen["ok"], false, "{seen}");
    assert_eq!(seen_targets(&http_seen).len(), before, "{:?}", seen_targets(&http_seen));
    let record = get(server.addr, proxied["session_id"].as_str().unwrap()).await.json;
    assert!(record["network"]["bytes_in"].as_u64().unwrap() > 0, "{record}");
    // The policy holds for context pages too. The control: an allowed server hears the
    // probe. Then a denied one and the broker's own address: refused, and never reached.
    let page = format!("http://{site}/");
    let seen = visit(&direct, &page, &no_cors_probe(&format!("http://{allowed_addr}/"))).await;
    assert_eq!(seen["value"], "sent", "the control probe: {seen}");
    assert!(hits(&allowed_hits) >= 1, "the control probe arrived");
    for url in [
        format!("http://{denied_addr}/"),
        format!("http://{}/health", server.addr),
    ] {
        let seen = visit(&direct, &page, &no_cors_probe(&url)).await;
        assert_eq!(seen["title"], "cdpgate test site", "{seen}");
        assert_eq!(seen["value"], "refused", "{url}: {seen}");
    }
    let navigation = visit(&direct, &format!("http://{denied_addr}/"), "").await;
    assert_eq!(navigation["ok"], false, "{navigation}");
    assert_eq!(hits(&denied_hits), 0, "a request reached the denied server");
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cdpgate_browser_egress_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(refused >= 3, "counted as refused by the policy: {metrics}");
    server.stop().await;
}

/// A context session's identity reaches its own pages and workers, and no neighbour's in
/// the same shared browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_sessions_identity_stays_in_its_context() {
    let (site, heads) = start_recording_site().await;
    let server = TestServer::start_with(|c| c.pool_size = 0).await;
    let ua = "cdpgate-context-agent/2.0";
    let dressed = server
        .create(json!({"isolation": "context", "user_agent": ua, "locale": "fr-FR", "timezone": "Asia/Tokyo"}))
        .await;
    let plain = server.create(json!({"isolation": "context"})).await;
    assert_eq!(server.broker.shared().browsers().len(), 1, "one shared browser");
    assert_eq!(dressed["user_agent"], ua);
    let probe = "(async () => { const worker = new Worker(URL.createObjectURL(new Blob(\
        ['postMessage(navigator.userAgent)'], {type: 'text/javascript'}))); \
        const fromWorker = await new Promise((done) => { worker.onmessage = (e) => done(e.data); \
        setTimeout(() => done('no answer'), 5000); }); \
        return { ua: navigator.userAgent, language: navigator.language, \
        zone: Intl.DateTimeFormat().resolvedOptions().timeZone, worker: fromWorker }; })()";
    let url = format!("http://{site}/");
    for which in ["new", "first"] {
        let seen = node("visit.mjs", &[dressed["cdp_url"].as_str().unwrap(), &url, probe, which]).await;
        let v = &seen["value"];
        assert_eq!(v["ua"], ua, "{which}: {seen}");
        assert_eq!(v["worker"], ua, "{which}: {seen}");
        assert_eq!(v["language"], "fr-FR", "{which}: {seen}");
        assert_eq!(v["zone"], "Asia/Tokyo", "{which}: {seen}");
    }
    let dressed_heads = heads_seen(&heads);
    assert!(!dressed_heads.is_empty(), "the site saw the dressed session's requests");
    assert!(
        dressed_heads
            .iter()
            .all(|h| h.contains("user-agent: cdpgate-context-agent/2.0")),
        "{dressed_heads:?}"
    );
    // The neighbour, opened after, in the same browser: Chrome's own identity (without
    // `Headless`, as every default session's).
    for which in ["new", "first"] {
        let seen = node("visit.mjs", &[plain["cdp_url"].as_str().unwrap(), &url, probe, which]).await;
        let v = &seen["value"];
        for agent in [&v["ua"], &v["worker"]] {
            let agent = agent.as_str().unwrap();
            assert!(
                agent.contains(" Chrome/") && !agent.contains("Headless"),
                "{which}: {seen}"
            );
        }
        assert_ne!(v["zone"], "Asia/Tokyo", "{which}: {seen}");
    }
    server.stop().await;
}
