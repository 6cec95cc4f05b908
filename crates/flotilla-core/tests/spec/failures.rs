//! Unplanned losses: GPUs that vanish and clusters that stop reporting.

use flotilla_core::fixtures::{Federation, gpu_node, workload};
use flotilla_core::{
    ClusterState, Command, Event, LossCause, Millis, Phase, plan, plan_with_lease_floor,
};

#[test]
fn a_cluster_whose_lease_expires_is_marked_unreachable_and_its_replicas_replaced() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 2);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    f.add_cluster("west", "us-west", "H100", 2);
    assert_eq!(f.route_weights("m"), vec![("east".to_owned(), 100)]);

    // East stops reporting; west keeps heartbeating.
    let lease = f.state.settings().lease_duration;
    f.now = f.now + lease;
    f.apply(Command::Heartbeat {
        cluster: "west".into(),
    })
    .unwrap();
    let commands = f.plan_and_apply();

    assert_eq!(
        commands[0],
        Command::MarkUnreachable {
            cluster: "east".into()
        }
    );
    assert!(
        matches!(&commands[1], Command::StartReplica { cluster, replaces: None, .. } if cluster == "west"),
        "replaced in the same pass"
    );
    assert_eq!(
        f.state.cluster("east").unwrap().state,
        ClusterState::Unreachable
    );
    assert!(f.events.iter().any(|e| matches!(
        e,
        Event::ReplicaLost {
            cause: LossCause::ClusterUnreachable,
            ..
        }
    )));
    assert_eq!(
        f.route_weights("m"),
        vec![],
        "the lost cluster's route goes at once"
    );
    f.materialize();
    assert_eq!(f.route_weights("m"), vec![("west".to_owned(), 100)]);
}

#[test]
fn a_leader_that_could_not_hear_gives_every_cluster_a_heartbeat_interval_before_marking_it_unreachable()
 {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 2);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);

    // Nothing got through for two leases (the registry was cut off, or a new leader
    // took over), and the leader only just hears again.
    let lease = f.state.settings().lease_duration;
    f.now = f.now + lease + lease;
    let heard_since = f.now;
    assert!(
        plan_with_lease_floor(&f.state, f.now, heard_since)
            .iter()
            .all(|c| !matches!(c, Command::MarkUnreachable { .. })),
        "a cluster is not lost for reports that could not arrive"
    );
    assert!(
        plan(&f.state, f.now)
            .iter()
            .any(|c| matches!(c, Command::MarkUnreachable { .. })),
        "without the floor the lease has expired"
    );

    // Not within a heartbeat interval of hearing again; after it, silence means lost.
    let floor = f.state.settings().lease_floor();
    assert_eq!(floor, Millis(lease.0 / 3));
    assert!(
        plan_with_lease_floor(&f.state, heard_since + Millis(floor.0 - 1), heard_since)
            .iter()
            .all(|c| !matches!(c, Command::MarkUnreachable { .. }))
    );
    let later = heard_since + floor;
    assert_eq!(
        plan_with_lease_floor(&f.state, later, heard_since).first(),
        Some(&Command::MarkUnreachable {
            cluster: "east".into()
        })
    );
}

#[test]
fn an_unreachable_cluster_that_reports_again_is_ready_again() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 2);
    f.now = f.now + Millis::from_secs(60);
    f.plan_and_apply();
    assert_eq!(
        f.state.cluster("east").unwrap().state,
        ClusterState::Unreachable
    );
    f.apply(Command::Heartbeat {
        cluster: "east".into(),
    })
    .unwrap();
    assert_eq!(f.state.cluster("east").unwrap().state, ClusterState::Ready);
}

#[test]
fn a_gpu_that_vanishes_loses_its_replica_at_once() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 2);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 2, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);

    let mut node = gpu_node("east", "node-0", "H100", 2, 81_920);
    node.devices.pop();
    f.apply(Command::ReportCapacity {
        cluster: "east".into(),
        nodes: vec![node],
    })
    .unwrap();

    assert!(f.state.placement("w").unwrap().replicas.is_empty());
    assert!(f.events.iter().any(|e| matches!(
        e,
        Event::ReplicaLost {
            cause: LossCause::DeviceLost,
            ..
        }
    )));
    assert_eq!(
        f.state
            .cluster("east")
            .unwrap()
            .inventory
            .allocated_device_count(),
        0,
        "its other GPU is freed"
    );
}

#[test]
fn a_replica_that_crashes_is_replaced() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 2);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    let id = *f
        .state
        .placement("w")
        .unwrap()
        .replicas
        .keys()
        .next()
        .unwrap();
    f.apply(Command::SetReplicaPhase {
        workload: "w".into(),
        replica: id,
        phase: Phase::Gone,
        endpoint: None,
    })
    .unwrap();
    assert!(matches!(
        &plan(&f.state, f.now)[..],
        [Command::StartReplica { .. }]
    ));
}
