//! Webhooks: a session's events POSTed to its `webhook_url`, in order, signed in the
//! Standard Webhooks format, each retried with a doubling wait until the receiver takes it
//! (a 2xx) or the session's events are swept.
//!
//! The queue is the session's event log itself: what is left to send is every event after
//! the last one delivered, and that number (with the delivery log) is kept in
//! `data_dir/webhooks/<session>.json`, written after every try. A broker that stops (or
//! dies) resumes each unfinished sender at start from that file: nothing is lost, and an
//! event whose answer was not written down is sent again (at least once, the same
//! `webhook-id`). A receiver that is down or slow holds up only its session's sender, a
//! task of its own; the broker's events are written whatever it does.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Tenant, sign_webhook, unix_secs, webhook_key};
use crate::browser::egress::Egress;
use crate::config::KeyWebhook;
use crate::error::Origin;
use crate::events::{Event, EventType, Events};

/// Delivery tries kept in a session's log (the newest).
const LOG_LEN: usize = 200;
const MAX_URL: usize = 2048;
/// Largest answer body read from a receiver (it is thrown away).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook_url: {0}")]
    Invalid(String),
    #[error("webhook_url is refused: {0}")]
    Refused(String),
    #[error("webhook_url needs a signing secret, and none is configured for this API key ([[webhooks]] in the config)")]
    NoSecret,
}

impl WebhookError {
    /// Every refusal is about what the client asked for.
    pub fn origin(&self) -> Origin {
        Origin::Client
    }
}

/// Where a session's events go, and which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub url: String,
    /// Empty: every type.
    pub events: Vec<EventType>,
}

/// One try of one delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub event_id: u64,
    pub event_type: EventType,
    pub webhook_id: String,
    pub attempt: u32,
    pub at: String,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered: bool,
}

/// A session's webhook, its progress and its delivery log, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookState {
    pub session_id: String,
    pub tenant: String,
    pub url: String,
    pub events: Vec<EventType>,
    /// Every event up to this id has been delivered (or was not asked for).
    pub delivered_through: u64,
    /// Every event the session will have has been handled.
    pub done: bool,
    pub deliveries: VecDeque<Delivery>,
}

pub struct Webhooks {
    dir: PathBuf,
    events: Arc<Events>,
    egress: Arc<Egress>,
    keys: Vec<KeyWebhook>,
    timeout: Duration,
    retry_max: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Sessions whose sender runs (one per session, so deliveries stay in order).
    sending: Mutex<std::collections::HashSet<String>>,
    /// POSTs in flight, across every sender: each holds a connection for up to `timeout`,
    /// and receivers that never answer must not hold the broker's descriptors.
    posts: tokio::sync::Semaphore,
}

/// POSTs in flight at once (`Webhooks::posts`).
const MAX_POSTS: usize = 64;
/// An event not taken this long after its first try is given up, and the rest of its
/// session's with it: a receiver gone for good does not keep a sender retrying for as long
/// as the session's record is kept.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

pub struct Settings {
    pub dir: PathBuf,
    pub keys: Vec<KeyWebhook>,
    pub timeout: Duration,
    pub retry_max: Duration,
}

