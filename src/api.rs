//! The JSON API: `/public/sessions…`, `/health`, `/metrics`. Parses and validates input,
//! then calls the broker; every error leaves through `ApiError`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::auth::Tenant;
use crate::broker::{Broker, NewSession, profile_error};
use crate::browser::Screen;
use crate::config::{Config, MAX_HEIGHT, MAX_WIDTH, MIN_SIDE};
use crate::error::{ApiError, Body, empty_response, json_response};
use crate::records::Archived;
use crate::session::{self, Session, Status};
use crate::storage_state;

/// Largest page of a session list.
const MAX_LIMIT: u64 = 100;
const DEFAULT_LIMIT: u64 = 50;

pub async fn handle(broker: Arc<Broker>, request: Request<Incoming>) -> Response<Body> {
    match route(&broker, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn route(broker: &Broker, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = request.method().clone();
    match segments.as_slice() {
        ["health"] => {
            only(&method, &[Method::GET, Method::HEAD]).map(|_| json_response(StatusCode::OK, &json!({"status": "ok"})))
        }
        ["metrics"] => only(&method, &[Method::GET]).map(|_| {
            let mut r = Response::new(Full::new(Bytes::from(broker.render_metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }),
        ["public", "sessions", rest @ ..] => {
            // Authenticate before reading anything else of the request.
            let tenant = broker
                .keys
                .authenticate(request.headers())
                .ok_or_else(ApiError::unauthorized)?;
            match (rest, &method) {
                ([], &Method::POST) => create(broker, tenant, request).await,
                ([], &Method::GET) => list(broker, &tenant, request.uri().query()),
                ([], _) => Err(method_not_allowed()),
                ([id], &Method::GET) => match (broker.find(&tenant, id), archived(broker, &tenant, id)) {
                    (Some(session), _) => Ok(json_response(StatusCode::OK, &render(broker, &session))),
                    (None, Some(record)) => Ok(json_response(StatusCode::OK, &record.body)),
                    (None, None) => Err(ApiError::not_found("Session not found")),
                },
                ([id], &Method::PATCH) => match archived(broker, &tenant, id) {
                    Some(record) => Err(not_active(record.status)),
                    None => update(broker, &tenant, id, request).await,
                },
                ([id], &Method::DELETE) => delete(broker, &tenant, id).await,
                ([_], _) => Err(method_not_allowed()),
                ([id, "terminate"], &Method::POST) => terminate(broker, &tenant, id).await,
                ([_, "terminate"], _) => Err(method_not_allowed()),
                _ => Err(ApiError::not_found("Not Found")),
            }
        }
        ["public", "browser-profiles", rest @ ..] => {
            let tenant = broker
                .keys
                .authenticate(request.headers())
                .ok_or_else(ApiError::unauthorized)?;
            match (rest, &method) {
                ([], &Method::POST) => create_profile(broker, &tenant, request).await,
                ([], &Method::GET) => {
                    let profiles: Vec<Value> = broker.profiles.list(&tenant).iter().map(|p| p.render()).collect();
                    Ok(json_response(StatusCode::OK, &json!({ "profiles": profiles })))
                }
                ([id], &Method::GET) => {
                    let profile = broker.profiles.get(&tenant, id).map_err(profile_error)?;
                    Ok(json_response(StatusCode::OK, &profile.render()))
                }
                ([id], &Method::DELETE) => {
                    broker.profiles.delete(&tenant, id).map_err(profile_error)?;
                    Ok(empty_response(StatusCode::NO_CONTENT))
                }
                ([id, "storage-state"], &Method::GET) => {
                    let state = broker.export_storage_state(&tenant, id).await?;
                    Ok(json_response(StatusCode::OK, &state))
                }
                ([id, "storage-state"], &Method::POST | &Method::PUT) => {
                    let state = Value::Object(read_json_object(broker, request, MAX_STORAGE_STATE_BYTES).await?);
                    storage_state::validate(&state).map_err(ApiError::unprocessable)?;
                    broker.import_storage_state(&tenant, id, &state).await?;
                    let profile = broker.profiles.get(&tenant, id).map_err(profile_error)?;
                    Ok(json_response(StatusCode::OK, &profile.render()))
                }
                ([] | [_] | [_, "storage-state"], _) => Err(method_not_allowed()),
                _ => Err(ApiError::not_found("Not Found")),
            }
        }
        ["public", "single-actions", "run-action"] => {
            let tenant = broker
                .keys
                .authenticate(request.headers())
                .ok_or_else(ApiError::unauthorized)?;
            only(&method, &[Method::POST])?;
            crate::action::handle(broker, tenant, request).await
        }
        _ => Err(ApiError::not_found("Not Found")),
    }
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
    let body = read_json_object(broker, request, MAX_STORAGE_STATE_BYTES).await?;
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
    let profile = broker.profiles.create(tenant, &name).map_err(profile_error)?;
    if let Some(state) = state
        && let Err(e) = broker.import_storage_state(tenant, &profile.id, state).await
    {
        let _ = broker.profiles.delete(tenant, &profile.id);
        return Err(e);
    }
    Ok(json_response(StatusCode::CREATED, &profile.render()))
}

fn only(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(method_not_allowed())
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// A session of this tenant that ended in an earlier run of the broker.
fn archived(broker: &Broker, tenant: &Tenant, id: &str) -> Option<Arc<Archived>> {
    broker
        .archive
        .get(id)
        .map(|a| a.clone())
        .filter(|a| &a.tenant == tenant)
}

fn find(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Arc<Session>, ApiError> {
    broker
        .find(tenant, id)
        .ok_or_else(|| ApiError::not_found("Session not found"))
}

fn render(broker: &Broker, session: &Session) -> Value {
    let mut body = session::render(session, &broker.cdp_url(session));
    let (live, read_only) = broker.live_urls(session);
    body["metadata"]["live_url"] = json!(live);
    body["metadata"]["live_url_read_only"] = json!(read_only);
    body
}

async fn create(broker: &Broker, tenant: Tenant, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = read_json_object(broker, request, broker.config.max_body_bytes).await?;
    let new = validate_create(&broker.config, &body)?;
    let started = std::time::Instant::now();
    let session = broker.create_session(tenant, new).await?;
    broker.metrics.create_time.observe(started.elapsed());
    Ok(json_response(StatusCode::CREATED, &render(broker, &session)))
}

/// Checks every field of a create body; the first bad one is reported.
pub(crate) fn validate_create(config: &Config, body: &Map<String, Value>) -> Result<NewSession, ApiError> {
    let external_url = match field(body, "cdp_url") {
        Some(Value::String(url)) => Some(url.clone()),
        Some(_) => return Err(ApiError::unprocessable("cdp_url must be a string")),
        None => None,
    };
    let profile_id = match field(body, "profile_id") {
        Some(Value::String(id)) if is_uuid(id) => Some(id.to_ascii_lowercase()),
        Some(_) => return Err(ApiError::unprocessable("profile_id must be a UUID string")),
        None => None,
    };
    if profile_id.is_some() && external_url.is_some() {
        return Err(ApiError::unprocessable(
            "profile_id cannot be combined with cdp_url: the broker can only load a profile into a browser it starts",
        ));
    }
    let persist_changes = match field(body, "persist_changes") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::unprocessable("persist_changes must be true or false")),
        None => true,
    };
    let ttl = match field(body, "ttl") {
        Some(v) => parse_ttl(v, config.max_ttl)?,
        None => Duration::from_secs(config.default_ttl),
    };
    let screen = match field(body, "screen_config") {
        Some(v) => parse_screen(v)?,
        None => Screen {
            width: config.default_width,
            height: config.default_height,
        },
    };
    let metadata = match field(body, "metadata") {
        Some(v) => parse_metadata(v, config.max_metadata_bytes)?,
        None => Map::new(),
    };
    Ok(NewSession {
        external_url,
        profile_id,
        persist_changes,
        ttl,
        screen,
        metadata,
    })
}

/// A field that is present and not `null` (clients send `null` for "not given").
pub(crate) fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

pub(crate) fn parse_ttl(v: &Value, max_ttl: u64) -> Result<Duration, ApiError> {
    let too_long = || {
        let human = if max_ttl.is_multiple_of(3600) {
            format!("{} hours", max_ttl / 3600)
        } else {
            format!("{max_ttl} seconds")
        };
        let human = if human == "1 hours" { "1 hour".to_owned() } else { human };
        ApiError::unprocessable(format!("TTL cannot exceed {max_ttl} seconds ({human})"))
    };
    let ttl = match v {
        Value::Number(n) if n.is_u64() => n.as_u64().unwrap_or(0),
        Value::Number(n) if n.is_i64() => {
            return Err(ApiError::unprocessable("TTL must be at least 1 second"));
        }
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > max_ttl as f64) => {
            return Err(too_long());
        }
        _ => {
            return Err(ApiError::unprocessable("ttl must be a whole number of seconds"));
        }
    };
    if ttl == 0 {
        return Err(ApiError::unprocessable("TTL must be at least 1 second"));
    }
    if ttl > max_ttl {
        return Err(too_long());
    }
    Ok(Duration::from_secs(ttl))
}

pub(crate) fn parse_screen(v: &Value) -> Result<Screen, ApiError> {
    let shape = || ApiError::unprocessable("screen_config must be an object with integer width and height");
    let obj = v.as_object().ok_or_else(shape)?;
    let side = |name: &str, max: u32| -> Result<u32, ApiError> {
        let n = obj.get(name).ok_or_else(shape)?.as_u64().ok_or_else(shape)?;
        if n < MIN_SIDE as u64 || n > max as u64 {
            return Err(ApiError::unprocessable(format!(
                "screen_config.{name} must be between {MIN_SIDE} and {max}"
            )));
        }
        Ok(n as u32)
    };
    Ok(Screen {
        width: side("width", MAX_WIDTH)?,
        height: side("height", MAX_HEIGHT)?,
    })
}

/// A metadata object within the size limit, without the broker's reserved keys.
pub(crate) fn parse_metadata(v: &Value, max_bytes: usize) -> Result<Map<String, Value>, ApiError> {
    let mut map = v
        .as_object()
        .cloned()
        .ok_or_else(|| ApiError::unprocessable("metadata must be a JSON object"))?;
    // The live view links belong to the broker; a client cannot plant one.
    map.remove("live_url");
    map.remove("live_url_read_only");
    check_metadata_size(&map, max_bytes)?;
    Ok(map)
}

fn check_metadata_size(map: &Map<String, Value>, max_bytes: usize) -> Result<(), ApiError> {
    let size = serde_json::to_vec(map).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(ApiError::unprocessable(format!(
            "metadata must be at most {max_bytes} bytes of JSON"
        )));
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn list(broker: &Broker, tenant: &Tenant, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut status_filter = None;
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0u64;
    for (key, value) in query_pairs(query.unwrap_or("")) {
        match key.as_str() {
            "status_filter" if !value.is_empty() => {
                status_filter = Some(Status::parse(&value).ok_or_else(|| {
                    ApiError::unprocessable("status_filter must be one of active, terminated, expired")
                })?);
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::unprocessable(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                    })?;
            }
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| ApiError::unprocessable("offset must be an integer of 0 or more"))?;
            }
            _ => {}
        }
    }
    enum Listed {
        Live(Arc<Session>),
        Archived(Arc<Archived>),
    }
    let wanted = |status: Status| status_filter.is_none_or(|f| status == f);
    let mut matching: Vec<(std::time::SystemTime, String, Listed)> = broker
        .sessions
        .iter()
        .filter(|s| &s.tenant == tenant && wanted(s.status()))
        .map(|s| (s.created_at, s.id.clone(), Listed::Live(s.clone())))
        .chain(
            broker
                .archive
                .iter()
                .filter(|a| &a.tenant == tenant && wanted(a.status))
                .map(|a| (a.created_at, a.id.clone(), Listed::Archived(a.clone()))),
        )
        .collect();
    matching.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let total = matching.len();
    let page: Vec<Value> = matching
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .map(|(_, _, listed)| match listed {
            Listed::Live(s) => render(broker, s),
            Listed::Archived(a) => a.body.clone(),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sessions": page, "total": total }),
    ))
}

async fn update(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let session = find(broker, tenant, id)?;
    let body = read_json_object(broker, request, broker.config.max_body_bytes).await?;
    let ttl = field(&body, "ttl")
        .map(|v| parse_ttl(v, broker.config.max_ttl))
        .transpose()?;
    let metadata = field(&body, "metadata")
        .map(|v| parse_metadata(v, broker.config.max_metadata_bytes))
        .transpose()?;
    if let Some(extra) = &metadata {
        check_metadata_size(&session.merged_metadata(extra), broker.config.max_metadata_bytes)?;
    }
    session.update(ttl, metadata).map_err(not_active)?;
    broker.records.save(&session);
    Ok(json_response(StatusCode::OK, &render(broker, &session)))
}

fn not_active(status: Status) -> ApiError {
    ApiError::conflict(match status {
        Status::Expired => "Session has expired and can no longer change",
        _ => "Session is terminated and can no longer change",
    })
}

/// How long terminate and delete wait for a profile save before answering anyway.
const SAVE_WAIT: Duration = Duration::from_secs(30);

fn already_ended(status: Status) -> ApiError {
    ApiError::conflict(match status {
        Status::Expired => "Session has already expired",
        _ => "Session is already terminated",
    })
}

async fn terminate(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    if let Some(record) = archived(broker, tenant, id) {
        return Err(already_ended(record.status));
    }
    let session = find(broker, tenant, id)?;
    broker.terminate(&session).map_err(already_ended)?;
    // "Terminate the session to save the authentication state": answer once it is saved.
    let _ = tokio::time::timeout(SAVE_WAIT, session.profile_released().cancelled()).await;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn delete(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    if archived(broker, tenant, id).is_some() {
        broker.archive.remove(id);
        broker.records.remove(id);
        return Ok(empty_response(StatusCode::NO_CONTENT));
    }
    let session = find(broker, tenant, id)?;
    // Forgotten first, so that no later write of its record brings it back.
    session.forget();
    let _ = broker.terminate(&session);
    let _ = tokio::time::timeout(SAVE_WAIT, session.profile_released().cancelled()).await;
    broker.sessions.remove(&session.id);
    broker.records.remove(&session.id);
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// Reads the body (at most `limit` bytes) as a JSON object. An empty body counts as `{}`.
pub(crate) async fn read_json_object(
    broker: &Broker,
    request: Request<Incoming>,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is too large: the limit is {limit} bytes"),
        )
    };
    if let Some(length) = request.headers().get(header::CONTENT_LENGTH)
        && length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| l > limit)
    {
        return Err(too_large());
    }
    // A client that trickles its body is dropped like one that trickles its headers.
    let read_time = broker.config.request_read_timeout();
    let bytes = tokio::time::timeout(read_time, Limited::new(request.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("The request body did not arrive within {} s", read_time.as_secs_f64()),
            )
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad_request("The request body could not be read")
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON in the request body: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::unprocessable("The request body must be a JSON object")),
    }
}

