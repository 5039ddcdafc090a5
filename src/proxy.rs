//! The CDP proxy: `/devtools/browser/{session}` and `/devtools/page/{target}` WebSockets,
//! relayed frame by frame to the session's browser, and the per-session discovery
//! endpoints (`…/json/version`, `/json/list`, …) with every URL pointing back through here.
//!
//! The token is checked before anything reaches Chrome and is never passed on to it.
//! When a session ends every connection gets a close frame whose code says why
//! (see [`crate::session::EndReason::close_code`]). The relay itself is [`crate::relay`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::Instrument;

use crate::api::query_pairs;
use crate::auth::{Scope, TokenError};
use crate::broker::Broker;
use crate::config::Config;
use crate::error::{ApiError, Body, json_response};
use crate::metrics::Metrics;
use crate::relay;
use crate::session::{ConnectionSlot, Session, Status};
use crate::upstream::{UpstreamError, UpstreamStream};

pub async fn handle(broker: Arc<Broker>, request: Request<Incoming>) -> Response<Body> {
    match route(&broker, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn route(broker: &Arc<Broker>, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let token = query_pairs(&query)
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match segments.as_slice() {
        ["browser", sid] => {
            let session = authorize(broker, token.as_deref(), Some(sid))?;
            let path = session.upstream.browser_path.clone();
            upgrade(broker, session, request, path).await
        }
        ["browser", sid, "json", rest @ ..] => {
            let session = authorize(broker, token.as_deref(), Some(sid))?;
            discovery(
                broker,
                &session,
                rest,
                request.method(),
                &query,
                token.as_deref().unwrap_or(""),
            )
            .await
        }
        ["page", target] if is_target_id(target) => {
            let session = authorize(broker, token.as_deref(), None)?;
            let path = format!("/devtools/page/{target}");
            upgrade(broker, session, request, path).await
        }
        _ => Err(ApiError::not_found("Not Found")),
    }
}

/// The active session the token grants; for browser paths it must name `path_sid`.
fn authorize(broker: &Broker, token: Option<&str>, path_sid: Option<&str>) -> Result<Arc<Session>, ApiError> {
    let refused = |e: TokenError| ApiError::new(StatusCode::UNAUTHORIZED, format!("Connection refused: {e}"));
    let sid = broker.tokens.session_of(token, Scope::Cdp).map_err(refused)?;
    if path_sid.is_some_and(|p| p != sid) {
        return Err(refused(TokenError::WrongSession));
    }
    let session = broker
        .sessions
        .get(&sid)
        .map(|s| s.clone())
        .ok_or_else(|| ApiError::not_found("Session not found"))?;
    match session.status() {
        Status::Active => Ok(session),
        Status::Expired => Err(ApiError::new(StatusCode::GONE, "Session has expired")),
        Status::Terminated => Err(ApiError::new(StatusCode::GONE, "Session is terminated")),
    }
}

/// Managed browsers are on loopback; anything slower than this is broken.
const MANAGED_TIMEOUT: Duration = Duration::from_secs(10);

pub fn upstream_timeout(broker: &Broker, session: &Session) -> Duration {
    if session.upstream.external {
        broker.config.byo_timeout()
    } else {
        MANAGED_TIMEOUT
    }
}

/// Counts a new WebSocket connection of `session`, within its limit.
pub fn claim_connection(broker: &Broker, session: &Arc<Session>) -> Result<ConnectionSlot, ApiError> {
    let max = broker.config.max_connections_per_session;
    session.claim_connection(max).ok_or_else(|| {
        broker.metrics.connections_refused.fetch_add(1, Relaxed);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("This session already has {max} open connections, its limit"),
        )
    })
}

/// What a client is told when the browser side cannot be had.
pub fn upstream_error(e: UpstreamError) -> ApiError {
    match e {
        // Chrome answers an unknown target id with 500 "No such target id".
        UpstreamError::Rejected { status, body } if status == 404 || body.starts_with(b"No such target") => {
            ApiError::not_found("Target not found in this session's browser")
        }
        UpstreamError::Refused(e) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "The session's browser is not reachable"),
    }
}

