//! When a capacity report is worth a registry write.
//!
//! Every capacity write is a Raft log entry replicated to every voter, so the agent
//! writes only what can change a scheduling decision: a device appearing, vanishing,
//! failing or recovering, being claimed or released by someone outside Flotilla, or
//! changing shape; or its free memory moving by at least
//! [`ReportPolicy::free_memory_step_mib`]. Utilisation never triggers a write: it
//! moves every sample and decides nothing.
//!
//! The comparison is against the report the registry last **accepted**, not the
//! previous sample. Jitter around a value never accumulates into a write, while a slow
//! drift does once it has moved a whole step; and a failed write is retried by the
//! next sample because nothing was recorded.
//!
//! Between writes the agent renews its lease every
//! [`ReportPolicy::heartbeat_interval`]; a write renews it too. In steady state an
//! agent therefore costs `60 s / heartbeat_interval` small lease renewals a minute
//! and no capacity writes (see the `write_rate` test: 1,000 GPUs with noisy
//! utilisation and memory jitter, zero capacity writes in ten minutes).
//!
//! Pure: time is an input ([`Timestamp`]), so tests and the simulator drive it.

use flotilla_core::{DeviceReport, Millis, NodeReport, Timestamp};
use std::collections::BTreeMap;

/// How eager the agent is to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportPolicy {
    /// A device's free memory must move at least this far from what the registry
    /// holds before the change is worth a write. Allocator jitter is MiBs; loading
    /// or unloading a model is GiBs.
    pub free_memory_step_mib: u64,
    /// How often to renew the lease when there is nothing to write. A third of the
    /// registry's lease duration survives two lost renewals.
    pub heartbeat_interval: Millis,
}

impl Default for ReportPolicy {
    fn default() -> Self {
        ReportPolicy {
            free_memory_step_mib: 1024,
            heartbeat_interval: Millis::from_secs(10),
        }
    }
}

/// One reason a report must be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapacityChange {
    NodeAdded {
        node: String,
    },
    NodeRemoved {
        node: String,
    },
    DeviceAdded {
        node: String,
        uuid: String,
    },
    DeviceRemoved {
        node: String,
        uuid: String,
    },
    HealthChanged {
        node: String,
        uuid: String,
        healthy: bool,
    },
    ClaimChanged {
        node: String,
        uuid: String,
        claimed_by_other: bool,
    },
    /// Model, total memory or MIG profile changed under the same UUID.
    ShapeChanged {
        node: String,
        uuid: String,
    },
    FreeMemoryMoved {
        node: String,
        uuid: String,
        from_mib: u64,
        to_mib: u64,
    },
}

/// What the agent should do after a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the current report; here is why.
    WriteCapacity(Vec<CapacityChange>),
    /// Nothing worth writing, but the lease needs renewing.
    Heartbeat,
    /// Nothing to do.
    Wait,
}

/// Everything that differs enough between what the registry holds and what the
/// source sees now, in node then device order.
pub fn capacity_changes(
    written: &[NodeReport],
    current: &[NodeReport],
    policy: &ReportPolicy,
) -> Vec<CapacityChange> {
    let by_name = |reports: &'_ [NodeReport]| -> BTreeMap<String, BTreeMap<String, DeviceReport>> {
        reports
            .iter()
            .map(|n| {
                let devices = n
                    .devices
                    .iter()
                    .map(|d| (d.uuid.clone(), d.clone()))
                    .collect();
                (n.name.clone(), devices)
            })
            .collect()
    };
    let (old, new) = (by_name(written), by_name(current));
    let mut changes = Vec::new();
    for (node, devices) in &old {
        if !new.contains_key(node) {
            changes.push(CapacityChange::NodeRemoved { node: node.clone() });
            for uuid in devices.keys() {
                changes.push(CapacityChange::DeviceRemoved {
                    node: node.clone(),
                    uuid: uuid.clone(),
                });
            }
        }
    }
    let empty = BTreeMap::new();
    for (node, devices) in &new {
        let before = match old.get(node) {
            Some(b) => b,
            None => {
                changes.push(CapacityChange::NodeAdded { node: node.clone() });
                &empty
            }
        };
        for uuid in before.keys().filter(|u| !devices.contains_key(*u)) {
            changes.push(CapacityChange::DeviceRemoved {
                node: node.clone(),
                uuid: uuid.clone(),
            });
        }
        for (uuid, now) in devices {
            let at = || (node.clone(), uuid.clone());
            let Some(was) = before.get(uuid) else {
                let (node, uuid) = at();
                changes.push(CapacityChange::DeviceAdded { node, uuid });
                continue;
            };
            if was.model != now.model
                || was.memory_total_mib != now.memory_total_mib
                || was.mig_profile != now.mig_profile
            {
                let (node, uuid) = at();
                changes.push(CapacityChange::ShapeChanged { node, uuid });
            }
            if was.healthy != now.healthy {
                let (node, uuid) = at();
                changes.push(CapacityChange::HealthChanged {
                    node,
                    uuid,
                    healthy: now.healthy,
                });
            }
            if was.claimed_by_other != now.claimed_by_other {
                let (node, uuid) = at();
                changes.push(CapacityChange::ClaimChanged {
                    node,
                    uuid,
                    claimed_by_other: now.claimed_by_other,
                });
            }
            let (from, to) = (free(was), free(now));
            if from.abs_diff(to) >= policy.free_memory_step_mib.max(1) {
                let (node, uuid) = at();
                changes.push(CapacityChange::FreeMemoryMoved {
                    node,
                    uuid,
                    from_mib: from,
                    to_mib: to,
                });
            }
        }
    }
    changes
}

