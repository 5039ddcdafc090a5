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
}
