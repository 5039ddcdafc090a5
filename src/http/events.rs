//! A session's events, as a JSON page or a server-sent event stream (resumable with
//! `Last-Event-ID`), every event of a key's sessions as one stream, and a session's webhook
//! delivery log.
//!
//! A stream reader gets its own task and a channel of a few frames: a reader that does not
//! read holds up only that task; the live announcements it misses meanwhile (a bounded ring)
//! are read again from the session's log, so its stream has no gap and no duplicate.
//! One key holds at most `max_event_streams_per_key` streams at once on a node: each is a
//! task and a socket of the broker's.

use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::Body;
use super::error::{ApiError, Attempt, json_response, session_refusal};
use super::request::query_pairs;
use crate::auth::Tenant;
use crate::broker::Broker;
use crate::events::{Event, EventType, Live};
use crate::proxy::hop::{is_hop, open_stream};

/// A comment sent when nothing else was for this long, so proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Frames a stream may hold for a reader that does not read.
const STREAM_BUFFER: usize = 16;
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Events read from the log at a time by a stream catching up.
const CATCH_UP: usize = 256;
/// How often a key's stream looks for nodes that joined the cluster.
const NODE_LOOK: Duration = Duration::from_secs(5);
/// Largest event taken from another node's stream.
const MAX_RELAYED_EVENT: usize = 1 << 20;

/// Event streams open per broker (tests run several in one process) and key.
static STREAMS: LazyLock<DashMap<(usize, Tenant), usize>> = LazyLock::new(DashMap::new);

/// One of a key's places for an event stream, given back when its task ends.
struct StreamPlace((usize, Tenant));

impl StreamPlace {
    fn take(broker: &Broker, tenant: &Tenant) -> Result<StreamPlace, ApiError> {
        let max = broker.config().max_event_streams_per_key;
        let key = (std::ptr::from_ref(broker) as usize, tenant.clone());
        let mut open = STREAMS.entry(key.clone()).or_insert(0);
        if *open >= max {
            return Err(ApiError::too_many(format!(
                "At most {max} event streams per API key at once: close one first"
            )));
        }
        *open += 1;
        Ok(StreamPlace(key))
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        STREAMS.remove_if_mut(&self.0, |_, open| {
            *open -= 1;
            *open == 0
        });
    }
}

/// `GET /public/sessions/{id}/events`.
pub(crate) async fn session_events(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    broker
        .record(tenant, id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let query = query_pairs(request.uri().query().unwrap_or(""));
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        match query.iter().find(|(k, _)| k == name) {
            Some((_, v)) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number"))),
            None => Ok(None),
        }
    };
    let after = number("after")?.unwrap_or(0);
    if wants_stream(request) {
        let resume = match request.headers().get("last-event-id") {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id of this session"))?,
            ),
            None => None,
        };
        let place = StreamPlace::take(broker, tenant)?;
        return Ok(session_stream(broker, place, id.to_owned(), resume.unwrap_or(after)));
    }
    let limit = match number("limit")? {
        Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(_) => return Err(ApiError::bad_request(format!("limit must be within 1..={MAX_LIMIT}"))),
        None => DEFAULT_LIMIT,
    };
    let mut events = broker.events().read(id, after, limit + 1).unwrap_or_default();
    let has_more = events.len() > limit;
    events.truncate(limit);
    let next_after = events.last().map_or(after, |e| e.id);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "session_id": id,
            "events": events,
            "next_after": next_after,
            "has_more": has_more,
            "dropped": broker.events().dropped(id),
        }),
    ))
}

