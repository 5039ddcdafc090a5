//! Per-tenant rate limits: a token bucket of session creations per API key.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::auth::Tenant;

/// Creations per minute for each tenant, as a bucket of `per_minute` tokens refilled evenly.
pub(crate) struct CreateLimiter {
    per_minute: u32,
    buckets: DashMap<Tenant, Bucket>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl CreateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        CreateLimiter {
            per_minute,
            buckets: DashMap::new(),
        }
    }

    /// Takes one creation for `tenant`, or answers how long until one is available.
    pub(crate) fn take(&self, tenant: &Tenant, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = self.per_minute as f64;
        let per_second = capacity / 60.0;
        let mut bucket = self.buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_an_even_refill_per_tenant() {
        let limiter = CreateLimiter::new(3);
        let (a, b) = (Tenant::from_id("t_a"), Tenant::from_id("t_b"));
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take(&a, t0).unwrap();
        }
        let wait = limiter.take(&a, t0).unwrap_err();
        assert!((19..=20).contains(&wait.as_secs()), "{wait:?}");
        limiter.take(&b, t0).unwrap();
        assert!(limiter.take(&a, t0 + Duration::from_secs(10)).is_err());
        limiter.take(&a, t0 + Duration::from_secs(21)).unwrap();
        assert!(CreateLimiter::new(0).take(&a, t0).is_ok());
    }
}
