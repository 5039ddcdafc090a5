//! The session's first tab, driven for an agent on the broker's own CDP connection through
//! the session's upstream (a context session's filter applies to every command): navigate,
//! a snapshot with element references, actions on those references with real input
//! events, a screenshot, and the main text as markdown. Scripts run in an isolated world
//! of the broker's and references are Chrome's ids of DOM nodes: the page sees only the
//! input, nothing written into it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::error::PageError;
use crate::action::keys;
use crate::browser::cdp::{CallError, Client};
use crate::browser::egress::Egress;
use crate::browser::upstream::Upstream;

const HELPERS: &str = include_str!("page.js");
/// The one-call renders' reader (`main`): the same main text for both doors.
const READER: &str = include_str!("../render/page.js");
/// Largest snapshot, in characters (an agent's context is not unbounded).
const MAX_SNAPSHOT_CHARS: usize = 60_000;
/// Most elements a snapshot refers to: an outline of `MAX_SNAPSHOT_CHARS` names fewer.
const MAX_SNAPSHOT_ELEMENTS: usize = MAX_SNAPSHOT_CHARS / 4;
/// Largest HTML read for markdown, in characters.
const MAX_HTML_CHARS: usize = 4 * 1024 * 1024;
/// The object group of the references a snapshot resolves, released after it.
const SNAPSHOT_GROUP: &str = "cdpgate-snapshot";
/// How long an action's page has to start a navigation it caused (a form submitted).
const NAVIGATION_START: Duration = Duration::from_millis(400);

pub struct Page {
    client: Arc<Client>,
    session: String,
    target: String,
    world: Option<i64>,
    deadline: Instant,
}

fn call_error(method: &str, e: CallError) -> PageError {
    match e {
        CallError::Refused(m) => PageError::Browser(format!("{method}: {m}")),
        CallError::Timeout => PageError::Timeout(format!("{method} was not answered in time")),
        CallError::Lost => PageError::Browser("the connection to the browser was lost".into()),
    }
}

