//! The single-writer rule for profiles across a cluster, in Redis.
//!
//! Keys, under the cluster's prefix:
//! - `profile:{id}:writer`: `"<fence> <holder>"`, set only if absent, with a lease (PX)
//!   that the holder renews while its session runs;
//! - `profile:{id}:fence`: a counter; each writer takes the next number;
//! - `profile:{id}:current`: `"<fence> <generation>"`, the generation in force and the
//!   fence of the save that committed it.
//!
//! A save commits by swapping `current` in one script that refuses a fence older than
//! the one committed or than the writer's who holds the lease now: a node paused past its
//! lease wakes up unable to overwrite what a later writer saved.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::StoreError;

pub struct ProfileLocks {
    redis: ConnectionManager,
    prefix: String,
    lease: Duration,
}

/// A writer's hold: its fence, and the value that proves it holds the lease.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterLease {
    pub fence: u64,
    token: String,
}

/// What became of a commit.
#[derive(Debug, PartialEq)]
pub enum Commit {
    /// In force; the generation it replaced, if any.
    Done { replaced: Option<String> },
    /// Refused: a later writer holds or has committed the profile.
    Fenced,
}

const ACQUIRE: &str = r#"
    local held = redis.call('GET', KEYS[1])
    if held then return {0, held} end
    local fence = redis.call('INCR', KEYS[2])
    local token = fence .. ' ' .. ARGV[1]
    redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
    return {1, token}"#;

const RENEW: &str = r#"
    if redis.call('GET', KEYS[1]) == ARGV[1] then
        return redis.call('PEXPIRE', KEYS[1], ARGV[2])
    end
    return 0"#;

const RELEASE: &str = r#"
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0"#;

const COMMIT: &str = r#"
    local fence = tonumber(ARGV[1])
    local function fence_of(value)
        if not value then return nil end
        return tonumber(string.match(value, '^(%d+)'))
    end
    local current = redis.call('GET', KEYS[1])
    local committed = fence_of(current)
    if committed and committed > fence then return {0, ''} end
    local writer = fence_of(redis.call('GET', KEYS[2]))
    if writer and writer > fence then return {0, ''} end
    redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
    return {1, current or ''}"#;

impl ProfileLocks {
    pub fn new(redis: ConnectionManager, prefix: String, lease: Duration) -> ProfileLocks {
        ProfileLocks { redis, prefix, lease }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn key(&self, id: &str, what: &str) -> String {
        format!("{}profile:{id}:{what}", self.prefix)
    }

    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
        Ok(cmd.query_async(&mut self.redis.clone()).await?)
    }

    fn lease_ms(&self) -> String {
        self.lease.as_millis().to_string()
    }

    /// Takes profile `id`'s writer lease for `holder` (a session id), or answers who
    /// holds it.
    pub async fn acquire(&self, id: &str, holder: &str) -> Result<Result<WriterLease, String>, StoreError> {
        let keys = [self.key(id, "writer"), self.key(id, "fence")];
        let (took, value): (u8, String) = self.eval(ACQUIRE, &keys, &[holder.to_owned(), self.lease_ms()]).await?;
        let holder_of = |v: &str| v.split_once(' ').map_or(v.to_owned(), |(_, h)| h.to_owned());
        if took == 0 {
            return Ok(Err(holder_of(&value)));
        }
        let fence = value.split(' ').next().and_then(|f| f.parse().ok()).unwrap_or(0);
        Ok(Ok(WriterLease { fence, token: value }))
    }

