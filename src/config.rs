//! Configuration: `config.toml`, then `CDPGATE_<KEY>` environment overrides, then checks.
//!
//! Every field has a default so that a bare start works. `validate()` reports every bad
//! value at once rather than the first one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::values::Screen;

/// The event types a webhook filter may name (`events::EventType`, which sits above this
/// layer, has the same names; a test holds them together).
pub const KNOWN_EVENTS: &[&str] = &[
    "created",
    "client_connected",
    "client_disconnected",
    "tab_opened",
    "tab_navigated",
    "tab_closed",
    "page_crashed",
    "dialog",
    "download_started",
    "download_finished",
    "download_refused",
    "upload",
    "profile_saved",
    "console_error",
    "page_error",
    "challenge_seen",
    "idle_warning",
    "ended",
];

/// The broker's settings. Each field mirrors a key of `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port the HTTP/WebSocket server binds (`CDPGATE_LISTEN`).
    pub listen: SocketAddr,
    /// Base URL clients reach the broker at, used in every `cdp_url` (`CDPGATE_PUBLIC_URL`).
    /// Empty: derived from the bound address. Never taken from a request's `Host` header.
    pub public_url: String,
    /// Directory for generated secrets and per-browser scratch directories (`CDPGATE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Accepted API keys, each one a tenant (`CDPGATE_API_KEYS`, comma-separated).
    /// Empty: one is generated on first start and kept in `data_dir/api_key`.
    pub api_keys: Vec<String>,
    /// Secret that signs connection tokens. Empty: derived from `cluster_secret` when that
    /// is set, else generated once into `data_dir/token_secret`.
    pub token_secret: String,
    /// Browsers kept started ahead of demand.
    pub pool_size: usize,
    /// Hard cap on sessions holding a browser at once.
    pub max_sessions: usize,
    /// How long a create waits for a free slot before answering 503.
    pub queue_timeout_ms: u64,
    /// Chrome or Chromium executable. Empty: the first of the usual paths that exists.
    pub chrome_path: String,
    /// Extra command-line flags for every browser, after the broker's own.
    pub chrome_flags: Vec<String>,
    /// Start browsers although the kernel cannot confine them (no Landlock): every session
    /// can then read and write whatever the broker can, its secrets included
    /// (`CDPGATE_ALLOW_UNCONFINED_BROWSERS`). Off: without Landlock no browser starts.
    pub allow_unconfined_browsers: bool,
    /// Process sessions' headless shells run as one process (`--single-process`): pages,
    /// network and GPU inside the browser process, about 0.65× the CPU per job. A tab's
    /// crash then ends its session's browser, a client's `Target.createBrowserContext` is
    /// refused on its way (`proxy::one_context`: Chrome serves one context in this mode,
    /// and a tab in a second would end it), and pages run outside Chrome's sandbox (a root
    /// broker's are outside it anyway), so the broker starts with it only where the
    /// kernel confines browsers whole (`Confinement::holds_a_whole_browser`). Shared
    /// browsers never do: their contexts are other tenants'.
    pub single_process_shell: bool,
    /// How long a browser may take to print its DevTools address.
    pub launch_timeout_ms: u64,
    /// TTL of a session created without one, in seconds.
    pub default_ttl: u64,
    /// Largest TTL a session may ask for, in seconds (at most 86400).
    pub max_ttl: u64,
    /// How long ended sessions stay readable, in seconds.
    pub retention_secs: u64,
    /// Screen size of sessions created without `screen_config`; the warm pool is started at it.
    pub default_width: u32,
    pub default_height: u32,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers, and then its body; slower
    /// clients are dropped (headers) or answered 408 (body).
    pub request_read_timeout_ms: u64,
    /// Largest `metadata` object accepted, in bytes of JSON.
    pub max_metadata_bytes: usize,
    /// Largest WebSocket message relayed, in bytes (full-page screenshots are tens of MB).
    pub max_message_bytes: usize,
    /// Largest WebSocket message the broker parses, in bytes: a context session's client
    /// messages (its filter reads each one) and a live viewer's. Reading one costs memory
    /// beyond its size, so these get a smaller limit than the bytes relayed unparsed (at
    /// most `max_message_bytes`).
    pub max_parsed_message_bytes: usize,
    /// How long shutdown waits for connections and browsers to wind down.
    pub shutdown_timeout_ms: u64,
    /// Bring-your-own browsers: networks (CIDR) and host names (`*.suffix` allowed) that a
    /// session's `cdp_url` may reach although they are loopback, private or link-local
    /// (`CDPGATE_BYO_ALLOW`, comma-separated). Public addresses need no entry.
    pub byo_allow: Vec<String>,
    /// How long a user's `cdp_url` may take to answer, per step (connect, handshake, reply).
    pub byo_timeout_ms: u64,
    /// Where the pages of managed browsers may not go (`CDPGATE_BROWSER_EGRESS_DENY`,
    /// comma-separated): the keywords `link-local`, `metadata` (the cloud metadata
    /// addresses and names), `private`, `loopback` (with `0.0.0.0/8`, `::` and
    /// `localhost`), `unspecified`, `shared`, `reserved`, CIDRs and host names. By default
    /// everything but the public internet: a shared service's pages must not reach its
    /// host or network. The broker's own address and its browsers' ports are refused always.
    pub browser_egress_deny: Vec<String>,
    /// Exceptions to `browser_egress_deny` (`CDPGATE_BROWSER_EGRESS_ALLOW`): CIDRs, host
    /// names (`*.suffix` allowed) and the keywords but `metadata`. `["loopback"]` is the
    /// opt-in for local use (pages served on this machine).
    pub browser_egress_allow: Vec<String>,
    /// Seconds without a CDP client, a live viewer or a running action after which a
    /// session created without `idle_timeout` ends. 0: never.
    pub default_idle_timeout: u64,
    /// `process` (a browser of its own per session) or `context` (a browser context in a
    /// shared browser) for sessions created without `isolation` (`CDPGATE_DEFAULT_ISOLATION`).
    pub default_isolation: String,
    /// `shell` (Chromium's headless shell) or `full` (the full browser) for process
    /// sessions created without `browser` (`CDPGATE_DEFAULT_BROWSER`). Empty: the shell
    /// where it is installed, else the full browser.
    pub default_browser: String,
    /// The executable of the shared browsers. Empty: Chromium's headless shell where it is
    /// installed (`chromium-headless-shell`), else `chrome_path`'s browser.
    pub context_chrome_path: String,
    /// Most shared browsers running at once for context sessions.
    pub context_browsers: usize,
    /// Most browser contexts (context sessions) open in one shared browser.
    pub max_contexts_per_browser: usize,
    /// `tenant`: a shared browser serves one API key's sessions; `any`: any key's, for
    /// trusted single-tenant deployments only.
    pub context_sharing: String,
    /// Contexts a shared browser serves before it is replaced (once its sessions end).
    pub context_recycle_after: u64,
    /// Memory (PSS of all its processes, MiB) past which a shared browser takes no new
    /// context and is replaced once its sessions end. 0: no limit.
    pub context_browser_max_memory_mb: u64,
    /// Contexts each shared browser keeps prepared (first tab open at the default screen),
    /// so that a context session is handed out without waiting for Chrome.
    pub context_spares: usize,
    /// Most spare contexts per shared browser while creates find none ready: a create
    /// that finds none doubles the number kept, up to this; `context_spares_burst_seconds`
    /// without such a create bring it back to `context_spares`. At most 64; at or below
    /// `context_spares`: no growth; `context_spares = 0` turns spares off whatever this is.
    pub context_spares_burst: usize,
    /// Seconds without a create finding no spare before the spares are back at
    /// `context_spares` (1 to 3600).
    pub context_spares_burst_seconds: u64,
    /// Shared browsers kept started for no tenant yet, so that a tenant's first context
    /// session does not wait for a launch (each holds a Chrome's memory while idle).
    pub context_warm_browsers: usize,
    /// PEM certificate chain and private key: with both, the API is https and every
    /// `cdp_url` is `wss://` (`CDPGATE_TLS_CERT`, `CDPGATE_TLS_KEY`). Empty: plain HTTP.
    pub tls_cert: String,
    pub tls_key: String,
    /// How long a client may take to finish its TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// Longest a storage state import or export may work in the profile's browser; past
    /// it the work is abandoned (504) and the profile left as it was.
    pub storage_state_timeout_ms: u64,
    /// Session creations allowed per API key per minute (a burst of that many, refilled
    /// evenly); above it, 429 with `Retry-After`. 0: no limit.
    pub creates_per_minute: u32,
    /// WebSocket connections (CDP and live view) one session may have open at once.
    pub max_connections_per_session: usize,
    /// Managed sessions (process and context) one API key may have running at once, on
    /// this node or, with `redis_url`, in the whole cluster; past it, 429. 0: no limit.
    pub max_sessions_per_key: usize,
    /// Bring-your-own sessions (`cdp_url`) one API key may have running at once; 0: no limit.
    pub max_byo_sessions_per_key: usize,
    /// Tabs (page targets) a managed session may have open at once: the broker closes
    /// each one opened past it. 0: no limit.
    pub max_targets_per_session: usize,
    /// Most sessions one fork (`POST /public/sessions/{id}/fork`) may make at once.
    pub max_fork_count: usize,
    /// Named pools (`POST /public/pools`) one API key may define on this node.
    pub max_pools_per_key: usize,
    /// Most ready browsers one named pool may keep (`size`).
    pub max_pool_size: usize,
    /// A proxied connection whose peer takes no bytes for this long is closed (a client
    /// that stops reading is dropped, not held with its data queued).
    pub write_stall_timeout_ms: u64,
    /// Longest a single action may run, waits and model calls included.
    pub action_timeout_ms: u64,
    /// How long an action waits for an element or a text to appear.
    pub action_wait_ms: u64,
    /// One-call renders (`POST /public/screenshot`, `/pdf`, `/content`, `/markdown`,
    /// `/scrape`): how long the page may take to load and settle when the call names no
    /// `timeout_ms`, and the most a call may name.
    pub render_timeout_ms: u64,
    pub max_render_timeout_ms: u64,
    /// Largest `html` a one-call render takes, in bytes (its request body may be this
    /// plus `max_body_bytes`).
    pub max_render_html_bytes: usize,
    /// OpenAI-compatible chat-completions endpoint for instructions the built-in interpreter
    /// does not understand (e.g. `https://api.openai.com/v1/chat/completions`). Empty: none.
    pub model_url: String,
    /// Model name sent to `model_url`.
    pub model_name: String,
    /// Environment variable holding the model endpoint's API key (sent as a Bearer token).
    pub model_api_key_env: String,
    /// Most model calls one action may make (each is one credit).
    pub model_max_calls: u32,
    /// Keeps session records in Redis (`redis://` or `rediss://`, `CDPGATE_REDIS_URL`), so
    /// that they survive the node and every node sharing the Redis reads them. Empty: on
    /// this node's disk.
    pub redis_url: String,
    /// Prefix of every key the broker writes in Redis: two clusters may share one Redis.
    pub redis_prefix: String,
    /// The secret the nodes of a cluster share (`CDPGATE_CLUSTER_SECRET`; required, at
    /// least 32 characters, with `redis_url`): it signs each node's record in Redis and every
    /// request one node sends on to another, and the token secret is derived from it when
    /// `token_secret` is empty. It is never written to Redis.
    pub cluster_secret: String,
    /// This node's name in Redis (`CDPGATE_NODE_ID`). Empty: generated once into
    /// `data_dir/node_id`.
    pub node_id: String,
    /// Where the other nodes reach this node's API and proxy (`CDPGATE_NODE_URL`,
    /// `http://host:port`: nodes talk plain HTTP on the private network, TLS ends at the
    /// load balancer). Empty: the bound address.
    pub node_url: String,
    /// `text` (readable lines) or `json` (one JSON object per line, with the session id
    /// and tenant on every line about a session), on standard output (`CDPGATE_LOG_FORMAT`).
    pub log_format: String,
    /// An OpenTelemetry collector's OTLP/HTTP address (`http://host:4318`, usually a
    /// collector beside the broker; `CDPGATE_OTLP_ENDPOINT`): every span goes to
    /// `{otlp_endpoint}/v1/traces` as protobuf. Empty: no spans are exported.
    pub otlp_endpoint: String,
    /// Where profiles are kept (`CDPGATE_PROFILE_STORE`): a directory, or
    /// `s3://bucket[/prefix]` for an S3-compatible object store (credentials, region and
    /// endpoint from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`). Empty: `data_dir/profiles`. A cluster needs
    /// one every node reaches: a shared mount or an object store.
    pub profile_store: String,
    /// How long a cluster node's hold on a profile it persists into lasts without renewal
    /// (renewed every third of it): a node paused longer loses the profile to the next
    /// writer, and its late save is refused.
    pub profile_lease_ms: u64,
    /// The largest a profile may grow, in bytes (what a save would keep: caches left out);
    /// a save past it is refused and the profile stays as it was.
    pub max_profile_bytes: u64,
    /// Key for the operator's endpoints (`GET /admin/cluster`), sent as `X-Admin-Key` or a
    /// Bearer token (`CDPGATE_ADMIN_KEY`). Empty: those endpoints answer 404.
    pub admin_key: String,
    /// Whether sessions created without `record` are recorded as video.
    pub record_sessions: bool,
    /// Frames per second of recordings (a frame is repeated while the page is still).
    pub recording_fps: u32,
    /// Largest recording kept per session, in bytes; recording stops there.
    pub max_recording_bytes: u64,
    /// The ffmpeg executable that encodes recordings. Empty: `ffmpeg` on the `PATH`.
    pub ffmpeg_path: String,
    /// Files (downloads and uploads) one session may hold, in bytes: a download past it is
    /// cancelled, an upload past it refused.
    pub max_session_files_bytes: u64,
    /// Largest file one upload may carry, in bytes.
    pub max_upload_bytes: u64,
    /// Chrome extensions one API key may keep (`/public/extensions`).
    pub max_extensions_per_key: usize,
    /// Unpacked bytes of all the extensions one API key keeps.
    pub max_extension_bytes_per_key: u64,
    /// Relay plain-TCP CDP connections on one single-threaded runtime per core (each
    /// relay and its two sockets on one core), rather than on the main runtime.
    pub relay_on_cores: bool,
    /// Longest busy-polling window of a relay thread after bytes pass, in µs (it adapts
    /// below this, down to none for connections whose messages come far apart; relays on
    /// cores only). 0: relay threads sleep as soon as they have nothing to do.
    pub relay_busy_poll_us: u64,
    /// Run the relay threads under Linux's `SCHED_BATCH` policy: a relay thread woken by
    /// bytes does not preempt the thread running on its core; it runs when that one blocks
    /// or its slice ends, and passes everything that arrived meanwhile in one go.
    pub relay_sched_batch: bool,
    /// Ad and tracker lists in EasyList format (`block: ["ads"]`), read at start
    /// (`CDPGATE_ADBLOCK_LISTS`, comma-separated paths). Empty: `ads` is refused.
    pub adblock_lists: Vec<String>,
    /// Events kept per session (`GET /public/sessions/{id}/events`); past it they are
    /// counted as dropped, except the session's `ended`.
    pub max_events_per_session: usize,
    /// Event streams (`text/event-stream`) one API key may hold open at once on a node.
    pub max_event_streams_per_key: usize,
    /// Console entries kept per session with `capture_console` (`GET …/logs`); past it or
    /// `max_log_bytes_per_session`, the oldest go and are counted as dropped.
    pub max_log_entries_per_session: usize,
    pub max_log_bytes_per_session: usize,
    /// Requests kept in the HAR of a session with `capture_network`; later ones are
    /// counted (`_dropped`), not kept.
    pub max_har_entries_per_session: usize,
    /// Largest body kept in a HAR (`capture_bodies`), and all of a session's together.
    pub max_har_body_bytes: usize,
    pub max_har_bodies_bytes_per_session: usize,
    /// Webhook targets: networks (CIDR), host names (`*.suffix` allowed) and the keywords
    /// `loopback`, `private`, `link-local`… that a `webhook_url` may reach although they are
    /// not public (`CDPGATE_WEBHOOK_ALLOW`, comma-separated). Checked on the address
    /// connected to, after the lookup.
    pub webhook_allow: Vec<String>,
    /// How long one webhook delivery may take (connect, send, answer).
    pub webhook_timeout_ms: u64,
    /// Longest wait between two tries of a delivery (the wait doubles from 1 s up to it).
    pub webhook_retry_max_ms: u64,
    /// Webhook settings per API key: `[[webhooks]]` tables with `tenant` (the key's tenant
    /// id, `t_` and the first 16 hex digits of the key's SHA-256; `"*"`: every key), `secret`
    /// (`whsec_` and base64, signs deliveries), and optionally `url` and `events`, the
    /// default `webhook_url` and `webhook_events` of the key's sessions.
    pub webhooks: Vec<KeyWebhook>,
}

