//! Creating a session: quotas and rate limits, a browser from the pool, a shared browser's
//! context, a profile copy or a user's own endpoint, then its record and its watchers.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::artifacts::cdp_log::CdpLog;
use crate::artifacts::downloads::SessionDownloads;
use crate::artifacts::{self};
use crate::auth::{Tenant, random_hex};
use crate::browser::byo::{self};
use crate::browser::cdp::CdpError;
use crate::browser::devices;
use crate::browser::egress::EgressError;
use crate::browser::fingerprint::{self, OwnVersion};
use crate::browser::keeper;
use crate::browser::launcher::Use;
use crate::browser::pool::PoolError;
use crate::browser::shared::SharedBrowser;
use crate::browser::tab_cap::{self, TabCap, Tabs};
use crate::browser::watch::Watch;
use crate::events::EventType;
use crate::profile::{cookies, copy as profile_copy};
use crate::quota::{Kind, QuotaExceeded, Reservation};
use crate::session::{Backing, ProfileBinding, Session, SessionInit, session_span};
use crate::store::extensions::ExtensionUse;
use crate::store::{EndReason, Isolation, ListQuery, SessionOptions, Status};
use crate::values::{BrowserKind, BrowserReason};

use super::Broker;
use super::error::BrokerError;
use super::lifecycle::{end_when_idle, watch_session};
use super::profile_state::Held;
use super::request::{NewSession, RequestedOptions};

/// Where a session's downloads and tabs are watched, and the directory Chrome writes its
/// downloads to (which the browser may write).
#[derive(Clone)]
struct Downloads {
    watched: Watched,
    dir: std::path::PathBuf,
}

#[derive(Clone)]
enum Watched {
    /// A browser all the session's, on connections of the session's own.
    Own { ws_url: String },
    /// A context of a shared browser, by the browser's one context watch.
    Shared {
        shared: Arc<SharedBrowser>,
        context: String,
    },
}

