//! The warm pool: browsers started ahead of demand, each handed to exactly one session.
//!
//! A slot (semaphore permit) caps the sessions holding a browser at once. Idle browsers are
//! all at the default screen size and of the default kind (the headless shell or the full
//! browser: what nearly every create takes); a session asking for another size gets a fresh
//! launch. The other kind (recorded sessions and `browser: "full"` on a node whose default
//! is the shell) is kept warm too, one browser, while creates have asked for it lately:
//! a node that never sees one pays nothing for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::launcher::{Browser, LaunchError, Launcher, Screen, Use};
use crate::error::Origin;
use crate::metrics::Metrics;
use crate::store::extensions::ExtensionUse;
use crate::values::BrowserKind;
use std::sync::atomic::Ordering;

/// Longest pause between failed refill launches, so a broken Chrome is not a busy loop.
const MAX_REFILL_BACKOFF: Duration = Duration::from_secs(30);
/// How long a replacement launch waits after a checkout, while other warm browsers remain.
const REFILL_QUIET: Duration = Duration::from_millis(500);
/// How long after a create asked for the other kind one of it is kept warm.
const OTHER_KIND_WARM_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("every browser slot is in use")]
    Busy,
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A shared browser could not give a session its context.
    #[error("the browser context could not be set up: {0}")]
    Setup(String),
}

impl PoolError {
    /// No slot, or a browser of ours that does not start, is the broker's; a shared
    /// browser that fails to make a context is the browser's.
    pub fn origin(&self) -> Origin {
        match self {
            PoolError::Busy | PoolError::Launch(_) => Origin::Internal,
            PoolError::Setup(_) => Origin::Upstream,
        }
    }
}

/// A browser checked out for one session, with the slot it occupies. Dropping it kills
/// the browser and frees the slot.
pub struct Lease {
    pub browser: Browser,
    _slot: OwnedSemaphorePermit,
    /// The extensions it loaded, kept from deletion while it runs.
    _extensions: Option<ExtensionUse>,
}

pub struct Pool {
    launcher: Arc<Launcher>,
    default_screen: Screen,
    /// The kind of the idle browsers: what a create that asks nothing gets.
    default_kind: BrowserKind,
    /// How many idle browsers to keep ready.
    target_idle: usize,
    idle: Mutex<VecDeque<Browser>>,
    /// One warm browser of the other kind, and until when one is kept (a create asked
    /// for that kind less than [`OTHER_KIND_WARM_FOR`] ago).
    other_idle: Mutex<Option<Browser>>,
    other_wanted_until: Mutex<Option<Instant>>,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Wakes the refill loop after a checkout.
    refill: Notify,
    metrics: Arc<Metrics>,
    /// When a warm browser was last handed out.
    last_checkout: Mutex<Instant>,
    /// Set while the refill loop launches a warm browser; `landed` fires when it is done.
    refilling: std::sync::atomic::AtomicBool,
    landed: Notify,
}

impl Pool {
    pub fn new(
        launcher: Arc<Launcher>,
        default_screen: Screen,
        default_kind: BrowserKind,
        target_idle: usize,
        max_sessions: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pool {
            launcher,
            default_screen,
            default_kind,
            target_idle,
            idle: Mutex::new(VecDeque::new()),
            other_idle: Mutex::new(None),
            other_wanted_until: Mutex::new(None),
            slots: Arc::new(Semaphore::new(max_sessions)),
            queue_timeout,
            refill: Notify::new(),
            metrics,
            last_checkout: Mutex::new(Instant::now() - REFILL_QUIET),
            refilling: Default::default(),
            landed: Notify::new(),
        }
    }

    /// A browser of `screen` size and the default kind for a new session: waits up to the
    /// queue timeout for a slot, then takes a warm browser or launches one.
    pub async fn acquire(&self, screen: Screen) -> Result<Lease, PoolError> {
        self.acquire_with(screen, self.default_kind, true).await
    }

    /// As [`Pool::acquire`], of `kind`; without `wait`, a pool with no free slot refuses at
    /// once (a create placed here by another node, which then asks the next one).
    pub async fn acquire_with(&self, screen: Screen, kind: BrowserKind, wait: bool) -> Result<Lease, PoolError> {
        let slot = match wait {
            true => self.slot().await?,
            false => self.slots.clone().try_acquire_owned().map_err(|_| PoolError::Busy)?,
        };
        if screen == self.default_screen
            && kind == self.default_kind
            && let Some(browser) = self.take_warm().await
        {
            *self.last_checkout.lock().expect("pool lock") = Instant::now();
            self.refill.notify_one();
            return Ok(Lease {
                browser,
                _slot: slot,
                _extensions: None,
            });
        }
        if screen == self.default_screen && kind != self.default_kind {
            *self.other_wanted_until.lock().expect("pool lock") = Some(Instant::now() + OTHER_KIND_WARM_FOR);
            let warm = self.other_idle.lock().expect("pool lock").take();
            self.refill.notify_one();
            if let Some(browser) = warm.filter(Browser::is_alive) {
                return Ok(Lease {
                    browser,
                    _slot: slot,
                    _extensions: None,
                });
            }
        }
        let browser = self.launcher.launch(screen, Use::Own(kind)).await?;
        Ok(Lease {
            browser,
            _slot: slot,
            _extensions: None,
        })
    }

