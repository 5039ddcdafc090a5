//! The CDP filter of a context session: a client sees a browser that holds only its own
//! browser context, and cannot reach anything outside it.
//!
//! Deny by default. Every command of the client is parsed (commands are small) and checked
//! against what its level may do: at the browser level only the target, browser and cookie
//! methods that a context can be scoped to, with the session's context filled in where a
//! method would default to the browser's default context; on the session's own pages
//! (flattened sessions, or a page connection) everything but the browser-wide domains. What
//! passes is sent on re-serialized, so Chrome reads exactly what was checked (no duplicate
//! keys read differently on the two sides).
//!
//! The browser's messages are mostly page traffic of the client's own sessions, which passes
//! as it came without being parsed: Chrome appends `,"sessionId":"…"}` to the messages of a
//! flattened session and writes `{"id":` or `{"method":` first, and a string's quotes are
//! escaped, so the two ends of a message say where it goes. Only the target events, the
//! answers that name targets, and browser-level events are parsed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use serde_json::{Value, json};

use super::command::{Command, Fields, Params};
use super::file_policy;
use super::url_policy;
use crate::console_patch;

/// What a connection's messages without `sessionId` talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The browser target (`/devtools/browser/…`).
    Browser,
    /// One of the session's pages (`/devtools/page/…`), checked when connecting.
    Page,
}

/// Which context each target of a shared browser is in, from what Chrome says: the
/// broker's own connection discovers every target, and filters learn from what passes.
#[derive(Default)]
pub struct Targets(DashMap<String, String>);

impl Targets {
    pub fn context_of(&self, target: &str) -> Option<String> {
        self.0.get(target).map(|c| c.clone())
    }

    /// Notes a `TargetInfo` object (`targetId`, `browserContextId`).
    pub fn learn(&self, info: &Value) {
        if let (Some(target), Some(context)) = (info["targetId"].as_str(), info["browserContextId"].as_str()) {
            self.0.insert(target.to_owned(), context.to_owned());
        }
    }

    pub fn insert(&self, target: &str, context: &str) {
        self.0.insert(target.to_owned(), context.to_owned());
    }

    pub fn forget(&self, target: &str) {
        self.0.remove(target);
    }

    /// The targets of `context`.
    pub fn of_context(&self, context: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|e| e.value() == context)
            .map(|e| e.key().clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the filter makes of a message.
#[derive(Debug, PartialEq)]
pub enum Out {
    /// To the browser.
    Browser(String),
    /// To the client.
    Client(String),
    /// The browser's message, on to the client as it came.
    Pass,
    /// A command was refused (the error is in a `Client` beside it); the method, for the
    /// metrics.
    Refused(String),
    /// The client closed its browser: the session ends.
    EndSession,
    /// A command names a target the filter does not know yet: look it up (see
    /// [`Targets`]), then offer the command again with `looked_up`.
    Unknown(String),
}

/// What to do with the answer to a command that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Pass,
    /// `Target.getTargets`: only the context's targets.
    Targets,
    /// `Target.attachToTarget`: the new session is the client's.
    Attached,
    /// `Target.createTarget`: the new target is the context's.
    Created,
    /// `Browser.getWindowForTarget`: the window is the client's to size.
    Window,
    /// `Page.getFrameTree`: the frames are the context's (for its downloads' events).
    FrameTree,
    /// A command the filter sent itself.
    Own,
}

enum Decision {
    Pass(Reply),
    Refuse(String),
    Answer(Value),
    End,
    Unknown(String),
}

/// The CDP error Chrome gives for a target that is not there; also the answer for another
/// context's target, so that a client cannot tell the two apart.
const NO_TARGET: &str = "No target with given id found";

/// The parameters of the methods that name targets, sessions, windows or contexts (the
/// protocol's own lists); the rest of what a client sends with them is dropped.
const KNOWN_PARAMS: &[(&str, &[&str])] = &[
    ("Target.getTargets", &["filter"]),
    ("Target.setDiscoverTargets", &["discover", "filter"]),
    (
        "Target.setAutoAttach",
        &["autoAttach", "waitForDebuggerOnStart", "flatten", "filter"],
    ),
    (
        "Target.autoAttachRelated",
        &["targetId", "waitForDebuggerOnStart", "filter"],
    ),
    ("Target.attachToTarget", &["targetId", "flatten"]),
    ("Target.activateTarget", &["targetId"]),
    ("Target.closeTarget", &["targetId"]),
    ("Target.getTargetInfo", &["targetId"]),
    ("Target.detachFromTarget", &["sessionId", "targetId"]),
    (
        "Target.createTarget",
        &[
            "url",
            "left",
            "top",
            "width",
            "height",
            "windowState",
            "browserContextId",
            "enableBeginFrameControl",
            "newWindow",
            "background",
            "forTab",
            "hidden",
            "focus",
        ],
    ),
    ("Target.disposeBrowserContext", &["browserContextId"]),
    ("Browser.getVersion", &[]),
    ("Browser.close", &[]),
    (
        "Browser.setDownloadBehavior",
        &["behavior", "browserContextId", "downloadPath", "eventsEnabled"],
    ),
    (
        "Browser.grantPermissions",
        &["permissions", "origin", "browserContextId"],
    ),
    ("Browser.resetPermissions", &["browserContextId"]),
    (
        "Browser.setPermission",
        &["permission", "setting", "origin", "embeddedOrigin", "browserContextId"],
    ),
    ("Browser.cancelDownload", &["guid", "browserContextId"]),
    ("Browser.getWindowForTarget", &["targetId"]),
    ("Browser.getWindowBounds", &["windowId"]),
    ("Browser.setWindowBounds", &["windowId", "bounds"]),
    ("Storage.getCookies", &["browserContextId"]),
    ("Storage.setCookies", &["cookies", "browserContextId"]),
    ("Storage.clearCookies", &["browserContextId"]),
    ("Page.setDownloadBehavior", &["behavior", "downloadPath"]),
];

/// Page methods whose parameters are read (a path, a URL) but not limited to a list.
const CHECKED_PARAMS: &[&str] = &[
    "Page.navigate",
    "Network.loadNetworkResource",
    "Fetch.continueRequest",
    "Network.continueInterceptedRequest",
    "DOM.setFileInputFiles",
    "Input.dispatchDragEvent",
];

/// Whether the filter reads a method's parameters; the others pass as the client wrote
/// them (see [`Command`]).
fn reads_params(method: &str) -> bool {
    KNOWN_PARAMS.iter().any(|(m, _)| *m == method) || CHECKED_PARAMS.contains(&method)
}

/// `params[key]`, when it is a string, is a URL `policy` allows (what is not a string
/// Chrome refuses itself).
fn check_url(params: &Fields, key: &str, policy: fn(&str) -> Result<(), url_policy::Refused>) -> Decision {
    match params.str(key).map(|url| policy(&url)) {
        Some(Err(refused)) => Decision::Refuse(refused.to_string()),
        _ => Decision::Pass(Reply::Pass),
    }
}

/// Most downloads a connection follows at once (their progress events); past it, new
/// ones are not shown to it.
const MAX_DOWNLOADS_FOLLOWED: usize = 1024;

/// One client connection's filter.
pub struct Filter {
    context: String,
    root: Root,
    targets: Arc<Targets>,
    /// Flattened sessions of the context's targets, attached by this connection.
    sessions: HashSet<String>,
    /// Sessions to other contexts' targets that an auto-attach made and the filter is
    /// detaching: their messages are dropped.
    detaching: HashSet<String>,
    /// Targets this connection has seen to be the context's (for `targetDestroyed`, when
    /// the shared registry has forgotten them).
    own_targets: HashSet<String>,
    /// Commands sent on and not answered yet, by (session, id).
    in_flight: HashMap<(Option<String>, i64), Reply>,
    /// Windows of the context's targets (from `Browser.getWindowForTarget`).
    windows: HashSet<i64>,
    /// Ids of the filter's own commands: negative, which clients may not use.
    next_own: i64,
    /// Where the session's downloads must go, whatever a client asks.
    download_dir: Option<String>,
    /// The only files a client may hand its pages (see [`file_policy`]).
    files_dir: Option<PathBuf>,
    /// Frames of the context's pages that are not targets (subframes), from its own
    /// sessions' page events: a download they begin is the context's.
    own_frames: HashSet<String>,
    /// Downloads of the context whose beginning this connection was shown, by guid: their
    /// progress is shown too, other contexts' is not.
    downloads: HashSet<String>,
}

impl Filter {
    pub fn new(context: &str, root: Root, targets: Arc<Targets>) -> Filter {
        Filter {
            context: context.to_owned(),
            root,
            targets,
            sessions: HashSet::new(),
            detaching: HashSet::new(),
            own_targets: HashSet::new(),
            in_flight: HashMap::new(),
            windows: HashSet::new(),
            next_own: 0,
            download_dir: None,
            files_dir: None,
            own_frames: HashSet::new(),
            downloads: HashSet::new(),
        }
    }

