//! The registry's state: what every Raft member holds, changed only by `apply`.

use crate::cluster::Cluster;
use crate::error::ObjectKind;
use crate::placement::{Phase, Placement, Replica, ReplicaId};
use crate::policy::TenantPolicy;
use crate::route::{RouteEndpoint, RouteTable};
use crate::settings::Settings;
use crate::time::Timestamp;
use crate::workload::Workload;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A GPU shape: model and MIG profile (`None` for a whole GPU).
pub type Shape = (String, Option<String>);

/// The persistent part of the registry; snapshots store exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Persistent {
    pub(crate) clusters: BTreeMap<String, Cluster>,
    pub(crate) workloads: BTreeMap<String, Workload>,
    pub(crate) placements: BTreeMap<String, Placement>,
    pub(crate) routes: RouteTable,
    pub(crate) policies: BTreeMap<String, TenantPolicy>,
    pub(crate) settings: Settings,
    pub(crate) next_replica_id: u64,
    /// The revision of each workload, policy and cluster (their etags).
    #[serde(default)]
    pub(crate) revisions: Revisions,
    /// The placement table's revisions, for watchers that resume.
    #[serde(default)]
    pub(crate) placement_revisions: crate::placement::PlacementRevisions,
    /// The latest time an applied entry carried: where a new leader's clock
    /// starts, so that the federation's time never goes back.
    #[serde(default)]
    pub(crate) latest_entry_at: Timestamp,
    /// Member certificates issued and revoked (module `certificates`).
    #[serde(default)]
    pub(crate) certificates: crate::certificates::Certificates,
    /// Tenants, by name (module `tenant`).
    #[serde(default)]
    pub(crate) tenants: BTreeMap<String, crate::tenant::Tenant>,
    /// API keys' records, by public id.
    #[serde(default)]
    pub(crate) api_keys: BTreeMap<String, crate::tenant::ApiKey>,
    /// MCP servers, by name (module `mcp`).
    #[serde(default)]
    pub(crate) mcp_servers: BTreeMap<String, crate::mcp::McpServer>,
}

/// Revisions of the objects that users write, so that a write can say which version
/// it was based on. One counter for all of them (as etcd's revision), bumped by every
/// change; an object keeps the value of its last change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Revisions {
    pub(crate) last: u64,
    #[serde(default)]
    pub(crate) workloads: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) policies: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) clusters: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) tenants: BTreeMap<String, u64>,
    /// The federation's settings, which always exist (0: unchanged since before
    /// revisions, read as 1).
    #[serde(default)]
    pub(crate) settings: u64,
}

impl Revisions {
    fn of(&self, kind: ObjectKind) -> Option<&BTreeMap<String, u64>> {
        match kind {
            ObjectKind::Workload => Some(&self.workloads),
            ObjectKind::Policy => Some(&self.policies),
            ObjectKind::Cluster => Some(&self.clusters),
            ObjectKind::Tenant => Some(&self.tenants),
            _ => None,
        }
    }

    fn of_mut(&mut self, kind: ObjectKind) -> Option<&mut BTreeMap<String, u64>> {
        match kind {
            ObjectKind::Workload => Some(&mut self.workloads),
            ObjectKind::Policy => Some(&mut self.policies),
            ObjectKind::Cluster => Some(&mut self.clusters),
            ObjectKind::Tenant => Some(&mut self.tenants),
            _ => None,
        }
    }
}

/// What of an object its revision covers: a cluster's spec and cordon state, not
/// its reports and lease, which change with every heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RevisedContent {
    Workload(Option<Workload>),
    Policy(Option<TenantPolicy>),
    Cluster(Option<(crate::cluster::ClusterSpec, bool, bool)>),
    Settings(Settings),
    Tenant(Option<crate::tenant::Tenant>),
    None,
}