impl Broker {
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
        self.create_placed(tenant, request).await
    }

    /// A create whose place in the tenant's quota is already held.
    pub(super) async fn create_placed(&self, tenant: Tenant, request: NewSession) -> Result<Arc<Session>, BrokerError> {
        self.charge_create(&tenant).await?;
        self.create_admitted(tenant, request).await
    }

    /// One create from `tenant`'s allowance, or the refusal that says when to try again:
    /// for whatever starts a browser for the key (a session, a profile's browser, a pool's
    /// refill asked for by a write).
    pub(super) async fn charge_create(&self, tenant: &Tenant) -> Result<(), BrokerError> {
        self.take_create(tenant).await.map_err(|wait| {
            self.metrics.create_rate_limited.inc();
            BrokerError::RateLimited {
                per_minute: self.config.creates_per_minute,
                retry_after: wait.as_secs() + 1,
            }
        })
    }

    /// A create whose place is held and which the rate limit let through.
    pub(super) async fn create_admitted(
        &self,
        tenant: Tenant,
        request: NewSession,
    ) -> Result<Arc<Session>, BrokerError> {
        if request.options.record && self.artifacts.ffmpeg.is_none() {
            return Err(BrokerError::OptionRefused(
                "record: this node cannot record sessions (ffmpeg is not installed)".into(),
            ));
        }
        let mut request = request;
        request.webhook = self
            .webhooks
            .target_for(&tenant, request.webhook_url.clone(), request.webhook_events.clone())
            .await
            .map_err(|e| BrokerError::OptionRefused(e.to_string()))?;
        let id = format!("sess_{}", random_hex(16));
        if let Some(url) = &request.external_url {
            let upstream = byo::probe(url, &self.egress, self.config.byo_timeout(), self.config.ws_config())
                .await
                .inspect_err(|e| tracing::info!(error = %e, "bring-your-own endpoint refused"))?;
            return self
                .register(id, tenant, request, Backing::External(upstream), None)
                .await;
        }
        self.check_proxy(&request.options).await?;
        let (kind, reason) = self.choose_browser(&request)?;
        request.options.browser = Some(kind);
        request.options.browser_reason = Some(reason);
        if request.options.isolation == Isolation::Context && !request.options.extensions.is_empty() {
            self.extensions.check(&tenant, &request.options.extensions).await?;
            return Err(BrokerError::OptionRefused(
                "extensions need isolation \"process\": a context session shares its browser".into(),
            ));
        }
        // Held from here (and, in a cluster, fetched to this node): a delete of one of
        // them waits for this browser to end.
        let extensions = match request.options.extensions.is_empty() {
            true => None,
            false => Some(self.extensions.hold(&tenant, &request.options.extensions).await?),
        };
        let request = self.pick_fingerprint(&tenant, request).await?;
        if request.options.isolation == Isolation::Context {
            return self.create_in_context(id, tenant, request).await;
        }
        if let Some(profile_id) = &request.profile_id {
            return self
                .create_with_profile(id, tenant, profile_id.clone(), request, extensions)
                .await;
        }
        if extensions.is_some() {
            // A warm browser's command line is fixed: extensions need a launch of their own.
            let lease = self
                .pool
                .acquire_fresh(request.screen, kind, None, extensions)
                .await
                .map_err(|e| self.capacity_error(e))?;
            return self.register(id, tenant, request, Backing::Managed(lease), None).await;
        }
        let lease = self
            .pool
            .acquire_with(request.screen, kind, request.queue)
            .await
            .map_err(|e| self.capacity_error(e))?;
        self.register(id, tenant, request, Backing::Managed(lease), None).await
    }

    /// Refuses an upstream proxy the egress policy does not let browsers reach (a name that
    /// does not resolve now may later: it is the gateway's to refuse then).
    pub(super) async fn check_proxy(&self, options: &RequestedOptions) -> Result<(), BrokerError> {
        if let Some(proxy) = &options.proxy
            && let Err(e) = self.browser_egress.resolve(&proxy.host, proxy.port).await
            && !matches!(e, EgressError::Resolve { .. })
        {
            return Err(BrokerError::OptionRefused(format!("proxy.server: {e}")));
        }
        Ok(())
    }

    /// The Chrome a managed session runs, and why: the one it asked for, else the node's
    /// default, unless it needs what only the full browser does (the headless shell loads
    /// no extensions; a profile is kept in the full browser's format, which the context
    /// sessions' profile helpers read too) or is recorded (the shell shows every tab at
    /// once, so a recording there cannot follow the tab brought to the front; asked for,
    /// the shell records its newest tab). A context session runs on the shared browsers'
    /// executable.
    pub(super) fn choose_browser(&self, request: &NewSession) -> Result<(BrowserKind, BrowserReason), BrokerError> {
        let options = &request.options;
        if options.isolation == Isolation::Context {
            let shared = self.pool.shared_kind();
            if options.browser.is_some_and(|asked| asked != shared) {
                return Err(BrokerError::OptionRefused(format!(
                    "browser: context sessions run on the shared browsers' \"{}\"; ask for isolation \"process\"",
                    shared.as_str()
                )));
            }
            return Ok((shared, BrowserReason::Context));
        }
        let needs_full = if !options.extensions.is_empty() {
            Some(BrowserReason::Extensions)
        } else if request.profile_id.is_some() {
            Some(BrowserReason::Profile)
        } else {
            None
        };
        match (options.browser, needs_full) {
            (Some(BrowserKind::Shell), Some(reason)) => Err(BrokerError::OptionRefused(format!(
                "browser: the headless shell cannot run a session with {}: ask for \"full\" or leave browser out",
                match reason {
                    BrowserReason::Extensions => "extensions",
                    _ => "a profile",
                }
            ))),
            (Some(BrowserKind::Shell), None) if !self.pool.has(Use::Own(BrowserKind::Shell)) => Err(
                BrokerError::OptionRefused("browser: this node has no headless shell installed".into()),
            ),
            (Some(kind), _) => Ok((kind, BrowserReason::Asked)),
            (None, Some(reason)) => Ok((BrowserKind::Full, reason)),
            (None, None) if options.record && self.pool.default_kind() == BrowserKind::Shell => {
                Ok((BrowserKind::Full, BrowserReason::Record))
            }
            (None, None) => Ok((self.pool.default_kind(), BrowserReason::Default)),
        }
    }

    /// Picks the machine a managed session's pages pass for: the device or fingerprint
    /// preset asked, else the one its profile remembers. A profile remembers the first one
    /// it is used with.
    pub(super) async fn pick_fingerprint(
        &self,
        tenant: &Tenant,
        request: NewSession,
    ) -> Result<NewSession, BrokerError> {
        let remembered = match &request.profile_id {
            Some(id) => self.profiles.get(tenant, id).await?.fingerprint.clone(),
            None => None,
        };
        self.pick_fingerprint_from(tenant, request, remembered).await
    }

    /// [`Self::pick_fingerprint`] with the fingerprint the profile remembers already read.
    pub(super) async fn pick_fingerprint_from(
        &self,
        tenant: &Tenant,
        mut request: NewSession,
        remembered: Option<crate::values::Fingerprint>,
    ) -> Result<NewSession, BrokerError> {
        let options = &request.options;
        let own = || {
            let used = match options.isolation {
                Isolation::Context => Use::Shared,
                Isolation::Process => Use::Own(options.browser.unwrap_or(BrowserKind::Full)),
            };
            self.pool.browser_version(used).ok_or_else(|| {
                BrokerError::OptionRefused("fingerprint: this node has not read its browser's version".into())
            })
        };
        let seed = || u64::from_str_radix(&random_hex(8), 16).unwrap_or_default();
        let unknown = || BrokerError::OptionRefused("fingerprint: this node's browser version is not Chrome's".into());
        let fp = if let Some(name) = &options.device {
            let version = own()?;
            let own = OwnVersion::of(&version).ok_or_else(unknown)?;
            devices::pick(name, &own, seed())
                .ok_or_else(|| BrokerError::OptionRefused(format!("device: no device named {name:?}")))?
        } else if let Some(asked) = &options.fingerprint {
            let version = own()?;
            let own = OwnVersion::of(&version).ok_or_else(unknown)?;
            fingerprint::pick(asked, &own, request.screen, seed()).map_err(BrokerError::OptionRefused)?
        } else if let Some(fp) = remembered.clone() {
            fp
        } else {
            return Ok(request);
        };
        if let Some(id) = &request.profile_id
            && remembered.is_none()
        {
            self.profiles.remember_fingerprint(tenant, id, &fp).await?;
        }
        request.options.identity.fingerprint = Some(fp);
        Ok(request)
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
            // Released however the create ends short of a session (its client gone too).
            let held = Held::new(
                self.profiles.begin_use(found, &id, request.persist_changes).await?,
                &self.profiles,
            );
            match self.profile_copies.read_state(held.hold()).await {
                Ok(state) => profile = Some((held, state)),
                Err(e) => {
                    held.release().await;
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
                if let Some((held, _)) = profile {
                    held.release().await;
                }
                return Err(e);
            }
        };
        let Some((held, state)) = profile else {
            return self
                .register(id, tenant, request, Backing::Context(context), None)
                .await;
        };
        let ws_url = context.shared.browser.ws_url();
        if let Err(e) = profile_copy::load_context_state(&ws_url, &context.scope.context, &state).await {
            drop(context);
            held.release().await;
            return Err(BrokerError::ProfileBrowser(e));
        }
        let binding = self.profile_binding(held.keep());
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
        extensions: Option<ExtensionUse>,
    ) -> Result<Arc<Session>, BrokerError> {
        let profile = self.profiles.get(&tenant, &profile_id).await?;
        let dir = self.pool.scratch_dir();
        // Released, and the copy removed, however the create ends short of a session (its
        // client gone halfway included).
        let held = Held::new(
            self.profiles.begin_use(profile, &id, request.persist_changes).await?,
            &self.profiles,
        )
        .with_copy(&dir);
        let prepared = async {
            let cookies = self
                .profiles
                .copy_into(held.hold(), &dir)
                .await
                .map_err(BrokerError::ProfileUnreadable)?;
            let lease = self
                .pool
                .acquire_fresh(
                    request.screen,
                    request.options.browser.unwrap_or(BrowserKind::Full),
                    Some(dir.clone()),
                    extensions,
                )
                .await
                .map_err(|e| self.capacity_error(e))?;
            if let Err(e) = cookies::restore_session_cookies(&lease.browser, &cookies).await {
                tracing::warn!(error = %e, "could not restore the profile's session cookies");
            }
            Ok::<_, BrokerError>(lease)
        };
        match prepared.await {
            Ok(lease) => {
                let binding = self.profile_binding(held.keep());
                self.register(id, tenant, request, Backing::Managed(lease), Some(binding))
                    .await
            }
            Err(e) => {
                held.release().await;
                Err(e)
            }
        }
    }

    /// A place in `tenant`'s quota of `kind` for a create: its sessions running on other
    /// nodes (from the store, in a cluster), here, and creates under way here.
    pub(super) async fn reserve_place(&self, tenant: &Tenant, kind: Kind) -> Result<Reservation<'_>, QuotaExceeded> {
        let Some(limit) = self.quotas.limit(kind) else {
            return self.quotas.reserve(tenant, kind, 0, || 0);
        };
        let elsewhere = match (&self.nodes, kind) {
            (Some(_), Kind::Managed) => {
                self.running_elsewhere(tenant, kind, limit).await + self.ready_elsewhere(tenant).await
            }
            (Some(_), Kind::Byo) => self.running_elsewhere(tenant, kind, limit).await,
            (None, _) => 0,
        };
        self.quotas.reserve(tenant, kind, elsewhere, || {
            // A named pool's ready browsers are sessions of their key waiting to be taken.
            let ready = match kind {
                Kind::Managed => self.named.ready_of(tenant),
                Kind::Byo => 0,
            };
            ready
                + self
                    .running
                    .iter()
                    // An ended session still saving its profile holds a browser (and a
                    // slot) until the save is done: it counts until then.
                    .filter(|s| {
                        &s.tenant == tenant && (s.status() == Status::Active || !s.profile_released().is_cancelled())
                    })
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
    pub(super) async fn take_create(&self, tenant: &Tenant) -> Result<(), Duration> {
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

    pub(super) fn capacity_error(&self, e: PoolError) -> BrokerError {
        self.metrics.create_rejected.inc();
        BrokerError::Capacity(e)
    }

    /// Records a new session and starts its watcher. A session whose record cannot be
    /// written is ended at once: no one could find it.
    pub(super) async fn register(
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
            // Its shared browser's crash, or the loss of the connection that watches its
            // tabs and downloads (the one that makes its contexts).
            Backing::Context(context) => (
                context.scope.close_requested.clone(),
                context.shared.watch.stopped(),
                Some(context.traffic.clone()),
            ),
        };
        // Every managed browser's pages get the identity keeper: a default session's pages
        // show no automation tells (`browser::stealth`).
        let wants_identity = matches!(backing, Backing::Managed(_) | Backing::Context(_));
        // A context session's identity is kept by its shared browser's one keeper.
        let shared_keeper = match &backing {
            Backing::Context(context) => Some((context.shared.clone(), context.scope.context.clone())),
            _ => None,
        };
        // The browser whose downloads are the session's: all of a managed one, a context of
        // a shared one; a user's own browser keeps its own.
        let downloads = match &backing {
            Backing::Managed(lease) => Some(Downloads {
                watched: Watched::Own {
                    ws_url: lease.browser.ws_url(),
                },
                dir: lease.browser.downloads.clone(),
            }),
            // A shared browser's downloads directory holds one directory per session.
            Backing::Context(context) => Some(Downloads {
                watched: Watched::Shared {
                    shared: context.shared.clone(),
                    context: context.scope.context.clone(),
                },
                dir: context.shared.browser.downloads.join(&id),
            }),
            Backing::External(_) => None,
        };
        let webhook = request.webhook.clone();
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
            proxy: request.options.proxy.clone(),
        };
        let session = Arc::new(Session::new(init, &self.node));
        let _ = session.events.set(self.events.open(&id, &session.tenant));
        session.event(
            EventType::Created,
            serde_json::json!({
                "isolation": session.record().options.isolation,
                "external": session.upstream.external,
                "expires_at": crate::auth::unix_secs(session.expires_at()),
            }),
        );
        let wants = request.options.capture;
        let capture = (wants_identity && wants.any()).then(|| self.captures.open(&id, wants));
        // The identity keeper (a context session's: its shared browser's, registered with),
        // the downloads watcher and the tab watcher, all in place before anyone can connect
        // to the session's pages.
        let identity_kept = async {
            if !wants_identity {
                return Ok(());
            }
            let watch = Watch {
                blocking: request.options.blocking,
                ads: self.ads.clone(),
                traffic: session.traffic(),
                challenges: session.challenges.clone(),
                metrics: self.metrics.clone(),
                events: session.events.get().cloned(),
                capture: capture.clone(),
            };
            let (identity, until) = (request.options.identity, session.ended().clone());
            match &shared_keeper {
                Some((shared, context)) => shared.keeper.register(context, identity, watch, until).await,
                None => keeper::keep(&session.upstream, &self.egress, identity, watch, until).await,
            }
            .map_err(|e| {
                (
                    "its identity could not be applied",
                    BrokerError::BrowserSetup("its identity", e),
                )
            })
        };
        let tabs_of = downloads.clone();
        let artifacts_started = async {
            self.start_artifacts(&session, downloads, false, request.options.log_cdp)
                .await
                .map_err(|e| ("its downloads could not start", e))
        };
        // The tabs are followed for the session's events; held to the limit if there is one.
        let tabs_watched = async {
            let Some(Downloads { watched, .. }) = tabs_of else {
                return Ok(());
            };
            let tabs = Tabs::new(
                self.config.max_targets_per_session,
                self.metrics.clone(),
                session.events.get().cloned(),
            );
            let until = session.ended().clone();
            match watched {
                Watched::Own { ws_url } => {
                    let cap = TabCap { ws_url, tabs, until };
                    tab_cap::start(cap, &self.tracker).instrument(session.span()).await
                }
                Watched::Shared { shared, context } => {
                    let registered = shared.watch.watch_tabs(&context, tabs, until, &self.tracker);
                    registered.instrument(session.span()).await
                }
            }
            .map_err(|e| {
                (
                    "its tabs could not be watched",
                    BrokerError::BrowserSetup("its tabs' watch", e),
                )
            })
        };
        // At once: each is mostly round trips to the browser, which on a busy machine wait
        // for a core (p50 0.88×, p90 0.52× beside a test run; docs/benchmarks.md). Boxed:
        // their states side by side left the create's future so large that one more wrapper
        // overflowed a worker's stack in a debug build.
        let (identity_kept, artifacts_started, tabs_watched) = tokio::join!(
            Box::pin(identity_kept),
            Box::pin(artifacts_started),
            Box::pin(tabs_watched)
        );
        // The recording starts on pages that show the identity already (a screencast
        // begun under the keeper's first overrides could be restarted by them).
        let started = match identity_kept.and(artifacts_started).and(tabs_watched) {
            Ok(()) => self
                .start_artifacts(&session, None, request.options.record, false)
                .await
                .map_err(|e| ("its recording could not start", e)),
            failed => failed,
        };
        if let Err((why, e)) = started {
            self.refuse(&session, why, &e);
            return Err(e);
        }
        // Running before its record exists, so that the reconciler never takes the record
        // for one whose session has gone.
        self.running.insert(id.clone(), session.clone());
        if let Err(e) = self.records.try_save(&session).await {
            self.running.remove(&id);
            session.forget();
            self.refuse(&session, "its record cannot be written", &e);
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, std::time::Instant::now());
            return Err(e.into());
        }
        self.metrics.sessions_created.inc();
        if let Some(target) = webhook {
            self.webhooks.start(&id, &session.tenant, target);
        }
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

    /// Ends a session refused halfway through its registration, and says why.
    fn refuse(&self, session: &Arc<Session>, why: &str, error: &dyn std::fmt::Display) {
        let _ = session.end(EndReason::Terminated);
        self.events.remove(&session.id);
        self.captures.remove(&session.id);
        session
            .span()
            .in_scope(|| tracing::warn!(error = %error, "session refused: {why}"));
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
        let files_error = |e: std::io::Error| BrokerError::BrowserSetup("its files", CdpError::Http(e.to_string()));
        let files = self.artifacts.session(&session.id).map_err(files_error)?;
        if log_cdp {
            let log = CdpLog::start(files.clone(), session.ended().clone(), &self.tracker).map_err(files_error)?;
            let _ = session.cdp_log.set(Arc::new(log));
        }
        if let Some(Downloads { watched, dir }) = downloads {
            std::fs::create_dir_all(&dir).map_err(files_error)?;
            let _ = session.browser_downloads.set(dir.clone());
            if let Some(scope) = &session.upstream.scope {
                let _ = scope.download_dir.set(dir.to_string_lossy().into_owned());
                let _ = scope.files_dir.set(dir.join(".uploads"));
            }
            let events = session.events.get().cloned();
            let downloads = Arc::new(SessionDownloads::new(dir, files.clone(), events));
            let (client_left, until) = (session.connection_closed.clone(), session.ended().clone());
            match watched {
                Watched::Own { ws_url } => {
                    let watch = artifacts::downloads::Watch {
                        ws_url,
                        downloads,
                        client_left,
                        until,
                    };
                    artifacts::downloads::start(watch, &self.tracker)
                        .instrument(session.span())
                        .await
                }
                Watched::Shared { shared, context } => {
                    let registered =
                        shared
                            .watch
                            .watch_downloads(&context, downloads, client_left, until, &self.tracker);
                    registered.instrument(session.span()).await
                }
            }
            .map_err(|e| BrokerError::BrowserSetup("its downloads' watch", e))?;
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
                ws_config: session.upstream.parsed_ws_config(&self.config),
            };
            let until = session.ended().clone();
            artifacts::recording::start(&session.upstream, &self.egress, spec, until, &self.tracker)
                .instrument(session.span())
                .await
                .map_err(|e| BrokerError::BrowserSetup("its recording", CdpError::Http(e.to_string())))?;
        }
        Ok(())
    }
}