/// `GET /public/events`: every event of the key's sessions as they happen: this node's,
/// and in a cluster every other node's too, read from their own streams (a request sent on
/// by another node gets this node's only).
pub(crate) fn tenant_events(
    broker: &Arc<Broker>,
    tenant: Tenant,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !wants_stream(request) {
        return Err(ApiError::not_acceptable(
            "This endpoint is a stream: send Accept: text/event-stream",
        ));
    }
    let place = StreamPlace::take(broker, &tenant)?;
    let mut live = broker.events().subscribe();
    let shutdown = broker.shutdown().clone();
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    if broker.is_clustered() && !is_hop(request) {
        broker
            .tracker()
            .spawn(other_nodes_events(Arc::downgrade(broker), tenant.clone(), tx.clone()));
    }
    broker.tracker().spawn(async move {
        let _place = place;
        if tx.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_err() {
            return;
        }
        loop {
            let frame = tokio::select! {
                got = live.recv() => match got {
                    Ok(Live { tenant: t, event }) if t == tenant => frame(&event, false),
                    Ok(_) => continue,
                    // A reader this far behind is told how much it missed; each session's
                    // own stream has it all.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(KEEP_ALIVE) => Bytes::from_static(b": keep-alive\n\n"),
                _ = shutdown.cancelled() => return,
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(rx))
}

/// Keeps a stream of each other live node's events for `tenant` open into `tx` (nodes that
/// join are found at the next look), until the reader leaves or the broker stops.
async fn other_nodes_events(broker: Weak<Broker>, tenant: Tenant, tx: mpsc::Sender<Bytes>) {
    let open: Arc<DashMap<String, ()>> = Arc::default();
    loop {
        let Some(b) = broker.upgrade() else { return };
        for (node, alive) in b.cluster().await.unwrap_or_default() {
            if !alive || node.id == b.node() || open.insert(node.id.clone(), ()).is_some() {
                continue;
            }
            let (tx, open, tenant, broker) = (tx.clone(), open.clone(), tenant.clone(), broker.clone());
            b.tracker().spawn(async move {
                relay_node_events(broker, &node.url, &tenant, &tx).await;
                open.remove(&node.id);
            });
        }
        let shutdown = b.shutdown().clone();
        drop(b);
        tokio::select! {
            _ = tokio::time::sleep(NODE_LOOK) => {}
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Passes on the events of one node's stream (its own sessions only) until it or the
/// reader goes.
async fn relay_node_events(broker: Weak<Broker>, url: &str, tenant: &Tenant, tx: &mpsc::Sender<Bytes>) {
    let opened = match broker.upgrade().as_deref().and_then(Broker::cluster_key) {
        Some(key) => open_stream(key, url, "/public/events", tenant).await,
        None => return,
    };
    let mut body = match opened {
        Ok(body) => body,
        Err(e) => {
            tracing::debug!(node = url, error = %e, "could not read another node's events");
            return;
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tx.closed() => return,
        };
        let Some(Ok(frame)) = frame else { return };
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        // Whole events only, each passed on as it came; its comments and retry hint are
        // this node's own business. A node never sends one this large: a stream that does
        // is not followed.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if (event.starts_with(b"data:") || event.starts_with(b"event:"))
                && tx.send(Bytes::from(event)).await.is_err()
            {
                return;
            }
        }
        if pending.len() > MAX_RELAYED_EVENT {
            tracing::warn!(
                node = url,
                "another node's event stream sent an event too large to pass on"
            );
            return;
        }
    }
}

/// A session's events after `cursor`, then each as it comes, until its `ended`.
fn session_stream(broker: &Broker, place: StreamPlace, id: String, mut cursor: u64) -> Response<Body> {
    let events = broker.events().clone();
    // Subscribed before the log is read: nothing written in between is missed.
    let mut live = events.subscribe();
    let shutdown = broker.shutdown().clone();
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    broker.tracker().spawn(async move {
        let _place = place;
        if tx.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_err() {
            return;
        }
        loop {
            // Catch up from the log.
            let batch = events.read(&id, cursor, CATCH_UP).unwrap_or_default();
            for event in &batch {
                if tx.send(frame(event, true)).await.is_err() {
                    return;
                }
                cursor = event.id;
                if event.kind == EventType::Ended {
                    return;
                }
            }
            if batch.len() == CATCH_UP {
                continue;
            }
            if events.open_log(&id).is_none() {
                // Nothing more will be written here: what the log has was sent (read once
                // more, for an `ended` written as the log closed).
                if events.read(&id, cursor, 1).is_none_or(|rest| rest.is_empty()) {
                    return;
                }
                continue;
            }
            // Follow live; a gap (an announcement missed or out of order) reads the log.
            loop {
                let frame = tokio::select! {
                    got = live.recv() => match got {
                        Ok(Live { event, .. }) if event.session_id == id => {
                            if event.id <= cursor {
                                continue;
                            }
                            if event.id != cursor + 1 {
                                break;
                            }
                            cursor = event.id;
                            if tx.send(frame(&event, true)).await.is_err() || event.kind == EventType::Ended {
                                return;
                            }
                            continue;
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(KEEP_ALIVE) => Bytes::from_static(b": keep-alive\n\n"),
                    _ = shutdown.cancelled() => return,
                };
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    });
    stream_response(rx)
}

/// One event as a server-sent event: its id (for `Last-Event-ID`) when the stream is one
/// session's, and the event's JSON.
fn frame(event: &Event, with_id: bool) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    let text = if with_id {
        format!("id: {}\ndata: {data}\n\n", event.id)
    } else {
        format!("data: {data}\n\n")
    };
    Bytes::from(text)
}

fn wants_stream<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(Frame::data(bytes)), rx))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    response
}

/// `GET /public/sessions/{id}/webhooks`: the session's webhook and its delivery log.
pub(crate) async fn webhooks(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    broker
        .record(tenant, id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let body = match broker.webhooks().state(id) {
        Some(state) => json!({
            "session_id": id,
            "webhook_url": state.url,
            "webhook_events": state.events,
            "delivered_through": state.delivered_through,
            "done": state.done,
            "deliveries": state.deliveries,
        }),
        None => json!({
            "session_id": id,
            "webhook_url": null,
            "webhook_events": [],
            "delivered_through": 0,
            "done": true,
            "deliveries": [],
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}
