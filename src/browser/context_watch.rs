//! A shared browser's one context watch: its tabs and its downloads, for all of its context
//! sessions, heard once on the broker's own connection to the browser (the one that makes
//! and disposes its contexts, and already discovers its targets for the filters).
//!
//! Each context session registers its browser context: its [`Tabs`] (the tab cap and the tab
//! events) and its [`DownloadSink`]. The watch knows every target's browser context
//! (from `Target.targetCreated`), hands each target event to the session of that context
//! only, and works out whose each download is: a download names the frame that began it,
//! which is a target of one context, or else (a frame that is not a target) it is the
//! session's in whose own folder Chrome finished it. An event of a context no session holds
//! (a spare, one being disposed) reaches no one. So a create costs no connection and no
//! replay of the browser's targets, and no session's watch reaches another context's tabs
//! or files.
//!
//! If the connection drops (the browser went) the watch stops, and with it the browser's
//! context sessions and its taking of new ones: this connection makes the contexts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cdp::{CdpError, Client};
use super::tab_cap::Tabs;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the watch hands a context session's downloads: its files (`artifacts::downloads`,
/// a layer above the browser's, implements it).
pub(crate) trait DownloadSink: Send + Sync {
    /// The session's own download folder.
    fn dir(&self) -> &Path;
    /// Whether Chrome wrote `path` into that folder (directly: not in a subdirectory).
    fn holds(&self, path: &Path) -> bool;
    /// `Browser.setDownloadBehavior`'s parameters for the folder, in `context`.
    fn behavior(&self, context: Option<&str>) -> Value;
    /// A download of the session's has begun (`url`, when known).
    fn began(&self, guid: &str, suggested: &str, url: Option<&Value>);
    /// A `Browser.downloadProgress` of one of its downloads; answers whether to cancel it.
    fn progressed(self: Arc<Self>, params: &Value) -> bool;
}

enum Command {
    Tabs {
        context: String,
        tabs: Tabs,
        done: oneshot::Sender<()>,
    },
    Downloads {
        context: String,
        downloads: Arc<dyn DownloadSink>,
        done: oneshot::Sender<()>,
    },
    Unregister {
        context: String,
    },
}

/// A shared browser's context watch, for the browser's life.
pub(crate) struct ContextWatch {
    client: Arc<Client>,
    commands: mpsc::UnboundedSender<Command>,
    registered: Arc<AtomicUsize>,
    stopped: CancellationToken,
}

impl ContextWatch {
    /// Watches the browser on `client`, whose events `events` are: subscribed before the
    /// browser's targets are discovered on it, so that the watch learns every one. Stops
    /// when the connection closes or `exited` fires.
    pub(crate) fn start(
        client: Arc<Client>,
        events: broadcast::Receiver<Arc<Value>>,
        exited: CancellationToken,
    ) -> ContextWatch {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (registered, stopped) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        let dispatch = Dispatch {
            client: client.clone(),
            targets: HashMap::new(),
            created: 0,
            contexts: HashMap::new(),
            downloads: HashMap::new(),
            unplaced: HashMap::new(),
            registered: registered.clone(),
        };
        let ended = stopped.clone();
        tokio::spawn(async move {
            dispatch.run(events, receiver, exited).await;
            ended.cancel();
        });
        ContextWatch {
            client,
            commands,
            registered,
            stopped,
        }
    }

    fn send(&self, command: Command) -> Result<(), CdpError> {
        self.commands
            .send(command)
            .map_err(|_| CdpError::Http("the shared browser's context watch has stopped".into()))
    }

    /// Undoes `context`'s registrations once `until` fires (sent after a registration, so it
    /// comes after it).
    fn unregister_at(&self, context: &str, until: CancellationToken, tracker: &TaskTracker) {
        let (commands, context) = (self.commands.clone(), context.to_owned());
        tracker.spawn(async move {
            until.cancelled().await;
            let _ = commands.send(Command::Unregister { context });
        });
    }

    async fn answered(&self, done: oneshot::Receiver<()>) -> Result<(), CdpError> {
        tokio::time::timeout(CALL_TIMEOUT, done)
            .await
            .map_err(|_| CdpError::Timeout)?
            .map_err(|_| CdpError::Http("the shared browser's context watch has stopped".into()))
    }

    /// Hands `tabs` the events of `context`'s tabs (those open now before this answers,
    /// later ones as they come) until `until` fires.
    pub(crate) async fn watch_tabs(
        &self,
        context: &str,
        tabs: Tabs,
        until: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), CdpError> {
        let (done, answer) = oneshot::channel();
        let context = context.to_owned();
        self.send(Command::Tabs {
            context: context.clone(),
            tabs,
            done,
        })?;
        self.unregister_at(&context, until, tracker);
        self.answered(answer).await
    }

