//! Live view: `metadata.live_url` opens a page (embedded HTML and JavaScript, no build
//! step) that shows the session's active tab through a CDP screencast and forwards mouse,
//! wheel and keyboard input, so a person can log in by hand mid-run.
//!
//! The page speaks CDP to the session's browser through `/live/{session}/cdp`, on its own
//! connection. The broker passes on only the commands a viewer needs, and none of the
//! input ones for a read-only link (what those are is [`crate::browser::live_filter`]'s to
//! say; this module wires the sockets); its token is scoped to viewing that one session and
//! expires with it. Refusals are `ApiError`s: a page for the page, JSON for the socket and
//! the recording unless a browser asks for HTML.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use super::Body;
use super::error::{ApiError, Attempt, session_refusal};
use crate::auth::Scope;
use crate::broker::{Broker, SessionError};
use crate::browser::live_filter;
use crate::metrics::Metrics;
use crate::proxy::handshake::{upgrade_response, websocket_key};
use crate::proxy::{self, relay};
use crate::session::Session;
use crate::store::EndReason;

const PAGE: &str = include_str!("live.html");
/// The broker's own event on a viewer's socket: a page of the session shows a challenge.
const CHALLENGE_EVENT: &str = "cdpgate.challengeSeen";

pub(crate) async fn handle(broker: Arc<Broker>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let token = crate::auth::query_token(request.uri().query().unwrap_or(""));
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let (sid, what) = match segments.as_slice() {
        [sid] => (*sid, Part::Page),
        [sid, "cdp"] => (*sid, Part::Socket),
        [sid, "recording"] => (*sid, Part::Recording),
        _ => {
            let refusal = ApiError::not_found("There is no live view here.");
            return answer_refusal(broker.metrics(), Part::Page, request.headers(), refusal);
        }
    };
    let headers = request.headers().clone();
    let refuse = |e: ApiError| answer_refusal(broker.metrics(), what, &headers, e);
    // An expired link still opens the recording of its ended session (checked below).
    let (claims, current) = match broker.tokens().decode(token.as_deref()) {
        Ok(claims) => (Ok(claims), true),
        Err(_) => (broker.tokens().decode_expired_too(token.as_deref()), false),
    };
    let Some(grant) = claims.ok().filter(|g| g.session == sid) else {
        return refuse(invalid_link());
    };
    let read_only = match grant.scope {
        Scope::Live => false,
        Scope::LiveReadOnly => true,
        Scope::Cdp => return refuse(invalid_link()),
    };
    // Only while the session is the token's tenant's.
    let session = match broker.active(Some(&grant.tenant), sid).await {
        Ok(session) if current => session,
        Ok(_) => return refuse(invalid_link()),
        Err(SessionError::Ended(status)) => {
            let files = broker.artifacts().existing(sid);
            let recorded = files
                .as_ref()
                .is_some_and(|f| f.recording().is_some() && f.recording_path().is_file());
            return match what {
                Part::Page if recorded => recording_page(sid, token.as_deref().unwrap_or("")),
                Part::Recording => {
                    let head = request.method() == hyper::Method::HEAD;
                    match super::files::serve_recording(files.as_deref(), request.headers(), head).await {
                        Ok(served) => served,
                        Err(e) => refuse(e),
                    }
                }
                _ => refuse(session_refusal(SessionError::Ended(status), Attempt::View)),
            };
        }
        Err(e) => {
            if let SessionError::Store(e) = &e {
                tracing::warn!(error = %e, "live view: session lookup failed");
            }
            return refuse(session_refusal(e, Attempt::View));
        }
    };
    let result = match what {
        Part::Page => {
            let html = PAGE.replace("{{READ_ONLY}}", if read_only { "true" } else { "false" });
            Ok(html_response(StatusCode::OK, html))
        }
        Part::Recording => {
            // The recording so far, while the session runs.
            let files = broker.artifacts().existing(sid);
            let head = request.method() == hyper::Method::HEAD;
            super::files::serve_recording(files.as_deref(), request.headers(), head).await
        }
        Part::Socket => viewer_socket(&broker, session, request, read_only).await,
    };
    result.unwrap_or_else(refuse)
}

