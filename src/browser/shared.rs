//! Shared browsers for context sessions: each holds many sessions, one browser context
//! (its own cookie jar, storage and cache) per session.
//!
//! A shared browser serves one tenant's sessions unless the operator allows any
//! (`context_sharing`). A session takes a free context slot on a browser of its tenant (the
//! fullest first, so the others can empty and be recycled), or starts a new shared browser
//! while fewer than `context_browsers` run, or retires another tenant's empty one. A browser
//! that has served `recycle_after` contexts, or whose processes pass the memory limit,
//! takes no new context and is closed once its last one ends. Each context's pages go
//! through a forward-proxy gateway of their own (`proxyServer` of the context), so the
//! egress policy, the session's upstream proxy and its byte counts work as for a browser of
//! its own. The gateways' ports are bound before the browser starts (`GatewayPorts`, one
//! per context it can hold at once, spares included), so that the kernel lets it connect
//! to those and to nothing else, as a process session's browser to its one gateway.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::cdp::{CallError, Client};
use super::context_watch::ContextWatch;
use super::egress::Egress;
use super::filter::Targets;
use super::forward::{Gateway, Traffic, UpstreamProxy};
use super::gateway_ports::GatewayPorts;
use super::keeper::ContextKeeper;
use super::launcher::{Browser, Launcher, Screen, Use};
use super::pool::PoolError;
use super::scope::{CALL_TIMEOUT, ContextScope};
use super::spare_target::SpareTarget;
use super::upstream::Upstream;
use crate::metrics::Metrics;

/// How long spare contexts wait after a handout before they are made.
const SPARE_QUIET: Duration = Duration::from_millis(200);

/// How often a shared browser's memory is read.
const MEMORY_CHECK: Duration = Duration::from_secs(10);

/// How context sessions share browsers.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// Most shared browsers at once.
    pub browsers: usize,
    /// Most contexts open in one shared browser.
    pub per_browser: usize,
    /// Contexts a shared browser serves before it is recycled.
    pub recycle_after: u64,
    /// Proportional memory (PSS) of a shared browser's processes past which it is recycled.
    pub max_memory_bytes: u64,
    /// Any tenant's sessions may share a browser (else each browser serves one tenant).
    pub any_tenant: bool,
    pub queue_timeout: Duration,
    /// The screen shared browsers start at (each tab then gets its session's own).
    pub screen: Screen,
    /// Message and frame limits of the filter pipes: toward the browser, and toward the
    /// client (whose messages the filter parses, so a smaller limit).
    pub ws_config: WebSocketConfig,
    pub client_ws_config: WebSocketConfig,
    /// Contexts each shared browser keeps prepared (first tab open at `screen`), so that a
    /// create takes one instead of waiting for Chrome.
    pub spares: usize,
    /// Most spares while creates find none (`spare_target`), and how long after the last
    /// such create they are back at `spares`.
    pub spares_burst: usize,
    pub spares_quiet: Duration,
    /// Shared browsers kept started for no tenant yet, so that a tenant's first context
    /// session does not wait for a launch.
    pub warm_browsers: usize,
}

pub struct SharedBrowsers {
    launcher: Arc<Launcher>,
    settings: SharedSettings,
    state: Mutex<State>,
    /// Fires when a context slot frees up or a shared browser goes.
    released: Notify,
    /// Wakes the task that keeps unclaimed browsers warm.
    warm: Notify,
    policy: Arc<Egress>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    browsers: Vec<Arc<SharedBrowser>>,
    /// Shared browsers being started.
    launching: usize,
}

/// A browser whose contexts are sessions.
pub struct SharedBrowser {
    pub browser: Browser,
    /// The tenant it serves: set by its first session unless any tenant may share it.
    owner: Mutex<Option<String>>,
    /// Contexts prepared ahead of demand.
    spares: Mutex<Vec<Prepared>>,
    /// How many to keep prepared.
    spare_target: Mutex<SpareTarget>,
    /// Set while a task prepares spares.
    preparing: AtomicBool,
    /// Set while a task waits to close the spares a burst left.
    trimming: AtomicBool,
    /// The broker's own connection: creates and disposes contexts, discovers targets.
    client: Arc<Client>,
    /// The one identity keeper of all its context sessions.
    pub(crate) keeper: ContextKeeper,
    /// The one watch of all its context sessions' tabs and downloads, on `client`.
    pub(crate) watch: ContextWatch,
    /// Its contexts' gateway ports, the only ones besides its own gateway's it may reach.
    gateway_ports: GatewayPorts,
    pub targets: Arc<Targets>,
    /// Contexts open now.
    live: AtomicUsize,
    /// Contexts it has served.
    served: AtomicU64,
    /// Takes no new context; closed when the last one ends.
    draining: AtomicBool,
    watcher: JoinHandle<()>,
}

