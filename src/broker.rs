//! The broker's shared state: sessions, the pool, secrets, public URLs, metrics, and the
//! tasks that end sessions on time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::Actions;
use crate::action::cache::ActionCache;
use crate::action::model::ModelClient;
use crate::auth::{ApiKeys, Scope, Tenant, Tokens, load_or_create_secret, random_hex};
use crate::browser::{LaunchError, Launcher, Screen, find_chrome};
use crate::byo::{self, Egress};
use crate::config::Config;
use crate::error::ApiError;
use crate::limits::CreateLimiter;
use crate::metrics::{Gauges, Metrics};
use crate::pool::{Pool, PoolError};
use crate::profile::{self, ProfileError, Profiles};
use crate::proxy;
use crate::records::{Archived, Records};
use crate::session::{Backing, EndReason, ProfileBinding, Session, SessionInit, Status};
use crate::{cdp, storage_state};

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Chrome or Chromium found: install it (apt-get install -y chromium) or set chrome_path")]
    NoChrome,
    #[error("chrome_path {0} does not exist")]
    ChromeMissing(PathBuf),
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the browser cannot be started: {0}")]
    Browser(#[from] LaunchError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The URLs handed to clients, from `public_url` (never from a request).
pub struct PublicUrls {
    /// `http(s)://host[:port][/prefix]`
    pub http: String,
    /// `ws(s)://host[:port][/prefix]`
    pub ws: String,
}

impl PublicUrls {
    pub fn new(public_url: &str, bound: SocketAddr, tls: bool) -> Self {
        let http = if public_url.is_empty() {
            let host = if bound.ip().is_unspecified() {
                SocketAddr::new([127, 0, 0, 1].into(), bound.port())
            } else {
                bound
            };
            format!("{}://{host}", if tls { "https" } else { "http" })
        } else {
            public_url.trim_end_matches('/').to_owned()
        };
        let ws = match http.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", http.trim_start_matches("http://")),
        };
        PublicUrls { http, ws }
    }
}

/// The model for single actions, if `model_url` is set; its key from the environment.
fn model_client(config: &Config) -> Option<ModelClient> {
    let url = url::Url::parse(&config.model_url).ok()?;
    let api_key = std::env::var(&config.model_api_key_env).ok().filter(|k| !k.is_empty());
    if api_key.is_none() {
        tracing::warn!(
            variable = %config.model_api_key_env,
            "model_url is set but its API key variable is empty; calling it without a key"
        );
    }
    Some(ModelClient {
        url,
        model: config.model_name.clone(),
        api_key,
        timeout: std::time::Duration::from_secs(60),
    })
}

pub struct Broker {
    pub config: Config,
    pub urls: PublicUrls,
    pub keys: ApiKeys,
    /// Present when the broker serves TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub tokens: Tokens,
    /// Where bring-your-own sessions may connect.
    pub egress: Egress,
    pub create_limiter: CreateLimiter,
    pub sessions: DashMap<String, Arc<Session>>,
    /// Ended sessions of an earlier run, known from their records.
    pub archive: DashMap<String, Arc<Archived>>,
    pub records: Arc<Records>,
    pub profiles: Arc<Profiles>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// The single-action cache and model.
    pub actions: Actions,
    /// Every task that must finish before the broker has stopped (proxied connections,
    /// session watchers, browser reapers).
    pub tracker: TaskTracker,
    /// Cancelled when the broker begins to shut down.
    pub shutdown: CancellationToken,
}

/// A validated create request.
pub struct NewSession {
    pub ttl: Duration,
    pub screen: Screen,
    pub metadata: Map<String, Value>,
    /// A user's own DevTools endpoint to front instead of a managed browser.
    pub external_url: Option<String>,
    /// A profile of this tenant to start from, and whether to save back into it.
    pub profile_id: Option<String>,
    pub persist_changes: bool,
}

/// How a profile refusal reads to a client.
pub fn profile_error(e: ProfileError) -> ApiError {
    match e {
        ProfileError::NotFound => ApiError::not_found(e.to_string()),
        ProfileError::Duplicate(_) | ProfileError::Busy(_) | ProfileError::InUse(_) => {
            ApiError::conflict(e.to_string())
        }
        ProfileError::Io(_) => ApiError::internal(e.to_string()),
    }
}

