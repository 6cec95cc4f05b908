//! GPU inventory: nodes, devices, and whether a device fits what a replica needs.

use crate::error::{ObjectKind, ValidationError};
use crate::names::{validate_identifier, validate_product_name};
use crate::placement::ReplicaId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One GPU, or one MIG instance of a GPU, as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    pub uuid: String,
    /// The product name, e.g. `NVIDIA H100 80GB HBM3`; workloads match it exactly.
    pub model: String,
    pub memory_total_mib: u64,
    /// Memory in use on the device by anything (Flotilla's replicas included).
    #[serde(default)]
    pub memory_used_mib: u64,
    #[serde(default)]
    pub utilization_pct: u8,
    /// Set when this entry is a MIG instance, e.g. `1g.10gb`.
    #[serde(default)]
    pub mig_profile: Option<String>,
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Another tenant or process outside Flotilla holds this device. A replica on it
    /// must move (a planned move); a free device so marked is not offered.
    #[serde(default)]
    pub claimed_by_other: bool,
}

fn yes() -> bool {
    true
}

/// A GPU node and its devices, as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub name: String,
    pub devices: Vec<DeviceReport>,
}

/// A device as the registry holds it: the last report plus Flotilla's allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub report: DeviceReport,
    /// The replica Flotilla placed on this device, if any.
    pub allocated_to: Option<ReplicaId>,
}

impl Device {
    /// Free for a new replica: healthy, unclaimed and unallocated.
    pub fn is_free(&self) -> bool {
        self.allocated_to.is_none() && self.report.healthy && !self.report.claimed_by_other
    }

    /// Memory a new replica could use on this device.
    pub fn free_memory_mib(&self) -> u64 {
        self.report
            .memory_total_mib
            .saturating_sub(self.report.memory_used_mib)
    }
}

/// A GPU node in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Node {
    /// Devices by UUID.
    pub devices: BTreeMap<String, Device>,
    /// Set for a node reported on its own ([`ReportScope::Nodes`]): unless a report
    /// names it again, it leaves the inventory at this time. `None` for a node of a
    /// whole-cluster report, which lives as long as the next such report keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
}

/// What a capacity report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportScope {
    /// The cluster's whole inventory: nodes it does not name are gone. One agent
    /// sees every node of the cluster.
    #[default]
    Cluster,
    /// Only the nodes it names; the cluster's other nodes stay as they are. Each
    /// named node gets a lease of its own, renewed only by reports that name it:
    /// one agent per node (a Kubernetes DaemonSet), each seeing only its own GPUs.
    Nodes,
}

impl ReportScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportScope::Cluster => "cluster",
            ReportScope::Nodes => "nodes",
        }
    }
}

/// Where a device is: node and UUID within one cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRef {
    pub node: String,
    pub uuid: String,
}

/// A cluster's GPU inventory: nodes by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub nodes: BTreeMap<String, Node>,
}

impl Inventory {
    pub fn device(&self, at: &DeviceRef) -> Option<&Device> {
        self.nodes.get(&at.node)?.devices.get(&at.uuid)
    }

    pub(crate) fn device_mut(&mut self, at: &DeviceRef) -> Option<&mut Device> {
        self.nodes.get_mut(&at.node)?.devices.get_mut(&at.uuid)
    }

    /// Every device with where it is, in a stable order (node, then UUID).
    pub fn devices(&self) -> impl Iterator<Item = (DeviceRef, &Device)> + '_ {
        self.nodes.iter().flat_map(|(node, n)| {
            n.devices.iter().map(move |(uuid, d)| {
                (
                    DeviceRef {
                        node: node.clone(),
                        uuid: uuid.clone(),
                    },
                    d,
                )
            })
        })
    }

    pub fn device_count(&self) -> usize {
        self.nodes.values().map(|n| n.devices.len()).sum()
    }

    pub fn free_device_count(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|n| n.devices.values())
            .filter(|d| d.is_free())
            .count()
    }

    pub fn allocated_device_count(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|n| n.devices.values())
            .filter(|d| d.allocated_to.is_some())
            .count()
    }
}

/// Validates one capacity report: unique node names and UUIDs, sane numbers.
pub fn validate_report(cluster: &str, nodes: &[NodeReport]) -> Result<(), ValidationError> {
    let bad = |field: String, message: String| {
        Err(ValidationError::new(
            ObjectKind::Cluster,
            cluster,
            field,
            message,
        ))
    };
    let mut node_names = std::collections::BTreeSet::new();
    let mut uuids = std::collections::BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        validate_identifier(
            ObjectKind::Cluster,
            cluster,
            &format!("nodes[{i}].name"),
            &node.name,
        )?;
        if !node_names.insert(node.name.as_str()) {
            return bad(
                format!("nodes[{i}].name"),
                format!("node {:?} is reported twice", node.name),
            );
        }
        for (j, d) in node.devices.iter().enumerate() {
            let field = |f: &str| format!("nodes[{i}].devices[{j}].{f}");
            validate_identifier(ObjectKind::Cluster, cluster, &field("uuid"), &d.uuid)?;
            if !uuids.insert(d.uuid.as_str()) {
                return bad(
                    field("uuid"),
                    format!("device {:?} is reported twice", d.uuid),
                );
            }
            validate_product_name(ObjectKind::Cluster, cluster, &field("model"), &d.model)?;
            if d.memory_total_mib == 0 {
                return bad(field("memory_total_mib"), "must be greater than 0".into());
            }
            if d.memory_used_mib > d.memory_total_mib {
                return bad(
                    field("memory_used_mib"),
                    format!(
                        "({}) exceeds memory_total_mib ({})",
                        d.memory_used_mib, d.memory_total_mib
                    ),
                );
            }
            if d.utilization_pct > 100 {
                return bad(
                    field("utilization_pct"),
                    format!("({}) exceeds 100", d.utilization_pct),
                );
            }
        }
    }
    Ok(())
}

