//! The simulator's specification, one concern per module.

// Tests unwrap on inputs they wrote themselves.
#![allow(clippy::unwrap_used)]

mod conservation;
mod determinism;
mod hand_computed;
mod policies;
mod scenario_errors;

use flotilla_sim::{Options, Outcome, Scenario, SimError, simulate};
use std::path::Path;

/// Parses scenario text as if it were `test.toml`.
pub(crate) fn parse(text: &str) -> Result<Scenario, SimError> {
    Scenario::parse(Path::new("test.toml"), text)
}

/// Parses and runs every policy.
pub(crate) fn run(text: &str) -> Outcome {
    let sc = parse(text).expect("a valid scenario");
    simulate(&sc, &Options::default())
}

/// A shipped scenario under `simulations/scenarios/`.
pub(crate) fn shipped(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../simulations/scenarios")
        .join(name);
    Scenario::load(&path).expect("the shipped scenario is valid")
}
