//! One tab of a session's browser, driven on the broker's own CDP connection through the
//! session's upstream (a context session's filter applies to every command): opened at a
//! URL or HTML, awaited, and read. Scripts run in an isolated world of the broker's, never
//! in the page's (no `Runtime.enable`, no global left).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::error::{RenderError, bad};
use super::options::{Clip, Load, MAX_SHOT_HEIGHT, MAX_SHOT_WIDTH, Output, Source, WaitUntil};
use crate::browser::cdp::{CallError, Client};
use crate::browser::egress::Egress;
use crate::browser::upstream::Upstream;

const HELPERS: &str = include_str!("page.js");
/// How often a wait for a selector looks again.
const POLL: Duration = Duration::from_millis(100);
/// Largest HTML read from a page (content, markdown), in characters.
const MAX_HTML_CHARS: usize = 16 * 1024 * 1024;
/// The same in UTF-8 bytes at most (three for each UTF-16 character the page counts).
const MAX_HTML_BYTES: usize = 3 * MAX_HTML_CHARS;
/// Scrape bounds: matches per selector, and characters of each text, HTML and attribute.
const SCRAPE_MATCHES: usize = 100;
const SCRAPE_TEXT: usize = 10_000;
const SCRAPE_HTML: usize = 100_000;
const SCRAPE_ATTR: usize = 2_000;

/// What the page answered: its HTTP status (0 for a document without one) and final URL.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub status: u16,
    pub url: String,
}

