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
            let pools: Vec<Value> = broker.pools_of(tenant).await.iter().map(render_pool).collect();
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
            &render_pool(&broker.pool_view(tenant, name).await?),
        )),
        Method::PATCH => {
            // The pool is looked up first: another key's is a 404 whatever the body says.
            broker.pool_view(tenant, name).await?;
            let config = broker.config();
            let body = read_json_object(request, config.max_body_bytes, config.request_read_timeout()).await?;
            let change = validate_change(broker, &body)?;
            let patch = body.into_iter().filter(|(_, v)| !v.is_null()).collect();
            Ok(json_response(
                StatusCode::OK,
                &render_pool(&broker.update_pool(tenant, name, change, patch).await?),
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
/// is forgotten, with a warning. In a cluster, the cluster's pools, then kept in step with
/// the store every `SYNC_PERIOD` (see [`keep_in_step`]).
pub async fn restore(broker: &Broker) {
    let stored = match broker.stored_pools().await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "the stored pools could not be read");
            return;
        }
    };
    for (tenant, name, definition) in stored {
        match define(broker, &tenant, &name, definition).await {
            Ok(()) => tracing::info!(tenant = %tenant, pool = %name, "pool defined from its stored definition"),
            // A cluster's definition may pass on another node (its profile, its key).
            Err(why) if broker.is_clustered() => {
                tracing::warn!(tenant = %tenant, pool = %name, reason = %why, "a pool of the cluster cannot be defined here")
            }
            Err(why) => {
                tracing::warn!(tenant = %tenant, pool = %name, reason = %why, "a pool from before the start is forgotten");
                broker.forget_pool_definition(&tenant, &name).await;
            }
        }
    }
}

/// Defines here a stored pool, read by today's rules.
async fn define(broker: &Broker, tenant: &Tenant, name: &str, definition: Value) -> Result<(), String> {
    match definition {
        Value::Object(body) => match validate_pool(broker, &body) {
            Ok((named, spec)) if named == name => broker
                .define_pool(tenant, name, spec, body)
                .await
                .map(drop)
                .map_err(|e| ApiError::from(e).detail),
            Ok(_) => Err("its stored name and its name differ".to_owned()),
            Err(e) => Err(e.detail),
        },
        _ => Err("not a JSON object".to_owned()),
    }
}

/// How often a node of a cluster reads the cluster's pool definitions.
const SYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// In a cluster: keeps this node's pools those of the store (defined, changed and deleted
/// through any node) until the broker stops.
pub fn keep_in_step(broker: &std::sync::Arc<Broker>) {
    if !broker.is_clustered() {
        return;
    }
    let (weak, stopping) = (std::sync::Arc::downgrade(broker), broker.shutdown().clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SYNC_PERIOD) => {}
                _ = stopping.cancelled() => return,
            }
            let Some(broker) = weak.upgrade() else { return };
            step(&broker).await;
        }
    });
}

/// One reading of the store's definitions: new ones defined here, changed ones followed,
/// deleted ones dropped.
async fn step(broker: &Broker) {
    let Ok(stored) = broker.stored_pools().await else {
        return;
    };
    for (tenant, name, definition) in &stored {
        let Value::Object(stored_body) = definition else {
            continue;
        };
        match broker.pool_definition(tenant, name) {
            None => {
                if let Err(why) = define(broker, tenant, name, definition.clone()).await {
                    tracing::debug!(tenant = %tenant, pool = %name, reason = %why, "a pool of the cluster cannot be defined here");
                }
            }
            Some(here) if &here == stored_body => {}
            Some(here) => {
                let fixed = |m: &Map<String, Value>| -> Map<String, Value> {
                    m.iter()
                        .filter(|(k, _)| !CHANGEABLE.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                let followed = match fixed(&here) == fixed(stored_body) {
                    // A PATCH on another node: size, TTL or idle timeout.
                    true => validate_change(broker, &changes(stored_body))
                        .map_err(|e| e.detail)
                        .and_then(|change| {
                            broker
                                .follow_pool_change(tenant, name, change, stored_body.clone())
                                .map_err(|e| ApiError::from(e).detail)
                        }),
                    // Deleted and defined again with other settings: defined again here.
                    false => {
                        let _ = broker.drop_pool_here(tenant, name).await;
                        define(broker, tenant, name, definition.clone()).await
                    }
                };
                if let Err(why) = followed {
                    tracing::warn!(tenant = %tenant, pool = %name, reason = %why, "a change of a pool of the cluster cannot be followed here");
                }
            }
        }
    }
    broker.drop_pools_of_deleted_profiles().await;
    for (tenant, name) in broker.pool_names() {
        if !stored.iter().any(|(t, n, _)| t == &tenant && n == &name) {
            tracing::info!(tenant = %tenant, pool = %name, "pool deleted on another node: dropped here");
            let _ = broker.drop_pool_here(&tenant, &name).await;
        }
    }
}

/// The fields a PATCH changes.
const CHANGEABLE: &[&str] = &["size", "ttl", "idle_timeout"];

/// A definition's changeable fields, as a PATCH body.
fn changes(definition: &Map<String, Value>) -> Map<String, Value> {
    definition
        .iter()
        .filter(|(k, _)| CHANGEABLE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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
    if let Some(key) = body.keys().find(|k| !CHANGEABLE.contains(&k.as_str())) {
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
    if let Some(nodes) = &stats.nodes {
        body["stats"]["nodes"] = nodes
            .iter()
            .map(|(node, ready)| json!({"node": node, "ready": ready}))
            .collect();
    }
    body
}
