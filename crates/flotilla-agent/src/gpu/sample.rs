//! What a GPU source sees, richer than what the registry keeps, and the pure
//! conversion to core's [`NodeReport`].

use flotilla_core::{DeviceReport, NodeReport};
use serde::Serialize;

const MIB: u64 = 1024 * 1024;

/// Everything a source sees at one moment, node by node. An NVML source sees one
/// node; a simulated fleet may see many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeSample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSample {
    pub name: String,
    /// Every device the source has ever seen on this node, in index order: lost and
    /// failed devices stay here with their health saying so.
    pub devices: Vec<DeviceSample>,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSample {
    /// The driver's index on this node (`nvidia-smi -i`).
    pub index: u32,
    pub uuid: String,
    /// The product name as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    pub memory: Memory,
    /// `None` where the device does not report it (MIG-enabled GPUs do not).
    pub utilization: Option<Utilization>,
    pub mig: Mig,
    pub temperature_c: Option<u32>,
    pub power_mw: Option<u32>,
    pub health: Health,
    /// Processes using the device; `None` where the agent may not see them.
    pub processes: Option<Vec<GpuProcess>>,
    /// Something outside Flotilla holds this device.
    pub claimed_by_other: bool,
}

/// Frame-buffer memory in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Memory {
    pub total_mib: u64,
    pub used_mib: u64,
    /// Not always `total - used`: the driver reserves some memory for itself.
    pub free_mib: u64,
}

impl Memory {
    /// From NVML's byte counts. Rounds down, so `used + free <= total` still holds.
    pub fn from_bytes(total: u64, used: u64, free: u64) -> Memory {
        Memory {
            total_mib: total / MIB,
            used_mib: used / MIB,
            free_mib: free / MIB,
        }
    }

    /// Memory with nothing reserved: `free = total - used`.
    pub fn with_used(total_mib: u64, used_mib: u64) -> Memory {
        Memory {
            total_mib,
            used_mib,
            free_mib: total_mib.saturating_sub(used_mib),
        }
    }
}

/// Percentages over the driver's last sample period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Utilization {
    pub gpu_pct: u32,
    pub memory_pct: u32,
}

/// A GPU's MIG state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mig {
    /// Not MIG-capable, or MIG mode off: the GPU is used whole.
    #[default]
    Disabled,
    /// MIG mode on: only its instances can run work, never the GPU whole.
    Enabled { instances: Vec<MigInstance> },
}

impl Mig {
    pub fn instances(&self) -> &[MigInstance] {
        match self {
            Mig::Disabled => &[],
            Mig::Enabled { instances } => instances,
        }
    }
}

/// One MIG instance (a GPU instance with its compute instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigInstance {
    pub uuid: String,
    /// The profile, e.g. `1g.10gb`.
    pub profile: String,
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
    pub memory: Memory,
    pub claimed_by_other: bool,
}

