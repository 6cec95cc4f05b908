//! Flotilla's federation registry: flotilla-core's state machine replicated with
//! openraft across the flotilla servers of a federation.
//!
//! - [`store`]: the Raft log and state machine on disk (redb); snapshots are core's
//!   versioned snapshot format.
//! - [`network`] and the Raft gRPC service: openraft over tonic (`flotilla.raft.v1`),
//!   with whole snapshots streamed in chunks.
//! - [`server`]: one server — store, Raft, gRPC services (Raft, registry, health),
//!   membership bootstrap, leader-side housekeeping.
//! - [`client`]: a typed client of the registry service.
//! - [`join`]: getting an identity with a join token (every role), and loading it.
//! - [`renewal`]: renewing this member's certificate before it expires, in place.
//! - [`transport`]: plaintext, TLS, or federation mTLS with rotating certificates.
//! - [`v1`]: the public API (`flotilla.v1`, `flotilla.v1alpha1`), authorized by the
//!   caller's identity (`authz`).
//!
//! **What it must not do:** decide anything. Every decision about clusters, workloads
//! and placements is flotilla-core's; this crate stores, replicates and moves bytes.

mod api;
mod authz;
pub mod client;
pub mod error;
mod housekeeping;
pub mod join;
pub mod network;
mod propose;
mod raft_service;
pub mod renewal;
pub mod server;
pub mod store;
pub mod transport;
pub mod types;
mod v1;

pub use api::RETRY_AFTER;
pub use client::RegistryClient;
pub use error::{Error, Result};
pub use server::{Bootstrap, RegistryServer, ServerConfig};
pub use transport::{Mtls, TransportSecurity};
pub use v1::convert;
pub use v1::pki::CaHolder;
