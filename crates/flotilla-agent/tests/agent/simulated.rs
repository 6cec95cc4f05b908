use crate::FLEET;
use flotilla_agent::AgentError;
use flotilla_agent::gpu::simulated::{DeviceChange, SimulatedFleet};
use flotilla_agent::gpu::{GpuSource, Health, Mig, Snapshot};
use std::time::{Duration, Instant, SystemTime};

fn fleet() -> SimulatedFleet {
    SimulatedFleet::from_toml("fleet.toml", FLEET).unwrap()
}

fn health(s: &Snapshot, node: &str, uuid: &str) -> Health {
    s.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.devices.iter().find(|d| d.uuid == uuid))
        .map(|d| d.health.clone())
        .unwrap()
}

#[test]
fn a_fleet_file_describes_nodes_devices_and_mig_layouts() {
    let s = fleet().snapshot().unwrap();
    let names: Vec<_> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["gpu-a", "gpu-b"]);
    let a = &s.nodes[0];
    let shape: Vec<_> = a
        .devices
        .iter()
        .map(|d| (d.index, d.uuid.as_str(), d.model.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (0, "GPU-sim-gpu-a-0", "NVIDIA H100 80GB HBM3"),
            (1, "GPU-sim-gpu-a-1", "NVIDIA H100 80GB HBM3"),
            (2, "GPU-sim-gpu-a-2", "NVIDIA A100-SXM4-80GB"),
        ]
    );
    let Mig::Enabled { instances } = &a.devices[2].mig else {
        panic!("GPU 2 has MIG on");
    };
    let mig: Vec<_> = instances
        .iter()
        .map(|i| {
            (
                i.uuid.as_str(),
                i.profile.as_str(),
                i.memory.total_mib,
                i.memory.used_mib,
            )
        })
        .collect();
    assert_eq!(
        mig,
        [
            ("MIG-sim-gpu-a-2-0", "3g.40gb", 40960, 0),
            ("MIG-sim-gpu-a-2-1", "1g.10gb", 10240, 512)
        ]
    );
    assert_eq!(
        a.devices[2].memory.used_mib, 512,
        "a MIG GPU's memory is its instances'"
    );
    let b = &s.nodes[1].devices[0];
    assert!(b.claimed_by_other);
    assert_eq!((b.memory.used_mib, b.memory.free_mib), (1200, 21834));
}

#[test]
fn node_and_device_counts_expand_with_generated_names() {
    let text = "[[nodes]]\nname = \"rack\"\ncount = 3\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\nmemory_mib = 23034\ncount = 4\n";
    let s = SimulatedFleet::from_toml("f.toml", text)
        .unwrap()
        .snapshot()
        .unwrap();
    let names: Vec<_> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["rack-0", "rack-1", "rack-2"]);
    assert_eq!(s.uuids().count(), 12);
    assert_eq!(s.nodes[2].devices[3].uuid, "GPU-sim-rack-2-3");
}

#[test]
fn taking_a_gpu_away_and_giving_it_back() {
    let fleet = fleet();
    let node = fleet
        .set("gpu-a", "GPU-sim-gpu-a-1", DeviceChange::Claim)
        .unwrap();
    assert!(node.devices[1].claimed_by_other);
    let report = &fleet.snapshot().unwrap().to_reports()[0];
    assert!(
        report.devices[1].claimed_by_other,
        "the registry sees the claim"
    );

    let node = fleet.set("gpu-a", "1", DeviceChange::Release).unwrap();
    assert!(!node.devices[1].claimed_by_other);
}

