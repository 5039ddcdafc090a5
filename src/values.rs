//! Plain values that several layers share: the browser layer makes them, the store keeps
//! them, the API shows them. Nothing here does anything.

/// A screen size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
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