fn free(d: &DeviceReport) -> u64 {
    d.memory_total_mib.saturating_sub(d.memory_used_mib)
}

/// Devices the scheduler could give work: healthy and not claimed by others.
/// Every change of this count shows up in [`capacity_changes`] as a device added,
/// removed, failed, recovered, claimed or released.
pub fn allocatable(reports: &[NodeReport]) -> usize {
    reports
        .iter()
        .flat_map(|n| &n.devices)
        .filter(|d| d.healthy && !d.claimed_by_other)
        .count()
}

/// The agent's reporting state: what the registry last accepted, and when it last
/// heard from the agent. Events in ([`Reporter::written`], [`Reporter::renewed`]),
/// decisions out ([`Reporter::decide`]); the caller does the IO.
#[derive(Debug, Clone)]
pub struct Reporter {
    policy: ReportPolicy,
    written: Option<Vec<NodeReport>>,
    last_contact: Option<Timestamp>,
}

impl Reporter {
    pub fn new(policy: ReportPolicy) -> Reporter {
        Reporter {
            policy,
            written: None,
            last_contact: None,
        }
    }

    pub fn policy(&self) -> &ReportPolicy {
        &self.policy
    }

    /// What to do about the sample `current`, taken at `now`. The first sample is
    /// always written.
    pub fn decide(&self, now: Timestamp, current: &[NodeReport]) -> Action {
        let changes = capacity_changes(
            self.written.as_deref().unwrap_or(&[]),
            current,
            &self.policy,
        );
        if self.written.is_none() || !changes.is_empty() {
            return Action::WriteCapacity(changes);
        }
        match self.last_contact {
            Some(at) if now.since(at) < self.policy.heartbeat_interval => Action::Wait,
            _ => Action::Heartbeat,
        }
    }

    /// The registry accepted `reports` at `now`; a write renews the lease as well.
    pub fn written(&mut self, now: Timestamp, reports: Vec<NodeReport>) {
        self.written = Some(reports);
        self.last_contact = Some(now);
    }

    /// The registry renewed the lease at `now`.
    pub fn renewed(&mut self, now: Timestamp) {
        self.last_contact = Some(now);
    }