/// What a render produced.
pub enum Produced {
    Bytes { content_type: &'static str, body: Vec<u8> },
    Json(Value),
}

pub(crate) struct Tab {
    client: Arc<Client>,
    session: String,
    target: String,
    /// A tab opened in a caller's session is closed when done; a fresh session's first
    /// tab goes with the session.
    close_when_done: bool,
    world: Option<i64>,
    deadline: Instant,
}

impl Drop for Tab {
    fn drop(&mut self) {
        if self.close_when_done {
            let (client, target) = (self.client.clone(), self.target.clone());
            tokio::spawn(async move {
                let _ = client
                    .call(
                        None,
                        "Target.closeTarget",
                        json!({"targetId": target}),
                        Duration::from_secs(5),
                    )
                    .await;
            });
        }
    }
}

fn call_error(method: &str, e: CallError) -> RenderError {
    match e {
        CallError::Refused(m) => RenderError::Browser(format!("{method}: {m}")),
        CallError::Timeout => RenderError::Browser(format!("{method} was not answered in time")),
        CallError::Lost => RenderError::Browser("the connection to the browser was lost".into()),
    }
}

impl Tab {
    /// Connects to the session's browser and takes its first tab (`new_tab`: opens one of
    /// its own, for a caller's session whose tabs are the caller's). Every command must be
    /// answered before `deadline`.
    pub(crate) async fn open(
        upstream: &Upstream,
        egress: &Egress,
        config: WebSocketConfig,
        new_tab: bool,
        deadline: Instant,
    ) -> Result<Tab, RenderError> {
        let limit = deadline.saturating_duration_since(Instant::now());
        let (stream, early) = upstream.connect_raw(&upstream.browser_path, egress, limit).await?;
        let ws = WebSocketStream::from_partially_read(stream, early, Role::Client, Some(config)).await;
        let client = Arc::new(Client::start(ws));
        let mut tab = Tab {
            client,
            session: String::new(),
            target: String::new(),
            close_when_done: new_tab,
            world: None,
            deadline,
        };
        let target = if new_tab {
            None
        } else {
            let targets = tab.browser_call("Target.getTargets", json!({})).await?;
            targets["targetInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["targetId"].as_str())
                .map(str::to_owned)
        };
        tab.target = match target {
            Some(t) => t,
            None => {
                let made = tab
                    .browser_call("Target.createTarget", json!({"url": "about:blank"}))
                    .await?;
                tab.close_when_done = true;
                made["targetId"].as_str().unwrap_or_default().to_owned()
            }
        };
        let attached = tab
            .browser_call(
                "Target.attachToTarget",
                json!({"targetId": tab.target, "flatten": true}),
            )
            .await?;
        tab.session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
        Ok(tab)
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    async fn browser_call(&self, method: &str, params: Value) -> Result<Value, RenderError> {
        self.client
            .call(None, method, params, self.remaining())
            .await
            .map_err(|e| call_error(method, e))
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, RenderError> {
        self.client
            .call(Some(&self.session), method, params, self.remaining())
            .await
            .map_err(|e| call_error(method, e))
    }

    /// Sets the caller's `field`: a value Chrome will not take (a cookie for a domain it
    /// refuses) is the caller's mistake, not the browser's failure.
    async fn option(&self, field: &str, method: &str, params: Value) -> Result<(), RenderError> {
        match self
            .client
            .call(Some(&self.session), method, params, self.remaining())
            .await
        {
            Ok(_) => Ok(()),
            Err(CallError::Refused(why)) => Err(bad(format!("{field}: refused by the browser: {why}"))),
            Err(e) => Err(call_error(method, e)),
        }
    }

    /// Downloads are refused in a fresh session (a render shows pages, it does not fetch
    /// files); the navigation to one then fails as a download.
    pub(crate) async fn refuse_downloads(&self) -> Result<(), RenderError> {
        self.browser_call("Browser.setDownloadBehavior", json!({"behavior": "deny"}))
            .await
            .map(drop)
    }

    /// Navigates and waits for `load.wait`, within `load.timeout`.
    pub(crate) async fn load(&mut self, load: &Load) -> Result<Loaded, RenderError> {
        let mut events = self.client.subscribe();
        self.call("Page.enable", json!({})).await?;
        self.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}))
            .await?;
        if !load.headers.is_empty() {
            self.call(
                "Network.enable",
                json!({"maxTotalBufferSize": 0, "maxResourceBufferSize": 0}),
            )
            .await?;
            self.option(
                "headers",
                "Network.setExtraHTTPHeaders",
                json!({"headers": load.headers}),
            )
            .await?;
        }
        if !load.cookies.is_empty() {
            self.option("cookies", "Network.setCookies", json!({"cookies": load.cookies}))
                .await?;
        }
        let url = match &load.source {
            Source::Url(url) => url.clone(),
            Source::Html(html) => format!("data:text/html;charset=utf-8;base64,{}", BASE64.encode(html)),
        };
        let started = Instant::now();
        let what = match &load.wait {
            WaitUntil::Load | WaitUntil::Delay(_) => "finish loading",
            WaitUntil::DomContentLoaded => "reach DOMContentLoaded",
            WaitUntil::NetworkIdle => "reach network idle (no request for 500 ms)",
            WaitUntil::Selector(_) => "show the awaited selector",
        };
        let timeout = || RenderError::Timeout {
            what: what.to_owned(),
            limit: load.timeout,
        };
        let until = (started + load.timeout).min(self.deadline);
        let navigated = tokio::time::timeout_at(until, self.call("Page.navigate", json!({"url": url})))
            .await
            .map_err(|_| timeout())??;
        if let Some(error) = navigated["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(if error == "net::ERR_ABORTED" {
                RenderError::Download
            } else {
                RenderError::Navigation(explain(error))
            });
        }
        let loader = navigated["loaderId"].as_str().unwrap_or_default().to_owned();
        let awaited = match &load.wait {
            WaitUntil::Load | WaitUntil::Delay(_) => "load",
            WaitUntil::DomContentLoaded | WaitUntil::Selector(_) => "DOMContentLoaded",
            WaitUntil::NetworkIdle => "networkIdle",
        };
        let mut checked = None;
        let wait = async {
            // Lifecycle events of this navigation's document; a lost event (the channel
            // lagged) is made up for by the document's own state.
            let mut lagged = false;
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = tokio::time::sleep(POLL * 3), if lagged => Err(RecvError::Lagged(0)),
                };
                let name = match event {
                    Ok(e) if e["sessionId"] == self.session.as_str() => match e["method"].as_str() {
                        Some("Page.downloadWillBegin") => return Err(RenderError::Download),
                        Some("Page.lifecycleEvent")
                            if e["params"]["loaderId"] == loader.as_str()
                                && e["params"]["frameId"] == self.target.as_str() =>
                        {
                            e["params"]["name"].as_str().unwrap_or_default().to_owned()
                        }
                        _ => continue,
                    },
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {
                        lagged = true;
                        let state = self.eval("document.readyState").await?;
                        match (state.as_str(), awaited) {
                            (Some("complete"), _) => awaited.to_owned(),
                            (Some("interactive"), "DOMContentLoaded") => awaited.to_owned(),
                            _ => continue,
                        }
                    }
                    Err(RecvError::Closed) => {
                        return Err(RenderError::Browser("the connection to the browser was lost".into()));
                    }
                };
                if name == "DOMContentLoaded" || name == awaited {
                    // The status is known once the document is: an error page fails now.
                    if checked.is_none() {
                        let s = self.helper("status", &[]).await?;
                        let loaded = Loaded {
                            status: s["status"].as_u64().unwrap_or(0) as u16,
                            url: s["url"].as_str().unwrap_or_default().to_owned(),
                        };
                        if loaded.status >= 400 && !load.allow_error_status {
                            return Err(RenderError::PageStatus {
                                status: loaded.status,
                                text: reason(loaded.status),
                            });
                        }
                        checked = Some(loaded);
                    }
                }
                if name == awaited {
                    break;
                }
            }
            match &load.wait {
                WaitUntil::Selector(css) => loop {
                    let found = self.helper("has", &[json!(css)]).await?;
                    if let Some(why) = found["invalid"].as_str() {
                        return Err(bad(format!("wait_until.selector is not a valid CSS selector: {why}")));
                    }
                    if found["found"] == true {
                        break;
                    }
                    tokio::time::sleep(POLL).await;
                },
                WaitUntil::Delay(d) => tokio::time::sleep(*d).await,
                _ => {}
            }
            Ok(())
        };
        tokio::time::timeout_at(until, wait).await.map_err(|_| timeout())??;
        Ok(checked.unwrap_or_default())
    }

    /// Evaluates `expression` in the broker's world of the current document.
    async fn eval(&mut self, expression: &str) -> Result<Value, RenderError> {
        for attempt in 0..2 {
            let context = match self.world {
                Some(c) => c,
                None => {
                    let world = self
                        .call(
                            "Page.createIsolatedWorld",
                            json!({"frameId": self.target, "worldName": "cdpgate-render"}),
                        )
                        .await?;
                    let id = world["executionContextId"]
                        .as_i64()
                        .ok_or_else(|| RenderError::Browser("no script context for the page".into()))?;
                    self.world = Some(id);
                    id
                }
            };
            let reply = self
                .client
                .call(
                    Some(&self.session),
                    "Runtime.evaluate",
                    json!({"expression": expression, "contextId": context, "returnByValue": true}),
                    self.remaining(),
                )
                .await;
            match reply {
                Ok(result) => {
                    if let Some(e) = result.get("exceptionDetails") {
                        let text = e["exception"]["description"].as_str().or(e["text"].as_str());
                        return Err(RenderError::Browser(format!(
                            "a script of the broker failed: {}",
                            text.unwrap_or("unknown")
                        )));
                    }
                    return Ok(result["result"]["value"].clone());
                }
                // The document the world belonged to was replaced: make one in the new.
                Err(CallError::Refused(m)) if attempt == 0 && m.contains("context") => self.world = None,
                Err(e) => return Err(call_error("Runtime.evaluate", e)),
            }
        }
        Err(RenderError::Browser("the page kept navigating away".into()))
    }

    async fn helper(&mut self, name: &str, args: &[Value]) -> Result<Value, RenderError> {
        let args: Vec<String> = args.iter().map(Value::to_string).collect();
        self.eval(&format!("({HELPERS}).{name}({})", args.join(", "))).await
    }

    /// Produces `output` from the page as it is now.
    pub(crate) async fn produce(&mut self, output: &Output) -> Result<Produced, RenderError> {
        match output {
            Output::Screenshot {
                image,
                quality,
                full_page,
                clip,
                selector,
            } => {
                let mut params = Map::new();
                params.insert("format".into(), json!(image.as_str()));
                if let Some(q) = quality {
                    params.insert("quality".into(), json!(q));
                }
                let region = if *full_page {
                    let size = self.helper("size", &[]).await?;
                    let n = |k: &str| size[k].as_f64().unwrap_or(1.0);
                    Some(Clip {
                        x: 0.0,
                        y: 0.0,
                        width: n("width").clamp(1.0, MAX_SHOT_WIDTH),
                        height: n("height").clamp(1.0, MAX_SHOT_HEIGHT),
                    })
                } else if let Some(css) = selector {
                    let b = self.helper("box", &[json!(css)]).await?;
                    if let Some(why) = b["invalid"].as_str() {
                        return Err(bad(format!("selector is not a valid CSS selector: {why}")));
                    }
                    if b.is_null() {
                        return Err(RenderError::NoElement(css.clone()));
                    }
                    let n = |k: &str| b[k].as_f64().unwrap_or(0.0);
                    Some(Clip {
                        x: n("x").max(0.0),
                        y: n("y").max(0.0),
                        width: n("width").clamp(1.0, MAX_SHOT_WIDTH),
                        height: n("height").clamp(1.0, MAX_SHOT_HEIGHT),
                    })
                } else {
                    *clip
                };
                if let Some(c) = region {
                    params.insert(
                        "clip".into(),
                        json!({"x": c.x, "y": c.y, "width": c.width, "height": c.height, "scale": 1}),
                    );
                    params.insert("captureBeyondViewport".into(), json!(true));
                }
                let shot = self.call("Page.captureScreenshot", Value::Object(params)).await?;
                let content_type = match image {
                    super::options::ImageType::Png => "image/png",
                    super::options::ImageType::Jpeg => "image/jpeg",
                    super::options::ImageType::Webp => "image/webp",
                };
                Ok(Produced::Bytes {
                    content_type,
                    body: decode(&shot)?,
                })
            }
            Output::Pdf(params) => {
                let mut params = params.clone();
                params.insert("transferMode".into(), json!("ReturnAsBase64"));
                let pdf = self.call("Page.printToPDF", Value::Object(params)).await?;
                Ok(Produced::Bytes {
                    content_type: "application/pdf",
                    body: decode(&pdf)?,
                })
            }
            Output::Content => {
                let read = self.helper("html", &[json!(MAX_HTML_CHARS)]).await?;
                let html = self.bounded(&read, "html")?;
                Ok(Produced::Bytes {
                    content_type: "text/html; charset=utf-8",
                    body: html.into_bytes(),
                })
            }
            Output::Markdown => {
                let read = self.helper("main", &[json!(MAX_HTML_CHARS)]).await?;
                let html = self.bounded(&read, "html")?;
                let title = read["title"].as_str().unwrap_or_default();
                let markdown = crate::markdown::from_html(html, title, MAX_HTML_BYTES)
                    .await
                    .map_err(RenderError::Browser)?;
                Ok(Produced::Bytes {
                    content_type: "text/markdown; charset=utf-8",
                    body: markdown.into_bytes(),
                })
            }
            Output::Scrape {
                selectors,
                include_html,
            } => {
                let pairs: Vec<Value> = selectors.iter().map(|(n, s)| json!([n, s])).collect();
                let read = self
                    .helper(
                        "scrape",
                        &[
                            json!(pairs),
                            json!(include_html),
                            json!(SCRAPE_MATCHES),
                            json!(SCRAPE_TEXT),
                            json!(SCRAPE_HTML),
                            json!(SCRAPE_ATTR),
                        ],
                    )
                    .await?;
                if let Some(name) = read["invalid"].as_str() {
                    return Err(bad(format!(
                        "selectors.{name} is not a valid CSS selector: {}",
                        read["message"].as_str().unwrap_or_default()
                    )));
                }
                Ok(Produced::Json(read["results"].clone()))
            }
        }
    }

    fn bounded(&self, read: &Value, key: &str) -> Result<String, RenderError> {
        if let Some(n) = read["over"].as_u64() {
            return Err(RenderError::TooLarge(format!(
                "The page's HTML is {n} characters: at most {MAX_HTML_CHARS} are read"
            )));
        }
        let text = read[key]
            .as_str()
            .ok_or_else(|| RenderError::Browser("the page could not be read".into()))?;
        // Counted again here: the count above is the browser's word, and a user's own
        // browser may say anything.
        if text.len() > MAX_HTML_BYTES {
            return Err(RenderError::TooLarge(format!(
                "The page's HTML is {} bytes: at most {MAX_HTML_BYTES} are read",
                text.len()
            )));
        }
        Ok(text.to_owned())
    }
}

