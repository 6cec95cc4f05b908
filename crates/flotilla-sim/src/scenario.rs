//! Scenario files: the TOML format (documented in `simulations/README.md`), its
//! validation, and the checked [`Scenario`] the engine runs.
//!
//! Parsing happens in two steps. Serde reads the raw structure (unknown fields and
//! wrong types are errors with the line and column), then [`Scenario::from_raw`]
//! checks the meaning and names the offending field (`workloads[1].gpu_models[0]`).

use crate::duration::{Dur, MICROS_PER_SEC, Micros};
use crate::error::SimError;
use crate::trace::{TraceRequest, read_trace};
use flotilla_core::{
    ClusterSpec, Constraints, GpuNeed, Mobility, PlacementPolicy, RegionPreference, Replicas,
    Settings, Slo, Workload,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------------------------
// The raw format, as serde reads it.
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    seed: u64,
    duration: Dur,
    sample_interval: Option<Dur>,
    request_timeout: Option<Dur>,
    #[serde(default)]
    scheduler: RawScheduler,
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    network: RawNetwork,
    clusters: Vec<RawCluster>,
    models: Vec<RawModel>,
    workloads: Vec<RawWorkload>,
    load: Vec<RawLoad>,
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    tick: Option<Dur>,
    heartbeat_interval: Option<Dur>,
}

/// Overrides of core [`Settings`]; absent fields keep core's defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    placement_policy: Option<PlacementPolicy>,
    hysteresis: Option<u32>,
    traffic_step_pct: Option<u32>,
    traffic_step_interval: Option<Dur>,
    start_deadline: Option<Dur>,
    drain_deadline: Option<Dur>,
    lease_duration: Option<Dur>,
    max_concurrent_moves: Option<u32>,
    preemption: Option<bool>,
}

impl RawSettings {
    fn apply_to(&self, s: &mut Settings) {
        let ms = |d: Dur| flotilla_core::Millis(d.micros() / 1000);
        if let Some(v) = self.placement_policy {
            s.placement_policy = v;
        }
        if let Some(v) = self.hysteresis {
            s.hysteresis = v;
        }
        if let Some(v) = self.traffic_step_pct {
            s.traffic_step_pct = v;
        }
        if let Some(v) = self.traffic_step_interval {
            s.traffic_step_interval = ms(v);
        }
        if let Some(v) = self.start_deadline {
            s.start_deadline = ms(v);
        }
        if let Some(v) = self.drain_deadline {
            s.drain_deadline = ms(v);
        }
        if let Some(v) = self.lease_duration {
            s.lease_duration = ms(v);
        }
        if let Some(v) = self.max_concurrent_moves {
            s.max_concurrent_moves = v;
        }
        if let Some(v) = self.preemption {
            s.preemption = v;
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    default_rtt: Option<Dur>,
    #[serde(default)]
    rtt: Vec<RawRtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRtt {
    between: [String; 2],
    rtt: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    region: String,
    #[serde(default)]
    zone: String,
    /// GPUs by model name, e.g. `{ H100 = 16 }`.
    gpus: BTreeMap<String, u32>,
    gpus_per_node: Option<u32>,
    gpu_memory_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: String,
    startup: Dur,
    perf: BTreeMap<String, RawPerf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerf {
    prefill_tps: f64,
    decode_tps: f64,
    max_batch: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: String,
    model: String,
    replicas: u32,
    min_replicas: Option<u32>,
    gpus: Option<u32>,
    #[serde(default)]
    gpu_models: Vec<String>,
    #[serde(default)]
    priority: i32,
    slo: Option<RawSlo>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    clusters: Vec<String>,
    pinned: Option<String>,
    #[serde(default)]
    spread: bool,
    #[serde(default)]
    preferred_regions: BTreeMap<String, u32>,
    movable: Option<bool>,
    min_dwell: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    ttft: Dur,
    e2e: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    model: Option<String>,
    models: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    origins: BTreeMap<String, f64>,
    start: Option<Dur>,
    end: Option<Dur>,
    synthetic: Option<RawSynthetic>,
    trace: Option<RawTrace>,
    requests: Option<Vec<RawRequest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSynthetic {
    rate: f64,
    #[serde(default)]
    arrival: Arrival,
    burst_factor: Option<f64>,
    burst_duration: Option<Dur>,
    burst_every: Option<Dur>,
    prompt: RawLength,
    output: RawLength,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLength {
    median: f64,
    #[serde(default)]
    sigma: f64,
    max: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrace {
    path: String,
    rate_scale: Option<f64>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    at: Dur,
    prompt: u32,
    output: u32,
    origin: String,
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: Dur,
    cluster: String,
    kind: EventKind,
    gpus: Option<u32>,
    gpu_model: Option<String>,
    grace: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    kind: PolicyKind,
    #[serde(default)]
    settings: RawSettings,
    tick: Option<Dur>,
}

// ---------------------------------------------------------------------------------
// The checked scenario.
// ---------------------------------------------------------------------------------

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arrival {
    /// Exponential inter-arrival times at a constant rate.
    #[default]
    Poisson,
    /// A two-state modulated Poisson process: calm periods at `rate`, bursts at
    /// `rate × burst_factor`, both of exponentially distributed length.
    Bursty,
}

/// What happens to a cluster's capacity at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Spot GPUs are taken back: they show as claimed by another tenant for `grace`
    /// (default 30 s, the notice), then vanish from the cluster.
    SpotPreemption,
    /// Another tenant takes GPUs: claimed for `grace` (default 120 s), then gone.
    Reclaim,
    /// GPUs that were reclaimed or preempted come back, free.
    Return,
    /// GPUs fail at once (unhealthy): their replicas are lost without warning.
    Fail,
    /// Failed GPUs are healthy again.
    Repair,
    /// New GPUs join the cluster (a new node of `gpu_model`).
    Add,
    /// The cluster stops heartbeating; its replicas die at once.
    ClusterLost,
    /// The cluster is back, with its inventory; it reports again.
    ClusterRecovered,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SpotPreemption => "spot-preemption",
            EventKind::Reclaim => "reclaim",
            EventKind::Return => "return",
            EventKind::Fail => "fail",
            EventKind::Repair => "repair",
            EventKind::Add => "add",
            EventKind::ClusterLost => "cluster-lost",
            EventKind::ClusterRecovered => "cluster-recovered",
        }
    }
}

/// How a policy drives the scheduler; see the crate docs for the exact definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Static,
    FailoverOnly,
    Flotilla,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Static => "static",
            PolicyKind::FailoverOnly => "failover-only",
            PolicyKind::Flotilla => "flotilla",
        }
    }
}

/// Inference speed of one replica of a model on one GPU model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perf {
    /// Prompt tokens per second, for one request's prefill.
    pub prefill_tps: f64,
    /// Output tokens per second for each request being decoded.
    pub decode_tps: f64,
    /// Requests a replica serves at once; more wait in its queue.
    pub max_batch: u32,
}

