//! The discrete-event loop: one run of one policy over one scenario.
//!
//! The registry is a real [`flotilla_core::State`], changed only by
//! [`flotilla_core::apply`]; decisions come only from [`flotilla_core::plan`]. This
//! module plays the parts around them: the clock, the clusters' agents (capacity
//! reports, heartbeats), the materializers (replicas start, become Ready after the
//! model's start-up time, report Gone once drained) and the gateways (requests
//! routed by the route table, queued and served by replicas).

use crate::duration::{MICROS_PER_SEC, Micros};
use crate::load::{Generator, Request, derive_seed, unit};
use crate::metrics::{FailReason, Metrics, RunResult};
use crate::scenario::{EventKind, Perf, PolicyDef, PolicyKind, Scenario};
use flotilla_core::{
    Command, DeviceRef, DeviceReport, Entry, Event, LossCause, NodeReport, Phase, ReplicaId, State,
    Timestamp, apply, plan,
};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};

#[derive(Debug)]
enum EvKind {
    Arrival { load: usize, request: Request },
    Complete { replica: u64, request: u64 },
    Ready { replica: u64 },
    DrainCheck { replica: u64 },
    Tick,
    Heartbeat,
    Sample,
    Capacity { index: usize },
    GraceEnd { cluster: usize, devices: Vec<usize> },
}

impl EvKind {
    /// The order of events at the same instant: the world changes first (capacity,
    /// replicas coming up, requests finishing), then requests arrive, then agents and
    /// the scheduler act, and a sample at `t` closes the interval `(t - Δ, t]`.
    fn class(&self) -> u8 {
        match self {
            EvKind::Capacity { .. } | EvKind::GraceEnd { .. } => 0,
            EvKind::Ready { .. } => 1,
            EvKind::Complete { .. } => 2,
            EvKind::DrainCheck { .. } => 3,
            EvKind::Arrival { .. } => 4,
            EvKind::Heartbeat => 5,
            EvKind::Tick => 6,
            EvKind::Sample => 7,
        }
    }
}

#[derive(Debug)]
struct Ev {
    at: Micros,
    class: u8,
    seq: u64,
    kind: EvKind,
}

impl PartialEq for Ev {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.class, self.seq) == (other.at, other.class, other.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ev {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.class, self.seq).cmp(&(other.at, other.class, other.seq))
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    request: Request,
    rtt: Micros,
    ttft: Micros,
    done: Micros,
}

#[derive(Debug)]
struct SimReplica {
    workload: usize,
    model: u32,
    cluster: u32,
    gpus: u32,
    perf: Perf,
    ready: bool,
    draining: bool,
    /// This replica's share weight (0–100) from its migration, as core derives routes.
    weight: u32,
    in_flight: Vec<InFlight>,
    queue: VecDeque<(Request, Micros)>,
}

impl SimReplica {
    fn load(&self) -> usize {
        self.in_flight.len() + self.queue.len()
    }
    fn busy_share(&self) -> f64 {
        f64::from(self.gpus) / f64::from(self.perf.max_batch)
    }
}

#[derive(Debug, Clone)]
struct SimDevice {
    node: String,
    uuid: String,
    model: String,
    memory_mib: u64,
    present: bool,
    healthy: bool,
    claimed: bool,
}

#[derive(Debug)]
struct SimCluster {
    name: String,
    region: usize,
    alive: bool,
    devices: Vec<SimDevice>,
    added_nodes: u32,
}

#[derive(Debug, Clone, Copy)]
struct Endpoint {
    cluster: u32,
    region: u32,
    weight: u32,
    ready: u32,
}

/// Runs one policy over a scenario; `progress` hears the simulated time now and then.
pub(crate) fn run_policy(
    sc: &Scenario,
    policy: &PolicyDef,
    progress: &mut dyn FnMut(Micros),
) -> RunResult {
    let mut e = Engine::new(sc, policy);
    e.start();
    e.run(progress);
    e.finish()
}

