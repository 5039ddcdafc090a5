//! Why a render did not produce its output, each cause named so that the caller can act.

use std::time::Duration;

use crate::broker::{BrokerError, SessionError};
use crate::browser::upstream::UpstreamError;
use crate::error::Origin;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An option is missing, malformed or out of bounds.
    #[error("{0}")]
    BadOption(String),
    /// The given `session_id` is not one of the key's active sessions.
    #[error("{0}")]
    Session(SessionError),
    /// The fresh session could not be created (quota, capacity, a refused option).
    #[error(transparent)]
    Create(#[from] BrokerError),
    /// The session's browser could not be reached.
    #[error("The session's browser is not reachable: {0}")]
    Connect(#[from] UpstreamError),
    /// The page did not reach the awaited state in time.
    #[error("The page did not {what} within {} ms", .limit.as_millis())]
    Timeout { what: String, limit: Duration },
    /// The navigation failed in the network (a name that does not resolve, a refused or
    /// reset connection, an address the egress policy refuses).
    #[error("The page could not be loaded: {0}")]
    Navigation(String),
    /// The page answered an HTTP error status.
    #[error("The page answered HTTP {status}{}; send allow_error_status: true to render it anyway", if .text.is_empty() { String::new() } else { format!(" {}", .text) })]
    PageStatus { status: u16, text: String },
    /// The URL answered a file to download, not a page.
    #[error("The URL answered a download, not a page to render")]
    Download,
    /// `selector` matched nothing (or only elements without a box).
    #[error("No element matches the selector {0:?} (or it has no visible box)")]
    NoElement(String),
    /// What the page produced is over its bound.
    #[error("{0}")]
    TooLarge(String),
    /// The browser refused a command, dropped the connection or answered nonsense.
    #[error("The browser failed: {0}")]
    Browser(String),
    /// The session already runs as many renders as one session may at once.
    #[error("This session already runs {0} renders, the most one session runs at once: wait for one to finish")]
    Busy(usize),
}

impl RenderError {
    /// A bad option, another key's session or an element that is not there is the
    /// caller's; what a page or its network does is the upstream's.
    pub fn origin(&self) -> Origin {
        match self {
            RenderError::BadOption(_) | RenderError::NoElement(_) | RenderError::Busy(_) => Origin::Client,
            RenderError::Session(e) => e.origin(),
            RenderError::Create(e) => e.origin(),
            RenderError::Connect(e) => e.origin(),
            RenderError::Timeout { .. }
            | RenderError::Navigation(_)
            | RenderError::PageStatus { .. }
            | RenderError::Download
            | RenderError::TooLarge(_)
            | RenderError::Browser(_) => Origin::Upstream,
        }
    }

    /// A machine-readable name of the cause, beside the sentence.
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            RenderError::Timeout { .. } => "timeout",
            RenderError::Navigation(_) => "navigation_failed",
            RenderError::PageStatus { .. } => "page_status",
            RenderError::Download => "download",
            RenderError::NoElement(_) => "selector_not_found",
            RenderError::TooLarge(_) => "too_large",
            RenderError::Busy(_) => "session_busy",
            _ => return None,
        })
    }
}

pub(crate) fn bad(detail: impl Into<String>) -> RenderError {
    RenderError::BadOption(detail.into())
}
