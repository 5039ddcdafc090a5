//! `POST /public/single-actions/run-action`: checks the request, finds or creates the
//! session, and has the [action engine](crate::action) run it. A failure of the action
//! itself answers 200 with `success: false`; bad requests and unknown or ended sessions
//! are 4xx. An action never outlives its session.

use std::collections::HashMap;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::Body;
use super::error::{ApiError, Attempt, json_response, session_refusal};
use super::request::{field, json_object, read_body};
use super::sessions::{parse_options, parse_screen};

use crate::action::{Job, instruction};
use crate::auth::Tenant;
use crate::broker::{Broker, NewSession};
use crate::browser::Screen;
use crate::proxy::hop::{HOP_TIMEOUT, is_hop, send_to};
use crate::session::Session;

/// Longest instruction accepted, in characters.
const MAX_ACTION_CHARS: usize = 8_000;
/// Longest cache `id`, in characters.
const MAX_ID_CHARS: usize = 256;
const MAX_VARIABLES: usize = 200;
/// TTL of a session created for an action.
const AUTO_SESSION_TTL: Duration = Duration::from_secs(600);

/// A validated request.
struct RunAction {
    job: Job,
    session_id: Option<String>,
    screen: Option<Screen>,
}

pub(crate) async fn handle(
    broker: &Broker,
    tenant: Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = &broker.config();
    let from_another_node = is_hop(&request);
    let (parts, body) = request.into_parts();
    let read = Request::from_parts(parts.clone(), body);
    let bytes = read_body(read, config.max_body_bytes, config.request_read_timeout()).await?;
    let body = json_object(&bytes)?;
    let request = validate(&body)?;
    let options = parse_options(config, &body)?;
    if request.session_id.is_some()
        && [
            "proxy",
            "user_agent",
            "locale",
            "timezone",
            "fingerprint",
            "device",
            "idle_timeout",
        ]
        .iter()
        .any(|name| field(&body, name).is_some())
    {
        return Err(ApiError::unprocessable(
            "proxy, user_agent, locale, timezone, fingerprint, device and idle_timeout apply to the session an action \
             creates; leave them out with session_id",
        ));
    }
    // An action on a session another node runs is that node's to carry out.
    if let Some(id) = &request.session_id
        && !from_another_node
        && let Some(key) = broker.cluster_key()
        && let Some(owner) = broker.owner_url(id, false).await
    {
        let within = config.action_timeout() + HOP_TIMEOUT;
        return send_to(key, &owner, &parts, bytes, within, &tenant)
            .await
            .map(super::whole)
            .map_err(ApiError::from);
    }
    let session = match &request.session_id {
        Some(id) => broker
            .active(Some(&tenant), id)
            .await
            .map_err(|e| session_refusal(e, Attempt::Act))?,
        None => {
            let new = NewSession {
                external_url: None,
                profile_id: None,
                persist_changes: true,
                // Never longer than the operator allows any session to live.
                ttl: AUTO_SESSION_TTL.min(Duration::from_secs(config.max_ttl)),
                screen: request.screen.unwrap_or_else(|| config.default_screen()),
                metadata: Map::new(),
                queue: true,
                options,
                webhook_url: None,
                webhook_events: None,
                webhook: None,
            };
            broker.create_session(tenant.clone(), new).await?
        }
    };
    let started = std::time::Instant::now();
    let mut request = request;
    request.job.files = broker.artifacts().existing(&session.id);
    request.job.browser_downloads = session.browser_downloads.get().cloned();
    let run = broker
        .actions()
        .run_in_turn(&tenant, &session, &request.job, config, broker.egress())
        .instrument(tracing::info_span!(parent: &session.span(), "action.run"));
    let answer = tokio::select! {
        answer = run => answer,
        _ = session.ended().cancelled() => return Err(ended_during(&session)),
    };
    let m = &broker.metrics();
    m.action_time.observe(started.elapsed());
    if answer.success {
        &m.actions_succeeded
    } else {
        &m.actions_failed
    }
    .inc();
    m.action_model_calls.inc_by(answer.credits as u64);
    let _in_session = session.span().entered();
    tracing::info!(
        success = answer.success,
        used_cache = answer.used_cache,
        cache_failed = answer.cache_failed,
        credits = answer.credits,
        "single action"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "success": answer.success,
            "result": answer.result,
            "credits": answer.credits,
            "error": answer.error,
            "used_cache": answer.used_cache,
            "set_cache": answer.set_cache,
            "cache_failed": answer.cache_failed,
            "session_id": session.id,
        }),
    ))
}

fn ended_during(session: &Session) -> ApiError {
    ApiError::conflict(format!(
        "The session ended ({}) while the action ran",
        session.status().as_str()
    ))
}

/// Checks a request body (for the fuzz targets: the request it makes stays private).
pub(crate) fn validate_body(body: &Map<String, Value>) -> Result<(), ApiError> {
    validate(body).map(|_| ())
}

