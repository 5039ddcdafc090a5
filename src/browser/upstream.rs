//! Where a session's browser is and how to reach it: a managed browser on loopback, or a
//! user's own DevTools endpoint (bring your own browser), which is resolved and checked
//! against the egress policy again on every connection, and reached by the very address
//! that was checked.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::cdp;
use super::egress::{Egress, EgressError};
use super::filter::Root;
use super::scope::{ContextScope, pipe};
use crate::error::Origin;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Refused(#[from] EgressError),
    #[error("connection failed: {0}")]
    Connect(io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("the WebSocket upgrade was answered {status}")]
    Rejected { status: u16, body: Vec<u8> },
}

impl UpstreamError {
    /// A refused address is the egress policy working and an unknown target the client's
    /// mistake; the rest is the browser (or the user's endpoint) failing.
    pub fn origin(&self) -> Origin {
        match self {
            UpstreamError::Refused(_) => Origin::Client,
            UpstreamError::Rejected { status, body } if is_unknown_target(*status, body) => Origin::Client,
            _ => Origin::Upstream,
        }
    }
}

/// Chrome answers an unknown target id with 404, or 500 "No such target id".
pub(crate) fn is_unknown_target(status: u16, body: &[u8]) -> bool {
    status == 404 || body.starts_with(b"No such target")
}

/// A connection to a browser: plain TCP, TLS for `wss://`/`https://` endpoints, or the
/// near end of a context session's filter pipe.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Filtered(tokio::io::DuplexStream),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            UpstreamStream::Filtered(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            UpstreamStream::Filtered(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            UpstreamStream::Filtered(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            UpstreamStream::Filtered(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            UpstreamStream::Filtered(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
            UpstreamStream::Filtered(s) => s.is_write_vectored(),
        }
    }
}

/// A browser's DevTools server.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Host name or IP literal (IPv6 without brackets).
    host: String,
    port: u16,
    tls: bool,
    /// `host:port` as sent in `Host` and as Chrome writes it into the URLs it hands out.
    pub authority: String,
    /// Path (and query) of the browser target, e.g. `/devtools/browser/<uuid>`.
    pub browser_path: String,
    /// From `user:password@` in the user's URL, sent as Basic credentials.
    authorization: Option<String>,
    /// A user's endpoint: checked against the egress policy at every connection.
    pub external: bool,
    /// A context session's context: every connection goes through its filter.
    pub scope: Option<Arc<ContextScope>>,
    /// The browser holds one browser context (a one-process shell): clients' requests for
    /// another are refused on their way (`proxy::one_context`).
    pub one_context: bool,
}

/// Buffer of a filter pipe's in-memory connection, each way.
const PIPE_BUFFER: usize = 256 * 1024;

