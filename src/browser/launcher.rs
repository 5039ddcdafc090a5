//! One Chrome process: started in its own process group with its own scratch directory,
//! confined by the kernel to its own directories and gateway (`confine`), with an
//! environment of its own, killed as a group, reaped, and its directories removed when it
//! is dropped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cdp;
use super::confine::{self, Allowed, Confinement};
use super::egress::Egress;
use super::forward::Gateway;
use super::stealth::{DISABLED_BLINK_FEATURES, Disguise};
use crate::auth::random_hex;
use crate::metrics::Metrics;

use crate::values::BrowserKind;
pub use crate::values::Screen;

/// Flags every browser gets: headless, quiet on this closed network, loopback only.
const BASE_FLAGS: &[&str] = &[
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--password-store=basic",
    // Without it the first tab gets an infobar about --no-sandbox a moment after start,
    // 56 px that come off its viewport.
    "--test-type",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    // Every request goes through the browser's gateway (`--proxy-server`), loopback too
    // (Chrome would send it direct), and WebRTC may not go around it over UDP (Landlock
    // confines TCP connects only). The full Chromium reads the first WebRTC flag and
    // ignores the second, the headless shell the reverse: without its own, the shell's
    // pages sent STUN packets to any address (`egress::webrtc_sends_no_udp_…` counts them).
    "--proxy-bypass-list=<-loopback>",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
];

/// Chrome features a session never uses that cost CPU at every launch: headless Chromium
/// preloads the omnibox popup's WebUI (two hidden targets in a renderer of their own),
/// about 0.9 of a launch's 1.5 CPU-seconds (`scripts/bench-launch.py`).
const DISABLED_FEATURES: &[&str] = &["WebUIOmniboxPopup", "WebUIOmniboxAimPopup"];

/// Features a shared browser also goes without: Chrome keeps one spare renderer process
/// started for the next navigation of the context that last navigated, and a shared
/// browser's next navigation is nearly always another context's, so the spare is killed
/// unused when its context is disposed. 15-19 % of a context job's CPU
/// (`docs/benchmarks.md`, "Context sessions against browserless").
const SHARED_DISABLED_FEATURES: &[&str] = &["SpareRendererForSitePerProcess"];

/// What a browser is launched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// One session's (or a profile's, or the pool's), on the headless shell or the full browser.
    Own(BrowserKind),
    /// Many context sessions'.
    Shared,
}

/// `flags` with one `--disable-features` holding `broker`'s features and any the
/// operator's flags name (Chrome reads only the last `--disable-features` it is given),
/// and one `--disable-blink-features` likewise (`stealth::DISABLED_BLINK_FEATURES`).
fn with_disabled_features(flags: &[String], broker: &[&str]) -> Vec<String> {
    let merged = merge_list_flag(flags, "--disable-features=", broker);
    merge_list_flag(&merged, "--disable-blink-features=", DISABLED_BLINK_FEATURES)
}

/// `flags` with one `{prefix}…` flag listing `broker`'s items, then those of the flags
/// of that name among `flags`.
fn merge_list_flag(flags: &[String], prefix: &str, broker: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = broker.iter().map(|f| f.to_string()).collect();
    let mut rest = Vec::new();
    for flag in flags {
        match flag.strip_prefix(prefix) {
            Some(list) => items.extend(list.split(',').filter(|f| !f.is_empty()).map(str::to_owned)),
            None => rest.push(flag.clone()),
        }
    }
    rest.push(format!("{prefix}{}", items.join(",")));
    rest
}

const SINGLE_PROCESS: &str = "--single-process";

/// What makes Chrome one process: its renderers, network service and GPU in the browser
/// process, and no zygote to fork them (Chrome allows that only without its sandbox, which
/// a single process forgoes for its pages anyway).
fn single_process_flags(unsandboxed: bool) -> Vec<String> {
    let mut flags = vec![SINGLE_PROCESS.to_owned()];
    if unsandboxed {
        flags.push("--no-zygote".to_owned());
    }
    flags
}

/// Where the window frame height is unknown, what headless Chromium was seen to use.
const FALLBACK_FRAME_HEIGHT: u32 = 87;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot prepare the browser's directory: {0}")]
    Dir(std::io::Error),
    #[error("cannot start {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
    #[error("the browser exited before it was ready")]
    Exited,
    #[error("the browser did not start listening within {0:?}")]
    Timeout(Duration),
    #[error("the browser does not answer CDP commands: {0}")]
    NotResponding(String),
    #[error("the browser printed an unexpected DevTools address: {0}")]
    BadAddress(String),
    #[error("cannot open the browser's forward proxy: {0}")]
    Gateway(std::io::Error),
    #[error("browsers are not started unconfined: {0} (allow_unconfined_browsers = true overrides)")]
    Unconfined(String),
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
}

