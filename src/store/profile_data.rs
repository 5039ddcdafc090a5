//! Where profiles' bytes live (`profile_store`): a directory (this node's disk, or a
//! network mount every node of a cluster shares) or an S3-compatible object store.
//!
//! A profile is a record (`profile.json`) and generations of browser state, each written
//! whole beside the others and never changed after, and a pointer to the generation in
//! force. Switching the pointer is the commit: a reader sees the old state or the new,
//! never a mix. In a cluster the pointer that counts is the fenced one in Redis
//! (`profile_locks`); the store's own is kept up to date beside it.
//!
//! In a directory, under `<root>/<id>/`: `profile.json`; `gen-<n>/user-data/` (a Chrome
//! user-data directory without its caches) and `gen-<n>/session-cookies.json` (the
//! cookies without expiry, which Chrome keeps only in memory); `current`, a symlink to the
//! generation in force, swapped with one `rename`. Everything is fsynced before the swap.
//!
//! In an object store, under `<prefix>/<id>/`: `profile.json`; `gen-<n>.tar` (the same two
//! parts in one tar, so that one PUT writes a generation whole); `current`, the name of
//! the generation in force.
//!
//! Beside the profiles, under `extensions/` (a name no profile id can take), the cluster
//! keeps the zip of each uploaded Chrome extension, `<id>.zip`, written whole and read by
//! the nodes that load it (`store::extensions`).

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::auth::random_hex;

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

const COOKIES: &str = "session-cookies.json";
const USER_DATA: &str = "user-data";

/// A profile's record as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// The fingerprint the profile was first used with: sessions from it look the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::values::Fingerprint>,
}

pub enum ProfileData {
    Directory(PathBuf),
    Objects {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

impl ProfileData {
    /// `spec` is a directory, or `s3://bucket[/prefix]` with the credentials, region and
    /// endpoint from the usual `AWS_*` variables; empty means `default_dir`.
    pub fn open(spec: &str, default_dir: PathBuf) -> io::Result<ProfileData> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            let dir = if spec.is_empty() {
                default_dir
            } else {
                PathBuf::from(spec)
            };
            std::fs::create_dir_all(&dir)?;
            return Ok(ProfileData::Directory(dir));
        };
        ProfileData::open_s3(rest, std::env::vars())
    }

