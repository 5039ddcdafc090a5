//! Work on a profile in a browser started on a copy of it: reading or writing its storage
//! state (the storage-state endpoints, and context sessions, whose state is carried to and
//! from the profile as a storage state), and saving the browser back into the profile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{cookies, storage_state};
use crate::browser::cdp::{CdpError, Connection};
use crate::browser::pool::{Lease, Pool, PoolError};
use crate::browser::{Browser, Screen};
use crate::metrics::Metrics;
use crate::store::SaveOutcome;
use crate::store::profiles::{ProfileError, ProfileUse, Profiles};

/// Why work on a profile copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("The browser profile could not be read: {0}")]
    Unreadable(ProfileError),
    #[error(transparent)]
    Capacity(PoolError),
    #[error("The profile's browser failed: {0}")]
    Browser(#[from] CdpError),
    #[error("The profile was {}", .0.describe())]
    NotSaved(SaveOutcome),
    #[error(
        "The profile's browser did not finish its work within {} s; it was abandoned and the profile left as it was",
        .0.as_secs_f64()
    )]
    TimedOut(Duration),
}

impl CopyError {
    /// What a save that failed this way records.
    pub fn outcome(self) -> SaveOutcome {
        match self {
            CopyError::NotSaved(outcome) => outcome,
            other => SaveOutcome::Failed(other.to_string()),
        }
    }
}

/// Browsers on profile copies: a slot of the pool each, for as long as the work takes.
pub struct ProfileCopies {
    pub pool: Arc<Pool>,
    pub profiles: Arc<Profiles>,
    pub metrics: Arc<Metrics>,
    pub screen: Screen,
    /// Longest the work in one browser may take (`storage_state_timeout_ms`), the save
    /// after it aside: past it the work is abandoned and nothing is saved.
    pub deadline: Duration,
}

/// A profile copy's directory and the browser started on it: removed once the work is
/// done, or, if the work is dropped halfway (its client gone), by a task of its own.
struct Scratch {
    dir: Option<PathBuf>,
    lease: Option<Lease>,
}

impl Scratch {
    /// Stops the browser, waits for it to exit, then removes the directory.
    fn cleanup(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let (lease, dir) = (self.lease.take(), self.dir.take());
        async move {
            if let Some(lease) = lease {
                let exited = lease.browser.exited();
                drop(lease);
                exited.cancelled().await;
            }
            if let Some(dir) = dir {
                crate::browser::remove_dir_with_retries(&dir).await;
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if (self.lease.is_some() || self.dir.is_some())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(self.cleanup());
        }
    }
}

impl ProfileCopies {
    /// Runs `work` over CDP in a browser started on a copy of the profile `hold` holds;
    /// with `persist` (the hold must be the writer's), saves the browser into the profile
    /// afterwards.
    pub async fn run<T, E: From<CopyError>>(
        &self,
        hold: &ProfileUse,
        persist: bool,
        work: impl AsyncFnOnce(&mut Connection, &Browser) -> Result<T, E>,
    ) -> Result<T, E> {
        let dir = self.pool.scratch_dir();
        let mut scratch = Scratch {
            dir: Some(dir.clone()),
            lease: None,
        };
        let result = async {
            let cookies = self
                .profiles
                .copy_into(hold, &dir)
                .await
                .map_err(CopyError::Unreadable)?;
            let acquired = self.pool.acquire_on(self.screen, dir.clone()).await.map_err(|e| {
                self.metrics.create_rejected.inc();
                CopyError::Capacity(e)
            })?;
            let browser = &scratch.lease.insert(acquired).browser;
            cookies::restore_session_cookies(browser, &cookies)
                .await
                .map_err(CopyError::from)?;
            let mut conn = Connection::open(&browser.ws_url()).await.map_err(CopyError::from)?;
            let out = tokio::time::timeout(self.deadline, work(&mut conn, browser))
                .await
                .map_err(|_| CopyError::TimedOut(self.deadline))??;
            drop(conn);
            if persist {
                let outcome = cookies::save_from(&self.profiles, hold, browser).await;
                if outcome != SaveOutcome::Saved {
                    return Err(CopyError::NotSaved(outcome).into());
                }
            }
            Ok(out)
        }
        .await;
        scratch.cleanup().await;
        result
    }

    /// The profile's cookies (session cookies too) and localStorage, as a storage state.
    pub async fn read_state(&self, hold: &ProfileUse) -> Result<Value, CopyError> {
        self.run(hold, false, async |conn, browser| {
            Ok(storage_state::export(conn, &browser.dir, &[], None).await?)
        })
        .await
    }

    /// Writes `state` into the profile (held as its writer) and saves it.
    pub async fn write_state(&self, hold: &ProfileUse, state: &Value) -> Result<(), CopyError> {
        self.run(
            hold,
            true,
            async |conn, _| Ok(storage_state::import(conn, state).await?),
        )
        .await
    }
}

/// How long past its deadline a context's export may finish the origin it was reading.
const EXPORT_GRACE: Duration = Duration::from_secs(10);

/// A context's storage state: its cookies and the localStorage of the origins it shows or
/// `reached`, read within `deadline` (the shared browser is other sessions' too).
pub(crate) async fn context_state(
    ws_url: &str,
    context: &str,
    reached: &[String],
    deadline: Duration,
) -> Result<Value, CdpError> {
    let mut conn = Connection::open_in(ws_url, context).await?;
    // Origins are read until the deadline, and what was read is saved; one page that
    // hangs is cut off a little after it, and then nothing is.
    let until = tokio::time::Instant::now() + deadline;
    let export = storage_state::export(&mut conn, std::path::Path::new(""), reached, Some(until));
    let state = tokio::time::timeout(deadline + EXPORT_GRACE, export)
        .await
        .unwrap_or(Err(CdpError::Timeout));
    conn.close_pages().await;
    state
}

/// Puts a storage state into a context; the tabs it took to write localStorage are closed.
pub(crate) async fn load_context_state(ws_url: &str, context: &str, state: &Value) -> Result<(), CdpError> {
    let mut conn = Connection::open_in(ws_url, context).await?;
    let loaded = storage_state::import(&mut conn, state).await;
    conn.close_pages().await;
    loaded
}
