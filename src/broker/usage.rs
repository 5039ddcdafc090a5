//! What each API key uses, for the operator (`GET /admin/tenants`).

use std::time::SystemTime;

use crate::artifacts::{self};
use crate::store::{SessionRecord, Status};

/// What one API key uses, for the operator to bill or cap by (`GET /admin/tenants`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TenantUsage {
    /// The key's label (a digest of it), never the key.
    pub tenant: String,
    /// Managed sessions (process and context) running now, on any node.
    pub sessions_active: usize,
    /// Bring-your-own sessions running now, on any node.
    pub byo_sessions_active: usize,
    /// Sessions the store keeps (running, or ended within `retention_secs`).
    pub sessions_recorded: usize,
    /// Seconds those sessions ran (until now for the running ones).
    pub session_seconds: u64,
    /// Bytes their pages received and sent through the broker's gateway.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Their files and recordings held on this node.
    pub files: u64,
    pub files_bytes: u64,
    pub recordings: u64,
    pub recordings_bytes: u64,
}

impl TenantUsage {
    pub(super) fn add(&mut self, record: &SessionRecord, now: SystemTime, files: Option<&artifacts::SessionFiles>) {
        self.sessions_recorded += 1;
        if record.status == Status::Active {
            match record.options.byo {
                true => self.byo_sessions_active += 1,
                false => self.sessions_active += 1,
            }
        }
        let until = record.ended_at.unwrap_or(now);
        self.session_seconds += until.duration_since(record.created_at).unwrap_or_default().as_secs();
        if let Some(network) = &record.network {
            self.bytes_in += network.bytes_in;
            self.bytes_out += network.bytes_out;
        }
        if let Some(files) = files {
            let (bytes, count) = files.used();
            self.files += count;
            self.files_bytes += bytes;
            if let Ok(meta) = std::fs::metadata(files.recording_path()) {
                self.recordings += 1;
                self.recordings_bytes += meta.len();
            }
        }
    }
}
