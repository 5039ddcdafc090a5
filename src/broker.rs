//! The composition root: builds every part from the configuration, holds them, and wires
//! them together. The sessions running on this node are kept here by id (their node-local
//! handles); every session's record is in the session store, read through one lookup path
//! by the API, the proxy, live view and actions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::action::Actions;
use crate::action::cache::ActionCache;
use crate::action::model::ModelClient;
use crate::artifacts::cdp_log::CdpLog;
use crate::artifacts::{self, Artifacts};
use crate::auth::{ApiKeys, ClusterKey, Scope, Tenant, Tokens, load_or_create_secret, random_hex};
use crate::browser::byo::{self, ProbeError};
use crate::browser::cdp::{self, CdpError};
use crate::browser::confine::Confinement;
use crate::browser::egress::{Egress, EgressError};
use crate::browser::forward::UpstreamProxy;
use crate::browser::identity::{self, Identity};
use crate::browser::launcher::LaunchSettings;
use crate::browser::pool::{Pool, PoolError};
use crate::browser::shared::{SharedBrowsers, SharedSettings};
use crate::browser::tab_cap::{self, TabCap};
use crate::browser::{Browser, Chromes, LaunchError, Launcher, Screen, find_chrome, find_headless_shell};
use crate::config::Config;
use crate::error::Origin;
use crate::limits::CreateLimiter;
use crate::metrics::{Gauges, Metrics};
use crate::profile_copy::{self, CopyError, ProfileCopies};
use crate::quota::{Kind, QuotaExceeded, Quotas, Reservation};
use crate::session::{Backing, ProfileBinding, Recorder, Session, SessionInit, session_span};
use crate::store::local::LocalStore;
pub use crate::store::nodes::NodeInfo;
use crate::store::nodes::{HEARTBEAT_TTL, Nodes};
use crate::store::profile_data::ProfileData;
use crate::store::profile_locks::ProfileLocks;
use crate::store::profiles::{self, Profile, ProfileError, ProfileUse, Profiles};
use crate::store::redis::RedisStore;
use crate::store::{
    EndReason, Isolation, ListPage, ListQuery, ProxySettings, SaveOutcome, SessionOptions, SessionRecord, SessionStore,
    Status, StoreError, storage_state,
};

