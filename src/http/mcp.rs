//! `/mcp`: the Model Context Protocol's Streamable HTTP transport (2025-06-18 and its
//! neighbours), answering each JSON-RPC request with one `application/json` body. Every
//! MCP session belongs to the API key that opened it, and every tool acts as that key
//! through the broker's ordinary paths (create, terminate, quotas, the session list), so
//! an agent's sessions are ordinary sessions. A tool that fails answers a tool result
//! with `isError: true` and the broker's message; only a malformed message is a
//! JSON-RPC error. In a cluster, a tool about a session another node runs is sent there
//! and answered as that node answers it.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::Body;
use super::error::{ApiError, Attempt, empty_response, session_refusal};
use super::files::render_file;
use super::request::read_body;
use super::sessions::{render, validate_create};
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::mcp::{Page, PageError, missing, references};
use crate::proxy::hop::{HOP_TIMEOUT, is_hop, send_to};
use crate::store::{ListQuery, Status};

/// The protocol revisions spoken, newest first: a client asking for another gets the newest.
const VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// MCP sessions one key may hold here at once; past it the least recently used goes.
const MAX_SESSIONS_PER_KEY: usize = 16;
/// An MCP session unused this long is forgotten (the browser sessions have their own TTL).
const IDLE: Duration = Duration::from_secs(3600);
/// Largest file `get_file` hands back inline.
const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
const SESSION_HEADER: &str = "mcp-session-id";

struct McpSession {
    tenant: Tenant,
    last_used: Instant,
}

/// The MCP sessions held, by broker (tests run several in one process) and id.
static SESSIONS: LazyLock<DashMap<(usize, String), McpSession>> = LazyLock::new(DashMap::new);

fn broker_id(broker: &Broker) -> usize {
    std::ptr::from_ref(broker) as usize
}