/// Whether a device can be given work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// The device answers but must not get work: a critical Xid, a failed query.
    Unhealthy {
        reason: String,
    },
    /// The device no longer answers (fell off the bus, left the fleet file); what is
    /// known of it is what it last reported.
    Lost {
        reason: String,
    },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` where the driver does not say.
    pub used_memory_mib: Option<u64>,
    /// The MIG GPU instance the process runs in, on a MIG-enabled GPU.
    pub gpu_instance_id: Option<u32>,
}

impl Snapshot {
    /// The capacity report for the registry, one [`NodeReport`] per node.
    pub fn to_reports(&self) -> Vec<NodeReport> {
        self.nodes.iter().map(NodeSample::to_report).collect()
    }

    /// Every UUID in the snapshot, GPUs and MIG instances.
    pub fn uuids(&self) -> impl Iterator<Item = &str> + '_ {
        self.nodes.iter().flat_map(|n| {
            n.devices.iter().flat_map(|d| {
                std::iter::once(d.uuid.as_str())
                    .chain(d.mig.instances().iter().map(|i| i.uuid.as_str()))
            })
        })
    }
}

impl NodeSample {
    /// What the registry learns of this node.
    ///
    /// - A GPU without MIG is one entry.
    /// - A MIG-enabled GPU is one entry per instance, with `mig_profile` set and the
    ///   parent's model, health and claim; the parent itself is not offered, since
    ///   nothing can run on it whole. With no instances it offers nothing.
    /// - A lost or failed device stays, with `healthy: false`: the registry must see
    ///   a GPU go, not infer it from silence.
    /// - A device whose total memory is unknown (its identity could not be read when
    ///   the source started) is left out: the registry could never allocate it, and
    ///   core refuses a total of zero. It stays visible in the snapshot.
    pub fn to_report(&self) -> NodeReport {
        let mut devices = Vec::new();
        for d in &self.devices {
            let healthy = d.health.is_healthy();
            let utilization = d
                .utilization
                .map_or(0, |u| u8::try_from(u.gpu_pct.min(100)).unwrap_or(100));
            match &d.mig {
                Mig::Disabled => {
                    if d.memory.total_mib > 0 {
                        devices.push(DeviceReport {
                            uuid: d.uuid.clone(),
                            model: d.model.clone(),
                            memory_total_mib: d.memory.total_mib,
                            memory_used_mib: d.memory.used_mib.min(d.memory.total_mib),
                            utilization_pct: utilization,
                            mig_profile: None,
                            healthy,
                            claimed_by_other: d.claimed_by_other,
                        });
                    }
                }
                Mig::Enabled { instances } => {
                    for i in instances.iter().filter(|i| i.memory.total_mib > 0) {
                        devices.push(DeviceReport {
                            uuid: i.uuid.clone(),
                            model: d.model.clone(),
                            memory_total_mib: i.memory.total_mib,
                            memory_used_mib: i.memory.used_mib.min(i.memory.total_mib),
                            // NVML has no per-instance utilisation; the parent's (if
                            // any) is the best bound there is.
                            utilization_pct: utilization,
                            mig_profile: Some(i.profile.clone()),
                            healthy,
                            claimed_by_other: d.claimed_by_other || i.claimed_by_other,
                        });
                    }
                }
            }
        }
        NodeReport {
            name: self.name.clone(),
            devices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, health: Health, mig: Mig) -> DeviceSample {
        DeviceSample {
            index,
            uuid: format!("GPU-{index}"),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory: Memory::with_used(81920, 1024),
            utilization: Some(Utilization {
                gpu_pct: 37,
                memory_pct: 12,
            }),
            mig,
            temperature_c: Some(40),
            power_mw: Some(120_000),
            health,
            processes: None,
            claimed_by_other: false,
        }
    }

    fn instance(uuid: &str, profile: &str, mib: u64) -> MigInstance {
        MigInstance {
            uuid: uuid.into(),
            profile: profile.into(),
            gpu_instance_id: Some(1),
            compute_instance_id: Some(0),
            memory: Memory::with_used(mib, 0),
            claimed_by_other: false,
        }
    }

    #[test]
    fn a_whole_gpu_becomes_one_report_entry() {
        let node = NodeSample {
            name: "n1".into(),
            devices: vec![gpu(0, Health::Healthy, Mig::Disabled)],
        };
        let report = node.to_report();
        assert_eq!(
            report.devices,
            vec![DeviceReport {
                uuid: "GPU-0".into(),
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_total_mib: 81920,
                memory_used_mib: 1024,
                utilization_pct: 37,
                mig_profile: None,
                healthy: true,
                claimed_by_other: false,
            }]
        );
    }

    #[test]
    fn mig_instances_are_reported_in_place_of_their_parent() {
        let mut claimed = instance("MIG-b", "3g.40gb", 40192);
        claimed.claimed_by_other = true;
        let mig = Mig::Enabled {
            instances: vec![instance("MIG-a", "3g.40gb", 40192), claimed],
        };
        let node = NodeSample {
            name: "n1".into(),
            devices: vec![gpu(0, Health::Healthy, mig)],
        };
        let report = node.to_report();
        let shape: Vec<_> = report
            .devices
            .iter()
            .map(|d| {
                (
                    d.uuid.as_str(),
                    d.mig_profile.as_deref(),
                    d.memory_total_mib,
                    d.claimed_by_other,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("MIG-a", Some("3g.40gb"), 40192, false),
                ("MIG-b", Some("3g.40gb"), 40192, true)
            ]
        );
        assert!(
            report
                .devices
                .iter()
                .all(|d| d.model == "NVIDIA H100 80GB HBM3")
        );
    }

    #[test]
    fn failed_and_lost_devices_are_reported_unhealthy_not_dropped() {
        let lost = Health::Lost {
            reason: "GPU has fallen off the bus".into(),
        };
        let xid = Health::Unhealthy {
            reason: "Xid 79".into(),
        };
        let mig = Mig::Enabled {
            instances: vec![instance("MIG-a", "1g.10gb", 9856)],
        };
        let node = NodeSample {
            name: "n1".into(),
            devices: vec![gpu(0, lost, Mig::Disabled), gpu(1, xid, mig)],
        };
        let report = node.to_report();
        let health: Vec<_> = report
            .devices
            .iter()
            .map(|d| (d.uuid.as_str(), d.healthy))
            .collect();
        assert_eq!(health, vec![("GPU-0", false), ("MIG-a", false)]);
    }

    #[test]
    fn out_of_range_readings_are_clamped_so_the_report_stays_valid() {
        let mut d = gpu(0, Health::Healthy, Mig::Disabled);
        d.memory = Memory {
            total_mib: 100,
            used_mib: 120,
            free_mib: 0,
        };
        d.utilization = Some(Utilization {
            gpu_pct: 250,
            memory_pct: 0,
        });
        let node = NodeSample {
            name: "n1".into(),
            devices: vec![d],
        };
        let report = node.to_report();
        assert_eq!(report.devices[0].memory_used_mib, 100);
        assert_eq!(report.devices[0].utilization_pct, 100);
        flotilla_core::gpu::validate_report("c", &[report]).unwrap();
    }

    #[test]
    fn a_device_without_known_memory_stays_in_the_snapshot_but_not_the_report() {
        let mut d = gpu(
            0,
            Health::Lost {
                reason: "unreadable at start".into(),
            },
            Mig::Disabled,
        );
        d.memory = Memory::default();
        let node = NodeSample {
            name: "n1".into(),
            devices: vec![d],
        };
        assert!(node.to_report().devices.is_empty());
    }

    #[test]
    fn nvml_byte_counts_round_down_to_mib() {
        let m = Memory::from_bytes(80 * MIB + 5, 10 * MIB + 7, 70 * MIB - 2);
        assert_eq!((m.total_mib, m.used_mib, m.free_mib), (80, 10, 69));
    }
}