impl Webhooks {
    pub fn new(
        settings: Settings,
        events: Arc<Events>,
        egress: Arc<Egress>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Webhooks>> {
        std::fs::create_dir_all(&settings.dir)?;
        Ok(Arc::new(Webhooks {
            dir: settings.dir,
            events,
            egress,
            keys: settings.keys,
            timeout: settings.timeout,
            retry_max: settings.retry_max,
            tracker,
            shutdown,
            sending: Mutex::new(Default::default()),
            posts: tokio::sync::Semaphore::new(MAX_POSTS),
        }))
    }

    fn key_settings(&self, tenant: &str) -> Option<&KeyWebhook> {
        let find = |t: &str| self.keys.iter().find(|h| h.tenant == t);
        find(tenant).or_else(|| find("*"))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The webhook of a new session of `tenant`: the one asked for, else the key's default;
    /// checked now (a URL, a secret to sign with, a target the egress rules allow).
    pub async fn target_for(
        &self,
        tenant: &Tenant,
        url: Option<String>,
        events: Option<Vec<EventType>>,
    ) -> Result<Option<Target>, WebhookError> {
        let defaults = self.key_settings(&tenant.to_string());
        let url = url.or_else(|| defaults.map(|d| d.url.clone()).filter(|u| !u.is_empty()));
        let Some(url) = url else { return Ok(None) };
        let events = events.unwrap_or_else(|| {
            defaults
                .map(|d| d.events.iter().filter_map(|e| EventType::parse(e)).collect())
                .unwrap_or_default()
        });
        let (host, port) = parse_url(&url)?;
        if defaults.is_none() {
            return Err(WebhookError::NoSecret);
        }
        // Checked again at every connection, on the address connected to.
        self.egress
            .resolve(&host, port)
            .await
            .map_err(|e| WebhookError::Refused(e.to_string()))?;
        Ok(Some(Target { url, events }))
    }

    /// Starts sending session `id`'s events to `target`.
    pub fn start(self: &Arc<Self>, id: &str, tenant: &Tenant, target: Target) {
        let state = WebhookState {
            session_id: id.to_owned(),
            tenant: tenant.to_string(),
            url: target.url,
            events: target.events,
            delivered_through: 0,
            done: false,
            deliveries: VecDeque::new(),
        };
        self.save(&state);
        self.spawn(state);
    }

    /// Resumes every sender a previous run left unfinished.
    pub fn resume(self: &Arc<Self>) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        for entry in dir.filter_map(|e| e.ok()) {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
            else {
                continue;
            };
            if let Some(state) = self.state(&id).filter(|s| !s.done) {
                tracing::info!(session = %id, from = state.delivered_through, "resuming webhook deliveries");
                self.spawn(state);
            }
        }
    }

    /// A session's webhook and its delivery log, if it has one.
    pub fn state(&self, id: &str) -> Option<WebhookState> {
        let bytes = std::fs::read(self.path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets a session's webhook (its record was swept or deleted).
    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }

    fn save(&self, state: &WebhookState) {
        // A session swept (or deleted) meanwhile leaves nothing behind.
        if !self.events.has(&state.session_id) {
            return;
        }
        // Written whole, then renamed: a crash leaves the old state or the new one.
        let path = self.path(&state.session_id);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(session = %state.session_id, error = %e, "could not write the webhook state");
        }
    }

    fn spawn(self: &Arc<Self>, state: WebhookState) {
        if !self
            .sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(state.session_id.clone())
        {
            return;
        }
        let this = self.clone();
        let span = tracing::info_span!("webhook", session = %state.session_id);
        self.tracker.spawn(tracing::Instrument::instrument(
            async move {
                let id = state.session_id.clone();
                this.send_all(state).await;
                this.sending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            },
            span,
        ));
    }

    /// Sends every event after `delivered_through`, in order, until the session's last one
    /// is delivered, its events are swept, or the broker stops.
    async fn send_all(&self, mut state: WebhookState) {
        let Some(key) = self.key_settings(&state.tenant).and_then(|k| webhook_key(&k.secret)) else {
            tracing::warn!("no webhook secret for the session's API key any more: nothing is sent");
            return;
        };
        let id = state.session_id.clone();
        loop {
            // Followed before reading, so an event written in between is not missed.
            let mut last = self.events.open_log(&id).map(|log| log.last_id());
            let Some(batch) = self.events.read(&id, state.delivered_through, 100) else {
                // The events are gone with the session's record.
                return;
            };
            if batch.is_empty() {
                match &mut last {
                    Some(last) => {
                        tokio::select! {
                            _ = last.changed() => continue,
                            _ = self.shutdown.cancelled() => return,
                        }
                    }
                    None => {
                        state.done = true;
                        self.save(&state);
                        return;
                    }
                }
            }
            for event in batch {
                let wanted = state.events.is_empty() || state.events.contains(&event.kind);
                if wanted && !self.deliver(&mut state, &key, &event).await {
                    return;
                }
                state.delivered_through = event.id;
                self.save(&state);
            }
        }
    }

    /// Delivers one event, trying until it is taken; `false` if the broker stops first.
    async fn deliver(&self, state: &mut WebhookState, key: &[u8], event: &Event) -> bool {
        let webhook_id = format!("msg_{}_{}", event.session_id, event.id);
        let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        let mut wait = Duration::from_secs(1);
        let first_try = tokio::time::Instant::now();
        for attempt in 1.. {
            let Ok(in_flight) = self.posts.acquire().await else {
                return false;
            };
            let now = SystemTime::now();
            let timestamp = unix_secs(now);
            let signature = sign_webhook(key, &webhook_id, timestamp, &body);
            let sent = tokio::time::timeout(
                self.timeout,
                self.post(&state.url, &webhook_id, timestamp, &signature, body.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", self.timeout.as_millis())));
            drop(in_flight); // the wait before the next try holds no place
            let delivered = matches!(sent, Ok(status) if (200..300).contains(&status));
            state.deliveries.push_back(Delivery {
                event_id: event.id,
                event_type: event.kind,
                webhook_id: webhook_id.clone(),
                attempt,
                at: humantime::format_rfc3339_millis(now).to_string(),
                status: sent.as_ref().ok().copied(),
                error: sent.err(),
                delivered,
            });
            while state.deliveries.len() > LOG_LEN {
                state.deliveries.pop_front();
            }
            if delivered {
                return true;
            }
            if first_try.elapsed() >= GIVE_UP_AFTER {
                tracing::info!(session = %event.session_id, attempt, "webhook: not taken for an hour, given up");
                state.done = true;
                self.save(state);
                return false;
            }
            self.save(state);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return false,
            }
            if self.events.read(&event.session_id, 0, 1).is_none() {
                // Swept meanwhile: nobody is left to tell.
                return false;
            }
            wait = (wait * 2).min(self.retry_max);
        }
        false
    }

    /// One POST: connects only to an address the egress rules allow (the one checked).
    async fn post(&self, url: &str, id: &str, timestamp: u64, signature: &str, body: Bytes) -> Result<u16, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let (host, port) = parse_url(url).map_err(|e| e.to_string())?;
        let addrs = self.egress.resolve(&host, port).await.map_err(|e| e.to_string())?;
        let mut tcp = Err("no address".to_owned());
        for addr in addrs {
            tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"));
            if tcp.is_ok() {
                break;
            }
        }
        let tcp = tcp?;
        let target = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let request = hyper::Request::post(target)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "cdpgate-webhooks")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        if parsed.scheme() == "https" {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = crate::browser::upstream::tls_connector()
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
    }
}

async fn exchange<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let answer = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    // Read (a little of) the answer so the receiver sees its answer taken, then hang up.
    let _ = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER)
        .collect()
        .await;
    conn.abort();
    Ok(status)
}

