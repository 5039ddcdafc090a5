//! Chrome extensions of each API key, kept on this node's disk: `data_dir/extensions/<id>/`
//! holds `extension.json` (whose it is, what its manifest says) and `unpacked/`, the
//! directory a browser loads (and the only one of them it may read).
//!
//! An upload is checked whole (`extension_zip`) before anything is written, unpacked into a
//! temporary directory and renamed into place, so a refused or failed upload leaves
//! nothing and a listing never sees half an extension. A session's browser holds the
//! extensions it loads ([`ExtensionUse`]): one in use is not deleted.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::extension_zip::{self, ZipError};
use crate::auth::{Tenant, random_hex, unix_secs};
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
    #[error("the extension store failed: {0}")]
    Io(#[from] io::Error),
}

impl ExtensionError {
    pub fn origin(&self) -> Origin {
        match self {
            ExtensionError::Io(_) => Origin::Internal,
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
}

impl Extension {
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created_at)
    }
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, Arc<Extension>>,
    /// Browsers holding each extension now.
    users: HashMap<String, usize>,
}

/// Every API key's extensions on this node.
pub struct Extensions {
    root: PathBuf,
    max_per_key: usize,
    max_bytes_per_key: u64,
    state: Arc<Mutex<State>>,
}

/// The extensions a browser loads, held until it is dropped (with the browser's lease).
pub struct ExtensionUse {
    ids: Vec<String>,
    /// Their unpacked directories, in the order asked.
    pub dirs: Vec<PathBuf>,
    state: Arc<Mutex<State>>,
}

impl Drop for ExtensionUse {
    fn drop(&mut self) {
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
}

impl Extensions {
    /// Opens `root`, reading the extensions kept there and removing what an interrupted
    /// upload or delete left.
    pub fn open(root: PathBuf, max_per_key: usize, max_bytes_per_key: u64) -> io::Result<Extensions> {
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
        })
    }

    /// Checks `zip`, unpacks it and keeps it as one of `tenant`'s extensions.
    pub async fn add(&self, tenant: &Tenant, zip: bytes::Bytes) -> Result<Arc<Extension>, ExtensionError> {
        self.room_for(tenant, 0)?;
        let id = format!("ext_{}", random_hex(12));
        let temp = self.root.join(format!("{TEMP_PREFIX}{id}"));
        let ext = {
            let (temp, id, tenant) = (temp.clone(), id.clone(), tenant.to_string());
            tokio::task::spawn_blocking(move || unpack_into(&zip, &temp, id, tenant))
                .await
                .map_err(|e| ExtensionError::Io(io::Error::other(e)))
        }
        .and_then(|r| r);
        let ext = match ext {
            Ok(ext) => ext,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&temp).await;
                return Err(e);
            }
        };
        // The caps again, now that its size is known, and the rename under the same lock.
        let kept = {
            let mut state = self.state.lock().expect("extensions lock");
            self.room_in(&state, tenant, ext.size)
                .and_then(|()| std::fs::rename(&temp, self.root.join(&id)).map_err(ExtensionError::Io))
                .map(|()| {
                    let ext = Arc::new(ext);
                    state.by_id.insert(id, ext.clone());
                    ext
                })
        };
        if kept.is_err() {
            let _ = tokio::fs::remove_dir_all(&temp).await;
        }
        kept
    }

    fn room_for(&self, tenant: &Tenant, size: u64) -> Result<(), ExtensionError> {
        let state = self.state.lock().expect("extensions lock");
        self.room_in(&state, tenant, size)
    }

    /// Whether `tenant` may keep one more extension of `size` bytes.
    fn room_in(&self, state: &State, tenant: &Tenant, size: u64) -> Result<(), ExtensionError> {
        let tenant = tenant.to_string();
        let own: Vec<_> = state.by_id.values().filter(|e| e.tenant == tenant).collect();
        if own.len() >= self.max_per_key {
            return Err(ExtensionError::Full(format!(
                "This API key keeps {} extensions, the most max_extensions_per_key allows: delete one first",
                own.len()
            )));
        }
        let bytes: u64 = own.iter().map(|e| e.size).sum::<u64>() + size;
        if bytes > self.max_bytes_per_key {
            return Err(ExtensionError::Full(format!(
                "This API key's extensions would take {bytes} bytes unpacked, more than max_extension_bytes_per_key ({})",
                self.max_bytes_per_key
            )));
        }
        Ok(())
    }

    /// `tenant`'s extensions, oldest first.
    pub fn list(&self, tenant: &Tenant) -> Vec<Arc<Extension>> {
        let tenant = tenant.to_string();
        let state = self.state.lock().expect("extensions lock");
        let mut own: Vec<_> = state.by_id.values().filter(|e| e.tenant == tenant).cloned().collect();
        own.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        own
    }

    /// One of `tenant`'s extensions (another key's is not found).
    pub fn get(&self, tenant: &Tenant, id: &str) -> Result<Arc<Extension>, ExtensionError> {
        let state = self.state.lock().expect("extensions lock");
        state
            .by_id
            .get(id)
            .filter(|e| e.tenant == tenant.to_string())
            .cloned()
            .ok_or(ExtensionError::NotFound)
    }

    /// Browsers holding `id` now.
    pub fn users(&self, id: &str) -> usize {
        self.state
            .lock()
            .expect("extensions lock")
            .users
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Removes one of `tenant`'s extensions and its files; refused while a browser holds it.
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), ExtensionError> {
        let gone = self.root.join(format!("{GONE_PREFIX}{}", random_hex(8)));
        {
            let mut state = self.state.lock().expect("extensions lock");
            if state.by_id.get(id).is_none_or(|e| e.tenant != tenant.to_string()) {
                return Err(ExtensionError::NotFound);
            }
            if let Some(n) = state.users.get(id) {
                return Err(ExtensionError::InUse(*n));
            }
            // Out of the listing's sight at once; its files go below.
            std::fs::rename(self.root.join(id), &gone)?;
            state.by_id.remove(id);
        }
        tokio::fs::remove_dir_all(&gone).await?;
        Ok(())
    }

    /// Holds `ids` (each one of `tenant`'s) for a browser that loads them.
    pub fn hold(&self, tenant: &Tenant, ids: &[String]) -> Result<ExtensionUse, ExtensionError> {
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
        Ok(ExtensionUse {
            ids: ids.to_vec(),
            dirs: ids.iter().map(|id| self.root.join(id).join(UNPACKED)).collect(),
            state: self.state.clone(),
        })
    }
}

/// Checks `zip` and writes it and its metadata into `temp` (made here).
fn unpack_into(zip: &[u8], temp: &Path, id: String, tenant: String) -> Result<Extension, ExtensionError> {
    let checked = extension_zip::check(zip)?;
    let unpacked = temp.join(UNPACKED);
    std::fs::create_dir_all(&unpacked)?;
    let size = extension_zip::unpack(zip, &checked, &unpacked)?;
    let manifest = &checked.manifest;
    let ext = Extension {
        id,
        tenant,
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        manifest_version: manifest.manifest_version,
        created_at: unix_secs(SystemTime::now()),
        size,
    };
    let meta = serde_json::to_vec_pretty(&ext).map_err(io::Error::other)?;
    std::fs::write(temp.join(META), meta)?;
    Ok(ext)
}
