//! The deployment files, kept honest where no container engine or init system runs: the
//! runtime setup script the Dockerfile runs is run here too, and a broker then serves as
//! the user it makes; the Dockerfile names files that exist, a route that answers and the
//! pinned toolchain; the systemd unit passes `systemd-analyze verify`; every node of
//! `compose.yaml` has a configuration the broker accepts.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cdpgate::http::router::ROUTES;
use common::*;
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

/// The instructions of a Dockerfile, continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if line.is_empty() && current.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_s_runtime_setup_runs_here_and_a_broker_serves_as_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let (data, profiles) = (dir.path().join("data"), dir.path().join("profiles"));
    let script = repo_root().join("deploy/docker/runtime-setup.sh");
    for round in ["first", "again"] {
        let out = finished(tokio::process::Command::new(&script).arg(&data).arg(&profiles)).await;
        assert!(
            out.status.success(),
            "{round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = |flag: &str| {
        let out = std::process::Command::new("id")
            .args([flag, "cdpgate"])
            .output()
            .unwrap();
        assert!(out.status.success(), "the user cdpgate exists");
        String::from_utf8(out.stdout).unwrap().trim().parse::<u32>().unwrap()
    };
    for d in [&data, &profiles] {
        let meta = std::fs::metadata(d).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (id("-u"), 0o750), "{}", d.display());
    }
    let fonts = std::process::Command::new("fc-list").output().unwrap();
    let fonts = String::from_utf8_lossy(&fonts.stdout);
    for family in ["Liberation Sans", "Noto Color Emoji", "Noto Sans CJK"] {
        assert!(fonts.contains(family), "{family} installed");
    }
    assert!(Path::new("/usr/bin/chromium").exists());
    assert!(Path::new("/usr/bin/ffmpeg").exists());

    // The broker, as that user, on that directory: a session's browser starts.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let broker = start_binary_as(Some("cdpgate"), &bin, &data, &[]).await;
    let _page = open_a_page(broker.addr).await;
    let ready = http(broker.addr, hyper::Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, hyper::StatusCode::OK, "{}", ready.body);
    let log = stop_binary(broker).await;
    assert!(log.iter().any(|l| l.contains("sandbox on")), "{log:?}");
}

#[test]
fn the_dockerfile_names_what_exists() {
    let dockerfile = read("Dockerfile");
    let steps = instructions(&dockerfile);
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    let froms: Vec<&String> = steps.iter().filter(|s| s.starts_with("FROM ")).collect();
    assert!(
        froms[0].starts_with(&format!("FROM rust:{channel}-slim-")),
        "the build stage uses the pinned toolchain {channel}: {}",
        froms[0]
    );
    // Build and run on the same Debian release: the binary links against its libc.
    let release = |from: &str| {
        from.split(['-', ' ', ':'])
            .find(|w| ["bookworm", "trixie"].contains(w))
            .map(str::to_owned)
    };
    assert_eq!(release(froms[0]), release(froms[1]), "{froms:?}");
    assert!(release(froms[0]).is_some());

    let mut built = None;
    for step in &steps {
        let words: Vec<&str> = step.split_whitespace().collect();
        match words[0] {
            "COPY" if words[1].starts_with("--from=") => built = Some(words[3].to_owned()),
            "COPY" if words[1] != "." => {
                assert!(repo_root().join(words[1]).exists(), "COPY source {} exists", words[1]);
            }
            "RUN" if words[1].contains("runtime-setup.sh") => {
                assert!(
                    steps
                        .iter()
                        .any(|s| s.starts_with("COPY deploy/docker/runtime-setup.sh")),
                    "the script it runs is the one in the repository"
                );
            }
            "HEALTHCHECK" => {
                let url = words.iter().find(|w| w.starts_with("http://")).unwrap();
                let path = &url[url[7..].find('/').unwrap() + 7..];
                assert!(ROUTES.iter().any(|r| r.path == path), "{path} is a route");
            }
            "ENTRYPOINT" => {
                let binary = built.as_deref().expect("the binary is copied in first");
                assert!(step.contains(&format!("\"{binary}\"")), "{step}");
                assert!(step.contains("/etc/cdpgate/config.toml"));
            }
            _ => {}
        }
    }
    assert!(steps.iter().any(|s| s == "USER cdpgate"), "runs unprivileged");
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("RUN cargo build --release --locked --bin cdpgate"))
    );
}

#[tokio::test]
async fn the_systemd_unit_passes_systemd_analyze_verify() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is missing: apt-get install -y systemd");
    }
    let dir = tempfile::tempdir().unwrap();
    // Verify checks that the binary exists: point it at the one just built.
    let unit = read("deploy/cdpgate.service").replace(
        "ExecStart=/usr/local/bin/cdpgate ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_cdpgate")),
    );
    assert!(unit.contains(env!("CARGO_BIN_EXE_cdpgate")));
    let path = dir.path().join("cdpgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = finished(tokio::process::Command::new("systemd-analyze").arg("verify").arg(&path)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    let text = read("deploy/cdpgate.service");
    for line in [
        "User=cdpgate",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "ReadWritePaths=/var/lib/cdpgate",
    ] {
        assert!(text.contains(line), "{line}");
    }
}

#[tokio::test]
async fn every_compose_node_has_a_configuration_the_broker_accepts() {
    let out = finished(tokio::process::Command::new(python()).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        repo_root().join("compose.yaml").to_str().unwrap(),
    ]))
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compose: Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = compose["services"].as_object().unwrap();
    let nodes: Vec<&String> = services.keys().filter(|k| k.starts_with("node-")).collect();
    assert_eq!(nodes.len(), 3);
    let nginx = services["nginx"]["command"].to_string();
    for name in &nodes {
        let node = &services[name.as_str()];
        let env: std::collections::HashMap<String, String> = node["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let mut config = cdpgate::Config::default();
        config
            .apply_env(|key| {
                // The API keys and the cluster secret come from the operator's shell.
                if key == "CDPGATE_API_KEYS" {
                    return Some("key-of-sixteen-chars".into());
                }
                if key == "CDPGATE_CLUSTER_SECRET" {
                    assert_eq!(
                        env.get(key).map(String::as_str),
                        Some("${CDPGATE_CLUSTER_SECRET:?set CDPGATE_CLUSTER_SECRET}")
                    );
                    return Some("cluster-secret-of-at-least-32-characters".into());
                }
                env.get(key).cloned()
            })
            .unwrap();
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.node_id, name.as_str());
        assert_eq!(config.node_url, format!("http://{name}:3000"));
        assert_eq!(config.redis_url, "redis://redis:6379/");
        let volumes = node["volumes"].to_string();
        assert!(
            volumes.contains(&format!("profiles:{}", config.profile_store)),
            "{name} mounts the shared profile store: {volumes}"
        );
        assert!(nginx.contains(&format!("server {name}:3000;")), "nginx sends to {name}");
    }
    assert!(
        services["nginx"]["volumes"]
            .to_string()
            .contains("./deploy/nginx-cluster.conf")
    );
}
