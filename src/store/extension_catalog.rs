//! The cluster's Chrome extensions in Redis: the records every node lists, each key's caps
//! held across nodes, and which browsers, on which nodes, load each one.
//!
//! Keys, under the cluster's prefix:
//! - `extensions`: a hash, one field per extension id, its record (JSON, as
//!   `store::extensions` writes it) signed with the cluster secret: a record planted by
//!   someone who can write to Redis is never read (nor the zip it would point to loaded);
//! - `extensions:{tenant}`: each key's extensions and their unpacked sizes, which the add
//!   script counts and sums before it adds: two uploads racing on two nodes cannot pass
//!   the caps together;
//! - `node:{node}:extensions`: how many of the node's browsers hold each extension now,
//!   written from the node's own count. A delete counts only nodes whose heartbeat is
//!   current (`store::nodes`), so a dead node's holds lapse with its heartbeat; a node
//!   clears its own at start.

use std::collections::{HashMap, HashSet};

use redis::aio::ConnectionManager;

use super::StoreError;
use crate::auth::ClusterKey;

/// What the add script decided.
#[derive(Debug, PartialEq)]
pub enum Added {
    Kept,
    /// The key keeps this many already: its cap.
    TooMany(usize),
    /// The key's extensions would take this many bytes, past its cap.
    TooLarge(u64),
}

/// What the delete script decided.
#[derive(Debug, PartialEq)]
pub enum Deleted {
    Gone,
    NotFound,
    /// Browsers on live nodes hold it.
    InUse(usize),
}

const ADD: &str = r#"
    local n = redis.call('HLEN', KEYS[2])
    if n >= tonumber(ARGV[4]) then return {1, n} end
    local sum = tonumber(ARGV[3])
    for _, v in ipairs(redis.call('HVALS', KEYS[2])) do sum = sum + tonumber(v) end
    if sum > tonumber(ARGV[5]) then return {2, sum} end
    if ARGV[6] == '1' then
        redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    end
    return {0, 0}"#;

/// Counts the holds of live nodes; ARGV[1] is the prefix, the ids follow.
const USERS: &str = r#"
    local prefix = ARGV[1]
    local live = {}
    for _, node in ipairs(redis.call('HKEYS', prefix .. 'nodes')) do
        if redis.call('EXISTS', prefix .. 'node:' .. node .. ':alive') == 1 then
            table.insert(live, prefix .. 'node:' .. node .. ':extensions')
        end
    end
    local counts = {}
    for i = 2, #ARGV do
        local users = 0
        for _, key in ipairs(live) do
            users = users + tonumber(redis.call('HGET', key, ARGV[i]) or '0')
        end
        counts[i - 1] = users
    end
    return counts"#;

/// Deletes ARGV[2] unless a live node holds it: -1 unknown, 0 deleted, else its users.
const DELETE: &str = r#"
    local prefix, id = ARGV[1], ARGV[2]
    if redis.call('HEXISTS', KEYS[1], id) == 0 then return -1 end
    local users = 0
    for _, node in ipairs(redis.call('HKEYS', prefix .. 'nodes')) do
        if redis.call('EXISTS', prefix .. 'node:' .. node .. ':alive') == 1 then
            users = users + tonumber(redis.call('HGET', prefix .. 'node:' .. node .. ':extensions', id) or '0')
        end
    end
    if users > 0 then return users end
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    return 0"#;

/// Holds every id in ARGV for this node if all still exist: '' or the first missing id.
const HOLD: &str = r#"
    for _, id in ipairs(ARGV) do
        if redis.call('HEXISTS', KEYS[1], id) == 0 then return id end
    end
    for _, id in ipairs(ARGV) do redis.call('HINCRBY', KEYS[2], id, 1) end
    return ''"#;

pub struct Catalog {
    redis: ConnectionManager,
    prefix: String,
    key: ClusterKey,
    node: String,
}

impl Catalog {
    pub fn new(redis: ConnectionManager, prefix: String, key: ClusterKey, node: String) -> Catalog {
        Catalog {
            redis,
            prefix,
            key,
            node,
        }
    }

    fn records_key(&self) -> String {
        format!("{}extensions", self.prefix)
    }

    fn tenant_key(&self, tenant: &str) -> String {
        format!("{}extensions:{tenant}", self.prefix)
    }

    fn holds_key(&self) -> String {
        format!("{}node:{}:extensions", self.prefix, self.node)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        Ok(cmd.query_async(&mut self.redis.clone()).await?)
    }

    fn sign(&self, id: &str, record: &str) -> String {
        let sig = self.key.sign_node(&["extension", id, record]);
        serde_json::json!({"record": record, "sig": sig}).to_string()
    }

    /// The record of a signed entry, if it verifies.
    fn verified(&self, id: &str, entry: &str) -> Option<String> {
        let entry: serde_json::Value = serde_json::from_str(entry).ok()?;
        let (record, sig) = (entry["record"].as_str()?, entry["sig"].as_str()?);
        if self.key.verify_node(&["extension", id, record], sig) {
            return Some(record.to_owned());
        }
        tracing::warn!(extension = %id, "an extension record in Redis is not signed with this cluster's cluster_secret: ignored");
        None
    }