/// `/mcp`: POST carries messages, DELETE ends the MCP session; GET (a server-sent stream)
/// is not offered, which the specification allows with a 405.
pub(crate) async fn handle(
    broker: &Broker,
    tenant: Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::POST => post(broker, tenant, request).await,
        Method::DELETE => {
            let id = header_text(&request, SESSION_HEADER)
                .ok_or_else(|| ApiError::bad_request("Mcp-Session-Id is required"))?;
            let owned = SESSIONS
                .remove_if(&(broker_id(broker), id.clone()), |_, s| s.tenant == tenant)
                .is_some();
            // One another node opened: ended here; it holds no state anywhere to end.
            let elsewhere = broker.cluster_key().is_some_and(|k| k.is_mcp_session_id(&tenant, &id));
            if owned || elsewhere {
                Ok(empty_response(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::not_found("No such MCP session"))
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn header_text<B>(request: &Request<B>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// A JSON-RPC error answer, with the HTTP status the transport gives it.
fn rpc_error(status: StatusCode, id: &Value, code: i64, message: impl Into<String>) -> Response<Body> {
    json_rpc(
        status,
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}}),
    )
}

fn json_rpc(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(super::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn post(broker: &Broker, tenant: Tenant, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let config = broker.config();
    let from_another_node = is_hop(&request);
    let session_header = header_text(&request, SESSION_HEADER);
    let version_header = header_text(&request, "mcp-protocol-version");
    let bytes = read_body(request, config.max_body_bytes, config.request_read_timeout()).await?;
    let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(rpc_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            -32700,
            "Parse error: the body is not JSON",
        ));
    };
    let Some(message) = message.as_object() else {
        let why = if message.is_array() {
            "Invalid Request: batches are not accepted (MCP 2025-06-18 removed them)"
        } else {
            "Invalid Request: a JSON-RPC message is an object"
        };
        return Ok(rpc_error(StatusCode::BAD_REQUEST, &Value::Null, -32600, why));
    };
    let id = message.get("id").cloned();
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Ok(rpc_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            -32600,
            "Invalid Request: id must be a string or an integer",
        ));
    }
    let id_or_null = id.clone().unwrap_or(Value::Null);
    if message.get("jsonrpc") != Some(&json!("2.0")) {
        return Ok(rpc_error(
            StatusCode::BAD_REQUEST,
            &id_or_null,
            -32600,
            "Invalid Request: jsonrpc must be \"2.0\"",
        ));
    }
    let method = match message.get("method") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => {
            return Ok(rpc_error(
                StatusCode::BAD_REQUEST,
                &id_or_null,
                -32600,
                "Invalid Request: method must be a string",
            ));
        }
        // A response to a request of ours: we send none, so there is nothing to match it to.
        None if message.contains_key("result") || message.contains_key("error") => {
            return Ok(empty_response(StatusCode::ACCEPTED));
        }
        None => {
            return Ok(rpc_error(
                StatusCode::BAD_REQUEST,
                &id_or_null,
                -32600,
                "Invalid Request: no method",
            ));
        }
    };
    let params = match message.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return Ok(rpc_error(
                StatusCode::BAD_REQUEST,
                &id_or_null,
                -32602,
                "Invalid params: params must be an object",
            ));
        }
    };
    if method == "initialize" {
        let Some(id) = id else {
            return Ok(rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                -32600,
                "Invalid Request: initialize is a request, it needs an id",
            ));
        };
        return Ok(initialize(broker, tenant, &id, &params));
    }
    // A tool sent on by the node the MCP client talks to: the hop's signature, checked by
    // the router, stands for the client's MCP session there.
    if from_another_node
        && method == "tools/call"
        && let Some(id) = &id
    {
        return Ok(match call(broker, &tenant, &params, true).await {
            Ok(result) => json_rpc(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result})),
            Err((code, message)) => rpc_error(StatusCode::OK, id, code, message),
        });
    }
    // Everything after initialize names its MCP session, which must be this key's.
    let Some(session_id) = session_header else {
        return Ok(rpc_error(
            StatusCode::BAD_REQUEST,
            &id_or_null,
            -32600,
            "Mcp-Session-Id is required: send initialize first",
        ));
    };
    if !touch(broker, &tenant, &session_id) {
        return Ok(rpc_error(
            StatusCode::NOT_FOUND,
            &id_or_null,
            -32001,
            "No such MCP session: initialize again",
        ));
    }
    if let Some(v) = version_header
        && !VERSIONS.contains(&v.as_str())
    {
        return Ok(rpc_error(
            StatusCode::BAD_REQUEST,
            &id_or_null,
            -32600,
            format!(
                "Unsupported MCP-Protocol-Version {v:?}; supported: {}",
                VERSIONS.join(", ")
            ),
        ));
    }
    let Some(id) = id else {
        // A notification (`notifications/initialized`, `notifications/cancelled`, …): taken.
        return Ok(empty_response(StatusCode::ACCEPTED));
    };
    let result = match method {
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": tools()})),
        "tools/call" => call(broker, &tenant, &params, false).await,
        _ => Err((-32601, format!("Method not found: {method}"))),
    };
    Ok(match result {
        Ok(result) => json_rpc(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result})),
        Err((code, message)) => rpc_error(StatusCode::OK, &id, code, message),
    })
}

/// Opens an MCP session for `tenant`, at the client's protocol revision if spoken here.
fn initialize(broker: &Broker, tenant: Tenant, id: &Value, params: &Map<String, Value>) -> Response<Body> {
    let Some(asked) = params.get("protocolVersion").and_then(Value::as_str) else {
        return rpc_error(
            StatusCode::OK,
            id,
            -32602,
            "Invalid params: protocolVersion (a string) is required",
        );
    };
    let version = VERSIONS.iter().find(|v| **v == asked).unwrap_or(&VERSIONS[0]);
    // In a cluster the id is signed, so any node takes it (see `touch`).
    let session_id = match broker.cluster_key() {
        Some(key) => key.mcp_session_id(&tenant),
        None => crate::auth::random_hex(16),
    };
    keep(broker, tenant, &session_id);
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "cdpgate", "title": "cdpgate browser sessions", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Create a session with create_session, navigate it, read it with snapshot \
            (elements carry ref=eN references) and act with click/type/select/press/scroll by reference; \
            end it with end_session.",
    });
    let mut r = json_rpc(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}));
    if let Ok(v) = HeaderValue::from_str(&session_id) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// Holds MCP session `id` of `tenant` here; the key's oldest make room, so that a client
