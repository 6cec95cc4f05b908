//! The node's real GPUs, read through NVML (`libnvidia-ml.so.1`, loaded at run time).
//!
//! - Devices are enumerated once, when the source starts; every later snapshot
//!   reports each of them, so a GPU that stops answering is reported (lost or
//!   unhealthy, with what it last said) rather than missing.
//! - Health: a thread waits on an NVML event set for critical Xid errors where the
//!   driver supports it; a critical Xid marks the GPU unhealthy until the agent
//!   restarts (the GPU needs a reset either way). Xids that an application causes
//!   (13, 31, 43, 45, 68, 109), as NVIDIA's Kubernetes device plugin also holds, do
//!   not. Without event support, a failed query marks the GPU unhealthy.
//! - Optional readings (temperature, power, utilisation, processes) are `None`
//!   where the device does not support them or the agent may not read them.
//! - MIG: instances are listed with their profile (from the instance's name) and
//!   memory. The safe NVML bindings do not expose GPU and compute instance ids, so
//!   those are `None`.
//! - `claimed_by_other` is `false`: telling Flotilla's processes from others' needs
//!   the materializer's process list, which does not exist yet.

use super::GpuSource;
use super::sample::{
    DeviceSample, GpuProcess, Health, Memory, Mig, MigInstance, NodeSample, Snapshot, Utilization,
};
use crate::{AgentError, NVML_LIBRARY};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

/// How a [`NvmlSource`] starts.
#[derive(Debug, Clone)]
pub struct NvmlOptions {
    /// The node's name in reports.
    pub node: String,
    /// Load NVML from this path instead of the loader's search for
    /// [`NVML_LIBRARY`].
    pub library: Option<PathBuf>,
    /// How long the Xid thread waits for an event before checking whether to stop;
    /// bounds how long dropping the source takes.
    pub event_wait: Duration,
}

impl NvmlOptions {
    pub fn new(node: impl Into<String>) -> NvmlOptions {
        NvmlOptions {
            node: node.into(),
            library: None,
            event_wait: Duration::from_millis(500),
        }
    }
}

/// The GPUs NVML sees on this node.
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    node: String,
    /// (index, UUID) of every GPU found at start.
    devices: Vec<(u32, String)>,
    /// The last full reading of each GPU, to report a GPU that stops answering.
    last: Mutex<BTreeMap<String, DeviceSample>>,
    /// Critical Xids seen, by GPU UUID.
    xids: Arc<Mutex<BTreeMap<String, u64>>>,
    events: XidWatch,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("node", &self.node)
            .field("devices", &self.devices)
            .field("xid_events", &self.events.supported)
            .finish_non_exhaustive()
    }
}

impl NvmlSource {
    /// Loads NVML and lists the GPUs. Fails, naming the library, where there is no
    /// driver or no GPU: a GPU node must not quietly report nothing.
    pub fn new(options: NvmlOptions) -> Result<NvmlSource, AgentError> {
        let library = options
            .library
            .as_ref()
            .map_or_else(|| NVML_LIBRARY.to_owned(), |p| p.display().to_string());
        let nvml = match &options.library {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        }
        .map_err(|e| init_error(&library, &e))?;
        let nvml = Arc::new(nvml);
        let count = nvml.device_count().map_err(|e| init_error(&library, &e))?;
        if count == 0 {
            return Err(AgentError::NoGpus);
        }
        let devices: Vec<(u32, String)> = (0..count)
            .map(|i| {
                let uuid = nvml
                    .device_by_index(i)
                    .and_then(|d| d.uuid())
                    // Still listed, so the snapshot shows a GPU is there and broken.
                    .unwrap_or_else(|_| format!("GPU-unreadable-index-{i}"));
                (i, uuid)
            })
            .collect();
        let xids = Arc::new(Mutex::new(BTreeMap::new()));
        let events = XidWatch::start(&nvml, &devices, &xids, options.event_wait);
        Ok(NvmlSource {
            nvml,
            node: options.node,
            devices,
            last: Mutex::new(BTreeMap::new()),
            xids,
            events,
        })
    }

