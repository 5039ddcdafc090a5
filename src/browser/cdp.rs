//! The broker's own small DevTools client: plain HTTP to a browser's `/json/*` endpoints
//! and one-off CDP commands to the broker's own browsers. Its HTTP exchange is shared: it
//! also carries requests to users' browsers (`upstream.rs`) and to the single-action model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::error::Origin;

/// Largest discovery answer read (`/json/protocol` is about 1 MB).
const MAX_DISCOVERY_BYTES: usize = 16 * 1024 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    #[error("cannot reach the browser: {0}")]
    Connect(std::io::Error),
    #[error("HTTP exchange with the browser failed: {0}")]
    Http(String),
    #[error("the browser did not answer in time")]
    Timeout,
    #[error("the browser's answer is not what DevTools sends: {0}")]
    Protocol(String),
    /// The browser understood the command and refused it (a CDP error answer).
    #[error("the browser refused {method}: {message}")]
    Refused { method: String, message: String },
}

impl CdpError {
    /// Every way a browser's DevTools connection fails is the browser's.
    pub fn origin(&self) -> Origin {
        Origin::Upstream
    }
}

/// A request to a DevTools HTTP endpoint at `addr` (host:port); answers status and body.
pub async fn http_request(addr: &str, method: Method, path: &str) -> Result<(StatusCode, Bytes), CdpError> {
    tokio::time::timeout(HTTP_TIMEOUT, async {
        let stream = TcpStream::connect(addr).await.map_err(CdpError::Connect)?;
        let _ = stream.set_nodelay(true);
        http_exchange(stream, addr, None, method, path, None).await
    })
    .await
    .map_err(|_| CdpError::Timeout)?
}

/// One HTTP/1.1 request on an open connection (`authority` is its `Host`), with optional
/// `Authorization` and JSON body; answers status and body (at most 16 MiB).
pub async fn http_exchange<S>(
    stream: S,
    authority: &str,
    authorization: Option<&str>,
    method: Method,
    path: &str,
    json: Option<Bytes>,
) -> Result<(StatusCode, Bytes), CdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| CdpError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let conn = tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    if let Some(auth) = authorization {
        request = request.header(hyper::header::AUTHORIZATION, auth);
    }
    if json.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(json.unwrap_or_default()))
        .map_err(|e| CdpError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_DISCOVERY_BYTES)
        .collect()
        .await
        .map_err(|e| CdpError::Http(e.to_string()))?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