struct Engine<'s> {
    sc: &'s Scenario,
    policy: &'s PolicyDef,
    state: State,
    now: Micros,
    seq: u64,
    heap: BinaryHeap<Reverse<Ev>>,
    replicas: HashMap<u64, SimReplica>,
    /// Ready replicas taking traffic, by (model, cluster), sorted by id.
    ready: HashMap<(u32, u32), Vec<u64>>,
    clusters: Vec<SimCluster>,
    cluster_index: HashMap<String, usize>,
    workload_index: HashMap<String, usize>,
    model_index: HashMap<String, u32>,
    routes: Vec<Option<Vec<Endpoint>>>,
    generators: Vec<Generator>,
    rng: Xoshiro256PlusPlus,
    /// Failover-only: replicas lost to a cluster loss and not yet replaced, by workload.
    credits: Vec<u32>,
    /// Replicas that died with their cluster before core knew: (workload, id, cluster).
    zombies: Vec<(usize, u64, usize)>,
    /// SLO per model in µs: (ttft, e2e; 0 = none).
    slo: Vec<Option<(Micros, Micros)>>,
    busy: f64,
    allocated: u64,
    outstanding: u64,
    next_request: u64,
    initial_done: bool,
    m: Metrics,
}

impl<'s> Engine<'s> {
    fn new(sc: &'s Scenario, policy: &'s PolicyDef) -> Self {
        let clusters: Vec<SimCluster> = sc
            .clusters
            .iter()
            .map(|c| SimCluster {
                name: c.spec.name.clone(),
                region: c.region,
                alive: true,
                devices: c
                    .devices
                    .iter()
                    .map(|d| SimDevice {
                        node: d.node.clone(),
                        uuid: d.uuid.clone(),
                        model: d.model.clone(),
                        memory_mib: d.memory_mib,
                        present: true,
                        healthy: true,
                        claimed: false,
                    })
                    .collect(),
                added_nodes: 0,
            })
            .collect();
        let slo = (0..sc.models.len())
            .map(|m| {
                sc.workloads
                    .iter()
                    .filter(|w| w.model == m)
                    .find_map(|w| w.workload.slo)
                    .map(|s| (s.ttft.0 * 1000, s.e2e.0 * 1000))
            })
            .collect();
        Engine {
            sc,
            policy,
            state: State::with_settings(policy.settings.clone()),
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            replicas: HashMap::new(),
            ready: HashMap::new(),
            cluster_index: clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            clusters,
            workload_index: sc
                .workloads
                .iter()
                .enumerate()
                .map(|(i, w)| (w.workload.name.clone(), i))
                .collect(),
            model_index: sc
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id.clone(), i as u32))
                .collect(),
            routes: vec![None; sc.models.len()],
            generators: sc
                .loads
                .iter()
                .enumerate()
                .map(|(i, l)| Generator::new(sc.seed, i as u64 + 1, l))
                .collect(),
            rng: Xoshiro256PlusPlus::seed_from_u64(derive_seed(sc.seed, 0)),
            credits: vec![0; sc.workloads.len()],
            zombies: Vec::new(),
            slo,
            busy: 0.0,
            allocated: 0,
            outstanding: 0,
            next_request: 0,
            initial_done: false,
            m: Metrics::new(sc, policy),
        }
    }

    fn push(&mut self, at: Micros, kind: EvKind) {
        self.seq += 1;
        self.heap.push(Reverse(Ev {
            at,
            class: kind.class(),
            seq: self.seq,
            kind,
        }));
    }

    /// Applies one command stamped with the current time, and plays its events.
    fn submit(&mut self, command: Command) -> bool {
        let entry = Entry::new(Timestamp(self.now / 1000), command);
        match apply(&mut self.state, &entry) {
            Ok(events) => {
                if let Command::StartReplica { replaces, .. } = &entry.command
                    && self.initial_done
                {
                    if replaces.is_some() {
                        self.m.moves += 1;
                    } else {
                        self.m.replacements += 1;
                    }
                }
                self.m.commands_applied += 1;
                self.on_events(events);
                true
            }
            Err(_) => {
                self.m.commands_rejected += 1;
                false
            }
        }
    }

    fn start(&mut self) {
        let sc = self.sc;
        for c in &sc.clusters {
            self.submit(Command::RegisterCluster {
                spec: c.spec.clone(),
            });
        }
        for i in 0..self.clusters.len() {
            self.report(i);
        }
        for w in &sc.workloads {
            self.submit(Command::ApplyWorkload {
                workload: w.workload.clone(),
            });
        }
        // Initial placement: one full pass of the real scheduler, for every policy.
        for command in plan(&self.state, Timestamp(0)) {
            self.submit(command);
        }
        self.initial_done = true;
        self.push(sc.heartbeat_interval, EvKind::Heartbeat);
        if self.policy.kind != PolicyKind::Static {
            self.push(self.policy.tick, EvKind::Tick);
        }
        self.push(sc.sample_interval, EvKind::Sample);
        for (index, e) in sc.events.iter().enumerate() {
            self.push(e.at, EvKind::Capacity { index });
        }
        for load in 0..self.generators.len() {
            self.next_arrival(load);
        }
    }

    fn next_arrival(&mut self, load: usize) {
        if let Some(mut request) = self.generators[load].next(&self.sc.loads[load]) {
            request.id = self.next_request;
            self.next_request += 1;
            self.push(request.at, EvKind::Arrival { load, request });
        }
    }

    fn advance(&mut self, to: Micros) {
        let dt = to.saturating_sub(self.now) as f64;
        self.m.busy_integral += self.busy * dt;
        self.m.allocated_integral += self.allocated as f64 * dt;
        self.now = to.max(self.now);
    }

    fn run(&mut self, progress: &mut dyn FnMut(Micros)) {
        let hard_end = self.sc.duration + self.sc.request_timeout + 3600 * MICROS_PER_SEC;
        while let Some(Reverse(ev)) = self.heap.pop() {
            if ev.at > hard_end {
                break;
            }
            self.advance(ev.at);
            let periodic_goes_on = self.now < self.sc.duration || self.outstanding > 0;
            match ev.kind {
                EvKind::Arrival { load, request } => {
                    self.arrive(request);
                    self.next_arrival(load);
                }
                EvKind::Complete { replica, request } => self.complete(replica, request),
                EvKind::Ready { replica } => {
                    if let Some(r) = self.replicas.get(&replica) {
                        let workload = self.sc.workloads[r.workload].workload.name.clone();
                        self.submit(Command::SetReplicaPhase {
                            workload,
                            replica: ReplicaId(replica),
                            phase: Phase::Ready,
                            endpoint: None,
                        });
                    }
                }
                EvKind::DrainCheck { replica } => self.drain_check(replica),
                EvKind::Tick => {
                    self.tick();
                    if periodic_goes_on {
                        self.push(self.now + self.policy.tick, EvKind::Tick);
                    }
                }
                EvKind::Heartbeat => {
                    for i in 0..self.clusters.len() {
                        if self.clusters[i].alive {
                            let cluster = self.clusters[i].name.clone();
                            self.submit(Command::Heartbeat { cluster });
                        }
                    }
                    if periodic_goes_on {
                        self.push(self.now + self.sc.heartbeat_interval, EvKind::Heartbeat);
                    }
                }
                EvKind::Sample => {
                    self.sample();
                    progress(self.now);
                    if periodic_goes_on {
                        self.push(self.now + self.sc.sample_interval, EvKind::Sample);
                    }
                }
                EvKind::Capacity { index } => self.capacity_event(index),
                EvKind::GraceEnd { cluster, devices } => {
                    for d in devices {
                        let dev = &mut self.clusters[cluster].devices[d];
                        if dev.claimed {
                            dev.present = false;
                            dev.claimed = false;
                        }
                    }
                    self.report(cluster);
                }
            }
        }
        // Whatever is still queued or running when time runs out never finished.
        let ids: Vec<u64> = {
            let mut v: Vec<u64> = self.replicas.keys().copied().collect();
            v.sort_unstable();
            v
        };
        for id in ids {
            self.kill(id, FailReason::Unfinished);
        }
        self.sample();
    }

    fn finish(self) -> RunResult {
        self.m.finish(self.sc)
    }

    // ----- the scheduler, as each policy drives it -------------------------------------

    fn tick(&mut self) {
        let now = Timestamp(self.now / 1000);
        let commands = plan(&self.state, now);
        for command in commands {
            let keep = match self.policy.kind {
                PolicyKind::Static => false,
                PolicyKind::Flotilla => true,
                PolicyKind::FailoverOnly => match &command {
                    Command::MarkUnreachable { .. } => true,
                    Command::SetReplicaPhase {
                        phase: Phase::Gone, ..
                    } => true,
                    Command::StartReplica {
                        workload,
                        replaces: None,
                        ..
                    } => {
                        let w = self.workload_index.get(workload).copied();
                        match w {
                            Some(w) if self.credits[w] > 0 => {
                                self.credits[w] -= 1;
                                true
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                },
            };
            if keep {
                let refund = match &command {
                    Command::StartReplica { workload, .. }
                        if self.policy.kind == PolicyKind::FailoverOnly =>
                    {
                        self.workload_index.get(workload).copied()
                    }
                    _ => None,
                };
                if !self.submit(command)
                    && let Some(w) = refund
                {
                    self.credits[w] += 1;
                }
            } else {
                self.m.commands_withheld += 1;
            }
        }
    }

    // ----- core's events, played by the materializers and gateways ---------------------

    fn on_events(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::ReplicaStarted {
                    workload,
                    replica,
                    cluster,
                } => self.replica_started(&workload, replica, &cluster),
                Event::ReplicaPhaseChanged {
                    workload,
                    replica,
                    phase,
                    ..
                } => match phase {
                    Phase::Ready => {
                        if let Some(r) = self.replicas.get_mut(&replica.0) {
                            r.ready = true;
                            let key = (r.model, r.cluster);
                            let v = self.ready.entry(key).or_default();
                            if let Err(pos) = v.binary_search(&replica.0) {
                                v.insert(pos, replica.0);
                            }
                        }
                        self.refresh_weights(&workload);
                    }
                    Phase::Draining => {
                        if let Some(r) = self.replicas.get_mut(&replica.0) {
                            r.draining = true;
                            r.ready = false;
                            let key = (r.model, r.cluster);
                            if let Some(v) = self.ready.get_mut(&key) {
                                v.retain(|x| *x != replica.0);
                            }
                            self.push(self.now, EvKind::DrainCheck { replica: replica.0 });
                        }
                    }
                    Phase::Gone => {
                        self.kill(replica.0, FailReason::DrainDeadline);
                    }
                    Phase::Starting => {}
                },
                Event::ReplicaLost {
                    workload,
                    replica,
                    cause,
                    ..
                } => {
                    if self.kill(replica.0, FailReason::ReplicaLost) {
                        self.m.replicas_lost += 1;
                    }
                    if cause == LossCause::ClusterUnreachable
                        && let Some(&w) = self.workload_index.get(&workload)
                    {
                        self.credits[w] += 1;
                    }
                }
                Event::MigrationStarted { workload, .. }
                | Event::TrafficShifted { workload, .. }
                | Event::MigrationFinished { workload, .. } => self.refresh_weights(&workload),
                Event::RouteChanged { model, .. } => {
                    if let Some(&m) = self.model_index.get(&model) {
                        self.routes[m as usize] = None;
                    }
                }
                _ => {}
            }
        }
    }

    fn replica_started(&mut self, workload: &str, id: ReplicaId, cluster: &str) {
        let Some(&w) = self.workload_index.get(workload) else {
            return;
        };
        let Some(&c) = self.cluster_index.get(cluster) else {
            return;
        };
        let Some(r) = self
            .state
            .placement(workload)
            .and_then(|p| p.replicas.get(&id))
        else {
            return;
        };
        let gpu_model = self
            .state
            .cluster(cluster)
            .and_then(|cl| r.devices.first().and_then(|d| cl.inventory.device(d)))
            .map(|d| d.report.model.clone())
            .unwrap_or_default();
        let def = &self.sc.workloads[w];
        let model = &self.sc.models[def.model];
        // Validation saw to it that every GPU model a workload may use has perf.
        let Some(perf) = model.perf.get(&gpu_model).copied() else {
            return;
        };
        let gpus = def.workload.gpu.count;
        self.replicas.insert(
            id.0,
            SimReplica {
                workload: w,
                model: def.model as u32,
                cluster: c as u32,
                gpus,
                perf,
                ready: false,
                draining: false,
                weight: 100,
                in_flight: Vec::new(),
                queue: VecDeque::new(),
            },
        );
        self.allocated += u64::from(gpus);
        self.push(self.now + model.startup, EvKind::Ready { replica: id.0 });
    }

    /// Copies each replica's migration weight from core, as `derive_route` computes it.
    fn refresh_weights(&mut self, workload: &str) {
        let Some(p) = self.state.placement(workload) else {
            return;
        };
        for r in p.replicas.values() {
            let weight = match p.migration_of(r.id) {
                Some(m) if m.source == r.id => 100 - m.target_weight,
                Some(m) => m.target_weight,
                None => 100,
            };
            if let Some(s) = self.replicas.get_mut(&r.id.0) {
                s.weight = weight;
            }
        }
    }

    /// Takes a replica out of the simulation; its requests fail with `reason`.
    fn kill(&mut self, id: u64, reason: FailReason) -> bool {
        let Some(r) = self.replicas.remove(&id) else {
            return false;
        };
        if let Some(v) = self.ready.get_mut(&(r.model, r.cluster)) {
            v.retain(|x| *x != id);
        }
        self.busy -= r.busy_share() * r.in_flight.len() as f64;
        self.allocated -= u64::from(r.gpus);
        for f in &r.in_flight {
            self.fail(f.request, reason);
        }
        for (q, _) in &r.queue {
            self.fail(*q, reason);
        }
        true
    }

    fn drain_check(&mut self, id: u64) {
        let Some(r) = self.replicas.get(&id) else {
            return;
        };
        if r.draining && r.load() == 0 {
            let workload = self.sc.workloads[r.workload].workload.name.clone();
            self.submit(Command::SetReplicaPhase {
                workload,
                replica: ReplicaId(id),
                phase: Phase::Gone,
                endpoint: None,
            });
        }
    }

    // ----- requests ------------------------------------------------------------------

    fn fail(&mut self, request: Request, reason: FailReason) {
        self.outstanding -= 1;
        self.m.failed(&request, reason);
    }

    fn arrive(&mut self, request: Request) {
        self.outstanding += 1;
        self.m.arrived(&request);
        match self.route(&request) {
            None => self.fail(request, FailReason::NoRoute),
            Some((id, rtt)) => {
                let (cluster, can_start) = match self.replicas.get_mut(&id) {
                    Some(r) => (r.cluster, r.in_flight.len() < r.perf.max_batch as usize),
                    None => return,
                };
                self.m.routed(cluster as usize);
                if can_start {
                    self.begin(id, request, rtt);
                } else if let Some(r) = self.replicas.get_mut(&id) {
                    r.queue.push_back((request, rtt));
                }
            }
        }
    }

    fn begin(&mut self, id: u64, request: Request, rtt: Micros) {
        let now = self.now;
        let Some(r) = self.replicas.get_mut(&id) else {
            return;
        };
        let prefill = (f64::from(request.prompt) / r.perf.prefill_tps * 1e6).round() as Micros;
        let decode = (f64::from(request.output) / r.perf.decode_tps * 1e6).round() as Micros;
        let done = now + prefill + decode;
        r.in_flight.push(InFlight {
            request,
            rtt,
            ttft: now - request.at + prefill + rtt,
            done,
        });
        self.busy += r.busy_share();
        self.push(
            done,
            EvKind::Complete {
                replica: id,
                request: request.id,
            },
        );
    }

    fn complete(&mut self, id: u64, request: u64) {
        let now = self.now;
        let timeout = self.sc.request_timeout;
        let Some(r) = self.replicas.get_mut(&id) else {
            return;
        };
        let Some(pos) = r.in_flight.iter().position(|f| f.request.id == request) else {
            return;
        };
        let f = r.in_flight.swap_remove(pos);
        self.busy -= r.busy_share();
        // Fill the slot from the queue, failing requests that waited too long.
        let mut next = None;
        let mut expired = Vec::new();
        while let Some((q, rtt)) = r.queue.pop_front() {
            if now - q.at > timeout {
                expired.push(q);
            } else {
                next = Some((q, rtt));
                break;
            }
        }
        let draining_idle = r.draining && r.load() == 0 && next.is_none();
        let e2e = f.done - f.request.at + f.rtt;
        self.outstanding -= 1;
        let slo_met = self.slo[f.request.model as usize]
            .is_none_or(|(ttft, e)| f.ttft <= ttft && (e == 0 || e2e <= e));
        self.m.completed(&f.request, f.ttft, e2e, slo_met);
        for q in expired {
            self.fail(q, FailReason::Timeout);
        }
        if let Some((q, rtt)) = next {
            self.begin(id, q, rtt);
        }
        if draining_idle {
            self.drain_check(id);
        }
    }

    fn route_endpoints(&mut self, model: u32) -> &[Endpoint] {
        let m = model as usize;
        if self.routes[m].is_none() {
            let id = &self.sc.models[m].id;
            let mut eps = Vec::new();
            if let Some(route) = self.state.routes().get(id) {
                for e in &route.endpoints {
                    let Some(&c) = self.cluster_index.get(&e.cluster) else {
                        continue;
                    };
                    // The gateways' own health checks stop sending to a dead cluster
                    // before its lease runs out.
                    if e.weight == 0 || !self.clusters[c].alive {
                        continue;
                    }
                    eps.push(Endpoint {
                        cluster: c as u32,
                        region: self.clusters[c].region as u32,
                        weight: e.weight,
                        ready: e.ready_replicas,
                    });
                }
            }
            self.routes[m] = Some(eps);
        }
        self.routes[m].as_deref().unwrap_or(&[])
    }

    /// The gateway: local region first, in proportion to the local endpoints' weight
    /// (a migrating local replica keeps only its share), the rest by route weight
    /// elsewhere, plus the WAN round trip. Within a cluster, the least-loaded replica.
    fn route(&mut self, request: &Request) -> Option<(u64, Micros)> {
        let origin = request.origin;
        let (local_w, local_full, remote_w) = {
            let eps = self.route_endpoints(request.model);
            if eps.is_empty() {
                return None;
            }
            let mut t = (0u64, 0u64, 0u64);
            for e in eps {
                if e.region == origin {
                    t.0 += u64::from(e.weight);
                    t.1 += 100 * u64::from(e.ready.max(1));
                } else {
                    t.2 += u64::from(e.weight);
                }
            }
            t
        };
        let local = if local_w == 0 {
            false
        } else if remote_w == 0 {
            true
        } else {
            unit(&mut self.rng) * (local_full as f64) < (local_w as f64)
        };
        let total = if local { local_w } else { remote_w };
        let mut x = unit(&mut self.rng) * total as f64;
        let eps = self.route_endpoints(request.model);
        let mut chosen = None;
        for e in eps.iter().filter(|e| (e.region == origin) == local) {
            chosen = Some(*e);
            if x < f64::from(e.weight) {
                break;
            }
            x -= f64::from(e.weight);
        }
        let e = chosen?;
        let ids = self.ready.get(&(request.model, e.cluster))?;
        let best = ids
            .iter()
            .filter_map(|id| self.replicas.get(id).map(|r| (id, r)))
            .filter(|(_, r)| r.weight > 0 && r.ready)
            .min_by_key(|(id, r)| (r.load(), **id))
            .map(|(id, _)| *id)?;
        Some((best, self.sc.rtt[origin as usize][e.region as usize]))
    }

    // ----- the clusters' agents --------------------------------------------------------

    fn report(&mut self, i: usize) {
        let c = &self.clusters[i];
        if !c.alive {
            return;
        }
        let mut nodes: Vec<NodeReport> = Vec::new();
        for d in c.devices.iter().filter(|d| d.present) {
            let report = DeviceReport {
                uuid: d.uuid.clone(),
                model: d.model.clone(),
                memory_total_mib: d.memory_mib,
                memory_used_mib: 0,
                utilization_pct: 0,
                mig_profile: None,
                healthy: d.healthy,
                claimed_by_other: d.claimed,
            };
            match nodes.last_mut() {
                Some(n) if n.name == d.node => n.devices.push(report),
                _ => nodes.push(NodeReport {
                    name: d.node.clone(),
                    devices: vec![report],
                }),
            }
        }
        let cluster = c.name.clone();
        self.submit(Command::ReportCapacity { cluster, nodes });
    }

    /// Devices of cluster `i` matching `pick`, those in use by a replica first.
    fn choose_devices(
        &self,
        i: usize,
        count: Option<u32>,
        gpu_model: Option<&str>,
        pick: impl Fn(&SimDevice) -> bool,
    ) -> Vec<usize> {
        let c = &self.clusters[i];
        let core = self.state.cluster(&c.name);
        let mut candidates: Vec<(bool, usize)> = c
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| pick(d) && gpu_model.is_none_or(|m| m == d.model))
            .map(|(k, d)| {
                let at = DeviceRef {
                    node: d.node.clone(),
                    uuid: d.uuid.clone(),
                };
                let in_use = core
                    .and_then(|cl| cl.inventory.device(&at))
                    .is_some_and(|x| x.allocated_to.is_some());
                (!in_use, k)
            })
            .collect();
        candidates.sort();
        let n = count.map_or(candidates.len(), |n| n as usize);
        candidates.into_iter().take(n).map(|(_, k)| k).collect()
    }

    fn capacity_event(&mut self, index: usize) {
        let e = &self.sc.events[index];
        let (i, count, model) = (e.cluster, e.gpus, e.gpu_model.as_deref());
        self.m
            .note_event(self.now, &self.clusters[i].name, e.kind.as_str(), e.gpus);
        match e.kind {
            EventKind::SpotPreemption | EventKind::Reclaim => {
                let chosen =
                    self.choose_devices(i, count, model, |d| d.present && d.healthy && !d.claimed);
                for &k in &chosen {
                    self.clusters[i].devices[k].claimed = true;
                }
                self.report(i);
                self.push(
                    self.now + e.grace,
                    EvKind::GraceEnd {
                        cluster: i,
                        devices: chosen,
                    },
                );
            }
            EventKind::Return => {
                let chosen = self.choose_devices(i, count, model, |d| !d.present || d.claimed);
                for k in chosen {
                    let d = &mut self.clusters[i].devices[k];
                    d.present = true;
                    d.claimed = false;
                }
                self.report(i);
            }
            EventKind::Fail => {
                let chosen = self.choose_devices(i, count, model, |d| d.present && d.healthy);
                for k in chosen {
                    self.clusters[i].devices[k].healthy = false;
                }
                self.report(i);
            }
            EventKind::Repair => {
                let chosen = self.choose_devices(i, count, model, |d| !d.healthy);
                for k in chosen {
                    self.clusters[i].devices[k].healthy = true;
                }
                self.report(i);
            }
            EventKind::Add => {
                let def = &self.sc.clusters[i];
                let gpu_model = model.unwrap_or_default().to_owned();
                let c = &mut self.clusters[i];
                for k in 0..count.unwrap_or(0) {
                    if k % def.gpus_per_node == 0 {
                        c.added_nodes += 1;
                    }
                    let node = format!("{}-x{}", c.name, c.added_nodes);
                    c.devices.push(SimDevice {
                        uuid: format!("{node}-g{}", k % def.gpus_per_node),
                        node,
                        model: gpu_model.clone(),
                        memory_mib: def.gpu_memory_mib,
                        present: true,
                        healthy: true,
                        claimed: false,
                    });
                }
                self.report(i);
            }
            EventKind::ClusterLost => {
                self.clusters[i].alive = false;
                let mut dead: Vec<u64> = self
                    .replicas
                    .iter()
                    .filter(|(_, r)| r.cluster as usize == i)
                    .map(|(id, _)| *id)
                    .collect();
                dead.sort_unstable();
                for id in dead {
                    if let Some(r) = self.replicas.get(&id) {
                        self.zombies.push((r.workload, id, i));
                    }
                    if self.kill(id, FailReason::ReplicaLost) {
                        self.m.replicas_lost += 1;
                    }
                }
                self.routes.iter_mut().for_each(|r| *r = None);
            }
            EventKind::ClusterRecovered => {
                self.clusters[i].alive = true;
                self.routes.iter_mut().for_each(|r| *r = None);
                self.report(i);
                // The materializer finds the replicas that died with the cluster and
                // reports them gone, if core still counts them.
                let zombies: Vec<(usize, u64, usize)> =
                    self.zombies.iter().copied().filter(|z| z.2 == i).collect();
                self.zombies.retain(|z| z.2 != i);
                for (w, id, _) in zombies {
                    let workload = self.sc.workloads[w].workload.name.clone();
                    let known = self
                        .state
                        .placement(&workload)
                        .is_some_and(|p| p.replicas.contains_key(&ReplicaId(id)));
                    if known {
                        self.submit(Command::SetReplicaPhase {
                            workload,
                            replica: ReplicaId(id),
                            phase: Phase::Gone,
                            endpoint: None,
                        });
                    }
                }
            }
        }
    }

    fn sample(&mut self) {
        let ready = self.replicas.values().filter(|r| r.ready).count() as u32;
        self.m.sample(self.now, self.allocated, ready);
    }
}
