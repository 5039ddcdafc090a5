//! Chrome extensions: a key uploads the zip of an unpacked Manifest V3 extension, and a
//! process session that names it runs it on every page (a content script marks the page),
//! while a session that does not name it has none. Another key cannot see, use or delete
//! it; a hostile zip is refused and leaves the extensions directory as it was; the browser
//! that loads it reads its files and none of the broker's others.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The content script every test extension runs: marks each page it is injected into.
const MARKER_SCRIPT: &str = "document.documentElement.dataset.cdpgateExt = \"1\";";

fn manifest(version: u64) -> String {
    json!({
        "manifest_version": version,
        "name": "cdpgate marker",
        "version": "1.0.0",
        "content_scripts": [{"matches": ["<all_urls>"], "js": ["content.js"], "run_at": "document_start"}]
    })
    .to_string()
}

/// A zip of these entries, deflated.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A V3 manifest that asks for `permission` in `field`.
fn with_permission(field: &str, permission: &str) -> Vec<u8> {
    let mut m: Value = serde_json::from_str(&manifest(3)).unwrap();
    m[field] = json!([permission]);
    m.to_string().into_bytes()
}

/// A zip whose headers say its big entry is 1 KiB while it inflates to 60 MiB: only the
/// bytes read count.
fn understated() -> Vec<u8> {
    let zeros = vec![0u8; 60 * 1024 * 1024];
    let mut zip = zip_of(&[("manifest.json", manifest(3).as_bytes()), ("big.bin", &zeros)]);
    let declared = (60u32 * 1024 * 1024).to_le_bytes();
    let mut patched = 0;
    for at in 0..zip.len() - 4 {
        // The uncompressed size of big.bin, in its local header (offset 22) and its
        // central directory record (offset 24).
        for (signature, offset) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            if &zip[at..at + 4] == signature && zip[at + offset..at + offset + 4] == declared {
                zip[at + offset..at + offset + 4].copy_from_slice(&1024u32.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "both size fields found");
    zip
}

fn marker_extension() -> Vec<u8> {
    zip_of(&[
        ("manifest.json", manifest(3).as_bytes()),
        ("content.js", MARKER_SCRIPT.as_bytes()),
    ])
}

async fn upload(server: &TestServer, key: &str, zip: Vec<u8>) -> Response {
    let headers = [("x-api-key", key), ("content-type", "application/zip")];
    let (status, headers, bytes) = http_bytes(
        server.addr,
        Method::POST,
        "/public/extensions",
        &headers,
        Bytes::from(zip),
    )
    .await;
    Response::new(status, headers, &bytes)
}

/// Every file under `dir` with its bytes, and every directory (`None`).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                all.insert(path.clone(), None);
                stack.push(path);
            } else {
                all.insert(path.clone(), Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    all
}

/// Whether the page of `session` (loaded at `url`) was marked by the extension.
async fn marked(client: &mut CdpClient, url: &str) -> Value {
    let (_, page) = client.own_page().await;
    client.load(&page, url).await;
    client
        .eval(&page, "document.documentElement.dataset.cdpgateExt ?? null")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_runs_only_in_the_sessions_of_its_key_that_ask_for_it() {
    let server = TestServer::start().await;
    let site = start_site().await;
    let page_url = format!("http://{site}/");
    let root = server.data_dir.path().join("extensions");

    let uploaded = upload(&server, KEY_A, marker_extension()).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.body);
    let ext = uploaded.json.clone();
    let id = ext["id"].as_str().unwrap().to_owned();
    assert_eq!(ext["name"], "cdpgate marker");
    assert_eq!(ext["version"], "1.0.0");
    assert_eq!(ext["manifest_version"], 3);
    assert_eq!(ext["size"], (manifest(3).len() + MARKER_SCRIPT.len()) as u64);
    assert_eq!(
        std::fs::read_to_string(root.join(&id).join("unpacked/content.js")).unwrap(),
        MARKER_SCRIPT
    );
    // Another key's extension, whose files the session's browser must not read.
    let other = upload(
        &server,
        KEY_B,
        zip_of(&[
            ("manifest.json", manifest(3).as_bytes()),
            ("content.js", b"// other-key-marker-5d1e"),
        ]),
    )
    .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    let other_id = other.json["id"].as_str().unwrap().to_owned();

    // The other key sees nothing of it, and cannot use or delete it.
    let path = format!("/public/extensions/{id}");
    let listed_b = server.call(Method::GET, "/public/extensions", Some(KEY_B), None).await;
    let ids_b: Vec<&str> = listed_b.json["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids_b, [other_id.as_str()]);
    assert_eq!(
        server.call(Method::GET, &path, Some(KEY_B), None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.call(Method::DELETE, &path, Some(KEY_B), None).await.status,
        StatusCode::NOT_FOUND
    );
    let refused = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_B),
            Some(&json!({"extensions": [id]}).to_string()),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains(&id), "the refusal names the id: {}", refused.body);
    assert!(root.join(&id).join("unpacked/content.js").exists());

    // A session that asks for it runs it, on the full Chromium; its record says so.
    let with = server.create(json!({"extensions": [id]})).await;
    assert_eq!(with["extensions"], json!([id]));
    assert_eq!(with["isolation"], "process");
    let mut client = CdpClient::connect(&with).await;
    assert_eq!(
        marked(&mut client, &page_url).await,
        "1",
        "the extension marked the page"
    );
    let got = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(got.json["in_use_by"], 1);

    // Its browser reads its extension's files, and none of the broker's others: another
    // key's extension, the metadata beside its own, the token secret.
    let data = server.data_dir.path();
    let own_script = format!("file://{}", root.join(&id).join("unpacked/content.js").display());
    let (_, page) = client.own_page().await;
    let shown = client.navigate(&page, &own_script).await;
    assert!(
        shown.contains("cdpgateExt"),
        "the probe reads the extension's file: {shown}"
    );
    let secret = std::fs::read_to_string(data.join("token_secret")).unwrap();
    for forbidden in [
        root.join(&other_id).join("unpacked/content.js"),
        root.join(&id).join("extension.json"),
        data.join("token_secret"),
        root.clone(),
    ] {
        let url = format!("file://{}", forbidden.display());
        // The error page names the URL asked for: only what else it shows counts.
        let shown = client.navigate(&page, &url).await.replace(&url, "");
        assert!(
            !shown.contains("other-key-marker"),
            "{url} showed another key's extension: {shown}"
        );
        assert!(
            !shown.contains("tenant"),
            "{url} showed the extension's metadata: {shown}"
        );
        assert!(!shown.contains(&secret), "{url} showed the token secret: {shown}");
        assert!(!shown.contains(&other_id), "{url} listed the extensions: {shown}");
    }

    // A session that does not ask for it has none.
    let without = server.create(json!({})).await;
    assert_eq!(without["extensions"], json!([]));
    let mut plain = CdpClient::connect(&without).await;
    assert_eq!(
        marked(&mut plain, &page_url).await,
        Value::Null,
        "no extension in a plain session"
    );

    // In use, it is not deleted; once its session ended, DELETE removes its files.
    let busy = server.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.body);
    assert!(root.join(&id).join("unpacked/content.js").exists());
    drop(client);
    assert_eq!(
        server.terminate(with["session_id"].as_str().unwrap()).await.status,
        StatusCode::NO_CONTENT
    );
    let released = eventually_async(Duration::from_secs(15), || async {
        server.call(Method::GET, &path, Some(KEY_A), None).await.json["in_use_by"] == 0
    })
    .await;
    assert!(released, "the ended session's browser let the extension go");
    let deleted = server.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert!(!root.join(&id).exists(), "its files are gone");
    assert!(
        root.join(&other_id).join("unpacked/content.js").exists(),
        "the other key's stays"
    );
    assert_eq!(
        server.call(Method::GET, &path, Some(KEY_A), None).await.status,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_zips_are_refused_and_leave_the_directory_unchanged() {
    let server = TestServer::start_with(|c| c.pool_size = 0).await;
    let root = server.data_dir.path().join("extensions");
    let kept = upload(&server, KEY_A, marker_extension()).await;
    assert_eq!(kept.status, StatusCode::CREATED, "{}", kept.body);
    let before = snapshot(&root);
    assert!(!before.is_empty());

    let mv3 = manifest(3);
    let ok = mv3.as_bytes();
    let symlink = {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        writer.start_file("manifest.json", options).unwrap();
        writer.write_all(ok).unwrap();
        writer.add_symlink("content.js", "/etc/passwd", options).unwrap();
        writer.finish().unwrap().into_inner()
    };
    let zeros = vec![0u8; 51 * 1024 * 1024];
    let many: Vec<(String, Vec<u8>)> = (0..2001).map(|i| (format!("f{i}.js"), Vec::new())).collect();
    let mut many_entries: Vec<(&str, &[u8])> = vec![("manifest.json", ok)];
    many_entries.extend(many.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "zip slip",
            zip_of(&[("manifest.json", ok), ("../escaped.js", b"x")]),
            ". or ..",
        ),
        (
            "nested zip slip",
            zip_of(&[("manifest.json", ok), ("a/../../escaped.js", b"x")]),
            ". or ..",
        ),
        (
            "absolute path",
            zip_of(&[("manifest.json", ok), ("/tmp/escaped.js", b"x")]),
            "absolute",
        ),
        (
            "backslash",
            zip_of(&[("manifest.json", ok), ("..\\escaped.js", b"x")]),
            "backslash",
        ),
        (
            "drive letter",
            zip_of(&[("manifest.json", ok), ("C:/escaped.js", b"x")]),
            "drive letter",
        ),
        ("symlink entry", symlink, "link"),
        (
            "zip bomb",
            zip_of(&[("manifest.json", ok), ("big.bin", &zeros)]),
            "more than",
        ),
        ("too many entries", zip_of(&many_entries), "entries"),
        ("no manifest", zip_of(&[("content.js", b"x")]), "no manifest.json"),
        (
            "two top folders",
            zip_of(&[("a/manifest.json", ok), ("b/content.js", b"x")]),
            "no manifest.json",
        ),
        (
            "invalid JSON",
            zip_of(&[("manifest.json", b"{\"manifest_version\": 3,")]),
            "not valid JSON",
        ),
        (
            "Manifest V2",
            zip_of(&[("manifest.json", manifest(2).as_bytes())]),
            "Manifest V2",
        ),
        (
            "proxy permission",
            zip_of(&[("manifest.json", with_permission("permissions", "proxy").as_slice())]),
            "holds \\\"proxy",
        ),
        (
            "privacy permission",
            zip_of(&[(
                "manifest.json",
                with_permission("optional_permissions", "privacy").as_slice(),
            )]),
            "optional_permissions holds \\\"privacy",
        ),
        (
            "native messaging",
            zip_of(&[(
                "manifest.json",
                with_permission("permissions", "nativeMessaging").as_slice(),
            )]),
            "nativeMessaging",
        ),
        ("understated size", understated(), "big.bin"),
        (
            "not a zip",
            b"PK\x03\x04 but nothing more".to_vec(),
            "not a readable zip",
        ),
    ];
    for (what, zip, says) in cases {
        let answer = upload(&server, KEY_A, zip).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            answer.body
        );
        assert!(answer.body.contains(says), "{what}: {}", answer.body);
        assert_eq!(snapshot(&root), before, "{what} changed the extensions directory");
    }
    // A body past the zip limit is refused before a byte of it is read.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /public/extensions HTTP/1.1\r\nhost: {}\r\nx-api-key: {KEY_A}\r\n\
         content-type: application/zip\r\ncontent-length: {}\r\n\r\n",
        server.addr,
        10 * 1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert_eq!(snapshot(&root), before);
    // Nothing escaped beside it either.
    assert!(!server.data_dir.path().join("escaped.js").exists());
    assert!(!Path::new("/tmp/escaped.js").exists());

    // One top folder is fine: the manifest is found in it.
    let foldered = zip_of(&[
        ("marker/manifest.json", ok),
        ("marker/content.js", MARKER_SCRIPT.as_bytes()),
    ]);
    let answer = upload(&server, KEY_A, foldered).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let id = answer.json["id"].as_str().unwrap();
    assert!(root.join(id).join("unpacked/manifest.json").exists());

    // Extensions are for browsers the broker starts, of their own.
    for (body, says) in [
        (json!({"extensions": [id], "isolation": "context"}), "isolation"),
        (
            json!({"extensions": [id], "cdp_url": "ws://127.0.0.1:9/devtools/browser/x"}),
            "cdp_url",
        ),
        (
            json!({"extensions": ["ext_000000000000000000000000"]}),
            "ext_000000000000000000000000",
        ),
        (json!({"extensions": "nope"}), "array"),
    ] {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert!(r.body.contains(says), "{body}: {}", r.body);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_keeps_at_most_its_cap_of_extensions() {
    let server = TestServer::start_with(|c| {
        c.pool_size = 0;
        c.max_extensions_per_key = 2;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            upload(&server, KEY_A, marker_extension()).await.status,
            StatusCode::CREATED
        );
    }
    let root = server.data_dir.path().join("extensions");
    let before = snapshot(&root);
    let third = upload(&server, KEY_A, marker_extension()).await;
    assert_eq!(third.status, StatusCode::CONFLICT, "{}", third.body);
    assert!(third.body.contains("max_extensions_per_key"), "{}", third.body);
    assert_eq!(snapshot(&root), before);
    // Another key's cap is its own.
    assert_eq!(
        upload(&server, KEY_B, marker_extension()).await.status,
        StatusCode::CREATED
    );
    server.stop().await;
}
