//! What a session leaves behind: the files it downloaded or was given, and its recording.
//!
//! Each session has a directory `data_dir/artifacts/{session}`: `files/` (what the API
//! lists and serves), `recording.mp4`, and `index.json` (each file's kind, time and state,
//! rewritten at each change). No browser may write here: Chrome writes downloads into its
//! own downloads directory, and a finished one is moved in. The directory outlives the
//! session for `retention_secs` and is removed with the session's record.
//!
//! [`downloads`] watches a session's browser for downloads, [`recording`] records its
//! active tab, [`zip`] packs its files for one download.

pub mod cdp_log;
pub mod downloads;
pub mod recording;
pub mod zip;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::auth::unix_secs;
use crate::error::Origin;
use crate::metrics::{ArtifactUsage as Usage, Metrics};

/// The longest file name kept, in bytes (most file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;
const INDEX: &str = "index.json";
pub const RECORDING: &str = "recording.mp4";

/// How a file came to be among a session's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Download,
    Upload,
    /// The session's CDP log.
    Log,
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Still arriving (a download in progress).
    InProgress,
    Complete,
    /// Cancelled or interrupted in the browser.
    Canceled,
    /// Cancelled by the broker: it would have passed the session's quota.
    Refused,
}

/// One file of a session, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub kind: Kind,
    pub state: FileState,
}

/// What is known of a session's recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    pub frames: u64,
    pub fps: u32,
    /// The recording has been closed (ffmpeg finished it).
    pub complete: bool,
    /// Stopped at `max_recording_bytes`.
    pub truncated: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    files: BTreeMap<String, FileEntry>,
    #[serde(default)]
    recording: Option<RecordingInfo>,
}

/// Why a file operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    BadName(&'static str),
    #[error("no file named {0:?}")]
    NotFound(String),
    #[error("{0:?} is still being downloaded")]
    InProgress(String),
    #[error("the file is larger than the upload limit of {0} bytes")]
    TooLarge(u64),
    #[error("the session's files would pass their quota of {0} bytes")]
    OverQuota(u64),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl FileError {
    /// A bad name, a missing or unfinished file, or a quota reached is the request's; a
    /// disk that fails is the broker's.
    pub fn origin(&self) -> Origin {
        match self {
            FileError::Io(_) => Origin::Internal,
            _ => Origin::Client,
        }
    }
}

