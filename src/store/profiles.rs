//! Browser profiles: the browser state a person wants back (cookies, logins, storage),
//! kept on disk per tenant, copied into a session's browser at start, and saved back
//! atomically when a persisting session ends.
//!
//! On disk, under `data_dir/profiles/<id>/`:
//! - `profile.json`: id, name, tenant, timestamps;
//! - `gen-<n>/user-data/`: a Chrome user-data directory without its caches, and
//!   `gen-<n>/session-cookies.json`: the cookies without expiry, which Chrome keeps only
//!   in memory;
//! - `current`: a symlink to the generation in force. A save writes a new generation
//!   aside, fsyncs it, and swaps the symlink with one `rename`, so a profile is always
//!   the old generation or the new one, even if the broker dies mid-save.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::record::SaveOutcome;
use crate::auth::{Tenant, random_hex, unix_secs};
use crate::browser::Browser;
use crate::browser::cdp;
use crate::error::Origin;

/// Directories of a Chrome profile that are caches, locks or crash data: not state a
/// person expects back, and large.
const SKIPPED: &[&str] = &[
    "Cache",
    "Code Cache",
    "GPUCache",
    "GrShaderCache",
    "GraphiteDawnCache",
    "DawnCache",
    "DawnGraphiteCache",
    "DawnWebGPUCache",
    "ShaderCache",
    "CacheStorage",
    "ScriptCache",
    "component_crx_cache",
    "extensions_crx_cache",
    "Crashpad",
    "BrowserMetrics",
    "Safe Browsing",
    "DevToolsActivePort",
];

/// How long a persisting session's browser gets to close cleanly before the save.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("Browser profile not found")]
    NotFound,
    #[error("A browser profile named {0:?} already exists")]
    Duplicate(String),
    #[error("Browser profile is in use by session {0}, which persists changes to it")]
    Busy(String),
    #[error("Browser profile is in use by {0} session(s)")]
    InUse(usize),
    #[error("the profile store failed: {0}")]
    Io(#[from] io::Error),
}

