//! The scheduler's working view of free GPUs during one planning pass: the registry's
//! free devices, plus those of replicas this pass ends, minus what this pass has
//! already handed out.

use crate::cluster::Cluster;
use crate::gpu::{Device, DeviceRef, GpuNeed};
use crate::placement::Replica;
use crate::settings::PlacementPolicy;
use crate::state::{Shape, State};
use crate::workload::{Constraints, Workload};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

/// A node's usable devices, in UUID order.
struct NodeFree<'a> {
    name: &'a str,
    devices: Vec<(&'a str, &'a Device)>,
}

/// One cluster as this pass sees it.
pub(crate) struct Slot<'a> {
    pub(crate) name: &'a str,
    pub(crate) region: &'a str,
    pub(crate) cluster: &'a Cluster,
    /// Takes new replicas: Ready, and not expiring in this pass.
    pub(crate) open: bool,
    /// Nodes this pass expires: none of their devices is offered.
    gone: HashSet<&'a str>,
    total: u32,
    free_total: u32,
    free_by_shape: Vec<(Cow<'a, Shape>, u32)>,
    /// Usable devices per node, built when this cluster is first picked from.
    nodes: Option<Vec<NodeFree<'a>>>,
    /// Device UUIDs handed out earlier in this pass.
    taken: HashSet<&'a str>,
    /// Allocated device UUIDs whose replicas this pass ends: free for this pass.
    released: HashSet<&'a str>,
    /// Devices held for a workload that preempted others on their node: no one else
    /// may take them, or the preemption would have to start over.
    held: HashMap<&'a str, &'a str>,
}

impl<'a> Slot<'a> {
    fn free_for(&self, need: &GpuNeed) -> u32 {
        self.free_by_shape
            .iter()
            .filter(|(shape, _)| need.accepts_shape(&shape.0, shape.1.as_deref()))
            .map(|(_, n)| *n)
            .sum()
    }

    fn policy_score(&self, policy: PlacementPolicy) -> i64 {
        if self.total == 0 {
            return 0;
        }
        let (free, total) = (i64::from(self.free_total), i64::from(self.total));
        match policy {
            PlacementPolicy::Pack => (total - free) * 999 / total,
            PlacementPolicy::Spread => free * 999 / total,
        }
    }

    /// Whether this pass expires the node.
    pub(crate) fn node_gone(&self, node: &str) -> bool {
        self.gone.contains(node)
    }

    fn usable(&self, uuid: &str, d: &Device) -> bool {
        !self.taken.contains(uuid) && (d.is_free() || self.released.contains(uuid))
    }

    fn held_for_other(&self, uuid: &str, workload: &str) -> bool {
        self.held.get(uuid).is_some_and(|h| *h != workload)
    }

    fn nodes(&mut self) -> &mut Vec<NodeFree<'a>> {
        if self.nodes.is_none() {
            let cluster = self.cluster;
            let nodes = cluster
                .inventory
                .nodes
                .iter()
                .filter(|(name, _)| !self.gone.contains(name.as_str()))
                .map(|(name, n)| NodeFree {
                    name,
                    devices: n
                        .devices
                        .iter()
                        .filter(|(uuid, d)| self.usable(uuid, d))
                        .map(|(uuid, d)| (uuid.as_str(), d))
                        .collect(),
                })
                .collect();
            self.nodes = Some(nodes);
        }
        self.nodes.get_or_insert_with(Vec::new)
    }

    fn count_device(&mut self, d: &Device, delta: i32) {
        self.free_total = self.free_total.saturating_add_signed(delta);
        let shape = (&d.report.model, &d.report.mig_profile);
        match self
            .free_by_shape
            .iter_mut()
            .find(|(s, _)| (&s.0, &s.1) == shape)
        {
            Some(entry) => entry.1 = entry.1.saturating_add_signed(delta),
            None if delta > 0 => self.free_by_shape.push((
                Cow::Owned((d.report.model.clone(), d.report.mig_profile.clone())),
                delta.unsigned_abs(),
            )),
            None => {}
        }
    }
}

/// Workloads with the same GPU need and constraints rank clusters alike, so they
/// share one ranking per pass. That keeps a full pass near O(workloads × log clusters)
/// instead of O(workloads × clusters).
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
struct ClassKey<'a> {
    gpu: &'a GpuNeed,
    constraints: &'a Constraints,
}

