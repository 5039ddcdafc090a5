//! Prometheus metrics, kept in atomics and rendered in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::error::Origin;

/// Close codes the broker sends, counted one by one; anything else counts as "other".
const CLOSE_CODES: [u16; 8] = [4001, 4002, 4003, 4004, 1001, 1002, 1009, 1011];

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A latency histogram in Prometheus' cumulative form.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", bucket.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
}

#[derive(Default)]
pub struct Metrics {
    pub sessions_created: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_terminated: AtomicU64,
    pub create_rejected: AtomicU64,
    pub create_rate_limited: AtomicU64,
    /// Creates refused by a per-key quota of sessions at once.
    pub create_quota_refused: AtomicU64,
    /// Tabs the broker closed because their session had `max_targets_per_session` open.
    pub targets_closed: AtomicU64,
    pub connections_refused: AtomicU64,
    pub browsers_launched: AtomicU64,
    pub browser_launch_failures: AtomicU64,
    launch_time: Histogram,
    /// Successful creates, from the request read to the answer's session ready.
    pub create_time: Histogram,
    pub proxy_connections: AtomicU64,
    pub proxy_connections_open: AtomicU64,
    pub messages_to_browser: AtomicU64,
    pub messages_to_client: AtomicU64,
    pub bytes_to_browser: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Close frames sent to clients, by code (`CLOSE_CODES`, then other).
    closes: [AtomicU64; CLOSE_CODES.len() + 1],
    pub profile_saves: AtomicU64,
    pub profile_save_failures: AtomicU64,
    /// Saves refused by fencing: the node had lost the profile's writer lease.
    pub profile_saves_superseded: AtomicU64,
    /// Creates that waited for a free slot, and how long in all.
    pub queue_waits: AtomicU64,
    /// Creates waiting for a slot right now.
    pub queue_waiting: AtomicU64,
    pub queue_wait_micros: AtomicU64,
    /// Single actions, from the request read to the answer (queueing behind others included).
    pub action_time: Histogram,
    pub actions_succeeded: AtomicU64,
    pub actions_failed: AtomicU64,
    pub action_model_calls: AtomicU64,
    pub action_cache_hits: AtomicU64,
    pub action_cache_failures: AtomicU64,
    /// Error answers by origin: client, upstream, internal.
    errors: [AtomicU64; 3],
    /// Connections of managed browsers' pages refused by the egress policy.
    pub browser_egress_refused: AtomicU64,
    /// Connections a session's upstream proxy could not carry.
    pub proxy_errors: AtomicU64,
    /// Bytes managed browsers received from and sent to the network.
    pub browser_bytes_in: AtomicU64,
    pub browser_bytes_out: AtomicU64,
    /// Sessions ended for their idle timeout.
    pub sessions_idle: AtomicU64,
    pub shared_browser_recycles: AtomicU64,
    pub contexts_created: AtomicU64,
    /// Files stored in sessions' files (finished downloads and uploads).
    pub files_stored: AtomicU64,
    /// Downloads cancelled and uploads refused for a session's files quota or the upload limit.
    pub files_quota_refusals: AtomicU64,
    /// Recordings started, and those stopped at `max_recording_bytes`.
    pub recordings_started: AtomicU64,
    pub recordings_truncated: AtomicU64,
    /// Commands the context filter refused, by method (a bounded set of names).
    refused: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Most labels of `cdpgate_context_refused_commands_total` ("other" included); methods past
/// them count as "other", so a client inventing names cannot grow the metrics without end.
const MAX_REFUSED_METHODS: usize = 100;

/// Readings that live elsewhere, taken at scrape time.
pub struct Gauges {
    pub sessions_active: usize,
    pub pool_idle: usize,
    /// Active sessions on a browser context of a shared browser.
    pub sessions_context: usize,
    /// Contexts open in each shared browser, by the browser's id.
    pub shared_browsers: Vec<(String, usize)>,
    /// What sessions' files and recordings hold on this node.
    pub artifacts: ArtifactUsage,
}

/// What the sessions' files and recordings on this node hold.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArtifactUsage {
    pub files: u64,
    pub files_bytes: u64,
    pub recordings: u64,
    pub recording_bytes: u64,
}

impl Metrics {
    pub fn observe_launch(&self, took: Duration) {
        self.launch_time.observe(took);
        self.browsers_launched.fetch_add(1, Relaxed);
    }

