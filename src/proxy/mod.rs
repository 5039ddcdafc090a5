//! The CDP proxy: `/devtools/browser/{session}` and `/devtools/page/{target}` WebSockets,
//! relayed frame by frame to the session's browser ([`relay`]), and the per-session
//! [`discovery`] endpoints (`…/json/version`, `/json/list`, …) with every URL pointing back
//! through here.
//!
//! The token is checked before anything reaches Chrome and is never passed on to it.
//! When a session ends every connection gets a close frame whose code says why
//! (see [`crate::store::EndReason::close_code`]). Refusals are [`ProxyError`]s; `http`
//! decides their status codes.

pub(crate) mod console_frames;
pub(crate) mod cores;
pub(crate) mod discovery;
pub(crate) mod error;
pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod hop;
pub(crate) mod one_context;
pub(crate) mod relay;
pub(crate) mod tap;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::Instrument;

use crate::artifacts::cdp_log::CdpLog;
use crate::auth::{Scope, TokenError};
use crate::broker::Broker;
use crate::browser::upstream::UpstreamStream;
use crate::metrics::Metrics;
use crate::session::{ConnectionSlot, Session};
use discovery::is_target_id;
pub(crate) use error::ProxyError;
use handshake::{upgrade_response, websocket_key};

type Body = Full<Bytes>;

pub(crate) async fn handle(broker: Arc<Broker>, request: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let token = crate::auth::query_token(&query);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match segments.as_slice() {
        ["browser", sid] => {
            let session = authorize(&broker, token.as_deref(), Some(sid)).await?;
            let path = session.upstream.browser_path.clone();
            upgrade(&broker, session, request, path).await
        }
        ["browser", sid, "json", rest @ ..] => {
            let session = authorize(&broker, token.as_deref(), Some(sid)).await?;
            discovery::discovery(
                &broker,
                &session,
                rest,
                request.method(),
                &query,
                token.as_deref().unwrap_or(""),
            )
            .await
        }
        ["page", target] if is_target_id(target) => {
            let session = authorize(&broker, token.as_deref(), None).await?;
            let path = format!("/devtools/page/{target}");
            upgrade(&broker, session, request, path).await
        }
        _ => Err(ProxyError::NotFound),
    }
}

/// The active session the token grants; for browser paths it must name `path_sid`.
async fn authorize(broker: &Broker, token: Option<&str>, path_sid: Option<&str>) -> Result<Arc<Session>, ProxyError> {
    let grant = broker.tokens().session_of(token, Scope::Cdp)?;
    if path_sid.is_some_and(|p| p != grant.session) {
        return Err(TokenError::WrongSession.into());
    }
    // Only while the session is the token's tenant's.
    Ok(broker.active(Some(&grant.tenant), &grant.session).await?)
}

/// Counts a new WebSocket connection of `session`, within its limit.
pub(crate) fn claim_connection(broker: &Broker, session: &Arc<Session>) -> Result<ConnectionSlot, ProxyError> {
    let max = broker.config().max_connections_per_session;
    session.claim_connection(max).ok_or_else(|| {
        broker.metrics().connections_refused.inc();
        ProxyError::ConnectionLimit(max)
    })
}

/// Counts a new live viewer of `session`, within the viewers' half of its limit.
pub(crate) fn claim_viewer(broker: &Broker, session: &Arc<Session>) -> Result<ConnectionSlot, ProxyError> {
    let max = broker.config().max_connections_per_session;
    session.claim_viewer(max).ok_or_else(|| {
        broker.metrics().connections_refused.inc();
        ProxyError::ConnectionLimit(max)
    })
}

