//! `/dashboard`: a page inside the binary (like the live view) that lists a tenant's
//! sessions with live thumbnails, links to their live views, and for ended ones their
//! recording, files and end reason; plus the pool's use and, in a cluster, the nodes.
//!
//! The page holds no secret: the API key is typed in once and kept in the tab's session
//! storage, and every call is an ordinary API call with it in `X-API-Key` (never in a
//! URL). `/public/sessions/{id}/screenshot` gives the thumbnails.

use std::time::Duration;

use hyper::{Response, StatusCode, header};

use super::error::{ApiError, Attempt, session_refusal};
use super::{Body, full};
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::browser::screenshot;

const PAGE: &str = include_str!("dashboard.html");
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn page() -> Response<Body> {
    // Its own origin's API only; recordings and thumbnails arrive as blobs.
    super::html_page(
        StatusCode::OK,
        PAGE,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob:; \
         media-src blob:; connect-src 'self'; frame-ancestors 'none'",
    )
}

/// `GET /public/sessions/{id}/screenshot`: the session's first tab now, as a JPEG.
pub(crate) async fn screenshot(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    let session = broker
        .active(Some(tenant), id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let ws_config = session.upstream.parsed_ws_config(broker.config());
    let jpeg = screenshot::capture(&session.upstream, broker.egress(), CAPTURE_TIMEOUT, ws_config).await?;
    let mut response = Response::new(full(jpeg));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("image/jpeg"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(response)
}
