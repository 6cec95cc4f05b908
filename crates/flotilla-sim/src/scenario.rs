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
        let bad = |field: &str, message: String| SimError::invalid(path, field, message);
        if raw.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if raw.duration.micros() == 0 {
            return Err(bad("duration", "must be greater than 0".into()));
        }
        let duration = raw.duration.micros();
        let sample_interval = raw
            .sample_interval
            .map_or((duration / 120).max(MICROS_PER_SEC), Dur::micros);
        if sample_interval == 0 {
            return Err(bad("sample_interval", "must be greater than 0".into()));
        }
        let request_timeout = raw
            .request_timeout
            .map_or(120 * MICROS_PER_SEC, Dur::micros);
        if request_timeout == 0 {
            return Err(bad("request_timeout", "must be greater than 0".into()));
        }

        // Settings shared by all policies, checked by core.
        let mut base = Settings::default();
        raw.settings.apply_to(&mut base);
        base.validate()
            .map_err(|e| bad(&format!("settings.{}", e.field), e.message))?;
        let heartbeat_interval = raw
            .scheduler
            .heartbeat_interval
            .map_or_else(|| (base.lease_duration.0 * 1000 / 3).max(1), Dur::micros);
        if heartbeat_interval == 0 {
            return Err(bad(
                "scheduler.heartbeat_interval",
                "must be greater than 0".into(),
            ));
        }
        let tick = raw.scheduler.tick.map_or(MICROS_PER_SEC, Dur::micros);
        if tick == 0 {
            return Err(bad("scheduler.tick", "must be greater than 0".into()));
        }

        // Clusters and regions.
        if raw.clusters.is_empty() {
            return Err(bad("clusters", "at least one cluster is needed".into()));
        }
        let regions: Vec<String> = raw
            .clusters
            .iter()
            .map(|c| c.region.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let region_index = |name: &str| regions.iter().position(|r| r == name);
        let mut cluster_names = BTreeSet::new();
        let mut gpu_models_seen = BTreeSet::new();
        let mut clusters = Vec::with_capacity(raw.clusters.len());
        for (i, c) in raw.clusters.iter().enumerate() {
            let f = |x: &str| format!("clusters[{i}].{x}");
            let spec = ClusterSpec {
                name: c.name.clone(),
                region: c.region.clone(),
                zone: c.zone.clone(),
                labels: BTreeMap::new(),
                gateway_address: String::new(),
            };
            spec.validate().map_err(|e| bad(&f(&e.field), e.message))?;
            if !cluster_names.insert(c.name.clone()) {
                return Err(bad(
                    &f("name"),
                    format!("cluster {:?} is defined twice", c.name),
                ));
            }
            let per_node = c.gpus_per_node.unwrap_or(8);
            if per_node == 0 {
                return Err(bad(&f("gpus_per_node"), "must be at least 1".into()));
            }
            let memory = c.gpu_memory_mib.unwrap_or(81_920);
            if memory == 0 {
                return Err(bad(&f("gpu_memory_mib"), "must be at least 1".into()));
            }
            let mut devices = Vec::new();
            let mut node = 0;
            for (model, &count) in &c.gpus {
                if model.trim().is_empty() || model.contains(char::is_whitespace) {
                    return Err(bad(
                        &f("gpus"),
                        format!("GPU model {model:?} must be a name without spaces"),
                    ));
                }
                gpu_models_seen.insert(model.clone());
                for k in 0..count {
                    if k % per_node == 0 {
                        node += 1;
                    }
                    devices.push(DeviceDef {
                        node: format!("{}-n{node}", c.name),
                        uuid: format!("{}-n{node}-g{}", c.name, k % per_node),
                        model: model.clone(),
                        memory_mib: memory,
                    });
                }
            }
            clusters.push(ClusterDef {
                spec,
                region: region_index(&c.region).unwrap_or(0),
                devices,
                gpus_per_node: per_node,
                gpu_memory_mib: memory,
            });
        }
        let cluster_index = |name: &str| clusters.iter().position(|c| c.spec.name == name);

        // Network.
        let default_rtt = raw
            .network
            .default_rtt
            .map_or(100 * crate::duration::MICROS_PER_MS, Dur::micros);
        let n = regions.len();
        let mut rtt = vec![vec![default_rtt; n]; n];
        for (i, row) in rtt.iter_mut().enumerate() {
            row[i] = 0;
        }
        for (i, r) in raw.network.rtt.iter().enumerate() {
            let mut ends = [0usize; 2];
            for (k, name) in r.between.iter().enumerate() {
                ends[k] = region_index(name).ok_or_else(|| {
                    bad(
                        &format!("network.rtt[{i}].between[{k}]"),
                        format!(
                            "region {name:?} has no cluster; known regions: {}",
                            regions.join(", ")
                        ),
                    )
                })?;
            }
            rtt[ends[0]][ends[1]] = r.rtt.micros();
            rtt[ends[1]][ends[0]] = r.rtt.micros();
        }

        // Models.
        if raw.models.is_empty() {
            return Err(bad("models", "at least one model is needed".into()));
        }
        let mut models: Vec<ModelDef> = Vec::new();
        for (i, m) in raw.models.iter().enumerate() {
            let f = |x: &str| format!("models[{i}].{x}");
            if m.id.trim().is_empty() || m.id.contains(char::is_whitespace) {
                return Err(bad(&f("id"), "must be a model id without spaces".into()));
            }
            if models.iter().any(|x| x.id == m.id) {
                return Err(bad(&f("id"), format!("model {:?} is defined twice", m.id)));
            }
            let mut perf = BTreeMap::new();
            for (gpu, p) in &m.perf {
                let g = |x: &str| f(&format!("perf.{gpu}.{x}"));
                if !(p.prefill_tps.is_finite() && p.prefill_tps > 0.0) {
                    return Err(bad(&g("prefill_tps"), "must be a positive number".into()));
                }
                if !(p.decode_tps.is_finite() && p.decode_tps > 0.0) {
                    return Err(bad(&g("decode_tps"), "must be a positive number".into()));
                }
                if p.max_batch == 0 {
                    return Err(bad(&g("max_batch"), "must be at least 1".into()));
                }
                perf.insert(
                    gpu.clone(),
                    Perf {
                        prefill_tps: p.prefill_tps,
                        decode_tps: p.decode_tps,
                        max_batch: p.max_batch,
                    },
                );
            }
            if perf.is_empty() {
                return Err(bad(&f("perf"), "needs at least one GPU model".into()));
            }
            models.push(ModelDef {
                id: m.id.clone(),
                startup: m.startup.micros(),
                perf,
            });
        }
        let model_index = |id: &str| models.iter().position(|m| m.id == id);

        // Workloads, checked by core, then against models and clusters.
        if raw.workloads.is_empty() {
            return Err(bad("workloads", "at least one workload is needed".into()));
        }
        let mut workloads: Vec<WorkloadDef> = Vec::new();
        for (i, w) in raw.workloads.iter().enumerate() {
            let f = |x: &str| format!("workloads[{i}].{x}");
            let model = model_index(&w.model).ok_or_else(|| {
                bad(
                    &f("model"),
                    format!("model {:?} is not among [[models]]", w.model),
                )
            })?;
            if workloads.iter().any(|x| x.workload.name == w.name) {
                return Err(bad(
                    &f("name"),
                    format!("workload {:?} is defined twice", w.name),
                ));
            }
            let mut mobility = Mobility::default();
            if let Some(m) = w.movable {
                mobility.movable = m;
            }
            if let Some(d) = w.min_dwell {
                mobility.min_dwell = flotilla_core::Millis(d.micros() / 1000);
            }
            let workload = Workload {
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
            };
            workload.validate().map_err(|e| {
                let field = match e.field.as_str() {
                    "replicas.max" => "replicas".to_owned(),
                    "replicas.min" => "min_replicas".to_owned(),
                    "gpu.count" => "gpus".to_owned(),
                    other => other
                        .replace("gpu.models", "gpu_models")
                        .replace("constraints.", ""),
                };
                bad(&f(&field), e.message)
            })?;
            for (k, g) in w.gpu_models.iter().enumerate() {
                if !gpu_models_seen.contains(g) {
                    return Err(bad(
                        &f(&format!("gpu_models[{k}]")),
                        format!("no cluster has GPU model {g:?}"),
                    ));
                }
            }
            for (k, c) in w.clusters.iter().chain(w.pinned.iter()).enumerate() {
                if cluster_index(c).is_none() {
                    return Err(bad(
                        &f(&format!("clusters[{k}]")),
                        format!("cluster {c:?} is not among [[clusters]]"),
                    ));
                }
            }
            for r in w.regions.iter().chain(w.preferred_regions.keys()) {
                if region_index(r).is_none() {
                    return Err(bad(
                        &f("regions"),
                        format!(
                            "region {r:?} has no cluster; known regions: {}",
                            regions.join(", ")
                        ),
                    ));
                }
            }
            let usable: Vec<&String> = if w.gpu_models.is_empty() {
                gpu_models_seen.iter().collect()
            } else {
                w.gpu_models.iter().collect()
            };
            for g in usable {
                if !models[model].perf.contains_key(g) {
                    return Err(bad(
                        &f("gpu_models"),
                        format!(
                            "it may run on {g} but model {:?} has no perf.{g}; add it or restrict gpu_models",
                            w.model
                        ),
                    ));
                }
            }
            workloads.push(WorkloadDef { workload, model });
        }

        // Load.
        if raw.load.is_empty() {
            return Err(bad("load", "at least one [[load]] is needed".into()));
        }
        let mut loads = Vec::new();
        let mut traces = Vec::new();
        let base_dir = path.parent().unwrap_or(Path::new("."));
        for (i, l) in raw.load.iter().enumerate() {
            let f = |x: &str| format!("load[{i}].{x}");
            let served =
                |id: &str| model_index(id).filter(|&m| workloads.iter().any(|w| w.model == m));
            let mut weighted_models = Vec::new();
            match (&l.model, &l.models) {
                (Some(m), None) => {
                    let idx = served(m).ok_or_else(|| {
                        bad(&f("model"), format!("no workload serves model {m:?}"))
                    })?;
                    weighted_models.push((idx, 1.0));
                }
                (None, Some(ms)) if !ms.is_empty() => {
                    for (m, &w) in ms {
                        let idx = served(m).ok_or_else(|| {
                            bad(
                                &f(&format!("models.{m}")),
                                format!("no workload serves model {m:?}"),
                            )
                        })?;
                        if !(w.is_finite() && w > 0.0) {
                            return Err(bad(
                                &f(&format!("models.{m}")),
                                "weight must be positive".into(),
                            ));
                        }
                        weighted_models.push((idx, w));
                    }
                }
                _ => {
                    return Err(bad(
                        &f("model"),
                        "give exactly one of `model = \"id\"` or `models = { id = weight, ... }`"
                            .into(),
                    ));
                }
            }
            let mut origins = Vec::new();
            for (r, &w) in &l.origins {
                let idx = region_index(r).ok_or_else(|| {
                    bad(
                        &f(&format!("origins.{r}")),
                        format!(
                            "region {r:?} has no cluster; known regions: {}",
                            regions.join(", ")
                        ),
                    )
                })?;
                if !(w.is_finite() && w > 0.0) {
                    return Err(bad(
                        &f(&format!("origins.{r}")),
                        "weight must be positive".into(),
                    ));
                }
                origins.push((idx, w));
            }
            if origins.is_empty() {
                // Requests come from every region alike.
                origins = (0..regions.len()).map(|r| (r, 1.0)).collect();
            }
            let start = l.start.map_or(0, Dur::micros);
            let end = l.end.map_or(duration, Dur::micros).min(duration);
            if end <= start {
                return Err(bad(
                    &f("end"),
                    "must be after start (and within duration)".into(),
                ));
            }
            let sources = [
                l.synthetic.is_some(),
                l.trace.is_some(),
                l.requests.is_some(),
            ];
            if sources.iter().filter(|x| **x).count() != 1 {
                return Err(bad(
                    &f("synthetic"),
                    "give exactly one of [load.synthetic], [load.trace] or load.requests".into(),
                ));
            }
            let source = if let Some(s) = &l.synthetic {
                if !(s.rate.is_finite() && s.rate > 0.0) {
                    return Err(bad(
                        &f("synthetic.rate"),
                        "must be a positive number of requests per second".into(),
                    ));
                }
                let burst_factor = s.burst_factor.unwrap_or(4.0);
                if !(burst_factor.is_finite() && burst_factor >= 1.0) {
                    return Err(bad(
                        &f("synthetic.burst_factor"),
                        "must be at least 1".into(),
                    ));
                }
                let burst_duration = s.burst_duration.map_or(30 * MICROS_PER_SEC, Dur::micros);
                let burst_every = s.burst_every.map_or(300 * MICROS_PER_SEC, Dur::micros);
                if s.arrival == Arrival::Bursty && (burst_duration == 0 || burst_every == 0) {
                    return Err(bad(
                        &f("synthetic.burst_duration"),
                        "bursts need positive durations".into(),
                    ));
                }
                let length = |name: &str, r: RawLength| {
                    if !(r.median.is_finite() && r.median >= 1.0) {
                        return Err(bad(
                            &f(&format!("synthetic.{name}.median")),
                            "must be at least 1".into(),
                        ));
                    }
                    if !(r.sigma.is_finite() && (0.0..=4.0).contains(&r.sigma)) {
                        return Err(bad(
                            &f(&format!("synthetic.{name}.sigma")),
                            "must be between 0 and 4".into(),
                        ));
                    }
                    Ok(LengthDist {
                        median: r.median,
                        sigma: r.sigma,
                        max: r.max.unwrap_or(32_768).max(1),
                    })
                };
                LoadSource::Synthetic {
                    rate: s.rate,
                    arrival: s.arrival,
                    burst_factor,
                    burst_duration,
                    burst_every,
                    prompt: length("prompt", s.prompt)?,
                    output: length("output", s.output)?,
                }
            } else if let Some(t) = &l.trace {
                let rate_scale = t.rate_scale.unwrap_or(1.0);
                if !(rate_scale.is_finite() && rate_scale > 0.0) {
                    return Err(bad(
                        &f("trace.rate_scale"),
                        "must be a positive number".into(),
                    ));
                }
                let trace_path = base_dir.join(&t.path);
                let mut requests = read_trace(&trace_path)?;
                if let Some(limit) = t.limit {
                    requests.truncate(limit);
                }
                if !traces.contains(&trace_path) {
                    traces.push(trace_path.clone());
                }
                LoadSource::Trace {
                    path: trace_path,
                    requests: Arc::new(requests),
                    rate_scale,
                }
            } else {
                let mut list = Vec::new();
                for (k, r) in l.requests.iter().flatten().enumerate() {
                    let g = |x: &str| f(&format!("requests[{k}].{x}"));
                    let origin = region_index(&r.origin).ok_or_else(|| {
                        bad(
                            &g("origin"),
                            format!("region {:?} has no cluster", r.origin),
                        )
                    })?;
                    let model = match &r.model {
                        Some(m) => Some(served(m).ok_or_else(|| {
                            bad(&g("model"), format!("no workload serves model {m:?}"))
                        })?),
                        None => None,
                    };
                    if r.prompt == 0 || r.output == 0 {
                        return Err(bad(
                            &g("prompt"),
                            "prompt and output need at least one token".into(),
                        ));
                    }
                    list.push((r.at.micros(), r.prompt, r.output, origin, model));
                }
                list.sort_by_key(|x| x.0);
                LoadSource::List(list)
            };
            loads.push(LoadDef {
                models: weighted_models,
                origins,
                start,
                end,
                source,
            });
        }

        // Capacity events.
        let mut events = Vec::new();
        for (i, e) in raw.events.iter().enumerate() {
            let f = |x: &str| format!("events[{i}].{x}");
            let cluster = cluster_index(&e.cluster).ok_or_else(|| {
                bad(
                    &f("cluster"),
                    format!("cluster {:?} is not among [[clusters]]", e.cluster),
                )
            })?;
            if let Some(g) = &e.gpu_model
                && !gpu_models_seen.contains(g)
                && e.kind != EventKind::Add
            {
                return Err(bad(
                    &f("gpu_model"),
                    format!("no cluster has GPU model {g:?}"),
                ));
            }
            if e.kind == EventKind::Add {
                let Some(g) = &e.gpu_model else {
                    return Err(bad(
                        &f("gpu_model"),
                        "an `add` event needs the model of the GPUs it adds".into(),
                    ));
                };
                if e.gpus.unwrap_or(0) == 0 {
                    return Err(bad(
                        &f("gpus"),
                        "an `add` event needs a number of GPUs".into(),
                    ));
                }
                for w in &workloads {
                    let accepts =
                        w.workload.gpu.models.is_empty() || w.workload.gpu.models.contains(g);
                    if accepts && !models[w.model].perf.contains_key(g) {
                        return Err(bad(
                            &f("gpu_model"),
                            format!(
                                "workload {:?} may run on {g} but model {:?} has no perf.{g}",
                                w.workload.name, models[w.model].id
                            ),
                        ));
                    }
                }
            }
            if e.at.micros() > duration {
                return Err(bad(
                    &f("at"),
                    format!("is after the end of the scenario ({})", Dur(duration)),
                ));
            }
            let grace = e.grace.map(Dur::micros).unwrap_or(match e.kind {
                EventKind::SpotPreemption => 30 * MICROS_PER_SEC,
                EventKind::Reclaim => 120 * MICROS_PER_SEC,
                _ => 0,
            });
            events.push(CapacityEvent {
                at: e.at.micros(),
                cluster,
                kind: e.kind,
                gpus: e.gpus,
                gpu_model: e.gpu_model.clone(),
                grace,
            });
        }
        events.sort_by_key(|e| e.at);

        // Policies: the three reference policies unless the file lists its own.
        let mut policies = Vec::new();
        let raw_policies = if raw.policies.is_empty() {
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
        } else {
            raw.policies
        };
        for (i, p) in raw_policies.iter().enumerate() {
            let f = |x: &str| format!("policies[{i}].{x}");
            if p.name.trim().is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(bad(
                    &f("name"),
                    "use letters, digits, '-', '_' or '.' (it names output files)".into(),
                ));
            }
            if policies.iter().any(|x: &PolicyDef| x.name == p.name) {
                return Err(bad(
                    &f("name"),
                    format!("policy {:?} is listed twice", p.name),
                ));
            }
            let mut settings = base.clone();
            p.settings.apply_to(&mut settings);
            settings
                .validate()
                .map_err(|e| bad(&f(&format!("settings.{}", e.field)), e.message))?;
            let tick = p.tick.map_or(tick, Dur::micros);
            if tick == 0 {
                return Err(bad(&f("tick"), "must be greater than 0".into()));
            }
            policies.push(PolicyDef {
                name: p.name.clone(),
                kind: p.kind,
                settings,
                tick,
            });
        }

        Ok(Scenario {
            path: path.to_owned(),
            name: raw.name,
            description: raw.description,
            seed: raw.seed,
            duration,
            sample_interval,
            request_timeout,
            heartbeat_interval,
            regions,
            rtt,
            clusters,
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
