//! Flotilla's federation registry: flotilla-core's state machine replicated with
//! openraft across the flotilla servers of a federation.
//!
//! - [`store`]: the Raft log and state machine on disk (redb); snapshots are core's
//!   versioned snapshot format.
//! - [`network`] and the Raft gRPC service: openraft over tonic (`flotilla.raft.v1`),
//!   with whole snapshots streamed in chunks.
//! - [`server`]: one server — store, Raft, gRPC services (Raft, registry, health),
//!   membership bootstrap, leader-side housekeeping.
//! - [`transport`]: the accepting side of federation mTLS (the dialing side, join
//!   and renewal are `flotilla-client`'s, which servers use as clients do).
//! - [`v1`]: the public API (`flotilla.v1`, `flotilla.v1alpha1`), authorized by the
//!   caller's identity (`authz`).
//!
//! **What it must not do:** decide anything. Every decision about clusters, workloads
//! and placements is flotilla-core's; this crate stores, replicates and moves bytes.

mod api;
mod authz;
pub mod clock;
pub mod error;
mod health;
mod housekeeping;
mod left_members;
pub mod network;
mod propose;
mod raft_service;
pub mod server;
pub mod store;
mod transport;
pub mod types;
mod v1;

pub use api::{RETRY_AFTER, voter_target};
pub use error::{Error, Result};
/// The transport types [`ServerConfig`] takes, from the client crate.
pub use flotilla_client::{Mtls, TransportSecurity};
pub use server::{Bootstrap, RegistryServer, ServerConfig};
pub use v1::pki::CaHolder;
