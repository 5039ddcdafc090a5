//! Why a CDP connection or discovery call was refused; `http` decides the status codes.

use crate::auth::TokenError;
use crate::broker::SessionError;
use crate::browser::upstream::UpstreamError;
use crate::error::Origin;

use super::handshake::HandshakeError;

/// Why a CDP connection or discovery call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Connection refused: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("This session already has {0} open connections, its limit")]
    ConnectionLimit(usize),
    #[error("the session's browser: {0}")]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("Not Found")]
    NotFound,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("A tab cannot be opened there: {0}")]
    UrlRefused(#[from] crate::browser::url_policy::Refused),
}

impl ProxyError {
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::Session(e) => e.origin(),
            // A refused address is the policy working; the rest is the browser failing.
            ProxyError::Upstream(UpstreamError::Refused(_)) => Origin::Client,
            ProxyError::Upstream(UpstreamError::Rejected { status, body }) if is_unknown_target(*status, body) => {
                Origin::Client
            }
            ProxyError::Upstream(_) => Origin::Upstream,
            _ => Origin::Client,
        }
    }
}

/// Chrome answers an unknown target id with 404, or 500 "No such target id".
pub fn is_unknown_target(status: u16, body: &[u8]) -> bool {
    status == 404 || body.starts_with(b"No such target")
}