impl Broker {
    /// Prepares the data directory and secrets, measures Chrome, and starts the pool.
    pub async fn start(
        config: Config,
        bound: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<Arc<Broker>, StartError> {
        // A bad certificate stops start-up before anything else happens.
        let tls = if config.tls_enabled() {
            Some(crate::tls::acceptor(
                Path::new(&config.tls_cert),
                Path::new(&config.tls_key),
            )?)
        } else {
            None
        };
        let data_dir = config.data_dir.clone();
        let dir_error = |source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&data_dir).map_err(dir_error)?;

        let chrome = if config.chrome_path.is_empty() {
            find_chrome().ok_or(StartError::NoChrome)?
        } else {
            let p = PathBuf::from(&config.chrome_path);
            if !p.exists() {
                return Err(StartError::ChromeMissing(p));
            }
            p
        };

        let mut api_keys = config.api_keys.clone();
        if api_keys.is_empty() {
            let path = data_dir.join("api_key");
            let (key, created) = load_or_create_secret(&path, "cdpg_", 24).map_err(dir_error)?;
            if created {
                // The one time a secret is printed: a newcomer needs it to make a first call.
                println!("cdpgate: generated an API key (kept in {}): {key}", path.display());
            } else {
                println!("cdpgate: using the API key kept in {}", path.display());
            }
            api_keys.push(key);
        }
        let secret = if config.token_secret.is_empty() {
            load_or_create_secret(&data_dir.join("token_secret"), "", 32)
                .map_err(dir_error)?
                .0
        } else {
            config.token_secret.clone()
        };

        let metrics = Arc::new(Metrics::default());
        let tracker = TaskTracker::new();
        let launcher = Arc::new(Launcher::new(
            chrome,
            config.chrome_flags.clone(),
            data_dir.join("browsers"),
            config.launch_timeout(),
            tracker.clone(),
            metrics.clone(),
        ));
        let profiles = Arc::new(Profiles::load(data_dir.join("profiles")).map_err(dir_error)?);
        let records = Arc::new(Records::open(data_dir.join("sessions")).map_err(dir_error)?);
        let archive: DashMap<String, Arc<Archived>> = DashMap::new();
        for archived in records.load(Duration::from_secs(config.retention_secs)) {
            archive.insert(archived.id.clone(), Arc::new(archived));
        }
        let swept = launcher.sweep_leftovers().map_err(dir_error)?;
        if swept > 0 {
            tracing::info!(swept, "removed browser directories left by an earlier run");
        }
        // A Chromium that will not start must not keep the API down: creates answer 503
        // with the reason, and the pool retries with a growing pause.
        if let Err(e) = launcher.calibrate().await {
            tracing::error!(error = %e, "Chromium does not start; sessions will be refused until it does");
        }

        let default_screen = Screen {
            width: config.default_width,
            height: config.default_height,
        };
        let egress = Egress::new(
            &config.byo_allow,
            launcher.own_ports.clone(),
            bound.port(),
            config.byo_timeout(),
        );
        let pool = Arc::new(Pool::new(
            launcher,
            default_screen,
            config.pool_size,
            config.max_sessions,
            config.queue_timeout(),
            metrics.clone(),
        ));
        tracker.spawn(pool.clone().run_refill(shutdown.clone()));

        let broker = Arc::new(Broker {
            urls: PublicUrls::new(&config.public_url, bound, config.tls_enabled()),
            tls,
            keys: ApiKeys::new(&api_keys),
            tokens: Tokens::new(secret.as_bytes()),
            egress,
            create_limiter: CreateLimiter::new(config.creates_per_minute),
            sessions: DashMap::new(),
            archive,
            records,
            profiles,
            pool,
            metrics,
            actions: Actions {
                cache: ActionCache::new(&config.data_dir),
                model: model_client(&config),
            },
            tracker: tracker.clone(),
            shutdown,
            config,
        });
        tracker.spawn(forget_old_sessions(Arc::downgrade(&broker), broker.shutdown.clone()));
        Ok(broker)
    }