    pub fn record_close(&self, code: u16) {
        let i = CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(CLOSE_CODES.len());
        self.closes[i].fetch_add(1, Relaxed);
    }

    /// Counts an error answered to a client, by whose fault it was.
    /// A command the context filter refused.
    pub fn record_refused(&self, method: &str) {
        let named = method.len() <= 80 && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let key = match named && (refused.contains_key(method) || refused.len() < MAX_REFUSED_METHODS) {
            true => method,
            false => "other",
        };
        *refused.entry(key.to_owned()).or_default() += 1;
    }

    pub fn record_error(&self, origin: Origin) {
        let i = match origin {
            Origin::Client => 0,
            Origin::Upstream => 1,
            Origin::Internal => 2,
        };
        self.errors[i].fetch_add(1, Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        for (name, kind, help, value) in self.plain(gauges) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        let directions = ["to_browser", "to_client"].map(|d| format!("direction=\"{d}\""));
        let messages = [&self.messages_to_browser, &self.messages_to_client];
        labelled(
            &mut out,
            "cdpgate_proxy_messages_total",
            "WebSocket messages relayed.",
            &directions,
            &messages,
        );
        let bytes = [&self.bytes_to_browser, &self.bytes_to_client];
        labelled(
            &mut out,
            "cdpgate_proxy_bytes_total",
            "Payload bytes relayed.",
            &directions,
            &bytes,
        );
        let _ = writeln!(
            out,
            "# HELP cdpgate_queue_wait_seconds_total Time creates spent waiting for a slot.\n\
             # TYPE cdpgate_queue_wait_seconds_total counter\ncdpgate_queue_wait_seconds_total {}",
            self.queue_wait_micros.load(Relaxed) as f64 / 1e6
        );
        let codes: Vec<String> = (0..self.closes.len())
            .map(|i| CLOSE_CODES.get(i).map_or("other".to_owned(), |c| c.to_string()))
            .map(|code| format!("code=\"{code}\""))
            .collect();
        let closes: Vec<&AtomicU64> = self.closes.iter().collect();
        labelled(
            &mut out,
            "cdpgate_proxy_close_frames_total",
            "Close frames sent to clients, by code.",
            &codes,
            &closes,
        );
        let origins =
            [Origin::Client, Origin::Upstream, Origin::Internal].map(|o| format!("origin=\"{}\"", o.as_str()));
        let errors: Vec<&AtomicU64> = self.errors.iter().collect();
        labelled(
            &mut out,
            "cdpgate_errors_total",
            "Error answers, by whose fault: the client's, a browser's or upstream's, or the broker's.",
            &origins,
            &errors,
        );
        let _ = writeln!(
            out,
            "# HELP cdpgate_context_refused_commands_total CDP commands of context sessions the filter refused, by method.\n\
             # TYPE cdpgate_context_refused_commands_total counter"
        );
        for (method, count) in self.refused.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "cdpgate_context_refused_commands_total{{method=\"{method}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP cdpgate_shared_browser_contexts Browser contexts open in each shared browser.\n\
             # TYPE cdpgate_shared_browser_contexts gauge"
        );
        for (browser, contexts) in &gauges.shared_browsers {
            let _ = writeln!(
                out,
                "cdpgate_shared_browser_contexts{{browser=\"{browser}\"}} {contexts}"
            );
        }
        let by_isolation = [
            (
                "process",
                gauges.sessions_active.saturating_sub(gauges.sessions_context),
            ),
            ("context", gauges.sessions_context),
        ];
        let _ = writeln!(
            out,
            "# HELP cdpgate_sessions_by_isolation Active sessions by isolation.\n\
             # TYPE cdpgate_sessions_by_isolation gauge"
        );
        for (isolation, n) in by_isolation {
            let _ = writeln!(out, "cdpgate_sessions_by_isolation{{isolation=\"{isolation}\"}} {n}");
        }
        for (histogram, name, help) in [
            (
                &self.launch_time,
                "cdpgate_browser_launch_seconds",
                "Time from spawn to DevTools listening.",
            ),
            (
                &self.create_time,
                "cdpgate_session_create_seconds",
                "Time to create a session, for creates that succeeded.",
            ),
            (
                &self.action_time,
                "cdpgate_single_action_seconds",
                "Time to run a single action, waiting for the session's earlier ones included.",
            ),
        ] {
            histogram.render(&mut out, name, help);
        }
        out
    }

