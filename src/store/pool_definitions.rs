//! Named pools' definitions, so that a restart (and, in a cluster, every node) defines
//! them again. On one node: one JSON file per pool under `data_dir/pools/`,
//! `<tenant>.<name>.json` (a tenant label and a pool name hold no dot), readable by the
//! broker's user only (a definition may carry a proxy password, as the request that made
//! it did). In a cluster: one field per pool, `<tenant>.<name>`, of the Redis hash
//! `{prefix}pools`, each signed with the cluster secret as node records are (a definition
//! planted by someone who can write to Redis is never read), and never with a password
//! (the API refuses one: nothing secret is kept in Redis). The definition is the request as
//! the API took it; the API layer reads it again.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use redis::aio::ConnectionManager;
use serde_json::Value;

use super::StoreError;
use crate::auth::{ClusterKey, Tenant};

pub struct PoolDefinitions {
    dir: PathBuf,
    /// The cluster's hash, when there is one: it, not the directory, holds the definitions.
    shared: Option<Shared>,
    /// On one node, an update's check and write and a removal one at a time (in Redis a
    /// script makes the update one step).
    writes: tokio::sync::Mutex<()>,
}

/// Replaces a field of the hash only if it is there: a change never brings back a pool
/// deleted meanwhile.
const UPDATE: &str = "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then \
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end return 0";

struct Shared {
    redis: ConnectionManager,
    table: String,
    key: ClusterKey,
}

impl PoolDefinitions {
    pub fn open(dir: PathBuf) -> io::Result<PoolDefinitions> {
        std::fs::create_dir_all(&dir)?;
        Ok(PoolDefinitions {
            dir,
            shared: None,
            writes: Default::default(),
        })
    }

    /// The cluster's definitions, in Redis under `prefix`.
    pub fn shared(redis: ConnectionManager, prefix: &str, key: ClusterKey) -> PoolDefinitions {
        PoolDefinitions {
            dir: PathBuf::new(),
            shared: Some(Shared {
                redis,
                table: format!("{prefix}pools"),
                key,
            }),
            writes: Default::default(),
        }
    }