/// What a live view link leads to.
#[derive(Clone, Copy)]
enum Part {
    Page,
    Socket,
    Recording,
}

fn invalid_link() -> ApiError {
    ApiError::bad_link("This live view link is not valid, or it has expired. Ask for a new link to the session.")
}

/// A refusal, logged and counted as every other: the page's as a readable page; the
/// socket's and the recording's as JSON (`{"detail": …}`, as the API document says),
/// unless a browser navigating there asks for HTML.
fn answer_refusal(metrics: &Metrics, what: Part, headers: &HeaderMap, e: ApiError) -> Response<Body> {
    super::error::record(metrics, &e);
    let wants_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    match what {
        Part::Page => page(e.status, &e.detail),
        Part::Socket | Part::Recording if wants_html => page(e.status, &e.detail),
        Part::Socket | Part::Recording => e.into_response(),
    }
}

/// The page of an ended session that was recorded: the recording, to play and seek.
fn recording_page(sid: &str, token: &str) -> Response<Body> {
    let token: String = percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC).to_string();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Recording · cdpgate</title>\
         <style>body{{font-family:system-ui,sans-serif;background:#15171a;color:#e6e6e6;margin:0;display:flex;\
         flex-direction:column;height:100vh}}header{{padding:.4rem .6rem;background:#202328}}main{{flex:1;display:flex;\
         align-items:center;justify-content:center}}video{{max-width:100%;max-height:100%;background:#000}}</style>\
         </head><body><header><strong>cdpgate</strong> · this session has ended; its recording:</header><main>\
         <video id=\"recording\" controls autoplay muted playsinline src=\"/live/{sid}/recording?token={token}\"></video>\
         </main></body></html>"
    );
    super::html_page(
        StatusCode::OK,
        html,
        "default-src 'none'; style-src 'unsafe-inline'; media-src 'self'",
    )
}

/// A readable page for whoever opened a link that does not lead to a session.
fn page(status: StatusCode, message: &str) -> Response<Body> {
    // A refusal's words may quote what a client gave (a host name): text, never markup.
    let message = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Live view · cdpgate</title>\
         <style>body{{font-family:system-ui,sans-serif;background:#15171a;color:#e6e6e6;display:flex;\
         align-items:center;justify-content:center;height:100vh;margin:0;font-size:1.3rem;text-align:center}}</style>\
         </head><body><p id=\"message\">{message}</p></body></html>"
    );
    html_response(status, html)
}

fn html_response(status: StatusCode, html: String) -> Response<Body> {
    super::html_page(
        status,
        html,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'",
    )
}

async fn viewer_socket(
    broker: &Arc<Broker>,
    session: Arc<Session>,
    request: Request<Incoming>,
    read_only: bool,
) -> Result<Response<Body>, ApiError> {
    let key = websocket_key(&request)?;
    let slot = proxy::claim_viewer(broker, &session)?;
    let path = session.upstream.browser_path.clone();
    let timeout = session.upstream.timeout(broker.config().byo_timeout());
    let (browser, _) = session.upstream.connect_raw(&path, broker.egress(), timeout).await?;
    let slot = slot.announce(if read_only {
        "live_viewer_read_only"
    } else {
        "live_viewer"
    });
    let broker = broker.clone();
    let tracker = broker.tracker().clone();
    let session_span = session.span();
    let span = tracing::info_span!(parent: &session_span, "live", read_only);
    tracker.spawn(
        async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let _slot = slot;
            // The viewer's messages are parsed: a larger one is refused before it is read.
            let viewer_config = Some(broker.config().parsed_ws_config());
            let viewer = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, viewer_config).await;
            let browser =
                WebSocketStream::from_raw_socket(browser, Role::Client, Some(broker.config().ws_config())).await;
            let stall = Duration::from_millis(broker.config().write_stall_timeout_ms);
            relay_filtered(viewer, browser, &session, read_only, broker.metrics(), stall).await;
        }
        .instrument(span),
    );
    Ok(super::whole(upgrade_response(&key)))
}