    pub fn default_screen(&self) -> Screen {
        Screen {
            width: self.config.default_width,
            height: self.config.default_height,
        }
    }

    /// Hands a browser to a new session of `tenant` and starts its TTL watcher.
    pub async fn create_session(&self, tenant: Tenant, request: NewSession) -> Result<Arc<Session>, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::unavailable("The broker is shutting down", RETRY_AFTER_SECS));
        }
        if let Err(wait) = self.create_limiter.take(&tenant, std::time::Instant::now()) {
            self.metrics.create_rate_limited.fetch_add(1, Relaxed);
            let secs = wait.as_secs() + 1;
            return Err(ApiError {
                retry_after: Some(secs),
                ..ApiError::new(
                    hyper::StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many sessions created with this API key: at most {} a minute. Retry in {secs} s.",
                        self.config.creates_per_minute
                    ),
                )
            });
        }
        let id = format!("sess_{}", random_hex(16));
        if let Some(url) = &request.external_url {
            let upstream = byo::probe(
                url,
                &self.egress,
                self.config.byo_timeout(),
                proxy::ws_config(&self.config),
            )
            .await
            .inspect_err(|e| tracing::info!(error = %e, "bring-your-own endpoint refused"))?;
            return Ok(self.register(id, tenant, request, Backing::External(upstream), None));
        }
        if let Some(profile_id) = &request.profile_id {
            return self.create_with_profile(id, tenant, profile_id.clone(), request).await;
        }
        let lease = self
            .pool
            .acquire(request.screen)
            .await
            .map_err(|e| self.capacity_error(e))?;
        Ok(self.register(id, tenant, request, Backing::Managed(lease), None))
    }

    /// A session on a fresh browser started from a copy of the profile.
    async fn create_with_profile(
        &self,
        id: String,
        tenant: Tenant,
        profile_id: String,
        request: NewSession,
    ) -> Result<Arc<Session>, ApiError> {
        let profile = self.profiles.get(&tenant, &profile_id).map_err(profile_error)?;
        let hold = self
            .profiles
            .begin_use(profile, &id, request.persist_changes)
            .map_err(profile_error)?;
        let dir = self.pool.scratch_dir();
        let prepared = async {
            let cookies = hold
                .copy_into(&dir)
                .await
                .map_err(|e| ApiError::internal(format!("The browser profile could not be read: {e}")))?;
            let lease = self
                .pool
                .acquire_on(request.screen, dir.clone())
                .await
                .map_err(|e| self.capacity_error(e))?;
            if let Err(e) = profile::restore_session_cookies(&lease.browser, &cookies).await {
                tracing::warn!(error = %e, "could not restore the profile's session cookies");
            }
            Ok::<_, ApiError>(lease)
        };
        match prepared.await {
            Ok(lease) => {
                let binding = ProfileBinding {
                    hold,
                    store: self.profiles.clone(),
                    tracker: self.tracker.clone(),
                    metrics: self.metrics.clone(),
                };
                Ok(self.register(id, tenant, request, Backing::Managed(lease), Some(binding)))
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                self.profiles.end_use(hold);
                Err(e)
            }
        }
    }

    /// A profile's cookies and localStorage as a Playwright `storageState` document.
    pub async fn export_storage_state(&self, tenant: &Tenant, id: &str) -> Result<Value, ApiError> {
        self.in_profile_browser(tenant, id, false, async |conn, browser| {
            storage_state::export(conn, &browser.dir).await
        })
        .await
    }

    /// Writes a (validated) `storageState` document into a profile and saves it.
    pub async fn import_storage_state(&self, tenant: &Tenant, id: &str, state: &Value) -> Result<(), ApiError> {
        self.in_profile_browser(tenant, id, true, async |conn, _| {
            storage_state::import(conn, state).await
        })
        .await
    }

    /// Runs `work` over CDP in a browser started on a copy of the profile; with `persist`,
    /// holds the profile as its writer and saves the browser's state into it afterwards.
    async fn in_profile_browser<T>(
        &self,
        tenant: &Tenant,
        id: &str,
        persist: bool,
        work: impl AsyncFnOnce(&mut cdp::Connection, &crate::browser::Browser) -> Result<T, cdp::CdpError>,
    ) -> Result<T, ApiError> {
        let profile = self.profiles.get(tenant, id).map_err(profile_error)?;
        let holder = format!("storage-state-{}", random_hex(4));
        let hold = self
            .profiles
            .begin_use(profile, &holder, persist)
            .map_err(profile_error)?;
        let dir = self.pool.scratch_dir();
        let browser_error = |e: cdp::CdpError| ApiError::internal(format!("The profile's browser failed: {e}"));
        let mut lease = None;
        let result = async {
            let cookies = hold
                .copy_into(&dir)
                .await
                .map_err(|e| ApiError::internal(format!("The browser profile could not be read: {e}")))?;
            let browser = &lease
                .insert(
                    self.pool
                        .acquire_on(self.default_screen(), dir.clone())
                        .await
                        .map_err(|e| self.capacity_error(e))?,
                )
                .browser;
            profile::restore_session_cookies(browser, &cookies)
                .await
                .map_err(browser_error)?;
            let mut conn = cdp::Connection::open(&format!("ws://{}{}", browser.addr(), browser.ws_path))
                .await
                .map_err(browser_error)?;
            let out = work(&mut conn, browser).await.map_err(browser_error)?;
            drop(conn);
            if persist {
                let outcome = hold.save_from(browser).await;
                if outcome != "saved" {
                    return Err(ApiError::internal(format!("The profile was {outcome}")));
                }
            }
            Ok(out)
        }
        .await;
        if let Some(lease) = lease {
            let exited = lease.browser.exited();
            drop(lease);
            exited.cancelled().await;
        }
        crate::browser::remove_dir_with_retries(&dir).await;
        self.profiles.end_use(hold);
        result
    }

    fn capacity_error(&self, e: PoolError) -> ApiError {
        self.metrics.create_rejected.fetch_add(1, Relaxed);
        match e {
            PoolError::Busy => ApiError::unavailable(
                "No browser is available: every slot is in use. Retry later.",
                RETRY_AFTER_SECS,
            ),
            PoolError::Launch(e) => {
                ApiError::unavailable(format!("The browser could not be started: {e}"), RETRY_AFTER_SECS)
            }
        }
    }

    /// Records a new session and starts its watcher.
    fn register(
        &self,
        id: String,
        tenant: Tenant,
        request: NewSession,
        backing: Backing,
        profile: Option<ProfileBinding>,
    ) -> Arc<Session> {
        // An external browser's exit is not ours to watch: a token that never fires.
        let exited = match &backing {
            Backing::Managed(lease) => lease.browser.exited(),
            Backing::External(_) => CancellationToken::new(),
        };
        let session = Arc::new(Session::new(SessionInit {
            id: id.clone(),
            tenant,
            ttl: request.ttl,
            screen: request.screen,
            metadata: request.metadata,
            backing,
            profile,
        }));
        self.sessions.insert(id.clone(), session.clone());
        self.records.save(&session);
        self.metrics.sessions_created.fetch_add(1, Relaxed);
        self.tracker.spawn(watch_session(
            session.clone(),
            exited,
            self.metrics.clone(),
            self.records.clone(),
            self.shutdown.clone(),
        ));
        tracing::info!(session = %id, tenant = %session.tenant, external = session.upstream.external, "session created");
        session
    }

    /// The session `id` if it belongs to `tenant` (another tenant's looks unknown).
    pub fn find(&self, tenant: &Tenant, id: &str) -> Option<Arc<Session>> {
        self.sessions.get(id).map(|s| s.clone()).filter(|s| &s.tenant == tenant)
    }

    /// Ends a session on request; answers its previous status if it had already ended.
    pub fn terminate(&self, session: &Session) -> Result<(), Status> {
        session.end(EndReason::Terminated)?;
        // On disk before the caller hears it is done, should the broker die next.
        self.records.save(session);
        self.metrics.sessions_terminated.fetch_add(1, Relaxed);
        tracing::info!(session = %session.id, "session terminated");
        Ok(())
    }

    /// The `cdp_url` of a session: the broker's address with a token valid until expiry.
    /// The live view links of a session: interactive, and read-only.
    pub fn live_urls(&self, session: &Session) -> (String, String) {
        let url = |scope| {
            let token = self
                .tokens
                .mint(&session.id, scope, session.created_at, session.expires_at());
            format!("{}/live/{}?token={token}", self.urls.http, session.id)
        };
        (url(Scope::Live), url(Scope::LiveReadOnly))
    }

    pub fn cdp_url(&self, session: &Session) -> String {
        let token = self
            .tokens
            .mint(&session.id, Scope::Cdp, session.created_at, session.expires_at());
        format!("{}/devtools/browser/{}?token={token}", self.urls.ws, session.id)
    }

    pub fn active_sessions(&self) -> usize {
        self.sessions.iter().filter(|s| s.status() == Status::Active).count()
    }

    pub fn render_metrics(&self) -> String {
        self.metrics.render(&Gauges {
            sessions_active: self.active_sessions(),
            pool_idle: self.pool.idle_count(),
        })
    }

    /// Ends every session, waits (bounded) for connections and browsers to wind down.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        for entry in self.sessions.iter() {
            let _ = entry.end(EndReason::Shutdown);
        }
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_timeout(), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out with tasks still running");
        }
    }
}

