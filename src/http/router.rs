//! The route table (`docs/API.md` documents exactly these routes) and the dispatch of
//! each request: the proxy and live view take their paths, the JSON API's endpoints are
//! authenticated before anything else is read.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::json;

use super::error::{ApiError, RETRY_AFTER_SECS, answer, json_response};
use super::request::{authenticate, only};
use super::{
    Body, actions, admin, capture, dashboard, events, extensions, files, fork, live, mcp, pools, profiles, render,
    sessions,
};
use crate::broker::Broker;
use crate::metrics;
use crate::proxy::hop::{check_hop, forward, is_hop};
use crate::render::Kind;

/// What a route leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    OpenApi,
    Metrics,
    Sessions,
    Session,
    TerminateSession,
    ForkSession,
    Profiles,
    Profile,
    Extensions,
    Extension,
    Pools,
    Pool,
    Devices,
    StorageState,
    RunAction,
    /// A one-call render.
    Render(crate::render::Kind),
    /// The CDP proxy's WebSockets and discovery endpoints.
    Proxy,
    LiveView,
    AdminCluster,
    AdminTenants,
    Files,
    File,
    FilesZip,
    Recording,
    Screenshot,
    Events,
    SessionWebhooks,
    TenantEvents,
    Logs,
    Har,
    Dashboard,
    /// The MCP server (Streamable HTTP).
    Mcp,
}

/// One documented route: its methods, its path (`{name}` matches one segment) and where it
/// leads. `docs/API.md` lists exactly these (a test holds them together).
pub struct Route {
    pub methods: &'static [&'static str],
    pub path: &'static str,
    pub endpoint: Endpoint,
}

const fn route(methods: &'static [&'static str], path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        methods,
        path,
        endpoint,
    }
}

/// The API described in OpenAPI 3.1, served at `/openapi.json` (a test holds it to `ROUTES`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The document with this broker's own limits where they are settings (`max_ttl`).
fn openapi_for(config: &crate::config::Config) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(OPENAPI) else {
        return OPENAPI.to_owned();
    };
    for schema in [
        "NewSession",
        "SessionChange",
        "RenderScreenshot",
        "RenderPdf",
        "RenderPage",
        "RenderScrape",
        "ForkRequest",
        "NewPool",
        "PoolChange",
    ] {
        if let Some(ttl) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/ttl")) {
            ttl["maximum"] = json!(config.max_ttl);
        }
        if let Some(t) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/timeout_ms")) {
            t["maximum"] = json!(config.max_render_timeout_ms);
        }
    }
    if let Some(count) = doc.pointer_mut("/components/schemas/ForkRequest/properties/count") {
        count["maximum"] = json!(config.max_fork_count);
    }
    for schema in ["NewPool", "PoolChange"] {
        if let Some(size) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/size")) {
            size["maximum"] = json!(config.max_pool_size);
        }
    }
    serde_json::to_string(&doc).unwrap_or_else(|_| OPENAPI.to_owned())
}

