//! A session's browser identity: user agent (with client hints to match), locale and time
//! zone, on every page, frame and worker of its browser; by default the browser's own
//! user agent and client hints without their automation tells ([`super::stealth`]). A warm browser cannot change its
//! launch flags, so the broker keeps a DevTools connection of its own for the session's
//! life: auto-attached to every target (new ones wait for it before they run a line of
//! script), it sets the overrides on each and lets it go. Overrides last as long as the
//! connection that set them, which is why the connection stays until the session ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::ad_blocker::AdBlocker;
use super::blocking::{self, Blocking};
use super::cdp::CdpError;
use super::challenges::Challenges;
use super::egress::Egress;
use super::fingerprint;
use super::forward::Traffic;
use super::page_script;
use super::stealth::{self, Disguise};
use super::upstream::{Upstream, UpstreamStream};
use crate::capture::SessionCapture;
use crate::capture::logs::ErrorSeen;
use crate::events::{EventType, SessionEvents};
use crate::metrics::Metrics;
use crate::values::Fingerprint;

const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session asked its pages to look like; every part optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub user_agent: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    /// A whole machine to pass for (a desktop preset or a device); its user agent and
    /// client hints win over the browser's own.
    pub fingerprint: Option<Fingerprint>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.user_agent.is_none() && self.locale.is_none() && self.timezone.is_none() && self.fingerprint.is_none()
    }
}

