//! Chrome extensions: a key uploads the zip of an unpacked Manifest V3 extension, and a
//! process session that names it runs it on every page (a content script marks the page),
//! while a session that does not name it has none. Another key cannot see, use or delete
//! it; a hostile zip is refused and leaves the extensions directory as it was; the browser
//! that loads it reads its files and none of the broker's others. In a cluster, one
//! uploaded on any node runs on every node, fetched from the shared store and refused if
//! its bytes there changed, is deleted everywhere once no node's browser loads it, and
//! the key's caps hold across nodes.

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
    upload_to(server.addr, key, zip).await
}

async fn upload_to(addr: std::net::SocketAddr, key: &str, zip: Vec<u8>) -> Response {
    let headers = [("x-api-key", key), ("content-type", "application/zip")];
    let (status, headers, bytes) =
        http_bytes(addr, Method::POST, "/public/extensions", &headers, Bytes::from(zip)).await;
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
    let long_name = "a".repeat(300);
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
        (
            "a name too long for a file",
            zip_of(&[("manifest.json", ok), (long_name.as_str(), b"x")]),
            "component over 255 bytes",
        ),
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

/// A node of the test cluster under `prefix` on `redis`, sharing its profile directory.
async fn cluster_node(redis: &TestRedis, prefix: &str, name: &str) -> TestServer {
    let (url, prefix, name) = (redis.url.clone(), prefix.to_owned(), name.to_owned());
    let profiles = redis.profiles.path().to_string_lossy().into_owned();
    TestServer::start_with(move |c| {
        c.pool_size = 0;
        c.redis_url = url;
        c.profile_store = profiles;
        c.redis_prefix = prefix;
        c.node_id = name;
        c.cluster_secret = CLUSTER_SECRET.into();
    })
    .await
}

/// The ids a key lists on a node.
async fn listed(server: &TestServer, key: &str) -> Vec<String> {
    let r = server.call(Method::GET, "/public/extensions", Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_uploaded_on_one_node_runs_on_another_and_is_deleted_everywhere() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "ext:", "node-a").await;
    let b = cluster_node(&redis, "ext:", "node-b").await;
    let site = start_site().await;
    let page_url = format!("http://{site}/");
    let uploaded = upload(&a, KEY_A, marker_extension()).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.body);
    let id = uploaded.json["id"].as_str().unwrap().to_owned();
    let path = format!("/public/extensions/{id}");
    let copy_on = |node: &TestServer| node.data_dir.path().join("extensions").join(&id);
    let zip_in_store = redis.profiles.path().join("extensions").join(format!("{id}.zip"));
    assert_eq!(std::fs::read(&zip_in_store).unwrap(), marker_extension());
    assert!(!copy_on(&b).exists(), "B has no copy before its first use");

    // B lists and reads it as A does: same id, same metadata.
    let on_b = b.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(on_b.status, StatusCode::OK, "{}", on_b.body);
    assert_eq!(on_b.json, uploaded.json);
    assert_eq!(listed(&b, KEY_A).await, std::slice::from_ref(&id));
    // Another key sees nothing of it and cannot use or delete it, from either node.
    for node in [&a, &b] {
        assert!(listed(node, KEY_B).await.is_empty());
        for method in [Method::GET, Method::DELETE] {
            let r = node.call(method, &path, Some(KEY_B), None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        }
        let body = json!({"extensions": [id]}).to_string();
        let r = node
            .call(Method::POST, "/public/sessions", Some(KEY_B), Some(&body))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    }
    assert!(!copy_on(&b).exists(), "another key's refused create fetched nothing");
    assert_eq!(b.broker.extensions().fetched(), 0);

    // Sessions on B and on A run it: B fetched it once, for two concurrent creates.
    let (on_b1, on_b2) = tokio::join!(
        b.create(json!({"extensions": [id]})),
        b.create(json!({"extensions": [id]}))
    );
    assert_eq!(b.broker.extensions().fetched(), 1, "two creates, one fetch");
    assert_eq!(
        std::fs::read_to_string(copy_on(&b).join("unpacked/content.js")).unwrap(),
        MARKER_SCRIPT
    );
    let on_a = a.create(json!({"extensions": [id]})).await;
    assert_eq!(a.broker.extensions().fetched(), 0, "A kept its upload's copy");
    for session in [&on_b1, &on_a] {
        let mut client = CdpClient::connect(session).await;
        assert_eq!(
            marked(&mut client, &page_url).await,
            "1",
            "the extension marked the page"
        );
    }
    let users = a.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(users.json["in_use_by"], 3, "counted across the cluster: {}", users.body);

    // In use on A and B: a delete through either is refused, and nothing goes.
    for node in [&b, &a] {
        let busy = node.call(Method::DELETE, &path, Some(KEY_A), None).await;
        assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.body);
        assert!(busy.body.contains("in use by 3"), "{}", busy.body);
    }
    assert!(zip_in_store.exists() && copy_on(&a).exists() && copy_on(&b).exists());
    for session in [&on_b1, &on_b2] {
        let id = session["session_id"].as_str().unwrap();
        assert_eq!(b.terminate(id).await.status, StatusCode::NO_CONTENT);
    }
    // Still held by A's session.
    let released_on_b = eventually_async(Duration::from_secs(15), || async {
        b.call(Method::GET, &path, Some(KEY_A), None).await.json["in_use_by"] == 1
    })
    .await;
    assert!(released_on_b, "B's ended sessions let it go");
    let busy = b.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.body);
    assert_eq!(
        a.terminate(on_a["session_id"].as_str().unwrap()).await.status,
        StatusCode::NO_CONTENT
    );
    let released = eventually_async(Duration::from_secs(15), || async {
        b.call(Method::GET, &path, Some(KEY_A), None).await.json["in_use_by"] == 0
    })
    .await;
    assert!(released, "A's ended session let it go");

    // Deleted through B: gone from the cluster, the store and B at once, from A soon.
    let deleted = b.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert!(!zip_in_store.exists(), "its zip left the shared store");
    assert!(!copy_on(&b).exists(), "B's copy is gone");
    for node in [&a, &b] {
        assert_eq!(
            node.call(Method::GET, &path, Some(KEY_A), None).await.status,
            StatusCode::NOT_FOUND
        );
        assert!(listed(node, KEY_A).await.is_empty());
    }
    let dropped = eventually(Duration::from_secs(15), || !copy_on(&a).exists()).await;
    assert!(dropped, "A dropped its copy of the deleted extension");
    let body = json!({"extensions": [id]}).to_string();
    let r = a.call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    for server in [a, b] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_changed_in_the_shared_store_is_refused_and_nothing_is_loaded() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "tamper:", "node-a").await;
    let b = cluster_node(&redis, "tamper:", "node-b").await;
    let uploaded = upload(&a, KEY_A, marker_extension()).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.body);
    let id = uploaded.json["id"].as_str().unwrap().to_owned();
    let zip_in_store = redis.profiles.path().join("extensions").join(format!("{id}.zip"));
    let original = std::fs::read(&zip_in_store).unwrap();
    let b_root = b.data_dir.path().join("extensions");
    let before = snapshot(&b_root);
    let browsers_before = chrome_groups_under(b.data_dir.path());

    // Someone who can write to the store swaps in another extension (a valid zip whose
    // content script does something else), then a mere change of bytes.
    let evil = zip_of(&[
        ("manifest.json", manifest(3).as_bytes()),
        ("content.js", b"document.documentElement.dataset.cdpgateExt = \"evil\";"),
    ]);
    let mut flipped = original.clone();
    let last = flipped.len() - 30;
    flipped[last] ^= 0xff;
    let body = json!({"extensions": [id]}).to_string();
    for (what, bytes) in [("another extension", evil), ("changed bytes", flipped)] {
        std::fs::write(&zip_in_store, &bytes).unwrap();
        let r = b.call(Method::POST, "/public/sessions", Some(KEY_A), Some(&body)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {}", r.body);
        assert!(
            r.body.contains(&id) && r.body.contains("not the one uploaded"),
            "{what}: {}",
            r.body
        );
        assert_eq!(snapshot(&b_root), before, "{what}: nothing unpacked on B");
        assert_eq!(
            chrome_groups_under(b.data_dir.path()),
            browsers_before,
            "{what}: no browser started"
        );
        let active = b
            .call(Method::GET, "/public/sessions?status_filter=active", Some(KEY_A), None)
            .await;
        assert_eq!(active.json["total"], 0, "{what}: {}", active.body);
        let held = b
            .call(Method::GET, &format!("/public/extensions/{id}"), Some(KEY_A), None)
            .await;
        assert_eq!(held.json["in_use_by"], 0, "{what}: the refused create holds nothing");
    }
    // The zip as uploaded loads again.
    std::fs::write(&zip_in_store, &original).unwrap();
    let session = b.create(json!({"extensions": [id]})).await;
    assert_eq!(session["extensions"], json!([id]));
    assert!(b_root.join(&id).join("unpacked/content.js").exists());
    for server in [a, b] {
        server.stop().await;
    }
}

