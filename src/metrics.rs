//! Prometheus metrics: every family registered once, in [`Metrics::new`], and rendered by
//! prometheus-client in the text exposition format (0.0.4), which `/metrics` has always
//! served (`tests/metrics_families.rs` holds the names, types and labels). Not the crate's
//! OpenMetrics encoder: that one names a counter's family without `_total` in `# TYPE`, ends
//! with `# EOF` and needs its own content type, which scrapers of the 0.0.4 format misread.
//!
//! Counters and gauges are atomics: a call site adds to its own handle (`inc`, `inc_by`),
//! never looking up a labelled child on a hot path. Readings that live elsewhere (the pool,
//! the running sessions, the files on disk) are set from [`Gauges`] when a scrape renders.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::error::Origin;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Close codes the broker sends, counted one by one; anything else counts as "other".
const CLOSE_CODES: [u16; 8] = [4001, 4002, 4003, 4004, 1001, 1002, 1009, 1011];

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Most labels of `cdpgate_context_refused_commands_total` ("other" included); methods past
/// them count as "other", so a client inventing names cannot grow the metrics without end.
const MAX_REFUSED_METHODS: usize = 100;

/// A gauge of a count: never negative, as wide as the counters.
/// The challenges `cdpgate_challenges_total` counts, by its `kind` label.
pub const CHALLENGE_KINDS: [&str; 3] = ["recaptcha", "hcaptcha", "turnstile"];

pub type Level = Gauge<u64, AtomicU64>;

