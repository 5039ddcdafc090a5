//! `POST /public/sessions/{id}/fork`: N new sessions started from a live session's state.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::Body;
use super::error::{ApiError, json_response};
use super::request::{field, read_json_object, whole_number};
use super::sessions::{parse_metadata, parse_ttl, render};
use crate::auth::Tenant;
use crate::broker::{Broker, ForkRequest};
use crate::browser::snapshot::TabsReady;
use crate::config::Config;
use crate::store::Isolation;

pub(crate) async fn fork(
    broker: &Arc<Broker>,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = broker.config();
    let body = read_json_object(request, config.max_body_bytes, config.request_read_timeout()).await?;
    let asked = validate(config, &body)?;
    let started = std::time::Instant::now();
    // Run to its end in a task of its own: a client that hangs up midway leaves no fork
    // half made (all are written, or all are ended), nor places of its quota held.
    let (work, tenant_of, source) = (broker.clone(), tenant.clone(), id.to_owned());
    let forking = broker
        .tracker()
        .spawn(async move { work.fork_session(&tenant_of, &source, asked).await });
    let forked = forking
        .await
        .map_err(|e| ApiError::internal(format!("the fork stopped: {e}")))??;
    let sessions: Vec<Value> = forked
        .sessions
        .iter()
        .map(|session| {
            broker.metrics().create_time.observe(started.elapsed());
            let record = session.record();
            render(&record, &broker.session_urls(&record))
        })
        .collect();
    let carried = &forked.carried;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "source_session_id": id,
            "sessions": sessions,
            "carried": {
                "cookies": carried.cookies,
                "tabs": carried.tabs,
                "local_storage": carried.local_storage,
                "session_storage": carried.session_storage,
            },
        }),
    ))
}

/// Checks a fork body; the first bad field is reported.
fn validate(config: &Config, body: &Map<String, Value>) -> Result<ForkRequest, ApiError> {
    let most = config.max_fork_count;
    let count = match field(body, "count") {
        None => 1,
        Some(v) => match whole_number(v) {
            Some(n) if (1..=most as u64).contains(&n) => n as usize,
            _ => {
                return Err(ApiError::unprocessable(format!(
                    "count must be a whole number from 1 to {most}"
                )));
            }
        },
    };
    let isolation = match field(body, "isolation") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(Isolation::parse)
                .ok_or_else(|| ApiError::unprocessable("isolation must be \"process\" or \"context\""))?,
        ),
    };
    let ttl = field(body, "ttl").map(|v| parse_ttl(v, config.max_ttl)).transpose()?;
    let metadata = field(body, "metadata")
        .map(|v| parse_metadata(v, config.max_metadata_bytes))
        .transpose()?;
    let wait_until = match field(body, "wait_until") {
        None => TabsReady::Loaded,
        Some(v) => match v.as_str() {
            Some("load") => TabsReady::Loaded,
            Some("start") => TabsReady::Started,
            _ => return Err(ApiError::unprocessable("wait_until must be \"load\" or \"start\"")),
        },
    };
    Ok(ForkRequest {
        count,
        isolation,
        ttl,
        metadata,
        wait_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_bodies_are_checked() {
        let config = Config::default();
        let check = |body: Value| validate(&config, body.as_object().unwrap()).map(|r| r.count);
        assert_eq!(check(json!({})).unwrap(), 1);
        assert_eq!(check(json!({"count": 16, "isolation": "context"})).unwrap(), 16);
        for bad in [
            json!({"count": 0}),
            json!({"count": 17}),
            json!({"count": 2.5}),
            json!({"count": "3"}),
            json!({"isolation": "vm"}),
            json!({"ttl": 0}),
            json!({"metadata": []}),
            json!({"wait_until": "networkidle"}),
            json!({"wait_until": 1}),
        ] {
            let e = check(bad.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }
}
