//! Named pools: per API key, browsers kept ready with one set of session options (a
//! profile copied in, extensions loaded), so that `POST /public/sessions {"pool": name}`
//! takes as long as registering a session. Each pool has a keeper task that refills it one
//! launch at a time, only into a free slot and within the key's quota (a ready browser
//! counts as a session of its key); a pool with none ready answers with a cold start of
//! the same settings. A pool of isolation "context" keeps contexts in the shared browsers
//! instead, each bound to the id its session will have. In a cluster every node knows
//! every pool (the definitions are in Redis) and keeps its share of each pool's size.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::request::RequestedOptions;
use crate::auth::Tenant;
use crate::browser::pool::Lease;
use crate::browser::shared::ContextLease;
use crate::session::Session;
use crate::store::profiles::Profile;
use crate::values::Screen;

/// What a pool's sessions are made from, as validated.
#[derive(Clone)]
pub struct PoolSpec {
    /// Ready browsers to keep.
    pub size: usize,
    /// Each session's TTL unless its create names one.
    pub ttl: Duration,
    pub screen: Screen,
    /// A profile of the key, copied into each browser and never written back.
    pub profile_id: Option<String>,
    pub options: RequestedOptions,
}

/// A PATCH of a pool.
#[derive(Default)]
pub struct PoolChange {
    pub size: Option<usize>,
    pub ttl: Option<Duration>,
    pub idle_timeout: Option<u64>,
}

/// What a create from a pool may add to the pool's settings.
pub struct PoolTake {
    pub ttl: Option<Duration>,
    pub idle_timeout: Option<u64>,
    pub metadata: Map<String, Value>,
}

/// A pool as the API shows it.
pub struct PoolView {
    pub name: String,
    pub created_at: SystemTime,
    pub spec: PoolSpec,
    pub stats: PoolStats,
}

/// How a pool has done since it was defined on this node.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    pub ready: usize,
    /// Creates answered from a ready browser, and with a cold start.
    pub taken: u64,
    pub missed: u64,
    /// Ready browsers that could not be made, and why the last one could not.
    pub errors: u64,
    pub last_error: Option<String>,
    /// How long the last ready browser took to make.
    pub last_refill_ms: Option<u64>,
    /// In a cluster: ready ones by node (this one's included); the counts above are the
    /// cluster's.
    pub nodes: Option<Vec<(String, usize)>>,
}

/// This node's place among the cluster's live nodes, which decides its share of each
/// pool: `size / nodes`, and one more on `size % nodes` of them (which ones turns with the
/// pool's name, so that pools of size 1 do not all sit on one node). One node alone keeps
/// every pool whole.
#[derive(Debug)]
pub(super) struct Share {
    index: AtomicUsize,
    nodes: AtomicUsize,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            index: AtomicUsize::new(0),
            nodes: AtomicUsize::new(1),
        }
    }
}

impl Share {
    /// Sets this node's place; whether it changed.
    pub(super) fn set(&self, index: usize, nodes: usize) -> bool {
        let nodes = nodes.max(1);
        let before = (self.index.swap(index, Relaxed), self.nodes.swap(nodes, Relaxed));
        before != (index, nodes)
    }

    /// This node's part of `size` ready ones for the pool `name`.
    pub(super) fn of(&self, name: &str, size: usize) -> usize {
        let (index, nodes) = (self.index.load(Relaxed), self.nodes.load(Relaxed).max(1));
        let turn = name.bytes().map(usize::from).sum::<usize>();
        size / nodes + usize::from((index + turn) % nodes < size % nodes)
    }
}

/// A session handed out by a pool, and whether a ready browser was there for it.
pub struct Taken {
    pub session: Arc<Session>,
    pub hit: bool,
}

/// A session made ready ahead of its take, with the pool's profile as read then (so that
/// the take reads no profile record).
pub(super) struct Ready {
    pub(super) kind: ReadyKind,
    pub(super) profile: Option<Arc<Profile>>,
}

/// A browser of its own, or a context in a shared browser (bound, its traffic routed, for
/// the session id chosen with it; no client can reach it before that session exists).
pub(super) enum ReadyKind {
    Browser(Lease),
    Context { id: String, lease: ContextLease },
}

impl Ready {
    pub(super) fn is_alive(&self) -> bool {
        match &self.kind {
            ReadyKind::Browser(lease) => lease.browser.is_alive(),
            ReadyKind::Context { lease, .. } => lease.is_alive(),
        }
    }

    /// Fires once it is gone, after it is dropped: its browser exited, or its context disposed.
    pub(super) fn gone(&self) -> CancellationToken {
        match &self.kind {
            ReadyKind::Browser(lease) => lease.browser.exited(),
            ReadyKind::Context { lease, .. } => lease.released(),
        }
    }
}