/// The executables browsers are started from, by use.
#[derive(Debug, Clone)]
pub struct Chromes {
    /// Chrome or Chromium: sessions with a browser of their own on the full browser,
    /// profiles.
    pub own: PathBuf,
    /// Chromium's headless shell, where it is installed: sessions with a browser of their
    /// own that need nothing only the full browser does.
    pub shell: Option<PathBuf>,
    /// Shared browsers: Chromium's headless shell where it is installed (the same engine
    /// without the browser's windows, tab strip and address bar, which a context session
    /// never shows and which cost a full Chromium about half of each context's CPU).
    pub shared: PathBuf,
}

/// An executable and how the broker starts it.
struct Kind {
    chrome: PathBuf,
    /// The operator's flags, features merged with the broker's.
    flags: Vec<String>,
    /// Height Chrome's window keeps for its frame in headless mode; measured at start-up
    /// (none for the headless shell, which has no window frame).
    frame_height: AtomicU32,
    /// Its user agent without automation tells (`stealth::Disguise`), read at start-up:
    /// the one user agent that covers what no DevTools override reaches first (a service
    /// worker's script request and its `navigator.userAgent`).
    user_agent: Mutex<Option<String>>,
    /// Its version (`156.0.8078.114`), read with the user agent: what a fingerprint's
    /// client hints show.
    version: Mutex<Option<String>>,
    /// It calls itself `HeadlessChrome` (the headless shell), read with the user agent.
    is_shell: std::sync::atomic::AtomicBool,
}

/// Starts browsers. Shared by the pool and by anything else that needs one.
pub struct Launcher {
    own: Kind,
    /// Browsers of their own on the headless shell, where it is installed.
    shell: Option<Kind>,
    shared: Kind,
    /// Each browser's `--user-data-dir` is a fresh directory under here.
    scratch_root: PathBuf,
    launch_timeout: Duration,
    /// Reaper tasks, so shutdown can wait for every browser to be gone.
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// Notified whenever any browser exits, so the pool can replace dead idle ones.
    pub exits: Arc<Notify>,
    /// DevTools and forward-proxy ports of the browsers alive now; no session may reach them.
    pub own_ports: Arc<Mutex<HashSet<u16>>>,
    /// Where the browsers' pages may go: each browser's gateway enforces it.
    browser_egress: Arc<Egress>,
    /// Whether the last launch of a browser of its own (`Use::Own`) answered: the configured
    /// Chrome can start (shared browsers' launches fail their own creates).
    last_launch_ok: std::sync::atomic::AtomicBool,
    /// How browsers are confined, or why none may start.
    confinement: Result<Confinement, String>,
    /// Names this broker's private temp directories under the system's temp dir, so that
    /// a start-up sweep removes its own leftovers and no other broker's.
    private_tag: String,
}

/// A running browser. Dropping it kills its process group; `exited()` fires once the
/// process is reaped (its scratch directory is removed right after).
pub struct Browser {
    /// Short random id, the name of its scratch directory.
    pub id: String,
    /// Its `--user-data-dir`.
    pub dir: PathBuf,
    /// Where its downloads are written (the only other directory it may write besides its
    /// private temp): a context session's go in a subdirectory of their own.
    pub downloads: PathBuf,
    /// Set when the process exited by itself (not killed by the broker).
    status: Arc<OnceLock<std::process::ExitStatus>>,
    pub pid: u32,
    /// The port Chrome's DevTools server listens on, on 127.0.0.1.
    pub port: u16,
    /// Path of the browser target, `/devtools/browser/<uuid>`.
    pub ws_path: String,
    /// Its forward proxy: every connection of its pages.
    pub gateway: Arc<Gateway>,
    /// It runs as one process (`single_process_shell`), so it holds one browser context:
    /// a page in a second would end it.
    pub one_process: bool,
    kill: CancellationToken,
    exited: CancellationToken,
}