/// Chrome target ids are hex (32 upper-case digits); accept a little more, nothing that
/// could change the upstream path.
fn is_target_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Frame and message limits of both sides of a relay.
pub fn ws_config(config: &Config) -> WebSocketConfig {
    let max = config.max_message_bytes;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Connects to the browser first (so a dead browser is a 502, not a dropped socket),
/// answers 101, and relays in a task of its own.
async fn upgrade(
    broker: &Arc<Broker>,
    session: Arc<Session>,
    request: Request<Incoming>,
    upstream_path: String,
) -> Result<Response<Body>, ApiError> {
    let key = websocket_key(&request)?;
    let slot = claim_connection(broker, &session)?;
    let (browser, early) = session
        .upstream
        .connect_raw(&upstream_path, &broker.egress, upstream_timeout(broker, &session))
        .await
        .map_err(upstream_error)?;

    let tracker = broker.tracker.clone();
    let broker = broker.clone();
    let span = tracing::info_span!("cdp", session = %session.id);
    tracker.spawn(
        async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let _open = OpenConnection::new(&broker.metrics);
            let _slot = slot;
            // Plain TCP on both sides (the usual case) relays without any indirection.
            match (Side::client(upgraded), Side::browser(browser, early)) {
                (Side::Tcp(client, client_early), Side::Tcp(browser, browser_early)) => {
                    let (client, browser) = (tcp_peer(client, client_early), tcp_peer(browser, browser_early));
                    run_relay(client, browser, &session, &broker).await
                }
                (client, browser) => run_relay(client.boxed(), browser.boxed(), &session, &broker).await,
            }
        }
        .instrument(span),
    );

    Ok(upgrade_response(&key))
}

/// The `101 Switching Protocols` answer to an upgrade request with this key.
pub fn upgrade_response(key: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes())
            .parse()
            .expect("base64 is a valid header value"),
    );
    response
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request.
pub fn websocket_key(request: &Request<Incoming>) -> Result<String, ApiError> {
    let h = request.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    };
    if request.method() != Method::GET || !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "This is a WebSocket endpoint: connect a CDP client to it (discovery is under …/json/version)",
        ));
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(ApiError::bad_request("Only WebSocket version 13 is supported"));
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("Missing Sec-WebSocket-Key"))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One side of a relayed connection, with the bytes it sent that were read already.
enum Side {
    Tcp(TcpStream, Vec<u8>),
    Other(Box<dyn Io>, Vec<u8>),
}

type BoxedPeer = relay::Peer<Box<dyn AsyncRead + Unpin + Send>, Box<dyn AsyncWrite + Unpin + Send>>;

impl Side {
    /// The client's connection, unwrapped from hyper when it is plain TCP.
    fn client(upgraded: Upgraded) -> Side {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Side::Tcp(parts.io.into_inner(), parts.read_buf.to_vec()),
            Err(upgraded) => Side::Other(Box::new(TokioIo::new(upgraded)), Vec::new()),
        }
    }

    fn browser(stream: UpstreamStream, early: Vec<u8>) -> Side {
        match stream {
            UpstreamStream::Plain(tcp) => Side::Tcp(tcp, early),
            tls => Side::Other(Box::new(tls), early),
        }
    }

    fn boxed(self) -> BoxedPeer {
        match self {
            Side::Tcp(tcp, early) => {
                let (rx, tx) = tcp.into_split();
                relay::Peer {
                    rx: Box::new(rx),
                    tx: Box::new(tx),
                    early,
                }
            }
            Side::Other(io, early) => {
                let (rx, tx) = tokio::io::split(io);
                relay::Peer {
                    rx: Box::new(rx),
                    tx: Box::new(tx),
                    early,
                }
            }
        }
    }
}

async fn run_relay<CR, CW, BR, BW>(
    client: relay::Peer<CR, CW>,
    browser: relay::Peer<BR, BW>,
    session: &Session,
    broker: &Broker,
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let limits = relay::Limits {
        max_message: broker.config.max_message_bytes,
        write_stall: Duration::from_millis(broker.config.write_stall_timeout_ms),
    };
    relay::relay(
        client,
        browser,
        session.ended(),
        || session.end_reason(),
        limits,
        &broker.metrics,
    )
    .await
}

fn tcp_peer(tcp: TcpStream, early: Vec<u8>) -> relay::Peer<OwnedReadHalf, OwnedWriteHalf> {
    let (rx, tx) = tcp.into_split();
    relay::Peer { rx, tx, early }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection<'a>(&'a Metrics);

impl<'a> OpenConnection<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.proxy_connections.fetch_add(1, Relaxed);
        metrics.proxy_connections_open.fetch_add(1, Relaxed);
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.proxy_connections_open.fetch_sub(1, Relaxed);
    }
}

/// Chrome's `/json/*` answers for the session's browser, with every address rewritten.
async fn discovery(
    broker: &Broker,
    session: &Session,
    rest: &[&str],
    method: &Method,
    query: &str,
    token: &str,
) -> Result<Response<Body>, ApiError> {
    // Chrome wants PUT for /json/new; accept GET too, as older Chromes and many scripts use it.
    let (upstream_method, path) = match rest {
        [] | ["list"] => (Method::GET, "/json/list".to_owned()),
        ["version"] => (Method::GET, "/json/version".to_owned()),
        ["protocol"] => (Method::GET, "/json/protocol".to_owned()),
        ["new"] => {
            let url = query_pairs(query).into_iter().find(|(k, _)| k == "url").map(|(_, v)| v);
            let target = url.map(|u| format!("?{}", encode_component(&u))).unwrap_or_default();
            (Method::PUT, format!("/json/new{target}"))
        }
        ["activate", id] if is_target_id(id) => (Method::GET, format!("/json/activate/{id}")),
        ["close", id] if is_target_id(id) => (Method::GET, format!("/json/close/{id}")),
        _ => return Err(ApiError::not_found("Not Found")),
    };
    if !(method == Method::GET || method == Method::HEAD || (method == Method::PUT && rest == ["new"])) {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"));
    }
    let (status, body) = session
        .upstream
        .http(
            upstream_method,
            &path,
            &broker.egress,
            upstream_timeout(broker, session),
        )
        .await
        .map_err(upstream_error)?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(mut value) => {
            if path != "/json/protocol" {
                let rewriter = Rewriter {
                    chrome: &session.upstream.authority,
                    public_ws: &broker.urls.ws,
                    session_id: &session.id,
                    token,
                };
                rewriter.rewrite(&mut value);
            }
            Ok(json_response(status, &value))
        }
        Err(_) => {
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(response)
        }
    }
}

