//! Building the broker from its configuration: the data directory, secrets, stores, browsers and
//! the background loops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::Actions;
use crate::action::cache::ActionCache;
use crate::action::model::ModelClient;
use crate::artifacts::{self, Artifacts};
use crate::auth::{ApiKeys, ClusterKey, Tokens, load_or_create_secret};
use crate::browser::ad_blocker::AdBlocker;
use crate::browser::confine::Confinement;
use crate::browser::egress::Egress;
use crate::browser::launcher::LaunchSettings;
use crate::browser::pool::Pool;
use crate::browser::shared::{SharedBrowsers, SharedSettings};
use crate::browser::{Chromes, Launcher, find_chrome, find_headless_shell};
use crate::config::Config;
use crate::limits::CreateLimiter;
use crate::metrics::Metrics;
use crate::profile::copy::ProfileCopies;
use crate::quota::Quotas;
use crate::session::Recorder;
use crate::store::SessionStore;
use crate::store::extension_catalog::Catalog;
use crate::store::extensions::{Extensions, Shared as ExtensionsShared};
use crate::store::local::LocalStore;
use crate::store::nodes::{HEARTBEAT_TTL, Nodes};
use crate::store::pool_definitions::PoolDefinitions;
use crate::store::profile_data::ProfileData;
use crate::store::profile_locks::ProfileLocks;
use crate::store::profiles::Profiles;
use crate::store::redis::RedisStore;
use crate::values::BrowserKind;
use crate::webhooks::{Settings as WebhookSettings, Webhooks};