#[test]
fn failing_detaching_and_recovering_a_gpu() {
    let fleet = fleet();
    fleet
        .set(
            "gpu-a",
            "0",
            DeviceChange::Fail {
                reason: "Xid 79".into(),
            },
        )
        .unwrap();
    fleet.set("gpu-a", "1", DeviceChange::Detach).unwrap();
    let s = fleet.snapshot().unwrap();
    assert_eq!(
        health(&s, "gpu-a", "GPU-sim-gpu-a-0"),
        Health::Unhealthy {
            reason: "Xid 79".into()
        }
    );
    assert!(matches!(
        health(&s, "gpu-a", "GPU-sim-gpu-a-1"),
        Health::Lost { .. }
    ));
    let report = &s.to_reports()[0];
    let healthy: Vec<_> = report.devices.iter().map(|d| d.healthy).collect();
    assert_eq!(
        healthy,
        [false, false, true, true],
        "failed GPUs stay in the report"
    );

    fleet.set("gpu-a", "0", DeviceChange::Recover).unwrap();
    fleet.set("gpu-a", "1", DeviceChange::Reset).unwrap();
    let s = fleet.snapshot().unwrap();
    assert_eq!(health(&s, "gpu-a", "GPU-sim-gpu-a-0"), Health::Healthy);
    assert_eq!(health(&s, "gpu-a", "GPU-sim-gpu-a-1"), Health::Healthy);
}

#[test]
fn changes_arrive_as_json_from_an_admin_endpoint() {
    let change: DeviceChange =
        serde_json::from_str(r#"{"change": "fail", "reason": "Xid 48"}"#).unwrap();
    assert_eq!(
        change,
        DeviceChange::Fail {
            reason: "Xid 48".into()
        }
    );
    let usage: DeviceChange =
        serde_json::from_str(r#"{"change": "usage", "memory_used_mib": 4096}"#).unwrap();
    assert_eq!(
        usage,
        DeviceChange::Usage {
            memory_used_mib: 4096,
            utilization_pct: 0
        }
    );
}

#[test]
fn changes_to_unknown_nodes_or_devices_name_what_exists() {
    let fleet = fleet();
    let err = fleet.set("gpu-z", "0", DeviceChange::Claim).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no node named \"gpu-z\"; the fleet has gpu-a, gpu-b"
    );
    let err = fleet.set("gpu-b", "7", DeviceChange::Claim).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node \"gpu-b\" has no device \"7\" (by index or UUID); it has 0 (GPU-sim-gpu-b-0)"
    );
}

#[test]
fn impossible_changes_are_refused_and_change_nothing() {
    let fleet = fleet();
    let before = fleet.snapshot().unwrap();
    let too_much = DeviceChange::Usage {
        memory_used_mib: 90_000,
        utilization_pct: 10,
    };
    let err = fleet.set("gpu-a", "0", too_much).unwrap_err();
    assert!(
        err.to_string()
            .contains("memory_used_mib (90000) exceeds the device's 81920 MiB"),
        "{err}"
    );
    let err = fleet
        .set(
            "gpu-a",
            "MIG-sim-gpu-a-2-0",
            DeviceChange::Fail { reason: "x".into() },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("health belongs to the whole GPU"),
        "{err}"
    );
    assert_eq!(fleet.snapshot().unwrap(), before);
}

fn write(path: &std::path::Path, text: &str, modified: SystemTime) {
    std::fs::write(path, text).unwrap();
    // Set the time explicitly: file systems with coarse timestamps would otherwise
    // hide an edit made within the same second.
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
}

#[test]
fn edits_of_the_file_are_picked_up_and_removed_gpus_are_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    write(&path, FLEET, t0);
    let fleet = SimulatedFleet::load(&path).unwrap();
    fleet.set("gpu-b", "0", DeviceChange::Release).unwrap();
    assert!(!fleet.reload_if_changed().unwrap(), "nothing changed yet");

    // gpu-a loses its MIG GPU; gpu-b's change survives the edit.
    let edited = FLEET.replacen(
        "[[nodes.devices]]\nmodel = \"NVIDIA A100-SXM4-80GB\"\nmemory_mib = 81920\nmig = [{ profile = \"3g.40gb\" }, { profile = \"1g.10gb\", memory_used_mib = 512 }]\n",
        "",
        1,
    );
    assert_ne!(edited, FLEET);
    write(&path, &edited, t0 + Duration::from_secs(5));
    assert!(fleet.reload_if_changed().unwrap());
    let s = fleet.snapshot().unwrap();
    assert!(matches!(
        health(&s, "gpu-a", "GPU-sim-gpu-a-2"),
        Health::Lost { .. }
    ));
    assert!(
        !s.nodes[1].devices[0].claimed_by_other,
        "the release survives the edit"
    );
    assert_eq!(
        s.to_reports()[0]
            .devices
            .iter()
            .filter(|d| !d.healthy)
            .count(),
        2,
        "both MIG instances"
    );

    // Putting it back brings it back healthy.
    write(&path, FLEET, t0 + Duration::from_secs(10));
    assert!(fleet.reload_if_changed().unwrap());
    assert_eq!(
        health(&fleet.snapshot().unwrap(), "gpu-a", "GPU-sim-gpu-a-2"),
        Health::Healthy
    );
}

