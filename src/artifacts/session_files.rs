//! One session's directory: `files/`, `recording.mp4` and `index.json` (each file's kind,
//! time and state, rewritten at each change).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use super::entry::{FileEntry, FileState, Kind, RecordingInfo};
use super::error::FileError;
use super::names::{check_name, sanitize_name, unique_name};
use super::no_follow::NoFollowDir;
use crate::auth::unix_secs;
use crate::metrics::Metrics;

const INDEX: &str = "index.json";
/// Where uploads are placed for the browser, in its downloads folder.
const UPLOADS: &str = ".uploads";
pub(crate) const RECORDING: &str = "recording.mp4";

/// The artifacts' limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files_bytes: u64,
    pub max_upload_bytes: u64,
    pub max_recording_bytes: u64,
    pub recording_fps: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    files: BTreeMap<String, FileEntry>,
    #[serde(default)]
    recording: Option<RecordingInfo>,
}

/// One session's files and recording.
pub struct SessionFiles {
    dir: PathBuf,
    limits: Limits,
    metrics: Arc<Metrics>,
    index: Mutex<Index>,
    /// Downloads in progress: Chrome's guid → the name reserved for the file.
    downloads: Mutex<BTreeMap<String, String>>,
    /// Work still writing into the directory after the session ended (ffmpeg finishing the
    /// recording): removing the directory waits for it, or the writer recreates what was
    /// removed and the directory outlives its record.
    writers: TaskTracker,
    /// The browser's downloads folder, once uploads were placed there
    /// (`within_browser_reach`): a file removed or replaced goes from there too, or its
    /// bytes would outlive their place in the quota.
    reach: Mutex<Option<PathBuf>>,
    /// An upload is being written: one at a time, so that what is written before the
    /// quota sees it is one upload's at most.
    uploading: std::sync::atomic::AtomicBool,
}

/// Entries a session's files may have (uploads, downloads, refused ones, logs).
pub(crate) const MAX_FILES: usize = 1000;

/// The one upload of a session being written, until dropped.
struct OneUpload<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> OneUpload<'a> {
    fn claim(flag: &'a std::sync::atomic::AtomicBool) -> Result<Self, FileError> {
        use std::sync::atomic::Ordering;
        if flag.swap(true, Ordering::SeqCst) {
            return Err(FileError::Busy);
        }
        Ok(OneUpload(flag))
    }
}

