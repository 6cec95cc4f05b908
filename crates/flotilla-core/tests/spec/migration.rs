//! Make-before-break moves: start in the target, Ready, shift traffic, drain the source.

use flotilla_core::fixtures::{Federation, gpu_node, workload};
use flotilla_core::{
    Command, Event, MigrationOutcome, Millis, MoveReason, Phase, RegionPreference, plan,
};

/// A federation where "llama" runs one replica in "east" and "west" has room.
fn one_replica_in_east() -> Federation {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("llama", "llama-8b", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("west", "us-west", "H100", 2);
    f
}

/// Another tenant takes every GPU of "east".
fn reclaim_east(f: &mut Federation) {
    let mut node = gpu_node("east", "node-0", "H100", 1, 81_920);
    node.devices[0].claimed_by_other = true;
    f.apply(Command::ReportCapacity {
        cluster: "east".into(),
        nodes: vec![node],
    })
    .unwrap();
}

#[test]
fn a_reclaimed_gpu_moves_its_replica_make_before_break() {
    let mut f = one_replica_in_east();
    reclaim_east(&mut f);

    // 1. The target starts; the source keeps all traffic.
    let commands = f.plan_and_apply();
    assert!(
        matches!(&commands[..], [Command::StartReplica { cluster, replaces: Some((_, MoveReason::Reclaimed)), .. }] if cluster == "west")
    );
    assert_eq!(f.route_weights("llama-8b"), vec![("east".to_owned(), 100)]);
    assert_eq!(
        plan(&f.state, f.now),
        vec![],
        "nothing happens until the target is Ready"
    );

    // 2. The target is Ready: traffic shifts in steps of 25%, one per interval.
    f.materialize();
    let interval = f.state.settings().traffic_step_interval;
    let mut seen = Vec::new();
    for _ in 0..4 {
        f.plan_and_apply();
        seen.push(f.route_weights("llama-8b"));
        assert_eq!(
            plan(&f.state, f.now),
            vec![],
            "a step waits for its interval"
        );
        f.now = f.now + interval;
        f.heartbeat_all();
    }
    assert_eq!(
        seen,
        vec![
            vec![("east".to_owned(), 75), ("west".to_owned(), 25)],
            vec![("east".to_owned(), 50), ("west".to_owned(), 50)],
            vec![("east".to_owned(), 25), ("west".to_owned(), 75)],
            vec![("west".to_owned(), 100)],
        ]
    );

    // 3. Only then the source drains, and goes when its requests end.
    let commands = f.plan_and_apply();
    assert!(matches!(&commands[..], [Command::DrainReplica { .. }]));
    let phases: Vec<(String, Phase)> = f
        .state
        .placement("llama")
        .unwrap()
        .replicas
        .values()
        .map(|r| (r.cluster.clone(), r.phase))
        .collect();
    assert_eq!(
        phases,
        vec![
            ("east".into(), Phase::Draining),
            ("west".into(), Phase::Ready)
        ]
    );
    assert!(f.events.iter().any(|e| matches!(
        e,
        Event::MigrationFinished {
            outcome: MigrationOutcome::Completed,
            ..
        }
    )));
    f.materialize();
    assert_eq!(f.state.placement("llama").unwrap().replicas.len(), 1);
    assert_eq!(
        f.state
            .cluster("east")
            .unwrap()
            .inventory
            .allocated_device_count(),
        0,
        "the source's GPU is released"
    );
}

#[test]
fn a_target_that_never_becomes_ready_is_rolled_back() {
    let mut f = one_replica_in_east();
    reclaim_east(&mut f);
    f.plan_and_apply();
    let deadline = f.state.settings().start_deadline;

    f.now = f.now + deadline;
    f.heartbeat_all();
    let commands = f.plan_and_apply();
    assert!(
        matches!(&commands[0], Command::AbortMigration { .. }),
        "{commands:?}"
    );
    assert!(f.events.iter().any(|e| matches!(
        e,
        Event::MigrationFinished {
            outcome: MigrationOutcome::RolledBack,
            ..
        }
    )));
    assert_eq!(
        f.route_weights("llama-8b"),
        vec![("east".to_owned(), 100)],
        "the source never stopped serving"
    );
}

#[test]
fn draining_a_cluster_moves_everything_movable_out_of_it() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 3),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("b", "r2", "H100", 4);

    f.apply(Command::Drain {
        cluster: "a".into(),
    })
    .unwrap();
    f.settle(Millis(2000), 30);

    let p = f.state.placement("w").unwrap();
    assert!(
        p.replicas
            .values()
            .all(|r| r.cluster == "b" && r.phase == Phase::Ready)
    );
    assert_eq!(p.replicas.len(), 3);
    assert_eq!(f.route_weights("m"), vec![("b".to_owned(), 300)]);
}

fn prefers_west() -> flotilla_core::Workload {
    let mut w = workload("llama", "llama-8b", 1, 1);
    w.constraints.preferred_regions = vec![RegionPreference {
        region: "us-west".into(),
        weight: 100,
    }];
    w.mobility.min_dwell = Millis::from_secs(60);
    w
}

#[test]
fn a_preferred_region_draws_a_replica_only_after_its_dwell_time() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: prefers_west(),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("west", "us-west", "H100", 1);

    assert_eq!(
        plan(&f.state, f.now),
        vec![],
        "placed seconds ago: it dwells"
    );
    f.now = f.now + Millis::from_secs(60);
    f.heartbeat_all();
    let commands = plan(&f.state, f.now);
    assert!(
        matches!(&commands[..], [Command::StartReplica { cluster, replaces: Some((_, MoveReason::Rebalance)), .. }] if cluster == "west")
    );
}

#[test]
fn a_gain_within_the_hysteresis_threshold_moves_nothing() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    let mut w = prefers_west();
    w.constraints.preferred_regions[0].weight = 20; // the default threshold is 20
    f.apply(Command::ApplyWorkload { workload: w }).unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("west", "us-west", "H100", 1);
    f.now = f.now + Millis::from_secs(3600);
    f.heartbeat_all();
    assert_eq!(plan(&f.state, f.now), vec![]);
}

#[test]
fn moves_in_flight_are_capped_across_the_federation() {
    let mut f = Federation::new();
    f.apply(Command::SetSettings {
        settings: flotilla_core::Settings {
            max_concurrent_moves: 2,
            ..Default::default()
        },
    })
    .unwrap();
    f.add_cluster("a", "r1", "H100", 5);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 5),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("b", "r2", "H100", 5);
    f.apply(Command::Drain {
        cluster: "a".into(),
    })
    .unwrap();
    let starts = plan(&f.state, f.now)
        .iter()
        .filter(|c| matches!(c, Command::StartReplica { .. }))
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn deleting_a_workload_drains_its_replicas_and_removes_its_route() {
    let mut f = one_replica_in_east();
    f.apply(Command::DeleteWorkload {
        workload: "llama".into(),
    })
    .unwrap();
    assert_eq!(f.route_weights("llama-8b"), vec![]);
    let p = f.state.placement("llama").unwrap();
    assert!(p.replicas.values().all(|r| r.phase == Phase::Draining));
    f.materialize();
    assert!(
        f.state.placement("llama").is_none(),
        "the placement goes with its last replica"
    );
    assert_eq!(
        f.state
            .cluster("east")
            .unwrap()
            .inventory
            .allocated_device_count(),
        0
    );
}
