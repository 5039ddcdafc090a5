//! A context session's hold on its shared browser: its browser context, and the pipe that
//! puts the CDP [`filter`](super::filter) between each of its connections and Chrome.
//!
//! Every connection to a context session's browser (a client's, a live viewer's, a single
//! action's) goes through [`pipe`], so no path reaches Chrome unfiltered.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::cdp::{CallError, Client};
use super::filter::{Filter, Out, Root, Targets};
use crate::metrics::Metrics;

/// How long the broker's own commands to a shared browser may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after answering `Browser.close` the session ends.
const CLOSE_ANSWER_GRACE: Duration = Duration::from_millis(100);

/// A context session's browser context in a shared browser.
pub struct ContextScope {
    pub context: String,
    /// The shared browser's targets and their contexts.
    pub targets: Arc<Targets>,
    /// The broker's own connection to the shared browser.
    client: Arc<Client>,
    /// Cancelled when a client closes its browser (`Browser.close`, or disposing its own
    /// context): the session ends.
    pub close_requested: CancellationToken,
    metrics: Arc<Metrics>,
    /// Message and frame limits of the pipe's WebSocket to the browser.
    pub ws_config: WebSocketConfig,
    /// Those of its WebSocket to the client, whose every message the filter parses: a
    /// larger one is refused before it is read.
    pub client_ws_config: WebSocketConfig,
    /// The session's download folder: a client's `Browser.setDownloadBehavior` and
    /// `Page.setDownloadBehavior` are held to it (denied until it is set).
    pub download_dir: std::sync::OnceLock<String>,
    /// The session's files: the only ones a client may hand its pages.
    pub files_dir: std::sync::OnceLock<std::path::PathBuf>,
}

impl std::fmt::Debug for ContextScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextScope").field("context", &self.context).finish()
    }
}

impl ContextScope {
    pub fn new(
        context: String,
        targets: Arc<Targets>,
        client: Arc<Client>,
        metrics: Arc<Metrics>,
        ws_config: WebSocketConfig,
        client_ws_config: WebSocketConfig,
    ) -> ContextScope {
        ContextScope {
            context,
            targets,
            client,
            close_requested: CancellationToken::new(),
            metrics,
            ws_config,
            client_ws_config,
            download_dir: std::sync::OnceLock::new(),
            files_dir: std::sync::OnceLock::new(),
        }
    }

    /// Whether `target` is in the session's context, asking Chrome when it is not known.
    pub async fn owns(&self, target: &str) -> bool {
        if self.targets.context_of(target).is_none() {
            self.look_up(target).await;
        }
        self.targets.context_of(target).is_some_and(|c| c == self.context)
    }

    async fn look_up(&self, target: &str) {
        let params = json!({ "targetId": target });
        if let Ok(info) = self
            .client
            .call(None, "Target.getTargetInfo", params, CALL_TIMEOUT)
            .await
        {
            self.targets.learn(&info["targetInfo"]);
        }
    }

    /// Opens a tab at `url` in the session's context; answers its target id.
    pub async fn create_target(&self, url: &str) -> Result<String, CallError> {
        let params = json!({ "url": url, "browserContextId": self.context });
        let created = self
            .client
            .call(None, "Target.createTarget", params, CALL_TIMEOUT)
            .await?;
        let target = created["targetId"].as_str().unwrap_or_default().to_owned();
        self.targets.insert(&target, &self.context);
        Ok(target)
    }

    /// The session's targets, as far as the shared registry knows them.
    pub fn own_targets(&self) -> Vec<String> {
        self.targets.of_context(&self.context)
    }
}

/// Relays `client` and `browser` through a [`Filter`] until either side closes.
pub(crate) async fn pipe<B, C>(
    scope: Arc<ContextScope>,
    root: Root,
    mut browser: WebSocketStream<B>,
    mut client: WebSocketStream<C>,
) where
    B: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut filter = Filter::new(&scope.context, root, scope.targets.clone());
    if let Some(dir) = scope.download_dir.get() {
        filter = filter.with_download_dir(dir);
    }
    if let Some(dir) = scope.files_dir.get() {
        filter = filter.with_files_dir(dir.clone());
    }
    loop {
        // The browser's message the filter lets through unchanged.
        let mut passed = None;
        let outs = tokio::select! {
            message = client.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let mut outs = filter.on_client(&text, false);
                    if let [Out::Unknown(target)] = outs.as_slice() {
                        scope.look_up(target).await;
                        outs = filter.on_client(&text, true);
                    }
                    outs
                }
                Some(Ok(Message::Binary(_))) => Vec::new(), // CDP speaks text
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => Vec::new(),
            },
            message = browser.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let outs = filter.on_browser(&text);
                    if outs.contains(&Out::Pass) {
                        passed = Some(text);
                    }
                    outs
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    // Dropped without a close frame, as a browser that dies drops its
                    // socket: the relay then tells the client why the session ended.
                    return;
                }
                Some(Ok(_)) => Vec::new(),
            },
        };
        for out in outs {
            let sent = match out {
                Out::Browser(text) => browser.send(Message::text(text)).await,
                Out::Client(text) => client.send(Message::text(text)).await,
                Out::Pass => match passed.take() {
                    Some(text) => client.send(Message::Text(text)).await,
                    None => Ok(()),
                },
                Out::Refused(method) => {
                    scope.metrics.record_refused(&method);
                    Ok(())
                }
                Out::EndSession => {
                    // The answer reaches the client first, as Chrome's does before it exits.
                    let close = scope.close_requested.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(CLOSE_ANSWER_GRACE).await;
                        close.cancel();
                    });
                    Ok(())
                }
                Out::Unknown(_) => Ok(()),
            };
            if sent.is_err() {
                return; // either side gone: both sockets drop
            }
        }
    }
    let _ = browser.close(None).await;
    let _ = client.close(None).await;
}
