//! `/public/extensions…`: a key's Chrome extensions, uploaded as the zip of an unpacked
//! Manifest V3 extension (the request body itself), listed, read and deleted.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, empty_response, json_response};
use super::request::read_body;
use super::{Body, timestamp};
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::store::extension_zip::MAX_ZIP_BYTES;
use crate::store::extensions::Extension;

/// `/public/extensions`.
pub(crate) async fn collection(
    broker: &Broker,
    tenant: &Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::POST => {
            let zip = read_body(request, MAX_ZIP_BYTES, broker.config().request_read_timeout()).await?;
            let extension = broker.extensions().add(tenant, zip).await?;
            Ok(json_response(StatusCode::CREATED, &render(&extension, 0)))
        }
        Method::GET => {
            let list: Vec<Value> = broker
                .extensions()
                .list(tenant)
                .await?
                .iter()
                .map(|(e, users)| render(e, *users))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "extensions": list })))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/extensions/{id}`.
pub(crate) async fn one(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    let extensions = broker.extensions();
    match *method {
        Method::GET => {
            let (extension, users) = extensions.get(tenant, id).await?;
            Ok(json_response(StatusCode::OK, &render(&extension, users)))
        }
        Method::DELETE => {
            extensions.delete(tenant, id).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// An extension as the API shows it, with how many running browsers load it (in a
/// cluster, on every live node).
fn render(extension: &Extension, users: usize) -> Value {
    json!({
        "id": extension.id,
        "name": extension.name,
        "version": extension.version,
        "manifest_version": extension.manifest_version,
        "created_at": timestamp(extension.created_at()),
        "size": extension.size,
        "in_use_by": users,
    })
}
