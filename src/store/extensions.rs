//! Chrome extensions of each API key. On this node's disk, `data_dir/extensions/<id>/`
//! holds `extension.json` (whose it is, what its manifest says) and `unpacked/`, the
//! directory a browser loads (and the only one of them it may read).
//!
//! An upload is checked whole (`extension_zip`) before anything is written, unpacked into a
//! temporary directory and renamed into place, so a refused or failed upload leaves
//! nothing and a listing never sees half an extension. A session's browser holds the
//! extensions it loads ([`ExtensionUse`]): one in use is not deleted.
//!
//! In a cluster the records are the cluster's (`extension_catalog`, in Redis: listed, read,
//! capped and deleted the same from every node) and each zip is kept in the shared profile
//! store with its SHA-256 in the signed record. The directory here is then a cache: a node
//! that lacks an extension fetches the zip at its first use (one fetch at a time per
//! extension), refuses it unless its hash is the one recorded and it passes the upload's
//! checks again, and unpacks it as an upload is; copies of deleted extensions go at the
//! next [`Extensions::keep_in_step`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::extension_catalog::{Added, Catalog, Deleted};
use super::extension_zip::{self, MAX_ZIP_BYTES, ZipError};
use super::profile_data::ProfileData;
use crate::auth::{Tenant, hex, random_hex, unix_secs};
use crate::error::Origin;

/// The metadata file beside each extension's unpacked directory.
const META: &str = "extension.json";
/// The directory a browser loads.
const UNPACKED: &str = "unpacked";
/// Names of directories on their way in or out (swept at start).
const TEMP_PREFIX: &str = ".tmp-";
const GONE_PREFIX: &str = ".gone-";

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("Extension not found")]
    NotFound,
    /// Named by a create: not one of the key's extensions.
    #[error("extensions: {0:?} is not an extension of this API key")]
    Unknown(String),
    #[error("The extension was refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Full(String),
    #[error("The extension is in use by {0} running session(s)")]
    InUse(usize),
    /// The copy the cluster keeps cannot be loaded (changed or lost in the shared store).
    #[error("extension {id} cannot be loaded: {why}; delete it and upload it again")]
    Unloadable { id: String, why: String },
    #[error("the extension store failed: {0}")]
    Io(#[from] io::Error),
    #[error("the cluster's extensions cannot be read: {0}")]
    Unavailable(#[from] StoreError),
}

impl ExtensionError {
    pub fn origin(&self) -> Origin {
        match self {
            ExtensionError::Io(_) | ExtensionError::Unloadable { .. } | ExtensionError::Unavailable(_) => {
                Origin::Internal
            }
            _ => Origin::Client,
        }
    }
}

impl From<ZipError> for ExtensionError {
    fn from(e: ZipError) -> Self {
        match e {
            ZipError::Refused(why) => ExtensionError::Refused(why),
            ZipError::Io(e) => ExtensionError::Io(e),
        }
    }
}

/// One kept extension.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extension {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub version: String,
    pub manifest_version: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Bytes unpacked.
    pub size: u64,
    /// SHA-256 of the zip as uploaded (hex): a copy fetched from the shared store must
    /// have it.
    #[serde(default)]
    pub sha256: String,
}

impl Extension {
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created_at)
    }
}

#[derive(Default)]
struct State {
    /// The extensions on this node's disk: all there are on one node, a cache in a cluster.
    by_id: HashMap<String, Arc<Extension>>,
    /// Browsers of this node holding each extension now.
    users: HashMap<String, usize>,
}

/// Every API key's extensions, as this node reads and keeps them.
pub struct Extensions {
    root: PathBuf,
    max_per_key: usize,
    max_bytes_per_key: u64,
    state: Arc<Mutex<State>>,
    /// The cluster's records and zips, when there is a cluster.
    shared: Option<Arc<Shared>>,
    /// Zips fetched from the shared store.
    fetched: AtomicU64,
    /// Unpacks under way on this node, at most `UNPACKS` at once: each may write up to the
    /// unpacked cap before the key's caps are checked against its real size.
    unpacks: tokio::sync::Semaphore,
    /// Keys with an upload under way: one at a time per key, so that a key's burst of
    /// uploads cannot hold every unpack.
    uploading: Mutex<std::collections::HashSet<String>>,
}