    /// Holds the client's `Browser.setDownloadBehavior` and `Page.setDownloadBehavior` to
    /// `dir`: downloads are allowed into it or denied, never sent elsewhere on the broker's
    /// disk (without a folder they are denied).
    pub fn with_download_dir(mut self, dir: &str) -> Filter {
        self.download_dir = Some(dir.to_owned());
        self
    }

    /// The session's own files, the only ones its client may set on a file input or drop.
    pub fn with_files_dir(mut self, dir: PathBuf) -> Filter {
        self.files_dir = Some(dir);
        self
    }

    /// A message from the client. With `looked_up`, targets still unknown are refused.
    pub fn on_client(&mut self, text: &str, looked_up: bool) -> Vec<Out> {
        let mut command = match Command::parse(text, reads_params) {
            Ok(command) => command,
            Err(m) => {
                let reply = error_reply(m.id, m.session.as_deref(), m.code, m.message);
                return vec![Out::Client(reply)];
            }
        };
        let (id, session) = (command.id, command.session.clone());
        if let Some(s) = &session
            && !self.sessions.contains(s)
        {
            let detail = "Session with given id not found.";
            return vec![Out::Client(error_reply(Some(id), session.as_deref(), -32001, detail))];
        }
        let key = (session.clone(), id);
        if self.in_flight.contains_key(&key) {
            let detail = "A command with this id is still waiting for its answer";
            return vec![Out::Client(error_reply(Some(id), session.as_deref(), -32600, detail))];
        }
        let page_level = session.is_some() || self.root == Root::Page;
        let method = command.method.clone();
        let mut unread = Fields::default();
        let params = match &mut command.params {
            Params::Fields(fields) => fields,
            Params::Verbatim(_) => &mut unread,
        };
        // What Chrome acts on of a method that names targets or contexts is what was
        // checked: parameters it does not define are dropped.
        if let Some((_, known)) = KNOWN_PARAMS.iter().find(|(m, _)| *m == method) {
            params.retain(known);
        }
        match self.decide(&method, params, page_level, looked_up) {
            Decision::Pass(reply) => {
                self.in_flight.insert(key, reply);
                vec![Out::Browser(command.to_json())]
            }
            Decision::Refuse(detail) => vec![
                Out::Refused(method),
                Out::Client(error_reply(Some(id), session.as_deref(), -32000, &detail)),
            ],
            Decision::Answer(result) => vec![Out::Client(result_reply(id, session.as_deref(), result))],
            Decision::End => vec![
                Out::Client(result_reply(id, session.as_deref(), json!({}))),
                Out::EndSession,
            ],
            Decision::Unknown(target) => vec![Out::Unknown(target)],
        }
    }

