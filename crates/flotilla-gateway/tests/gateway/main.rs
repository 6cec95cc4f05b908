//! The gateway's integration tests: real listeners on 127.0.0.1:0, real mTLS with
//! rcgen certificates, and stand-in replicas that count what reaches them.

// Helpers outside #[test] functions unwrap too: a panic in a test is a failure report.
#![allow(clippy::unwrap_used)]

mod eastwest;
mod external;
mod governance;
mod health;
mod lifecycle;
mod mcp;
mod registry;
mod routing;
mod streaming;
mod support;
