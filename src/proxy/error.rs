//! Why a CDP connection or discovery call was refused; `http` decides the status codes.

use crate::auth::TokenError;
use crate::broker::SessionError;
use crate::browser::upstream::UpstreamError;
pub(crate) use crate::browser::upstream::is_unknown_target;
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
    /// A target id the session's browser does not have (or another context's).
    #[error("No such target id: {0}")]
    UnknownTarget(String),
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("A tab cannot be opened there: {0}")]
    UrlRefused(#[from] crate::browser::url_policy::Refused),
}

impl ProxyError {
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::Session(e) => e.origin(),
            ProxyError::Upstream(e) => e.origin(),
            ProxyError::Token(e) => e.origin(),
            ProxyError::Handshake(e) => e.origin(),
            ProxyError::ConnectionLimit(_)
            | ProxyError::NotFound
            | ProxyError::UnknownTarget(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::UrlRefused(_) => Origin::Client,
        }
    }
}
