//! TLS: the API over https, `cdp_url` over wss, and a bad certificate stopping start-up.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_https_and_cdp_urls_are_wss() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(certs.path());
    let server = TestServer::start_with(|c| {
        c.tls_cert = cert.clone();
        c.tls_key = key;
        c.tls_handshake_timeout_ms = 300;
    })
    .await;
    let api = format!("https://{}", server.addr);
    let output = finished(
        tokio::process::Command::new("node")
            .arg(repo_root().join("tests/js/tls_check.mjs"))
            .args([&api, KEY_A])
            .env("NODE_EXTRA_CA_CERTS", &cert),
    )
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["status"], 201);
    assert!(
        seen["cdp_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("wss://{}/devtools/browser/", server.addr))
    );
    assert_eq!(seen["sum"], 42);
    assert_eq!(seen["live_status"], 200);

    // A client that never finishes its handshake is dropped, not held.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection was closed: {read:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (cert, key, words) in [
        (garbage.clone(), garbage.clone(), "cannot read the TLS certificate"),
        (
            dir.path().join("missing.pem"),
            garbage.clone(),
            "cannot read the TLS certificate",
        ),
    ] {
        let mut config = test_config(dir.path());
        config.tls_cert = cert.to_string_lossy().into_owned();
        config.tls_key = key.to_string_lossy().into_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = cdpgate::start(&listener, config, Default::default())
            .await
            .err()
            .expect("start-up fails");
        assert!(error.to_string().contains(words), "{error}");
    }
    let mut config = test_config(dir.path());
    config.tls_cert = "only-the-cert.pem".into();
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tls_cert and tls_key go together")
    );
}
