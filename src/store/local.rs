//! The session store of a single node: records in memory, each also written to a file so
//! that ended sessions stay readable after a restart. At start-up the records of an
//! earlier run are loaded; the broker then records the sessions it left active as ended
//! with it (`end_left_active`: their browsers died with it).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::record::{EndReason, ProfileLink, SaveOutcome, SessionRecord, Status};
use super::{ListPage, ListQuery, SessionStore, StoreError, page_of};
use crate::auth::Tenant;
use crate::values::Screen;

pub(crate) struct LocalStore {
    dir: PathBuf,
    /// Also held while a file is written, so files are written in the order of puts.
    records: Mutex<HashMap<String, SessionRecord>>,
}

impl LocalStore {
    /// Loads the records in `dir`, dropping those ended `retention` or longer ago.
    pub(crate) fn open(dir: PathBuf, retention: Duration) -> io::Result<LocalStore> {
        std::fs::create_dir_all(&dir)?;
        let now = SystemTime::now();
        let mut records = HashMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(record) = read_record(&path) else {
                continue;
            };
            if record.is_stale(now, retention) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            records.insert(record.id.clone(), record);
        }
        Ok(LocalStore {
            dir,
            records: Mutex::new(records),
        })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl SessionStore for LocalStore {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.records().get(id).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let matching = self
            .records()
            .values()
            .filter(|r| r.tenant == query.tenant && query.status.is_none_or(|s| r.status == s))
            .cloned()
            .collect();
        Ok(page_of(matching, query))
    }

    async fn put(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut records = self.records();
        records.insert(record.id.clone(), record.clone());
        write_file(&self.dir, record)?;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let mut records = self.records();
        records.remove(id);
        match std::fs::remove_file(file_of(&self.dir, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn active_on(&self, node: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .records()
            .values()
            .filter(|r| r.status == Status::Active && r.node == node)
            .map(|r| r.id.clone())
            .collect())
    }

    async fn profile_users(&self, profile_id: &str) -> Result<usize, StoreError> {
        Ok(self
            .records()
            .values()
            .filter(|r| r.status == Status::Active && r.profile.as_ref().is_some_and(|p| p.id == profile_id))
            .count())
    }

    async fn end_left_active(&self, node: &str, now: SystemTime) -> Result<usize, StoreError> {
        let mut records = self.records();
        let mut ended = 0;
        for record in records.values_mut() {
            if record.status == Status::Active && record.node == node {
                *record = record.clone().ended_by_restart(now);
                write_file(&self.dir, record)?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    async fn sweep(&self, now: SystemTime, retention: Duration) -> Result<Vec<String>, StoreError> {
        let mut records = self.records();
        let stale: Vec<String> = records
            .values()
            .filter(|r| r.is_stale(now, retention))
            .map(|r| r.id.clone())
            .collect();
        for id in &stale {
            records.remove(id);
            let _ = std::fs::remove_file(file_of(&self.dir, id));
        }
        Ok(stale)
    }
}

fn file_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Written aside and renamed, so a record is never half-written.
fn write_file(dir: &Path, record: &SessionRecord) -> io::Result<()> {
    let path = file_of(dir, &record.id);
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path))
}

/// A record file of this version, or of the version before it (which kept the session
/// object as the API showed it).
fn read_record(path: &Path) -> Option<SessionRecord> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<SessionRecord>(&bytes)
        .ok()
        .or_else(|| serde_json::from_slice::<WireRecord>(&bytes).ok()?.into_record())
}

/// The record format of the first version: the tenant, two times, and the session object.
#[derive(Deserialize)]
struct WireRecord {
    tenant: String,
    created_at: u64,
    ended_at: Option<u64>,
    session: Map<String, Value>,
}

impl WireRecord {
    fn into_record(self) -> Option<SessionRecord> {
        let s = &self.session;
        let text = |name: &str| s.get(name).and_then(Value::as_str);
        let time = |name: &str| {
            text(name)
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(self.created_at))
        };
        let screen = &s.get("screen_config")?;
        let side = |name: &str| {
            screen
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let profile = text("profile_id").map(|id| ProfileLink {
            id: id.to_owned(),
            persist: s.get("persist_changes").and_then(Value::as_bool).unwrap_or(false),
            saved: text("profile_saved").and_then(SaveOutcome::parse),
        });
        Some(SessionRecord {
            id: text("session_id")?.to_owned(),
            tenant: Tenant::from_id(&self.tenant),
            status: Status::parse(text("status")?)?,
            created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(self.created_at),
            updated_at: time("updated_at"),
            expires_at: time("expires_at"),
            ended_at: self.ended_at.map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(at)),
            end_reason: text("end_reason").and_then(EndReason::parse),
            screen: Screen {
                width: side("width")?,
                height: side("height")?,
            },
            metadata: s
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            profile,
            node: String::new(),
            options: Default::default(),
            network: None,
            challenges: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;

    fn open(dir: &Path) -> LocalStore {
        LocalStore::open(dir.to_owned(), Duration::from_secs(3600)).unwrap()
    }

    #[tokio::test]
    async fn passes_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        contract::run(move || {
            let path = path.clone();
            async move { Box::new(open(&path)) as Box<dyn SessionStore> }
        })
        .await;
    }

    #[tokio::test]
    async fn sessions_left_active_end_with_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let record = contract::record("sess_a", "t1", 0, None);
        store.put(&record).await.unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.end_left_active("", SystemTime::now()).await.unwrap(), 1);
        let after = store.get("sess_a").await.unwrap().unwrap();
        assert_eq!(after.status, Status::Terminated);
        assert_eq!(after.end_reason, Some(EndReason::Restarted));
        assert!(after.ended_at.is_some());
        // The restart is written down: a second restart does not move its end.
        let again = open(dir.path()).get("sess_a").await.unwrap().unwrap();
        assert_eq!(again.ended_at, after.ended_at);
    }

    #[tokio::test]
    async fn records_of_the_first_version_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "tenant": "t-old",
            "created_at": 1_700_000_000u64,
            "ended_at": null,
            "session": {
                "session_id": "sess_old", "cdp_url": null,
                "screen_config": {"width": 1280, "height": 720},
                "status": "active", "expires_at": "2023-11-14T22:23:20Z",
                "metadata": {"job": "x"}, "profile_id": "550e8400-e29b-41d4-a716-446655440000",
                "persist_changes": true, "created_at": "2023-11-14T22:13:20Z",
                "updated_at": "2023-11-14T22:13:20Z"
            }
        });
        std::fs::write(dir.path().join("sess_old.json"), old.to_string()).unwrap();
        let store = LocalStore::open(dir.path().to_owned(), Duration::from_secs(3600)).unwrap();
        store.end_left_active("", SystemTime::now()).await.unwrap();
        let r = store.get("sess_old").await.unwrap().expect("read");
        assert_eq!(r.tenant, Tenant::from_id("t-old"));
        assert_eq!(r.status, Status::Terminated, "it was active when that broker stopped");
        assert_eq!(r.end_reason, Some(EndReason::Restarted));
        assert_eq!((r.screen.width, r.screen.height), (1280, 720));
        assert_eq!(r.metadata["job"], "x");
        let profile = r.profile.unwrap();
        assert!(profile.persist && profile.saved.is_none());
        // Rewritten in this version's format.
        let bytes = std::fs::read(dir.path().join("sess_old.json")).unwrap();
        assert!(serde_json::from_slice::<SessionRecord>(&bytes).is_ok());
    }
}
