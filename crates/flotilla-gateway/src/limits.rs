//! Tenants' budgets, per gateway: a token bucket per tenant for requests
//! (`TenantPolicy::requests_per_minute`) and one for model tokens
//! (`TenantPolicy::tokens_per_minute`). Each holds a minute's worth and refills
//! evenly, so a tenant may burst up to its limit and then goes on at its rate.
//!
//! A request's tokens are known only once its answer has ended, so a request is
//! admitted while the tenant's token budget is above zero and its spend is
//! charged afterwards: a long answer may leave the tenant in debt (at most a
//! minute's worth), and it waits until the budget has refilled.

use flotilla_core::TenantPolicy;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    /// Refills to `now` at `per_minute`, capped at a minute's worth (so a lowered
    /// limit takes effect at once).
    fn refill(&mut self, per_minute: u32, now: Instant) {
        let capacity = f64::from(per_minute);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * capacity / 60.0).min(capacity);
        self.at = now;
    }

    /// How long until the level reaches one, at `per_minute`.
    fn wait_for_one(&self, per_minute: u32) -> Duration {
        Duration::from_secs_f64((1.0 - self.level).max(0.0) * 60.0 / f64::from(per_minute))
    }
}

type Buckets = Mutex<HashMap<String, Bucket>>;

fn bucket<'a>(
    buckets: &'a mut HashMap<String, Bucket>,
    tenant: &str,
    per_minute: u32,
    now: Instant,
) -> &'a mut Bucket {
    if !buckets.contains_key(tenant) {
        let full = Bucket {
            level: f64::from(per_minute),
            at: now,
        };
        buckets.insert(tenant.to_owned(), full);
    }
    let b = buckets
        .get_mut(tenant)
        .unwrap_or_else(|| unreachable!("inserted above"));
    b.refill(per_minute, now);
    b
}

/// The buckets of the tenants that have a limit.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    requests: Buckets,
    tokens: Buckets,
}

impl RateLimits {
    /// Takes one request of `tenant`, whose limit is `per_minute`, at `now`; when
    /// none is left, how long until one is.
    pub(crate) fn take_request(
        &self,
        tenant: &str,
        per_minute: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut buckets = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let b = bucket(&mut buckets, tenant, per_minute, now);
        if b.level >= 1.0 {
            b.level -= 1.0;
            return Ok(());
        }
        Err(b.wait_for_one(per_minute))
    }

    /// Whether `tenant` (limit `per_minute` tokens) has tokens left at `now`; when
    /// not, how long until it has.
    pub(crate) fn tokens_left(
        &self,
        tenant: &str,
        per_minute: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut buckets = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let b = bucket(&mut buckets, tenant, per_minute, now);
        if b.level >= 1.0 {
            return Ok(());
        }
        Err(b.wait_for_one(per_minute))
    }

    /// Charges `spent` tokens to `tenant`, down to at most a minute's worth of
    /// debt.
    pub(crate) fn spend_tokens(&self, tenant: &str, per_minute: u32, spent: u64, now: Instant) {
        let mut buckets = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let b = bucket(&mut buckets, tenant, per_minute, now);
        b.level = (b.level - spent as f64).max(-f64::from(per_minute));
    }

    /// Forgets the buckets of limits that no policy sets any more.
    pub(crate) fn keep_only(&self, policies: &BTreeMap<String, TenantPolicy>) {
        let limited = |tenant: &str, limit: fn(&TenantPolicy) -> u32| {
            policies.get(tenant).is_some_and(|p| limit(p) > 0)
        };
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.retain(|t, _| limited(t, |p| p.requests_per_minute));
        drop(requests);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|t, _| limited(t, |p| p.tokens_per_minute));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tenant: &str, requests: u32, tokens: u32) -> (String, TenantPolicy) {
        let p = TenantPolicy {
            tenant: tenant.into(),
            approved_models: vec!["*".into()],
            requests_per_minute: requests,
            tokens_per_minute: tokens,
            external_endpoints: Vec::new(),
        };
        (tenant.into(), p)
    }

    #[test]
    fn a_tenant_bursts_to_its_request_limit_then_goes_on_at_its_rate() {
        let limits = RateLimits::default();
        let t0 = Instant::now();
        for i in 0..60 {
            assert_eq!(limits.take_request("acme", 60, t0), Ok(()), "request {i}");
        }
        let wait = limits.take_request("acme", 60, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limits.take_request("acme", 60, t1), Ok(()));
        assert!(limits.take_request("acme", 60, t1).is_err());
        // Another tenant has a budget of its own.
        assert_eq!(limits.take_request("beta", 1, t0), Ok(()));
        assert!(limits.take_request("beta", 1, t0).is_err());
        limits.keep_only(&BTreeMap::from([policy("acme", 60, 0)]));
        assert_eq!(
            limits.take_request("beta", 1, t0),
            Ok(()),
            "forgotten, so full again"
        );
    }

    #[test]
    fn a_tenant_is_admitted_while_it_has_tokens_and_waits_out_its_debt() {
        let limits = RateLimits::default();
        let t0 = Instant::now();
        assert_eq!(limits.tokens_left("acme", 600, t0), Ok(()));
        limits.spend_tokens("acme", 600, 500, t0);
        assert_eq!(limits.tokens_left("acme", 600, t0), Ok(()), "100 left");
        // One long answer overspends: 100 - 400 = 300 in debt, 10 tokens a second.
        limits.spend_tokens("acme", 600, 400, t0);
        let wait = limits.tokens_left("acme", 600, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 30.1).abs() < 1e-6, "{wait:?}");
        let later = t0 + Duration::from_secs_f64(30.2);
        assert_eq!(limits.tokens_left("acme", 600, later), Ok(()));
    }

    #[test]
    fn debt_is_bounded_by_a_minute_of_tokens() {
        let limits = RateLimits::default();
        let t0 = Instant::now();
        limits.spend_tokens("acme", 60, 1_000_000, t0);
        let wait = limits.tokens_left("acme", 60, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(121), "{wait:?}");
    }

    #[test]
    fn a_policy_that_drops_its_token_limit_drops_the_debt() {
        let limits = RateLimits::default();
        let t0 = Instant::now();
        limits.spend_tokens("acme", 60, 120, t0);
        assert!(limits.tokens_left("acme", 60, t0).is_err());
        limits.keep_only(&BTreeMap::from([policy("acme", 10, 0)]));
        assert_eq!(limits.tokens_left("acme", 60, t0), Ok(()));
    }
}
