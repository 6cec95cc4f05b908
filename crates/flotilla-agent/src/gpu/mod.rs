//! Where the agent learns what GPUs its node has.
//!
//! [`GpuSource`] is the boundary: [`nvml::NvmlSource`] reads real devices,
//! [`simulated::SimulatedFleet`] describes a fleet in a file that tests and
//! single-machine setups can change at run time, and [`conformance`] holds the
//! checks both must pass.

pub mod conformance;
pub mod nvml;
pub mod sample;
pub mod simulated;

pub use sample::{
    DeviceSample, GpuProcess, Health, Memory, Mig, MigInstance, NodeSample, Snapshot, Utilization,
};

use crate::AgentError;

/// A view of a node's GPUs.
///
/// Synchronous on purpose: NVML is a blocking C library whose calls take
/// microseconds to a few milliseconds, and the simulated fleet is memory behind a
/// lock. An async trait would add boxing (or `async-trait`) and would still have to
/// hide the blocking calls; instead the caller decides where blocking is allowed (a
/// dedicated thread, or `tokio::task::spawn_blocking` once per sample interval).
/// It also keeps the trait object-safe, so the agent holds a `Box<dyn GpuSource>`
/// chosen by `--gpu-source`.
pub trait GpuSource: Send + Sync + std::fmt::Debug {
    /// What the devices look like now. Fails only when nothing can be said about
    /// the node at all; a device that fails a query is reported unhealthy instead.
    fn snapshot(&self) -> Result<Snapshot, AgentError>;

    /// A short name for logs and errors: `nvml`, `simulated`.
    fn kind(&self) -> &'static str;
}