/// that never says DELETE is bounded.
fn keep(broker: &Broker, tenant: Tenant, id: &str) {
    let me = broker_id(broker);
    SESSIONS.retain(|_, s| s.last_used.elapsed() < IDLE);
    let mut mine: Vec<((usize, String), Instant)> = SESSIONS
        .iter()
        .filter(|s| s.tenant == tenant && s.key().0 == me)
        .map(|s| (s.key().clone(), s.last_used))
        .collect();
    mine.sort_by_key(|(_, used)| *used);
    let over = (mine.len() + 1).saturating_sub(MAX_SESSIONS_PER_KEY);
    for (old, _) in mine.into_iter().take(over) {
        SESSIONS.remove(&old);
    }
    SESSIONS.insert(
        (me, id.to_owned()),
        McpSession {
            tenant,
            last_used: Instant::now(),
        },
    );
}

/// Whether `id` is an MCP session of this key on this broker (and marks it used). In a
/// cluster, one another node opened for this key (its id signed with the cluster secret)
/// is taken up here.
fn touch(broker: &Broker, tenant: &Tenant, id: &str) -> bool {
    match SESSIONS.get_mut(&(broker_id(broker), id.to_owned())) {
        Some(mut s) if &s.tenant == tenant && s.last_used.elapsed() < IDLE => {
            s.last_used = Instant::now();
            return true;
        }
        _ => {}
    }
    let signed = broker.cluster_key().is_some_and(|k| k.is_mcp_session_id(tenant, id));
    if signed {
        keep(broker, tenant.clone(), id);
    }
    signed
}

/// A tool's schema: its properties, the required ones, nothing else accepted.
fn tool(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "description": description,
        "inputSchema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        },
    })
}

fn session_prop() -> Value {
    json!({"type": "string", "description": "The session's id, from create_session or list_sessions"})
}

fn with_session(mut properties: Value) -> Value {
    properties["session_id"] = session_prop();
    properties
}

fn reference_prop() -> Value {
    json!({"type": "string", "description": "An element's reference from the latest snapshot, e.g. e12"})
}

