//! The nodes of a cluster, in Redis: each node's address and load under `{prefix}nodes`,
//! and a heartbeat key with a short TTL that says it is alive. A node whose heartbeat has
//! lapsed is not sent anything.
//!
//! Each record is signed with the cluster secret (HMAC-SHA256 over every field): anyone
//! who can write to Redis can add a record, but one that does not verify is never read
//! as a node, so nothing (creates with their proxy passwords, hops) is sent to it.
//! Nothing secret is kept in Redis.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::auth::ClusterKey;

/// How long a heartbeat keeps a node alive; beats come every third of it.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(9);

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Where other nodes reach its API and proxy (`http://host:port`).
    pub url: String,
    pub max_sessions: usize,
    /// Sessions it could take now without waiting.
    pub free: usize,
    /// Sessions it runs.
    pub sessions: usize,
    /// Unix milliseconds of its last heartbeat.
    pub heartbeat_ms: u64,
    /// Its share of each named pool, by `<tenant>.<name>`: where a create from a pool that
    /// has none ready here is sent, and what a pool's cluster totals add up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolShare>,
}

/// One node's part of a named pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolShare {
    pub ready: usize,
    pub taken: u64,
    pub missed: u64,
    pub errors: u64,
}

/// A node's record as kept in Redis: its fields and their signature.
#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(flatten)]
    info: NodeInfo,
    #[serde(default)]
    sig: String,
}

impl NodeInfo {
    fn fields(&self) -> Vec<String> {
        let mut fields = vec![
            self.id.clone(),
            self.url.clone(),
            self.max_sessions.to_string(),
            self.free.to_string(),
            self.sessions.to_string(),
            self.heartbeat_ms.to_string(),
        ];
        // Signed too, when there are any (a record without pools signs as before).
        if !self.pools.is_empty() {
            fields.push(serde_json::to_string(&self.pools).unwrap_or_default());
        }
        fields
    }
}

pub struct Nodes {
    redis: ConnectionManager,
    prefix: String,
    key: ClusterKey,
    /// Records that did not verify, each node id logged once.
    forged_seen: Mutex<HashSet<String>>,
    forged: AtomicU64,
}

impl Nodes {
    pub fn new(redis: ConnectionManager, prefix: String, key: ClusterKey) -> Nodes {
        Nodes {
            redis,
            prefix,
            key,
            forged_seen: Mutex::default(),
            forged: AtomicU64::new(0),
        }
    }

    /// How many times a node record that does not verify under the cluster secret was
    /// read (and ignored).
    pub fn forged_records(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }

    /// The node a record in Redis describes, if the record was signed with this cluster's
    /// secret; else nothing, logged once per node id.
    fn verified(&self, id: &str, json: &str) -> Option<NodeInfo> {
        let signed = serde_json::from_str::<Signed>(json).ok();
        if let Some(signed) = signed {
            let fields = signed.info.fields();
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            if signed.info.id == id && self.key.verify_node(&fields, &signed.sig) {
                return Some(signed.info);
            }
        }
        self.forged.fetch_add(1, Ordering::Relaxed);
        let first = self
            .forged_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
        if first {
            tracing::warn!(
                node = %id,
                "a node record in Redis is not signed with this cluster's cluster_secret: it is ignored \
                 (never placed on, never routed to)"
            );
        }
        None
    }

    /// The connection and key prefix, for the other things a cluster keeps in Redis.
    pub fn connection(&self) -> (ConnectionManager, String) {
        (self.redis.clone(), self.prefix.clone())
    }

    fn alive_key(&self, id: &str) -> String {
        format!("{}node:{id}:alive", self.prefix)
    }

    fn table(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        Ok(cmd.query_async(&mut self.redis.clone()).await?)
    }