/// One label: its name and value.
type Label<V> = [(&'static str, V); 1];

/// A latency histogram, observed in [`Duration`]s.
#[derive(Debug, Clone)]
pub struct Latency(Histogram);

impl Latency {
    fn new() -> Latency {
        Latency(Histogram::new(LATENCY_BUCKETS))
    }

    pub fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

pub struct Metrics {
    registry: Registry,
    /// Held while a scrape sets the readings of [`Gauges`] and encodes, so that two
    /// scrapes at once do not mix their readings.
    scrape: Mutex<()>,
    pub sessions_created: Counter,
    pub sessions_expired: Counter,
    pub sessions_terminated: Counter,
    /// Sessions ended for their idle timeout.
    pub sessions_idle: Counter,
    pub create_rejected: Counter,
    pub create_rate_limited: Counter,
    /// Creates refused by a per-key quota of sessions at once.
    pub create_quota_refused: Counter,
    /// Successful creates, from the request read to the answer's session ready.
    pub create_time: Latency,
    /// Tabs the broker closed because their session had `max_targets_per_session` open.
    pub targets_closed: Counter,
    /// Creates that waited for a free slot, and how long in all.
    queue_waits: Counter,
    queue_wait_seconds: Counter<f64, AtomicU64>,
    /// Creates waiting for a slot right now. Not exported (it never was); tests read it.
    pub queue_waiting: Level,
    pub browsers_launched: Counter,
    pub browser_launch_failures: Counter,
    launch_time: Latency,
    pub proxy_connections: Counter,
    pub proxy_connections_open: Level,
    pub connections_refused: Counter,
    /// The relay's counters: children of `cdpgate_proxy_messages_total{direction}` and
    /// `cdpgate_proxy_bytes_total{direction}`, held so that adding is one atomic add.
    pub messages_to_browser: Counter,
    pub messages_to_client: Counter,
    pub bytes_to_browser: Counter,
    pub bytes_to_client: Counter,
    /// Close frames sent to clients, by code (`CLOSE_CODES`, then other).
    closes: [Counter; CLOSE_CODES.len() + 1],
    /// Error answers by origin: client, upstream, internal.
    errors: [Counter; 3],
    pub profile_saves: Counter,
    pub profile_save_failures: Counter,
    /// Saves refused by fencing: the node had lost the profile's writer lease.
    pub profile_saves_superseded: Counter,
    /// Single actions, from the request read to the answer (queueing behind others included).
    pub action_time: Latency,
    pub actions_succeeded: Counter,
    pub actions_failed: Counter,
    pub action_model_calls: Counter,
    pub action_cache_hits: Counter,
    pub action_cache_failures: Counter,
    /// Connections of managed browsers' pages refused by the egress policy.
    pub browser_egress_refused: Counter,
    /// Connections a session's upstream proxy could not carry.
    pub proxy_errors: Counter,
    /// Bytes managed browsers received from and sent to the network.
    pub browser_bytes_in: Counter,
    pub browser_bytes_out: Counter,
    pub shared_browser_recycles: Counter,
    pub contexts_created: Counter,
    /// One-call renders run in a bare context (no session made for them).
    pub renders_bare: Counter,
    /// Files stored in sessions' files (finished downloads and uploads).
    pub files_stored: Counter,
    /// Downloads cancelled and uploads refused for a session's files quota or the upload limit.
    pub files_quota_refusals: Counter,
    /// Recordings started, and those stopped at `max_recording_bytes`.
    pub recordings_started: Counter,
    pub recordings_truncated: Counter,
    /// Requests sessions' `block`/`block_urls` stopped in their browsers.
    pub requests_blocked: Counter,
    /// Challenges sessions' pages showed, by kind (`browser::challenges::KINDS`).
    challenges: [Counter; 3],
    /// Creates from a named pool: a ready browser taken (hit), or a cold start (miss).
    pub named_pool_hits: Counter,
    pub named_pool_misses: Counter,
    /// Named pools' refills: the time each ready browser took, and those that failed.
    pub named_pool_refill_time: Latency,
    pub named_pool_refill_failures: Counter,
    /// Named pools on this node and their ready browsers, set by the broker at each scrape.
    pub named_pools: Level,
    pub named_pool_ready: Level,
    /// Commands the context filter refused, by method (a bounded set of names).
    refused: Family<Label<String>, Counter>,
    /// Method names labelled so far, counted under the lock so that the bound holds.
    refused_methods: Mutex<usize>,
    // Set from `Gauges` at each scrape.
    sessions_active: Level,
    /// Active sessions by isolation: process, context.
    sessions_by_isolation: [Level; 2],
    pool_idle: Level,
    runtime_tasks: Level,
    shared_browser_contexts: Family<Label<String>, Level>,
    shared_browser_kept_contexts: Family<Label<String>, Level>,
    shared_browser_spare_contexts: Family<Label<String>, Level>,
    shared_browser_watched_contexts: Family<Label<String>, Level>,
    files: Level,
    files_bytes: Level,
    recordings: Level,
    recording_bytes: Level,
}

/// Readings that live elsewhere, taken at scrape time.
pub struct Gauges {
    pub sessions_active: usize,
    pub pool_idle: usize,
    /// Active sessions on a browser context of a shared browser.
    pub sessions_context: usize,
    /// Contexts open in each shared browser, by the browser's id.
    pub shared_browsers: Vec<(String, usize)>,
    /// Contexts each shared browser's identity keeper holds a session's identity for.
    pub kept_contexts: Vec<(String, usize)>,
    /// Contexts each shared browser holds prepared for the next creates.
    pub spare_contexts: Vec<(String, usize)>,
    /// Contexts each shared browser's context watch follows the tabs and downloads of.
    pub watched_contexts: Vec<(String, usize)>,
    /// What sessions' files and recordings hold on this node.
    pub artifacts: ArtifactUsage,
}

/// What the sessions' files and recordings on this node hold.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArtifactUsage {
    pub files: u64,
    pub files_bytes: u64,
    pub recordings: u64,
    pub recording_bytes: u64,
}

/// The cluster as the nodes' last heartbeats tell it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterView {
    pub nodes_alive: usize,
    pub nodes_lost: usize,
    /// Session slots, free slots and sessions of the live nodes.
    pub capacity: usize,
    pub free_slots: usize,
    pub sessions: usize,
}

/// Registers families and hands back their handles. Names are written whole, as scrapers
/// see them, so that a name found on a dashboard is found here too.
struct Families<'a>(&'a mut Registry);