/// How long terminate and delete wait for a profile save before answering anyway.
const SAVE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Chrome or Chromium found: install it (apt-get install -y chromium) or set chrome_path")]
    NoChrome,
    #[error("{key} {path} does not exist")]
    ChromeMissing { key: &'static str, path: PathBuf },
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the browser cannot be started: {0}")]
    Browser(#[from] LaunchError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot use Redis at redis_url: {0}")]
    Store(#[from] StoreError),
    #[error("cannot use the profile store {store:?}: {source}")]
    Profiles { store: String, source: std::io::Error },
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
    #[error("The session's browser could not be prepared: {0}")]
    BrowserSetup(CdpError),
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
            BrokerError::BrowserSetup(_) => Origin::Upstream,
            BrokerError::Byo(e) => e.origin(),
            BrokerError::Profile(e) => e.origin(),
            BrokerError::ProfileBrowser(_) | BrokerError::ProfileTimedOut(_) => Origin::Upstream,
            BrokerError::Store(e) => e.origin(),
            BrokerError::ShuttingDown
            | BrokerError::Capacity(_)
            | BrokerError::ProfileUnreadable(_)
            | BrokerError::ProfileNotSaved(_) => Origin::Internal,
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

/// The URLs of one session, each with a token valid until it expires.
pub struct SessionUrls {
    pub cdp: String,
    pub live: String,
    pub live_read_only: String,
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
    /// This node's name in the session store (empty without Redis: a single node).
    pub node: String,
    /// Where the other nodes reach this one.
    pub node_url: String,
    /// The cluster's nodes, with `redis_url`.
    pub nodes: Option<Nodes>,
    /// The cluster secret, with `redis_url`: signs and checks the requests nodes send each other.
    pub cluster_key: Option<ClusterKey>,
    pub urls: PublicUrls,
    pub keys: ApiKeys,
    /// The operator's key, when `admin_key` is set.
    pub admin: Option<ApiKeys>,
    /// Present when the broker serves TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub tokens: Tokens,
    /// Where connections to users' own browsers may go.
    pub egress: Egress,
    /// The policy of managed browsers' pages (their gateways enforce it).
    pub browser_egress: Arc<Egress>,
    create_limiter: CreateLimiter,
    /// Sessions per key at once.
    quotas: Quotas,
    /// Sessions whose browser runs on this node, until their end is written down.
    running: Arc<DashMap<String, Arc<Session>>>,
    /// Every session's record, written in order.
    records: Arc<Recorder>,
    /// Creates refused because their record could not be written, and when. A write that
    /// timed out may still land once the store answers again: the reconciler removes it.
    refused: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    pub profiles: Arc<Profiles>,
    pub pool: Arc<Pool>,
    /// Shared browsers, whose browser contexts are context sessions.
    pub shared: Arc<SharedBrowsers>,
    /// Browsers on profile copies, for work on a profile's state.
    profile_copies: Arc<ProfileCopies>,
    pub metrics: Arc<Metrics>,
    /// Sessions' files and recordings on this node.
    pub artifacts: Arc<Artifacts>,
    /// The single-action engine: its cache and model.
    pub actions: Actions,
    /// Every task that must finish before the broker has stopped (proxied connections,
    /// session watchers, browser reapers).
    pub tracker: TaskTracker,
    /// Cancelled when the broker begins to shut down.
    pub shutdown: CancellationToken,
}

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
    /// Wait up to `queue_timeout_ms` for a slot; otherwise refuse at once when full.
    pub queue: bool,
    /// Upstream proxy, identity and idle timeout.
    pub options: RequestedOptions,
}

/// What a create asks of a session beyond the basics, as validated.
#[derive(Debug, Clone, Default)]
pub struct RequestedOptions {
    /// A browser of its own, or a context in a shared browser.
    pub isolation: Isolation,
    pub proxy: Option<UpstreamProxy>,
    pub identity: Identity,
    /// 0: never idle out.
    pub idle_timeout: u64,
    /// Record the session's active tab as video.
    pub record: bool,
    /// Log its CDP traffic among its files.
    pub log_cdp: bool,
}

impl RequestedOptions {
    /// The options as the session object shows them (no password).
    pub fn view(&self) -> SessionOptions {
        SessionOptions {
            isolation: self.isolation,
            proxy: self.proxy.as_ref().map(|p| ProxySettings {
                server: p.server(),
                username: p.username.clone(),
                bypass: p.bypass.clone(),
            }),
            user_agent: self.identity.user_agent.clone(),
            locale: self.identity.locale.clone(),
            timezone: self.identity.timezone.clone(),
            idle_timeout: self.idle_timeout,
            record: self.record,
            log_cdp: self.log_cdp,
            byo: false,
        }
    }
}

/// The secrets a broker starts with: API keys and the token signing secret.
struct Secrets {
    api_keys: Vec<String>,
    token_secret: String,
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
        let chromes = chrome_paths(&config)?;
        tracing::info!(chrome = %chromes.own.display(), shared = %chromes.shared.display(), "browsers");
        if crate::browser::running_as_root() {
            tracing::warn!(
                "running as root: browsers start with --no-sandbox (Chrome will not sandbox a root \
                 process); run cdpgate as an unprivileged user to sandbox them"
            );
        } else {
            tracing::info!("running as an unprivileged user: browsers start with Chrome's sandbox on");
        }
        let secrets = load_secrets(&config).map_err(dir_error)?;

        let metrics = Arc::new(Metrics::default());
        let tracker = TaskTracker::new();
        // Ports of the broker's own browsers and their gateways: no session may reach them.
        let own_ports: Arc<std::sync::Mutex<std::collections::HashSet<u16>>> = Arc::default();
        let broker_addr = bound;
        let browser_egress = Arc::new(Egress::for_browsers(
            &config.browser_egress_deny,
            &config.browser_egress_allow,
            own_ports.clone(),
            broker_addr,
            config.byo_timeout(),
        ));
        let launcher = Arc::new(Launcher::new(
            LaunchSettings {
                chromes,
                extra_flags: config.chrome_flags.clone(),
                scratch_root: data_dir.join("browsers"),
                launch_timeout: config.launch_timeout(),
                confinement: Confinement::decide(Confinement::probe(), config.allow_unconfined_browsers),
            },
            tracker.clone(),
            metrics.clone(),
            browser_egress.clone(),
        ));
        let (node, store, nodes) = open_store(&config).await?;
        let profiles = Arc::new(
            open_profiles(&config, nodes.as_ref()).map_err(|source| StartError::Profiles {
                store: config.profile_store.clone(),
                source,
            })?,
        );
        let ended = store.end_left_active(&node, SystemTime::now()).await?;
        if ended > 0 {
            tracing::info!(
                ended,
                "sessions left active by this node's previous run recorded as ended"
            );
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

        let ffmpeg = artifacts::find_ffmpeg(&config.ffmpeg_path);
        match &ffmpeg {
            Some(path) => tracing::info!(ffmpeg = %path.display(), "sessions can be recorded"),
            None if config.record_sessions => tracing::warn!(
                "record_sessions is on but ffmpeg was not found (ffmpeg_path, or ffmpeg on the PATH): \
                 sessions asking to be recorded will be refused"
            ),
            None => tracing::info!("ffmpeg not found: sessions cannot be recorded"),
        }
        let artifacts = Arc::new(
            Artifacts::new(
                data_dir.join("artifacts"),
                artifacts::Limits {
                    max_files_bytes: config.max_session_files_bytes,
                    max_upload_bytes: config.max_upload_bytes,
                    max_recording_bytes: config.max_recording_bytes,
                    recording_fps: config.recording_fps,
                },
                ffmpeg,
                metrics.clone(),
            )
            .map_err(dir_error)?,
        );
        let egress = Egress::for_byo(&config.byo_allow, own_ports, broker_addr, config.byo_timeout());
        let shared = Arc::new(SharedBrowsers::new(
            launcher.clone(),
            SharedSettings {
                browsers: config.context_browsers,
                per_browser: config.max_contexts_per_browser,
                recycle_after: config.context_recycle_after,
                max_memory_bytes: config.context_browser_max_memory_mb * 1024 * 1024,
                any_tenant: config.context_sharing == "any",
                queue_timeout: config.queue_timeout(),
                screen: config.default_screen(),
                ws_config: config.ws_config(),
                client_ws_config: config.parsed_ws_config(),
                spares: config.context_spares,
                warm_browsers: config.context_warm_browsers,
            },
            browser_egress.clone(),
            metrics.clone(),
        ));
        let pool = Arc::new(Pool::new(
            launcher,
            config.default_screen(),
            config.pool_size,
            config.max_sessions,
            config.queue_timeout(),
            metrics.clone(),
        ));
        tracker.spawn(pool.clone().run_refill(shutdown.clone()));
        tracker.spawn(shared.clone().run_warm(shutdown.clone()));

        let broker = Arc::new(Broker {
            urls: PublicUrls::new(&config.public_url, bound, config.tls_enabled()),
            tls,
            keys: ApiKeys::new(&secrets.api_keys),
            admin: (!config.admin_key.is_empty()).then(|| ApiKeys::new(std::slice::from_ref(&config.admin_key))),
            tokens: Tokens::new(secrets.token_secret.as_bytes()),
            egress,
            browser_egress,
            create_limiter: CreateLimiter::new(config.creates_per_minute),
            quotas: Quotas::new(config.max_sessions_per_key, config.max_byo_sessions_per_key),
            running: Arc::new(DashMap::new()),
            records: Arc::new(Recorder::new(store)),
            refused: Default::default(),
            node_url: node_url(&config, bound),
            cluster_key: nodes.is_some().then(|| ClusterKey::new(&config.cluster_secret)),
            nodes,
            node,
            profile_copies: Arc::new(ProfileCopies {
                pool: pool.clone(),
                profiles: profiles.clone(),
                metrics: metrics.clone(),
                screen: config.default_screen(),
                deadline: Duration::from_millis(config.storage_state_timeout_ms),
            }),
            profiles,
            pool,
            shared,
            actions: Actions {
                cache: ActionCache::new(&config.data_dir),
                model: model_client(&config),
                metrics: metrics.clone(),
            },
            metrics,
            artifacts,
            tracker: tracker.clone(),
            shutdown,
            config,
        });
        tracker.spawn(sweep_records(Arc::downgrade(&broker), broker.shutdown.clone()));
        if broker.nodes.is_some() {
            tracker.spawn(reconcile_records(Arc::downgrade(&broker), broker.shutdown.clone()));
            broker.beat().await;
            tracker.spawn(heartbeat(Arc::downgrade(&broker), broker.shutdown.clone()));
            tracker.spawn(reap_lost_nodes(Arc::downgrade(&broker), broker.shutdown.clone()));
        }
        Ok(broker)
    }

    /// Hands a browser to a new session of `tenant` and starts its TTL watcher.
    pub async fn create_session(&self, tenant: Tenant, request: NewSession) -> Result<Arc<Session>, BrokerError> {
        let span = tracing::info_span!("session.create", tenant = %tenant, external = request.external_url.is_some());
        self.create_session_in_span(tenant, request).instrument(span).await
    }

    async fn create_session_in_span(&self, tenant: Tenant, request: NewSession) -> Result<Arc<Session>, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let kind = if request.external_url.is_some() {
            Kind::Byo
        } else {
            Kind::Managed
        };
        // Held until the session runs (or the create fails): nothing is taken before it.
        let _place = self.reserve_place(&tenant, kind).await.inspect_err(|_| {
            self.metrics.create_quota_refused.inc();
        })?;
        if let Err(wait) = self.take_create(&tenant).await {
            self.metrics.create_rate_limited.inc();
            return Err(BrokerError::RateLimited {
                per_minute: self.config.creates_per_minute,
                retry_after: wait.as_secs() + 1,
            });
        }
        if request.options.record && self.artifacts.ffmpeg.is_none() {
            return Err(BrokerError::OptionRefused(
                "record: this node cannot record sessions (ffmpeg is not installed)".into(),
            ));
        }
        let id = format!("sess_{}", random_hex(16));
        if let Some(url) = &request.external_url {
            let upstream = byo::probe(url, &self.egress, self.config.byo_timeout(), self.config.ws_config())
                .await
                .inspect_err(|e| tracing::info!(error = %e, "bring-your-own endpoint refused"))?;
            return self
                .register(id, tenant, request, Backing::External(upstream), None)
                .await;
        }
        if let Some(proxy) = &request.options.proxy
            && let Err(e) = self.browser_egress.resolve(&proxy.host, proxy.port).await
            && !matches!(e, EgressError::Resolve { .. })
        {
            return Err(BrokerError::OptionRefused(format!("proxy.server: {e}")));
        }
        if request.options.isolation == Isolation::Context {
            return self.create_in_context(id, tenant, request).await;
        }
        if let Some(profile_id) = &request.profile_id {
            return self.create_with_profile(id, tenant, profile_id.clone(), request).await;
        }
        let lease = self
            .pool
            .acquire_with(request.screen, request.queue)
            .await
            .map_err(|e| self.capacity_error(e))?;
        self.register(id, tenant, request, Backing::Managed(lease), None).await
    }

    /// A context session: a context in a shared browser, started from the profile's
    /// storage state if it has one (held as a process session holds it: one writer).
    async fn create_in_context(
        &self,
        id: String,
        tenant: Tenant,
        request: NewSession,
    ) -> Result<Arc<Session>, BrokerError> {
        let mut profile = None;
        if let Some(profile_id) = &request.profile_id {
            let found = self.profiles.get(&tenant, profile_id).await?;
            let hold = self.profiles.begin_use(found, &id, request.persist_changes).await?;
            match self.profile_copies.read_state(&hold).await {
                Ok(state) => profile = Some((hold, state)),
                Err(e) => {
                    self.profiles.end_use(hold).await;
                    return Err(e.into());
                }
            }
        }
        let acquired = self
            .shared
            .acquire(
                &tenant.to_string(),
                request.screen,
                session_span(&id, &tenant),
                request.options.proxy.clone(),
                request.queue,
            )
            .await
            .map_err(|e| self.capacity_error(e));
        let context = match acquired {
            Ok(context) => context,
            Err(e) => {
                if let Some((hold, _)) = profile {
                    self.profiles.end_use(hold).await;
                }
                return Err(e);
            }
        };
        let Some((hold, state)) = profile else {
            return self
                .register(id, tenant, request, Backing::Context(context), None)
                .await;
        };
        let ws_url = context.shared.browser.ws_url();
        if let Err(e) = profile_copy::load_context_state(&ws_url, &context.scope.context, &state).await {
            drop(context);
            self.profiles.end_use(hold).await;
            return Err(BrokerError::ProfileBrowser(e));
        }
        let binding = self.profile_binding(hold);
        self.register(id, tenant, request, Backing::Context(context), Some(binding))
            .await
    }

    /// A session on a fresh browser started from a copy of the profile.
    async fn create_with_profile(
        &self,
        id: String,
        tenant: Tenant,
        profile_id: String,
        request: NewSession,
    ) -> Result<Arc<Session>, BrokerError> {
        let profile = self.profiles.get(&tenant, &profile_id).await?;
        let hold = self.profiles.begin_use(profile, &id, request.persist_changes).await?;
        let dir = self.pool.scratch_dir();
        let prepared = async {
            let cookies = self
                .profiles
                .copy_into(&hold, &dir)
                .await
                .map_err(BrokerError::ProfileUnreadable)?;
            let lease = self
                .pool
                .acquire_on(request.screen, dir.clone())
                .await
                .map_err(|e| self.capacity_error(e))?;
            if let Err(e) = profiles::restore_session_cookies(&lease.browser, &cookies).await {
                tracing::warn!(error = %e, "could not restore the profile's session cookies");
            }
            Ok::<_, BrokerError>(lease)
        };
        match prepared.await {
            Ok(lease) => {
                let binding = self.profile_binding(hold);
                self.register(id, tenant, request, Backing::Managed(lease), Some(binding))
                    .await
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                self.profiles.end_use(hold).await;
                Err(e)
            }
        }
    }

    /// A place in `tenant`'s quota of `kind` for a create: its sessions running on other
    /// nodes (from the store, in a cluster), here, and creates under way here.
    async fn reserve_place(&self, tenant: &Tenant, kind: Kind) -> Result<Reservation<'_>, QuotaExceeded> {
        let Some(limit) = self.quotas.limit(kind) else {
            return self.quotas.reserve(tenant, kind, 0, || 0);
        };
        let elsewhere = match &self.nodes {
            Some(_) => self.running_elsewhere(tenant, kind, limit).await,
            None => 0,
        };
        self.quotas.reserve(tenant, kind, elsewhere, || {
            self.running
                .iter()
                .filter(|s| &s.tenant == tenant && s.status() == Status::Active)
                .filter(|s| (kind == Kind::Byo) == s.upstream.external)
                .count()
        })
    }

    /// How many of `tenant`'s sessions of `kind` the store has active on other nodes. At
    /// most a page past `limit` is read; a store that does not answer counts none (this
    /// node's own count still holds).
    async fn running_elsewhere(&self, tenant: &Tenant, kind: Kind, limit: usize) -> usize {
        let query = ListQuery {
            tenant: tenant.clone(),
            status: Some(Status::Active),
            offset: 0,
            limit: limit + self.config.max_sessions_per_key + self.config.max_byo_sessions_per_key + 16,
        };
        match self.records.store().list(&query).await {
            Ok(page) => {
                let unread = page.total.saturating_sub(page.records.len());
                let elsewhere = page
                    .records
                    .iter()
                    .filter(|r| r.node != self.node && (kind == Kind::Byo) == r.options.byo)
                    .count();
                // Records past the page are of either kind: counted against both.
                elsewhere + unread
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster session count unavailable; counting this node's");
                0
            }
        }
    }

    /// One creation from `tenant`'s allowance: the cluster's when there is one (a Redis
    /// that does not answer falls back to this node's own count), else this node's.
    async fn take_create(&self, tenant: &Tenant) -> Result<(), Duration> {
        let per_minute = self.config.creates_per_minute;
        if let Some(nodes) = &self.nodes
            && per_minute > 0
        {
            match nodes.take_create(&tenant.to_string(), per_minute).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => return Err(wait),
                Err(e) => tracing::debug!(error = %e, "cluster rate limit unavailable; counting locally"),
            }
        }
        self.create_limiter.take(tenant, std::time::Instant::now())
    }

    /// A profile's cookies and localStorage as a Playwright `storageState` document.
    pub async fn export_storage_state(&self, tenant: &Tenant, id: &str) -> Result<Value, BrokerError> {
        self.in_profile_browser(tenant, id, false, async |conn, browser| {
            Ok(storage_state::export(conn, &browser.dir, &[]).await?)
        })
        .await
    }

    /// Writes a (validated) `storageState` document into a profile and saves it.
    pub async fn import_storage_state(&self, tenant: &Tenant, id: &str, state: &Value) -> Result<(), BrokerError> {
        self.in_profile_browser(tenant, id, true, async |conn, _| {
            storage_state::import(conn, state).await.map_err(|e| match e {
                // Chrome's own checks (a cookie it will not take): the document's fault.
                CdpError::Refused { message, .. } => BrokerError::StateRefused(message),
                other => other.into(),
            })
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
        work: impl AsyncFnOnce(&mut cdp::Connection, &Browser) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let profile = self.profiles.get(tenant, id).await?;
        let holder = format!("storage-state-{}", random_hex(4));
        let mut held = Held {
            hold: Some(self.profiles.begin_use(profile, &holder, persist).await?),
            profiles: self.profiles.clone(),
        };
        let hold = held.hold.as_ref().expect("just taken");
        let result = self.profile_copies.run(hold, persist, work).await;
        if let Some(hold) = held.hold.take() {
            self.profiles.end_use(hold).await;
        }
        result
    }

    fn profile_binding(&self, hold: ProfileUse) -> ProfileBinding {
        ProfileBinding {
            hold,
            store: self.profiles.clone(),
            copies: self.profile_copies.clone(),
            tracker: self.tracker.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn capacity_error(&self, e: PoolError) -> BrokerError {
        self.metrics.create_rejected.inc();
        BrokerError::Capacity(e)
    }

    /// Records a new session and starts its watcher. A session whose record cannot be
    /// written is ended at once: no one could find it.
    async fn register(
        &self,
        id: String,
        tenant: Tenant,
        request: NewSession,
        backing: Backing,
        profile: Option<ProfileBinding>,
    ) -> Result<Arc<Session>, BrokerError> {
        // What ends the session from below: its browser exiting (for a context, the client
        // closing it) and a shared browser's crash. An external browser's exit is not ours
        // to watch: tokens that never fire.
        let (exited, crashed, traffic) = match &backing {
            Backing::Managed(lease) => {
                let traffic = lease
                    .browser
                    .gateway
                    .assign(session_span(&id, &tenant), request.options.proxy.clone());
                (lease.browser.exited(), CancellationToken::new(), Some(traffic))
            }
            Backing::External(_) => (CancellationToken::new(), CancellationToken::new(), None),
            Backing::Context(context) => (
                context.scope.close_requested.clone(),
                context.shared.browser.exited(),
                Some(context.traffic.clone()),
            ),
        };
        let wants_identity =
            !request.options.identity.is_empty() && matches!(backing, Backing::Managed(_) | Backing::Context(_));
        // The browser whose downloads are the session's: all of a managed one, a context of
        // a shared one; a user's own browser keeps its own.
        let downloads = match &backing {
            Backing::Managed(lease) => Some(Downloads {
                ws_url: lease.browser.ws_url(),
                context: None,
                dir: lease.browser.downloads.clone(),
            }),
            // A shared browser's downloads directory holds one directory per session.
            Backing::Context(context) => Some(Downloads {
                ws_url: context.shared.browser.ws_url(),
                context: Some(context.scope.context.clone()),
                dir: context.shared.browser.downloads.join(&id),
            }),
            Backing::External(_) => None,
        };
        let init = SessionInit {
            id: id.clone(),
            tenant,
            ttl: request.ttl,
            screen: request.screen,
            metadata: request.metadata,
            backing,
            profile,
            options: SessionOptions {
                byo: request.external_url.is_some(),
                ..request.options.view()
            },
            traffic,
        };
        let session = Arc::new(Session::new(init, &self.node));
        // The identity is on the browser's pages before anyone can connect to them.
        if wants_identity
            && let Err(e) = identity::keep(
                &session.upstream,
                &self.egress,
                request.options.identity,
                session.ended().clone(),
            )
            .await
        {
            let _ = session.end(EndReason::Terminated);
            session
                .span()
                .in_scope(|| tracing::warn!(error = %e, "session refused: its identity could not be applied"));
            return Err(BrokerError::BrowserSetup(e));
        }
        let tabs_of = downloads.clone();
        if let Err(e) = self
            .start_artifacts(&session, downloads, request.options.record, request.options.log_cdp)
            .await
        {
            let _ = session.end(EndReason::Terminated);
            session
                .span()
                .in_scope(|| tracing::warn!(error = %e, "session refused: its downloads or recording could not start"));
            return Err(e);
        }
        if let Some(Downloads { ws_url, context, .. }) = tabs_of.filter(|_| self.config.max_targets_per_session > 0) {
            let cap = TabCap {
                ws_url,
                context,
                max: self.config.max_targets_per_session,
                metrics: self.metrics.clone(),
                until: session.ended().clone(),
            };
            if let Err(e) = tab_cap::start(cap, &self.tracker).instrument(session.span()).await {
                let _ = session.end(EndReason::Terminated);
                session
                    .span()
                    .in_scope(|| tracing::warn!(error = %e, "session refused: its tabs could not be watched"));
                return Err(BrokerError::BrowserSetup(e));
            }
        }
        // Running before its record exists, so that the reconciler never takes the record
        // for one whose session has gone.
        self.running.insert(id.clone(), session.clone());
        if let Err(e) = self.records.try_save(&session).await {
            self.running.remove(&id);
            session.forget();
            let _ = session.end(EndReason::Terminated);
            session
                .span()
                .in_scope(|| tracing::warn!(error = %e, "session refused: its record cannot be written"));
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, std::time::Instant::now());
            return Err(e.into());
        }
        self.metrics.sessions_created.inc();
        let span = session.span();
        if request.options.idle_timeout > 0 {
            let idle = Duration::from_secs(request.options.idle_timeout);
            self.tracker
                .spawn(end_when_idle(session.clone(), idle, self.metrics.clone()).instrument(span.clone()));
        }
        self.tracker.spawn(
            watch_session(
                session.clone(),
                exited,
                crashed,
                self.metrics.clone(),
                self.records.clone(),
                self.running.clone(),
                self.shutdown.clone(),
            )
            .instrument(span.clone()),
        );
        span.in_scope(|| tracing::info!(external = session.upstream.external, "session created"));
        Ok(session)
    }

    /// Watches the session's downloads (into its files) and starts its recording.
    async fn start_artifacts(
        &self,
        session: &Arc<Session>,
        downloads: Option<Downloads>,
        record: bool,
        log_cdp: bool,
    ) -> Result<(), BrokerError> {
        if downloads.is_none() && !record && !log_cdp {
            return Ok(());
        }
        let files_error =
            |e: std::io::Error| BrokerError::BrowserSetup(CdpError::Http(format!("the session's files: {e}")));
        let files = self.artifacts.session(&session.id).map_err(files_error)?;
        if log_cdp {
            let log = CdpLog::start(files.clone(), session.ended().clone(), &self.tracker).map_err(files_error)?;
            let _ = session.cdp_log.set(Arc::new(log));
        }
        if let Some(Downloads { ws_url, context, dir }) = downloads {
            std::fs::create_dir_all(&dir).map_err(files_error)?;
            let _ = session.browser_downloads.set(dir.clone());
            if let Some(scope) = &session.upstream.scope {
                let _ = scope.download_dir.set(dir.to_string_lossy().into_owned());
                let _ = scope.files_dir.set(dir.join(".uploads"));
            }
            let watch = artifacts::downloads::Watch {
                ws_url,
                context,
                dir,
                files: files.clone(),
                client_left: session.connection_closed.clone(),
                until: session.ended().clone(),
            };
            artifacts::downloads::start(watch, &self.tracker)
                .instrument(session.span())
                .await
                .map_err(BrokerError::BrowserSetup)?;
        }
        if record && let Some(ffmpeg) = &self.artifacts.ffmpeg {
            let spec = artifacts::recording::Spec {
                ffmpeg: ffmpeg.clone(),
                fps: self.artifacts.limits.recording_fps,
                max_bytes: self.artifacts.limits.max_recording_bytes,
                width: session.screen.width,
                height: session.screen.height,
                files,
                metrics: self.metrics.clone(),
            };
            let until = session.ended().clone();
            artifacts::recording::start(&session.upstream, &self.egress, spec, until, &self.tracker)
                .instrument(session.span())
                .await
                .map_err(|e| BrokerError::BrowserSetup(CdpError::Http(e.to_string())))?;
        }
        Ok(())
    }

    /// The session running here under `id`, if it is `tenant`'s (any tenant's for `None`).
    pub fn running_session(&self, tenant: Option<&Tenant>, id: &str) -> Option<Arc<Session>> {
        self.running
            .get(id)
            .map(|s| s.clone())
            .filter(|s| tenant.is_none_or(|t| &s.tenant == t))
    }

    /// The record of a session of `tenant`, freshest from its handle if it runs here.
    pub async fn record(&self, tenant: &Tenant, id: &str) -> Result<SessionRecord, SessionError> {
        if let Some(session) = self.running_session(Some(tenant), id) {
            return Ok(session.record());
        }
        self.records
            .store()
            .get_for(tenant, id)
            .await?
            .ok_or(SessionError::NotFound)
    }

    /// A page of a tenant's sessions, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let mut page = self.records.store().list(query).await?;
        for record in &mut page.records {
            if let Some(session) = self.running_session(None, &record.id) {
                *record = session.record();
            }
        }
        Ok(page)
    }

    /// Why this node should not be sent new sessions now, if it should not: it is
    /// stopping, or it has no warm browser and the browser does not start.
    pub fn not_ready(&self) -> Option<String> {
        if self.shutdown.is_cancelled() {
            Some("The broker is shutting down".into())
        } else if let Err(reason) = self.pool.confinement() {
            Some(format!(
                "Browsers cannot be confined ({reason}), so none start (allow_unconfined_browsers overrides)"
            ))
        } else if !self.pool.ready() {
            Some("No browser is ready and the browser does not start (see the log)".into())
        } else {
            None
        }
    }

    /// How browsers are confined, for `/ready`.
    pub fn confinement(&self) -> String {
        match self.pool.confinement() {
            Ok(confinement) => confinement.describe(),
            Err(reason) => format!("refused: {reason}"),
        }
    }

    /// How many sessions use `profile` now: on this node, or in a cluster on every node
    /// (from the store's index of active sessions by profile).
    pub async fn profile_users(&self, profile: &Profile) -> Result<usize, StoreError> {
        match self.nodes {
            None => Ok(profile.users()),
            Some(_) => self.records.store().profile_users(&profile.id).await,
        }
    }

    /// Deletes a profile no session uses, on any node.
    pub async fn delete_profile(&self, tenant: &Tenant, id: &str) -> Result<(), BrokerError> {
        let users = self.profile_users(&*self.profiles.get(tenant, id).await?).await?;
        if users > 0 {
            return Err(ProfileError::InUse(users).into());
        }
        Ok(self.profiles.delete(tenant, id).await?)
    }

    /// The active session `id` (of `tenant`, if given): the one lookup that the API's
    /// changes, the proxy, live view and actions make.
    pub async fn active(&self, tenant: Option<&Tenant>, id: &str) -> Result<Arc<Session>, SessionError> {
        if let Some(session) = self.running_session(tenant, id) {
            return match session.status() {
                Status::Active => Ok(session),
                ended => Err(SessionError::Ended(ended)),
            };
        }
        let record = self.records.store().get(id).await?;
        match record.filter(|r| tenant.is_none_or(|t| &r.tenant == t)) {
            Some(r) if r.status != Status::Active => Err(SessionError::Ended(r.status)),
            _ => Err(SessionError::NotFound),
        }
    }

    /// Ends a session on request and waits (bounded) for its profile save; answers its
    /// status if it had already ended.
    pub async fn terminate(&self, session: &Arc<Session>) -> Result<(), Status> {
        session.end_counted(EndReason::Terminated, || {
            self.metrics.sessions_terminated.inc();
        })?;
        // Written before the caller hears it is done, should the broker die next.
        self.records.save(session).await;
        session.span().in_scope(|| tracing::info!("session terminated"));
        // "Terminate the session to save the authentication state": answer once it is saved.
        if tokio::time::timeout(SAVE_WAIT, session.profile_released().cancelled())
            .await
            .is_ok()
        {
            self.records.save(session).await;
        }
        Ok(())
    }

    /// Moves an active session's expiry and merges metadata in.
    pub async fn update(
        &self,
        session: &Session,
        ttl: Option<Duration>,
        metadata: Option<Map<String, Value>>,
    ) -> Result<(), Status> {
        session.update(ttl, metadata)?;
        self.records.save(session).await;
        Ok(())
    }

    /// Ends the session if it runs, and forgets it.
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), SessionError> {
        match self.running_session(Some(tenant), id) {
            Some(session) => {
                // Forgotten first, so that no later write of its record brings it back.
                session.forget();
                let _ = self.terminate(&session).await;
                self.running.remove(id);
            }
            None => {
                self.records
                    .store()
                    .get_for(tenant, id)
                    .await?
                    .ok_or(SessionError::NotFound)?;
            }
        }
        self.records.remove(tenant, id).await;
        self.artifacts.remove(id);
        Ok(())
    }

    /// A session's `cdp_url` and live view links, each with a token valid until it expires.
    pub fn session_urls(&self, record: &SessionRecord) -> SessionUrls {
        let token = |scope| {
            self.tokens
                .mint(&record.id, &record.tenant, scope, record.created_at, record.expires_at)
        };
        let live = |scope| format!("{}/live/{}?token={}", self.urls.http, record.id, token(scope));
        SessionUrls {
            cdp: format!(
                "{}/devtools/browser/{}?token={}",
                self.urls.ws,
                record.id,
                token(Scope::Cdp)
            ),
            live: live(Scope::Live),
            live_read_only: live(Scope::LiveReadOnly),
        }
    }

    pub fn active_sessions(&self) -> usize {
        self.running.iter().filter(|s| s.status() == Status::Active).count()
    }

    pub fn render_metrics(&self) -> String {
        let sessions_context = self
            .running
            .iter()
            .filter(|s| s.status() == Status::Active && s.upstream.scope.is_some())
            .count();
        self.metrics.render(&Gauges {
            sessions_active: self.active_sessions(),
            pool_idle: self.pool.idle_count(),
            sessions_context,
            shared_browsers: self.shared.browsers().into_iter().map(|b| (b.id, b.contexts)).collect(),
            artifacts: self.artifacts.usage(),
        })
    }

    /// Ends every session, waits (bounded) for connections and browsers to wind down.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        if let Some(nodes) = &self.nodes
            && let Err(e) = nodes.leave(&self.node).await
        {
            tracing::warn!(error = %e, "could not leave the cluster cleanly");
        }
        for entry in self.running.iter() {
            let _ = entry.end(EndReason::Shutdown);
        }
        // Their contexts are being disposed; the shared browsers go when that is done.
        self.shared.close_all();
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_timeout(), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out with tasks still running");
        }
    }
}