/// Connects to the browser first (so a dead browser is a 502, not a dropped socket),
/// answers 101, and relays in a task of its own.
async fn upgrade(
    broker: &Arc<Broker>,
    session: Arc<Session>,
    request: Request<Incoming>,
    upstream_path: String,
) -> Result<Response<Body>, ProxyError> {
    let key = websocket_key(&request)?;
    let slot = claim_connection(broker, &session)?;
    let (browser, early) = session
        .upstream
        .connect_raw(
            &upstream_path,
            broker.egress(),
            session.upstream.timeout(broker.config().byo_timeout()),
        )
        .await?;
    // Told once the browser is reached: a refused connection is no client.
    let slot = slot.announce("cdp");

    let tracker = broker.tracker().clone();
    let broker = broker.clone();
    let session_span = session.span();
    let span = tracing::info_span!(parent: &session_span, "proxy.connection");
    let relays = tracker.clone();
    // Open from the answer on, wherever the relay then runs, until it ends.
    let open = OpenConnection::new(broker.metrics());
    tracker.spawn(
        async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (client, browser) = (Side::client(upgraded), Side::browser(browser, early));
            if let Some(log) = session.cdp_log.get() {
                let _open = open;
                let _slot = slot;
                let (client, browser) = tapped(client.boxed(), browser.boxed(), log.clone());
                return run_relay(client, browser, &session, &broker).await;
            }
            match (client, browser) {
                // Plain TCP on both sides (the usual case): relayed without any indirection,
                // on a core's own event loop.
                (Side::Tcp(client, client_early), Side::Tcp(browser, browser_early)) => {
                    let cores = broker.config().relay_on_cores.then(cores::Cores::get).flatten();
                    let sched_batch = broker.config().relay_sched_batch;
                    let relay = async move |client: TcpStream, browser: TcpStream| {
                        let _open = open;
                        let _slot = slot;
                        let (client, browser) = (tcp_peer(client, client_early), tcp_peer(browser, browser_early));
                        run_relay(client, browser, &session, &broker).await
                    };
                    match (cores, client.into_std(), browser.into_std()) {
                        (Some(cores), Ok(client), Ok(browser)) => {
                            let span = tracing::Span::current();
                            cores.spawn(sched_batch, move || {
                                // Registered with the event loop of the core it runs on.
                                let on_core = async move {
                                    if let (Ok(client), Ok(browser)) =
                                        (TcpStream::from_std(client), TcpStream::from_std(browser))
                                    {
                                        relay(client, browser).await
                                    }
                                };
                                relays.track_future(on_core.instrument(span))
                            });
                        }
                        (None, Ok(client), Ok(browser)) => {
                            if let (Ok(client), Ok(browser)) =
                                (TcpStream::from_std(client), TcpStream::from_std(browser))
                            {
                                relay(client, browser).await
                            }
                        }
                        _ => tracing::debug!("a relayed connection could not be handed to a core"),
                    }
                }
                (client, browser) => {
                    let _open = open;
                    let _slot = slot;
                    run_relay(client.boxed(), browser.boxed(), &session, &broker).await
                }
            }
        }
        .instrument(span),
    );

    Ok(upgrade_response(&key))
}

/// Both read halves of a relayed connection, seen by the session's CDP log.
fn tapped(mut client: BoxedPeer, mut browser: BoxedPeer, log: Arc<CdpLog>) -> (BoxedPeer, BoxedPeer) {
    let mut connection = tap::ConnectionLog::new(log, "cdp");
    connection.feed(tap::Way::ToBrowser, &client.early);
    connection.feed(tap::Way::ToClient, &browser.early);
    let connection = Arc::new(std::sync::Mutex::new(connection));
    client.rx = Box::new(tap::Tapped {
        inner: client.rx,
        log: connection.clone(),
        way: tap::Way::ToBrowser,
    });
    browser.rx = Box::new(tap::Tapped {
        inner: browser.rx,
        log: connection,
        way: tap::Way::ToClient,
    });
    (client, browser)
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One side of a relayed connection, with the bytes it sent that were read already.
pub(crate) enum Side {
    Tcp(TcpStream, Vec<u8>),
    Other(Box<dyn Io>, Vec<u8>),
}

pub(crate) type BoxedPeer = relay::Peer<Box<dyn AsyncRead + Unpin + Send>, Box<dyn AsyncWrite + Unpin + Send>>;

impl Side {
    /// The client's connection, unwrapped from hyper when it is plain TCP.
    pub(crate) fn client(upgraded: Upgraded) -> Side {
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

    pub(crate) fn boxed(self) -> BoxedPeer {
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
    CR: relay::Source,
    CW: AsyncWrite + Unpin,
    BR: relay::Source,
    BW: AsyncWrite + Unpin,
{
    let mut limits = relay::Limits::from_config(broker.config());
    // A managed browser runs the console patch; a context session's filter drops its frame
    // itself, and a user's own browser runs none.
    limits.console_frames = !session.upstream.external && session.upstream.scope.is_none();
    limits.one_context = session.upstream.one_context;
    if session.upstream.scope.is_some() {
        // Its filter parses every message of the client: one past the parsing budget is
        // refused here, at its frame header, before anything holds it.
        limits.max_client_message = broker.config().max_parsed_message();
    }
    relay::relay(
        client,
        browser,
        session.ended(),
        || session.end_reason(),
        limits,
        broker.metrics(),
    )
    .await
}

pub(crate) fn tcp_peer(tcp: TcpStream, early: Vec<u8>) -> relay::Peer<OwnedReadHalf, OwnedWriteHalf> {
    let (rx, tx) = tcp.into_split();
    relay::Peer { rx, tx, early }
}

/// Counts a connection as open for as long as it lives.
pub(crate) struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    pub(crate) fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.proxy_connections.inc();
        metrics.proxy_connections_open.inc();
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.proxy_connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ids_cannot_escape_the_path() {
        assert!(is_target_id("E2B5C1A9D7F0431B8C0E5D2A3B4C5D6E"));
        assert!(!is_target_id("../json"));
        assert!(!is_target_id("a?b"));
        assert!(!is_target_id(""));
        assert!(error::is_unknown_target(500, b"No such target id: X"));
        assert!(!error::is_unknown_target(500, b"Internal"));
    }
}
