//! `/public/sessions…`: create, list, read, change, terminate and delete sessions, and
//! the one function that renders a session record as the API shows it.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::error::{ApiError, Attempt, empty_response, json_response, session_refusal};
use super::request::{field, json_object, pool_name, query_pairs, read_body, read_json_object, whole_number};
use super::{Body, timestamp};
use crate::auth::Tenant;
use crate::broker::{Broker, NewSession, PoolTake, RequestedOptions, SessionUrls};
use crate::browser::Screen;
use crate::browser::blocking::Blocking;
use crate::browser::forward::UpstreamProxy;
use crate::browser::identity::{self, Identity};
use crate::browser::{devices, fingerprint};
use crate::capture::Wants;
use crate::config::{Config, MAX_HEIGHT, MAX_WIDTH, MIN_SIDE};
use crate::events::EventType;
use crate::proxy::hop::{HOP_TIMEOUT, is_hop, send_to};
use crate::store::{Isolation, ListQuery, SessionOptions, SessionRecord, Status};
use crate::values::{BrowserKind, BrowserReason};

/// Largest page of a session list.
const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 50;

/// `/public/sessions`.
pub(crate) async fn collection(
    broker: &Broker,
    tenant: Tenant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::POST => create(broker, tenant, request).await,
        Method::GET => list(broker, &tenant, request.uri().query()).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/sessions/{id}`.
pub(crate) async fn one(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::GET => {
            let record = broker
                .record(tenant, id)
                .await
                .map_err(|e| session_refusal(e, Attempt::Change))?;
            Ok(json_response(
                StatusCode::OK,
                &render(&record, &broker.session_urls(&record)),
            ))
        }
        Method::PATCH => update(broker, tenant, id, request).await,
        Method::DELETE => {
            broker
                .delete(tenant, id)
                .await
                .map_err(|e| session_refusal(e, Attempt::End))?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `POST /public/sessions/{id}/terminate`: answers once a persisting session's profile is saved.
pub(crate) async fn terminate(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    let session = broker
        .active(Some(tenant), id)
        .await
        .map_err(|e| session_refusal(e, Attempt::End))?;
    broker
        .terminate(&session)
        .await
        .map_err(|status| session_refusal(crate::broker::SessionError::Ended(status), Attempt::End))?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// Sends a create this node has no free slot for to the other live nodes, in the broker's
/// order of placement, until one takes it. Each node's own slots are the authority: one
/// that turns out to be full answers 503 at once and the next is asked. `None`: none took
/// it, and the create waits here as on a single node.
async fn place_elsewhere(
    broker: &Broker,
    tenant: &Tenant,
    parts: &hyper::http::request::Parts,
    body: bytes::Bytes,
) -> Option<Response<Body>> {
    let candidates = broker.placement_candidates().await;
    place_on(broker, tenant, parts, body, candidates).await
}

/// Offers a create to `candidates` in order; the first that makes it answers.
async fn place_on(
    broker: &Broker,
    tenant: &Tenant,
    parts: &hyper::http::request::Parts,
    body: bytes::Bytes,
    candidates: Vec<crate::broker::NodeInfo>,
) -> Option<Response<Body>> {
    let key = broker.cluster_key()?;
    for node in candidates {
        // Only nodes whose records verify under the cluster secret are candidates, and the
        // create goes with this node's signed hop header, not the client's key.
        match send_to(key, &node.url, parts, body.clone(), HOP_TIMEOUT, tenant).await {
            Ok(answer) if answer.status() == StatusCode::CREATED => {
                tracing::info!(node = %node.id, "create placed on another node");
                return Some(super::whole(answer));
            }
            Ok(answer) => tracing::debug!(node = %node.id, status = %answer.status(), "node did not take the create"),
            Err(e) => tracing::debug!(node = %node.id, error = %e, "node not reachable for a create"),
        }
    }
    None
}

/// The session object of the wire contract.
pub(crate) fn render(record: &SessionRecord, urls: &SessionUrls) -> Value {
    let mut metadata = record.metadata.clone();
    metadata.insert("live_url".into(), json!(urls.live));
    metadata.insert("live_url_read_only".into(), json!(urls.live_read_only));
    let mut body = json!({
        "session_id": record.id,
        "cdp_url": urls.cdp,
        "screen_config": { "width": record.screen.width, "height": record.screen.height },
        "status": record.status.as_str(),
        "expires_at": timestamp(record.expires_at),
        "metadata": metadata,
        "profile_id": record.profile.as_ref().map(|p| &p.id),
        "persist_changes": record.profile.as_ref().map(|p| p.persist),
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
    });
    if let Some(reason) = record.end_reason {
        body["end_reason"] = json!(reason.as_str());
    }
    render_options(&record.options, &mut body);
    if let Some(network) = &record.network {
        body["network"] = json!(network);
    }
    body["challenges"] = record
        .challenges
        .iter()
        .map(|c| json!({ "kind": c.kind, "url": c.url, "at": timestamp(c.at) }))
        .collect();
    if let Some(profile) = record.profile.as_ref().filter(|p| p.persist)
        && record.status != Status::Active
    {
        let saved = profile.saved.as_ref().map_or("saving".to_owned(), |s| s.describe());
        body["profile_saved"] = json!(saved);
    }
    body
}

/// A session's options as the API shows them (a pool's too): into `body`.
pub(crate) fn render_options(options: &SessionOptions, body: &mut Value) {
    body["isolation"] = json!(options.isolation.as_str());
    body["idle_timeout"] = json!(options.idle_timeout);
    body["record"] = json!(options.record);
    body["log_cdp"] = json!(options.log_cdp);
    body["capture_console"] = json!(options.capture_console);
    body["capture_network"] = json!(options.capture_network);
    body["capture_bodies"] = json!(options.capture_bodies);
    body["block"] = json!(options.block);
    body["block_urls"] = json!(options.block_urls);
    body["extensions"] = json!(options.extensions);
    body["browser"] = json!(options.browser.map(BrowserKind::as_str));
    body["browser_reason"] = json!(options.browser_reason.map(BrowserReason::as_str));
    if let Some(proxy) = &options.proxy {
        body["proxy"] = json!({ "server": proxy.server, "username": proxy.username, "bypass": proxy.bypass });
    }
    for (name, value) in [
        ("user_agent", &options.user_agent),
        ("locale", &options.locale),
        ("timezone", &options.timezone),
    ] {
        if let Some(v) = value {
            body[name] = json!(v);
        }
    }
    if let Some(fp) = &options.fingerprint {
        body["fingerprint"] = json!(fp);
        if let Some(device) = &fp.device {
            body["device"] = json!(device);
        }
    }
}

async fn create(broker: &Broker, tenant: Tenant, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let config = &broker.config();
    // A create another node placed here takes a free slot or is refused at once.
    let placed_here = is_hop(&request);
    let (parts, body) = request.into_parts();
    let bytes = read_body(
        Request::from_parts(parts.clone(), body),
        config.max_body_bytes,
        config.request_read_timeout(),
    )
    .await?;
    let body = json_object(&bytes)?;
    if field(&body, "pool").is_some() {
        return create_from_pool(broker, tenant, &body, placed_here, (&parts, bytes)).await;
    }
    let mut new = validate_create(config, &body)?;
    new.queue = !placed_here;
    // Profile sessions too: every node of a cluster reads the shared profile store.
    let needs_slot = new.external_url.is_none();
    if !placed_here
        && needs_slot
        && broker.full_here()
        && let Some(answer) = place_elsewhere(broker, &tenant, &parts, bytes).await
    {
        return Ok(answer);
    }
    let started = std::time::Instant::now();
    let session = broker.create_session(tenant, new).await?;
    broker.metrics().create_time.observe(started.elapsed());
    let record = session.record();
    Ok(json_response(
        StatusCode::CREATED,
        &render(&record, &broker.session_urls(&record)),
    ))
}

/// What a create from a pool may add; the pool's settings are the rest.
const TAKE_FIELDS: &[&str] = &["pool", "metadata", "ttl", "idle_timeout"];

/// `POST /public/sessions` with `pool`: a ready session of the pool, or a cold start with
/// its settings (`pool_hit` says which).
/// In a cluster, a create that finds none ready here goes to a node that has one (its
/// body as it came, signed as this node's); if none takes it, it is a cold start here. One
/// sent here that way takes a ready one or is refused (`503`), never a cold start.
async fn create_from_pool(
    broker: &Broker,
    tenant: Tenant,
    body: &Map<String, Value>,
    placed_here: bool,
    request: (&hyper::http::request::Parts, bytes::Bytes),
) -> Result<Response<Body>, ApiError> {
    let config = broker.config();
    if let Some(key) = body
        .iter()
        .find(|(k, v)| !v.is_null() && !TAKE_FIELDS.contains(&k.as_str()))
        .map(|(k, _)| k)
    {
        return Err(ApiError::unprocessable(format!(
            "{key} cannot be combined with pool: a pool's sessions take its settings (only metadata, ttl and idle_timeout may be given)"
        )));
    }
    let name = pool_name(body, "pool")?;
    let take = PoolTake {
        ttl: field(body, "ttl").map(|v| parse_ttl(v, config.max_ttl)).transpose()?,
        idle_timeout: field(body, "idle_timeout")
            .map(|v| parse_idle_timeout(v, config.max_ttl))
            .transpose()?,
        metadata: field(body, "metadata")
            .map(|v| parse_metadata(v, config.max_metadata_bytes))
            .transpose()?
            .unwrap_or_default(),
    };
    if broker.is_clustered()
        && !placed_here
        && !broker.pool_ready_here(&tenant, &name)?
        && let Some(answer) = place_on(
            broker,
            &tenant,
            request.0,
            request.1,
            broker.pool_holders(&tenant, &name).await,
        )
        .await
    {
        return Ok(answer);
    }
    let started = std::time::Instant::now();
    let taken = broker.create_from_pool(tenant, &name, take, !placed_here).await?;
    broker.metrics().create_time.observe(started.elapsed());
    let record = taken.session.record();
    let mut answer = render(&record, &broker.session_urls(&record));
    answer["pool"] = json!(name);
    answer["pool_hit"] = json!(taken.hit);
    Ok(json_response(StatusCode::CREATED, &answer))
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
        None => config.default_screen(),
    };
    let metadata = match field(body, "metadata") {
        Some(v) => parse_metadata(v, config.max_metadata_bytes)?,
        None => Map::new(),
    };
    let mut options = parse_options(config, body)?;
    // A user's own browser is fronted as it is; a profile keeps all of itself (IndexedDB,
    // service workers, cache) only in a browser of its own. So a default of "context"
    // applies to neither; an explicit one is refused with cdp_url and taken with a
    // profile, whose cookies and localStorage then carry over.
    if external_url.is_some() || profile_id.is_some() {
        let explicit = field(body, "isolation").is_some_and(|v| v == "context");
        if !explicit {
            options.isolation = Isolation::Process;
        }
    }
    if options.isolation == Isolation::Context && external_url.is_some() {
        return Err(ApiError::unprocessable(
            "isolation cannot be combined with cdp_url: a user's own browser is fronted as it is",
        ));
    }
    if external_url.is_some() {
        let set = options.proxy.is_some()
            || !options.identity.is_empty()
            || options.fingerprint.is_some()
            || options.device.is_some()
            || !options.blocking.is_empty()
            || options.capture.any();
        if set {
            return Err(ApiError::unprocessable(
                "proxy, user_agent, locale, timezone, fingerprint, device, block, block_urls, capture_console and capture_network cannot be combined with cdp_url: they apply to browsers the broker starts",
            ));
        }
    }
    options.extensions = parse_extensions(body)?;
    if !options.extensions.is_empty() {
        if external_url.is_some() {
            return Err(ApiError::unprocessable(
                "extensions cannot be combined with cdp_url: the broker can only load extensions into a browser it starts",
            ));
        }
        // A shared browser's command line serves every context in it: extensions need a
        // browser of their own. A default of "context" gives way; an explicit one is refused.
        if field(body, "isolation").is_some_and(|v| v == "context") {
            return Err(ApiError::unprocessable(
                "extensions need isolation \"process\": a context session shares its browser, which loads no extensions",
            ));
        }
        options.isolation = Isolation::Process;
    }
    options.browser = match field(body, "browser") {
        Some(Value::String(v)) if BrowserKind::parse(v).is_some() => BrowserKind::parse(v),
        Some(_) => return Err(ApiError::unprocessable("browser must be \"shell\" or \"full\"")),
        None => None,
    };
    if options.browser.is_some() {
        if external_url.is_some() {
            return Err(ApiError::unprocessable(
                "browser cannot be combined with cdp_url: a user's own browser is fronted as it is",
            ));
        }
        // The full browser is a process session's; a default of "context" gives way (an
        // explicit one runs on the shared browsers' executable, which the broker checks).
        if options.browser == Some(BrowserKind::Full) && !field(body, "isolation").is_some_and(|v| v == "context") {
            options.isolation = Isolation::Process;
        }
    }
    let (webhook_url, webhook_events) = parse_webhook(body)?;
    Ok(NewSession {
        options,
        queue: true,
        external_url,
        profile_id,
        persist_changes,
        ttl,
        screen,
        metadata,
        webhook_url,
        webhook_events,
        webhook: None,
    })
}

/// Most extensions one session may load.
const MAX_SESSION_EXTENSIONS: usize = 10;

/// `extensions`: ids of the key's extensions, each once (whether they are the key's is the
/// broker's to say).
fn parse_extensions(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::unprocessable(format!(
            "extensions must be an array of at most {MAX_SESSION_EXTENSIONS} extension ids, each once"
        ))
    };
    let Some(v) = field(body, "extensions") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    if items.len() > MAX_SESSION_EXTENSIONS {
        return Err(bad());
    }
    let mut ids: Vec<String> = Vec::new();
    for item in items {
        match item {
            Value::String(id) if !ids.contains(id) => ids.push(id.clone()),
            _ => return Err(bad()),
        }
    }
    Ok(ids)
}

/// `webhook_url` and `webhook_events` (its filter: event type names) of a create.
#[allow(clippy::type_complexity)]
fn parse_webhook(body: &Map<String, Value>) -> Result<(Option<String>, Option<Vec<EventType>>), ApiError> {
    let url = match field(body, "webhook_url") {
        Some(Value::String(url)) if url.len() <= 2048 => Some(url.clone()),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "webhook_url must be an http(s) URL of at most 2048 characters",
            ));
        }
        None => None,
    };
    let events = match field(body, "webhook_events") {
        Some(Value::Array(names)) => {
            let mut events = Vec::new();
            for name in names {
                match name.as_str().and_then(EventType::parse) {
                    Some(kind) if !events.contains(&kind) => events.push(kind),
                    Some(_) => {}
                    None => {
                        return Err(ApiError::unprocessable(format!(
                            "webhook_events: {name} is not an event type ({})",
                            EventType::ALL.map(EventType::name).join(", ")
                        )));
                    }
                }
            }
            Some(events)
        }
        Some(_) => {
            return Err(ApiError::unprocessable(
                "webhook_events must be an array of event types",
            ));
        }
        None => None,
    };
    Ok((url, events))
}

/// The options of a create (or of a single action's own session): `proxy`, `user_agent`,
/// `locale`, `timezone`, `idle_timeout`, `isolation`, `record`, `log_cdp`; a bad one is
/// named in the error.
pub(crate) fn parse_options(config: &Config, body: &Map<String, Value>) -> Result<RequestedOptions, ApiError> {
    let text = |name: &str, valid: fn(&str) -> bool, what: &str| -> Result<Option<String>, ApiError> {
        match field(body, name) {
            Some(Value::String(v)) if valid(v) => Ok(Some(v.clone())),
            Some(_) => Err(ApiError::unprocessable(format!("{name} must be {what}"))),
            None => Ok(None),
        }
    };
    let identity = Identity {
        user_agent: text(
            "user_agent",
            identity::valid_user_agent,
            "a string of 1 to 1024 printable ASCII characters",
        )?,
        locale: text(
            "locale",
            identity::valid_locale,
            "a BCP 47 language tag such as \"en-US\"",
        )?,
        timezone: text(
            "timezone",
            identity::valid_timezone,
            "an IANA time zone name such as \"Europe/Berlin\"",
        )?,
        fingerprint: None,
    };
    let (fingerprint, device) = parse_face(body, &identity)?;
    let idle_timeout = match field(body, "idle_timeout") {
        Some(v) => parse_idle_timeout(v, config.max_ttl)?,
        None => config.default_idle_timeout,
    };
    let proxy = field(body, "proxy").map(parse_proxy).transpose()?;
    let isolation = match field(body, "isolation") {
        Some(Value::String(v)) => Isolation::parse(v)
            .ok_or_else(|| ApiError::unprocessable("isolation must be \"process\" or \"context\""))?,
        Some(_) => return Err(ApiError::unprocessable("isolation must be \"process\" or \"context\"")),
        None => Isolation::parse(&config.default_isolation).unwrap_or_default(),
    };
    let record = match field(body, "record") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::unprocessable("record must be true or false")),
        None => config.record_sessions,
    };
    let log_cdp = match field(body, "log_cdp") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::unprocessable("log_cdp must be true or false")),
        None => false,
    };
    let blocking = Blocking {
        types: Blocking::parse_types(&strings(body, "block")?, !config.adblock_lists.is_empty())
            .map_err(ApiError::unprocessable)?,
        urls: Blocking::parse_urls(&strings(body, "block_urls")?).map_err(ApiError::unprocessable)?,
    };
    let flag = |name: &str| match field(body, name) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::unprocessable(format!("{name} must be true or false"))),
        None => Ok(false),
    };
    let capture = Wants {
        console: flag("capture_console")?,
        network: flag("capture_network")?,
        bodies: flag("capture_bodies")?,
    };
    if capture.bodies && !capture.network {
        return Err(ApiError::unprocessable(
            "capture_bodies needs capture_network: bodies are kept in the HAR",
        ));
    }
    Ok(RequestedOptions {
        isolation,
        proxy,
        identity,
        fingerprint,
        device,
        idle_timeout,
        record,
        log_cdp,
        blocking,
        capture,
        extensions: Vec::new(),
        browser: None,
        browser_reason: None,
    })
}

/// `fingerprint` and `device`: at most one, and neither with a `user_agent` of the
/// client's own (each sets the user agent).
fn parse_face(
    body: &Map<String, Value>,
    identity: &Identity,
) -> Result<(Option<fingerprint::FingerprintRequest>, Option<String>), ApiError> {
    let fingerprint = match field(body, "fingerprint") {
        None | Some(Value::Null) => None,
        Some(v) => Some(fingerprint::parse(v).map_err(ApiError::unprocessable)?),
    };
    let device = match field(body, "device") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if devices::known(name) => Some(name.clone()),
        Some(_) => {
            return Err(ApiError::unprocessable(format!(
                "device must be one of {} (GET /public/devices)",
                devices::names().join(", ")
            )));
        }
    };
    if fingerprint.is_some() && device.is_some() {
        return Err(ApiError::unprocessable(
            "device and fingerprint cannot be combined: a device is a whole fingerprint of its own (its OS is Android or iOS)",
        ));
    }
    if (fingerprint.is_some() || device.is_some()) && identity.user_agent.is_some() {
        return Err(ApiError::unprocessable(
            "user_agent cannot be combined with fingerprint or device: they choose the user agent",
        ));
    }
    Ok((fingerprint, device))
}

/// A field that is a list of strings (none: empty); a longer list than any valid one is
/// refused before its entries are read.
fn strings(body: &Map<String, Value>, name: &str) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::unprocessable(format!("{name} must be a list of strings"));
    match field(body, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= 256 => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(Value::Array(_)) => Err(ApiError::unprocessable(format!("{name} holds too many entries"))),
        Some(_) => Err(bad()),
    }
}

/// Most `proxy.bypass` entries.
const MAX_BYPASS: usize = 64;

fn parse_proxy(v: &Value) -> Result<UpstreamProxy, ApiError> {
    let bad = |detail: String| ApiError::unprocessable(detail);
    let obj = v
        .as_object()
        .ok_or_else(|| bad("proxy must be an object with a server".into()))?;
    if let Some(key) = obj
        .keys()
        .find(|k| !["server", "username", "password", "bypass"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "proxy.{key} is not a proxy field (server, username, password, bypass)"
        )));
    }
    let server = obj
        .get("server")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("proxy.server must be a string such as \"http://host:port\"".into()))?;
    let (scheme, host, port) = UpstreamProxy::parse_server(server).map_err(|why| bad(format!("proxy.server {why}")))?;
    // SOCKS5 carries each in one length byte; `:` would split HTTP Basic credentials.
    let credential = |name: &str| -> Result<Option<String>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 255 && !s.chars().any(char::is_control) => {
                if name == "username" && s.contains(':') {
                    return Err(bad("proxy.username must not contain ':'".into()));
                }
                Ok(Some(s.clone()))
            }
            Some(_) => Err(bad(format!(
                "proxy.{name} must be a string of at most 255 bytes without control characters"
            ))),
        }
    };
    let username = credential("username")?;
    let password = credential("password")?;
    if password.is_some() && username.is_none() {
        return Err(bad("proxy.password needs proxy.username".into()));
    }
    let bypass = match obj.get("bypass") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_BYPASS => items
            .iter()
            .map(|item| {
                item.as_str()
                    .filter(|s| crate::browser::egress::parse_allow_list("proxy.bypass", &[s.to_string()]).is_ok())
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| {
                        bad(format!(
                            "proxy.bypass entries must be host names (*.suffix allowed), addresses or CIDRs; got {item}"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad(format!(
                "proxy.bypass must be a list of at most {MAX_BYPASS} host names, addresses or CIDRs"
            )));
        }
    };
    Ok(UpstreamProxy {
        scheme,
        host,
        port,
        username,
        password,
        bypass,
    })
}

pub(crate) fn parse_idle_timeout(v: &Value, max_ttl: u64) -> Result<u64, ApiError> {
    whole_number(v).filter(|n| *n <= max_ttl).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "idle_timeout must be a whole number of seconds from 0 (off) to {max_ttl}"
        ))
    })
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
        v if whole_number(v).is_some() => whole_number(v).unwrap_or(0),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f < 0.0) => {
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
        let n = obj.get(name).and_then(whole_number).ok_or_else(shape)?;
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

async fn list(broker: &Broker, tenant: &Tenant, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut list = ListQuery {
        tenant: tenant.clone(),
        status: None,
        offset: 0,
        limit: DEFAULT_LIMIT,
    };
    for (key, value) in query_pairs(query.unwrap_or("")) {
        match key.as_str() {
            "status_filter" if !value.is_empty() => {
                list.status = Some(Status::parse(&value).ok_or_else(|| {
                    ApiError::unprocessable("status_filter must be one of active, terminated, expired")
                })?);
            }
            "limit" => {
                list.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::unprocessable(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                    })?;
            }
            "offset" => {
                // Past the end of any list is an empty page, not an error.
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                if !digits {
                    return Err(ApiError::unprocessable("offset must be an integer of 0 or more"));
                }
                list.offset = value.parse::<usize>().unwrap_or(usize::MAX);
            }
            _ => {}
        }
    }
    let page = broker.list(&list).await?;
    let sessions: Vec<Value> = page
        .records
        .iter()
        .map(|r| render(r, &broker.session_urls(r)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sessions": sessions, "total": page.total }),
    ))
}

async fn update(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let session = broker
        .active(Some(tenant), id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let config = &broker.config();
    let body = read_json_object(request, config.max_body_bytes, config.request_read_timeout()).await?;
    let ttl = field(&body, "ttl").map(|v| parse_ttl(v, config.max_ttl)).transpose()?;
    let metadata = field(&body, "metadata")
        .map(|v| parse_metadata(v, config.max_metadata_bytes))
        .transpose()?;
    if let Some(extra) = &metadata {
        check_metadata_size(&session.merged_metadata(extra), config.max_metadata_bytes)?;
    }
    broker
        .update(&session, ttl, metadata)
        .await
        .map_err(|status| session_refusal(crate::broker::SessionError::Ended(status), Attempt::Change))?;
    let record = session.record();
    Ok(json_response(
        StatusCode::OK,
        &render(&record, &broker.session_urls(&record)),
    ))
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
    fn uuids_parse() {
        assert!(is_uuid("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!is_uuid("550e8400e29b41d4a716446655440000"));
        assert!(!is_uuid("550e8400-e29b-41d4-a716-44665544000g"));
    }
}