    /// Whether critical Xid events are watched (else only failed queries say a GPU
    /// is unhealthy).
    pub fn xid_events_supported(&self) -> bool {
        self.events.supported
    }

    fn sample(&self, index: u32, uuid: &str) -> DeviceSample {
        let xid = lock(&self.xids).get(uuid).copied();
        let mut sample = match self.nvml.device_by_uuid(uuid) {
            Ok(device) => read_device(&device, index, uuid),
            Err(e) => Err(query_health("device_by_uuid", &e)),
        };
        if let (Ok(s), Some(xid)) = (&mut sample, xid) {
            s.health = Health::Unhealthy {
                reason: format!("critical Xid {xid}"),
            };
        }
        let mut last = lock(&self.last);
        match sample {
            Ok(s) => {
                last.insert(uuid.to_owned(), s.clone());
                s
            }
            Err(health) => {
                let mut s = last
                    .get(uuid)
                    .cloned()
                    .unwrap_or_else(|| unknown(index, uuid));
                s.health = health;
                s.utilization = None;
                s.processes = None;
                s.temperature_c = None;
                s.power_mw = None;
                s
            }
        }
    }
}

impl GpuSource for NvmlSource {
    fn snapshot(&self) -> Result<Snapshot, AgentError> {
        let devices = self
            .devices
            .iter()
            .map(|(i, uuid)| self.sample(*i, uuid))
            .collect();
        Ok(Snapshot {
            nodes: vec![NodeSample {
                name: self.node.clone(),
                devices,
            }],
        })
    }

    fn kind(&self) -> &'static str {
        "nvml"
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A GPU nothing could be read from, not even at start.
fn unknown(index: u32, uuid: &str) -> DeviceSample {
    DeviceSample {
        index,
        uuid: uuid.to_owned(),
        model: "unknown".into(),
        memory: Memory::default(),
        utilization: None,
        mig: Mig::Disabled,
        temperature_c: None,
        power_mw: None,
        health: Health::Lost {
            reason: "never answered".into(),
        },
        processes: None,
        claimed_by_other: false,
    }
}

/// Why NVML could not start, as the agent's error: always naming the library and
/// the way out on a machine without a GPU.
pub(crate) fn init_error(library: &str, e: &NvmlError) -> AgentError {
    let detail = match e {
        NvmlError::LibloadingError(inner) => inner.to_string(),
        other => other.to_string(),
    };
    AgentError::NvmlUnavailable {
        library: library.to_owned(),
        detail,
    }
}

/// What a failed query says about the GPU's health.
pub(crate) fn query_health(operation: &str, e: &NvmlError) -> Health {
    match e {
        NvmlError::GpuLost => Health::Lost {
            reason: format!("NVML {operation}: the GPU has fallen off the bus"),
        },
        NvmlError::ResetRequired => Health::Unhealthy {
            reason: format!("NVML {operation}: the GPU needs a reset"),
        },
        other => Health::Unhealthy {
            reason: format!("NVML {operation} failed: {other}"),
        },
    }
}

/// A reading the device may simply not offer: `Ok(None)` for unsupported or not
/// permitted, `Err` (a health verdict) for anything else.
fn optional<T>(operation: &str, r: Result<T, NvmlError>) -> Result<Option<T>, Health> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported | NvmlError::NoPermission | NvmlError::NotFound) => Ok(None),
        Err(e) => Err(query_health(operation, &e)),
    }
}

/// Xids caused by an application (a bad kernel, a killed context), not the GPU.
pub(crate) fn xid_is_critical(xid: u64) -> bool {
    !matches!(xid, 13 | 31 | 43 | 45 | 68 | 109)
}

/// `NVIDIA A100-SXM4-80GB MIG 3g.40gb` → `3g.40gb`.
pub(crate) fn mig_profile(name: &str) -> Option<&str> {
    let (_, profile) = name.rsplit_once("MIG ")?;
    let profile = profile.trim();
    (!profile.is_empty()).then_some(profile)
}