/// Validates a report of `scope`: everything [`validate_report`] checks, and a
/// node-scoped report names at least one node (one that names none would change
/// nothing but the cluster's lease, which is what a heartbeat is for).
pub fn validate_scoped_report(
    cluster: &str,
    scope: ReportScope,
    nodes: &[NodeReport],
) -> Result<(), ValidationError> {
    if scope == ReportScope::Nodes && nodes.is_empty() {
        return Err(ValidationError::new(
            ObjectKind::Cluster,
            cluster,
            "nodes",
            "a node-scoped report names at least one node",
        ));
    }
    validate_report(cluster, nodes)
}

/// What one replica needs of each of its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuNeed {
    /// GPUs per replica (all on one node).
    pub count: u32,
    /// Free memory each GPU must have.
    #[serde(default)]
    pub min_memory_mib: u64,
    /// Acceptable GPU models; empty means any.
    #[serde(default)]
    pub models: Vec<String>,
    /// A MIG profile (`1g.10gb`): the replica runs on MIG instances of exactly this
    /// profile. Without one it needs whole GPUs.
    #[serde(default)]
    pub mig_profile: Option<String>,
}

impl GpuNeed {
    /// Whether `device` could serve as one of this replica's GPUs if it were free.
    pub fn accepts(&self, device: &DeviceReport) -> bool {
        device.mig_profile == self.mig_profile
            && (self.models.is_empty() || self.models.contains(&device.model))
            && device
                .memory_total_mib
                .saturating_sub(device.memory_used_mib)
                >= self.min_memory_mib
    }

    /// Whether a device's model and MIG shape could ever fit, ignoring current memory use.
    pub fn accepts_shape(&self, model: &str, mig_profile: Option<&str>) -> bool {
        mig_profile == self.mig_profile.as_deref()
            && (self.models.is_empty() || self.models.iter().any(|m| m == model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(model: &str, total: u64, used: u64, mig: Option<&str>) -> DeviceReport {
        DeviceReport {
            uuid: "GPU-1".into(),
            model: model.into(),
            memory_total_mib: total,
            memory_used_mib: used,
            utilization_pct: 0,
            mig_profile: mig.map(str::to_owned),
            healthy: true,
            claimed_by_other: false,
        }
    }

    fn need(models: &[&str], mem: u64, mig: Option<&str>) -> GpuNeed {
        GpuNeed {
            count: 1,
            min_memory_mib: mem,
            models: models.iter().map(|m| m.to_string()).collect(),
            mig_profile: mig.map(str::to_owned),
        }
    }

    #[test]
    fn a_need_matches_model_memory_and_mig_shape() {
        let h100 = device("H100", 81920, 1024, None);
        assert!(need(&[], 80000, None).accepts(&h100));
        assert!(need(&["H100"], 0, None).accepts(&h100));
        assert!(!need(&["A100"], 0, None).accepts(&h100), "wrong model");
        assert!(
            !need(&[], 81000, None).accepts(&h100),
            "not enough free memory"
        );
        assert!(
            !need(&[], 0, Some("1g.10gb")).accepts(&h100),
            "whole GPU is not a MIG slice"
        );
        let slice = device("H100", 10240, 0, Some("1g.10gb"));
        assert!(need(&[], 0, Some("1g.10gb")).accepts(&slice));
        assert!(
            !need(&[], 0, None).accepts(&slice),
            "a MIG slice is not a whole GPU"
        );
    }

    #[test]
    fn reports_with_duplicate_uuids_are_refused() {
        let node = NodeReport {
            name: "n1".into(),
            devices: vec![device("H100", 1, 0, None), device("H100", 1, 0, None)],
        };
        let err = validate_report("east", &[node]).unwrap_err();
        assert_eq!(err.field, "nodes[0].devices[1].uuid");
        assert!(err.to_string().contains("reported twice"));
    }

    #[test]
    fn used_memory_cannot_exceed_total() {
        let node = NodeReport {
            name: "n1".into(),
            devices: vec![device("H100", 10, 11, None)],
        };
        let err = validate_report("east", &[node]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster \"east\": nodes[0].devices[0].memory_used_mib (11) exceeds memory_total_mib (10)"
        );
    }
}