    /// Sets `context`'s download folder (again after each client of its session leaves, on
    /// `client_left`) and hands `downloads` its downloads until `until` fires; then removes
    /// the folder. Answers once the folder is set, so the first download lands in it.
    pub(crate) async fn watch_downloads(
        &self,
        context: &str,
        downloads: Arc<dyn DownloadSink>,
        client_left: Arc<Notify>,
        until: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), CdpError> {
        let (done, answer) = oneshot::channel();
        let context = context.to_owned();
        self.send(Command::Downloads {
            context: context.clone(),
            downloads: downloads.clone(),
            done,
        })?;
        let behavior = downloads.behavior(Some(&context));
        let (client, commands, again) = (self.client.clone(), self.commands.clone(), behavior.clone());
        let dir: PathBuf = downloads.dir().to_owned();
        tracker.spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = client_left.notified() => {
                            if let Err(e) = set_folder(&client, again.clone()).await {
                                tracing::debug!(error = %e, "could not set the download folder again");
                            }
                        }
                        _ = until.cancelled() => break,
                    }
                }
                let _ = commands.send(Command::Unregister { context });
                forget_folder(&dir).await;
            }
            .in_current_span(),
        );
        self.answered(answer).await?;
        set_folder(&self.client, behavior).await
    }

    /// Whether it still watches (it stops with the browser's connection): a browser without
    /// it takes no new context.
    pub(crate) fn is_running(&self) -> bool {
        !self.stopped.is_cancelled()
    }

    /// Fires once it has stopped.
    pub(crate) fn stopped(&self) -> CancellationToken {
        self.stopped.clone()
    }

    /// The contexts registered now.
    pub(crate) fn registered(&self) -> usize {
        self.registered.load(Relaxed)
    }
}

async fn set_folder(client: &Client, behavior: Value) -> Result<(), CdpError> {
    client
        .call(None, "Browser.setDownloadBehavior", behavior, CALL_TIMEOUT)
        .await
        .map(drop)
        .map_err(|e| CdpError::Protocol(format!("Browser.setDownloadBehavior: {e:?}")))
}

/// A target of the browser.
struct Target {
    context: String,
    page: bool,
    url: String,
    /// When it was discovered: a context's tabs are handed over oldest first.
    created: u64,
}

/// What a context's session follows.
#[derive(Default)]
struct Watched {
    tabs: Option<Tabs>,
    downloads: Option<Arc<dyn DownloadSink>>,
}

/// The watch's task: alone to read and change what it knows, so that a registration comes
/// between two events, never amid one.
struct Dispatch {
    client: Arc<Client>,
    /// Every target of the browser, by its id.
    targets: HashMap<String, Target>,
    created: u64,
    /// Each context session's, by its browser context.
    contexts: HashMap<String, Watched>,
    /// Downloads under way, by guid → the context whose they are.
    downloads: HashMap<String, String>,
    /// Downloads begun by frames that are not targets → their suggested name, until they
    /// finish in a session's folder.
    unplaced: HashMap<String, String>,
    registered: Arc<AtomicUsize>,
}