fn read_device(device: &Device<'_>, index: u32, uuid: &str) -> Result<DeviceSample, Health> {
    let model = device.name().map_err(|e| query_health("name", &e))?;
    let m = device
        .memory_info()
        .map_err(|e| query_health("memory_info", &e))?;
    let memory = Memory::from_bytes(m.total, m.used, m.free);
    let mut health = Health::Healthy;
    let utilization = note(
        &mut health,
        optional("utilization_rates", device.utilization_rates()),
    )
    .map(|u| Utilization {
        gpu_pct: u.gpu,
        memory_pct: u.memory,
    });
    let temperature_c = note(
        &mut health,
        optional("temperature", device.temperature(TemperatureSensor::Gpu)),
    );
    let power_mw = note(&mut health, optional("power_usage", device.power_usage()));
    let processes = note(
        &mut health,
        optional(
            "running_compute_processes",
            device.running_compute_processes(),
        ),
    )
    .map(|ps| {
        ps.into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_mib: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes / (1024 * 1024)),
                    UsedGpuMemory::Unavailable => None,
                },
                gpu_instance_id: p.gpu_instance_id,
            })
            .collect()
    });
    let mig_on =
        note(&mut health, optional("mig_mode", device.mig_mode())).is_some_and(|m| m.current == 1);
    let mig = if mig_on {
        Mig::Enabled {
            instances: note(&mut health, read_instances(device).map(Some)).unwrap_or_default(),
        }
    } else {
        Mig::Disabled
    };
    Ok(DeviceSample {
        index,
        uuid: uuid.to_owned(),
        model,
        memory,
        utilization,
        mig,
        temperature_c,
        power_mw,
        health,
        processes,
        claimed_by_other: false,
    })
}

/// A failed optional reading marks the GPU unhealthy (the first failure names why)
/// but keeps what was read.
fn note<T>(health: &mut Health, reading: Result<Option<T>, Health>) -> Option<T> {
    match reading {
        Ok(v) => v,
        Err(h) => {
            if health.is_healthy() {
                *health = h;
            }
            None
        }
    }
}

fn read_instances(device: &Device<'_>) -> Result<Vec<MigInstance>, Health> {
    let slots = device
        .mig_device_count()
        .map_err(|e| query_health("mig_device_count", &e))?;
    let mut instances = Vec::new();
    for slot in 0..slots {
        // Empty slots answer NotFound: fewer instances than the maximum.
        let Some(mig) = optional("mig_device_by_index", device.mig_device_by_index(slot))? else {
            continue;
        };
        let uuid = mig.uuid().map_err(|e| query_health("MIG uuid", &e))?;
        let name = mig.name().map_err(|e| query_health("MIG name", &e))?;
        let m = mig
            .memory_info()
            .map_err(|e| query_health("MIG memory_info", &e))?;
        instances.push(MigInstance {
            uuid,
            profile: mig_profile(&name).unwrap_or(&name).to_owned(),
            gpu_instance_id: None,
            compute_instance_id: None,
            memory: Memory::from_bytes(m.total, m.used, m.free),
            claimed_by_other: false,
        });
    }
    Ok(instances)
}

/// The thread that waits for critical Xid events. Stopped and joined on drop.
struct XidWatch {
    supported: bool,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl XidWatch {
    fn start(
        nvml: &Arc<Nvml>,
        devices: &[(u32, String)],
        xids: &Arc<Mutex<BTreeMap<String, u64>>>,
        wait: Duration,
    ) -> XidWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, registered) = mpsc::channel::<bool>();
        let (nvml, xids, flag) = (nvml.clone(), xids.clone(), stop.clone());
        let uuids: Vec<String> = devices.iter().map(|(_, u)| u.clone()).collect();
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let thread = std::thread::Builder::new()
            .name("flotilla-nvml-xid".into())
            .spawn(move || {
                let Some(set) = register(&nvml, &uuids) else {
                    let _ = ready.send(false);
                    return;
                };
                let _ = ready.send(true);
                while !flag.load(Ordering::Relaxed) {
                    match set.wait(wait_ms) {
                        Ok(event) => {
                            if let Some(XidError::Value(xid)) = event.event_data
                                && xid_is_critical(xid)
                                && let Ok(uuid) = event.device.uuid()
                            {
                                lock(&xids).entry(uuid).or_insert(xid);
                            }
                        }
                        Err(NvmlError::Timeout) => {}
                        // Anything else (a GPU lost mid-wait): the snapshot's queries
                        // will say so; don't spin.
                        Err(_) => std::thread::sleep(wait),
                    }
                }
            });
        let thread = thread.ok();
        let supported = thread.is_some() && registered.recv().unwrap_or(false);
        XidWatch {
            supported,
            stop,
            thread,
        }
    }
}

