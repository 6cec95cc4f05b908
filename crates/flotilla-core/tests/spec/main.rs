//! flotilla-core's behaviour, written as a specification. One test binary, one module
//! per topic.

// Helpers outside #[test] functions unwrap too: a panic in a test is a failure report.
#![allow(clippy::unwrap_used)]

mod container;
mod endpoints;
mod etags;
mod failures;
mod mcp;
mod migration;
mod nodes;
mod placement;
mod priority;
mod properties;
mod snapshot;
mod state_machine;