impl Drop for SharedBrowser {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl SharedBrowser {
    pub fn contexts(&self) -> usize {
        self.live.load(Relaxed)
    }

    fn takes(&self, tenant: &str, settings: &SharedSettings) -> bool {
        self.browser.is_alive()
            && self.keeper.is_running()
            && self.watch.is_running()
            && !self.draining.load(Relaxed)
            && self
                .owner
                .lock()
                .expect("owner lock")
                .as_deref()
                .is_none_or(|o| o == tenant)
            && self.live.load(Relaxed) < settings.per_browser
    }

    /// Serves no tenant yet.
    fn unclaimed(&self) -> bool {
        self.owner.lock().expect("owner lock").is_none() && self.live.load(Relaxed) == 0
    }

    /// A spare context, if one is ready; a create that finds none, or takes the last one,
    /// raises the target (the next create would wait for Chrome), unless it `launched`
    /// this browser (whose spares could not be made yet).
    fn take_spare(&self, launched: bool) -> Option<Prepared> {
        let (spare, left) = {
            let mut spares = self.spares.lock().expect("spares lock");
            (spares.pop(), spares.len())
        };
        // Not where one spare is all that is kept: every create would count.
        if left == 0 && !launched && (spare.is_none() || self.spares_wanted() > 1) {
            self.spare_target
                .lock()
                .expect("spare target lock")
                .missed(Instant::now());
        }
        spare
    }

    fn spares_wanted(&self) -> usize {
        self.spare_target
            .lock()
            .expect("spare target lock")
            .target(Instant::now())
    }

    /// Spares ready now.
    pub fn spares(&self) -> usize {
        self.spares.lock().expect("spares lock").len()
    }

    /// When the spares' target is back at rest, if no create misses before.
    fn spares_rest_at(&self) -> Instant {
        self.spare_target
            .lock()
            .expect("spare target lock")
            .rest_at(Instant::now())
    }

    /// Closes the spares above the target (after a burst, once it is back at rest); stops
    /// once the browser is draining or gone (its spares go with it).
    async fn trim_spares(&self) {
        while self.browser.is_alive() && !self.draining.load(Relaxed) {
            let extra = {
                let mut spares = self.spares.lock().expect("spares lock");
                if spares.len() <= self.spares_wanted() {
                    return;
                }
                spares.remove(0)
            };
            extra.stop.cancel();
            let disposed = dispose(self, &extra.context).await;
            give_back(self, extra.listener_back, disposed).await;
        }
    }
}

/// A context made ahead of its session: its gateway and its first tab.
struct Prepared {
    context: String,
    gateway: Arc<Gateway>,
    /// Stops the gateway; cancelled when the context ends (or the browser exits).
    stop: CancellationToken,
    /// Hands the gateway's listener back once it has stopped.
    listener_back: ListenerBack,
}

/// The task serving a context's gateway, which answers its listener once stopped.
type ListenerBack = JoinHandle<Option<std::net::TcpListener>>;

/// A shared browser as the operator sees it.
#[derive(Debug, Clone)]
pub struct SharedInfo {
    pub id: String,
    pub pid: u32,
    /// Its DevTools port on 127.0.0.1.
    pub port: u16,
    /// Contexts (sessions) open in it.
    pub contexts: usize,
    /// Contexts whose session's identity its keeper applies.
    pub kept_contexts: usize,
    /// Spare contexts its keeper dresses for a session that asks for nothing.
    pub dressed_spares: usize,
    /// Contexts prepared for the next creates.
    pub spares: usize,
    /// Contexts whose session's tabs and downloads its context watch follows.
    pub watched_contexts: usize,
    /// Takes no new context; closed once its last one ends.
    pub draining: bool,
    /// The ports its contexts' gateways serve on (bound for its whole life).
    pub gateway_ports: Vec<u16>,
}

/// A session's context, held until the session ends; dropping it disposes the context.
pub struct ContextLease {
    pub shared: Arc<SharedBrowser>,
    pub scope: Arc<ContextScope>,
    pub gateway: Arc<Gateway>,
    /// The network counters of the context's pages.
    pub traffic: Arc<Traffic>,
    gateway_stop: CancellationToken,
    listener_back: Option<ListenerBack>,
    browsers: Weak<SharedBrowsers>,
    /// Cancelled once the context is disposed and its slot free (after the lease is dropped).
    released: CancellationToken,
}

impl ContextLease {
    /// Fires once this context, dropped, is gone from its browser and its slot is free.
    pub fn released(&self) -> CancellationToken {
        self.released.clone()
    }