impl Drop for OneUpload<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl SessionFiles {
    pub(super) fn open(dir: PathBuf, limits: Limits, metrics: Arc<Metrics>) -> io::Result<SessionFiles> {
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
            writers: TaskTracker::new(),
            reach: Mutex::default(),
            uploading: Default::default(),
        })
    }

    /// Held by work that writes into the directory until it is done.
    pub(crate) fn writing(&self) -> TaskTrackerToken {
        self.writers.token()
    }

    /// Returns once no writer holds the directory, or after `limit`; no writer may start
    /// after this is called.
    pub(super) async fn writers_done(&self, limit: Duration) {
        self.writers.close();
        let _ = tokio::time::timeout(limit, self.writers.wait()).await;
    }

    pub fn recording_path(&self) -> PathBuf {
        self.dir.join(RECORDING)
    }

    /// The complete file `name`, placed where the session's browser may read it: in
    /// `browser_downloads/.uploads/` (the confined browser reads nothing of the data
    /// directory), replacing one of the same name; a hard link where the file system
    /// allows, else a copy. That path is what a file input is given. The browser may
    /// write that folder: no link it put there is followed (`no_follow`).
    pub fn within_browser_reach(&self, name: &str, browser_downloads: &Path) -> Result<PathBuf, FileError> {
        let (stored, _) = self.get(name)?;
        let place = || -> io::Result<PathBuf> {
            let uploads = NoFollowDir::open(browser_downloads)?.subdir(UPLOADS)?;
            *self.reach.lock().unwrap_or_else(|e| e.into_inner()) = Some(browser_downloads.to_owned());
            uploads.remove(name)?;
            uploads.place(&stored, name)?;
            Ok(browser_downloads.join(UPLOADS).join(name))
        };
        place().map_err(FileError::Io)
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.dir.join("files").join(name)
    }

    /// Removes the browser's copy of `name`, if one was placed.
    fn unplace(&self, name: &str) {
        if let Some(dir) = self.reach.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && let Ok(uploads) = NoFollowDir::open(dir).and_then(|d| d.subdir(UPLOADS))
        {
            let _ = uploads.remove(name);
        }
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
        self.unplace(name);
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
        {
            let index = self.index();
            match index.files.get(name) {
                Some(e) if e.state == FileState::InProgress => return Err(FileError::InProgress(name.to_owned())),
                // The broker's own (the CDP log it is writing): not replaced by an upload.
                Some(e) if e.kind == Kind::Log => return Err(FileError::BadName("a log of the session has that name")),
                None if index.files.len() >= MAX_FILES => return Err(FileError::TooMany(MAX_FILES)),
                _ => {}
            }
        }
        let _one_upload = OneUpload::claim(&self.uploading)?;
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
        self.unplace(name); // a copy of the file it replaces
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
        if index.files.len() >= MAX_FILES {
            // Not even listed: the entries are what is bounded here.
            self.metrics.files_quota_refusals.inc();
            return false;
        }
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

    /// A download finished in the browser as `file` in its session's `folder` (the
    /// browser's, which it may write: nothing there is followed as a link): the file is
    /// copied into the session's files, unless it was refused. Decided under the index's
    /// lock, copied outside it (a large file takes a while, and every file call takes it).
    pub fn download_completed(&self, guid: &str, folder: &Path, file: &str) {
        let Some(name) = self.downloads.lock().unwrap_or_else(|e| e.into_inner()).remove(guid) else {
            return;
        };
        let folder = NoFollowDir::open(folder);
        let size = folder.as_ref().ok().and_then(|f| f.file_size(file));
        enum Take {
            Refused,
            OverQuota,
            Gone,
            Copy(u64),
        }
        let take = {
            let index = self.index();
            match size {
                _ if index.files.get(&name).is_none_or(|e| e.state == FileState::Refused) => Take::Refused,
                None => Take::Gone,
                Some(size) if self.quota_check(&index, size, Some(&name)).is_err() => Take::OverQuota,
                Some(size) => Take::Copy(size),
            }
        };
        let remove = || {
            if let Ok(folder) = &folder {
                let _ = folder.remove(file);
            }
        };
        let (state, size) = match (take, &folder) {
            (Take::Refused, _) => {
                remove();
                (FileState::Refused, 0)
            }
            (Take::OverQuota, _) => {
                remove();
                self.metrics.files_quota_refusals.inc();
                (FileState::Refused, 0)
            }
            (Take::Gone, _) | (_, Err(_)) => (FileState::Canceled, 0),
            (Take::Copy(size), Ok(folder)) => match folder.move_out(file, &self.file_path(&name), size) {
                Ok(copied) => {
                    self.metrics.files_stored.inc();
                    (FileState::Complete, copied)
                }
                Err(e) => {
                    tracing::warn!(error = %e, file, "a finished download could not be taken into the session's files");
                    (FileState::Canceled, 0)
                }
            },
        };
        let mut index = self.index();
        match index.files.get_mut(&name) {
            Some(entry) => {
                entry.state = state;
                entry.size = size;
            }
            // Removed while it was copied: the copy goes too.
            None if state == FileState::Complete => {
                let _ = std::fs::remove_file(self.file_path(&name));
            }
            None => {}
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn chunks(parts: &[&'static [u8]]) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_file_removed_or_replaced_leaves_no_copy_within_the_browsers_reach() {
        let (dir, files) = files(1 << 20);
        let browser_downloads = dir.path().join("browser.downloads");
        std::fs::create_dir(&browser_downloads).unwrap();
        files.upload("a.txt", chunks(&[b"first"])).await.unwrap();
        let placed = files.within_browser_reach("a.txt", &browser_downloads).unwrap();
        assert_eq!(std::fs::read(&placed).unwrap(), b"first");
        // Replaced: the copy of the old bytes goes (it is placed again when used).
        files.upload("a.txt", chunks(&[b"second"])).await.unwrap();
        assert!(!placed.exists(), "the replaced file's copy is left");
        files.within_browser_reach("a.txt", &browser_downloads).unwrap();
        files.remove("a.txt").unwrap();
        assert!(!placed.exists(), "the removed file's copy is left");
        assert_eq!(files.used(), (0, 0));
    }

    #[tokio::test]
    async fn an_upload_may_not_replace_a_log_nor_pass_the_count_nor_run_beside_another() {
        let (_dir, files) = files(1 << 20);
        files.begin_log("cdp-log.jsonl").unwrap();
        let refused = files.upload("cdp-log.jsonl", chunks(&[b"x"])).await.unwrap_err();
        assert!(matches!(refused, FileError::BadName(_)), "{refused}");

        // Two at once: the second is refused while the first is being written.
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Result<bytes::Bytes, String>>();
        sender.send(Ok(bytes::Bytes::from_static(b"slow"))).unwrap();
        let receiver = Box::pin(futures_util::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|item| (item, r))
        }));
        let first = files.upload("slow.txt", receiver);
        let second = async {
            tokio::task::yield_now().await;
            let refused = files.upload("other.txt", chunks(&[b"y"])).await.unwrap_err();
            drop(sender); // the first ends
            refused
        };
        let (first, refused) = tokio::join!(first, second);
        assert!(matches!(refused, FileError::Busy), "{refused}");
        assert_eq!(first.unwrap().1.size, 4);

        // The entries are bounded: refused downloads stop being listed, uploads refused.
        let mut n = 0;
        while files.download_began(&format!("g{n}"), "big.bin", 1 << 30) {
            n += 1;
        }
        for i in 0..MAX_FILES + 10 {
            files.download_began(&format!("h{i}"), "big.bin", 1 << 30);
        }
        assert_eq!(files.list().len(), MAX_FILES);
        let refused = files.upload("new.txt", chunks(&[b"z"])).await.unwrap_err();
        assert!(matches!(refused, FileError::TooMany(MAX_FILES)), "{refused}");
        // A file already there may still be replaced.
        files.upload("slow.txt", chunks(&[b"again"])).await.unwrap();
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
        files.download_completed("g1", &browser_downloads, "a.bin");
        assert!(files.download_began("g2", "a.bin", 0));
        assert!(!files.download_progressed("g2", 500), "past the quota");
        let second = browser_downloads.join("a (1).bin");
        std::fs::write(&second, vec![0u8; 500]).unwrap();
        files.download_completed("g2", &browser_downloads, "a (1).bin");
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
