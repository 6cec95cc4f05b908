//! Workloads: inference services Flotilla places and moves.

use crate::error::{ObjectKind, ValidationError};
use crate::gpu::GpuNeed;
use crate::names::{validate_identifier, validate_name, validate_product_name};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// How many replicas a workload wants. The scheduler places `max` where GPUs allow
/// and preempts lower priorities only to reach `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replicas {
    pub min: u32,
    pub max: u32,
}

/// Where a workload may and would rather run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Regions it may run in; empty means any.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Clusters it may run in; empty means any.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Pinned: runs in this cluster only, and never moves from it.
    #[serde(default)]
    pub pinned: Option<String>,
    /// At most one replica per cluster, for resilience.
    #[serde(default)]
    pub spread_across_clusters: bool,
    /// Regions it prefers, with weights: a move to a preferred region happens when the
    /// weight gained beats the federation's hysteresis threshold.
    #[serde(default)]
    pub preferred_regions: Vec<RegionPreference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPreference {
    pub region: String,
    pub weight: u32,
}

/// Latency objectives, used by the simulator to score policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Time to first token.
    pub ttft: Millis,
    /// End-to-end latency.
    pub e2e: Millis,
}

/// Whether and how often a workload may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mobility {
    pub movable: bool,
    /// A replica stays at least this long where it was placed before an optimising
    /// move (forced moves, such as a reclaimed GPU, ignore it).
    pub min_dwell: Millis,
}

impl Default for Mobility {
    fn default() -> Self {
        Mobility {
            movable: true,
            min_dwell: Millis::from_secs(300),
        }
    }
}

/// An inference service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    /// The model it serves; gateways route requests by this id.
    pub model: String,
    pub replicas: Replicas,
    pub gpu: GpuNeed,
    #[serde(default)]
    pub constraints: Constraints,
    /// Higher wins when GPUs are scarce.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub slo: Option<Slo>,
    #[serde(default)]
    pub mobility: Mobility,
}

/// The most GPUs one replica may ask for: one node's worth on the largest machines.
pub const MAX_GPUS_PER_REPLICA: u32 = 16;
/// A sanity bound on replicas per workload.
pub const MAX_REPLICAS: u32 = 1024;

