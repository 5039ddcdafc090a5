//! What a session leaves behind: the files it downloaded or was given, and its recording.
//!
//! Each session has a directory `data_dir/artifacts/{session}`: `files/` (what the API
//! lists and serves), `recording.mp4`, and `index.json` (each file's kind, time and state,
//! rewritten at each change). No browser may write here: Chrome writes downloads into its
//! own downloads directory, and a finished one is moved in. The directory outlives the
//! session for `retention_secs` and is removed with the session's record.
//!
//! [`root`] holds every session's directory, [`session_files`] one session's; [`names`]
//! checks and makes file names. [`downloads`] watches a session's browser for downloads, [`recording`] records its
//! active tab, [`zip`] packs its files for one download.

pub(crate) mod entry;
mod error;
mod names;
mod no_follow;
mod root;
mod session_files;

pub(crate) mod cdp_log;
pub(crate) mod downloads;
pub(crate) mod recording;
pub(crate) mod zip;

pub(crate) use entry::{FileEntry, FileState};
pub(crate) use error::FileError;
pub(crate) use root::{Artifacts, find_ffmpeg};
pub(crate) use session_files::{Limits, RECORDING, SessionFiles};