impl Browser {
    /// The browser-level DevTools WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr(), self.ws_path)
    }

    /// The DevTools HTTP address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A token cancelled when the process has exited and been reaped.
    pub fn exited(&self) -> CancellationToken {
        self.exited.clone()
    }

    pub fn is_alive(&self) -> bool {
        !self.exited.is_cancelled()
    }

    /// Whether the process ended by itself with success (a clean `Browser.close`);
    /// `None` while it runs or when the broker killed it.
    pub fn exited_cleanly(&self) -> Option<bool> {
        self.status.get().map(|s| s.success())
    }

    /// Asks the browser to close itself, so it flushes cookies and storage to disk, and
    /// waits up to `limit` for it to exit. False if it had to be left to the kill.
    pub async fn close_gracefully(&self, limit: Duration) -> bool {
        if !self.is_alive() {
            return true;
        }
        let url = self.ws_url();
        let _ = cdp::command(&url, "Browser.close", serde_json::json!({})).await;
        tokio::time::timeout(limit, self.exited.cancelled()).await.is_ok()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

/// How browsers are started: from the operator's configuration and the kernel's offer.
pub struct LaunchSettings {
    pub chromes: Chromes,
    /// The operator's flags for every browser.
    pub extra_flags: Vec<String>,
    /// Process sessions' headless shells run as one process (`single_process_shell`).
    pub single_process_shell: bool,
    /// Each browser's directories are made under here.
    pub scratch_root: PathBuf,
    pub launch_timeout: Duration,
    /// How browsers are confined, or why none may start (`Confinement::decide`).
    pub confinement: Result<Confinement, String>,
}

impl Launcher {
    pub fn new(
        settings: LaunchSettings,
        tracker: TaskTracker,
        metrics: Arc<Metrics>,
        browser_egress: Arc<Egress>,
    ) -> Self {
        let LaunchSettings {
            chromes,
            extra_flags,
            single_process_shell,
            scratch_root,
            launch_timeout,
            confinement,
        } = settings;
        let private_tag =
            crate::auth::hex(&<sha2::Sha256 as sha2::Digest>::digest(scratch_root.to_string_lossy().as_bytes())[..4]);
        let kind = |chrome: PathBuf, features: &[&str]| Kind {
            chrome,
            flags: with_disabled_features(&extra_flags, features),
            frame_height: AtomicU32::new(FALLBACK_FRAME_HEIGHT),
            user_agent: Mutex::default(),
            version: Mutex::default(),
            is_shell: Default::default(),
        };
        Launcher {
            own: kind(chromes.own, DISABLED_FEATURES),
            shell: chromes.shell.map(|shell| {
                let mut shell = kind(shell, DISABLED_FEATURES);
                if single_process_shell {
                    shell.flags.extend(single_process_flags(running_as_root()));
                }
                shell
            }),
            shared: kind(chromes.shared, &[DISABLED_FEATURES, SHARED_DISABLED_FEATURES].concat()),
            scratch_root,
            launch_timeout,
            tracker,
            metrics,
            exits: Arc::new(Notify::new()),
            own_ports: browser_egress.own_ports(),
            browser_egress,
            last_launch_ok: Default::default(),
            confinement,
            private_tag,
        }
    }

    /// How browsers are confined, or why none may start.
    pub fn confinement(&self) -> &Result<Confinement, String> {
        &self.confinement
    }

    /// A browser's private temp directory (its `TMPDIR` and `HOME`). Under the system's temp
    /// dir, not the data directory: Chrome puts a Unix socket there, and a socket path may
    /// not be longer than 107 bytes. Named by the random part of the browser's id only
    /// (`…-profile` left out), so that every browser's socket path has the same length,
    /// the one [`check_temp_dir`] checks at start.
    fn private_tmp(&self, id: &str) -> PathBuf {
        let random = id.split('-').next().unwrap_or(id);
        std::env::temp_dir().join(format!("cdpgate.{}.{random}", self.private_tag))
    }

    /// Removes scratch directories left by an earlier run (a killed broker leaves some).
    pub fn sweep_leftovers(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        let own_prefix = format!("cdpgate.{}.", self.private_tag);
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&own_prefix) {
                    remove_dir_with_retries_blocking(&entry.path());
                }
            }
        }
        match std::fs::read_dir(&self.scratch_root) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    remove_singleton_socket_dir(&entry.path());
                    remove_dir_with_retries_blocking(&entry.path());
                    removed += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&self.scratch_root)?;
        Ok(removed)
    }

    /// Measures how much taller than the viewport Chrome makes its window, so that
    /// `--window-size` can be chosen to give exactly the requested viewport: for each
    /// executable, once.
    ///
    /// One that does not start keeps the fallback height and fails the calibration; the
    /// others are measured all the same, side by side (the headless shell's probe is
    /// short), so start-up waits for the slowest one only.
    pub async fn calibrate(&self) -> Result<(), LaunchError> {
        // The shared browsers' executable is nearly always one of the others (not a shell run
        // as one process: the shared browsers are measured as they run).
        let same = [Use::Own(BrowserKind::Full), Use::Own(BrowserKind::Shell)]
            .into_iter()
            .find(|used| {
                let kind = self.kind(*used);
                self.has(*used) && kind.chrome == self.shared.chrome && !kind.flags.iter().any(|f| f == SINGLE_PROCESS)
            });
        let full = self.measure_frame(Use::Own(BrowserKind::Full));
        let shell = async {
            match self.shell {
                Some(_) => self.measure_frame(Use::Own(BrowserKind::Shell)).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let shared = async {
            match same {
                Some(_) => Ok(()),
                None => self.measure_frame(Use::Shared).await.map(|_| ()),
            }
        };
        let (full, shell, shared) = tokio::join!(full, shell, shared);
        if let Some(used) = same {
            let from = self.kind(used);
            let frame = from.frame_height.load(Ordering::Relaxed);
            self.shared.frame_height.store(frame, Ordering::Relaxed);
            *self.shared.user_agent.lock().expect("user agent lock") = self.user_agent(used);
            *self.shared.version.lock().expect("version lock") = self.browser_version(used);
            let is_shell = from.is_shell.load(Ordering::Relaxed);
            self.shared.is_shell.store(is_shell, Ordering::Relaxed);
        }
        full.map(|_| ()).and(shell).and(shared)
    }

    /// Whether browsers for `used` can be started here: the headless shell is installed.
    pub fn has(&self, used: Use) -> bool {
        used != Use::Own(BrowserKind::Shell) || self.shell.is_some()
    }

    /// Whether the shared browsers run the headless shell: as their version says once
    /// calibrated, else whether their executable is the one process sessions' shell runs.
    pub fn shared_kind(&self) -> BrowserKind {
        let is_shell = self.shared.is_shell.load(Ordering::Relaxed)
            || self.shell.as_ref().is_some_and(|k| k.chrome == self.shared.chrome);
        match is_shell {
            true => BrowserKind::Shell,
            false => BrowserKind::Full,
        }
    }

    /// Measures and keeps the frame height of `used`'s executable.
    async fn measure_frame(&self, used: Use) -> Result<u32, LaunchError> {
        let kind = self.kind(used);
        // The probe's window is exactly the probe's size.
        kind.frame_height.store(0, Ordering::Relaxed);
        let frame = self.probe_frame(used).await;
        kind.frame_height
            .store(*frame.as_ref().unwrap_or(&FALLBACK_FRAME_HEIGHT), Ordering::Relaxed);
        frame
    }

    async fn probe_frame(&self, used: Use) -> Result<u32, LaunchError> {
        let probe = Screen {
            width: 1000,
            height: 800,
        };
        let browser = self.launch(probe, used).await?;
        self.read_user_agent(&browser, used).await;
        // Read until two readings agree: the first layout may not be the final one.
        let mut measured = cdp::evaluate_in_first_page(&browser.addr(), "innerHeight").await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = cdp::evaluate_in_first_page(&browser.addr(), "innerHeight").await;
            let settled = matches!((&measured, &again), (Ok(a), Ok(b)) if a == b);
            measured = again;
            if settled {
                break;
            }
        }
        let frame = match measured.as_ref().ok().and_then(|v| v.as_u64()) {
            Some(h) if (h as u32) <= probe.height => probe.height - h as u32,
            _ => {
                tracing::warn!(
                    ?measured,
                    chrome = %self.kind(used).chrome.display(),
                    "could not measure the window frame; using {FALLBACK_FRAME_HEIGHT} px"
                );
                FALLBACK_FRAME_HEIGHT
            }
        };
        tracing::debug!(frame, chrome = %self.kind(used).chrome.display(), "measured the headless window frame height");
        Ok(frame)
    }

    /// Keeps the user agent `browser` would show without its automation tells, for the
    /// next launches of `used`'s executable.
    async fn read_user_agent(&self, browser: &Browser, used: Use) {
        let version = match cdp::command(&browser.ws_url(), "Browser.getVersion", serde_json::json!({})).await {
            Ok(v) => v,
            Err(e) => return tracing::warn!(error = %e, "could not read the browser's version"),
        };
        let text = |key: &str| version[key].as_str().unwrap_or("").to_owned();
        let disguise = Disguise::of(&text("product"), &text("userAgent"));
        let is_shell = disguise.as_ref().is_some_and(|d| d.shell);
        self.kind(used).is_shell.store(is_shell, Ordering::Relaxed);
        *self.kind(used).user_agent.lock().expect("user agent lock") = disguise.map(|d| d.user_agent);
        let product = text("product");
        let version = product.split_once('/').map(|(_, v)| v.to_owned());
        *self.kind(used).version.lock().expect("version lock") = version;
    }

    /// The version of `used`'s executable (none before calibration).
    pub fn browser_version(&self, used: Use) -> Option<String> {
        self.kind(used).version.lock().expect("version lock").clone()
    }

    /// The user agent browsers for `used` are launched with (none before calibration).
    fn user_agent(&self, used: Use) -> Option<String> {
        self.kind(used).user_agent.lock().expect("user agent lock").clone()
    }

    /// The executable and flags for `used`; a shell asked for where none is installed is
    /// the full browser (the broker does not ask: `has`).
    fn kind(&self, used: Use) -> &Kind {
        match used {
            Use::Own(BrowserKind::Full) => &self.own,
            Use::Own(BrowserKind::Shell) => self.shell.as_ref().unwrap_or(&self.own),
            Use::Shared => &self.shared,
        }
    }

    /// Height the window of a browser for `used` keeps for its frame, to add to a tab's height.
    pub fn frame_height(&self, used: Use) -> u32 {
        self.kind(used).frame_height.load(Ordering::Relaxed)
    }

    /// How long a launch may take before it is given up.
    pub fn launch_timeout(&self) -> Duration {
        self.launch_timeout
    }

    /// Whether the last browser of its own launched answered (false until one has).
    pub fn can_launch(&self) -> bool {
        self.last_launch_ok.load(Ordering::Relaxed)
    }

    /// Starts a browser for `used` whose pages are `screen` large and waits until it listens.
    pub async fn launch(&self, screen: Screen, used: Use) -> Result<Browser, LaunchError> {
        let dir = self.scratch_root.join(random_hex(8));
        self.launch_observed(screen, dir, true, used, &[], &[]).await
    }

    /// Starts a browser for `used` that loads the unpacked extensions in `extensions`
    /// (which it may read, and nothing else of theirs' parent).
    pub async fn launch_with(&self, screen: Screen, used: Use, extensions: &[PathBuf]) -> Result<Browser, LaunchError> {
        let dir = self.scratch_root.join(random_hex(8));
        self.launch_observed(screen, dir, true, used, &[], extensions).await
    }

    /// Starts a shared browser that may also connect to `gateway_ports` (its contexts'
    /// gateways, bound beforehand: `gateway_ports::GatewayPorts`).
    pub async fn launch_shared(&self, screen: Screen, gateway_ports: &[u16]) -> Result<Browser, LaunchError> {
        let dir = self.scratch_root.join(random_hex(8));
        self.launch_observed(screen, dir, true, Use::Shared, gateway_ports, &[])
            .await
    }

    /// A fresh scratch directory path for a browser the caller prepares (a profile copy).
    pub fn scratch_dir(&self) -> PathBuf {
        self.scratch_root.join(format!("{}-profile", random_hex(8)))
    }

    /// Starts a browser on the user-data directory `dir`, loading `extensions`; with
    /// `owned`, the directory is removed when the browser ends, otherwise it is left to
    /// the caller.
    pub async fn launch_in(
        &self,
        screen: Screen,
        dir: PathBuf,
        owned: bool,
        used: Use,
        extensions: &[PathBuf],
    ) -> Result<Browser, LaunchError> {
        self.launch_observed(screen, dir, owned, used, &[], extensions).await
    }

    /// A launch, timed, counted and logged; the browser may connect to its own gateway and
    /// to `also_ports`.
    #[tracing::instrument(name = "browser.launch", skip_all, fields(width = screen.width, height = screen.height))]
    async fn launch_observed(
        &self,
        screen: Screen,
        dir: PathBuf,
        owned: bool,
        used: Use,
        also_ports: &[u16],
        extensions: &[PathBuf],
    ) -> Result<Browser, LaunchError> {
        let started = Instant::now();
        let result = self.spawn(screen, dir, owned, used, also_ports, extensions).await;
        if matches!(used, Use::Own(_)) {
            self.last_launch_ok.store(result.is_ok(), Ordering::Relaxed);
        }
        match &result {
            Ok(b) => {
                self.metrics.observe_launch(started.elapsed());
                tracing::debug!(browser = %b.id, pid = b.pid, port = b.port, took = ?started.elapsed(), "browser ready");
            }
            Err(e) => {
                self.metrics.browser_launch_failures.inc();
                tracing::warn!(error = %e, "browser launch failed");
            }
        }
        result
    }

    async fn spawn(
        &self,
        screen: Screen,
        dir: PathBuf,
        owned: bool,
        used: Use,
        also_ports: &[u16],
        extensions: &[PathBuf],
    ) -> Result<Browser, LaunchError> {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unconfined = match &self.confinement {
            Ok(confinement) => !confinement.is_on(),
            Err(reason) => return Err(LaunchError::Unconfined(reason.clone())),
        };
        let tmp = self.private_tmp(&id);
        let downloads = downloads_dir(&dir);
        for d in [&dir, &tmp, &downloads] {
            std::fs::create_dir_all(d).map_err(LaunchError::Dir)?;
        }
        let kill = CancellationToken::new();
        let exited = CancellationToken::new();
        let gateway = Gateway::start(self.browser_egress.clone(), self.metrics.clone(), exited.clone())
            .await
            .map_err(LaunchError::Gateway)?;

        let kind = self.kind(used);
        let one_process = kind.flags.iter().any(|f| f == SINGLE_PROCESS);
        let frame = kind.frame_height.load(Ordering::Relaxed);
        let mut cmd = tokio::process::Command::new(&kind.chrome);
        // Chrome sees none of the broker's environment (its secrets, `AWS_*`, the Redis URL).
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &tmp)
            .env("TMPDIR", &tmp);
        for name in ["LANG", "LC_ALL", "TZ"] {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.args(BASE_FLAGS)
            .args(running_as_root().then_some("--no-sandbox"))
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg(format!("--window-size={},{}", screen.width, screen.height + frame))
            .arg(format!("--screen-info={{{}x{}}}", screen.width, screen.height))
            .arg(format!("--proxy-server=http://127.0.0.1:{}", gateway.port))
            .args(self.user_agent(used).map(|ua| format!("--user-agent={ua}")))
            .args(&kind.flags)
            .args(extension_flags(extensions))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        sys::die_with_parent(&mut cmd);
        sys::no_core_dumps(&mut cmd);
        let remove_dirs = || {
            if owned {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_dir_all(&downloads);
        };
        if let Ok(Confinement::Landlock { network, .. }) = &self.confinement {
            let allowed = Allowed {
                read_exec: executable_dirs(&kind.chrome),
                read_only: extensions.to_vec(),
                read_write: vec![dir.clone(), tmp.clone(), downloads.clone()],
                // A shared browser's contexts get their gateways later, on ports bound now.
                connect_ports: [gateway.port].into_iter().chain(also_ports.iter().copied()).collect(),
                write_proc: !running_as_root(),
            };
            match confine::prepare(&allowed, *network) {
                Ok(prepared) => confine::enforce_in_child(&mut cmd, prepared),
                Err(e) => {
                    exited.cancel();
                    remove_dirs();
                    return Err(e.into());
                }
            }
        } else if unconfined {
            tracing::debug!("starting a browser unconfined (allow_unconfined_browsers)");
        }

        let mut child = cmd.spawn().map_err(|source| {
            exited.cancel();
            remove_dirs();
            LaunchError::Spawn {
                path: kind.chrome.display().to_string(),
                source,
            }
        })?;
        let pid = child.id().unwrap_or(0);
        let lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        self.own_ports.lock().expect("ports lock").insert(gateway.port);
        let port_cell = Arc::new(AtomicU16::new(0));
        let status = Arc::new(OnceLock::new());
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        // From here on the reaper owns the process and the directory, whatever happens,
        // even if this launch is abandoned half-way (its caller gave up or shut down).
        let reaper = Reaper {
            child,
            pid,
            dir: owned.then(|| dir.clone()),
            private: vec![tmp.clone(), downloads.clone()],
            user_data_dir: dir.clone(),
            status: status.clone(),
            stderr: lines,
            address: Some(address_tx),
            kill: kill.clone(),
            exited: exited.clone(),
            exits: self.exits.clone(),
            port: port_cell.clone(),
            gateway_port: gateway.port,
            own_ports: self.own_ports.clone(),
        };
        self.tracker.spawn(reaper.run());
        // Until the browser is handed out, dropping this launch kills it.
        let abandon = kill.clone().drop_guard();

        let address = match tokio::time::timeout(self.launch_timeout, address_rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(LaunchError::Exited),
            Err(_) => return Err(LaunchError::Timeout(self.launch_timeout)),
        };
        let Some((port, ws_path)) = parse_devtools_address(&address) else {
            return Err(LaunchError::BadAddress(address));
        };
        port_cell.store(port, Ordering::Relaxed);
        self.own_ports.lock().expect("ports lock").insert(port);
        // Chrome prints its address a few hundred ms before it answers promptly; one
        // round trip here keeps that wait off the session's first command.
        if let Err(e) = cdp::command(&address, "Target.getTargets", serde_json::json!({})).await {
            return Err(LaunchError::NotResponding(e.to_string()));
        }
        abandon.disarm();
        Ok(Browser {
            id,
            dir,
            downloads,
            status,
            pid,
            port,
            ws_path,
            gateway,
            one_process,
            kill,
            exited,
        })
    }
}

/// Owns a browser process from its spawn to its end.
struct Reaper {
    child: tokio::process::Child,
    pid: u32,
    /// The scratch directory to remove, when the browser owns it.
    dir: Option<PathBuf>,
    /// Its private temp and downloads directories, removed whoever owns `dir`.
    private: Vec<PathBuf>,
    /// Its `--user-data-dir`, for the socket directory Chrome links from it.
    user_data_dir: PathBuf,
    /// How the process ended, for whoever holds the browser.
    status: Arc<OnceLock<std::process::ExitStatus>>,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    /// Where the DevTools address goes once Chrome prints it.
    address: Option<tokio::sync::oneshot::Sender<String>>,
    kill: CancellationToken,
    exited: CancellationToken,
    exits: Arc<Notify>,
    /// The DevTools port, once known (0 before), to drop from `own_ports`.
    port: Arc<AtomicU16>,
    gateway_port: u16,
    own_ports: Arc<Mutex<HashSet<u16>>>,
}

impl Reaper {
    /// Waits for the process to exit or to be told to die, kills the whole group, reaps
    /// it, reports the exit, then removes its scratch directory.
    async fn run(mut self) {
        // Read stderr for the DevTools address, then keep draining it: a full pipe would
        // stall Chrome.
        let (stderr, address) = (&mut self.stderr, &mut self.address);
        let drain = async {
            while let Ok(Some(line)) = stderr.next_line().await {
                tracing::trace!(pid = self.pid, "chrome: {line}");
                if let Some(rest) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = address.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
            // The process closed stderr without printing its address.
            address.take();
        };
        tokio::pin!(drain);
        let mut drained = false;
        loop {
            tokio::select! {
                _ = self.kill.cancelled() => break,
                status = self.child.wait() => {
                    tracing::debug!(pid = self.pid, ?status, "browser exited by itself");
                    if let Ok(status) = status {
                        let _ = self.status.set(status);
                    }
                    break;
                }
                _ = &mut drain, if !drained => drained = true,
            }
        }
        // The group outlives its leader until reaped; kill renderers and helpers too.
        sys::kill_group(self.pid);
        let _ = self.child.wait().await;
        let port = self.port.load(Ordering::Relaxed);
        {
            let mut own = self.own_ports.lock().expect("ports lock");
            own.remove(&port);
            own.remove(&self.gateway_port);
        }
        self.exited.cancel();
        self.exits.notify_one();
        remove_singleton_socket_dir(&self.user_data_dir);
        for dir in self.dir.iter().chain(&self.private) {
            remove_dir_with_retries(dir).await;
        }
    }
}

/// The longest a Unix socket's path may be (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Checks that Chrome's socket fits under `temp_dir`: Chrome makes
/// `org.chromium.Chromium.XXXXXX/SingletonSocket` in a browser's private temp directory
/// (`cdpgate.` + 8 + `.` + 16 characters), and a browser whose socket path is too long
/// exits at once with nothing said (a long `TMPDIR` broke every launch, seen in a soak run).
pub(crate) fn check_temp_dir(temp_dir: &Path) -> Result<(), String> {
    const UNDER: usize = "/cdpgate.01234567.0123456789abcdef/org.chromium.Chromium.XXXXXX/SingletonSocket".len();
    let len = temp_dir.as_os_str().len();
    if len + UNDER > MAX_SOCKET_PATH {
        return Err(format!(
            "the temp directory {} is {len} bytes long: browsers' sockets under it would pass the \
             {MAX_SOCKET_PATH}-byte limit of a Unix socket path; set TMPDIR to a directory of at most {} bytes",
            temp_dir.display(),
            MAX_SOCKET_PATH - UNDER
        ));
    }
    Ok(())
}

/// The flags that load `extensions` (unpacked directories) and no other: Debian's
/// `chromium` wrapper passes a `--load-extension` of its own first, and Chrome reads the
/// last one given. Chromium 156 still honours the switch (Google Chrome 137+ does not);
/// headless, the full Chromium runs extensions, the headless shell does not.
fn extension_flags(extensions: &[PathBuf]) -> Vec<String> {
    if extensions.is_empty() {
        return Vec::new();
    }
    let list = extensions
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        format!("--load-extension={list}"),
        format!("--disable-extensions-except={list}"),
    ]
}

/// The directory of the executable `chrome`, as named and as its links resolve: what a
/// Chrome installed outside the system's trees needs beside it (libraries, resources).
fn executable_dirs(chrome: &Path) -> Vec<PathBuf> {
    let resolved = std::fs::canonicalize(chrome).ok();
    [Some(chrome.to_owned()), resolved]
        .into_iter()
        .flatten()
        .filter_map(|p| p.parent().map(Path::to_owned))
        .filter(|d| !d.as_os_str().is_empty())
        .collect()
}

/// The downloads directory of the browser whose user-data directory is `dir`: beside it,
/// so a profile's copy does not carry downloads into the saved profile.
fn downloads_dir(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".downloads");
    PathBuf::from(name)
}