/// Candidate clusters by score. Scores are refreshed when a candidate is taken, so
/// they may lag behind for clusters that other classes filled; the pick stays
/// deterministic, if not always the very best.
type Ranking = BTreeSet<(Reverse<i64>, usize)>;

pub(crate) struct Capacity<'a> {
    policy: PlacementPolicy,
    pub(crate) slots: Vec<Slot<'a>>,
    rankings: HashMap<ClassKey<'a>, Ranking>,
}

/// What a placement search may not use.
pub(crate) struct Exclusions<'e> {
    /// Clusters this replica may not go to (spread constraint, the source of a move).
    pub(crate) clusters: &'e BTreeSet<&'e str>,
    /// The region-preference weight a target must exceed (rebalancing moves).
    pub(crate) min_preference: Option<u32>,
}

fn score(policy: PlacementPolicy, w: &Workload, slot: &Slot<'_>) -> i64 {
    i64::from(w.preference(slot.region)) * 1000 + slot.policy_score(policy)
}

impl<'a> Capacity<'a> {
    pub(crate) fn new(
        state: &'a State,
        closing: &BTreeSet<&str>,
        expiring: &BTreeSet<(&'a str, &'a str)>,
        released: &[&'a Replica],
    ) -> Self {
        let mut slots = Vec::with_capacity(state.clusters().len());
        for (name, c) in state.clusters() {
            let free_by_shape: Vec<(Cow<'a, Shape>, u32)> = state
                .free_shapes(name)
                .map(|f| f.iter().map(|(s, n)| (Cow::Borrowed(s), *n)).collect())
                .unwrap_or_default();
            let mut slot = Slot {
                name,
                region: c.region(),
                cluster: c,
                open: c.schedulable() && !closing.contains(name.as_str()),
                gone: HashSet::new(),
                total: c.inventory.device_count() as u32,
                free_total: free_by_shape.iter().map(|(_, n)| n).sum(),
                free_by_shape,
                nodes: None,
                taken: HashSet::new(),
                released: HashSet::new(),
                held: HashMap::new(),
            };
            let gone = expiring
                .range((name.as_str(), "")..)
                .take_while(|(cluster, _)| *cluster == name.as_str());
            for &(_, node) in gone {
                let Some(n) = c.inventory.nodes.get(node) else {
                    continue;
                };
                slot.gone.insert(node);
                slot.total = slot.total.saturating_sub(n.devices.len() as u32);
                for d in n.devices.values().filter(|d| d.is_free()) {
                    slot.count_device(d, -1);
                }
            }
            slots.push(slot);
        }
        let mut capacity = Capacity {
            policy: state.settings().placement_policy,
            slots,
            rankings: HashMap::new(),
        };
        for r in released {
            capacity.release(r);
        }
        capacity
    }

    /// Counts a replica's GPUs as free: this pass ends it.
    pub(crate) fn release(&mut self, r: &'a Replica) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.name == r.cluster) else {
            return;
        };
        for at in &r.devices {
            if slot.gone.contains(at.node.as_str()) {
                continue;
            }
            let Some((uuid, d)) = slot
                .cluster
                .inventory
                .nodes
                .get(&at.node)
                .and_then(|n| n.devices.get_key_value(&at.uuid))
            else {
                continue;
            };
            let usable_after = d.report.healthy && !d.report.claimed_by_other;
            if d.allocated_to != Some(r.id) || !usable_after || !slot.released.insert(uuid) {
                continue;
            }
            slot.count_device(d, 1);
            if let Some(nodes) = slot.nodes.as_mut()
                && let Some(node) = nodes.iter_mut().find(|n| n.name == at.node)
            {
                let at = node.devices.partition_point(|(u, _)| *u < uuid.as_str());
                node.devices.insert(at, (uuid.as_str(), d));
            }
        }
        // Rankings may have dropped this cluster as full; rebuild them on next use.
        self.rankings.clear();
    }

    /// Takes the ranking of `w`'s class out of the cache (building it on first use);
    /// `place` puts it back, so a placement hashes the class key twice, not per step.
    fn take_ranking(&mut self, w: &'a Workload) -> (ClassKey<'a>, Ranking) {
        let key = ClassKey {
            gpu: &w.gpu,
            constraints: &w.constraints,
        };
        if let Some(ranking) = self.rankings.remove(&key) {
            return (key, ranking);
        }
        let policy = self.policy;
        let ranking = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.open && w.allows(s.name, s.region) && s.free_for(&w.gpu) >= w.gpu.count
            })
            .map(|(i, s)| (Reverse(score(policy, w, s)), i))
            .collect();
        (key, ranking)
    }

    /// Finds the best cluster and devices for one replica of `w` and reserves them.
    pub(crate) fn place(
        &mut self,
        w: &'a Workload,
        ex: &Exclusions<'_>,
    ) -> Option<(usize, Vec<DeviceRef>)> {
        let policy = self.policy;
        let (key, mut ranking) = self.take_ranking(w);
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some((Reverse(stored), i)) = ranking.pop_first() {
            let slot = &self.slots[i];
            if let Some(min) = ex.min_preference
                && w.preference(slot.region) <= min
            {
                // Rankings order by preference first: nothing further can qualify.
                skipped.push((Reverse(stored), i));
                break;
            }
            if ex.clusters.contains(slot.name) {
                skipped.push((Reverse(stored), i));
                continue;
            }
            if slot.free_for(&w.gpu) < w.gpu.count {
                // Capacity only shrinks within a pass (releases reset rankings).
                continue;
            }
            let now = score(policy, w, slot);
            if now < stored {
                ranking.insert((Reverse(now), i));
                continue;
            }
            // Free devices of the right model but too little memory: no use to this class.
            let Some(devices) = self.pick_devices(i, &w.gpu, &w.name) else {
                continue;
            };
            let slot = &self.slots[i];
            if slot.free_for(&w.gpu) >= w.gpu.count {
                ranking.insert((Reverse(score(policy, w, slot)), i));
            }
            found = Some((i, devices));
            break;
        }
        ranking.extend(skipped);
        self.rankings.insert(key, ranking);
        found
    }

    /// Chooses `need.count` usable devices on one node of slot `i` and reserves them:
    /// the tightest node when packing, the emptiest when spreading.
    fn pick_devices(&mut self, i: usize, need: &GpuNeed, workload: &str) -> Option<Vec<DeviceRef>> {
        let policy = self.policy;
        let slot = &mut self.slots[i];
        slot.nodes();
        let (Some(nodes), held) = (slot.nodes.as_mut(), &slot.held) else {
            return None;
        };
        let fits = |uuid: &str, d: &Device| {
            need.accepts(&d.report) && held.get(uuid).is_none_or(|h| *h == workload)
        };
        let mut best: Option<(usize, usize)> = None;
        for (n, node) in nodes.iter().enumerate() {
            let count = node.devices.iter().filter(|(u, d)| fits(u, d)).count();
            if count < need.count as usize {
                continue;
            }
            let better = best.is_none_or(|(_, b)| match policy {
                PlacementPolicy::Pack => count < b,
                PlacementPolicy::Spread => count > b,
            });
            if better {
                best = Some((n, count));
            }
        }
        let (n, _) = best?;
        let node = &mut nodes[n];
        let mut chosen: Vec<(&'a str, &'a Device)> = Vec::with_capacity(need.count as usize);
        node.devices.retain(|(uuid, d)| {
            if chosen.len() < need.count as usize && fits(uuid, d) {
                chosen.push((uuid, d));
                false
            } else {
                true
            }
        });
        let node_name = node.name;
        for (uuid, d) in &chosen {
            slot.taken.insert(uuid);
            slot.count_device(d, -1);
        }
        Some(
            chosen
                .iter()
                .map(|(uuid, _)| DeviceRef {
                    node: node_name.to_owned(),
                    uuid: (*uuid).to_owned(),
                })
                .collect(),
        )
    }

    /// Whether this pass already handed out a device, or holds it for another workload.
    pub(crate) fn unavailable_to(&self, i: usize, uuid: &str, workload: &str) -> bool {
        let slot = &self.slots[i];
        slot.taken.contains(uuid) || slot.held_for_other(uuid, workload)
    }

    /// Holds a node's usable devices for `workload`, which preempted replicas there.
    pub(crate) fn hold(&mut self, cluster: &str, node: &str, workload: &'a str) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.name == cluster) else {
            return;
        };
        if slot.gone.contains(node) {
            return;
        }
        let Some(n) = slot.cluster.inventory.nodes.get(node) else {
            return;
        };
        for (uuid, d) in &n.devices {
            if slot.usable(uuid, d) {
                slot.held.entry(uuid.as_str()).or_insert(workload);
            }
        }
    }
}
