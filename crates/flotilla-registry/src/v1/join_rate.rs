//! A bound on unauthenticated `Join`s per source address: a token bucket each
//! (a burst, then a steady rate), so that one host flooding forged joins is refused
//! at once, before the join desk's queue, and leaves room for everyone else. The
//! table of sources is bounded too: when it is full, sources whose bucket is full
//! again are forgotten first, then the longest idle. Loopback is not bounded unless
//! asked (`ServerConfig::limit_loopback_joins`): it is this host, where `flotilla
//! up` starts a whole federation's members at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Joins a source may start at once.
pub(crate) const BURST: f64 = 10.0;
/// Joins per second a source may keep starting after its burst.
pub(crate) const PER_SECOND: f64 = 2.0;
/// Sources remembered at most.
pub(crate) const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant, limits: &JoinRate) -> f64 {
        let idle = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + idle * limits.per_second).min(limits.burst)
    }
}

/// The per-source bound; see the module documentation.
#[derive(Debug)]
pub(crate) struct JoinRate {
    burst: f64,
    per_second: f64,
    max_sources: usize,
    limit_loopback: bool,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Default for JoinRate {
    fn default() -> Self {
        JoinRate::new(BURST, PER_SECOND, MAX_SOURCES)
    }
}

impl JoinRate {
    pub(crate) fn new(burst: f64, per_second: f64, max_sources: usize) -> Self {
        JoinRate {
            burst,
            per_second,
            max_sources,
            limit_loopback: false,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Bounds loopback sources too (tests of the bound itself).
    pub(crate) fn limiting_loopback(mut self, limit: bool) -> Self {
        self.limit_loopback = limit;
        self
    }

    /// Takes one join from `source`'s bucket, or says how long until it may try.
    pub(crate) fn admit(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if source.is_loopback() && !self.limit_loopback {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&source) && buckets.len() >= self.max_sources {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = bucket.refilled(now, self);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    /// Forgets sources whose bucket has refilled (they lose nothing), and when none
    /// has, the one idle longest.
    fn make_room(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, b| b.refilled(now, self) < self.burst);
        if buckets.len() >= self.max_sources
            && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
        {
            buckets.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn a_source_gets_its_burst_then_the_steady_rate() {
        let rate = JoinRate::new(3.0, 2.0, 16);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rate.admit(ip(1), t0).is_ok());
        }
        let wait = rate.admit(ip(1), t0).expect_err("past the burst");
        assert_eq!(wait, Duration::from_millis(500), "one join per half second");
        assert!(rate.admit(ip(1), t0 + Duration::from_millis(499)).is_err());
        assert!(rate.admit(ip(1), t0 + Duration::from_millis(1000)).is_ok());
        assert!(
            rate.admit(ip(2), t0).is_ok(),
            "another source is not held back"
        );
    }

    #[test]
    fn loopback_is_bounded_only_when_asked() {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t0 = Instant::now();
        let open = JoinRate::new(1.0, 1.0, 16);
        assert!((0..5).all(|_| open.admit(local, t0).is_ok()));
        let bounded = JoinRate::new(1.0, 1.0, 16).limiting_loopback(true);
        assert!(bounded.admit(local, t0).is_ok());
        assert!(bounded.admit(local, t0).is_err());
    }

    #[test]
    fn the_table_of_sources_stays_bounded() {
        let rate = JoinRate::new(2.0, 1.0, 4);
        let t0 = Instant::now();
        for last in 0..50 {
            let _ = rate.admit(ip(last), t0 + Duration::from_millis(u64::from(last)));
            assert!(rate.sources() <= 4);
        }
        // A source forgotten to make room starts again with a full burst: what
        // bounds a flood from many addresses is the join desk's queue.
        assert!(rate.admit(ip(0), t0 + Duration::from_secs(1)).is_ok());
    }
}