fn validate(body: &Map<String, Value>) -> Result<RunAction, ApiError> {
    let action = match field(body, "action") {
        Some(Value::String(a)) if !a.trim().is_empty() => a.trim().to_owned(),
        Some(Value::String(_)) | None => return Err(ApiError::unprocessable("action is required")),
        Some(_) => return Err(ApiError::unprocessable("action must be a string")),
    };
    if action.chars().count() > MAX_ACTION_CHARS {
        return Err(ApiError::unprocessable(format!(
            "action is too long: at most {MAX_ACTION_CHARS} characters"
        )));
    }
    let session_id = match field(body, "session_id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::unprocessable("session_id must be a string")),
        None => None,
    };
    let id = match field(body, "id") {
        Some(Value::String(s))
            if !s.is_empty() && s.chars().count() <= MAX_ID_CHARS && !s.chars().any(char::is_control) =>
        {
            Some(s.clone())
        }
        Some(_) => {
            return Err(ApiError::unprocessable(format!(
                "id must be a string of 1 to {MAX_ID_CHARS} characters, without control characters"
            )));
        }
        None => None,
    };
    let set_cache = match field(body, "set_cache") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::unprocessable("set_cache must be true or false")),
        None => true,
    };
    let screen = field(body, "screen_config").map(parse_screen).transpose()?;
    let mut values = HashMap::new();
    match field(body, "variables") {
        None => {}
        Some(Value::Object(vars)) => {
            if vars.len() > MAX_VARIABLES {
                return Err(ApiError::unprocessable(format!(
                    "variables: at most {MAX_VARIABLES} are accepted"
                )));
            }
            for (name, value) in vars {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::unprocessable(format!(
                            "variables.{name} must be a string, a number or true/false"
                        )));
                    }
                };
                values.insert(name.trim().to_owned(), text);
            }
        }
        Some(_) => return Err(ApiError::unprocessable("variables must be an object")),
    }
    let missing: Vec<String> = instruction::placeholders(&action)
        .into_iter()
        .filter(|name| !values.contains_key(name))
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|n| format!("{{{{{n}}}}}")).collect();
        return Err(ApiError::unprocessable(format!(
            "Missing variable{}: {} (the action uses {}, and variables has no value for {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            names.join(", "),
            if missing.len() > 1 { "them" } else { "it" }
        ))
        .with_code("missing_variable"));
    }
    Ok(RunAction {
        job: Job {
            action,
            id,
            values,
            set_cache,
            files: None,
            browser_downloads: None,
        },
        session_id,
        screen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = validate(&body(json!({
            "action": "type {{pw}} into the Password field",
            "variables": {"pw": "hunter2", "n": 5, "b": true},
            "id": "login",
            "set_cache": false,
            "screen_config": {"width": 800, "height": 600},
        })))
        .unwrap();
        assert_eq!(ok.job.values["pw"], "hunter2");
        assert_eq!(ok.job.values["n"], "5");
        assert!(!ok.job.set_cache);
        let status = |v: Value| validate(&body(v)).err().map(|e| (e.status.as_u16(), e.detail));
        assert_eq!(status(json!({})).unwrap().0, 422);
        assert_eq!(status(json!({"action": "  "})).unwrap().0, 422);
        assert_eq!(status(json!({"action": 5})).unwrap().0, 422);
        assert_eq!(
            status(json!({"action": "x".repeat(MAX_ACTION_CHARS + 1)})).unwrap().0,
            422
        );
        assert_eq!(status(json!({"action": "a", "id": ""})).unwrap().0, 422);
        assert_eq!(status(json!({"action": "a", "id": "a\nb"})).unwrap().0, 422);
        assert_eq!(status(json!({"action": "a", "set_cache": "yes"})).unwrap().0, 422);
        assert_eq!(status(json!({"action": "a", "variables": [1]})).unwrap().0, 422);
        assert_eq!(
            status(json!({"action": "a", "variables": {"x": {"y": 1}}})).unwrap().0,
            422
        );
        assert_eq!(
            status(json!({"action": "a", "screen_config": {"width": 5}})).unwrap().0,
            422
        );
        let (code, detail) =
            status(json!({"action": "type {{user}} then {{pw}}", "variables": {"user": "a"}})).unwrap();
        assert_eq!(code, 422);
        assert!(detail.contains("pw") && !detail.contains("user,"), "{detail}");
    }

    #[test]
    fn missing_variables_never_echo_values() {
        let e = validate(&body(
            json!({"action": "type {{a}} {{b}}", "variables": {"a": "secret-value"}}),
        ))
        .err()
        .unwrap();
        assert!(!e.detail.contains("secret-value"), "{}", e.detail);
        assert!(e.detail.starts_with("Missing variable: b"), "{}", e.detail);
    }
}
