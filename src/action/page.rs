//! A page of a session's browser, driven over CDP for single actions: attaches to the tab
//! in use, finds elements with the helpers of `page.js` (in an isolated world, out of the
//! page's reach), and presses, types and clicks with real input events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::error::ActionError;
use super::keys::Chord;
use crate::browser::cdp::{CallError, Client};
use crate::browser::egress::Egress;
use crate::browser::upstream::Upstream;

const HELPERS: &str = include_str!("page.js");

/// The longest any one CDP command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);
/// How long after an input has been handled (see `settle`) a navigation it caused may take
/// to be reported.
const NAVIGATION_START: Duration = Duration::from_millis(100);

/// What an element must be before a primitive acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Present,
    Visible,
    Enabled,
    Click,
}

impl Need {
    fn as_str(self) -> &'static str {
        match self {
            Need::Present => "present",
            Need::Visible => "visible",
            Need::Enabled => "enabled",
            Need::Click => "click",
        }
    }
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub selector: String,
    pub fingerprint: String,
    pub x: f64,
    pub y: f64,
}

/// The dialogs a page opened during an action: how many, and the first few messages, each
/// cut short (a page may open them in a loop, each megabytes long).
#[derive(Debug, Default, Clone)]
pub(crate) struct Dialogs {
    pub count: usize,
    pub first: Vec<String>,
}

/// Dialog messages an action's answer quotes, and the characters quoted of each.
const DIALOGS_QUOTED: usize = 5;
const DIALOG_CHARS: usize = 200;

impl Dialogs {
    fn opened(&mut self, message: &str) {
        self.count += 1;
        if self.first.len() < DIALOGS_QUOTED {
            self.first.push(message.chars().take(DIALOG_CHARS).collect());
        }
    }
}

