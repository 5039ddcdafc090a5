//! Plain values that several layers share: the browser layer makes them, the store keeps
//! them, the API shows them. Nothing here does anything.

/// A screen size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
}

/// What a session's pages show of the machine they run on: one coherent set, picked by
/// `browser::fingerprint` (a desktop preset) or `browser::devices` (a phone or tablet),
/// kept in the session's record so the session never changes its face.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// `windows`, `macos`, `linux`, `android` or `ios`.
    pub os: String,
    /// The device's name (`Pixel 8`), for a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What picked the row: the same seed picks the same fingerprint.
    pub seed: u64,
    pub browser_version: u32,
    pub user_agent: String,
    /// `navigator.platform`.
    pub platform: String,
    /// `navigator.vendor`, where it is not Chrome's `Google Inc.` (an iOS device's Apple).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// The client hints (CDP's `UserAgentMetadata`); none for a browser that has none
    /// (an iOS device: there `navigator.userAgentData` is absent).
    pub client_hints: Option<serde_json::Value>,
    pub hardware_concurrency: u32,
    /// `navigator.deviceMemory` in GB; none where the browser has none (iOS).
    pub device_memory: Option<f64>,
    pub screen: Screen,
    /// The page's size, for a device (a desktop keeps the session's `screen_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewport: Option<Screen>,
    pub device_pixel_ratio: f64,
    pub mobile: bool,
    pub max_touch_points: u32,
    pub webgl_vendor: String,
    pub webgl_renderer: String,
}

/// What a managed browser's pages sent and received, and what its proxy refused.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub proxy_errors: u64,
    pub last_proxy_error: Option<String>,
    /// Requests the session's `block`, `block_urls` (or ad lists) stopped before they left
    /// the browser. What they would have cost is not known: they never ran.
    #[serde(default)]
    pub blocked_requests: u64,
}

/// A known challenge (a CAPTCHA widget or interstitial) a page of the session showed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Challenge {
    /// `recaptcha`, `hcaptcha` or `turnstile`.
    pub kind: String,
    /// The challenge frame's URL, without its query and fragment (they carry site keys
    /// and tokens).
    pub url: String,
    pub at: std::time::SystemTime,
}

/// The Chrome a browser of its own runs: Chromium's headless shell (the engine without
/// the browser's windows, tab strip and address bar) or the full browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrowserKind {
    Shell,
    Full,
}

impl BrowserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrowserKind::Shell => "shell",
            BrowserKind::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Option<BrowserKind> {
        match s {
            "shell" => Some(BrowserKind::Shell),
            "full" => Some(BrowserKind::Full),
            _ => None,
        }
    }
}

/// Why a session runs the browser it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrowserReason {
    /// The create asked for it (`browser`).
    Asked,
    /// The node's `default_browser`.
    Default,
    /// It loads extensions, which only the full browser runs.
    Extensions,
    /// It runs on a profile, kept by the full browser.
    Profile,
    /// It is recorded: the full browser shows one tab at a time, the one the recording
    /// follows (the shell shows every tab at once).
    Record,
    /// A context session: the shared browsers' executable.
    Context,
}

impl BrowserReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BrowserReason::Asked => "asked",
            BrowserReason::Default => "default",
            BrowserReason::Extensions => "extensions",
            BrowserReason::Profile => "profile",
            BrowserReason::Record => "record",
            BrowserReason::Context => "context",
        }
    }
}
