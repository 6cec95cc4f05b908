//! The scheduler: `plan(&State, now) -> Vec<Command>`.
//!
//! It reads the registry and proposes commands; it never changes anything itself.
//! Applied in order, the commands of one pass are accepted, and planning again at the
//! same time then proposes nothing: a pass is complete, not a first step.
//!
//! What a pass does, for each workload that needs attention (highest priority first):
//! 1. ends what ran out of time: drains past their deadline, starts that never came up;
//! 2. moves migrations along: the target Ready → traffic shifts in steps → the source
//!    drains (make-before-break), or rolls back when the target never becomes Ready;
//! 3. moves replicas that must go (GPU reclaimed, cluster draining, constraints) or
//!    that would gain more than the hysteresis threshold (region preference), once
//!    their minimum dwell time has passed;
//! 4. places missing replicas, preempting lower priorities only to reach `min`;
//! 5. drains replicas above `max`.
//!
//! Before that, clusters whose lease expired are marked Unreachable, and nodes with a
//! lease of their own (node-scoped reports) whose lease expired leave the inventory.

mod capacity;

use crate::command::Command;
use crate::gpu::GpuNeed;
use crate::placement::{MoveReason, Phase, Placement, Replica, ReplicaId};
use crate::state::State;
use crate::time::Timestamp;
use crate::workload::{Constraints, Workload};
use capacity::{Capacity, Exclusions};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Plans the commands that bring the registry closer to what its workloads want.
pub fn plan(state: &State, now: Timestamp) -> Vec<Command> {
    plan_with_lease_floor(state, now, Timestamp(0))
}

/// [`plan`] for a planner that could not hear from clusters before `heard_since`:
/// a leader that just took over, or one that was stalled or cut off. No cluster is
/// marked Unreachable, and no node expired, until one heartbeat interval has passed
/// since then ([`crate::Settings::lease_floor`]), so that agents whose reports
/// could not get through get a chance to report again (the grace a new etcd leader
/// gives leases). Leases that have not run out are judged as ever: the federation's
/// time, which the registry keeps from going back or leaping forward, carries over
/// from one leader to the next.
pub fn plan_with_lease_floor(
    state: &State,
    now: Timestamp,
    heard_since: Timestamp,
) -> Vec<Command> {
    let mut planner = Planner {
        s: state,
        now,
        leases_expire_from: heard_since + state.settings().lease_floor(),
        cmds: Vec::new(),
        closing: BTreeSet::new(),
        expiring: BTreeSet::new(),
        lost: HashSet::new(),
        ended: HashSet::new(),
        released: Vec::new(),
        preempted: HashSet::new(),
        capacity: None,
        victims: None,
        moves: state.migrations_in_flight(),
        queue: BTreeSet::new(),
        full_shapes: HashSet::new(),
        preemption_failed: HashMap::new(),
    };
    planner.run();
    planner.cmds
}

/// How much a preemption costs: victims, their highest priority, then where (for ties).
type VictimCost<'a> = (usize, i32, &'a str, &'a str);

/// Where to preempt (cluster, node) and whom (workload, replica).
type Victims<'a> = (&'a str, &'a str, Vec<(&'a str, ReplicaId)>);

