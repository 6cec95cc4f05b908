//! A simulated GPU fleet: nodes and devices described in a TOML file, changeable
//! while the agent runs.
//!
//! The file is the baseline; [`SimulatedFleet::set`] lays changes on top of it (take a
//! GPU away, fail it, give it back) the way an operator's `flotilla ctl gpus set`
//! will through the agent's admin endpoint. Changes survive edits of the file, since
//! they describe the world and the file describes the hardware; `Reset` removes them.
//!
//! ```toml
//! [[nodes]]
//! name = "gpu"                 # with `count = 4`: gpu-0 … gpu-3
//! count = 4
//!
//! [[nodes.devices]]
//! model = "NVIDIA H100 80GB HBM3"
//! memory_mib = 81920
//! count = 8                    # eight such GPUs, indices in order
//! memory_used_mib = 0          # optional, as are the fields below
//! utilization_pct = 0
//! healthy = true
//! claimed_by_other = false
//!
//! [[nodes.devices]]
//! model = "NVIDIA A100-SXM4-80GB"
//! memory_mib = 81920
//! mig = [{ profile = "3g.40gb" }, { profile = "3g.40gb", claimed_by_other = true }]
//! ```
//!
//! UUIDs are `GPU-sim-<node>-<index>` and `MIG-sim-<node>-<index>-<n>` unless a
//! single device names its own `uuid`. An instance's memory defaults to the number
//! in its profile name (`40gb` → 40960 MiB).

use super::GpuSource;
use super::sample::{
    DeviceSample, Health, Memory, Mig, MigInstance, NodeSample, Snapshot, Utilization,
};
use crate::AgentError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, SystemTime};
use toml::Spanned;

/// A change to one simulated device. Serializable, so an admin endpoint can take it
/// as JSON (`{"change": "fail", "reason": "Xid 79"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceChange {
    /// The GPU reports a critical error: unhealthy until `Recover` or `Reset`.
    Fail { reason: String },
    /// The GPU falls off the bus: lost until `Recover` or `Reset`.
    Detach,
    /// Health goes back to what the file says.
    Recover,
    /// Another tenant takes the device (a GPU or one MIG instance).
    Claim,
    /// The other tenant gives it back.
    Release,
    /// Memory in use and utilisation, as a workload outside Flotilla would cause.
    Usage {
        memory_used_mib: u64,
        #[serde(default)]
        utilization_pct: u32,
    },
    /// Every change to this device is dropped: the file rules again.
    Reset,
}