/// One `[[webhooks]]` table of the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyWebhook {
    pub tenant: String,
    pub secret: String,
    pub url: String,
    pub events: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            public_url: String::new(),
            data_dir: PathBuf::from("data"),
            api_keys: Vec::new(),
            token_secret: String::new(),
            pool_size: 2,
            max_sessions: 8,
            queue_timeout_ms: 5_000,
            chrome_path: String::new(),
            chrome_flags: Vec::new(),
            allow_unconfined_browsers: false,
            single_process_shell: false,
            launch_timeout_ms: 15_000,
            default_ttl: 600,
            max_ttl: 86_400,
            retention_secs: 86_400,
            default_width: 1280,
            default_height: 720,
            max_body_bytes: 64 * 1024,
            request_read_timeout_ms: 10_000,
            max_metadata_bytes: 16 * 1024,
            max_message_bytes: 256 * 1024 * 1024,
            max_parsed_message_bytes: 16 * 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            byo_allow: Vec::new(),
            byo_timeout_ms: 5_000,
            browser_egress_deny: crate::egress_rules::DEFAULT_BROWSER_DENY
                .iter()
                .map(|k| k.to_string())
                .collect(),
            browser_egress_allow: Vec::new(),
            default_idle_timeout: 0,
            default_isolation: "process".into(),
            default_browser: String::new(),
            context_chrome_path: String::new(),
            context_browsers: 2,
            max_contexts_per_browser: 50,
            context_sharing: "tenant".into(),
            context_recycle_after: 1000,
            context_browser_max_memory_mb: 4096,
            context_spares: 2,
            context_spares_burst: 8,
            context_spares_burst_seconds: 30,
            context_warm_browsers: 0,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_handshake_timeout_ms: 10_000,
            storage_state_timeout_ms: 45_000,
            creates_per_minute: 120,
            max_connections_per_session: 32,
            max_sessions_per_key: 4,
            max_byo_sessions_per_key: 8,
            max_targets_per_session: 20,
            max_fork_count: 16,
            max_pools_per_key: 8,
            max_pool_size: 8,
            write_stall_timeout_ms: 60_000,
            action_timeout_ms: 90_000,
            action_wait_ms: 10_000,
            render_timeout_ms: 30_000,
            max_render_timeout_ms: 120_000,
            max_render_html_bytes: 1024 * 1024,
            model_url: String::new(),
            model_name: String::new(),
            model_api_key_env: "CDPGATE_MODEL_API_KEY".into(),
            model_max_calls: 10,
            redis_url: String::new(),
            redis_prefix: "cdpgate:".into(),
            cluster_secret: String::new(),
            node_id: String::new(),
            node_url: String::new(),
            admin_key: String::new(),
            profile_store: String::new(),
            profile_lease_ms: 15_000,
            max_profile_bytes: 512 * 1024 * 1024,
            log_format: "text".into(),
            otlp_endpoint: String::new(),
            record_sessions: false,
            recording_fps: 5,
            max_recording_bytes: 512 * 1024 * 1024,
            ffmpeg_path: String::new(),
            max_session_files_bytes: 512 * 1024 * 1024,
            max_upload_bytes: 64 * 1024 * 1024,
            max_extensions_per_key: 20,
            max_extension_bytes_per_key: 200 * 1024 * 1024,
            relay_on_cores: true,
            relay_busy_poll_us: 500,
            relay_sched_batch: true,
            adblock_lists: Vec::new(),
            max_events_per_session: 1000,
            max_event_streams_per_key: 16,
            max_log_entries_per_session: 1000,
            max_log_bytes_per_session: 1024 * 1024,
            max_har_entries_per_session: 5000,
            max_har_body_bytes: 1024 * 1024,
            max_har_bodies_bytes_per_session: 20 * 1024 * 1024,
            webhook_allow: Vec::new(),
            webhook_timeout_ms: 10_000,
            webhook_retry_max_ms: 60_000,
            webhooks: Vec::new(),
        }
    }
}

