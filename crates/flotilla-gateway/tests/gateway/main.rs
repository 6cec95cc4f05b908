//! The gateway's integration tests: real listeners on 127.0.0.1:0, real mTLS with
//! rcgen certificates, and stand-in replicas that count what reaches them.

// Helpers outside #[test] functions unwrap too: a panic in a test is a failure report.
#![allow(clippy::unwrap_used)]

mod eastwest;
mod governance;
mod health;
mod lifecycle;
mod registry;
// The registry's own test federation (servers on 127.0.0.1:0), shared rather than
// copied; not every helper is used here.
#[allow(dead_code, unreachable_pub)]
#[path = "../../../flotilla-registry/tests/cluster/common.rs"]
mod registry_common;
mod routing;
mod streaming;
mod support;
