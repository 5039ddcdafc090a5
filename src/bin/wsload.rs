//! `wsload`: WebSocket load for measuring a relay.
//!
//! ```text
//! wsload echo [--listen 127.0.0.1:0]
//!     An echo server that also answers `Browser.getVersion`, so cdpgate accepts it as a
//!     bring-your-own browser. Prints `listening on ADDR`.
//! wsload run URL [--connections N] [--inflight K] [--size BYTES] [--seconds S]
//!     N connections, each keeping K messages of BYTES in flight, for S seconds; prints
//!     messages/s, MB/s and p50/p99 round trip.
//! wsload compare NAME=URL... [--rounds R] [--seconds S]
//!     The standard loads against every target, alternating targets round by round;
//!     prints medians and each target's ratio to the first one.
//! wsload idle URL [--connections N] [--hold S]
//!     Opens N connections (one echoed message each, so each is fully relayed), prints
//!     `holding N`, holds them S seconds, closes them.
//! wsload cutoff --api http://HOST:PORT --key KEY --cdp-url URL [--sessions N] [--ttl T]
//!     Creates N sessions of TTL T fronting URL, connects a client to each, and measures
//!     how long after `expires_at` each close frame arrives.
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn big_messages() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

#[derive(Debug, Clone, Copy)]
struct Load {
    connections: usize,
    inflight: usize,
    size: usize,
    seconds: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    messages_per_sec: f64,
    mb_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result = match args.first().map(String::as_str) {
        Some("echo") => runtime.block_on(echo(flag(&args, "--listen").unwrap_or("127.0.0.1:0"))),
        Some("run") => runtime.block_on(run_command(&args[1..])),
        Some("compare") => runtime.block_on(compare(&args[1..])),
        Some("idle") => runtime.block_on(idle(&args[1..])),
        Some("cutoff") => runtime.block_on(cutoff(&args[1..])),
        _ => Err("usage: wsload echo | run URL [options] | compare NAME=URL... [options]".into()),
    };
    if let Err(e) = result {
        eprintln!("wsload: {e}");
        std::process::exit(2);
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match flag(args, name) {
        Some(v) => v.parse().map_err(|_| format!("{name}: not a number: {v}")),
        None => Ok(default),
    }
}

async fn echo(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen).await.map_err(|e| e.to_string())?;
    println!("listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(big_messages())).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(message)) = rx.next().await {
                let reply = match message {
                    Message::Text(t) if t.contains("\"Browser.getVersion\"") => {
                        let id = serde_json::from_str::<serde_json::Value>(&t)
                            .ok()
                            .map(|v| v["id"].clone());
                        let id = id.unwrap_or(serde_json::Value::Null);
                        Message::text(serde_json::json!({"id": id, "result": {"product": "wsload-echo"}}).to_string())
                    }
                    m @ (Message::Text(_) | Message::Binary(_)) => m,
                    Message::Close(_) => break,
                    _ => continue,
                };
                // Echo in bursts: feed what is ready, flush when nothing more is.
                if tx.feed(reply).await.is_err() || tx.flush().await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn run_command(args: &[String]) -> Result<(), String> {
    let url = args.first().ok_or("run: which URL?")?.clone();
    let load = Load {
        connections: number(args, "--connections", 1)?,
        inflight: number(args, "--inflight", 1)?,
        size: number(args, "--size", 300)?,
        seconds: number(args, "--seconds", 5.0)?,
    };
    let o = run(&url, load).await?;
    println!(
        "{:.0} msg/s  {:.1} MB/s  p50 {:.1} µs  p99 {:.1} µs",
        o.messages_per_sec, o.mb_per_sec, o.p50_us, o.p99_us
    );
    Ok(())
}

/// Drives `load` at `url` and measures it.
async fn run(url: &str, load: Load) -> Result<Outcome, String> {
    let payload = "x".repeat(load.size);
    let deadline = Instant::now() + Duration::from_secs_f64(load.seconds);
    let mut tasks = Vec::new();
    for _ in 0..load.connections {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(big_messages()), true)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut sent_at = VecDeque::with_capacity(load.inflight);
            let mut round_trips = Vec::new();
            for _ in 0..load.inflight {
                sent_at.push_back(Instant::now());
                tx.send(Message::text(payload.clone())).await.ok()?;
            }
            while let Some(Ok(m)) = rx.next().await {
                if !(m.is_text() || m.is_binary()) {
                    continue;
                }
                let start = sent_at.pop_front()?;
                round_trips.push(start.elapsed().as_nanos() as u64);
                if Instant::now() < deadline {
                    sent_at.push_back(Instant::now());
                    tx.send(Message::text(payload.clone())).await.ok()?;
                } else if sent_at.is_empty() {
                    break;
                }
            }
            let _ = tx.close().await;
            Some(round_trips)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())?.ok_or("a connection failed")?);
    }
    let elapsed = started.elapsed().as_secs_f64().max(load.seconds);
    if all.is_empty() {
        return Err("no message came back".into());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Ok(Outcome {
        messages_per_sec: all.len() as f64 / elapsed,
        mb_per_sec: (all.len() * load.size) as f64 / elapsed / 1e6,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn compare(args: &[String]) -> Result<(), String> {
    let targets: Vec<(String, String)> = args
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .map(|t| {
            t.split_once('=')
                .map(|(n, u)| (n.to_owned(), u.to_owned()))
                .ok_or(format!("{t}: want NAME=URL"))
        })
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Err("compare: give at least one NAME=URL".into());
    }
    let rounds: usize = number(args, "--rounds", 3)?;
    let seconds: f64 = number(args, "--seconds", 5.0)?;
    let loads = [
        (
            "1 conn, 300 B, round trip",
            Load {
                connections: 1,
                inflight: 1,
                size: 300,
                seconds,
            },
        ),
        (
            "50 conns x 4 in flight, 300 B",
            Load {
                connections: 50,
                inflight: 4,
                size: 300,
                seconds,
            },
        ),
        (
            "4 conns, 1 MB",
            Load {
                connections: 4,
                inflight: 1,
                size: 1_000_000,
                seconds,
            },
        ),
    ];
    println!("# {rounds} rounds of {seconds} s per load and target, targets alternating; medians\n");
    for (title, load) in loads {
        let mut results: Vec<Vec<Outcome>> = vec![Vec::new(); targets.len()];
        for _ in 0..rounds {
            for (i, (_, url)) in targets.iter().enumerate() {
                results[i].push(run(url, load).await?);
            }
        }
        println!("## {title}\n");
        println!(
            "| target | msg/s | MB/s | p50 µs | p99 µs | throughput vs {} | p50 added |",
            targets[0].0
        );
        println!("|---|---|---|---|---|---|---|");
        let base_rate = median(results[0].iter().map(|o| o.messages_per_sec).collect());
        let base_p50 = median(results[0].iter().map(|o| o.p50_us).collect());
        for ((name, _), outcomes) in targets.iter().zip(&results) {
            let rate = median(outcomes.iter().map(|o| o.messages_per_sec).collect());
            let mb = median(outcomes.iter().map(|o| o.mb_per_sec).collect());
            let p50 = median(outcomes.iter().map(|o| o.p50_us).collect());
            let p99 = median(outcomes.iter().map(|o| o.p99_us).collect());
            println!(
                "| {name} | {rate:.0} | {mb:.1} | {p50:.1} | {p99:.1} | {:.2}x | {:+.1} µs |",
                rate / base_rate,
                p50 - base_p50
            );
        }
        println!();
    }
    Ok(())
}

async fn connect(url: &str) -> Result<Ws, String> {
    tokio_tungstenite::connect_async_with_config(url, Some(big_messages()), true)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| format!("connect {url}: {e}"))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn idle(args: &[String]) -> Result<(), String> {
    let url = args.first().ok_or("idle: which URL?")?.clone();
    let n: usize = number(args, "--connections", 1000)?;
    let hold: f64 = number(args, "--hold", 10.0)?;
    let mut held = Vec::with_capacity(n);
    // Open in batches so a listen backlog is never the bottleneck.
    for batch in (0..n).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(batch.iter().map(|_| async {
            let mut ws = connect(&url).await?;
            ws.send(Message::text("ping")).await.map_err(|e| e.to_string())?;
            ws.next().await.ok_or("no echo")?.map_err(|e| e.to_string())?;
            Ok::<_, String>(ws)
        }))
        .await;
        for ws in opened {
            held.push(ws?);
        }
    }
    println!("holding {}", held.len());
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    for mut ws in held {
        let _ = ws.close(None).await;
    }
    Ok(())
}

/// One HTTP/1.1 exchange with a close; answers the JSON body.
async fn http_json(addr: &str, request: String) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).map_err(|_| format!("not JSON: {text}"))
}