    /// An idle browser; with none idle but a warm launch under way, that one once it is
    /// ready: it is nearer to ready than a launch started now, and a second launch would
    /// only halve the CPU each gets. `None`: launch one.
    async fn take_warm(&self) -> Option<Browser> {
        if let Some(browser) = self.take_idle() {
            return Some(browser);
        }
        let landed = self.landed.notified();
        tokio::pin!(landed);
        // Registered before the flag is read: a landing in between still wakes it.
        landed.as_mut().enable();
        if !self.refilling.load(Ordering::SeqCst) {
            return None;
        }
        let _ = tokio::time::timeout(self.launcher.launch_timeout(), landed).await;
        self.take_idle()
    }

    /// A slot and a fresh full browser on the prepared user-data directory `dir` (a
    /// profile's copy), which the caller keeps and removes.
    pub async fn acquire_on(&self, screen: Screen, dir: std::path::PathBuf) -> Result<Lease, PoolError> {
        self.acquire_fresh(screen, BrowserKind::Full, Some(dir), None).await
    }

    /// A slot and a freshly launched browser (no warm one: a warm browser's command line
    /// is fixed), on the prepared user-data directory `dir` if any (the caller keeps and
    /// removes it), loading `extensions` (held as long as the lease).
    pub async fn acquire_fresh(
        &self,
        screen: Screen,
        kind: BrowserKind,
        dir: Option<std::path::PathBuf>,
        extensions: Option<ExtensionUse>,
    ) -> Result<Lease, PoolError> {
        let slot = self.slot().await?;
        self.launch_for(slot, screen, kind, dir.map(|d| (d, false)), extensions)
            .await
    }

