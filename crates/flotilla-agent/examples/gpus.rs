//! Prints what a GPU source sees, as JSON, then the report the registry would get.
//!
//! `cargo run -p flotilla-agent --example gpus` reads NVML;
//! `cargo run -p flotilla-agent --example gpus -- FLEET.toml` reads a simulated fleet.

use flotilla_agent::gpu::GpuSource;
use flotilla_agent::gpu::nvml::{NvmlOptions, NvmlSource};
use flotilla_agent::gpu::simulated::SimulatedFleet;
use std::process::ExitCode;

fn main() -> ExitCode {
    let source: Result<Box<dyn GpuSource>, _> = match std::env::args().nth(1) {
        Some(path) => SimulatedFleet::load(path).map(|f| Box::new(f) as Box<dyn GpuSource>),
        None => NvmlSource::new(NvmlOptions::new("this-node"))
            .map(|s| Box::new(s) as Box<dyn GpuSource>),
    };
    let snapshot = match source.and_then(|s| s.snapshot()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let show = |v: serde_json::Result<String>| v.unwrap_or_else(|e| format!("(cannot show: {e})"));
    println!("{}", show(serde_json::to_string_pretty(&snapshot)));
    let reports = snapshot.to_reports();
    println!("{}", show(serde_json::to_string_pretty(&reports)));
    match flotilla_core::gpu::validate_report("this-cluster", &reports) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the registry would refuse this report: {e}");
            ExitCode::FAILURE
        }
    }
}