    /// Extends the lease; false once it has lapsed or been taken.
    pub async fn renew(&self, id: &str, lease: &WriterLease) -> Result<bool, StoreError> {
        let renewed: u8 = self
            .eval(
                RENEW,
                &[self.key(id, "writer")],
                &[lease.token.clone(), self.lease_ms()],
            )
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release(&self, id: &str, lease: &WriterLease) -> Result<(), StoreError> {
        let _: u8 = self
            .eval(RELEASE, &[self.key(id, "writer")], std::slice::from_ref(&lease.token))
            .await?;
        Ok(())
    }

    /// The holder of profile `id`'s writer lease, if any.
    pub async fn writer(&self, id: &str) -> Result<Option<String>, StoreError> {
        let value: Option<String> = redis::cmd("GET")
            .arg(self.key(id, "writer"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(value.map(|v| v.split_once(' ').map_or(v.clone(), |(_, h)| h.to_owned())))
    }

    /// Puts `generation` in force if `lease`'s fence is not older than the last commit's
    /// nor than the current writer's.
    pub async fn commit(&self, id: &str, lease: &WriterLease, generation: &str) -> Result<Commit, StoreError> {
        let keys = [self.key(id, "current"), self.key(id, "writer")];
        let (done, replaced): (u8, String) = self
            .eval(COMMIT, &keys, &[lease.fence.to_string(), generation.to_owned()])
            .await?;
        if done == 0 {
            return Ok(Commit::Fenced);
        }
        let replaced = replaced.split_once(' ').map(|(_, g)| g.to_owned());
        Ok(Commit::Done { replaced })
    }

    /// The generation in force by the last commit, if there was one.
    pub async fn current(&self, id: &str) -> Result<Option<String>, StoreError> {
        let value: Option<String> = redis::cmd("GET")
            .arg(self.key(id, "current"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(value.and_then(|v| v.split_once(' ').map(|(_, g)| g.to_owned())))
    }

    /// Forgets a deleted profile's keys.
    pub async fn forget(&self, id: &str) -> Result<(), StoreError> {
        let _: u32 = redis::cmd("DEL")
            .arg(self.key(id, "writer"))
            .arg(self.key(id, "fence"))
            .arg(self.key(id, "current"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::RedisStore;
    use crate::store::redis::tests::TestRedis;

    #[tokio::test]
    async fn one_writer_at_a_time_and_stale_fences_cannot_commit() {
        let redis = TestRedis::start();
        let (conn, prefix) = RedisStore::connect(&redis.url, "p:").await.unwrap().connection();
        let locks = ProfileLocks::new(conn, prefix, Duration::from_millis(300));
        let first = locks.acquire("prof", "sess_a").await.unwrap().unwrap();
        assert_eq!(locks.acquire("prof", "sess_b").await.unwrap(), Err("sess_a".into()));
        assert_eq!(locks.writer("prof").await.unwrap().as_deref(), Some("sess_a"));
        assert!(locks.renew("prof", &first).await.unwrap());
        // The first writer stalls past its lease; a second takes the profile and commits.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!locks.renew("prof", &first).await.unwrap(), "lapsed");
        let second = locks.acquire("prof", "sess_b").await.unwrap().unwrap();
        assert!(second.fence > first.fence);
        // Refused while the later writer holds the lease, before it has committed...
        assert_eq!(locks.commit("prof", &first, "gen-stale").await.unwrap(), Commit::Fenced);
        assert_eq!(
            locks.commit("prof", &second, "gen-new").await.unwrap(),
            Commit::Done { replaced: None }
        );
        locks.release("prof", &second).await.unwrap();
        // ...and after it has let go.
        assert_eq!(locks.commit("prof", &first, "gen-stale").await.unwrap(), Commit::Fenced);
        assert_eq!(locks.current("prof").await.unwrap().as_deref(), Some("gen-new"));
        // A stale holder's release does not free a lease it lost.
        let third = locks.acquire("prof", "sess_c").await.unwrap().unwrap();
        locks.release("prof", &first).await.unwrap();
        assert_eq!(locks.writer("prof").await.unwrap().as_deref(), Some("sess_c"));
        assert_eq!(
            locks.commit("prof", &third, "gen-third").await.unwrap(),
            Commit::Done {
                replaced: Some("gen-new".into())
            }
        );
        locks.forget("prof").await.unwrap();
        assert_eq!(locks.current("prof").await.unwrap(), None);
        assert_eq!(locks.writer("prof").await.unwrap(), None);
    }

    /// Many nodes racing for one profile: exactly one wins.
    #[tokio::test]
    async fn a_race_for_the_writer_lease_has_one_winner() {
        let redis = TestRedis::start();
        let (conn, prefix) = RedisStore::connect(&redis.url, "p:").await.unwrap().connection();
        let locks = std::sync::Arc::new(ProfileLocks::new(conn, prefix, Duration::from_secs(5)));
        let racers: Vec<_> = (0..16)
            .map(|i| {
                let locks = locks.clone();
                tokio::spawn(async move { locks.acquire("prof", &format!("sess_{i}")).await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.unwrap().is_ok());
        }
        assert_eq!(winners, 1);
    }
}
