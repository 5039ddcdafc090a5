//! One-call renders (`POST /public/screenshot`, `/pdf`, `/content`, `/markdown`,
//! `/scrape`) against pages of a local site, on real Chromium: the right bytes (PNG sizes
//! and pixels, PDF pages and text, markdown headings and links, scraped values), each
//! failure named by its cause, and after every call no session, context or tab left.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A page of the test site: status line, extra headers, body, and a delay before it.
struct Page {
    status: &'static str,
    headers: String,
    body: String,
    delay: Duration,
}

fn page(body: impl Into<String>) -> Page {
    Page {
        status: "200 OK",
        headers: String::new(),
        body: body.into(),
        delay: Duration::ZERO,
    }
}

fn site_page(path: &str, port: u16) -> Page {
    match path {
        "/colours" => page(
            "<html><body style='margin:0;background:#ff0000'>\
             <div id='box' style='position:absolute;left:0;top:0;width:100px;height:50px;background:#0000ff'></div>\
             <div style='position:absolute;left:0;top:2950px;width:10px;height:50px;background:#00ff00'></div>\
             </body></html>",
        ),
        "/pages" => page(
            "<html><body>\
             <h1 style='page-break-after:always'>Alpha page</h1>\
             <h1 style='page-break-after:always'>Beta page</h1>\
             <h1>Gamma page</h1></body></html>",
        ),
        "/article" => page(format!(
            "<html><head><title>The Gate Review</title></head><body>\
             <nav><a href='/'>Menu item home</a> <a href='/shop'>Menu item shop</a></nav>\
             <article><h1>How the gate works</h1>\
             <p>The broker hands out sessions in milliseconds, and each of them is a browser context \
             of its own in a shared Chromium, with cookies and storage apart from its neighbours.</p>\
             <h2>Where to read more</h2>\
             <p>Read <a href='/about'>about us</a> or the <a href='http://127.0.0.1:{port}/docs?x=1'>full docs</a> \
             for everything the gate does, from its egress policy to its recordings.</p>\
             <script>document.write('<p>Written by a script while the page loaded.</p>')</script>\
             </article>\
             <aside>Advertisement: buy now</aside><footer>Copyright footer text</footer>\
             </body></html>"
        )),
        "/list" => page(
            "<html><body><ul>\
             <li><a class='item' href='/one' data-id='1'>First</a></li>\
             <li><a class='item' href='/two' data-id='2'>Second</a></li>\
             <li><a class='item' href='/three' data-id='3'>Third</a></li></ul>\
             <h2 id='late'></h2>\
             <script>setTimeout(() => document.getElementById('late').textContent = 'Arrived later', 300)</script>\
             </body></html>",
        ),
        "/missing" => Page {
            status: "404 Not Found",
            ..page("<html><body><h1>No such page</h1></body></html>")
        },
        "/slow" => Page {
            delay: Duration::from_secs(60),
            ..page("<html><body>finally</body></html>")
        },
        // Fetches something new every 100 ms for ever: the network is never idle.
        "/busy" => page(
            "<html><body><p id='n'>0</p><script>\
             let n = 0; setInterval(() => fetch('/tick?' + (++n)).then(() => document.getElementById('n').textContent = n), 100);\
             </script></body></html>",
        ),
        "/download" => Page {
            headers:
                "content-type: application/octet-stream\r\ncontent-disposition: attachment; filename=\"data.bin\"\r\n"
                    .into(),
            ..page("x".repeat(10_000))
        },
        // Two megabytes of paragraphs, 40,000 CSS pixels tall.
        "/huge" => page(format!(
            "<html><body style='margin:0'>{}</body></html>",
            "<p style='height:20px;margin:0'>A line of the huge page, said again and again and again.</p>"
                .repeat(2_000)
                + &"<!-- padding -->".repeat(120_000)
        )),
        _ => page("<html><body>tick</body></html>"),
    }
}

/// Requests for `/slow` each test site (by port) has had.
static SLOW_REQUESTS: std::sync::Mutex<std::collections::BTreeMap<u16, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn slow_requests(site: SocketAddr) -> usize {
    SLOW_REQUESTS.lock().unwrap().get(&site.port()).copied().unwrap_or(0)
}