/// Sends `message` unless `stall` passes first: a peer that stops reading is gone, and the
/// relay, which waits on no send for longer, still sees the session end.
async fn send_within<S>(tx: &mut S, message: Message, stall: Duration) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    matches!(tokio::time::timeout(stall, tx.send(message)).await, Ok(Ok(())))
}

/// Passes a viewer's allowed commands to the browser and everything back; refuses the
/// rest with a CDP error. Ends with the session, telling the page why. A side that reads
/// nothing for `stall` while a message waits for it ends the relay.
async fn relay_filtered<V, B>(
    viewer: WebSocketStream<V>,
    browser: WebSocketStream<B>,
    session: &Session,
    read_only: bool,
    metrics: &Metrics,
    stall: Duration,
) where
    V: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut viewer_tx, mut viewer_rx) = viewer.split();
    let (mut browser_tx, mut browser_rx) = browser.split();
    // The challenges the session's pages show, told to the page as they come (those seen
    // before it connected first), so that a person knows there is one to pass.
    let mut challenges = session.challenges.watch();
    challenges.mark_changed();
    let mut told = 0;
    enum Ending {
        Ended,
        ViewerGone,
        BrowserGone,
        /// The viewer sent a message past the parsing budget.
        TooBig,
    }
    let ending = loop {
        tokio::select! {
            biased;
            _ = session.ended().cancelled() => break Ending::Ended,
            Ok(()) = challenges.changed() => {
                let list = session.challenges.list();
                let mut gone = false;
                for challenge in list.iter().skip(told) {
                    let said = json!({"method": CHALLENGE_EVENT,
                        "params": {"kind": challenge.kind, "url": challenge.url}});
                    if !send_within(&mut viewer_tx, Message::text(said.to_string()), stall).await {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break Ending::ViewerGone;
                }
                told = list.len();
            }
            m = viewer_rx.next() => match m {
                Some(Ok(Message::Text(text))) => match live_filter::check(&text, read_only) {
                    // Passed on as it came: no copy of a large message is made here.
                    Ok(()) => {
                        if !send_within(&mut browser_tx, Message::Text(text), stall).await {
                            break Ending::BrowserGone;
                        }
                    }
                    Err(refusal) => {
                        if !send_within(&mut viewer_tx, Message::text(refusal.to_string()), stall).await {
                            break Ending::ViewerGone;
                        }
                    }
                },
                Some(Err(WsError::Capacity(_))) => break Ending::TooBig,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ending::ViewerGone,
                Some(Ok(_)) => {}
            },
            m = browser_rx.next() => match m {
                Some(Ok(m @ Message::Text(_))) => {
                    if !send_within(&mut viewer_tx, m, stall).await {
                        break Ending::ViewerGone;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ending::BrowserGone,
                Some(Ok(_)) => {}
            },
        }
    };
    let ended = match ending {
        Ending::Ended => true,
        Ending::ViewerGone => false,
        Ending::TooBig => {
            let _ = tokio::time::timeout(relay::EXIT_GRACE, browser_tx.close()).await;
            let frame = CloseFrame {
                code: CloseCode::Size,
                reason: "message too big".into(),
            };
            send_within(&mut viewer_tx, Message::Close(Some(frame)), relay::EXIT_GRACE).await;
            metrics.record_close(1009);
            // The rest of the message is still coming: read it away (unparsed, a buffer at
            // a time) so the viewer, done sending, reads the close instead of a reset.
            if let Ok(mut viewer) = viewer_tx.reunite(viewer_rx) {
                let drain = async {
                    let mut sink = vec![0u8; 64 * 1024];
                    while matches!(viewer.get_mut().read(&mut sink).await, Ok(n) if n > 0) {}
                };
                let _ = tokio::time::timeout(relay::EXIT_GRACE, drain).await;
            }
            return;
        }
        // The browser went away (its socket closed, or a write to it failed): most likely
        // the session is ending and its browser was released a moment after; the page is
        // told why once it has.
        Ending::BrowserGone => {
            let _ = tokio::time::timeout(relay::EXIT_GRACE, session.ended().cancelled()).await;
            session.ended().is_cancelled()
        }
    };
    let _ = tokio::time::timeout(relay::EXIT_GRACE, browser_tx.close()).await;
    if ended {
        let (code, reason) = session.end_reason().unwrap_or(EndReason::Terminated).close_code();
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        send_within(&mut viewer_tx, Message::Close(Some(frame)), relay::EXIT_GRACE).await;
        metrics.record_close(code);
        // Wait for the page's echo (or its hang-up). Dropped now, the socket would answer
        // the acks still coming with a reset, and a page whose write meets the reset
        // reports a lost connection before it reads the close frame.
        let echo = async { while let Some(Ok(_)) = viewer_rx.next().await {} };
        let _ = tokio::time::timeout(relay::CLOSE_GRACE, echo).await;
    }
    let _ = tokio::time::timeout(relay::EXIT_GRACE, viewer_tx.close()).await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use serde_json::json;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A browser socket that says nothing and fails every write: a browser killed as its
    /// session ended, before the relay heard of the end.
    struct KilledBrowser;

    impl tokio::io::AsyncRead for KilledBrowser {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl tokio::io::AsyncWrite for KilledBrowser {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const STALL: Duration = Duration::from_secs(2);

    /// A viewer that sends refused commands and never reads what comes back cannot hold
    /// the relay (its socket, the browser's, the write buffer) past the session's end.
    #[tokio::test]
    async fn a_viewer_that_never_reads_does_not_outlive_the_session() {
        let session = crate::session::external_session();
        let (page_end, viewer_end) = tokio::io::duplex(4096);
        let (_browser_end, relay_end) = tokio::io::duplex(64 * 1024);
        let mut page = WebSocketStream::from_raw_socket(page_end, Role::Client, None).await;
        let viewer = WebSocketStream::from_raw_socket(viewer_end, Role::Server, None).await;
        let browser = WebSocketStream::from_raw_socket(relay_end, Role::Client, None).await;
        let metrics = Metrics::default();
        let relay = relay_filtered(viewer, browser, &session, false, &metrics, STALL);
        let page_side = async {
            // Refused commands; their refusals fill the 4 KiB the page never reads, and
            // the relay's write waits.
            let sending = async {
                for id in 0..1000 {
                    let refused = json!({"id": id, "method": "X".repeat(200)});
                    if page.send(Message::text(refused.to_string())).await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await
            };
            let ending = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                session.end(EndReason::Terminated).unwrap();
                std::future::pending::<()>().await
            };
            futures_util::future::join(sending, ending).await;
        };
        let started = std::time::Instant::now();
        tokio::select! {
            biased;
            () = relay => {}
            () = page_side => unreachable!(),
            () = tokio::time::sleep(STALL + relay::EXIT_GRACE * 2) => panic!("the relay outlived the session"),
        }
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "the relay ended before the session"
        );
    }

    /// A viewer's command that finds the browser gone is not the end of the story: the
    /// session ends a moment later, and the page is told why (it said "connection lost").
    #[tokio::test]
    async fn a_viewer_whose_command_meets_a_killed_browser_hears_why_the_session_ended() {
        let session = crate::session::external_session();
        let (page_end, broker_end) = tokio::io::duplex(64 * 1024);
        let mut page = WebSocketStream::from_raw_socket(page_end, Role::Client, None).await;
        let viewer = WebSocketStream::from_raw_socket(broker_end, Role::Server, None).await;
        let browser = WebSocketStream::from_raw_socket(KilledBrowser, Role::Client, None).await;
        let metrics = Metrics::default();
        let relay = relay_filtered(viewer, browser, &session, false, &metrics, STALL);
        let page_side = async {
            let ack = json!({"id": 1, "method": "Page.screencastFrameAck", "params": {"sessionId": 1}});
            page.send(Message::text(ack.to_string())).await.unwrap();
            // The relay takes the command and fails to pass it before the session ends
            // (nothing outside shows the failed write; ended first, the test would pass
            // with the old loop too).
            tokio::time::sleep(Duration::from_millis(100)).await;
            session.end(EndReason::Terminated).unwrap();
            page.next().await
        };
        let ((), heard) = tokio::time::timeout(relay::EXIT_GRACE * 2, futures_util::future::join(relay, page_side))
            .await
            .expect("the relay ends with the session");
        let Some(Ok(Message::Close(Some(frame)))) = heard else {
            panic!("no close frame with a code: {heard:?}");
        };
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (4002, "session terminated")
        );
    }

    /// The page may still be sending acks as the session ends: the viewer's socket stays
    /// open for its echo, so a write after the close frame meets no reset (Chrome reports
    /// a write that meets one as a lost connection, before it reads the close frame).
    #[tokio::test]
    async fn the_viewer_socket_waits_for_the_pages_close_echo() {
        let session = crate::session::external_session();
        let (page_end, viewer_end) = tokio::io::duplex(64 * 1024);
        let (_browser_end, relay_end) = tokio::io::duplex(64 * 1024);
        let mut page = WebSocketStream::from_raw_socket(page_end, Role::Client, None).await;
        let viewer = WebSocketStream::from_raw_socket(viewer_end, Role::Server, None).await;
        let browser = WebSocketStream::from_raw_socket(relay_end, Role::Client, None).await;
        let metrics = Metrics::default();
        let relay = relay_filtered(viewer, browser, &session, false, &metrics, STALL);
        let page_side = async {
            session.end(EndReason::Terminated).unwrap();
            let Some(Ok(Message::Close(Some(frame)))) = page.next().await else {
                panic!("no close frame");
            };
            assert_eq!(u16::from(frame.code), 4002);
            // Time for a relay that does not wait to finish and drop the socket.
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A masked, empty ping: an ack in flight, as bytes on the wire.
            let late = page.get_mut().write_all(&[0x89, 0x80, 1, 2, 3, 4]).await;
            page.close(None).await.ok();
            late
        };
        let ((), late) = tokio::time::timeout(relay::EXIT_GRACE, futures_util::future::join(relay, page_side))
            .await
            .expect("the relay ends once the page echoes");
        late.expect("the page's late write reached an open socket");
    }

    /// An allowed command reaches the browser byte for byte as the viewer sent it (the
    /// live view makes no copy of it), a refused one not at all.
    #[tokio::test]
    async fn a_viewers_command_is_passed_on_as_it_came() {
        let session = crate::session::external_session();
        let (page_end, viewer_end) = tokio::io::duplex(64 * 1024);
        let (browser_end, relay_end) = tokio::io::duplex(64 * 1024);
        let mut page = WebSocketStream::from_raw_socket(page_end, Role::Client, None).await;
        let mut browser_side = WebSocketStream::from_raw_socket(browser_end, Role::Server, None).await;
        let viewer = WebSocketStream::from_raw_socket(viewer_end, Role::Server, None).await;
        let browser = WebSocketStream::from_raw_socket(relay_end, Role::Client, None).await;
        let metrics = Metrics::default();
        let relay = relay_filtered(viewer, browser, &session, true, &metrics, STALL);
        let sent = r#" {"method":"Page.enable", "id":3 ,"params":{"x":[0, 0]}} "#;
        let check = async {
            let refused = r#"{"id":2,"method":"Page.enable","x":1}"#;
            page.send(Message::text(refused)).await.unwrap();
            page.send(Message::text(sent)).await.unwrap();
            let Some(Ok(Message::Text(arrived))) = browser_side.next().await else {
                panic!("nothing reached the browser");
            };
            assert_eq!(arrived.as_str(), sent);
            session.end(EndReason::Terminated).unwrap();
        };
        tokio::time::timeout(relay::EXIT_GRACE * 2, futures_util::future::join(relay, check))
            .await
            .expect("the relay ends with the session");
    }
}
