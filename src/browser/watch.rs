//! What the identity keeper enforces and watches on a session's targets beside its identity:
//! the session's blocking ([`blocking`]), the challenges its pages show
//! ([`super::challenges`]), the dialogs they open, and what the session asked to capture
//! (console, network). The keeper hands each event to the watch of the session whose
//! target sent it, and to no other.

use std::sync::Arc;

use serde_json::{Value, json};

use super::ad_blocker::AdBlocker;
use super::blocking::{self, Blocking};
use super::challenges::Challenges;
use super::forward::Traffic;
use crate::capture::SessionCapture;
use crate::capture::logs::ErrorSeen;
use crate::events::{EventType, SessionEvents};
use crate::metrics::Metrics;

/// One session's blocking, challenges, dialogs and capture.
pub(crate) struct Watch {
    pub blocking: Blocking,
    /// The operator's ad lists, for a `blocking` with `ads`.
    pub ads: Option<Arc<AdBlocker>>,
    /// Where blocked requests are counted.
    pub traffic: Option<Arc<Traffic>>,
    pub challenges: Arc<Challenges>,
    pub metrics: Arc<Metrics>,
    /// Where dialogs are told.
    pub events: Option<Arc<SessionEvents>>,
    pub capture: Option<Arc<SessionCapture>>,
}

impl Watch {
    /// The answer to a request paused by the blocking: failed (and counted) if it blocks
    /// it, else let go.
    pub(crate) fn paused(&self, params: &Value) -> Option<(&'static str, Value)> {
        if !self.blocking.blocks(params, self.ads.as_deref()) {
            return blocking::passage(params).map(|p| ("Fetch.continueRequest", p));
        }
        let refusal = blocking::refusal(params)?;
        if let Some(traffic) = &self.traffic {
            traffic.blocked_request();
        }
        self.metrics.requests_blocked.inc();
        Some(("Fetch.failRequest", refusal))
    }

    /// Tells a dialog a page opened; answering it is the client's.
    pub(crate) fn dialog(&self, event: &Value, target_id: &str) {
        let Some(events) = &self.events else { return };
        let params = &event["params"];
        let text = |name: &str, max: usize| crate::capture::cut_text(params[name].as_str().unwrap_or(""), max);
        events.emit(
            EventType::Dialog,
            json!({
                "target_id": target_id,
                "type": text("type", 32),
                "message": text("message", 4096),
                "url": text("url", 2048),
            }),
        );
    }

    /// Records a challenge shown by a frame that navigated, and tells it.
    pub(crate) fn navigated(&self, event: &Value, target_id: &str) {
        let frame = &event["params"]["frame"];
        let (id, url) = (frame["id"].as_str().unwrap_or(""), frame["url"].as_str().unwrap_or(""));
        if let Some(kind) = self.challenges.seen(id, url) {
            self.metrics.record_challenge(kind);
            tracing::info!(kind, "a page shows a challenge: a person can pass it in the live view");
            if let Some(events) = &self.events {
                let url = crate::capture::cut_text(url, 2048);
                events.emit(
                    EventType::ChallengeSeen,
                    json!({ "target_id": target_id, "kind": kind, "url": url }),
                );
            }
        }
    }

    /// Tells a console error or an uncaught exception a page showed (the first ones).
    pub(crate) fn error(&self, seen: ErrorSeen) {
        let Some(events) = &self.events else { return };
        let kind = if seen.uncaught {
            EventType::PageError
        } else {
            EventType::ConsoleError
        };
        let entry = seen.entry;
        events.emit(
            kind,
            json!({
                "target_id": entry.target_id,
                "text": entry.text,
                "url": entry.url,
                "line": entry.line,
                "column": entry.column,
                "count": seen.count,
            }),
        );
    }
}
