//! Prometheus metrics, kept in atomics and rendered in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Close codes the broker sends, counted one by one; anything else counts as "other".
const CLOSE_CODES: [u16; 7] = [4001, 4002, 4003, 1001, 1002, 1009, 1011];

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
    /// Creates that waited for a free slot, and how long in all.
    pub queue_waits: AtomicU64,
    pub queue_wait_micros: AtomicU64,
    /// Single actions, from the request read to the answer (queueing behind others included).
    pub action_time: Histogram,
    pub actions_succeeded: AtomicU64,
    pub actions_failed: AtomicU64,
    pub action_model_calls: AtomicU64,
    pub action_cache_hits: AtomicU64,
    pub action_cache_failures: AtomicU64,
}

/// Readings that live elsewhere, taken at scrape time.
pub struct Gauges {
    pub sessions_active: usize,
    pub pool_idle: usize,
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

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }

        single(
            &mut out,
            "cdpgate_sessions_active",
            "gauge",
            "Sessions currently active.",
            gauges.sessions_active as u64,
        );
        single(
            &mut out,
            "cdpgate_sessions_created_total",
            "counter",
            "Sessions created.",
            self.sessions_created.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_sessions_expired_total",
            "counter",
            "Sessions ended by their TTL.",
            self.sessions_expired.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_sessions_terminated_total",
            "counter",
            "Sessions ended by terminate, delete, Browser.close or a browser exit.",
            self.sessions_terminated.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_session_create_rejected_total",
            "counter",
            "Creates answered 503 for lack of capacity.",
            self.create_rejected.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_session_create_rate_limited_total",
            "counter",
            "Creates answered 429 for the per-key rate limit.",
            self.create_rate_limited.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_proxy_connections_refused_total",
            "counter",
            "WebSocket connections refused for a session's connection limit.",
            self.connections_refused.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_pool_idle",
            "gauge",
            "Warm browsers waiting for a session.",
            gauges.pool_idle as u64,
        );
        single(
            &mut out,
            "cdpgate_browsers_launched_total",
            "counter",
            "Browsers started.",
            self.browsers_launched.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_browser_launch_failures_total",
            "counter",
            "Browser starts that failed.",
            self.browser_launch_failures.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_proxy_connections_total",
            "counter",
            "CDP WebSocket connections accepted.",
            self.proxy_connections.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_proxy_connections_open",
            "gauge",
            "CDP WebSocket connections open now.",
            self.proxy_connections_open.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP cdpgate_proxy_messages_total WebSocket messages relayed.\n# TYPE cdpgate_proxy_messages_total counter\n\
             cdpgate_proxy_messages_total{{direction=\"to_browser\"}} {}\n\
             cdpgate_proxy_messages_total{{direction=\"to_client\"}} {}",
            self.messages_to_browser.load(Relaxed),
            self.messages_to_client.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cdpgate_proxy_bytes_total Payload bytes relayed.\n# TYPE cdpgate_proxy_bytes_total counter\n\
             cdpgate_proxy_bytes_total{{direction=\"to_browser\"}} {}\n\
             cdpgate_proxy_bytes_total{{direction=\"to_client\"}} {}",
            self.bytes_to_browser.load(Relaxed),
            self.bytes_to_client.load(Relaxed)
        );
        single(
            &mut out,
            "cdpgate_profile_saves_total",
            "counter",
            "Profiles saved at the end of a persisting session.",
            self.profile_saves.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_profile_save_failures_total",
            "counter",
            "Persisting sessions whose profile could not be saved.",
            self.profile_save_failures.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_queue_waits_total",
            "counter",
            "Creates that waited for a free slot.",
            self.queue_waits.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP cdpgate_queue_wait_seconds_total Time creates spent waiting for a slot.\n\
             # TYPE cdpgate_queue_wait_seconds_total counter\ncdpgate_queue_wait_seconds_total {}",
            self.queue_wait_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP cdpgate_proxy_close_frames_total Close frames sent to clients, by code.\n\
             # TYPE cdpgate_proxy_close_frames_total counter"
        );
        for (i, count) in self.closes.iter().enumerate() {
            let code = CLOSE_CODES.get(i).map_or("other".to_owned(), |c| c.to_string());
            let _ = writeln!(
                out,
                "cdpgate_proxy_close_frames_total{{code=\"{code}\"}} {}",
                count.load(Relaxed)
            );
        }
        self.launch_time.render(
            &mut out,
            "cdpgate_browser_launch_seconds",
            "Time from spawn to DevTools listening.",
        );
        self.create_time.render(
            &mut out,
            "cdpgate_session_create_seconds",
            "Time to create a session, for creates that succeeded.",
        );
        self.action_time.render(
            &mut out,
            "cdpgate_single_action_seconds",
            "Time to run a single action, waiting for the session's earlier ones included.",
        );
        single(
            &mut out,
            "cdpgate_single_actions_succeeded_total",
            "counter",
            "Single actions that succeeded.",
            self.actions_succeeded.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_single_actions_failed_total",
            "counter",
            "Single actions that failed (answered success: false).",
            self.actions_failed.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_single_action_model_calls_total",
            "counter",
            "Calls made to the configured model (the credits charged).",
            self.action_model_calls.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_single_action_cache_hits_total",
            "counter",
            "Single actions replayed from the cache.",
            self.action_cache_hits.load(Relaxed),
        );
        single(
            &mut out,
            "cdpgate_single_action_cache_failures_total",
            "counter",
            "Cached single actions whose replay failed and that were resolved afresh.",
            self.action_cache_failures.load(Relaxed),
        );
        out
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
    }
}
