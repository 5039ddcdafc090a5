//! Named pools' definitions on disk, so that a restart defines them again: one JSON file
//! per pool under `data_dir/pools/`, `<tenant>.<name>.json` (a tenant label and a pool
//! name hold no dot), readable by the broker's user only (a definition may carry a proxy
//! password, as the request that made it did). The definition is the request as the API
//! took it; the API layer reads it again at start.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::auth::Tenant;

pub struct PoolDefinitions {
    dir: PathBuf,
}

impl PoolDefinitions {
    pub fn open(dir: PathBuf) -> io::Result<PoolDefinitions> {
        std::fs::create_dir_all(&dir)?;
        Ok(PoolDefinitions { dir })
    }

    fn path(&self, tenant: &Tenant, name: &str) -> PathBuf {
        self.dir.join(format!("{tenant}.{name}.json"))
    }

    /// Writes (or replaces) a pool's definition, whole or not at all.
    pub fn put(&self, tenant: &Tenant, name: &str, definition: &Value) -> io::Result<()> {
        let path = self.path(tenant, name);
        let temp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(definition).map_err(io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &path)
    }

    pub fn remove(&self, tenant: &Tenant, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(tenant, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored definition: (tenant, name, definition). Unreadable files are skipped.
    pub fn all(&self) -> Vec<(Tenant, String, Value)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((tenant, name)) = file.strip_suffix(".json").and_then(|f| f.split_once('.')) else {
                continue;
            };
            match std::fs::read(entry.path()).map(|b| serde_json::from_slice::<Value>(&b)) {
                Ok(Ok(definition)) => found.push((Tenant::from_id(tenant), name.to_owned(), definition)),
                _ => tracing::warn!(file = %file, "a pool definition could not be read; skipped"),
            }
        }
        found.sort_by(|a, b| (a.0.to_string(), &a.1).cmp(&(b.0.to_string(), &b.1)));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_kept_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = PoolDefinitions::open(dir.path().join("pools")).unwrap();
        let a = Tenant::from_id("t_a");
        store.put(&a, "login", &serde_json::json!({"size": 1})).unwrap();
        store.put(&a, "login", &serde_json::json!({"size": 2})).unwrap();
        store.put(&Tenant::from_id("t_b"), "x", &serde_json::json!({})).unwrap();
        let all = store.all();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].1.as_str(), &all[0].2),
            ("login", &serde_json::json!({"size": 2}))
        );
        store.remove(&a, "login").unwrap();
        store.remove(&a, "login").unwrap();
        assert_eq!(store.all().len(), 1);
    }
}
