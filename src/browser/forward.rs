//! Each managed browser's way out. Chrome starts with `--proxy-server` pointing at a
//! listener of its own here (a [`Gateway`]), so every request of its pages passes the
//! broker: plain HTTP as absolute-form requests, HTTPS and WebSockets as `CONNECT`
//! tunnels. Here the egress policy is enforced on every connection, bytes are counted for
//! the session, and the session's own upstream proxy (HTTP, HTTPS or SOCKS5) is used with
//! credentials that neither the page nor the client ever sees: the browser talks to the
//! gateway, which never asks it to authenticate.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::egress::{Egress, EgressError, host_matches};
use super::upstream::{UpstreamStream, tls_connector};
use crate::metrics::Metrics;

/// How long reaching a destination or an upstream proxy (and its handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the browser has to send a request's head (and an idle keep-alive connection
/// waits for the next one) before its connection to the gateway is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer head an upstream HTTP proxy may send to `CONNECT`.
const MAX_PROXY_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    Http,
    Https,
    Socks5,
}

/// A session's upstream proxy. The password lives only here, in the memory of the node
/// that runs the session; records and answers carry the rest.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    pub scheme: ProxyScheme,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Hosts reached directly: names (`*.suffix` for every name under it), addresses, CIDRs.
    pub bypass: Vec<String>,
}

impl std::fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamProxy")
            .field("server", &self.server())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("bypass", &self.bypass)
            .finish()
    }
}

impl UpstreamProxy {
    /// `scheme://host:port`, as the session object shows it.
    pub fn server(&self) -> String {
        let scheme = match self.scheme {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
            ProxyScheme::Socks5 => "socks5",
        };
        format!("{scheme}://{}:{}", bracketed(&self.host), self.port)
    }

