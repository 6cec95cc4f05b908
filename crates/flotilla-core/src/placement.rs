//! Placements: where a workload's replicas run, and the moves in progress.

use crate::error::{ObjectKind, ValidationError};
use crate::gpu::DeviceRef;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A replica's identity, unique in the federation and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub u64);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A replica's life: Starting → Ready → Draining → Gone. Gone replicas leave the
/// placement at once, so the registry never stores that phase; it appears in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
    Gone,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "Starting",
            Phase::Ready => "Ready",
            Phase::Draining => "Draining",
            Phase::Gone => "Gone",
        }
    }
}

/// One replica of a workload, on specific GPUs of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: ReplicaId,
    pub cluster: String,
    pub devices: Vec<DeviceRef>,
    pub phase: Phase,
    /// When it entered its current phase.
    pub phase_since: Timestamp,
    /// When it was placed; minimum dwell time counts from here.
    pub placed_at: Timestamp,
    /// While Draining: when Flotilla stops waiting for in-flight requests.
    pub drain_deadline: Option<Timestamp>,
    /// Its cluster lost the devices it was on to another tenant: it must move.
    pub evicted: bool,
    /// Preempted to make room for a higher-priority workload.
    pub preempted_for: Option<String>,
    /// Where the replica serves (`host:port`), as its materializer reported with
    /// Ready. Absent until then, and in snapshots written before endpoints existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Checks a replica endpoint: `host:port`, the host a name or an IP address
/// (IPv6 in brackets), the port 1–65535.
pub fn validate_endpoint(workload: &str, endpoint: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| {
        Err(ValidationError::new(
            ObjectKind::Replica,
            workload,
            "endpoint",
            format!("{endpoint:?} is not host:port: {why}"),
        ))
    };
    if endpoint.len() > 260 {
        return bad("longer than 260 characters");
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("the port must be a number from 1 to 65535"),
    }
    let host = match host.strip_prefix('[') {
        Some(v6) => match v6.strip_suffix(']') {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => return Ok(()),
            _ => return bad("a bracketed host must be an IPv6 address"),
        },
        None => host,
    };
    if host.is_empty() {
        return bad("no host");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return bad("the host may hold only letters, digits, '-', '.' and '_' (IPv6 in brackets)");
    }
    Ok(())
}

impl Replica {
    /// Counts towards the workload's replica target: Starting or Ready.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
    }
}

/// A replica with the workload and model it serves: what a cluster's agent must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedReplica {
    pub workload: String,
    pub model: String,
    pub replica: Replica,
}

/// Why a replica is moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveReason {
    /// Another tenant took its GPUs.
    Reclaimed,
    /// Its cluster is being drained.
    ClusterDrain,
    /// Its workload's constraints no longer allow where it runs.
    Constraints,
    /// A better spot opened up and the gain beats the hysteresis threshold.
    Rebalance,
    /// An operator asked for it.
    Manual,
}

impl MoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::Reclaimed => "reclaimed",
            MoveReason::ClusterDrain => "cluster-drain",
            MoveReason::Constraints => "constraints",
            MoveReason::Rebalance => "rebalance",
            MoveReason::Manual => "manual",
        }
    }
}

/// A make-before-break move of one replica: the target starts, becomes Ready, takes
/// traffic in steps, and only then the source drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub source: ReplicaId,
    pub target: ReplicaId,
    pub reason: MoveReason,
    pub started_at: Timestamp,
    /// The share of the pair's traffic the target gets, 0–100.
    pub target_weight: u32,
    /// When the weight last changed (or the target became Ready).
    pub last_step_at: Option<Timestamp>,
}

/// Where a workload runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Placement {
    /// The model served, kept here so a deleted workload's replicas can still be traced.
    pub model: String,
    pub replicas: BTreeMap<ReplicaId, Replica>,
    pub migrations: Vec<Migration>,
    /// Bumped on every change, so watchers and materializers can tell versions apart.
    pub generation: u64,
    /// The workload was deleted; the placement goes when its last replica is Gone.
    pub deleted: bool,
}

impl Placement {
    pub fn active_count(&self) -> u32 {
        self.replicas.values().filter(|r| r.is_active()).count() as u32
    }