/// Screen sides a session may ask for.
pub const MIN_SIDE: u32 = 100;
pub const MAX_WIDTH: u32 = 7680;
pub const MAX_HEIGHT: u32 = 4320;
/// The TTL ceiling of the wire contract.
pub const TTL_CEILING: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads `path` (a missing file means all defaults), applies the environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        config.apply_env(|key| std::env::var(key).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides fields from `CDPGATE_<KEY>` variables; `lookup` is the environment.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let var = |key: &str| lookup(&format!("CDPGATE_{}", key.to_ascii_uppercase()));
        fn parse<T: std::str::FromStr>(key: &str, value: &str, errors: &mut Vec<String>) -> Option<T> {
            match value.trim().parse() {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(format!("CDPGATE_{}: cannot parse {value:?}", key.to_ascii_uppercase()));
                    None
                }
            }
        }
        fn list(value: &str) -> Vec<String> {
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }
        macro_rules! numeric {
            ($($field:ident),*) => {$(
                if let Some(v) = var(stringify!($field)) {
                    if let Some(n) = parse(stringify!($field), &v, &mut errors) { self.$field = n; }
                }
            )*};
        }
        numeric!(
            listen,
            pool_size,
            max_sessions,
            queue_timeout_ms,
            launch_timeout_ms,
            default_ttl,
            max_ttl,
            retention_secs,
            default_width,
            default_height,
            max_body_bytes,
            request_read_timeout_ms,
            max_metadata_bytes,
            max_message_bytes,
            max_parsed_message_bytes,
            shutdown_timeout_ms,
            byo_timeout_ms,
            default_idle_timeout,
            context_browsers,
            max_contexts_per_browser,
            context_recycle_after,
            context_browser_max_memory_mb,
            context_spares,
            context_spares_burst,
            context_spares_burst_seconds,
            context_warm_browsers,
            tls_handshake_timeout_ms,
            storage_state_timeout_ms,
            creates_per_minute,
            max_connections_per_session,
            max_sessions_per_key,
            max_byo_sessions_per_key,
            max_targets_per_session,
            max_fork_count,
            max_pools_per_key,
            max_pool_size,
            write_stall_timeout_ms,
            action_timeout_ms,
            action_wait_ms,
            render_timeout_ms,
            max_render_timeout_ms,
            max_render_html_bytes,
            model_max_calls,
            profile_lease_ms,
            max_profile_bytes,
            record_sessions,
            recording_fps,
            max_recording_bytes,
            max_session_files_bytes,
            max_upload_bytes,
            max_extensions_per_key,
            max_extension_bytes_per_key,
            relay_on_cores,
            relay_busy_poll_us,
            relay_sched_batch,
            max_events_per_session,
            max_event_streams_per_key,
            webhook_timeout_ms,
            webhook_retry_max_ms,
            max_log_entries_per_session,
            max_log_bytes_per_session,
            max_har_entries_per_session,
            max_har_body_bytes,
            max_har_bodies_bytes_per_session,
            allow_unconfined_browsers,
            single_process_shell
        );
        if let Some(v) = var("ffmpeg_path") {
            self.ffmpeg_path = v;
        }
        if let Some(v) = var("model_url") {
            self.model_url = v;
        }
        if let Some(v) = var("model_name") {
            self.model_name = v;
        }
        if let Some(v) = var("model_api_key_env") {
            self.model_api_key_env = v;
        }
        if let Some(v) = var("default_isolation") {
            self.default_isolation = v;
        }
        if let Some(v) = var("default_browser") {
            self.default_browser = v;
        }
        if let Some(v) = var("context_sharing") {
            self.context_sharing = v;
        }
        if let Some(v) = var("public_url") {
            self.public_url = v;
        }
        if let Some(v) = var("data_dir") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("token_secret") {
            self.token_secret = v;
        }
        if let Some(v) = var("chrome_path") {
            self.chrome_path = v;
        }
        if let Some(v) = var("context_chrome_path") {
            self.context_chrome_path = v;
        }
        if let Some(v) = var("api_keys") {
            self.api_keys = list(&v);
        }
        if let Some(v) = var("chrome_flags") {
            self.chrome_flags = list(&v);
        }
        if let Some(v) = var("tls_cert") {
            self.tls_cert = v;
        }
        if let Some(v) = var("tls_key") {
            self.tls_key = v;
        }
        if let Some(v) = var("webhook_allow") {
            self.webhook_allow = list(&v);
        }
        if let Some(v) = var("adblock_lists") {
            self.adblock_lists = list(&v);
        }
        if let Some(v) = var("byo_allow") {
            self.byo_allow = list(&v);
        }
        if let Some(v) = var("browser_egress_deny") {
            self.browser_egress_deny = list(&v);
        }
        if let Some(v) = var("browser_egress_allow") {
            self.browser_egress_allow = list(&v);
        }
        if let Some(v) = var("redis_url") {
            self.redis_url = v;
        }
        if let Some(v) = var("redis_prefix") {
            self.redis_prefix = v;
        }
        if let Some(v) = var("cluster_secret") {
            self.cluster_secret = v;
        }
        if let Some(v) = var("node_id") {
            self.node_id = v;
        }
        if let Some(v) = var("node_url") {
            self.node_url = v;
        }
        if let Some(v) = var("admin_key") {
            self.admin_key = v;
        }
        if let Some(v) = var("profile_store") {
            self.profile_store = v;
        }
        if let Some(v) = var("log_format") {
            self.log_format = v;
        }
        if let Some(v) = var("otlp_endpoint") {
            self.otlp_endpoint = v;
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Checks every value, reporting all the bad ones together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(format!(
                "public_url must start with http:// or https://, got {:?}",
                self.public_url
            ));
        }
        if self.max_sessions == 0 {
            errors.push("max_sessions must be at least 1".into());
        }
        // Chrome keeps a few hundred tabs at most before it runs out of memory or handles.
        if self.max_targets_per_session > 1000 {
            errors.push("max_targets_per_session must be within 0 (no limit)..=1000".into());
        }
        if !(1..=256).contains(&self.max_fork_count) {
            errors.push("max_fork_count must be within 1..=256".into());
        }
        if self.max_pools_per_key > 1000 {
            errors.push("max_pools_per_key must be within 0 (no pools)..=1000".into());
        }
        if self.max_pool_size > 1000 {
            errors.push("max_pool_size must be within 0 (no pools)..=1000".into());
        }
        if !(1..=30).contains(&self.recording_fps) {
            errors.push("recording_fps must be within 1..=30".into());
        }
        // Zip archives of a session's files are written without ZIP64.
        if self.max_session_files_bytes == 0 || self.max_session_files_bytes >= 4 << 30 {
            errors.push("max_session_files_bytes must be within 1..4 GiB".into());
        }
        if self.max_upload_bytes == 0 || self.max_upload_bytes > self.max_session_files_bytes {
            errors.push("max_upload_bytes must be within 1..=max_session_files_bytes".into());
        }
        // Past a few ms a window would poll through a browser's slow answers and a client's
        // think time: a core spent for a wake-up saved.
        if self.relay_busy_poll_us > 10_000 {
            errors.push("relay_busy_poll_us must be within 0..=10000".into());
        }
        if self.max_recording_bytes == 0 {
            errors.push("max_recording_bytes must be at least 1".into());
        }
        if self.max_ttl == 0 || self.max_ttl > TTL_CEILING {
            errors.push(format!("max_ttl must be within 1..={TTL_CEILING}"));
        }
        if self.default_ttl == 0 || self.default_ttl > self.max_ttl {
            errors.push("default_ttl must be within 1..=max_ttl".into());
        }
        if !(MIN_SIDE..=MAX_WIDTH).contains(&self.default_width)
            || !(MIN_SIDE..=MAX_HEIGHT).contains(&self.default_height)
        {
            errors.push(format!(
                "default_width x default_height must be within {MIN_SIDE}..={MAX_WIDTH} x {MIN_SIDE}..={MAX_HEIGHT}"
            ));
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            errors.push("every API key must be at least 16 characters".into());
        }
        if !self.token_secret.is_empty() && self.token_secret.len() < 32 {
            errors.push("token_secret must be at least 32 characters".into());
        }
        if self.max_body_bytes < 1024 {
            errors.push("max_body_bytes must be at least 1024".into());
        }
        if self.max_message_bytes < 1024 * 1024 {
            errors.push("max_message_bytes must be at least 1 MiB".into());
        }
        if self.max_parsed_message_bytes < 64 * 1024 {
            errors.push("max_parsed_message_bytes must be at least 64 KiB".into());
        }
        if let Err(bad) = crate::egress_rules::parse_allow_list("byo_allow", &self.byo_allow) {
            errors.extend(bad);
        }
        if let Err(bad) = crate::egress_rules::parse_browser_allow_list(&self.webhook_allow) {
            errors.extend(
                bad.into_iter()
                    .map(|b| b.replace("browser_egress_allow", "webhook_allow")),
            );
        }
        if !(1..=100_000).contains(&self.max_events_per_session) {
            errors.push("max_events_per_session must be within 1..=100000".into());
        }
        if !(1..=10_000).contains(&self.max_event_streams_per_key) {
            errors.push("max_event_streams_per_key must be within 1..=10000".into());
        }
        if !(1..=100_000).contains(&self.max_log_entries_per_session) {
            errors.push("max_log_entries_per_session must be within 1..=100000".into());
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_log_bytes_per_session) {
            errors.push("max_log_bytes_per_session must be within 1024..=268435456".into());
        }
        if !(1..=1_000_000).contains(&self.max_har_entries_per_session) {
            errors.push("max_har_entries_per_session must be within 1..=1000000".into());
        }
        if self.max_har_body_bytes > self.max_har_bodies_bytes_per_session
            || self.max_har_bodies_bytes_per_session > 1024 * 1024 * 1024
        {
            errors.push(
                "max_har_body_bytes must be at most max_har_bodies_bytes_per_session, itself at most 1073741824".into(),
            );
        }
        if self.webhook_timeout_ms == 0 || self.webhook_retry_max_ms < 1000 {
            errors.push("webhook_timeout_ms must be at least 1 and webhook_retry_max_ms at least 1000".into());
        }
        for hook in &self.webhooks {
            if hook.tenant.is_empty() {
                errors.push("every [[webhooks]] table names a tenant (or \"*\")".into());
            }
            if crate::auth::webhook_key(&hook.secret).is_none() {
                errors.push(format!(
                    "the webhook secret of tenant {:?} must be whsec_ and base64 of at least 24 bytes",
                    hook.tenant
                ));
            }
            if !hook.events.iter().all(|e| KNOWN_EVENTS.contains(&e.as_str())) {
                errors.push(format!(
                    "the webhook events of tenant {:?} name an unknown event type",
                    hook.tenant
                ));
            }
        }
        errors.extend(crate::egress_rules::check_browser_lists(
            &self.browser_egress_deny,
            &self.browser_egress_allow,
        ));
        if self.default_idle_timeout > self.max_ttl {
            errors.push("default_idle_timeout must be at most max_ttl (0 turns it off)".into());
        }
        if !["process", "context"].contains(&self.default_isolation.as_str()) {
            errors.push("default_isolation must be \"process\" or \"context\"".into());
        }
        if self.chrome_flags.iter().any(|f| f == "--single-process") {
            errors.push(
                "chrome_flags may not hold --single-process: it would make the shared browsers, which hold \
                 other tenants' contexts, one process (single_process_shell makes process sessions' shells so)"
                    .into(),
            );
        }
        if !["", "shell", "full"].contains(&self.default_browser.as_str()) {
            errors
                .push("default_browser must be \"shell\", \"full\" or empty (the shell where it is installed)".into());
        }
        if self.context_spares > 64 || self.context_spares_burst > 64 {
            errors.push("context_spares and context_spares_burst must be at most 64".into());
        }
        if !(1..=3600).contains(&self.context_spares_burst_seconds) {
            errors.push("context_spares_burst_seconds must be 1 to 3600".into());
        }
        if !["tenant", "any"].contains(&self.context_sharing.as_str()) {
            errors.push("context_sharing must be \"tenant\" or \"any\"".into());
        }
        if self.context_browsers == 0 || self.max_contexts_per_browser == 0 || self.context_recycle_after == 0 {
            errors
                .push("context_browsers, max_contexts_per_browser and context_recycle_after must be at least 1".into());
        }
        let redis = &self.redis_url;
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            errors.push("redis_url must start with redis:// or rediss://".into());
        }
        if !redis.is_empty() && self.api_keys.is_empty() {
            errors.push("with redis_url, set api_keys: every node of a cluster needs the same keys".into());
        }
        if !redis.is_empty() && self.cluster_secret.len() < 32 {
            errors.push(
                "with redis_url, set cluster_secret (CDPGATE_CLUSTER_SECRET) to the same secret of at least 32 \
                 characters on every node: the nodes prove to each other with it that they are the cluster's"
                    .into(),
            );
        }
        if !self.cluster_secret.is_empty() && self.cluster_secret.len() < 32 {
            errors.push("cluster_secret must be at least 32 characters".into());
        }
        if !redis.is_empty() && self.profile_store.is_empty() {
            errors.push(
                "with redis_url, set profile_store to a directory every node shares or an s3:// store: \
                 profiles on one node's disk cannot follow sessions across nodes"
                    .into(),
            );
        }
        if let Some(rest) = self.profile_store.strip_prefix("s3://")
            && rest.split('/').next().is_none_or(str::is_empty)
        {
            errors.push("profile_store s3://bucket[/prefix] needs a bucket".into());
        }
        let otlp = &self.otlp_endpoint;
        if !(otlp.is_empty() || otlp.starts_with("http://")) {
            errors.push(
                "otlp_endpoint must start with http:// (a collector beside the broker; https is not built in)".into(),
            );
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            errors.push("log_format must be \"text\" or \"json\"".into());
        }
        if !(1 << 20..=64 << 30).contains(&self.max_profile_bytes) {
            errors.push("max_profile_bytes must be within 1 MiB..=64 GiB".into());
        }
        if self.profile_lease_ms < 1000 {
            errors.push("profile_lease_ms must be at least 1000".into());
        }
        let node_url = &self.node_url;
        if !(node_url.is_empty() || node_url.starts_with("http://")) {
            errors.push("node_url must start with http:// (nodes talk plain HTTP to each other)".into());
        }
        if !redis.is_empty() && self.tls_enabled() {
            errors.push(
                "with redis_url, leave tls_cert and tls_key empty: nodes reach each other over plain HTTP, \
                 so terminate TLS at the load balancer in front of them"
                    .into(),
            );
        }
        if !self.node_id.is_empty()
            && (self.node_id.len() > 64
                || !self
                    .node_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            errors.push("node_id must be 1 to 64 letters, digits, - or _".into());
        }
        if !self.admin_key.is_empty() && self.admin_key.len() < 16 {
            errors.push("admin_key must be at least 16 characters".into());
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            errors.push("tls_cert and tls_key go together: set both or neither".into());
        }
        if self.byo_timeout_ms == 0 {
            errors.push("byo_timeout_ms must be positive".into());
        }
        if self.write_stall_timeout_ms == 0 {
            errors.push("write_stall_timeout_ms must be positive".into());
        }
        if self.storage_state_timeout_ms < 1000 {
            errors.push("storage_state_timeout_ms must be at least 1000".into());
        }
        if self.launch_timeout_ms == 0 {
            errors.push("launch_timeout_ms must be positive".into());
        }
        if self.request_read_timeout_ms == 0 {
            errors.push("request_read_timeout_ms must be positive".into());
        }
        if self.render_timeout_ms == 0 || self.render_timeout_ms > self.max_render_timeout_ms {
            errors.push("render_timeout_ms must be positive and at most max_render_timeout_ms".into());
        }
        if self.action_timeout_ms == 0 || self.action_wait_ms == 0 {
            errors.push("action_timeout_ms and action_wait_ms must be positive".into());
        }
        if !self.model_url.is_empty() {
            match url::Url::parse(&self.model_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => errors.push(format!("model_url must be an http(s) URL, got {:?}", self.model_url)),
            }
            if self.model_name.is_empty() {
                errors.push("model_name is required with model_url".into());
            }
            if self.model_max_calls == 0 {
                errors.push("model_max_calls must be at least 1".into());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }

    pub fn launch_timeout(&self) -> Duration {
        Duration::from_millis(self.launch_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_millis(self.request_read_timeout_ms)
    }

    pub fn action_timeout(&self) -> Duration {
        Duration::from_millis(self.action_timeout_ms)
    }

    pub fn render_timeout(&self) -> Duration {
        Duration::from_millis(self.render_timeout_ms)
    }

    pub fn action_wait(&self) -> Duration {
        Duration::from_millis(self.action_wait_ms)
    }

    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert.is_empty()
    }

    pub fn profile_lease(&self) -> Duration {
        Duration::from_millis(self.profile_lease_ms)
    }

    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    pub fn byo_timeout(&self) -> Duration {
        Duration::from_millis(self.byo_timeout_ms)
    }

    /// The screen of a session that asks for none.
    pub fn default_screen(&self) -> Screen {
        Screen {
            width: self.default_width,
            height: self.default_height,
        }
    }

    /// Frame and message limits of every WebSocket the broker speaks or relays.
    pub fn ws_config(&self) -> WebSocketConfig {
        let max = self.max_message_bytes;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    /// Largest message the broker parses: `max_parsed_message_bytes`, or
    /// `max_message_bytes` if that is smaller.
    pub fn max_parsed_message(&self) -> usize {
        self.max_parsed_message_bytes.min(self.max_message_bytes)
    }

    /// [`Config::ws_config`] for the WebSockets whose messages the broker parses.
    pub fn parsed_ws_config(&self) -> WebSocketConfig {
        let max = self.max_parsed_message();
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_overrides_the_documented_keys() {
        let env: HashMap<&str, &str> = [
            ("CDPGATE_LISTEN", "0.0.0.0:9000"),
            ("CDPGATE_PUBLIC_URL", "https://browsers.example"),
            ("CDPGATE_DATA_DIR", "/var/lib/cdpgate"),
            ("CDPGATE_API_KEYS", "key-aaaaaaaaaaaaaaaa, key-bbbbbbbbbbbbbbbb,"),
            ("CDPGATE_POOL_SIZE", "5"),
            ("CDPGATE_MAX_SESSIONS_PER_KEY", "0"),
            ("CDPGATE_MAX_BYO_SESSIONS_PER_KEY", "3"),
            ("CDPGATE_MAX_TARGETS_PER_SESSION", "7"),
            ("CDPGATE_BROWSER_EGRESS_ALLOW", "loopback, 10.0.0.0/8"),
        ]
        .into();
        let mut c = Config::default();
        c.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.public_url, "https://browsers.example");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cdpgate"));
        assert_eq!(c.api_keys, vec!["key-aaaaaaaaaaaaaaaa", "key-bbbbbbbbbbbbbbbb"]);
        assert_eq!(c.pool_size, 5);
        assert_eq!(
            (
                c.max_sessions_per_key,
                c.max_byo_sessions_per_key,
                c.max_targets_per_session
            ),
            (0, 3, 7)
        );
        assert_eq!(c.browser_egress_allow, vec!["loopback", "10.0.0.0/8"]);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_all_reported() {
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == "CDPGATE_POOL_SIZE" || k == "CDPGATE_MAX_TTL").then(|| "lots".to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CDPGATE_POOL_SIZE") && err.contains("CDPGATE_MAX_TTL"),
            "{err}"
        );

        let c = Config {
            max_ttl: 100_000,
            max_sessions: 0,
            api_keys: vec!["short".into()],
            relay_busy_poll_us: 10_001,
            chrome_flags: vec!["--mute-audio".into(), "--single-process".into()],
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("max_ttl")
                && err.contains("max_sessions")
                && err.contains("API key")
                && err.contains("relay_busy_poll_us")
                && err.contains("--single-process"),
            "{err}"
        );

        // A cluster needs a profile store every node reaches; an S3 one needs a bucket.
        let cluster = |store: &str| Config {
            redis_url: "redis://127.0.0.1:6379/".into(),
            api_keys: vec!["key-of-sixteen-chars".into()],
            profile_store: store.into(),
            cluster_secret: "a-cluster-secret-of-32-characters!!".into(),
            ..Config::default()
        };
        let err = cluster("").validate().unwrap_err().to_string();
        assert!(err.contains("set profile_store"), "{err}");
        // Nodes prove themselves to each other with a cluster secret of 32 characters or more.
        for secret in ["", "short-secret"] {
            let c = Config {
                cluster_secret: secret.into(),
                ..cluster("/mnt/shared/profiles")
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("set cluster_secret (CDPGATE_CLUSTER_SECRET)"), "{err}");
        }
        let err = cluster("s3://").validate().unwrap_err().to_string();
        assert!(err.contains("needs a bucket"), "{err}");
        cluster("s3://profiles/cluster-a").validate().unwrap();
        cluster("/mnt/shared/profiles").validate().unwrap();
        // Nodes reach each other over plain HTTP: no TLS listener, no https node_url.
        let tls = Config {
            tls_cert: "cert.pem".into(),
            tls_key: "key.pem".into(),
            node_url: "https://10.0.0.1:3000".into(),
            ..cluster("/mnt/shared/profiles")
        };
        let err = tls.validate().unwrap_err().to_string();
        assert!(
            err.contains("terminate TLS at the load balancer") && err.contains("node_url must start with http://"),
            "{err}"
        );
        let short_lease = Config {
            profile_lease_ms: 10,
            ..cluster("/mnt/shared/profiles")
        };
        assert!(
            short_lease
                .validate()
                .unwrap_err()
                .to_string()
                .contains("profile_lease_ms")
        );
    }

    #[test]
    fn the_repository_config_file_is_valid() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let c: Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
    }
}
