//! The hop to another node: a request about a session that runs elsewhere in the cluster
//! is sent to that node as it came, marked so that it is never sent on again. A WebSocket
//! upgrade is answered with the owner's own answer and then relayed frame by frame (the
//! owner's close codes, TTL cutoffs among them, reach the client unchanged); any other
//! request gets the owner's answer.
//!
//! The client's credentials stay on the node it reached: its `X-API-Key`, `Authorization`
//! and `X-Admin-Key` are taken off, and the request carries this node's own credential
//! instead, an `x-cdpgate-hop` header signed with the cluster secret over the method, the
//! path and query, the tenant this node authenticated, and the time. The owner checks it
//! (a forged, altered or late one is refused with 401), takes the tenant from it, and
//! checks tokens in the URL itself.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{OpenConnection, ProxyError, Side, relay, tcp_peer};
use crate::auth::{ClusterKey, Hop, Tenant};
use crate::broker::Broker;
use crate::browser::upstream::UpstreamError;
use crate::store::EndReason;

/// Marks a request that came from another node, and proves it (see [`ClusterKey::sign_hop`]).
pub(crate) const HOP_HEADER: &str = "x-cdpgate-hop";
/// The client's credentials, which never go on to another node.
const CREDENTIALS: [&str; 3] = ["x-api-key", "authorization", "x-admin-key"];
/// How long the owner may take to accept a connection and answer (a single action sent on
/// gets its own, longer, time).
pub(crate) const HOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer head or body carried back (discovery's protocol description is ~1 MB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Whether the request was sent on by another node of this cluster: its hop header was
/// checked by [`check_hop`].
pub(crate) fn is_hop<B>(request: &Request<B>) -> bool {
    request.extensions().get::<Hop>().is_some()
}

/// Checks a request's hop header, if it has one: `Ok(true)` for a valid one (the request
/// then [`is_hop`], with the tenant it names), `Ok(false)` for none, `Err(())` for one that
/// is forged, altered, late, or sent to a node without a cluster secret.
#[allow(clippy::result_unit_err)]
pub(crate) fn check_hop<B>(key: Option<&ClusterKey>, request: &mut Request<B>) -> Result<bool, ()> {
    let Some(header) = request.headers().get(HOP_HEADER) else {
        return Ok(false);
    };
    let key = key.ok_or(())?;
    let header = header.to_str().map_err(|_| ())?;
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let hop = key
        .verify_hop(header, request.method().as_str(), target, std::time::SystemTime::now())
        .ok_or(())?;
    request.extensions_mut().insert(hop);
    Ok(true)
}

/// The tenant a checked hop header names: `Some(None)` for a hop without one.
pub(crate) fn hop_tenant<B>(request: &Request<B>) -> Option<Option<Tenant>> {
    request.extensions().get::<Hop>().map(|h| h.tenant.clone())
}

/// The signed hop header for a request sent on for `tenant`.
fn hop_header(key: &ClusterKey, method: &hyper::Method, target: &str, tenant: Option<&Tenant>) -> String {
    key.sign_hop(method.as_str(), target, tenant, std::time::SystemTime::now())
}

/// Whether header `name` stays on the node the client reached.
fn stays_here(name: &header::HeaderName) -> bool {
    CREDENTIALS.contains(&name.as_str()) || name.as_str() == HOP_HEADER
}

/// An answer carried back from the owner, its body streamed as it arrives (a session's
/// files and recordings can be large).
pub(crate) type Streamed = UnsyncBoxBody<Bytes, std::io::Error>;

/// Sends `request` to the node at `owner` (`http://host:port`) and answers as it does;
/// `tenant` is the one this node authenticated from the request's API key, if any.
pub(crate) async fn forward(
    broker: &std::sync::Arc<Broker>,
    owner: &str,
    request: Request<Incoming>,
    tenant: Option<&Tenant>,
) -> Result<Response<Streamed>, ProxyError> {
    let key = broker
        .cluster_key()
        .ok_or_else(|| ProxyError::Upstream(UpstreamError::Http("no cluster secret".into())))?;
    let (tcp, authority) = connect(owner).await?;
    if request.headers().contains_key(header::UPGRADE) {
        let answer = upgrade(broker, key, tcp, &authority, request, tenant).await?;
        return Ok(answer.map(|b| b.map_err(|never| match never {}).boxed_unsync()));
    }
    // Both bodies stream: the owner applies its own limits and timeouts to the request's.
    let (parts, body) = request.into_parts();
    let answer = exchange(key, tcp, &authority, &parts, body, HOP_TIMEOUT, tenant).await?;
    Ok(answer.map(|b| b.map_err(std::io::Error::other).boxed_unsync()))
}

/// Sends a request whose body was read already to the node at `owner`, for `tenant`: a
/// create placed on another node is sent this way, to one node after another.
pub(crate) async fn send_to(
    key: &ClusterKey,
    owner: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    answer_within: Duration,
    tenant: &Tenant,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let (tcp, authority) = connect(owner).await?;
    send(key, tcp, &authority, parts, body, answer_within, tenant).await
}

/// Opens a `GET` of `target` on the node at `url` for `tenant` as a server-sent event
/// stream, and answers its body, read as the node writes it (for as long as it does).
pub(crate) async fn open_stream(
    key: &ClusterKey,
    url: &str,
    target: &str,
    tenant: &Tenant,
) -> Result<Incoming, ProxyError> {
    let (tcp, authority) = connect(url).await?;
    let (parts, ()) = Request::builder()
        .method(hyper::Method::GET)
        .uri(target)
        .header(header::ACCEPT, "text/event-stream")
        .body(())
        .map_err(|e| ProxyError::Upstream(UpstreamError::Http(e.to_string())))?
        .into_parts();
    let body = http_body_util::Empty::<Bytes>::new();
    let answer = exchange(key, tcp, &authority, &parts, body, HOP_TIMEOUT, Some(tenant)).await?;
    if answer.status() != StatusCode::OK {
        let status = answer.status();
        return Err(ProxyError::Upstream(UpstreamError::Http(format!(
            "the node answered {status}"
        ))));
    }
    Ok(answer.into_body())
}

/// A connection to the node at `owner` (`http://host:port`), and its `host:port`.
async fn connect(owner: &str) -> Result<(TcpStream, String), ProxyError> {
    let authority = owner
        .strip_prefix("http://")
        .ok_or_else(|| ProxyError::Upstream(UpstreamError::Http(format!("node address {owner:?} is not http://"))))?
        .trim_end_matches('/')
        .to_owned();
    let tcp = tokio::time::timeout(HOP_TIMEOUT, TcpStream::connect(&authority))
        .await
        .map_err(|_| UpstreamError::Timeout(HOP_TIMEOUT))?
        .map_err(UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    Ok((tcp, authority))
}

async fn send(
    key: &ClusterKey,
    tcp: TcpStream,
    authority: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    answer_within: Duration,
    tenant: &Tenant,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let collect = async {
        let answer = exchange(key, tcp, authority, parts, Full::new(body), answer_within, Some(tenant)).await?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ProxyError::Upstream(UpstreamError::Http(e.to_string())))?
            .to_bytes();
        Ok::<_, ProxyError>(Response::from_parts(parts, Full::new(body)))
    };
    tokio::time::timeout(answer_within, collect)
        .await
        .map_err(|_| UpstreamError::Timeout(answer_within))?
}

/// Sends the request to the owner on `tcp`; answers once its head has come (within
/// `answer_within`), the body still arriving.
async fn exchange<B>(
    key: &ClusterKey,
    tcp: TcpStream,
    authority: &str,
    parts: &hyper::http::request::Parts,
    body: B,
    answer_within: Duration,
    tenant: Option<&Tenant>,
) -> Result<Response<Incoming>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = |e: String| ProxyError::Upstream(UpstreamError::Http(e));
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut onward = Request::builder().method(parts.method.clone()).uri(target.to_owned());
    // Hop-by-hop and framing headers are the connection's own; hyper writes its own.
    let own = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::UPGRADE,
    ];
    for (name, value) in &parts.headers {
        if !own.contains(name) && name.as_str() != "keep-alive" && !stays_here(name) {
            onward = onward.header(name, value);
        }
    }
    let onward = onward
        .header(header::HOST, authority)
        .header(HOP_HEADER, hop_header(key, &parts.method, target, tenant))
        .body(body)
        .map_err(|e| http(e.to_string()))?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| http(e.to_string()))?;
        // Runs until the answer's body has been read (or dropped).
        tokio::spawn(conn);
        sender.send_request(onward).await.map_err(|e| http(e.to_string()))
    };
    tokio::time::timeout(answer_within, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout(answer_within))?
}