    /// Says that `info`'s node is alive, for the next [`HEARTBEAT_TTL`].
    pub async fn beat(&self, info: &NodeInfo) -> Result<(), StoreError> {
        let fields = info.fields();
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let signed = Signed {
            info: info.clone(),
            sig: self.key.sign_node(&fields),
        };
        let json = serde_json::to_string(&signed).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.alive_key(&info.id))
            .arg(info.heartbeat_ms)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .ignore();
        pipe.cmd("HSET").arg(self.table()).arg(&info.id).arg(json).ignore();
        let _: () = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Leaves the cluster: a clean stop.
    pub async fn leave(&self, id: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(self.alive_key(id)).ignore();
        pipe.cmd("HDEL").arg(self.table()).arg(id).ignore();
        let _: () = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// The node `id`, if its heartbeat is current and its record verifies.
    pub async fn alive(&self, id: &str) -> Result<Option<NodeInfo>, StoreError> {
        let alive: bool = self.query(redis::cmd("EXISTS").arg(self.alive_key(id))).await?;
        if !alive {
            return Ok(None);
        }
        let json: Option<String> = self.query(redis::cmd("HGET").arg(self.table()).arg(id)).await?;
        Ok(json.and_then(|j| self.verified(id, &j)))
    }

    /// Every node that has registered, alive or not, with whether its heartbeat is current;
    /// records that do not verify are left out.
    pub async fn all(&self) -> Result<Vec<(NodeInfo, bool)>, StoreError> {
        let table: Vec<(String, String)> = self.query(redis::cmd("HGETALL").arg(self.table())).await?;
        let infos: Vec<NodeInfo> = table.iter().filter_map(|(id, json)| self.verified(id, json)).collect();
        // Every heartbeat in one round trip: a create on a full node reads this first.
        let mut pipe = redis::pipe();
        for info in &infos {
            pipe.cmd("EXISTS").arg(self.alive_key(&info.id));
        }
        let alive: Vec<bool> = if infos.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.redis.clone()).await?
        };
        let mut nodes: Vec<(NodeInfo, bool)> = infos.into_iter().zip(alive).collect();
        nodes.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(nodes)
    }

    /// Whether node `id` leads the cluster's chores for the next `lease` (taking the lead
    /// if no one holds it, renewing it if it holds it): one node, not all, reaps lost nodes.
    pub async fn lead(&self, id: &str, lease: Duration) -> Result<bool, StoreError> {
        let key = format!("{}leader", self.prefix);
        let ms = lease.as_millis() as u64;
        let took: Option<String> = self
            .query(redis::cmd("SET").arg(&key).arg(id).arg("NX").arg("PX").arg(ms))
            .await?;
        if took.is_some() {
            return Ok(true);
        }
        let holder: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        if holder.as_deref() == Some(id) {
            let _: bool = self.query(redis::cmd("PEXPIRE").arg(&key).arg(ms)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Takes one creation from `tenant`'s cluster-wide bucket of `per_minute`, refilled
    /// evenly (the local limiter's rule, as GCRA in one script, on Redis's clock); or
    /// answers how long until one is available.
    pub async fn take_create(&self, tenant: &str, per_minute: u32) -> Result<Option<Duration>, StoreError> {
        const GCRA: &str = r#"
            local t = redis.call('TIME')
            local now = t[1] * 1000 + math.floor(t[2] / 1000)
            local interval = tonumber(ARGV[1])
            local tolerance = tonumber(ARGV[2])
            local tat = tonumber(redis.call('GET', KEYS[1]) or now)
            if tat < now then tat = now end
            if now < tat - tolerance then return tat - tolerance - now end
            local next = tat + interval
            redis.call('SET', KEYS[1], next, 'PX', next - now + interval)
            return 0"#;
        let interval = 60_000 / u64::from(per_minute.max(1));
        let tolerance = interval * u64::from(per_minute.max(1) - 1);
        let key = format!("{}creates:{tenant}", self.prefix);
        let wait_ms: u64 = self
            .query(
                redis::cmd("EVAL")
                    .arg(GCRA)
                    .arg(1)
                    .arg(key)
                    .arg(interval)
                    .arg(tolerance),
            )
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::RedisStore;
    use crate::store::redis::tests::TestRedis;

    const SECRET: &str = "the-cluster-secret-of-32-characters";
    const OTHER_SECRET: &str = "not-the-cluster-secret-32-characters";

    #[tokio::test]
    async fn nodes_beat_lapse_and_leave() {
        let redis = TestRedis::start();
        let (conn, prefix) = RedisStore::connect(&redis.url, "n:").await.unwrap().connection();
        let nodes = Nodes::new(conn, prefix, ClusterKey::new(SECRET));
        let info = NodeInfo {
            id: "node-a".into(),
            url: "http://127.0.0.1:1".into(),
            max_sessions: 4,
            free: 3,
            sessions: 1,
            heartbeat_ms: 1,
            pools: BTreeMap::new(),
        };
        nodes.beat(&info).await.unwrap();
        assert_eq!(nodes.alive("node-a").await.unwrap(), Some(info.clone()));
        assert_eq!(nodes.alive("node-b").await.unwrap(), None);
        // A lapsed heartbeat: listed, not alive.
        let _: () = redis::cmd("DEL")
            .arg("n:node:node-a:alive")
            .query_async(&mut nodes.redis.clone())
            .await
            .unwrap();
        assert_eq!(nodes.alive("node-a").await.unwrap(), None);
        assert_eq!(nodes.all().await.unwrap(), vec![(info.clone(), false)]);
        nodes.beat(&info).await.unwrap();
        nodes.leave("node-a").await.unwrap();
        assert!(nodes.all().await.unwrap().is_empty());
        // One leader at a time; another takes over once the lease lapses.
        assert!(nodes.lead("node-a", Duration::from_millis(300)).await.unwrap());
        assert!(
            nodes.lead("node-a", Duration::from_millis(300)).await.unwrap(),
            "renewed"
        );
        assert!(!nodes.lead("node-b", Duration::from_millis(300)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(nodes.lead("node-b", Duration::from_millis(300)).await.unwrap());
        // A bucket of 3 a minute, shared by whoever asks: the fourth waits about 20 s.
        for _ in 0..3 {
            assert_eq!(nodes.take_create("t_a", 3).await.unwrap(), None);
        }
        let wait = nodes.take_create("t_a", 3).await.unwrap().expect("empty bucket");
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(nodes.take_create("t_b", 3).await.unwrap(), None, "tenants apart");
        // A record not signed with the cluster secret is no node, whatever it says; one
        // signed with another secret neither.
        let forged = NodeInfo {
            id: "node-f".into(),
            url: "http://127.0.0.1:2".into(),
            ..info.clone()
        };
        let mut conn = nodes.redis.clone();
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg("n:nodes")
            .arg("node-f")
            .arg(serde_json::to_string(&forged).unwrap())
            .cmd("SET")
            .arg("n:node:node-f:alive")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let other = Nodes::new(conn.clone(), "n:".into(), ClusterKey::new(OTHER_SECRET));
        other
            .beat(&NodeInfo {
                id: "node-g".into(),
                ..forged.clone()
            })
            .await
            .unwrap();
        nodes.beat(&info).await.unwrap();
        assert_eq!(nodes.alive("node-f").await.unwrap(), None);
        assert_eq!(nodes.alive("node-g").await.unwrap(), None);
        assert_eq!(nodes.all().await.unwrap(), vec![(info.clone(), true)]);
        assert!(nodes.forged_records() >= 4, "{}", nodes.forged_records());
        // A real node's record copied under another id, or changed, does not verify either.
        let json: String = redis::cmd("HGET")
            .arg("n:nodes")
            .arg("node-a")
            .query_async(&mut conn)
            .await
            .unwrap();
        let moved = json.replace("127.0.0.1:1", "127.0.0.1:2");
        let _: () = redis::cmd("HSET")
            .arg("n:nodes")
            .arg("node-a")
            .arg(moved)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(nodes.alive("node-a").await.unwrap(), None);
        let _: () = redis::cmd("HSET")
            .arg("n:nodes")
            .arg("node-h")
            .arg(&json)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(nodes.all().await.unwrap().iter().all(|(n, _)| n.id != "node-h"));
    }
}