/// Unpacks at once on a node: what they may write in all is this many unpacked caps.
const UNPACKS: usize = 2;

/// A key's upload under way, until dropped.
struct UploadOfKey<'a> {
    uploading: &'a Mutex<std::collections::HashSet<String>>,
    tenant: String,
}

impl<'a> UploadOfKey<'a> {
    fn claim(uploading: &'a Mutex<std::collections::HashSet<String>>, tenant: &Tenant) -> Result<Self, ExtensionError> {
        let tenant = tenant.to_string();
        if !uploading.lock().expect("uploads lock").insert(tenant.clone()) {
            return Err(ExtensionError::Full(
                "An upload of this API key's is under way: extensions are uploaded one at a time".into(),
            ));
        }
        Ok(UploadOfKey { uploading, tenant })
    }
}

impl Drop for UploadOfKey<'_> {
    fn drop(&mut self) {
        self.uploading.lock().expect("uploads lock").remove(&self.tenant);
    }
}

/// What a cluster shares of its extensions.
pub struct Shared {
    catalog: Catalog,
    zips: Arc<ProfileData>,
    /// Holds and publications one at a time, so the count Redis has for this node is the
    /// count this node has.
    publishing: tokio::sync::Mutex<()>,
    /// One fetch per extension at a time.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    pub fn new(catalog: Catalog, zips: Arc<ProfileData>) -> Shared {
        Shared {
            catalog,
            zips,
            publishing: tokio::sync::Mutex::new(()),
            fetching: Mutex::default(),
        }
    }

    /// Writes this node's holds, as they are now, into Redis.
    async fn publish(&self, state: &Mutex<State>) -> Result<(), StoreError> {
        let _one = self.publishing.lock().await;
        let users = state.lock().expect("extensions lock").users.clone();
        self.catalog.publish(&users).await
    }
}

/// The extensions a browser loads, held until it is dropped (with the browser's lease).
pub struct ExtensionUse {
    ids: Vec<String>,
    /// Their unpacked directories, in the order asked.
    pub dirs: Vec<PathBuf>,
    state: Arc<Mutex<State>>,
    shared: Option<Arc<Shared>>,
}

impl Drop for ExtensionUse {
    fn drop(&mut self) {
        {
            let mut state = self.state.lock().expect("extensions lock");
            for id in &self.ids {
                if let Some(n) = state.users.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        state.users.remove(id);
                    }
                }
            }
        }
        // The cluster hears of it soon; until then (or if Redis does not answer, until
        // the next `keep_in_step`) it counts as held, which refuses a delete, never
        // allows one too early.
        if let (Some(shared), Ok(runtime)) = (self.shared.clone(), tokio::runtime::Handle::try_current()) {
            let state = self.state.clone();
            runtime.spawn(async move {
                if let Err(e) = shared.publish(&state).await {
                    tracing::debug!(error = %e, "extension holds not published; retried with the next sweep");
                }
            });
        }
    }
}