    /// For a named pool's ready browser: a free slot now or none (a refill never queues
    /// ahead of a create), and a fresh launch on `dir` if given (removed when the browser
    /// ends), loading `extensions`.
    pub async fn acquire_spare(
        &self,
        screen: Screen,
        kind: BrowserKind,
        dir: Option<std::path::PathBuf>,
        extensions: Option<ExtensionUse>,
    ) -> Result<Lease, PoolError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| PoolError::Busy)?;
        self.launch_for(slot, screen, kind, dir.map(|d| (d, true)), extensions)
            .await
    }

    /// A fresh launch in `slot`, on `dir` if given (removed with the browser when it is
    /// `owned`), loading `extensions`.
    async fn launch_for(
        &self,
        slot: OwnedSemaphorePermit,
        screen: Screen,
        kind: BrowserKind,
        dir: Option<(std::path::PathBuf, bool)>,
        extensions: Option<ExtensionUse>,
    ) -> Result<Lease, PoolError> {
        let dirs = extensions.as_ref().map_or(&[][..], |e| &e.dirs[..]);
        let browser = match dir {
            Some((dir, owned)) => {
                self.launcher
                    .launch_in(screen, dir, owned, Use::Own(kind), dirs)
                    .await?
            }
            None => self.launcher.launch_with(screen, Use::Own(kind), dirs).await?,
        };
        Ok(Lease {
            browser,
            _slot: slot,
            _extensions: extensions,
        })
    }

    /// Where a profile copy for a new browser goes.
    pub fn scratch_dir(&self) -> std::path::PathBuf {
        self.launcher.scratch_dir()
    }

    /// A session slot, waiting up to the queue timeout.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, PoolError> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let started = Instant::now();
        self.metrics.queue_waiting.inc();
        let slot = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.metrics.queue_waiting.dec();
        self.metrics.observe_queue_wait(started.elapsed());
        slot.map_err(|_| PoolError::Busy)?.map_err(|_| PoolError::Busy)
    }

    /// How its browsers are confined, or why none may start.
    pub fn confinement(&self) -> &Result<super::confine::Confinement, String> {
        self.launcher.confinement()
    }

    /// Whether a create could get a browser: one is warm, or the browser starts.
    pub fn ready(&self) -> bool {
        !self.idle.lock().expect("pool lock").is_empty() || self.launcher.can_launch()
    }

    fn take_idle(&self) -> Option<Browser> {
        let mut idle = self.idle.lock().expect("pool lock");
        // Dead ones are dropped here; the refill loop replaces them.
        while let Some(browser) = idle.pop_front() {
            if browser.is_alive() {
                return Some(browser);
            }
        }
        None
    }

    pub fn idle_count(&self) -> usize {
        let other = self
            .other_idle
            .lock()
            .expect("pool lock")
            .as_ref()
            .is_some_and(Browser::is_alive);
        self.idle
            .lock()
            .expect("pool lock")
            .iter()
            .filter(|b| b.is_alive())
            .count()
            + usize::from(other)
    }

    /// The other kind than the default, when this node can start it.
    fn other_kind(&self) -> Option<BrowserKind> {
        let other = match self.default_kind {
            BrowserKind::Shell => BrowserKind::Full,
            BrowserKind::Full => BrowserKind::Shell,
        };
        self.launcher.has(Use::Own(other)).then_some(other)
    }

    /// What the other kind's warm browser needs now: `Some(true)` a launch, `Some(false)`
    /// to be let go (no create asked for it lately), `None` nothing; and when to look again.
    fn other_kind_due(&self) -> (Option<bool>, Option<Instant>) {
        let until = *self.other_wanted_until.lock().expect("pool lock");
        let mut warm = self.other_idle.lock().expect("pool lock");
        if warm.as_ref().is_some_and(|b| !b.is_alive()) {
            *warm = None;
        }
        match (until.filter(|u| *u > Instant::now()), warm.is_some()) {
            (Some(_), false) => (Some(true), None),
            (Some(until), true) => (None, Some(until)),
            (None, true) => (Some(false), None),
            (None, false) => (None, None),
        }
    }

    /// The kind a create that asks nothing gets.
    pub fn default_kind(&self) -> BrowserKind {
        self.default_kind
    }

    /// Whether browsers for `used` can be started here (the headless shell is installed),
    /// and which kind the shared browsers are.
    pub fn has(&self, used: Use) -> bool {
        self.launcher.has(used)
    }

    pub fn shared_kind(&self) -> BrowserKind {
        self.launcher.shared_kind()
    }

    /// The version of the browsers started for `used` (`156.0.8078.114`), once calibrated.
    pub fn browser_version(&self, used: Use) -> Option<String> {
        self.launcher.browser_version(used)
    }

    /// Slots free right now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Keeps `target_idle` live browsers ready until `shutdown`, then kills the idle ones.
    pub async fn run_refill(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let (missing, spare) = {
                let mut idle = self.idle.lock().expect("pool lock");
                idle.retain(Browser::is_alive);
                (self.target_idle.saturating_sub(idle.len()), !idle.is_empty())
            };
            // A launch takes both cores for a moment; while warm browsers remain, let the
            // session that just checked one out have its first commands first.
            let since_checkout = self.last_checkout.lock().expect("pool lock").elapsed();
            if missing > 0 && spare && since_checkout < REFILL_QUIET {
                tokio::select! {
                    _ = tokio::time::sleep(REFILL_QUIET - since_checkout) => {}
                    _ = self.refill.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            if missing > 0 {
                self.refilling.store(true, Ordering::SeqCst);
                let launched = tokio::select! {
                    r = self.launcher.launch(self.default_screen, Use::Own(self.default_kind)) => r,
                    _ = shutdown.cancelled() => {
                        self.refilling.store(false, Ordering::SeqCst);
                        self.landed.notify_waiters();
                        break;
                    }
                };
                // In the pool before the flag drops, so a waiting create finds it.
                let launched = match launched {
                    Ok(browser) => {
                        self.idle.lock().expect("pool lock").push_back(browser);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                self.refilling.store(false, Ordering::SeqCst);
                self.landed.notify_waiters();
                if !settle(launched.is_ok(), &mut backoff, &shutdown).await {
                    break;
                }
                continue;
            }
            // The default kind is ready: then the other kind's one, if asked for lately.
            let (due, look_again) = self.other_kind_due();
            match (due, self.other_kind()) {
                (Some(true), Some(kind)) => {
                    let launched = tokio::select! {
                        r = self.launcher.launch(self.default_screen, Use::Own(kind)) => r,
                        _ = shutdown.cancelled() => break,
                    };
                    let ok = launched.is_ok();
                    if let Ok(browser) = launched {
                        *self.other_idle.lock().expect("pool lock") = Some(browser);
                    }
                    if !settle(ok, &mut backoff, &shutdown).await {
                        break;
                    }
                    continue;
                }
                (Some(false), _) => {
                    // Killed as it drops.
                    self.other_idle.lock().expect("pool lock").take();
                    continue;
                }
                _ => {}
            }
            let expiry = async {
                match look_again {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.refill.notified() => {}
                _ = self.launcher.exits.notified() => {}
                _ = expiry => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.idle.lock().expect("pool lock").clear();
        self.other_idle.lock().expect("pool lock").take();
    }
}

/// After a refill launch: a success resets the backoff; a failure waits it out and doubles
/// it (a broken Chrome is not a busy loop). False when `shutdown` came meanwhile.
async fn settle(launched: bool, backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    if launched {
        *backoff = Duration::from_millis(250);
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.cancelled() => return false,
    }
    *backoff = (*backoff * 2).min(MAX_REFILL_BACKOFF);
    true
}