/// Indexes derived from the persistent part, kept so that `plan` after a small change
/// costs little however large the federation is. Rebuilt on restore.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Derived {
    /// Workloads the scheduler must look at: unplaced, under or over target, moving,
    /// draining, on a reclaimed GPU or a draining cluster, or away from a preferred region.
    pub(crate) attention: BTreeSet<String>,
    /// Workloads with a replica in each cluster.
    pub(crate) cluster_workloads: BTreeMap<String, BTreeSet<String>>,
    /// Workloads (and deleted placements) serving each model.
    pub(crate) model_workloads: BTreeMap<String, BTreeSet<String>>,
    /// Free devices per cluster by shape.
    pub(crate) free: BTreeMap<String, BTreeMap<Shape, u32>>,
    /// Migrations in flight across the federation.
    pub(crate) migrations: usize,
    /// Replicas draining because they were preempted, and for whom.
    pub(crate) preemptions: BTreeMap<ReplicaId, PendingPreemption>,
    /// Nodes with a lease of their own (node-scoped reports) as (expiry, cluster,
    /// node), soonest first: a pass finds the expired ones without visiting every node.
    pub(crate) node_leases: BTreeSet<(Timestamp, String, String)>,
}

/// A preempted replica still draining: its node is held for the preemptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingPreemption {
    pub(crate) cluster: String,
    pub(crate) node: String,
    pub(crate) for_workload: String,
}

impl PendingPreemption {
    pub(crate) fn of(r: &Replica) -> Option<Self> {
        match (&r.preempted_for, r.phase, r.devices.first()) {
            (Some(for_workload), Phase::Draining, Some(device)) => Some(PendingPreemption {
                cluster: r.cluster.clone(),
                node: device.node.clone(),
                for_workload: for_workload.clone(),
            }),
            _ => None,
        }
    }
}

/// The registry state machine's state. Read it freely; change it only through
/// [`crate::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub(crate) persistent: Persistent,
    pub(crate) derived: Derived,
}

impl State {
    /// Every replica placed on `cluster`, in workload then replica order: what that
    /// cluster's agent must make real.
    pub fn replicas_in(&self, cluster: &str) -> Vec<crate::placement::PlacedReplica> {
        self.placements()
            .iter()
            .flat_map(|(workload, p)| {
                p.replicas
                    .values()
                    .filter(|r| r.cluster == cluster)
                    .map(|r| crate::placement::PlacedReplica {
                        workload: workload.clone(),
                        model: p.model.clone(),
                        replica: r.clone(),
                    })
            })
            .collect()
    }

    pub fn new() -> Self {
        State::default()
    }

    pub fn with_settings(settings: Settings) -> Self {
        let mut s = State::default();
        s.persistent.settings = settings;
        s
    }

    /// The member certificates the CA issued, and those revoked when their
    /// cluster left.
    pub fn certificates(&self) -> &crate::certificates::Certificates {
        &self.persistent.certificates
    }

    pub fn clusters(&self) -> &BTreeMap<String, Cluster> {
        &self.persistent.clusters
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.persistent.clusters.get(name)
    }

