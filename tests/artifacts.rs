//! Session artifacts with real Chromium: downloads into each session's files (within its
//! quota, whatever the client's own download folder), uploads onto file inputs with
//! Puppeteer and Playwright, recordings checked with ffprobe and by their frames'
//! colours, the live view and the dashboard of ended sessions in a real browser.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const REPORT_LEN: usize = 200_000;
const BIG_LEN: usize = 3_000_000;

fn report_bytes() -> Vec<u8> {
    (0..REPORT_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// A site with files to download, a form to upload to (what it receives is kept), and a
/// page whose colour follows the clock (red, green, blue, one second each).
struct Site {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Site {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Opens the site's page of changing colours in the session's first tab (visit.mjs).
async fn visit_colors(session: &Value, site: &Site) -> Value {
    let cdp_url = session["cdp_url"].as_str().unwrap();
    node("visit.mjs", &[cdp_url, &format!("{}/colors", site.url()), "", "first"]).await
}

async fn start_files_site() -> Site {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut stream, &mut buf).await {
                    let target = head.split_whitespace().nth(1).unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/").to_owned();
                    let (kind, extra, payload): (&str, &str, Vec<u8>) = match path.as_str() {
                        "/report.bin" => (
                            "application/octet-stream",
                            "content-disposition: attachment; filename=\"report.bin\"\r\n",
                            report_bytes(),
                        ),
                        "/big.bin" => (
                            "application/octet-stream",
                            "content-disposition: attachment; filename=\"big.bin\"\r\n",
                            vec![b'x'; BIG_LEN],
                        ),
                        "/form" => (
                            "text/html",
                            "",
                            b"<form method=post action=/submit enctype=multipart/form-data>\
                              <label>Resume <input type=file name=resume></label><button id=send>Send</button></form>"
                                .to_vec(),
                        ),
                        "/submit" => {
                            kept.lock().unwrap().push(body);
                            ("text/html", "", b"<p>received</p>".to_vec())
                        }
                        "/colors" => ("text/html", "", COLORS.as_bytes().to_vec()),
                        _ => (
                            "text/html",
                            "",
                            b"<title>files</title><a id=report href=/report.bin>report</a> \
                              <a id=big href=/big.bin>big</a>"
                                .to_vec(),
                        ),
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\n{extra}content-length: {}\r\n\r\n",
                        payload.len()
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&payload).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Site { addr, received }
}

/// Red, green, blue, one second each, by the clock.
const COLORS: &str = "<!doctype html><title>colors</title><style>html,body{margin:0;height:100%}</style>\
<body><script>const c=['#ff0000','#00ff00','#0000ff'];\
function paint(){document.body.style.background=c[Math.floor(Date.now()/1000)%3];requestAnimationFrame(paint)}\
paint()</script></body>";

/// What the sentinel files hold: never in an answer, never changed.
const SENTINEL: &str = "sentinel-3f9a1c: a file outside the session's files";

/// Plants `sentinel.txt` at every level between a session's files directory and the data
/// directory, where a name that climbs would land; answers their paths.
fn plant_sentinels(data_dir: &Path, id: &str) -> Vec<PathBuf> {
    let files = data_dir.join("artifacts").join(id).join("files");
    std::fs::create_dir_all(&files).unwrap();
    let paths: Vec<PathBuf> = files
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("sentinel.txt"))
        .collect();
    for path in &paths {
        std::fs::write(path, SENTINEL).unwrap();
    }
    paths
}

/// Names that climb out of a session's files directory to the sentinels: `../`, `..\`,
/// encoded dots, and absolute paths, percent-encoded for a URL.
fn climbing_names(sentinels: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for depth in 1..=sentinels.len() {
        for up in ["..%2F", "%2E%2E%2F", "..%5C", "%2e%2e/"] {
            names.push(format!("{}sentinel.txt", up.repeat(depth)));
        }
    }
    for path in sentinels {
        names.push(path.to_string_lossy().replace('/', "%2F"));
    }
    names
}

/// Every sentinel is still there, byte for byte.
fn assert_sentinels_untouched(sentinels: &[PathBuf]) {
    for path in sentinels {
        let now = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(now, SENTINEL.as_bytes(), "{} was changed", path.display());
    }
}

async fn files_of(server: &TestServer, key: &str, id: &str) -> Value {
    let r = server
        .call(Method::GET, &format!("/public/sessions/{id}/files"), Some(key), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json
}

fn entry<'a>(files: &'a Value, name: &str) -> Option<&'a Value> {
    files["files"].as_array().unwrap().iter().find(|f| f["name"] == name)
}

/// Waits until the session's files show `name` in `state`.
async fn until_file(server: &TestServer, id: &str, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = files_of(server, KEY_A, id).await;
        if let Some(e) = entry(&files, name)
            && e["state"] == state
        {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "{name} never {state}: {files}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET with the key and extra headers; the raw bytes of the answer.
async fn fetch(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
    let mut headers = headers.to_vec();
    headers.extend(key.map(|k| ("x-api-key", k)));
    let (status, headers, body) = http_bytes(addr, Method::GET, path, &headers, bytes::Bytes::new()).await;
    (status, headers, body.to_vec())
}

/// POST raw bytes (or a multipart body) with the key.
async fn post_bytes(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> Response {
    let headers = [("x-api-key", KEY_A), ("content-type", content_type)];
    let (status, headers, bytes) = http_bytes(addr, Method::POST, path, &headers, body.into()).await;
    Response::new(status, headers, &bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_land_in_the_sessions_files_within_its_quota() {
    let site = start_files_site().await;
    let server = TestServer::start_with(|c| {
        c.max_session_files_bytes = 1_000_000;
        c.max_upload_bytes = 500_000;
        c.retention_secs = 4;
    })
    .await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    // (A folder a client sets outside the browser's own directories gets nothing:
    // `confinement::a_process_session_writes_nothing_outside_its_own_directories`.)
    let done = node("downloads.mjs", &[session["cdp_url"].as_str().unwrap(), &site.url()]).await;
    assert_eq!(done["ok"], true);

    let report = until_file(&server, id, "report.bin", "complete").await;
    assert_eq!(
        (report["size"].as_u64(), &report["kind"], &report["complete"]),
        (Some(REPORT_LEN as u64), &json!("download"), &json!(true))
    );
    assert!(report["created_at"].as_str().unwrap().ends_with('Z'));
    until_file(&server, id, "blob.txt", "complete").await;
    let big = until_file(&server, id, "big.bin", "refused").await;
    assert_eq!(big["complete"], false);

    // Served whole and by range, with the right headers.
    let path = format!("/public/sessions/{id}/files/report.bin");
    let (status, headers, bytes) = fetch(server.addr, &path, Some(KEY_A), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, report_bytes());
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(headers["content-length"], REPORT_LEN.to_string().as_str());
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"report.bin\"")
    );
    let (status, headers, bytes) = fetch(server.addr, &path, Some(KEY_A), &[("range", "bytes=100-199")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], format!("bytes 100-199/{REPORT_LEN}").as_str());
    assert_eq!(bytes, report_bytes()[100..200]);
    let (status, headers, _) = fetch(server.addr, &path, Some(KEY_A), &[("range", "bytes=999999-")]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], format!("bytes */{REPORT_LEN}").as_str());
    let blob = fetch(
        server.addr,
        &format!("/public/sessions/{id}/files/blob.txt"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert_eq!(blob.2, "made by script\n".repeat(100).as_bytes());
    assert_eq!(blob.1["content-type"], "text/plain; charset=utf-8");

    // All of them in one zip, which Python's zipfile reads back (CRCs checked).
    let (status, headers, zip) = fetch(
        server.addr,
        &format!("/public/sessions/{id}/files.zip"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (StatusCode::OK, "application/zip")
    );
    let zip_path = server.data_dir.path().join("all.zip");
    std::fs::write(&zip_path, &zip).unwrap();
    let listed = std::process::Command::new(python())
        .args(["-c", "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(sorted((i.filename, i.file_size) for i in z.infolist()))"])
        .arg(&zip_path)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        format!("[('blob.txt', 1500), ('report.bin', {REPORT_LEN})]")
    );

    // Another tenant sees none of it; a name cannot leave the directory.
    for path in [
        format!("/public/sessions/{id}/files"),
        format!("/public/sessions/{id}/files/report.bin"),
        format!("/public/sessions/{id}/files.zip"),
    ] {
        let r = server.call(Method::GET, &path, Some(KEY_B), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
    }
    // Sentinels just outside the files directory, at each level a climbing name reaches:
    // none is read (its content in no answer) or removed.
    let sentinels = plant_sentinels(server.data_dir.path(), id);
    let mut names: Vec<String> = [
        "..",
        ".index.tmp",
        "index.json",
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
    ]
    .map(String::from)
    .to_vec();
    names.extend(climbing_names(&sentinels));
    for name in &names {
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            let path = format!("/public/sessions/{id}/files/{name}");
            let r = server.call(method.clone(), &path, Some(KEY_A), None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {name}: {}", r.body);
            assert!(!r.body.contains(SENTINEL), "{method} {name} read outside: {}", r.body);
        }
    }
    let (_, _, zip) = fetch(
        server.addr,
        &format!("/public/sessions/{id}/files.zip"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&zip).contains(SENTINEL),
        "the archive holds a sentinel"
    );
    assert_sentinels_untouched(&sentinels);

    // Removed one by one; after the session ends the rest is still served.
    let r = server
        .call(
            Method::DELETE,
            &format!("/public/sessions/{id}/files/blob.txt"),
            Some(KEY_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(entry(&files_of(&server, KEY_A, id).await, "blob.txt").is_none());
    assert!(server.terminate(id).await.status.is_success());
    let (status, _, bytes) = fetch(server.addr, &path, Some(KEY_A), &[]).await;
    assert_eq!((status, bytes.len()), (StatusCode::OK, REPORT_LEN));
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(
        metrics.contains("cdpgate_session_files_quota_refusals_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cdpgate_session_files 1\n"), "{metrics}");

    // Past the retention, the record and its files are gone.
    let dir = server.data_dir.path().join("artifacts").join(id);
    assert!(dir.exists());
    assert!(
        eventually(Duration::from_secs(20), || !dir.exists()).await,
        "the files were not swept"
    );
    let (status, _, _) = fetch(server.addr, &path, Some(KEY_A), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_sessions_downloads_are_its_own() {
    let site = start_files_site().await;
    let server = TestServer::start_with(|c| c.default_isolation = "context".into()).await;
    let ours = server.create(json!({})).await;
    let neighbour = server.create(json!({})).await;
    let (id, other) = (
        ours["session_id"].as_str().unwrap(),
        neighbour["session_id"].as_str().unwrap(),
    );
    assert_eq!(
        (&ours["isolation"], &neighbour["isolation"]),
        (&json!("context"), &json!("context"))
    );
    // Both download at once in the one shared browser, each its own blob by name and the
    // same report: each session keeps only its own.
    let url = site.url();
    let (ours_args, theirs_args) = (
        [ours["cdp_url"].as_str().unwrap(), url.as_str(), "ours.txt"],
        [neighbour["cdp_url"].as_str().unwrap(), url.as_str(), "theirs.txt"],
    );
    let (done_ours, done_theirs) = tokio::join!(node("downloads.mjs", &ours_args), node("downloads.mjs", &theirs_args));
    assert_eq!((&done_ours["ok"], &done_theirs["ok"]), (&json!(true), &json!(true)));
    for (session, own) in [(id, "ours.txt"), (other, "theirs.txt")] {
        until_file(&server, session, "report.bin", "complete").await;
        until_file(&server, session, own, "complete").await;
        let (_, _, bytes) = fetch(
            server.addr,
            &format!("/public/sessions/{session}/files/report.bin"),
            Some(KEY_A),
            &[],
        )
        .await;
        assert_eq!(bytes, report_bytes());
    }
    // Every download has ended in the browser (the big one refused or complete), so
    // nothing more is on its way to either session.
    for session in [id, other] {
        let ended = eventually_async(Duration::from_secs(30), || async {
            let files = files_of(&server, KEY_A, session).await;
            entry(&files, "big.bin").is_some_and(|e| e["state"] != "in_progress")
        })
        .await;
        assert!(ended, "{session}: {}", files_of(&server, KEY_A, session).await);
    }
    let names = |files: &Value| -> Vec<String> {
        files["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let mine = names(&files_of(&server, KEY_A, id).await);
    let theirs = names(&files_of(&server, KEY_A, other).await);
    assert!(
        !mine.iter().any(|n| n.contains("theirs")),
        "ours got the neighbour's: {mine:?}"
    );
    assert!(
        !theirs.iter().any(|n| n.contains("ours")),
        "the neighbour got ours: {theirs:?}"
    );
    // One report each: none of the other's landed under another name.
    for listed in [&mine, &theirs] {
        assert_eq!(
            listed.iter().filter(|n| n.starts_with("report")).count(),
            1,
            "{listed:?}"
        );
        assert_eq!(listed.len(), 3, "report, own blob, big: {listed:?}");
    }
    // An ended session's folder goes with it; the shared browser (and its neighbour's
    // folder) stay. Else each ended session would leave a directory there.
    let folders = || {
        let mut found = Vec::new();
        for browser in std::fs::read_dir(server.data_dir.path().join("browsers")).unwrap() {
            let browser = browser.unwrap().path();
            if browser.extension().is_some_and(|e| e == "downloads") {
                for folder in std::fs::read_dir(&browser).unwrap() {
                    found.push(folder.unwrap().file_name().to_string_lossy().into_owned());
                }
            }
        }
        found
    };
    assert!(folders().contains(&id.to_owned()), "{:?}", folders());
    let ended = server
        .call(Method::DELETE, &format!("/public/sessions/{id}"), Some(KEY_A), None)
        .await;
    assert!(ended.status.is_success(), "{}", ended.body);
    let gone = eventually(Duration::from_secs(10), || !folders().contains(&id.to_owned())).await;
    assert!(
        gone,
        "the ended session's download folder is still there: {:?}",
        folders()
    );
    assert!(folders().contains(&other.to_owned()), "{:?}", folders());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_reach_file_inputs_through_puppeteer_and_playwright() {
    let site = start_files_site().await;
    let server = TestServer::start_with(|c| {
        c.max_upload_bytes = 100_000;
        c.max_session_files_bytes = 150_000;
    })
    .await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let cdp_url = session["cdp_url"].as_str().unwrap();
    let content: Vec<u8> = (0..5000u32).map(|i| (i % 256) as u8).collect();

    // A raw body with a name.
    let r = post_bytes(
        server.addr,
        &format!("/public/sessions/{id}/files?name=cv.pdf"),
        "application/pdf",
        content.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (&r.json["name"], &r.json["kind"], r.json["size"].as_u64()),
        (&json!("cv.pdf"), &json!("upload"), Some(5000))
    );
    let raw_path = PathBuf::from(r.json["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&raw_path).unwrap(), content);

    // A multipart body, as a browser's form or curl -F sends it.
    let boundary = "----cdpgate-test-boundary";
    let mut multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"letter.txt\"\r\nContent-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    multipart.extend_from_slice(b"Dear reader,\n");
    multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = post_bytes(
        server.addr,
        &format!("/public/sessions/{id}/files"),
        &format!("multipart/form-data; boundary={boundary}"),
        multipart,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json["name"], "letter.txt");
    assert_eq!(
        std::fs::read(r.json["path"].as_str().unwrap()).unwrap(),
        b"Dear reader,\n"
    );

    // Hostile names are refused, and nothing is written outside the session's directory:
    // the sentinels where climbing names land keep their bytes, and nothing new appears
    // beside them.
    let dir = server.data_dir.path().join("artifacts").join(id).join("files");
    let sentinels = plant_sentinels(server.data_dir.path(), id);
    let listing = |paths: &[PathBuf]| -> Vec<Vec<std::ffi::OsString>> {
        paths
            .iter()
            .map(|p| {
                let mut names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                names
            })
            .collect()
    };
    let before = listing(&sentinels);
    let mut names: Vec<String> = ["a%2Fb", "nul%00byte", "%2E%2E", ".hidden", "..%2F..%2Fetc%2Fpasswd"]
        .map(String::from)
        .to_vec();
    names.push("x".repeat(10_000));
    names.extend(climbing_names(&sentinels));
    for name in &names {
        let r = post_bytes(
            server.addr,
            &format!("/public/sessions/{id}/files?name={name}"),
            "text/plain",
            b"overwritten".to_vec(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.body);
    }
    assert_sentinels_untouched(&sentinels);
    assert_eq!(
        listing(&sentinels),
        before,
        "a file appeared outside the session's files"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Past the upload limit: 413, and nothing kept.
    let r = post_bytes(
        server.addr,
        &format!("/public/sessions/{id}/files?name=huge.bin"),
        "application/octet-stream",
        vec![0; 200_000],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    // Within the limit but past the session's quota: 413 as well.
    for i in 0..2 {
        let name = format!("part{i}.bin");
        let r = post_bytes(
            server.addr,
            &format!("/public/sessions/{id}/files?name={name}"),
            "application/octet-stream",
            vec![1; 90_000],
        )
        .await;
        let want = if i == 0 {
            StatusCode::CREATED
        } else {
            StatusCode::PAYLOAD_TOO_LARGE
        };
        assert_eq!(r.status, want, "{name}: {}", r.body);
    }
    let listed = files_of(&server, KEY_A, id).await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 3, "{listed}");

    // Puppeteer and Playwright put the uploaded file on a form's input; the site gets it.
    for client in ["puppeteer", "playwright"] {
        let sent = node(
            "upload_form.mjs",
            &[client, cdp_url, &site.url(), raw_path.to_str().unwrap()],
        )
        .await;
        assert_eq!(sent["text"], "received", "{client}: {sent}");
        let body = site.received.lock().unwrap().pop().expect("the form was posted");
        assert!(
            body.windows(content.len()).any(|w| w == content.as_slice()),
            "{client}: the posted form does not carry the file's bytes"
        );
        assert!(
            String::from_utf8_lossy(&body).contains("filename=\"cv.pdf\""),
            "{client}"
        );
    }

    // A single action puts an uploaded file on the input by its label, and sends the form.
    let action = json!({
        "session_id": id,
        "action": format!("go to {}/form, upload {{{{file}}}} to the Resume field, then click Send", site.url()),
        "variables": { "file": "cv.pdf" },
    });
    let r = server.run_action(KEY_A, &action).await;
    assert_eq!(
        (r.status, &r.json["success"]),
        (StatusCode::OK, &json!(true)),
        "{}",
        r.body
    );
    let body = site.received.lock().unwrap().pop().expect("the action posted the form");
    assert!(body.windows(content.len()).any(|w| w == content.as_slice()));
    let missing = json!({ "session_id": id, "action": format!("go to {}/form, upload nothing.pdf to the Resume field", site.url()) });
    let r = server.run_action(KEY_A, &missing).await;
    assert_eq!(r.json["success"], false, "{}", r.body);
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("no file named \"nothing.pdf\""),
        "{}",
        r.body
    );

    // An ended session takes no uploads.
    server.terminate(id).await;
    let r = post_bytes(
        server.addr,
        &format!("/public/sessions/{id}/files?name=late.txt"),
        "text/plain",
        b"x".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    server.stop().await;
}

/// ffprobe's view of a video: duration (s), frames, width, height.
fn probe(path: &Path) -> (f64, u64, u64, u64) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stream = &v["streams"][0];
    let number = |x: &Value| x.as_str().and_then(|s| s.parse::<f64>().ok()).or(x.as_f64()).unwrap();
    (
        number(&v["format"]["duration"]),
        number(&stream["nb_read_frames"]) as u64,
        stream["width"].as_u64().unwrap(),
        stream["height"].as_u64().unwrap(),
    )
}

/// The seconds of video a (possibly still growing) recording holds, if it can be read yet.
async fn recorded_seconds(path: &Path) -> Option<f64> {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The colour at the centre of the video, 10 times a second: 'r', 'g', 'b' or '?'.
fn colours(path: &Path) -> Vec<char> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-vf", "fps=10,scale=16:9", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
        .chunks(16 * 9 * 3)
        .map(|frame| {
            let at = (4 * 16 + 8) * 3;
            let (r, g, b) = (frame[at], frame[at + 1], frame[at + 2]);
            match (r > 180, g > 180, b > 180, r < 80, g < 80, b < 80) {
                (true, _, _, _, true, true) => 'r',
                (_, true, _, true, _, true) => 'g',
                (_, _, true, true, true, _) => 'b',
                _ => '?',
            }
        })
        .collect()
}

/// The video's colours (`colours`) as runs: each colour and for how many samples it held.
fn colour_runs(path: &Path) -> Vec<(char, usize)> {
    colours(path).into_iter().fold(Vec::new(), |mut runs, c| {
        match runs.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => runs.push((c, 1)),
        }
        runs
    })
}

/// Waits for a session's recording to be finished, fetches it as a client would, writes it
/// to `path` and answers its bytes.
async fn finished_recording(server: &TestServer, id: &str, path: &Path) -> Vec<u8> {
    let files = server.broker.artifacts().existing(id).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || files
            .recording()
            .is_some_and(|r| r.complete))
        .await,
        "the recording was not finished: {:?}",
        files.recording()
    );
    let (status, headers, video) = fetch(
        server.addr,
        &format!("/public/sessions/{id}/recording"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "video/mp4");
    std::fs::write(path, &video).unwrap();
    video
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_follows_the_tab_brought_to_front() {
    // Context sessions on the full Chromium too: the headless shell has no tab strip, and
    // shows every tab at once (there, the video stays on the newest tab).
    let server = TestServer::start_with(|c| {
        c.recording_fps = 10;
        c.context_chrome_path = "/usr/bin/chromium".into();
    })
    .await;
    for isolation in ["process", "context"] {
        let session = server.create(json!({ "record": true, "isolation": isolation })).await;
        let id = session["session_id"].as_str().unwrap();
        let switched = node("bring_to_front.mjs", &[session["cdp_url"].as_str().unwrap(), "1500"]).await;
        assert_eq!(switched["ok"], true, "{isolation}: {switched}");
        // Chrome shows one tab at a time: the one brought to the front.
        assert_eq!(
            switched["shown"],
            json!([["visible", "hidden"], ["hidden", "visible"]]),
            "{isolation}: {switched}"
        );
        server.terminate(id).await;
        let path = server.data_dir.path().join(format!("{isolation}.mp4"));
        finished_recording(&server, id, &path).await;
        // Red (the first tab), green (the new one), red and green again as each comes to
        // the front; white between a new tab and its page, and a sample at a switch, aside.
        let runs = colour_runs(&path);
        let shown: Vec<char> = runs
            .iter()
            .filter(|(c, n)| *c != '?' && *n >= 3)
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(shown, ['r', 'g', 'r', 'g'], "{isolation}: {runs:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_is_a_video_of_its_tab() {
    let site = start_files_site().await;
    let server = TestServer::start_with(|c| c.recording_fps = 10).await;
    let started = Instant::now();
    let session = server.create(json!({ "record": true })).await;
    let id = session["session_id"].as_str().unwrap();
    assert_eq!(session["record"], true);
    let plain = server.create(json!({})).await;
    assert_eq!(plain["record"], false);

    let visited = visit_colors(&session, &site).await;
    assert_eq!(visited["ok"], true, "{visited}");
    let visiting = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The video runs from the tab's first frame (some time after the create, more on a
    // loaded machine) to the end: at least the visit, at most the session.
    let at_least = visiting.elapsed().as_secs_f64();
    let r = server.terminate(id).await;
    assert!(r.status.is_success(), "{}", r.body);
    let at_most = started.elapsed().as_secs_f64();

    // The file is finished by ffmpeg a moment after the session ends.
    let path = server.data_dir.path().join("recording.mp4");
    let video = finished_recording(&server, id, &path).await;
    let (duration, frames, width, height) = probe(&path);
    assert!(
        duration >= at_least * 0.95 && duration <= at_most * 1.05,
        "video of {duration:.2} s for a session of {at_most:.2} s whose visit lasted {at_least:.2} s"
    );
    assert!(
        (frames as f64 - duration * 10.0).abs() <= 2.0,
        "{frames} frames in {duration:.2} s at 10 fps"
    );
    assert_eq!((width, height), (1280, 720));
    // The page's colours, in their order, one second each.
    let runs = colour_runs(&path);
    let coloured: Vec<&(char, usize)> = runs.iter().filter(|(c, _)| *c != '?').collect();
    assert!(coloured.len() >= 4, "{runs:?}");
    for pair in coloured.windows(2) {
        let next = match pair[0].0 {
            'r' => 'g',
            'g' => 'b',
            _ => 'r',
        };
        assert_eq!(pair[1].0, next, "colours out of order: {runs:?}");
    }
    // Whole seconds between the first and last change (10 samples a second).
    for (c, n) in &coloured[1..coloured.len() - 1] {
        assert!((8..=12).contains(n), "a colour held {n} samples: {c} in {runs:?}");
    }
    // Ranges, so that a <video> can seek.
    let (status, _, part) = fetch(
        server.addr,
        &format!("/public/sessions/{id}/recording"),
        Some(KEY_A),
        &[("range", "bytes=0-99")],
    )
    .await;
    assert_eq!((status, part.as_slice()), (StatusCode::PARTIAL_CONTENT, &video[..100]));

    // The live view link of the ended session plays the recording (in a real browser).
    let live_url = session["metadata"]["live_url"].as_str().unwrap();
    let shown = node("recording_view.mjs", &[live_url]).await;
    assert_eq!(shown["hasVideo"], true, "{shown}");
    assert_eq!(
        (shown["width"].as_u64(), shown["height"].as_u64()),
        (Some(1280), Some(720)),
        "{shown}"
    );
    assert!((shown["duration"].as_f64().unwrap() - duration).abs() < 0.5, "{shown}");
    assert!(shown["seekedTo"].as_f64().unwrap() > 1.0, "{shown}");
    assert_eq!(shown["error"], Value::Null);

    // A session without `record` records nothing.
    let plain_id = plain["session_id"].as_str().unwrap();
    server.terminate(plain_id).await;
    let r = server
        .call(
            Method::GET,
            &format!("/public/sessions/{plain_id}/recording"),
            Some(KEY_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(
        !server
            .data_dir
            .path()
            .join("artifacts")
            .join(plain_id)
            .join("recording.mp4")
            .exists()
    );
    let shown = node("recording_view.mjs", &[plain["metadata"]["live_url"].as_str().unwrap()]).await;
    assert_eq!(
        (shown["status"].as_u64(), &shown["hasVideo"]),
        (Some(410), &json!(false)),
        "{shown}"
    );
    let metrics = server.call(Method::GET, "/metrics", None, None).await.body;
    assert!(metrics.contains("cdpgate_recordings_started_total 1\n"), "{metrics}");
    server.stop().await;
}

/// The file keeps up with the recording: the frames the broker has fed ffmpeg are on disk
/// but for the fragment being made (2 s) and the encoder's few frames. (ffmpeg once probed
/// 5 MB of input before encoding and buffered what it wrote: a page of flat colours was
/// a minute behind on disk, and a broker killed in that minute left nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_on_disk_while_it_is_made() {
    let site = start_files_site().await;
    let server = TestServer::start_with(|c| c.recording_fps = 5).await;
    let session = server.create(json!({ "record": true })).await;
    let id = session["session_id"].as_str().unwrap();
    let visited = visit_colors(&session, &site).await;
    assert_eq!(visited["ok"], true, "{visited}");
    let files = server.broker.artifacts().existing(id).unwrap();
    // Six seconds of frames fed (counted by the broker, not timed here).
    assert!(
        eventually(Duration::from_secs(60), || files
            .recording()
            .is_some_and(|r| r.frames >= 30))
        .await,
        "the broker fed no frames: {:?}",
        files.recording()
    );
    let on_disk = recorded_seconds(&files.recording_path()).await;
    assert!(
        on_disk.is_some_and(|s| s >= 2.0),
        "6 s fed, {on_disk:?} s readable on disk"
    );
    server.terminate(id).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_recording_leaves_a_playable_file() {
    let site = start_files_site().await;
    let data = tempfile::tempdir().unwrap();
    let mut broker = start_binary(
        data.path(),
        // Recorded sessions run the full Chromium: kept warm here, so the seconds before
        // the kill are all recording (a cold launch under load ate into them).
        &[
            ("CDPGATE_API_KEYS", KEY_A),
            ("CDPGATE_RECORD_SESSIONS", "true"),
            ("CDPGATE_DEFAULT_BROWSER", "full"),
        ],
    )
    .await;
    let created = http(broker.addr, Method::POST, "/public/sessions", Some(KEY_A), Some("{}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.json["record"], true);
    let id = created.json["session_id"].as_str().unwrap();
    let visited = visit_colors(&created.json, &site).await;
    assert_eq!(visited["ok"], true, "{visited}");
    let path = data.path().join("artifacts").join(id).join("recording.mp4");
    // Killed once the file holds three seconds and more (fragmented MP4: readable while it
    // grows), however late a loaded machine let the recording start or the encoder run.
    let file = path.as_path();
    let recorded = eventually_async(Duration::from_secs(60), || async move {
        recorded_seconds(file).await.is_some_and(|s| s >= 3.2)
    })
    .await;
    assert!(
        recorded,
        "the recording never reached 3 s: {:?}",
        recorded_seconds(&path).await
    );
    signal(&broker.child, libc::SIGKILL);
    let _ = broker.child.wait().await;
    // ffmpeg sees its input end and finishes the file by itself.
    let needle = path.to_string_lossy().into_owned();
    assert!(
        eventually(Duration::from_secs(20), || processes_mentioning(&needle).is_empty()).await,
        "ffmpeg outlived the broker"
    );
    let (duration, frames, width, _) = probe(&path);
    assert!(duration >= 3.0 && frames >= 3 * 5, "{duration:.2} s, {frames} frames");
    assert_eq!(width, 1280);
    let decoded = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "the file does not decode cleanly: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_without_ffmpeg_is_refused_at_create() {
    let server = TestServer::start_with(|c| c.ffmpeg_path = "/nonexistent/ffmpeg".into()).await;
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(r#"{"record": true}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("ffmpeg"), "{}", r.body);
    for bad in [r#"{"record": "yes"}"#, r#"{"record": 1}"#] {
        let r = server
            .call(Method::POST, "/public/sessions", Some(KEY_A), Some(bad))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
    }
    let listed = server.call(Method::GET, "/public/sessions", Some(KEY_A), None).await;
    assert_eq!(listed.json["total"], 0, "a refused create left a session");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_tenants_sessions() {
    let site = start_files_site().await;
    let server = TestServer::start_with(|c| c.recording_fps = 5).await;
    // An ended recorded session, a live one on a page that changes colour, and another
    // tenant's session that must not show.
    let ended = server
        .create(json!({ "record": true, "metadata": { "job": "old" } }))
        .await;
    let ended_id = ended["session_id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.terminate(ended_id).await;
    let live = server.create(json!({ "metadata": { "job": "now" } })).await;
    let live_id = live["session_id"].as_str().unwrap();
    let visited = visit_colors(&live, &site).await;
    assert_eq!(visited["ok"], true);
    let theirs = server
        .call(Method::POST, "/public/sessions", Some(KEY_B), Some("{}"))
        .await;
    let their_id = theirs.json["session_id"].as_str().unwrap();
    let files = server.broker.artifacts().existing(ended_id).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || files
            .recording()
            .is_some_and(|r| r.complete))
        .await
    );

    let shown = node("dashboard.mjs", &[&server.url(""), KEY_A, live_id, ended_id]).await;
    let ids: Vec<&str> = shown["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ids.contains(&live_id) && ids.contains(&ended_id), "{shown}");
    assert!(!ids.contains(&their_id), "another tenant's session was shown: {shown}");
    assert_eq!(shown["thumbnailChanged"], true, "{shown}");
    assert!(
        shown["liveLink"]
            .as_str()
            .unwrap()
            .contains(&format!("/live/{live_id}?token=")),
        "{shown}"
    );
    assert!(shown["recordingDuration"].as_f64().unwrap() > 1.0, "{shown}");
    assert!(shown["endedText"].as_str().unwrap().contains("terminated"), "{shown}");
    assert_eq!(
        (&shown["keyInStorage"], &shown["keyInUrl"]),
        (&json!(true), &json!(false)),
        "{shown}"
    );

    // The thumbnails' endpoint: a JPEG for the tenant's live session, nothing for others.
    let (status, headers, jpeg) = fetch(
        server.addr,
        &format!("/public/sessions/{live_id}/screenshot"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (StatusCode::OK, "image/jpeg")
    );
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    let (status, _, _) = fetch(
        server.addr,
        &format!("/public/sessions/{live_id}/screenshot"),
        Some(KEY_B),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = fetch(
        server.addr,
        &format!("/public/sessions/{ended_id}/screenshot"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_any_node_serves_a_sessions_files_streamed() {
    let redis = start_redis().await;
    let profiles = redis.profiles.path().to_string_lossy().into_owned();
    let node = |name: &'static str| {
        let (url, profiles) = (redis.url.clone(), profiles.clone());
        TestServer::start_with(move |c| {
            c.redis_url = url;
            c.profile_store = profiles;
            c.redis_prefix = "files:".into();
            c.cluster_secret = CLUSTER_SECRET.into();
            c.node_id = name.into();
        })
    };
    let a = node("node-a").await;
    let b = node("node-b").await;
    let session = a.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    // Larger than any body the hop used to hold in memory (4 MiB in, 16 MiB out).
    let content: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let r = post_bytes(
        b.addr,
        &format!("/public/sessions/{id}/files?name=big.bin"),
        "application/octet-stream",
        content.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(
        r.json["path"]
            .as_str()
            .unwrap()
            .starts_with(a.data_dir.path().to_str().unwrap()),
        "stored on the node that runs the session: {}",
        r.body
    );
    let (status, _, bytes) = fetch(
        b.addr,
        &format!("/public/sessions/{id}/files/big.bin"),
        Some(KEY_A),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        bytes == content,
        "{} bytes came back through the other node",
        bytes.len()
    );
    // Still there, through the other node, once the session has ended.
    assert!(a.terminate(id).await.status.is_success());
    let (status, _, part) = fetch(
        b.addr,
        &format!("/public/sessions/{id}/files/big.bin"),
        Some(KEY_A),
        &[("range", "bytes=-10")],
    )
    .await;
    assert_eq!(
        (status, part.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &content[content.len() - 10..])
    );
    let listed = files_of(&b, KEY_A, id).await;
    assert_eq!(entry(&listed, "big.bin").unwrap()["size"], 20_000_000);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdp_log_names_every_command_with_its_timing_and_no_payload() {
    let site = start_files_site().await;
    let server = TestServer::start().await;
    for isolation in ["process", "context"] {
        let session = server.create(json!({ "log_cdp": true, "isolation": isolation })).await;
        assert_eq!(session["log_cdp"], true);
        let id = session["session_id"].as_str().unwrap();
        let secret_page = format!("{}/colors?secret=hunter2", site.url());
        let visited = node(
            "visit.mjs",
            &[
                session["cdp_url"].as_str().unwrap(),
                &secret_page,
                "document.title",
                "new",
            ],
        )
        .await;
        assert_eq!(visited["value"], "colors", "{visited}");
        assert!(server.terminate(id).await.status.is_success());
        let files = server.broker.artifacts().existing(id).unwrap();
        // Written a moment after the end, once the connection's last lines are in.
        let path = server
            .data_dir
            .path()
            .join("artifacts")
            .join(id)
            .join("files/cdp-log.jsonl");
        assert!(
            eventually(Duration::from_secs(10), || {
                files.list().iter().any(|f| {
                    f.name == "cdp-log.jsonl"
                        && f.size > 0
                        && f.size == std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                })
            })
            .await,
            "{:?}",
            files.list()
        );
        let (status, _, bytes) = fetch(
            server.addr,
            &format!("/public/sessions/{id}/files/cdp-log.jsonl"),
            Some(KEY_A),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("colors"),
            "a payload leaked into the log: {text}"
        );
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let navigate = lines
            .iter()
            .find(|l| l["method"] == "Page.navigate")
            .unwrap_or_else(|| panic!("{isolation}: no Page.navigate in {text}"));
        assert!(navigate["took_ms"].as_f64().unwrap() > 0.0, "{navigate}");
        assert!(
            navigate["request_bytes"].as_u64().unwrap() > 20 && navigate["response_bytes"].as_u64().unwrap() > 10,
            "{navigate}"
        );
        assert!(navigate["session"].is_string(), "{navigate}");
        assert!(lines.iter().any(|l| l["method"] == "Target.createTarget"), "{text}");
        assert!(lines.iter().any(|l| l["event"] == "Page.frameNavigated"), "{text}");
        assert!(
            lines.iter().any(|l| l["opened"] == "cdp") && lines.iter().any(|l| l["closed_ms"].is_number()),
            "{text}"
        );
        let listed = files_of(&server, KEY_A, id).await;
        assert_eq!(entry(&listed, "cdp-log.jsonl").unwrap()["kind"], "log");
    }
    let plain = server.create(json!({})).await;
    assert_eq!(plain["log_cdp"], false);
    let r = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(r#"{"log_cdp": "yes"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    server.stop().await;
}

/// The browser may write its downloads folder, so it could put a link where the broker
/// places uploads for file inputs (`.uploads`). The broker, not confined, must follow no
/// such link: the data directory it names keeps every byte, and nothing is written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploads_folder_the_browser_made_a_link_writes_nothing_where_it_points() {
    let server = TestServer::start().await;
    let session = server.create(json!({})).await;
    let id = session["session_id"].as_str().unwrap();
    let upload = |name: &str, bytes: &[u8]| {
        let path = format!("/public/sessions/{id}/files?name={name}");
        let bytes = bytes.to_vec();
        async move { post_bytes(server.addr, &path, "application/octet-stream", bytes).await }
    };
    let r = upload("first.txt", b"first").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let uploads = PathBuf::from(r.json["path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    assert!(uploads.ends_with(".uploads"), "{}", uploads.display());
    // What a compromised browser could do: its uploads folder swapped for a link to the
    // broker's data directory.
    let data = server.data_dir.path().to_owned();
    let snapshot = |dir: &Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap_or_default())
            })
            .collect();
        all.sort();
        all
    };
    let before = snapshot(&data);
    assert!(before.iter().any(|(name, _)| name == "token_secret"));
    std::fs::remove_dir_all(&uploads).unwrap();
    std::os::unix::fs::symlink(&data, &uploads).unwrap();
    let r = upload("token_secret", b"a secret of the tenant's choosing").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    let r = upload("new_file", b"more").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(snapshot(&data), before, "the data directory changed through the link");
    server.stop().await;
}
