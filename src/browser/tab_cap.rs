//! Holds a session to `max_targets_per_session` tabs, on the broker's own CDP connection.
//!
//! The relay of a process session passes frames without reading them, and a context
//! session's filter should not need to count, so neither can refuse a `Target.createTarget`
//! (nor a page's `window.open`). Instead the broker discovers the session's targets (all of
//! its browser's, or those of its context in a shared browser) and closes every tab opened
//! while the session already has its number open: a client ends up with at most the
//! limit, whatever it asked for.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cdp::{CdpError, Client};
use crate::events::{EventType, SessionEvents};
use crate::metrics::Metrics;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Whose tabs to hold, and to how many.
pub(crate) struct TabCap {
    /// The browser's DevTools address.
    pub ws_url: String,
    /// The session's context in a shared browser; `None`: the whole browser is the session's.
    pub context: Option<String>,
    /// 0: no limit (the tabs are only followed, for the session's events).
    pub max: usize,
    pub metrics: Arc<Metrics>,
    pub until: CancellationToken,
    /// Where the session's tabs opened, navigated, closed and crashed are told.
    pub events: Option<Arc<SessionEvents>>,
}

/// Starts watching; answers once the session's open tabs are known, so that none opened
/// from then on passes unseen.
pub(crate) async fn start(cap: TabCap, tracker: &TaskTracker) -> Result<(), CdpError> {
    let client = Client::connect(&cap.ws_url).await?;
    let events = client.subscribe();
    // Chrome answers with a `targetCreated` for every target open now, then each new one.
    client
        .call(
            None,
            "Target.setDiscoverTargets",
            json!({ "discover": true }),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| CdpError::Protocol(format!("Target.setDiscoverTargets: {e:?}")))?;
    tracker.spawn(watch(client, events, cap).in_current_span());
    Ok(())
}

async fn watch(client: Client, mut events: tokio::sync::broadcast::Receiver<Arc<Value>>, cap: TabCap) {
    let mut open: Vec<String> = Vec::new();
    let max = if cap.max == 0 { usize::MAX } else { cap.max };
    // The session's tabs and their URLs, for its events.
    let mut tabs: std::collections::HashMap<String, String> = Default::default();
    let tell = |kind: EventType, data: Value| {
        if let Some(log) = &cap.events {
            log.emit(kind, data);
        }
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "tab watcher fell behind the browser's events");
                    continue;
                }
                Err(_) => return,
            },
            _ = cap.until.cancelled() => return,
            _ = client.closed().cancelled() => return,
        };
        let info = &event["params"]["targetInfo"];
        match event["method"].as_str() {
            Some("Target.targetCreated") if is_tab_of(info, cap.context.as_deref()) => {
                let Some(id) = info["targetId"].as_str() else { continue };
                if open.iter().any(|o| o == id) {
                    continue;
                }
                if open.len() < max {
                    open.push(id.to_owned());
                    let url = info["url"].as_str().unwrap_or_default();
                    tabs.insert(id.to_owned(), url.to_owned());
                    tell(EventType::TabOpened, json!({ "target_id": id, "url": url }));
                    continue;
                }
                cap.metrics.targets_closed.inc();
                tracing::info!(
                    max = cap.max,
                    "tab closed: the session has max_targets_per_session open"
                );
                let _ = client.send(None, "Target.closeTarget", json!({ "targetId": id }));
            }
            Some("Target.targetInfoChanged") => {
                let id = info["targetId"].as_str().unwrap_or_default();
                let url = info["url"].as_str().unwrap_or_default();
                if let Some(known) = tabs.get_mut(id)
                    && known != url
                {
                    url.clone_into(known);
                    tell(EventType::TabNavigated, json!({ "target_id": id, "url": url }));
                }
            }
            Some("Target.targetCrashed") => {
                let params = &event["params"];
                let id = params["targetId"].as_str().unwrap_or_default();
                if let Some(url) = tabs.get(id) {
                    tell(
                        EventType::PageCrashed,
                        json!({ "target_id": id, "url": url, "status": params["status"], "error_code": params["errorCode"] }),
                    );
                }
            }
            Some("Target.targetDestroyed") => {
                let id = event["params"]["targetId"].as_str().unwrap_or_default();
                open.retain(|o| o != id);
                if tabs.remove(id).is_some() {
                    tell(EventType::TabClosed, json!({ "target_id": id }));
                }
            }
            _ => {}
        }
    }
}

/// A tab (page target) of the session: in its context, when it has one.
fn is_tab_of(info: &Value, context: Option<&str>) -> bool {
    info["type"] == "page" && context.is_none_or(|c| info["browserContextId"] == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pages_of_the_sessions_context_count() {
        let page = json!({"type": "page", "targetId": "T1", "browserContextId": "C1"});
        assert!(is_tab_of(&page, None));
        assert!(is_tab_of(&page, Some("C1")));
        assert!(!is_tab_of(&page, Some("C2")));
        let worker = json!({"type": "service_worker", "targetId": "W", "browserContextId": "C1"});
        assert!(!is_tab_of(&worker, Some("C1")));
    }
}