    fn decide(&mut self, method: &str, params: &mut Fields, page_level: bool, looked_up: bool) -> Decision {
        let (domain, name) = method.split_once('.').unwrap_or((method, ""));
        let refuse = |why: &str| Decision::Refuse(format!("'{method}' is not allowed in a context session: {why}"));
        match (domain, name) {
            ("Target", _) => self.decide_target(name, params, looked_up, refuse),
            ("Browser", "getVersion") => Decision::Pass(Reply::Pass),
            ("Browser", "close") => Decision::End,
            ("Browser", "setDownloadBehavior") => match self.fill_context(params) {
                Ok(()) => {
                    self.hold_downloads(params, true);
                    Decision::Pass(Reply::Pass)
                }
                Err(d) => d,
            },
            ("Browser", "grantPermissions" | "resetPermissions" | "setPermission")
            | ("Browser", "cancelDownload")
            | ("Storage", "getCookies" | "setCookies" | "clearCookies") => match self.fill_context(params) {
                Ok(()) => Decision::Pass(Reply::Pass),
                Err(d) => d,
            },
            ("Browser", "getWindowForTarget") => match params.contains("targetId") {
                false if page_level => Decision::Pass(Reply::Window),
                _ => match self.own_target(params, "targetId", looked_up) {
                    Ok(()) => Decision::Pass(Reply::Window),
                    Err(d) => d,
                },
            },
            ("Browser", "getWindowBounds" | "setWindowBounds") => match params.get::<i64>("windowId") {
                Some(window) if self.windows.contains(&window) => Decision::Pass(Reply::Pass),
                _ => Decision::Refuse("Browser window not found".into()),
            },
            ("Browser", _) => refuse("it acts on the whole browser"),
            ("SystemInfo" | "Tracing" | "Extensions" | "PWA" | "Tethering", _) => {
                refuse("it reaches beyond the session's browser context")
            }
            ("Memory", "getDOMCounters" | "getDOMCountersForLeakDetection") if page_level => {
                Decision::Pass(Reply::Pass)
            }
            ("Memory", _) => refuse("it acts on the whole browser"),
            // What a page method would read or write of the broker's disk, or where it
            // would take a tab: checked (see `reads_params`).
            ("Page", "setDownloadBehavior") if page_level => {
                self.hold_downloads(params, false);
                Decision::Pass(Reply::Pass)
            }
            ("Page", "navigate") if page_level => check_url(params, "url", url_policy::check_navigation),
            ("Network", "loadNetworkResource") if page_level => check_url(params, "url", url_policy::check_fetch),
            ("Fetch", "continueRequest") | ("Network", "continueInterceptedRequest") if page_level => {
                match params.is_null("url") {
                    true => Decision::Pass(Reply::Pass),
                    false => check_url(params, "url", url_policy::check_fetch),
                }
            }
            ("DOM", "setFileInputFiles") if page_level => match self.hold_files(params) {
                Ok(()) => Decision::Pass(Reply::Pass),
                Err(refused) => Decision::Refuse(refused.to_string()),
            },
            ("Input", "dispatchDragEvent") if page_level => match self.hold_dropped_files(params) {
                Ok(()) => Decision::Pass(Reply::Pass),
                Err(refused) => Decision::Refuse(refused.to_string()),
            },
            ("Page", "getFrameTree") if page_level => Decision::Pass(Reply::FrameTree),
            _ if page_level => Decision::Pass(Reply::Pass),
            ("IO", "read" | "close" | "resolveBlob") | ("Schema", "getDomains") => Decision::Pass(Reply::Pass),
            _ => refuse("only target, browser and cookie methods are open at the browser level"),
        }
    }

    fn decide_target(
        &mut self,
        name: &str,
        params: &mut Fields,
        looked_up: bool,
        refuse: impl Fn(&str) -> Decision,
    ) -> Decision {
        let checked = |result: Result<(), Decision>, reply: Reply| match result {
            Ok(()) => Decision::Pass(reply),
            Err(d) => d,
        };
        match name {
            "getTargets" => Decision::Pass(Reply::Targets),
            "setDiscoverTargets" => Decision::Pass(Reply::Pass),
            "setAutoAttach" => {
                let auto = params.get::<bool>("autoAttach").unwrap_or(false);
                let flat = params.get::<bool>("flatten").unwrap_or(false);
                if auto && !flat {
                    return refuse("only flattened sessions (flatten: true) are relayed");
                }
                Decision::Pass(Reply::Pass)
            }
            "attachToTarget" => {
                if params.get::<bool>("flatten") != Some(true) {
                    return refuse("only flattened sessions (flatten: true) are relayed");
                }
                checked(self.own_target(params, "targetId", looked_up), Reply::Attached)
            }
            "autoAttachRelated" | "activateTarget" | "closeTarget" => {
                checked(self.own_target(params, "targetId", looked_up), Reply::Pass)
            }
            // Without a target: the connection's own (the browser's, which Playwright reads).
            "getTargetInfo" if !params.contains("targetId") => Decision::Pass(Reply::Pass),
            "getTargetInfo" => checked(self.own_target(params, "targetId", looked_up), Reply::Pass),
            // Each of the session and the target, when given, must be the client's own.
            "detachFromTarget" => {
                match (params.contains("sessionId"), params.str("sessionId")) {
                    (true, Some(s)) if self.sessions.contains(&s) => {}
                    (true, _) => return Decision::Refuse("No session with given id".into()),
                    (false, _) if !params.contains("targetId") => {
                        return Decision::Refuse("Either session id or target id must be specified".into());
                    }
                    (false, _) => {}
                }
                match params.contains("targetId") {
                    true => checked(self.own_target(params, "targetId", looked_up), Reply::Pass),
                    false => Decision::Pass(Reply::Pass),
                }
            }
            "createTarget" => match check_url(params, "url", url_policy::check_navigation) {
                Decision::Pass(_) => checked(self.fill_context(params), Reply::Created),
                refused => refused,
            },
            "getBrowserContexts" => Decision::Answer(json!({ "browserContextIds": [self.context] })),
            "disposeBrowserContext" => match params.str("browserContextId") {
                Some(c) if c == self.context => Decision::End,
                _ => Decision::Refuse("Failed to find context with id".into()),
            },
            "createBrowserContext" => refuse("a context session is one browser context"),
            _ => refuse("it reaches beyond the session's browser context"),
        }
    }

    /// Downloads are the broker's to place. A client chooses whether they happen (`deny`,
    /// or `allow`, `default` and `allowAndName`, which allow them into the session's
    /// folder) and whether it hears of them (`eventsEnabled`), never where: the folder is
    /// the session's, and without one downloads are denied.
    fn hold_downloads(&self, params: &mut Fields, by_name: bool) {
        let behavior = params.str("behavior");
        params.remove("downloadPath");
        match &self.download_dir {
            Some(dir) if behavior.as_deref() != Some("deny") => {
                let named = by_name && behavior.as_deref() == Some("allowAndName");
                params.set("behavior", if named { "allowAndName" } else { "allow" });
                params.set("downloadPath", dir);
            }
            _ => params.set("behavior", "deny"),
        }
    }

    /// A file input's files: the session's own, resolved.
    fn hold_files(&self, params: &mut Fields) -> Result<(), file_policy::Refused> {
        let files = params.raw("files").ok_or(file_policy::Refused::NotAList)?;
        let resolved = file_policy::check_files(self.files_dir.as_deref(), files)?;
        params.set("files", resolved);
        Ok(())
    }

    /// The files of a dropped item (`data.files`): as for a file input.
    fn hold_dropped_files(&self, params: &mut Fields) -> Result<(), file_policy::Refused> {
        let Some(mut data) = params.raw("data").and_then(Fields::parse) else {
            return Ok(()); // no data: nothing is dropped (Chrome answers the error)
        };
        if data.is_null("files") {
            return Ok(());
        }
        let files = data.raw("files").ok_or(file_policy::Refused::NotAList)?;
        let resolved = file_policy::check_files(self.files_dir.as_deref(), files)?;
        data.set("files", resolved);
        let data = data.to_raw();
        params.set("data", &data);
        Ok(())
    }