impl Extensions {
    /// Opens `root`, reading the extensions kept there and removing what an interrupted
    /// upload or delete left; with `shared`, the cluster's extensions (call
    /// [`Self::keep_in_step`] once before serving: it clears this node's earlier holds).
    pub fn open(
        root: PathBuf,
        max_per_key: usize,
        max_bytes_per_key: u64,
        shared: Option<Shared>,
    ) -> io::Result<Extensions> {
        std::fs::create_dir_all(&root)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(&root)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) || name.starts_with(GONE_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            match std::fs::read(entry.path().join(META))
                .ok()
                .and_then(|b| serde_json::from_slice::<Extension>(&b).ok())
            {
                Some(ext) if ext.id == name => {
                    state.by_id.insert(name, Arc::new(ext));
                }
                _ => tracing::warn!(dir = %entry.path().display(), "not an extension's directory; left alone"),
            }
        }
        Ok(Extensions {
            root,
            max_per_key,
            max_bytes_per_key,
            state: Arc::new(Mutex::new(state)),
            shared: shared.map(Arc::new),
            fetched: AtomicU64::new(0),
            unpacks: tokio::sync::Semaphore::new(UNPACKS),
            uploading: Mutex::default(),
        })
    }

    /// How many zips this node has fetched from the shared store.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Checks `zip`, unpacks it and keeps it as one of `tenant`'s extensions.
    pub async fn add(&self, tenant: &Tenant, zip: bytes::Bytes) -> Result<Arc<Extension>, ExtensionError> {
        let _one_of_the_key = UploadOfKey::claim(&self.uploading, tenant)?;
        self.room_for(tenant, 0).await?;
        let _unpack = self
            .unpacks
            .acquire()
            .await
            .map_err(|e| ExtensionError::Io(io::Error::other(e)))?;
        let id = format!("ext_{}", random_hex(12));
        let temp = self.root.join(format!("{TEMP_PREFIX}{id}"));
        let unpacked = {
            let (temp, zip) = (temp.clone(), zip.clone());
            tokio::task::spawn_blocking(move || unpack_into(&zip, &temp))
                .await
                .map_err(|e| ExtensionError::Io(io::Error::other(e)))
        }
        .and_then(|r| r);
        let ext = match unpacked {
            Ok((manifest, size)) => Extension {
                id: id.clone(),
                tenant: tenant.to_string(),
                name: manifest.name,
                version: manifest.version,
                manifest_version: manifest.manifest_version,
                created_at: unix_secs(SystemTime::now()),
                size,
                sha256: sha256(&zip),
            },
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&temp).await;
                return Err(e);
            }
        };
        let kept = match &self.shared {
            None => self.keep_here(tenant, ext, &temp).await,
            Some(shared) => self.keep_shared(shared, ext, zip, &temp).await,
        };
        if kept.is_err() {
            let _ = tokio::fs::remove_dir_all(&temp).await;
        }
        kept
    }

    /// On one node: the caps again, now that its size is known, and the rename under the
    /// same lock.
    async fn keep_here(&self, tenant: &Tenant, ext: Extension, temp: &Path) -> Result<Arc<Extension>, ExtensionError> {
        write_meta(temp, &ext)?;
        let mut state = self.state.lock().expect("extensions lock");
        self.room_in(&state, tenant, ext.size)?;
        std::fs::rename(temp, self.root.join(&ext.id))?;
        let ext = Arc::new(ext);
        state.by_id.insert(ext.id.clone(), ext.clone());
        Ok(ext)
    }

    /// In a cluster: the zip into the shared store, then the record, if the key's caps
    /// across the cluster allow it (atomically in Redis); the zip goes again if not.
    async fn keep_shared(
        &self,
        shared: &Shared,
        ext: Extension,
        zip: bytes::Bytes,
        temp: &Path,
    ) -> Result<Arc<Extension>, ExtensionError> {
        write_meta(temp, &ext)?;
        shared.zips.put_extension_zip(&ext.id, zip.to_vec()).await?;
        let record = serde_json::to_string(&ext).map_err(io::Error::other)?;
        let added = shared
            .catalog
            .add(
                &ext.tenant,
                &ext.id,
                ext.size,
                &record,
                self.max_per_key,
                self.max_bytes_per_key,
                true,
            )
            .await;
        let refused = match added {
            Ok(Added::Kept) => None,
            Ok(over) => Some(self.full(over)),
            Err(e) => Some(ExtensionError::Unavailable(e)),
        };
        if let Some(e) = refused {
            let _ = shared.zips.remove_extension_zip(&ext.id).await;
            return Err(e);
        }
        let mut state = self.state.lock().expect("extensions lock");
        // Kept by the cluster: this node's copy is only a cache, fetched again if lost.
        if let Err(e) = std::fs::rename(temp, self.root.join(&ext.id)) {
            tracing::warn!(error = %e, extension = %ext.id, "the uploaded extension is not kept on this node's disk");
        }
        let ext = Arc::new(ext);
        state.by_id.insert(ext.id.clone(), ext.clone());
        Ok(ext)
    }

    async fn room_for(&self, tenant: &Tenant, size: u64) -> Result<(), ExtensionError> {
        match &self.shared {
            None => {
                let state = self.state.lock().expect("extensions lock");
                self.room_in(&state, tenant, size)
            }
            Some(shared) => match shared
                .catalog
                .add(
                    &tenant.to_string(),
                    "",
                    size,
                    "",
                    self.max_per_key,
                    self.max_bytes_per_key,
                    false,
                )
                .await?
            {
                Added::Kept => Ok(()),
                over => Err(self.full(over)),
            },
        }
    }

    /// Whether `tenant` may keep one more extension of `size` bytes (on one node).
    fn room_in(&self, state: &State, tenant: &Tenant, size: u64) -> Result<(), ExtensionError> {
        let tenant = tenant.to_string();
        let own: Vec<_> = state.by_id.values().filter(|e| e.tenant == tenant).collect();
        if own.len() >= self.max_per_key {
            return Err(self.full(Added::TooMany(own.len())));
        }
        let bytes: u64 = own.iter().map(|e| e.size).sum::<u64>() + size;
        if bytes > self.max_bytes_per_key {
            return Err(self.full(Added::TooLarge(bytes)));
        }
        Ok(())
    }

    /// The refusal of an upload past a cap.
    fn full(&self, over: Added) -> ExtensionError {
        ExtensionError::Full(match over {
            Added::TooLarge(bytes) => format!(
                "This API key's extensions would take {bytes} bytes unpacked, more than max_extension_bytes_per_key ({})",
                self.max_bytes_per_key
            ),
            Added::TooMany(n) => {
                format!("This API key keeps {n} extensions, the most max_extensions_per_key allows: delete one first")
            }
            Added::Kept => "This API key has room for the extension".into(),
        })
    }

    /// `tenant`'s extensions, oldest first, each with how many running browsers load it
    /// (on this node; in a cluster, on every live node).
    pub async fn list(&self, tenant: &Tenant) -> Result<Vec<(Arc<Extension>, usize)>, ExtensionError> {
        let mut own: Vec<Arc<Extension>> = match &self.shared {
            None => {
                let tenant = tenant.to_string();
                let state = self.state.lock().expect("extensions lock");
                state.by_id.values().filter(|e| e.tenant == tenant).cloned().collect()
            }
            Some(shared) => shared
                .catalog
                .list(&tenant.to_string())
                .await?
                .iter()
                .filter_map(|r| parsed(r).filter(|e| e.tenant == tenant.to_string()))
                .map(Arc::new)
                .collect(),
        };
        own.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let ids: Vec<String> = own.iter().map(|e| e.id.clone()).collect();
        let users = self.users(&ids).await?;
        Ok(own.into_iter().zip(users).collect())
    }

    /// One of `tenant`'s extensions (another key's is not found), with its users.
    pub async fn get(&self, tenant: &Tenant, id: &str) -> Result<(Arc<Extension>, usize), ExtensionError> {
        let ext = self.find(tenant, std::slice::from_ref(&id.to_owned())).await?;
        let ext = ext.into_iter().next().flatten().ok_or(ExtensionError::NotFound)?;
        let users = self.users(std::slice::from_ref(&ext.id)).await?;
        Ok((ext, users[0]))
    }

    /// Each of `ids` if it is `tenant`'s.
    async fn find(&self, tenant: &Tenant, ids: &[String]) -> Result<Vec<Option<Arc<Extension>>>, ExtensionError> {
        let tenant = tenant.to_string();
        let found: Vec<Option<Arc<Extension>>> = match &self.shared {
            None => {
                let state = self.state.lock().expect("extensions lock");
                ids.iter().map(|id| state.by_id.get(id).cloned()).collect()
            }
            Some(shared) => shared
                .catalog
                .get_many(ids)
                .await?
                .into_iter()
                .zip(ids)
                .map(|(r, id)| r.and_then(|r| parsed(&r)).filter(|e| &e.id == id).map(Arc::new))
                .collect(),
        };
        Ok(found.into_iter().map(|e| e.filter(|e| e.tenant == tenant)).collect())
    }

    /// Browsers holding each of `ids` now.
    async fn users(&self, ids: &[String]) -> Result<Vec<usize>, ExtensionError> {
        match &self.shared {
            Some(shared) => Ok(shared.catalog.users(ids).await?),
            None => {
                let state = self.state.lock().expect("extensions lock");
                Ok(ids.iter().map(|id| state.users.get(id).copied().unwrap_or(0)).collect())
            }
        }
    }

    /// Removes one of `tenant`'s extensions and its files; refused while a browser holds
    /// it (in a cluster, a browser of any live node).
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), ExtensionError> {
        let Some(shared) = &self.shared else {
            // The check and the removal under one lock: a create holding it in between
            // would otherwise see it deleted under its browser, or the answer say 204 and
            // nothing be deleted.
            let gone = {
                let mut state = self.state.lock().expect("extensions lock");
                if state.by_id.get(id).is_none_or(|e| e.tenant != tenant.to_string()) {
                    return Err(ExtensionError::NotFound);
                }
                if let Some(n) = state.users.get(id) {
                    return Err(ExtensionError::InUse(*n));
                }
                let gone = self.root.join(format!("{GONE_PREFIX}{}", random_hex(8)));
                std::fs::rename(self.root.join(id), &gone)?;
                state.by_id.remove(id);
                gone
            };
            tokio::fs::remove_dir_all(&gone).await?;
            return Ok(());
        };
        // Another key's id is not found, whatever Redis holds.
        if self.find(tenant, &[id.to_owned()]).await?[0].is_none() {
            return Err(ExtensionError::NotFound);
        }
        match shared.catalog.delete(&tenant.to_string(), id).await? {
            Deleted::NotFound => return Err(ExtensionError::NotFound),
            Deleted::InUse(n) => return Err(ExtensionError::InUse(n)),
            Deleted::Gone => {}
        }
        // Deleted now, whatever follows: a zip left behind is swept as an orphan.
        if let Err(e) = shared.zips.remove_extension_zip(id).await {
            tracing::warn!(error = %e, extension = %id, "the deleted extension's zip stays in the store until the orphan sweep");
        }
        self.drop_local(id).await
    }

    /// Removes this node's copy of `id` unless a browser here holds it.
    async fn drop_local(&self, id: &str) -> Result<(), ExtensionError> {
        let gone = self.root.join(format!("{GONE_PREFIX}{}", random_hex(8)));
        {
            let mut state = self.state.lock().expect("extensions lock");
            if state.users.contains_key(id) || state.by_id.remove(id).is_none() {
                return Ok(());
            }
            // Out of the listing's sight at once; its files go below.
            std::fs::rename(self.root.join(id), &gone)?;
        }
        if let Some(shared) = &self.shared {
            shared.fetching.lock().expect("extensions lock").remove(id);
        }
        tokio::fs::remove_dir_all(&gone).await?;
        Ok(())
    }

    /// Refuses `ids` unless each is one of `tenant`'s extensions.
    pub async fn check(&self, tenant: &Tenant, ids: &[String]) -> Result<Vec<Arc<Extension>>, ExtensionError> {
        let found = self.find(tenant, ids).await?;
        ids.iter()
            .zip(found)
            .map(|(id, e)| e.ok_or_else(|| ExtensionError::Unknown(id.clone())))
            .collect()
    }

    /// Holds `ids` (each one of `tenant`'s) for a browser that loads them; in a cluster,
    /// fetches those this node lacks first.
    pub async fn hold(&self, tenant: &Tenant, ids: &[String]) -> Result<ExtensionUse, ExtensionError> {
        let Some(shared) = &self.shared else {
            let mut state = self.state.lock().expect("extensions lock");
            let tenant = tenant.to_string();
            for id in ids {
                if state.by_id.get(id).is_none_or(|e| e.tenant != tenant) {
                    return Err(ExtensionError::Unknown(id.clone()));
                }
            }
            for id in ids {
                *state.users.entry(id.clone()).or_default() += 1;
            }
            return Ok(self.use_of(ids, None));
        };
        let records = self.check(tenant, ids).await?;
        let held = {
            let _one = shared.publishing.lock().await;
            // Atomic with a delete: either the delete sees this hold or this sees it gone.
            if let Some(missing) = shared.catalog.hold(ids).await? {
                return Err(ExtensionError::Unknown(missing));
            }
            let mut state = self.state.lock().expect("extensions lock");
            for id in ids {
                *state.users.entry(id.clone()).or_default() += 1;
            }
            self.use_of(ids, Some(shared.clone()))
        };
        for ext in &records {
            if let Err(e) = self.fetch(shared, ext).await {
                // Let go before answering, so that the refusal is seen to hold nothing.
                drop(held);
                let _ = shared.publish(&self.state).await;
                return Err(e);
            }
        }
        Ok(held)
    }

    fn use_of(&self, ids: &[String], shared: Option<Arc<Shared>>) -> ExtensionUse {
        ExtensionUse {
            ids: ids.to_vec(),
            dirs: ids.iter().map(|id| self.root.join(id).join(UNPACKED)).collect(),
            state: self.state.clone(),
            shared,
        }
    }

    /// Makes sure this node has `ext` unpacked: fetched from the shared store, its hash
    /// the one recorded at upload, checked as an upload is, unpacked aside and renamed in.
    async fn fetch(&self, shared: &Shared, ext: &Extension) -> Result<(), ExtensionError> {
        let gate = shared
            .fetching
            .lock()
            .expect("extensions lock")
            .entry(ext.id.clone())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if self.state.lock().expect("extensions lock").by_id.contains_key(&ext.id) {
            return Ok(());
        }
        let unloadable = |why: String| ExtensionError::Unloadable {
            id: ext.id.clone(),
            why,
        };
        let zip = shared
            .zips
            .extension_zip(&ext.id, MAX_ZIP_BYTES)
            .await
            .map_err(|e| unloadable(format!("its zip could not be read from the shared store ({e})")))?
            .ok_or_else(|| unloadable("its zip is missing from the shared store".into()))?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        if sha256(&zip) != ext.sha256 {
            tracing::error!(extension = %ext.id, "the extension's zip in the shared store is not the one uploaded: refused");
            return Err(unloadable(
                "its zip in the shared store is not the one uploaded (its SHA-256 differs)".into(),
            ));
        }
        let temp = self.root.join(format!("{TEMP_PREFIX}{}-{}", ext.id, random_hex(4)));
        let unpacked = {
            let temp = temp.clone();
            tokio::task::spawn_blocking(move || unpack_into(&zip, &temp))
                .await
                .map_err(|e| ExtensionError::Io(io::Error::other(e)))
        }
        .and_then(|r| r)
        .and_then(|(_, size)| match size == ext.size {
            true => write_meta(&temp, ext),
            false => Err(unloadable(format!("it unpacks to {size} bytes, not {}", ext.size))),
        })
        .and_then(|()| {
            let mut state = self.state.lock().expect("extensions lock");
            std::fs::rename(&temp, self.root.join(&ext.id))?;
            state.by_id.insert(ext.id.clone(), Arc::new(ext.clone()));
            Ok(())
        });
        if let Err(e) = unpacked {
            let _ = tokio::fs::remove_dir_all(&temp).await;
            return Err(match e {
                ExtensionError::Refused(why) => unloadable(format!("its zip fails the upload's checks: {why}")),
                e => e,
            });
        }
        Ok(())
    }

    /// In a cluster: tells Redis again which extensions this node's browsers hold (the
    /// first call clears what an earlier run left), and removes the copies of extensions
    /// deleted meanwhile, by whatever node, that no browser here holds.
    pub async fn keep_in_step(&self) -> Result<(), ExtensionError> {
        let Some(shared) = &self.shared else { return Ok(()) };
        shared.publish(&self.state).await?;
        // The copies before the cluster's ids: a copy made meanwhile (an upload, a fetch)
        // is of an extension the cluster had already kept.
        let copies: Vec<String> = self
            .state
            .lock()
            .expect("extensions lock")
            .by_id
            .keys()
            .cloned()
            .collect();
        let kept = shared.catalog.ids().await?;
        for id in copies.into_iter().filter(|id| !kept.contains(id)) {
            self.drop_local(&id).await?;
        }
        Ok(())
    }
}

