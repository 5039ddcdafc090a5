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

/// Entries one tenant may keep: past it, a new id takes the place of the one written
/// longest ago (each run may name a new id; the disk and the memory are shared).
const MAX_ENTRIES_PER_TENANT: usize = 1000;

pub struct ActionCache {
    dir: PathBuf,
    /// By tenant and the digest of the id (the file's name).
    entries: DashMap<(Tenant, String), Entry>,
}

impl ActionCache {
    pub fn new(data_dir: &Path) -> ActionCache {
        ActionCache {
            dir: data_dir.join("action-cache"),
            entries: DashMap::new(),
        }
    }

    fn tenant_dir(&self, tenant: &Tenant) -> PathBuf {
        self.dir.join(tenant.to_string())
    }

    fn path(&self, tenant: &Tenant, id: &str) -> PathBuf {
        self.tenant_dir(tenant).join(format!("{}.json", digest(id)))
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Option<Entry> {
        let key = (tenant.clone(), digest(id));
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
            if !path.exists() {
                self.make_room(tenant);
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&entry).expect("steps serialize"))?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = &written {
            tracing::warn!(error = %e, "could not write an action cache entry to disk");
        }
        self.entries.insert((tenant.clone(), digest(id)), entry);
        written.is_ok()
    }

    /// Removes `tenant`'s entries written longest ago until one more fits.
    fn make_room(&self, tenant: &Tenant) {
        let Ok(listing) = std::fs::read_dir(self.tenant_dir(tenant)) else {
            return;
        };
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = listing
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if kept.len() < MAX_ENTRIES_PER_TENANT {
            return;
        }
        kept.sort();
        for (_, path) in &kept[..=kept.len() - MAX_ENTRIES_PER_TENANT] {
            let _ = std::fs::remove_file(path);
            if let Some(name) = path.file_stem().and_then(|n| n.to_str()) {
                self.entries.remove(&(tenant.clone(), name.to_owned()));
            }
        }
    }
}

fn digest(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::instruction::parse;

    /// Each run may name a new id: a tenant keeps at most `MAX_ENTRIES_PER_TENANT`, those
    /// written last, on disk and in memory; another tenant's are not touched.
    #[test]
    fn a_tenant_keeps_a_bounded_number_of_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Tenant::from_id("t_aa"), Tenant::from_id("t_bb"));
        let cache = ActionCache::new(dir.path());
        let steps = parse("click Save").unwrap();
        assert!(cache.put(&b, "kept", Entry::new("click Save", steps.clone())));
        for i in 0..MAX_ENTRIES_PER_TENANT + 50 {
            assert!(cache.put(&a, &format!("id-{i}"), Entry::new("click Save", steps.clone())));
        }
        let on_disk = std::fs::read_dir(cache.tenant_dir(&a)).unwrap().count();
        assert_eq!(on_disk, MAX_ENTRIES_PER_TENANT);
        let in_memory = cache.entries.iter().filter(|e| e.key().0 == a).count();
        assert_eq!(in_memory, MAX_ENTRIES_PER_TENANT);
        let last = format!("id-{}", MAX_ENTRIES_PER_TENANT + 49);
        assert!(cache.get(&a, &last).is_some());
        assert!(cache.get(&b, "kept").is_some(), "another tenant's entry went");
        // Writing an id already kept makes no room.
        assert!(cache.put(&a, &last, Entry::new("click Save", steps)));
        assert_eq!(
            std::fs::read_dir(cache.tenant_dir(&a)).unwrap().count(),
            MAX_ENTRIES_PER_TENANT
        );
    }

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