    /// Parses a `proxy` object's `server`: `http://`, `https://` or `socks5://` with a
    /// host and an optional port, nothing else.
    pub fn parse_server(server: &str) -> Result<(ProxyScheme, String, u16), String> {
        let url = url::Url::parse(server).map_err(|e| format!("is not a URL ({e})"))?;
        let (scheme, default_port) = match url.scheme() {
            "http" => (ProxyScheme::Http, 80),
            "https" => (ProxyScheme::Https, 443),
            "socks5" | "socks5h" => (ProxyScheme::Socks5, 1080),
            other => return Err(format!("has the scheme {other:?}; use http, https or socks5")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials; give username and password as fields".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("must be scheme://host:port with no path".into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err("has no host".into()),
        };
        Ok((scheme, host, url.port().unwrap_or(default_port)))
    }

    /// Whether requests to `host` skip the proxy.
    fn bypassed(&self, host: &str) -> bool {
        let ip = host.parse::<IpAddr>().ok();
        host_matches(&self.bypass, host)
            || self.bypass.iter().any(|entry| {
                let net = entry
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from));
                matches!((net, ip), (Some(net), Some(ip)) if net.contains(&ip))
            })
    }

    fn authorization(&self) -> Option<String> {
        let user = self.username.as_deref()?;
        let password = self.password.as_deref().unwrap_or("");
        Some(format!("Basic {}", BASE64.encode(format!("{user}:{password}"))))
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

pub(crate) use crate::values::NetworkStats;

/// A session's network counters, shared by every connection of its browser.
#[derive(Default)]
pub struct Traffic {
    /// Bytes received from the network (destinations or the upstream proxy).
    bytes_in: AtomicU64,
    /// Bytes sent to the network.
    bytes_out: AtomicU64,
    proxy_errors: AtomicU64,
    last_proxy_error: Mutex<Option<String>>,
    /// Requests the session's blocking stopped in the browser (`browser::blocking`).
    blocked_requests: AtomicU64,
    /// Origins the pages reached (at most `MAX_ORIGINS`): where a context session's
    /// localStorage may be, since a context keeps none on disk to look at.
    origins: Mutex<std::collections::BTreeSet<String>>,
}

/// Most origins a session's traffic remembers.
const MAX_ORIGINS: usize = 256;

impl Traffic {
    /// Origins the pages reached: `http://host[:port]` for plain HTTP, `https://host[:port]`
    /// for a tunnel (which may also have been a secure WebSocket).
    pub fn origins(&self) -> Vec<String> {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn reached(&self, scheme: &str, host: &str, port: u16) {
        let default = if scheme == "https" { 443 } else { 80 };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_ascii_lowercase()
        };
        let origin = match port == default {
            true => format!("{scheme}://{host}"),
            false => format!("{scheme}://{host}:{port}"),
        };
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if origins.len() < MAX_ORIGINS {
            origins.insert(origin);
        }
    }
    pub fn snapshot(&self) -> NetworkStats {
        NetworkStats {
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            proxy_errors: self.proxy_errors.load(Relaxed),
            last_proxy_error: self.last_proxy_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            blocked_requests: self.blocked_requests.load(Relaxed),
        }
    }

    /// Counts a request the session's blocking stopped.
    pub fn blocked_request(&self) {
        self.blocked_requests.fetch_add(1, Relaxed);
    }

    fn proxy_error(&self, text: String) {
        self.proxy_errors.fetch_add(1, Relaxed);
        *self.last_proxy_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
}

/// Where a browser's connections go right now: the span of the session that holds it (none
/// while it waits in the pool), its upstream proxy and its counters.
struct Route {
    /// The session's span (its id and tenant), so every line about its traffic names both.
    span: tracing::Span,
    proxy: Option<Arc<UpstreamProxy>>,
    traffic: Arc<Traffic>,
}

impl Default for Route {
    fn default() -> Route {
        Route {
            span: tracing::Span::none(),
            proxy: None,
            traffic: Arc::default(),
        }
    }
}

/// One browser's (or browser context's) forward proxy on 127.0.0.1. When `stop` fires it
/// stops accepting and closes every connection it serves, tunnels included, so nothing
/// of its session's traffic outlives it.
pub struct Gateway {
    pub port: u16,
    route: Mutex<Arc<Route>>,
    policy: Arc<Egress>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// Its name lookups in flight (`Egress::resolve_within`): one session's pages cannot
    /// take every lookup place.
    lookups: Arc<tokio::sync::Semaphore>,
}

/// Name lookups one gateway (one session's pages) runs at once.
const LOOKUPS_PER_GATEWAY: usize = 8;

/// Why a connection could not be opened for a page.
enum OpenError {
    /// The egress policy refuses the destination (or the session's proxy).
    Refused(EgressError),
    /// The session's upstream proxy is unreachable or refused the connection.
    Proxy(String),
    /// The destination itself did not answer.
    Unreachable(String),
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl Gateway {
    /// Listens on a fresh loopback port and serves until `stop` fires.
    pub async fn start(
        policy: Arc<Egress>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> io::Result<Arc<Gateway>> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let (gateway, _listener_back) = Gateway::serve_on(listener, policy, metrics, stop)?;
        Ok(gateway)
    }

    /// Serves on `listener`, bound beforehand (so that its port can be named before the
    /// browser starts), until `stop` fires; the task answered then hands the listener back,
    /// still bound, for the next gateway on that port. Connections already queued on it
    /// are closed unserved first: they were meant for whoever had the port before.
    pub fn serve_on(
        listener: std::net::TcpListener,
        policy: Arc<Egress>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> io::Result<(Arc<Gateway>, JoinHandle<Option<std::net::TcpListener>>)> {
        listener.set_nonblocking(true)?;
        let stale = drain_backlog(&listener);
        if stale > 0 {
            tracing::debug!(stale, "closed connections left queued on a gateway's port");
        }
        let listener = TcpListener::from_std(listener)?;
        let gateway = Arc::new(Gateway {
            port: listener.local_addr()?.port(),
            route: Mutex::default(),
            policy,
            metrics,
            stop: stop.clone(),
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_PER_GATEWAY)),
        });
        let serving = gateway.clone();
        let accepting = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return listener.into_std().ok(),
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(serving.clone().serve(stream));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "forward proxy accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        });
        Ok((gateway, accepting))
    }

    /// Routes the browser's connections from now on for the session whose span is `span`,
    /// through `proxy` if it has one; answers the session's counters.
    pub fn assign(&self, span: tracing::Span, proxy: Option<UpstreamProxy>) -> Arc<Traffic> {
        let route = Route {
            span,
            proxy: proxy.map(Arc::new),
            traffic: Arc::default(),
        };
        let traffic = route.traffic.clone();
        *self.route.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(route);
        traffic
    }

    fn route(&self) -> Arc<Route> {
        self.route.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn serve(self: Arc<Self>, stream: TcpStream) {
        let stop = self.stop.clone();
        let service = hyper::service::service_fn(move |request| self.clone().handle(request));
        // With a timer: without one hyper drops its header read timeout silently, and a
        // connection that never finishes its request head would be held for good.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::select! {
            _ = connection => {}
            _ = stop.cancelled() => {}
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, io::Error> {
        let route = self.route();
        if request.method() == Method::CONNECT {
            return Ok(self.tunnel(route, request).await);
        }
        let uri = request.uri();
        let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Ok(answer(StatusCode::BAD_REQUEST));
        };
        let (host, port) = (host.trim_matches(['[', ']']).to_owned(), uri.port_u16().unwrap_or(80));
        route.traffic.reached("http", &host, port);
        match self.forward(&route, &host, port, request).await {
            Ok(response) => Ok(response),
            Err(e) => {
                self.report(&route, &host, port, &e);
                // Closing without an answer gives the page a network error, as a refused
                // tunnel does; an answer would be shown as the site's own page.
                Err(io::Error::other("refused"))
            }
        }
    }

    /// `CONNECT host:port`: a tunnel for HTTPS and WebSockets.
    async fn tunnel(&self, route: Arc<Route>, request: Request<Incoming>) -> Response<ProxyBody> {
        let Some(authority) = request.uri().authority() else {
            return answer(StatusCode::BAD_REQUEST);
        };
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(443);
        route.traffic.reached("https", &host, port);
        match self.open(&route, &host, port).await {
            Ok(outbound) => {
                let (metrics, stop) = (self.metrics.clone(), self.stop.clone());
                tokio::spawn(async move {
                    if let Ok(upgraded) = hyper::upgrade::on(request).await {
                        let mut page = TokioIo::new(upgraded);
                        let mut outbound = Counted::new(outbound, route.traffic.clone(), metrics);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut page, &mut outbound) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                });
                answer(StatusCode::OK)
            }
            Err(e) => {
                self.report(&route, &host, port, &e);
                answer(StatusCode::BAD_GATEWAY)
            }
        }
    }

    /// A plain-HTTP request: to the destination in origin form, or to the session's HTTP
    /// proxy in absolute form with its credentials. One request per outbound connection.
    async fn forward(
        &self,
        route: &Route,
        host: &str,
        port: u16,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, OpenError> {
        let http_proxy = route
            .proxy
            .as_ref()
            .filter(|p| p.scheme != ProxyScheme::Socks5 && !p.bypassed(host));
        let outbound = match http_proxy {
            Some(proxy) => self.reach_proxy(proxy).await?,
            None => self.open(route, host, port).await?,
        };
        let (mut parts, body) = request.into_parts();
        strip_hop_headers(&mut parts.headers);
        parts
            .headers
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        match http_proxy {
            Some(proxy) => {
                if let Some(auth) = proxy.authorization().and_then(|a| HeaderValue::from_str(&a).ok()) {
                    parts.headers.insert(hyper::header::PROXY_AUTHORIZATION, auth);
                }
            }
            None => {
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                parts.uri = path.parse().unwrap_or_default();
            }
        }
        let outbound = Counted::new(outbound, route.traffic.clone(), self.metrics.clone());
        let failed = |e: hyper::Error| OpenError::Unreachable(e.to_string());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(outbound))
            .await
            .map_err(failed)?;
        tokio::spawn(connection);
        let mut response = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(failed)?;
        if http_proxy.is_some() && response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err(OpenError::Proxy("the proxy refused the credentials (407)".into()));
        }
        strip_hop_headers(response.headers_mut());
        Ok(response.map(BodyExt::boxed))
    }

    /// A connection to `host:port` for a page: through the session's proxy unless the
    /// host bypasses it, else directly to an address the policy allows.
    async fn open(&self, route: &Route, host: &str, port: u16) -> Result<UpstreamStream, OpenError> {
        match route.proxy.as_ref().filter(|p| !p.bypassed(host)) {
            Some(proxy) => {
                let mut stream = self.reach_proxy(proxy).await?;
                let handshake = async {
                    match proxy.scheme {
                        ProxyScheme::Socks5 => socks5_connect(&mut stream, proxy, host, port).await,
                        _ => http_connect(&mut stream, proxy, host, port).await,
                    }
                };
                tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| OpenError::Proxy("the proxy did not answer in time".into()))?
                    .map_err(OpenError::Proxy)?;
                Ok(stream)
            }
            None => {
                let addrs = self
                    .policy
                    .resolve_within(host, port, Some(&self.lookups))
                    .await
                    .map_err(|e| match e {
                        EgressError::Resolve { .. } => OpenError::Unreachable(e.to_string()),
                        refused => OpenError::Refused(refused),
                    })?;
                let stream = connect_any(&addrs).await.map_err(OpenError::Unreachable)?;
                Ok(UpstreamStream::Plain(stream))
            }
        }
    }

    /// A connection to the session's proxy itself (checked against the policy too).
    async fn reach_proxy(&self, proxy: &UpstreamProxy) -> Result<UpstreamStream, OpenError> {
        let addrs = self
            .policy
            .resolve_within(&proxy.host, proxy.port, Some(&self.lookups))
            .await
            .map_err(|e| match e {
                EgressError::Resolve { .. } => OpenError::Proxy(e.to_string()),
                refused => OpenError::Refused(refused),
            })?;
        let unreachable = |e: String| OpenError::Proxy(format!("cannot reach the proxy {}: {e}", proxy.server()));
        let stream = connect_any(&addrs).await.map_err(unreachable)?;
        if proxy.scheme != ProxyScheme::Https {
            return Ok(UpstreamStream::Plain(stream));
        }
        let name = rustls::pki_types::ServerName::try_from(proxy.host.clone())
            .map_err(|e| OpenError::Proxy(format!("the proxy's name is not valid for TLS: {e}")))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, tls_connector().connect(name, stream))
            .await
            .map_err(|_| unreachable("the TLS handshake timed out".into()))?
            .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }

    /// Counts and logs a connection a page could not have.
    fn report(&self, route: &Route, host: &str, port: u16, error: &OpenError) {
        let _in_session = route.span.enter();
        match error {
            OpenError::Refused(e) => {
                self.metrics.browser_egress_refused.inc();
                tracing::info!(destination = %format!("{host}:{port}"), reason = %e, "browser egress refused");
            }
            OpenError::Proxy(text) => {
                self.metrics.proxy_errors.inc();
                route.traffic.proxy_error(text.clone());
                tracing::info!(destination = %format!("{host}:{port}"), error = %text, "upstream proxy error");
            }
            OpenError::Unreachable(text) => {
                tracing::debug!(destination = %format!("{host}:{port}"), error = %text, "destination unreachable");
            }
        }
    }
}

