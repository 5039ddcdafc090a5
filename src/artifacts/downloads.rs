//! Watches a session's browser for downloads, on the broker's own CDP connection.
//!
//! The broker sets the session's download folder with events enabled: a directory beside the
//! browser's user-data directory (a context session's own one inside it), the only place
//! the confined browser may write besides its profile and temp.
//! Chrome keeps one setting per browser context, the last one made, and a client may make
//! its own (Playwright does) or leave it reset to Chrome's default when it disconnects; but
//! every connection that enabled events hears of every download. So the watcher notes each
//! download as it begins, cancels one that passes the session's quota, and moves a finished
//! file into the session's files from wherever Chrome wrote it; and after each client
//! disconnects it sets the folder again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::session_files::SessionFiles;
use crate::browser::cdp::{CdpError, Client};
use crate::events::{EventType, SessionEvents};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to watch: a browser (`ws_url`), the session's context in it (`None`: the whole
/// browser is the session's), where Chrome writes its downloads (a directory the confined
/// browser may write), and where the session's files go.
pub(crate) struct Watch {
    pub ws_url: String,
    pub context: Option<String>,
    pub dir: PathBuf,
    pub files: Arc<SessionFiles>,
    /// Notified when a client of the session disconnects.
    pub client_left: Arc<Notify>,
    pub until: CancellationToken,
    /// Where downloads started, finished and refused are told.
    pub events: Option<Arc<SessionEvents>>,
}

/// Sets the session's download folder, then watches until `until` fires or the browser
/// goes. Answers once the folder is set, so the session's first download lands in it.
pub(crate) async fn start(watch: Watch, tracker: &TaskTracker) -> Result<(), CdpError> {
    let client = Client::connect(&watch.ws_url).await?;
    let events = client.subscribe();
    let watcher = Watcher {
        client,
        watch,
        refused: Default::default(),
    };
    watcher.apply().await?;
    tracker.spawn(watcher.run(events).in_current_span());
    Ok(())
}

struct Watcher {
    client: Client,
    watch: Watch,
    /// Downloads refused (their cancel then is no news).
    refused: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Watcher {
    fn tell(&self, kind: EventType, data: Value) {
        if let Some(log) = &self.watch.events {
            log.emit(kind, data);
        }
    }

    fn refuse(&self, guid: &str, reason: &str) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(guid.to_owned());
        self.tell(EventType::DownloadRefused, json!({ "guid": guid, "reason": reason }));
    }

    fn context_params(&self, mut params: Value) -> Value {
        if let Some(context) = &self.watch.context {
            params["browserContextId"] = json!(context);
        }
        params
    }

    async fn apply(&self) -> Result<(), CdpError> {
        let params = self.context_params(json!({
            "behavior": "allow",
            "downloadPath": self.watch.dir,
            "eventsEnabled": true,
        }));
        self.client
            .call(None, "Browser.setDownloadBehavior", params, CALL_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| CdpError::Protocol(format!("Browser.setDownloadBehavior: {e:?}")))
    }