#[test]
fn a_bad_edit_keeps_the_last_good_fleet_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
    write(&path, FLEET, t0);
    let fleet = SimulatedFleet::load(&path).unwrap();
    let before = fleet.snapshot().unwrap();
    write(
        &path,
        &FLEET.replace("memory_mib = 23034", "memory_mib = \"lots\""),
        t0 + Duration::from_secs(1),
    );
    let err = fleet.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("memory_mib"), "{err}");
    assert_eq!(fleet.last_reload_error(), Some(err.to_string()));
    assert_eq!(fleet.snapshot().unwrap(), before);
    assert!(
        !fleet.reload_if_changed().unwrap(),
        "the same bad edit is reported once"
    );
}

#[test]
fn the_watch_thread_notices_edits_and_stops_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(3_000_000);
    write(&path, FLEET, t0);
    let fleet = SimulatedFleet::load(&path).unwrap();
    let watcher = fleet.watch(Duration::from_millis(10));
    write(
        &path,
        &FLEET.replace("claimed_by_other = true", "claimed_by_other = false"),
        t0 + Duration::from_secs(1),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.snapshot().unwrap().nodes[1].devices[0].claimed_by_other {
        assert!(
            Instant::now() < deadline,
            "the edit was not picked up within 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopping = Instant::now();
    watcher.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "stopping waits at most one poll"
    );
}

fn parse_error(text: &str) -> AgentError {
    SimulatedFleet::from_toml("fleet.toml", text).unwrap_err()
}

#[test]
fn bad_files_are_refused_naming_file_line_and_field() {
    let wrong_type = parse_error(
        "[[nodes]]\nname = \"a\"\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\nmemory_mib = \"lots\"\n",
    );
    let text = wrong_type.to_string();
    assert!(text.starts_with("fleet.toml:5: memory_mib: "), "{text}");

    let typo = parse_error(
        "[[nodes]]\nname = \"a\"\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\nmemory_mb = 1\n",
    );
    assert!(
        typo.to_string()
            .starts_with("fleet.toml:5: memory_mb: unknown field"),
        "{typo}"
    );

    let missing =
        parse_error("[[nodes]]\nname = \"a\"\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\n");
    assert!(
        missing.to_string().contains(": memory_mib: missing field"),
        "{missing}"
    );

    let too_much = parse_error(
        "[[nodes]]\nname = \"a\"\n\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\nmemory_mib = 100\nmemory_used_mib = 200\n",
    );
    assert_eq!(
        too_much.to_string(),
        "fleet.toml:4: nodes[0].devices[0].memory_used_mib: (200) exceeds memory_mib (100)"
    );

    let mig_too_big = parse_error(
        "[[nodes]]\nname = \"a\"\n[[nodes.devices]]\nmodel = \"NVIDIA H100 80GB HBM3\"\nmemory_mib = 81559\nmig = [{ profile = \"3g.40gb\" }, { profile = \"3g.40gb\" }]\n",
    );
    assert!(
        mig_too_big.to_string().contains(
            "nodes[0].devices[0].mig: the instances need 81920 MiB but the GPU has 81559 MiB"
        ),
        "{mig_too_big}"
    );

    let bad_name = parse_error("[[nodes]]\nname = \"Node_1\"\n");
    assert!(
        bad_name
            .to_string()
            .starts_with("fleet.toml:1: nodes[0].name: \"Node_1\" is not a node name"),
        "{bad_name}"
    );

    let twice = parse_error("[[nodes]]\nname = \"a\"\n[[nodes]]\nname = \"a\"\n");
    assert!(
        twice.to_string().contains("node \"a\" appears twice"),
        "{twice}"
    );
}

#[test]
fn a_missing_file_names_the_path() {
    let err = SimulatedFleet::load("/nonexistent/fleet.toml").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/fleet.toml: cannot read"),
        "{err}"
    );
}