impl TenantUsage {
    fn add(&mut self, record: &SessionRecord, now: SystemTime, files: Option<&artifacts::SessionFiles>) {
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

/// A hold on a profile for work on a copy of it, released even if the request doing the
/// work is dropped halfway (its client gone): else the profile would stay in use, or
/// locked to its writer, until the broker restarts.
struct Held {
    hold: Option<ProfileUse>,
    profiles: Arc<Profiles>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let profiles = self.profiles.clone();
            runtime.spawn(async move { profiles.end_use(hold).await });
        }
    }
}

/// This node's name and its session store: Redis when `redis_url` is set (the node named
/// by `node_id`, or by a name generated once into the data directory), else this node's disk.
async fn open_store(config: &Config) -> Result<(String, Arc<dyn SessionStore>, Option<Nodes>), StartError> {
    let dir_error = |source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    if config.redis_url.is_empty() {
        let retention = Duration::from_secs(config.retention_secs);
        let store = LocalStore::open(config.data_dir.join("sessions"), retention).map_err(dir_error)?;
        return Ok((String::new(), Arc::new(store), None));
    }
    let node = if config.node_id.is_empty() {
        load_or_create_secret(&config.data_dir.join("node_id"), "node-", 6)
            .map_err(dir_error)?
            .0
    } else {
        config.node_id.clone()
    };
    let store = RedisStore::connect(&config.redis_url, &config.redis_prefix).await?;
    tracing::info!(node = %node, "session records in Redis");
    let (connection, prefix) = store.connection();
    let key = ClusterKey::new(&config.cluster_secret);
    Ok((node, Arc::new(store), Some(Nodes::new(connection, prefix, key))))
}