/// The tools, each with the JSON Schema of its arguments.
fn tools() -> Vec<Value> {
    vec![
        tool(
            "create_session",
            "Start a browser session (the options of POST /public/sessions). Answers its id, cdp_url and live view links.",
            json!({
                "isolation": {"type": "string", "enum": ["process", "context"], "description": "A browser of its own (process) or a context in a shared browser (context, faster)"},
                "browser": {"type": "string", "enum": ["shell", "full"], "description": "Chromium's headless shell (lighter, the default where installed) or the full Chromium"},
                "ttl": {"type": "integer", "minimum": 1, "description": "Seconds the session lives"},
                "idle_timeout": {"type": "integer", "minimum": 1},
                "screen_config": {"type": "object", "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}}},
                "proxy": {"type": "string", "description": "An upstream proxy URL for the browser"},
                "user_agent": {"type": "string"},
                "locale": {"type": "string"},
                "timezone": {"type": "string"},
                "profile_id": {"type": "string", "description": "A browser profile's UUID"},
                "persist_changes": {"type": "boolean"},
                "record": {"type": "boolean"},
                "metadata": {"type": "object"},
            }),
            &[],
        )
        .with_open_schema(),
        tool("end_session", "End a session now.", with_session(json!({})), &["session_id"]),
        tool(
            "list_sessions",
            "This key's sessions, newest first.",
            json!({"status": {"type": "string", "enum": ["active", "terminated", "expired", "all"], "default": "active"}}),
            &[],
        ),
        tool(
            "navigate",
            "Open a URL in the session's tab.",
            with_session(json!({
                "url": {"type": "string", "description": "An http or https URL"},
                "wait": {"type": "boolean", "default": true, "description": "Wait for the page's load event"},
            })),
            &["session_id", "url"],
        ),
        tool(
            "snapshot",
            "The page as an outline: headings, text, and each element one can act on with a reference [ref=eN].",
            with_session(json!({})),
            &["session_id"],
        ),
        tool(
            "click",
            "Click an element by its snapshot reference.",
            with_session(json!({"ref": reference_prop()})),
            &["session_id", "ref"],
        ),
        tool(
            "type",
            "Type text into an element by its snapshot reference.",
            with_session(json!({
                "ref": reference_prop(),
                "text": {"type": "string"},
                "clear": {"type": "boolean", "default": true, "description": "Empty the field first"},
                "submit": {"type": "boolean", "default": false, "description": "Press Enter after typing"},
            })),
            &["session_id", "ref", "text"],
        ),
        tool(
            "select",
            "Choose options of a <select> by value or label.",
            with_session(json!({
                "ref": reference_prop(),
                "values": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            })),
            &["session_id", "ref", "values"],
        ),
        tool(
            "press",
            "Press a key or chord in the focused element (Enter, Tab, Escape, ArrowDown, Control+A).",
            with_session(json!({"key": {"type": "string"}})),
            &["session_id", "key"],
        ),
        tool(
            "scroll",
            "Scroll an element into view by reference, or the page up or down.",
            with_session(json!({
                "ref": reference_prop(),
                "direction": {"type": "string", "enum": ["up", "down"], "default": "down"},
                "pixels": {"type": "integer", "minimum": 1, "maximum": 100000, "description": "Default: one screen"},
            })),
            &["session_id"],
        ),
        tool(
            "screenshot",
            "A PNG of what the session's tab shows.",
            with_session(json!({})),
            &["session_id"],
        ),
        tool(
            "markdown",
            "The page's main text as markdown, links kept.",
            with_session(json!({})),
            &["session_id"],
        ),
        tool(
            "run_action",
            "Run one action described in words in the session (e.g. \"click the Sign in button\"), as POST /public/single-actions/run-action.",
            with_session(json!({
                "action": {"type": "string"},
                "variables": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
            })),
            &["session_id", "action"],
        ),
        tool(
            "list_files",
            "The session's files (downloads, uploads).",
            with_session(json!({})),
            &["session_id"],
        ),
        tool(
            "get_file",
            "One of the session's files, as an embedded resource.",
            with_session(json!({"name": {"type": "string"}})),
            &["session_id", "name"],
        ),
        tool(
            "live_view_url",
            "A link to watch (or take over) the session in a web page, for a human handoff.",
            with_session(json!({"read_only": {"type": "boolean", "default": false}})),
            &["session_id"],
        ),
    ]
}

trait OpenSchema {
    fn with_open_schema(self) -> Self;
}

impl OpenSchema for Value {
    /// A create takes every option the API does: the broker checks them, not the schema.
    fn with_open_schema(mut self) -> Value {
        self["inputSchema"]["additionalProperties"] = json!(true);
        self
    }
}

/// Why a tool call did not produce its output.
enum Failure {
    /// No such tool: a protocol error.
    UnknownTool(String),
    /// The tool ran and failed, or its arguments were wrong: a result with `isError`.
    Tool(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Tool(e.detail)
    }
}

impl From<PageError> for Failure {
    fn from(e: PageError) -> Failure {
        Failure::Tool(e.to_string())
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::Tool(message.into())
}

/// `tools/call`: the tool's result, a failed tool as `isError`; run by the node that runs
/// the session it names, unless `from_another_node` (then here, never sent on again).
async fn call(
    broker: &Broker,
    tenant: &Tenant,
    params: &Map<String, Value>,
    from_another_node: bool,
) -> Result<Value, (i64, String)> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err((-32602, "Invalid params: name (a string) is required".into()));
    };
    let args = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(_) => return Err((-32602, "Invalid params: arguments must be an object".into())),
    };
    if !from_another_node && let Some(answer) = on_owner(broker, tenant, name, &args, params).await {
        return answer;
    }
    let limit = broker.config().action_timeout();
    let run = tokio::time::timeout(limit, run_tool(broker, tenant, name, &args));
    let outcome = run
        .await
        .unwrap_or_else(|_| Err(bad(format!("{name} did not finish within {} ms", limit.as_millis()))));
    match outcome {
        Ok(content) => Ok(json!({"content": content, "isError": false})),
        Err(Failure::Tool(message)) => {
            tracing::info!(tool = name, error = %message, "MCP tool failed");
            Ok(json!({"content": [{"type": "text", "text": message}], "isError": true}))
        }
        Err(Failure::UnknownTool(name)) => Err((-32602, format!("Unknown tool: {name}"))),
    }
}

