//! What a create or a fork asks for, as validated (the broker's input, plain data), and
//! what a fork answers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::browser::blocking::Blocking;
use crate::browser::fingerprint::FingerprintRequest;
use crate::browser::forward::UpstreamProxy;
use crate::browser::identity::Identity;
use crate::browser::snapshot::TabsReady;
use crate::capture::Wants;
use crate::events::EventType;
use crate::session::Session;
use crate::store::{Isolation, ProxySettings, SessionOptions};
use crate::values::{BrowserKind, BrowserReason, Screen};
use crate::webhooks::Target;

/// A validated create request.
pub struct NewSession {
    pub ttl: Duration,
    pub screen: Screen,
    pub metadata: Map<String, Value>,
    /// A user's own DevTools endpoint to front instead of a managed browser.
    pub external_url: Option<String>,
    /// A profile of this tenant to start from, and whether to save back into it.
    pub profile_id: Option<String>,
    pub persist_changes: bool,
    /// Wait up to `queue_timeout_ms` for a slot; otherwise refuse at once when full.
    pub queue: bool,
    /// Upstream proxy, identity and idle timeout.
    pub options: RequestedOptions,
    /// Where to POST the session's events (else the key's default), and which.
    pub webhook_url: Option<String>,
    pub webhook_events: Option<Vec<EventType>>,
    /// The webhook as checked by the create (set by the broker).
    pub webhook: Option<Target>,
}

/// What a create asks of a session beyond the basics, as validated.
#[derive(Debug, Clone, Default)]
pub struct RequestedOptions {
    /// A browser of its own, or a context in a shared browser.
    pub isolation: Isolation,
    pub proxy: Option<UpstreamProxy>,
    pub identity: Identity,
    /// A desktop machine to pass for, as asked; picked at create into
    /// `identity.fingerprint` (a profile's remembered one when none is asked).
    pub fingerprint: Option<FingerprintRequest>,
    /// A phone or tablet to pass for (`browser::devices`).
    pub device: Option<String>,
    /// 0: never idle out.
    pub idle_timeout: u64,
    /// Record the session's active tab as video.
    pub record: bool,
    /// Log its CDP traffic among its files.
    pub log_cdp: bool,
    /// What its pages may not load.
    pub blocking: Blocking,
    /// Console and network capture.
    pub capture: Wants,
    /// Ids of the key's Chrome extensions its browser loads.
    pub extensions: Vec<String>,
    /// The Chrome asked for (none: the node's choice); once the broker has chosen, the
    /// one it runs and why.
    pub browser: Option<BrowserKind>,
    pub browser_reason: Option<BrowserReason>,
}

impl RequestedOptions {
    /// The options as the session object shows them (no password).
    pub fn view(&self) -> SessionOptions {
        SessionOptions {
            isolation: self.isolation,
            proxy: self.proxy.as_ref().map(|p| ProxySettings {
                server: p.server(),
                username: p.username.clone(),
                bypass: p.bypass.clone(),
            }),
            user_agent: self.identity.user_agent.clone(),
            locale: self.identity.locale.clone(),
            timezone: self.identity.timezone.clone(),
            fingerprint: self.identity.fingerprint.clone(),
            idle_timeout: self.idle_timeout,
            record: self.record,
            log_cdp: self.log_cdp,
            block: self.blocking.types.clone(),
            block_urls: self.blocking.urls.clone(),
            capture_console: self.capture.console,
            capture_network: self.capture.network,
            capture_bodies: self.capture.bodies,
            byo: false,
            extensions: self.extensions.clone(),
            browser: self.browser,
            browser_reason: self.browser_reason,
        }
    }
}

/// A validated fork request.
pub struct ForkRequest {
    pub count: usize,
    /// Else the source's.
    pub isolation: Option<Isolation>,
    /// Else the source's own TTL.
    pub ttl: Option<Duration>,
    /// Else the source's metadata.
    pub metadata: Option<Map<String, Value>>,
    /// Whether the answer waits for the forks' tabs to load.
    pub wait_until: TabsReady,
}

/// What a fork made and what it carried into each.
pub struct Forked {
    pub sessions: Vec<Arc<Session>>,
    pub carried: Carried,
}

/// What each fork started from.
pub struct Carried {
    pub cookies: usize,
    /// The open web tabs' URLs.
    pub tabs: Vec<String>,
    /// Tabs whose page had localStorage, and had sessionStorage.
    pub local_storage: usize,
    pub session_storage: usize,
}