/// The profile store `profile_store` names; in a cluster, with writer leases in Redis.
fn open_profiles(config: &Config, nodes: Option<&Nodes>) -> std::io::Result<Profiles> {
    let data = ProfileData::open(&config.profile_store, config.data_dir.join("profiles"))?;
    let locks = nodes.map(|n| {
        let (connection, prefix) = n.connection();
        ProfileLocks::new(connection, prefix, config.profile_lease())
    });
    Profiles::open(data, locks)
}

/// `node_url`, or the bound address when it is not set.
fn node_url(config: &Config, bound: SocketAddr) -> String {
    if !config.node_url.is_empty() {
        return config.node_url.trim_end_matches('/').to_owned();
    }
    let host = if bound.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), bound.port())
    } else {
        bound
    };
    format!("http://{host}")
}

/// The configured Chromes, or the first found: the shared browsers' is the headless shell
/// when it is installed and none is configured.
fn chrome_paths(config: &Config) -> Result<Chromes, StartError> {
    let configured = |key, path: &str| {
        let path = PathBuf::from(path);
        match path.exists() {
            true => Ok(path),
            false => Err(StartError::ChromeMissing { key, path }),
        }
    };
    let own = match config.chrome_path.as_str() {
        "" => find_chrome().ok_or(StartError::NoChrome)?,
        path => configured("chrome_path", path)?,
    };
    let shared = match config.context_chrome_path.as_str() {
        "" => find_headless_shell().unwrap_or_else(|| own.clone()),
        path => configured("context_chrome_path", path)?,
    };
    Ok(Chromes { own, shared })
}