impl Dispatch {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Value>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        exited: CancellationToken,
    ) {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => self.on_event(&event),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a shared browser's context watch fell behind its events");
                    }
                    Err(RecvError::Closed) => break,
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        // Every event Chrome sent before the registration was asked for (the
                        // spare context's first tab) is known before it is taken.
                        if !self.catch_up(&mut events) {
                            break;
                        }
                        self.on_command(command);
                    }
                    None => break,
                },
                _ = self.client.closed().cancelled() => break,
                _ = exited.cancelled() => break,
            }
        }
        self.contexts.clear();
        self.registered.store(0, Relaxed);
    }

    /// Takes the events received so far; false if the connection has closed.
    fn catch_up(&mut self, events: &mut broadcast::Receiver<Arc<Value>>) -> bool {
        loop {
            match events.try_recv() {
                Ok(event) => self.on_event(&event),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a shared browser's context watch fell behind its events");
                }
                Err(TryRecvError::Closed) => return false,
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Tabs {
                context,
                mut tabs,
                done,
            } => {
                // Its tabs open now, as their discovery would have told them.
                let mut open: Vec<(&String, &Target)> = self
                    .targets
                    .iter()
                    .filter(|(_, t)| t.page && t.context == context)
                    .collect();
                open.sort_by_key(|(_, t)| t.created);
                let open: Vec<(String, String)> = open.into_iter().map(|(id, t)| (id.clone(), t.url.clone())).collect();
                for (id, url) in open {
                    let event = json!({
                        "method": "Target.targetCreated",
                        "params": { "targetInfo": { "targetId": id, "type": "page", "url": url, "browserContextId": context } },
                    });
                    if let Some(extra) = tabs.on_event(&event) {
                        self.close(&extra);
                    }
                }
                self.contexts.entry(context).or_default().tabs = Some(tabs);
                let _ = done.send(());
            }
            Command::Downloads {
                context,
                downloads,
                done,
            } => {
                self.contexts.entry(context).or_default().downloads = Some(downloads);
                let _ = done.send(());
            }
            Command::Unregister { context } => {
                self.contexts.remove(&context);
                self.downloads.retain(|_, c| *c != context);
            }
        }
        self.registered.store(self.contexts.len(), Relaxed);
    }

    fn on_event(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Target.targetCreated" | "Target.targetInfoChanged") => {
                let info = &params["targetInfo"];
                let Some(id) = info["targetId"].as_str() else { return };
                let context = info["browserContextId"].as_str().unwrap_or_default().to_owned();
                let url = info["url"].as_str().unwrap_or_default().to_owned();
                if let Some(known) = self.targets.get_mut(id) {
                    known.url = url;
                    self.hand_to_tabs(&context, event);
                    return;
                }
                self.created += 1;
                let page = info["type"] == "page";
                let target = Target {
                    context: context.clone(),
                    page,
                    url,
                    created: self.created,
                };
                self.targets.insert(id.to_owned(), target);
                // One first heard of as it changed (its creation missed while the watch fell
                // behind) still counts as opened.
                let created = json!({ "method": "Target.targetCreated", "params": { "targetInfo": info } });
                self.hand_to_tabs(&context, &created);
                if event["method"] == "Target.targetInfoChanged" {
                    self.hand_to_tabs(&context, event);
                }
            }
            Some("Target.targetCrashed") => {
                let id = params["targetId"].as_str().unwrap_or_default();
                if let Some(context) = self.targets.get(id).map(|t| t.context.clone()) {
                    self.hand_to_tabs(&context, event);
                }
            }
            Some("Target.targetDestroyed") => {
                let id = params["targetId"].as_str().unwrap_or_default();
                if let Some(target) = self.targets.remove(id) {
                    self.hand_to_tabs(&target.context, event);
                }
            }
            Some("Browser.downloadWillBegin") => self.download_began(params),
            Some("Browser.downloadProgress") => self.download_progressed(params),
            _ => {}
        }
    }

    /// Hands a target event to the tabs of `context`'s session, if one holds it.
    fn hand_to_tabs(&mut self, context: &str, event: &Value) {
        let extra = match self.contexts.get_mut(context).and_then(|w| w.tabs.as_mut()) {
            Some(tabs) => tabs.on_event(event),
            None => return,
        };
        if let Some(extra) = extra {
            self.close(&extra);
        }
    }

    fn close(&self, target: &str) {
        let _ = self
            .client
            .send(None, "Target.closeTarget", json!({ "targetId": target }));
    }

    /// A download is the session's whose context the frame that began it is in; one begun
    /// by a frame that is not a target waits to be placed by where it finishes.
    fn download_began(&mut self, params: &Value) {
        let Some(guid) = params["guid"].as_str().filter(|g| !g.is_empty()) else {
            return;
        };
        let suggested = params["suggestedFilename"].as_str().unwrap_or("download");
        let frame = params["frameId"].as_str().unwrap_or_default();
        let Some(target) = self.targets.get(frame) else {
            self.unplaced.insert(guid.to_owned(), suggested.to_owned());
            return;
        };
        let context = target.context.clone();
        if let Some(downloads) = self.contexts.get(&context).and_then(|w| w.downloads.as_ref()) {
            downloads.began(guid, suggested, Some(&params["url"]));
            self.downloads.insert(guid.to_owned(), context);
        }
    }

    fn download_progressed(&mut self, params: &Value) {
        let Some(guid) = params["guid"].as_str().filter(|g| !g.is_empty()) else {
            return;
        };
        let state = params["state"].as_str().unwrap_or_default();
        let finished = state != "inProgress";
        if let Some(suggested) = self.unplaced.get(guid)
            && state == "completed"
            && let Some(path) = params["filePath"].as_str().map(std::path::Path::new)
        {
            // Only a session's own folder names it: one finished anywhere else is no one's.
            let owner = self.contexts.iter().find_map(|(context, w)| {
                let downloads = w.downloads.as_ref().filter(|d| d.holds(path))?;
                Some((context.clone(), downloads.clone()))
            });
            if let Some((context, downloads)) = owner {
                downloads.began(guid, suggested, None);
                self.downloads.insert(guid.to_owned(), context);
            }
        }
        if finished {
            self.unplaced.remove(guid);
        }
        let Some(context) = self.downloads.get(guid).cloned() else {
            return;
        };
        if finished {
            self.downloads.remove(guid);
        }
        let Some(downloads) = self.contexts.get(&context).and_then(|w| w.downloads.clone()) else {
            return;
        };
        if downloads.progressed(params) {
            let cancel = json!({ "guid": guid, "browserContextId": context });
            let _ = self.client.send(None, "Browser.cancelDownload", cancel);
        }
    }
}

/// Removes an ended context session's folder: its own directory inside the shared browser's,
/// which outlives it; else every ended session would leave its directory (and any download
/// cut short) there until the browser is replaced.
async fn forget_folder(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove an ended session's download folder")
        }
    }
}
