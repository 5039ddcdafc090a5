//! Watches a session's browser for downloads, on the broker's own CDP connection.
//!
//! The broker sets the session's download folder with events enabled: a directory beside the
//! browser's user-data directory (a context session's own one inside it), the only place
//! the confined browser may write besides its profile and temp.
//! Chrome keeps one setting per browser context, the last one made, and a client may make
//! its own (Playwright does) or leave it reset to Chrome's default when it disconnects; but
//! every connection that enabled events hears of every download. So the broker notes each
//! download as it begins, cancels one that passes the session's quota, and moves a finished
//! file into the session's files from wherever Chrome wrote it; and after each client
//! disconnects it sets the folder again.
//!
//! A process session's browser is all its own: [`start`] watches it on a connection of its
//! own. A context session's downloads are heard by its shared browser's one context watch
//! (`browser/context_watch.rs`), which works out whose each download is and hands it to that
//! session's [`SessionDownloads`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::session_files::SessionFiles;
use crate::browser::cdp::{CdpError, Client};
use crate::browser::context_watch::DownloadSink;
use crate::events::{EventType, SessionEvents};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A process session's browser to watch (`ws_url`), all of whose downloads are its.
pub(crate) struct Watch {
    pub ws_url: String,
    pub downloads: Arc<SessionDownloads>,
    /// Notified when a client of the session disconnects.
    pub client_left: Arc<Notify>,
    pub until: CancellationToken,
}

/// One session's downloads: where Chrome writes them (a directory the confined browser may
/// write), where the session's files go, and where downloads started, finished and refused
/// are told.
pub(crate) struct SessionDownloads {
    dir: PathBuf,
    files: Arc<SessionFiles>,
    events: Option<Arc<SessionEvents>>,
    /// Downloads refused (their cancel then is no news).
    refused: Mutex<HashSet<String>>,
}

