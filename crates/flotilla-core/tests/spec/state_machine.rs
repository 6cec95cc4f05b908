//! `apply`: what it accepts, what it refuses, and that a refusal changes nothing.

use flotilla_core::fixtures::{Federation, cluster, gpu_node, workload};
use flotilla_core::{Command, DeviceRef, Entry, ObjectKind, Rejection, State, Timestamp, apply};

fn refused(f: &mut Federation, command: Command) -> Rejection {
    let before = f.state.clone();
    let err = f.apply(command).unwrap_err();
    assert_eq!(f.state, before, "a rejected command changed the state");
    err
}

#[test]
fn an_invalid_workload_is_refused_with_its_field_named() {
    let mut f = Federation::new();
    let mut w = workload("llama-70b", "m", 1, 2);
    w.replicas.min = 3;
    let err = refused(&mut f, Command::ApplyWorkload { workload: w });
    assert_eq!(
        err.to_string(),
        "workload \"llama-70b\": replicas.min (3) > replicas.max (2)"
    );
    assert!(f.state.workload("llama-70b").is_none());
}

#[test]
fn commands_about_unknown_objects_are_not_found() {
    let mut f = Federation::new();
    let err = refused(
        &mut f,
        Command::Cordon {
            cluster: "nowhere".into(),
        },
    );
    assert_eq!(
        err,
        Rejection::NotFound {
            kind: ObjectKind::Cluster,
            name: "nowhere".into()
        }
    );
    let err = refused(
        &mut f,
        Command::DeleteWorkload {
            workload: "ghost".into(),
        },
    );
    assert_eq!(err.to_string(), "workload \"ghost\" not found");
}

#[test]
fn a_replica_on_a_taken_device_is_refused() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("w1", "m", 1, 1),
    })
    .unwrap();
    f.apply(Command::ApplyWorkload {
        workload: workload("w2", "m", 1, 1),
    })
    .unwrap();
    let device = DeviceRef {
        node: "node-0".into(),
        uuid: "GPU-a-node-0-0".into(),
    };
    let start = |w: &str| Command::StartReplica {
        workload: w.into(),
        cluster: "a".into(),
        devices: vec![device.clone()],
        replaces: None,
    };
    f.apply(start("w1")).unwrap();
    let err = refused(&mut f, start("w2"));
    assert!(err.to_string().contains("is not free"), "{err}");
}

#[test]
fn a_capacity_report_with_a_bad_device_changes_nothing() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 2);
    let mut node = gpu_node("a", "node-0", "H100", 2, 1000);
    node.devices[1].memory_used_mib = 2000;
    let err = refused(
        &mut f,
        Command::ReportCapacity {
            cluster: "a".into(),
            nodes: vec![node],
        },
    );
    assert!(
        err.to_string()
            .contains("memory_used_mib (2000) exceeds memory_total_mib (1000)")
    );
}

#[test]
fn a_cluster_with_replicas_cannot_be_removed_until_drained() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.plan_and_apply();
    let err = refused(
        &mut f,
        Command::RemoveCluster {
            cluster: "a".into(),
        },
    );
    assert!(err.to_string().contains("drain the cluster first"));
}

#[test]
fn a_stale_lease_expiry_is_refused() {
    let mut f = Federation::new();
    f.apply(Command::RegisterCluster {
        spec: cluster("a", "r1"),
    })
    .unwrap();
    let err = refused(
        &mut f,
        Command::MarkUnreachable {
            cluster: "a".into(),
        },
    );
    assert!(err.to_string().contains("not expired"));
}

#[test]
fn replaying_a_log_gives_the_same_state() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    f.add_cluster("b", "r2", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 3),
    })
    .unwrap();
    f.settle(flotilla_core::Millis(1000), 10);

    let mut replayed = State::new();
    for entry in &f.log {
        apply(&mut replayed, entry).unwrap();
    }
    assert_eq!(replayed, f.state);
}