pub const ROUTES: &[Route] = &[
    route(&["GET", "HEAD"], "/health", Endpoint::Health),
    route(&["GET", "HEAD"], "/ready", Endpoint::Ready),
    route(&["GET"], "/openapi.json", Endpoint::OpenApi),
    route(&["GET"], "/metrics", Endpoint::Metrics),
    route(&["POST", "GET"], "/public/sessions", Endpoint::Sessions),
    route(
        &["GET", "PATCH", "DELETE"],
        "/public/sessions/{session_id}",
        Endpoint::Session,
    ),
    route(
        &["POST"],
        "/public/sessions/{session_id}/terminate",
        Endpoint::TerminateSession,
    ),
    route(&["POST"], "/public/sessions/{session_id}/fork", Endpoint::ForkSession),
    route(&["GET", "POST"], "/public/sessions/{session_id}/files", Endpoint::Files),
    route(&["GET"], "/public/sessions/{session_id}/files.zip", Endpoint::FilesZip),
    route(
        &["GET", "HEAD", "DELETE"],
        "/public/sessions/{session_id}/files/{name}",
        Endpoint::File,
    ),
    route(
        &["GET", "HEAD"],
        "/public/sessions/{session_id}/recording",
        Endpoint::Recording,
    ),
    route(
        &["GET"],
        "/public/sessions/{session_id}/screenshot",
        Endpoint::Screenshot,
    ),
    route(&["GET"], "/public/sessions/{session_id}/events", Endpoint::Events),
    route(&["GET"], "/public/sessions/{session_id}/logs", Endpoint::Logs),
    route(&["GET"], "/public/sessions/{session_id}/har", Endpoint::Har),
    route(
        &["GET"],
        "/public/sessions/{session_id}/webhooks",
        Endpoint::SessionWebhooks,
    ),
    route(&["GET"], "/public/events", Endpoint::TenantEvents),
    route(&["GET"], "/public/devices", Endpoint::Devices),
    route(&["POST", "GET"], "/public/browser-profiles", Endpoint::Profiles),
    route(
        &["GET", "DELETE"],
        "/public/browser-profiles/{profile_id}",
        Endpoint::Profile,
    ),
    route(
        &["GET", "POST", "PUT"],
        "/public/browser-profiles/{profile_id}/storage-state",
        Endpoint::StorageState,
    ),
    route(&["POST", "GET"], "/public/extensions", Endpoint::Extensions),
    route(
        &["GET", "DELETE"],
        "/public/extensions/{extension_id}",
        Endpoint::Extension,
    ),
    route(&["POST", "GET"], "/public/pools", Endpoint::Pools),
    route(&["GET", "PATCH", "DELETE"], "/public/pools/{pool_name}", Endpoint::Pool),
    route(&["POST"], "/public/single-actions/run-action", Endpoint::RunAction),
    route(&["POST"], "/public/screenshot", Endpoint::Render(Kind::Screenshot)),
    route(&["POST"], "/public/pdf", Endpoint::Render(Kind::Pdf)),
    route(&["POST"], "/public/content", Endpoint::Render(Kind::Content)),
    route(&["POST"], "/public/markdown", Endpoint::Render(Kind::Markdown)),
    route(&["POST"], "/public/scrape", Endpoint::Render(Kind::Scrape)),
    route(&["GET"], "/admin/cluster", Endpoint::AdminCluster),
    route(&["GET"], "/admin/tenants", Endpoint::AdminTenants),
    route(&["GET"], "/devtools/browser/{session_id}", Endpoint::Proxy),
    route(&["GET", "HEAD"], "/devtools/browser/{session_id}/json", Endpoint::Proxy),
    route(
        &["GET", "HEAD"],
        "/devtools/browser/{session_id}/json/version",
        Endpoint::Proxy,
    ),
    route(
        &["GET", "HEAD"],
        "/devtools/browser/{session_id}/json/list",
        Endpoint::Proxy,
    ),
    route(
        &["GET", "HEAD"],
        "/devtools/browser/{session_id}/json/protocol",
        Endpoint::Proxy,
    ),
    route(
        &["GET", "HEAD", "PUT"],
        "/devtools/browser/{session_id}/json/new",
        Endpoint::Proxy,
    ),
    route(
        &["GET", "HEAD"],
        "/devtools/browser/{session_id}/json/activate/{target_id}",
        Endpoint::Proxy,
    ),
    route(
        &["GET", "HEAD"],
        "/devtools/browser/{session_id}/json/close/{target_id}",
        Endpoint::Proxy,
    ),
    route(&["GET"], "/devtools/page/{target_id}", Endpoint::Proxy),
    route(&["GET"], "/live/{session_id}", Endpoint::LiveView),
    route(&["GET"], "/live/{session_id}/cdp", Endpoint::LiveView),
    route(&["GET", "HEAD"], "/live/{session_id}/recording", Endpoint::LiveView),
    route(&["GET"], "/dashboard", Endpoint::Dashboard),
    route(&["POST", "DELETE"], "/mcp", Endpoint::Mcp),
];

impl Route {
    /// The values of the `{…}` segments if `path` is this route's.
    fn matches<'a>(&self, path: &'a str) -> Option<Vec<&'a str>> {
        let mut want = self.path.split('/');
        let mut have = path.split('/');
        let mut params = Vec::new();
        loop {
            match (want.next(), have.next()) {
                (None, None) => return Some(params),
                (Some(w), Some(h)) if w.starts_with('{') && !h.is_empty() => params.push(h),
                (Some(w), Some(h)) if w == h => {}
                _ => return None,
            }
        }
    }
}

/// The route of `path` (a trailing slash ignored), with its parameters.
pub fn find_route(path: &str) -> Option<(&'static Route, Vec<&str>)> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    ROUTES.iter().find_map(|r| r.matches(path).map(|params| (r, params)))
}

