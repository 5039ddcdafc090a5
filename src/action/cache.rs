//! Resolved steps of single actions, kept by tenant and the caller's `id`, so that the next
//! run replays them without interpretation or model calls. Kept in memory and on disk
//! (`data/action-cache/<tenant>/<sha256 of id>.json`), written atomically. Steps hold
//! placeholders, never the values filled into them.

use std::path::{Path, PathBuf};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::instruction::Step;
use crate::auth::{Tenant, hex};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// SHA-256 of the action as written: another instruction under the same id is a miss.
    pub action: String,
    pub steps: Vec<Step>,
}

impl Entry {
    pub fn new(action: &str, steps: Vec<Step>) -> Entry {
        Entry {
            action: digest(action),
            steps,
        }
    }

    pub fn is_for(&self, action: &str) -> bool {
        self.action == digest(action)
    }
}

pub struct ActionCache {
    dir: PathBuf,
    entries: DashMap<(Tenant, String), Entry>,
}

impl ActionCache {
    pub fn new(data_dir: &Path) -> ActionCache {
        ActionCache {
            dir: data_dir.join("action-cache"),
            entries: DashMap::new(),
        }
    }

    fn path(&self, tenant: &Tenant, id: &str) -> PathBuf {
        self.dir.join(tenant.to_string()).join(format!("{}.json", digest(id)))
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Option<Entry> {
        let key = (tenant.clone(), id.to_owned());
        if let Some(entry) = self.entries.get(&key) {
            return Some(entry.clone());
        }
        let bytes = std::fs::read(self.path(tenant, id)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(error = %e, "unreadable action cache entry, ignored"))
            .ok()?;
        self.entries.insert(key, entry.clone());
        Some(entry)
    }

    /// Keeps `entry`; a failure to write it to disk is logged (the cache is an optimisation).
    pub fn put(&self, tenant: &Tenant, id: &str, entry: Entry) -> bool {
        let path = self.path(tenant, id);
        let written = (|| {
            std::fs::create_dir_all(path.parent().expect("cache paths have a parent"))?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&entry).expect("steps serialize"))?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = &written {
            tracing::warn!(error = %e, "could not write an action cache entry to disk");
        }
        self.entries.insert((tenant.clone(), id.to_owned()), entry);
        written.is_ok()
    }
}

fn digest(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::instruction::parse;

    #[test]
    fn entries_survive_a_restart_and_stay_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Tenant::from_id("t_aa"), Tenant::from_id("t_bb"));
        let steps = parse("type {{pw}} into the Password field").unwrap();
        let cache = ActionCache::new(dir.path());
        assert!(cache.put(&a, "login", Entry::new("type {{pw}}…", steps.clone())));
        assert!(cache.get(&b, "login").is_none());

        let reopened = ActionCache::new(dir.path());
        let entry = reopened.get(&a, "login").unwrap();
        assert_eq!(entry.steps, steps);
        assert!(entry.is_for("type {{pw}}…") && !entry.is_for("something else"));
        let on_disk = std::fs::read_to_string(reopened.path(&a, "login")).unwrap();
        assert!(
            on_disk.contains("{{pw}}"),
            "placeholders are kept, not values: {on_disk}"
        );
    }
}
