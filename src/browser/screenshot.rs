//! One screenshot of a session's first tab (the dashboard's thumbnails), on a connection
//! of its own through the session's upstream, so a context session's filter applies.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::cdp::{CallError, Client};
use super::egress::Egress;
use super::upstream::{Upstream, UpstreamError};
use crate::error::Origin;

/// Why no screenshot was taken.
#[derive(Debug, thiserror::Error)]
pub enum ScreenshotError {
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("the session has no open tab")]
    NoTab,
    #[error("{method}: {error:?}")]
    Call { method: &'static str, error: CallError },
    #[error("no answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the image is not base64: {0}")]
    BadImage(String),
}

impl ScreenshotError {
    /// A session whose client closed every tab has nothing to show: the request's; a
    /// browser that fails or stalls (a page busy in a loop): the upstream's.
    pub fn origin(&self) -> Origin {
        match self {
            ScreenshotError::Connect(e) => e.origin(),
            ScreenshotError::NoTab => Origin::Client,
            ScreenshotError::Call { .. } | ScreenshotError::Timeout(_) | ScreenshotError::BadImage(_) => {
                Origin::Upstream
            }
        }
    }
}

/// The first tab now, as a JPEG, within `limit` for the whole exchange; the browser's
/// messages held to `ws_config` (`Upstream::parsed_ws_config`: a user's own browser may
/// answer anything).
pub(crate) async fn capture(
    upstream: &Upstream,
    egress: &Egress,
    limit: Duration,
    ws_config: WebSocketConfig,
) -> Result<Vec<u8>, ScreenshotError> {
    tokio::time::timeout(limit, capture_within(upstream, egress, limit, ws_config))
        .await
        .map_err(|_| ScreenshotError::Timeout(limit))?
}

async fn capture_within(
    upstream: &Upstream,
    egress: &Egress,
    limit: Duration,
    ws_config: WebSocketConfig,
) -> Result<Vec<u8>, ScreenshotError> {
    let (stream, early) = upstream.connect_raw(&upstream.browser_path, egress, limit).await?;
    let ws =
        tokio_tungstenite::WebSocketStream::from_partially_read(stream, early, Role::Client, Some(ws_config)).await;
    let client = Client::start(ws);
    let call = |session: Option<String>, method: &'static str, params: Value| {
        let client = &client;
        async move {
            client
                .call(session.as_deref(), method, params, limit)
                .await
                .map_err(|error| ScreenshotError::Call { method, error })
        }
    };
    let targets = call(None, "Target.getTargets", json!({})).await?;
    let page = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["targetId"].as_str())
        .ok_or(ScreenshotError::NoTab)?
        .to_owned();
    let attached = call(
        None,
        "Target.attachToTarget",
        json!({ "targetId": page, "flatten": true }),
    )
    .await?;
    let session = attached["sessionId"].as_str().map(str::to_owned);
    let shot = call(
        session,
        "Page.captureScreenshot",
        json!({ "format": "jpeg", "quality": 50, "optimizeForSpeed": true }),
    )
    .await?;
    BASE64
        .decode(shot["data"].as_str().unwrap_or_default())
        .map_err(|e| ScreenshotError::BadImage(e.to_string()))
}