    /// Replicas per cluster and phase, for display: (cluster, phase, count).
    pub fn summary(&self) -> Vec<(String, Phase, u32)> {
        let mut counts: BTreeMap<(String, Phase), u32> = BTreeMap::new();
        for r in self.replicas.values() {
            *counts.entry((r.cluster.clone(), r.phase)).or_default() += 1;
        }
        counts.into_iter().map(|((c, p), n)| (c, p, n)).collect()
    }

    pub fn migration_of(&self, replica: ReplicaId) -> Option<&Migration> {
        self.migrations
            .iter()
            .find(|m| m.source == replica || m.target == replica)
    }
}

/// The placement table's revisions, so that a watcher can resume where it left off
/// (as etcd's revisions): one counter, bumped by every change to any placement, and
/// for each placement the revision of its last change. A placement that goes leaves
/// a tombstone, kept for [`crate::TOMBSTONE_REVISIONS`] revisions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct PlacementRevisions {
    pub(crate) last: u64,
    /// Live placements: the revision of their last change. One that has not changed
    /// since an older snapshot (without revisions) is not here: it is at 0.
    #[serde(default)]
    pub(crate) changed: BTreeMap<String, u64>,
    /// Placements that went: the revision at which they went.
    #[serde(default)]
    pub(crate) removed: BTreeMap<String, u64>,
    /// The newest tombstone dropped: a watcher that saw less must list again.
    #[serde(default)]
    pub(crate) compacted: u64,
}

/// One entry of [`crate::State::placement_changes_since`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementChange<'a> {
    pub workload: &'a str,
    /// The placement revision of this change.
    pub revision: u64,
    /// The placement now; `None` when it went.
    pub placement: Option<&'a Placement>,
}

impl PlacementRevisions {
    pub(crate) fn changed(&mut self, workload: &str) {
        self.last += 1;
        self.removed.remove(workload);
        self.changed.insert(workload.to_owned(), self.last);
        self.compact();
    }

    pub(crate) fn removed(&mut self, workload: &str) {
        self.last += 1;
        self.changed.remove(workload);
        self.removed.insert(workload.to_owned(), self.last);
        self.compact();
    }

    /// Drops the tombstones older than [`crate::TOMBSTONE_REVISIONS`].
    fn compact(&mut self) {
        let now = self.last;
        let mut compacted = self.compacted;
        self.removed.retain(|_, revision| {
            let drop = now.saturating_sub(*revision) > crate::TOMBSTONE_REVISIONS;
            if drop {
                compacted = compacted.max(*revision);
            }
            !drop
        });
        self.compacted = compacted;
    }

    /// What changed after `revision`, oldest first (0: every live placement).
    pub(crate) fn since<'a>(
        &'a self,
        placements: &'a BTreeMap<String, Placement>,
        revision: u64,
    ) -> Result<Vec<PlacementChange<'a>>, crate::Compacted> {
        if revision != 0 && revision < self.compacted {
            return Err(crate::Compacted {
                table: "placement",
                from: revision,
                compacted: self.compacted,
            });
        }
        let live = placements.iter().filter_map(|(workload, p)| {
            let at = self.changed.get(workload).copied().unwrap_or(0);
            (revision == 0 || at > revision).then_some(PlacementChange {
                workload,
                revision: at,
                placement: Some(p),
            })
        });
        let gone = self
            .removed
            .iter()
            .filter(|(_, at)| revision != 0 && **at > revision)
            .map(|(workload, at)| PlacementChange {
                workload,
                revision: *at,
                placement: None,
            });
        let mut changes: Vec<PlacementChange<'a>> = live.chain(gone).collect();
        changes.sort_by_key(|c| c.revision);
        Ok(changes)
    }
}

#[cfg(test)]
mod revision_tests {
    use super::*;

    #[test]
    fn a_tombstone_is_compacted_by_later_changes_alone() {
        let mut r = PlacementRevisions::default();
        r.changed("gone");
        r.removed("gone");
        let tombstone = r.last;
        for _ in 0..crate::TOMBSTONE_REVISIONS {
            r.changed("busy");
        }
        assert!(r.removed.contains_key("gone"), "kept for the horizon");
        r.changed("busy");
        assert!(
            r.removed.is_empty(),
            "then dropped, though nothing else went"
        );
        assert_eq!(r.compacted, tombstone);
        let placements = BTreeMap::new();
        assert!(r.since(&placements, tombstone - 1).is_err());
        assert!(r.since(&placements, tombstone).is_ok());
    }
}