/// The test site: each connection gets the page of its path.
async fn start_pages() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                // Requests arrive in absolute form through the broker's gateway.
                let path = target
                    .strip_prefix("http://")
                    .and_then(|t| t.find('/').map(|i| t[i..].to_owned()))
                    .unwrap_or(target);
                let path = path.split('?').next().unwrap_or("/").to_owned();
                if path == "/slow" {
                    *SLOW_REQUESTS.lock().unwrap().entry(addr.port()).or_default() += 1;
                }
                let mut p = site_page(&path, addr.port());
                if path == "/echo" {
                    // The headers the page's request arrived with, through the gateway.
                    let seen: Vec<&str> = request
                        .lines()
                        .filter(|l| {
                            let l = l.to_ascii_lowercase();
                            l.starts_with("user-agent:") || l.starts_with("accept-language:")
                        })
                        .collect();
                    p = page(format!(
                        "<html><body><pre id='seen'>{}</pre></body></html>",
                        seen.join("\n")
                    ));
                }
                tokio::time::sleep(p.delay).await;
                let has_type = p.headers.contains("content-type");
                let reply = format!(
                    "HTTP/1.1 {}\r\n{}{}content-length: {}\r\nconnection: close\r\n\r\n",
                    p.status,
                    if has_type {
                        ""
                    } else {
                        "content-type: text/html; charset=utf-8\r\n"
                    },
                    p.headers,
                    p.body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(p.body.as_bytes()).await;
            });
        }
    });
    addr
}

async fn start() -> (TestServer, SocketAddr) {
    let server = TestServer::start_with(|c| {
        c.context_browsers = 1;
        c.max_contexts_per_browser = 4;
        c.render_timeout_ms = 15_000;
        // Chrome's holdings are compared before and after: spares stay at their number.
        c.context_spares_burst = 0;
    })
    .await;
    (server, start_pages().await)
}

async fn render(server: &TestServer, kind: &str, body: Value) -> (StatusCode, hyper::HeaderMap, bytes::Bytes) {
    render_as(server, KEY_A, kind, body).await
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// The key's sessions: (active, all).
async fn sessions(server: &TestServer, key: &str) -> (u64, u64) {
    let count = |filter: &'static str| async move {
        let r = server
            .call(
                Method::GET,
                &format!("/public/sessions?status_filter={filter}&limit=1"),
                Some(key),
                None,
            )
            .await;
        r.json["total"].as_u64().unwrap()
    };
    (count("active").await, count("").await)
}

/// Nothing of a render of tenant A is left.
async fn nothing_left_of_a(server: &TestServer, baseline: (usize, usize), what: &str) {
    nothing_left(server, KEY_A, baseline, what).await
}

/// Chrome's holdings with no session running, once its spares are made.
async fn baseline(server: &TestServer) -> (usize, usize) {
    settled_holdings(server).await
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = info.color_type.samples();
    // As RGB.
    let rgb = buf[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, rgb)
}

