//! What a session's pages said and fetched, for sessions created with `capture_console`
//! or `capture_network`: console messages, uncaught exceptions and failed loads
//! ([`logs`]), and every request with its response as HAR 1.2 ([`har`]).
//!
//! The browser layer's identity keeper feeds it from the broker's own CDP connection (the
//! client's never carries a command of ours). Each session's capture lives in memory while
//! the session runs, bounded by the config's caps; when the keeper lets go (the session
//! ended) it is written to `data_dir/capture/<session>.{logs,har}.json`, read from there
//! until the session's record is swept (`retention_secs`). While it runs, what changed is
//! written there every [`FLUSH_PERIOD`] too, so that a broker that dies keeps what its
//! sessions captured up to then.

mod common;
pub(crate) mod har;
pub(crate) mod logs;

pub(crate) use common::Limits;
pub(crate) use common::cut as cut_text;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use har::Har;
use logs::Logs;

/// How often running sessions' captures are written down (what changed since).
pub(crate) const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// What a session asked to capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants {
    pub console: bool,
    pub network: bool,
    /// Response and request bodies in the HAR (with `network` only).
    pub bodies: bool,
}

impl Wants {
    pub fn any(self) -> bool {
        self.console || self.network
    }
}

/// Every session's capture on this node.
pub(crate) struct Captures {
    dir: PathBuf,
    limits: Limits,
    open: Mutex<HashMap<String, Arc<SessionCapture>>>,
}

/// Which document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Document {
    Logs,
    Har,
}

impl Document {
    fn suffix(self) -> &'static str {
        match self {
            Document::Logs => "logs.json",
            Document::Har => "har.json",
        }
    }
}

impl Captures {
    pub(crate) fn new(dir: PathBuf, limits: Limits) -> std::io::Result<Arc<Captures>> {
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Captures {
            dir,
            limits,
            open: Mutex::new(HashMap::new()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SessionCapture>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, id: &str, doc: Document) -> PathBuf {
        self.dir.join(format!("{id}.{}", doc.suffix()))
    }

    /// Starts the capture of a new session (ids are the broker's own, never a client's).
    pub(crate) fn open(self: &Arc<Self>, id: &str, wants: Wants) -> Arc<SessionCapture> {
        let capture = Arc::new(SessionCapture {
            session_id: id.to_owned(),
            wants,
            limits: self.limits,
            captures: Arc::downgrade(self),
            changed: AtomicBool::new(false),
            writing: Mutex::new(()),
            state: Mutex::new(State {
                logs: Logs::new(self.limits.log_entries, self.limits.log_bytes),
                har: Har::new(self.limits, wants.bodies),
            }),
        });
        self.lock().insert(id.to_owned(), capture.clone());
        capture
    }

    /// Session `id`'s document as JSON bytes: live while it runs here, else as written at
    /// its end. `None`: nothing kept here.
    pub(crate) fn read(&self, id: &str, doc: Document) -> Option<Vec<u8>> {
        if let Some(capture) = self.lock().get(id).cloned() {
            return serde_json::to_vec(&capture.document(doc)).ok();
        }
        std::fs::read(self.path(id, doc)).ok()
    }

    /// Forgets a session's capture (its record was swept or deleted).
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
        for doc in [Document::Logs, Document::Har] {
            let path = self.path(id, doc);
            let _ = std::fs::remove_file(temporary(&path));
            let _ = std::fs::remove_file(path);
        }
    }

    /// Writes down what the running sessions captured since the last time.
    pub(crate) fn flush(&self) {
        let open: Vec<Arc<SessionCapture>> = self.lock().values().cloned().collect();
        for capture in open {
            if capture.changed.swap(false, Ordering::Relaxed) {
                capture.write(self);
            }
        }
    }

    /// The sessions whose capture is kept here.
    pub(crate) fn session_ids(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let name = name.strip_suffix(".tmp").unwrap_or(&name);
                let id = name
                    .strip_suffix(".logs.json")
                    .or_else(|| name.strip_suffix(".har.json"))?;
                Some(id.to_owned())
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

struct State {
    logs: Logs,
    har: Har,
}

/// One session's capture, fed by its keeper.
pub(crate) struct SessionCapture {
    pub(crate) session_id: String,
    pub(crate) wants: Wants,
    limits: Limits,
    captures: std::sync::Weak<Captures>,
    /// Taken something since it was last written down.
    changed: AtomicBool,
    /// One writer at a time (the periodic flush and the end's).
    writing: Mutex<()>,
    state: Mutex<State>,
}

/// What follows from an event the capture took.
#[derive(Default)]
pub(crate) struct Taken {
    /// A response body to ask for (`Network.getResponseBody` of that request), for the HAR.
    pub(crate) body: Option<String>,
    /// An error a page showed, to tell as an event.
    pub(crate) error: Option<logs::ErrorSeen>,
}

impl SessionCapture {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes a CDP event of target `target_id` (reached on CDP session `session`); answers
    /// what follows from it: a body to ask for, an error to tell.
    pub(crate) fn event(&self, session: &str, target_id: &str, event: &Value) -> Taken {
        let method = event["method"].as_str().unwrap_or("");
        let params = &event["params"];
        let mut state = self.state();
        self.changed.store(true, Ordering::Relaxed);
        match method {
            "Runtime.consoleAPICalled" | "Runtime.exceptionThrown" | "Log.entryAdded" if self.wants.console => Taken {
                error: state.logs.take(method, params, target_id),
                ..Taken::default()
            },
            m if m.starts_with("Network.") && self.wants.network => Taken {
                body: state.har.take(m, params, session, target_id),
                ..Taken::default()
            },
            _ => Taken::default(),
        }
    }

    /// A body asked for with [`Self::event`] arrived (the reply's `result`).
    pub(crate) fn body(&self, session: &str, request_id: &str, result: &Value) {
        self.state().har.body(session, request_id, result);
        self.changed.store(true, Ordering::Relaxed);
    }

    fn document(&self, doc: Document) -> Value {
        let state = self.state();
        match doc {
            Document::Logs => state.logs.document(&self.session_id),
            Document::Har => state.har.document(),
        }
    }

    /// The session ended: its documents are written down and read from there on.
    pub(crate) fn finish(&self) {
        let Some(captures) = self.captures.upgrade() else {
            return;
        };
        self.write(&captures);
        let mut open = captures.lock();
        if open
            .get(&self.session_id)
            .is_some_and(|c| std::ptr::eq(c.as_ref(), self))
        {
            open.remove(&self.session_id);
        }
    }

    /// Writes the documents asked for, each whole or not at all (a temporary file renamed
    /// over the last), so a broker killed meanwhile leaves the previous one readable.
    fn write(&self, captures: &Captures) {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        for (doc, wanted) in [
            (Document::Logs, self.wants.console),
            (Document::Har, self.wants.network),
        ] {
            if !wanted {
                continue;
            }
            let path = captures.path(&self.session_id, doc);
            let written = serde_json::to_vec(&self.document(doc))
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(temporary(&path), bytes))
                .and_then(|()| std::fs::rename(temporary(&path), &path));
            if let Err(e) = written {
                tracing::warn!(session = %self.session_id, error = %e, "the session's capture cannot be written");
            }
        }
    }
}

/// Where a document is written before it takes its place.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The capture directory under `data_dir`.
pub(crate) fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("capture")
}
