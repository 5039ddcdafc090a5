//! Shared helpers of the integration tests: the real broker on port 0, a small HTTP
//! client, a test site, the Node and Python clients, and process accounting.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cdpgate::{Broker, Config};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const KEY_A: &str = "tenant-a-key-0123456789";
pub const KEY_B: &str = "tenant-b-key-0123456789";

pub struct TestServer {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub shutdown: CancellationToken,
    pub data_dir: tempfile::TempDir,
    serving: tokio::task::JoinHandle<()>,
}

/// A configuration for tests: two tenants, a small pool, a private data directory, pages
/// allowed to reach the test sites on loopback (closed by default), and no per-key quotas
/// of sessions at once (most suites drive one key hard; `tests/quotas.rs` sets them).
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        api_keys: vec![KEY_A.into(), KEY_B.into()],
        pool_size: 1,
        max_sessions: 4,
        queue_timeout_ms: 2_000,
        browser_egress_allow: vec!["loopback".into()],
        max_sessions_per_key: 0,
        max_byo_sessions_per_key: 0,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        assert_tools_installed();
        log_to_the_test();
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(data_dir.path());
        tweak(&mut config);
        config.validate().unwrap();
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let broker = cdpgate::start(&listener, config, shutdown.clone())
            .await
            .expect("broker starts");
        let serving = tokio::spawn(cdpgate::serve(listener, broker.clone()));
        TestServer {
            addr,
            broker,
            shutdown,
            data_dir,
            serving,
        }
    }

    /// Shuts the broker down and waits until it has stopped.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        // A shutdown that hangs fails the test instead of hanging it.
        tokio::time::timeout(Duration::from_secs(30), self.serving)
            .await
            .expect("the broker stopped within 30 s")
            .expect("the serving task did not panic");
        self.data_dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<&str>) -> Response {
        http(self.addr, method, path, key, body).await
    }

    /// Creates a session for tenant A and returns its JSON.
    pub async fn create(&self, body: Value) -> Value {
        let r = self
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.json
    }

    /// `GET …/devtools/browser/{id}/{suffix}` with the session's own token.
    pub async fn discovery(&self, session: &Value, suffix: &str) -> Response {
        let id = session["session_id"].as_str().unwrap();
        let token = session["cdp_url"].as_str().unwrap().split_once("?token=").unwrap().1;
        let path = format!("/devtools/browser/{id}/{suffix}?token={token}");
        self.call(Method::GET, &path, None, None).await
    }

    /// `POST /public/single-actions/run-action` with `key`.
    pub async fn run_action(&self, key: &str, body: &Value) -> Response {
        self.call(
            Method::POST,
            "/public/single-actions/run-action",
            Some(key),
            Some(&body.to_string()),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Response {
        self.call(Method::GET, &format!("/public/sessions/{id}"), Some(KEY_A), None)
            .await
    }

    pub async fn terminate(&self, id: &str) -> Response {
        self.call(
            Method::POST,
            &format!("/public/sessions/{id}/terminate"),
            Some(KEY_A),
            None,
        )
        .await
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
    pub json: Value,
}

impl Response {
    /// An answer's parts, its body read as text and as JSON (`Null` if it is not).
    pub fn new(status: StatusCode, headers: hyper::HeaderMap, bytes: &[u8]) -> Response {
        let body = String::from_utf8_lossy(bytes).into_owned();
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            body,
            json,
        }
    }
}

/// One HTTP/1.1 request on a fresh connection, with the API key if given.
pub async fn http(addr: SocketAddr, method: Method, path: &str, key: Option<&str>, body: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    http_with(addr, method, path, &headers, body).await
}

/// One HTTP/1.1 request on a fresh connection, with these headers.
pub async fn http_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let mut headers = headers.to_vec();
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = Bytes::from(body.unwrap_or("").to_owned());
    let (status, headers, bytes) = http_bytes(addr, method, path, &headers, body).await;
    Response::new(status, headers, &bytes)
}

/// One HTTP/1.1 request on a fresh connection with a body of any bytes; the answer's
/// status, headers and bytes.
pub async fn http_bytes(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).unwrap();
    // An answer that never comes fails the test instead of hanging it.
    let what = format!("{} {}", request.method(), request.uri());
    let exchange = async {
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes)
    };
    tokio::time::timeout(Duration::from_secs(120), exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 120 s"))
}