impl Families<'_> {
    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        // prometheus-client ends each help text with a period of its own.
        let help = help.strip_suffix('.').unwrap_or(help);
        self.0.register(name, help, metric.clone());
        metric
    }

    fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.add(Self::unsuffixed(name), help, Counter::default())
    }

    /// A counter's name without the `_total` prometheus-client appends.
    fn unsuffixed(name: &str) -> &str {
        name.strip_suffix("_total").expect("a counter's name ends in _total")
    }

    fn level(&mut self, name: &str, help: &str) -> Level {
        self.add(name, help, Level::default())
    }

    fn latency(&mut self, name: &str, help: &str) -> Latency {
        Latency(self.add(name, help, Latency::new().0))
    }

    /// A labelled counter whose every label value is known: its children, in order.
    fn counters<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: [&str; N],
    ) -> [Counter; N] {
        let family = self.add(
            Self::unsuffixed(name),
            help,
            Family::<Label<String>, Counter>::default(),
        );
        values.map(|value| family.get_or_create_owned(&[(label, value.to_owned())]))
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let mut f = Families(&mut registry);
        let sessions_active = f.level("cdpgate_sessions_active", "Sessions currently active.");
        let sessions_created = f.counter("cdpgate_sessions_created_total", "Sessions created.");
        let sessions_expired = f.counter("cdpgate_sessions_expired_total", "Sessions ended by their TTL.");
        let sessions_terminated = f.counter(
            "cdpgate_sessions_terminated_total",
            "Sessions ended by terminate, delete, Browser.close or a browser exit.",
        );
        let create_rejected = f.counter(
            "cdpgate_session_create_rejected_total",
            "Creates answered 503 for lack of capacity.",
        );
        let create_rate_limited = f.counter(
            "cdpgate_session_create_rate_limited_total",
            "Creates answered 429 for the per-key rate limit.",
        );
        let create_quota_refused = f.counter(
            "cdpgate_session_create_quota_refused_total",
            "Creates answered 429 for a per-key quota of sessions at once.",
        );
        let targets_closed = f.counter(
            "cdpgate_session_targets_closed_total",
            "Tabs closed by the broker past max_targets_per_session.",
        );
        let browser_egress_refused = f.counter(
            "cdpgate_browser_egress_refused_total",
            "Connections of managed browsers' pages refused by the egress policy.",
        );
        let proxy_errors = f.counter(
            "cdpgate_upstream_proxy_errors_total",
            "Connections a session's upstream proxy could not carry (unreachable, refused credentials).",
        );
        let browser_bytes_in = f.counter(
            "cdpgate_browser_network_received_bytes_total",
            "Bytes managed browsers' pages received from the network.",
        );
        let browser_bytes_out = f.counter(
            "cdpgate_browser_network_sent_bytes_total",
            "Bytes managed browsers' pages sent to the network.",
        );
        let sessions_idle = f.counter("cdpgate_sessions_idle_total", "Sessions ended by their idle timeout.");
        let renders_bare = f.counter(
            "cdpgate_renders_bare_total",
            "One-call renders run in a browser context of their own without a session (not kept, no profile, recording or CDP log).",
        );
        let contexts_created = f.counter(
            "cdpgate_contexts_created_total",
            "Browser contexts created in shared browsers for context sessions.",
        );
        let shared_browser_recycles = f.counter(
            "cdpgate_shared_browser_recycles_total",
            "Shared browsers retired after their context allowance, their memory limit, or to serve another tenant.",
        );
        let connections_refused = f.counter(
            "cdpgate_proxy_connections_refused_total",
            "WebSocket connections refused for a session's connection limit.",
        );
        let pool_idle = f.level("cdpgate_pool_idle", "Warm browsers waiting for a session.");
        let runtime_tasks = f.level(
            "cdpgate_runtime_tasks",
            "Tasks alive in the broker's async runtime (a count that only grows is a leak).",
        );
        let browsers_launched = f.counter("cdpgate_browsers_launched_total", "Browsers started.");
        let browser_launch_failures = f.counter("cdpgate_browser_launch_failures_total", "Browser starts that failed.");
        let proxy_connections = f.counter("cdpgate_proxy_connections_total", "CDP WebSocket connections accepted.");
        let proxy_connections_open = f.level("cdpgate_proxy_connections_open", "CDP WebSocket connections open now.");
        let profile_saves = f.counter(
            "cdpgate_profile_saves_total",
            "Profiles saved at the end of a persisting session.",
        );
        let profile_save_failures = f.counter(
            "cdpgate_profile_save_failures_total",
            "Persisting sessions whose profile could not be saved.",
        );
        let profile_saves_superseded = f.counter(
            "cdpgate_profile_saves_superseded_total",
            "Saves refused because a later writer had taken the profile (cluster fencing).",
        );
        let files = f.level(
            "cdpgate_session_files",
            "Files held in sessions' files (running and retained sessions).",
        );
        let files_bytes = f.level("cdpgate_session_files_bytes", "Bytes of sessions' files held.");
        let recordings = f.level("cdpgate_recordings", "Session recordings held.");
        let recording_bytes = f.level("cdpgate_recordings_bytes", "Bytes of session recordings held.");
        let files_stored = f.counter(
            "cdpgate_session_files_stored_total",
            "Files stored in sessions' files (finished downloads and uploads).",
        );
        let files_quota_refusals = f.counter(
            "cdpgate_session_files_quota_refusals_total",
            "Downloads cancelled and uploads refused for the files quota or the upload limit.",
        );
        let recordings_started = f.counter("cdpgate_recordings_started_total", "Session recordings started.");
        let recordings_truncated = f.counter(
            "cdpgate_recordings_truncated_total",
            "Recordings stopped at max_recording_bytes.",
        );
        let requests_blocked = f.counter(
            "cdpgate_browser_requests_blocked_total",
            "Requests of sessions' pages stopped by their block or block_urls.",
        );
        let challenges = f.counters(
            "cdpgate_challenges_total",
            "Challenges (CAPTCHA frames) sessions' pages showed, by kind.",
            "kind",
            CHALLENGE_KINDS,
        );
        let [named_pool_hits, named_pool_misses] = f.counters(
            "cdpgate_named_pool_takes_total",
            "Creates from a named pool, by result: a ready browser taken (hit) or a cold start (miss).",
            "result",
            ["hit", "miss"],
        );
        let named_pool_refill_time = f.latency(
            "cdpgate_named_pool_refill_seconds",
            "Time to make one ready browser of a named pool (profile copy and launch).",
        );
        let named_pool_refill_failures = f.counter(
            "cdpgate_named_pool_refill_failures_total",
            "Ready browsers of named pools that could not be made.",
        );
        let named_pools = f.level("cdpgate_named_pools", "Named pools defined on this node.");
        let named_pool_ready = f.level(
            "cdpgate_named_pool_ready",
            "Browsers ready in the named pools of this node.",
        );
        let queue_waits = f.counter("cdpgate_queue_waits_total", "Creates that waited for a free slot.");
        let actions_succeeded = f.counter(
            "cdpgate_single_actions_succeeded_total",
            "Single actions that succeeded.",
        );
        let actions_failed = f.counter(
            "cdpgate_single_actions_failed_total",
            "Single actions that failed (answered success: false).",
        );
        let action_model_calls = f.counter(
            "cdpgate_single_action_model_calls_total",
            "Calls made to the configured model (the credits charged).",
        );
        let action_cache_hits = f.counter(
            "cdpgate_single_action_cache_hits_total",
            "Single actions replayed from the cache.",
        );
        let action_cache_failures = f.counter(
            "cdpgate_single_action_cache_failures_total",
            "Cached single actions whose replay failed and that were resolved afresh.",
        );
        let directions = ["to_browser", "to_client"];
        let [messages_to_browser, messages_to_client] = f.counters(
            "cdpgate_proxy_messages_total",
            "WebSocket messages relayed.",
            "direction",
            directions,
        );
        let [bytes_to_browser, bytes_to_client] = f.counters(
            "cdpgate_proxy_bytes_total",
            "Payload bytes relayed.",
            "direction",
            directions,
        );
        let queue_wait_seconds = f.add(
            Families::unsuffixed("cdpgate_queue_wait_seconds_total"),
            "Time creates spent waiting for a slot.",
            Counter::<f64, AtomicU64>::default(),
        );
        let codes = std::array::from_fn::<_, { CLOSE_CODES.len() + 1 }, _>(|i| {
            CLOSE_CODES.get(i).map_or("other".to_owned(), |c| c.to_string())
        });
        let closes = f.counters(
            "cdpgate_proxy_close_frames_total",
            "Close frames sent to clients, by code.",
            "code",
            codes.each_ref().map(String::as_str),
        );
        let errors = f.counters(
            "cdpgate_errors_total",
            "Error answers, by whose fault: the client's, a browser's or upstream's, or the broker's.",
            "origin",
            [Origin::Client, Origin::Upstream, Origin::Internal].map(Origin::as_str),
        );
        let refused = f.add(
            Families::unsuffixed("cdpgate_context_refused_commands_total"),
            "CDP commands of context sessions the filter refused, by method.",
            Family::default(),
        );
        let shared_browser_contexts = f.add(
            "cdpgate_shared_browser_contexts",
            "Browser contexts open in each shared browser.",
            Family::default(),
        );
        let shared_browser_kept_contexts = f.add(
            "cdpgate_shared_browser_kept_contexts",
            "Browser contexts whose session's identity each shared browser's keeper applies.",
            Family::default(),
        );
        let shared_browser_spare_contexts = f.add(
            "cdpgate_shared_browser_spare_contexts",
            "Browser contexts each shared browser holds prepared for the next creates.",
            Family::default(),
        );
        let shared_browser_watched_contexts = f.add(
            "cdpgate_shared_browser_watched_contexts",
            "Browser contexts whose session's tabs and downloads each shared browser's context watch follows.",
            Family::default(),
        );
        let isolation = f.add(
            "cdpgate_sessions_by_isolation",
            "Active sessions by isolation.",
            Family::<Label<&'static str>, Level>::default(),
        );
        let sessions_by_isolation = ["process", "context"].map(|i| isolation.get_or_create_owned(&[("isolation", i)]));
        let launch_time = f.latency(
            "cdpgate_browser_launch_seconds",
            "Time from spawn to DevTools listening.",
        );
        let create_time = f.latency(
            "cdpgate_session_create_seconds",
            "Time to create a session, for creates that succeeded.",
        );
        let action_time = f.latency(
            "cdpgate_single_action_seconds",
            "Time to run a single action, waiting for the session's earlier ones included.",
        );
        Metrics {
            registry,
            scrape: Mutex::new(()),
            sessions_created,
            sessions_expired,
            sessions_terminated,
            sessions_idle,
            create_rejected,
            create_rate_limited,
            create_quota_refused,
            create_time,
            targets_closed,
            queue_waits,
            queue_wait_seconds,
            queue_waiting: Level::default(),
            browsers_launched,
            browser_launch_failures,
            launch_time,
            proxy_connections,
            proxy_connections_open,
            connections_refused,
            messages_to_browser,
            messages_to_client,
            bytes_to_browser,
            bytes_to_client,
            closes,
            errors,
            profile_saves,
            profile_save_failures,
            profile_saves_superseded,
            action_time,
            actions_succeeded,
            actions_failed,
            action_model_calls,
            action_cache_hits,
            action_cache_failures,
            browser_egress_refused,
            proxy_errors,
            browser_bytes_in,
            browser_bytes_out,
            shared_browser_recycles,
            contexts_created,
            renders_bare,
            files_stored,
            files_quota_refusals,
            recordings_started,
            recordings_truncated,
            requests_blocked,
            challenges,
            named_pool_hits,
            named_pool_misses,
            named_pool_refill_time,
            named_pool_refill_failures,
            named_pools,
            named_pool_ready,
            refused,
            refused_methods: Mutex::new(0),
            sessions_active,
            sessions_by_isolation,
            pool_idle,
            runtime_tasks,
            shared_browser_contexts,
            shared_browser_kept_contexts,
            shared_browser_spare_contexts,
            shared_browser_watched_contexts,
            files,
            files_bytes,
            recordings,
            recording_bytes,
        }
    }

    pub fn observe_launch(&self, took: Duration) {
        self.launch_time.observe(took);
        self.browsers_launched.inc();
    }

    /// A create that waited `took` for a free slot.
    pub fn observe_queue_wait(&self, took: Duration) {
        self.queue_waits.inc();
        self.queue_wait_seconds.inc_by(took.as_secs_f64());
    }

    pub fn record_close(&self, code: u16) {
        let i = CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(CLOSE_CODES.len());
        self.closes[i].inc();
    }

    /// A challenge a session's page showed (one of [`CHALLENGE_KINDS`]).
    pub fn record_challenge(&self, kind: &str) {
        if let Some(i) = CHALLENGE_KINDS.iter().position(|k| *k == kind) {
            self.challenges[i].inc();
        }
    }

    /// A command the context filter refused.
    pub fn record_refused(&self, method: &str) {
        let named = method.len() <= 80 && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
        let label = [("method", method.to_owned())];
        if named && let Some(counter) = self.refused.get(&label) {
            counter.inc();
            return;
        }
        // A new label: counted under the lock, "other" being one of the labels.
        let mut methods = self.refused_methods.lock().unwrap_or_else(|e| e.into_inner());
        let labelled = named && self.refused.get(&label).is_some();
        let label = if labelled {
            label
        } else if named && *methods < MAX_REFUSED_METHODS - 1 {
            *methods += 1;
            label
        } else {
            [("method", "other".to_owned())]
        };
        self.refused.get_or_create(&label).inc();
    }

    /// Counts an error answered to a client, by whose fault it was.
    pub fn record_error(&self, origin: Origin) {
        let i = match origin {
            Origin::Client => 0,
            Origin::Upstream => 1,
            Origin::Internal => 2,
        };
        self.errors[i].inc();
    }

    /// The exposition, with the readings of `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let count = |n: usize| n as u64;
        self.sessions_active.set(count(gauges.sessions_active));
        self.pool_idle.set(count(gauges.pool_idle));
        // Read here rather than passed in: the runtime is the caller's, whoever it is.
        let tasks = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        self.runtime_tasks.set(count(tasks));
        let [process, context] = &self.sessions_by_isolation;
        process.set(count(gauges.sessions_active.saturating_sub(gauges.sessions_context)));
        context.set(count(gauges.sessions_context));
        // Browsers come and go: only those running now are shown.
        for (family, values) in [
            (&self.shared_browser_contexts, &gauges.shared_browsers),
            (&self.shared_browser_kept_contexts, &gauges.kept_contexts),
            (&self.shared_browser_spare_contexts, &gauges.spare_contexts),
            (&self.shared_browser_watched_contexts, &gauges.watched_contexts),
        ] {
            family.clear();
            for (browser, value) in values {
                family.get_or_create(&[("browser", browser.clone())]).set(count(*value));
            }
        }
        let usage = gauges.artifacts;
        self.files.set(usage.files);
        self.files_bytes.set(usage.files_bytes);
        self.recordings.set(usage.recordings);
        self.recording_bytes.set(usage.recording_bytes);
        encode(&self.registry)
    }
}