/// Accepts and closes every connection queued on `listener` (non-blocking); answers how
/// many there were.
fn drain_backlog(listener: &std::net::TcpListener) -> usize {
    let mut closed = 0;
    while let Ok((stream, _)) = listener.accept() {
        drop(stream);
        closed += 1;
    }
    closed
}

fn answer(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(Empty::new().map_err(|never: Infallible| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// Headers of one hop that must not travel to the next.
fn strip_hop_headers(headers: &mut hyper::HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Connects to the first of `addrs` that answers, one after another, within
/// `CONNECT_TIMEOUT` each and twice that in all (a name may resolve to dozens of addresses
/// that never answer). The error names no address: what a name resolved to is the
/// broker's to know.
async fn connect_any(addrs: &[std::net::SocketAddr]) -> Result<TcpStream, String> {
    let attempts = async {
        let mut last = String::from("no address");
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".to_owned(),
            }
        }
        Err(last)
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 2, attempts)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// `CONNECT host:port` through an HTTP(S) proxy, with its credentials.
async fn http_connect<S>(stream: &mut S, proxy: &UpstreamProxy, host: &str, port: u16) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = format!("{}:{port}", bracketed(host));
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = proxy.authorization() {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    let io = |e: io::Error| format!("the proxy connection failed: {e}");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    // Byte by byte up to the blank line: what follows it belongs to the tunnel.
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_PROXY_HEAD {
            return Err("the proxy's answer to CONNECT is too long".into());
        }
        let byte = stream.read_u8().await.map_err(io)?;
        answer.push(byte);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&answer) {
        Ok(httparse::Status::Complete(_)) => match parsed.code {
            Some(200..=299) => Ok(()),
            Some(407) => Err("the proxy refused the credentials (407)".into()),
            Some(code) => Err(format!("the proxy answered {code} to CONNECT {target}")),
            None => Err("the proxy's answer has no status".into()),
        },
        _ => Err("the proxy's answer to CONNECT is not HTTP".into()),
    }
}

/// A SOCKS5 `CONNECT` (RFC 1928), with username and password (RFC 1929) when given; the
/// proxy resolves names.
async fn socks5_connect<S>(stream: &mut S, proxy: &UpstreamProxy, host: &str, port: u16) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: io::Error| format!("the SOCKS5 proxy connection failed: {e}");
    let greeting: &[u8] = if proxy.username.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    stream.write_all(greeting).await.map_err(io)?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.map_err(io)?;
    match choice {
        [5, 0] => {}
        [5, 2] => {
            let user = proxy.username.as_deref().unwrap_or("").as_bytes();
            let password = proxy.password.as_deref().unwrap_or("").as_bytes();
            let mut auth = vec![1, user.len() as u8];
            auth.extend_from_slice(user);
            auth.push(password.len() as u8);
            auth.extend_from_slice(password);
            stream.write_all(&auth).await.map_err(io)?;
            let mut status = [0u8; 2];
            stream.read_exact(&mut status).await.map_err(io)?;
            if status[1] != 0 {
                return Err("the SOCKS5 proxy refused the credentials".into());
            }
        }
        [5, 0xff] => return Err("the SOCKS5 proxy accepts none of the offered authentication methods".into()),
        _ => return Err("the proxy does not speak SOCKS5".into()),
    }
    let mut request = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            let name = host.as_bytes();
            if name.len() > 255 {
                return Err("the host name is too long for SOCKS5".into());
            }
            request.push(3);
            request.push(name.len() as u8);
            request.extend_from_slice(name);
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.map_err(io)?;
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).await.map_err(io)?;
    if reply[1] != 0 {
        let why = match reply[1] {
            1 => "general failure",
            2 => "not allowed by its rules",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        };
        return Err(format!("the SOCKS5 proxy could not connect to {host}:{port}: {why}"));
    }
    let bound = match reply[3] {
        1 => 4,
        4 => 16,
        3 => stream.read_u8().await.map_err(io)? as usize,
        _ => return Err("the SOCKS5 proxy's reply is malformed".into()),
    };
    let mut rest = vec![0u8; bound + 2];
    stream.read_exact(&mut rest).await.map_err(io)?;
    Ok(())
}

