//! Bring your own browser: checking a user's `cdp_url` before a session fronts it. Where
//! it may point is decided by the [egress policy](super::egress).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::egress::{Egress, EgressError};
use super::upstream::{Upstream, UpstreamError};
use crate::error::Origin;

/// Longest `cdp_url` accepted.
const MAX_URL_LEN: usize = 2048;

/// Why a user's `cdp_url` cannot front a session.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cdp_url is not usable: {0}")]
    InvalidUrl(String),
    #[error("cdp_url is refused: {0}")]
    Refused(EgressError),
    #[error("cdp_url could not be reached: {0}")]
    Unreachable(String),
    #[error("cdp_url did not answer within {0} ms")]
    Timeout(u128),
    #[error("cdp_url is not a Chrome DevTools endpoint: {0}")]
    NotDevTools(String),
}

impl ProbeError {
    /// A URL that is malformed or points where it may not is the client's; one that
    /// does not answer as Chrome would is the upstream's.
    pub fn origin(&self) -> Origin {
        match self {
            ProbeError::InvalidUrl(_) | ProbeError::Refused(_) => Origin::Client,
            _ => Origin::Upstream,
        }
    }

    /// A machine-readable code a client may branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ProbeError::InvalidUrl(_) => "byo_invalid_url",
            ProbeError::Refused(_) => "byo_forbidden",
            ProbeError::Unreachable(_) => "byo_unreachable",
            ProbeError::Timeout(_) => "byo_timeout",
            ProbeError::NotDevTools(_) => "byo_not_devtools",
        }
    }
}

impl From<UpstreamError> for ProbeError {
    fn from(e: UpstreamError) -> ProbeError {
        match e {
            UpstreamError::Refused(e @ EgressError::Resolve { .. }) => ProbeError::Unreachable(e.to_string()),
            UpstreamError::Refused(e) => ProbeError::Refused(e),
            UpstreamError::Connect(e) => ProbeError::Unreachable(e.to_string()),
            UpstreamError::Tls(e) => ProbeError::Unreachable(format!("TLS: {e}")),
            UpstreamError::Timeout(t) => ProbeError::Timeout(t.as_millis()),
            UpstreamError::Http(e) => ProbeError::NotDevTools(format!("the HTTP exchange failed ({e})")),
            UpstreamError::Rejected { status, .. } => {
                ProbeError::NotDevTools(format!("the WebSocket upgrade was answered {status}"))
            }
        }
    }
}

/// Checks that `raw` names a DevTools browser endpoint that may be reached and answers
/// CDP; answers how to reach it. Never echoes the URL (it may carry credentials).
pub(crate) async fn probe(
    raw: &str,
    egress: &Egress,
    timeout: Duration,
    config: WebSocketConfig,
) -> Result<Upstream, ProbeError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ProbeError::InvalidUrl(format!(
            "it is longer than {MAX_URL_LEN} characters"
        )));
    }
    let url = url::Url::parse(raw).map_err(|e| ProbeError::InvalidUrl(e.to_string()))?;
    if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") {
        return Err(ProbeError::InvalidUrl(
            "it must start with ws://, wss://, http:// or https://".into(),
        ));
    }
    let mut upstream = Upstream::external(&url).ok_or_else(|| ProbeError::InvalidUrl("it names no host".into()))?;

    if matches!(url.scheme(), "http" | "https") {
        let mut path = url.path().to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        path.push_str("json/version");
        let (status, body) = upstream.http(Method::GET, &path, egress, timeout).await?;
        if status != StatusCode::OK {
            return Err(ProbeError::NotDevTools(format!("GET /json/version answered {status}")));
        }
        let version: Value = serde_json::from_slice(&body)
            .map_err(|_| ProbeError::NotDevTools("its /json/version is not JSON".into()))?;
        let ws = version["webSocketDebuggerUrl"]
            .as_str()
            .and_then(|s| url::Url::parse(s).ok())
            .filter(|u| matches!(u.scheme(), "ws" | "wss"))
            .ok_or_else(|| ProbeError::NotDevTools("its /json/version names no webSocketDebuggerUrl".into()))?;
        let same_server = ws.host_str() == url.host_str() && ws.port_or_known_default() == url.port_or_known_default();
        upstream = if same_server {
            let mut path = ws.path().to_owned();
            if let Some(q) = ws.query() {
                path = format!("{path}?{q}");
            }
            upstream.with_browser_path(path)
        } else {
            Upstream::external(&ws)
                .ok_or_else(|| ProbeError::NotDevTools("its webSocketDebuggerUrl names no host".into()))?
        };
    }

    let path = upstream.browser_path.clone();
    let (stream, _) = upstream.connect_raw(&path, egress, timeout).await?;
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await;
    let answered = tokio::time::timeout(timeout, async {
        ws.send(Message::text(r#"{"id":1,"method":"Browser.getVersion"}"#))
            .await
            .ok()?;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let reply: Value = serde_json::from_str(&text).ok()?;
                if reply["id"] == 1 {
                    return Some(reply.get("result").is_some() || reply.get("error").is_some());
                }
            }
        }
        None
    })
    .await
    .map_err(|_| ProbeError::Timeout(timeout.as_millis()))?;
    let _ = ws.close(None).await;
    match answered {
        Some(true) => Ok(upstream),
        _ => Err(ProbeError::NotDevTools("it did not answer Browser.getVersion".into())),
    }
}
