//! NVML on a real GPU. Run with `scripts/nvml-check.sh` on a machine with one; the
//! tests without a GPU are unit tests in `src/gpu/nvml.rs`.

use flotilla_agent::gpu::nvml::{NvmlOptions, NvmlSource};
use flotilla_agent::gpu::{GpuSource, conformance};
use std::time::{Duration, Instant};

fn source() -> NvmlSource {
    NvmlSource::new(NvmlOptions::new("gpu-check")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nvml_passes_the_conformance_suite() {
    let source = source();
    let snapshot = conformance::run(&source);
    let node = &snapshot.nodes[0];
    assert!(!node.devices.is_empty());
    for d in &node.devices {
        assert!(
            d.health.is_healthy(),
            "GPU {} ({}) is {:?}",
            d.index,
            d.uuid,
            d.health
        );
        assert!(d.uuid.starts_with("GPU-"), "{}", d.uuid);
        assert!(d.memory.total_mib > 0);
    }
    println!(
        "{} GPU(s), Xid events {}",
        node.devices.len(),
        if source.xid_events_supported() {
            "watched"
        } else {
            "not supported"
        }
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_xid_thread_stops_promptly_when_the_source_is_dropped() {
    let source = source();
    assert_eq!(source.snapshot().unwrap().to_reports().len(), 1);
    let started = Instant::now();
    drop(source);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "dropping took {:?}",
        started.elapsed()
    );
}
