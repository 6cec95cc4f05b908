//! Passive health (consecutive failures eject an endpoint for a back-off that
//! doubles on each ejection) and the outstanding-request counts that least-loaded
//! picking reads.
//!
//! State is keyed by endpoint, not held in the routing snapshot, so that it
//! survives route swaps: a replica ejected a moment ago stays ejected when the
//! registry republishes the same route.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// When to eject and for how long.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Consecutive failures that eject an endpoint.
    pub failures_to_eject: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// How often every endpoint in the table is probed with a TCP connect;
    /// `None` turns active checks off.
    pub active_interval: Option<Duration>,
    pub active_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            failures_to_eject: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(120),
            active_interval: Some(Duration::from_secs(5)),
            active_timeout: Duration::from_secs(1),
        }
    }
}

/// A replica in this cluster, or another cluster's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointKey {
    /// By its `host:port`, as the table names it.
    Replica(String),
    Gateway(String),
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointKey::Replica(a) => write!(f, "replica {a}"),
            EndpointKey::Gateway(c) => write!(f, "gateway of cluster {c}"),
        }
    }
}

/// What a failure says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made: the endpoint may be down, or not there yet.
    Unreachable,
    /// It answered, and failed (a 5xx, or a request cut off after it was sent).
    Failed,
}

#[derive(Debug, Default)]
struct Ejection {
    consecutive_failures: u32,
    /// Ejections since the last success; sets the back-off.
    ejections: u32,
    until: Option<Instant>,
    /// The ejection came from a failure to connect, so an endpoint that accepts a
    /// connection again has shown that the cause is gone.
    for_unreachable: bool,
}

#[derive(Debug, Default)]
pub(crate) struct EndpointHealth {
    outstanding: AtomicU64,
    ejection: Mutex<Ejection>,
}

