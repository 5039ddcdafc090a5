//! Why a page tool did not do its work, each cause said so an agent can act on it.

use crate::browser::upstream::UpstreamError;
use crate::error::Origin;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The caller named something that is not there or cannot take the action.
    #[error("{0}")]
    Client(String),
    /// The session's browser could not be reached.
    #[error("The session's browser is not reachable: {0}")]
    Connect(#[from] UpstreamError),
    /// The navigation failed in the network or by the egress policy.
    #[error("The page could not be loaded: {0}")]
    Navigation(String),
    #[error("{0}")]
    Timeout(String),
    /// The browser refused a command or dropped the connection.
    #[error("The browser failed: {0}")]
    Browser(String),
}

impl PageError {
    pub fn origin(&self) -> Origin {
        match self {
            PageError::Client(_) => Origin::Client,
            PageError::Connect(e) => e.origin(),
            PageError::Navigation(_) | PageError::Timeout(_) | PageError::Browser(_) => Origin::Upstream,
        }
    }
}