/// Points every browser address in a discovery answer back through the broker.
pub(crate) struct Rewriter<'a> {
    /// Chrome's `127.0.0.1:port`.
    pub chrome: &'a str,
    /// `ws(s)://host[:port][/prefix]` of the broker.
    pub public_ws: &'a str,
    pub session_id: &'a str,
    pub token: &'a str,
}

impl Rewriter<'_> {
    pub fn rewrite(&self, value: &mut Value) {
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| self.rewrite(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.rewrite(v)),
            Value::String(s) if s.contains(self.chrome) => *s = self.rewrite_str(s),
            _ => {}
        }
    }

    fn rewrite_str(&self, s: &str) -> String {
        let after_scheme = s
            .strip_prefix("ws://")
            .or_else(|| s.strip_prefix("wss://"))
            .unwrap_or("");
        let browser_prefix = format!("{}/devtools/browser/", self.chrome);
        let page_prefix = format!("{}/devtools/page/", self.chrome);
        if after_scheme.starts_with(&browser_prefix) {
            return format!(
                "{}/devtools/browser/{}?token={}",
                self.public_ws, self.session_id, self.token
            );
        }
        if let Some(id) = after_scheme.strip_prefix(&page_prefix).filter(|id| is_target_id(id)) {
            return format!("{}/devtools/page/{id}?token={}", self.public_ws, self.token);
        }
        // A frontend URL carries the page address as `ws=127.0.0.1:port/devtools/page/ID`.
        let (scheme, host) = self.public_ws.split_once("://").unwrap_or(("ws", self.public_ws));
        let marker = format!("ws={}/devtools/page/", self.chrome);
        let mut out = String::with_capacity(s.len() + 256);
        let mut rest = s;
        while let Some(at) = rest.find(&marker) {
            out.push_str(&rest[..at]);
            let after = &rest[at + marker.len()..];
            let id_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(after.len());
            out.push_str(&format!(
                "{scheme}={host}/devtools/page/{}%3Ftoken%3D{}",
                &after[..id_len],
                self.token
            ));
            rest = &after[id_len..];
        }
        out.push_str(rest);
        // Whatever else named Chrome's port now names the broker.
        out.replace(self.chrome, host)
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discovery_answers_point_through_the_broker() {
        let r = Rewriter {
            chrome: "127.0.0.1:41000",
            public_ws: "wss://gate.example",
            session_id: "sess_1",
            token: "a.b.c",
        };
        let mut v = json!([{
            "id": "ABC",
            "webSocketDebuggerUrl": "ws://127.0.0.1:41000/devtools/page/ABC",
            "devtoolsFrontendUrl": "/devtools/inspector.html?ws=127.0.0.1:41000/devtools/page/ABC",
            "url": "http://site.test/"
        }, {
            "webSocketDebuggerUrl": "ws://127.0.0.1:41000/devtools/browser/0f-9a"
        }]);
        r.rewrite(&mut v);
        assert_eq!(
            v[0]["webSocketDebuggerUrl"],
            "wss://gate.example/devtools/page/ABC?token=a.b.c"
        );
        assert_eq!(
            v[0]["devtoolsFrontendUrl"],
            "/devtools/inspector.html?wss=gate.example/devtools/page/ABC%3Ftoken%3Da.b.c"
        );
        assert_eq!(v[0]["url"], "http://site.test/");
        assert_eq!(
            v[1]["webSocketDebuggerUrl"],
            "wss://gate.example/devtools/browser/sess_1?token=a.b.c"
        );
        assert!(!v.to_string().contains("41000"));
    }

    #[test]
    fn target_ids_cannot_escape_the_path() {
        assert!(is_target_id("E2B5C1A9D7F0431B8C0E5D2A3B4C5D6E"));
        assert!(!is_target_id("../json"));
        assert!(!is_target_id("a?b"));
        assert!(!is_target_id(""));
        assert_eq!(
            encode_component("http://a.b/c?d=e f"),
            "http%3A%2F%2Fa.b%2Fc%3Fd%3De%20f"
        );
    }
}