/// A tool about a session another node of the cluster runs, sent to that node as a lone
/// `tools/call` and answered as it answers; `None` when the session is not elsewhere.
async fn on_owner(
    broker: &Broker,
    tenant: &Tenant,
    name: &str,
    args: &Map<String, Value>,
    params: &Map<String, Value>,
) -> Option<Result<Value, (i64, String)>> {
    if matches!(name, "create_session" | "list_sessions") {
        return None;
    }
    let id = args.get("session_id")?.as_str()?;
    let key = broker.cluster_key()?;
    // An ended session's files stay on the node that ran it.
    let owner = broker.owner_url(id, matches!(name, "list_files" | "get_file")).await?;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
    let (parts, ()) = Request::post("/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(())
        .ok()?
        .into_parts();
    let within = broker.config().action_timeout() + HOP_TIMEOUT;
    let unreachable = |why: String| {
        let message = format!("the node that runs session {id} did not answer: {why}");
        Ok(json!({"content": [{"type": "text", "text": message}], "isError": true}))
    };
    let answer = match send_to(key, &owner, &parts, Bytes::from(body.to_string()), within, tenant).await {
        Ok(a) => a,
        Err(e) => return Some(unreachable(e.to_string())),
    };
    let bytes = match answer.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    let reply: Value = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return Some(unreachable(format!("its answer is not JSON-RPC ({e})"))),
    };
    Some(match (reply.get("result"), reply.get("error")) {
        (Some(result), _) => Ok(result.clone()),
        (None, Some(error)) => Err((
            error["code"].as_i64().unwrap_or(-32603),
            error["message"].as_str().unwrap_or("the other node failed").to_owned(),
        )),
        (None, None) => unreachable("its answer has neither result nor error".into()),
    })
}

fn text(t: impl Into<String>) -> Vec<Value> {
    vec![json!({"type": "text", "text": t.into()})]
}

fn json_text(v: &Value) -> Vec<Value> {
    text(serde_json::to_string_pretty(v).unwrap_or_default())
}

/// Only the arguments a tool names: a misspelt one is said, not ignored.
fn only_args(args: &Map<String, Value>, allowed: &[&str]) -> Result<(), Failure> {
    match args.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(format!(
            "unknown argument {k:?}; this tool takes {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn string_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a str, Failure> {
    match args.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(bad(format!("{name} is required"))),
        Some(_) => Err(bad(format!("{name} must be a string"))),
    }
}

fn bool_arg(args: &Map<String, Value>, name: &str, default: bool) -> Result<bool, Failure> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{name} must be true or false"))),
    }
}