/// Answers one request.
pub async fn dispatch(broker: Arc<Broker>, mut request: Request<Incoming>) -> Response<Body> {
    if broker.is_stopping() {
        // A request that reached a connection as the broker began to stop.
        let mut r = ApiError::unavailable("The broker is shutting down", 5).into_response();
        r.headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return r;
    }
    // A request another node sent on proves it with the cluster secret, or goes no further.
    if check_hop(broker.cluster_key(), &mut request).is_err() {
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            "refused a request marked as sent on by another node whose hop header does not verify"
        );
        return answer(broker.metrics(), Err(ApiError::unauthorized()));
    }
    let path = request.uri().path().to_owned();
    // A request about a session another node runs goes to that node.
    if broker.is_clustered()
        && !is_hop(&request)
        && let Some((id, ended_too)) = session_of(&broker, &request)
        && let Some(owner) = broker.owner_url(&id, ended_too).await
    {
        // The owner gets the tenant this node authenticated, never the client's key.
        let tenant = broker.keys().authenticate(request.headers());
        let result = forward(&broker, &owner, request, tenant.as_ref())
            .await
            .map_err(ApiError::from);
        return answer(broker.metrics(), result);
    }
    // The proxy and live view answer their own unknown paths (live view with a page).
    if path.starts_with("/devtools/") {
        let result = crate::proxy::handle(broker.clone(), request)
            .await
            .map(super::whole)
            .map_err(ApiError::from);
        return answer(broker.metrics(), result);
    }
    if path.starts_with("/live/") {
        return live::handle(broker, request).await;
    }
    let Some((route, params)) = find_route(&path) else {
        // Under /public the key is checked first: a caller without one learns nothing.
        let refusal = if path.starts_with("/public/") && authenticate(&broker, &request).is_err() {
            ApiError::unauthorized()
        } else {
            ApiError::not_found("Not Found")
        };
        return answer(broker.metrics(), Err(refusal));
    };
    let result = api(&broker, route.endpoint, &params, request).await;
    let mut response = answer(broker.metrics(), result);
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110: a 405 says which methods the resource has.
        let allow = route.methods.join(", ");
        if let Ok(value) = header::HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, value);
        }
    }
    response
}

/// The session a request acts on, where the path or the token names one: the CDP and live
/// view endpoints, the API calls that change a session (reads come from the store), and
/// its files and recording, which stay on its node after it ends (then `true`).
fn session_of<B>(broker: &Broker, request: &Request<B>) -> Option<(String, bool)> {
    let path = request.uri().path();
    let (route, params) = find_route(path)?;
    let id = params.first().copied();
    match route.endpoint {
        Endpoint::Proxy if route.path.starts_with("/devtools/page/") => {
            let token = crate::auth::query_token(request.uri().query().unwrap_or(""));
            let grant = broker
                .tokens()
                .session_of(token.as_deref(), crate::auth::Scope::Cdp)
                .ok();
            grant.map(|g| (g.session, false))
        }
        Endpoint::LiveView
        | Endpoint::Files
        | Endpoint::File
        | Endpoint::FilesZip
        | Endpoint::Recording
        | Endpoint::Events
        | Endpoint::Logs
        | Endpoint::Har
        | Endpoint::SessionWebhooks => id.map(|id| (id.to_owned(), true)),
        Endpoint::Proxy | Endpoint::TerminateSession | Endpoint::ForkSession | Endpoint::Screenshot => {
            id.map(|id| (id.to_owned(), false))
        }
        Endpoint::Session if request.method() != Method::GET => id.map(|id| (id.to_owned(), false)),
        _ => None,
    }
}