/// Uploads racing on two nodes (their own processes, on an S3 store) for a cap of three:
/// three are kept, in Redis and in the store alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_racing_on_two_nodes_stay_within_the_keys_cap() {
    let redis = start_redis().await;
    let s3 = start_s3("extensions").await;
    let store = format!("s3://{}/cluster", s3.bucket);
    let start_node = async |name: &str, dir: &Path| {
        let mut env: Vec<(&str, String)> = s3.env();
        env.extend([
            ("CDPGATE_API_KEYS", format!("{KEY_A},{KEY_B}")),
            ("CDPGATE_POOL_SIZE", "0".to_owned()),
            ("CDPGATE_MAX_EXTENSIONS_PER_KEY", "3".to_owned()),
            ("CDPGATE_REDIS_URL", redis.url.clone()),
            ("CDPGATE_REDIS_PREFIX", "race:".to_owned()),
            ("CDPGATE_NODE_ID", name.to_owned()),
            ("CDPGATE_PROFILE_STORE", store.clone()),
            ("CDPGATE_CLUSTER_SECRET", CLUSTER_SECRET.to_owned()),
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_binary(dir, &env).await
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_node("node-a", dir_a.path()).await;
    let b = start_node("node-b", dir_b.path()).await;
    // A node takes one upload of a key at a time (`409 … one at a time` to the others):
    // each upload is sent again until it is kept or refused for the cap, so that the two
    // nodes still race each other for the last places.
    let upload_until_answered = async |addr| loop {
        let r = upload_to(addr, KEY_A, marker_extension()).await;
        if !r.body.contains("one at a time") {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let uploads = (0..10).map(|i| upload_until_answered(if i % 2 == 0 { a.addr } else { b.addr }));
    let answers = futures_util::future::join_all(uploads).await;
    let kept: Vec<String> = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .map(|r| r.json["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kept.len(),
        3,
        "{:?}",
        answers.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for r in answers.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert!(r.body.contains("max_extensions_per_key"), "{}", r.body);
    }
    let mut kept = kept;
    kept.sort();
    for addr in [a.addr, b.addr] {
        let r = http(addr, Method::GET, "/public/extensions", Some(KEY_A), None).await;
        let mut ids: Vec<String> = r.json["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, kept);
    }
    // The store holds the three zips and nothing of the refused ones.
    let s3_addr: std::net::SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let listing = http(
        s3_addr,
        Method::GET,
        &format!("/{}?list-type=2&prefix=cluster/extensions/", s3.bucket),
        None,
        None,
    )
    .await;
    let mut stored: Vec<String> = listing
        .body
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap().to_owned())
        .collect();
    stored.sort();
    let expected: Vec<String> = kept.iter().map(|id| format!("cluster/extensions/{id}.zip")).collect();
    assert_eq!(stored, expected, "{}", listing.body);
    // Another key's cap is its own.
    assert_eq!(
        upload_to(b.addr, KEY_B, marker_extension()).await.status,
        StatusCode::CREATED
    );
    for node in [a, b] {
        stop_binary(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_the_cluster_loads_an_extension_uploaded_on_another_node() {
    let redis = start_redis().await;
    let a = cluster_node(&redis, "extpool:", "node-a").await;
    let b = cluster_node(&redis, "extpool:", "node-b").await;
    let site = start_site().await;
    let uploaded = upload(&a, KEY_A, marker_extension()).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.body);
    let id = uploaded.json["id"].as_str().unwrap().to_owned();
    let path = format!("/public/extensions/{id}");
    let pool = json!({"name": "marked", "size": 2, "extensions": [id]}).to_string();
    let defined = a.call(Method::POST, "/public/pools", Some(KEY_A), Some(&pool)).await;
    assert_eq!(defined.status, StatusCode::CREATED, "{}", defined.body);

    // One ready browser on each node, B's on the copy it fetched.
    let both = json!([{"node": "node-a", "ready": 1}, {"node": "node-b", "ready": 1}]);
    let filled = eventually_async(Duration::from_secs(60), || async {
        b.call(Method::GET, "/public/pools/marked", Some(KEY_A), None)
            .await
            .json["stats"]["nodes"]
            == both
    })
    .await;
    assert!(filled, "each node keeps one ready");
    assert_eq!(b.broker.extensions().fetched(), 1);
    let held = b.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(held.json["in_use_by"], 2, "ready browsers hold it: {}", held.body);

    let take = json!({"pool": "marked"}).to_string();
    let taken = b.call(Method::POST, "/public/sessions", Some(KEY_A), Some(&take)).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.body);
    assert_eq!(taken.json["pool_hit"], true, "{}", taken.body);
    let mut client = CdpClient::connect(&taken.json).await;
    assert_eq!(marked(&mut client, &format!("http://{site}/")).await, "1");
    let busy = a.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.body);

    // Pool and session gone: the extension is free to go.
    drop(client);
    let deleted = b.call(Method::DELETE, "/public/pools/marked", Some(KEY_A), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let session = taken.json["session_id"].as_str().unwrap();
    assert_eq!(b.terminate(session).await.status, StatusCode::NO_CONTENT);
    let free = eventually_async(Duration::from_secs(30), || async {
        a.call(Method::GET, &path, Some(KEY_A), None).await.json["in_use_by"] == 0
    })
    .await;
    assert!(free, "nothing holds it");
    let deleted = a.call(Method::DELETE, &path, Some(KEY_A), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    for server in [a, b] {
        server.stop().await;
    }
}

/// Bytes of the unpacks under way in `root` (its `.tmp-` directories).
fn unpacking_bytes(root: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(root) else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let mut stack = vec![entry.path()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => stack.push(e.path()),
                    Ok(m) => total += m.len(),
                    Err(_) => {}
                }
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_uploads_unpacks_two_at_a_time_and_one_per_key() {
    let server = TestServer::start_with(|c| c.pool_size = 0).await;
    let root = server.data_dir.path().join("extensions");
    // 20 MiB of zeros, honestly declared: a few KiB on the wire, 20 MiB on disk once unpacked.
    let zeros = vec![0u8; 20 * 1024 * 1024];
    let zip = zip_of(&[("manifest.json", manifest(3).as_bytes()), ("big.bin", &zeros)]);
    assert!(zip.len() < 1024 * 1024);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = tokio::task::spawn_blocking({
        let (root, sampling) = (root.clone(), sampling.clone());
        move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(unpacking_bytes(&root));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        }
    });
    let uploads = (0..12).map(|i| upload(&server, if i % 2 == 0 { KEY_A } else { KEY_B }, zip.clone()));
    let answers = futures_util::future::join_all(uploads).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.await.unwrap();

    let mut kept = BTreeMap::new();
    for (i, answer) in answers.iter().enumerate() {
        match answer.status {
            StatusCode::CREATED => *kept.entry(i % 2).or_insert(0) += 1,
            StatusCode::CONFLICT => assert!(answer.body.contains("one at a time"), "{}", answer.body),
            other => panic!("upload {i}: {other} {}", answer.body),
        }
    }
    assert!(kept.len() == 2, "each key kept one at least: {kept:?}");
    // Two unpacks at once at most: never more than two extensions' bytes being written.
    assert!(
        peak <= 2 * 20 * 1024 * 1024 + 64 * 1024,
        "{peak} bytes unpacking at once"
    );
    assert_eq!(unpacking_bytes(&root), 0, "nothing left half unpacked");
    server.stop().await;
}