async fn cutoff(args: &[String]) -> Result<(), String> {
    let api = flag(args, "--api").ok_or("cutoff: --api http://HOST:PORT")?;
    let addr = api.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let key = flag(args, "--key").ok_or("cutoff: --key")?.to_owned();
    let upstream = flag(args, "--cdp-url").ok_or("cutoff: --cdp-url")?.to_owned();
    let sessions: usize = number(args, "--sessions", 20)?;
    let ttl: u64 = number(args, "--ttl", 2)?;
    let body = serde_json::json!({"cdp_url": upstream, "ttl": ttl}).to_string();
    let request = format!(
        "POST /public/sessions HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let waits = (0..sessions).map(|_| {
        let (addr, request) = (addr.clone(), request.clone());
        async move {
            let session = http_json(&addr, request).await?;
            let cdp_url = session["cdp_url"].as_str().ok_or(format!("no session: {session}"))?;
            let expires_at =
                humantime::parse_rfc3339(session["expires_at"].as_str().unwrap_or("")).map_err(|e| e.to_string())?;
            let mut ws = connect(cdp_url).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        let late = std::time::SystemTime::now().duration_since(expires_at);
                        let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                        // Negative (early) lateness shows as an error: report it as 0 - x.
                        let ms = match late {
                            Ok(d) => d.as_secs_f64() * 1e3,
                            Err(e) => -e.duration().as_secs_f64() * 1e3,
                        };
                        return Ok::<_, String>((ms, code));
                    }
                    Some(Ok(_)) => {}
                    _ => return Err("the connection ended without a close frame".into()),
                }
            }
        }
    });
    let results = futures_util::future::join_all(waits).await;
    let mut lateness = Vec::new();
    let mut codes = std::collections::BTreeMap::new();
    for r in results {
        let (ms, code) = r?;
        lateness.push(ms);
        *codes.entry(code).or_insert(0) += 1;
    }
    lateness.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lateness[((lateness.len() - 1) as f64 * p) as usize];
    println!(
        "{} sessions: close frame after expires_at: min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; codes {codes:?}",
        lateness.len(),
        lateness[0],
        pct(0.5),
        pct(0.99),
        lateness[lateness.len() - 1]
    );
    Ok(())
}
