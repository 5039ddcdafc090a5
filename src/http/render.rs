//! `POST /public/screenshot`, `/pdf`, `/content`, `/markdown`, `/scrape`: reads the body,
//! has [`crate::render`] check it and run it, and answers the output with what the page
//! answered in headers. Every bad option is a 400 here, the create's own included.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::Body;
use super::error::{ApiError, json_response};
use super::request::{json_object, read_body};
use super::sessions::validate_create;
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::proxy::hop::{HOP_TIMEOUT, is_hop, send_to};
use crate::render::{self, CREATE_FIELDS, Kind, Produced, Target};

/// Time a session made for a render (and not kept) may outlive the render's own deadline
/// before its TTL ends it anyway: the last guard, should everything else fail.
const FRESH_TTL_MARGIN: Duration = Duration::from_secs(90);

pub(crate) async fn handle(
    broker: &Broker,
    tenant: Tenant,
    kind: Kind,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = broker.config();
    let from_another_node = is_hop(&request);
    let (parts, body) = request.into_parts();
    // Room for `html` (JSON may escape it to twice its size) beside the other fields.
    let limit = config.max_body_bytes + 2 * config.max_render_html_bytes;
    let bytes = read_body(
        Request::from_parts(parts.clone(), body),
        limit,
        config.request_read_timeout(),
    )
    .await?;
    let body = json_object(&bytes).map_err(|e| ApiError::bad_request(e.detail))?;
    let job = render::parse(kind, &body, config)?;
    let target = match &job.session_id {
        Some(id) => {
            // A session another node runs is rendered there.
            if !from_another_node
                && let Some(key) = broker.cluster_key()
                && let Some(owner) = broker.owner_url(id, false).await
            {
                let within = job.load.timeout + Duration::from_secs(30) + HOP_TIMEOUT;
                return send_to(key, &owner, &parts, bytes, within, &tenant)
                    .await
                    .map(super::whole)
                    .map_err(ApiError::from);
            }
            Target::Existing(id.clone())
        }
        None => Target::Fresh(Box::new(fresh_session(config, &body, &job)?)),
    };
    let rendered = render::run(broker, &tenant, &job, target).await?;
    let mut response = match rendered.output {
        Produced::Bytes { content_type, body } => {
            let mut r = Response::new(super::full(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Produced::Json(value) => json_response(StatusCode::OK, &value),
    };
    let headers = response.headers_mut();
    // The page's HTML is the page's: never rendered or sniffed on the broker's origin.
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-page-status", &rendered.page.status.to_string());
    set("x-page-url", &rendered.page.url);
    set("x-session-id", &rendered.id);
    if let Some(session) = &rendered.session
        && rendered.kept
        && job.session_id.is_none()
    {
        let urls = broker.session_urls(&session.record());
        set("x-cdp-url", &urls.cdp);
    }
    Ok(response)
}

/// The session a render creates: a create's fields as a create checks them, in a browser
/// context by default, never writing its profile, and (unless kept) living a little
/// longer than the render may take.
fn fresh_session(
    config: &crate::config::Config,
    body: &Map<String, Value>,
    job: &render::RenderJob,
) -> Result<crate::broker::NewSession, ApiError> {
    let mut create: Map<String, Value> = body
        .iter()
        .filter(|(k, v)| CREATE_FIELDS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    create.entry("isolation").or_insert(json!("context"));
    create.insert("persist_changes".into(), json!(false));
    let mut new = validate_create(config, &create).map_err(|e| {
        if e.status == StatusCode::UNPROCESSABLE_ENTITY {
            ApiError::bad_request(e.detail)
        } else {
            e
        }
    })?;
    if !job.keep_session && !create.contains_key("ttl") {
        let ttl = job.load.timeout + Duration::from_secs(30) + FRESH_TTL_MARGIN;
        new.ttl = ttl.min(Duration::from_secs(config.max_ttl)).max(Duration::from_secs(1));
        new.ttl = Duration::from_secs(new.ttl.as_secs().max(1));
    }
    Ok(new)
}