/// The configured secrets, or those kept in the data directory (made on first start).
/// Where a session's downloads are watched: its browser, its context in it (a shared
/// browser), and the directory Chrome writes them to (which the browser may write).
#[derive(Clone)]
struct Downloads {
    ws_url: String,
    context: Option<String>,
    dir: std::path::PathBuf,
}

fn load_secrets(config: &Config) -> std::io::Result<Secrets> {
    let mut api_keys = config.api_keys.clone();
    if api_keys.is_empty() {
        let path = config.data_dir.join("api_key");
        let (key, created) = load_or_create_secret(&path, "cdpg_", 24)?;
        if created {
            // The one time a secret is printed: a newcomer needs it to make a first call.
            println!("cdpgate: generated an API key (kept in {}): {key}", path.display());
        } else {
            println!("cdpgate: using the API key kept in {}", path.display());
        }
        api_keys.push(key);
    }
    let token_secret = if !config.token_secret.is_empty() {
        config.token_secret.clone()
    } else if !config.cluster_secret.is_empty() {
        // Every node derives the same one; none is kept anywhere.
        ClusterKey::new(&config.cluster_secret).token_secret()
    } else {
        load_or_create_secret(&config.data_dir.join("token_secret"), "", 32)?.0
    };
    Ok(Secrets { api_keys, token_secret })
}