#[derive(Debug, Clone)]
pub struct DeviceDef {
    pub node: String,
    pub uuid: String,
    pub model: String,
    pub memory_mib: u64,
}

#[derive(Debug, Clone)]
pub struct ClusterDef {
    pub spec: ClusterSpec,
    pub region: usize,
    pub devices: Vec<DeviceDef>,
    pub gpus_per_node: u32,
    pub gpu_memory_mib: u64,
}

#[derive(Debug, Clone)]
pub struct ModelDef {
    pub id: String,
    pub startup: Micros,
    pub perf: BTreeMap<String, Perf>,
}

#[derive(Debug, Clone)]
pub struct WorkloadDef {
    pub workload: Workload,
    pub model: usize,
}

/// A log-normal length: `median × e^(σ·N(0,1))`, rounded, clamped to 1..=max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthDist {
    pub median: f64,
    pub sigma: f64,
    pub max: u32,
}

#[derive(Debug, Clone)]
pub enum LoadSource {
    Synthetic {
        rate: f64,
        arrival: Arrival,
        burst_factor: f64,
        burst_duration: Micros,
        burst_every: Micros,
        prompt: LengthDist,
        output: LengthDist,
    },
    Trace {
        path: PathBuf,
        requests: Arc<Vec<TraceRequest>>,
        rate_scale: f64,
    },
    /// Requests listed in the scenario: (at, prompt, output, origin region, model).
    List(Vec<(Micros, u32, u32, usize, Option<usize>)>),
}

#[derive(Debug, Clone)]
pub struct LoadDef {
    /// Models the requests go to, with weights (cumulative, for sampling).
    pub models: Vec<(usize, f64)>,
    /// Regions the requests come from, with weights.
    pub origins: Vec<(usize, f64)>,
    pub start: Micros,
    pub end: Micros,
    pub source: LoadSource,
}

#[derive(Debug, Clone)]
pub struct CapacityEvent {
    pub at: Micros,
    pub cluster: usize,
    pub kind: EventKind,
    pub gpus: Option<u32>,
    pub gpu_model: Option<String>,
    pub grace: Micros,
}

#[derive(Debug, Clone)]
pub struct PolicyDef {
    pub name: String,
    pub kind: PolicyKind,
    pub settings: Settings,
    pub tick: Micros,
}

