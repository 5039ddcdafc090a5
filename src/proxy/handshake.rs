//! The server side of the WebSocket opening handshake, for the CDP proxy and live view.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::Origin;

/// Why a request cannot be upgraded to a WebSocket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("This is a WebSocket endpoint: connect a CDP client to it (discovery is under …/json/version)")]
    NotUpgrade,
    #[error("Only WebSocket version 13 is supported")]
    Version,
    #[error("Missing Sec-WebSocket-Key")]
    MissingKey,
}

impl HandshakeError {
    /// A request that is not a proper upgrade is the client's.
    pub fn origin(&self) -> Origin {
        Origin::Client
    }
}

/// The `101 Switching Protocols` answer to an upgrade request with this key.
pub(crate) fn upgrade_response(key: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes())
            .parse()
            .expect("base64 is a valid header value"),
    );
    response
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request.
pub(crate) fn websocket_key(request: &Request<Incoming>) -> Result<String, HandshakeError> {
    let h = request.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    };
    if request.method() != Method::GET || !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(HandshakeError::Version);
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or(HandshakeError::MissingKey)
}