/// Ends the session at its TTL, or when its browser exits; follows TTL extensions. Once
/// its end (and profile save) is written down, the session no longer runs here.
async fn watch_session(
    session: Arc<Session>,
    browser_exited: CancellationToken,
    browser_crashed: CancellationToken,
    metrics: Arc<Metrics>,
    records: Arc<Recorder>,
    running: Arc<DashMap<String, Arc<Session>>>,
    shutdown: CancellationToken,
) {
    end_on_time(&session, browser_exited, browser_crashed, &metrics, shutdown.clone()).await;
    records.save(&session).await;
    // The profile save, if any, finishes later; its outcome belongs in the record too.
    session.profile_released().cancelled().await;
    // The end must be written down before the session stops running here: a store that
    // does not answer now is tried again (until shutdown).
    while let Err(e) = records.try_save(&session).await {
        tracing::warn!(session = %session.id, error = %e, "the session's end is not recorded yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    running.remove_if(&session.id, |_, s| Arc::ptr_eq(s, &session));
}

/// Returns once the session has ended, having ended it at its TTL, when its browser
/// exited, or at shutdown.
async fn end_on_time(
    session: &Arc<Session>,
    browser_exited: CancellationToken,
    browser_crashed: CancellationToken,
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
                    let count = || {
                        metrics.sessions_expired.inc();
                    };
                    if session.end_counted(EndReason::Expired, count).is_ok() {
                        tracing::info!(session = %session.id, "session expired");
                    }
                    return;
                }
            }
            _ = session.deadline_moved().notified() => {}
            _ = browser_exited.cancelled() => {
                let count = || {
                    metrics.sessions_terminated.inc();
                };
                if session.end_counted(EndReason::BrowserExited, count).is_ok() {
                    tracing::info!(session = %session.id, "session ended: its browser exited");
                }
                return;
            }
            _ = browser_crashed.cancelled() => {
                let count = || {
                    metrics.sessions_terminated.inc();
                };
                if session.end_counted(EndReason::BrowserCrashed, count).is_ok() {
                    tracing::warn!(session = %session.id, "session ended: its shared browser crashed");
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

/// Ends the session once nothing has used it (no CDP client, no live viewer, no action)
/// for `idle`. Sampled twice a second; a connection that opened and closed in between
/// still counts, by the session's activity number.
async fn end_when_idle(session: Arc<Session>, idle: Duration, metrics: Arc<Metrics>) {
    let mut since = tokio::time::Instant::now();
    let mut seen = session.in_use().1;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = session.ended().cancelled() => return,
        }
        let (busy, activity) = session.in_use();
        if busy || activity != seen {
            since = tokio::time::Instant::now();
            seen = activity;
            continue;
        }
        if since.elapsed() >= idle {
            let count = || {
                metrics.sessions_idle.inc();
                metrics.sessions_expired.inc();
            };
            if session.end_counted(EndReason::Idle, count).is_ok() {
                tracing::info!(idle_secs = idle.as_secs(), "session ended: idle");
            }
            return;
        }
    }
}

/// Tells the cluster this node is alive, every third of the heartbeat's life.
async fn heartbeat(broker: std::sync::Weak<Broker>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_TTL / 3) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(b) = broker.upgrade() else { return };
        b.beat().await;
    }
}