    /// The metrics that are one number each: name, type, help, value.
    fn plain(&self, gauges: &Gauges) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let n = |a: &AtomicU64| a.load(Relaxed);
        vec![
            (
                "cdpgate_sessions_active",
                "gauge",
                "Sessions currently active.",
                gauges.sessions_active as u64,
            ),
            (
                "cdpgate_sessions_created_total",
                "counter",
                "Sessions created.",
                n(&self.sessions_created),
            ),
            (
                "cdpgate_sessions_expired_total",
                "counter",
                "Sessions ended by their TTL.",
                n(&self.sessions_expired),
            ),
            (
                "cdpgate_sessions_terminated_total",
                "counter",
                "Sessions ended by terminate, delete, Browser.close or a browser exit.",
                n(&self.sessions_terminated),
            ),
            (
                "cdpgate_session_create_rejected_total",
                "counter",
                "Creates answered 503 for lack of capacity.",
                n(&self.create_rejected),
            ),
            (
                "cdpgate_session_create_rate_limited_total",
                "counter",
                "Creates answered 429 for the per-key rate limit.",
                n(&self.create_rate_limited),
            ),
            (
                "cdpgate_session_create_quota_refused_total",
                "counter",
                "Creates answered 429 for a per-key quota of sessions at once.",
                n(&self.create_quota_refused),
            ),
            (
                "cdpgate_session_targets_closed_total",
                "counter",
                "Tabs closed by the broker past max_targets_per_session.",
                n(&self.targets_closed),
            ),
            (
                "cdpgate_browser_egress_refused_total",
                "counter",
                "Connections of managed browsers' pages refused by the egress policy.",
                n(&self.browser_egress_refused),
            ),
            (
                "cdpgate_upstream_proxy_errors_total",
                "counter",
                "Connections a session's upstream proxy could not carry (unreachable, refused credentials).",
                n(&self.proxy_errors),
            ),
            (
                "cdpgate_browser_network_received_bytes_total",
                "counter",
                "Bytes managed browsers' pages received from the network.",
                n(&self.browser_bytes_in),
            ),
            (
                "cdpgate_browser_network_sent_bytes_total",
                "counter",
                "Bytes managed browsers' pages sent to the network.",
                n(&self.browser_bytes_out),
            ),
            (
                "cdpgate_sessions_idle_total",
                "counter",
                "Sessions ended by their idle timeout.",
                n(&self.sessions_idle),
            ),
            (
                "cdpgate_contexts_created_total",
                "counter",
                "Browser contexts created in shared browsers for context sessions.",
                n(&self.contexts_created),
            ),
            (
                "cdpgate_shared_browser_recycles_total",
                "counter",
                "Shared browsers retired after their context allowance, their memory limit, or to serve another tenant.",
                n(&self.shared_browser_recycles),
            ),
            (
                "cdpgate_proxy_connections_refused_total",
                "counter",
                "WebSocket connections refused for a session's connection limit.",
                n(&self.connections_refused),
            ),
            (
                "cdpgate_pool_idle",
                "gauge",
                "Warm browsers waiting for a session.",
                gauges.pool_idle as u64,
            ),
            (
                "cdpgate_browsers_launched_total",
                "counter",
                "Browsers started.",
                n(&self.browsers_launched),
            ),
            (
                "cdpgate_browser_launch_failures_total",
                "counter",
                "Browser starts that failed.",
                n(&self.browser_launch_failures),
            ),
            (
                "cdpgate_proxy_connections_total",
                "counter",
                "CDP WebSocket connections accepted.",
                n(&self.proxy_connections),
            ),
            (
                "cdpgate_proxy_connections_open",
                "gauge",
                "CDP WebSocket connections open now.",
                n(&self.proxy_connections_open),
            ),
            (
                "cdpgate_profile_saves_total",
                "counter",
                "Profiles saved at the end of a persisting session.",
                n(&self.profile_saves),
            ),
            (
                "cdpgate_profile_save_failures_total",
                "counter",
                "Persisting sessions whose profile could not be saved.",
                n(&self.profile_save_failures),
            ),
            (
                "cdpgate_profile_saves_superseded_total",
                "counter",
                "Saves refused because a later writer had taken the profile (cluster fencing).",
                n(&self.profile_saves_superseded),
            ),
            (
                "cdpgate_session_files",
                "gauge",
                "Files held in sessions' files (running and retained sessions).",
                gauges.artifacts.files,
            ),
            (
                "cdpgate_session_files_bytes",
                "gauge",
                "Bytes of sessions' files held.",
                gauges.artifacts.files_bytes,
            ),
            (
                "cdpgate_recordings",
                "gauge",
                "Session recordings held.",
                gauges.artifacts.recordings,
            ),
            (
                "cdpgate_recordings_bytes",
                "gauge",
                "Bytes of session recordings held.",
                gauges.artifacts.recording_bytes,
            ),
            (
                "cdpgate_session_files_stored_total",
                "counter",
                "Files stored in sessions' files (finished downloads and uploads).",
                n(&self.files_stored),
            ),
            (
                "cdpgate_session_files_quota_refusals_total",
                "counter",
                "Downloads cancelled and uploads refused for the files quota or the upload limit.",
                n(&self.files_quota_refusals),
            ),
            (
                "cdpgate_recordings_started_total",
                "counter",
                "Session recordings started.",
                n(&self.recordings_started),
            ),
            (
                "cdpgate_recordings_truncated_total",
                "counter",
                "Recordings stopped at max_recording_bytes.",
                n(&self.recordings_truncated),
            ),
            (
                "cdpgate_queue_waits_total",
                "counter",
                "Creates that waited for a free slot.",
                n(&self.queue_waits),
            ),
            (
                "cdpgate_single_actions_succeeded_total",
                "counter",
                "Single actions that succeeded.",
                n(&self.actions_succeeded),
            ),
            (
                "cdpgate_single_actions_failed_total",
                "counter",
                "Single actions that failed (answered success: false).",
                n(&self.actions_failed),
            ),
            (
                "cdpgate_single_action_model_calls_total",
                "counter",
                "Calls made to the configured model (the credits charged).",
                n(&self.action_model_calls),
            ),
            (
                "cdpgate_single_action_cache_hits_total",
                "counter",
                "Single actions replayed from the cache.",
                n(&self.action_cache_hits),
            ),
            (
                "cdpgate_single_action_cache_failures_total",
                "counter",
                "Cached single actions whose replay failed and that were resolved afresh.",
                n(&self.action_cache_failures),
            ),
        ]
    }
}