    /// An object store at `bucket[/prefix]`, configured by `AWS_*` variables (as the AWS
    /// tools read them) from `vars`.
    pub fn open_s3(location: &str, vars: impl IntoIterator<Item = (String, String)>) -> io::Result<ProfileData> {
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let mut builder = object_store::aws::AmazonS3Builder::new();
        for (key, value) in vars {
            if key.starts_with("AWS_")
                && let Ok(key) = key.to_ascii_lowercase().parse()
            {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder.with_bucket_name(bucket).build().map_err(io::Error::other)?;
        Ok(ProfileData::Objects {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    /// Drops what a broker killed mid-create or mid-save left in a directory only this
    /// node writes to; a shared store is left alone (another node may be writing).
    pub fn recover(&self) -> io::Result<()> {
        let ProfileData::Directory(root) = self else {
            return Ok(());
        };
        for entry in std::fs::read_dir(root)?.flatten() {
            let dir = entry.path();
            // Only profiles' directories: the extensions' zips beside them are not a
            // profile's leftovers.
            if !is_profile_id(&entry.file_name().to_string_lossy()) {
                continue;
            }
            if !dir.join("profile.json").exists() {
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                let current = read_link_name(&dir)?;
                keep_generations(&dir, &current.into_iter().collect::<Vec<_>>())?;
            }
        }
        Ok(())
    }

    fn key(&self, id: &str, name: &str) -> Key {
        match self {
            ProfileData::Objects { prefix, .. } if !prefix.is_empty() => Key::from(format!("{prefix}/{id}/{name}")),
            _ => Key::from(format!("{id}/{name}")),
        }
    }

    /// Every stored record.
    pub async fn records(&self) -> io::Result<Vec<Record>> {
        match self {
            ProfileData::Directory(root) => {
                let root = root.clone();
                blocking(move || {
                    let mut records = Vec::new();
                    for entry in std::fs::read_dir(&root)?.flatten() {
                        if let Some(r) = read_record_file(&entry.path().join("profile.json")) {
                            records.push(r);
                        }
                    }
                    Ok(records)
                })
                .await
            }
            ProfileData::Objects { store, prefix } => {
                let root = (!prefix.is_empty()).then(|| Key::from(prefix.as_str()));
                let listing = store
                    .list_with_delimiter(root.as_ref())
                    .await
                    .map_err(io::Error::other)?;
                let mut records = Vec::new();
                for dir in listing.common_prefixes {
                    let Some(id) = dir.filename() else { continue };
                    if let Some(r) = self.record(id).await? {
                        records.push(r);
                    }
                }
                Ok(records)
            }
        }
    }

    pub async fn record(&self, id: &str) -> io::Result<Option<Record>> {
        if !is_profile_id(id) {
            return Ok(None);
        }
        match self {
            ProfileData::Directory(root) => {
                let path = root.join(id).join("profile.json");
                blocking(move || Ok(read_record_file(&path))).await
            }
            ProfileData::Objects { store, .. } => match store.get(&self.key(id, "profile.json")).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(io::Error::other)?;
                    Ok(serde_json::from_slice(&bytes).ok())
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io::Error::other(e)),
            },
        }
    }

    /// Writes (or rewrites) a record; written last at creation, so a profile without one
    /// is an unfinished create.
    pub async fn put_record(&self, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        match self {
            ProfileData::Directory(root) => {
                let path = root.join(&record.id).join("profile.json");
                blocking(move || write_atomically(&path, &bytes)).await
            }
            ProfileData::Objects { store, .. } => put(store, &self.key(&record.id, "profile.json"), bytes).await,
        }
    }

    /// A new profile: an empty first generation in force, then its record.
    pub async fn create(&self, record: &Record) -> io::Result<()> {
        let generation = self.write_generation(&record.id, None, b"[]").await?;
        self.set_current(&record.id, &generation).await?;
        self.put_record(record).await
    }

    /// Removes a profile, its record first: a half-removed profile is never listed.
    pub async fn remove(&self, id: &str) -> io::Result<()> {
        match self {
            ProfileData::Directory(root) => {
                let dir = root.join(id);
                blocking(move || {
                    let _ = std::fs::remove_file(dir.join("profile.json"));
                    std::fs::remove_dir_all(&dir)
                })
                .await
            }
            ProfileData::Objects { store, .. } => {
                delete(store, &self.key(id, "profile.json")).await?;
                for key in self.object_keys(id).await? {
                    delete(store, &key).await?;
                }
                Ok(())
            }
        }
    }

    /// The generation this store's own pointer names.
    pub async fn current(&self, id: &str) -> io::Result<Option<String>> {
        match self {
            ProfileData::Directory(root) => {
                let dir = root.join(id);
                blocking(move || read_link_name(&dir)).await
            }
            ProfileData::Objects { store, .. } => match store.get(&self.key(id, "current")).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(io::Error::other)?;
                    Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned()))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io::Error::other(e)),
            },
        }
    }

    /// Copies generation `generation` of profile `id` into `dest` (a new browser's
    /// user-data directory); answers its session cookies (JSON).
    pub async fn read_generation(&self, id: &str, generation: &str, dest: &Path) -> io::Result<Vec<u8>> {
        check_generation(generation)?;
        let dest = dest.to_owned();
        match self {
            ProfileData::Directory(root) => {
                let from = root.join(id).join(generation);
                blocking(move || {
                    copy_tree(&from.join(USER_DATA), &dest, false)?;
                    Ok(std::fs::read(from.join(COOKIES)).unwrap_or_default())
                })
                .await
            }
            ProfileData::Objects { store, .. } => {
                let key = self.key(id, &format!("{generation}.tar"));
                let bytes = store
                    .get(&key)
                    .await
                    .map_err(io::Error::other)?
                    .bytes()
                    .await
                    .map_err(io::Error::other)?;
                blocking(move || unpack(&bytes, &dest)).await
            }
        }
    }

    /// Writes a new generation of profile `id` from a user-data directory (none: empty)
    /// and session cookies, whole and durable, beside the one in force; answers its name.
    pub async fn write_generation(&self, id: &str, source: Option<&Path>, cookies: &[u8]) -> io::Result<String> {
        let name = format!("gen-{}", random_hex(6));
        let (source, cookies) = (source.map(Path::to_owned), cookies.to_vec());
        match self {
            ProfileData::Directory(root) => {
                let dir = root.join(id);
                let generation = name.clone();
                blocking(move || {
                    let aside = dir.join(format!("{generation}.tmp"));
                    let written = (|| {
                        std::fs::create_dir_all(aside.join(USER_DATA))?;
                        if let Some(source) = &source {
                            copy_tree(source, &aside.join(USER_DATA), true)?;
                        }
                        write_synced(&aside.join(COOKIES), &cookies)?;
                        sync_dir(&aside)?;
                        std::fs::rename(&aside, dir.join(&generation))?;
                        sync_dir(&dir)
                    })();
                    if written.is_err() {
                        // A full disk must not stay full: the half-written generation goes.
                        let _ = std::fs::remove_dir_all(&aside);
                    }
                    written
                })
                .await?;
            }
            ProfileData::Objects { store, .. } => {
                let tar = blocking(move || pack(source.as_deref(), &cookies)).await?;
                put(store, &self.key(id, &format!("{name}.tar")), tar).await?;
            }
        }
        Ok(name)
    }

    /// Puts `generation` in force: the commit.
    pub async fn set_current(&self, id: &str, generation: &str) -> io::Result<()> {
        check_generation(generation)?;
        match self {
            ProfileData::Directory(root) => {
                let (dir, generation) = (root.join(id), generation.to_owned());
                blocking(move || {
                    // A new symlink beside the old one, renamed over it.
                    let link = dir.join("current.tmp");
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&generation, &link)?;
                    std::fs::rename(&link, dir.join("current"))?;
                    sync_dir(&dir)
                })
                .await
            }
            ProfileData::Objects { store, .. } => {
                put(store, &self.key(id, "current"), generation.as_bytes().to_vec()).await
            }
        }
    }

    /// Removes one generation (a save that was not committed).
    pub async fn drop_generation(&self, id: &str, generation: &str) -> io::Result<()> {
        check_generation(generation)?;
        match self {
            ProfileData::Directory(root) => {
                let dir = root.join(id).join(generation);
                blocking(move || std::fs::remove_dir_all(dir)).await
            }
            ProfileData::Objects { store, .. } => delete(store, &self.key(id, &format!("{generation}.tar"))).await,
        }
    }

    /// Removes profile `id`'s generations but those in `keep`.
    pub async fn keep_only(&self, id: &str, keep: &[String]) -> io::Result<()> {
        match self {
            ProfileData::Directory(root) => {
                let (dir, keep) = (root.join(id), keep.to_vec());
                blocking(move || keep_generations(&dir, &keep)).await
            }
            ProfileData::Objects { store, .. } => {
                for key in self.object_keys(id).await? {
                    let generation = key.filename().and_then(|f| f.strip_suffix(".tar"));
                    if let Some(generation) = generation
                        && !keep.iter().any(|k| k == generation)
                    {
                        delete(store, &key).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes an extension's zip, whole (a reader never sees half of it).
    pub async fn put_extension_zip(&self, id: &str, bytes: Vec<u8>) -> io::Result<()> {
        let name = extension_zip_name(id)?;
        match self {
            ProfileData::Directory(root) => {
                let dir = root.join(EXTENSIONS);
                blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    write_atomically(&dir.join(name), &bytes)
                })
                .await
            }
            ProfileData::Objects { store, .. } => put(store, &self.key(EXTENSIONS, &name), bytes).await,
        }
    }

    /// An extension's zip, `None` if there is none; one larger than `limit` bytes is an
    /// error, not read whole.
    pub async fn extension_zip(&self, id: &str, limit: usize) -> io::Result<Option<Vec<u8>>> {
        let name = extension_zip_name(id)?;
        let message = format!("{name} is larger than {limit} bytes");
        let too_large = move || io::Error::new(io::ErrorKind::InvalidData, message);
        match self {
            ProfileData::Directory(root) => {
                let path = root.join(EXTENSIONS).join(&name);
                blocking(move || {
                    let file = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let mut bytes = Vec::new();
                    io::Read::read_to_end(&mut io::Read::take(file, limit as u64 + 1), &mut bytes)?;
                    if bytes.len() > limit {
                        return Err(too_large());
                    }
                    Ok(Some(bytes))
                })
                .await
            }
            ProfileData::Objects { store, .. } => match store.get(&self.key(EXTENSIONS, &name)).await {
                Ok(got) if got.meta.size > limit as u64 => Err(too_large()),
                Ok(got) => Ok(Some(got.bytes().await.map_err(io::Error::other)?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io::Error::other(e)),
            },
        }
    }

    /// The extension ids whose zips the store holds, each with when it was written.
    pub async fn extension_zips(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let id_of = |name: &str| {
            let id = name.strip_suffix(".zip")?;
            extension_zip_name(id).ok().map(|_| id.to_owned())
        };
        match self {
            ProfileData::Directory(root) => {
                let dir = root.join(EXTENSIONS);
                blocking(move || {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(entries) => entries,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                        Err(e) => return Err(e),
                    };
                    let mut found = Vec::new();
                    for entry in entries.flatten() {
                        if let (Some(id), Ok(meta)) = (id_of(&entry.file_name().to_string_lossy()), entry.metadata()) {
                            found.push((id, meta.modified()?));
                        }
                    }
                    Ok(found)
                })
                .await
            }
            ProfileData::Objects { store, .. } => {
                use futures_util::TryStreamExt;
                let dir = self.key(EXTENSIONS, "");
                let listed: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(io::Error::other)?;
                Ok(listed
                    .into_iter()
                    .filter_map(|meta| Some((id_of(meta.location.filename()?)?, meta.last_modified.into())))
                    .collect())
            }
        }
    }

    pub async fn remove_extension_zip(&self, id: &str) -> io::Result<()> {
        let name = extension_zip_name(id)?;
        match self {
            ProfileData::Directory(root) => {
                let path = root.join(EXTENSIONS).join(name);
                blocking(move || match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await
            }
            ProfileData::Objects { store, .. } => delete(store, &self.key(EXTENSIONS, &name)).await,
        }
    }

    async fn object_keys(&self, id: &str) -> io::Result<Vec<Key>> {
        use futures_util::TryStreamExt;
        let ProfileData::Objects { store, .. } = self else {
            return Ok(Vec::new());
        };
        let dir = self.key(id, "");
        let listed: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(io::Error::other)?;
        Ok(listed.into_iter().map(|meta| meta.location).collect())
    }
}

/// The folder of the extensions' zips, beside the profiles.
const EXTENSIONS: &str = "extensions";

/// `<id>.zip` for an extension id (`ext_` and hex digits: never a path).
fn extension_zip_name(id: &str) -> io::Result<String> {
    let ok = id
        .strip_prefix("ext_")
        .is_some_and(|hex| !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an extension id: {id:?}"),
        ));
    }
    Ok(format!("{id}.zip"))
}

/// Profile ids are UUIDs: anything else names no profile (and no path).
fn is_profile_id(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn check_generation(name: &str) -> io::Result<()> {
    let ok = name.starts_with("gen-") && name[4..].chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a generation name: {name:?}"),
        ))
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}