struct Planner<'a> {
    s: &'a State,
    now: Timestamp,
    /// No lease counts as expired before this.
    leases_expire_from: Timestamp,
    cmds: Vec<Command>,
    /// Clusters this pass marks Unreachable: their replicas count as gone.
    closing: BTreeSet<&'a str>,
    /// Nodes (cluster, node) this pass expires: their devices count as gone.
    expiring: BTreeSet<(&'a str, &'a str)>,
    /// Replicas on those nodes: lost with them.
    lost: HashSet<ReplicaId>,
    /// Replicas this pass ends (timed out, rolled back).
    ended: HashSet<ReplicaId>,
    /// The same replicas, for their GPUs; all are known before the first placement.
    released: Vec<&'a Replica>,
    /// Replicas this pass preempts.
    preempted: HashSet<ReplicaId>,
    /// Built on first need, so a quiet pass costs next to nothing.
    capacity: Option<Capacity<'a>>,
    /// Replica → (workload, priority), built only when preemption is considered.
    victims: Option<HashMap<ReplicaId, (&'a str, i32)>>,
    /// Migrations in flight, counting those this pass starts.
    moves: usize,
    /// Workloads still to plan in this pass, highest priority first.
    queue: BTreeSet<(Reverse<i32>, &'a str)>,
    /// Shapes (GPU need and constraints) for which no cluster has room in this pass.
    full_shapes: HashSet<(&'a GpuNeed, &'a Constraints)>,
    /// The highest priority for which a preemption search found nothing, by shape.
    preemption_failed: HashMap<(&'a GpuNeed, &'a Constraints), i32>,
}

impl<'a> Planner<'a> {
    fn run(&mut self) {
        let s = self.s;
        let mut work: BTreeSet<&'a str> =
            s.needing_attention().iter().map(String::as_str).collect();
        for (name, c) in s.clusters() {
            if c.state != crate::ClusterState::Unreachable
                && self.now >= c.lease_expires_at
                && self.now >= self.leases_expire_from
            {
                self.cmds.push(Command::MarkUnreachable {
                    cluster: name.clone(),
                });
                self.closing.insert(name);
                if let Some(ws) = s.derived.cluster_workloads.get(name) {
                    work.extend(ws.iter().map(String::as_str));
                }
            }
        }
        if self.now >= self.leases_expire_from {
            for (cluster, node) in s.nodes_expiring_by(self.now) {
                self.cmds.push(Command::ExpireNode {
                    cluster: cluster.to_owned(),
                    node: node.to_owned(),
                });
                self.expiring.insert((cluster, node));
                for w in s
                    .derived
                    .cluster_workloads
                    .get(cluster)
                    .into_iter()
                    .flatten()
                {
                    let Some(p) = s.placement(w) else { continue };
                    let on_node = p.replicas.values().filter(|r| {
                        r.cluster == cluster && r.devices.iter().any(|at| at.node == node)
                    });
                    for r in on_node {
                        self.lost.insert(r.id);
                        work.insert(w.as_str());
                    }
                }
            }
        }
        let order: BTreeSet<(Reverse<i32>, &'a str)> = work
            .into_iter()
            .map(|name| (Reverse(self.priority(name)), name))
            .collect();
        // First everything that ends or advances, so that GPUs this pass frees are
        // known before anything is placed: the pass is then complete, and a second
        // one at the same time finds nothing left to do.
        for (_, name) in &order {
            if let Some(p) = s.placement(name) {
                self.end_overdue(name, p);
                self.progress_migrations(name, p);
            }
        }
        self.queue = order;
        while let Some((_, name)) = self.queue.pop_first() {
            self.plan_workload(name);
        }
    }

    fn priority(&self, workload: &str) -> i32 {
        self.s.workload(workload).map_or(i32::MIN, |w| w.priority)
    }

    fn capacity(&mut self) -> &mut Capacity<'a> {
        let built = match self.capacity.take() {
            Some(capacity) => capacity,
            None => self.build_capacity(),
        };
        self.capacity.insert(built)
    }

    /// The free GPUs as this pass sees them, with nodes held for workloads whose
    /// preemptions are still draining there (while they still need the GPUs).
    fn build_capacity(&self) -> Capacity<'a> {
        let s = self.s;
        let mut capacity = Capacity::new(s, &self.closing, &self.expiring, &self.released);
        for (id, pending) in &s.derived.preemptions {
            if self.closing.contains(pending.cluster.as_str())
                || self.lost.contains(id)
                || self.preempted.contains(id)
            {
                continue;
            }
            let Some(w) = s.workload(&pending.for_workload) else {
                continue;
            };
            let running = s.placement(&w.name).map_or(0, |p| {
                p.active_count().saturating_sub(p.migrations.len() as u32)
            });
            if running < w.replicas.min {
                capacity.hold(&pending.cluster, &pending.node, &w.name);
            }
        }
        capacity
    }

    /// Ends a replica in this pass: its GPUs count as free for what this pass places.
    fn end(&mut self, r: &'a Replica) {
        self.ended.insert(r.id);
        self.released.push(r);
        if let Some(capacity) = self.capacity.as_mut() {
            capacity.release(r);
        }
        self.full_shapes.clear();
    }

    /// In a move that this pass does not end.
    fn moving(&self, p: &Placement, id: ReplicaId) -> bool {
        p.migration_of(id).is_some_and(|m| {
            [m.source, m.target]
                .iter()
                .all(|id| p.replicas.get(id).is_some_and(|r| self.settled(r)))
        })
    }

    fn settled(&self, r: &Replica) -> bool {
        !self.vanishing(r) && !self.ended.contains(&r.id) && !self.preempted.contains(&r.id)
    }

    /// Lost in this pass with its cluster or its node.
    fn vanishing(&self, r: &Replica) -> bool {
        self.closing.contains(r.cluster.as_str()) || self.lost.contains(&r.id)
    }

    fn plan_workload(&mut self, name: &'a str) {
        let s = self.s;
        let Some(p) = s.placement(name) else {
            if let Some(w) = s.workload(name) {
                self.place_missing(w, None, BTreeSet::new(), w.replicas.max);
            }
            return;
        };
        let Some(w) = s.workload(name) else { return };
        if p.deleted {
            return;
        }
        let move_targets = self.move_replicas(w, p);
        let running: u32 = p
            .replicas
            .values()
            .filter(|r| r.is_active() && self.settled(r))
            .count() as u32;
        let pairs = p
            .migrations
            .iter()
            .filter(|m| {
                [m.source, m.target]
                    .iter()
                    .all(|id| p.replicas.get(id).is_some_and(|r| self.settled(r)))
            })
            .count() as u32;
        let effective = running - pairs;
        if effective < w.replicas.max {
            self.place_missing(w, Some(p), move_targets, w.replicas.max - effective);
        } else if effective > w.replicas.max {
            self.scale_down(name, p, effective - w.replicas.max);
        }
    }

    /// Drains past their deadline go; starts that never came up go.
    fn end_overdue(&mut self, name: &str, p: &'a Placement) {
        let settings = self.s.settings();
        for r in p.replicas.values() {
            if self.vanishing(r) {
                continue;
            }
            let overdue = match r.phase {
                Phase::Draining => r.drain_deadline.is_some_and(|d| self.now >= d),
                Phase::Starting => {
                    !self.moving(p, r.id)
                        && self.now.since(r.phase_since) >= settings.start_deadline
                }
                _ => false,
            };
            let evicted_start = r.phase == Phase::Starting && r.evicted && !self.moving(p, r.id);
            if overdue || evicted_start {
                self.cmds.push(Command::SetReplicaPhase {
                    workload: name.to_owned(),
                    replica: r.id,
                    phase: Phase::Gone,
                    endpoint: None,
                });
                self.end(r);
            }
        }
    }

    fn progress_migrations(&mut self, name: &str, p: &'a Placement) {
        let settings = self.s.settings();
        for m in &p.migrations {
            let (Some(source), Some(target)) =
                (p.replicas.get(&m.source), p.replicas.get(&m.target))
            else {
                continue;
            };
            if !self.settled(source) || !self.settled(target) {
                // Its cluster closes in this pass: the move ends with it.
                self.moves = self.moves.saturating_sub(1);
                continue;
            }
            match target.phase {
                Phase::Starting
                    if target.evicted
                        || self.now.since(m.started_at) >= settings.start_deadline =>
                {
                    self.cmds.push(Command::AbortMigration {
                        workload: name.to_owned(),
                        target: m.target,
                    });
                    self.end(target);
                    self.moves = self.moves.saturating_sub(1);
                }
                Phase::Ready if target.evicted => {
                    self.cmds.push(Command::AbortMigration {
                        workload: name.to_owned(),
                        target: m.target,
                    });
                    self.end(target);
                    self.moves = self.moves.saturating_sub(1);
                }
                Phase::Ready => {
                    let due = m
                        .last_step_at
                        .is_none_or(|t| self.now.since(t) >= settings.traffic_step_interval);
                    if !due {
                        continue;
                    }
                    if m.target_weight < 100 {
                        self.cmds.push(Command::ShiftTraffic {
                            workload: name.to_owned(),
                            target: m.target,
                            weight: (m.target_weight + settings.traffic_step_pct).min(100),
                        });
                    } else {
                        self.cmds.push(Command::DrainReplica {
                            workload: name.to_owned(),
                            replica: m.source,
                        });
                        // The move is over: the source drains, its GPUs held until it goes.
                        self.ended.insert(m.source);
                        self.moves = self.moves.saturating_sub(1);
                    }
                }
                _ => {}
            }
        }
    }

    /// Why a replica should move, if it should.
    fn move_reason(&self, w: &Workload, r: &Replica) -> Option<MoveReason> {
        let c = self.s.cluster(&r.cluster)?;
        let pinned_here = w.constraints.pinned.as_deref() == Some(r.cluster.as_str());
        if r.evicted && !pinned_here {
            return Some(MoveReason::Reclaimed);
        }
        if c.draining && !pinned_here {
            return Some(MoveReason::ClusterDrain);
        }
        if !w.allows(&r.cluster, c.region()) {
            return Some(MoveReason::Constraints);
        }
        let gain = w.best_preference().saturating_sub(w.preference(c.region()));
        if w.movable()
            && gain > self.s.settings().hysteresis
            && self.now.since(r.placed_at) >= w.mobility.min_dwell
        {
            return Some(MoveReason::Rebalance);
        }
        None
    }

    /// Starts the moves this workload needs; returns the clusters its targets go to.
    fn move_replicas(&mut self, w: &'a Workload, p: &'a Placement) -> BTreeSet<&'a str> {
        let mut targets = BTreeSet::new();
        let max_moves = self.s.settings().max_concurrent_moves as usize;
        let candidates: Vec<(&Replica, MoveReason)> = p
            .replicas
            .values()
            .filter(|r| r.phase == Phase::Ready && self.settled(r) && !self.moving(p, r.id))
            .filter_map(|r| self.move_reason(w, r).map(|why| (r, why)))
            .collect();
        for (r, why) in candidates {
            if self.moves >= max_moves {
                break;
            }
            let mut excluded = self.spread_exclusions(w, p, Some(r.id));
            if w.constraints.spread_across_clusters {
                excluded.extend(targets.iter().copied());
            }
            if matches!(
                why,
                MoveReason::Rebalance | MoveReason::ClusterDrain | MoveReason::Constraints
            ) {
                excluded.insert(r.cluster.as_str());
            }
            let region = self.s.cluster(&r.cluster).map_or("", |c| c.region());
            let ex = Exclusions {
                clusters: &excluded,
                min_preference: (why == MoveReason::Rebalance)
                    .then(|| w.preference(region) + self.s.settings().hysteresis),
            };
            let Some((i, devices)) = self.capacity().place(w, &ex) else {
                continue;
            };
            let cluster = self.capacity().slots[i].name;
            targets.insert(cluster);
            self.cmds.push(Command::StartReplica {
                workload: w.name.clone(),
                cluster: cluster.to_owned(),
                devices,
                replaces: Some((r.id, why)),
            });
            self.moves += 1;
        }
        targets
    }

    /// Clusters a new replica of `w` may not use because it spreads across clusters.
    fn spread_exclusions(
        &self,
        w: &Workload,
        p: &'a Placement,
        moving: Option<ReplicaId>,
    ) -> BTreeSet<&'a str> {
        if !w.constraints.spread_across_clusters {
            return BTreeSet::new();
        }
        p.replicas
            .values()
            .filter(|r| r.is_active() && self.settled(r) && Some(r.id) != moving)
            .map(|r| r.cluster.as_str())
            .collect()
    }

    fn place_missing(
        &mut self,
        w: &'a Workload,
        p: Option<&'a Placement>,
        moving_to: BTreeSet<&'a str>,
        missing: u32,
    ) {
        let mut excluded = p
            .map(|p| self.spread_exclusions(w, p, None))
            .unwrap_or_default();
        if w.constraints.spread_across_clusters {
            excluded.extend(moving_to);
        }
        let mut placed = 0;
        let shape = (&w.gpu, &w.constraints);
        while placed < missing && !self.full_shapes.contains(&shape) {
            let ex = Exclusions {
                clusters: &excluded,
                min_preference: None,
            };
            let Some((i, devices)) = self.capacity().place(w, &ex) else {
                if excluded.is_empty() {
                    // Nowhere fits this shape: the next workload of the same shape
                    // need not search (GPUs this pass frees reset this).
                    self.full_shapes.insert(shape);
                }
                break;
            };
            let cluster = self.capacity().slots[i].name;
            if w.constraints.spread_across_clusters {
                excluded.insert(cluster);
            }
            self.cmds.push(Command::StartReplica {
                workload: w.name.clone(),
                cluster: cluster.to_owned(),
                devices,
                replaces: None,
            });
            placed += 1;
        }
        let have = w.replicas.max - (missing - placed);
        if have < w.replicas.min && self.s.settings().preemption {
            self.preempt_for(w, w.replicas.min - have, &excluded);
        }
    }

    fn scale_down(&mut self, name: &str, p: &'a Placement, excess: u32) {
        // Starting replicas go first (nobody uses them yet), then the newest Ready ones.
        let mut candidates: Vec<&Replica> = p
            .replicas
            .values()
            .filter(|r| r.is_active() && self.settled(r) && !self.moving(p, r.id))
            .collect();
        candidates.sort_by_key(|r| (r.phase != Phase::Starting, Reverse(r.id)));
        for r in candidates.into_iter().take(excess as usize) {
            self.cmds.push(if r.phase == Phase::Starting {
                Command::SetReplicaPhase {
                    workload: name.to_owned(),
                    replica: r.id,
                    phase: Phase::Gone,
                    endpoint: None,
                }
            } else {
                Command::DrainReplica {
                    workload: name.to_owned(),
                    replica: r.id,
                }
            });
            if r.phase == Phase::Starting {
                self.end(r);
            } else {
                self.ended.insert(r.id);
            }
        }
    }

    /// Drains the fewest, lowest-priority replicas that free one node enough GPUs for
    /// a replica of `w`; repeats for `needed` replicas. Waits while earlier victims drain.
    fn preempt_for(&mut self, w: &'a Workload, needed: u32, excluded: &BTreeSet<&'a str>) {
        let s = self.s;
        let draining_for_w = s.derived.preemptions.iter().any(|(id, pending)| {
            pending.for_workload == w.name
                && !self.ended.contains(id)
                && !self.lost.contains(id)
                && !self.closing.contains(pending.cluster.as_str())
        });
        if draining_for_w {
            return;
        }
        if self.victims.is_none() {
            let mut map = HashMap::new();
            for (name, p) in s.placements() {
                let priority = s.workload(name).map_or(i32::MIN, |w| w.priority);
                for r in p.replicas.values() {
                    if r.is_active() && !self.moving(p, r.id) {
                        map.insert(r.id, (name.as_str(), priority));
                    }
                }
            }
            self.victims = Some(map);
        }
        // A search that failed for this shape at this priority or above fails again:
        // a lower priority has fewer victims. Remembering that keeps a crowded
        // federation with many waiting workloads from searching once per workload.
        let shape = (&w.gpu, &w.constraints);
        if self
            .preemption_failed
            .get(&shape)
            .is_some_and(|p| w.priority <= *p)
        {
            return;
        }
        let mut excluded = excluded.clone();
        for _ in 0..needed {
            let Some((cluster, node, victims)) = self.cheapest_victims(w, &excluded) else {
                if excluded.is_empty() {
                    let failed = self.preemption_failed.entry(shape).or_insert(w.priority);
                    *failed = (*failed).max(w.priority);
                }
                return;
            };
            // Hold the node's free GPUs too, so that nothing else takes them while
            // the victims drain.
            self.capacity().hold(cluster, node, &w.name);
            for (workload, id) in &victims {
                self.cmds.push(Command::PreemptReplica {
                    workload: (*workload).to_owned(),
                    replica: *id,
                    for_workload: w.name.clone(),
                });
                self.preempted.insert(*id);
                // The victim has a lower priority, so it comes later in this pass and
                // can be replaced elsewhere at once.
                self.queue
                    .insert((Reverse(self.priority(workload)), workload));
            }
            if w.constraints.spread_across_clusters {
                excluded.insert(cluster);
            }
        }
    }

    fn cheapest_victims(
        &mut self,
        w: &'a Workload,
        excluded: &BTreeSet<&'a str>,
    ) -> Option<Victims<'a>> {
        self.capacity();
        let (Some(victims), Some(capacity)) = (self.victims.as_ref(), self.capacity.as_ref())
        else {
            return None;
        };
        // (victim count, highest victim priority, cluster, node) → victims
        let mut best: Option<(VictimCost<'a>, Vec<(&'a str, ReplicaId)>)> = None;
        for (i, slot) in capacity.slots.iter().enumerate() {
            if !slot.open || excluded.contains(slot.name) || !w.allows(slot.name, slot.region) {
                continue;
            }
            for (node, n) in &slot.cluster.inventory.nodes {
                if slot.node_gone(node) {
                    continue;
                }
                let mut free = 0usize;
                let mut holders: HashMap<ReplicaId, (usize, i32, &'a str)> = HashMap::new();
                for (uuid, d) in &n.devices {
                    if capacity.unavailable_to(i, uuid, &w.name)
                        || !d.report.healthy
                        || d.report.claimed_by_other
                    {
                        continue;
                    }
                    if !w
                        .gpu
                        .accepts_shape(&d.report.model, d.report.mig_profile.as_deref())
                        || d.report.memory_total_mib < w.gpu.min_memory_mib
                    {
                        continue;
                    }
                    match d.allocated_to {
                        None => free += 1,
                        // Ended by this pass: free by the time this replica starts.
                        Some(id) if self.ended.contains(&id) => free += 1,
                        Some(id) if !self.preempted.contains(&id) && !self.ended.contains(&id) => {
                            if let Some(&(workload, priority)) = victims.get(&id)
                                && priority < w.priority
                            {
                                holders.entry(id).or_insert((0, priority, workload)).0 += 1;
                            }
                        }
                        Some(_) => {}
                    }
                }
                let need = w.gpu.count as usize;
                if free + holders.values().map(|h| h.0).sum::<usize>() < need || free >= need {
                    continue;
                }
                let mut ranked: Vec<(i32, Reverse<usize>, ReplicaId, &'a str)> = holders
                    .iter()
                    .map(|(id, (n, prio, wl))| (*prio, Reverse(*n), *id, *wl))
                    .collect();
                ranked.sort();
                let mut chosen = Vec::new();
                let mut got = free;
                let mut top = i32::MIN;
                for (prio, Reverse(n), id, wl) in ranked {
                    if got >= need {
                        break;
                    }
                    got += n;
                    top = top.max(prio);
                    chosen.push((wl, id));
                }
                let key = (chosen.len(), top, slot.name, node.as_str());
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, chosen));
                }
            }
        }
        best.map(|((_, _, cluster, node), v)| (cluster, node, v))
    }
}
