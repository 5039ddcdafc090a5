//! What `/metrics` shows is a contract: dashboards and alerts query its names. This holds
//! every family's name, type and label names against the list below, and every series,
//! `# HELP` and `# TYPE` line against the exposition captured from the hand-written
//! renderer before the move to prometheus-client (`tests/data/metrics_before.prom`).
//! Values and the order of lines may differ; nothing else may.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cdpgate::error::Origin;
use cdpgate::metrics::{ArtifactUsage, Gauges, Metrics};
use cdpgate::store::nodes::NodeInfo;

/// Every family: its name (as the `# TYPE` line names it), its type, its label names.
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("cdpgate_sessions_active", "gauge", &[]),
    ("cdpgate_sessions_created_total", "counter", &[]),
    ("cdpgate_sessions_expired_total", "counter", &[]),
    ("cdpgate_sessions_terminated_total", "counter", &[]),
    ("cdpgate_sessions_idle_total", "counter", &[]),
    ("cdpgate_sessions_by_isolation", "gauge", &["isolation"]),
    ("cdpgate_session_create_rejected_total", "counter", &[]),
    ("cdpgate_session_create_rate_limited_total", "counter", &[]),
    ("cdpgate_session_create_quota_refused_total", "counter", &[]),
    ("cdpgate_session_create_seconds", "histogram", &["le"]),
    ("cdpgate_session_targets_closed_total", "counter", &[]),
    ("cdpgate_queue_waits_total", "counter", &[]),
    ("cdpgate_queue_wait_seconds_total", "counter", &[]),
    ("cdpgate_pool_idle", "gauge", &[]),
    ("cdpgate_runtime_tasks", "gauge", &[]),
    ("cdpgate_browsers_launched_total", "counter", &[]),
    ("cdpgate_browser_launch_failures_total", "counter", &[]),
    ("cdpgate_browser_launch_seconds", "histogram", &["le"]),
    ("cdpgate_browser_egress_refused_total", "counter", &[]),
    ("cdpgate_browser_network_received_bytes_total", "counter", &[]),
    ("cdpgate_browser_network_sent_bytes_total", "counter", &[]),
    ("cdpgate_upstream_proxy_errors_total", "counter", &[]),
    ("cdpgate_contexts_created_total", "counter", &[]),
    ("cdpgate_renders_bare_total", "counter", &[]),
    ("cdpgate_shared_browser_recycles_total", "counter", &[]),
    ("cdpgate_shared_browser_contexts", "gauge", &["browser"]),
    ("cdpgate_shared_browser_kept_contexts", "gauge", &["browser"]),
    ("cdpgate_shared_browser_spare_contexts", "gauge", &["browser"]),
    ("cdpgate_shared_browser_watched_contexts", "gauge", &["browser"]),
    ("cdpgate_context_refused_commands_total", "counter", &["method"]),
    ("cdpgate_proxy_connections_total", "counter", &[]),
    ("cdpgate_proxy_connections_open", "gauge", &[]),
    ("cdpgate_proxy_connections_refused_total", "counter", &[]),
    ("cdpgate_proxy_messages_total", "counter", &["direction"]),
    ("cdpgate_proxy_bytes_total", "counter", &["direction"]),
    ("cdpgate_proxy_close_frames_total", "counter", &["code"]),
    ("cdpgate_profile_saves_total", "counter", &[]),
    ("cdpgate_profile_save_failures_total", "counter", &[]),
    ("cdpgate_profile_saves_superseded_total", "counter", &[]),
    ("cdpgate_session_files", "gauge", &[]),
    ("cdpgate_session_files_bytes", "gauge", &[]),
    ("cdpgate_session_files_stored_total", "counter", &[]),
    ("cdpgate_session_files_quota_refusals_total", "counter", &[]),
    ("cdpgate_recordings", "gauge", &[]),
    ("cdpgate_recordings_bytes", "gauge", &[]),
    ("cdpgate_recordings_started_total", "counter", &[]),
    ("cdpgate_recordings_truncated_total", "counter", &[]),
    ("cdpgate_browser_requests_blocked_total", "counter", &[]),
    ("cdpgate_challenges_total", "counter", &["kind"]),
    ("cdpgate_single_action_seconds", "histogram", &["le"]),
    ("cdpgate_single_actions_succeeded_total", "counter", &[]),
    ("cdpgate_single_actions_failed_total", "counter", &[]),
    ("cdpgate_single_action_model_calls_total", "counter", &[]),
    ("cdpgate_single_action_cache_hits_total", "counter", &[]),
    ("cdpgate_single_action_cache_failures_total", "counter", &[]),
    ("cdpgate_errors_total", "counter", &["origin"]),
    ("cdpgate_named_pool_takes_total", "counter", &["result"]),
    ("cdpgate_named_pool_refill_seconds", "histogram", &["le"]),
    ("cdpgate_named_pool_refill_failures_total", "counter", &[]),
    ("cdpgate_named_pools", "gauge", &[]),
    ("cdpgate_named_pool_ready", "gauge", &[]),
    // In a cluster only.
    ("cdpgate_cluster_nodes", "gauge", &["state"]),
    ("cdpgate_cluster_capacity", "gauge", &[]),
    ("cdpgate_cluster_free_slots", "gauge", &[]),
    ("cdpgate_cluster_sessions", "gauge", &[]),
    ("cdpgate_cluster_forged_node_records_total", "counter", &[]),
];