async fn run_tool(
    broker: &Broker,
    tenant: &Tenant,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Vec<Value>, Failure> {
    let config = broker.config();
    let page_tool = |allowed: &[&str]| -> Result<&str, Failure> {
        only_args(args, allowed)?;
        string_arg(args, "session_id")
    };
    match name {
        "create_session" => {
            let new = validate_create(config, args)?;
            let session = broker
                .create_session(tenant.clone(), new)
                .await
                .map_err(ApiError::from)?;
            let record = session.record();
            Ok(json_text(&render(&record, &broker.session_urls(&record))))
        }
        "end_session" => {
            let id = page_tool(&["session_id"])?;
            let session = broker
                .active(Some(tenant), id)
                .await
                .map_err(|e| session_refusal(e, Attempt::End))?;
            broker
                .terminate(&session)
                .await
                .map_err(|status| session_refusal(crate::broker::SessionError::Ended(status), Attempt::End))?;
            Ok(text(format!("Session {id} ended.")))
        }
        "list_sessions" => {
            only_args(args, &["status"])?;
            let status = match args.get("status").and_then(Value::as_str).unwrap_or("active") {
                "all" => None,
                s => Some(Status::parse(s).ok_or_else(|| bad("status must be active, terminated, expired or all"))?),
            };
            let query = ListQuery {
                tenant: tenant.clone(),
                status,
                offset: 0,
                limit: 100,
            };
            let page = broker.list(&query).await.map_err(ApiError::from)?;
            let list: Vec<Value> = page
                .records
                .iter()
                .map(|r| render(r, &broker.session_urls(r)))
                .collect();
            Ok(json_text(&json!({"sessions": list, "total": page.total})))
        }
        "list_files" => {
            let id = page_tool(&["session_id"])?;
            broker
                .record(tenant, id)
                .await
                .map_err(|e| session_refusal(e, Attempt::Change))?;
            let files: Vec<Value> = broker
                .artifacts()
                .existing(id)
                .map(|f| f.list())
                .unwrap_or_default()
                .iter()
                .map(render_file)
                .collect();
            Ok(json_text(&json!({"files": files})))
        }
        "get_file" => {
            let id = page_tool(&["session_id", "name"])?;
            let file = string_arg(args, "name")?;
            broker
                .record(tenant, id)
                .await
                .map_err(|e| session_refusal(e, Attempt::Change))?;
            let files = broker
                .artifacts()
                .existing(id)
                .ok_or_else(|| bad(format!("no file named {file:?}")))?;
            let (path, entry) = files.get(file).map_err(ApiError::from)?;
            if entry.size > MAX_FILE_BYTES {
                return Err(bad(format!(
                    "{file} is {} bytes, over the {MAX_FILE_BYTES} bytes get_file returns; \
                     fetch it from GET /public/sessions/{id}/files/{{name}}",
                    entry.size
                )));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| bad(format!("{file} could not be read: {e}")))?;
            let uri = format!("cdpgate://sessions/{id}/files/{}", entry.name);
            let resource = match String::from_utf8(bytes) {
                Ok(t) => json!({"uri": uri, "mimeType": "text/plain", "text": t}),
                Err(e) => {
                    json!({"uri": uri, "mimeType": "application/octet-stream", "blob": BASE64.encode(e.into_bytes())})
                }
            };
            Ok(vec![json!({"type": "resource", "resource": resource})])
        }
        "live_view_url" => {
            let id = page_tool(&["session_id", "read_only"])?;
            let read_only = bool_arg(args, "read_only", false)?;
            let session = broker
                .active(Some(tenant), id)
                .await
                .map_err(|e| session_refusal(e, Attempt::View))?;
            let urls = broker.session_urls(&session.record());
            Ok(text(if read_only { urls.live_read_only } else { urls.live }))
        }
        "run_action" => {
            let id = page_tool(&["session_id", "action", "variables"])?;
            let action = string_arg(args, "action")?.trim().to_owned();
            let mut values = HashMap::new();
            match args.get("variables") {
                None | Some(Value::Null) => {}
                Some(Value::Object(vars)) if vars.len() <= 200 => {
                    for (k, v) in vars {
                        let t = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => return Err(bad(format!("variables.{k} must be a string, a number or true/false"))),
                        };
                        values.insert(k.trim().to_owned(), t);
                    }
                }
                Some(_) => return Err(bad("variables must be an object of at most 200 values")),
            }
            let session = broker
                .active(Some(tenant), id)
                .await
                .map_err(|e| session_refusal(e, Attempt::Act))?;
            let job = crate::action::Job {
                action,
                id: None,
                values,
                set_cache: false,
                files: broker.artifacts().existing(&session.id),
                browser_downloads: session.browser_downloads.get().cloned(),
            };
            let answer = tokio::select! {
                a = broker.actions().run_in_turn(tenant, &session, &job, config, broker.egress()) => a,
                _ = session.ended().cancelled() => return Err(bad("the session ended while the action ran")),
            };
            if answer.success {
                Ok(json_text(&json!({"success": true, "result": answer.result})))
            } else {
                Err(bad(answer.error.unwrap_or_else(|| "the action failed".into())))
            }
        }
        "navigate" | "snapshot" | "click" | "type" | "select" | "press" | "scroll" | "screenshot" | "markdown" => {
            let allowed: &[&str] = match name {
                "navigate" => &["session_id", "url", "wait"],
                "click" => &["session_id", "ref"],
                "type" => &["session_id", "ref", "text", "clear", "submit"],
                "select" => &["session_id", "ref", "values"],
                "press" => &["session_id", "key"],
                "scroll" => &["session_id", "ref", "direction", "pixels"],
                _ => &["session_id"],
            };
            let id = page_tool(allowed)?;
            on_page(broker, tenant, id, name, args).await
        }
        other => Err(Failure::UnknownTool(other.to_owned())),
    }
}