#[test]
fn route_watchers_resume_from_a_revision() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: workload("w1", "m1", 1, 1),
    })
    .unwrap();
    f.settle(flotilla_core::Millis(1000), 5);
    let seen = f.state.routes().revision;
    f.apply(Command::ApplyWorkload {
        workload: workload("w2", "m2", 1, 1),
    })
    .unwrap();
    f.settle(flotilla_core::Millis(1000), 5);
    f.apply(Command::DeleteWorkload {
        workload: "w1".into(),
    })
    .unwrap();

    let missed: Vec<(&str, usize)> = f
        .state
        .routes()
        .changes_since(seen)
        .unwrap()
        .iter()
        .map(|r| (r.model.as_str(), r.endpoints.len()))
        .collect();
    assert_eq!(
        missed,
        vec![("m2", 1), ("m1", 0)],
        "a new route, then a removal (tombstone)"
    );
}

#[test]
fn placement_watchers_resume_from_a_revision_and_learn_of_placements_that_went() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    for (name, model) in [("w1", "m1"), ("w2", "m2")] {
        f.apply(Command::ApplyWorkload {
            workload: workload(name, model, 1, 1),
        })
        .unwrap();
    }
    f.settle(flotilla_core::Millis(1000), 5);
    let seen = f.state.placements_revision();
    let whole: Vec<&str> = f
        .state
        .placement_changes_since(0)
        .unwrap()
        .iter()
        .map(|c| c.workload)
        .collect();
    assert_eq!(whole, vec!["w1", "w2"], "from 0: every placement now");

    f.apply(Command::DeleteWorkload {
        workload: "w1".into(),
    })
    .unwrap();
    f.settle(flotilla_core::Millis(1000), 5);
    assert!(
        f.state.placement("w1").is_none(),
        "its replica drained and went"
    );

    let missed: Vec<(&str, bool)> = f
        .state
        .placement_changes_since(seen)
        .unwrap()
        .iter()
        .map(|c| (c.workload, c.placement.is_some()))
        .collect();
    assert_eq!(
        missed.last(),
        Some(&("w1", false)),
        "its removal comes last, as a tombstone"
    );
    assert!(
        missed.iter().all(|(w, _)| *w == "w1"),
        "w2 did not change: {missed:?}"
    );
    let now = f.state.placements_revision();
    assert!(f.state.placement_changes_since(now).unwrap().is_empty());
}

#[test]
fn placement_tombstones_are_compacted_and_a_watcher_older_than_that_must_relist() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 8);
    f.apply(Command::ApplyWorkload {
        workload: workload("gone", "m0", 1, 1),
    })
    .unwrap();
    f.settle(flotilla_core::Millis(1000), 5);
    let before_removal = f.state.placements_revision();
    f.apply(Command::DeleteWorkload {
        workload: "gone".into(),
    })
    .unwrap();
    f.settle(flotilla_core::Millis(1000), 5);
    let mut i = 0;
    while f.state.placements_revision() <= before_removal + flotilla_core::TOMBSTONE_REVISIONS + 2 {
        let name = format!("w{}", i % 2);
        f.apply(Command::ApplyWorkload {
            workload: workload(&name, "m1", 1, 1),
        })
        .unwrap();
        f.settle(flotilla_core::Millis(1000), 3);
        f.apply(Command::DeleteWorkload { workload: name }).unwrap();
        f.settle(flotilla_core::Millis(1000), 3);
        i += 1;
    }
    let err = f.state.placement_changes_since(before_removal).unwrap_err();
    assert!(err.compacted > before_removal);
    assert!(
        err.to_string().contains("placement table's compaction"),
        "{err}"
    );
    assert!(f.state.placement_changes_since(0).is_ok(), "a relist works");
}

#[test]
fn commands_carry_their_time_so_apply_reads_no_clock() {
    let mut a = State::new();
    let mut b = State::new();
    let entry = Entry::new(
        Timestamp(42),
        Command::RegisterCluster {
            spec: cluster("a", "r1"),
        },
    );
    apply(&mut a, &entry).unwrap();
    apply(&mut b, &entry).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        a.cluster("a").unwrap().lease_expires_at,
        Timestamp(42) + a.settings().lease_duration
    );
}
