//! The hop to another node: a request about a session that runs elsewhere in the cluster
//! is sent to that node as it came, marked so that it is never sent on again. A WebSocket
//! upgrade is answered with the owner's own answer and then relayed frame by frame (the
//! owner's close codes, TTL cutoffs among them, reach the client unchanged); any other
//! request gets the owner's answer. The owner checks the API key or token itself.

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
use crate::broker::Broker;
use crate::browser::upstream::UpstreamError;
use crate::store::EndReason;

/// Marks a request that came from another node.
pub const HOP_HEADER: &str = "x-cdpgate-hop";
/// How long the owner may take to accept a connection and answer (a single action sent on
/// gets its own, longer, time).
pub const HOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer head or body carried back (discovery's protocol description is ~1 MB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Whether the request was sent on by another node.
pub fn is_hop<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(HOP_HEADER)
}

/// An answer carried back from the owner, its body streamed as it arrives (a session's
/// files and recordings can be large).
pub type Streamed = UnsyncBoxBody<Bytes, std::io::Error>;

/// Sends `request` to the node at `owner` (`http://host:port`) and answers as it does.
pub async fn forward(
    broker: &std::sync::Arc<Broker>,
    owner: &str,
    request: Request<Incoming>,
) -> Result<Response<Streamed>, ProxyError> {
    let (tcp, authority) = connect(owner).await?;
    if request.headers().contains_key(header::UPGRADE) {
        let answer = upgrade(broker, tcp, &authority, request).await?;
        return Ok(answer.map(|b| b.map_err(|never| match never {}).boxed_unsync()));
    }
    // Both bodies stream: the owner applies its own limits and timeouts to the request's.
    let (parts, body) = request.into_parts();
    let answer = exchange(tcp, &authority, &parts, body, HOP_TIMEOUT).await?;
    Ok(answer.map(|b| b.map_err(std::io::Error::other).boxed_unsync()))
}

/// Sends a request whose body was read already to the node at `owner`: a create placed
/// on another node is sent this way, to one node after another.
pub async fn send_to(
    owner: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    answer_within: Duration,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let (tcp, authority) = connect(owner).await?;
    send(tcp, &authority, parts, body, answer_within).await
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
    tcp: TcpStream,
    authority: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    answer_within: Duration,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let collect = async {
        let answer = exchange(tcp, authority, parts, Full::new(body), answer_within).await?;
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
    tcp: TcpStream,
    authority: &str,
    parts: &hyper::http::request::Parts,
    body: B,
    answer_within: Duration,
) -> Result<Response<Incoming>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = |e: String| ProxyError::Upstream(UpstreamError::Http(e));
    let mut onward = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned());
    // Hop-by-hop and framing headers are the connection's own; hyper writes its own.
    let own = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::UPGRADE,
    ];
    for (name, value) in &parts.headers {
        if !own.contains(name) && name.as_str() != "keep-alive" {
            onward = onward.header(name, value);
        }
    }
    let onward = onward
        .header(header::HOST, authority)
        .header(HOP_HEADER, "1")
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
    mut tcp: TcpStream,
    authority: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let http = |e: String| ProxyError::Upstream(UpstreamError::Http(e));
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nHost: {authority}\r\n{HOP_HEADER}: 1\r\n",
        request.method()
    );
    for (name, value) in request.headers() {
        if name != header::HOST {
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
                    let status = StatusCode::from_u16(answer.code.unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY);
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
    broker.tracker.clone().spawn(
        async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let _open = OpenConnection::new(&broker.metrics);
            let limits = relay::Limits::from_config(&broker.config);
            let shutdown = broker.shutdown.clone();
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
                        &broker.metrics,
                    )
                    .await
                }
                other => relay::relay(other.boxed(), owner, &shutdown, end_reason, limits, &broker.metrics).await,
            }
        }
        .instrument(span),
    );
    Ok(response)
}