async fn put(store: &Arc<dyn ObjectStore>, key: &Key, bytes: Vec<u8>) -> io::Result<()> {
    store
        .put(key, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(io::Error::other)
}

async fn delete(store: &Arc<dyn ObjectStore>, key: &Key) -> io::Result<()> {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(io::Error::other(e)),
    }
}

fn read_record_file(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    let record = serde_json::from_str(&text);
    if record.is_err() {
        tracing::warn!(path = %path.display(), "skipping a profile with an unreadable profile.json");
    }
    record.ok()
}

fn read_link_name(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_link(dir.join("current")) {
        Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Keeps the generations named in `keep`; removes the others, unfinished ones and a
/// half-made `current.tmp`.
fn keep_generations(dir: &Path, keep: &[String]) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with("gen-") && !keep.contains(&name);
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

/// The bytes a save of `from` would keep (its plain files, caches and locks left out).
pub(crate) fn kept_bytes(from: &Path) -> io::Result<u64> {
    let mut total = 0;
    walk_kept(from, Path::new(""), &mut |path, _, is_dir| {
        if !is_dir {
            total += std::fs::symlink_metadata(path)?.len();
        }
        Ok(())
    })?;
    Ok(total)
}

/// Calls `visit(path, relative path, is_dir)` for every plain file and directory under
/// `from`, parents first, skipping caches, locks and anything else.
fn walk_kept(from: &Path, rel: &Path, visit: &mut dyn FnMut(&Path, &Path, bool) -> io::Result<()>) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if SKIPPED.contains(&name_str.as_ref()) || name_str.starts_with("Singleton") {
            continue;
        }
        let kind = entry.file_type()?;
        let (path, rel) = (entry.path(), rel.join(&name));
        if kind.is_dir() {
            visit(&path, &rel, true)?;
            walk_kept(&path, &rel, visit)?;
        } else if kind.is_file() {
            visit(&path, &rel, false)?;
        }
    }
    Ok(())
}