impl ProfileError {
    pub fn origin(&self) -> Origin {
        match self {
            ProfileError::Io(_) => Origin::Internal,
            _ => Origin::Client,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    name: String,
    tenant: String,
    created_at: u64,
    updated_at: u64,
}

pub struct Profile {
    pub id: String,
    pub name: String,
    pub tenant: Tenant,
    pub created_at: SystemTime,
    dir: PathBuf,
    updated_at: Mutex<SystemTime>,
    /// The session persisting into this profile, from its start until its save is done.
    writer: Mutex<Option<String>>,
    /// Sessions using the profile now, readers and writer.
    users: AtomicUsize,
    /// A save holds it for writing; a new session's copy holds it for reading, so a
    /// session created right after another ended starts from the saved state.
    swap: tokio::sync::RwLock<()>,
}

impl Profile {
    pub fn updated_at(&self) -> SystemTime {
        *self.updated_at.lock().expect("profile lock")
    }

    /// Sessions using the profile now.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    fn record(&self) -> Record {
        Record {
            id: self.id.clone(),
            name: self.name.clone(),
            tenant: self.tenant.to_string(),
            created_at: unix_secs(self.created_at),
            updated_at: unix_secs(*self.updated_at.lock().expect("profile lock")),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }
}

/// A session's hold on a profile, released when its browser is done with it.
pub struct ProfileUse {
    pub profile: Arc<Profile>,
    pub persist: bool,
    session_id: String,
}

pub struct Profiles {
    root: PathBuf,
    records: DashMap<String, Arc<Profile>>,
}

impl Profiles {
    /// Loads every profile under `root`, dropping generations a crash left behind.
    pub fn load(root: PathBuf) -> io::Result<Profiles> {
        std::fs::create_dir_all(&root)?;
        let records = DashMap::new();
        for entry in std::fs::read_dir(&root)?.flatten() {
            let dir = entry.path();
            let Ok(text) = std::fs::read_to_string(dir.join("profile.json")) else {
                // A profile whose creation never finished.
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            };
            let Ok(r) = serde_json::from_str::<Record>(&text) else {
                tracing::warn!(dir = %dir.display(), "skipping a profile with an unreadable profile.json");
                continue;
            };
            clean_generations(&dir)?;
            let profile = Profile {
                id: r.id.clone(),
                name: r.name,
                tenant: Tenant::from_id(&r.tenant),
                created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(r.created_at),
                dir,
                updated_at: Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(r.updated_at)),
                writer: Mutex::new(None),
                users: AtomicUsize::new(0),
                swap: tokio::sync::RwLock::new(()),
            };
            records.insert(r.id, Arc::new(profile));
        }
        Ok(Profiles { root, records })
    }

    pub fn create(&self, tenant: &Tenant, name: &str) -> Result<Arc<Profile>, ProfileError> {
        if self.list(tenant).iter().any(|p| p.name == name) {
            return Err(ProfileError::Duplicate(name.to_owned()));
        }
        let id = uuid_v4();
        let dir = self.root.join(&id);
        let now = SystemTime::now();
        let profile = Arc::new(Profile {
            id: id.clone(),
            name: name.to_owned(),
            tenant: tenant.clone(),
            created_at: now,
            dir: dir.clone(),
            updated_at: Mutex::new(now),
            writer: Mutex::new(None),
            users: AtomicUsize::new(0),
            swap: tokio::sync::RwLock::new(()),
        });
        let generation = dir.join("gen-0");
        std::fs::create_dir_all(generation.join("user-data"))?;
        std::fs::write(generation.join("session-cookies.json"), "[]")?;
        std::os::unix::fs::symlink("gen-0", dir.join("current"))?;
        // profile.json last: a directory without it is an unfinished create.
        write_atomically(
            &dir.join("profile.json"),
            &serde_json::to_vec_pretty(&profile.record()).unwrap_or_default(),
        )?;
        self.records.insert(id, profile.clone());
        Ok(profile)
    }

    /// The tenant's profiles, newest first.
    pub fn list(&self, tenant: &Tenant) -> Vec<Arc<Profile>> {
        let mut list: Vec<Arc<Profile>> = self
            .records
            .iter()
            .filter(|p| &p.tenant == tenant)
            .map(|p| p.clone())
            .collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.name.cmp(&b.name)));
        list
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Arc<Profile>, ProfileError> {
        self.records
            .get(id)
            .map(|p| p.clone())
            .filter(|p| &p.tenant == tenant)
            .ok_or(ProfileError::NotFound)
    }