/// Ends the session at its TTL, or when its browser exits; follows TTL extensions.
async fn watch_session(
    session: Arc<Session>,
    browser_exited: CancellationToken,
    metrics: Arc<Metrics>,
    records: Arc<Records>,
    shutdown: CancellationToken,
) {
    end_on_time(&session, browser_exited, &metrics, shutdown).await;
    records.save(&session);
    // The profile save, if any, finishes later; its outcome belongs in the record too.
    session.profile_released().cancelled().await;
    if session.profile_id.is_some() {
        records.save(&session);
    }
}

/// Returns once the session has ended, having ended it at its TTL, when its browser
/// exited, or at shutdown.
async fn end_on_time(
    session: &Session,
    browser_exited: CancellationToken,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let remaining = session
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + remaining;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if session.expires_at() <= SystemTime::now() {
                    if session.end(EndReason::Expired).is_ok() {
                        metrics.sessions_expired.fetch_add(1, Relaxed);
                        tracing::info!(session = %session.id, "session expired");
                    }
                    return;
                }
            }
            _ = session.deadline_moved().notified() => {}
            _ = browser_exited.cancelled() => {
                if session.end(EndReason::BrowserExited).is_ok() {
                    metrics.sessions_terminated.fetch_add(1, Relaxed);
                    tracing::info!(session = %session.id, "session ended: its browser exited");
                }
                return;
            }
            _ = session.ended().cancelled() => return,
            _ = shutdown.cancelled() => {
                let _ = session.end(EndReason::Shutdown);
                return;
            }
        }
    }
}

/// Drops ended sessions once they are older than the retention period.
async fn forget_old_sessions(broker: std::sync::Weak<Broker>, shutdown: CancellationToken) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let retention = Duration::from_secs(b.config.retention_secs);
        let now = SystemTime::now();
        let expired = |at: SystemTime| now.duration_since(at).unwrap_or_default() >= retention;
        b.sessions.retain(|id, s| {
            let keep = !s.ended_at().is_some_and(expired);
            if !keep {
                b.records.remove(id);
            }
            keep
        });
        b.archive.retain(|id, a| {
            let keep = !expired(a.ended_at);
            if !keep {
                b.records.remove(id);
            }
            keep
        });
        let period = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
        drop(b);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_come_from_config_or_the_bound_address() {
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let u = PublicUrls::new("", bound, false);
        assert_eq!(
            (u.http.as_str(), u.ws.as_str()),
            ("http://127.0.0.1:4000", "ws://127.0.0.1:4000")
        );
        let u = PublicUrls::new("https://browsers.example/gate/", bound, false);
        assert_eq!(u.ws, "wss://browsers.example/gate");
        assert_eq!(u.http, "https://browsers.example/gate");
    }
}