impl Page {
    /// Connects to the session's browser and attaches to its first tab (opening one if it
    /// has none). Every command must be answered within `limit`.
    pub async fn open(
        upstream: &Upstream,
        egress: &Egress,
        config: WebSocketConfig,
        limit: Duration,
    ) -> Result<Page, PageError> {
        let deadline = Instant::now() + limit;
        let (stream, early) = upstream.connect_raw(&upstream.browser_path, egress, limit).await?;
        let ws = WebSocketStream::from_partially_read(stream, early, Role::Client, Some(config)).await;
        let mut page = Page {
            client: Arc::new(Client::start(ws)),
            session: String::new(),
            target: String::new(),
            world: None,
            deadline,
        };
        let targets = page.browser_call("Target.getTargets", json!({})).await?;
        let first = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned);
        page.target = match first {
            Some(t) => t,
            None => {
                let made = page
                    .browser_call("Target.createTarget", json!({"url": "about:blank"}))
                    .await?;
                made["targetId"].as_str().unwrap_or_default().to_owned()
            }
        };
        let attached = page
            .browser_call(
                "Target.attachToTarget",
                json!({"targetId": page.target, "flatten": true}),
            )
            .await?;
        page.session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
        page.call("Page.enable", json!({})).await?;
        Ok(page)
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    async fn browser_call(&self, method: &str, params: Value) -> Result<Value, PageError> {
        self.client
            .call(None, method, params, self.remaining())
            .await
            .map_err(|e| call_error(method, e))
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, PageError> {
        self.client
            .call(Some(&self.session), method, params, self.remaining())
            .await
            .map_err(|e| call_error(method, e))
    }

    /// Goes to `url` and, with `wait`, until its load event.
    pub async fn navigate(&mut self, url: &str, wait: bool) -> Result<(String, String), PageError> {
        let mut events = self.client.subscribe();
        let went = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(why) = went["errorText"].as_str().filter(|t| !t.is_empty()) {
            return Err(PageError::Navigation(format!("{url}: {why}")));
        }
        self.world = None;
        if wait {
            let session = self.session.clone();
            self.until(&mut events, |e| {
                e["sessionId"] == session.as_str() && e["method"] == "Page.loadEventFired"
            })
            .await?;
        }
        let at = self.eval("[location.href, document.title]").await?;
        Ok((
            at[0].as_str().unwrap_or_default().to_owned(),
            at[1].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// Waits for the first event that `matches`, until the deadline.
    async fn until(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<Arc<Value>>,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<(), PageError> {
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(e) if matches(&e) => return Ok(()),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Err(PageError::Browser("the connection to the browser was lost".into())),
                }
            }
        };
        tokio::time::timeout(self.remaining(), wait)
            .await
            .map_err(|_| PageError::Timeout("the page did not finish loading in time".into()))?
    }

    /// Runs an input step; if it started a navigation (a link, a form), waits for the new
    /// document's load event, so that the next snapshot sees the page it led to.
    async fn then_settle<F, T>(&mut self, step: F) -> Result<T, PageError>
    where
        F: AsyncFnOnce(&mut Page) -> Result<T, PageError>,
    {
        let mut events = self.client.subscribe();
        let done = step(self).await?;
        let session = self.session.clone();
        let started = tokio::time::timeout(NAVIGATION_START, async {
            loop {
                match events.recv().await {
                    Ok(e) if e["sessionId"] == session.as_str() && e["method"] == "Page.frameStartedLoading" => {
                        return true;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if started {
            self.world = None;
            // Loaded, or stopped without a document (a download, a navigation refused).
            self.until(&mut events, |e| {
                e["sessionId"] == session.as_str()
                    && (e["method"] == "Page.loadEventFired" || e["method"] == "Page.frameStoppedLoading")
            })
            .await?;
        }
        Ok(done)
    }

    /// The broker's world in the current document (made on first use after a navigation).
    async fn world(&mut self) -> Result<i64, PageError> {
        if let Some(id) = self.world {
            return Ok(id);
        }
        let world = self
            .call(
                "Page.createIsolatedWorld",
                json!({"frameId": self.target, "worldName": "cdpgate-mcp"}),
            )
            .await?;
        let id = world["executionContextId"]
            .as_i64()
            .ok_or_else(|| PageError::Browser("no script context for the page".into()))?;
        self.world = Some(id);
        Ok(id)
    }

    /// Runs a `Runtime` command in the broker's world of the current document (`context`
    /// fills in the world's id), again in a new world if the document was replaced.
    async fn in_world(
        &mut self,
        method: &str,
        params: impl Fn(i64) -> Value,
        by_value: bool,
    ) -> Result<Value, PageError> {
        for attempt in 0..3 {
            let context = self.world().await?;
            let reply = self
                .client
                .call(Some(&self.session), method, params(context), self.remaining())
                .await;
            match reply {
                Ok(result) => {
                    if let Some(e) = result.get("exceptionDetails") {
                        let text = e["exception"]["description"].as_str().or(e["text"].as_str());
                        return Err(PageError::Browser(format!(
                            "a script of the broker failed: {}",
                            text.unwrap_or("unknown")
                        )));
                    }
                    return Ok(if by_value {
                        result["result"]["value"].clone()
                    } else {
                        result["result"].clone()
                    });
                }
                // The document the world belonged to was replaced: make one in the new.
                Err(CallError::Refused(m)) if attempt < 2 && m.contains("context") => self.world = None,
                Err(e) => return Err(call_error(method, e)),
            }
        }
        Err(PageError::Browser("the page kept navigating away".into()))
    }

    /// Evaluates `expression` in the broker's world of the current document.
    async fn eval(&mut self, expression: &str) -> Result<Value, PageError> {
        self.in_world(
            "Runtime.evaluate",
            |context| json!({"expression": expression, "contextId": context, "returnByValue": true}),
            true,
        )
        .await
    }

    async fn helper(&mut self, name: &str, args: &[Value]) -> Result<Value, PageError> {
        let args: Vec<String> = args.iter().map(Value::to_string).collect();
        self.eval(&format!("({HELPERS}).{name}({})", args.join(", "))).await
    }

    /// Runs the helper `name` on the element `reference` names, in the broker's world.
    async fn on_element(&mut self, reference: &str, name: &str, args: &[Value]) -> Result<Value, PageError> {
        let node: u64 = reference
            .strip_prefix('e')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| missing(reference))?;
        let mut object = None;
        for _ in 0..2 {
            let context = self.world().await?;
            let resolved = self
                .client
                .call(
                    Some(&self.session),
                    "DOM.resolveNode",
                    json!({"backendNodeId": node, "executionContextId": context}),
                    self.remaining(),
                )
                .await;
            match resolved {
                Ok(r) => {
                    object = r["object"]["objectId"].as_str().map(str::to_owned);
                    break;
                }
                // No such node (gone with its document, or never one): a new snapshot.
                Err(CallError::Refused(m)) if !m.contains("context") => return Err(missing(reference)),
                Err(CallError::Refused(_)) => self.world = None,
                Err(e) => return Err(call_error("DOM.resolveNode", e)),
            }
        }
        let object = object.ok_or_else(|| missing(reference))?;
        // Chrome resolves any node id its renderer knows, in any of its documents (another
        // tab of the session, a frame): only an element of this tab's document is acted on.
        let function = format!(
            "function (...args) {{ if (!(this instanceof Element) || this.ownerDocument !== document || !this.isConnected) \
             return {{ elsewhere: true }}; return ({HELPERS}).{name}(this, ...args); }}"
        );
        let arguments: Vec<Value> = args.iter().map(|a| json!({ "value": a })).collect();
        let result = self
            .in_world(
                "Runtime.callFunctionOn",
                |_| {
                    json!({"objectId": object, "functionDeclaration": function,
                        "arguments": arguments, "returnByValue": true})
                },
                true,
            )
            .await;
        let _ = self.call("Runtime.releaseObject", json!({ "objectId": object })).await;
        match result {
            Ok(v) if v["elsewhere"] == true => Err(missing(reference)),
            other => other,
        }
    }

    /// The page as an outline with `ref=eN` references: `{url, title, text, refs}`, `refs`
    /// the node ids the text names.
    pub async fn snapshot(&mut self) -> Result<Value, PageError> {
        let outline = self.helper("snapshot", &[json!(MAX_SNAPSHOT_CHARS)]).await?;
        let ids = self.snapshot_node_ids().await?;
        let mut refs = Vec::new();
        let text: Vec<String> = outline["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|line| match line {
                Value::Array(parts) => {
                    // Read with `get`: a user's own browser may send any shape.
                    let part = |i: usize| parts.get(i).unwrap_or(&Value::Null);
                    let id = part(1).as_u64().and_then(|i| ids.get(i as usize)).copied().flatten();
                    refs.extend(id);
                    let reference = id.map(|id| format!(" [ref=e{id}]")).unwrap_or_default();
                    format!(
                        "{}{reference}{}",
                        part(0).as_str().unwrap_or_default(),
                        part(2).as_str().unwrap_or_default()
                    )
                }
                other => other.as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        Ok(json!({"url": outline["url"], "title": outline["title"], "text": text.join("\n"), "refs": refs}))
    }

    /// Chrome's node ids of the elements the last snapshot kept, in its order (`None` for
    /// one Chrome would not describe).
    async fn snapshot_node_ids(&mut self) -> Result<Vec<Option<u64>>, PageError> {
        let list = self
            .in_world(
                "Runtime.evaluate",
                |context| {
                    json!({"expression": "globalThis.snapshotElements", "contextId": context,
                        "objectGroup": SNAPSHOT_GROUP})
                },
                false,
            )
            .await?;
        let Some(list) = list["objectId"].as_str() else {
            return Ok(Vec::new());
        };
        let properties = self
            .call(
                "Runtime.getProperties",
                json!({"objectId": list, "ownProperties": true}),
            )
            .await?;
        let mut objects: Vec<(usize, String)> = properties["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let index = p["name"].as_str()?.parse().ok()?;
                Some((index, p["value"]["objectId"].as_str()?.to_owned()))
            })
            .collect();
        objects.sort();
        // The list's indices are 0 to its length: a larger one (a user's own browser may
        // name any) would size the table below, and is dropped, as is anything past the
        // most elements a snapshot's outline can name.
        let listed = objects.len();
        objects.retain(|(index, _)| *index < listed.min(MAX_SNAPSHOT_ELEMENTS));
        // One command per element, all in flight at once.
        let described = futures_util::future::join_all(objects.iter().map(|(_, object)| {
            self.client.call(
                Some(&self.session),
                "DOM.describeNode",
                json!({ "objectId": object }),
                self.remaining(),
            )
        }))
        .await;
        let mut ids = vec![None; objects.last().map_or(0, |(i, _)| i + 1)];
        for ((index, _), node) in objects.iter().zip(described) {
            ids[*index] = node.ok().and_then(|n| n["node"]["backendNodeId"].as_u64());
        }
        let _ = self
            .call("Runtime.releaseObjectGroup", json!({ "objectGroup": SNAPSHOT_GROUP }))
            .await;
        Ok(ids)
    }

    /// The centre of the element `reference` names, in view.
    async fn locate(&mut self, reference: &str) -> Result<(f64, f64), PageError> {
        let at = self.on_element(reference, "locate", &[]).await?;
        if at["hidden"] == true {
            return Err(PageError::Client(format!("the element {reference} has no visible box")));
        }
        if at["disabled"] == true {
            return Err(PageError::Client(format!("the element {reference} is disabled")));
        }
        Ok((at["x"].as_f64().unwrap_or(0.0), at["y"].as_f64().unwrap_or(0.0)))
    }

    /// Clicks the element `reference` names, with the mouse, as a person would.
    pub async fn click(&mut self, reference: &str) -> Result<(), PageError> {
        let (x, y) = self.locate(reference).await?;
        self.then_settle(async |page: &mut Page| {
            for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
                page.call(
                    "Input.dispatchMouseEvent",
                    json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// Types `text` into the element `reference` names (emptied first with `clear`).
    pub async fn type_text(&mut self, reference: &str, text: &str, clear: bool) -> Result<(), PageError> {
        let focused = self.on_element(reference, "focus", &[json!(clear)]).await?;
        if focused["unfocusable"] == true {
            return Err(PageError::Client(format!(
                "the element {reference} does not take text (it cannot be focused)"
            )));
        }
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Selects the options with these values or labels in the `<select>` `reference` names.
    pub async fn select(&mut self, reference: &str, values: &[String]) -> Result<Vec<String>, PageError> {
        let picked = self.on_element(reference, "select", &[json!(values)]).await?;
        if picked["notSelect"] == true {
            return Err(PageError::Client(format!("the element {reference} is not a <select>")));
        }
        if let Some(options) = picked["none"].as_array() {
            let names: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
            return Err(PageError::Client(format!(
                "no option of {reference} has that value or label; it has: {}",
                names.join(", ")
            )));
        }
        Ok(picked["selected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Presses a key or chord (`Enter`, `Control+A`) in the focused element.
    pub async fn press(&mut self, spec: &str) -> Result<(), PageError> {
        let chord = keys::parse(spec).ok_or_else(|| {
            PageError::Client(format!(
                "unknown key {spec:?}: name one like Enter, Tab, Escape, ArrowDown, a or Control+A"
            ))
        })?;
        self.then_settle(async |page: &mut Page| {
            let mut mask = 0u8;
            for m in &chord.modifiers {
                page.key_event("rawKeyDown", m, mask, false).await?;
                mask |= modifier_bit(&m.key);
            }
            page.key_event("keyDown", &chord.key, chord.mask, true).await?;
            page.key_event("keyUp", &chord.key, chord.mask, false).await?;
            for m in chord.modifiers.iter().rev() {
                mask &= !modifier_bit(&m.key);
                page.key_event("keyUp", m, mask, false).await?;
            }
            Ok(())
        })
        .await
    }

    async fn key_event(&self, kind: &str, key: &keys::Key, modifiers: u8, with_text: bool) -> Result<(), PageError> {
        let mut params = json!({
            "type": kind,
            "key": key.key,
            "code": key.code,
            "windowsVirtualKeyCode": key.key_code,
            "modifiers": modifiers,
        });
        // Text only without Control/Alt/Meta, or a chord would type its letter.
        if with_text
            && modifiers & 0b1011 == 0
            && let Some(text) = &key.text
        {
            params["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", params).await.map(|_| ())
    }

    /// Scrolls the element `reference` names into view, or the page by `dy` pixels.
    pub async fn scroll(&mut self, reference: Option<&str>, dy: f64) -> Result<(f64, f64), PageError> {
        let at = match reference {
            Some(r) => self.on_element(r, "scroll", &[json!(dy)]).await?,
            None => self.helper("scroll", &[Value::Null, json!(dy)]).await?,
        };
        Ok((at["x"].as_f64().unwrap_or(0.0), at["y"].as_f64().unwrap_or(0.0)))
    }

    /// The viewport as a PNG, base64-encoded as Chrome sends it.
    pub async fn screenshot(&mut self) -> Result<String, PageError> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await?;
        shot["data"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| PageError::Browser("the browser sent no image".into()))
    }

    /// The page's main text as markdown (the one-call markdown's reader), with its title.
    pub async fn markdown(&mut self) -> Result<String, PageError> {
        let read = self.eval(&format!("({READER}).main({MAX_HTML_CHARS})")).await?;
        if read["over"].is_number() {
            return Err(PageError::Client(format!(
                "the page's main text is over {MAX_HTML_CHARS} characters of HTML"
            )));
        }
        let html = read["html"].as_str().unwrap_or_default().to_owned();
        let title = read["title"].as_str().unwrap_or_default();
        // Counted again in bytes: the count above is the browser's word (UTF-16 characters).
        crate::markdown::from_html(html, title, 3 * MAX_HTML_CHARS)
            .await
            .map_err(PageError::Browser)
    }
}

/// The answer to a reference that names no element of the latest snapshot's page.
pub fn missing(reference: &str) -> PageError {
    PageError::Client(format!(
        "no element has the reference {reference:?} on this page: take a new snapshot"
    ))
}

/// CDP's modifier bits: Alt 1, Control 2, Meta 4, Shift 8.
fn modifier_bit(key: &str) -> u8 {
    match key {
        "Alt" => 1,
        "Control" => 2,
        "Meta" => 4,
        "Shift" => 8,
        _ => 0,
    }
}
