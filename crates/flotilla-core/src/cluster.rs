//! Clusters: members of the federation that offer GPUs.

use crate::error::{ObjectKind, ValidationError};
use crate::gpu::Inventory;
use crate::names::{validate_identifier, validate_name};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a cluster says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where other clusters' gateways reach this cluster's east-west gateway (`host:port`).
    #[serde(default)]
    pub gateway_address: String,
}

impl ClusterSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(ObjectKind::Cluster, &self.name, "name")?;
        validate_name(ObjectKind::Cluster, &self.region, "region").map_err(|e| {
            ValidationError::new(ObjectKind::Cluster, &self.name, "region", e.message)
        })?;
        if !self.zone.is_empty() {
            validate_name(ObjectKind::Cluster, &self.zone, "zone").map_err(|e| {
                ValidationError::new(ObjectKind::Cluster, &self.name, "zone", e.message)
            })?;
        }
        for (key, value) in &self.labels {
            validate_identifier(ObjectKind::Cluster, &self.name, "labels", key)?;
            if value.len() > 253 {
                return Err(ValidationError::new(
                    ObjectKind::Cluster,
                    &self.name,
                    format!("labels.{key}"),
                    "value is longer than 253 characters",
                ));
            }
        }
        if !self.gateway_address.is_empty() {
            validate_identifier(
                ObjectKind::Cluster,
                &self.name,
                "gateway_address",
                &self.gateway_address,
            )?;
        }
        Ok(())
    }
}

/// Whether the scheduler may use a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClusterState {
    /// Reporting, and open for new replicas.
    Ready,
    /// Reporting, but closed to new replicas; existing ones stay unless it is draining.
    Cordoned,
    /// Its lease expired: its replicas count as lost and its routes are gone.
    Unreachable,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Ready => "Ready",
            ClusterState::Cordoned => "Cordoned",
            ClusterState::Unreachable => "Unreachable",
        }
    }
}

/// A cluster as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub state: ClusterState,
    /// Set by a drain: Flotilla moves every movable replica away (make-before-break).
    pub draining: bool,
    /// Cordoned by an operator; survives the cluster going unreachable and coming back.
    pub cordoned: bool,
    /// The cluster counts as alive until this time unless it reports again.
    pub lease_expires_at: Timestamp,
    pub inventory: Inventory,
}

impl Cluster {
    /// Open for new replicas.
    pub fn schedulable(&self) -> bool {
        self.state == ClusterState::Ready
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn region(&self) -> &str {
        &self.spec.region
    }

    pub(crate) fn refresh_state(&mut self) {
        if self.state != ClusterState::Unreachable {
            self.state = if self.cordoned || self.draining {
                ClusterState::Cordoned
            } else {
                ClusterState::Ready
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, region: &str) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            region: region.into(),
            zone: String::new(),
            labels: BTreeMap::new(),
            gateway_address: "127.0.0.1:7443".into(),
        }
    }

    #[test]
    fn a_region_must_be_a_dns_label() {
        let err = spec("east", "us east").validate().unwrap_err();
        assert_eq!(err.field, "region");
        assert!(
            err.to_string()
                .starts_with("cluster \"east\": region contains ' '")
        );
    }

    #[test]
    fn a_plain_cluster_is_valid() {
        assert_eq!(spec("us-east", "us-east-1").validate(), Ok(()));
    }
}
