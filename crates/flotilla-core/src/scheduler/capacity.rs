//! The scheduler's working view of free GPUs during one planning pass: the registry's
//! free devices minus what this pass has already handed out.

use crate::cluster::Cluster;
use crate::gpu::{DeviceRef, GpuNeed};
use crate::placement::Replica;
use crate::settings::PlacementPolicy;
use crate::state::{Shape, State};
use crate::workload::{Constraints, Workload};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

/// One cluster as this pass sees it.
pub(crate) struct Slot<'a> {
    pub(crate) name: &'a str,
    pub(crate) region: &'a str,
    pub(crate) cluster: &'a Cluster,
    /// Takes new replicas: Ready, and not expiring in this pass.
    pub(crate) open: bool,
    total: u32,
    free_total: u32,
    free_by_shape: Vec<(Cow<'a, Shape>, u32)>,
    /// Device UUIDs handed out earlier in this pass.
    taken: HashSet<&'a str>,
    /// Allocated device UUIDs whose replicas this pass ends: free for this pass.
    released: HashSet<&'a str>,
}

impl Slot<'_> {
    fn usable(&self, uuid: &str, d: &crate::gpu::Device) -> bool {
        !self.taken.contains(uuid) && (d.is_free() || self.released.contains(uuid))
    }
}

impl Slot<'_> {
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
}

/// Workloads with the same GPU need and constraints rank clusters alike, so they
/// share one ranking per pass. That keeps a full pass near O(workloads × log clusters)
/// instead of O(workloads × clusters).
#[derive(PartialEq, Eq, Hash)]
struct ClassKey {
    gpu: GpuNeed,
    constraints: Constraints,
}

/// A candidate cluster with its score when ranked; scores only go stale upward for
/// packing, which keeps the result deterministic if not always optimal.
type Ranking = BTreeSet<(Reverse<i64>, usize)>;

pub(crate) struct Capacity<'a> {
    state: &'a State,
    policy: PlacementPolicy,
    pub(crate) slots: Vec<Slot<'a>>,
    rankings: HashMap<ClassKey, Ranking>,
}

/// What a placement search may not use.
pub(crate) struct Exclusions<'e> {
    /// Clusters this replica may not go to (spread constraint, the source of a move).
    pub(crate) clusters: &'e BTreeSet<&'e str>,
    /// The region-preference weight a target must exceed (rebalancing moves).
    pub(crate) min_preference: Option<u32>,
}