/// The cluster's families, in a cluster only: the view where Redis answered, and the node
/// records read from it that did not verify.
pub fn render_cluster(view: Option<&ClusterView>, forged_records: u64) -> String {
    let mut registry = Registry::default();
    let mut f = Families(&mut registry);
    if let Some(view) = view {
        let nodes = f.add(
            "cdpgate_cluster_nodes",
            "Nodes registered, by whether their heartbeat is current.",
            Family::<Label<&'static str>, Level>::default(),
        );
        nodes.get_or_create(&[("state", "alive")]).set(view.nodes_alive as u64);
        nodes.get_or_create(&[("state", "lost")]).set(view.nodes_lost as u64);
        for (name, help, value) in [
            (
                "cdpgate_cluster_capacity",
                "Session slots of the live nodes.",
                view.capacity,
            ),
            (
                "cdpgate_cluster_free_slots",
                "Free session slots of the live nodes.",
                view.free_slots,
            ),
            (
                "cdpgate_cluster_sessions",
                "Sessions the live nodes run.",
                view.sessions,
            ),
        ] {
            f.level(name, help).set(value as u64);
        }
    }
    f.counter(
        "cdpgate_cluster_forged_node_records_total",
        "Node records read from Redis that do not verify under the cluster secret (ignored).",
    )
    .inc_by(forged_records);
    encode(&registry)
}

fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Only the writer can fail, and a String does not.
    let _ = prometheus_text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_gauges() -> Gauges {
        Gauges {
            sessions_active: 0,
            pool_idle: 0,
            sessions_context: 0,
            shared_browsers: Vec::new(),
            kept_contexts: Vec::new(),
            spare_contexts: Vec::new(),
            watched_contexts: Vec::new(),
            artifacts: Default::default(),
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_launch(Duration::from_millis(120));
        m.observe_launch(Duration::from_millis(30));
        let text = m.render(&Gauges {
            pool_idle: 2,
            sessions_active: 1,
            ..no_gauges()
        });
        assert!(
            text.contains("cdpgate_browser_launch_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cdpgate_browser_launch_seconds_bucket{le=\"0.25\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cdpgate_browser_launch_seconds_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("cdpgate_browser_launch_seconds_count 2\n"), "{text}");
        assert!(text.contains("cdpgate_pool_idle 2\n"), "{text}");
        assert!(text.contains("cdpgate_browsers_launched_total 2\n"), "{text}");
        m.record_error(Origin::Upstream);
        let text = m.render(&no_gauges());
        assert!(text.contains("cdpgate_errors_total{origin=\"upstream\"} 1\n"), "{text}");
        assert!(text.contains("cdpgate_errors_total{origin=\"client\"} 0\n"), "{text}");
        assert!(
            text.contains("cdpgate_proxy_close_frames_total{code=\"other\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("cdpgate_pool_idle 0\n"),
            "a reading is taken at each scrape: {text}"
        );
    }

    #[test]
    fn refused_methods_are_a_bounded_set_of_labels() {
        let m = Metrics::default();
        m.record_refused("Browser.crash");
        m.record_refused("Browser.crash");
        m.record_refused("bad\"label");
        for i in 0..500 {
            m.record_refused(&format!("Made.up{i}"));
        }
        let text = m.render(&no_gauges());
        assert!(
            text.contains("cdpgate_context_refused_commands_total{method=\"Browser.crash\"} 2\n"),
            "{text}"
        );
        let labels = text.matches("cdpgate_context_refused_commands_total{").count();
        assert_eq!(labels, MAX_REFUSED_METHODS, "{text}"); // "other" included
        assert!(!text.contains("bad\""));
    }

    #[test]
    fn shared_browsers_gone_leave_the_exposition() {
        let m = Metrics::default();
        let text = m.render(&Gauges {
            shared_browsers: vec![("b1".into(), 2), ("b2".into(), 1)],
            ..no_gauges()
        });
        assert!(
            text.contains("cdpgate_shared_browser_contexts{browser=\"b1\"} 2\n"),
            "{text}"
        );
        let text = m.render(&Gauges {
            shared_browsers: vec![("b2".into(), 3)],
            ..no_gauges()
        });
        assert!(!text.contains("browser=\"b1\""), "{text}");
        assert!(
            text.contains("cdpgate_shared_browser_contexts{browser=\"b2\"} 3\n"),
            "{text}"
        );
    }
}
