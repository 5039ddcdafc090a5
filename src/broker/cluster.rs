//! The cluster: this node's heartbeat, where a request about a session goes, ending the
//! sessions of lost nodes and keeping the store true to what runs here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Broker;
use crate::auth::ClusterKey;
use crate::session::Session;
use crate::store::nodes::NodeInfo;
use crate::store::{EndReason, SessionRecord, Status, StoreError};

/// Sessions of a lost node read and ended per round trip.
const REAP_BATCH: usize = 500;

impl Broker {
    /// Whether this node is one of a cluster (`redis_url`).
    pub fn is_clustered(&self) -> bool {
        self.nodes.is_some()
    }

    /// The cluster secret's key: signs and checks the requests nodes send each other.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        self.cluster_key.as_ref()
    }

    /// Whether a create that needs a browser should first be offered to other nodes: this
    /// node is one of a cluster and has no free slot.
    pub fn full_here(&self) -> bool {
        self.nodes.is_some() && self.pool.free_slots() == 0
    }

    /// The other live nodes with a free slot, those with the most first: where a create this
    /// node has no room for is offered, in order. Only records that verify under the cluster
    /// secret are read, so a forged node is never chosen.
    pub async fn placement_candidates(&self) -> Vec<NodeInfo> {
        let Some(nodes) = &self.nodes else { return Vec::new() };
        let Ok(all) = nodes.all().await else { return Vec::new() };
        let mut candidates: Vec<NodeInfo> = all
            .into_iter()
            .filter(|(n, alive)| *alive && n.id != self.node && n.free > 0)
            .map(|(n, _)| n)
            .collect();
        candidates.sort_by(|a, b| b.free.cmp(&a.free).then_with(|| a.id.cmp(&b.id)));
        candidates
    }

    /// Node records read from Redis that did not verify (ignored), with a cluster.
    pub fn forged_node_records(&self) -> Option<u64> {
        self.nodes.as_ref().map(|n| n.forged_records())
    }

    pub(super) fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.node.clone(),
            url: self.node_url.clone(),
            max_sessions: self.config.max_sessions,
            free: self.pool.free_slots(),
            sessions: self.active_sessions(),
            heartbeat_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            pools: self.pool_shares(),
        }
    }

    pub(super) async fn beat(&self) {
        let Some(nodes) = &self.nodes else { return };
        if let Err(e) = nodes.beat(&self.node_info()).await {
            tracing::warn!(error = %e, "heartbeat not recorded");
        }
    }

    /// The cluster's nodes as the store knows them (this node alone without Redis).
    pub async fn cluster(&self) -> Result<Vec<(NodeInfo, bool)>, StoreError> {
        match &self.nodes {
            Some(nodes) => nodes.all().await,
            None => Ok(vec![(self.node_info(), true)]),
        }
    }

    /// Where to send a request about session `id`: the address of the live node that runs
    /// it, when that is not this node.
    pub async fn owner_url(&self, id: &str, ended_too: bool) -> Option<String> {
        let nodes = self.nodes.as_ref()?;
        if self.running.contains_key(id) {
            return None;
        }
        let record = self.records.store().get(id).await.ok().flatten()?;
        if record.node == self.node || (record.status != Status::Active && !ended_too) {
            return None;
        }
        nodes.alive(&record.node).await.ok().flatten().map(|n| n.url)
    }

    pub(super) async fn reap(&self) -> Result<(), StoreError> {
        let Some(nodes) = &self.nodes else { return Ok(()) };
        if !nodes.lead(&self.node, LEAD_LEASE).await? {
            return Ok(());
        }
        let store = self.records.store();
        for (node, alive) in nodes.all().await? {
            if alive || node.id == self.node {
                continue;
            }
            // In batches, a read and a write each: a node with thousands of sessions is
            // reaped in a few round trips, not two per session.
            for ids in store.active_on(&node.id).await?.chunks(REAP_BATCH) {
                let ended: Vec<SessionRecord> = store
                    .get_many(ids)
                    .await?
                    .into_iter()
                    .filter(|r| r.status == Status::Active && r.node == node.id)
                    .map(|r| r.ended_elsewhere(EndReason::NodeLost, SystemTime::now()))
                    .collect();
                store.put_many(&ended).await?;
                for record in &ended {
                    tracing::warn!(session = %record.id, tenant = %record.tenant, node = %node.id, "node lost: ended its session");
                }
            }
        }
        Ok(())
    }

    /// The leader removes extension zips no record names (`Extensions::sweep_orphan_zips`).
    pub(super) async fn sweep_extension_zips(&self) {
        let Some(nodes) = &self.nodes else { return };
        if !nodes.lead(&self.node, LEAD_LEASE).await.unwrap_or(false) {
            return;
        }
        match self.extensions.sweep_orphan_zips(ORPHAN_ZIP_GRACE).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "removed extension zips no record names"),
            Err(e) => {
                tracing::debug!(error = %e, "extension zips not swept: Redis or the profile store is unavailable")
            }
        }
    }

    pub(super) async fn reconcile(&self) -> Result<(), StoreError> {
        let store = self.records.store();
        let running: Vec<Arc<Session>> = self.running.iter().map(|s| s.clone()).collect();
        let listed = store.active_on(&self.node).await?;
        // A session ended by another node (this one was taken for lost) ends here too: its
        // browser must not outlive its record. Ending it elsewhere took it off this node's
        // active set, so only the few missing from the set are read (one read per session
        // every period would be most of a large cluster's load on Redis).
        let listed_set: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
        for session in running {
            if session.status() == Status::Active
                && !listed_set.contains(session.id.as_str())
                && let Some(record) = store.get(&session.id).await?
                && record.status != Status::Active
            {
                let reason = record.end_reason.unwrap_or(EndReason::NodeLost);
                session
                    .span()
                    .in_scope(|| tracing::warn!(reason = reason.as_str(), "ended by another node"));
                let _ = session.end(reason);
            }
        }
        let refused: Vec<String> = {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            refused.retain(|_, at| at.elapsed() < REFUSED_WATCH);
            refused.keys().cloned().collect()
        };
        for id in listed {
            if self.running.contains_key(&id) {
                continue;
            }
            if refused.contains(&id) {
                // Only this node ever knew of it: its record says whose it was.
                let tenant = store.get(&id).await?.map(|r| r.tenant.to_string()).unwrap_or_default();
                tracing::info!(session = %id, tenant = %tenant, "removing the late record of a refused create");
                store.remove(&id).await?;
                continue;
            }
            if let Some(record) = store.get(&id).await?
                && record.status == Status::Active
                && record.node == self.node
                && !self.shutdown.is_cancelled()
            {
                store.put(&record.ended_by_restart(SystemTime::now())).await?;
            }
        }
        Ok(())
    }
}

/// How long the reaper's lead lasts without renewal.
pub(super) const LEAD_LEASE: Duration = Duration::from_secs(6);

/// How often a node compares the sessions the store says it runs with those it runs.
pub(super) const RECONCILE_PERIOD: Duration = Duration::from_secs(2);

/// How old a zip no record names must be before it is removed: an upload keeps its record
/// moments after its zip.
const ORPHAN_ZIP_GRACE: Duration = Duration::from_secs(600);

/// How often the leader looks for such zips.
pub(super) const ORPHAN_ZIP_PERIOD: Duration = Duration::from_secs(60);

/// How long a refused create is watched for a late write.
pub(super) const REFUSED_WATCH: Duration = Duration::from_secs(600);