/// A fleet whose devices tests and operators can change while sources read it.
/// Cloning gives another handle to the same fleet.
#[derive(Debug, Clone)]
pub struct SimulatedFleet {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Modification time and length of the file when last read, to notice edits.
    stamp: Option<(SystemTime, u64)>,
    nodes: Vec<NodeSpec>,
    /// By UUID (GPU or MIG instance).
    changes: BTreeMap<String, Changes>,
    /// Devices that left the file, as they last looked, by node: reported lost.
    departed: BTreeMap<String, BTreeMap<String, DeviceSample>>,
    last_reload_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Changes {
    health: Option<Health>,
    claimed: Option<bool>,
    usage: Option<(u64, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
struct NodeSpec {
    name: String,
    devices: Vec<DeviceSpec>,
}

#[derive(Debug, Clone, PartialEq)]
struct DeviceSpec {
    index: u32,
    uuid: String,
    model: String,
    memory_mib: u64,
    memory_used_mib: u64,
    utilization_pct: u32,
    healthy: bool,
    claimed_by_other: bool,
    mig: Option<Vec<InstanceSpec>>,
}

#[derive(Debug, Clone, PartialEq)]
struct InstanceSpec {
    uuid: String,
    profile: String,
    memory_mib: u64,
    memory_used_mib: u64,
    claimed_by_other: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    count: Option<u32>,
    #[serde(default)]
    devices: Vec<Spanned<RawDevice>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    model: String,
    memory_mib: u64,
    #[serde(default = "one")]
    count: u32,
    uuid: Option<String>,
    #[serde(default)]
    memory_used_mib: u64,
    #[serde(default)]
    utilization_pct: u32,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default)]
    claimed_by_other: bool,
    mig: Option<Vec<RawInstance>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    profile: String,
    memory_mib: Option<u64>,
    #[serde(default)]
    memory_used_mib: u64,
    #[serde(default)]
    claimed_by_other: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl SimulatedFleet {
    /// Reads a fleet file. Later edits are picked up by [`SimulatedFleet::reload_if_changed`]
    /// or a [`SimulatedFleet::watch`] thread.
    pub fn load(path: impl AsRef<Path>) -> Result<SimulatedFleet, AgentError> {
        let path = path.as_ref().to_owned();
        let (text, stamp) = read(&path)?;
        let nodes = parse(&path, &text)?;
        Ok(SimulatedFleet::with(path, Some(stamp), nodes))
    }

    /// A fleet from TOML text; `name` stands for the file in errors. Nothing is
    /// watched.
    pub fn from_toml(name: impl Into<PathBuf>, text: &str) -> Result<SimulatedFleet, AgentError> {
        let path = name.into();
        let nodes = parse(&path, text)?;
        Ok(SimulatedFleet::with(path, None, nodes))
    }

    fn with(
        path: PathBuf,
        stamp: Option<(SystemTime, u64)>,
        nodes: Vec<NodeSpec>,
    ) -> SimulatedFleet {
        SimulatedFleet {
            inner: Arc::new(Mutex::new(Inner {
                path,
                stamp,
                nodes,
                changes: BTreeMap::new(),
                departed: BTreeMap::new(),
                last_reload_error: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes one device. `device` is a GPU's index on the node, a GPU UUID or a
    /// MIG instance UUID. Returns the node as it looks after the change.
    pub fn set(
        &self,
        node: &str,
        device: &str,
        change: DeviceChange,
    ) -> Result<NodeSample, AgentError> {
        let mut inner = self.lock();
        let Some(spec) = inner.nodes.iter().find(|n| n.name == node) else {
            return Err(AgentError::UnknownNode {
                node: node.to_owned(),
                known: inner.nodes.iter().map(|n| n.name.clone()).collect(),
            });
        };
        let target = find_device(spec, device).ok_or_else(|| AgentError::UnknownDevice {
            node: node.to_owned(),
            device: device.to_owned(),
            known: spec
                .devices
                .iter()
                .map(|d| format!("{} ({})", d.index, d.uuid))
                .collect(),
        })?;
        let invalid = |message: String| AgentError::InvalidChange {
            node: node.to_owned(),
            device: device.to_owned(),
            message,
        };
        let (uuid, is_instance, total) = match target {
            Target::Gpu(d) => (d.uuid.clone(), false, d.memory_mib),
            Target::Instance(i) => (i.uuid.clone(), true, i.memory_mib),
        };
        let gpu_has_mig = matches!(target, Target::Gpu(d) if d.mig.is_some());
        let mut changes = inner.changes.get(&uuid).cloned().unwrap_or_default();
        match change {
            DeviceChange::Fail { .. } | DeviceChange::Detach | DeviceChange::Recover
                if is_instance =>
            {
                return Err(invalid(
                    "health belongs to the whole GPU; name the GPU, not one of its MIG instances"
                        .into(),
                ));
            }
            DeviceChange::Fail { reason } => changes.health = Some(Health::Unhealthy { reason }),
            DeviceChange::Detach => {
                changes.health = Some(Health::Lost {
                    reason: "detached through the simulated fleet".into(),
                });
            }
            DeviceChange::Recover => changes.health = None,
            DeviceChange::Claim => changes.claimed = Some(true),
            DeviceChange::Release => changes.claimed = Some(false),
            DeviceChange::Usage {
                memory_used_mib,
                utilization_pct,
            } => {
                if gpu_has_mig {
                    return Err(invalid(
                        "a MIG-enabled GPU's memory is its instances'; set usage on an instance"
                            .into(),
                    ));
                }
                if memory_used_mib > total {
                    return Err(invalid(format!(
                        "memory_used_mib ({memory_used_mib}) exceeds the device's {total} MiB"
                    )));
                }
                if utilization_pct > 100 {
                    return Err(invalid(format!(
                        "utilization_pct ({utilization_pct}) exceeds 100"
                    )));
                }
                if is_instance && utilization_pct != 0 {
                    return Err(invalid(
                        "MIG instances report no utilisation of their own; leave utilization_pct out".into(),
                    ));
                }
                changes.usage = Some((memory_used_mib, utilization_pct));
            }
            DeviceChange::Reset => changes = Changes::default(),
        }
        if changes == Changes::default() {
            inner.changes.remove(&uuid);
        } else {
            inner.changes.insert(uuid, changes);
        }
        inner
            .node_sample(node)
            .ok_or_else(|| AgentError::UnknownNode {
                node: node.to_owned(),
                known: Vec::new(),
            })
    }

    /// Re-reads the file if its modification time or length changed. `Ok(true)` when
    /// the fleet was reloaded. A bad edit leaves the fleet as it was, is remembered in
    /// [`SimulatedFleet::last_reload_error`], and is reported once per edit.
    pub fn reload_if_changed(&self) -> Result<bool, AgentError> {
        let path = self.lock().path.clone();
        let (text, stamp) = read(&path)?;
        if self.lock().stamp == Some(stamp) {
            return Ok(false);
        }
        let parsed = parse(&path, &text);
        let mut inner = self.lock();
        inner.stamp = Some(stamp);
        match parsed {
            Ok(nodes) => {
                inner.replace(nodes);
                inner.last_reload_error = None;
                Ok(true)
            }
            Err(err) => {
                inner.last_reload_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Why the last edit of the file was not taken, if it was not.
    pub fn last_reload_error(&self) -> Option<String> {
        self.lock().last_reload_error.clone()
    }

    /// Polls the file's modification time every `interval` on a thread of its own
    /// until the returned guard is stopped or dropped.
    pub fn watch(&self, interval: Duration) -> FleetWatcher {
        let (stop, stopped) = mpsc::channel::<()>();
        let fleet = self.clone();
        let thread = std::thread::Builder::new()
            .name("flotilla-fleet-watch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    // The error is kept in `last_reload_error`; a bad edit must not
                    // stop the watch, or fixing the file would go unnoticed.
                    let _ = fleet.reload_if_changed();
                }
            });
        FleetWatcher {
            stop: Some(stop),
            thread: thread.ok(),
        }
    }

    /// A source that sees one node of this fleet, as one agent would.
    pub fn node(&self, name: &str) -> Result<SimulatedNode, AgentError> {
        let inner = self.lock();
        if !inner.nodes.iter().any(|n| n.name == name) {
            return Err(AgentError::UnknownNode {
                node: name.to_owned(),
                known: inner.nodes.iter().map(|n| n.name.clone()).collect(),
            });
        }
        Ok(SimulatedNode {
            fleet: self.clone(),
            name: name.to_owned(),
        })
    }

    /// The names of the fleet's nodes, in file order.
    pub fn node_names(&self) -> Vec<String> {
        self.lock().nodes.iter().map(|n| n.name.clone()).collect()
    }
}

impl GpuSource for SimulatedFleet {
    fn snapshot(&self) -> Result<Snapshot, AgentError> {
        let inner = self.lock();
        let mut names: Vec<String> = inner.nodes.iter().map(|n| n.name.clone()).collect();
        names.extend(
            inner
                .departed
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        Ok(Snapshot {
            nodes: names.iter().filter_map(|n| inner.node_sample(n)).collect(),
        })
    }

    fn kind(&self) -> &'static str {
        "simulated"
    }
}

/// One node of a [`SimulatedFleet`].
#[derive(Debug, Clone)]
pub struct SimulatedNode {
    fleet: SimulatedFleet,
    name: String,
}

impl GpuSource for SimulatedNode {
    fn snapshot(&self) -> Result<Snapshot, AgentError> {
        Ok(Snapshot {
            nodes: self
                .fleet
                .lock()
                .node_sample(&self.name)
                .into_iter()
                .collect(),
        })
    }

    fn kind(&self) -> &'static str {
        "simulated"
    }
}

/// Stops the watch thread when stopped or dropped; the thread never outlives it.
#[derive(Debug)]
pub struct FleetWatcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FleetWatcher {
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FleetWatcher {
    fn drop(&mut self) {
        self.shut();
    }
}

enum Target<'a> {
    Gpu(&'a DeviceSpec),
    Instance(&'a InstanceSpec),
}

fn find_device<'a>(node: &'a NodeSpec, device: &str) -> Option<Target<'a>> {
    let by_index = device.parse::<u32>().ok();
    for d in &node.devices {
        if Some(d.index) == by_index || d.uuid == device {
            return Some(Target::Gpu(d));
        }
        if let Some(i) = d.mig.iter().flatten().find(|i| i.uuid == device) {
            return Some(Target::Instance(i));
        }
    }
    None
}

impl Inner {
    fn node_sample(&self, name: &str) -> Option<NodeSample> {
        let spec = self.nodes.iter().find(|n| n.name == name);
        let departed = self.departed.get(name);
        if spec.is_none() && departed.is_none() {
            return None;
        }
        let mut devices: Vec<DeviceSample> = spec
            .map(|s| s.devices.iter().map(|d| self.device_sample(d)).collect())
            .unwrap_or_default();
        devices.extend(departed.into_iter().flat_map(|d| d.values().cloned()));
        devices.sort_by(|a, b| (a.index, &a.uuid).cmp(&(b.index, &b.uuid)));
        Some(NodeSample {
            name: name.to_owned(),
            devices,
        })
    }

    fn device_sample(&self, d: &DeviceSpec) -> DeviceSample {
        let changes = self.changes.get(&d.uuid).cloned().unwrap_or_default();
        let base_health = if d.healthy {
            Health::Healthy
        } else {
            Health::Unhealthy {
                reason: format!("marked unhealthy in {}", self.path.display()),
            }
        };
        let (mig, memory, utilization) = match &d.mig {
            None => {
                let (used, util) = changes
                    .usage
                    .unwrap_or((d.memory_used_mib, d.utilization_pct));
                let utilization = Utilization {
                    gpu_pct: util,
                    memory_pct: percent(used, d.memory_mib),
                };
                (
                    Mig::Disabled,
                    Memory::with_used(d.memory_mib, used),
                    Some(utilization),
                )
            }
            Some(instances) => {
                let instances: Vec<MigInstance> = instances
                    .iter()
                    .map(|i| {
                        let c = self.changes.get(&i.uuid);
                        let used = c
                            .and_then(|c| c.usage)
                            .map_or(i.memory_used_mib, |(m, _)| m);
                        MigInstance {
                            uuid: i.uuid.clone(),
                            profile: i.profile.clone(),
                            gpu_instance_id: None,
                            compute_instance_id: None,
                            memory: Memory::with_used(i.memory_mib, used),
                            claimed_by_other: c
                                .and_then(|c| c.claimed)
                                .unwrap_or(i.claimed_by_other),
                        }
                    })
                    .collect();
                let used = instances.iter().map(|i| i.memory.used_mib).sum();
                (
                    Mig::Enabled { instances },
                    Memory::with_used(d.memory_mib, used),
                    None,
                )
            }
        };
        let health = changes.health.unwrap_or(base_health);
        let lost = matches!(health, Health::Lost { .. });
        DeviceSample {
            index: d.index,
            uuid: d.uuid.clone(),
            model: d.model.clone(),
            memory,
            // A lost device answers no query: only what is known of it stays.
            utilization: if lost { None } else { utilization },
            mig,
            temperature_c: None,
            power_mw: None,
            health,
            processes: if lost { None } else { Some(Vec::new()) },
            claimed_by_other: changes.claimed.unwrap_or(d.claimed_by_other),
        }
    }

    /// Takes a new file's nodes; devices that left it are kept, lost.
    fn replace(&mut self, nodes: Vec<NodeSpec>) {
        let still_there = |node: &str, uuid: &str| {
            nodes
                .iter()
                .any(|n| n.name == node && n.devices.iter().any(|d| d.uuid == uuid))
        };
        let mut leaving = Vec::new();
        for old in &self.nodes {
            for d in old
                .devices
                .iter()
                .filter(|d| !still_there(&old.name, &d.uuid))
            {
                let mut sample = self.device_sample(d);
                sample.health = Health::Lost {
                    reason: format!("no longer in {}", self.path.display()),
                };
                sample.utilization = None;
                sample.processes = None;
                leaving.push((old.name.clone(), sample));
            }
        }
        for (node, sample) in leaving {
            self.departed
                .entry(node)
                .or_default()
                .insert(sample.uuid.clone(), sample);
        }
        for (node, devices) in &mut self.departed {
            devices.retain(|uuid, _| !still_there(node, uuid));
        }
        self.departed.retain(|_, devices| !devices.is_empty());
        self.nodes = nodes;
    }
}

fn percent(part: u64, whole: u64) -> u32 {
    part.saturating_mul(100)
        .checked_div(whole)
        .map_or(0, |p| u32::try_from(p).unwrap_or(100))
}

fn read(path: &Path) -> Result<(String, (SystemTime, u64)), AgentError> {
    let err = |source| AgentError::FleetRead {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let stamp = (meta.modified().map_err(err)?, meta.len());
    let text = std::fs::read_to_string(path).map_err(err)?;
    Ok((text, stamp))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Parses and checks a fleet file. Errors name the file, the line and the field.
fn parse(path: &Path, text: &str) -> Result<Vec<NodeSpec>, AgentError> {
    let raw: RawFleet = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let message = e.message().trim_end().to_owned();
        // serde names the field in the message for missing and unknown fields; for a
        // wrong type the key is on the offending line.
        let field = between_backticks(&message)
            .or_else(|| {
                let l = line?;
                let src = text.lines().nth(l - 1)?;
                let key = src.split('=').next()?.trim();
                (src.contains('=') && !key.is_empty()).then(|| key.to_owned())
            })
            .unwrap_or_else(|| "(document)".to_owned());
        AgentError::FleetFile {
            path: path.to_owned(),
            line,
            field,
            message,
        }
    })?;
    let mut nodes: Vec<NodeSpec> = Vec::new();
    let mut uuids: BTreeMap<String, String> = BTreeMap::new();
    for (n, raw_node) in raw.nodes.into_iter().enumerate() {
        let line = Some(line_of(text, raw_node.span().start));
        let node = raw_node.into_inner();
        let bad = |field: String, message: String| AgentError::FleetFile {
            path: path.to_owned(),
            line,
            field,
            message,
        };
        if let Err(message) = check_name(&node.name) {
            return Err(bad(format!("nodes[{n}].name"), message));
        }
        let names: Vec<String> = match node.count {
            None => vec![node.name.clone()],
            Some(0) => {
                return Err(bad(
                    format!("nodes[{n}].count"),
                    "must be at least 1".into(),
                ));
            }
            Some(count) => (0..count).map(|i| format!("{}-{i}", node.name)).collect(),
        };
        let mut devices = Vec::new();
        let mut next_index = 0u32;
        for (j, raw_device) in node.devices.into_iter().enumerate() {
            let line = Some(line_of(text, raw_device.span().start));
            let d = raw_device.into_inner();
            let field = |f: &str| format!("nodes[{n}].devices[{j}].{f}");
            let bad = |f: &str, message: String| AgentError::FleetFile {
                path: path.to_owned(),
                line,
                field: field(f),
                message,
            };
            if d.model.trim().is_empty() || d.model.chars().any(char::is_control) {
                return Err(bad(
                    "model",
                    "must be a product name such as \"NVIDIA H100 80GB HBM3\"".into(),
                ));
            }
            if d.memory_mib == 0 {
                return Err(bad("memory_mib", "must be greater than 0".into()));
            }
            if d.count == 0 {
                return Err(bad("count", "must be at least 1".into()));
            }
            if d.uuid.is_some() && (d.count > 1 || names.len() > 1) {
                return Err(bad(
                    "uuid",
                    "only a single device on a single node can name its UUID; leave it out to get generated ones".into(),
                ));
            }
            if d.memory_used_mib > d.memory_mib {
                return Err(bad(
                    "memory_used_mib",
                    format!(
                        "({}) exceeds memory_mib ({})",
                        d.memory_used_mib, d.memory_mib
                    ),
                ));
            }
            if d.utilization_pct > 100 {
                return Err(bad(
                    "utilization_pct",
                    format!("({}) exceeds 100", d.utilization_pct),
                ));
            }
            let mut instances = Vec::new();
            if let Some(mig) = &d.mig {
                if d.memory_used_mib > 0 || d.utilization_pct > 0 {
                    return Err(bad(
                        "mig",
                        "a MIG-enabled GPU's memory and utilisation are its instances'; set memory_used_mib on the instances".into(),
                    ));
                }
                for (k, i) in mig.iter().enumerate() {
                    let f = |x: &str| format!("mig[{k}].{x}");
                    let memory = match i.memory_mib {
                        Some(m) => m,
                        None => profile_memory_mib(&i.profile).ok_or_else(|| {
                            bad(
                                &f("profile"),
                                format!(
                                    "{:?} is not a MIG profile like \"1g.10gb\"; name one, or give memory_mib",
                                    i.profile
                                ),
                            )
                        })?,
                    };
                    if memory == 0 {
                        return Err(bad(&f("memory_mib"), "must be greater than 0".into()));
                    }
                    if i.memory_used_mib > memory {
                        return Err(bad(
                            &f("memory_used_mib"),
                            format!(
                                "({}) exceeds the instance's {memory} MiB",
                                i.memory_used_mib
                            ),
                        ));
                    }
                    instances.push((i.clone(), memory));
                }
                let sum: u64 = instances.iter().map(|(_, m)| m).sum();
                if sum > d.memory_mib {
                    return Err(bad(
                        "mig",
                        format!(
                            "the instances need {sum} MiB but the GPU has {} MiB; give each instance its memory_mib",
                            d.memory_mib
                        ),
                    ));
                }
            }
            for _ in 0..d.count {
                devices.push((next_index, d.clone(), line, j, instances.clone()));
                next_index += 1;
            }
        }
        for name in names {
            if nodes.iter().any(|x| x.name == name) {
                return Err(bad(
                    format!("nodes[{n}].name"),
                    format!("node {name:?} appears twice"),
                ));
            }
            let mut specs = Vec::new();
            for (index, d, line, j, instances) in &devices {
                let uuid = d
                    .uuid
                    .clone()
                    .unwrap_or_else(|| format!("GPU-sim-{name}-{index}"));
                let mig = (d.mig.is_some()).then(|| {
                    instances
                        .iter()
                        .enumerate()
                        .map(|(k, (i, memory))| InstanceSpec {
                            uuid: format!("MIG-sim-{name}-{index}-{k}"),
                            profile: i.profile.clone(),
                            memory_mib: *memory,
                            memory_used_mib: i.memory_used_mib,
                            claimed_by_other: i.claimed_by_other,
                        })
                        .collect::<Vec<_>>()
                });
                let spec = DeviceSpec {
                    index: *index,
                    uuid,
                    model: d.model.clone(),
                    memory_mib: d.memory_mib,
                    memory_used_mib: d.memory_used_mib,
                    utilization_pct: d.utilization_pct,
                    healthy: d.healthy,
                    claimed_by_other: d.claimed_by_other,
                    mig,
                };
                let all =
                    std::iter::once(&spec.uuid).chain(spec.mig.iter().flatten().map(|i| &i.uuid));
                for uuid in all {
                    let here = format!("node {name:?}");
                    if let Some(other) = uuids.insert(uuid.clone(), here) {
                        return Err(AgentError::FleetFile {
                            path: path.to_owned(),
                            line: *line,
                            field: format!("nodes[{n}].devices[{j}].uuid"),
                            message: format!("{uuid:?} is already used on {other}"),
                        });
                    }
                }
                specs.push(spec);
            }
            nodes.push(NodeSpec {
                name,
                devices: specs,
            });
        }
    }
    Ok(nodes)
}

fn between_backticks(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message.get(start..)?.find('`')?;
    message.get(start..start + len).map(str::to_owned)
}

/// Node names end up in registry keys and metric labels: DNS-label rules.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a node name: 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// `3g.40gb` → 40960 MiB; `1g.10gb+me` → 10240 MiB.
fn profile_memory_mib(profile: &str) -> Option<u64> {
    let (_, memory) = profile.split_once('.')?;
    let digits = memory
        .strip_suffix("gb")
        .or_else(|| memory.split_once("gb").map(|(d, _)| d))?;
    digits
        .parse::<u64>()
        .ok()
        .filter(|g| *g > 0)
        .map(|g| g * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_give_instance_memory() {
        assert_eq!(profile_memory_mib("1g.10gb"), Some(10240));
        assert_eq!(profile_memory_mib("3g.40gb"), Some(40960));
        assert_eq!(profile_memory_mib("1g.10gb+me"), Some(10240));
        assert_eq!(profile_memory_mib("big"), None);
        assert_eq!(profile_memory_mib("1g.0gb"), None);
    }

    #[test]
    fn node_names_follow_dns_label_rules() {
        assert!(check_name("gpu-a-0").is_ok());
        assert!(check_name("Gpu").is_err());
        assert!(check_name("-a").is_err());
        assert!(check_name("").is_err());
    }
}
