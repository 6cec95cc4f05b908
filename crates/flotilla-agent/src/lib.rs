//! Flotilla's node agent: it reads the node's GPUs and decides when what it sees is
//! worth telling the registry.
//!
//! - [`gpu`]: the [`gpu::GpuSource`] trait, its NVML and simulated
//!   implementations, and the conformance suite both pass.
//! - [`change`]: the pure decision of when a capacity report becomes a registry write,
//!   and when only a lease heartbeat is due.
//! - [`report`]: the loop that samples the source and writes what is worth writing.
//! - [`admin`]: the loopback HTTP endpoint (`/gpus`, `/replicas`, `/health`).
//! - [`materializer`]: the local-process materializer that runs replicas as
//!   `flotilla model` children.
//!
//! The agent reaches the registry only through `flotilla_client` (its
//! `RegistryLink`, back-off and materializer loop); it compiles no server.
//!
//! **What it must not do:** decide placements (that is `flotilla-core`'s scheduler),
//! or fall back silently from NVML to anything else: a node that cannot read its GPUs
//! says so.

pub mod admin;
pub mod change;
mod error;
pub mod gpu;
mod http;
pub mod materializer;
pub mod report;

pub use error::{AgentError, NVML_LIBRARY};
