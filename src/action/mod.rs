//! Run Single Action: `POST /public/single-actions/run-action`. One instruction in words,
//! carried out in a session's browser: by the built-in interpreter ([`instruction`]), or by
//! a model when one is configured and the interpreter does not understand it ([`model`]);
//! replayed from the [`cache`] when the caller gave an `id`.
//!
//! Failures of the action itself answer 200 with `success: false`; bad requests and unknown
//! or ended sessions are 4xx. Actions on one session run one at a time, in arrival order,
//! and never outlive the session.

pub mod cache;
pub mod instruction;
pub mod keys;
pub mod model;
pub mod page;
pub mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::api::{field, parse_screen, read_json_object};
use crate::auth::Tenant;
use crate::broker::{Broker, NewSession};
use crate::error::{ApiError, Body, json_response};
use crate::session::{Session, Status};
use cache::{ActionCache, Entry};
use page::Page;
use run::{Runner, summarize};

/// Longest instruction accepted, in characters.
const MAX_ACTION_CHARS: usize = 8_000;
/// Longest cache `id`, in characters.
const MAX_ID_CHARS: usize = 256;
const MAX_VARIABLES: usize = 200;
/// TTL of a session created for an action.
const AUTO_SESSION_TTL: Duration = Duration::from_secs(600);
/// A cached step gets less time than a fresh one: if its element is not there soon, the
/// page has changed and the step is resolved afresh.
const REPLAY_WAIT: Duration = Duration::from_secs(3);
/// How long a page may take to load.
const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an action failed, in words a person can act on (`error` in the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError(pub String);

impl ActionError {
    pub fn new(message: impl Into<String>) -> ActionError {
        ActionError(message.into())
    }

    fn cdp(method: &str, message: String) -> ActionError {
        ActionError(format!("The browser refused {method}: {message}"))
    }

    /// The script context went away (the page navigated): worth one more try.
    fn is_lost_context(&self) -> bool {
        [
            "Cannot find context",
            "Execution context was destroyed",
            "Inspected target navigated",
        ]
        .iter()
        .any(|m| self.0.contains(m))
    }
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What actions share across requests: the cache and the model, if configured.
pub struct Actions {
    pub cache: ActionCache,
    pub model: Option<model::ModelClient>,
}

/// A validated request.
struct RunAction {
    action: String,
    session_id: Option<String>,
    id: Option<String>,
    values: HashMap<String, String>,
    screen: Option<crate::browser::Screen>,
    set_cache: bool,
}

/// The answer's fields.
#[derive(Default)]
struct Answer {
    success: bool,
    result: String,
    credits: u32,
    error: Option<String>,
    used_cache: bool,
    set_cache: bool,
    cache_failed: bool,
}

pub async fn handle(broker: &Broker, tenant: Tenant, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = read_json_object(broker, request, broker.config.max_body_bytes).await?;
    let request = validate(&body)?;
    let session = match &request.session_id {
        Some(id) => active_session(broker, &tenant, id)?,
        None => {
            let new = NewSession {
                external_url: None,
                profile_id: None,
                persist_changes: true,
                ttl: AUTO_SESSION_TTL,
                screen: request.screen.unwrap_or_else(|| broker.default_screen()),
                metadata: Map::new(),
            };
            broker.create_session(tenant.clone(), new).await?
        }
    };
    let started = std::time::Instant::now();
    let answer = tokio::select! {
        answer = run_in_turn(broker, &tenant, &session, &request) => answer,
        _ = session.ended().cancelled() => return Err(ended_during(&session)),
    };
    let m = &broker.metrics;
    m.action_time.observe(started.elapsed());
    if answer.success {
        &m.actions_succeeded
    } else {
        &m.actions_failed
    }
    .fetch_add(1, Relaxed);
    m.action_model_calls.fetch_add(answer.credits as u64, Relaxed);
    tracing::info!(
        session = %session.id,
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

fn active_session(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Arc<Session>, ApiError> {
    if let Some(record) = broker.archive.get(id).filter(|a| &a.tenant == tenant) {
        return Err(not_active(record.status));
    }
    let session = broker
        .find(tenant, id)
        .ok_or_else(|| ApiError::not_found("Session not found"))?;
    match session.status() {
        Status::Active => Ok(session),
        status => Err(not_active(status)),
    }
}

fn not_active(status: Status) -> ApiError {
    ApiError::conflict(format!(
        "Session is {}: actions need an active session",
        status.as_str()
    ))
}

fn ended_during(session: &Session) -> ApiError {
    ApiError::conflict(format!(
        "The session ended ({}) while the action ran",
        session.status().as_str()
    ))
}

/// Checks a request body (for the fuzz targets: the request it makes stays private).
pub fn validate_body(body: &Map<String, Value>) -> Result<(), ApiError> {
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
        action,
        session_id,
        id,
        values,
        screen,
        set_cache,
    })
}

/// Waits for the session's earlier actions (the lock is fair: arrival order), then runs.
async fn run_in_turn(broker: &Broker, tenant: &Tenant, session: &Session, request: &RunAction) -> Answer {
    let mut current_tab = session.actions.lock().await;
    let timeout = broker.config.action_timeout();
    let run = run_action(broker, tenant, session, request, &mut current_tab);
    match tokio::time::timeout(timeout, run).await {
        Ok(answer) => answer,
        Err(_) => Answer {
            error: Some(format!("The action did not finish within {} s", timeout.as_secs())),
            ..Answer::default()
        },
    }
}

async fn run_action(
    broker: &Broker,
    tenant: &Tenant,
    session: &Session,
    request: &RunAction,
    current_tab: &mut Option<String>,
) -> Answer {
    let config = &broker.config;
    let page = Page::attach(
        &session.upstream,
        &broker.egress,
        crate::proxy::upstream_timeout(broker, session),
        crate::proxy::ws_config(config),
        current_tab.as_deref(),
    )
    .await;
    let page = match page {
        Ok(page) => page,
        Err(e) => {
            return Answer {
                error: Some(e.0),
                ..Answer::default()
            };
        }
    };
    let mut runner = Runner {
        page,
        values: request.values.clone(),
        wait: config.action_wait(),
        navigation: NAVIGATION_TIMEOUT,
    };
    let mut answer = execute(broker, tenant, request, &mut runner).await;
    let dialogs = runner.page.dialogs();
    if !dialogs.is_empty() && answer.success {
        answer.result.push_str(&format!(
            " The page showed {} dialog(s), accepted: \"{}\".",
            dialogs.len(),
            dialogs.join("\", \"")
        ));
    }
    *current_tab = Some(runner.page.target_id.clone());
    runner.page.detach().await;
    answer
}

/// Replays the cached steps if there are any for this action, else (or if the replay
/// fails) resolves the action afresh; keeps what was resolved.
async fn execute(broker: &Broker, tenant: &Tenant, request: &RunAction, runner: &mut Runner) -> Answer {
    let actions = &broker.actions;
    let mut answer = Answer::default();
    let cached = request
        .id
        .as_ref()
        .and_then(|id| actions.cache.get(tenant, id))
        .filter(|entry| entry.is_for(&request.action));
    let mut done_before = Vec::new();
    let mut resolved_before = Vec::new();
    let mut resume_at = 0;
    if let Some(entry) = cached {
        match runner.run_all(&entry.steps, REPLAY_WAIT.min(runner.wait)).await {
            Ok((outcomes, _)) => {
                broker.metrics.action_cache_hits.fetch_add(1, Relaxed);
                answer.success = true;
                answer.used_cache = true;
                answer.result = summarize(&outcomes);
                return answer;
            }
            Err(failed) => {
                broker.metrics.action_cache_failures.fetch_add(1, Relaxed);
                // Not the error's text: it may name an element by a variable's value.
                tracing::info!(step = failed.index, "a cached step failed; resolving afresh");
                answer.cache_failed = true;
                // The steps before the failed one are done: go on from there.
                resume_at = failed.index;
                done_before = failed.done;
                resolved_before = entry.steps[..failed.index].to_vec();
            }
        }
    }
    let fresh = match instruction::parse(&request.action) {
        Ok(steps) => {
            let rest = if resume_at < steps.len() {
                &steps[resume_at..]
            } else {
                &steps[..]
            };
            match runner.run_all(rest, runner.wait).await {
                Ok((outcomes, resolved)) => {
                    done_before.extend(outcomes);
                    resolved_before.extend(resolved);
                    Ok((summarize(&done_before), resolved_before))
                }
                Err(failed) => {
                    let n = steps.len();
                    let at = resume_at + failed.index;
                    done_before.extend(failed.done);
                    answer.result = summarize(&done_before);
                    Err(if n > 1 {
                        format!("Step {} of {n} failed: {}", at + 1, failed.error)
                    } else {
                        failed.error.0
                    })
                }
            }
        }
        Err(unknown) => match &actions.model {
            Some(client) => {
                let max = broker.config.model_max_calls;
                let (result, credits) = runner.run_with_model(client, &request.action, max).await;
                answer.credits = credits;
                result.map_err(|e| e.0)
            }
            None => Err(format!(
                "The instruction \"{unknown}\" is not understood, and no model is configured for \
                 instructions the built-in interpreter does not know. It understands: {}",
                instruction::UNDERSTOOD
            )),
        },
    };
    match fresh {
        Ok((result, steps)) => {
            answer.success = true;
            answer.result = result;
            if let Some(id) = request.id.as_ref().filter(|_| request.set_cache && !steps.is_empty()) {
                answer.set_cache = actions.cache.put(tenant, id, Entry::new(&request.action, steps));
            }
        }
        Err(error) => answer.error = Some(error),
    }
    answer
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
        assert_eq!(ok.values["pw"], "hunter2");
        assert_eq!(ok.values["n"], "5");
        assert!(!ok.set_cache);
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