/// An event set with every GPU that supports critical-Xid events; `None` when none
/// does. Registering a GPU that refuses releases the whole set, so only GPUs that
/// say they support the event are registered.
fn register<'n>(nvml: &'n Nvml, uuids: &[String]) -> Option<nvml_wrapper::EventSet<'n>> {
    let mut set = nvml.create_event_set().ok()?;
    let mut any = false;
    for uuid in uuids {
        let Ok(device) = nvml.device_by_uuid(uuid.as_str()) else {
            continue;
        };
        let supported = device
            .supported_event_types()
            .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
        if !supported {
            continue;
        }
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                any = true;
            }
            // The set is gone; start again without this GPU.
            Err(_) => {
                let rest: Vec<String> = uuids.iter().filter(|u| *u != uuid).cloned().collect();
                return register(nvml, &rest);
            }
        }
    }
    any.then_some(set)
}

impl Drop for XidWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named_with_the_way_out() {
        let options = NvmlOptions {
            library: Some("/nonexistent/libnvidia-ml.so.1".into()),
            ..NvmlOptions::new("n1")
        };
        let err = NvmlSource::new(options).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AgentError::NvmlUnavailable { .. }), "{err:?}");
        assert!(
            text.starts_with("cannot use NVML: /nonexistent/libnvidia-ml.so.1 could not be loaded or initialised (/nonexistent/libnvidia-ml.so.1: cannot open shared object file"),
            "{text}"
        );
        assert!(text.ends_with("use `--gpu-source simulated`"), "{text}");
        assert!(!err.retryable());
    }

    #[test]
    fn a_driver_that_is_not_loaded_is_named_the_same_way() {
        let err = init_error(NVML_LIBRARY, &NvmlError::DriverNotLoaded);
        assert_eq!(
            err.to_string(),
            "cannot use NVML: libnvidia-ml.so.1 could not be loaded or initialised (NVIDIA driver is not loaded); \
             is the NVIDIA driver installed and are this node's GPUs visible to the agent? \
             On a machine without an NVIDIA GPU, use `--gpu-source simulated`"
        );
    }

    #[test]
    fn failed_queries_decide_health() {
        assert!(matches!(
            query_health("memory_info", &NvmlError::GpuLost),
            Health::Lost { .. }
        ));
        assert_eq!(
            query_health("memory_info", &NvmlError::Unknown),
            Health::Unhealthy {
                reason: "NVML memory_info failed: an internal driver error occurred".into()
            }
        );
        assert_eq!(
            optional::<u32>("power_usage", Err(NvmlError::NotSupported)),
            Ok(None)
        );
        assert_eq!(
            optional::<u32>("processes", Err(NvmlError::NoPermission)),
            Ok(None)
        );
        assert!(optional::<u32>("power_usage", Err(NvmlError::GpuLost)).is_err());
    }

    #[test]
    fn application_xids_do_not_fail_a_gpu_but_hardware_ones_do() {
        for xid in [13, 31, 43, 45, 68, 109] {
            assert!(!xid_is_critical(xid), "Xid {xid}");
        }
        for xid in [48, 63, 64, 74, 79, 92, 94, 95, 119, 120] {
            assert!(xid_is_critical(xid), "Xid {xid}");
        }
    }

    #[test]
    fn mig_profiles_come_from_instance_names() {
        assert_eq!(
            mig_profile("NVIDIA A100-SXM4-80GB MIG 3g.40gb"),
            Some("3g.40gb")
        );
        assert_eq!(
            mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me"),
            Some("1g.10gb+me")
        );
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3"), None);
    }
}
