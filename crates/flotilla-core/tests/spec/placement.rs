//! Where new replicas go.

use flotilla_core::fixtures::{Federation, workload};
use flotilla_core::{Command, Millis, Phase, PlacementPolicy, Settings, plan};

fn model_clusters(f: &Federation, name: &str) -> Vec<String> {
    f.state.placement(name).map_or_else(Vec::new, |p| {
        p.replicas.values().map(|r| r.cluster.clone()).collect()
    })
}

#[test]
fn a_workload_that_fits_is_placed_with_all_its_replicas() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: workload("llama", "llama-8b", 2, 2),
    })
    .unwrap();

    f.settle(Millis(1000), 10);

    let p = f.state.placement("llama").unwrap();
    assert_eq!(p.replicas.len(), 2);
    assert!(
        p.replicas
            .values()
            .all(|r| r.phase == Phase::Ready && r.devices.len() == 2)
    );
    assert_eq!(
        f.state
            .cluster("east")
            .unwrap()
            .inventory
            .free_device_count(),
        0
    );
    assert_eq!(f.route_weights("llama-8b"), vec![("east".to_owned(), 200)]);
}

#[test]
fn a_workload_that_fits_nowhere_waits_and_is_placed_when_gpus_appear() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("big", "m", 2, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    assert!(
        f.state.placement("big").unwrap().replicas.is_empty(),
        "2 GPUs on one node are needed; 1 exists"
    );

    f.add_cluster("west", "us-west", "H100", 2);
    f.settle(Millis(1000), 5);
    assert_eq!(model_clusters(&f, "big"), vec!["west"]);
}

#[test]
fn gpu_model_and_memory_needs_are_honoured() {
    let mut f = Federation::new();
    f.add_cluster("a100s", "r1", "A100", 8);
    f.add_cluster("h100s", "r2", "H100", 8);
    let mut w = workload("w", "m", 1, 3);
    w.gpu.models = vec!["H100".into()];
    f.apply(Command::ApplyWorkload { workload: w }).unwrap();
    f.settle(Millis(1000), 5);
    assert_eq!(model_clusters(&f, "w"), vec!["h100s"; 3]);

    let mut w = workload("huge", "m2", 1, 1);
    w.gpu.min_memory_mib = 100_000;
    f.apply(Command::ApplyWorkload { workload: w }).unwrap();
    f.settle(Millis(1000), 5);
    assert!(model_clusters(&f, "huge").is_empty(), "no GPU has 100 GB");
}

#[test]
fn region_and_cluster_constraints_and_pins_are_honoured() {
    let mut f = Federation::new();
    f.add_cluster("eu", "eu-west", "H100", 8);
    f.add_cluster("us", "us-east", "H100", 8);
    f.add_cluster("us2", "us-east", "H100", 8);

    let mut regional = workload("regional", "m1", 1, 4);
    regional.constraints.regions = vec!["eu-west".into()];
    let mut pinned = workload("pinned", "m2", 1, 2);
    pinned.constraints.pinned = Some("us2".into());
    for w in [regional, pinned] {
        f.apply(Command::ApplyWorkload { workload: w }).unwrap();
    }
    f.settle(Millis(1000), 5);

    assert_eq!(model_clusters(&f, "regional"), vec!["eu"; 4]);
    assert_eq!(model_clusters(&f, "pinned"), vec!["us2"; 2]);
}

#[test]
fn spreading_across_clusters_puts_one_replica_in_each() {
    let mut f = Federation::new();
    for (c, r) in [("a", "r1"), ("b", "r2"), ("c", "r3")] {
        f.add_cluster(c, r, "H100", 8);
    }
    let mut w = workload("ha", "m", 1, 4);
    w.constraints.spread_across_clusters = true;
    f.apply(Command::ApplyWorkload { workload: w }).unwrap();
    f.settle(Millis(1000), 5);

    let mut clusters = model_clusters(&f, "ha");
    clusters.sort();
    assert_eq!(
        clusters,
        vec!["a", "b", "c"],
        "a fourth replica has no cluster of its own"
    );
}

#[test]
fn packing_fills_the_fullest_cluster_and_spreading_the_emptiest() {
    for (policy, expected) in [
        (PlacementPolicy::Pack, "busy"),
        (PlacementPolicy::Spread, "idle"),
    ] {
        let mut f = Federation::new();
        f.apply(Command::SetSettings {
            settings: Settings {
                placement_policy: policy,
                ..Settings::default()
            },
        })
        .unwrap();
        f.add_cluster("busy", "r1", "H100", 4);
        f.add_cluster("idle", "r2", "H100", 4);
        f.apply(Command::ApplyWorkload {
            workload: workload("first", "m1", 2, 1),
        })
        .unwrap();
        // Put "first" in "busy" explicitly so that the two clusters differ.
        let mut first = workload("first", "m1", 2, 1);
        first.constraints.pinned = Some("busy".into());
        f.apply(Command::ApplyWorkload { workload: first }).unwrap();
        f.settle(Millis(1000), 5);

        f.apply(Command::ApplyWorkload {
            workload: workload("second", "m2", 1, 1),
        })
        .unwrap();
        f.settle(Millis(1000), 5);
        assert_eq!(model_clusters(&f, "second"), vec![expected], "{policy:?}");
    }
}

#[test]
fn cordoned_clusters_take_no_new_replicas_but_keep_theirs() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 2);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("b", "r2", "H100", 2);
    f.apply(Command::Cordon {
        cluster: "a".into(),
    })
    .unwrap();
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 2),
    })
    .unwrap();
    f.settle(Millis(1000), 5);

    let mut clusters = model_clusters(&f, "w");
    clusters.sort();
    assert_eq!(clusters, vec!["a", "b"]);
}

#[test]
fn lowering_max_replicas_drains_the_newest_first() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 3),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    let newest = *f
        .state
        .placement("w")
        .unwrap()
        .replicas
        .keys()
        .last()
        .unwrap();

    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 2),
    })
    .unwrap();
    let commands = plan(&f.state, f.now);
    assert_eq!(
        commands,
        vec![Command::DrainReplica {
            workload: "w".into(),
            replica: newest
        }]
    );
}

#[test]
fn planning_twice_without_change_proposes_nothing_the_second_time() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 8);
    f.add_cluster("b", "r2", "A100", 8);
    for i in 0..5 {
        f.apply(Command::ApplyWorkload {
            workload: workload(&format!("w{i}"), "m", 1 + i % 2, 2),
        })
        .unwrap();
    }
    assert!(!f.plan_and_apply().is_empty());
    assert_eq!(plan(&f.state, f.now), vec![]);
}

#[test]
fn the_scheduler_never_places_on_a_gpu_another_tenant_holds() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 2);
    let mut report = flotilla_core::fixtures::gpu_node("a", "node-0", "H100", 2, 81_920);
    report.devices[0].claimed_by_other = true;
    report.devices[1].healthy = false;
    f.apply(Command::ReportCapacity {
        cluster: "a".into(),
        nodes: vec![report],
    })
    .unwrap();
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    assert_eq!(plan(&f.state, f.now), vec![]);
}
