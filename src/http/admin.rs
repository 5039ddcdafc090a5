//! The operator's views (behind `admin_key`): the cluster (`GET /admin/cluster`, and the
//! cluster lines of `/metrics`) and what each API key uses (`GET /admin/tenants`).

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::{Body, timestamp};
use crate::broker::{Broker, NodeInfo};

/// Every node with its address, capacity, load and last heartbeat.
pub async fn cluster(broker: &Broker) -> Result<Response<Body>, ApiError> {
    let nodes = broker.cluster().await?;
    let listed: Vec<Value> = nodes
        .iter()
        .map(|(n, alive)| {
            json!({
                "id": n.id,
                "url": n.url,
                "alive": alive,
                "max_sessions": n.max_sessions,
                "free": n.free,
                "sessions": n.sessions,
                "last_heartbeat": timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(n.heartbeat_ms)),
            })
        })
        .collect();
    let alive = nodes.iter().filter(|(_, alive)| *alive);
    let (capacity, free) = alive.fold((0, 0), |(c, f), (n, _)| (c + n.max_sessions, f + n.free));
    Ok(json_response(
        StatusCode::OK,
        &json!({ "node": broker.node(), "capacity": capacity, "free": free, "nodes": listed }),
    ))
}

/// Every API key's use: sessions running, session-seconds, gateway bytes, files and
/// recordings. Keys appear by their label (`t_…`, a digest), never themselves.
pub async fn tenants(broker: &Broker) -> Result<Response<Body>, ApiError> {
    let tenants = broker.tenant_usage().await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "node": broker.node(), "tenants": tenants }),
    ))
}

/// The cluster as Prometheus gauges, as of the nodes' last heartbeats.
pub fn cluster_metrics(nodes: &[(NodeInfo, bool)]) -> String {
    let alive: Vec<&NodeInfo> = nodes.iter().filter(|(_, a)| *a).map(|(n, _)| n).collect();
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    let _ = writeln!(
        out,
        "# HELP cdpgate_cluster_nodes Nodes registered, by whether their heartbeat is current.\n\
         # TYPE cdpgate_cluster_nodes gauge\n\
         cdpgate_cluster_nodes{{state=\"alive\"}} {}\ncdpgate_cluster_nodes{{state=\"lost\"}} {}",
        alive.len(),
        nodes.len() - alive.len()
    );
    let sum = |f: fn(&NodeInfo) -> usize| alive.iter().map(|n| f(n)).sum::<usize>();
    gauge(
        &mut out,
        "cdpgate_cluster_capacity",
        "Session slots of the live nodes.",
        sum(|n| n.max_sessions),
    );
    gauge(
        &mut out,
        "cdpgate_cluster_free_slots",
        "Free session slots of the live nodes.",
        sum(|n| n.free),
    );
    gauge(
        &mut out,
        "cdpgate_cluster_sessions",
        "Sessions the live nodes run.",
        sum(|n| n.sessions),
    );
    out
}