/// A checked scenario: every name resolves, every number is usable.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: Micros,
    pub sample_interval: Micros,
    pub request_timeout: Micros,
    pub heartbeat_interval: Micros,
    /// Region names, sorted.
    pub regions: Vec<String>,
    /// Round-trip time between regions, by region index.
    pub rtt: Vec<Vec<Micros>>,
    pub clusters: Vec<ClusterDef>,
    pub models: Vec<ModelDef>,
    pub workloads: Vec<WorkloadDef>,
    pub loads: Vec<LoadDef>,
    /// Sorted by time; events at the same time keep their file order.
    pub events: Vec<CapacityEvent>,
    pub policies: Vec<PolicyDef>,
    /// Traces used, for the report's attribution.
    pub traces: Vec<PathBuf>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::parse(path, &text)
    }

    /// Checks scenario text; `path` names it in errors and anchors relative trace paths.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, SimError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| SimError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Scenario::from_raw(path, raw)
    }

    fn from_raw(path: &Path, raw: RawScenario) -> Result<Scenario, SimError> {
        // Sections are checked in the order the file reads, each against the ones
        // before it, so the first error reported is the first in the file.
        let check = Check { path };
        check.name(&raw.name)?;
        let times = check.times(&raw)?;
        let base = check.base_settings(&raw.settings)?;
        let scheduler = check.scheduler(&raw.scheduler, &base)?;
        let topology = check.clusters(&raw.clusters)?;
        let rtt = check.network(&raw.network, &topology)?;
        let models = check.models(&raw.models)?;
        let workloads = check.workloads(&raw.workloads, &topology, &models)?;
        let known = Known {
            topology: &topology,
            models: &models,
            workloads: &workloads,
        };
        let (loads, traces) = check.loads(&raw.load, times.duration, known)?;
        let events = check.events(&raw.events, times.duration, known)?;
        let policies = check.policies(raw.policies, &base, scheduler.tick)?;

        Ok(Scenario {
            path: path.to_owned(),
            name: raw.name,
            description: raw.description,
            seed: raw.seed,
            duration: times.duration,
            sample_interval: times.sample_interval,
            request_timeout: times.request_timeout,
            heartbeat_interval: scheduler.heartbeat_interval,
            regions: topology.regions,
            rtt,
            clusters: topology.clusters,
            models,
            workloads,
            loads,
            events,
            policies,
            traces,
        })
    }

    /// Total GPUs at the start.
    pub fn total_gpus(&self) -> usize {
        self.clusters.iter().map(|c| c.devices.len()).sum()
    }
}

// ---------------------------------------------------------------------------------
// Validation, one step per section of the file.
// ---------------------------------------------------------------------------------

/// Scenario-wide times, defaults filled in.
#[derive(Debug, Clone, Copy)]
struct Times {
    duration: Micros,
    sample_interval: Micros,
    request_timeout: Micros,
}

/// The scheduler's clocks.
#[derive(Debug, Clone, Copy)]
struct SchedulerTimes {
    heartbeat_interval: Micros,
    /// Every policy's tick unless the policy sets its own.
    tick: Micros,
}

/// The checked clusters, with the regions and GPU models they define: a region or
/// a GPU model exists only because some cluster names it.
#[derive(Debug)]
struct Topology {
    /// Sorted.
    regions: Vec<String>,
    clusters: Vec<ClusterDef>,
    gpu_models: BTreeSet<String>,
}

impl Topology {
    fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r == name)
    }

    fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.spec.name == name)
    }

    /// The error message for a region no cluster is in, listing those that exist.
    fn unknown_region(&self, name: &str) -> String {
        format!(
            "region {name:?} has no cluster; known regions: {}",
            self.regions.join(", ")
        )
    }
}

/// What load and events refer to by name.
#[derive(Debug, Clone, Copy)]
struct Known<'a> {
    topology: &'a Topology,
    models: &'a [ModelDef],
    workloads: &'a [WorkloadDef],
}

impl Known<'_> {
    /// The index of a model some workload serves; requests for any other model
    /// would find no replica.
    fn served_model(&self, id: &str) -> Option<usize> {
        self.models
            .iter()
            .position(|m| m.id == id)
            .filter(|&m| self.workloads.iter().any(|w| w.model == m))
    }
}