/// Copies a directory tree, skipping caches, locks and anything not a plain file or
/// directory; with `sync`, every file and directory is fsynced.
fn copy_tree(from: &Path, to: &Path, sync: bool) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut dirs = vec![to.to_owned()];
    walk_kept(from, Path::new(""), &mut |src, rel, is_dir| {
        let dst = to.join(rel);
        if is_dir {
            std::fs::create_dir_all(&dst)?;
            dirs.push(dst);
        } else {
            std::fs::copy(src, &dst)?;
            if sync {
                std::fs::File::open(&dst)?.sync_all()?;
            }
        }
        Ok(())
    })?;
    if sync {
        for dir in dirs {
            sync_dir(&dir)?;
        }
    }
    Ok(())
}

/// One tar of a generation: `session-cookies.json` and `user-data/…`.
fn pack(source: Option<&Path>, cookies: &[u8]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(cookies.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, COOKIES, cookies)?;
    if let Some(source) = source {
        walk_kept(source, Path::new(USER_DATA), &mut |path, rel, is_dir| {
            if is_dir {
                tar.append_dir(rel, path)
            } else {
                tar.append_path_with_name(path, rel)
            }
        })?;
    }
    tar.into_inner()
}

/// Unpacks a generation's tar into `dest`; answers its session cookies. Entries that
/// would land outside `dest`, links and devices are skipped.
fn unpack(bytes: &[u8], dest: &Path) -> io::Result<Vec<u8>> {
    std::fs::create_dir_all(dest)?;
    let mut cookies = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new(COOKIES) {
            io::Read::read_to_end(&mut entry, &mut cookies)?;
            continue;
        }
        let Ok(rel) = path.strip_prefix(USER_DATA) else {
            continue;
        };
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        let target = dest.join(rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target)?,
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut file = std::fs::File::create(&target)?;
                io::copy(&mut entry, &mut file)?;
            }
            _ => {}
        }
    }
    Ok(cookies)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar from a hostile store cannot write outside the browser's directory.
    #[test]
    fn unpacking_stays_inside_the_destination() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut append = |name: &[u8], kind: tar::EntryType, body: &[u8]| {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_entry_type(kind);
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            if kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            tar.append(&header, body).unwrap();
        };
        append(b"user-data/../../escaped", tar::EntryType::Regular, b"x");
        append(b"/tmp/absolute", tar::EntryType::Regular, b"x");
        append(b"user-data/link", tar::EntryType::Symlink, b"");
        append(b"user-data/Default/Cookies", tar::EntryType::Regular, b"ok");
        let bytes = tar.into_inner().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("a/b");
        unpack(&bytes, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("Default/Cookies")).unwrap(), "ok");
        assert!(!root.path().join("escaped").exists() && !root.path().join("a/escaped").exists());
        assert!(std::fs::symlink_metadata(dest.join("link")).is_err());
        assert!(!Path::new("/tmp/absolute").exists());
    }
}