    /// Its browser runs and no client has closed it.
    pub fn is_alive(&self) -> bool {
        self.shared.browser.is_alive() && !self.scope.close_requested.is_cancelled()
    }
}

impl Drop for ContextLease {
    fn drop(&mut self) {
        // The gateway closes the context's connections at once; its port is lent again
        // only once the context is gone (so its pages can no longer connect to it), and
        // the slot is freed after that (so the next context finds a port).
        self.gateway_stop.cancel();
        let (shared, context) = (self.shared.clone(), self.scope.context.clone());
        let browsers = self.browsers.clone();
        let listener_back = self.listener_back.take();
        let released = self.released.clone();
        let finish = async move {
            let disposed = dispose(&shared, &context).await;
            if let Some(back) = listener_back {
                give_back(&shared, back, disposed).await;
            }
            if let Some(browsers) = browsers.upgrade() {
                browsers.release(&shared);
            }
            released.cancel();
        };
        // Without a runtime (the broker is gone) the browser goes with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(finish);
        }
    }
}

/// Disposes a context: its tabs close, its storage is gone. False if Chrome did not say so.
async fn dispose(shared: &SharedBrowser, context: &str) -> bool {
    // A spare's, if it was one: the keeper stops waiting for its tab.
    shared.keeper.unspare(context);
    let params = json!({ "browserContextId": context });
    shared
        .client
        .call(None, "Target.disposeBrowserContext", params, CALL_TIMEOUT)
        .await
        .is_ok()
}

/// Takes a stopped gateway's listener back into `shared`'s set: for the next context if its
/// context is gone (`disposed`), else kept bound and out of use, the browser drained.
async fn give_back(shared: &SharedBrowser, listener_back: ListenerBack, disposed: bool) {
    let Ok(Some(listener)) = listener_back.await else {
        return;
    };
    if !shared.browser.is_alive() {
        return; // its ports go with it
    }
    if disposed {
        shared.gateway_ports.put_back(listener);
    } else {
        tracing::warn!(browser = %shared.browser.id, "a context was not disposed: its gateway port is retired with its browser");
        shared.gateway_ports.park(listener);
        shared.draining.store(true, Relaxed);
    }
}

enum Reserved {
    On(Arc<SharedBrowser>),
    Launch,
    Full,
}

impl SharedBrowsers {
    pub fn new(launcher: Arc<Launcher>, settings: SharedSettings, policy: Arc<Egress>, metrics: Arc<Metrics>) -> Self {
        SharedBrowsers {
            launcher,
            settings,
            state: Mutex::default(),
            released: Notify::new(),
            warm: Notify::new(),
            policy,
            metrics,
        }
    }

