//! Session records in Redis, so that every node of a cluster reads every session.
//!
//! Keys, under a prefix (`cdpgate:` by default):
//! - `session:{id}`: the record, JSON;
//! - `tenant:{tenant}:all` and `tenant:{tenant}:{status}`: sorted sets of ids by creation
//!   time (microseconds), for lists newest first with a total (`ZCARD`), equal times
//!   ordered by id as the local store does;
//! - `ended`: a sorted set of ended ids by end time, which the sweep reads;
//! - `node:{node}:active`: the active sessions of each node, so a restarted node finds
//!   the ones it left behind;
//! - `profile:{id}:sessions`: the active sessions using each profile, on any node.
//!
//! Every put or remove changes the record and its indexes in one `MULTI`/`EXEC`; the sweep
//! forgets ended records past the retention, indexes and all.

use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::record::{SessionRecord, Status};
use super::{ListPage, ListQuery, SessionStore, StoreError};

/// How long a call to Redis may take before the caller hears that it is unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisStore {
    redis: ConnectionManager,
    prefix: String,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

fn micros(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros() as f64
}

impl RedisStore {
    /// Connects to `url` (`redis://` or `rediss://`); the connection is re-established by
    /// itself after Redis goes away.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let redis = tokio::time::timeout(CALL_TIMEOUT * 3, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer from Redis within {:?}", CALL_TIMEOUT * 3)))??;
        Ok(RedisStore {
            redis,
            prefix: prefix.to_owned(),
        })
    }

    /// The connection and key prefix, for the other things a cluster keeps in Redis.
    pub fn connection(&self) -> (ConnectionManager, String) {
        (self.redis.clone(), self.prefix.clone())
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn record_key(&self, id: &str) -> String {
        self.key(&format!("session:{id}"))
    }

    fn tenant_key(&self, tenant: &str, status: Option<Status>) -> String {
        self.key(&format!("tenant:{tenant}:{}", status.map_or("all", Status::as_str)))
    }

    fn node_key(&self, node: &str) -> String {
        self.key(&format!("node:{node}:active"))
    }

    fn profile_key(&self, profile: &str) -> String {
        self.key(&format!("profile:{profile}:sessions"))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        Ok(cmd.query_async(&mut self.redis.clone()).await?)
    }

    async fn run(&self, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        let _: () = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Writes `record` and its index entries, in `pipe`.
    fn write(&self, pipe: &mut redis::Pipeline, record: &SessionRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let tenant = record.tenant.to_string();
        let created = micros(record.created_at);
        pipe.cmd("SET").arg(self.record_key(&record.id)).arg(json).ignore();
        pipe.cmd("ZADD")
            .arg(self.tenant_key(&tenant, None))
            .arg(created)
            .arg(&record.id)
            .ignore();
        for status in [Status::Active, Status::Terminated, Status::Expired] {
            let key = self.tenant_key(&tenant, Some(status));
            if status == record.status {
                pipe.cmd("ZADD").arg(key).arg(created).arg(&record.id).ignore();
            } else {
                pipe.cmd("ZREM").arg(key).arg(&record.id).ignore();
            }
        }
        if let Some(profile) = &record.profile {
            let change = if record.status == Status::Active {
                "SADD"
            } else {
                "SREM"
            };
            pipe.cmd(change)
                .arg(self.profile_key(&profile.id))
                .arg(&record.id)
                .ignore();
        }
        match record.ended_at {
            None => {
                pipe.cmd("SADD")
                    .arg(self.node_key(&record.node))
                    .arg(&record.id)
                    .ignore();
            }
            Some(ended) => {
                pipe.cmd("SREM")
                    .arg(self.node_key(&record.node))
                    .arg(&record.id)
                    .ignore();
                pipe.cmd("ZADD")
                    .arg(self.key("ended"))
                    .arg(micros(ended))
                    .arg(&record.id)
                    .ignore();
            }
        }
        Ok(())
    }

    /// Removes the record and every index entry it has, in `pipe`.
    fn unindex(&self, pipe: &mut redis::Pipeline, record: &SessionRecord) {
        let tenant = record.tenant.to_string();
        pipe.cmd("DEL").arg(self.record_key(&record.id)).ignore();
        pipe.cmd("ZREM")
            .arg(self.tenant_key(&tenant, None))
            .arg(&record.id)
            .ignore();
        for status in [Status::Active, Status::Terminated, Status::Expired] {
            pipe.cmd("ZREM")
                .arg(self.tenant_key(&tenant, Some(status)))
                .arg(&record.id)
                .ignore();
        }
        pipe.cmd("ZREM").arg(self.key("ended")).arg(&record.id).ignore();
        pipe.cmd("SREM")
            .arg(self.node_key(&record.node))
            .arg(&record.id)
            .ignore();
        if let Some(profile) = &record.profile {
            pipe.cmd("SREM")
                .arg(self.profile_key(&profile.id))
                .arg(&record.id)
                .ignore();
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let json: Option<String> = self.query(redis::cmd("GET").arg(self.record_key(id))).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let index = self.tenant_key(&query.tenant.to_string(), query.status);
        let total: usize = self.query(redis::cmd("ZCARD").arg(&index)).await?;
        if query.offset >= total || query.limit == 0 {
            return Ok(ListPage {
                records: Vec::new(),
                total,
            });
        }
        let last = query.offset.saturating_add(query.limit).min(total) - 1;
        let ids: Vec<String> = self
            .query(redis::cmd("ZREVRANGE").arg(&index).arg(query.offset).arg(last))
            .await?;
        if ids.is_empty() {
            return Ok(ListPage {
                records: Vec::new(),
                total,
            });
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let found: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        let records = found
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        Ok(ListPage { records, total })
    }

    async fn put(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.write(&mut pipe, record)?;
        self.run(&pipe).await
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<SessionRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let found: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }

    async fn put_many(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in records {
            self.write(&mut pipe, record)?;
        }
        self.run(&pipe).await
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let Some(record) = self.get(id).await? else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.unindex(&mut pipe, &record);
        self.run(&pipe).await
    }

    async fn sweep(&self, now: SystemTime, retention: Duration) -> Result<Vec<String>, StoreError> {
        let before = micros(now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH));
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key("ended"))
                    .arg("-inf")
                    .arg(before),
            )
            .await?;
        let mut swept = Vec::new();
        for id in ids {
            let mut pipe = redis::pipe();
            pipe.atomic();
            match self.get(&id).await? {
                Some(record) => self.unindex(&mut pipe, &record),
                None => {
                    pipe.cmd("ZREM").arg(self.key("ended")).arg(&id).ignore();
                }
            }
            self.run(&pipe).await?;
            swept.push(id);
        }
        Ok(swept)
    }

    async fn active_on(&self, node: &str) -> Result<Vec<String>, StoreError> {
        self.query(redis::cmd("SMEMBERS").arg(self.node_key(node))).await
    }

    async fn profile_users(&self, profile_id: &str) -> Result<usize, StoreError> {
        self.query(redis::cmd("SCARD").arg(self.profile_key(profile_id))).await
    }

    async fn end_left_active(&self, node: &str, now: SystemTime) -> Result<usize, StoreError> {
        let mut ended = 0;
        for id in self.active_on(node).await? {
            match self.get(&id).await? {
                Some(record) if record.status == Status::Active && record.node == node => {
                    self.put(&record.ended_by_restart(now)).await?;
                    ended += 1;
                }
                _ => {
                    let _: () = self.query(redis::cmd("SREM").arg(self.node_key(node)).arg(&id)).await?;
                }
            }
        }
        Ok(ended)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::contract;

    /// A `redis-server` of its own on a free port, persistence off, gone when dropped.
    pub(crate) struct TestRedis {
        child: std::process::Child,
        pub url: String,
    }

    impl TestRedis {
        pub(crate) fn start() -> TestRedis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (Debian's package; scripts/setup.sh --test installs it)");
            let url = format!("redis://127.0.0.1:{port}/");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            TestRedis { child, url }
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn passes_the_store_contract() {
        let redis = TestRedis::start();
        let url = redis.url.clone();
        contract::run(move || {
            let url = url.clone();
            async move { Box::new(RedisStore::connect(&url, "t:").await.unwrap()) as Box<dyn SessionStore> }
        })
        .await;
    }

    #[tokio::test]
    async fn a_restarted_node_ends_only_its_own_sessions() {
        let redis = TestRedis::start();
        let store = RedisStore::connect(&redis.url, "t:").await.unwrap();
        let mine = SessionRecord {
            node: "node-a".into(),
            ..contract::record("sess_mine", "t1", 0, None)
        };
        let theirs = SessionRecord {
            node: "node-b".into(),
            ..contract::record("sess_theirs", "t1", 0, None)
        };
        store.put(&mine).await.unwrap();
        store.put(&theirs).await.unwrap();
        assert_eq!(store.end_left_active("node-a", SystemTime::now()).await.unwrap(), 1);
        let after = store.get("sess_mine").await.unwrap().unwrap();
        assert_eq!(after.end_reason, Some(crate::store::EndReason::Restarted));
        assert_eq!(store.get("sess_theirs").await.unwrap().unwrap().status, Status::Active);
        assert!(store.active_on("node-a").await.unwrap().is_empty());
        // Prefixes keep two clusters on one Redis apart.
        let other = RedisStore::connect(&redis.url, "other:").await.unwrap();
        assert!(other.get("sess_theirs").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let e = RedisStore::connect(&format!("redis://127.0.0.1:{port}/"), "t:").await;
        assert!(matches!(e, Err(StoreError::Unavailable(_))));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