    /// Keeps `record` as `tenant`'s extension `id` of `size` bytes if the key's caps allow
    /// it (with `keep` false, only says whether they would).
    #[allow(clippy::too_many_arguments)]
    pub async fn add(
        &self,
        tenant: &str,
        id: &str,
        size: u64,
        record: &str,
        max_count: usize,
        max_bytes: u64,
        keep: bool,
    ) -> Result<Added, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADD)
            .arg(2)
            .arg(self.records_key())
            .arg(self.tenant_key(tenant))
            .arg(id)
            .arg(self.sign(id, record))
            .arg(size)
            .arg(max_count)
            .arg(max_bytes)
            .arg(if keep { "1" } else { "0" });
        let (what, n): (u8, u64) = self.query(&cmd).await?;
        Ok(match what {
            0 => Added::Kept,
            1 => Added::TooMany(n as usize),
            _ => Added::TooLarge(n),
        })
    }

    /// The verified records of `ids`, in order (`None` where there is none).
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<Option<String>> = self.query(redis::cmd("HMGET").arg(self.records_key()).arg(ids)).await?;
        Ok(ids
            .iter()
            .zip(entries)
            .map(|(id, e)| e.and_then(|e| self.verified(id, &e)))
            .collect())
    }

    /// The verified records of `tenant`'s extensions.
    pub async fn list(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = self.query(redis::cmd("HKEYS").arg(self.tenant_key(tenant))).await?;
        Ok(self.get_many(&ids).await?.into_iter().flatten().collect())
    }

    /// Every extension id of the cluster.
    pub async fn ids(&self) -> Result<HashSet<String>, StoreError> {
        self.query(redis::cmd("HKEYS").arg(self.records_key())).await
    }

    /// Browsers of live nodes holding each of `ids`.
    pub async fn users(&self, ids: &[String]) -> Result<Vec<usize>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(USERS).arg(0).arg(&self.prefix).arg(ids);
        self.query(&cmd).await
    }

    /// Counts one more browser of this node holding each of `ids`, if every one still
    /// exists (all or none); else answers the first that does not.
    pub async fn hold(&self, ids: &[String]) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(HOLD)
            .arg(2)
            .arg(self.records_key())
            .arg(self.holds_key())
            .arg(ids);
        let missing: String = self.query(&cmd).await?;
        Ok((!missing.is_empty()).then_some(missing))
    }

    /// Writes this node's holds as `users` says, whole.
    pub async fn publish(&self, users: &HashMap<String, usize>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(self.holds_key()).ignore();
        for (id, n) in users.iter().filter(|(_, n)| **n > 0) {
            pipe.cmd("HSET").arg(self.holds_key()).arg(id).arg(*n).ignore();
        }
        let _: () = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Deletes `tenant`'s extension `id` unless a browser on a live node holds it.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<Deleted, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE)
            .arg(2)
            .arg(self.records_key())
            .arg(self.tenant_key(tenant))
            .arg(&self.prefix)
            .arg(id);
        let answer: i64 = self.query(&cmd).await?;
        Ok(match answer {
            -1 => Deleted::NotFound,
            0 => Deleted::Gone,
            n => Deleted::InUse(n as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::nodes::{NodeInfo, Nodes};
    use crate::store::redis::RedisStore;
    use crate::store::redis::tests::TestRedis;

    const SECRET: &str = "the-cluster-secret-of-32-characters";

    #[tokio::test]
    async fn caps_hold_across_nodes_and_only_live_nodes_pin_an_extension() {
        let redis = TestRedis::start();
        let (conn, prefix) = RedisStore::connect(&redis.url, "x:").await.unwrap().connection();
        let on = |node: &str| Catalog::new(conn.clone(), prefix.clone(), ClusterKey::new(SECRET), node.into());
        let (a, b) = (on("node-a"), on("node-b"));
        // Ten uploads racing on two nodes for a cap of three: three are kept.
        let tries = (0..10).map(|i| {
            let node = if i % 2 == 0 { &a } else { &b };
            async move { node.add("t_a", &format!("ext_{i:02}"), 10, "{}", 3, 1000, true).await }
        });
        let kept = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap() == Added::Kept)
            .count();
        assert_eq!(kept, 3);
        assert_eq!(b.list("t_a").await.unwrap().len(), 3);
        assert!(b.list("t_b").await.unwrap().is_empty());
        assert_eq!(
            a.add("t_b", "ext_ff", 2000, "{}", 3, 1000, true).await.unwrap(),
            Added::TooLarge(2000)
        );
        let id = a.ids().await.unwrap().into_iter().next().unwrap();

        // Node A holds it while its heartbeat is current.
        let nodes = Nodes::new(conn.clone(), prefix.clone(), ClusterKey::new(SECRET));
        let info = NodeInfo {
            id: "node-a".into(),
            url: "http://127.0.0.1:1".into(),
            max_sessions: 1,
            free: 1,
            sessions: 0,
            heartbeat_ms: 1,
            pools: Default::default(),
        };
        nodes.beat(&info).await.unwrap();
        assert_eq!(a.hold(std::slice::from_ref(&id)).await.unwrap(), None);
        assert_eq!(b.users(std::slice::from_ref(&id)).await.unwrap(), [1]);
        assert_eq!(b.delete("t_a", &id).await.unwrap(), Deleted::InUse(1));
        // Its heartbeat lapses: its hold no longer counts.
        let _: () = redis::cmd("DEL")
            .arg("x:node:node-a:alive")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        assert_eq!(b.delete("t_a", &id).await.unwrap(), Deleted::Gone);
        assert_eq!(b.delete("t_a", &id).await.unwrap(), Deleted::NotFound);
        assert_eq!(a.hold(std::slice::from_ref(&id)).await.unwrap(), Some(id.clone()));

        // A record planted without the cluster secret is not read.
        let _: () = redis::cmd("HSET")
            .arg("x:extensions")
            .arg("ext_aa")
            .arg(r#"{"record":"{}","sig":"00"}"#)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        assert_eq!(a.get_many(&["ext_aa".into()]).await.unwrap(), [None]);
    }
}