impl EndpointHealth {
    fn ejection(&self) -> std::sync::MutexGuard<'_, Ejection> {
        // The guarded value is plain counters; a panic elsewhere cannot leave it
        // half-written in a way that matters.
        self.ejection.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An endpoint currently out of rotation, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EjectedEndpoint {
    pub endpoint: String,
    pub consecutive_failures: u32,
    pub remaining_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Health {
    settings: HealthSettings,
    endpoints: RwLock<HashMap<EndpointKey, Arc<EndpointHealth>>>,
}

/// Counts a request as outstanding on its endpoint until dropped, which is when
/// its response body has been sent on or abandoned.
#[derive(Debug)]
pub(crate) struct InflightGuard(Arc<EndpointHealth>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Health {
    pub(crate) fn new(settings: HealthSettings) -> Health {
        Health {
            settings,
            endpoints: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    fn find(&self, key: &EndpointKey) -> Option<Arc<EndpointHealth>> {
        let map = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    fn entry(&self, key: &EndpointKey) -> Arc<EndpointHealth> {
        if let Some(e) = self.find(key) {
            return e;
        }
        let mut map = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone()).or_default().clone()
    }

    pub(crate) fn is_ejected(&self, key: &EndpointKey, now: Instant) -> bool {
        self.find(key)
            .and_then(|e| e.ejection().until)
            .is_some_and(|until| until > now)
    }

    pub(crate) fn outstanding(&self, key: &EndpointKey) -> u64 {
        self.find(key)
            .map_or(0, |e| e.outstanding.load(Ordering::Relaxed))
    }

    pub(crate) fn begin(&self, key: &EndpointKey) -> InflightGuard {
        let e = self.entry(key);
        e.outstanding.fetch_add(1, Ordering::Relaxed);
        InflightGuard(e)
    }

    pub(crate) fn record_success(&self, key: &EndpointKey) {
        if let Some(e) = self.find(key) {
            let mut ej = e.ejection();
            ej.consecutive_failures = 0;
            if ej.until.is_none_or(|u| u <= Instant::now()) {
                ej.ejections = 0;
                ej.until = None;
            }
        }
    }

    /// An active check connected to the endpoint. That lifts an ejection for
    /// failures to connect at once, rather than when its back-off (which doubles
    /// up to `max_ejection`) runs out: a restarted gateway or replica takes
    /// traffic within one check interval. The endpoint stays on probation, and an
    /// ejection for failed answers stands: a process that accepts connections and
    /// fails requests is not shown healthy by a connect.
    pub(crate) fn record_reachable(&self, key: &EndpointKey, now: Instant) {
        if let Some(e) = self.find(key) {
            let mut ej = e.ejection();
            if ej.for_unreachable && ej.until.is_some_and(|u| u > now) {
                ej.until = None;
                tracing::info!(endpoint = %key, "ejected endpoint accepts connections again; back in rotation");
            }
        }
    }

    /// Returns true when this failure ejected the endpoint.
    pub(crate) fn record_failure(&self, key: &EndpointKey, failure: Failure, now: Instant) -> bool {
        let e = self.entry(key);
        let mut ej = e.ejection();
        if ej.until.is_some_and(|u| u > now) {
            return false;
        }
        ej.consecutive_failures += 1;
        if ej.consecutive_failures < self.settings.failures_to_eject {
            return false;
        }
        let factor = 1u32.checked_shl(ej.ejections.min(16)).unwrap_or(u32::MAX);
        let backoff = self
            .settings
            .base_ejection
            .saturating_mul(factor)
            .min(self.settings.max_ejection);
        ej.until = Some(now + backoff);
        ej.for_unreachable = failure == Failure::Unreachable;
        ej.ejections += 1;
        // On return it gets one try: a single further failure ejects it again, for
        // twice as long.
        ej.consecutive_failures = self.settings.failures_to_eject.saturating_sub(1);
        tracing::warn!(endpoint = %key, backoff_ms = backoff.as_millis() as u64, "endpoint ejected");
        true
    }

    pub(crate) fn ejected(&self, now: Instant) -> Vec<EjectedEndpoint> {
        let map = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<EjectedEndpoint> = map
            .iter()
            .filter_map(|(k, e)| {
                let ej = e.ejection();
                let until = ej.until.filter(|u| *u > now)?;
                Some(EjectedEndpoint {
                    endpoint: k.to_string(),
                    consecutive_failures: ej.consecutive_failures,
                    remaining_ms: (until - now).as_millis() as u64,
                })
            })
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }

    /// Forgets endpoints that are idle and no longer routed to, so the map tracks
    /// the table rather than everything ever seen.
    pub(crate) fn retain(&self, keep: impl Fn(&EndpointKey) -> bool) {
        let mut map = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, e| keep(k) || e.outstanding.load(Ordering::Relaxed) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            failures_to_eject: 2,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            active_interval: None,
            active_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_doubles_the_backoff() {
        let h = Health::new(settings());
        let k = EndpointKey::Gateway("b".into());
        let t0 = Instant::now();
        assert!(!h.record_failure(&k, Failure::Failed, t0));
        assert!(!h.is_ejected(&k, t0));
        assert!(h.record_failure(&k, Failure::Failed, t0));
        assert!(h.is_ejected(&k, t0 + Duration::from_millis(999)));
        assert!(!h.is_ejected(&k, t0 + Duration::from_secs(1)));
        // Back, but on probation: one failure ejects it for twice as long.
        let t1 = t0 + Duration::from_secs(1);
        assert!(h.record_failure(&k, Failure::Failed, t1));
        assert!(h.is_ejected(&k, t1 + Duration::from_millis(1999)));
        assert!(!h.is_ejected(&k, t1 + Duration::from_secs(2)));
        // Capped.
        let t2 = t1 + Duration::from_secs(2);
        assert!(h.record_failure(&k, Failure::Failed, t2));
        assert!(!h.is_ejected(&k, t2 + Duration::from_secs(3)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let h = Health::new(settings());
        let k = EndpointKey::Gateway("b".into());
        let t0 = Instant::now();
        h.record_failure(&k, Failure::Failed, t0);
        h.record_success(&k);
        assert!(!h.record_failure(&k, Failure::Failed, t0));
    }

    #[test]
    fn a_connect_lifts_an_ejection_for_failures_to_connect_and_probation_stays() {
        let h = Health::new(settings());
        let k = EndpointKey::Gateway("b".into());
        let t0 = Instant::now();
        h.record_failure(&k, Failure::Unreachable, t0);
        assert!(h.record_failure(&k, Failure::Unreachable, t0));
        assert!(h.is_ejected(&k, t0));
        h.record_reachable(&k, t0);
        assert!(!h.is_ejected(&k, t0));
        // Still on probation: one failure ejects it again, for twice as long.
        assert!(h.record_failure(&k, Failure::Unreachable, t0));
        assert!(h.is_ejected(&k, t0 + Duration::from_millis(1999)));
    }

    #[test]
    fn a_connect_does_not_lift_an_ejection_for_failed_answers() {
        let h = Health::new(settings());
        let k = EndpointKey::Replica("127.0.0.1:1".into());
        let t0 = Instant::now();
        h.record_failure(&k, Failure::Unreachable, t0);
        assert!(h.record_failure(&k, Failure::Failed, t0));
        h.record_reachable(&k, t0);
        assert!(h.is_ejected(&k, t0));
    }
}