impl<'a> Capacity<'a> {
    pub(crate) fn new(
        state: &'a State,
        closing: &BTreeSet<&str>,
        released: &[&'a Replica],
    ) -> Self {
        let mut slots = Vec::with_capacity(state.clusters().len());
        for (name, c) in state.clusters() {
            let free_by_shape: Vec<(Cow<'a, Shape>, u32)> = state
                .free_shapes(name)
                .map(|f| f.iter().map(|(s, n)| (Cow::Borrowed(s), *n)).collect())
                .unwrap_or_default();
            slots.push(Slot {
                name,
                region: c.region(),
                cluster: c,
                open: c.schedulable() && !closing.contains(name.as_str()),
                total: c.inventory.device_count() as u32,
                free_total: free_by_shape.iter().map(|(_, n)| n).sum(),
                free_by_shape,
                taken: HashSet::new(),
                released: HashSet::new(),
            });
        }
        let mut capacity = Capacity {
            state,
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
        let Some(i) = self.slots.iter().position(|s| s.name == r.cluster) else {
            return;
        };
        let slot = &mut self.slots[i];
        for at in &r.devices {
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
            slot.free_total += 1;
            let shape = (d.report.model.clone(), d.report.mig_profile.clone());
            match slot.free_by_shape.iter_mut().find(|(s, _)| **s == shape) {
                Some(entry) => entry.1 += 1,
                None => slot.free_by_shape.push((Cow::Owned(shape), 1)),
            }
        }
        // Rankings may have dropped this cluster as full; rebuild them on next use.
        self.rankings.clear();
    }

    fn score(&self, w: &Workload, i: usize) -> i64 {
        let slot = &self.slots[i];
        i64::from(w.preference(slot.region)) * 1000 + slot.policy_score(self.policy)
    }

    fn ranking(&mut self, w: &Workload) -> &mut Ranking {
        let key = ClassKey {
            gpu: w.gpu.clone(),
            constraints: w.constraints.clone(),
        };
        if !self.rankings.contains_key(&key) {
            let ranking: Ranking = (0..self.slots.len())
                .filter(|&i| {
                    let s = &self.slots[i];
                    s.open && w.allows(s.name, s.region) && s.free_for(&w.gpu) >= w.gpu.count
                })
                .map(|i| (Reverse(self.score(w, i)), i))
                .collect();
            self.rankings.insert(
                ClassKey {
                    gpu: w.gpu.clone(),
                    constraints: w.constraints.clone(),
                },
                ranking,
            );
        }
        let key = ClassKey {
            gpu: w.gpu.clone(),
            constraints: w.constraints.clone(),
        };
        self.rankings.entry(key).or_default()
    }

    /// Finds the best cluster and devices for one replica of `w` and reserves them.
    pub(crate) fn place(
        &mut self,
        w: &Workload,
        ex: &Exclusions<'_>,
    ) -> Option<(usize, Vec<DeviceRef>)> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some((Reverse(stored), i)) = self.ranking(w).pop_first() {
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
                // Capacity only shrinks within a pass: drop it for this class.
                continue;
            }
            let now = self.score(w, i);
            if now < stored {
                self.ranking(w).insert((Reverse(now), i));
                continue;
            }
            match self.pick_devices(i, &w.gpu) {
                Some(devices) => {
                    let after = self.score(w, i);
                    if self.slots[i].free_for(&w.gpu) >= w.gpu.count {
                        self.ranking(w).insert((Reverse(after), i));
                    }
                    found = Some((i, devices));
                    break;
                }
                // Free devices of the right model lack memory: no use to this class.
                None => continue,
            }
        }
        let ranking = self.ranking(w);
        ranking.extend(skipped);
        found
    }

    /// Chooses `need.count` free devices on one node of slot `i` and reserves them:
    /// the tightest node when packing, the emptiest when spreading.
    pub(crate) fn pick_devices(&mut self, i: usize, need: &GpuNeed) -> Option<Vec<DeviceRef>> {
        let slot = &self.slots[i];
        let mut best: Option<(&str, Vec<&str>)> = None;
        for (node, n) in &slot.cluster.inventory.nodes {
            let usable: Vec<&str> = n
                .devices
                .iter()
                .filter(|(uuid, d)| slot.usable(uuid, d) && need.accepts(&d.report))
                .map(|(uuid, _)| uuid.as_str())
                .collect();
            if usable.len() < need.count as usize {
                continue;
            }
            let better = match &best {
                None => true,
                Some((_, b)) => match self.policy {
                    PlacementPolicy::Pack => usable.len() < b.len(),
                    PlacementPolicy::Spread => usable.len() > b.len(),
                },
            };
            if better {
                best = Some((node, usable));
            }
        }
        let (node, usable) = best?;
        let chosen: Vec<&str> = usable.into_iter().take(need.count as usize).collect();
        let refs = chosen
            .iter()
            .map(|uuid| DeviceRef {
                node: node.to_owned(),
                uuid: (*uuid).to_owned(),
            })
            .collect();
        self.reserve(i, node, &chosen);
        Some(refs)
    }

    /// Marks devices of slot `i` as taken by this pass.
    pub(crate) fn reserve(&mut self, i: usize, node: &str, uuids: &[&str]) {
        let state = self.state;
        let Some(cluster) = state.cluster(self.slots[i].name) else {
            return;
        };
        let slot = &mut self.slots[i];
        for uuid in uuids {
            let Some((key, d)) = cluster
                .inventory
                .nodes
                .get(node)
                .and_then(|n| n.devices.get_key_value(*uuid))
            else {
                continue;
            };
            if !slot.taken.insert(key.as_str()) {
                continue;
            }
            if d.is_free() || slot.released.contains(key.as_str()) {
                slot.free_total = slot.free_total.saturating_sub(1);
                if let Some(entry) = slot
                    .free_by_shape
                    .iter_mut()
                    .find(|(shape, _)| shape.0 == d.report.model && shape.1 == d.report.mig_profile)
                {
                    entry.1 = entry.1.saturating_sub(1);
                }
            }
        }
    }

    /// Whether this pass already handed out a device.
    pub(crate) fn is_taken(&self, i: usize, uuid: &str) -> bool {
        self.slots[i].taken.contains(uuid)
    }
}
