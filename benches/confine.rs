//! What confining a browser costs: building its Landlock ruleset in the broker (once per
//! launch), and a Chromium launch to its DevTools address with and without the ruleset,
//! side by side.
//!
//! `cargo bench --bench confine`; numbers and how to read them: docs/benchmarks.md.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cdpgate::browser::confine::{self, Allowed, Confinement};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::runtime::Runtime;

fn allowed(root: &Path) -> Allowed {
    let dirs: Vec<_> = ["profile", "tmp", "downloads"].iter().map(|d| root.join(d)).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
    }
    Allowed {
        read_exec: Vec::new(),
        read_only: Vec::new(),
        read_write: dirs,
        connect_ports: vec![9],
        write_proc: false,
    }
}

/// Starts Chromium as the broker does (headless, a fresh profile) and answers how long it
/// took to print its DevTools address; then kills it.
async fn launch(chrome: &Path, root: &Path, confined: bool) -> Duration {
    let allowed = allowed(root);
    let mut cmd = tokio::process::Command::new(chrome);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ])
    .args([
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
    .args(cdpgate::browser::running_as_root().then_some("--no-sandbox"))
    .arg(format!("--user-data-dir={}", allowed.read_write[0].display()))
    .arg("about:blank")
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("HOME", &allowed.read_write[1])
    .env("TMPDIR", &allowed.read_write[1])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .process_group(0);
    let started = Instant::now();
    if confined {
        confine::enforce_in_child(&mut cmd, confine::prepare(&allowed, true).unwrap());
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("DevTools listening on ") {
            break;
        }
    }
    let took = started.elapsed();
    // The whole group: renderers and helpers too.
    if let Some(pid) = child.id().filter(|pid| *pid > 1) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    }
    let _ = child.kill().await;
    took
}

fn confinement(c: &mut Criterion) {
    if !matches!(Confinement::probe(), Ok(Confinement::Landlock { .. })) {
        eprintln!("no Landlock on this kernel: nothing to measure");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    c.bench_function("confine/prepare_ruleset", |b| {
        b.iter(|| confine::prepare(&allowed(root.path()), true).unwrap())
    });

    let Some(chrome) = cdpgate::browser::find_chrome() else {
        eprintln!("no Chromium: launches not measured");
        return;
    };
    let rt = Runtime::new().unwrap();
    let mut group = c.benchmark_group("confine/chromium_launch");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for confined in [false, true] {
        let name = if confined { "confined" } else { "unconfined" };
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir().unwrap();
                    total += rt.block_on(launch(&chrome, dir.path(), confined));
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, confinement);
criterion_main!(benches);