    /// When a heartbeat is next due if nothing changes; `None` before the first write.
    pub fn next_heartbeat(&self) -> Option<Timestamp> {
        self.last_contact
            .map(|t| t + self.policy.heartbeat_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(uuid: &str, used: u64) -> DeviceReport {
        DeviceReport {
            uuid: uuid.into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_total_mib: 81920,
            memory_used_mib: used,
            utilization_pct: 0,
            mig_profile: None,
            healthy: true,
            claimed_by_other: false,
        }
    }

    fn node(name: &str, devices: Vec<DeviceReport>) -> NodeReport {
        NodeReport {
            name: name.into(),
            devices,
        }
    }

    fn changes(old: &[NodeReport], new: &[NodeReport]) -> Vec<CapacityChange> {
        capacity_changes(old, new, &ReportPolicy::default())
    }

    #[test]
    fn utilisation_alone_is_not_a_change() {
        let old = [node("n", vec![device("a", 1000)])];
        let mut new = old.clone();
        new[0].devices[0].utilization_pct = 97;
        assert_eq!(changes(&old, &new), vec![]);
    }

    #[test]
    fn memory_jitter_below_the_step_is_not_a_change_but_a_step_is() {
        let old = [node("n", vec![device("a", 1000)])];
        let jitter = [node("n", vec![device("a", 1000 + 1023)])];
        assert_eq!(changes(&old, &jitter), vec![]);
        let loaded = [node("n", vec![device("a", 1000 + 1024)])];
        assert_eq!(
            changes(&old, &loaded),
            vec![CapacityChange::FreeMemoryMoved {
                node: "n".into(),
                uuid: "a".into(),
                from_mib: 80920,
                to_mib: 79896
            }]
        );
    }

    #[test]
    fn devices_and_nodes_coming_and_going_are_changes() {
        let old = [
            node("n", vec![device("a", 0), device("b", 0)]),
            node("gone", vec![device("z", 0)]),
        ];
        let new = [
            node("n", vec![device("a", 0), device("c", 0)]),
            node("new", vec![]),
        ];
        assert_eq!(
            changes(&old, &new),
            vec![
                CapacityChange::NodeRemoved {
                    node: "gone".into()
                },
                CapacityChange::DeviceRemoved {
                    node: "gone".into(),
                    uuid: "z".into()
                },
                CapacityChange::DeviceRemoved {
                    node: "n".into(),
                    uuid: "b".into()
                },
                CapacityChange::DeviceAdded {
                    node: "n".into(),
                    uuid: "c".into()
                },
                CapacityChange::NodeAdded { node: "new".into() },
            ]
        );
    }

    #[test]
    fn health_claims_and_shape_are_changes() {
        let old = [node(
            "n",
            vec![device("a", 0), device("b", 0), device("c", 0)],
        )];
        let mut new = old.clone();
        new[0].devices[0].healthy = false;
        new[0].devices[1].claimed_by_other = true;
        new[0].devices[2].mig_profile = Some("1g.10gb".into());
        assert_eq!(
            changes(&old, &new),
            vec![
                CapacityChange::HealthChanged {
                    node: "n".into(),
                    uuid: "a".into(),
                    healthy: false
                },
                CapacityChange::ClaimChanged {
                    node: "n".into(),
                    uuid: "b".into(),
                    claimed_by_other: true
                },
                CapacityChange::ShapeChanged {
                    node: "n".into(),
                    uuid: "c".into()
                },
            ]
        );
    }

    #[test]
    fn every_change_of_the_allocatable_count_is_a_change() {
        // Walk a small fleet through every combination of health, claim and presence
        // of two devices: whenever the allocatable count differs, a write is due.
        let states: Vec<Vec<NodeReport>> = (0..27u32)
            .map(|code| {
                let devices = ["a", "b", "c"]
                    .iter()
                    .enumerate()
                    .filter_map(|(i, uuid)| {
                        let s = code / 3u32.pow(i as u32) % 3;
                        let mut d = device(uuid, 0);
                        match s {
                            0 => Some(d),
                            1 => {
                                d.healthy = false;
                                d.claimed_by_other = i % 2 == 0;
                                Some(d)
                            }
                            _ => None,
                        }
                    })
                    .collect();
                vec![node("n", devices)]
            })
            .collect();
        for old in &states {
            for new in &states {
                if allocatable(old) != allocatable(new) {
                    assert!(!changes(old, new).is_empty(), "{old:?} -> {new:?}");
                }
            }
        }
    }

    #[test]
    fn the_comparison_is_against_what_was_written_so_drift_adds_up() {
        let mut reporter = Reporter::new(ReportPolicy::default());
        let t0 = Timestamp(0);
        let first = vec![node("n", vec![device("a", 0)])];
        assert!(matches!(
            reporter.decide(t0, &first),
            Action::WriteCapacity(_)
        ));
        reporter.written(t0, first);
        // 300 MiB more every sample: no single step is a change, the fourth is.
        let decisions: Vec<bool> = (1..=4)
            .map(|i| {
                let now = [node("n", vec![device("a", 300 * i)])];
                matches!(
                    reporter.decide(Timestamp(i * 1000), &now),
                    Action::WriteCapacity(_)
                )
            })
            .collect();
        assert_eq!(decisions, vec![false, false, false, true]);
    }

    #[test]
    fn heartbeats_come_at_the_interval_and_a_write_counts_as_one() {
        let policy = ReportPolicy {
            heartbeat_interval: Millis::from_secs(10),
            ..ReportPolicy::default()
        };
        let mut reporter = Reporter::new(policy);
        let steady = vec![node("n", vec![device("a", 0)])];
        reporter.written(Timestamp(0), steady.clone());
        assert_eq!(reporter.decide(Timestamp(9_999), &steady), Action::Wait);
        assert_eq!(
            reporter.decide(Timestamp(10_000), &steady),
            Action::Heartbeat
        );
        reporter.renewed(Timestamp(10_000));
        assert_eq!(reporter.next_heartbeat(), Some(Timestamp(20_000)));
        reporter.written(Timestamp(15_000), steady.clone());
        assert_eq!(reporter.decide(Timestamp(20_000), &steady), Action::Wait);
    }

    #[test]
    fn a_write_that_failed_is_tried_again_on_the_next_sample() {
        let mut reporter = Reporter::new(ReportPolicy::default());
        let before = vec![node("n", vec![device("a", 0)])];
        reporter.written(Timestamp(0), before);
        let mut failed = vec![node("n", vec![device("a", 0)])];
        failed[0].devices[0].healthy = false;
        assert!(matches!(
            reporter.decide(Timestamp(1), &failed),
            Action::WriteCapacity(_)
        ));
        // The write did not reach the registry: nothing recorded, so the same decision.
        assert!(matches!(
            reporter.decide(Timestamp(2), &failed),
            Action::WriteCapacity(_)
        ));
    }
}
