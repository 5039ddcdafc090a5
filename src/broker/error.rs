//! Why the broker could not start, create a session, or find one; each error knows whose fault it is.

use std::path::PathBuf;
use std::time::Duration;

use crate::browser::LaunchError;
use crate::browser::byo::ProbeError;
use crate::browser::cdp::CdpError;
use crate::browser::pool::PoolError;
use crate::browser::snapshot::MAX_STORAGE_CHARS;
use crate::error::Origin;
use crate::profile::copy::CopyError;
use crate::quota::QuotaExceeded;
use crate::store::extensions::ExtensionError;
use crate::store::profiles::ProfileError;
use crate::store::{SaveOutcome, Status, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Chrome or Chromium found: install it (apt-get install -y chromium) or set chrome_path")]
    NoChrome,
    #[error("{key} {path} does not exist")]
    ChromeMissing { key: &'static str, path: PathBuf },
    #[error(
        "default_browser = \"shell\" but Chromium's headless shell is not installed (apt-get install -y chromium-headless-shell)"
    )]
    NoShell,
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    TempDir(String),
    #[error("the browser cannot be started: {0}")]
    Browser(#[from] LaunchError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot use Redis at redis_url: {0}")]
    Store(#[from] StoreError),
    #[error("cannot use the profile store {store:?}: {source}")]
    Profiles { store: String, source: std::io::Error },
    #[error("cannot use adblock_lists: {0}")]
    AdLists(String),
    #[error(
        "single_process_shell puts pages outside Chrome's sandbox, so it needs the kernel to confine \
         browsers whole (Landlock ABI 6 or later: files, TCP connects, signals, abstract sockets); \
         here browser confinement is {0}"
    )]
    SingleProcessUnconfined(String),
}

/// Why a session could not be created, or a profile's browser could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("The broker is shutting down")]
    ShuttingDown,
    #[error("Too many sessions created with this API key: at most {per_minute} a minute. Retry in {retry_after} s.")]
    RateLimited { per_minute: u32, retry_after: u64 },
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(transparent)]
    Capacity(#[from] PoolError),
    #[error(transparent)]
    Byo(#[from] ProbeError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Extension(#[from] ExtensionError),
    #[error(transparent)]
    NamedPool(#[from] NamedPoolError),
    #[error("The browser profile could not be read: {0}")]
    ProfileUnreadable(ProfileError),
    #[error("The profile's browser failed: {0}")]
    ProfileBrowser(#[from] CdpError),
    #[error("The profile was {}", .0.describe())]
    ProfileNotSaved(SaveOutcome),
    #[error(
        "The profile's browser did not finish within {} s: the work was abandoned and the profile is unchanged. \
         Import fewer origins at a time.",
        .0.as_secs_f64()
    )]
    ProfileTimedOut(Duration),
    #[error("storage_state was refused by the browser: {0}")]
    StateRefused(String),
    /// A session option that cannot be honoured (a proxy the egress policy refuses).
    #[error("{0}")]
    OptionRefused(String),
    /// What could not be set up (its identity, its tabs' watch, its files…), and why.
    #[error("The session's browser could not be prepared ({0}): {1}")]
    BrowserSetup(&'static str, CdpError),
    #[error("Sessions cannot be recorded right now ({0}). Retry later.")]
    Store(#[from] StoreError),
}

impl From<CopyError> for BrokerError {
    fn from(e: CopyError) -> BrokerError {
        match e {
            CopyError::Unreadable(e) => BrokerError::ProfileUnreadable(e),
            CopyError::Capacity(e) => BrokerError::Capacity(e),
            CopyError::Browser(e) => BrokerError::ProfileBrowser(e),
            CopyError::NotSaved(outcome) => BrokerError::ProfileNotSaved(outcome),
            CopyError::TimedOut(limit) => BrokerError::ProfileTimedOut(limit),
        }
    }
}

impl BrokerError {
    pub fn origin(&self) -> Origin {
        match self {
            BrokerError::RateLimited { .. }
            | BrokerError::Quota(_)
            | BrokerError::StateRefused(_)
            | BrokerError::OptionRefused(_) => Origin::Client,
            BrokerError::BrowserSetup(_, e) | BrokerError::ProfileBrowser(e) => e.origin(),
            BrokerError::Byo(e) => e.origin(),
            BrokerError::Profile(e) => e.origin(),
            BrokerError::Extension(e) => e.origin(),
            BrokerError::NamedPool(e) => e.origin(),
            BrokerError::Capacity(e) => e.origin(),
            BrokerError::ProfileTimedOut(_) => Origin::Upstream,
            BrokerError::Store(e) => e.origin(),
            BrokerError::ShuttingDown | BrokerError::ProfileUnreadable(_) | BrokerError::ProfileNotSaved(_) => {
                Origin::Internal
            }
        }
    }
}

/// Why a session asked for by id cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Session not found")]
    NotFound,
    #[error("Session is {}", .0.as_str())]
    Ended(Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionError {
    pub fn origin(&self) -> Origin {
        match self {
            SessionError::NotFound | SessionError::Ended(_) => Origin::Client,
            SessionError::Store(e) => e.origin(),
        }
    }
}

/// Why a fork made no sessions.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error(transparent)]
    Source(#[from] SessionError),
    #[error(
        "A session fronting your own browser (cdp_url) cannot be forked: the broker does not run that \
         browser, so it cannot start others from its state"
    )]
    External,
    #[error("The source session's state could not be read: {0}")]
    Read(CdpError),
    #[error(
        "The source session's tabs hold more than {MAX_STORAGE_CHARS} characters of localStorage and \
         sessionStorage (each tab's counted): a fork carries at most that"
    )]
    TooMuchStorage,
    #[error("A fork's state could not be written, so no fork was kept: {0}")]
    Write(CdpError),
    #[error(transparent)]
    Create(#[from] BrokerError),
}

impl ForkError {
    pub fn origin(&self) -> Origin {
        match self {
            ForkError::Source(e) => e.origin(),
            ForkError::External | ForkError::TooMuchStorage => Origin::Client,
            ForkError::Read(e) | ForkError::Write(e) => e.origin(),
            ForkError::Create(e) => e.origin(),
        }
    }
}

/// Why a named pool could not be defined, changed or found.
#[derive(Debug, thiserror::Error)]
pub enum NamedPoolError {
    #[error("Pool not found")]
    NotFound,
    #[error("A pool named {0:?} already exists")]
    Exists(String),
    #[error("This API key has {0} pools, the most max_pools_per_key allows: delete one before defining another")]
    TooMany(usize),
    #[error(
        "The pools of this API key would keep {total} browsers ready, more than max_sessions_per_key allows \
         ({limit}): a ready browser counts as a session of its key"
    )]
    OverQuota { total: usize, limit: usize },
    /// Answered to another node that sent a create here for a ready one that is gone.
    #[error("No ready session of the pool on this node")]
    NoneReady,
}

impl NamedPoolError {
    pub fn origin(&self) -> Origin {
        match self {
            NamedPoolError::NoneReady => Origin::Internal,
            _ => Origin::Client,
        }
    }
}