    /// A fresh context for a session of `tenant`, its first tab at `screen`, its pages'
    /// traffic routed for the session whose span is `span` (through `proxy` if any).
    /// Without `wait`, a full set of shared browsers refuses at once.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        screen: Screen,
        span: tracing::Span,
        proxy: Option<UpstreamProxy>,
        wait: bool,
    ) -> Result<ContextLease, PoolError> {
        let deadline = Instant::now() + self.settings.queue_timeout;
        let (shared, launched) = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.reserve(tenant) {
                Reserved::On(shared) => break (shared, false),
                Reserved::Launch => break (self.start(Some(tenant)).await?, true),
                Reserved::Full => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !wait || left.is_zero() || tokio::time::timeout(left, released).await.is_err() {
                        return Err(PoolError::Busy);
                    }
                }
            }
        };
        // A spare is taken only for its own screen size: one taken and dropped would stay
        // in Chrome, its gateway port lost with it.
        let spare = if screen == self.settings.screen {
            shared.take_spare(launched)
        } else {
            None
        };
        let prepared = match spare {
            Some(spare) => spare,
            None => match self.prepare(&shared, screen, false).await {
                Ok(prepared) => prepared,
                Err(e) => {
                    self.release(&shared);
                    return Err(PoolError::Setup(e));
                }
            },
        };
        self.prepare_spares(&shared);
        self.warm.notify_one();
        Ok(self.bind(&shared, prepared, span, proxy))
    }

    /// Takes a context slot on a browser that serves `tenant` (the fullest, so the others
    /// can empty), or on a browser no tenant has claimed yet, or room to start one.
    fn reserve(&self, tenant: &str) -> Reserved {
        let mut state = self.state.lock().expect("shared lock");
        state.browsers.retain(|b| b.browser.is_alive());
        let open = |b: &&Arc<SharedBrowser>| b.takes(tenant, &self.settings);
        let chosen = match state
            .browsers
            .iter()
            .filter(open)
            .filter(|b| !b.unclaimed())
            .max_by_key(|b| b.contexts())
        {
            Some(own) => Some(own.clone()),
            None => state.browsers.iter().find(|b| b.unclaimed() && open(b)).cloned(),
        };
        if let Some(shared) = chosen {
            if !self.settings.any_tenant {
                *shared.owner.lock().expect("owner lock") = Some(tenant.to_owned());
            }
            self.count_context(&shared);
            return Reserved::On(shared);
        }
        if state.browsers.len() + state.launching < self.settings.browsers {
            state.launching += 1;
            return Reserved::Launch;
        }
        // Another tenant's empty browser makes room for this one.
        if let Some(at) = state.browsers.iter().position(|b| b.contexts() == 0) {
            state.browsers.remove(at);
            self.metrics.shared_browser_recycles.inc();
            state.launching += 1;
            return Reserved::Launch;
        }
        Reserved::Full
    }

    fn count_context(&self, shared: &SharedBrowser) {
        shared.live.fetch_add(1, Relaxed);
        let served = shared.served.fetch_add(1, Relaxed) + 1;
        if served >= self.settings.recycle_after {
            shared.draining.store(true, Relaxed);
        }
    }

    /// A context slot is free again; a draining browser with none left is closed.
    fn release(&self, shared: &Arc<SharedBrowser>) {
        let left = shared.live.fetch_sub(1, Relaxed) - 1;
        if left == 0 && shared.draining.load(Relaxed) {
            let mut state = self.state.lock().expect("shared lock");
            let before = state.browsers.len();
            state.browsers.retain(|b| !Arc::ptr_eq(b, shared));
            if state.browsers.len() < before {
                self.metrics.shared_browser_recycles.inc();
            }
        }
        self.released.notify_waiters();
        self.warm.notify_one();
    }

    /// Starts a shared browser, for `tenant` with one context slot taken, or unclaimed.
    async fn start(self: &Arc<Self>, tenant: Option<&str>) -> Result<Arc<SharedBrowser>, PoolError> {
        let started = self.launch(tenant).await;
        let mut state = self.state.lock().expect("shared lock");
        state.launching -= 1;
        match started {
            Ok(shared) => {
                if tenant.is_some() {
                    self.count_context(&shared);
                }
                state.browsers.push(shared.clone());
                drop(state);
                if tenant.is_none() {
                    self.prepare_spares(&shared);
                }
                Ok(shared)
            }
            Err(e) => {
                drop(state);
                self.released.notify_waiters();
                Err(e)
            }
        }
    }

    /// Keeps `warm_browsers` unclaimed shared browsers started (while there is room for
    /// them) until `shutdown`.
    pub async fn run_warm(self: Arc<Self>, shutdown: CancellationToken) {
        if self.settings.warm_browsers == 0 {
            return;
        }
        let mut backoff = Duration::from_millis(250);
        loop {
            let launch = {
                let mut state = self.state.lock().expect("shared lock");
                state.browsers.retain(|b| b.browser.is_alive());
                let unclaimed = state.browsers.iter().filter(|b| b.unclaimed()).count();
                let room = state.browsers.len() + state.launching < self.settings.browsers;
                let launch = unclaimed + state.launching < self.settings.warm_browsers && room;
                if launch {
                    state.launching += 1;
                }
                launch
            };
            if launch {
                let started = tokio::select! {
                    started = self.start(None) => started,
                    _ = shutdown.cancelled() => return,
                };
                if started.is_err() {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                } else {
                    backoff = Duration::from_millis(250);
                }
                continue;
            }
            tokio::select! {
                _ = self.warm.notified() => {}
                _ = self.launcher.exits.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn launch(self: &Arc<Self>, tenant: Option<&str>) -> Result<Arc<SharedBrowser>, PoolError> {
        let spare_target = SpareTarget::new(
            self.settings.spares,
            self.settings.spares_burst,
            self.settings.spares_quiet,
        );
        // One gateway port per context it may hold at once: its sessions' and its spares.
        let contexts = self.settings.per_browser + spare_target.ceiling();
        let gateway_ports = GatewayPorts::bind(contexts, self.launcher.own_ports.clone())
            .map_err(|e| PoolError::Setup(format!("the contexts' gateway ports could not be bound: {e}")))?;
        let browser = self
            .launcher
            .launch_shared(self.settings.screen, gateway_ports.ports())
            .await?;
        let client = Arc::new(
            Client::connect(&browser.ws_url())
                .await
                .map_err(|e| PoolError::Setup(e.to_string()))?,
        );
        let upstream = Upstream::managed(browser.port, browser.ws_path.clone());
        let keeper = ContextKeeper::start(&upstream, self.policy.clone())
            .await
            .map_err(|e| PoolError::Setup(format!("the identity keeper could not start: {e}")))?;
        let targets = Arc::new(Targets::default());
        let mut events = client.subscribe();
        let watch = ContextWatch::start(client.clone(), client.subscribe(), browser.exited());
        client
            .call(
                None,
                "Target.setDiscoverTargets",
                json!({"discover": true}),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| PoolError::Setup(format!("{e:?}")))?;
        let watcher = {
            let (targets, exited) = (targets.clone(), browser.exited());
            let memory = (browser.pid, self.settings.max_memory_bytes);
            let browsers = Arc::downgrade(self);
            let pid = browser.pid;
            tokio::spawn(async move {
                let mut check = tokio::time::interval(MEMORY_CHECK);
                loop {
                    tokio::select! {
                        event = events.recv() => match event {
                            Ok(event) => match event["method"].as_str() {
                                Some("Target.targetCreated" | "Target.targetInfoChanged") => {
                                    targets.learn(&event["params"]["targetInfo"]);
                                }
                                Some("Target.targetDestroyed") => {
                                    targets.forget(event["params"]["targetId"].as_str().unwrap_or_default());
                                }
                                _ => {}
                            },
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => return,
                        },
                        _ = check.tick() => {
                            if memory.1 > 0 && group_pss(memory.0) > memory.1
                                && let Some(browsers) = browsers.upgrade()
                            {
                                browsers.drain(pid);
                            }
                        }
                        _ = exited.cancelled() => return,
                    }
                }
            })
        };
        Ok(Arc::new(SharedBrowser {
            browser,
            owner: Mutex::new(tenant.filter(|_| !self.settings.any_tenant).map(str::to_owned)),
            spares: Mutex::default(),
            spare_target: Mutex::new(spare_target),
            preparing: AtomicBool::new(false),
            trimming: AtomicBool::new(false),
            client,
            keeper,
            watch,
            gateway_ports,
            targets,
            live: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            watcher,
        }))
    }

    /// Takes the shared browser `pid` out of service (its memory is past the limit). One
    /// that has served no session yet is left alone: its memory is a bare browser's, and
    /// retiring it would only start another (a limit set below that is a mistake, logged).
    fn drain(&self, pid: u32) {
        let mut state = self.state.lock().expect("shared lock");
        let Some(shared) = state.browsers.iter().find(|b| b.browser.pid == pid).cloned() else {
            return;
        };
        if shared.served.load(Relaxed) == 0 {
            tracing::warn!(browser = %shared.browser.id, "an unused shared browser is past context_browser_max_memory_mb: the limit is too low");
            return;
        }
        if shared.draining.swap(true, Relaxed) {
            return;
        }
        tracing::info!(browser = %shared.browser.id, "shared browser past its memory limit: recycled once its sessions end");
        if shared.contexts() == 0 {
            state.browsers.retain(|b| b.browser.pid != pid);
            self.metrics.shared_browser_recycles.inc();
        }
    }

    /// Makes a context on `shared` with its gateway (on one of its ports) and its first tab
    /// at `screen`; a `spare`'s tab opens dressed by the keeper (`ContextKeeper::spare`).
    async fn prepare(&self, shared: &Arc<SharedBrowser>, screen: Screen, spare: bool) -> Result<Prepared, String> {
        let listener = shared
            .gateway_ports
            .take()
            .ok_or("the shared browser has no free gateway port")?;
        let stop = CancellationToken::new();
        let (gateway, listener_back) =
            match Gateway::serve_on(listener, self.policy.clone(), self.metrics.clone(), stop.clone()) {
                Ok(serving) => serving,
                // The listener is gone with the error; the browser cannot have used it yet.
                Err(e) => return Err(format!("the context's gateway could not start: {e}")),
            };
        // The gateway stops with the context, or with the browser.
        let (browser_gone, gateway_stop) = (shared.browser.exited(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = browser_gone.cancelled() => gateway_stop.cancel(),
                _ = gateway_stop.cancelled() => {}
            }
        });
        let port = gateway.port;
        let created = shared
            .client
            .call(
                None,
                "Target.createBrowserContext",
                json!({
                    "disposeOnDetach": true,
                    "proxyServer": format!("http://127.0.0.1:{port}"),
                    "proxyBypassList": "<-loopback>",
                }),
                CALL_TIMEOUT,
            )
            .await;
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                stop.cancel();
                // Without an answer the context may exist all the same: its port is not
                // lent again.
                let none_made = matches!(e, CallError::Refused(_));
                give_back(shared, listener_back, none_made).await;
                return Err(format!("the browser context could not be created: {e:?}"));
            }
        };
        let context = created["browserContextId"].as_str().unwrap_or_default().to_owned();
        if spare {
            // Its first tab opens dressed for a session that asks for nothing.
            shared.keeper.spare(&context).await;
        }
        let tab = json!({
            "url": "about:blank",
            "browserContextId": context,
            "width": screen.width,
            "height": screen.height + self.launcher.frame_height(Use::Shared),
        });
        match shared.client.call(None, "Target.createTarget", tab, CALL_TIMEOUT).await {
            Ok(created) => {
                let target = created["targetId"].as_str().unwrap_or_default();
                shared.targets.insert(target, &context);
            }
            Err(e) => {
                stop.cancel();
                let disposed = dispose(shared, &context).await;
                give_back(shared, listener_back, disposed).await;
                return Err(format!("the context's first tab could not be opened: {e:?}"));
            }
        }
        self.metrics.contexts_created.inc();
        Ok(Prepared {
            context,
            gateway,
            stop,
            listener_back,
        })
    }

    /// Hands the prepared context to a session.
    fn bind(
        self: &Arc<Self>,
        shared: &Arc<SharedBrowser>,
        prepared: Prepared,
        span: tracing::Span,
        proxy: Option<UpstreamProxy>,
    ) -> ContextLease {
        let traffic = prepared.gateway.assign(span, proxy);
        let scope = Arc::new(ContextScope::new(
            prepared.context,
            shared.targets.clone(),
            shared.client.clone(),
            self.metrics.clone(),
            self.settings.ws_config,
            self.settings.client_ws_config,
        ));
        ContextLease {
            shared: shared.clone(),
            scope,
            gateway: prepared.gateway,
            traffic,
            gateway_stop: prepared.stop,
            listener_back: Some(prepared.listener_back),
            browsers: Arc::downgrade(self),
            released: CancellationToken::new(),
        }
    }

    /// Tops up `shared`'s spare contexts in a task of its own, after a pause that lets the
    /// session just handed out have the browser first, unless none is left for the next.
    fn prepare_spares(self: &Arc<Self>, shared: &Arc<SharedBrowser>) {
        if shared.spares_wanted() == 0 || shared.preparing.swap(true, Relaxed) {
            return;
        }
        let (browsers, shared) = (self.clone(), shared.clone());
        tokio::spawn(async move {
            if shared.spares() > 0 {
                tokio::time::sleep(SPARE_QUIET).await;
            }
            loop {
                // No more than the sessions that can still come could take.
                let room = browsers.settings.per_browser.saturating_sub(shared.contexts());
                let wanted = shared.browser.is_alive()
                    && !shared.draining.load(Relaxed)
                    && shared.spares() < shared.spares_wanted().min(room);
                if !wanted {
                    break;
                }
                match browsers.prepare(&shared, browsers.settings.screen, true).await {
                    Ok(spare) => shared.spares.lock().expect("spares lock").push(spare),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not prepare a spare context");
                        break;
                    }
                }
            }
            shared.preparing.store(false, Relaxed);
            browsers.trim_after_burst(&shared);
        });
    }

    /// Once a burst of creates is over, closes the spares it left above the number kept at
    /// rest: when the target is back there (a quiet after the burst's last miss).
    fn trim_after_burst(self: &Arc<Self>, shared: &Arc<SharedBrowser>) {
        if shared.spares() <= self.settings.spares || shared.trimming.swap(true, Relaxed) {
            return;
        }
        // Not kept alive by this: a browser recycled meanwhile closes with its spares.
        let (browsers, shared) = (Arc::downgrade(self), Arc::downgrade(shared));
        tokio::spawn(async move {
            loop {
                let Some(rest_at) = shared.upgrade().map(|s| s.spares_rest_at()) else {
                    return;
                };
                tokio::time::sleep_until(rest_at.into()).await;
                let (Some(browsers), Some(shared)) = (browsers.upgrade(), shared.upgrade()) else {
                    return;
                };
                shared.trim_spares().await;
                // A spare it could not dispose drained the browser: with no session left,
                // nothing else would close it.
                browsers.retire_if_idle(&shared);
                shared.trimming.store(false, Relaxed);
                // Done, unless a spare was pushed meanwhile or a new burst came.
                let live = shared.browser.is_alive() && !shared.draining.load(Relaxed);
                if !live || shared.spares() <= browsers.settings.spares || shared.trimming.swap(true, Relaxed) {
                    return;
                }
            }
        });
    }

    /// Closes a draining shared browser that has no context left.
    fn retire_if_idle(&self, shared: &Arc<SharedBrowser>) {
        if !shared.draining.load(Relaxed) || shared.contexts() > 0 {
            return;
        }
        let mut state = self.state.lock().expect("shared lock");
        let before = state.browsers.len();
        state.browsers.retain(|b| !Arc::ptr_eq(b, shared));
        if state.browsers.len() < before {
            self.metrics.shared_browser_recycles.inc();
        }
    }

    /// The shared browsers in service (draining ones included).
    pub fn browsers(&self) -> Vec<SharedInfo> {
        let state = self.state.lock().expect("shared lock");
        state
            .browsers
            .iter()
            .filter(|b| b.browser.is_alive())
            .map(|b| SharedInfo {
                id: b.browser.id.clone(),
                pid: b.browser.pid,
                port: b.browser.port,
                contexts: b.contexts(),
                kept_contexts: b.keeper.registered(),
                dressed_spares: b.keeper.spares(),
                spares: b.spares(),
                watched_contexts: b.watch.registered(),
                draining: b.draining.load(Relaxed),
                gateway_ports: b.gateway_ports.ports().to_vec(),
            })
            .collect()
    }

    /// Closes every shared browser (at shutdown, once sessions have ended).
    pub fn close_all(&self) {
        self.state.lock().expect("shared lock").browsers.clear();
    }
}

/// Proportional set size, in bytes, of every process in the process group `pgid` (a
/// browser and its renderers, GPU and utility processes).
pub(crate) fn group_pss(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces): state, ppid, pgrp.
        let group = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<u32>().ok());
        if group != Some(pgid) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_groups_memory_is_read_from_proc() {
        // This test's own process group has at least this process in it.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let pgid: u32 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert!(group_pss(pgid) > 1024 * 1024);
        assert_eq!(group_pss(u32::MAX - 1), 0);
    }
}