    /// `browserContextId` is the session's: filled in when missing.
    fn fill_context(&self, params: &mut Fields) -> Result<(), Decision> {
        if params.is_null("browserContextId") {
            params.set("browserContextId", &self.context);
            return Ok(());
        }
        match params.str("browserContextId") {
            Some(c) if c == self.context => Ok(()),
            _ => Err(Decision::Refuse(
                "Failed to find browser context with the given id".into(),
            )),
        }
    }

    /// `params[key]` names one of the context's targets.
    fn own_target(&self, params: &Fields, key: &str, looked_up: bool) -> Result<(), Decision> {
        let Some(target) = params.str(key) else {
            return Err(Decision::Refuse(format!(
                "Invalid parameters: {key}: string value expected"
            )));
        };
        if self.own_targets.contains(&target) {
            return Ok(());
        }
        match self.targets.context_of(&target) {
            Some(c) if c == self.context => Ok(()),
            Some(_) => Err(Decision::Refuse(NO_TARGET.into())),
            None if looked_up => Err(Decision::Refuse(NO_TARGET.into())),
            None => Err(Decision::Unknown(target)),
        }
    }

    /// A message from the browser.
    pub fn on_browser(&mut self, text: &str) -> Vec<Out> {
        let session = tail_session(text).map(str::to_owned);
        if let Some(s) = &session
            && !self.sessions.contains(s)
        {
            return Vec::new(); // another context's session being detached, or unknown
        }
        if let Some(id) = leading_id(text) {
            return match self.in_flight.remove(&(session, id)) {
                None | Some(Reply::Own) => Vec::new(),
                Some(Reply::Pass) => vec![Out::Pass],
                Some(Reply::FrameTree) => {
                    self.learn_frame_tree(text);
                    vec![Out::Pass]
                }
                Some(reply) => self.rewrite_reply(reply, text),
            };
        }
        if text.starts_with(r#"{"method":"Target."#) {
            return self.on_target_event(text, session);
        }
        // Chrome tells every connection with download events of every context's downloads,
        // on whichever session asked for them.
        if text.starts_with(r#"{"method":"Browser.download"#) {
            return self.on_download_event(text);
        }
        let own_page = session.is_some() || self.root == Root::Page;
        if own_page && text.starts_with(r#"{"method":"Page.frame"#) {
            self.learn_frame(text);
        }
        let passes = own_page || text.starts_with(r#"{"method":"Inspector."#);
        if !passes {
            return Vec::new();
        }
        // The console patch's frame tops the page's console messages: the client sees the
        // page's line first, as without the patch.
        if text.as_bytes().starts_with(console_patch::EVENT_PREFIX)
            && let Some(without) = console_patch::without_wrapper_frame(text)
        {
            return vec![Out::Client(without)];
        }
        vec![Out::Pass]
    }

    /// A download's events reach the client only if the download is its context's: its
    /// beginning by the frame that began it (a target of the context, or a frame seen in
    /// one of its pages; a frame the filter cannot place is not the client's), its
    /// progress by its guid. `filePath` is removed: it names the broker's folders.
    fn on_download_event(&mut self, text: &str) -> Vec<Out> {
        let Ok(mut event) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        let guid = event["params"]["guid"].as_str().unwrap_or_default().to_owned();
        match event["method"].as_str().unwrap_or_default() {
            "Browser.downloadWillBegin" => {
                let frame = event["params"]["frameId"].as_str().unwrap_or_default();
                if guid.is_empty() || !self.frame_is_ours(frame) || self.downloads.len() >= MAX_DOWNLOADS_FOLLOWED {
                    return Vec::new();
                }
                self.downloads.insert(guid);
                vec![Out::Pass]
            }
            "Browser.downloadProgress" if self.downloads.contains(&guid) => {
                let params = &mut event["params"];
                if params["state"] != "inProgress" {
                    self.downloads.remove(&guid);
                }
                match params.as_object_mut().and_then(|p| p.remove("filePath")) {
                    Some(_) => vec![Out::Client(event.to_string())],
                    None => vec![Out::Pass],
                }
            }
            _ => Vec::new(),
        }
    }

    fn frame_is_ours(&self, frame: &str) -> bool {
        self.own_targets.contains(frame)
            || self.own_frames.contains(frame)
            || self.targets.context_of(frame).is_some_and(|c| c == self.context)
    }

    /// Notes the frames a page of the context attaches or navigates, and forgets those it
    /// detaches.
    fn learn_frame(&mut self, text: &str) {
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let params = &event["params"];
        match event["method"].as_str().unwrap_or_default() {
            "Page.frameAttached" => {
                if let Some(frame) = params["frameId"].as_str() {
                    self.own_frames.insert(frame.to_owned());
                }
            }
            "Page.frameNavigated" => {
                if let Some(frame) = params["frame"]["id"].as_str() {
                    self.own_frames.insert(frame.to_owned());
                }
            }
            "Page.frameDetached" => {
                if let Some(frame) = params["frameId"].as_str() {
                    self.own_frames.remove(frame);
                }
            }
            _ => {}
        }
    }

    /// Notes every frame of a page's frame tree (`Page.getFrameTree`'s answer).
    fn learn_frame_tree(&mut self, text: &str) {
        fn walk(tree: &Value, frames: &mut HashSet<String>) {
            if let Some(frame) = tree["frame"]["id"].as_str() {
                frames.insert(frame.to_owned());
            }
            for child in tree["childFrames"].as_array().into_iter().flatten() {
                walk(child, frames);
            }
        }
        if let Ok(answer) = serde_json::from_str::<Value>(text) {
            walk(&answer["result"]["frameTree"], &mut self.own_frames);
        }
    }

    fn rewrite_reply(&mut self, reply: Reply, text: &str) -> Vec<Out> {
        let Ok(mut message) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        let result = &mut message["result"];
        if result.is_object() {
            match reply {
                Reply::Targets => {
                    if let Some(infos) = result["targetInfos"].as_array_mut() {
                        infos.iter().for_each(|info| self.targets.learn(info));
                        infos.retain(|info| info["browserContextId"] == self.context.as_str());
                        for info in infos.iter() {
                            if let Some(t) = info["targetId"].as_str() {
                                self.own_targets.insert(t.to_owned());
                            }
                        }
                    }
                }
                Reply::Attached => {
                    if let Some(s) = result["sessionId"].as_str() {
                        self.sessions.insert(s.to_owned());
                    }
                }
                Reply::Created => {
                    if let Some(t) = result["targetId"].as_str() {
                        self.targets.insert(t, &self.context);
                        self.own_targets.insert(t.to_owned());
                    }
                }
                Reply::Window => {
                    if let Some(w) = result["windowId"].as_i64() {
                        self.windows.insert(w);
                    }
                }
                Reply::Pass | Reply::Own | Reply::FrameTree => {}
            }
        }
        vec![Out::Client(message.to_string())]
    }

    fn on_target_event(&mut self, text: &str, session: Option<String>) -> Vec<Out> {
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        let params = &event["params"];
        let info = &params["targetInfo"];
        let ours_by_info = |filter: &mut Filter| {
            filter.targets.learn(info);
            let ours = info["browserContextId"] == filter.context.as_str();
            if ours && let Some(t) = info["targetId"].as_str() {
                filter.own_targets.insert(t.to_owned());
            }
            ours
        };
        let pass = vec![Out::Pass];
        match event["method"].as_str().unwrap_or_default() {
            "Target.targetCreated" | "Target.targetInfoChanged" => {
                if ours_by_info(self) {
                    pass
                } else {
                    Vec::new()
                }
            }
            "Target.targetDestroyed" | "Target.targetCrashed" => {
                let target = params["targetId"].as_str().unwrap_or_default();
                let ours = self.own_targets.contains(target)
                    || self.targets.context_of(target).is_some_and(|c| c == self.context);
                if event["method"] == "Target.targetDestroyed" {
                    self.own_targets.remove(target);
                }
                if ours { pass } else { Vec::new() }
            }
            "Target.attachedToTarget" => {
                let Some(attached) = params["sessionId"].as_str().map(str::to_owned) else {
                    return Vec::new();
                };
                if ours_by_info(self) {
                    self.sessions.insert(attached);
                    return pass;
                }
                // An auto-attach reached another context's target: let it run on, and let go.
                let mut out = Vec::new();
                if params["waitingForDebugger"] == true {
                    let resume = json!({
                        "id": self.own_id(Some(attached.clone())),
                        "method": "Runtime.runIfWaitingForDebugger",
                        "sessionId": attached,
                    });
                    out.push(Out::Browser(resume.to_string()));
                }
                let mut detach = json!({
                    "id": self.own_id(session.clone()),
                    "method": "Target.detachFromTarget",
                    "params": { "sessionId": attached },
                });
                if let Some(s) = session {
                    detach["sessionId"] = Value::String(s);
                }
                out.push(Out::Browser(detach.to_string()));
                self.detaching.insert(attached);
                out
            }
            "Target.detachedFromTarget" => {
                let detached = params["sessionId"].as_str().unwrap_or_default();
                self.detaching.remove(detached);
                if self.sessions.remove(detached) {
                    pass
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// An id for a command of the filter's own; its answer is dropped. Answers on a
    /// detaching session are dropped anyway, so those are not waited for.
    fn own_id(&mut self, session: Option<String>) -> i64 {
        self.next_own -= 1;
        if session.as_ref().is_none_or(|s| self.sessions.contains(s)) {
            self.in_flight.insert((session, self.next_own), Reply::Own);
        }
        self.next_own
    }
}

/// The flattened session a browser message belongs to: Chrome ends those messages with
/// `,"sessionId":"…"}`, which cannot occur at the end inside a string (its quotes would be
/// escaped) nor in a nested object (the message would end with `}}`).
pub fn tail_session(text: &str) -> Option<&str> {
    const KEY: &str = r#","sessionId":""#;
    let body = text.strip_suffix("\"}")?;
    let window = &body[body.len().saturating_sub(80)..];
    let at = window.rfind(KEY)?;
    let id = &window[at + KEY.len()..];
    (!id.is_empty() && !id.contains(['"', '\\'])).then_some(id)
}

/// The id of a browser message that answers a command: Chrome writes `{"id":` first.
pub fn leading_id(text: &str) -> Option<i64> {
    let rest = text.strip_prefix(r#"{"id":"#)?;
    let end = rest.find(|c: char| c != '-' && !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

fn error_reply(id: Option<i64>, session: Option<&str>, code: i64, message: &str) -> String {
    let mut reply = json!({ "error": { "code": code, "message": message } });
    if let Some(id) = id {
        reply["id"] = json!(id);
    }
    if let Some(s) = session {
        reply["sessionId"] = json!(s);
    }
    reply.to_string()
}

fn result_reply(id: i64, session: Option<&str>, result: Value) -> String {
    let mut reply = json!({ "id": id, "result": result });
    if let Some(s) = session {
        reply["sessionId"] = json!(s);
    }
    reply.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "CTX-OURS";
    const THEIRS: &str = "CTX-THEIRS";

    fn filter(root: Root) -> (Filter, Arc<Targets>) {
        let targets = Arc::new(Targets::default());
        targets.insert("T-OURS", OURS);
        targets.insert("T-THEIRS", THEIRS);
        (Filter::new(OURS, root, targets.clone()), targets)
    }

    fn sent(out: &[Out]) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Out::Browser(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// What reaches the client: answers of the filter, `null` for a message passed as it came.
    fn answered(out: &[Out]) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Out::Client(t) => Some(serde_json::from_str(t).unwrap()),
                Out::Pass => Some(Value::Null),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_ends_of_a_browser_message_say_where_it_goes() {
        assert_eq!(
            tail_session(r#"{"method":"Page.x","params":{},"sessionId":"AB12"}"#),
            Some("AB12")
        );
        assert_eq!(tail_session(r#"{"id":3,"result":{"sessionId":"AB12"}}"#), None);
        assert_eq!(
            tail_session(r#"{"method":"X","params":{"v":"a\",\"sessionId\":\"AB"}}"#),
            None
        );
        assert_eq!(
            tail_session(r#"{"method":"X","params":{"v":",\"sessionId\":\"AB"}}"#),
            None
        );
        assert_eq!(tail_session(r#"{"id":1,"result":{}}"#), None);
        assert_eq!(leading_id(r#"{"id":42,"result":{}}"#), Some(42));
        assert_eq!(leading_id(r#"{"id":-3,"result":{}}"#), Some(-3));
        assert_eq!(leading_id(r#"{"method":"X"}"#), None);
    }

    #[test]
    fn targets_of_other_contexts_are_not_there() {
        let (mut f, _) = filter(Root::Browser);
        for method in ["attachToTarget", "activateTarget", "closeTarget", "getTargetInfo"] {
            let out = f.on_client(
                &json!({"id": 1, "method": format!("Target.{method}"), "params": {"targetId": "T-THEIRS", "flatten": true}})
                    .to_string(),
                false,
            );
            assert!(sent(&out).is_empty(), "{method}");
            assert_eq!(answered(&out)[0]["error"]["message"], NO_TARGET, "{method}");
        }
        let out = f.on_client(
            r#"{"id":2,"method":"Target.attachToTarget","params":{"targetId":"T-OURS","flatten":true}}"#,
            false,
        );
        assert_eq!(sent(&out)[0]["params"]["targetId"], "T-OURS");
        let out = f.on_client(
            r#"{"id":3,"method":"Target.closeTarget","params":{"targetId":"T-NEW"}}"#,
            false,
        );
        assert_eq!(out, vec![Out::Unknown("T-NEW".into())]);
        let out = f.on_client(
            r#"{"id":3,"method":"Target.closeTarget","params":{"targetId":"T-NEW"}}"#,
            true,
        );
        assert_eq!(answered(&out)[0]["error"]["message"], NO_TARGET);
    }

    #[test]
    fn commands_that_default_to_the_default_context_get_the_sessions() {
        let (mut f, _) = filter(Root::Browser);
        for method in [
            "Target.createTarget",
            "Storage.getCookies",
            "Browser.setDownloadBehavior",
            "Browser.grantPermissions",
        ] {
            let out = f.on_client(&json!({"id": 1, "method": method}).to_string(), false);
            assert_eq!(sent(&out)[0]["params"]["browserContextId"], OURS, "{method}");
            f.in_flight.clear();
            let out = f.on_client(
                &json!({"id": 2, "method": method, "params": {"browserContextId": THEIRS}}).to_string(),
                false,
            );
            assert!(sent(&out).is_empty(), "{method}");
            assert!(out.contains(&Out::Refused(method.into())));
        }
        let out = f.on_client(r#"{"id":5,"method":"Target.getBrowserContexts"}"#, false);
        assert_eq!(answered(&out)[0]["result"]["browserContextIds"], json!([OURS]));
    }

    #[test]
    fn browser_wide_commands_are_refused_and_close_ends_the_session() {
        let (mut f, _) = filter(Root::Browser);
        for method in [
            "Browser.crash",
            "Browser.getBrowserCommandLine",
            "Target.attachToBrowserTarget",
            "Target.exposeDevToolsProtocol",
            "Target.createBrowserContext",
            "SystemInfo.getInfo",
            "Tracing.start",
            "Fetch.enable",
            "Security.setIgnoreCertificateErrors",
        ] {
            let out = f.on_client(&json!({"id": 1, "method": method}).to_string(), false);
            assert!(sent(&out).is_empty(), "{method}");
            assert!(answered(&out)[0]["error"]["message"].is_string(), "{method}");
        }
        let out = f.on_client(r#"{"id":9,"method":"Browser.close"}"#, false);
        assert!(out.contains(&Out::EndSession));
        assert!(sent(&out).is_empty());
        let out = f.on_client(
            &json!({"id": 10, "method": "Target.disposeBrowserContext", "params": {"browserContextId": THEIRS}})
                .to_string(),
            false,
        );
        assert!(!out.contains(&Out::EndSession));
    }

    #[test]
    fn auto_attach_to_another_context_is_undone_and_hidden() {
        let (mut f, _) = filter(Root::Browser);
        let event = |session: &str, context: &str, target: &str| {
            json!({"method": "Target.attachedToTarget", "params": {
                "sessionId": session, "waitingForDebugger": true,
                "targetInfo": {"targetId": target, "type": "page", "browserContextId": context}}})
            .to_string()
        };
        let out = f.on_browser(&event("S-THEIRS", THEIRS, "T-THEIRS"));
        assert!(answered(&out).is_empty());
        let sent = sent(&out);
        assert_eq!(sent[0]["method"], "Runtime.runIfWaitingForDebugger");
        assert_eq!(sent[1]["params"]["sessionId"], "S-THEIRS");
        assert!(sent.iter().all(|m| m["id"].as_i64().unwrap() < 0));
        // Its messages, and the answers to the filter's own commands, go nowhere.
        assert!(
            f.on_browser(r#"{"method":"Page.x","params":{},"sessionId":"S-THEIRS"}"#)
                .is_empty()
        );
        let own = sent[1]["id"].as_i64().unwrap();
        assert!(f.on_browser(&format!(r#"{{"id":{own},"result":{{}}}}"#)).is_empty());
        // The context's own target is attached and its traffic passes as it came.
        let out = f.on_browser(&event("S-OURS", OURS, "T-OURS"));
        assert_eq!(answered(&out).len(), 1);
        let page = r#"{"method":"Page.x","params":{},"sessionId":"S-OURS"}"#;
        assert_eq!(f.on_browser(page), vec![Out::Pass]);
        // And commands on it pass, on another session do not.
        assert_eq!(
            sent_count(&mut f, r#"{"id":4,"method":"Runtime.evaluate","sessionId":"S-OURS"}"#),
            1
        );
        assert_eq!(
            sent_count(&mut f, r#"{"id":5,"method":"Runtime.evaluate","sessionId":"S-THEIRS"}"#),
            0
        );
    }

    #[test]
    fn console_messages_reach_the_client_without_the_patchs_frame() {
        let (mut f, _) = filter(Root::Browser);
        let attached = json!({"method": "Target.attachedToTarget", "params": {
            "sessionId": "S-OURS", "waitingForDebugger": false,
            "targetInfo": {"targetId": "T-OURS", "type": "page", "browserContextId": OURS}}});
        f.on_browser(&attached.to_string());
        let (line, column) = console_patch::call_sites()[1];
        let page =
            json!({"functionName": "f", "scriptId": "5", "url": "https://a.test/", "lineNumber": 3, "columnNumber": 8});
        let message = |frames: Value, session: &str| {
            json!({"method": "Runtime.consoleAPICalled", "params": {"type": "log", "args": [],
                "stackTrace": {"callFrames": frames}}, "sessionId": session})
            .to_string()
        };
        let wrapper =
            json!({"functionName": "log", "scriptId": "4", "url": "", "lineNumber": line, "columnNumber": column});
        let out = f.on_browser(&message(json!([wrapper, page]), "S-OURS"));
        assert_eq!(out, vec![Out::Client(message(json!([page]), "S-OURS"))]);
        // Without the frame it passes as it came; another context's still goes nowhere.
        assert_eq!(f.on_browser(&message(json!([page]), "S-OURS")), vec![Out::Pass]);
        assert!(f.on_browser(&message(json!([wrapper, page]), "S-THEIRS")).is_empty());
    }

    fn sent_count(f: &mut Filter, text: &str) -> usize {
        sent(&f.on_client(text, false)).len()
    }

    #[test]
    fn target_lists_and_events_show_only_the_context() {
        let (mut f, _) = filter(Root::Browser);
        let out = f.on_client(r#"{"id":1,"method":"Target.getTargets"}"#, false);
        assert_eq!(sent(&out).len(), 1);
        let answer = json!({"id": 1, "result": {"targetInfos": [
            {"targetId": "T-OURS", "browserContextId": OURS, "type": "page"},
            {"targetId": "T-THEIRS", "browserContextId": THEIRS, "type": "page"},
            {"targetId": "BROWSER", "type": "browser"}]}});
        let out = f.on_browser(&answer.to_string());
        let infos = &answered(&out)[0]["result"]["targetInfos"];
        assert_eq!(infos.as_array().unwrap().len(), 1);
        assert_eq!(infos[0]["targetId"], "T-OURS");
        for (method, context, shown) in [("targetCreated", THEIRS, false), ("targetInfoChanged", OURS, true)] {
            let event = json!({"method": format!("Target.{method}"), "params": {"targetInfo": {"targetId": "X", "browserContextId": context}}});
            assert_eq!(!f.on_browser(&event.to_string()).is_empty(), shown, "{method}");
        }
        let destroyed = |t: &str| json!({"method": "Target.targetDestroyed", "params": {"targetId": t}}).to_string();
        assert!(f.on_browser(&destroyed("T-THEIRS")).is_empty());
        assert_eq!(f.on_browser(&destroyed("T-OURS")).len(), 1);
        // An answer nobody asked for (or asked for twice) goes nowhere.
        assert!(f.on_browser(&answer.to_string()).is_empty());
    }

    #[test]
    fn a_reused_id_cannot_smuggle_an_unfiltered_answer() {
        let (mut f, _) = filter(Root::Browser);
        assert_eq!(sent_count(&mut f, r#"{"id":7,"method":"Target.getTargets"}"#), 1);
        assert_eq!(sent_count(&mut f, r#"{"id":7,"method":"Browser.getVersion"}"#), 0);
        assert_eq!(sent_count(&mut f, r#"{"id":-1,"method":"Browser.getVersion"}"#), 0);
        // A part given twice is refused: Chrome might read the other one.
        assert_eq!(
            sent_count(&mut f, r#"{"id":8,"method":"Browser.getVersion","id":9}"#),
            0
        );
        // What is sent on is what was checked: one id, one sessionId.
        let out = f.on_client(
            r#"{"id":10,"method":"Runtime.evaluate","sessionId":"X","sessionId":"Y"}"#,
            false,
        );
        assert!(sent(&out).is_empty());
    }

    #[test]
    fn parameters_a_method_does_not_define_are_dropped() {
        let (mut f, _) = filter(Root::Browser);
        let out = f.on_client(
            r#"{"id":1,"method":"Target.setAutoAttach","params":{"autoAttach":true,"flatten":true,"targetId":"T-THEIRS"}}"#,
            false,
        );
        assert_eq!(sent(&out)[0]["params"], json!({"autoAttach": true, "flatten": true}));
    }

    #[test]
    fn a_page_connection_passes_page_traffic_but_filters_targets() {
        let (mut f, _) = filter(Root::Page);
        assert_eq!(
            sent_count(
                &mut f,
                r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"1"}}"#
            ),
            1
        );
        assert_eq!(sent_count(&mut f, r#"{"id":2,"method":"Browser.crash"}"#), 0);
        assert_eq!(
            sent_count(
                &mut f,
                r#"{"id":3,"method":"Target.attachToTarget","params":{"targetId":"T-THEIRS","flatten":true}}"#
            ),
            0
        );
        let event = r#"{"method":"Page.frameNavigated","params":{}}"#;
        assert_eq!(f.on_browser(event).len(), 1);
    }

    /// A page session of the context, attached by the client.
    fn with_page_session(f: &mut Filter) {
        let attached = json!({"method": "Target.attachedToTarget", "params": {"sessionId": "S-OURS",
            "waitingForDebugger": false, "targetInfo": {"targetId": "T-OURS", "type": "page", "browserContextId": OURS}}});
        assert_eq!(f.on_browser(&attached.to_string()), vec![Out::Pass]);
    }

    #[test]
    fn downloads_go_to_the_sessions_folder_whatever_the_client_names() {
        let (f, _) = filter(Root::Browser);
        let mut f = f.with_download_dir("/data/session/downloads");
        with_page_session(&mut f);
        let mut id = 0;
        let mut send = |f: &mut Filter, method: &str, params: Value, session: Option<&str>| {
            id += 1;
            let mut m = json!({"id": id, "method": method, "params": params});
            if let Some(s) = session {
                m["sessionId"] = json!(s);
            }
            sent(&f.on_client(&m.to_string(), false))
                .pop()
                .map(|m| m["params"].clone())
        };
        for session in [None, Some("S-OURS")] {
            for (method, behavior, expected) in [
                ("Browser.setDownloadBehavior", "allow", "allow"),
                ("Browser.setDownloadBehavior", "default", "allow"),
                ("Browser.setDownloadBehavior", "allowAndName", "allowAndName"),
                ("Page.setDownloadBehavior", "allow", "allow"),
                ("Page.setDownloadBehavior", "allowAndName", "allow"),
            ] {
                if method.starts_with("Page") && session.is_none() {
                    continue; // not a browser-level method: refused
                }
                let params =
                    json!({"behavior": behavior, "downloadPath": "/data/token_secret_dir", "eventsEnabled": true});
                let sent = send(&mut f, method, params, session).unwrap();
                assert_eq!(sent["behavior"], expected, "{method} {behavior}");
                assert_eq!(sent["downloadPath"], "/data/session/downloads", "{method} {behavior}");
            }
            let sent = send(
                &mut f,
                "Browser.setDownloadBehavior",
                json!({"behavior": "deny", "downloadPath": "/x"}),
                session,
            )
            .unwrap();
            assert_eq!(sent, json!({"behavior": "deny", "browserContextId": OURS}));
        }
        assert_eq!(
            send(&mut f, "Page.setDownloadBehavior", json!({"behavior": "allow"}), None),
            None
        );
        // Without a folder of the session's, no path passes: downloads are denied.
        let (mut bare, _) = filter(Root::Page);
        let sent = sent(&bare.on_client(
            r#"{"id":1,"method":"Page.setDownloadBehavior","params":{"behavior":"allow","downloadPath":"/etc"}}"#,
            false,
        ));
        assert_eq!(sent[0]["params"], json!({"behavior": "deny"}));
    }

    #[test]
    fn pages_are_given_only_the_sessions_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::write(files.join("cv.pdf"), b"cv").unwrap();
        let own = std::fs::canonicalize(files.join("cv.pdf")).unwrap();
        let (f, _) = filter(Root::Page);
        let mut f = f.with_files_dir(files.clone());
        let command = |method: &str, params: Value| json!({"id": 1, "method": method, "params": params}).to_string();
        for path in ["/etc/passwd".to_owned(), format!("{}/../../x", files.display())] {
            let out = f.on_client(
                &command("DOM.setFileInputFiles", json!({"files": [path], "nodeId": 3})),
                false,
            );
            assert!(sent(&out).is_empty(), "{path}");
            assert!(
                answered(&out)[0]["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("own files")
            );
            let drop = json!({"type": "drop", "x": 1, "y": 1, "data": {"items": [], "files": [path], "dragOperationsMask": 1}});
            assert!(sent(&f.on_client(&command("Input.dispatchDragEvent", drop), false)).is_empty());
        }
        let out = f.on_client(
            &command(
                "DOM.setFileInputFiles",
                json!({"files": [files.join("cv.pdf")], "nodeId": 3}),
            ),
            false,
        );
        assert_eq!(sent(&out)[0]["params"], json!({"files": [own], "nodeId": 3}));
        f.in_flight.clear();
        let drop = json!({"type": "drop", "x": 1, "y": 1, "data": {"items": [], "files": [files.join("cv.pdf")], "dragOperationsMask": 1}});
        let out = f.on_client(&command("Input.dispatchDragEvent", drop), false);
        assert_eq!(sent(&out)[0]["params"]["data"]["files"], json!([own]));
    }

    #[test]
    fn tabs_open_only_at_web_and_blank_pages() {
        let (mut f, _) = filter(Root::Browser);
        with_page_session(&mut f);
        let mut id = 0;
        let mut passes = |f: &mut Filter, method: &str, params: Value, session: Option<&str>| {
            id += 1;
            let mut m = json!({"id": id, "method": method, "params": params});
            if let Some(s) = session {
                m["sessionId"] = json!(s);
            }
            !sent(&f.on_client(&m.to_string(), false)).is_empty()
        };
        for url in [
            "file:///etc/passwd",
            " FILE:/etc/passwd",
            "chrome://version",
            "view-source:file:///etc",
        ] {
            assert!(
                !passes(&mut f, "Target.createTarget", json!({"url": url}), None),
                "{url}"
            );
            assert!(
                !passes(&mut f, "Page.navigate", json!({"url": url}), Some("S-OURS")),
                "{url}"
            );
            assert!(!passes(
                &mut f,
                "Network.loadNetworkResource",
                json!({"url": url, "frameId": "F"}),
                Some("S-OURS")
            ));
            assert!(!passes(
                &mut f,
                "Fetch.continueRequest",
                json!({"url": url, "requestId": "R"}),
                Some("S-OURS")
            ));
        }
        assert!(passes(
            &mut f,
            "Target.createTarget",
            json!({"url": "https://example.com/"}),
            None
        ));
        assert!(passes(
            &mut f,
            "Page.navigate",
            json!({"url": "about:blank"}),
            Some("S-OURS")
        ));
        assert!(passes(
            &mut f,
            "Fetch.continueRequest",
            json!({"requestId": "R"}),
            Some("S-OURS")
        ));
    }

    #[test]
    fn page_commands_pass_as_the_client_wrote_them() {
        let (mut f, _) = filter(Root::Page);
        let text = r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"[1, 2]",  "returnByValue":true}}"#;
        let out = f.on_client(text, false);
        assert_eq!(out, vec![Out::Browser(text.to_owned())]);
    }

    #[test]
    fn download_events_reach_only_their_context() {
        for root in [Root::Browser, Root::Page] {
            let (mut f, _) = filter(root);
            with_page_session(&mut f);
            let begin = |frame: &str, guid: &str| {
                json!({"method": "Browser.downloadWillBegin", "params": {"frameId": frame, "guid": guid,
                    "url": "https://x/f", "suggestedFilename": "f"}})
                .to_string()
            };
            let progress = |guid: &str, state: &str| {
                json!({"method": "Browser.downloadProgress", "params": {"guid": guid, "totalBytes": 1,
                    "receivedBytes": 1, "state": state, "filePath": "/data/artifacts/sess_theirs/.incoming/f"}})
                .to_string()
            };
            // Another context's download, and a frame nobody placed: nothing of them.
            assert!(f.on_browser(&begin("T-THEIRS", "G-THEIRS")).is_empty());
            assert!(f.on_browser(&begin("F-UNKNOWN", "G-UNKNOWN")).is_empty());
            assert!(f.on_browser(&progress("G-THEIRS", "completed")).is_empty());
            // The context's page's, and a subframe its page attached or showed in its tree.
            assert_eq!(f.on_browser(&begin("T-OURS", "G-1")), vec![Out::Pass]);
            let attached = r#"{"method":"Page.frameAttached","params":{"frameId":"F-SUB","parentFrameId":"T-OURS"},"sessionId":"S-OURS"}"#;
            assert_eq!(f.on_browser(attached), vec![Out::Pass]);
            assert_eq!(f.on_browser(&begin("F-SUB", "G-2")), vec![Out::Pass]);
            let out = f.on_client(r#"{"id":1,"method":"Page.getFrameTree","sessionId":"S-OURS"}"#, false);
            assert_eq!(sent(&out).len(), 1);
            let tree = r#"{"id":1,"result":{"frameTree":{"frame":{"id":"T-OURS"},"childFrames":[{"frame":{"id":"F-DEEP"}}]}},"sessionId":"S-OURS"}"#;
            assert_eq!(f.on_browser(tree), vec![Out::Pass]);
            let on_session = begin("F-DEEP", "G-3").replace("}}", r#"},"sessionId":"S-OURS"}"#);
            assert_eq!(f.on_browser(&on_session), vec![Out::Pass]);
            // Its progress passes without the broker's path; once finished, no more.
            let out = f.on_browser(&progress("G-1", "inProgress"));
            let shown = answered(&out);
            assert_eq!(shown[0]["params"]["guid"], "G-1");
            assert!(shown[0]["params"].get("filePath").is_none(), "{out:?}");
            assert_eq!(answered(&f.on_browser(&progress("G-1", "completed"))).len(), 1);
            assert!(f.on_browser(&progress("G-1", "inProgress")).is_empty());
        }
    }
}