impl Broker {
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.node.clone(),
            url: self.node_url.clone(),
            max_sessions: self.config.max_sessions,
            free: self.pool.free_slots(),
            sessions: self.active_sessions(),
            heartbeat_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }

    async fn beat(&self) {
        let Some(nodes) = &self.nodes else { return };
        if let Err(e) = nodes.beat(&self.node_info()).await {
            tracing::warn!(error = %e, "heartbeat not recorded");
        }
    }

    /// The cluster's nodes as the store knows them (this node alone without Redis).
    pub async fn cluster(&self) -> Result<Vec<(NodeInfo, bool)>, StoreError> {
        match &self.nodes {
            Some(nodes) => nodes.all().await,
            None => Ok(vec![(self.node_info(), true)]),
        }
    }

    /// What each API key uses: its sessions from the store (every node's, within the
    /// retention), live counters for those running here, files and recordings on this
    /// node. Reads every kept record: an operator's call, not a client's.
    pub async fn tenant_usage(&self) -> Result<Vec<TenantUsage>, StoreError> {
        const PAGE: usize = 500;
        let now = SystemTime::now();
        let mut usage = Vec::new();
        for tenant in self.keys.tenants() {
            let mut line = TenantUsage {
                tenant: tenant.to_string(),
                ..TenantUsage::default()
            };
            let mut offset = 0;
            loop {
                let query = ListQuery {
                    tenant: tenant.clone(),
                    status: None,
                    offset,
                    limit: PAGE,
                };
                let page = self.list(&query).await?;
                for record in &page.records {
                    line.add(record, now, self.artifacts.existing(&record.id).as_deref());
                }
                offset += page.records.len();
                if page.records.is_empty() || offset >= page.total {
                    break;
                }
            }
            usage.push(line);
        }
        Ok(usage)
    }

    /// Where to send a request about session `id`: the address of the live node that runs
    /// it, when that is not this node.
    pub async fn owner_url(&self, id: &str, ended_too: bool) -> Option<String> {
        let nodes = self.nodes.as_ref()?;
        if self.running.contains_key(id) {
            return None;
        }
        let record = self.records.store().get(id).await.ok().flatten()?;
        if record.node == self.node || (record.status != Status::Active && !ended_too) {
            return None;
        }
        nodes.alive(&record.node).await.ok().flatten().map(|n| n.url)
    }
}