/// Checks a name given by a client (an upload, a path segment): refused rather than
/// changed, so that the name a client uses is the name stored.
pub fn check_name(name: &str) -> Result<(), FileError> {
    if name.is_empty() {
        return Err(FileError::BadName("a file name cannot be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(FileError::BadName("a file name is at most 200 bytes"));
    }
    if name.contains(['/', '\\']) {
        return Err(FileError::BadName("a file name cannot contain / or \\"));
    }
    if name.chars().any(char::is_control) {
        return Err(FileError::BadName("a file name cannot contain control characters"));
    }
    if name.starts_with('.') {
        return Err(FileError::BadName("a file name cannot start with a dot"));
    }
    Ok(())
}

/// A safe name from one a page suggested (a download's): separators and control
/// characters become `_`, leading dots go, long names are cut (keeping the extension).
pub fn sanitize_name(suggested: &str) -> String {
    let cleaned: String = suggested
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').trim();
    let mut name = if cleaned.is_empty() {
        "download".to_owned()
    } else {
        cleaned.to_owned()
    };
    if name.len() > MAX_NAME_BYTES {
        let ext = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .filter(|e| e.len() <= 16)
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let mut cut = MAX_NAME_BYTES - ext.len();
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{ext}", &name[..cut]);
    }
    name
}

/// `name`, or `name (1).ext`, `name (2).ext`… whichever `taken` does not hold.
fn unique_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(name) {
        return name.to_owned();
    }
    let path = Path::new(name);
    let (stem, ext) = match (
        path.file_stem().and_then(|s| s.to_str()),
        path.extension().and_then(|e| e.to_str()),
    ) {
        (Some(stem), Some(ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (name.to_owned(), String::new()),
    };
    (1..)
        .map(|n| format!("{stem} ({n}){ext}"))
        .find(|candidate| !taken(candidate))
        .expect("an unused name")
}

/// Every session's artifacts on this node.
pub struct Artifacts {
    root: PathBuf,
    pub limits: Limits,
    /// The ffmpeg that encodes recordings, if there is one.
    pub ffmpeg: Option<PathBuf>,
    metrics: Arc<Metrics>,
    open: DashMap<String, Arc<SessionFiles>>,
}

/// The artifacts' limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files_bytes: u64,
    pub max_upload_bytes: u64,
    pub max_recording_bytes: u64,
    pub recording_fps: u32,
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

    /// Removes a session's artifacts (its record is gone).
    pub fn remove(&self, id: &str) {
        self.open.remove(id);
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
pub fn find_ffmpeg(configured: &str) -> Option<PathBuf> {
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

/// One session's files and recording.
pub struct SessionFiles {
    dir: PathBuf,
    limits: Limits,
    metrics: Arc<Metrics>,
    index: Mutex<Index>,
    /// Downloads in progress: Chrome's guid → the name reserved for the file.
    downloads: Mutex<BTreeMap<String, String>>,
}

impl SessionFiles {
    fn open(dir: PathBuf, limits: Limits, metrics: Arc<Metrics>) -> io::Result<SessionFiles> {
        std::fs::create_dir_all(dir.join("files"))?;
        let mut index: Index = std::fs::read(dir.join(INDEX))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        // A download the broker was watching when it stopped will not finish now.
        for entry in index.files.values_mut() {
            if entry.state == FileState::InProgress {
                entry.state = FileState::Canceled;
            }
        }
        Ok(SessionFiles {
            dir,
            limits,
            metrics,
            index: Mutex::new(index),
            downloads: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn recording_path(&self) -> PathBuf {
        self.dir.join(RECORDING)
    }

    /// The complete file `name`, placed where the session's browser may read it: in
    /// `browser_downloads/.uploads/` (the confined browser reads nothing of the data
    /// directory), replacing one of the same name; a hard link where the file system
    /// allows, else a copy. That path is what a file input is given.
    pub fn within_browser_reach(&self, name: &str, browser_downloads: &Path) -> Result<PathBuf, FileError> {
        let (stored, _) = self.get(name)?;
        let place = || -> io::Result<PathBuf> {
            let dir = browser_downloads.join(".uploads");
            std::fs::create_dir_all(&dir)?;
            let visible = dir.join(name);
            match std::fs::remove_file(&visible) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            if std::fs::hard_link(&stored, &visible).is_err() {
                std::fs::copy(&stored, &visible)?;
            }
            Ok(visible)
        };
        place().map_err(FileError::Io)
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.dir.join("files").join(name)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the index (a small file; replaced whole, so never seen half-written).
    fn save(&self, index: &Index) {
        let Ok(bytes) = serde_json::to_vec(index) else { return };
        let tmp = self.dir.join(".index.tmp");
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, self.dir.join(INDEX)));
        if let Err(e) = written {
            tracing::warn!(error = %e, dir = %self.dir.display(), "could not write the files' index");
        }
    }

    /// The session's files, oldest first.
    pub fn list(&self) -> Vec<FileEntry> {
        let mut files: Vec<FileEntry> = self.index().files.values().cloned().collect();
        files.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
        files
    }

    /// Bytes held against the quota (complete files and downloads so far), and the number
    /// of complete files.
    pub fn used(&self) -> (u64, u64) {
        let index = self.index();
        let held = index
            .files
            .values()
            .filter(|f| matches!(f.state, FileState::Complete | FileState::InProgress));
        held.fold((0, 0), |(bytes, count), f| {
            (bytes + f.size, count + u64::from(f.state == FileState::Complete))
        })
    }

    /// A complete file's path and entry.
    pub fn get(&self, name: &str) -> Result<(PathBuf, FileEntry), FileError> {
        check_name(name).map_err(|_| FileError::NotFound(name.to_owned()))?;
        let entry = self
            .index()
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| FileError::NotFound(name.to_owned()))?;
        match entry.state {
            FileState::Complete => Ok((self.file_path(name), entry)),
            FileState::InProgress => Err(FileError::InProgress(name.to_owned())),
            // Listed so that the user learns what happened; there is nothing to read.
            FileState::Canceled | FileState::Refused => Err(FileError::NotFound(name.to_owned())),
        }
    }

    /// Removes a file (a refused or cancelled download's entry too).
    pub fn remove(&self, name: &str) -> Result<(), FileError> {
        check_name(name).map_err(|_| FileError::NotFound(name.to_owned()))?;
        let mut index = self.index();
        match index.files.get(name).map(|e| e.state) {
            None => return Err(FileError::NotFound(name.to_owned())),
            Some(FileState::InProgress) => return Err(FileError::InProgress(name.to_owned())),
            Some(_) => {}
        }
        match std::fs::remove_file(self.file_path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        index.files.remove(name);
        self.save(&index);
        Ok(())
    }

    /// Stores an upload under `name` (replacing a file of that name) from `chunks`,
    /// within the upload limit and the session's quota. Answers the file's path.
    pub async fn upload<S, E>(&self, name: &str, mut chunks: S) -> Result<(PathBuf, FileEntry), FileError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        check_name(name)?;
        if self
            .index()
            .files
            .get(name)
            .is_some_and(|e| e.state == FileState::InProgress)
        {
            return Err(FileError::InProgress(name.to_owned()));
        }
        let tmp = self.dir.join(format!(".upload-{}", crate::auth::random_hex(8)));
        let result = async {
            let mut out = tokio::fs::File::create(&tmp).await?;
            let mut size = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| io::Error::other(format!("the upload was cut off: {e}")))?;
                size += chunk.len() as u64;
                if size > self.limits.max_upload_bytes {
                    return Err(FileError::TooLarge(self.limits.max_upload_bytes));
                }
                self.within_quota(size, Some(name))?;
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            out.sync_all().await?;
            Ok(size)
        }
        .await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                if matches!(e, FileError::OverQuota(_) | FileError::TooLarge(_)) {
                    self.metrics.files_quota_refusals.inc();
                }
                return Err(e);
            }
        };
        let mut index = self.index();
        // Checked again under the lock: a download may have grown meanwhile.
        if let Err(e) = self.quota_check(&index, size, Some(name)) {
            let _ = std::fs::remove_file(&tmp);
            self.metrics.files_quota_refusals.inc();
            return Err(e);
        }
        let path = self.file_path(name);
        std::fs::rename(&tmp, &path)?;
        let entry = FileEntry {
            name: name.to_owned(),
            size,
            created_at: unix_secs(SystemTime::now()),
            kind: Kind::Upload,
            state: FileState::Complete,
        };
        index.files.insert(name.to_owned(), entry.clone());
        self.save(&index);
        self.metrics.files_stored.inc();
        Ok((path, entry))
    }

    fn within_quota(&self, adding: u64, replacing: Option<&str>) -> Result<(), FileError> {
        self.quota_check(&self.index(), adding, replacing)
    }

    fn quota_check(&self, index: &Index, adding: u64, replacing: Option<&str>) -> Result<(), FileError> {
        let held: u64 = index
            .files
            .values()
            .filter(|f| matches!(f.state, FileState::Complete | FileState::InProgress))
            .filter(|f| Some(f.name.as_str()) != replacing)
            .map(|f| f.size)
            .sum();
        if held + adding > self.limits.max_files_bytes {
            return Err(FileError::OverQuota(self.limits.max_files_bytes));
        }
        Ok(())
    }

    /// A download began: a name is reserved for it. Answers false if it must be cancelled
    /// (its announced size alone passes the quota).
    pub fn download_began(&self, guid: &str, suggested: &str, total: u64) -> bool {
        let mut index = self.index();
        let name = unique_name(&sanitize_name(suggested), |n| index.files.contains_key(n));
        let fits = self.quota_check(&index, total, None).is_ok();
        let entry = FileEntry {
            name: name.clone(),
            size: 0,
            created_at: unix_secs(SystemTime::now()),
            kind: Kind::Download,
            state: if fits {
                FileState::InProgress
            } else {
                FileState::Refused
            },
        };
        index.files.insert(name.clone(), entry);
        self.save(&index);
        drop(index);
        if !fits {
            self.metrics.files_quota_refusals.inc();
        }
        self.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(guid.to_owned(), name);
        fits
    }

    /// Whether `guid` is a download of this session.
    pub fn has_download(&self, guid: &str) -> bool {
        self.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(guid)
    }

    fn download_name(&self, guid: &str) -> Option<String> {
        self.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(guid)
            .cloned()
    }

    /// A download has `received` bytes so far. Answers false if it must be cancelled (it
    /// passed the quota; it is listed as refused from now on).
    pub fn download_progressed(&self, guid: &str, received: u64) -> bool {
        let Some(name) = self.download_name(guid) else {
            return true;
        };
        let mut index = self.index();
        let Some(state) = index.files.get(&name).map(|e| e.state) else {
            return true;
        };
        if state != FileState::InProgress {
            return state != FileState::Refused;
        }
        if self.quota_check(&index, received, Some(&name)).is_err() {
            if let Some(entry) = index.files.get_mut(&name) {
                entry.state = FileState::Refused;
            }
            self.save(&index);
            self.metrics.files_quota_refusals.inc();
            return false;
        }
        if let Some(entry) = index.files.get_mut(&name) {
            entry.size = received;
        }
        true
    }

    /// A download finished in the browser at `path` (wherever the client had it saved):
    /// the file is moved into the session's files, unless it was refused.
    pub fn download_completed(&self, guid: &str, path: &Path) {
        let Some(name) = self.downloads.lock().unwrap_or_else(|e| e.into_inner()).remove(guid) else {
            return;
        };
        let size = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| m.len());
        let mut index = self.index();
        let refused = index.files.get(&name).is_none_or(|e| e.state == FileState::Refused);
        let state = match size {
            _ if refused => {
                let _ = std::fs::remove_file(path);
                FileState::Refused
            }
            None => FileState::Canceled,
            Some(size) if self.quota_check(&index, size, Some(&name)).is_err() => {
                let _ = std::fs::remove_file(path);
                self.metrics.files_quota_refusals.inc();
                FileState::Refused
            }
            Some(size) => match move_file(path, &self.file_path(&name)) {
                Ok(()) => {
                    if let Some(entry) = index.files.get_mut(&name) {
                        entry.size = size;
                    }
                    self.metrics.files_stored.inc();
                    FileState::Complete
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %path.display(), "a finished download could not be moved into the session's files");
                    FileState::Canceled
                }
            },
        };
        if let Some(entry) = index.files.get_mut(&name) {
            entry.state = state;
            if state != FileState::Complete {
                entry.size = 0;
            }
        }
        self.save(&index);
    }

    /// A download was cancelled or interrupted in the browser.
    pub fn download_canceled(&self, guid: &str) {
        let Some(name) = self.downloads.lock().unwrap_or_else(|e| e.into_inner()).remove(guid) else {
            return;
        };
        let mut index = self.index();
        if let Some(entry) = index.files.get_mut(&name)
            && entry.state == FileState::InProgress
        {
            entry.state = FileState::Canceled;
            entry.size = 0;
        }
        self.save(&index);
    }

    /// Starts a log file `name` (empty); answers its path.
    pub fn begin_log(&self, name: &str) -> io::Result<PathBuf> {
        let path = self.file_path(name);
        std::fs::File::create(&path)?;
        let mut index = self.index();
        index.files.insert(
            name.to_owned(),
            FileEntry {
                name: name.to_owned(),
                size: 0,
                created_at: unix_secs(SystemTime::now()),
                kind: Kind::Log,
                state: FileState::Complete,
            },
        );
        self.save(&index);
        Ok(path)
    }

    /// A log grows to `size` bytes, if the session's quota allows it.
    pub fn grow_log(&self, name: &str, size: u64) -> bool {
        let mut index = self.index();
        if self.quota_check(&index, size, Some(name)).is_err() {
            return false;
        }
        let Some(entry) = index.files.get_mut(name) else {
            return false;
        };
        let before = entry.size;
        entry.size = size;
        // The index on disk follows every 64 KiB, not every line.
        if before >> 16 != size >> 16 {
            self.save(&index);
        }
        true
    }

    /// A log is finished: its size as it is on disk, written down.
    pub fn settle_log(&self, name: &str) {
        let size = std::fs::metadata(self.file_path(name)).map(|m| m.len()).unwrap_or(0);
        let mut index = self.index();
        if let Some(entry) = index.files.get_mut(name) {
            entry.size = size;
        }
        self.save(&index);
    }

    pub fn recording(&self) -> Option<RecordingInfo> {
        self.index().recording.clone()
    }

    /// Notes how the recording stands.
    pub fn set_recording(&self, info: RecordingInfo) {
        let mut index = self.index();
        index.recording = Some(info);
        self.save(&index);
    }
}

/// Moves a file, copying it where a rename cannot (another file system).
fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(_) => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_refused_when_they_could_leave_the_directory() {
        for bad in [
            "",
            "..",
            ".",
            "../../etc/passwd",
            "a/b",
            "a\\b",
            "nul\0byte",
            "tab\there",
            ".hidden",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"x".repeat(10_000)).is_err());
        for good in ["resume.pdf", "Résumé 2026 (final).docx", "a..b", "日本語.txt"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn suggested_names_are_made_safe() {
        assert_eq!(sanitize_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize_name("..."), "download");
        assert_eq!(sanitize_name("a\0b\nc.txt"), "a_b_c.txt");
        let long = sanitize_name(&format!("{}.pdf", "é".repeat(500)));
        assert!(long.len() <= MAX_NAME_BYTES && long.ends_with(".pdf"), "{long}");
        assert!(check_name(&sanitize_name("/.x/..\\y\u{7f}")).is_ok());
    }

    #[test]
    fn taken_names_get_a_number() {
        let taken = ["a.pdf", "a (1).pdf", "noext"];
        assert_eq!(unique_name("a.pdf", |n| taken.contains(&n)), "a (2).pdf");
        assert_eq!(unique_name("noext", |n| taken.contains(&n)), "noext (1)");
        assert_eq!(unique_name("b.pdf", |n| taken.contains(&n)), "b.pdf");
    }

    fn files(quota: u64) -> (tempfile::TempDir, SessionFiles) {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_files_bytes: quota,
            max_upload_bytes: quota,
            max_recording_bytes: 1 << 20,
            recording_fps: 5,
        };
        let files = SessionFiles::open(dir.path().join("s"), limits, Arc::default()).unwrap();
        (dir, files)
    }

    #[test]
    fn a_download_past_the_quota_is_refused_and_its_file_removed() {
        let (_dir, files) = files(1000);
        assert!(files.download_began("g1", "a.bin", 0));
        assert!(files.download_progressed("g1", 600));
        // Where the browser wrote them: its own downloads directory.
        let browser_downloads = _dir.path().join("browser.downloads");
        std::fs::create_dir(&browser_downloads).unwrap();
        let first = browser_downloads.join("a.bin");
        std::fs::write(&first, vec![0u8; 600]).unwrap();
        files.download_completed("g1", &first);
        assert!(files.download_began("g2", "a.bin", 0));
        assert!(!files.download_progressed("g2", 500), "past the quota");
        let second = browser_downloads.join("a (1).bin");
        std::fs::write(&second, vec![0u8; 500]).unwrap();
        files.download_completed("g2", &second);
        let list = files.list();
        assert_eq!(list.len(), 2);
        let find = |name: &str| list.iter().find(|f| f.name == name).unwrap().clone();
        assert_eq!((find("a.bin").state, find("a.bin").size), (FileState::Complete, 600));
        assert_eq!(find("a (1).bin").state, FileState::Refused);
        assert!(!second.exists());
        assert!(files.get("a (1).bin").is_err());
        assert_eq!(std::fs::read(files.get("a.bin").unwrap().0).unwrap().len(), 600);
        // Announced too big: refused at once.
        assert!(!files.download_began("g3", "big.bin", 5000));
    }

    #[tokio::test]
    async fn uploads_keep_within_their_limits_and_replace_by_name() {
        let (_dir, files) = files(1000);
        let chunks = |n: usize| futures_util::stream::iter(vec![Ok::<_, io::Error>(bytes::Bytes::from(vec![7u8; n]))]);
        let (path, entry) = files.upload("cv.pdf", chunks(400)).await.unwrap();
        assert_eq!((entry.size, entry.kind), (400, Kind::Upload));
        assert_eq!(std::fs::read(&path).unwrap().len(), 400);
        files.upload("cv.pdf", chunks(900)).await.unwrap();
        assert!(matches!(
            files.upload("more.pdf", chunks(200)).await,
            Err(FileError::OverQuota(_))
        ));
        assert!(matches!(
            files.upload("../x", chunks(1)).await,
            Err(FileError::BadName(_))
        ));
        assert_eq!(files.list().len(), 1);
        files.remove("cv.pdf").unwrap();
        assert!(files.list().is_empty() && !path.exists());
    }
}
