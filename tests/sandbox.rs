//! Chrome's sandbox: a broker run as an unprivileged user starts browsers whose renderers
//! are sandboxed (their own user and PID namespaces, seccomp-bpf on), read from `/proc`;
//! a broker run as root says at start-up that the sandbox is off, and why.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The user `scripts/setup.sh --test` adds.
const USER: &str = "cdpgate-test";

/// Starts the broker binary as `user` (or as this process's user), from a copy of the
/// binary in `dir` (the checkout may sit where that user cannot read); answers the child,
/// its address and a task collecting its log.
async fn start_as(
    user: Option<&str>,
    dir: &Path,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    tokio::task::JoinHandle<Vec<String>>,
) {
    assert_tools_installed();
    let binary = dir.join("cdpgate");
    std::fs::copy(env!("CARGO_BIN_EXE_cdpgate"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut command = match user {
        Some(user) => {
            let uid = |flag: &str| {
                let out = std::process::Command::new("id").args([flag, user]).output().unwrap();
                assert!(
                    out.status.success(),
                    "user {user} is missing: run scripts/setup.sh --test"
                );
                String::from_utf8(out.stdout).unwrap().trim().parse::<u32>().unwrap()
            };
            let (uid, gid) = (uid("-u"), uid("-g"));
            for path in [dir, data.as_path()] {
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
    let mut child = command
        .arg(dir.join("no-such-config.toml"))
        .env("HOME", &data)
        .env("CDPGATE_DATA_DIR", &data)
        .env("CDPGATE_LISTEN", "127.0.0.1:0")
        .env("CDPGATE_API_KEYS", KEY_A)
        .env("CDPGATE_POOL_SIZE", "1")
        .env("RUST_LOG", "cdpgate=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log is on standard output, before and after the line with the address.
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut before = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = out.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("cdpgate: listening on ") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            before.push(line);
        }
        panic!("the broker exited early: {before:?}");
    })
    .await
    .expect("the broker starts listening");
    let log = tokio::spawn(async move {
        let mut lines = before;
        while let Ok(Some(line)) = out.next_line().await {
            lines.push(line);
        }
        lines
    });
    (child, addr, log)
}

/// The processes of the browsers whose user-data directories are under `dir`: each one's
/// `--type` (`browser` for the main process), command line and `/proc/PID/status`.
fn browser_processes(dir: &Path) -> Vec<(String, String, String, u32)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for pid in processes_mentioning(&needle) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("chrom") {
            continue;
        }
        let kind = cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("--type="))
            .unwrap_or("browser")
            .to_owned();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        found.push((kind, cmdline, status, pid));
    }
    found
}

fn seccomp(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes a session and opens a page in it, so that its browser has a renderer.
async fn open_a_page(addr: std::net::SocketAddr) {
    let created = http(addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mut ws = ws_connect(created.json["cdp_url"].as_str().unwrap()).await.unwrap();
    let target = cdp_call(&mut ws, 1, "Target.createTarget", json!({"url": "about:blank"})).await;
    assert!(target["result"]["targetId"].is_string(), "{target}");
}

async fn stop(mut child: tokio::process::Child, log: tokio::task::JoinHandle<Vec<String>>) -> Vec<String> {
    signal(&child, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    log.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_an_unprivileged_user_the_renderers_are_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (child, addr, log) = start_as(Some(USER), dir.path()).await;
    open_a_page(addr).await;
    let own_user_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let processes = browser_processes(dir.path());
    let browser = processes
        .iter()
        .find(|p| p.0 == "browser")
        .expect("the browser process");
    assert!(!browser.1.contains("--no-sandbox"), "{}", browser.1);
    let renderers: Vec<_> = processes.iter().filter(|p| p.0 == "renderer").collect();
    assert!(!renderers.is_empty(), "a renderer: {processes:?}");
    for (_, cmdline, status, pid) in &renderers {
        assert_eq!(
            seccomp(status),
            Some(2),
            "seccomp-bpf filter on renderer {pid}: {cmdline}"
        );
        let user_ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        assert_ne!(user_ns, own_user_ns, "renderer {pid} in its own user namespace");
        let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(
            pid_ns,
            std::fs::read_link("/proc/self/ns/pid").unwrap(),
            "and its own PID namespace"
        );
    }
    let log = stop(child, log).await;
    assert!(log.iter().any(|l| l.contains("sandbox on")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_the_broker_says_the_sandbox_is_off() {
    if !cdpgate::browser::running_as_root() {
        // Only a root run can show the root case; the unprivileged case is the test above.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, log) = start_as(None, dir.path()).await;
    open_a_page(addr).await;
    let processes = browser_processes(dir.path());
    let browser = processes
        .iter()
        .find(|p| p.0 == "browser")
        .expect("the browser process");
    assert!(browser.1.contains("--no-sandbox"), "{}", browser.1);
    let renderer = processes.iter().find(|p| p.0 == "renderer").expect("a renderer");
    assert_eq!(seccomp(&renderer.2), Some(0), "no seccomp filter without the sandbox");
    let log = stop(child, log).await;
    assert!(
        log.iter()
            .any(|l| l.contains("running as root: browsers start with --no-sandbox")),
        "{log:?}"
    );
}