impl SessionDownloads {
    pub(crate) fn new(dir: PathBuf, files: Arc<SessionFiles>, events: Option<Arc<SessionEvents>>) -> SessionDownloads {
        SessionDownloads {
            dir,
            files,
            events,
            refused: Mutex::default(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether Chrome wrote `path` into the session's folder.
    pub(crate) fn holds(&self, path: &Path) -> bool {
        file_in(path, &self.dir).is_some()
    }

    /// `Browser.setDownloadBehavior`'s parameters for the session's folder (in `context`, a
    /// context session's).
    pub(crate) fn behavior(&self, context: Option<&str>) -> Value {
        let mut params = json!({ "behavior": "allow", "downloadPath": self.dir, "eventsEnabled": true });
        if let Some(context) = context {
            params["browserContextId"] = json!(context);
        }
        params
    }

    fn tell(&self, kind: EventType, data: Value) {
        if let Some(log) = &self.events {
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

    /// A download of the session's has begun (`url`, when known).
    pub(crate) fn began(&self, guid: &str, suggested: &str, url: Option<&Value>) {
        self.files.download_began(guid, suggested, 0);
        let mut data = json!({ "guid": guid, "suggested_filename": suggested });
        if let Some(url) = url {
            data["url"] = url.clone();
        }
        self.tell(EventType::DownloadStarted, data);
    }

    /// Takes a `Browser.downloadProgress` of one of the session's downloads; answers whether
    /// to cancel it (it passed the session's quota).
    pub(crate) fn progressed(self: &Arc<Self>, params: &Value) -> bool {
        let guid = params["guid"].as_str().unwrap_or_default();
        if !self.files.has_download(guid) {
            return false;
        }
        let received = params["receivedBytes"].as_f64().unwrap_or(0.0) as u64;
        let total = params["totalBytes"].as_f64().unwrap_or(0.0) as u64;
        match params["state"].as_str().unwrap_or_default() {
            "inProgress" => {
                if !self.files.download_progressed(guid, received.max(total)) {
                    tracing::info!(guid, "download cancelled: past the session's files quota");
                    self.refuse(guid, "past the session's files quota");
                    return true;
                }
            }
            // Only from the session's own folder: the broker moves no file from anywhere
            // else a client had Chrome write (or name).
            "completed" => match params["filePath"]
                .as_str()
                .and_then(|p| file_in(Path::new(p), &self.dir))
            {
                Some(file) => {
                    // A copy (another file system) must not hold up the browser's other
                    // events: a shared browser's are every context session's.
                    let (this, guid) = (self.clone(), guid.to_owned());
                    tokio::task::spawn_blocking(move || {
                        this.files.download_completed(&guid, &this.dir, &file);
                        this.tell(
                            EventType::DownloadFinished,
                            json!({ "guid": guid, "state": "completed", "bytes": received.max(total) }),
                        );
                    });
                }
                _ => {
                    self.files.download_canceled(guid);
                    self.refuse(guid, "written outside the session's download folder");
                }
            },
            state => {
                self.files.download_canceled(guid);
                if !self.refused.lock().unwrap_or_else(|e| e.into_inner()).remove(guid) {
                    self.tell(EventType::DownloadFinished, json!({ "guid": guid, "state": state }));
                }
            }
        }
        false
    }
}

/// A context session's downloads, handed over by its shared browser's context watch.
impl DownloadSink for SessionDownloads {
    fn dir(&self) -> &Path {
        SessionDownloads::dir(self)
    }

    fn holds(&self, path: &Path) -> bool {
        SessionDownloads::holds(self, path)
    }

    fn behavior(&self, context: Option<&str>) -> Value {
        SessionDownloads::behavior(self, context)
    }

    fn began(&self, guid: &str, suggested: &str, url: Option<&Value>) {
        SessionDownloads::began(self, guid, suggested, url)
    }

    fn progressed(self: Arc<Self>, params: &Value) -> bool {
        SessionDownloads::progressed(&self, params)
    }
}

/// Sets a process session's download folder, then watches until `until` fires or the
/// browser goes. Answers once the folder is set, so the session's first download lands in it.
pub(crate) async fn start(watch: Watch, tracker: &TaskTracker) -> Result<(), CdpError> {
    let client = Client::connect(&watch.ws_url).await?;
    let events = client.subscribe();
    apply(&client, &watch.downloads).await?;
    tracker.spawn(run(client, watch, events).in_current_span());
    Ok(())
}

async fn apply(client: &Client, downloads: &SessionDownloads) -> Result<(), CdpError> {
    client
        .call(
            None,
            "Browser.setDownloadBehavior",
            downloads.behavior(None),
            CALL_TIMEOUT,
        )
        .await
        .map(|_| ())
        .map_err(|e| CdpError::Protocol(format!("Browser.setDownloadBehavior: {e:?}")))
}

async fn run(client: Client, watch: Watch, mut events: tokio::sync::broadcast::Receiver<Arc<Value>>) {
    let downloads = &watch.downloads;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    let params = &event["params"];
                    let guid = params["guid"].as_str().unwrap_or_default();
                    match event["method"].as_str() {
                        _ if guid.is_empty() => {}
                        Some("Browser.downloadWillBegin") => {
                            let suggested = params["suggestedFilename"].as_str().unwrap_or("download");
                            downloads.began(guid, suggested, Some(&params["url"]));
                        }
                        Some("Browser.downloadProgress") if downloads.progressed(params) => {
                            let _ = client
                                .call(None, "Browser.cancelDownload", json!({ "guid": guid }), CALL_TIMEOUT)
                                .await;
                        }
                        _ => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "download watcher fell behind the browser's events");
                }
                Err(_) => return,
            },
            _ = watch.client_left.notified() => {
                if let Err(e) = apply(&client, downloads).await {
                    tracing::debug!(error = %e, "could not set the download folder again");
                }
            }
            // A whole browser's folder goes with the browser.
            _ = watch.until.cancelled() => return,
            _ = client.closed().cancelled() => return,
        }
    }
}

/// The file name of `path` if it is directly in `dir` (where Chrome writes a download):
/// nothing in a subdirectory, which the browser could have made a link.
fn file_in(path: &Path, dir: &Path) -> Option<String> {
    use std::path::Component;
    let mut components = path.strip_prefix(dir).ok()?.components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) => name.to_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::file_in;
    use std::path::Path;

    #[test]
    fn only_files_directly_in_the_folder_are_taken() {
        let dir = Path::new("/data/browsers/ab.downloads/sess_1");
        assert_eq!(file_in(&dir.join("report.pdf"), dir).as_deref(), Some("report.pdf"));
        assert_eq!(file_in(Path::new("/data/token_secret"), dir), None);
        assert_eq!(file_in(&dir.join("../sess_2/x"), dir), None);
        assert_eq!(file_in(&dir.join("sub/x"), dir), None, "a subdirectory could be a link");
        assert_eq!(file_in(dir, dir), None);
        assert_eq!(file_in(Path::new("/data/browsers/ab.downloads/sess_10/x"), dir), None);
    }
}