/// Managed browsers are on loopback; anything slower than this is broken.
const MANAGED_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    /// The WebSocket limits of a broker's own client that parses this browser's every
    /// answer (the MCP server, renders, single actions): a user's own browser may answer
    /// anything, so its messages are held to `max_parsed_message_bytes`, as clients' are
    /// (a parsed message costs many times its size); a managed Chrome's screenshots may be
    /// larger and come to `max_message_bytes`.
    pub fn parsed_ws_config(
        &self,
        config: &crate::config::Config,
    ) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        if self.external {
            config.parsed_ws_config()
        } else {
            config.ws_config()
        }
    }

    /// How long a connection or exchange with this browser may take: a user's own
    /// browser gets `byo_timeout`.
    pub fn timeout(&self, byo_timeout: Duration) -> Duration {
        if self.external { byo_timeout } else { MANAGED_TIMEOUT }
    }

    /// A browser this broker started, on loopback.
    pub fn managed(port: u16, browser_path: String) -> Upstream {
        Upstream {
            host: "127.0.0.1".into(),
            port,
            tls: false,
            authority: format!("127.0.0.1:{port}"),
            browser_path,
            authorization: None,
            external: false,
            scope: None,
            one_context: false,
        }
    }

    /// The browser's own DevTools URL, unfiltered, for the broker's own connections; none
    /// for a user's browser.
    pub fn own_ws_url(&self) -> Option<String> {
        (!self.external).then(|| format!("ws://{}{}", self.authority, self.browser_path))
    }

    /// The same browser, seen through a context session's filter.
    pub fn scoped(mut self, scope: Arc<ContextScope>) -> Upstream {
        self.scope = Some(scope);
        self
    }

    /// A user's endpoint from a parsed `ws`/`wss`/`http`/`https` URL; the path of the
    /// browser target is taken from the URL.
    pub fn external(url: &url::Url) -> Option<Upstream> {
        let tls = matches!(url.scheme(), "wss" | "https");
        let host = match url.host()? {
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        let mut browser_path = url.path().to_owned();
        if let Some(q) = url.query() {
            browser_path.push('?');
            browser_path.push_str(q);
        }
        let authorization = (!url.username().is_empty()).then(|| {
            let user = percent_decoded(url.username());
            let password = url.password().map(percent_decoded).unwrap_or_default();
            format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
        });
        Some(Upstream {
            host,
            port,
            tls,
            authority,
            browser_path,
            authorization,
            external: true,
            scope: None,
            one_context: false,
        })
    }

    /// The same server, with another browser path (from its `/json/version`).
    pub fn with_browser_path(mut self, path: String) -> Upstream {
        self.browser_path = path;
        self
    }

    /// Opens a connection to the server, checking an external one against `egress` and
    /// connecting to the address that passed.
    async fn open(&self, egress: &Egress, timeout: Duration) -> Result<UpstreamStream, UpstreamError> {
        tokio::time::timeout(timeout, async {
            let addrs: Vec<SocketAddr> = if self.external {
                egress.resolve(&self.host, self.port).await?
            } else {
                vec![SocketAddr::new([127, 0, 0, 1].into(), self.port)]
            };
            let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        if !self.tls {
                            return Ok(UpstreamStream::Plain(tcp));
                        }
                        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                            .map_err(|e| UpstreamError::Tls(io::Error::other(e)))?;
                        let tls = tls_connector().connect(name, tcp).await.map_err(UpstreamError::Tls)?;
                        return Ok(UpstreamStream::Tls(Box::new(tls)));
                    }
                    Err(e) => last_error = e,
                }
            }
            Err(UpstreamError::Connect(last_error))
        })
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    /// A WebSocket to `path`, with the handshake done by hand so that the relay can pass
    /// frames on as bytes. Answers the connection and whatever the server sent right after
    /// its `101` (the first bytes of its first frames).
    pub async fn connect_raw(
        &self,
        path: &str,
        egress: &Egress,
        timeout: Duration,
    ) -> Result<(UpstreamStream, Vec<u8>), UpstreamError> {
        let Some(scope) = &self.scope else {
            return self.handshake(path, egress, timeout).await;
        };
        // A context session: only its own pages, and always through its filter.
        let root = match path.strip_prefix("/devtools/page/") {
            Some(target) if !scope.owns(target).await => {
                let body = format!("No such target id: {target}").into_bytes();
                return Err(UpstreamError::Rejected { status: 500, body });
            }
            Some(_) => Root::Page,
            None => Root::Browser,
        };
        let (stream, early) = self.handshake(path, egress, timeout).await?;
        let (near, far) = tokio::io::duplex(PIPE_BUFFER);
        let browser = WebSocketStream::from_partially_read(stream, early, Role::Client, Some(scope.ws_config)).await;
        let client = WebSocketStream::from_raw_socket(far, Role::Server, Some(scope.client_ws_config)).await;
        tokio::spawn(pipe(scope.clone(), root, browser, client));
        Ok((UpstreamStream::Filtered(near), Vec::new()))
    }

    /// [`Upstream::connect_raw`] without a filter.
    async fn handshake(
        &self,
        path: &str,
        egress: &Egress,
        timeout: Duration,
    ) -> Result<(UpstreamStream, Vec<u8>), UpstreamError> {
        let mut stream = self.open(egress, timeout).await?;
        let key = {
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).expect("the operating system's random generator failed");
            BASE64.encode(nonce)
        };
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            self.authority
        );
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        let handshake = async {
            let io = |e: io::Error| UpstreamError::Http(e.to_string());
            stream.write_all(request.as_bytes()).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 2048];
            loop {
                let n = stream.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    return Err(UpstreamError::Http("the connection closed during the handshake".into()));
                }
                buf.extend_from_slice(&chunk[..n]);
                match parse_upgrade_response(&buf, &key)? {
                    None if buf.len() > MAX_HANDSHAKE => {
                        return Err(UpstreamError::Http("the handshake answer is too long".into()));
                    }
                    None => continue,
                    Some(Handshake::Accepted { header_len }) => return Ok(buf.split_off(header_len)),
                    Some(Handshake::Refused {
                        status,
                        header_len,
                        content_length,
                    }) => {
                        // Keep a little of the body: Chrome says why there ("No such target id").
                        let want = header_len + content_length.min(1024);
                        while buf.len() < want {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[header_len.min(buf.len())..want.min(buf.len())].to_vec();
                        return Err(UpstreamError::Rejected { status, body });
                    }
                }
            }
        };
        let early = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        Ok((stream, early))
    }

    /// One HTTP request to `path` on this server; answers status and body.
    pub async fn http(
        &self,
        method: Method,
        path: &str,
        egress: &Egress,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), UpstreamError> {
        let stream = self.open(egress, timeout).await?;
        let exchange = cdp::http_exchange(
            stream,
            &self.authority,
            self.authorization.as_deref(),
            method,
            path,
            None,
        );
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
            .map_err(|e| UpstreamError::Http(e.to_string()))
    }
}

/// Longest handshake answer read.
const MAX_HANDSHAKE: usize = 16 * 1024;

enum Handshake {
    Accepted {
        header_len: usize,
    },
    Refused {
        status: u16,
        header_len: usize,
        content_length: usize,
    },
}

/// Reads a complete upgrade answer from `buf`, or `None` if it is not all there yet.
fn parse_upgrade_response(buf: &[u8], key: &str) -> Result<Option<Handshake>, UpstreamError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let header_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(UpstreamError::Http(format!("not an HTTP answer ({e})"))),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        let content_length = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        return Ok(Some(Handshake::Refused {
            status,
            header_len,
            content_length,
        }));
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header("sec-websocket-accept").map(str::trim) != Some(expected.as_str()) {
        return Err(UpstreamError::Http(
            "the upgrade answer has a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    Ok(Some(Handshake::Accepted { header_len }))
}

/// One TLS client configuration for the process: the Mozilla roots, ring as provider.
pub(crate) fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_urls_keep_path_query_and_credentials() {
        let url = url::Url::parse("wss://user:p%40ss@Browsers.Example:9443/devtools/browser/abc?key=1").unwrap();
        let u = Upstream::external(&url).unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("browsers.example", 9443, true));
        assert_eq!(u.authority, "browsers.example:9443");
        assert_eq!(u.browser_path, "/devtools/browser/abc?key=1");
        assert_eq!(u.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        let u = Upstream::external(&url::Url::parse("http://[::1]/").unwrap()).unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("::1", 80, "[::1]"));
        assert!(u.authorization.is_none());
    }
}