/// `a=1&b=x%20y` → [("a","1"), ("b","x y")].
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex_value(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules_match_the_contract() {
        assert_eq!(parse_ttl(&json!(600), 86400).unwrap(), Duration::from_secs(600));
        assert_eq!(
            parse_ttl(&json!(86401), 86400).unwrap_err().detail,
            "TTL cannot exceed 86400 seconds (24 hours)"
        );
        assert_eq!(
            parse_ttl(&json!(1e20), 86400).unwrap_err().detail,
            "TTL cannot exceed 86400 seconds (24 hours)"
        );
        assert_eq!(
            parse_ttl(&json!(0), 86400).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            parse_ttl(&json!(-5), 86400).unwrap_err().detail,
            "TTL must be at least 1 second"
        );
        assert!(parse_ttl(&json!("600"), 86400).is_err());
        assert!(parse_ttl(&json!(1.5), 86400).is_err());
        assert!(parse_ttl(&json!(true), 86400).is_err());
        assert_eq!(
            parse_ttl(&json!(7200), 3600).unwrap_err().detail,
            "TTL cannot exceed 3600 seconds (1 hour)"
        );
    }

    #[test]
    fn screens_are_bounded() {
        assert_eq!(
            parse_screen(&json!({"width": 1920, "height": 1080})).unwrap(),
            Screen {
                width: 1920,
                height: 1080
            }
        );
        for bad in [
            json!({"width": 99, "height": 500}),
            json!({"width": 7681, "height": 500}),
            json!({"width": 500, "height": 4321}),
            json!({"width": 500}),
            json!({"width": "500", "height": 500}),
            json!({"width": -1, "height": 500}),
            json!([1, 2]),
        ] {
            assert!(parse_screen(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_is_an_object_without_live_url_and_bounded() {
        let m = parse_metadata(&json!({"a": 1, "live_url": "http://evil"}), 100).unwrap();
        assert_eq!(Value::Object(m), json!({"a": 1}));
        assert!(parse_metadata(&json!("x"), 100).is_err());
        assert!(parse_metadata(&json!({"a": "x".repeat(200)}), 100).is_err());
    }

    #[test]
    fn queries_and_uuids_parse() {
        assert_eq!(
            query_pairs("status_filter=active&limit=5&x=a%20b+c&bad=%zz&end=%4"),
            vec![
                ("status_filter".into(), "active".into()),
                ("limit".into(), "5".into()),
                ("x".into(), "a b c".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
        assert!(is_uuid("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!is_uuid("550e8400e29b41d4a716446655440000"));
        assert!(!is_uuid("550e8400-e29b-41d4-a716-44665544000g"));
    }
}
