//! Chrome's sandbox: a broker run as an unprivileged user starts browsers whose renderers
//! are sandboxed (their own user and PID namespaces, seccomp-bpf on), read from `/proc`;
//! a broker run as root says at start-up that the sandbox is off, and why. Either way the
//! kernel's confinement (Landlock) holds: a session's page cannot show the token secret.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// The user `scripts/setup.sh --test` adds.
const USER: &str = "cdpgate-test";

/// The processes of the browsers whose user-data directories are under `dir` (each
/// browser's process group: the headless shell's helpers do not name the directory): each
/// one's `--type` (`browser` for the main process), command line and `/proc/PID/status`.
fn browser_processes(dir: &Path) -> Vec<(String, String, String, u32)> {
    let mut found = Vec::new();
    for pid in chrome_processes_under(dir) {
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

/// The browser processes under `dir` once one of them is a renderer (Chrome may answer
/// `Target.createTarget` before the renderer process runs).
async fn processes_with_a_renderer(dir: &Path) -> Vec<(String, String, String, u32)> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let processes = browser_processes(dir);
        if processes.iter().any(|p| p.0 == "renderer") || tokio::time::Instant::now() > deadline {
            return processes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A session of the broker at `addr` opens the broker's token secret as a page: the page
/// shows an error, never the secret's bytes.
async fn assert_the_secret_is_out_of_reach(addr: std::net::SocketAddr, data: &Path) {
    let secret = std::fs::read_to_string(data.join("token_secret")).unwrap();
    let created = http(addr, hyper::Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    let mut client = CdpClient::connect(&created.json).await;
    let page = client
        .open(&format!("file://{}/token_secret", data.display()), None)
        .await
        .expect("the tab opens");
    let text = client.settled_text(&page).await;
    assert!(text.starts_with("complete|"), "{text}");
    assert!(
        !text.contains(secret.trim()),
        "the page showed the token secret: {text}"
    );
}

fn seccomp(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_an_unprivileged_user_the_renderers_are_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let broker = start_binary_as(Some(USER), dir.path(), &data, &[]).await;
    let _page = open_a_page(broker.addr).await;
    let own_user_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let processes = processes_with_a_renderer(dir.path()).await;
    let browser = processes
        .iter()
        .find(|p| p.0 == "browser")
        .expect("the browser process");
    assert!(!browser.1.contains("--no-sandbox"), "{}", browser.1);
    let renderers: Vec<_> = processes.iter().filter(|p| p.0 == "renderer").collect();
    assert!(!renderers.is_empty(), "a renderer: {processes:?}");
    for (_, cmdline, _, pid) in &renderers {
        // A renderer just forked from the zygote installs its filter a moment later (seen
        // in CI: `Seccomp: 0` on a renderer read right after it appeared).
        let filtered = eventually(std::time::Duration::from_secs(10), || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            seccomp(&status) == Some(2)
        })
        .await;
        assert!(filtered, "seccomp-bpf filter on renderer {pid}: {cmdline}");
        let user_ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        assert_ne!(user_ns, own_user_ns, "renderer {pid} in its own user namespace");
        let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(
            pid_ns,
            std::fs::read_link("/proc/self/ns/pid").unwrap(),
            "and its own PID namespace"
        );
    }
    assert_the_secret_is_out_of_reach(broker.addr, &data).await;
    let log = stop_binary(broker).await;
    assert!(log.iter().any(|l| l.contains("sandbox on")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_the_broker_says_the_sandbox_is_off() {
    if !cdpgate::browser::running_as_root() {
        // Only a root run can show the root case; the unprivileged case is the test above.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = start_binary_as(None, dir.path(), &data, &[]).await;
    let _page = open_a_page(broker.addr).await;
    let processes = processes_with_a_renderer(dir.path()).await;
    let browser = processes
        .iter()
        .find(|p| p.0 == "browser")
        .expect("the browser process");
    assert!(browser.1.contains("--no-sandbox"), "{}", browser.1);
    let renderer = processes
        .iter()
        .find(|p| p.0 == "renderer")
        .unwrap_or_else(|| panic!("a renderer: {processes:?}"));
    assert_eq!(seccomp(&renderer.2), Some(0), "no seccomp filter without the sandbox");
    assert_the_secret_is_out_of_reach(broker.addr, &data).await;
    let log = stop_binary(broker).await;
    assert!(
        log.iter()
            .any(|l| l.contains("running as root: browsers start with --no-sandbox")),
        "{log:?}"
    );
}
