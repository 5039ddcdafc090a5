//! `/public/browser-profiles…`: create, list, read and delete profiles, and their
//! Playwright `storageState` in and out.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, empty_response, json_response};
use super::request::{field, read_json_object};
use super::{Body, timestamp};
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::profile::storage_state;
use crate::store::profiles::Profile;

/// `/public/browser-profiles`.
pub(crate) async fn collection(
    broker: &Broker,
    tenant: &Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::POST => create_profile(broker, tenant, request).await,
        Method::GET => {
            let mut profiles = Vec::new();
            for profile in broker.profiles().list(tenant).await? {
                profiles.push(render(&profile, broker.profile_users(&profile).await?));
            }
            Ok(json_response(StatusCode::OK, &json!({ "profiles": profiles })))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/browser-profiles/{id}`.
pub(crate) async fn one(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    match *method {
        Method::GET => {
            let profile = broker.profiles().get(tenant, id).await?;
            Ok(json_response(
                StatusCode::OK,
                &render(&profile, broker.profile_users(&profile).await?),
            ))
        }
        Method::DELETE => {
            broker.delete_profile(tenant, id).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/browser-profiles/{id}/storage-state`: export (GET) or import (POST, PUT).
pub(crate) async fn storage_state(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::GET => {
            let state = broker.export_storage_state(tenant, id).await?;
            Ok(json_response(StatusCode::OK, &state))
        }
        Method::POST | Method::PUT => {
            let read_time = broker.config().request_read_timeout();
            let state = Value::Object(read_json_object(request, MAX_STORAGE_STATE_BYTES, read_time).await?);
            storage_state::validate(&state).map_err(ApiError::unprocessable)?;
            broker.import_storage_state(tenant, id, &state).await?;
            let profile = broker.profiles().get(tenant, id).await?;
            Ok(json_response(
                StatusCode::OK,
                &render(&profile, broker.profile_users(&profile).await?),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A profile as the API shows it, with how many sessions use it.
pub(crate) fn render(profile: &Profile, users: usize) -> Value {
    json!({
        "id": profile.id,
        "name": profile.name,
        "provider": "local",
        "created_at": timestamp(profile.created_at),
        "updated_at": timestamp(profile.updated_at),
        "in_use_by": users,
    })
}

/// Longest profile name, in characters.
const MAX_PROFILE_NAME: usize = 200;

/// Largest `storageState` document accepted.
const MAX_STORAGE_STATE_BYTES: usize = 4 * 1024 * 1024;

async fn create_profile(
    broker: &Broker,
    tenant: &Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body = read_json_object(request, MAX_STORAGE_STATE_BYTES, broker.config().request_read_timeout()).await?;
    let name = match field(&body, "name") {
        Some(Value::String(n)) => n.trim().to_owned(),
        Some(_) => return Err(ApiError::unprocessable("name must be a string")),
        None => return Err(ApiError::unprocessable("name is required")),
    };
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_PROFILE_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "name must be 1 to {MAX_PROFILE_NAME} characters, without control characters"
        )));
    }
    match field(&body, "provider") {
        None => {}
        Some(Value::String(p)) if p == "local" => {}
        Some(_) => {
            return Err(ApiError::unprocessable(
                "provider must be \"local\": it is the only provider this broker supports",
            ));
        }
    }
    let state = field(&body, "storage_state");
    if let Some(state) = state {
        storage_state::validate(state).map_err(|e| ApiError::unprocessable(format!("storage_state: {e}")))?;
    }
    let profile = broker.profiles().create(tenant, &name).await?;
    if let Some(state) = state
        && let Err(e) = broker.import_storage_state(tenant, &profile.id, state).await
    {
        let _ = broker.profiles().delete(tenant, &profile.id).await;
        return Err(e.into());
    }
    Ok(json_response(StatusCode::CREATED, &render(&profile, 0)))
}