/// Checks the raw sections; every error names the file and the offending field.
#[derive(Debug, Clone, Copy)]
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn bad(&self, field: &str, message: impl Into<String>) -> SimError {
        SimError::invalid(self.path, field, message)
    }

    fn name(&self, name: &str) -> Result<(), SimError> {
        if name.trim().is_empty() {
            return Err(self.bad("name", "must not be empty"));
        }
        Ok(())
    }

    fn times(&self, raw: &RawScenario) -> Result<Times, SimError> {
        if raw.duration.micros() == 0 {
            return Err(self.bad("duration", "must be greater than 0"));
        }
        let duration = raw.duration.micros();
        let sample_interval = raw
            .sample_interval
            .map_or((duration / 120).max(MICROS_PER_SEC), Dur::micros);
        if sample_interval == 0 {
            return Err(self.bad("sample_interval", "must be greater than 0"));
        }
        let request_timeout = raw
            .request_timeout
            .map_or(120 * MICROS_PER_SEC, Dur::micros);
        if request_timeout == 0 {
            return Err(self.bad("request_timeout", "must be greater than 0"));
        }
        Ok(Times {
            duration,
            sample_interval,
            request_timeout,
        })
    }

    /// Settings shared by all policies, checked by core.
    fn base_settings(&self, raw: &RawSettings) -> Result<Settings, SimError> {
        let mut base = Settings::default();
        raw.apply_to(&mut base);
        base.validate()
            .map_err(|e| self.bad(&format!("settings.{}", e.field), e.message))?;
        Ok(base)
    }

    fn scheduler(&self, raw: &RawScheduler, base: &Settings) -> Result<SchedulerTimes, SimError> {
        // By default three heartbeats fit in one lease.
        let heartbeat_interval = raw
            .heartbeat_interval
            .map_or_else(|| (base.lease_duration.0 * 1000 / 3).max(1), Dur::micros);
        if heartbeat_interval == 0 {
            return Err(self.bad("scheduler.heartbeat_interval", "must be greater than 0"));
        }
        let tick = raw.tick.map_or(MICROS_PER_SEC, Dur::micros);
        if tick == 0 {
            return Err(self.bad("scheduler.tick", "must be greater than 0"));
        }
        Ok(SchedulerTimes {
            heartbeat_interval,
            tick,
        })
    }

    /// Clusters, and the regions and GPU models they define.
    fn clusters(&self, raw: &[RawCluster]) -> Result<Topology, SimError> {
        if raw.is_empty() {
            return Err(self.bad("clusters", "at least one cluster is needed"));
        }
        let regions: Vec<String> = raw
            .iter()
            .map(|c| c.region.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut clusters = Vec::with_capacity(raw.len());
        let mut gpu_models = BTreeSet::new();
        for (i, c) in raw.iter().enumerate() {
            let cluster = self.cluster(i, c, &regions, &clusters)?;
            gpu_models.extend(c.gpus.keys().cloned());
            clusters.push(cluster);
        }
        Ok(Topology {
            regions,
            clusters,
            gpu_models,
        })
    }

    fn cluster(
        &self,
        i: usize,
        c: &RawCluster,
        regions: &[String],
        earlier: &[ClusterDef],
    ) -> Result<ClusterDef, SimError> {
        let f = |x: &str| format!("clusters[{i}].{x}");
        let spec = ClusterSpec {
            name: c.name.clone(),
            region: c.region.clone(),
            zone: c.zone.clone(),
            labels: BTreeMap::new(),
            gateway_address: String::new(),
            endpoint_ranges: Vec::new(),
        };
        spec.validate()
            .map_err(|e| self.bad(&f(&e.field), e.message))?;
        if earlier.iter().any(|x| x.spec.name == c.name) {
            return Err(self.bad(&f("name"), format!("cluster {:?} is defined twice", c.name)));
        }
        let per_node = c.gpus_per_node.unwrap_or(8);
        if per_node == 0 {
            return Err(self.bad(&f("gpus_per_node"), "must be at least 1"));
        }
        let memory = c.gpu_memory_mib.unwrap_or(81_920);
        if memory == 0 {
            return Err(self.bad(&f("gpu_memory_mib"), "must be at least 1"));
        }
        if let Some(model) = c
            .gpus
            .keys()
            .find(|m| m.trim().is_empty() || m.contains(char::is_whitespace))
        {
            return Err(self.bad(
                &f("gpus"),
                format!("GPU model {model:?} must be a name without spaces"),
            ));
        }
        Ok(ClusterDef {
            spec,
            region: regions.iter().position(|r| *r == c.region).unwrap_or(0),
            devices: devices(c, per_node, memory),
            gpus_per_node: per_node,
            gpu_memory_mib: memory,
        })
    }

    /// Round-trip times between regions: 0 within one, the default unless listed.
    fn network(&self, raw: &RawNetwork, topology: &Topology) -> Result<Vec<Vec<Micros>>, SimError> {
        let default_rtt = raw
            .default_rtt
            .map_or(100 * crate::duration::MICROS_PER_MS, Dur::micros);
        let n = topology.regions.len();
        let mut rtt = vec![vec![default_rtt; n]; n];
        for (i, row) in rtt.iter_mut().enumerate() {
            row[i] = 0;
        }
        for (i, r) in raw.rtt.iter().enumerate() {
            let mut ends = [0usize; 2];
            for (k, name) in r.between.iter().enumerate() {
                ends[k] = topology.region_index(name).ok_or_else(|| {
                    self.bad(
                        &format!("network.rtt[{i}].between[{k}]"),
                        topology.unknown_region(name),
                    )
                })?;
            }
            rtt[ends[0]][ends[1]] = r.rtt.micros();
            rtt[ends[1]][ends[0]] = r.rtt.micros();
        }
        Ok(rtt)
    }

    fn models(&self, raw: &[RawModel]) -> Result<Vec<ModelDef>, SimError> {
        if raw.is_empty() {
            return Err(self.bad("models", "at least one model is needed"));
        }
        let mut models = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            let model = self.model(i, m, &models)?;
            models.push(model);
        }
        Ok(models)
    }

    fn model(&self, i: usize, m: &RawModel, earlier: &[ModelDef]) -> Result<ModelDef, SimError> {
        let f = |x: &str| format!("models[{i}].{x}");
        if m.id.trim().is_empty() || m.id.contains(char::is_whitespace) {
            return Err(self.bad(&f("id"), "must be a model id without spaces"));
        }
        if earlier.iter().any(|x| x.id == m.id) {
            return Err(self.bad(&f("id"), format!("model {:?} is defined twice", m.id)));
        }
        let mut perf = BTreeMap::new();
        for (gpu, p) in &m.perf {
            perf.insert(gpu.clone(), self.perf(&f(&format!("perf.{gpu}")), p)?);
        }
        if perf.is_empty() {
            return Err(self.bad(&f("perf"), "needs at least one GPU model"));
        }
        Ok(ModelDef {
            id: m.id.clone(),
            startup: m.startup.micros(),
            perf,
        })
    }

    /// A model's speed on one GPU model; `at` names it (`models[0].perf.H100`).
    fn perf(&self, at: &str, p: &RawPerf) -> Result<Perf, SimError> {
        if !(p.prefill_tps.is_finite() && p.prefill_tps > 0.0) {
            return Err(self.bad(&format!("{at}.prefill_tps"), "must be a positive number"));
        }
        if !(p.decode_tps.is_finite() && p.decode_tps > 0.0) {
            return Err(self.bad(&format!("{at}.decode_tps"), "must be a positive number"));
        }
        if p.max_batch == 0 {
            return Err(self.bad(&format!("{at}.max_batch"), "must be at least 1"));
        }
        Ok(Perf {
            prefill_tps: p.prefill_tps,
            decode_tps: p.decode_tps,
            max_batch: p.max_batch,
        })
    }

    fn workloads(
        &self,
        raw: &[RawWorkload],
        topology: &Topology,
        models: &[ModelDef],
    ) -> Result<Vec<WorkloadDef>, SimError> {
        if raw.is_empty() {
            return Err(self.bad("workloads", "at least one workload is needed"));
        }
        let mut workloads = Vec::with_capacity(raw.len());
        for (i, w) in raw.iter().enumerate() {
            let workload =
                self.workload(&format!("workloads[{i}]"), w, topology, models, &workloads)?;
            workloads.push(workload);
        }
        Ok(workloads)
    }

    /// One workload, checked by core, then against the models and clusters.
    fn workload(
        &self,
        at: &str,
        w: &RawWorkload,
        topology: &Topology,
        models: &[ModelDef],
        earlier: &[WorkloadDef],
    ) -> Result<WorkloadDef, SimError> {
        let model = models.iter().position(|m| m.id == w.model).ok_or_else(|| {
            self.bad(
                &format!("{at}.model"),
                format!("model {:?} is not among [[models]]", w.model),
            )
        })?;
        if earlier.iter().any(|x| x.workload.name == w.name) {
            return Err(self.bad(
                &format!("{at}.name"),
                format!("workload {:?} is defined twice", w.name),
            ));
        }
        let workload = core_workload(w);
        workload
            .validate()
            .map_err(|e| self.bad(&format!("{at}.{}", file_field(&e.field)), e.message))?;
        self.workload_names(at, w, topology)?;
        self.workload_perf(at, w, topology, &models[model])?;
        Ok(WorkloadDef { workload, model })
    }

    /// The GPU models, clusters and regions a workload names must exist.
    fn workload_names(
        &self,
        at: &str,
        w: &RawWorkload,
        topology: &Topology,
    ) -> Result<(), SimError> {
        for (k, g) in w.gpu_models.iter().enumerate() {
            if !topology.gpu_models.contains(g) {
                return Err(self.bad(
                    &format!("{at}.gpu_models[{k}]"),
                    format!("no cluster has GPU model {g:?}"),
                ));
            }
        }
        for (k, c) in w.clusters.iter().chain(w.pinned.iter()).enumerate() {
            if topology.cluster_index(c).is_none() {
                return Err(self.bad(
                    &format!("{at}.clusters[{k}]"),
                    format!("cluster {c:?} is not among [[clusters]]"),
                ));
            }
        }
        for r in w.regions.iter().chain(w.preferred_regions.keys()) {
            if topology.region_index(r).is_none() {
                return Err(self.bad(&format!("{at}.regions"), topology.unknown_region(r)));
            }
        }
        Ok(())
    }

    /// The engine needs the model's speed on every GPU model the workload may land on.
    fn workload_perf(
        &self,
        at: &str,
        w: &RawWorkload,
        topology: &Topology,
        model: &ModelDef,
    ) -> Result<(), SimError> {
        let usable: Vec<&String> = if w.gpu_models.is_empty() {
            topology.gpu_models.iter().collect()
        } else {
            w.gpu_models.iter().collect()
        };
        for g in usable {
            if !model.perf.contains_key(g) {
                return Err(self.bad(
                    &format!("{at}.gpu_models"),
                    format!(
                        "it may run on {g} but model {:?} has no perf.{g}; add it or restrict gpu_models",
                        w.model
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `[[load]]` sections, and the trace files they read (each once).
    fn loads(
        &self,
        raw: &[RawLoad],
        duration: Micros,
        known: Known<'_>,
    ) -> Result<(Vec<LoadDef>, Vec<PathBuf>), SimError> {
        if raw.is_empty() {
            return Err(self.bad("load", "at least one [[load]] is needed"));
        }
        let mut loads = Vec::with_capacity(raw.len());
        let mut traces = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let load = self.load(&format!("load[{i}]"), l, duration, known)?;
            if let LoadSource::Trace { path, .. } = &load.source
                && !traces.contains(path)
            {
                traces.push(path.clone());
            }
            loads.push(load);
        }
        Ok((loads, traces))
    }

    fn load(
        &self,
        at: &str,
        l: &RawLoad,
        duration: Micros,
        known: Known<'_>,
    ) -> Result<LoadDef, SimError> {
        let models = self.load_models(at, l, known)?;
        let origins = self.load_origins(at, l, known.topology)?;
        let start = l.start.map_or(0, Dur::micros);
        let end = l.end.map_or(duration, Dur::micros).min(duration);
        if end <= start {
            return Err(self.bad(
                &format!("{at}.end"),
                "must be after start (and within duration)",
            ));
        }
        let source = self.load_source(at, l, known)?;
        Ok(LoadDef {
            models,
            origins,
            start,
            end,
            source,
        })
    }

    /// The models a load sends requests to, with weights: `model` or `models`.
    fn load_models(
        &self,
        at: &str,
        l: &RawLoad,
        known: Known<'_>,
    ) -> Result<Vec<(usize, f64)>, SimError> {
        match (&l.model, &l.models) {
            (Some(m), None) => {
                let idx = known.served_model(m).ok_or_else(|| {
                    self.bad(
                        &format!("{at}.model"),
                        format!("no workload serves model {m:?}"),
                    )
                })?;
                Ok(vec![(idx, 1.0)])
            }
            (None, Some(ms)) if !ms.is_empty() => {
                let mut weighted = Vec::with_capacity(ms.len());
                for (m, &w) in ms {
                    let field = format!("{at}.models.{m}");
                    let idx = known.served_model(m).ok_or_else(|| {
                        self.bad(&field, format!("no workload serves model {m:?}"))
                    })?;
                    if !(w.is_finite() && w > 0.0) {
                        return Err(self.bad(&field, "weight must be positive"));
                    }
                    weighted.push((idx, w));
                }
                Ok(weighted)
            }
            _ => Err(self.bad(
                &format!("{at}.model"),
                "give exactly one of `model = \"id\"` or `models = { id = weight, ... }`",
            )),
        }
    }

    /// The regions a load's requests come from, with weights.
    fn load_origins(
        &self,
        at: &str,
        l: &RawLoad,
        topology: &Topology,
    ) -> Result<Vec<(usize, f64)>, SimError> {
        let mut origins = Vec::with_capacity(l.origins.len());
        for (r, &w) in &l.origins {
            let field = format!("{at}.origins.{r}");
            let idx = topology
                .region_index(r)
                .ok_or_else(|| self.bad(&field, topology.unknown_region(r)))?;
            if !(w.is_finite() && w > 0.0) {
                return Err(self.bad(&field, "weight must be positive"));
            }
            origins.push((idx, w));
        }
        if origins.is_empty() {
            // Requests come from every region alike.
            origins = (0..topology.regions.len()).map(|r| (r, 1.0)).collect();
        }
        Ok(origins)
    }

    /// Where a load's requests come from: exactly one of synthetic, trace or list.
    fn load_source(&self, at: &str, l: &RawLoad, known: Known<'_>) -> Result<LoadSource, SimError> {
        let sources = [
            l.synthetic.is_some(),
            l.trace.is_some(),
            l.requests.is_some(),
        ];
        if sources.iter().filter(|x| **x).count() != 1 {
            return Err(self.bad(
                &format!("{at}.synthetic"),
                "give exactly one of [load.synthetic], [load.trace] or load.requests",
            ));
        }
        if let Some(s) = &l.synthetic {
            self.synthetic(at, s)
        } else if let Some(t) = &l.trace {
            self.trace(at, t)
        } else {
            self.request_list(at, l.requests.as_deref().unwrap_or_default(), known)
        }
    }

    fn synthetic(&self, at: &str, s: &RawSynthetic) -> Result<LoadSource, SimError> {
        if !(s.rate.is_finite() && s.rate > 0.0) {
            return Err(self.bad(
                &format!("{at}.synthetic.rate"),
                "must be a positive number of requests per second",
            ));
        }
        let burst_factor = s.burst_factor.unwrap_or(4.0);
        if !(burst_factor.is_finite() && burst_factor >= 1.0) {
            return Err(self.bad(
                &format!("{at}.synthetic.burst_factor"),
                "must be at least 1",
            ));
        }
        let burst_duration = s.burst_duration.map_or(30 * MICROS_PER_SEC, Dur::micros);
        let burst_every = s.burst_every.map_or(300 * MICROS_PER_SEC, Dur::micros);
        if s.arrival == Arrival::Bursty && (burst_duration == 0 || burst_every == 0) {
            return Err(self.bad(
                &format!("{at}.synthetic.burst_duration"),
                "bursts need positive durations",
            ));
        }
        Ok(LoadSource::Synthetic {
            rate: s.rate,
            arrival: s.arrival,
            burst_factor,
            burst_duration,
            burst_every,
            prompt: self.length(&format!("{at}.synthetic.prompt"), s.prompt)?,
            output: self.length(&format!("{at}.synthetic.output"), s.output)?,
        })
    }

    /// A prompt or output length distribution; `at` names it.
    fn length(&self, at: &str, r: RawLength) -> Result<LengthDist, SimError> {
        if !(r.median.is_finite() && r.median >= 1.0) {
            return Err(self.bad(&format!("{at}.median"), "must be at least 1"));
        }
        if !(r.sigma.is_finite() && (0.0..=4.0).contains(&r.sigma)) {
            return Err(self.bad(&format!("{at}.sigma"), "must be between 0 and 4"));
        }
        Ok(LengthDist {
            median: r.median,
            sigma: r.sigma,
            max: r.max.unwrap_or(32_768).max(1),
        })
    }

    /// A trace file, read now; its path is relative to the scenario file.
    fn trace(&self, at: &str, t: &RawTrace) -> Result<LoadSource, SimError> {
        let rate_scale = t.rate_scale.unwrap_or(1.0);
        if !(rate_scale.is_finite() && rate_scale > 0.0) {
            return Err(self.bad(
                &format!("{at}.trace.rate_scale"),
                "must be a positive number",
            ));
        }
        let base_dir = self.path.parent().unwrap_or(Path::new("."));
        let trace_path = base_dir.join(&t.path);
        let mut requests = read_trace(&trace_path)?;
        if let Some(limit) = t.limit {
            requests.truncate(limit);
        }
        Ok(LoadSource::Trace {
            path: trace_path,
            requests: Arc::new(requests),
            rate_scale,
        })
    }

    /// Requests listed in the file, sorted by time.
    fn request_list(
        &self,
        at: &str,
        requests: &[RawRequest],
        known: Known<'_>,
    ) -> Result<LoadSource, SimError> {
        let mut list = Vec::with_capacity(requests.len());
        for (k, r) in requests.iter().enumerate() {
            let g = |x: &str| format!("{at}.requests[{k}].{x}");
            let origin = known.topology.region_index(&r.origin).ok_or_else(|| {
                self.bad(
                    &g("origin"),
                    format!("region {:?} has no cluster", r.origin),
                )
            })?;
            let model = match &r.model {
                Some(m) => Some(known.served_model(m).ok_or_else(|| {
                    self.bad(&g("model"), format!("no workload serves model {m:?}"))
                })?),
                None => None,
            };
            if r.prompt == 0 || r.output == 0 {
                return Err(self.bad(&g("prompt"), "prompt and output need at least one token"));
            }
            list.push((r.at.micros(), r.prompt, r.output, origin, model));
        }
        list.sort_by_key(|x| x.0);
        Ok(LoadSource::List(list))
    }

    /// Capacity events, sorted by time (stable: same-time events keep file order).
    fn events(
        &self,
        raw: &[RawEvent],
        duration: Micros,
        known: Known<'_>,
    ) -> Result<Vec<CapacityEvent>, SimError> {
        let mut events = Vec::with_capacity(raw.len());
        for (i, e) in raw.iter().enumerate() {
            events.push(self.event(&format!("events[{i}]"), e, duration, known)?);
        }
        events.sort_by_key(|e| e.at);
        Ok(events)
    }

    fn event(
        &self,
        at: &str,
        e: &RawEvent,
        duration: Micros,
        known: Known<'_>,
    ) -> Result<CapacityEvent, SimError> {
        let cluster = known.topology.cluster_index(&e.cluster).ok_or_else(|| {
            self.bad(
                &format!("{at}.cluster"),
                format!("cluster {:?} is not among [[clusters]]", e.cluster),
            )
        })?;
        // Only an `add` event may bring a GPU model no cluster has yet.
        if let Some(g) = &e.gpu_model
            && !known.topology.gpu_models.contains(g)
            && e.kind != EventKind::Add
        {
            return Err(self.bad(
                &format!("{at}.gpu_model"),
                format!("no cluster has GPU model {g:?}"),
            ));
        }
        if e.kind == EventKind::Add {
            self.added_gpus(at, e, known)?;
        }
        if e.at.micros() > duration {
            return Err(self.bad(
                &format!("{at}.at"),
                format!("is after the end of the scenario ({})", Dur(duration)),
            ));
        }
        let grace = e.grace.map(Dur::micros).unwrap_or(match e.kind {
            EventKind::SpotPreemption => 30 * MICROS_PER_SEC,
            EventKind::Reclaim => 120 * MICROS_PER_SEC,
            _ => 0,
        });
        Ok(CapacityEvent {
            at: e.at.micros(),
            cluster,
            kind: e.kind,
            gpus: e.gpus,
            gpu_model: e.gpu_model.clone(),
            grace,
        })
    }

    /// An `add` event needs a GPU model and a count, and every workload that
    /// accepts the added GPUs needs its model's speed on them.
    fn added_gpus(&self, at: &str, e: &RawEvent, known: Known<'_>) -> Result<(), SimError> {
        let field = format!("{at}.gpu_model");
        let Some(g) = &e.gpu_model else {
            return Err(self.bad(&field, "an `add` event needs the model of the GPUs it adds"));
        };
        if e.gpus.unwrap_or(0) == 0 {
            return Err(self.bad(
                &format!("{at}.gpus"),
                "an `add` event needs a number of GPUs",
            ));
        }
        for w in known.workloads {
            let accepts = w.workload.gpu.models.is_empty() || w.workload.gpu.models.contains(g);
            let model = &known.models[w.model];
            if accepts && !model.perf.contains_key(g) {
                return Err(self.bad(
                    &field,
                    format!(
                        "workload {:?} may run on {g} but model {:?} has no perf.{g}",
                        w.workload.name, model.id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The policies to compare: the three reference policies unless the file lists
    /// its own.
    fn policies(
        &self,
        raw: Vec<RawPolicy>,
        base: &Settings,
        default_tick: Micros,
    ) -> Result<Vec<PolicyDef>, SimError> {
        let raw = if raw.is_empty() {
            reference_policies()
        } else {
            raw
        };
        let mut policies = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let policy =
                self.policy(&format!("policies[{i}]"), p, &policies, base, default_tick)?;
            policies.push(policy);
        }
        Ok(policies)
    }

    fn policy(
        &self,
        at: &str,
        p: &RawPolicy,
        earlier: &[PolicyDef],
        base: &Settings,
        default_tick: Micros,
    ) -> Result<PolicyDef, SimError> {
        let name_field = format!("{at}.name");
        if p.name.trim().is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(self.bad(
                &name_field,
                "use letters, digits, '-', '_' or '.' (it names output files)",
            ));
        }
        if earlier.iter().any(|x| x.name == p.name) {
            return Err(self.bad(&name_field, format!("policy {:?} is listed twice", p.name)));
        }
        let mut settings = base.clone();
        p.settings.apply_to(&mut settings);
        settings
            .validate()
            .map_err(|e| self.bad(&format!("{at}.settings.{}", e.field), e.message))?;
        let tick = p.tick.map_or(default_tick, Dur::micros);
        if tick == 0 {
            return Err(self.bad(&format!("{at}.tick"), "must be greater than 0"));
        }
        Ok(PolicyDef {
            name: p.name.clone(),
            kind: p.kind,
            settings,
            tick,
        })
    }
}

/// A cluster's GPUs as an agent would report them: `per_node` to a node, nodes
/// numbered from 1 across all GPU models, so every UUID is unique.
fn devices(c: &RawCluster, per_node: u32, memory_mib: u64) -> Vec<DeviceDef> {
    let mut devices = Vec::new();
    let mut node = 0;
    for (model, &count) in &c.gpus {
        for k in 0..count {
            if k % per_node == 0 {
                node += 1;
            }
            devices.push(DeviceDef {
                node: format!("{}-n{node}", c.name),
                uuid: format!("{}-n{node}-g{}", c.name, k % per_node),
                model: model.clone(),
                memory_mib,
            });
        }
    }
    devices
}

/// The core workload a `[[workloads]]` entry describes.
fn core_workload(w: &RawWorkload) -> Workload {
    let mut mobility = Mobility::default();
    if let Some(m) = w.movable {
        mobility.movable = m;
    }
    if let Some(d) = w.min_dwell {
        mobility.min_dwell = flotilla_core::Millis(d.micros() / 1000);
    }
    Workload {
        name: w.name.clone(),
        model: w.model.clone(),
        replicas: Replicas {
            min: w.min_replicas.unwrap_or(w.replicas),
            max: w.replicas,
        },
        gpu: GpuNeed {
            count: w.gpus.unwrap_or(1),
            min_memory_mib: 0,
            models: w.gpu_models.clone(),
            mig_profile: None,
        },
        constraints: Constraints {
            regions: w.regions.clone(),
            clusters: w.clusters.clone(),
            pinned: w.pinned.clone(),
            spread_across_clusters: w.spread,
            preferred_regions: w
                .preferred_regions
                .iter()
                .map(|(region, &weight)| RegionPreference {
                    region: region.clone(),
                    weight,
                })
                .collect(),
        },
        priority: w.priority,
        slo: w.slo.as_ref().map(|s| Slo {
            ttft: flotilla_core::Millis(s.ttft.micros() / 1000),
            e2e: flotilla_core::Millis(s.e2e.map_or(0, |d| d.micros() / 1000)),
        }),
        mobility,
        // The simulator runs no containers.
        container: None,
    }
}

/// The scenario file's name for a field core's workload validation reports
/// (`gpu.count` is `gpus` in the file).
fn file_field(core_field: &str) -> String {
    match core_field {
        "replicas.max" => "replicas".to_owned(),
        "replicas.min" => "min_replicas".to_owned(),
        "gpu.count" => "gpus".to_owned(),
        other => other
            .replace("gpu.models", "gpu_models")
            .replace("constraints.", ""),
    }
}

/// The three reference policies, with no settings of their own.
fn reference_policies() -> Vec<RawPolicy> {
    [
        PolicyKind::Static,
        PolicyKind::FailoverOnly,
        PolicyKind::Flotilla,
    ]
    .into_iter()
    .map(|kind| RawPolicy {
        name: kind.as_str().to_owned(),
        kind,
        settings: RawSettings::default(),
        tick: None,
    })
    .collect()
}
