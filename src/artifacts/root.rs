//! The artifacts' root directory: every session's artifacts on this node, and the ffmpeg
//! that encodes recordings.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;

use super::session_files::{Limits, SessionFiles};
use crate::metrics::{ArtifactUsage as Usage, Metrics};

/// Every session's artifacts on this node.
pub struct Artifacts {
    root: PathBuf,
    pub limits: Limits,
    /// The ffmpeg that encodes recordings, if there is one.
    pub ffmpeg: Option<PathBuf>,
    metrics: Arc<Metrics>,
    open: DashMap<String, Arc<SessionFiles>>,
}

impl Artifacts {
    pub fn new(root: PathBuf, limits: Limits, ffmpeg: Option<PathBuf>, metrics: Arc<Metrics>) -> io::Result<Artifacts> {
        std::fs::create_dir_all(&root)?;
        Ok(Artifacts {
            root,
            limits,
            ffmpeg,
            metrics,
            open: DashMap::new(),
        })
    }

    /// A session's artifacts, its directory made on first use.
    pub fn session(&self, id: &str) -> io::Result<Arc<SessionFiles>> {
        if let Some(files) = self.open.get(id) {
            return Ok(files.clone());
        }
        let files = Arc::new(SessionFiles::open(
            self.root.join(id),
            self.limits,
            self.metrics.clone(),
        )?);
        Ok(self.open.entry(id.to_owned()).or_insert(files).clone())
    }

    /// A session's artifacts if it has any (nothing is made for a session without).
    pub fn existing(&self, id: &str) -> Option<Arc<SessionFiles>> {
        if let Some(files) = self.open.get(id) {
            return Some(files.clone());
        }
        if !valid_id(id) || !self.root.join(id).is_dir() {
            return None;
        }
        self.session(id).ok()
    }

    /// Removes a session's artifacts (its record is gone), once what still writes into
    /// them (a recording being finished) is done, waiting `FINISH_TIMEOUT` at most.
    pub async fn remove(&self, id: &str) {
        if let Some((_, files)) = self.open.remove(id) {
            files.writers_done(super::recording::FINISH_TIMEOUT).await;
        }
        if valid_id(id) {
            let dir = self.root.join(id);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(session = %id, error = %e, "could not remove the session's files");
            }
        }
    }

    /// The sessions that have artifacts here.
    pub fn session_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| valid_id(id))
            .collect()
    }

    /// Bytes of files and recordings held, and how many files and recordings.
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return usage;
        };
        for entry in entries.flatten() {
            if let Some(files) = self.existing(&entry.file_name().to_string_lossy()) {
                let (bytes, count) = files.used();
                usage.files_bytes += bytes;
                usage.files += count;
                if let Ok(meta) = std::fs::metadata(files.recording_path()) {
                    usage.recordings += 1;
                    usage.recording_bytes += meta.len();
                }
            }
        }
        usage
    }
}

/// The ffmpeg at `configured`, or the first `ffmpeg` on the `PATH` when that is empty.
pub(crate) fn find_ffmpeg(configured: &str) -> Option<PathBuf> {
    if !configured.is_empty() {
        let path = PathBuf::from(configured);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ffmpeg"))
        .find(|candidate| candidate.is_file())
}

/// Session ids are the broker's own (`sess_` and hex); anything else is not a directory.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