/// A WebSocket upgrade: the client's request goes on as it is; the owner's `101` comes
/// back, and the two connections are relayed.
async fn upgrade(
    broker: &std::sync::Arc<Broker>,
    key: &ClusterKey,
    mut tcp: TcpStream,
    authority: &str,
    request: Request<Incoming>,
    tenant: Option<&Tenant>,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let http = |e: String| ProxyError::Upstream(UpstreamError::Http(e));
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let hop = hop_header(key, request.method(), target, tenant);
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nHost: {authority}\r\n{HOP_HEADER}: {hop}\r\n",
        request.method()
    );
    for (name, value) in request.headers() {
        if name != header::HOST && !stays_here(name) {
            let value = value.to_str().map_err(|_| http("a header is not text".into()))?;
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    let exchange = async {
        tcp.write_all(head.as_bytes()).await.map_err(UpstreamError::Connect)?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.map_err(UpstreamError::Connect)?;
            if n == 0 {
                return Err(http("the node closed the connection".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = answer
                        .code
                        .and_then(|code| StatusCode::from_u16(code).ok())
                        .ok_or_else(|| http("the node's answer has no valid status".into()))?;
                    let mut response = Response::builder().status(status);
                    let mut content_length = 0usize;
                    for h in answer.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        }
                        response = response.header(h.name, h.value);
                    }
                    let mut rest = buf.split_off(len);
                    if status != StatusCode::SWITCHING_PROTOCOLS {
                        // A refusal (401, 410, …): its body, as the owner wrote it.
                        while rest.len() < content_length.min(MAX_ANSWER) {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                            }
                        }
                        rest.truncate(content_length);
                    }
                    let response = response
                        .body(Full::new(Bytes::new()))
                        .map_err(|e| http(e.to_string()))?;
                    return Ok((response, rest));
                }
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
                Ok(httparse::Status::Partial) => return Err(http("the node's answer head is too long".into())),
                Err(e) => return Err(http(e.to_string())),
            }
        }
    };
    let (response, rest) = tokio::time::timeout(HOP_TIMEOUT, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout(HOP_TIMEOUT))??;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Full::new(Bytes::from(rest))));
    }
    let broker = broker.clone();
    let span = tracing::info_span!("hop", owner = %authority);
    broker.tracker().clone().spawn(
        async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let _open = OpenConnection::new(broker.metrics());
            let limits = relay::Limits::from_config(broker.config());
            let shutdown = broker.shutdown().clone();
            // The owner ends the session and says why; this node only says it is stopping.
            let end_reason = || shutdown.is_cancelled().then_some(EndReason::Shutdown);
            let owner = tcp_peer(tcp, rest);
            match Side::client(upgraded) {
                Side::Tcp(client, early) => {
                    relay::relay(
                        tcp_peer(client, early),
                        owner,
                        &shutdown,
                        end_reason,
                        limits,
                        broker.metrics(),
                    )
                    .await
                }
                other => relay::relay(other.boxed(), owner, &shutdown, end_reason, limits, broker.metrics()).await,
            }
        }
        .instrument(span),
    );
    Ok(response)
}
