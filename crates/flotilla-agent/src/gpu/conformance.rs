//! The checks every [`GpuSource`] must pass, whatever it reads. The simulated fleet
//! runs them in the ordinary tests; NVML runs them in the ignored GPU test
//! (`scripts/nvml-check.sh`).
//!
//! A source that passes gives the registry reports it will accept: unique UUIDs,
//! memory and utilisation within bounds, MIG instances only under MIG-enabled GPUs,
//! and the same devices from one snapshot to the next.

use super::GpuSource;
use super::sample::{Health, Mig, Snapshot};
use std::collections::BTreeSet;

/// Runs the suite and panics with every violation found; for tests. Returns the
/// first snapshot, for further assertions.
pub fn run(source: &dyn GpuSource) -> Snapshot {
    match check(source) {
        Ok(snapshot) => snapshot,
        Err(violations) => panic!(
            "the {} GPU source breaks {} rule(s):\n  - {}",
            source.kind(),
            violations.len(),
            violations.join("\n  - ")
        ),
    }
}

/// Takes two snapshots and checks each and both together. `Err` lists every
/// violation, each naming the node and device.
pub fn check(source: &dyn GpuSource) -> Result<Snapshot, Vec<String>> {
    let first = source
        .snapshot()
        .map_err(|e| vec![format!("snapshot failed: {e}")])?;
    let second = source
        .snapshot()
        .map_err(|e| vec![format!("a second snapshot failed: {e}")])?;
    let mut violations = check_snapshot(&first);
    let ids = |s: &Snapshot| -> BTreeSet<String> {
        s.nodes
            .iter()
            .flat_map(|n| {
                n.devices
                    .iter()
                    .map(move |d| format!("{}/{}", n.name, d.uuid))
            })
            .collect()
    };
    let (a, b) = (ids(&first), ids(&second));
    if a != b {
        violations.push(format!(
            "devices changed between two snapshots with nothing happening: only in the first {:?}, only in the second {:?}",
            a.difference(&b).collect::<Vec<_>>(),
            b.difference(&a).collect::<Vec<_>>()
        ));
    }
    if violations.is_empty() {
        Ok(first)
    } else {
        Err(violations)
    }
}

/// The rules one snapshot must follow.
pub fn check_snapshot(snapshot: &Snapshot) -> Vec<String> {
    let mut v = Vec::new();
    let mut nodes = BTreeSet::new();
    let mut uuids = BTreeSet::new();
    for node in &snapshot.nodes {
        if !nodes.insert(node.name.as_str()) {
            v.push(format!("node {:?} appears twice", node.name));
        }
        let mut indices = BTreeSet::new();
        for d in &node.devices {
            let at = format!("node {:?} device {} ({})", node.name, d.index, d.uuid);
            let answering = !matches!(d.health, Health::Lost { .. });
            if answering && !indices.insert(d.index) {
                v.push(format!("{at}: index {} is used twice", d.index));
            }
            if d.uuid.is_empty() || !uuids.insert(d.uuid.as_str()) {
                v.push(format!("{at}: UUID is empty or not unique"));
            }
            if d.model.trim().is_empty() {
                v.push(format!("{at}: no model name"));
            }
            let m = d.memory;
            if m.used_mib > m.total_mib || m.free_mib > m.total_mib {
                v.push(format!(
                    "{at}: memory used {} / free {} MiB exceeds total {} MiB",
                    m.used_mib, m.free_mib, m.total_mib
                ));
            }
            if answering && m.total_mib == 0 {
                v.push(format!("{at}: total memory is 0"));
            }
            if let Some(u) = d.utilization
                && (u.gpu_pct > 100 || u.memory_pct > 100)
            {
                v.push(format!(
                    "{at}: utilisation {}% GPU / {}% memory exceeds 100",
                    u.gpu_pct, u.memory_pct
                ));
            }
            if let Some(p) = d
                .processes
                .iter()
                .flatten()
                .find(|p| p.used_memory_mib.is_some_and(|u| u > m.total_mib))
            {
                v.push(format!(
                    "{at}: process {} uses more memory than the device has",
                    p.pid
                ));
            }
            match &d.mig {
                Mig::Disabled => {}
                Mig::Enabled { instances } => {
                    let mut sum = 0u64;
                    for i in instances {
                        let at = format!("{at} MIG instance {}", i.uuid);
                        if i.uuid.is_empty() || !uuids.insert(i.uuid.as_str()) {
                            v.push(format!("{at}: UUID is empty or not unique"));
                        }
                        if i.profile.is_empty() {
                            v.push(format!("{at}: no profile"));
                        }
                        if i.memory.total_mib == 0 || i.memory.used_mib > i.memory.total_mib {
                            v.push(format!(
                                "{at}: memory used {} MiB of total {} MiB",
                                i.memory.used_mib, i.memory.total_mib
                            ));
                        }
                        sum += i.memory.total_mib;
                    }
                    if sum > m.total_mib {
                        v.push(format!(
                            "{at}: MIG instances hold {sum} MiB, more than the GPU's {} MiB",
                            m.total_mib
                        ));
                    }
                }
            }
        }
    }
    let reports = snapshot.to_reports();
    for (node, report) in snapshot.nodes.iter().zip(&reports) {
        for d in &node.devices {
            let reported: Vec<_> = report
                .devices
                .iter()
                .filter(|r| r.uuid == d.uuid || d.mig.instances().iter().any(|i| i.uuid == r.uuid))
                .collect();
            if !d.health.is_healthy() && reported.iter().any(|r| r.healthy) {
                v.push(format!(
                    "node {:?} device {}: unhealthy but reported healthy",
                    node.name, d.uuid
                ));
            }
            if matches!(d.mig, Mig::Disabled) && d.memory.total_mib > 0 && reported.is_empty() {
                v.push(format!(
                    "node {:?} device {}: left out of the report",
                    node.name, d.uuid
                ));
            }
            if reported.iter().any(|r| r.mig_profile.is_some()) && matches!(d.mig, Mig::Disabled) {
                v.push(format!(
                    "node {:?} device {}: reported as a MIG instance though MIG is off",
                    node.name, d.uuid
                ));
            }
        }
    }
    if let Err(e) = flotilla_core::gpu::validate_report("conformance", &reports) {
        v.push(format!("the registry would refuse the report: {e}"));
    }
    v
}