    async fn run(self, mut events: tokio::sync::broadcast::Receiver<Arc<Value>>) {
        // Downloads of frames that are not targets (a context session's subframes): known
        // to be the session's only by where they finish.
        let mut unplaced: std::collections::HashMap<String, String> = Default::default();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => self.on_event(&event, &mut unplaced).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "download watcher fell behind the browser's events");
                    }
                    Err(_) => return,
                },
                _ = self.watch.client_left.notified() => {
                    if let Err(e) = self.apply().await {
                        tracing::debug!(error = %e, "could not set the download folder again");
                    }
                }
                _ = self.watch.until.cancelled() => break,
                // The browser went, and its folders with it.
                _ = self.client.closed().cancelled() => return,
            }
        }
        self.forget_folder().await;
    }

    /// A context session's folder is its own directory inside the shared browser's, which
    /// outlives it: removed with the session, or every ended session would leave its
    /// directory (and any download cut short) there until the browser is replaced. A whole
    /// browser's folder goes with the browser.
    async fn forget_folder(&self) {
        if self.watch.context.is_none() {
            return;
        }
        match tokio::fs::remove_dir_all(&self.watch.dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.watch.dir.display(), error = %e, "could not remove an ended session's download folder")
            }
        }
    }

    async fn on_event(&self, event: &Value, unplaced: &mut std::collections::HashMap<String, String>) {
        let params = &event["params"];
        let guid = params["guid"].as_str().unwrap_or_default();
        if guid.is_empty() {
            return;
        }
        let files = &self.watch.files;
        match event["method"].as_str() {
            Some("Browser.downloadWillBegin") => {
                let suggested = params["suggestedFilename"].as_str().unwrap_or("download");
                match self.is_ours(params["frameId"].as_str().unwrap_or_default()).await {
                    Some(true) => {
                        files.download_began(guid, suggested, 0);
                        self.tell(
                            EventType::DownloadStarted,
                            json!({ "guid": guid, "suggested_filename": suggested, "url": params["url"] }),
                        );
                    }
                    Some(false) => {}
                    None => {
                        unplaced.insert(guid.to_owned(), suggested.to_owned());
                    }
                }
            }
            Some("Browser.downloadProgress") => {
                let state = params["state"].as_str().unwrap_or_default();
                let received = params["receivedBytes"].as_f64().unwrap_or(0.0) as u64;
                let total = params["totalBytes"].as_f64().unwrap_or(0.0) as u64;
                let path = params["filePath"].as_str().map(PathBuf::from);
                if let Some(suggested) = unplaced.get(guid)
                    && state == "completed"
                    && path.as_ref().is_some_and(|p| is_inside(p, &self.watch.dir))
                {
                    files.download_began(guid, suggested, 0);
                    self.tell(
                        EventType::DownloadStarted,
                        json!({ "guid": guid, "suggested_filename": suggested }),
                    );
                }
                if state != "inProgress" {
                    unplaced.remove(guid);
                }
                if !files.has_download(guid) {
                    return;
                }
                match state {
                    "inProgress" => {
                        if !files.download_progressed(guid, received.max(total)) {
                            tracing::info!(guid, "download cancelled: past the session's files quota");
                            self.refuse(guid, "past the session's files quota");
                            let params = self.context_params(json!({ "guid": guid }));
                            let _ = self
                                .client
                                .call(None, "Browser.cancelDownload", params, CALL_TIMEOUT)
                                .await;
                        }
                    }
                    // Only from the session's own folder: the broker moves no file from
                    // anywhere else a client had Chrome write (or name).
                    "completed" => match path {
                        Some(path) if is_inside(&path, &self.watch.dir) => {
                            files.download_completed(guid, &path);
                            self.tell(
                                EventType::DownloadFinished,
                                json!({ "guid": guid, "state": "completed", "bytes": received.max(total) }),
                            );
                        }
                        _ => {
                            files.download_canceled(guid);
                            self.refuse(guid, "written outside the session's download folder");
                        }
                    },
                    _ => {
                        files.download_canceled(guid);
                        if !self.refused.lock().unwrap_or_else(|e| e.into_inner()).remove(guid) {
                            self.tell(EventType::DownloadFinished, json!({ "guid": guid, "state": state }));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether the frame that began a download is in the session's context; `None` if it is
    /// not a target (a subframe) and cannot be told now.
    async fn is_ours(&self, frame: &str) -> Option<bool> {
        let Some(context) = &self.watch.context else {
            return Some(true);
        };
        let info = self
            .client
            .call(None, "Target.getTargetInfo", json!({ "targetId": frame }), CALL_TIMEOUT)
            .await
            .ok()?;
        Some(info["targetInfo"]["browserContextId"].as_str() == Some(context.as_str()))
    }
}

/// Whether `path` names something inside `dir`: no `..` can lead it out.
fn is_inside(path: &std::path::Path, dir: &std::path::Path) -> bool {
    use std::path::Component;
    path.starts_with(dir) && !path.components().any(|c| matches!(c, Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::is_inside;
    use std::path::Path;

    #[test]
    fn only_files_inside_the_folder_are_taken() {
        let dir = Path::new("/data/browsers/ab.downloads/sess_1");
        assert!(is_inside(&dir.join("report.pdf"), dir));
        assert!(!is_inside(Path::new("/data/token_secret"), dir));
        assert!(!is_inside(&dir.join("../sess_2/x"), dir));
        assert!(!is_inside(Path::new("/data/browsers/ab.downloads/sess_10/x"), dir));
    }
}
