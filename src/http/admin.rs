//! The operator's views (behind `admin_key`): the cluster (`GET /admin/cluster`, and the
//! cluster lines of `/metrics`) and what each API key uses (`GET /admin/tenants`).

use std::time::{Duration, SystemTime};

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::{Body, timestamp};
use crate::broker::{Broker, NodeInfo};
use crate::metrics::ClusterView;

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

/// The cluster for `/metrics`, as of the nodes' last heartbeats.
pub fn cluster_view(nodes: &[(NodeInfo, bool)]) -> ClusterView {
    let alive: Vec<&NodeInfo> = nodes.iter().filter(|(_, a)| *a).map(|(n, _)| n).collect();
    let sum = |f: fn(&NodeInfo) -> usize| alive.iter().map(|n| f(n)).sum::<usize>();
    ClusterView {
        nodes_alive: alive.len(),
        nodes_lost: nodes.len() - alive.len(),
        capacity: sum(|n| n.max_sessions),
        free_slots: sum(|n| n.free),
        sessions: sum(|n| n.sessions),
    }
}