impl Extensions {
    /// In a cluster: removes the zips in the shared store older than `grace` that no
    /// record names (an upload whose node died before it was kept, a delete whose removal
    /// failed); answers how many. The store is listed before the records are read, and
    /// an upload keeps its record moments after its zip: `grace` covers that.
    pub async fn sweep_orphan_zips(&self, grace: Duration) -> Result<usize, ExtensionError> {
        let Some(shared) = &self.shared else { return Ok(0) };
        let zips = shared.zips.extension_zips().await?;
        let kept = shared.catalog.ids().await?;
        let now = SystemTime::now();
        let mut swept = 0;
        for (id, written) in zips {
            let old = now.duration_since(written).is_ok_and(|age| age > grace);
            if old && !kept.contains(&id) {
                shared.zips.remove_extension_zip(&id).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}

/// An extension's record as the cluster keeps it.
fn parsed(record: &str) -> Option<Extension> {
    serde_json::from_str(record).ok()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// Checks `zip` and unpacks it into `temp` (made here): its manifest and bytes unpacked.
fn unpack_into(zip: &[u8], temp: &Path) -> Result<(extension_zip::Manifest, u64), ExtensionError> {
    let checked = extension_zip::check(zip)?;
    let unpacked = temp.join(UNPACKED);
    std::fs::create_dir_all(&unpacked)?;
    let size = extension_zip::unpack(zip, &checked, &unpacked)?;
    Ok((checked.manifest, size))
}

/// Writes `ext`'s metadata beside its unpacked directory.
fn write_meta(dir: &Path, ext: &Extension) -> Result<(), ExtensionError> {
    let meta = serde_json::to_vec_pretty(ext).map_err(io::Error::other)?;
    std::fs::write(dir.join(META), meta)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClusterKey;
    use crate::store::redis::RedisStore;
    use crate::store::redis::tests::TestRedis;

    fn marker_zip() -> bytes::Bytes {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        writer.start_file("manifest.json", options).unwrap();
        let manifest = r#"{"manifest_version": 3, "name": "m", "version": "1"}"#;
        writer.write_all(manifest.as_bytes()).unwrap();
        writer.finish().unwrap().into_inner().into()
    }

    #[tokio::test]
    async fn the_leaders_sweep_removes_only_old_zips_no_record_names() {
        let redis = TestRedis::start();
        let (conn, prefix) = RedisStore::connect(&redis.url, "o:").await.unwrap().connection();
        let dir = tempfile::tempdir().unwrap();
        let zips = Arc::new(ProfileData::Directory(dir.path().join("profiles")));
        let catalog = Catalog::new(
            conn,
            prefix,
            ClusterKey::new("the-cluster-secret-of-32-characters"),
            "n".into(),
        );
        let extensions = Extensions::open(
            dir.path().join("extensions"),
            5,
            1 << 20,
            Some(Shared::new(catalog, zips.clone())),
        )
        .unwrap();
        let kept = extensions.add(&Tenant::from_id("t_a"), marker_zip()).await.unwrap();
        let store = dir.path().join("profiles/extensions");
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for (name, written) in [("ext_0a.zip", Some(hour_ago)), ("ext_0b.zip", None)] {
            std::fs::write(store.join(name), b"orphan").unwrap();
            if let Some(t) = written {
                std::fs::File::options()
                    .write(true)
                    .open(store.join(name))
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
        let old_kept = std::fs::File::options()
            .write(true)
            .open(store.join(format!("{}.zip", kept.id)))
            .unwrap();
        old_kept.set_modified(hour_ago).unwrap();
        assert_eq!(extensions.sweep_orphan_zips(Duration::from_secs(60)).await.unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = vec!["ext_0b.zip".to_owned(), format!("{}.zip", kept.id)];
        expected.sort();
        assert_eq!(
            left, expected,
            "the old orphan went; the young one and the kept zip stay"
        );
    }
}