/// The tools that drive the session's tab.
async fn on_page(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Vec<Value>, Failure> {
    let config = broker.config();
    // Arguments first: a bad one changes nothing in the browser.
    let url = if name == "navigate" {
        let raw = string_arg(args, "url")?;
        let url = url::Url::parse(raw).map_err(|e| bad(format!("url is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("url must be an http or https URL"));
        }
        Some(url)
    } else {
        None
    };
    let session = broker
        .active(Some(tenant), id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Act))?;
    let mut page = Page::open(
        &session.upstream,
        broker.egress(),
        session.upstream.parsed_ws_config(config),
        config.action_timeout(),
    )
    .await?;
    // Only what the latest snapshot showed: checked here, before the browser is asked.
    let reference = || {
        let r = string_arg(args, "ref")?;
        match references::issued(&session.id, r) {
            Some(_) => Ok(r),
            None => Err(Failure::from(missing(r))),
        }
    };
    let work = async {
        Ok(match name {
            "navigate" => {
                let wait = bool_arg(args, "wait", true)?;
                let url = url.as_ref().map(url::Url::as_str).unwrap_or_default();
                let (at, title) = page.navigate(url, wait).await?;
                text(format!("Navigated to {at}\nTitle: {title}"))
            }
            "snapshot" => {
                let s = page.snapshot().await?;
                let refs = s["refs"].as_array().into_iter().flatten().filter_map(Value::as_u64);
                references::issue(&session.id, session.ended(), refs);
                text(format!(
                    "Page: {}\nTitle: {}\n\n{}",
                    s["url"].as_str().unwrap_or_default(),
                    s["title"].as_str().unwrap_or_default(),
                    s["text"].as_str().unwrap_or_default()
                ))
            }
            "click" => {
                let r = reference()?;
                page.click(r).await?;
                text(format!("Clicked {r}."))
            }
            "type" => {
                let r = reference()?;
                let typed = match args.get("text") {
                    Some(Value::String(s)) => s.as_str(),
                    _ => return Err(bad("text must be a string")),
                };
                let clear = bool_arg(args, "clear", true)?;
                let submit = bool_arg(args, "submit", false)?;
                page.type_text(r, typed, clear).await?;
                if submit {
                    page.press("Enter").await?;
                }
                text(format!("Typed {} characters into {r}.", typed.chars().count()))
            }
            "select" => {
                let r = reference()?;
                let values: Vec<String> = match args.get("values") {
                    Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {
                        a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                    }
                    _ => return Err(bad("values must be a non-empty array of strings")),
                };
                let picked = page.select(r, &values).await?;
                text(format!("Selected {} in {r}.", picked.join(", ")))
            }
            "press" => {
                let key = string_arg(args, "key")?;
                page.press(key).await?;
                text(format!("Pressed {key}."))
            }
            "scroll" => {
                let r = match args.get("ref") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(reference()?),
                };
                let up = match args.get("direction").and_then(Value::as_str) {
                    None | Some("down") => false,
                    Some("up") => true,
                    Some(_) => return Err(bad("direction must be up or down")),
                };
                let pixels = match args.get("pixels") {
                    None | Some(Value::Null) => f64::from(session.screen.height.max(1)),
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=100_000).contains(n))
                        .map(|n| n as f64)
                        .ok_or_else(|| bad("pixels must be an integer from 1 to 100000"))?,
                };
                let (x, y) = page.scroll(r, if up { -pixels } else { pixels }).await?;
                text(format!("Scrolled; the page is now at x={x}, y={y}."))
            }
            "screenshot" => {
                let data = page.screenshot().await?;
                vec![json!({"type": "image", "data": data, "mimeType": "image/png"})]
            }
            "markdown" => text(page.markdown().await?),
            _ => return Err(Failure::UnknownTool(name.to_owned())),
        })
    };
    tokio::select! {
        done = work => done,
        _ = session.ended().cancelled() => Err(bad(format!("the session ended ({})", session.status().as_str()))),
    }
}