fn pixel(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * width + x) * 3) as usize;
    [rgb[i], rgb[i + 1], rgb[i + 2]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_have_the_asked_size_and_the_page_colours() {
    let (server, site) = start().await;
    let url = format!("http://{site}/colours");
    let (status, headers, png) = render(
        &server,
        "screenshot",
        json!({"url": url, "screen_config": {"width": 800, "height": 600}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&png));
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-page-status"], "200");
    assert_eq!(headers["x-page-url"], url.as_str());
    let (w, h, rgb) = decode_png(&png);
    assert_eq!((w, h), (800, 600));
    assert_eq!(pixel(&rgb, w, 10, 10), [0, 0, 255], "the box, top left");
    assert_eq!(pixel(&rgb, w, 400, 300), [255, 0, 0], "the page's background");
    let baseline = baseline(&server).await;
    nothing_left_of_a(&server, baseline, "a screenshot").await;

    // A clip, an element, the full page: each its own size, each with the right pixels.
    let (status, _, png) = render(
        &server,
        "screenshot",
        json!({"url": url, "clip": {"x": 50, "y": 0, "width": 100, "height": 40}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (w, h, rgb) = decode_png(&png);
    assert_eq!((w, h), (100, 40));
    assert_eq!(pixel(&rgb, w, 10, 10), [0, 0, 255]);
    assert_eq!(pixel(&rgb, w, 90, 10), [255, 0, 0]);
    let (status, _, png) = render(&server, "screenshot", json!({"url": url, "selector": "#box"})).await;
    assert_eq!(status, StatusCode::OK);
    let (w, h, rgb) = decode_png(&png);
    assert_eq!((w, h), (100, 50));
    assert!(rgb.chunks(3).all(|p| p == [0, 0, 255]), "the element alone");
    let (status, _, png) = render(
        &server,
        "screenshot",
        json!({"url": url, "full_page": true, "screen_config": {"width": 640, "height": 480}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (w, h, rgb) = decode_png(&png);
    assert_eq!((w, h), (640, 3000));
    assert_eq!(pixel(&rgb, w, 5, 2975), [0, 255, 0], "the bottom of the page");

    // JPEG and WebP are what they say.
    let (status, headers, jpeg) = render(
        &server,
        "screenshot",
        json!({"url": url, "type": "jpeg", "quality": 80}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
    let (status, headers, webp) = render(&server, "screenshot", json!({"url": url, "type": "webp"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/webp");
    assert_eq!((&webp[..4], &webp[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));

    // HTML instead of a URL.
    let (status, _, png) = render(
        &server,
        "screenshot",
        json!({"html": "<body style='margin:0;background:#00ff00'></body>", "screen_config": {"width": 200, "height": 100}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (w, h, rgb) = decode_png(&png);
    assert_eq!((w, h), (200, 100));
    assert_eq!(pixel(&rgb, w, 100, 50), [0, 255, 0]);

    // A selector that matches nothing is named.
    let (status, _, body) = render(&server, "screenshot", json!({"url": url, "selector": "#nothing"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_of(&body)["code"], "selector_not_found");
    nothing_left_of_a(&server, baseline, "screenshots").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdfs_have_the_pages_paper_and_text() {
    let (server, site) = start().await;
    let url = format!("http://{site}/pages");
    let (status, headers, pdf) = render(&server, "pdf", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&pdf));
    assert_eq!(headers["content-type"], "application/pdf");
    let doc = lopdf::Document::load_mem(&pdf).unwrap();
    let pages = doc.get_pages();
    assert_eq!(pages.len(), 3);
    for (n, word) in [(1, "Alpha"), (2, "Beta"), (3, "Gamma")] {
        let text = doc.extract_text(&[n]).unwrap();
        assert!(text.contains(word), "page {n}: {text:?}");
    }
    // Letter by default (612 × 792 points); A4 landscape when asked.
    let size = |doc: &lopdf::Document| {
        let page = doc.get_pages()[&1];
        let media = doc
            .get_dictionary(page)
            .unwrap()
            .get(b"MediaBox")
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        let n = |o: &lopdf::Object| {
            o.as_float()
                .map(f64::from)
                .or_else(|_| o.as_i64().map(|i| i as f64))
                .unwrap()
        };
        (n(&media[2]).round(), n(&media[3]).round())
    };
    assert_eq!(size(&doc), (612.0, 792.0));
    let (status, _, pdf) = render(
        &server,
        "pdf",
        json!({"url": url, "format": "A4", "landscape": true, "margin": {"top": "1cm"}, "print_background": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc = lopdf::Document::load_mem(&pdf).unwrap();
    // A4 is 841.9 × 595.3 points; Chrome rounds to whole points.
    let (w, h) = size(&doc);
    assert!((w - 841.9).abs() <= 1.0 && (h - 595.3).abs() <= 1.0, "{w} × {h}");
    let baseline = baseline(&server).await;
    nothing_left_of_a(&server, baseline, "pdfs").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markdown_content_and_scrape_read_the_rendered_page() {
    let (server, site) = start().await;
    let article = format!("http://{site}/article");
    let (status, headers, md) = render(&server, "markdown", json!({"url": article})).await;
    let md = String::from_utf8_lossy(&md).into_owned();
    assert_eq!(status, StatusCode::OK, "{md}");
    assert_eq!(headers["content-type"], "text/markdown; charset=utf-8");
    assert!(md.contains("# How the gate works"), "{md}");
    assert!(md.contains("## Where to read more"), "{md}");
    assert!(
        md.contains(&format!("[about us](http://{site}/about)")),
        "links made absolute: {md}"
    );
    assert!(md.contains(&format!("[full docs](http://{site}/docs?x=1)")), "{md}");
    assert!(md.contains("Written by a script"), "the rendered page: {md}");
    for junk in ["Menu item", "Advertisement", "Copyright footer", "document.write"] {
        assert!(!md.contains(junk), "{junk} is not main content: {md}");
    }

    // The rendered HTML, with what the page answered.
    let (status, headers, html) = render(&server, "content", json!({"url": article})).await;
    let html = String::from_utf8_lossy(&html).into_owned();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-security-policy"], "sandbox");
    assert_eq!(headers["x-page-status"], "200");
    assert!(
        html.contains("<p>Written by a script while the page loaded.</p>"),
        "{html}"
    );

    // Scrape: texts and attributes, after waiting for an element a script fills in.
    let list = format!("http://{site}/list");
    let (status, _, body) = render(
        &server,
        "scrape",
        json!({
            "url": list,
            "wait_until": {"selector": "#late:not(:empty)"},
            "selectors": {"items": "a.item", "late": "#late", "none": ".nothing"},
            "include_html": true,
        }),
    )
    .await;
    let v = json_of(&body);
    assert_eq!(status, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(
        items.iter().map(|i| i["text"].as_str().unwrap()).collect::<Vec<_>>(),
        ["First", "Second", "Third"]
    );
    assert_eq!(
        items[1]["attributes"],
        json!({"class": "item", "href": "/two", "data-id": "2"})
    );
    assert_eq!(
        items[0]["html"],
        "<a class=\"item\" href=\"/one\" data-id=\"1\">First</a>"
    );
    assert_eq!(v["late"][0]["text"], "Arrived later");
    assert_eq!(v["none"], json!([]));
    // A selector Chrome cannot parse is the caller's mistake.
    let (status, _, body) = render(&server, "scrape", json!({"url": list, "selectors": {"bad": "a[["}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", json_of(&body));
    assert!(json_of(&body)["detail"].as_str().unwrap().contains("selectors.bad"));
    let baseline = baseline(&server).await;
    nothing_left_of_a(&server, baseline, "reads").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_their_cause_in_bounded_time_and_leave_nothing() {
    let (server, site) = start().await;
    // Started once, so that the baseline has the shared browser and its spares.
    let (status, _, _) = render(&server, "content", json!({"url": format!("http://{site}/list")})).await;
    assert_eq!(status, StatusCode::OK);
    let baseline = baseline(&server).await;
    let created_before = server.broker.metrics().sessions_created.get();
    let bare_before = server.broker.metrics().renders_bare.get();
    let cases = [
        (
            json!({"url": format!("http://{site}/missing")}),
            502,
            "page_status",
            "404",
        ),
        (
            json!({"url": format!("http://{site}/slow"), "timeout_ms": 1500}),
            504,
            "timeout",
            "finish loading within 1500 ms",
        ),
        (
            json!({"url": format!("http://{site}/busy"), "wait_until": "networkidle", "timeout_ms": 2000}),
            504,
            "timeout",
            "network idle",
        ),
        (
            json!({"url": format!("http://{site}/list"), "wait_until": {"selector": "#never"}, "timeout_ms": 1000}),
            504,
            "timeout",
            "selector",
        ),
        (
            json!({"url": format!("http://{site}/download")}),
            502,
            "download",
            "download",
        ),
        // Nothing listens there; and the metadata address, which the egress policy refuses.
        (
            json!({"url": format!("http://127.0.0.1:{}/", free_port())}),
            502,
            "navigation_failed",
            "",
        ),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            502,
            "navigation_failed",
            "egress",
        ),
    ];
    for (body, want, code, says) in cases {
        let (status, _, answer) = render(&server, "content", body.clone()).await;
        let answer = json_of(&answer);
        assert_eq!(status.as_u16(), want, "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(says), "{body}: {answer}");
        nothing_left_of_a(&server, baseline, &body.to_string()).await;
    }
    let metrics = server.broker.metrics();
    assert_eq!(
        metrics.renders_bare.get() - bare_before,
        7,
        "each render had a context of its own"
    );
    assert_eq!(
        metrics.sessions_created.get(),
        created_before,
        "no session was made for a render"
    );

    // The page's error status is rendered when asked for; the busy page renders at load.
    let (status, headers, html) = render(
        &server,
        "content",
        json!({"url": format!("http://{site}/missing"), "allow_error_status": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-page-status"], "404");
    assert!(String::from_utf8_lossy(&html).contains("No such page"));
    let (status, _, _) = render(&server, "screenshot", json!({"url": format!("http://{site}/busy")})).await;
    assert_eq!(status, StatusCode::OK);

    // A huge page: its HTML whole, its full-page screenshot cut at 16384 pixels.
    let huge = format!("http://{site}/huge");
    let (status, _, html) = render(&server, "content", json!({"url": huge})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.len() > 2_000_000, "{}", html.len());
    let (status, _, png) = render(
        &server,
        "screenshot",
        json!({"url": huge, "full_page": true, "screen_config": {"width": 400, "height": 300}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (w, h, _) = decode_png(&png);
    assert_eq!((w, h), (400, 16384));
    nothing_left_of_a(&server, baseline, "after the huge page").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_and_change_nothing() {
    let (server, site) = start().await;
    let url = format!("http://{site}/colours");
    let b_session = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_B),
            Some(&json!({"isolation": "context"}).to_string()),
        )
        .await
        .json;
    let b_id = b_session["session_id"].as_str().unwrap().to_owned();
    let before = sessions(&server, KEY_A).await;
    let created = server.broker.metrics().sessions_created.get();
    let huge_html = "x".repeat(server.broker.config().max_render_html_bytes + 1);
    let refused = [
        ("screenshot", json!({"url": "file:///etc/passwd"})),
        ("content", json!({"url": " FILE:///etc/passwd"})),
        ("content", json!({"url": "chrome://version"})),
        ("content", json!({"url": "javascript:alert(1)"})),
        ("content", json!({"html": huge_html})),
        ("content", json!({})),
        ("content", json!({"url": url, "html": "<p>"})),
        (
            "screenshot",
            json!({"url": url, "clip": {"x": 0, "y": 0, "width": -10, "height": 10}}),
        ),
        (
            "screenshot",
            json!({"url": url, "clip": {"x": 0, "y": 0, "width": 100000, "height": 100000}}),
        ),
        (
            "screenshot",
            json!({"url": url, "screen_config": {"width": -1, "height": 600}}),
        ),
        ("screenshot", json!({"url": url, "quality": 50})),
        ("pdf", json!({"url": url, "width": "-5in"})),
        ("pdf", json!({"url": url, "scale": 100})),
        ("content", json!({"url": url, "timeout_ms": 100_000_000})),
        ("content", json!({"url": url, "surprise": true})),
        (
            "content",
            json!({"url": url, "cdp_url": "ws://127.0.0.1:9222/devtools/browser/x"}),
        ),
        ("content", json!({"url": url, "persist_changes": true})),
        ("content", json!({"url": url, "headers": {"x-a": "1\r\nx-b: 2"}})),
        ("content", json!({"url": url, "proxy": {"server": "ftp://p:1"}})),
        ("scrape", json!({"url": url, "selectors": []})),
        ("markdown", json!({"url": url, "selectors": {"a": "b"}})),
        (
            "content",
            json!({"url": url, "session_id": b_id.clone(), "locale": "de-DE"}),
        ),
    ];
    for (kind, body) in &refused {
        let (status, _, answer) = render(&server, kind, body.clone()).await;
        let shown = body.to_string();
        let shown = &shown[..shown.len().min(200)];
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind} {shown}: {}", json_of(&answer));
        assert!(json_of(&answer)["detail"].is_string());
    }
    // Malformed JSON too.
    let (status, _, _) = http_bytes(
        server.addr,
        Method::POST,
        "/public/content",
        &[("x-api-key", KEY_A)],
        bytes::Bytes::from_static(b"{\"url\": "),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Another key's session is not found; without a key, nothing is read.
    let (status, _, answer) = render(&server, "content", json!({"url": url, "session_id": b_id})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", json_of(&answer));
    let (status, _, _) = http_bytes(
        server.addr,
        Method::POST,
        "/public/content",
        &[],
        bytes::Bytes::from(json!({"url": url}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(sessions(&server, KEY_A).await, before, "no session was made or ended");
    assert_eq!(
        server.broker.metrics().sessions_created.get(),
        created,
        "no create was tried"
    );
    assert_eq!(
        server.get(&b_id).await.status,
        StatusCode::NOT_FOUND,
        "tenant A cannot see B's session"
    );
    let b = server
        .call(Method::GET, &format!("/public/sessions/{b_id}"), Some(KEY_B), None)
        .await;
    assert_eq!(b.json["status"], "active", "B's session goes on");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_kept_given_counted_and_ended_when_the_caller_leaves() {
    let (server, site) = start().await;
    let url = format!("http://{site}/colours");

    // keep_session: the session goes on and its cdp_url drives it.
    let (status, headers, _) = render(&server, "content", json!({"url": url, "keep_session": true})).await;
    assert_eq!(status, StatusCode::OK);
    let kept = headers["x-session-id"].to_str().unwrap().to_owned();
    let cdp_url = headers["x-cdp-url"].to_str().unwrap().to_owned();
    let record = server.get(&kept).await.json;
    assert_eq!(
        (record["status"].as_str(), record["isolation"].as_str()),
        (Some("active"), Some("context"))
    );
    let mut cdp = CdpClient::connect_url(&cdp_url).await;
    let targets = cdp.call(None, "Target.getTargets", json!({})).await;
    let pages: Vec<&Value> = targets["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "page")
        .collect();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0]["url"], url.as_str(), "the rendered page is the session's tab");

    // A render in a given session: a tab of its own, closed after; the session goes on.
    let (status, headers, png) = render(
        &server,
        "screenshot",
        json!({"url": format!("http://{site}/list"), "session_id": kept}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-session-id"], kept.as_str());
    assert!(headers.get("x-cdp-url").is_none());
    assert!(decode_png(&png).0 > 0);
    let open_pages = || async {
        let t = CdpClient::connect_url(&cdp_url)
            .await
            .call(None, "Target.getTargets", json!({}))
            .await;
        t["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["type"] == "page")
            .count()
    };
    assert!(eventually_async(Duration::from_secs(5), || async { open_pages().await == 1 }).await);
    assert_eq!(server.get(&kept).await.json["status"], "active");

    // An ended session renders nothing.
    assert_eq!(server.terminate(&kept).await.status, StatusCode::NO_CONTENT);
    let (status, _, body) = render(&server, "content", json!({"url": url, "session_id": kept})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", json_of(&body));

    // A caller that hangs up mid-render leaves no context behind.
    let baseline = baseline(&server).await;
    assert!(eventually(Duration::from_secs(10), || context_sessions(&server) == 0).await);
    let addr = server.addr;
    let slow = format!("http://{site}/slow");
    let call = tokio::spawn(async move {
        http_bytes(
            addr,
            Method::POST,
            "/public/content",
            &[("x-api-key", KEY_A), ("content-type", "application/json")],
            bytes::Bytes::from(json!({"url": slow, "timeout_ms": 60_000}).to_string()),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(20), || context_sessions(&server) == 1).await,
        "the render's context was made"
    );
    call.abort();
    let _ = call.await;
    assert!(
        eventually(Duration::from_secs(10), || context_sessions(&server) == 0).await,
        "the context went with the caller"
    );
    nothing_left_of_a(&server, baseline, "a caller that hung up").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_count_against_the_keys_quota() {
    let server = TestServer::start_with(|c| {
        c.max_sessions_per_key = 1;
        // One shared browser per key (each serves one key's contexts).
        c.context_browsers = 2;
    })
    .await;
    let site = start_pages().await;
    let url = format!("http://{site}/colours");
    let (status, headers, _) = render(&server, "content", json!({"url": url, "keep_session": true})).await;
    assert_eq!(status, StatusCode::OK);
    let kept = headers["x-session-id"].to_str().unwrap().to_owned();
    let (status, _, body) = render(&server, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", json_of(&body));
    // Another key has its own quota; the kept session still renders.
    let (status, _, _) = render_as(&server, KEY_B, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = render(&server, "screenshot", json!({"url": url, "session_id": kept})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.terminate(&kept).await.status, StatusCode::NO_CONTENT);
    let (status, _, _) = render(&server, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// Renders into one session run two at a time: a third is `429` at once (each parses what
/// its page gives, tens of megabytes, so a key's requests cannot pile up in the broker);
/// once one ends, the next runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_at_most_two_renders_at_once() {
    let server = TestServer::start().await;
    let site = start_pages().await;
    let url = format!("http://{site}/colours");
    let (status, headers, _) = render(&server, "content", json!({"url": url, "keep_session": true})).await;
    assert_eq!(status, StatusCode::OK);
    let kept = headers["x-session-id"].to_str().unwrap().to_owned();
    let mut slow = Vec::new();
    for n in 0..2 {
        let asked = slow_requests(site);
        let (addr, kept) = (server.addr, kept.clone());
        // Distinct URLs: Chrome holds a second request for one URL until the first ends.
        let body = json!({"url": format!("http://{site}/slow?n={n}"), "timeout_ms": 60_000, "session_id": kept});
        slow.push(tokio::spawn(async move {
            http_bytes(
                addr,
                Method::POST,
                "/public/content",
                &[("x-api-key", KEY_A), ("content-type", "application/json")],
                bytes::Bytes::from(body.to_string()),
            )
            .await
        }));
        assert!(eventually(Duration::from_secs(20), || slow_requests(site) > asked).await);
    }
    let (status, _, body) = render(&server, "screenshot", json!({"url": url, "session_id": kept})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", json_of(&body));
    assert_eq!(json_of(&body)["code"], "session_busy", "{}", json_of(&body));
    let (_, headers, _) = render(&server, "screenshot", json!({"url": url, "session_id": kept})).await;
    assert_eq!(headers["retry-after"], "1");
    let first = slow.remove(0);
    first.abort();
    let _ = first.await;
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            render(&server, "screenshot", json!({"url": url, "session_id": kept}))
                .await
                .0
                == StatusCode::OK
        })
        .await,
        "a render runs once one of the two has ended"
    );
    for call in slow {
        call.abort();
    }
    server.stop().await;
}

/// Starts a render of `/slow` (60 s) for `key` in a task, and waits until its page is
/// requested (the broker holds `contexts` then).
async fn slow_render(
    server: &TestServer,
    site: SocketAddr,
    key: &'static str,
    contexts: usize,
) -> tokio::task::JoinHandle<(StatusCode, hyper::HeaderMap, bytes::Bytes)> {
    let addr = server.addr;
    let asked = slow_requests(site);
    let call = tokio::spawn(async move {
        http_bytes(
            addr,
            Method::POST,
            "/public/content",
            &[("x-api-key", key), ("content-type", "application/json")],
            bytes::Bytes::from(json!({"url": format!("http://{site}/slow"), "timeout_ms": 60_000}).to_string()),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(20), || slow_requests(site) > asked).await,
        "the slow render's page was asked for"
    );
    assert_eq!(context_sessions(server), contexts);
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_renders_leave_nothing_and_see_no_other_context() {
    // Any key's contexts in the one shared browser: a render beside another key's session.
    let server = TestServer::start_with(|c| {
        c.context_browsers = 1;
        c.max_contexts_per_browser = 4;
        c.context_sharing = "any".into();
        // Chrome's holdings are compared before and after: spares stay at their number.
        c.context_spares_burst = 0;
    })
    .await;
    let site = start_pages().await;
    let (status, headers, _) = render(&server, "content", json!({"url": format!("http://{site}/list")})).await;
    assert_eq!(status, StatusCode::OK);
    // Listed once done, as an ended context session of its key, and of no other key.
    let listed = headers["x-session-id"].to_str().unwrap().to_owned();
    let path = format!("/public/sessions/{listed}");
    let record = server.call(Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.body);
    assert_eq!(
        (
            &record.json["status"],
            &record.json["isolation"],
            &record.json["end_reason"]
        ),
        (&json!("terminated"), &json!("context"), &json!("terminated by request")),
        "{}",
        record.body
    );
    let theirs = server.call(Method::GET, &path, Some(KEY_B), None).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.body);
    let other = server.create(json!({"isolation": "context"})).await;
    let mut neighbour = CdpClient::connect(&other).await;
    let own_pages = neighbour.pages().await;
    assert_eq!(own_pages.len(), 1);
    let baseline = baseline(&server).await;
    let metrics = server.broker.metrics().clone();
    let (created, bare, refused) = (
        metrics.sessions_created.get(),
        metrics.renders_bare.get(),
        metrics.browser_egress_refused.get(),
    );
    let before = sessions(&server, KEY_A).await;

    // Succeeded, refused by the egress policy (a private address, the metadata address),
    // timed out, and a caller that hung up mid-render.
    let (status, _, _) = render(&server, "screenshot", json!({"url": format!("http://{site}/colours")})).await;
    assert_eq!(status, StatusCode::OK);
    for url in ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"] {
        let (status, _, answer) = render(&server, "content", json!({"url": url})).await;
        let answer = json_of(&answer);
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{url}: {answer}");
        assert_eq!(answer["code"], "navigation_failed", "{url}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains("egress"), "{answer}");
    }
    assert!(
        metrics.browser_egress_refused.get() >= refused + 2,
        "the context's gateway refused both"
    );
    let (status, _, _) = render(
        &server,
        "content",
        json!({"url": format!("http://{site}/slow"), "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let call = slow_render(&server, site, KEY_A, 2).await;
    // The other key's client sees its own tab only, not the render's page.
    assert_eq!(neighbour.pages().await, own_pages, "the render's tab is not shown");
    let shown = neighbour.call(None, "Target.getTargets", json!({})).await;
    assert!(
        !shown.to_string().contains("/slow"),
        "the render's page is not shown: {shown}"
    );
    call.abort();
    let _ = call.await;
    assert!(
        eventually(Duration::from_secs(10), || context_sessions(&server) == 1).await,
        "the context went with the caller"
    );

    assert_eq!(metrics.renders_bare.get() - bare, 5);
    assert_eq!(metrics.sessions_created.get(), created, "no session was made");
    // Each render is listed, ended (the hung-up one's record a moment after); none active.
    let (active, all) = before;
    let listed = eventually_async(Duration::from_secs(10), || async {
        sessions(&server, KEY_A).await == (active, all + 5)
    })
    .await;
    assert!(listed, "{:?} listed, {before:?} before", sessions(&server, KEY_A).await);
    let settled = eventually_async(Duration::from_secs(10), || async {
        chrome_holds(&server).await == baseline
    })
    .await;
    assert!(
        settled,
        "Chrome holds {:?} (contexts, tabs), before {baseline:?}",
        chrome_holds(&server).await
    );
    assert_eq!(
        server.get(other["session_id"].as_str().unwrap()).await.json["status"],
        "active",
        "the other key's session goes on"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_renders_hold_a_quota_place_and_take_from_the_create_rate() {
    let server = TestServer::start_with(|c| {
        c.max_sessions_per_key = 1;
        c.context_browsers = 2;
    })
    .await;
    let site = start_pages().await;
    let url = format!("http://{site}/colours");
    let refused = server.broker.metrics().create_quota_refused.get();
    // While a render runs it is the key's one session: no other render, no create.
    let call = slow_render(&server, site, KEY_A, 1).await;
    let (status, _, body) = render(&server, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", json_of(&body));
    assert!(
        json_of(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("max_sessions_per_key")
    );
    let created = server
        .call(
            Method::POST,
            "/public/sessions",
            Some(KEY_A),
            Some(&json!({"isolation": "context"}).to_string()),
        )
        .await;
    assert_eq!(created.status, StatusCode::TOO_MANY_REQUESTS, "{}", created.json);
    assert_eq!(server.broker.metrics().create_quota_refused.get(), refused + 2);
    assert_eq!(context_sessions(&server), 1, "the refused render made no context");
    // Another key has its own quota.
    let (status, _, _) = render_as(&server, KEY_B, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK);
    call.abort();
    let _ = call.await;
    assert!(eventually(Duration::from_secs(10), || context_sessions(&server) == 0).await);
    let (status, _, _) = render(&server, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK, "the place is free again");
    server.stop().await;

    // One create a minute: the second render is refused, and makes nothing.
    let server = TestServer::start_with(|c| c.creates_per_minute = 1).await;
    let (status, _, _) = render(&server, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK);
    let limited = server.broker.metrics().create_rate_limited.get();
    let (status, headers, body) = render(&server, "screenshot", json!({"url": url})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", json_of(&body));
    assert!(headers.get("retry-after").is_some());
    assert_eq!(server.broker.metrics().create_rate_limited.get(), limited + 1);
    assert_eq!(server.broker.metrics().renders_bare.get(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_renders_apply_the_session_options() {
    let (server, site) = start().await;
    let ua = "Mozilla/5.0 (X11; Linux x86_64) RenderTest/7.1";
    let options = json!({
        "user_agent": ua,
        "locale": "de-DE",
        "timezone": "Asia/Tokyo",
        "screen_config": {"width": 640, "height": 360},
    });
    let with = |extra: Value| {
        let mut body = options.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    // What the page's scripts see.
    let script = "<html><body><pre id='o'></pre><script>document.getElementById('o').textContent = \
                  JSON.stringify({ua: navigator.userAgent, lang: navigator.language, \
                  tz: Intl.DateTimeFormat().resolvedOptions().timeZone, width: innerWidth, \
                  webdriver: navigator.webdriver})</script></body></html>";
    let (status, _, body) = render(
        &server,
        "scrape",
        with(json!({"html": script, "selectors": {"o": "#o"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", json_of(&body));
    let seen: Value = serde_json::from_str(json_of(&body)["o"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["ua"], ua);
    assert_eq!(seen["lang"], "de-DE");
    assert_eq!(seen["tz"], "Asia/Tokyo");
    assert_eq!(seen["width"], 640);
    assert_eq!(seen["webdriver"], false, "no automation tell");
    // What the site was sent.
    let (status, _, body) = render(
        &server,
        "scrape",
        with(json!({"url": format!("http://{site}/echo"), "selectors": {"seen": "#seen"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", json_of(&body));
    let sent = json_of(&body)["seen"][0]["text"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        sent.contains(&format!("user-agent: {}", ua.to_ascii_lowercase())),
        "{sent}"
    );
    assert!(sent.contains("accept-language: de-de"), "{sent}");
    // The viewport is the screen asked.
    let (status, _, png) = render(
        &server,
        "screenshot",
        with(json!({"url": format!("http://{site}/colours")})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decode_png(&png).0, 640);
    assert_eq!(server.broker.metrics().renders_bare.get(), 3);
    server.stop().await;
}