/// The exposition captured before the move, from `exposition()` as it is here.
const BEFORE: &str = include_str!("data/metrics_before.prom");

/// Every family with at least one series: a launch, a close, an error, two refused
/// commands (one of them not a method name, so `other`), a shared browser, a cluster of
/// two nodes (one lost).
fn exposition() -> String {
    let m = Metrics::default();
    m.observe_launch(Duration::from_millis(120));
    m.record_close(4001);
    m.record_error(Origin::Upstream);
    m.record_refused("Browser.crash");
    m.record_refused("not a method");
    let mut text = m.render(&Gauges {
        sessions_active: 3,
        pool_idle: 1,
        sessions_context: 1,
        shared_browsers: vec![("b1".to_owned(), 1)],
        kept_contexts: vec![("b1".to_owned(), 1)],
        spare_contexts: vec![("b1".to_owned(), 2)],
        watched_contexts: vec![("b1".to_owned(), 1)],
        artifacts: ArtifactUsage {
            files: 1,
            files_bytes: 10,
            recordings: 1,
            recording_bytes: 100,
        },
    });
    let node = |id: &str| NodeInfo {
        id: id.to_owned(),
        url: format!("http://{id}.test:3000"),
        max_sessions: 4,
        free: 2,
        sessions: 2,
        heartbeat_ms: 0,
        pools: Default::default(),
    };
    let view = cdpgate::http::admin::cluster_view(&[(node("a"), true), (node("b"), false)]);
    text.push_str(&cdpgate::metrics::render_cluster(Some(&view), 0));
    text
}

#[derive(Debug, PartialEq)]
struct Family {
    kind: String,
    help: String,
    label_names: BTreeSet<String>,
    /// Each series as `name{label="value",…}`, labels sorted, value left out.
    series: BTreeSet<String>,
}

/// Reads a text exposition (format 0.0.4) into its families, checking its shape on the way:
/// each family has one `# HELP` and one `# TYPE`, its samples follow them and carry its
/// name (with `_bucket`, `_sum`, `_count` for a histogram), every value is a number.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    let mut help: Option<(&str, &str)> = None;
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').expect("a help text"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a type");
            let (help_name, help_text) = help.take().unwrap_or_else(|| panic!("no # HELP before {line}"));
            assert_eq!(help_name, name, "# HELP and # TYPE name different families");
            let family = Family {
                kind: kind.to_owned(),
                help: help_text.to_owned(),
                label_names: BTreeSet::new(),
                series: BTreeSet::new(),
            };
            assert!(out.insert(name.to_owned(), family).is_none(), "{name} typed twice");
            current = Some(name);
        } else {
            assert!(
                !line.starts_with('#'),
                "a comment line a 0.0.4 scraper would not expect: {line}"
            );
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
            let family_name = current.unwrap_or_else(|| panic!("a sample before any # TYPE: {line}"));
            let family = out.get_mut(family_name).unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').expect("closed labels")),
                None => (series, ""),
            };
            let suffix = name
                .strip_prefix(family_name)
                .unwrap_or_else(|| panic!("{name} under the # TYPE of {family_name}"));
            let suffixes: &[&str] = match family.kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            assert!(suffixes.contains(&suffix), "{name} under the # TYPE of {family_name}");
            let mut pairs: Vec<&str> = labels.split(',').filter(|p| !p.is_empty()).collect();
            pairs.sort();
            for pair in &pairs {
                let (label, value) = pair.split_once('=').unwrap_or_else(|| panic!("a label: {line}"));
                assert!(value.starts_with('"') && value.ends_with('"'), "a quoted value: {line}");
                family.label_names.insert(label.to_owned());
            }
            family.series.insert(format!("{name}{{{}}}", pairs.join(",")));
        }
    }
    out
}

#[test]
fn every_family_keeps_its_name_type_and_label_names() {
    let found = families(&exposition());
    let listed: BTreeMap<&str, (&str, BTreeSet<String>)> = FAMILIES
        .iter()
        .map(|(name, kind, labels)| (*name, (*kind, labels.iter().map(|l| l.to_string()).collect())))
        .collect();
    assert_eq!(listed.len(), FAMILIES.len(), "a family listed twice");
    let shown: BTreeSet<&str> = found.keys().map(String::as_str).collect();
    let missing: Vec<_> = listed.keys().filter(|name| !shown.contains(*name)).collect();
    let unlisted: Vec<_> = shown.iter().filter(|name| !listed.contains_key(*name)).collect();
    assert!(
        missing.is_empty() && unlisted.is_empty(),
        "listed, not shown: {missing:?}; shown, not listed: {unlisted:?}"
    );
    for (name, family) in &found {
        let (kind, labels) = &listed[name.as_str()];
        assert_eq!((family.kind.as_str(), &family.label_names), (*kind, labels), "{name}");
    }
}

#[test]
fn every_series_and_help_is_as_before() {
    let before = families(BEFORE);
    let now = families(&exposition());
    for (name, family) in &before {
        assert_eq!(now.get(name), Some(family), "{name}");
    }
    assert_eq!(now.len(), before.len(), "families added");
}
