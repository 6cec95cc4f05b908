//! Flotilla's federation registry: flotilla-core's state machine replicated with
//! openraft across the servers of a federation.
//!
//! - [`store`]: the Raft log and state machine on disk (redb), snapshots in core's format.
//!
//! **What it must not do:** decide anything. Every decision about clusters, workloads
//! and placements is flotilla-core's; this crate stores, replicates and moves bytes.

pub mod error;
pub mod store;
pub mod types;

pub use error::{Error, Result};