/// `GET` a DevTools JSON endpoint and parse it.
pub async fn get_json(addr: &str, path: &str) -> Result<Value, CdpError> {
    let (status, body) = http_request(addr, Method::GET, path).await?;
    if !status.is_success() {
        return Err(CdpError::Protocol(format!("{path} answered {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| CdpError::Protocol(e.to_string()))
}

/// Sends one CDP command over a fresh connection to `ws_url` and returns its `result`.
pub async fn command(ws_url: &str, method: &str, params: Value) -> Result<Value, CdpError> {
    let mut connection = Connection::open(ws_url).await?;
    let result = connection.call(None, method, params).await;
    let _ = connection.ws.close(None).await;
    result
}

/// Evaluates `expression` in the browser's first page and returns its value.
pub async fn evaluate_in_first_page(addr: &str, expression: &str) -> Result<Value, CdpError> {
    let targets = get_json(addr, "/json/list").await?;
    let page = targets
        .as_array()
        .and_then(|list| list.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .ok_or_else(|| CdpError::Protocol("no page target".into()))?;
    let result = command(
        page,
        "Runtime.evaluate",
        json!({ "expression": expression, "returnByValue": true }),
    )
    .await?;
    Ok(result["result"]["value"].clone())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A CDP connection for a conversation of several commands, with pages attached in
/// flattened mode; answers requests intercepted by `Fetch` with an empty page, so pages
/// can be opened at any origin on a closed network (for reading and writing storage).
pub struct Connection {
    ws: Socket,
    next_id: u64,
    /// The browser context the conversation is about (a context session's), if not the
    /// default one: filled into the cookie and tab commands.
    context: Option<String>,
    /// Tabs `page_at` opened, to close when done.
    opened: Vec<String>,
    /// The origin `page_at` is opening: intercepted requests elsewhere fail.
    serving: Option<String>,
}

impl Connection {
    pub async fn open(ws_url: &str) -> Result<Connection, CdpError> {
        let (ws, _) = tokio::time::timeout(HTTP_TIMEOUT, tokio_tungstenite::connect_async(ws_url))
            .await
            .map_err(|_| CdpError::Timeout)?
            .map_err(|e| CdpError::Http(e.to_string()))?;
        Ok(Connection {
            ws,
            next_id: 0,
            context: None,
            opened: Vec::new(),
            serving: None,
        })
    }

    /// A conversation about one browser context of the browser at `ws_url`.
    pub async fn open_in(ws_url: &str, context: &str) -> Result<Connection, CdpError> {
        let mut conn = Connection::open(ws_url).await?;
        conn.context = Some(context.to_owned());
        Ok(conn)
    }

    /// Origins of the pages open now (in the connection's context, if it has one).
    pub async fn page_origins(&mut self) -> Result<Vec<String>, CdpError> {
        let targets = self.call(None, "Target.getTargets", json!({})).await?;
        Ok(targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["type"] == "page")
            .filter(|t| {
                self.context
                    .as_ref()
                    .is_none_or(|c| t["browserContextId"] == c.as_str())
            })
            .filter_map(|t| url::Url::parse(t["url"].as_str()?).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|u| u.origin().ascii_serialization())
            .collect())
    }

    /// Closes the tabs `page_at` opened.
    pub async fn close_pages(&mut self) {
        for target in std::mem::take(&mut self.opened) {
            let _ = self
                .call(None, "Target.closeTarget", json!({ "targetId": target }))
                .await;
        }
    }

    async fn send(&mut self, session: Option<&str>, method: &str, mut params: Value) -> Result<u64, CdpError> {
        if let Some(context) = &self.context
            && session.is_none()
            && matches!(
                method,
                "Storage.getCookies" | "Storage.setCookies" | "Target.createTarget"
            )
        {
            params["browserContextId"] = json!(context);
        }
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| CdpError::Http(e.to_string()))?;
        Ok(self.next_id)
    }

    /// Sends a command and waits for its result.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, CdpError> {
        let id = self.send(session, method, params).await?;
        tokio::time::timeout(HTTP_TIMEOUT, async {
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message.map_err(|e| CdpError::Http(e.to_string()))? else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).map_err(|e| CdpError::Protocol(e.to_string()))?;
                if reply["method"] == "Fetch.requestPaused" {
                    self.answer_paused(&reply).await?;
                    continue;
                }
                if reply["id"] != id {
                    continue;
                }
                if let Some(error) = reply.get("error") {
                    let message = error["message"]
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_owned);
                    return Err(CdpError::Refused {
                        method: method.to_owned(),
                        message,
                    });
                }
                return Ok(reply["result"].clone());
            }
            Err(CdpError::Protocol("the connection closed before the reply".into()))
        })
        .await
        .map_err(|_| CdpError::Timeout)?
    }

    /// Serves an intercepted request an empty page if it is for the origin being opened;
    /// fails it otherwise. Chrome upgrades `http://` navigations to hosts under a public
    /// suffix to `https://` first (HTTPS Upgrades) and goes back to `http://` when that
    /// fails: serving the upgrade would open the page at the wrong origin.
    async fn answer_paused(&mut self, paused: &Value) -> Result<(), CdpError> {
        let request_id = paused["params"]["requestId"].clone();
        let session = paused["sessionId"].as_str().map(str::to_owned);
        let origin = paused["params"]["request"]["url"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.origin().ascii_serialization());
        if origin.is_some() && origin == self.serving {
            let page = json!({
                "requestId": request_id,
                "responseCode": 200,
                "responseHeaders": [{"name": "content-type", "value": "text/html"}],
                "body": "PGh0bWw+PC9odG1sPg==", // "<html></html>"
            });
            self.send(session.as_deref(), "Fetch.fulfillRequest", page).await?;
        } else {
            let refused = json!({ "requestId": request_id, "errorReason": "ConnectionRefused" });
            self.send(session.as_deref(), "Fetch.failRequest", refused).await?;
        }
        Ok(())
    }

    /// A new page at `origin`, served locally (no network); answers its session id.
    pub async fn page_at(&mut self, origin: &str) -> Result<String, CdpError> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        if let Some(id) = target["targetId"].as_str() {
            self.opened.push(id.to_owned());
        }
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
        self.serving = Some(origin.to_owned());
        self.call(
            Some(&session),
            "Fetch.enable",
            json!({ "patterns": [{ "urlPattern": "*" }] }),
        )
        .await?;
        self.call(Some(&session), "Page.navigate", json!({ "url": format!("{origin}/") }))
            .await?;
        // The navigation commits once the paused request is answered; wait for the origin
        // (a loaded host took over a second: the budget was one second, seen in api_fuzz).
        for _ in 0..500 {
            let at = self.evaluate(&session, "location.origin").await?;
            if at == origin {
                return Ok(session);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(%origin, "the profile's browser did not open a page at the origin in 10 s");
        Err(CdpError::Timeout)
    }

    pub async fn evaluate(&mut self, session: &str, expression: &str) -> Result<Value, CdpError> {
        let result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await?;
        Ok(result["result"]["value"].clone())
    }
}

/// Callers waiting for the answer to each command id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A CDP connection that many callers share: answers matched to commands, events fanned
/// out to subscribers. Dropping it closes the connection.
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: broadcast::Sender<Arc<Value>>,
    next_id: AtomicU64,
    closed: CancellationToken,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Why a call of a [`Client`] failed.
#[derive(Debug, PartialEq)]
pub enum CallError {
    /// The browser answered with an error.
    Refused(String),
    /// No answer in time.
    Timeout,
    /// The connection is gone.
    Lost,
}

impl Client {
    /// Runs the connection `ws` until it closes or the client is dropped.
    pub fn start<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> Client
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(1024);
        let closed = CancellationToken::new();
        let writer = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader = {
            let (pending, events, closed) = (pending.clone(), events.clone(), closed.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else { continue };
                    let Ok(message) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = message["id"].as_u64() {
                        let waiter = pending.lock().expect("pending lock").remove(&id);
                        if let Some(waiter) = waiter {
                            let reply = match message.get("error") {
                                Some(e) => Err(e["message"].as_str().unwrap_or("unknown error").to_owned()),
                                None => Ok(message["result"].clone()),
                            };
                            let _ = waiter.send(reply);
                        }
                        continue;
                    }
                    let _ = events.send(Arc::new(message));
                }
                // The browser went away: every waiting call fails now rather than at its timeout.
                pending.lock().expect("pending lock").clear();
                closed.cancel();
            })
        };
        Client {
            out,
            pending,
            events,
            next_id: AtomicU64::new(0),
            closed,
            tasks: [writer, reader],
        }
    }

    /// Connects to a browser's or page's `ws_url` (the broker's own browsers, on loopback).
    pub async fn connect(ws_url: &str) -> Result<Client, CdpError> {
        let (ws, _) = tokio::time::timeout(HTTP_TIMEOUT, tokio_tungstenite::connect_async(ws_url))
            .await
            .map_err(|_| CdpError::Timeout)?
            .map_err(|e| CdpError::Http(e.to_string()))?;
        Ok(Client::start(ws))
    }

    /// Sends a command without waiting for its answer.
    pub fn send(&self, session: Option<&str>, method: &str, params: Value) -> Result<u64, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.out
            .send(Message::text(message.to_string()))
            .map_err(|_| CallError::Lost)?;
        Ok(id)
    }

    /// Sends a command and waits up to `timeout` for its result.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let (tx, rx) = oneshot::channel();
        // Registered before sending: the answer may come before `send` returns.
        let id = {
            let mut pending = self.pending.lock().expect("pending lock");
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            pending.insert(id, tx);
            id
        };
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        if self.out.send(Message::text(message.to_string())).is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(CallError::Lost);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(e))) => Err(CallError::Refused(e)),
            Ok(Err(_)) => Err(CallError::Lost),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(CallError::Timeout)
            }
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.events.subscribe()
    }

    /// Cancelled when the connection has closed.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}