/// A DevTools connection to the browser; dialogs the page opens are accepted at once
/// (they would block every script).
struct Connection {
    client: Arc<Client>,
    dialogs: Arc<Mutex<Dialogs>>,
    accepting: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Connection {
    async fn open(
        upstream: &Upstream,
        egress: &Egress,
        timeout: Duration,
        config: WebSocketConfig,
    ) -> Result<Connection, ActionError> {
        let (stream, early) = upstream
            .connect_raw(&upstream.browser_path, egress, timeout)
            .await
            .map_err(|e| ActionError::new(format!("Could not reach the session's browser: {e}")))?;
        let ws = WebSocketStream::from_partially_read(stream, early, Role::Client, Some(config)).await;
        let client = Arc::new(Client::start(ws));
        let dialogs: Arc<Mutex<Dialogs>> = Arc::default();
        let accepting = {
            let (client, dialogs, mut events) = (client.clone(), dialogs.clone(), client.subscribe());
            tokio::spawn(async move {
                loop {
                    let event = match events.recv().await {
                        Ok(event) => event,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if event["method"] == "Page.javascriptDialogOpening" {
                        let text = event["params"]["message"].as_str().unwrap_or_default();
                        dialogs.lock().expect("dialog lock").opened(text);
                        let _ = client.send(
                            event["sessionId"].as_str(),
                            "Page.handleJavaScriptDialog",
                            json!({"accept": true}),
                        );
                    }
                }
            })
        };
        Ok(Connection {
            client,
            dialogs,
            accepting,
        })
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, ActionError> {
        match self.client.call(session, method, params, CALL_TIMEOUT).await {
            Ok(result) => Ok(result),
            Err(CallError::Refused(e)) => Err(ActionError::cdp(method, e)),
            Err(CallError::Lost) => Err(ActionError::new("The connection to the session's browser was lost")),
            Err(CallError::Timeout) => Err(ActionError::new(format!(
                "The browser did not answer {method} within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// The tab single actions act on.
pub(crate) struct Page {
    conn: Connection,
    /// The flattened CDP session attached to the tab.
    session: String,
    pub target_id: String,
    /// The isolated world holding the helpers, until a navigation destroys it.
    world: Option<i64>,
}

impl Page {
    /// Attaches to `preferred` if it is still open, else to the browser's first tab (one
    /// is opened if none is left).
    pub(crate) async fn attach(
        upstream: &Upstream,
        egress: &Egress,
        timeout: Duration,
        config: WebSocketConfig,
        preferred: Option<&str>,
    ) -> Result<Page, ActionError> {
        let conn = Connection::open(upstream, egress, timeout, config).await?;
        conn.call(None, "Target.setDiscoverTargets", json!({"discover": true}))
            .await?;
        let targets = conn.call(None, "Target.getTargets", json!({})).await?;
        let pages: Vec<&str> = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["type"] == "page" && !t["url"].as_str().unwrap_or("").starts_with("devtools://"))
            .filter_map(|t| t["targetId"].as_str())
            .collect();
        let target_id = match preferred.filter(|p| pages.contains(p)).or(pages.first().copied()) {
            Some(id) => id.to_owned(),
            None => conn
                .call(None, "Target.createTarget", json!({"url": "about:blank"}))
                .await?["targetId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let mut page = Page {
            conn,
            session: String::new(),
            target_id: String::new(),
            world: None,
        };
        page.switch_to(&target_id).await?;
        Ok(page)
    }

    async fn switch_to(&mut self, target_id: &str) -> Result<(), ActionError> {
        let attached = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        self.session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
        self.target_id = target_id.to_owned();
        self.world = None;
        self.call("Page.enable", json!({})).await?;
        Ok(())
    }

    /// Detaches, leaving the tab as it is for whoever else drives it.
    pub(crate) async fn detach(self) {
        let _ = self
            .conn
            .call(None, "Target.detachFromTarget", json!({"sessionId": self.session}))
            .await;
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, ActionError> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// The dialogs the page opened (and that were accepted) so far.
    pub(crate) fn dialogs(&self) -> Dialogs {
        self.conn.dialogs.lock().expect("dialog lock").clone()
    }

    /// Evaluates `expression` in the helpers' world and returns its value; a world lost to
    /// a navigation is made again, once.
    pub(crate) async fn eval(&mut self, expression: &str) -> Result<Value, ActionError> {
        for attempt in 0..2 {
            let context = match self.world {
                Some(c) => c,
                None => self.make_world().await?,
            };
            let reply = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": expression, "contextId": context, "returnByValue": true}),
                )
                .await;
            match reply {
                Ok(result) => {
                    if let Some(exception) = result.get("exceptionDetails") {
                        let text = exception["exception"]["description"]
                            .as_str()
                            .or(exception["text"].as_str())
                            .unwrap_or("a script error");
                        let first_line = text.lines().next().unwrap_or(text).trim_start_matches("Error: ");
                        return Err(ActionError::new(format!("On the page: {first_line}")));
                    }
                    return Ok(result["result"]["value"].clone());
                }
                Err(e) if attempt == 0 && e.is_lost_context() => self.world = None,
                Err(e) => return Err(e),
            }
        }
        Err(ActionError::new(
            "The page kept navigating away while it was being read",
        ))
    }

    async fn make_world(&mut self) -> Result<i64, ActionError> {
        let world = self
            .call(
                "Page.createIsolatedWorld",
                json!({"frameId": self.target_id, "worldName": "cdpgate-actions"}),
            )
            .await?;
        let context = world["executionContextId"]
            .as_i64()
            .ok_or_else(|| ActionError::new("The browser did not make a script context for the page"))?;
        let installed = self
            .call(
                "Runtime.evaluate",
                json!({"expression": format!("globalThis.__cdpgate = {HELPERS}; true"), "contextId": context}),
            )
            .await?;
        if installed.get("exceptionDetails").is_some() {
            return Err(ActionError::new("The page helpers could not be installed"));
        }
        self.world = Some(context);
        Ok(context)
    }

    /// Puts `files` (paths on the broker's disk) on the file input `selector` stands for;
    /// answers false if there is none.
    pub(crate) async fn set_input_files(&mut self, selector: &str, files: &[String]) -> Result<bool, ActionError> {
        // The element itself, not its value: evaluated once more for a handle.
        self.helper("fileInput", &[json!(selector)]).await?;
        let context = self
            .world
            .ok_or_else(|| ActionError::new("The page helpers are gone"))?;
        let handle = self
            .call(
                "Runtime.evaluate",
                json!({"expression": format!("__cdpgate.fileInput({})", json!(selector)), "contextId": context}),
            )
            .await?;
        let Some(object) = handle["result"]["objectId"].as_str() else {
            return Ok(false);
        };
        self.call("DOM.setFileInputFiles", json!({"files": files, "objectId": object}))
            .await?;
        let _ = self.call("Runtime.releaseObject", json!({"objectId": object})).await;
        Ok(true)
    }

    /// Calls a helper of `page.js` with JSON arguments.
    pub(crate) async fn helper(&mut self, name: &str, args: &[Value]) -> Result<Value, ActionError> {
        let args: Vec<String> = args.iter().map(Value::to_string).collect();
        self.eval(&format!("__cdpgate.{name}({})", args.join(", "))).await
    }

    /// Waits until the element `spec` names is there and ready for `need`, or says why not.
    pub(crate) async fn locate(
        &mut self,
        spec: &Value,
        need: Need,
        described: &str,
        timeout: Duration,
    ) -> Result<Found, ActionError> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = match self.helper("locate", &[spec.clone(), json!(need.as_str())]).await {
                Ok(a) => a,
                // A syntax error in a selector will not go away by waiting.
                Err(e) if e.0.contains("not a valid CSS selector") => return Err(e),
                Err(e) if e.is_lost_context() || e.0.starts_with("On the page") => json!({"state": "missing"}),
                Err(e) => return Err(e),
            };
            if answer["state"] == "ready" {
                return Ok(Found {
                    selector: answer["selector"].as_str().unwrap_or_default().to_owned(),
                    fingerprint: answer["fingerprint"].as_str().unwrap_or_default().to_owned(),
                    x: answer["x"].as_f64().unwrap_or(0.0),
                    y: answer["y"].as_f64().unwrap_or(0.0),
                });
            }
            if Instant::now() >= deadline {
                return Err(not_ready(&answer, described, timeout));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls a helper until it answers `true`.
    pub(crate) async fn wait_until(
        &mut self,
        helper: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Result<bool, ActionError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.helper(helper, args).await {
                Ok(Value::Bool(true)) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.is_lost_context() || e.0.starts_with("On the page") => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(crate) fn watch(&self) -> broadcast::Receiver<Arc<Value>> {
        self.conn.client.subscribe()
    }

    pub(crate) async fn click(&self, x: f64, y: f64, count: u8) -> Result<(), ActionError> {
        self.mouse("mouseMoved", x, y, 0, json!({})).await?;
        for n in 1..=count.max(1) {
            self.mouse("mousePressed", x, y, n, json!({"button": "left", "buttons": 1}))
                .await?;
            self.mouse("mouseReleased", x, y, n, json!({"button": "left", "buttons": 0}))
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn hover(&self, x: f64, y: f64) -> Result<(), ActionError> {
        self.mouse("mouseMoved", x, y, 0, json!({})).await
    }

    pub(crate) async fn wheel(&mut self, delta_y: f64) -> Result<(), ActionError> {
        let size = self.eval("[innerWidth, innerHeight]").await?;
        let (w, h) = (size[0].as_f64().unwrap_or(800.0), size[1].as_f64().unwrap_or(600.0));
        self.mouse(
            "mouseWheel",
            w / 2.0,
            h / 2.0,
            0,
            json!({"deltaX": 0, "deltaY": delta_y}),
        )
        .await
    }

    async fn mouse(&self, kind: &str, x: f64, y: f64, clicks: u8, extra: Value) -> Result<(), ActionError> {
        let mut params = json!({"type": kind, "x": x, "y": y, "clickCount": clicks});
        if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
            p.extend(extra);
        }
        self.call("Input.dispatchMouseEvent", params).await.map(|_| ())
    }

    /// Types `text` where the caret is, as one input (the way a paste or an IME does).
    pub(crate) async fn insert_text(&self, text: &str) -> Result<(), ActionError> {
        self.call("Input.insertText", json!({"text": text})).await.map(|_| ())
    }

    pub(crate) async fn press(&self, chord: &Chord) -> Result<(), ActionError> {
        for m in &chord.modifiers {
            self.key_event("rawKeyDown", m, chord.mask, false).await?;
        }
        let typed = chord.key.text.is_some() && chord.mask & !8 == 0;
        self.key_event(
            if typed { "keyDown" } else { "rawKeyDown" },
            &chord.key,
            chord.mask,
            typed,
        )
        .await?;
        self.key_event("keyUp", &chord.key, chord.mask, false).await?;
        for m in chord.modifiers.iter().rev() {
            self.key_event("keyUp", m, 0, false).await?;
        }
        Ok(())
    }

    async fn key_event(&self, kind: &str, key: &super::keys::Key, mask: u8, typed: bool) -> Result<(), ActionError> {
        let mut params = json!({
            "type": kind,
            "key": key.key,
            "code": key.code,
            "windowsVirtualKeyCode": key.key_code,
            "modifiers": mask,
        });
        if typed && let Some(text) = &key.text {
            let text = if mask & 8 != 0 {
                text.to_uppercase()
            } else {
                text.clone()
            };
            params["text"] = json!(text);
            params["unmodifiedText"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", params).await.map(|_| ())
    }

    /// Opens `url` and waits for it to load (at most `timeout`).
    pub(crate) async fn navigate(&mut self, url: &str, timeout: Duration) -> Result<(), ActionError> {
        let mut events = self.watch();
        let answer = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = answer["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(ActionError::new(format!("Could not open {url}: {error}")));
        }
        self.world = None;
        if answer.get("loaderId").is_none() {
            return Ok(()); // A move within the document: nothing loads.
        }
        self.await_load(&mut events, timeout).await
    }

    pub(crate) async fn history(&mut self, method: &str, timeout: Duration) -> Result<(), ActionError> {
        let mut events = self.watch();
        let expression = match method {
            "back" => "history.back()",
            "forward" => "history.forward()",
            _ => "location.reload()",
        };
        self.eval(expression).await?;
        self.settle(&mut events, timeout).await.map(|_| ())
    }

    async fn await_load(
        &mut self,
        events: &mut broadcast::Receiver<Arc<Value>>,
        timeout: Duration,
    ) -> Result<(), ActionError> {
        let session = self.session.clone();
        let frame = self.target_id.clone();
        // Loaded; or it moved within the document, or stopped without loading (a 204, a
        // download): nothing more is coming.
        let loaded = tokio::time::timeout(
            timeout,
            next_event(events, |e| {
                e["sessionId"] == session.as_str()
                    && (e["method"] == "Page.loadEventFired"
                        || (matches!(
                            e["method"].as_str(),
                            Some("Page.navigatedWithinDocument" | "Page.frameStoppedLoading")
                        ) && e["params"]["frameId"] == frame.as_str()))
            }),
        )
        .await;
        self.world = None;
        if loaded.is_ok() {
            return Ok(());
        }
        // Slow images or scripts hold `load` back; a parsed document is good enough.
        match self.eval("document.readyState").await? {
            Value::String(s) if s != "loading" => Ok(()),
            _ => Err(ActionError::new(format!(
                "The page did not finish loading within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// After an input: waits for a navigation it started to finish, and follows a tab it
    /// opened. Answers the URL the page moved to, if it moved.
    pub(crate) async fn settle(
        &mut self,
        events: &mut broadcast::Receiver<Arc<Value>>,
        timeout: Duration,
    ) -> Result<Option<String>, ActionError> {
        // One round trip through the page's main thread: by its answer the input's handlers
        // have run, and a navigation they asked for is on its way to being reported.
        let _ = self.eval("0").await;
        let session = self.session.clone();
        let target = self.target_id.clone();
        let started = tokio::time::timeout(
            NAVIGATION_START,
            next_event(events, |e| {
                let method = e["method"].as_str().unwrap_or("");
                (e["sessionId"] == session.as_str()
                    && matches!(method, "Page.frameStartedLoading" | "Page.frameRequestedNavigation")
                    && e["params"]["frameId"] == target.as_str())
                    || (method == "Target.targetCreated"
                        && e["params"]["targetInfo"]["openerId"] == target.as_str()
                        && e["params"]["targetInfo"]["type"] == "page")
            }),
        )
        .await;
        let Ok(Some(event)) = started else {
            return Ok(None);
        };
        if event["method"] == "Target.targetCreated" {
            let new_tab = event["params"]["targetInfo"]["targetId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.switch_to(&new_tab).await?;
            let deadline = Instant::now() + timeout;
            while self.eval("document.readyState").await.ok() != Some(json!("complete")) && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        } else {
            self.await_load(events, timeout).await?;
        }
        let url = self.eval("location.href").await?;
        Ok(url.as_str().map(str::to_owned))
    }

    pub(crate) async fn screenshot(&mut self, full_page: bool) -> Result<String, ActionError> {
        let mut params = json!({"format": "png"});
        if full_page {
            let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
            let size = &metrics["cssContentSize"];
            params["captureBeyondViewport"] = json!(true);
            params["clip"] = json!({
                "x": 0, "y": 0, "scale": 1,
                "width": size["width"].as_f64().unwrap_or(800.0).min(16_384.0),
                "height": size["height"].as_f64().unwrap_or(600.0).min(16_384.0),
            });
        }
        let shot = self.call("Page.captureScreenshot", params).await?;
        shot["data"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ActionError::new("The browser took no screenshot"))
    }
}

async fn next_event(
    events: &mut broadcast::Receiver<Arc<Value>>,
    wanted: impl Fn(&Value) -> bool,
) -> Option<Arc<Value>> {
    loop {
        match events.recv().await {
            Ok(e) if wanted(&e) => return Some(e),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Why an element was not ready, in words.
fn not_ready(answer: &Value, described: &str, timeout: Duration) -> ActionError {
    let secs = timeout.as_secs_f64();
    let element = answer["element"].as_str().unwrap_or("it");
    ActionError::new(match answer["state"].as_str().unwrap_or("missing") {
        "hidden" => format!("Found {described} ({element}) but it stayed hidden for {secs} s"),
        "disabled" => format!("Found {described} ({element}) but it stayed disabled for {secs} s"),
        "covered" => format!(
            "Found {described} ({element}) but {} covered it for {secs} s",
            answer["by"].as_str().unwrap_or("another element")
        ),
        "changed" => format!("{described} is no longer the element it was when this action was cached"),
        _ => format!("No element matching {described} appeared within {secs} s"),
    })
}
