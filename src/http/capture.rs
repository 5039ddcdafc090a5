//! A session's console logs and HAR (`capture_console`, `capture_network`), live while it
//! runs and after its end for `retention_secs`.

use hyper::{Response, StatusCode, header};

use super::Body;
use super::error::{ApiError, Attempt, session_refusal};
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::capture::Document;

/// `GET /public/sessions/{id}/logs` and `…/har`: another key's session or an unknown id is
/// a 404; a session created without the capture a 409.
pub(crate) async fn document(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    doc: Document,
) -> Result<Response<Body>, ApiError> {
    let record = broker
        .record(tenant, id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let (asked, option, what) = match doc {
        Document::Logs => (record.options.capture_console, "capture_console", "logs"),
        Document::Har => (record.options.capture_network, "capture_network", "HAR"),
    };
    if !asked {
        return Err(ApiError::conflict(format!(
            "This session was created without {option}: it has no {what}"
        )));
    }
    let bytes = broker
        .captures()
        .read(id, doc)
        .ok_or_else(|| ApiError::not_found(format!("This session's {what} are no longer kept")))?;
    let mut response = Response::new(super::full(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
