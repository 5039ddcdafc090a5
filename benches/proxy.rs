//! Proxy round trip against an in-process WebSocket echo upstream, next to the same load
//! sent directly; session acquire (create → first CDP reply) from the warm pool; and the
//! context filter's cost per message.
//!
//! `cargo bench --bench proxy`; numbers and how to read them: docs/benchmarks.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

fn big_messages() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Echoes every data message back, and answers `Browser.getVersion` so that the broker
/// accepts it as a bring-your-own browser.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(big_messages())).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let reply = match m {
                        Message::Text(t) if t.contains("Browser.getVersion") => {
                            Message::text(r#"{"id":1,"result":{"product":"echo"}}"#)
                        }
                        m if m.is_text() || m.is_binary() => m,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The real broker on loopback (warm pool of 2, loopback allowed for bring-your-own).
struct Broker {
    addr: SocketAddr,
    broker: Arc<cdpgate::Broker>,
    _data_dir: tempfile::TempDir,
}

const KEY: &str = "bench-key-0123456789abcdef";

async fn start_broker() -> Broker {
    let data_dir = tempfile::tempdir().unwrap();
    let config = cdpgate::Config {
        data_dir: data_dir.path().to_owned(),
        api_keys: vec![KEY.into()],
        pool_size: 2,
        byo_allow: vec!["127.0.0.0/8".into()],
        ..cdpgate::Config::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broker = cdpgate::start(&listener, config, CancellationToken::new())
        .await
        .unwrap();
    tokio::spawn(cdpgate::serve(listener, broker.clone()));
    Broker {
        addr,
        broker,
        _data_dir: data_dir,
    }
}

fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async_with_config(url, Some(big_messages()), true)
        .await
        .unwrap()
        .0
}

fn round_trip(c: &mut Criterion) {
    if cdpgate::browser::find_chrome().is_none() {
        eprintln!("round_trip skipped: the broker needs Chromium (scripts/setup.sh installs it)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (direct, proxied, broker) = rt.block_on(async {
        let echo = echo_upstream().await;
        let broker = start_broker().await;
        let direct = format!("ws://{echo}/devtools/browser/echo");
        let body = serde_json::json!({"cdp_url": direct, "ttl": 86400}).to_string();
        let session = http_json(broker.addr, post(broker.addr, "/public/sessions", &body)).await;
        let proxied = session["cdp_url"]
            .as_str()
            .expect("a bring-your-own session")
            .to_owned();
        (direct, proxied, broker)
    });
    let mut group = c.benchmark_group("round_trip");
    for size in [300usize, 64 * 1024, 1024 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        let message = Message::binary(vec![b'x'; size]);
        for (name, url) in [("direct", &direct), ("cdpgate", &proxied)] {
            let mut ws = rt.block_on(connect(url));
            group.bench_with_input(BenchmarkId::new(name, size), &message, |b, message| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            ws.send(message.clone()).await.unwrap();
                            ws.next().await.unwrap().unwrap();
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
    rt.block_on(broker.broker.stop());
}

/// One HTTP/1.1 request with a close; answers the parsed JSON body.
async fn http_json(addr: SocketAddr, request: String) -> Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Times one create → connect → first reply, then terminates the session (untimed).
async fn acquire_once(addr: SocketAddr, create: &str) -> Duration {
    let start = Instant::now();
    let session = http_json(addr, create.to_owned()).await;
    let url = session["cdp_url"].as_str().expect("a session").to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(r#"{"id":1,"method":"Browser.getVersion"}"#))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap();
    let took = start.elapsed();
    let id = session["session_id"].as_str().unwrap();
    http_json(addr, post(addr, &format!("/public/sessions/{id}/terminate"), "")).await;
    took
}

fn session_acquire(c: &mut Criterion) {
    if cdpgate::browser::find_chrome().is_none() {
        eprintln!("session_acquire skipped: no Chromium (scripts/setup.sh installs it)");
        return;
    }
    let rt = Runtime::new().unwrap();
    let Broker {
        addr,
        broker,
        _data_dir,
    } = rt.block_on(start_broker());
    let create = post(addr, "/public/sessions", "{}");
    let mut group = c.benchmark_group("session_acquire");
    group.sample_size(10).measurement_time(Duration::from_secs(30));
    // "at_rest": each acquire finds the pool full and no launch running, as when sessions
    // arrive slower than browsers start. "back_to_back": the next create follows at once,
    // as soon as any warm browser is there, with replacements launching alongside.
    for (name, at_rest) in [("at_rest", true), ("back_to_back", false)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // Untimed: wait for the pool, as the variant says.
                        let wanted = if at_rest { 2 } else { 1 };
                        while broker.pool().idle_count() < wanted {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if at_rest {
                            tokio::time::sleep(Duration::from_millis(1000)).await;
                        }
                        total += acquire_once(addr, &create).await;
                    }
                    total
                })
            })
        });
    }
    // A profile session cannot use the warm pool: its browser starts on a copy of the
    // profile (here one with a little state), so this is a cold launch plus the copy.
    let profile = rt.block_on(http_json(
        addr,
        post(addr, "/public/browser-profiles", r#"{"name":"bench"}"#),
    ));
    let body = serde_json::json!({"profile_id": profile["id"], "persist_changes": false}).to_string();
    let create_on_profile = post(addr, "/public/sessions", &body);
    group.bench_function("with_profile", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += acquire_once(addr, &create_on_profile).await;
                }
                total
            })
        })
    });
    group.finish();
    rt.block_on(broker.stop());
}

/// The context filter's cost per message, without sockets: a page event of an attached
/// session (passed by its two ends, unparsed), a client command (parsed, checked,
/// re-serialized), and a target event (parsed and checked), at CDP's usual sizes.
fn context_filter(c: &mut Criterion) {
    use cdpgate::browser::filter::{Filter, Root, Targets};
    let targets = Arc::new(Targets::default());
    targets.insert("T-OURS", "CTX-OURS");
    let mut filter = Filter::new("CTX-OURS", Root::Browser, targets);
    let attached = serde_json::json!({"method": "Target.attachedToTarget", "params": {"sessionId": "S-OURS",
        "targetInfo": {"targetId": "T-OURS", "type": "page", "browserContextId": "CTX-OURS"}, "waitingForDebugger": false}});
    filter.on_browser(&attached.to_string());
    let mut group = c.benchmark_group("context_filter");
    for size in [300usize, 65536, 1048576] {
        let event = format!(
            r#"{{"method":"Page.screencastFrame","params":{{"data":"{}","sessionId":1}},"sessionId":"S-OURS"}}"#,
            "A".repeat(size)
        );
        group.throughput(Throughput::Bytes(event.len() as u64));
        group.bench_with_input(BenchmarkId::new("page_event", size), &event, |b, event| {
            b.iter(|| filter.on_browser(event))
        });
    }
    let mut id = 0u64;
    group.bench_function("client_command", |b| {
        b.iter(|| {
            id += 1;
            let command = format!(
                r#"{{"id":{id},"method":"Input.dispatchMouseEvent","params":{{"type":"mouseMoved","x":10,"y":20}},"sessionId":"S-OURS"}}"#
            );
            let out = filter.on_client(&command, false);
            // Answered, so that the in-flight table stays small.
            filter.on_browser(&format!(r#"{{"id":{id},"result":{{}},"sessionId":"S-OURS"}}"#));
            out
        })
    });
    group.bench_function("target_event", |b| b.iter(|| filter.on_browser(&attached.to_string())));
    group.finish();
}

criterion_group!(benches, round_trip, session_acquire, context_filter);
criterion_main!(benches);