    pub fn workloads(&self) -> &BTreeMap<String, Workload> {
        &self.persistent.workloads
    }

    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.persistent.workloads.get(name)
    }

    pub fn placements(&self) -> &BTreeMap<String, Placement> {
        &self.persistent.placements
    }

    pub fn placement(&self, workload: &str) -> Option<&Placement> {
        self.persistent.placements.get(workload)
    }

    /// The placement table's revision at `workload`'s placement's last change; 0 when
    /// it has none, or has not changed since a snapshot without revisions.
    pub fn placement_revision(&self, workload: &str) -> u64 {
        let revisions = &self.persistent.placement_revisions.changed;
        revisions.get(workload).copied().unwrap_or(0)
    }

    /// The latest time an applied entry carried (0 before any).
    pub fn latest_entry_at(&self) -> Timestamp {
        self.persistent.latest_entry_at
    }

    /// The placement table's revision: bumped by every change to any placement.
    pub fn placements_revision(&self) -> u64 {
        self.persistent.placement_revisions.last
    }

    /// Placements changed after `revision`, oldest first, those that went included
    /// (with no placement): what a watcher that saw `revision` missed. 0 asks for
    /// every placement now; a revision older than the compaction of tombstones
    /// cannot be answered.
    pub fn placement_changes_since(
        &self,
        revision: u64,
    ) -> Result<Vec<crate::placement::PlacementChange<'_>>, crate::Compacted> {
        self.persistent
            .placement_revisions
            .since(&self.persistent.placements, revision)
    }

    pub fn routes(&self) -> &RouteTable {
        &self.persistent.routes
    }

    pub fn policies(&self) -> &BTreeMap<String, TenantPolicy> {
        &self.persistent.policies
    }

    pub fn mcp_servers(&self) -> &BTreeMap<String, crate::mcp::McpServer> {
        &self.persistent.mcp_servers
    }

    pub fn tenants(&self) -> &BTreeMap<String, crate::tenant::Tenant> {
        &self.persistent.tenants
    }

    /// API keys' records (never the keys), by public id.
    pub fn api_keys(&self) -> &BTreeMap<String, crate::tenant::ApiKey> {
        &self.persistent.api_keys
    }

    /// Every device that two or more replicas hold, with the holders: empty in any
    /// state core produced. A check for whole-system tests and chaos runs, which
    /// read the registry and must prove that no GPU was ever booked twice.
    pub fn overcommitted(&self) -> Vec<Overcommit> {
        let mut holders: BTreeMap<(&str, &str), Vec<ReplicaId>> = BTreeMap::new();
        for p in self.persistent.placements.values() {
            for r in p.replicas.values() {
                for d in &r.devices {
                    holders
                        .entry((r.cluster.as_str(), d.uuid.as_str()))
                        .or_default()
                        .push(r.id);
                }
            }
        }
        holders
            .into_iter()
            .filter(|(_, held_by)| held_by.len() > 1)
            .map(|((cluster, device), held_by)| Overcommit {
                cluster: cluster.to_owned(),
                device: device.to_owned(),
                held_by,
            })
            .collect()
    }

    /// The revision of a workload, policy or cluster, or of the settings (`name`
    /// unused): its etag. 0 when it does not exist; an object older than revisions
    /// (from an earlier snapshot) is at 1.
    pub fn revision(&self, kind: ObjectKind, name: &str) -> u64 {
        let p = &self.persistent;
        if kind == ObjectKind::Settings {
            return p.revisions.settings.max(1);
        }
        let exists = match kind {
            ObjectKind::Workload => p.workloads.contains_key(name),
            ObjectKind::Policy => p.policies.contains_key(name),
            ObjectKind::Cluster => p.clusters.contains_key(name),
            ObjectKind::Tenant => p.tenants.contains_key(name),
            _ => false,
        };
        if !exists {
            return 0;
        }
        p.revisions
            .of(kind)
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(1)
    }

    pub(crate) fn revised_content(&self, kind: ObjectKind, name: &str) -> RevisedContent {
        let p = &self.persistent;
        match kind {
            ObjectKind::Workload => RevisedContent::Workload(p.workloads.get(name).cloned()),
            ObjectKind::Policy => RevisedContent::Policy(p.policies.get(name).cloned()),
            ObjectKind::Settings => RevisedContent::Settings(p.settings.clone()),
            ObjectKind::Tenant => RevisedContent::Tenant(p.tenants.get(name).cloned()),
            ObjectKind::Cluster => RevisedContent::Cluster(
                p.clusters
                    .get(name)
                    .map(|c| (c.spec.clone(), c.cordoned, c.draining)),
            ),
            _ => RevisedContent::None,
        }
    }

    /// After a change: the object takes the next revision, or loses its own when
    /// it is gone. Never below 2, so no object takes the 1 of an unrevised one.
    pub(crate) fn bump_revision(&mut self, kind: ObjectKind, name: &str) {
        let exists = self.revision(kind, name) != 0;
        let r = &mut self.persistent.revisions;
        let next = r.last.max(1) + 1;
        if kind == ObjectKind::Settings {
            r.settings = next;
            r.last = next;
            return;
        }
        let Some(map) = r.of_mut(kind) else { return };
        if exists {
            map.insert(name.to_owned(), next);
            r.last = next;
        } else {
            map.remove(name);
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.persistent.settings
    }

    /// Migrations in flight across the federation.
    pub fn migrations_in_flight(&self) -> usize {
        self.derived.migrations
    }

    /// Free devices of a cluster, by shape.
    pub fn free_shapes(&self, cluster: &str) -> Option<&BTreeMap<Shape, u32>> {
        self.derived.free.get(cluster)
    }

    /// Nodes with a lease of their own whose lease runs out at or before `at`, as
    /// (cluster, node), soonest first.
    pub fn nodes_expiring_by(&self, at: Timestamp) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.derived
            .node_leases
            .iter()
            .take_while(move |(t, _, _)| *t <= at)
            .map(|(_, cluster, node)| (cluster.as_str(), node.as_str()))
    }

    /// Workloads the scheduler will look at on its next pass.
    pub fn needing_attention(&self) -> &BTreeSet<String> {
        &self.derived.attention
    }

    /// Rebuilds every index from the persistent part (after a restore).
    pub(crate) fn rebuild_indexes(&mut self) {
        self.derived = Derived::default();
        let clusters: Vec<String> = self.persistent.clusters.keys().cloned().collect();
        for c in &clusters {
            self.refresh_free(c);
        }
        for (cluster, c) in &self.persistent.clusters {
            for (node, n) in &c.inventory.nodes {
                if let Some(t) = n.lease_expires_at {
                    self.derived
                        .node_leases
                        .insert((t, cluster.clone(), node.clone()));
                }
            }
        }
        for (name, placement) in &self.persistent.placements {
            for r in placement.replicas.values() {
                if let Some(pending) = PendingPreemption::of(r) {
                    self.derived.preemptions.insert(r.id, pending);
                }
                self.derived
                    .cluster_workloads
                    .entry(r.cluster.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        let mut names: BTreeSet<String> = self.persistent.workloads.keys().cloned().collect();
        names.extend(self.persistent.placements.keys().cloned());
        for name in &names {
            if let Some(model) = self.model_of(name) {
                self.derived
                    .model_workloads
                    .entry(model)
                    .or_default()
                    .insert(name.clone());
            }
            self.refresh_attention(name);
        }
        self.derived.migrations = self
            .persistent
            .placements
            .values()
            .map(|p| p.migrations.len())
            .sum();
    }

    /// The model a workload serves; a deleted workload's placement remembers it.
    pub(crate) fn model_of(&self, workload: &str) -> Option<String> {
        if let Some(w) = self.persistent.workloads.get(workload) {
            return Some(w.model.clone());
        }
        self.persistent
            .placements
            .get(workload)
            .map(|p| p.model.clone())
    }

    pub(crate) fn refresh_free(&mut self, cluster: &str) {
        let Some(c) = self.persistent.clusters.get(cluster) else {
            self.derived.free.remove(cluster);
            return;
        };
        let mut free: BTreeMap<Shape, u32> = BTreeMap::new();
        for node in c.inventory.nodes.values() {
            for d in node.devices.values().filter(|d| d.is_free()) {
                *free
                    .entry((d.report.model.clone(), d.report.mig_profile.clone()))
                    .or_default() += 1;
            }
        }
        self.derived.free.insert(cluster.to_owned(), free);
    }

    pub(crate) fn refresh_attention(&mut self, workload: &str) {
        if self.needs_attention(workload) {
            self.derived.attention.insert(workload.to_owned());
        } else {
            self.derived.attention.remove(workload);
        }
    }

    fn needs_attention(&self, name: &str) -> bool {
        let placement = self.persistent.placements.get(name);
        let Some(w) = self.persistent.workloads.get(name) else {
            // A deleted workload still draining its replicas.
            return placement.is_some();
        };
        let Some(p) = placement else { return true };
        if p.deleted || !p.migrations.is_empty() || p.active_count() != w.replicas.max {
            return true;
        }
        let best = w.best_preference();
        p.replicas.values().any(|r| {
            if r.phase != Phase::Ready || r.evicted || r.preempted_for.is_some() {
                return true;
            }
            let Some(c) = self.persistent.clusters.get(&r.cluster) else {
                return true;
            };
            c.draining
                || !w.allows(&r.cluster, c.region())
                || (w.movable()
                    && best.saturating_sub(w.preference(c.region()))
                        > self.persistent.settings.hysteresis)
        })
    }

    /// The route a model should have now, from the placements of every workload serving it.
    pub(crate) fn derive_route(&self, model: &str) -> Vec<RouteEndpoint> {
        let mut by_cluster: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        let Some(workloads) = self.derived.model_workloads.get(model) else {
            return Vec::new();
        };
        for name in workloads {
            if !self.persistent.workloads.contains_key(name) {
                continue;
            }
            let Some(p) = self.persistent.placements.get(name) else {
                continue;
            };
            for r in p.replicas.values().filter(|r| r.phase == Phase::Ready) {
                let weight = match p.migration_of(r.id) {
                    Some(m) if m.source == r.id => 100 - m.target_weight,
                    Some(m) => m.target_weight,
                    None => 100,
                };
                if weight == 0 {
                    continue;
                }
                let e = by_cluster.entry(r.cluster.as_str()).or_default();
                e.0 += weight;
                e.1 += 1;
            }
        }
        by_cluster
            .into_iter()
            .map(|(cluster, (weight, ready))| RouteEndpoint {
                cluster: cluster.to_owned(),
                weight,
                ready_replicas: ready,
            })
            .collect()
    }
}

/// A device held by more than one replica (see [`State::overcommitted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overcommit {
    pub cluster: String,
    pub device: String,
    pub held_by: Vec<ReplicaId>,
}

impl std::fmt::Display for Overcommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<String> = self.held_by.iter().map(ToString::to_string).collect();
        write!(
            f,
            "device {} of cluster {} is held by {}",
            self.device,
            self.cluster,
            held.join(" and ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DeviceRef;
    use crate::placement::Replica;

    fn replica(id: u64, cluster: &str, devices: &[&str]) -> Replica {
        Replica {
            id: ReplicaId(id),
            cluster: cluster.into(),
            devices: devices
                .iter()
                .map(|d| DeviceRef {
                    node: "n".into(),
                    uuid: (*d).into(),
                })
                .collect(),
            phase: Phase::Ready,
            phase_since: Timestamp(0),
            placed_at: Timestamp(0),
            drain_deadline: None,
            evicted: false,
            preempted_for: None,
            endpoint: None,
        }
    }

    fn placed(replicas: Vec<Replica>) -> Placement {
        Placement {
            model: "m".into(),
            replicas: replicas.into_iter().map(|r| (r.id, r)).collect(),
            migrations: Vec::new(),
            generation: 1,
            deleted: false,
        }
    }

    #[test]
    fn a_device_held_by_two_replicas_is_reported_with_both_holders() {
        let mut s = State::new();
        s.persistent.placements.insert(
            "w1".into(),
            placed(vec![
                replica(1, "a", &["GPU-0"]),
                replica(2, "b", &["GPU-0"]),
            ]),
        );
        s.persistent.placements.insert(
            "w2".into(),
            placed(vec![replica(3, "a", &["GPU-0", "GPU-1"])]),
        );
        assert_eq!(
            s.overcommitted(),
            vec![Overcommit {
                cluster: "a".into(),
                device: "GPU-0".into(),
                held_by: vec![ReplicaId(1), ReplicaId(3)],
            }],
            "the same uuid in another cluster is another device"
        );
        assert_eq!(
            s.overcommitted()[0].to_string(),
            "device GPU-0 of cluster a is held by r1 and r3"
        );
    }
}
