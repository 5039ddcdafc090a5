//! `/dashboard`: a page inside the binary (like the live view) that lists a tenant's
//! sessions with live thumbnails, links to their live views, and for ended ones their
//! recording, files and end reason; plus the pool's use and, in a cluster, the nodes.
//!
//! The page holds no secret: the API key is typed in once and kept in the tab's session
//! storage, and every call is an ordinary API call with it in `X-API-Key` (never in a
//! URL). `/public/sessions/{id}/screenshot` gives the thumbnails.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::{Response, StatusCode, header};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::error::{ApiError, Attempt, session_refusal};
use super::{Body, full};
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::browser::cdp::Client;
use crate::browser::egress::Egress;
use crate::browser::upstream::Upstream;

const PAGE: &str = include_str!("dashboard.html");
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn page() -> Response<Body> {
    // Its own origin's API only; recordings and thumbnails arrive as blobs.
    super::html_page(
        StatusCode::OK,
        PAGE,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob:; \
         media-src blob:; connect-src 'self'; frame-ancestors 'none'",
    )
}

/// `GET /public/sessions/{id}/screenshot`: the session's first tab now, as a JPEG.
pub async fn screenshot(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    let session = broker
        .active(Some(tenant), id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let jpeg = tokio::time::timeout(CAPTURE_TIMEOUT, capture(&session.upstream, broker.egress()))
        .await
        .map_err(|_| "no answer in time".to_owned())
        .and_then(|r| r)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("The screen could not be taken: {e}")))?;
    let mut response = Response::new(full(jpeg));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("image/jpeg"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(response)
}

/// One screenshot of the first tab, on a connection of its own (a context session's
/// through its filter).
async fn capture(upstream: &Upstream, egress: &Egress) -> Result<Vec<u8>, String> {
    let (stream, early) = upstream
        .connect_raw(&upstream.browser_path, egress, CAPTURE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let ws = tokio_tungstenite::WebSocketStream::from_partially_read(stream, early, Role::Client, None).await;
    let client = Client::start(ws);
    let call = |session: Option<String>, method: &'static str, params: serde_json::Value| {
        let client = &client;
        async move {
            client
                .call(session.as_deref(), method, params, CAPTURE_TIMEOUT)
                .await
                .map_err(|e| format!("{method}: {e:?}"))
        }
    };
    let targets = call(None, "Target.getTargets", json!({})).await?;
    let page = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["targetId"].as_str())
        .ok_or("the session has no open tab")?
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
        .map_err(|e| e.to_string())
}
