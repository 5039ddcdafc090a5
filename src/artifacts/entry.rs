//! What is listed of a session's files and recording (and kept in its index).

use serde::{Deserialize, Serialize};

/// How a file came to be among a session's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Download,
    Upload,
    /// The session's CDP log.
    Log,
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Still arriving (a download in progress).
    InProgress,
    Complete,
    /// Cancelled or interrupted in the browser.
    Canceled,
    /// Cancelled by the broker: it would have passed the session's quota.
    Refused,
}

/// One file of a session, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub kind: Kind,
    pub state: FileState,
}

/// What is known of a session's recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    pub frames: u64,
    pub fps: u32,
    /// The recording has been closed (ffmpeg finished it).
    pub complete: bool,
    /// Stopped at `max_recording_bytes`.
    pub truncated: bool,
}