/// A site on loopback that answers every request with the same small page.
pub async fn start_site() -> SocketAddr {
    serve_pages(|_| {
        let page = "<html><head><title>cdpgate test site</title></head>\
                    <body><h1>Hello through the proxy</h1></body></html>";
        (String::new(), page.to_owned())
    })
    .await
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The in-process broker's warnings (`RUST_LOG` for more) go to the output of the test
/// whose runtime logged them, which the harness shows only for a test that fails: a red
/// CI run says why a session was refused, not only that it was.
fn log_to_the_test() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("cdpgate=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}

/// The tests need Chromium and the Node clients; `scripts/setup.sh` installs both.
pub fn assert_tools_installed() {
    assert!(
        cdpgate::browser::find_chrome().is_some(),
        "Chromium is missing: run scripts/setup.sh (or the README's test command)"
    );
    assert!(
        repo_root().join("tests/js/node_modules/puppeteer-core").exists(),
        "the Node test clients are missing: run scripts/setup.sh"
    );
}

/// Runs `tests/js/<script>` with `args` and parses the last line it prints as JSON.
pub async fn node(script: &str, args: &[&str]) -> Value {
    script_json(
        std::path::Path::new("node"),
        &repo_root().join("tests/js").join(script),
        args,
    )
    .await
}

/// Runs `tests/py/<script>` (in the test venv's Python) with `args` and parses the last
/// line it prints as JSON.
pub async fn python_script(script: &str, args: &[&str]) -> Value {
    script_json(&python(), &repo_root().join("tests/py").join(script), args).await
}

/// Runs `program script args…` to its end and parses the last line it prints as JSON.
async fn script_json(program: &Path, script: &Path, args: &[&str]) -> Value {
    let output = finished(tokio::process::Command::new(program).arg(script).args(args)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the script printed JSON")
}

/// Runs a client program to its end: one that hangs fails the test after 90 s (and is
/// killed) instead of hanging it.
pub async fn finished(command: &mut tokio::process::Command) -> std::process::Output {
    finished_within(command, Duration::from_secs(90)).await
}

/// [`finished`], for a program that takes long by design.
pub async fn finished_within(command: &mut tokio::process::Command, limit: Duration) -> std::process::Output {
    let what = format!("{:?}", command.as_std().get_program());
    tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} could not run: {e}"))
}

/// The cluster secret of the test clusters (every node on one test Redis shares it).
pub const CLUSTER_SECRET: &str = "test-cluster-secret-of-32-characters-and-more";

/// A `redis-server` of the test's own on a free port, persistence off, killed when dropped.
pub struct TestRedis {
    pub child: tokio::process::Child,
    pub url: String,
    /// A profile store every node on this Redis shares (the shared-mount case).
    pub profiles: tempfile::TempDir,
}

/// A loopback port free now for a server started later (nginx, a receiver restarted):
/// below the kernel's ephemeral range (32768 and up), so that no socket bound to port 0
/// meanwhile (the other tests' servers) can take it first.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Whether something listens on loopback `port` within `limit`.
pub async fn listening(port: u16, limit: Duration) -> bool {
    eventually(limit, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await
}

pub async fn start_redis() -> TestRedis {
    start_redis_with_password(None).await
}

/// A `redis-server` as [`start_redis`], with `requirepass` when `password` is given (its
/// `url` then carries it: `redis://:password@…`).
pub async fn start_redis_with_password(password: Option<&str>) -> TestRedis {
    let port = free_port();
    let mut args = vec![
        "--port".to_owned(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
    ];
    if let Some(p) = password {
        args.extend(["--requirepass".to_owned(), p.to_owned()]);
    }
    let child = tokio::process::Command::new("redis-server")
        .args(&args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (Debian's package; scripts/setup.sh --test installs it)");
    assert!(listening(port, Duration::from_secs(10)).await, "redis-server listens");
    TestRedis {
        child,
        url: match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{port}/"),
            None => format!("redis://127.0.0.1:{port}/"),
        },
        profiles: tempfile::tempdir().unwrap(),
    }
}

/// moto's S3 server (PyPI; scripts/setup.sh --test installs it) on a free port, with one
/// bucket; gone when dropped.
pub struct TestS3 {
    pub child: tokio::process::Child,
    pub endpoint: String,
    pub bucket: String,
}

pub async fn start_s3(bucket: &str) -> TestS3 {
    let port = free_port();
    let venv = repo_root().join("target/test-venv/bin/moto_server");
    let program = if venv.exists() {
        venv
    } else {
        PathBuf::from("moto_server")
    };
    let child = tokio::process::Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("moto_server (scripts/setup.sh --test installs it)");
    assert!(listening(port, Duration::from_secs(30)).await, "moto_server listens");
    let endpoint = format!("http://127.0.0.1:{port}");
    // moto takes unsigned requests: one PUT makes the bucket.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let made = http(addr, Method::PUT, &format!("/{bucket}"), None, None).await;
    assert_eq!(made.status, StatusCode::OK, "bucket made: {}", made.body);
    TestS3 {
        child,
        endpoint,
        bucket: bucket.to_owned(),
    }
}

impl TestS3 {
    /// The `AWS_*` variables a node reads its S3 settings from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }
}

/// The Python that has `dari-python` installed (scripts/setup.sh makes a venv).
pub fn python() -> PathBuf {
    let venv = repo_root().join("target/test-venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

/// PIDs of live (non-zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Live (non-zombie) processes of Chrome started on `data_dir`: each browser whose
/// `--user-data-dir` is under it, and every process in its process group (the launcher
/// makes each browser the leader of a group of its own; zygotes, renderers and GPU
/// processes stay in it whatever their command line says).
pub fn chrome_processes_under(data_dir: &Path) -> Vec<u32> {
    let flag = format!("--user-data-dir={}", data_dir.display());
    let mut groups = std::collections::BTreeSet::new();
    let mut found = std::collections::BTreeSet::new();
    let all = live_processes();
    for (pid, pgid, cmdline) in &all {
        if cmdline.split('\0').any(|arg| arg.starts_with(&flag)) {
            groups.insert(*pgid);
            found.insert(*pid);
        }
    }
    for (pid, pgid, _) in &all {
        if groups.contains(pgid) {
            found.insert(*pid);
        }
    }
    found.into_iter().collect()
}

/// The process groups of the browsers started on `data_dir` (each led by its browser).
pub fn chrome_groups_under(data_dir: &Path) -> Vec<u32> {
    let flag = format!("--user-data-dir={}", data_dir.display());
    let mut groups: Vec<u32> = live_processes()
        .into_iter()
        .filter(|(_, _, cmdline)| cmdline.split('\0').any(|arg| arg.starts_with(&flag)))
        .map(|(_, pgid, _)| pgid)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// The browser process behind a CDP connection, as Chrome reports it.
pub async fn browser_pid(ws: &mut Ws) -> u32 {
    let info = cdp_call(ws, 900_001, "SystemInfo.getProcessInfo", json!({})).await;
    info["result"]["processInfo"]
        .as_array()
        .unwrap_or_else(|| panic!("{info}"))
        .iter()
        .find(|p| p["type"] == "browser")
        .and_then(|p| p["id"].as_u64())
        .expect("the browser process") as u32
}

/// The arguments process `pid` was started with (none once it has gone).
pub fn command_line(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split_terminator('\0')
        .map(str::to_owned)
        .collect()
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|(_, group, _)| *group == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

/// Every live (non-zombie) process: its id, process group and command line (NUL-separated).
fn live_processes() -> Vec<(u32, u32, String)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first().is_none_or(|state| *state == "Z") {
            continue;
        }
        let Some(pgid) = fields.get(2).and_then(|g| g.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        all.push((pid, pgid, String::from_utf8_lossy(&cmdline).into_owned()));
    }
    all
}

/// Waits up to `limit` for `check` to hold, polling.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a check that must await.
pub async fn eventually_async<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub async fn ws_connect(url: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(url).await.map(|(ws, _)| ws)
}

/// Sends a CDP command and waits for its reply, skipping events.
pub async fn cdp_call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let msg = json!({"id": id, "method": method, "params": params}).to_string();
    ws.send(Message::text(msg)).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a CDP reply in time");
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended while waiting for {method}: {other:?}"),
        }
    }
}

/// Reads until the server's close frame; answers (code, reason).
pub async fn await_close(ws: &mut Ws, limit: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(limit, async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => {
                    return Some((u16::from(frame.code), frame.reason.to_string()));
                }
                Ok(Message::Close(None)) => return Some((1005, String::new())),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The real binary, started as a user would, with its stdout read line by line.
pub struct Binary {
    pub child: tokio::process::Child,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub printed: Vec<String>,
    pub addr: SocketAddr,
}

pub async fn start_binary(data_dir: &Path, env: &[(&str, &str)]) -> Binary {
    assert_tools_installed();
    spawn_broker(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cdpgate")),
        data_dir,
        env,
    )
    .await
}

/// Runs the broker `command` on `data_dir` (one warm browser, a free port, `env` added)
/// and waits until it says where it listens; its log is on standard output.
async fn spawn_broker(mut command: tokio::process::Command, data_dir: &Path, env: &[(&str, &str)]) -> Binary {
    command
        .arg(data_dir.join("no-such-config.toml"))
        .env("CDPGATE_DATA_DIR", data_dir)
        .env("CDPGATE_LISTEN", "127.0.0.1:0")
        .env("CDPGATE_POOL_SIZE", "1")
        // The test sites are on loopback, which pages may not reach by default; one key is
        // driven hard (as `test_config`).
        .env("CDPGATE_BROWSER_EGRESS_ALLOW", "loopback")
        .env("CDPGATE_MAX_SESSIONS_PER_KEY", "0")
        .env("CDPGATE_MAX_BYO_SESSIONS_PER_KEY", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // A binary copied a moment ago may still be open for writing in a child that another
    // test forked meanwhile (it closes on that child's exec): "text file busy", briefly.
    let mut tries = 0;
    let mut child = loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            spawned => break spawned.unwrap(),
        }
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push(line.clone());
            if let Some(rest) = line.strip_prefix("cdpgate: listening on ") {
                return rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the broker exited early: {printed:?}");
    })
    .await
    .expect("the broker starts listening");
    Binary {
        child,
        lines,
        printed,
        addr,
    }
}

pub fn signal(child: &tokio::process::Child, sig: libc::c_int) {
    kill(child.id().unwrap(), sig);
}

/// Kills the browser behind a CDP connection as a crash would (Chrome says which process
/// it is).
pub async fn crash_browser(ws: &mut Ws) {
    let info = cdp_call(ws, 1, "SystemInfo.getProcessInfo", json!({})).await;
    let pid = info["result"]["processInfo"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "browser")
        .and_then(|p| p["id"].as_u64())
        .expect("the browser process");
    kill(pid as u32, libc::SIGKILL);
}

pub fn kill(pid: u32, sig: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: only sends a signal.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A site on loopback: `route(path)` answers the extra response headers and the HTML.
pub async fn serve_pages(route: fn(&str) -> (String, String)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let path = String::from_utf8_lossy(&buf[..n])
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                let (headers, page) = route(&path);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// Starts the broker binary as `user` (or as this process's user), from a copy of the
/// binary in `dir` (the checkout may sit where that user cannot read), on the data
/// directory `data`, with `env` added.
pub async fn start_binary_as(user: Option<&str>, dir: &Path, data: &Path, env: &[(&str, &str)]) -> Binary {
    assert_tools_installed();
    let binary = dir.join("cdpgate");
    std::fs::copy(env!("CARGO_BIN_EXE_cdpgate"), &binary).unwrap();
    std::fs::set_permissions(
        &binary,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(data).unwrap();
    let mut command = match user {
        Some(user) => {
            let id = |flag: &str| {
                let out = std::process::Command::new("id").args([flag, user]).output().unwrap();
                assert!(
                    out.status.success(),
                    "user {user} is missing: run scripts/setup.sh --test"
                );
                String::from_utf8(out.stdout).unwrap().trim().parse::<u32>().unwrap()
            };
            let (uid, gid) = (id("-u"), id("-g"));
            for path in [dir, data] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
            let mut c = tokio::process::Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ])
            .arg(&binary);
            c
        }
        None => tokio::process::Command::new(&binary),
    };
    command
        .env("HOME", data)
        .env("CDPGATE_API_KEYS", KEY_A)
        .env("RUST_LOG", "cdpgate=info");
    spawn_broker(command, data, env).await
}

/// Makes a session and opens a page in it, so that its browser starts a renderer (perhaps
/// a moment after the answer); the connection stays open while the caller holds it.
pub async fn open_a_page(addr: SocketAddr) -> Ws {
    let created = http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mut ws = ws_connect(created.json["cdp_url"].as_str().unwrap()).await.unwrap();
    let target = cdp_call(&mut ws, 1, "Target.createTarget", json!({"url": "about:blank"})).await;
    assert!(target["result"]["targetId"].is_string(), "{target}");
    ws
}

/// Stops a broker binary (SIGTERM) and answers everything it logged.
pub async fn stop_binary(mut broker: Binary) -> Vec<String> {
    signal(&broker.child, libc::SIGTERM);
    let mut lines = std::mem::take(&mut broker.printed);
    let rest = async {
        while let Ok(Some(line)) = broker.lines.next_line().await {
            lines.push(line);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), rest).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), broker.child.wait()).await;
    lines
}

/// Reads one HTTP/1.1 request from `stream` for a stand-in server (a model endpoint, a
/// collector): its head, lowercased, and its body (by `content-length`); bytes of a next
/// request stay in `buf`. `None` once the peer closes.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = buf[end + 4..end + 4 + length].to_vec();
                buf.drain(..end + 4 + length);
                return Some((head, body));
            }
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, made by `openssl` in `dir`:
/// the paths of the certificate and of its key.
pub fn make_certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned())
}

/// A raw CDP client on a session's `cdp_url` that can talk to a page's flattened session:
/// opens tabs, navigates and reads what a tab shows, as a hostile tenant's script would. It
/// keeps every event it hears (`events`), for tests that look for what should not arrive.
pub struct CdpClient {
    pub ws: Ws,
    next: u64,
    pub events: Vec<Value>,
}

#[allow(dead_code)] // Each test binary uses its own part of it.
impl CdpClient {
    pub async fn connect(session: &Value) -> CdpClient {
        CdpClient::connect_url(session["cdp_url"].as_str().unwrap()).await
    }

    pub async fn connect_url(url: &str) -> CdpClient {
        let ws = ws_connect(url).await.expect("the CDP socket opens");
        CdpClient {
            ws,
            next: 0,
            events: Vec::new(),
        }
    }

    /// Sends `text` as it is (its id must be `id`) and answers the reply; events heard
    /// meanwhile are kept.
    pub async fn send_raw(&mut self, id: u64, text: &str) -> Value {
        self.ws.send(Message::text(text)).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("an answer to {text} in time"));
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == id {
                        return v;
                    }
                    self.events.push(v);
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended while waiting for {text}: {other:?}"),
            }
        }
    }

    /// An id no command of this client has used.
    pub fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The whole reply to `method` (sent on the page session `on`, if given).
    pub async fn send(&mut self, on: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id();
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = on {
            message["sessionId"] = json!(session);
        }
        self.send_raw(id, &message.to_string()).await
    }

    /// The result of `method`, which must succeed.
    pub async fn call(&mut self, on: Option<&str>, method: &str, params: Value) -> Value {
        let reply = self.send(on, method, params).await;
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// The error message a refused command gets.
    pub async fn refused(&mut self, method: &str, params: Value) -> String {
        let reply = self.send(None, method, params).await;
        reply["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} should be refused: {reply}"))
            .to_owned()
    }

    /// (target id, context id) of the page targets the client is shown.
    pub async fn pages(&mut self) -> Vec<(String, String)> {
        let targets = self.call(None, "Target.getTargets", json!({})).await;
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

    /// Attaches to `target` (flattened); answers the page session.
    pub async fn attach(&mut self, target: &str) -> String {
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// The session's first page, attached; answers (target, page session).
    pub async fn own_page(&mut self) -> (String, String) {
        let (page, _) = self.pages().await.into_iter().next().expect("the session's page");
        let session = self.attach(&page).await;
        (page, session)
    }

    /// Opens `url` in the page of `session` and waits for its load.
    pub async fn load(&mut self, session: &str, url: &str) {
        self.call(Some(session), "Page.navigate", json!({"url": url})).await;
        self.eval(session, "location.href").await;
    }

    /// Evaluates `expression` in the page of `session`, after its load.
    pub async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let wrapped = format!(
            "new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', () => r()))\
             .then(() => {expression})"
        );
        let params = json!({"expression": wrapped, "awaitPromise": true, "returnByValue": true});
        let reply = self.send(Some(session), "Runtime.evaluate", params).await;
        assert!(reply.get("error").is_none(), "{expression}: {reply}");
        reply["result"]["result"]["value"].clone()
    }

    /// Reads events until one satisfies `found` (within 15 s).
    pub async fn wait_event(&mut self, found: impl Fn(&Value) -> bool) {
        if self.events.iter().any(&found) {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("the awaited event in time; heard {:?}", self.events));
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

    /// Opens `url` in a new tab (of `context`, if given) and answers the tab's page session,
    /// or the error Chrome or the broker gave.
    pub async fn open(&mut self, url: &str, context: Option<&str>) -> Result<String, Value> {
        let mut params = json!({"url": url});
        if let Some(context) = context {
            params["browserContextId"] = json!(context);
        }
        let created = self.send(None, "Target.createTarget", params).await;
        let Some(target) = created["result"]["targetId"].as_str() else {
            return Err(created);
        };
        let attached = self
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        Ok(attached["result"]["sessionId"].as_str().expect("attached").to_owned())
    }

    /// The tab's URL and text once it has finished loading (or after 10 s).
    pub async fn settled_text(&mut self, page: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let expression = "document.readyState + '|' + location.href + '|' + \
                          (document.documentElement ? document.documentElement.innerText : '')";
        loop {
            let reply = self
                .send(Some(page), "Runtime.evaluate", json!({"expression": expression}))
                .await;
            let text = reply["result"]["result"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if (text.starts_with("complete|") && !text.contains("|about:blank|"))
                || tokio::time::Instant::now() > deadline
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Navigates the page session `page` to `url` and answers what it then shows.
    pub async fn navigate(&mut self, page: &str, url: &str) -> String {
        self.send(Some(page), "Page.navigate", json!({"url": url})).await;
        self.settled_text(page).await
    }
}

/// `POST /public/{kind}` (a one-call render) with `body`, as `key`.
pub async fn render_as(
    server: &TestServer,
    key: &str,
    kind: &str,
    body: Value,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    http_bytes(
        server.addr,
        Method::POST,
        &format!("/public/{kind}"),
        &[("x-api-key", key), ("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
}

/// What the shared browsers hold, asked of Chrome itself: (browser contexts, page targets).
pub async fn chrome_holds(server: &TestServer) -> (usize, usize) {
    let (mut contexts, mut pages) = (0, 0);
    for browser in server.broker.shared().browsers() {
        let address = format!("127.0.0.1:{}", browser.port).parse().unwrap();
        let version = http(address, Method::GET, "/json/version", None, None).await;
        let mut ws = ws_connect(version.json["webSocketDebuggerUrl"].as_str().unwrap())
            .await
            .unwrap();
        let c = cdp_call(&mut ws, 1, "Target.getBrowserContexts", json!({})).await;
        contexts += c["result"]["browserContextIds"].as_array().unwrap().len();
        let t = cdp_call(&mut ws, 2, "Target.getTargets", json!({})).await;
        pages += t["result"]["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["type"] == "page")
            .count();
    }
    (contexts, pages)
}

/// Chrome's holdings once they have stayed the same for half a second (its spares made).
pub async fn settled_holdings(server: &TestServer) -> (usize, usize) {
    let (mut last, mut stable) = ((usize::MAX, usize::MAX), 0);
    for _ in 0..100 {
        let now = chrome_holds(server).await;
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        if stable == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// The broker's context sessions now, summed over its shared browsers.
pub fn context_sessions(server: &TestServer) -> usize {
    server.broker.shared().browsers().iter().map(|b| b.contexts).sum()
}

/// Nothing of `key`'s renders is left: no active session, no context session, and Chrome
/// back to the contexts and tabs it held before (`baseline`: its prepared spares).
pub async fn nothing_left(server: &TestServer, key: &str, baseline: (usize, usize), what: &str) {
    let active = server
        .call(
            Method::GET,
            "/public/sessions?status_filter=active&limit=1",
            Some(key),
            None,
        )
        .await;
    assert_eq!(
        active.json["total"], 0,
        "{what}: a session is still active: {}",
        active.body
    );
    assert!(
        eventually(Duration::from_secs(10), || context_sessions(server) == 0).await,
        "{what}: a context session is still held"
    );
    let back = eventually_async(Duration::from_secs(10), || async {
        chrome_holds(server).await == baseline
    })
    .await;
    assert!(
        back,
        "{what}: Chrome holds {:?} (contexts, tabs), before {baseline:?}",
        chrome_holds(server).await
    );
}

/// `POST /public/sessions/{id}/fork` with `body`, as `key`.
pub async fn fork(server: &TestServer, key: &str, id: &str, body: Value) -> Response {
    server
        .call(
            Method::POST,
            &format!("/public/sessions/{id}/fork"),
            Some(key),
            Some(&body.to_string()),
        )
        .await
}

/// A digest of every file of a profile as stored under `data_dir` (names and bytes).
pub fn profile_digest(data_dir: &Path, profile: &str) -> String {
    use sha2::{Digest, Sha256};
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let root = data_dir.join("profiles").join(profile);
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "the profile is stored under {}", root.display());
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.strip_prefix(&root).unwrap().to_string_lossy().as_bytes());
        hash.update(std::fs::read(&file).unwrap_or_default());
    }
    format!("{:x}", hash.finalize())
}