/// Checks a user agent: printable ASCII (it becomes a header), 1 to 1024 characters.
pub(crate) fn valid_user_agent(ua: &str) -> bool {
    (1..=1024).contains(&ua.len()) && ua.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Checks a BCP 47 language tag's shape (`en`, `en-US`, `zh-Hant-TW`).
pub(crate) fn valid_locale(locale: &str) -> bool {
    let mut parts = locale.split('-');
    let language = parts.next().unwrap_or("");
    locale.len() <= 35
        && (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Checks an IANA time zone name against the system's zone database
/// (`/usr/share/zoneinfo`); where there is none, against the shape of a name only.
pub(crate) fn valid_timezone(name: &str) -> bool {
    let shaped = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !shaped {
        return false;
    }
    let database = std::path::Path::new("/usr/share/zoneinfo");
    if !database.is_dir() {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(database.join(name))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == b"TZif")
}

/// Client hints that agree with a Chrome user agent string (none for other browsers'
/// strings: Chrome then sends no `Sec-CH-UA` that would contradict it).
fn user_agent_metadata(ua: &str) -> Option<Value> {
    let version = ua
        .split_whitespace()
        .find_map(|token| token.strip_prefix("Chrome/"))?
        .to_owned();
    let major = version.split('.').next().unwrap_or("").to_owned();
    let platform = stealth::platform(ua);
    let architecture = if ua.contains("arm") || ua.contains("aarch64") {
        "arm"
    } else {
        "x86"
    };
    let brands = |v: &str| {
        json!([
            { "brand": "Chromium", "version": v },
            { "brand": "Google Chrome", "version": v },
            { "brand": "Not_A Brand", "version": "99" },
        ])
    };
    Some(json!({
        "brands": brands(&major),
        "fullVersionList": brands(&version),
        "fullVersion": version,
        "platform": platform,
        "platformVersion": "",
        "architecture": architecture,
        "model": "",
        "mobile": ua.contains("Mobile"),
    }))
}

type Socket = tokio_tungstenite::WebSocketStream<UpstreamStream>;

/// What the keeper enforces and watches on every target beside the identity: the
/// session's blocking ([`blocking`]), the challenges its pages show ([`super::challenges`]),
/// the dialogs they open, and what the session asked to capture (console, network).
pub(crate) struct Watch {
    pub blocking: Blocking,
    /// The operator's ad lists, for a `blocking` with `ads`.
    pub ads: Option<Arc<AdBlocker>>,
    /// Where blocked requests are counted.
    pub traffic: Option<Arc<Traffic>>,
    pub challenges: Arc<Challenges>,
    pub metrics: Arc<Metrics>,
    /// Where dialogs are told.
    pub events: Option<Arc<SessionEvents>>,
    pub capture: Option<Arc<SessionCapture>>,
}

impl Watch {
    /// Fails a request the blocking paused and blocks, and counts it; lets the others go.
    async fn paused(&self, keeper: &mut Keeper, ws: &mut Socket, event: &Value) -> Result<(), CdpError> {
        let params = &event["params"];
        // Paused on the browser target (no session) or on one of the context's targets.
        let on = event["sessionId"].as_str();
        if !self.blocking.blocks(params, self.ads.as_deref()) {
            if let Some(passage) = blocking::passage(params) {
                keeper.send(ws, on, "Fetch.continueRequest", passage).await?;
            }
            return Ok(());
        }
        let Some(refusal) = blocking::refusal(params) else {
            return Ok(());
        };
        keeper.send(ws, on, "Fetch.failRequest", refusal).await?;
        if let Some(traffic) = &self.traffic {
            traffic.blocked_request();
        }
        self.metrics.requests_blocked.inc();
        Ok(())
    }

    /// Tells a dialog a page opened; answering it is the client's.
    fn dialog(&self, event: &Value, target_id: &str) {
        let Some(events) = &self.events else { return };
        let params = &event["params"];
        let text = |name: &str, max: usize| crate::capture::cut_text(params[name].as_str().unwrap_or(""), max);
        events.emit(
            EventType::Dialog,
            json!({
                "target_id": target_id,
                "type": text("type", 32),
                "message": text("message", 4096),
                "url": text("url", 2048),
            }),
        );
    }

    /// Records a challenge shown by a frame that navigated, and tells it.
    fn navigated(&self, event: &Value, target_id: &str) {
        let frame = &event["params"]["frame"];
        let (id, url) = (frame["id"].as_str().unwrap_or(""), frame["url"].as_str().unwrap_or(""));
        if let Some(kind) = self.challenges.seen(id, url) {
            self.metrics.record_challenge(kind);
            tracing::info!(kind, "a page shows a challenge: a person can pass it in the live view");
            if let Some(events) = &self.events {
                let url = crate::capture::cut_text(url, 2048);
                events.emit(
                    EventType::ChallengeSeen,
                    json!({ "target_id": target_id, "kind": kind, "url": url }),
                );
            }
        }
    }

    /// Tells a console error or an uncaught exception a page showed (the first ones).
    fn error(&self, seen: ErrorSeen) {
        let Some(events) = &self.events else { return };
        let kind = if seen.uncaught {
            EventType::PageError
        } else {
            EventType::ConsoleError
        };
        let entry = seen.entry;
        events.emit(
            kind,
            json!({
                "target_id": entry.target_id,
                "text": entry.text,
                "url": entry.url,
                "line": entry.line,
                "column": entry.column,
                "count": seen.count,
            }),
        );
    }
}

/// Puts `identity` on every target of the session's browser at `upstream` (those open now
/// before this answers, later ones before they run) and keeps it there until `until`
/// fires; what `identity` leaves unset is the browser's own, without automation tells. A
/// context session's upstream is filtered: only its own context's targets.
pub(crate) async fn keep(
    upstream: &Upstream,
    egress: &Egress,
    identity: Identity,
    watch: Watch,
    until: CancellationToken,
) -> Result<(), CdpError> {
    let (stream, early) = upstream
        .connect_raw(&upstream.browser_path, egress, SETUP_TIMEOUT)
        .await
        .map_err(|e| CdpError::Http(e.to_string()))?;
    let mut ws = tokio_tungstenite::WebSocketStream::from_partially_read(stream, early, Role::Client, None).await;
    let mut keeper = Keeper {
        identity,
        whole_browser: upstream.scope.is_none(),
        watch: Arc::new(watch),
        default_user_agent: String::new(),
        disguise: None,
        next_id: 0,
        targets: HashMap::new(),
        bodies: HashMap::new(),
    };
    tokio::time::timeout(SETUP_TIMEOUT, keeper.setup(&mut ws))
        .await
        .map_err(|_| CdpError::Timeout)??;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if keeper.on_message(&mut ws, &text).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = until.cancelled() => break,
            }
        }
        if let Some(capture) = &keeper.watch.capture {
            capture.finish();
        }
    });
    Ok(())
}

struct Keeper {
    identity: Identity,
    /// The connection reaches the whole browser (a process session's), not a context's
    /// targets through its filter.
    whole_browser: bool,
    watch: Arc<Watch>,
    /// The browser's own user agent, where it is not Chromium's (no disguise).
    default_user_agent: String,
    /// How the browser passes for a person's Chromium (`Browser.getVersion`).
    disguise: Option<Disguise>,
    next_id: u64,
    /// CDP session → the target it reaches (dialogs and captured entries name it).
    targets: HashMap<String, String>,
    /// `Network.getResponseBody` calls in flight → (CDP session, request id).
    bodies: HashMap<u64, (String, String)>,
}

