//! Session records on disk, so that ended sessions stay readable after a broker restart.
//! A session's record is written when it starts, changes and ends; at start-up the records
//! of an earlier run are loaded, and the sessions it left active are recorded as ended
//! with it (their browsers died with it).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{Tenant, unix_secs};
use crate::session::{self, Session, Status};

/// An ended session known only from its record.
pub struct Archived {
    pub id: String,
    pub tenant: Tenant,
    pub created_at: SystemTime,
    pub ended_at: SystemTime,
    pub status: Status,
    /// The session object as the API shows it.
    pub body: Value,
}

#[derive(Serialize, Deserialize)]
struct Record {
    tenant: String,
    created_at: u64,
    ended_at: Option<u64>,
    session: Value,
}

pub struct Records {
    dir: PathBuf,
    /// Held while a record is rendered and written: the last write is then always of the
    /// latest state (an earlier save cannot land after a later one).
    writing: std::sync::Mutex<()>,
}

impl Records {
    pub fn open(dir: PathBuf) -> io::Result<Records> {
        std::fs::create_dir_all(&dir)?;
        Ok(Records {
            dir,
            writing: std::sync::Mutex::new(()),
        })
    }

    /// Writes the session's current record (without its URLs: they carry tokens).
    pub fn save(&self, session: &Session) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if session.is_forgotten() {
            return;
        }
        let mut body = session::render(session, "");
        body["cdp_url"] = Value::Null;
        let record = Record {
            tenant: session.tenant.to_string(),
            created_at: unix_secs(session.created_at),
            ended_at: session.ended_at().map(unix_secs),
            session: body,
        };
        let path = self.dir.join(format!("{}.json", session.id));
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        // Written aside and renamed, so a record is never half-written.
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(session = %session.id, error = %e, "could not write the session record");
        }
    }

    pub fn remove(&self, id: &str) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
    }

    /// The records of an earlier run, those older than `retention` dropped.
    pub fn load(&self, retention: Duration) -> Vec<Archived> {
        let now = SystemTime::now();
        let mut archived = Vec::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(record) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            else {
                continue;
            };
            let mut body = record.session;
            let ended_at = match record.ended_at {
                Some(at) => SystemTime::UNIX_EPOCH + Duration::from_secs(at),
                None => {
                    // Active when the broker stopped: it ended with the broker.
                    body["status"] = json!("terminated");
                    body["end_reason"] = json!("broker restarted");
                    body["updated_at"] = json!(session::timestamp(now));
                    now
                }
            };
            if now.duration_since(ended_at).unwrap_or_default() > retention {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let (Some(id), Some(status)) = (
                body["session_id"].as_str().map(str::to_owned),
                body["status"].as_str().and_then(Status::parse),
            ) else {
                continue;
            };
            archived.push(Archived {
                id,
                tenant: Tenant::from_id(&record.tenant),
                created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(record.created_at),
                ended_at,
                status,
                body,
            });
        }
        archived
    }
}
