//! Federation-wide scheduler settings, stored in the registry so every leader plans alike.

use crate::error::{ObjectKind, ValidationError};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Where new replicas go among clusters that fit equally well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    /// Fill the fullest cluster that fits first, keeping whole clusters free.
    #[default]
    Pack,
    /// Prefer the emptiest cluster, spreading load and blast radius.
    Spread,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct Settings {
    pub placement_policy: PlacementPolicy,
    /// A rebalancing move happens only when the region-preference weight gained
    /// exceeds this, so small differences never cause churn.
    pub hysteresis: u32,
    /// How much of a migrating replica's traffic shifts to the target per step (1–100).
    pub traffic_step_pct: u32,
    /// Time between traffic steps, and between the last step and draining the source.
    pub traffic_step_interval: Millis,
    /// A target that is not Ready after this is rolled back.
    pub start_deadline: Millis,
    /// A draining replica is released after this even with requests in flight.
    pub drain_deadline: Millis,
    /// A cluster that has not reported for this long becomes Unreachable.
    pub lease_duration: Millis,
    /// Planned moves in flight at once across the federation.
    pub max_concurrent_moves: u32,
    /// Whether higher priorities may evict lower ones to reach their minimum.
    pub preemption: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            placement_policy: PlacementPolicy::Pack,
            hysteresis: 20,
            traffic_step_pct: 25,
            traffic_step_interval: Millis(2_000),
            start_deadline: Millis::from_secs(600),
            drain_deadline: Millis::from_secs(30),
            lease_duration: Millis::from_secs(15),
            max_concurrent_moves: 16,
            preemption: true,
        }
    }
}

impl Settings {
    /// What a planner that could not hear from clusters gives them to report again
    /// before any is lost: one heartbeat interval, a third of a lease (agents
    /// heartbeat three times a lease, so one missed heartbeat loses nothing).
    pub fn lease_floor(&self) -> Millis {
        Millis(self.lease_duration.0 / 3)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |field: &str, message: &str| {
            Err(ValidationError::new(
                ObjectKind::Settings,
                "federation",
                field,
                message,
            ))
        };
        if !(1..=100).contains(&self.traffic_step_pct) {
            return bad("traffic_step_pct", "must be between 1 and 100");
        }
        if self.lease_duration.0 == 0 {
            return bad("lease_duration", "must be greater than 0");
        }
        if self.start_deadline.0 == 0 {
            return bad("start_deadline", "must be greater than 0");
        }
        if self.max_concurrent_moves == 0 {
            return bad("max_concurrent_moves", "must be at least 1");
        }
        Ok(())
    }
}