/// How long the reaper's lead lasts without renewal.
const LEAD_LEASE: Duration = Duration::from_secs(6);

/// Ends the sessions of nodes whose heartbeat has lapsed, within a heartbeat TTL and a
/// period of the node going quiet; only the node that leads does it.
async fn reap_lost_nodes(broker: std::sync::Weak<Broker>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_TTL / 3) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(b) = broker.upgrade() else { return };
        if let Err(e) = b.reap().await {
            tracing::debug!(error = %e, "reaping deferred: Redis is unavailable");
        }
    }
}

impl Broker {
    async fn reap(&self) -> Result<(), StoreError> {
        let Some(nodes) = &self.nodes else { return Ok(()) };
        if !nodes.lead(&self.node, LEAD_LEASE).await? {
            return Ok(());
        }
        let store = self.records.store();
        for (node, alive) in nodes.all().await? {
            if alive || node.id == self.node {
                continue;
            }
            for id in store.active_on(&node.id).await? {
                if let Some(record) = store.get(&id).await?
                    && record.status == Status::Active
                    && record.node == node.id
                {
                    tracing::warn!(session = %id, tenant = %record.tenant, node = %node.id, "node lost: ending its session");
                    store
                        .put(&record.ended_elsewhere(EndReason::NodeLost, SystemTime::now()))
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// How often a node compares the sessions the store says it runs with those it runs.
const RECONCILE_PERIOD: Duration = Duration::from_secs(2);
/// How long a refused create is watched for a late write.
const REFUSED_WATCH: Duration = Duration::from_secs(600);

/// Keeps the store true to this node: a record of a create that was refused (its write
/// timed out, then landed anyway) is removed; a record this node says is active but whose
/// session no longer runs here is ended.
async fn reconcile_records(broker: std::sync::Weak<Broker>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_PERIOD) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(b) = broker.upgrade() else { return };
        if let Err(e) = b.reconcile().await {
            tracing::debug!(error = %e, "reconcile deferred: the session store is unavailable");
        }
    }
}

impl Broker {
    async fn reconcile(&self) -> Result<(), StoreError> {
        let store = self.records.store();
        let running: Vec<Arc<Session>> = self.running.iter().map(|s| s.clone()).collect();
        let listed = store.active_on(&self.node).await?;
        // A session ended by another node (this one was taken for lost) ends here too: its
        // browser must not outlive its record. Ending it elsewhere took it off this node's
        // active set, so only the few missing from the set are read (one read per session
        // every period would be most of a large cluster's load on Redis).
        let listed_set: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
        for session in running {
            if session.status() == Status::Active
                && !listed_set.contains(session.id.as_str())
                && let Some(record) = store.get(&session.id).await?
                && record.status != Status::Active
            {
                let reason = record.end_reason.unwrap_or(EndReason::NodeLost);
                session
                    .span()
                    .in_scope(|| tracing::warn!(reason = reason.as_str(), "ended by another node"));
                let _ = session.end(reason);
            }
        }
        let refused: Vec<String> = {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            refused.retain(|_, at| at.elapsed() < REFUSED_WATCH);
            refused.keys().cloned().collect()
        };
        for id in listed {
            if self.running.contains_key(&id) {
                continue;
            }
            if refused.contains(&id) {
                // Only this node ever knew of it: its record says whose it was.
                let tenant = store.get(&id).await?.map(|r| r.tenant.to_string()).unwrap_or_default();
                tracing::info!(session = %id, tenant = %tenant, "removing the late record of a refused create");
                store.remove(&id).await?;
                continue;
            }
            if let Some(record) = store.get(&id).await?
                && record.status == Status::Active
                && record.node == self.node
                && !self.shutdown.is_cancelled()
            {
                store.put(&record.ended_by_restart(SystemTime::now())).await?;
            }
        }
        Ok(())
    }
}

impl Broker {
    /// Removes the files and recordings of sessions whose records are gone (swept by
    /// another node, or while this one was down).
    async fn sweep_artifacts(&self) {
        for id in self.artifacts.session_ids() {
            if self.running.contains_key(&id) {
                continue;
            }
            if let Ok(None) = self.records.store().get(&id).await {
                self.artifacts.remove(&id);
            }
        }
    }
}

/// Forgets ended sessions once they are older than the retention period.
async fn sweep_records(broker: std::sync::Weak<Broker>, shutdown: CancellationToken) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let retention = Duration::from_secs(b.config.retention_secs);
        match b.records.store().sweep(SystemTime::now(), retention).await {
            Ok(swept) => swept.iter().for_each(|id| b.artifacts.remove(id)),
            Err(e) => tracing::warn!(error = %e, "could not sweep old session records"),
        }
        b.sweep_artifacts().await;
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
