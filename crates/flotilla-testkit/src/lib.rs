//! Flotilla's shared test kit: what the integration tests of every crate need and
//! would otherwise each copy.
//!
//! - [`bounded`] and [`eventually`]: a test body under a hard timeout, and a
//!   condition polled until it holds, so that no test hangs the suite and no test
//!   sleeps a guessed time. Under [`bounded`], warnings are kept for
//!   [`warnings_with`]: what a server told its operator.
//! - [`free_addr`]: a loopback address nothing listens on, for a test that cannot
//!   bind port 0 itself (a server started later, a child process, a dead peer).
//! - [`TestPki`]: a federation CA and the identities it issues.
//! - [`start_server`] and [`Federation`]: one registry server, or a federation of
//!   N, on 127.0.0.1 with short Raft timeouts.
//! - [`ServerProcess`]: a `flotilla server` in a process of its own, fed steady
//!   heartbeats and measured from outside (memory, log, snapshots).
//! - [`kube::KubeCluster`]: a real Kubernetes control plane (etcd, API server,
//!   controller-manager, scheduler, and kwok for the nodes) on 127.0.0.1.
//!
//! It is a dev-dependency only: nothing here is fit for production (it panics,
//! binds loopback, turns fsync off), and no crate may depend on it otherwise.

pub mod kube;
mod logs;
mod net;
mod pki;
mod registry;
mod server_process;
mod wait;

pub use logs::warnings_with;
pub use net::{Reaped, free_addr};
pub use pki::{TestPki, rotating_cert};
pub use registry::{
    ELECTION_MAX, ELECTION_MIN, FEDERATION, Federation, HEARTBEAT, Heartbeats, one_member_config,
    start_server, start_server_with,
};
pub use server_process::{LogStatus, ServerProcess, register};
pub use wait::{BoxError, TestResult, bounded, eventually};
