//! Tenants' request budgets (`TenantPolicy::requests_per_minute`), per gateway: a
//! token bucket per tenant that holds a minute's requests and refills evenly, so
//! a tenant may burst up to its limit and then goes on at its rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of the tenants that have a limit.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Takes one request of `tenant`, whose limit is `per_minute`, at `now`; when
    /// none is left, how long until one is.
    pub(crate) fn take(&self, tenant: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        // A lowered limit takes effect at once.
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
    }

    /// Forgets tenants that no longer have a limit (a policy changed or went).
    pub(crate) fn keep_only(&self, limited: impl Fn(&str) -> bool) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|tenant, _| limited(tenant));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_bursts_to_its_limit_then_goes_on_at_its_rate() {
        let limits = RateLimits::default();
        let t0 = Instant::now();
        for i in 0..60 {
            assert_eq!(limits.take("acme", 60, t0), Ok(()), "request {i}");
        }
        let wait = limits.take("acme", 60, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(limits.take("acme", 60, t0 + Duration::from_secs(1)), Ok(()));
        assert!(
            limits
                .take("acme", 60, t0 + Duration::from_secs(1))
                .is_err()
        );
        // Another tenant has a budget of its own.
        assert_eq!(limits.take("beta", 1, t0), Ok(()));
        assert!(limits.take("beta", 1, t0).is_err());
        limits.keep_only(|t| t == "acme");
        assert_eq!(
            limits.take("beta", 1, t0),
            Ok(()),
            "forgotten, so full again"
        );
    }
}
