use crate::FLEET;
use flotilla_agent::AgentError;
use flotilla_agent::gpu::simulated::{DeviceChange, SimulatedFleet};
use flotilla_agent::gpu::{GpuSource, Memory, Snapshot, conformance};

#[test]
fn the_simulated_fleet_passes_the_conformance_suite() {
    let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET).unwrap();
    conformance::run(&fleet);
    conformance::run(&fleet.node("gpu-a").unwrap());
}

#[test]
fn it_still_passes_with_devices_failed_lost_claimed_and_busy() {
    let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET).unwrap();
    fleet.set("gpu-a", "0", DeviceChange::Detach).unwrap();
    fleet
        .set(
            "gpu-a",
            "1",
            DeviceChange::Fail {
                reason: "Xid 48".into(),
            },
        )
        .unwrap();
    fleet
        .set("gpu-a", "MIG-sim-gpu-a-2-0", DeviceChange::Claim)
        .unwrap();
    fleet
        .set(
            "gpu-b",
            "0",
            DeviceChange::Usage {
                memory_used_mib: 23034,
                utilization_pct: 100,
            },
        )
        .unwrap();
    conformance::run(&fleet);
}

/// A source that breaks the rules, to show the suite notices.
#[derive(Debug)]
struct Broken(Snapshot);

impl GpuSource for Broken {
    fn snapshot(&self) -> Result<Snapshot, AgentError> {
        Ok(self.0.clone())
    }
    fn kind(&self) -> &'static str {
        "broken"
    }
}

#[test]
fn the_suite_names_each_broken_rule() {
    let mut snapshot = SimulatedFleet::from_toml("fleet.toml", FLEET)
        .unwrap()
        .snapshot()
        .unwrap();
    let devices = &mut snapshot.nodes[0].devices;
    devices[1].uuid = devices[0].uuid.clone();
    devices[0].memory = Memory {
        total_mib: 100,
        used_mib: 200,
        free_mib: 0,
    };
    if let Some(u) = devices[1].utilization.as_mut() {
        u.gpu_pct = 101;
    }
    let violations = conformance::check(&Broken(snapshot)).unwrap_err();
    let text = violations.join("\n");
    assert!(text.contains("UUID is empty or not unique"), "{text}");
    assert!(
        text.contains("memory used 200 / free 0 MiB exceeds total 100 MiB"),
        "{text}"
    );
    assert!(text.contains("utilisation 101% GPU"), "{text}");
    assert!(
        text.contains("the registry would refuse the report"),
        "{text}"
    );
}

#[test]
fn the_example_fleet_file_is_valid_and_conforms() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet.toml");
    let fleet = SimulatedFleet::load(&path).unwrap();
    let snapshot = conformance::run(&fleet);
    assert_eq!(snapshot.uuids().count(), 16 + 1 + 4 + 1);
}