/// One pool: its settings, its ready browsers and its keeper's controls.
pub(super) struct NamedPool {
    pub(super) name: String,
    pub(super) tenant: Tenant,
    pub(super) created_at: SystemTime,
    pub(super) spec: Mutex<PoolSpec>,
    /// The definition as the API took it (its PATCHes merged in), kept for the next start.
    pub(super) definition: Mutex<Map<String, Value>>,
    pub(super) ready: Mutex<VecDeque<Ready>>,
    /// When one was last taken: the keeper's replacement waits a moment while others are
    /// ready, so the taken session's first commands do not share the cores with a launch.
    pub(super) last_take: Mutex<Option<Instant>>,
    pub(super) stats: Mutex<PoolStats>,
    /// Wakes the keeper: a browser was taken, or the size changed.
    pub(super) wake: Notify,
    /// Cancelled at the pool's delete (and the broker's shutdown); `kept` once the keeper
    /// has let go of every browser.
    pub(super) stop: CancellationToken,
    pub(super) kept: CancellationToken,
    /// This node's place in the cluster (shared by every pool).
    pub(super) share: Arc<Share>,
}

impl NamedPool {
    /// How many this node keeps ready.
    pub(super) fn target(&self) -> usize {
        self.share.of(&self.name, self.spec.lock().expect("pool lock").size)
    }

    pub(super) fn spec(&self) -> PoolSpec {
        self.spec.lock().expect("pool lock").clone()
    }

    pub(super) fn missing(&self) -> usize {
        let size = self.target();
        let mut ready = self.ready.lock().expect("pool lock");
        ready.retain(Ready::is_alive);
        size.saturating_sub(ready.len())
    }

    pub(super) fn ready_count(&self) -> usize {
        self.ready.lock().expect("pool lock").len()
    }

    /// A live ready one, if one is there.
    pub(super) fn pop(&self) -> Option<Ready> {
        let mut ready = self.ready.lock().expect("pool lock");
        while let Some(one) = ready.pop_front() {
            if one.is_alive() {
                *self.last_take.lock().expect("pool lock") = Some(Instant::now());
                return Some(one);
            }
        }
        None
    }

    /// Keeps `ready` (the keeper lets go of what is past the size, or of all once stopped).
    pub(super) fn push(&self, ready: Ready) {
        self.ready.lock().expect("pool lock").push_back(ready);
    }

    /// Takes every ready one out (to be dropped: killed or disposed, its directory removed).
    pub(super) fn drain(&self) -> Vec<Ready> {
        self.ready.lock().expect("pool lock").drain(..).collect()
    }

    /// Ready browsers past the size, taken out.
    pub(super) fn excess(&self) -> Vec<Ready> {
        let size = self.target();
        let mut ready = self.ready.lock().expect("pool lock");
        let keep = size.min(ready.len());
        ready.drain(keep..).collect()
    }

    pub(super) fn view(&self) -> PoolView {
        let mut stats = self.stats.lock().expect("pool lock").clone();
        stats.ready = self.ready_count();
        PoolView {
            name: self.name.clone(),
            created_at: self.created_at,
            spec: self.spec(),
            stats,
        }
    }
}

/// Every key's pools on this node.
#[derive(Default)]
pub(super) struct NamedPools {
    pools: Mutex<HashMap<(Tenant, String), Arc<NamedPool>>>,
    pub(super) share: Arc<Share>,
    /// Held by a definition from its checks (the key's count and sizes) to its insert,
    /// which waits on the store: two at once would both pass the checks.
    pub(super) defining: tokio::sync::Mutex<()>,
}

impl NamedPools {
    pub(super) fn get(&self, tenant: &Tenant, name: &str) -> Option<Arc<NamedPool>> {
        self.lock().get(&(tenant.clone(), name.to_owned())).cloned()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Tenant, String), Arc<NamedPool>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn of(&self, tenant: &Tenant) -> Vec<Arc<NamedPool>> {
        let mut pools: Vec<_> = self.lock().values().filter(|p| &p.tenant == tenant).cloned().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }

    /// Browsers ready in `tenant`'s pools: they count against its quota of sessions.
    pub(super) fn ready_of(&self, tenant: &Tenant) -> usize {
        self.lock()
            .values()
            .filter(|p| &p.tenant == tenant)
            .map(|p| p.ready_count())
            .sum()
    }

    /// How many pools, and how many browsers ready in them.
    pub(super) fn totals(&self) -> (usize, usize) {
        let pools = self.lock();
        (pools.len(), pools.values().map(|p| p.ready_count()).sum())
    }

    /// Stops every pool and drops its ready browsers (the broker's shutdown).
    pub(super) fn stop_all(&self) {
        for pool in self.lock().drain().map(|(_, p)| p) {
            pool.stop.cancel();
            drop(pool.drain());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_shares_add_up_to_the_size() {
        for nodes in 1..=4 {
            for size in 0..=9 {
                for name in ["a", "login", "x-1"] {
                    let total: usize = (0..nodes)
                        .map(|index| {
                            let share = Share::default();
                            share.set(index, nodes);
                            share.of(name, size)
                        })
                        .sum();
                    assert_eq!(total, size, "{name}: {size} over {nodes} nodes");
                }
            }
        }
        let alone = Share::default();
        assert_eq!(alone.of("a", 5), 5);
        assert!(alone.set(1, 2));
        assert!(!alone.set(1, 2));
    }
}