/// A counter family with one labelled value per row.
fn labelled(out: &mut String, name: &str, help: &str, labels: &[String], values: &[&AtomicU64]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (label, value) in labels.iter().zip(values) {
        let _ = writeln!(out, "{name}{{{label}}} {}", value.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_launch(Duration::from_millis(120));
        m.observe_launch(Duration::from_millis(30));
        let text = m.render(&Gauges {
            sessions_active: 1,
            pool_idle: 2,
            sessions_context: 0,
            shared_browsers: Vec::new(),
            artifacts: Default::default(),
        });
        assert!(
            text.contains("cdpgate_browser_launch_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cdpgate_browser_launch_seconds_bucket{le=\"0.25\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("cdpgate_browser_launch_seconds_count 2\n"), "{text}");
        assert!(text.contains("cdpgate_pool_idle 2\n"), "{text}");
        assert!(text.contains("cdpgate_browsers_launched_total 2\n"), "{text}");
        m.record_error(Origin::Upstream);
        let text = m.render(&Gauges {
            sessions_active: 0,
            pool_idle: 0,
            sessions_context: 0,
            shared_browsers: Vec::new(),
            artifacts: Default::default(),
        });
        assert!(text.contains("cdpgate_errors_total{origin=\"upstream\"} 1\n"), "{text}");
        assert!(text.contains("cdpgate_errors_total{origin=\"client\"} 0\n"), "{text}");
        assert!(
            text.contains("cdpgate_proxy_close_frames_total{code=\"other\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn refused_methods_are_a_bounded_set_of_labels() {
        let m = Metrics::default();
        m.record_refused("Browser.crash");
        m.record_refused("Browser.crash");
        m.record_refused("bad\"label");
        for i in 0..500 {
            m.record_refused(&format!("Made.up{i}"));
        }
        let text = m.render(&Gauges {
            sessions_active: 0,
            pool_idle: 0,
            sessions_context: 0,
            shared_browsers: Vec::new(),
            artifacts: Default::default(),
        });
        assert!(
            text.contains("cdpgate_context_refused_commands_total{method=\"Browser.crash\"} 2\n"),
            "{text}"
        );
        let labels = text.matches("cdpgate_context_refused_commands_total{").count();
        assert_eq!(labels, MAX_REFUSED_METHODS, "{text}"); // "other" included
        assert!(!text.contains("bad\""));
    }
}