fn decode(answer: &Value) -> Result<Vec<u8>, RenderError> {
    BASE64
        .decode(answer["data"].as_str().unwrap_or_default())
        .map_err(|e| RenderError::Browser(format!("the browser's data is not base64: {e}")))
}

/// Chrome's network error with what it most often means.
fn explain(error: &str) -> String {
    let why = match error {
        "net::ERR_NAME_NOT_RESOLVED" => "the host name does not resolve",
        "net::ERR_CONNECTION_REFUSED" => "the server refused the connection",
        "net::ERR_CONNECTION_RESET" | "net::ERR_CONNECTION_CLOSED" => "the server closed the connection",
        "net::ERR_TUNNEL_CONNECTION_FAILED" | "net::ERR_EMPTY_RESPONSE" => {
            "no answer through the broker's gateway: the egress policy refuses the address, the proxy failed, or the server sent nothing"
        }
        "net::ERR_CERT_AUTHORITY_INVALID" | "net::ERR_CERT_COMMON_NAME_INVALID" | "net::ERR_CERT_DATE_INVALID" => {
            "the server's certificate is not valid"
        }
        "net::ERR_TIMED_OUT" | "net::ERR_CONNECTION_TIMED_OUT" => "the server did not answer",
        _ => return error.to_owned(),
    };
    format!("{why} ({error})")
}

/// The reason phrase of an HTTP status, where there is a standard one.
fn reason(status: u16) -> String {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default()
        .to_owned()
}