impl Workload {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = &self.name;
        let bad = |field: &str, message: String| {
            Err(ValidationError::new(
                ObjectKind::Workload,
                name,
                field,
                message,
            ))
        };
        validate_name(ObjectKind::Workload, name, "name")?;
        validate_identifier(ObjectKind::Workload, name, "model", &self.model)?;
        let Replicas { min, max } = self.replicas;
        if max == 0 {
            return bad("replicas.max", "must be at least 1".into());
        }
        if min > max {
            return bad("replicas.min", format!("({min}) > replicas.max ({max})"));
        }
        if max > MAX_REPLICAS {
            return bad(
                "replicas.max",
                format!("({max}) exceeds the limit of {MAX_REPLICAS}"),
            );
        }
        if self.gpu.count == 0 {
            return bad("gpu.count", "must be at least 1".into());
        }
        if self.gpu.count > MAX_GPUS_PER_REPLICA {
            return bad(
                "gpu.count",
                format!(
                    "({}) exceeds {MAX_GPUS_PER_REPLICA} GPUs per replica",
                    self.gpu.count
                ),
            );
        }
        for (i, m) in self.gpu.models.iter().enumerate() {
            validate_product_name(ObjectKind::Workload, name, &format!("gpu.models[{i}]"), m)?;
        }
        if let Some(p) = &self.gpu.mig_profile {
            validate_identifier(ObjectKind::Workload, name, "gpu.mig_profile", p)?;
        }
        let c = &self.constraints;
        for (i, r) in c.regions.iter().enumerate() {
            validate_name(ObjectKind::Workload, r, "").or_else(|e| {
                bad(
                    &format!("constraints.regions[{i}]"),
                    format!("{r:?} {}", e.message),
                )
            })?;
        }
        for (i, cl) in c.clusters.iter().enumerate() {
            validate_name(ObjectKind::Workload, cl, "").or_else(|e| {
                bad(
                    &format!("constraints.clusters[{i}]"),
                    format!("{cl:?} {}", e.message),
                )
            })?;
        }
        if let Some(pin) = &c.pinned {
            validate_name(ObjectKind::Workload, pin, "")
                .or_else(|e| bad("constraints.pinned", format!("{pin:?} {}", e.message)))?;
            if !c.clusters.is_empty() && !c.clusters.contains(pin) {
                return bad(
                    "constraints.pinned",
                    format!("({pin}) is not among constraints.clusters"),
                );
            }
        }
        for (i, p) in c.preferred_regions.iter().enumerate() {
            validate_name(ObjectKind::Workload, &p.region, "").or_else(|e| {
                bad(
                    &format!("constraints.preferred_regions[{i}].region"),
                    format!("{:?} {}", p.region, e.message),
                )
            })?;
            if !c.regions.is_empty() && !c.regions.contains(&p.region) {
                return bad(
                    &format!("constraints.preferred_regions[{i}].region"),
                    format!("({}) is not among constraints.regions", p.region),
                );
            }
        }
        if let Some(slo) = &self.slo
            && slo.ttft.0 > slo.e2e.0
            && slo.e2e.0 > 0
        {
            return bad(
                "slo.ttft",
                format!("({}) exceeds slo.e2e ({})", slo.ttft, slo.e2e),
            );
        }
        Ok(())
    }

    /// Whether constraints allow a replica in this cluster.
    pub fn allows(&self, cluster: &str, region: &str) -> bool {
        let c = &self.constraints;
        if let Some(pin) = &c.pinned {
            return pin == cluster;
        }
        (c.clusters.is_empty() || c.clusters.iter().any(|x| x == cluster))
            && (c.regions.is_empty() || c.regions.iter().any(|x| x == region))
    }

    /// The preference weight of a region (0 when not preferred).
    pub fn preference(&self, region: &str) -> u32 {
        self.constraints
            .preferred_regions
            .iter()
            .filter(|p| p.region == region)
            .map(|p| p.weight)
            .max()
            .unwrap_or(0)
    }

    /// The best preference weight any region could give.
    pub fn best_preference(&self) -> u32 {
        self.constraints
            .preferred_regions
            .iter()
            .map(|p| p.weight)
            .max()
            .unwrap_or(0)
    }

    /// May the scheduler move it for a better spot (not only when forced)?
    pub fn movable(&self) -> bool {
        self.mobility.movable && self.constraints.pinned.is_none()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn workload(name: &str) -> Workload {
        Workload {
            name: name.into(),
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            replicas: Replicas { min: 1, max: 2 },
            gpu: GpuNeed {
                count: 1,
                min_memory_mib: 0,
                models: vec![],
                mig_profile: None,
            },
            constraints: Constraints::default(),
            priority: 0,
            slo: None,
            mobility: Mobility::default(),
        }
    }

    #[test]
    fn replica_bounds_are_checked_and_named() {
        let mut w = workload("llama-70b");
        w.replicas = Replicas { min: 3, max: 2 };
        assert_eq!(
            w.validate().unwrap_err().to_string(),
            "workload \"llama-70b\": replicas.min (3) > replicas.max (2)"
        );
    }

    #[test]
    fn a_pin_outside_the_allowed_clusters_is_refused() {
        let mut w = workload("w");
        w.constraints.clusters = vec!["a".into()];
        w.constraints.pinned = Some("b".into());
        let err = w.validate().unwrap_err();
        assert_eq!(err.field, "constraints.pinned");
    }

    #[test]
    fn zero_gpus_is_refused() {
        let mut w = workload("w");
        w.gpu.count = 0;
        assert_eq!(w.validate().unwrap_err().field, "gpu.count");
    }

    #[test]
    fn constraints_decide_where_it_may_run() {
        let mut w = workload("w");
        assert!(w.allows("a", "eu"));
        w.constraints.regions = vec!["us".into()];
        assert!(!w.allows("a", "eu"));
        assert!(w.allows("a", "us"));
        w.constraints.pinned = Some("b".into());
        assert!(!w.allows("a", "us"));
        assert!(w.allows("b", "anywhere"), "a pin overrides the region list");
        assert!(!w.movable());
    }
}
