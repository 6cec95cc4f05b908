//! The agent's specification tests: one binary, one module per subject.

// Helpers outside #[test] functions may unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod admin;
mod conformance;
mod nvml;
mod records;
mod registry;
mod reporting;
mod simulated;
mod write_rate;

/// A small fleet used across modules: two nodes, whole GPUs and a MIG-enabled one.
pub(crate) const FLEET: &str = r#"
[[nodes]]
name = "gpu-a"

[[nodes.devices]]
model = "NVIDIA H100 80GB HBM3"
memory_mib = 81920
count = 2

[[nodes.devices]]
model = "NVIDIA A100-SXM4-80GB"
memory_mib = 81920
mig = [{ profile = "3g.40gb" }, { profile = "1g.10gb", memory_used_mib = 512 }]

[[nodes]]
name = "gpu-b"

[[nodes.devices]]
model = "NVIDIA L4"
memory_mib = 23034
memory_used_mib = 1200
utilization_pct = 40
claimed_by_other = true
"#;