/// The JSON API's endpoints: the key is checked before anything else is read.
async fn api(
    broker: &Arc<Broker>,
    endpoint: Endpoint,
    params: &[&str],
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let method = request.method().clone();
    let id = params.first().copied().unwrap_or("");
    match endpoint {
        Endpoint::Health => {
            only(&method, &[Method::GET, Method::HEAD])?;
            return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
        }
        Endpoint::OpenApi => {
            only(&method, &[Method::GET])?;
            let mut r = Response::new(super::full(openapi_for(broker.config())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        Endpoint::Ready => {
            only(&method, &[Method::GET, Method::HEAD])?;
            return match broker.not_ready() {
                None => Ok(json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "browser_confinement": broker.confinement()}),
                )),
                Some(why) => Err(ApiError::unavailable(why, RETRY_AFTER_SECS)),
            };
        }
        Endpoint::Metrics => {
            only(&method, &[Method::GET])?;
            let mut text = broker.render_metrics();
            // The cluster's view, where there is one; a Redis that does not answer only
            // leaves it out.
            if let Some(forged) = broker.forged_node_records() {
                let view = broker.cluster().await.ok().map(|n| admin::cluster_view(&n));
                text.push_str(&metrics::render_cluster(view.as_ref(), forged));
            }
            let mut r = Response::new(super::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            return Ok(r);
        }
        Endpoint::Dashboard => {
            only(&method, &[Method::GET])?;
            return Ok(dashboard::page());
        }
        Endpoint::AdminCluster | Endpoint::AdminTenants => {
            only(&method, &[Method::GET])?;
            // Unknown unless the operator set a key; then only that key opens it.
            let admin = broker.admin_keys().ok_or_else(|| ApiError::not_found("Not Found"))?;
            admin
                .authenticate_by(request.headers(), "x-admin-key")
                .ok_or_else(ApiError::unauthorized)?;
            return match endpoint {
                Endpoint::AdminTenants => admin::tenants(broker).await,
                _ => admin::cluster(broker).await,
            };
        }
        _ => {}
    }
    let tenant = authenticate(broker, &request)?;
    match endpoint {
        Endpoint::Sessions => sessions::collection(broker, tenant, request).await,
        Endpoint::Mcp => mcp::handle(broker, tenant, request).await,
        Endpoint::Session => sessions::one(broker, &tenant, id, request).await,
        Endpoint::TerminateSession => {
            only(&method, &[Method::POST])?;
            sessions::terminate(broker, &tenant, id).await
        }
        Endpoint::ForkSession => {
            only(&method, &[Method::POST])?;
            fork::fork(broker, &tenant, id, request).await
        }
        Endpoint::Files => files::collection(broker, &tenant, id, request).await,
        Endpoint::File => {
            let name = params.get(1).copied().unwrap_or("");
            files::one(broker, &tenant, id, name, request).await
        }
        Endpoint::FilesZip => {
            only(&method, &[Method::GET])?;
            files::archive(broker, &tenant, id).await
        }
        Endpoint::Recording => {
            only(&method, &[Method::GET, Method::HEAD])?;
            files::recording(broker, &tenant, id, &request).await
        }
        Endpoint::Screenshot => {
            only(&method, &[Method::GET])?;
            dashboard::screenshot(broker, &tenant, id).await
        }
        Endpoint::Events => {
            only(&method, &[Method::GET])?;
            events::session_events(broker, &tenant, id, &request).await
        }
        Endpoint::Logs => {
            only(&method, &[Method::GET])?;
            capture::document(broker, &tenant, id, crate::capture::Document::Logs).await
        }
        Endpoint::Har => {
            only(&method, &[Method::GET])?;
            capture::document(broker, &tenant, id, crate::capture::Document::Har).await
        }
        Endpoint::SessionWebhooks => {
            only(&method, &[Method::GET])?;
            events::webhooks(broker, &tenant, id).await
        }
        Endpoint::TenantEvents => {
            only(&method, &[Method::GET])?;
            events::tenant_events(broker, tenant, &request)
        }
        Endpoint::Devices => {
            only(&method, &[Method::GET])?;
            Ok(json_response(StatusCode::OK, &crate::browser::devices::list()))
        }
        Endpoint::Profiles => profiles::collection(broker, &tenant, request).await,
        Endpoint::Profile => profiles::one(broker, &tenant, id, &method).await,
        Endpoint::StorageState => profiles::storage_state(broker, &tenant, id, request).await,
        Endpoint::Extensions => extensions::collection(broker, &tenant, request).await,
        Endpoint::Extension => extensions::one(broker, &tenant, id, &method).await,
        Endpoint::Pools => pools::collection(broker, &tenant, request).await,
        Endpoint::Pool => pools::one(broker, &tenant, id, request).await,
        Endpoint::RunAction => {
            only(&method, &[Method::POST])?;
            actions::handle(broker, tenant, request).await
        }
        Endpoint::Render(kind) => {
            only(&method, &[Method::POST])?;
            render::handle(broker, tenant, kind, request).await
        }
        Endpoint::Health
        | Endpoint::Ready
        | Endpoint::OpenApi
        | Endpoint::Metrics
        | Endpoint::Proxy
        | Endpoint::LiveView
        | Endpoint::Dashboard
        | Endpoint::AdminCluster
        | Endpoint::AdminTenants => {
            unreachable!("answered above")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_whole_segments() {
        let (r, params) = find_route("/public/sessions/sess_1/terminate").unwrap();
        assert_eq!((r.endpoint, params), (Endpoint::TerminateSession, vec!["sess_1"]));
        assert_eq!(find_route("/public/sessions/").unwrap().0.endpoint, Endpoint::Sessions);
        assert_eq!(find_route("/").map(|r| r.0.path), None);
        assert!(find_route("/public/sessions//terminate").is_none());
        assert!(find_route("/public/sessions/a/b").is_none());
        assert!(find_route("/healthz").is_none());
        let (r, params) = find_route("/devtools/browser/s/json/close/T1").unwrap();
        assert_eq!((r.endpoint, params), (Endpoint::Proxy, vec!["s", "T1"]));
    }
}
