//! What a client of a Flotilla federation needs, and nothing a server needs: no
//! openraft, no redb. Node agents, the Kubernetes controller, gateways, `flotilla
//! up` and `flotilla ctl` reach the registry through this crate.
//!
//! - [`transport`]: plaintext, TLS, or federation mTLS with rotating certificates.
//! - [`join`]: getting an identity with a join token (every role), and loading it.
//! - [`renewal`]: renewing this member's certificate before it expires, in place.
//! - [`client`]: a typed client of one registry server.
//! - [`link`]: [`link::RegistryLink`], what agents and controllers need of the
//!   registry, and [`link::FederationClient`], its implementation over a list of
//!   servers: fail-over, a bound on every call, and no answer older than one seen.
//! - [`freshness`]: the "never go back to an older log index" check, shared by the
//!   link and the gateway's route source.
//! - [`backoff`]: the one jittered exponential back-off.
//! - [`convert`]: flotilla-core types to and from `flotilla.v1` messages.
//! - [`materialize`]: the [`materialize::Materializer`] seam and the loop that
//!   follows a cluster's placements and reports replica phases; local processes
//!   (the agent) and Kubernetes (the controller) implement it.
//! - [`apply_file`]: the workload and policy files of `flotilla ctl apply -f`, read
//!   and checked completely (a library, so that the fuzzers reach it too).
//!
//! **What it must not do:** decide anything (core does), or serve anything.

pub mod apply_file;
pub mod backoff;
pub mod client;
pub mod convert;
pub mod error;
pub mod errors;
pub mod freshness;
pub mod join;
pub mod link;
pub mod lists;
pub mod materialize;
pub mod paging;
pub mod renewal;
pub mod transport;

pub use backoff::Backoff;
pub use client::RegistryClient;
pub use error::{Error, Result};
pub use link::{FederationClient, FederationLists, RegistryLink};
pub use transport::{Mtls, PeerJudge, TransportSecurity};

/// The metadata key a server sets, with `UNAVAILABLE`, to say when to try again
/// (no leader yet).
pub const RETRY_AFTER: &str = "retry-after-ms";