/// A stream that counts what crosses it, for the session and for `/metrics`.
struct Counted<S> {
    inner: S,
    traffic: Arc<Traffic>,
    metrics: Arc<Metrics>,
}

impl<S> Counted<S> {
    fn new(inner: S, traffic: Arc<Traffic>, metrics: Arc<Metrics>) -> Self {
        Counted {
            inner,
            traffic,
            metrics,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.traffic.bytes_in.fetch_add(n, Relaxed);
            this.metrics.browser_bytes_in.inc_by(n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.traffic.bytes_out.fetch_add(*n as u64, Relaxed);
            this.metrics.browser_bytes_out.inc_by(*n as u64);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_servers_parse_strictly() {
        assert_eq!(
            UpstreamProxy::parse_server("http://Proxy.Example:3128").unwrap(),
            (ProxyScheme::Http, "proxy.example".into(), 3128)
        );
        assert_eq!(
            UpstreamProxy::parse_server("socks5://127.0.0.1").unwrap(),
            (ProxyScheme::Socks5, "127.0.0.1".into(), 1080)
        );
        assert_eq!(
            UpstreamProxy::parse_server("https://[::1]:8443").unwrap(),
            (ProxyScheme::Https, "::1".into(), 8443)
        );
        for bad in [
            "ftp://x:1",
            "http://user:pw@x:1",
            "http://x:1/path",
            "http://x:1?q",
            "not a url",
            "http://",
            "http://x:99999",
        ] {
            assert!(UpstreamProxy::parse_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bypass_matches_names_addresses_and_networks_and_the_password_is_hidden() {
        let proxy = UpstreamProxy {
            scheme: ProxyScheme::Http,
            host: "::1".into(),
            port: 3128,
            username: Some("u".into()),
            password: Some("secret-pw".into()),
            bypass: vec!["*.internal".into(), "10.0.0.0/8".into(), "192.0.2.7".into()],
        };
        assert!(proxy.bypassed("db.internal"));
        assert!(proxy.bypassed("10.1.2.3"));
        assert!(proxy.bypassed("192.0.2.7"));
        assert!(!proxy.bypassed("example.com"));
        assert!(!proxy.bypassed("192.0.2.8"));
        assert_eq!(proxy.server(), "http://[::1]:3128");
        assert!(!format!("{proxy:?}").contains("secret-pw"));
        assert_eq!(
            proxy.authorization().unwrap(),
            format!("Basic {}", BASE64.encode("u:secret-pw"))
        );
    }

    #[test]
    fn hop_headers_are_removed_with_those_connection_names() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }
}