use super::cluster::{ORPHAN_ZIP_PERIOD, RECONCILE_PERIOD};
use super::error::StartError;
use super::lifecycle::every;
use super::{Broker, PublicUrls};

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
        let default_browser = match (config.default_browser.as_str(), &chromes.shell) {
            ("full", _) | ("", None) => BrowserKind::Full,
            (_, Some(_)) => BrowserKind::Shell,
            (_, None) => return Err(StartError::NoShell),
        };
        tracing::info!(
            chrome = %chromes.own.display(),
            shell = ?chromes.shell,
            shared = %chromes.shared.display(),
            default = default_browser.as_str(),
            "browsers"
        );
        if crate::browser::running_as_root() {
            tracing::warn!(
                "running as root: browsers start with --no-sandbox (Chrome will not sandbox a root \
                 process); run cdpgate as an unprivileged user to sandbox them"
            );
        } else {
            tracing::info!("running as an unprivileged user: browsers start with Chrome's sandbox on");
            if config.single_process_shell && chromes.shell.is_some() {
                tracing::warn!(
                    "single_process_shell: process sessions' pages run in their browser's process, \
                     outside Chrome's sandbox (the kernel's confinement still holds)"
                );
            }
        }
        let confinement = Confinement::decide(Confinement::probe(), config.allow_unconfined_browsers);
        if config.single_process_shell {
            match &confinement {
                Ok(c) if c.holds_a_whole_browser() => {}
                Ok(c) => return Err(StartError::SingleProcessUnconfined(c.describe())),
                Err(reason) => return Err(StartError::SingleProcessUnconfined(format!("off: {reason}"))),
            }
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
                single_process_shell: config.single_process_shell,
                scratch_root: data_dir.join("browsers"),
                launch_timeout: config.launch_timeout(),
                confinement,
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
        // In a cluster every node reads the same definitions, from Redis.
        let pool_definitions = match &nodes {
            Some(n) => {
                let (connection, prefix) = n.connection();
                PoolDefinitions::shared(connection, &prefix, ClusterKey::new(&config.cluster_secret))
            }
            None => PoolDefinitions::open(data_dir.join("pools")).map_err(dir_error)?,
        };
        // In a cluster the records are in Redis and the zips beside the profiles.
        let shared_extensions = nodes.as_ref().map(|n| {
            let (connection, prefix) = n.connection();
            let key = ClusterKey::new(&config.cluster_secret);
            ExtensionsShared::new(Catalog::new(connection, prefix, key, node.clone()), profiles.data())
        });
        let extensions = Arc::new(
            Extensions::open(
                data_dir.join("extensions"),
                config.max_extensions_per_key,
                config.max_extension_bytes_per_key,
                shared_extensions,
            )
            .map_err(dir_error)?,
        );
        if let Err(e) = extensions.keep_in_step().await {
            tracing::warn!(error = %e, "the cluster's extensions could not be read at start; retried every few seconds");
        }
        let ended = store.end_left_active(&node, SystemTime::now()).await?;
        if ended > 0 {
            tracing::info!(
                ended,
                "sessions left active by this node's previous run recorded as ended"
            );
        }
        crate::browser::launcher::check_temp_dir(&std::env::temp_dir()).map_err(StartError::TempDir)?;
        let lists: Vec<PathBuf> = config.adblock_lists.iter().map(PathBuf::from).collect();
        let ads = AdBlocker::load(&lists).map_err(StartError::AdLists)?.map(Arc::new);
        if let Some(ads) = &ads {
            tracing::info!(lists = lists.len(), rules = ads.rules, "ad and tracker lists loaded");
        }
        let events = crate::events::Events::new(crate::events::dir_in(&data_dir), config.max_events_per_session)
            .map_err(dir_error)?;
        close_event_logs(&events, store.as_ref()).await;
        let captures = crate::capture::Captures::new(
            crate::capture::dir_in(&data_dir),
            crate::capture::Limits {
                log_entries: config.max_log_entries_per_session,
                log_bytes: config.max_log_bytes_per_session,
                har_entries: config.max_har_entries_per_session,
                body_bytes: config.max_har_body_bytes,
                bodies_bytes: config.max_har_bodies_bytes_per_session,
            },
        )
        .map_err(dir_error)?;
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
        let webhook_egress = Egress::for_webhooks(
            &config.webhook_allow,
            own_ports.clone(),
            broker_addr,
            config.byo_timeout(),
        );
        let webhooks = Webhooks::new(
            WebhookSettings {
                dir: data_dir.join("webhooks"),
                keys: config.webhooks.clone(),
                timeout: config.webhook_timeout(),
                retry_max: Duration::from_millis(config.webhook_retry_max_ms),
            },
            events.clone(),
            Arc::new(webhook_egress),
            tracker.clone(),
            shutdown.clone(),
        )
        .map_err(dir_error)?;
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
                spares_burst: config.context_spares_burst,
                spares_quiet: Duration::from_secs(config.context_spares_burst_seconds),
                warm_browsers: config.context_warm_browsers,
            },
            browser_egress.clone(),
            metrics.clone(),
        ));
        let pool = Arc::new(Pool::new(
            launcher,
            config.default_screen(),
            default_browser,
            config.pool_size,
            config.max_sessions,
            config.queue_timeout(),
            metrics.clone(),
        ));
        tracker.spawn(pool.clone().run_refill(shutdown.clone()));
        tracker.spawn(shared.clone().run_warm(shutdown.clone()));

        let broker = Arc::new_cyclic(|me| Broker {
            me: me.clone(),
            named: Default::default(),
            pool_definitions,
            urls: PublicUrls::new(&config.public_url, bound, config.tls_enabled()),
            tls,
            keys: ApiKeys::new(&secrets.api_keys),
            admin: (!config.admin_key.is_empty()).then(|| ApiKeys::new(std::slice::from_ref(&config.admin_key))),
            tokens: Tokens::new(secrets.token_secret.as_bytes()),
            egress,
            browser_egress,
            create_limiter: CreateLimiter::new(config.creates_per_minute),
            ads,
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
            extensions,
            pool,
            shared,
            actions: Actions {
                cache: ActionCache::new(&config.data_dir),
                model: model_client(&config),
                metrics: metrics.clone(),
            },
            metrics,
            artifacts,
            events,
            captures,
            webhooks,
            tracker: tracker.clone(),
            shutdown,
            config,
        });
        // Deliveries a previous run left unfinished.
        broker.webhooks.resume();
        let retention = Duration::from_secs(broker.config.retention_secs);
        every(
            &broker,
            retention.clamp(Duration::from_secs(1), Duration::from_secs(60)),
            async |b| b.sweep().await,
        );
        every(&broker, crate::capture::FLUSH_PERIOD, async |b| {
            let captures = b.captures.clone();
            let _ = tokio::task::spawn_blocking(move || captures.flush()).await;
        });
        if broker.nodes.is_some() {
            broker.beat().await;
            every(&broker, HEARTBEAT_TTL / 3, async |b| b.beat().await);
            every(&broker, HEARTBEAT_TTL / 3, async |b| {
                if let Err(e) = b.reap().await {
                    tracing::debug!(error = %e, "reaping deferred: Redis is unavailable");
                }
            });
            every(&broker, RECONCILE_PERIOD, async |b| b.refresh_pool_share().await);
            every(&broker, RECONCILE_PERIOD, async |b| {
                if let Err(e) = b.extensions.keep_in_step().await {
                    tracing::debug!(error = %e, "extensions not kept in step: Redis or the profile store is unavailable");
                }
            });
            every(&broker, ORPHAN_ZIP_PERIOD, async |b| b.sweep_extension_zips().await);
            every(&broker, RECONCILE_PERIOD, async |b| {
                if let Err(e) = b.reconcile().await {
                    tracing::debug!(error = %e, "reconcile deferred: the session store is unavailable");
                }
            });
        }
        Ok(broker)
    }
}

/// Writes the `ended` of every session whose events a previous run left open (it died, or
/// its sessions were recorded as ended at this start): readers and webhooks hear the end.
async fn close_event_logs(events: &Arc<crate::events::Events>, store: &dyn SessionStore) {
    for id in events.session_ids() {
        if let Ok(Some(record)) = store.get(&id).await
            && record.status != crate::store::Status::Active
        {
            let data = serde_json::json!({
                "status": record.status,
                "end_reason": record.end_reason,
            });
            events.close_left_open(&id, &record.tenant, data);
        }
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
    Ok(Profiles::open(data, locks)?.with_max_bytes(config.max_profile_bytes))
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
    let shell = find_headless_shell();
    let shared = match config.context_chrome_path.as_str() {
        "" => shell.clone().unwrap_or_else(|| own.clone()),
        path => configured("context_chrome_path", path)?,
    };
    Ok(Chromes { own, shell, shared })
}

/// The configured secrets, or those kept in the data directory (made on first start).
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