impl Keeper {
    async fn send(
        &mut self,
        ws: &mut Socket,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<u64, CdpError> {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        ws.send(Message::text(message.to_string()))
            .await
            .map_err(|e| CdpError::Http(e.to_string()))?;
        Ok(self.next_id)
    }

    /// Reads the default user agent, then auto-attaches to every target; answers once the
    /// targets open now have their overrides.
    async fn setup(&mut self, ws: &mut Socket) -> Result<(), CdpError> {
        let version = self.send(ws, None, "Browser.getVersion", json!({})).await?;
        let mut attach = None;
        let mut interception = None;
        // Existing pages are announced before the reply to `setAutoAttach`; one round trip
        // on each after its overrides makes sure they have landed.
        let mut landing: Vec<u64> = Vec::new();
        let mut attached = false;
        while let Some(message) = ws.next().await {
            let Message::Text(text) = message.map_err(|e| CdpError::Http(e.to_string()))? else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).map_err(|e| CdpError::Protocol(e.to_string()))?;
            let id = reply["id"].as_u64();
            if id == Some(version) {
                self.default_user_agent = reply["result"]["userAgent"].as_str().unwrap_or("").to_owned();
                let product = reply["result"]["product"].as_str().unwrap_or("");
                self.disguise = Disguise::of(product, &self.default_user_agent);
                if self.whole_browser
                    && let Some(params) = self.watch.blocking.fetch_params()
                {
                    // On the browser target: every request of the browser, a tab opened
                    // with a URL included (a target's own interception misses the first
                    // document's requests of such a tab).
                    interception = Some(self.send(ws, None, "Fetch.enable", params).await?);
                }
                let params = json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true });
                attach = Some(self.send(ws, None, "Target.setAutoAttach", params).await?);
            } else if id.is_some() && id == interception {
                // A session whose blocking does not hold is refused, not run unblocked.
                if let Some(error) = reply.get("error") {
                    return Err(CdpError::Refused {
                        method: "Fetch.enable".into(),
                        message: error.to_string(),
                    });
                }
            } else if id.is_some() && id == attach {
                if let Some(error) = reply.get("error") {
                    return Err(CdpError::Refused {
                        method: "Target.setAutoAttach".into(),
                        message: error.to_string(),
                    });
                }
                attached = true;
            } else if reply["method"] == "Target.attachedToTarget"
                && let Some(session) = self.apply(ws, &reply["params"]).await?
            {
                let probe = json!({ "expression": "0" });
                landing.push(self.send(ws, Some(&session), "Runtime.evaluate", probe).await?);
            } else if let Some(id) = id {
                landing.retain(|l| *l != id);
            } else {
                self.observe(ws, &reply).await?;
            }
            if attached && landing.is_empty() {
                return Ok(());
            }
        }
        Err(CdpError::Protocol("the connection closed during setup".into()))
    }

    async fn on_message(&mut self, ws: &mut Socket, text: &str) -> Result<(), CdpError> {
        // Only events about attachments, blocked requests, navigations, dialogs and what
        // is captured matter, and the bodies asked for; other replies are not awaited
        // (commands to one target run in order, so the overrides land before it is let go).
        let wanted = [
            "\"Target.attachedToTarget\"",
            "\"Target.detachedFromTarget\"",
            "\"Fetch.requestPaused\"",
            "\"Page.frameNavigated\"",
            "\"Page.javascriptDialogOpening\"",
        ];
        let captured = self.watch.capture.as_ref().is_some_and(|c| {
            (c.wants.network && text.contains("\"Network."))
                || (c.wants.console
                    && [
                        "\"Runtime.consoleAPICalled\"",
                        "\"Runtime.exceptionThrown\"",
                        "\"Log.entryAdded\"",
                    ]
                    .iter()
                    .any(|w| text.contains(w)))
        });
        let body = !self.bodies.is_empty() && text.starts_with("{\"id\":");
        if !captured && !body && !wanted.iter().any(|w| text.contains(w)) {
            return Ok(());
        }
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return Ok(());
        };
        if let Some((session, request)) = message["id"].as_u64().and_then(|id| self.bodies.remove(&id)) {
            if let Some(capture) = &self.watch.capture {
                capture.body(&session, &request, &message["result"]);
            }
            return Ok(());
        }
        if message["method"] == "Target.attachedToTarget" {
            self.apply(ws, &message["params"]).await?;
        } else {
            self.observe(ws, &message).await?;
        }
        Ok(())
    }

    /// Acts on an event the watch wants: a blocked request, a frame's navigation.
    async fn observe(&mut self, ws: &mut Socket, event: &Value) -> Result<(), CdpError> {
        let watch = self.watch.clone();
        let session = event["sessionId"].as_str().unwrap_or("");
        let target = self.targets.get(session).map_or("", String::as_str).to_owned();
        match event["method"].as_str() {
            Some("Fetch.requestPaused") => watch.paused(self, ws, event).await,
            Some("Page.frameNavigated") => {
                watch.navigated(event, &target);
                Ok(())
            }
            Some("Page.javascriptDialogOpening") => {
                watch.dialog(event, &target);
                Ok(())
            }
            Some("Target.detachedFromTarget") => {
                if let Some(gone) = event["params"]["sessionId"].as_str() {
                    self.targets.remove(gone);
                }
                Ok(())
            }
            Some(_) if !session.is_empty() => {
                let Some(capture) = &watch.capture else { return Ok(()) };
                let taken = capture.event(session, &target, event);
                if let Some(seen) = taken.error {
                    watch.error(seen);
                }
                if let Some(request) = taken.body {
                    let id = self
                        .send(
                            ws,
                            Some(session),
                            "Network.getResponseBody",
                            json!({ "requestId": request }),
                        )
                        .await?;
                    self.bodies.insert(id, (session.to_owned(), request));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Turns on what the session captures on one target, on this connection only: its
    /// console (`Runtime`, whose console serialization page scripts cannot see on 156:
    /// `tests/capture.rs` probes it; `Log` for what the browser reports) and its network
    /// (`Network`, buffering bodies only when they are kept).
    async fn capture_on(
        &mut self,
        ws: &mut Socket,
        s: Option<&str>,
        capture: &SessionCapture,
        page: bool,
    ) -> Result<(), CdpError> {
        if capture.wants.console {
            self.send(ws, s, "Runtime.enable", json!({})).await?;
            if page {
                self.send(ws, s, "Log.enable", json!({})).await?;
            }
        }
        if capture.wants.network {
            let (resource, total) = if capture.wants.bodies {
                (capture.limits().body_bytes, capture.limits().bodies_bytes)
            } else {
                (0, 0)
            };
            let params = json!({ "maxResourceBufferSize": resource, "maxTotalBufferSize": total });
            self.send(ws, s, "Network.enable", params).await?;
        }
        Ok(())
    }

    /// Sets the overrides on a newly attached target and lets it run; answers its session
    /// for a page, where the overrides apply.
    async fn apply(&mut self, ws: &mut Socket, attached: &Value) -> Result<Option<String>, CdpError> {
        let Some(session) = attached["sessionId"].as_str().map(str::to_owned) else {
            return Ok(None);
        };
        let kind = attached["targetInfo"]["type"].as_str().unwrap_or("");
        if let Some(target) = attached["targetInfo"]["targetId"].as_str() {
            self.targets.insert(session.clone(), target.to_owned());
        }
        let s = Some(session.as_str());
        let disguise = self.disguise.clone();
        let disguise = disguise.as_ref();
        let fp = self.identity.fingerprint.clone();
        let ua = match (&self.identity.user_agent, disguise) {
            (_, _) if fp.is_some() => fp.as_ref().map(|f| f.user_agent.clone()).unwrap_or_default(),
            (Some(ua), _) => ua.clone(),
            (None, Some(d)) => d.user_agent.clone(),
            (None, None) => self.default_user_agent.clone(),
        };
        // No `platform` by default: Chrome keeps navigator.platform per DevTools client, and
        // once another client has attached (Puppeteer does), the next document shows the
        // machine's again (measured on 156: the user agent stays, the platform does not). A
        // fingerprint sets it here for the first document and in its script for the rest.
        let mut override_ua = json!({ "userAgent": ua });
        if let Some(locale) = &self.identity.locale {
            override_ua["acceptLanguage"] = json!(locale);
        }
        let metadata = match (&fp, &self.identity.user_agent) {
            (Some(fp), _) => fp.client_hints.clone(),
            (None, Some(ua)) => user_agent_metadata(ua),
            (None, None) => disguise.map(|d| d.metadata.clone()),
        };
        if let Some(fp) = &fp {
            override_ua["platform"] = json!(fp.platform);
            if let Some(locale) = &self.identity.locale {
                override_ua["acceptLanguage"] = json!(fingerprint::accept_language(locale));
            }
        }
        if let Some(metadata) = metadata {
            override_ua["userAgentMetadata"] = metadata;
        }
        let wants_ua =
            self.identity.user_agent.is_some() || self.identity.locale.is_some() || fp.is_some() || disguise.is_some();
        let page = matches!(kind, "page" | "iframe");
        let worker = matches!(kind, "worker" | "shared_worker" | "service_worker");
        if page || worker {
            if wants_ua && !ua.is_empty() {
                let domain = if page { "Emulation" } else { "Network" };
                self.send(ws, s, &format!("{domain}.setUserAgentOverride"), override_ua)
                    .await?;
            }
            if !self.whole_browser
                && (page || kind == "service_worker" || kind == "shared_worker")
                && let Some(params) = self.watch.blocking.fetch_params()
            {
                // A context's targets, each: a page's interception covers its dedicated
                // workers' requests too.
                self.send(ws, s, "Fetch.enable", params).await?;
            }
            if page {
                // Frame navigations tell challenges apart (`Page.frameNavigated`).
                self.send(ws, s, "Page.enable", json!({})).await?;
            }
            if let Some(capture) = self.watch.capture.clone() {
                self.capture_on(ws, s, &capture, page).await?;
            }
            if let Some(locale) = self.identity.locale.clone() {
                self.send(ws, s, "Emulation.setLocaleOverride", json!({ "locale": locale }))
                    .await?;
            }
            if let Some(tz) = self.identity.timezone.clone() {
                self.send(ws, s, "Emulation.setTimezoneOverride", json!({ "timezoneId": tz }))
                    .await?;
            }
            for (method, params) in fp.as_ref().map(|f| fingerprint::commands(f, kind)).unwrap_or_default() {
                self.send(ws, s, method, params).await?;
            }
            // The console patch, what the headless shell lacks and what a fingerprint sets
            // that no command reaches, before the target's own scripts: one script, so one
            // toString patch.
            // A page's script needs the Page domain, enabled above (it stays on: disabling
            // it drops the script). Also at once on the document there is: a popup's first
            // document keeps its window for a same-origin page.
            let shell = page && disguise.is_some_and(|d| d.shell);
            let config = fp.as_ref().map(|fp| fingerprint::patch_config(fp, kind));
            let source = page_script::script(shell, config.as_ref());
            if page {
                let script = json!({ "source": source, "runImmediately": true });
                self.send(ws, s, "Page.addScriptToEvaluateOnNewDocument", script)
                    .await?;
            } else {
                // The worker waits for the keeper: this runs before its first line.
                let script = json!({ "expression": source, "silent": true });
                self.send(ws, s, "Runtime.evaluate", script).await?;
            }
            // Frames and workers this target starts are attached (and held) the same way.
            let params = json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true });
            self.send(ws, s, "Target.setAutoAttach", params).await?;
        }
        self.send(ws, s, "Runtime.runIfWaitingForDebugger", json!({})).await?;
        Ok(page.then_some(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked() {
        assert!(valid_user_agent("Mozilla/5.0 (X11; Linux x86_64)"));
        assert!(!valid_user_agent(""));
        assert!(!valid_user_agent("a\r\nX-Evil: 1"));
        assert!(!valid_user_agent(&"a".repeat(1025)));
        for good in ["en", "en-US", "zh-Hant-TW", "de-DE-u-co-phonebk"] {
            assert!(valid_locale(good), "{good}");
        }
        for bad in ["", "e", "english-US", "en_US", "en--US", "en-US-", "1n"] {
            assert!(!valid_locale(bad), "{bad}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "/etc/localtime",
            "Europe/../UTC",
            "Europe/Berlin\n",
        ] {
            assert!(!valid_timezone(bad), "{bad}");
        }
        if std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
            assert!(valid_timezone("Europe/Berlin"));
            assert!(valid_timezone("America/Argentina/Buenos_Aires"));
            assert!(!valid_timezone("Mars/Olympus_Mons"));
        }
    }

    #[test]
    fn client_hints_follow_a_chrome_user_agent() {
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.86 Safari/537.36";
        let m = user_agent_metadata(ua).unwrap();
        assert_eq!(m["platform"], "Windows");
        assert_eq!(m["brands"][0]["version"], "131");
        assert_eq!(m["fullVersion"], "131.0.6778.86");
        assert_eq!(m["mobile"], false);
        assert!(
            user_agent_metadata("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0").is_none()
        );
    }
}