/// The host and port of an `http(s)://` URL without credentials.
fn parse_url(url: &str) -> Result<(String, u16), WebhookError> {
    if url.len() > MAX_URL {
        return Err(WebhookError::Invalid(format!("longer than {MAX_URL} characters")));
    }
    let parsed = url::Url::parse(url).map_err(|e| WebhookError::Invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::Invalid("must be an http:// or https:// URL".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::Invalid("must not carry credentials".into()));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(WebhookError::Invalid("has no host".into())),
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that takes connections and never answers, and how many it took.
    async fn silent_receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = taken.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        (url, taken)
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_never_answers_is_given_up_after_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::new(dir.path().join("events"), 10).unwrap();
        let egress = Arc::new(Egress::for_webhooks(
            &["loopback".into()],
            Arc::default(),
            "127.0.0.1:9".parse().unwrap(),
            Duration::from_secs(5),
        ));
        let webhooks = Webhooks::new(
            Settings {
                dir: dir.path().join("webhooks"),
                keys: Vec::new(),
                timeout: Duration::from_secs(10),
                retry_max: Duration::from_secs(60),
            },
            events.clone(),
            egress,
            TaskTracker::new(),
            CancellationToken::new(),
        )
        .unwrap();
        let log = events.open("sess_w", &Tenant::from_id("t"));
        log.emit(EventType::Created, serde_json::json!({}));
        let event = events.read("sess_w", 0, 1).unwrap().remove(0);
        let (url, taken) = silent_receiver().await;
        let mut state = WebhookState {
            session_id: "sess_w".into(),
            tenant: "t".into(),
            url,
            events: Vec::new(),
            delivered_through: 0,
            done: false,
            deliveries: VecDeque::new(),
        };
        let started = tokio::time::Instant::now();
        assert!(!webhooks.deliver(&mut state, b"key", &event).await);
        let took = started.elapsed();
        assert!(state.done, "given up for good");
        assert!(
            took >= GIVE_UP_AFTER && took < GIVE_UP_AFTER + Duration::from_secs(120),
            "{took:?}"
        );
        let attempts = state.deliveries.len();
        assert!(
            (50..=100).contains(&attempts) && state.deliveries.iter().all(|d| !d.delivered),
            "{attempts}"
        );
        assert_eq!(
            taken.load(std::sync::atomic::Ordering::SeqCst),
            attempts,
            "one connection a try"
        );
        assert_eq!(
            webhooks.posts.available_permits(),
            MAX_POSTS,
            "every POST's place given back"
        );
    }

    #[test]
    fn only_plain_web_urls_are_targets() {
        assert_eq!(
            parse_url("https://hooks.example/x?y=1").unwrap(),
            ("hooks.example".into(), 443)
        );
        assert_eq!(parse_url("http://[::1]:8080/").unwrap(), ("::1".into(), 8080));
        for bad in ["ftp://a/", "http://u:p@a/", "not a url", "file:///etc/passwd"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url(&format!("http://a/{}", "x".repeat(MAX_URL))).is_err());
    }
}
