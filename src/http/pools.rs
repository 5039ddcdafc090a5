//! `/public/pools…`: a key's named pools (defined, listed, read, changed, deleted) and
//! `POST /public/sessions {"pool": name}`, a session taken from one. A pool's settings are
//! a create's, read by the create's own validation.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::error::{ApiError, empty_response, json_response};
use super::request::{field, pool_name, read_json_object, whole_number};
use super::sessions::{parse_idle_timeout, parse_ttl, render_options, validate_create};
use super::{Body, timestamp};
use crate::auth::Tenant;
use crate::broker::{Broker, PoolChange, PoolSpec, PoolView};
use crate::store::Isolation;

/// The fields a pool may set: a create's, less those that are one session's own.
const POOL_FIELDS: &[&str] = &[
    "name",
    "size",
    "isolation",
    "profile_id",
    "persist_changes",
    "screen_config",
    "proxy",
    "user_agent",
    "locale",
    "timezone",
    "fingerprint",
    "device",
    "extensions",
    "block",
    "block_urls",
    "ttl",
    "idle_timeout",
    "record",
    "log_cdp",
    "capture_console",
    "capture_network",
    "capture_bodies",
];

/// `/public/pools`.
pub(crate) async fn collection(
    broker: &Broker,
    tenant: &Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::POST => {
            let config = broker.config();
            let body = read_json_object(request, config.max_body_bytes, config.request_read_timeout()).await?;
            let (name, spec) = validate_pool(broker, &body)?;
            let pool = broker.create_pool(tenant, &name, spec, body).await?;
            Ok(json_response(StatusCode::CREATED, &render_pool(&pool)))
        }
        Method::GET => {
            let pools: Vec<Value> = broker.pools_of(tenant).iter().map(render_pool).collect();
            Ok(json_response(StatusCode::OK, &json!({ "pools": pools })))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/pools/{name}`.
pub(crate) async fn one(
    broker: &Broker,
    tenant: &Tenant,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::GET => Ok(json_response(
            StatusCode::OK,
            &render_pool(&broker.pool_view(tenant, name)?),
        )),
        Method::PATCH => {
            // The pool is looked up first: another key's is a 404 whatever the body says.
            broker.pool_view(tenant, name)?;
            let config = broker.config();
            let body = read_json_object(request, config.max_body_bytes, config.request_read_timeout()).await?;
            let change = validate_change(broker, &body)?;
            let patch = body.into_iter().filter(|(_, v)| !v.is_null()).collect();
            Ok(json_response(
                StatusCode::OK,
                &render_pool(&broker.update_pool(tenant, name, change, patch)?),
            ))
        }
        Method::DELETE => {
            broker.delete_pool(tenant, name).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Defines again the pools kept from before this start, each read by today's rules; one
/// that no longer passes them (its profile deleted meanwhile, a smaller `max_pool_size`)
/// is forgotten, with a warning.
pub async fn restore(broker: &Broker) {
    for (tenant, name, definition) in broker.stored_pools() {
        let defined = match definition {
            Value::Object(body) => match validate_pool(broker, &body) {
                Ok((named, spec)) if named == name => broker
                    .create_pool(&tenant, &name, spec, body)
                    .await
                    .map_err(|e| ApiError::from(e).detail),
                Ok(_) => Err("its file name and its name differ".to_owned()),
                Err(e) => Err(e.detail),
            },
            _ => Err("not a JSON object".to_owned()),
        };
        match defined {
            Ok(_) => tracing::info!(tenant = %tenant, pool = %name, "pool defined again from before the start"),
            Err(why) => {
                tracing::warn!(tenant = %tenant, pool = %name, reason = %why, "a pool from before the start is forgotten");
                broker.forget_pool_definition(&tenant, &name);
            }
        }
    }
}

/// A pool's definition: its name and size, and the rest read as a create's.
fn validate_pool(broker: &Broker, body: &Map<String, Value>) -> Result<(String, PoolSpec), ApiError> {
    let config = broker.config();
    if let Some(key) = body.keys().find(|k| !POOL_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::unprocessable(format!(
            "{key} is not a pool field: a pool takes a create's options except cdp_url, metadata and webhooks (given per session)"
        )));
    }
    let name = pool_name(body, "name")?;
    let size = parse_size(body, config.max_pool_size)?.ok_or_else(|| {
        ApiError::unprocessable(format!(
            "size must be a whole number from 0 to {} (max_pool_size)",
            config.max_pool_size
        ))
    })?;
    if field(body, "persist_changes") == Some(&Value::Bool(true)) {
        return Err(ApiError::unprocessable(
            "persist_changes must be false for a pool: its sessions never write their profile",
        ));
    }
    let mut options: Map<String, Value> = body.clone();
    options.remove("name");
    options.remove("size");
    let mut new = validate_create(config, &options)?;
    // A pool keeps browsers of its own unless it asks for contexts, whatever the node's
    // default isolation (the create's rules have refused what contexts cannot carry).
    if !field(body, "isolation").is_some_and(|v| v == "context") {
        new.options.isolation = Isolation::Process;
    }
    let spec = PoolSpec {
        size,
        ttl: new.ttl,
        screen: new.screen,
        profile_id: new.profile_id,
        options: new.options,
    };
    Ok((name, spec))
}

/// `size`, if given: within `0..=max`.
fn parse_size(body: &Map<String, Value>, max: usize) -> Result<Option<usize>, ApiError> {
    match field(body, "size") {
        None => Ok(None),
        Some(v) => match whole_number(v).filter(|n| *n <= max as u64) {
            Some(n) => Ok(Some(n as usize)),
            None => Err(ApiError::unprocessable(format!(
                "size must be a whole number from 0 to {max} (max_pool_size)"
            ))),
        },
    }
}

/// A PATCH: `size`, `ttl`, `idle_timeout`.
fn validate_change(broker: &Broker, body: &Map<String, Value>) -> Result<PoolChange, ApiError> {
    let config = broker.config();
    if let Some(key) = body
        .keys()
        .find(|k| !["size", "ttl", "idle_timeout"].contains(&k.as_str()))
    {
        return Err(ApiError::unprocessable(format!(
            "{key} cannot be changed: a PATCH of a pool takes size, ttl and idle_timeout (define another pool for other settings)"
        )));
    }
    Ok(PoolChange {
        size: parse_size(body, config.max_pool_size)?,
        ttl: field(body, "ttl").map(|v| parse_ttl(v, config.max_ttl)).transpose()?,
        idle_timeout: field(body, "idle_timeout")
            .map(|v| parse_idle_timeout(v, config.max_ttl))
            .transpose()?,
    })
}

/// A pool as the API shows it: its settings as a session shows its own, and its stats.
fn render_pool(pool: &PoolView) -> Value {
    let spec = &pool.spec;
    let mut body = json!({
        "name": pool.name,
        "size": spec.size,
        "profile_id": spec.profile_id,
        "persist_changes": false,
        "screen_config": { "width": spec.screen.width, "height": spec.screen.height },
        "ttl": spec.ttl.as_secs(),
        "created_at": timestamp(pool.created_at),
    });
    render_options(&spec.options.view(), &mut body);
    if let Some(device) = &spec.options.device {
        body["device"] = json!(device);
    }
    let stats = &pool.stats;
    body["stats"] = json!({
        "ready": stats.ready,
        "taken": stats.taken,
        "missed": stats.missed,
        "errors": stats.errors,
        "last_error": stats.last_error,
        "last_refill_ms": stats.last_refill_ms,
    });
    body
}