/// Chrome keeps its single-instance socket in a directory of its own under the system's
/// temp dir (`org.chromium.Chromium.XXXXXX`), linked from `SingletonSocket` in the
/// user-data dir. It removes both when it exits by itself, not when it is killed, so a
/// broker that kills its browsers would leave one directory per browser in `/tmp`.
/// Removes that directory if it is still there; anything the link points at elsewhere is
/// left alone.
fn remove_singleton_socket_dir(user_data_dir: &Path) {
    let Ok(socket) = std::fs::read_link(user_data_dir.join("SingletonSocket")) else {
        return;
    };
    let Some(socket_dir) = socket.parent() else {
        return;
    };
    let named_by_chrome = socket_dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("org.chromium.Chromium.") || n.starts_with("com.google.Chrome."));
    let in_temp_dir = socket_dir.parent() == Some(std::env::temp_dir().as_path());
    let is_plain_dir = std::fs::symlink_metadata(socket_dir).is_ok_and(|m| m.is_dir());
    if named_by_chrome
        && in_temp_dir
        && is_plain_dir
        && let Err(e) = std::fs::remove_dir_all(socket_dir)
    {
        tracing::debug!(dir = %socket_dir.display(), error = %e, "could not remove Chrome's socket directory");
    }
}

pub async fn remove_dir_with_retries(dir: &Path) {
    for attempt in 0..5 {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            // Chrome's helpers may still be writing for a moment after the kill.
            Err(e) if attempt < 4 => {
                tracing::debug!(dir = %dir.display(), error = %e, "retrying scratch removal");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a browser scratch directory")
            }
        }
    }
}