    /// Whether the definitions are the cluster's.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn path(&self, tenant: &Tenant, name: &str) -> PathBuf {
        self.dir.join(format!("{tenant}.{name}.json"))
    }

    /// Writes a new pool's definition: `false` if the cluster already has one of that name
    /// (on one node, the broker's own map says so first).
    pub async fn insert(&self, tenant: &Tenant, name: &str, definition: &Value) -> Result<bool, StoreError> {
        match &self.shared {
            None => self.put(tenant, name, definition).await.map(|()| true),
            Some(shared) => {
                let (field, signed) = shared.signed(tenant, name, definition);
                let cmd = redis::cmd("HSETNX").arg(&shared.table).arg(field).arg(signed).clone();
                Ok(cmd.query_async(&mut shared.redis.clone()).await?)
            }
        }
    }

    /// Writes (or replaces) a pool's definition, whole or not at all.
    pub async fn put(&self, tenant: &Tenant, name: &str, definition: &Value) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            let (field, signed) = shared.signed(tenant, name, definition);
            let cmd = redis::cmd("HSET").arg(&shared.table).arg(field).arg(signed).clone();
            let _: () = cmd.query_async(&mut shared.redis.clone()).await?;
            return Ok(());
        }
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
        Ok(std::fs::rename(&temp, &path)?)
    }

    /// Replaces a pool's definition if it is still there (a PATCH): `false` if it was
    /// removed meanwhile, and then nothing is written.
    pub async fn update(&self, tenant: &Tenant, name: &str, definition: &Value) -> Result<bool, StoreError> {
        if let Some(shared) = &self.shared {
            let (field, signed) = shared.signed(tenant, name, definition);
            let cmd = redis::cmd("EVAL")
                .arg(UPDATE)
                .arg(1)
                .arg(&shared.table)
                .arg(field)
                .arg(signed)
                .clone();
            let updated: i64 = cmd.query_async(&mut shared.redis.clone()).await?;
            return Ok(updated == 1);
        }
        let _one_at_a_time = self.writes.lock().await;
        if !self.path(tenant, name).exists() {
            return Ok(false);
        }
        self.put(tenant, name, definition).await.map(|()| true)
    }

    pub async fn remove(&self, tenant: &Tenant, name: &str) -> Result<(), StoreError> {
        let _one_at_a_time = self.writes.lock().await;
        if let Some(shared) = &self.shared {
            let cmd = redis::cmd("HDEL")
                .arg(&shared.table)
                .arg(format!("{tenant}.{name}"))
                .clone();
            let _: () = cmd.query_async(&mut shared.redis.clone()).await?;
            return Ok(());
        }
        match std::fs::remove_file(self.path(tenant, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every stored definition: (tenant, name, definition), by tenant and name. Unreadable
    /// files and records that do not verify are skipped.
    pub async fn all(&self) -> Result<Vec<(Tenant, String, Value)>, StoreError> {
        let mut found = match &self.shared {
            Some(shared) => shared.all().await?,
            None => self.files(),
        };
        found.sort_by(|a, b| (a.0.to_string(), &a.1).cmp(&(b.0.to_string(), &b.1)));
        Ok(found)
    }

    fn files(&self) -> Vec<(Tenant, String, Value)> {
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
        found
    }
}

impl Shared {
    /// A definition's field and its signed record.
    fn signed(&self, tenant: &Tenant, name: &str, definition: &Value) -> (String, String) {
        let field = format!("{tenant}.{name}");
        let body = definition.to_string();
        let sig = self.key.sign_node(&["pool", &field, &body]);
        (field, serde_json::json!({"definition": body, "sig": sig}).to_string())
    }

    async fn all(&self) -> Result<Vec<(Tenant, String, Value)>, StoreError> {
        let cmd = redis::cmd("HGETALL").arg(&self.table).clone();
        let table: Vec<(String, String)> = cmd.query_async(&mut self.redis.clone()).await?;
        let mut found = Vec::new();
        for (field, record) in table {
            let record: Value = serde_json::from_str(&record).unwrap_or_default();
            let (Some(body), Some(sig)) = (record["definition"].as_str(), record["sig"].as_str()) else {
                tracing::warn!(pool = %field, "a pool definition in Redis could not be read; skipped");
                continue;
            };
            let parsed = serde_json::from_str::<Value>(body);
            match (field.split_once('.'), parsed) {
                (Some((tenant, name)), Ok(definition)) if self.key.verify_node(&["pool", &field, body], sig) => {
                    found.push((Tenant::from_id(tenant), name.to_owned(), definition))
                }
                _ => {
                    tracing::warn!(pool = %field, "a pool definition in Redis is not signed with this cluster's cluster_secret: ignored")
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn definitions_are_kept_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = PoolDefinitions::open(dir.path().join("pools")).unwrap();
        let a = Tenant::from_id("t_a");
        store.put(&a, "login", &serde_json::json!({"size": 1})).await.unwrap();
        store.put(&a, "login", &serde_json::json!({"size": 2})).await.unwrap();
        store
            .put(&Tenant::from_id("t_b"), "x", &serde_json::json!({}))
            .await
            .unwrap();
        let all = store.all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].1.as_str(), &all[0].2),
            ("login", &serde_json::json!({"size": 2}))
        );
        assert!(
            store
                .update(&a, "login", &serde_json::json!({"size": 3}))
                .await
                .unwrap()
        );
        store.remove(&a, "login").await.unwrap();
        store.remove(&a, "login").await.unwrap();
        assert_eq!(store.all().await.unwrap().len(), 1);
        // A change after the removal brings nothing back.
        assert!(
            !store
                .update(&a, "login", &serde_json::json!({"size": 4}))
                .await
                .unwrap()
        );
        assert_eq!(store.all().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_clusters_definitions_are_signed_and_forged_ones_ignored() {
        let redis = crate::store::redis::tests::TestRedis::start();
        let (conn, prefix) = crate::store::redis::RedisStore::connect(&redis.url, "p:")
            .await
            .unwrap()
            .connection();
        let key = ClusterKey::new("the-cluster-secret-of-32-characters");
        let store = PoolDefinitions::shared(conn.clone(), &prefix, key);
        let a = Tenant::from_id("t_a");
        assert!(
            store
                .insert(&a, "login", &serde_json::json!({"size": 1}))
                .await
                .unwrap()
        );
        assert!(
            !store
                .insert(&a, "login", &serde_json::json!({"size": 5}))
                .await
                .unwrap(),
            "the name is taken"
        );
        store.put(&a, "login", &serde_json::json!({"size": 2})).await.unwrap();
        assert!(
            store
                .update(&a, "login", &serde_json::json!({"size": 2}))
                .await
                .unwrap()
        );
        assert!(
            !store
                .update(&a, "deleted", &serde_json::json!({"size": 2}))
                .await
                .unwrap()
        );
        // Planted by someone who can write to Redis, unsigned or signed with another secret.
        let other = PoolDefinitions::shared(
            conn.clone(),
            &prefix,
            ClusterKey::new("another-secret-of-32-characters!!"),
        );
        other.put(&a, "planted", &serde_json::json!({"size": 8})).await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg("p:pools")
            .arg("t_a.raw")
            .arg(r#"{"definition":"{\"size\":8}","sig":"00"}"#)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let all = store.all().await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (all[0].1.as_str(), &all[0].2),
            ("login", &serde_json::json!({"size": 2}))
        );
        store.remove(&a, "login").await.unwrap();
        assert!(store.all().await.unwrap().is_empty());
    }
}
