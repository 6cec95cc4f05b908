//! Flotilla's node agent: it reads the node's GPUs and decides when what it sees is
//! worth telling the registry.
//!
//! - [`gpu`]: the [`gpu::GpuSource`] trait, its NVML and simulated
//!   implementations, and the conformance suite both pass.
//! - [`change`]: the pure decision of when a capacity report becomes a registry write,
//!   and when only a lease heartbeat is due.
//!
//! **What it must not do:** decide placements (that is `flotilla-core`'s scheduler),
//! or fall back silently from NVML to anything else: a node that cannot read its GPUs
//! says so.

pub mod change;
mod error;
pub mod gpu;

pub use error::{AgentError, NVML_LIBRARY};