    pub fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), ProfileError> {
        let profile = self.get(tenant, id)?;
        let users = profile.users.load(Ordering::SeqCst);
        if users > 0 {
            return Err(ProfileError::InUse(users));
        }
        self.records.remove(id);
        // profile.json first: a half-deleted profile is never loaded again.
        let _ = std::fs::remove_file(profile.dir.join("profile.json"));
        std::fs::remove_dir_all(&profile.dir)?;
        Ok(())
    }

    /// Takes the profile for a new session: any number of readers, one writer.
    pub fn begin_use(
        &self,
        profile: Arc<Profile>,
        session_id: &str,
        persist: bool,
    ) -> Result<ProfileUse, ProfileError> {
        if persist {
            let mut writer = profile.writer.lock().expect("profile lock");
            if let Some(holder) = writer.as_ref() {
                return Err(ProfileError::Busy(holder.clone()));
            }
            *writer = Some(session_id.to_owned());
        }
        profile.users.fetch_add(1, Ordering::SeqCst);
        Ok(ProfileUse {
            profile,
            persist,
            session_id: session_id.to_owned(),
        })
    }

    pub fn end_use(&self, hold: ProfileUse) {
        let mut writer = hold.profile.writer.lock().expect("profile lock");
        if writer.as_deref() == Some(hold.session_id.as_str()) {
            *writer = None;
        }
        hold.profile.users.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ProfileUse {
    /// Copies the profile's current state into `dest` (a new browser's user-data
    /// directory) and answers its session cookies.
    pub async fn copy_into(&self, dest: &Path) -> io::Result<Vec<Value>> {
        let _reading = self.profile.swap.read().await;
        let current = self.profile.current();
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || {
            copy_tree(&current.join("user-data"), &dest, false)?;
            let cookies = std::fs::read(current.join("session-cookies.json")).unwrap_or_default();
            Ok(serde_json::from_slice(&cookies).unwrap_or_default())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Saves the state of `browser` (still running) into the profile: session cookies
    /// read over CDP, a clean close so Chrome flushes its stores, then an atomic swap.
    /// Answers what became of it, for the session record.
    pub async fn save_from(&self, browser: &Browser) -> SaveOutcome {
        let cookies = if browser.is_alive() {
            session_cookies(browser).await
        } else {
            Vec::new()
        };
        let closed = browser.close_gracefully(CLOSE_LIMIT).await;
        match (closed, browser.exited_cleanly()) {
            (true, Some(true)) => {}
            (true, None) | (false, _) => {
                return SaveOutcome::NotClosedInTime;
            }
            (true, Some(false)) => return SaveOutcome::Crashed,
        }
        match self.write_generation(&browser.dir, &cookies).await {
            Ok(()) => SaveOutcome::Saved,
            Err(e) => {
                tracing::warn!(profile = %self.profile.id, error = %e, "profile save failed");
                SaveOutcome::Failed(e.to_string())
            }
        }
    }

    async fn write_generation(&self, user_data: &Path, cookies: &[Value]) -> io::Result<()> {
        let _writing = self.profile.swap.write().await;
        let dir = self.profile.dir.clone();
        let source = user_data.to_owned();
        let cookies = serde_json::to_vec(cookies).unwrap_or_else(|_| b"[]".to_vec());
        tokio::task::spawn_blocking(move || {
            let name = format!("gen-{}", random_hex(6));
            let aside = dir.join(format!("{name}.tmp"));
            let written = (|| {
                copy_tree(&source, &aside.join("user-data"), true)?;
                write_synced(&aside.join("session-cookies.json"), &cookies)?;
                sync_dir(&aside)?;
                std::fs::rename(&aside, dir.join(&name))
            })();
            if let Err(e) = written {
                // A full disk must not stay full: the half-written generation goes.
                let _ = std::fs::remove_dir_all(&aside);
                return Err(e);
            }
            // The swap: a new symlink beside the old one, renamed over it.
            let link = dir.join("current.tmp");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&name, &link)?;
            std::fs::rename(&link, dir.join("current"))?;
            sync_dir(&dir)?;
            clean_generations(&dir)
        })
        .await
        .map_err(io::Error::other)??;
        *self.profile.updated_at.lock().expect("profile lock") = SystemTime::now();
        // The state is saved by now; a stale updated_at on disk is not worth failing for.
        let record = serde_json::to_vec_pretty(&self.profile.record()).unwrap_or_default();
        if let Err(e) = write_atomically(&self.profile.dir.join("profile.json"), &record) {
            tracing::warn!(profile = %self.profile.id, error = %e, "could not update profile.json");
        }
        Ok(())
    }
}

/// Restores cookies that have no expiry (Chrome forgets them at exit) into a browser.
pub async fn restore_session_cookies(browser: &Browser, cookies: &[Value]) -> Result<(), cdp::CdpError> {
    if cookies.is_empty() {
        return Ok(());
    }
    let params: Vec<Value> = cookies
        .iter()
        .map(|c| {
            let mut p = serde_json::Map::new();
            for key in [
                "name",
                "value",
                "domain",
                "path",
                "secure",
                "httpOnly",
                "sameSite",
                "priority",
                "sourceScheme",
                "sourcePort",
            ] {
                if let Some(v) = c.get(key) {
                    p.insert(key.into(), v.clone());
                }
            }
            Value::Object(p)
        })
        .collect();
    let url = browser.ws_url();
    cdp::command(&url, "Storage.setCookies", json!({ "cookies": params }))
        .await
        .map(|_| ())
}

/// The browser's cookies that have no expiry.
async fn session_cookies(browser: &Browser) -> Vec<Value> {
    let url = browser.ws_url();
    match cdp::command(&url, "Storage.getCookies", json!({})).await {
        Ok(result) => result["cookies"]
            .as_array()
            .map(|all| all.iter().filter(|c| c["session"] == true).cloned().collect())
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read session cookies");
            Vec::new()
        }
    }
}

/// Keeps the generation `current` points to; removes the others and unfinished ones.
fn clean_generations(dir: &Path) -> io::Result<()> {
    let current = std::fs::read_link(dir.join("current")).ok();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with("gen-") && current.as_deref() != Some(Path::new(&name));
        if stale || name == "current.tmp" {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
    Ok(())
}

/// Copies a directory tree, skipping caches, locks and anything not a plain file or
/// directory; with `sync`, every file is fsynced.
fn copy_tree(from: &Path, to: &Path, sync: bool) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if SKIPPED.contains(&name_str.as_ref()) || name_str.starts_with("Singleton") {
            continue;
        }
        let kind = entry.file_type()?;
        let (src, dst) = (entry.path(), to.join(&name));
        if kind.is_dir() {
            copy_tree(&src, &dst, sync)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
            if sync {
                std::fs::File::open(&dst)?.sync_all()?;
            }
        }
    }
    if sync {
        sync_dir(to)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes aside, fsyncs, renames over.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random generator failed");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::auth::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_per_tenant_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("profiles");
        let store = Profiles::load(root.clone()).unwrap();
        let a = crate::auth::ApiKeys::new(&["tenant-a-key-0123456789".into()]);
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-api-key", "tenant-a-key-0123456789".parse().unwrap());
        let tenant = a.authenticate(&headers).unwrap();
        let other = Tenant::from_id("t_other");

        let p = store.create(&tenant, "work").unwrap();
        assert!(matches!(store.create(&tenant, "work"), Err(ProfileError::Duplicate(_))));
        store.create(&other, "work").unwrap();
        assert!(matches!(store.get(&other, &p.id), Err(ProfileError::NotFound)));
        assert_eq!(p.id.len(), 36);
        assert_eq!(&p.id[14..15], "4");

        let reloaded = Profiles::load(root).unwrap();
        let again = reloaded.get(&tenant, &p.id).unwrap();
        assert_eq!(again.name, "work");
        assert_eq!(reloaded.list(&tenant).len(), 1);
    }

    /// A generation directory holding `value` in a file of its user data and in its
    /// session cookies.
    fn generation(dir: &Path, name: &str, value: &str) {
        std::fs::create_dir_all(dir.join(name).join("user-data")).unwrap();
        std::fs::write(dir.join(name).join("user-data/Cookies"), value).unwrap();
        let cookies = json!([{"name": "sid", "value": value}]).to_string();
        std::fs::write(dir.join(name).join("session-cookies.json"), cookies).unwrap();
    }

    /// Every state a broker killed during a save can leave on disk loads as one whole
    /// generation: the old one until the swap's rename, the new one after it.
    #[tokio::test]
    async fn every_state_a_killed_save_leaves_loads_as_one_whole_generation() {
        fn link(dir: &Path, from: &str, to: &str) {
            std::os::unix::fs::symlink(to, dir.join(from)).unwrap();
        }
        /// What a crash at one moment leaves beside the old generation.
        type Crash = fn(&Path);
        let crashes: [(&str, Crash, &str); 4] = [
            (
                "during the copy",
                |d| {
                    std::fs::create_dir_all(d.join("gen-new.tmp/user-data")).unwrap();
                    std::fs::write(d.join("gen-new.tmp/user-data/Cookies"), "ne").unwrap();
                },
                "old",
            ),
            ("before the swap", |d| generation(d, "gen-new", "new"), "old"),
            (
                "during the swap",
                |d| {
                    generation(d, "gen-new", "new");
                    link(d, "current.tmp", "gen-new");
                },
                "old",
            ),
            (
                "after the swap",
                |d| {
                    generation(d, "gen-new", "new");
                    link(d, "current.tmp", "gen-new");
                    std::fs::rename(d.join("current.tmp"), d.join("current")).unwrap();
                },
                "new",
            ),
        ];
        for (moment, crash, expected) in crashes {
            let root = tempfile::tempdir().unwrap();
            let store = Profiles::load(root.path().to_owned()).unwrap();
            let tenant = Tenant::from_id("t_a");
            let profile = store.create(&tenant, "p").unwrap();
            // A profile saved once before: "old" is its state.
            let dir = root.path().join(&profile.id);
            generation(&dir, "gen-old", "old");
            std::fs::remove_file(dir.join("current")).unwrap();
            link(&dir, "current", "gen-old");
            crash(&dir);

            let reloaded = Profiles::load(root.path().to_owned()).unwrap();
            let profile = reloaded.get(&tenant, &profile.id).unwrap();
            let copy = tempfile::tempdir().unwrap();
            let hold = reloaded.begin_use(profile, "sess_reader", false).unwrap();
            let cookies = hold.copy_into(copy.path()).await.unwrap();
            let content = std::fs::read_to_string(copy.path().join("Cookies")).unwrap();
            assert_eq!(content, expected, "killed {moment}");
            assert_eq!(cookies[0]["value"], expected, "killed {moment}");
            let mut left: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            let generation = format!("gen-{expected}");
            assert_eq!(
                left,
                ["current", generation.as_str(), "profile.json"],
                "killed {moment}"
            );
        }
    }

    #[test]
    fn one_writer_many_readers_and_no_delete_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Profiles::load(dir.path().to_owned()).unwrap();
        let t = Tenant::from_id("t_a");
        let p = store.create(&t, "p").unwrap();
        let w = store.begin_use(p.clone(), "sess_w", true).unwrap();
        assert!(matches!(store.begin_use(p.clone(), "sess_x", true), Err(ProfileError::Busy(s)) if s == "sess_w"));
        let r = store.begin_use(p.clone(), "sess_r", false).unwrap();
        assert!(matches!(store.delete(&t, &p.id), Err(ProfileError::InUse(2))));
        store.end_use(w);
        store.end_use(r);
        store
            .begin_use(p.clone(), "sess_y", true)
            .map(|u| store.end_use(u))
            .unwrap();
        store.delete(&t, &p.id).unwrap();
        assert!(matches!(store.get(&t, &p.id), Err(ProfileError::NotFound)));
    }

    #[test]
    fn a_crash_between_writing_and_swapping_keeps_the_old_generation() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("p");
        std::fs::create_dir_all(pdir.join("gen-a/user-data")).unwrap();
        std::fs::write(pdir.join("gen-a/user-data/Cookies"), "old").unwrap();
        std::os::unix::fs::symlink("gen-a", pdir.join("current")).unwrap();
        // What a kill leaves: a finished generation not yet swapped in, and one half-written.
        std::fs::create_dir_all(pdir.join("gen-b/user-data")).unwrap();
        std::fs::write(pdir.join("gen-b/user-data/Cookies"), "new").unwrap();
        std::fs::create_dir_all(pdir.join("gen-c.tmp/user-data")).unwrap();
        clean_generations(&pdir).unwrap();
        assert_eq!(
            std::fs::read_to_string(pdir.join("current/user-data/Cookies")).unwrap(),
            "old"
        );
        assert!(!pdir.join("gen-b").exists() && !pdir.join("gen-c.tmp").exists());
    }

    #[test]
    fn copies_skip_caches_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("Default/Cache/x")).unwrap();
        std::fs::create_dir_all(from.join("Default/Local Storage/leveldb")).unwrap();
        std::fs::write(from.join("Default/Local Storage/leveldb/000003.log"), "ls").unwrap();
        std::fs::write(from.join("Default/Cookies"), "c").unwrap();
        std::os::unix::fs::symlink("/nonexistent", from.join("SingletonLock")).unwrap();
        let to = dir.path().join("to");
        copy_tree(&from, &to, true).unwrap();
        assert!(to.join("Default/Cookies").exists());
        assert!(to.join("Default/Local Storage/leveldb/000003.log").exists());
        assert!(!to.join("Default/Cache").exists());
        assert!(std::fs::symlink_metadata(to.join("SingletonLock")).is_err());
    }
}