fn remove_dir_with_retries_blocking(dir: &Path) {
    for attempt in 0..3 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) if attempt < 2 => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a leftover directory")
            }
        }
    }
}

/// `ws://127.0.0.1:PORT/devtools/browser/UUID` → (PORT, `/devtools/browser/UUID`).
fn parse_devtools_address(address: &str) -> Option<(u16, String)> {
    let rest = address.strip_prefix("ws://127.0.0.1:")?;
    let (port, path) = rest.split_at(rest.find('/')?);
    let port = port.parse().ok()?;
    path.starts_with("/devtools/browser/").then(|| (port, path.to_owned()))
}

/// Chrome will not sandbox its renderers as root, so browsers started by a root broker
/// get `--no-sandbox`; as any other user they are sandboxed (namespaces and seccomp).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Chromium's headless shell at its usual paths (Debian's `chromium-headless-shell`, the
/// real executable before its wrapper script; Chrome for Testing's `chrome-headless-shell`).
pub fn find_headless_shell() -> Option<PathBuf> {
    first_existing(&[
        "/usr/lib/chromium/chromium-headless-shell",
        "/usr/bin/chromium-headless-shell",
        "/usr/bin/chrome-headless-shell",
    ])
}

/// The first usual Chrome path that exists.
pub fn find_chrome() -> Option<PathBuf> {
    first_existing(&[
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
        "/usr/bin/google-chrome-stable",
    ])
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Two libc calls around process management (the crate's other unsafe call is the relay
/// threads' scheduling policy, in `proxy::cores`).
#[allow(unsafe_code)]
mod sys {
    /// Asks the kernel to SIGKILL the child when the thread that spawned it dies, so a
    /// killed broker leaves no browser behind. Tokio's worker threads live as long as the
    /// runtime, and the launch runs on one of them.
    pub(super) fn die_with_parent(cmd: &mut tokio::process::Command) {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// A browser that crashes leaves no core dump: a tenant can crash its own browser at will
    /// (`Browser.crash`, or a tab's crash in a one-process shell), and each dump would be
    /// hundreds of MB of the host's disk holding that session's memory. A limit of 1 (not
    /// 0) also stops a `core_pattern` that pipes to a program, which ignores 0.
    pub(super) fn no_core_dumps(cmd: &mut tokio::process::Command) {
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 1,
                    rlim_max: 1,
                };
                if libc::setrlimit(libc::RLIMIT_CORE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// SIGKILL to the process group led by `pid`.
    pub(super) fn kill_group(pid: u32) {
        if pid > 1 {
            // SAFETY: kill with a negative pid only sends a signal.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_features_are_merged_into_one_flag() {
        assert_eq!(
            with_disabled_features(&["--lang=de".into()], DISABLED_FEATURES),
            vec![
                "--lang=de",
                "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup",
                "--disable-blink-features=AutomationControlled"
            ]
        );
        assert_eq!(
            with_disabled_features(
                &[
                    "--disable-features=Translate,MediaRouter".into(),
                    "--mute-audio".into(),
                    "--disable-blink-features=IdleDetection".into()
                ],
                &[DISABLED_FEATURES, SHARED_DISABLED_FEATURES].concat()
            ),
            vec![
                "--mute-audio",
                "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup,SpareRendererForSitePerProcess,Translate,MediaRouter",
                "--disable-blink-features=AutomationControlled,IdleDetection"
            ]
        );
    }

    #[test]
    fn a_temp_dir_too_long_for_chromes_socket_is_refused() {
        // The soak run's TMPDIR: profile browsers' sockets passed the limit by 6 bytes when
        // their directory was named `…-profile`; every browser's name has one length now.
        assert!(check_temp_dir(Path::new("/tmp/tmp.ABCDEFGHIJ/systmp")).is_ok());
        let fits = "/".to_owned() + &"a".repeat(27);
        assert!(check_temp_dir(Path::new(&fits)).is_ok());
        let refused = check_temp_dir(Path::new(&(fits + "b"))).unwrap_err();
        assert!(
            refused.contains("set TMPDIR to a directory of at most 28 bytes"),
            "{refused}"
        );
    }

    #[test]
    fn devtools_addresses_are_parsed_strictly() {
        assert_eq!(
            parse_devtools_address("ws://127.0.0.1:41234/devtools/browser/ab-cd"),
            Some((41234, "/devtools/browser/ab-cd".to_string()))
        );
        assert_eq!(parse_devtools_address("ws://0.0.0.0:41234/devtools/browser/x"), None);
        assert_eq!(parse_devtools_address("ws://127.0.0.1:99999/devtools/browser/x"), None);
        assert_eq!(parse_devtools_address("ws://127.0.0.1:1/json"), None);
    }

    #[test]
    fn only_chromes_own_socket_directory_in_the_temp_dir_is_removed() {
        let user_data = tempfile::tempdir().unwrap();
        let link_to = |target: &Path| {
            let link = user_data.path().join("SingletonSocket");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target.join("SingletonSocket"), link).unwrap();
        };
        let in_temp = |prefix: &str| tempfile::Builder::new().prefix(prefix).tempdir().unwrap();

        // Chrome's own, as a killed browser leaves it.
        let chromes = in_temp("org.chromium.Chromium.");
        std::fs::write(chromes.path().join("SingletonSocket"), b"").unwrap();
        link_to(chromes.path());
        remove_singleton_socket_dir(user_data.path());
        assert!(!chromes.path().exists());

        // A link a profile could carry, to a directory that is not Chrome's or not in the
        // temp dir, removes nothing.
        let other = in_temp("cdpgate-test-");
        link_to(other.path());
        remove_singleton_socket_dir(user_data.path());
        assert!(other.path().exists());
        let elsewhere = tempfile::tempdir_in(user_data.path()).unwrap();
        let nested = elsewhere.path().join("org.chromium.Chromium.abc");
        std::fs::create_dir(&nested).unwrap();
        link_to(&nested);
        remove_singleton_socket_dir(user_data.path());
        assert!(nested.exists());

        // No link at all (a clean exit removed it) is nothing to do.
        std::fs::remove_file(user_data.path().join("SingletonSocket")).unwrap();
        remove_singleton_socket_dir(user_data.path());
    }
}
