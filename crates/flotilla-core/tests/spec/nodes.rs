//! Per-node capacity reports: one agent per GPU node (a Kubernetes DaemonSet), each
//! reporting only its own node (`ReportNodes`, scope `Nodes`). A node reported so
//! holds a lease of its own and leaves the inventory when it stops reporting.

use flotilla_core::fixtures::{Federation, cluster, gpu_node, workload};
use flotilla_core::{
    ClusterState, Command, Event, LossCause, Millis, NodeReport, ObjectKind, Phase, Rejection,
    ReportScope, Timestamp, plan, plan_with_lease_floor,
};

/// What the agent of `node` in `cluster` sends: its one node, of `gpus` H100s.
fn node_report(cluster: &str, node: &str, gpus: u32) -> Command {
    Command::ReportNodes {
        cluster: cluster.into(),
        nodes: vec![gpu_node(cluster, node, "H100", gpus, 81_920)],
    }
}

/// Cluster `east` registered, with node agents for `nodes` (one GPU each).
fn east_with_node_agents(nodes: &[&str]) -> Federation {
    let mut f = Federation::new();
    f.apply(Command::RegisterCluster {
        spec: cluster("east", "us-east"),
    })
    .unwrap();
    for node in nodes {
        f.apply(node_report("east", node, 1)).unwrap();
    }
    f
}

fn node_names(f: &Federation, cluster: &str) -> Vec<String> {
    f.state
        .cluster(cluster)
        .unwrap()
        .inventory
        .nodes
        .keys()
        .cloned()
        .collect()
}

fn refused(f: &mut Federation, command: Command) -> Rejection {
    let before = f.state.clone();
    let err = f.apply(command).unwrap_err();
    assert_eq!(f.state, before, "a rejected command changed the state");
    err
}

/// The node the only replica of `w` runs on.
fn node_of(f: &Federation, w: &str) -> String {
    let p = f.state.placement(w).unwrap();
    let r = p.replicas.values().next().unwrap();
    r.devices[0].node.clone()
}

#[test]
fn two_agents_each_reporting_their_own_node_keep_both_nodes() {
    let mut f = east_with_node_agents(&["gpu-a"]);
    f.apply(node_report("east", "gpu-b", 2)).unwrap();
    // gpu-a's agent reports again, seeing only its own node.
    f.apply(node_report("east", "gpu-a", 1)).unwrap();

    assert_eq!(node_names(&f, "east"), ["gpu-a", "gpu-b"]);
    assert_eq!(f.state.cluster("east").unwrap().inventory.device_count(), 3);
}

#[test]
fn a_node_report_gives_the_node_its_own_lease_and_renews_the_clusters() {
    let mut f = east_with_node_agents(&[]);
    let lease = f.state.settings().lease_duration;
    f.now = Timestamp(10_000);
    f.apply(node_report("east", "gpu-a", 1)).unwrap();

    let east = f.state.cluster("east").unwrap();
    assert_eq!(
        east.inventory.nodes["gpu-a"].lease_expires_at,
        Some(Timestamp(10_000) + lease)
    );
    assert_eq!(east.lease_expires_at, Timestamp(10_000) + lease);
}

#[test]
fn node_reports_keep_the_cluster_reachable_without_heartbeats() {
    let mut f = east_with_node_agents(&["gpu-a"]);
    let lease = f.state.settings().lease_duration;
    for _ in 0..5 {
        f.now = f.now + Millis(lease.0 / 2);
        f.apply(node_report("east", "gpu-a", 1)).unwrap();
        assert_eq!(plan(&f.state, f.now), vec![]);
    }
    assert_eq!(f.state.cluster("east").unwrap().state, ClusterState::Ready);
    assert_eq!(node_names(&f, "east"), ["gpu-a"]);
}

#[test]
fn a_node_that_stops_reporting_expires_and_its_replica_is_replaced_elsewhere() {
    let mut f = east_with_node_agents(&["gpu-a", "gpu-b"]);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.plan_and_apply();
    f.materialize();
    let doomed = node_of(&f, "w");
    let survivor = if doomed == "gpu-a" { "gpu-b" } else { "gpu-a" };

    // The replica's node goes silent; the other node's agent keeps reporting, so the
    // cluster itself stays alive.
    let lease = f.state.settings().lease_duration;
    f.now = f.now + lease;
    f.apply(node_report("east", survivor, 1)).unwrap();
    let commands = f.plan_and_apply();

    assert_eq!(
        commands[0],
        Command::ExpireNode {
            cluster: "east".into(),
            node: doomed.clone(),
        }
    );
    assert!(
        matches!(&commands[1], Command::StartReplica { cluster, devices, replaces: None, .. }
            if cluster == "east" && devices[0].node == survivor),
        "replaced on the other node in the same pass: {commands:?}"
    );
    assert_eq!(node_names(&f, "east"), [survivor]);
    assert_eq!(f.state.cluster("east").unwrap().state, ClusterState::Ready);
    assert!(f.events.iter().any(|e| matches!(
        e,
        Event::ReplicaLost {
            cause: LossCause::NodeExpired,
            ..
        }
    )));
    assert!(f.events.contains(&Event::NodeExpired {
        cluster: "east".into(),
        node: doomed,
    }));
    f.materialize();
    let p = f.state.placement("w").unwrap();
    assert_eq!(p.replicas.len(), 1);
    assert_eq!(p.replicas.values().next().unwrap().phase, Phase::Ready);
    assert_eq!(plan(&f.state, f.now), vec![], "the pass was complete");
}

#[test]
fn a_node_that_comes_back_after_expiring_is_added_again() {
    let mut f = east_with_node_agents(&["gpu-a", "gpu-b"]);
    let lease = f.state.settings().lease_duration;
    f.now = f.now + lease;
    f.apply(node_report("east", "gpu-a", 1)).unwrap();
    f.plan_and_apply();
    assert_eq!(node_names(&f, "east"), ["gpu-a"]);

    f.apply(node_report("east", "gpu-b", 1)).unwrap();
    assert_eq!(node_names(&f, "east"), ["gpu-a", "gpu-b"]);
}

#[test]
fn a_node_expiry_before_the_lease_runs_out_is_refused() {
    let mut f = east_with_node_agents(&["gpu-a"]);
    let err = refused(
        &mut f,
        Command::ExpireNode {
            cluster: "east".into(),
            node: "gpu-a".into(),
        },
    );
    assert!(err.to_string().contains("not expired"), "{err}");
    assert!(err.to_string().starts_with("node \"east/gpu-a\""), "{err}");
}

#[test]
fn a_node_of_a_whole_cluster_report_has_no_lease_to_expire() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    f.now = f.now + Millis::from_secs(3600);
    assert!(
        plan(&f.state, f.now)
            .iter()
            .all(|c| !matches!(c, Command::ExpireNode { .. })),
        "its node lives by the cluster's lease"
    );
    let err = refused(
        &mut f,
        Command::ExpireNode {
            cluster: "east".into(),
            node: "node-0".into(),
        },
    );
    assert!(err.to_string().contains("no lease of its own"), "{err}");
    let err = refused(
        &mut f,
        Command::ExpireNode {
            cluster: "east".into(),
            node: "gpu-z".into(),
        },
    );
    assert_eq!(
        err,
        Rejection::NotFound {
            kind: ObjectKind::Node,
            name: "east/gpu-z".into()
        }
    );
}

#[test]
fn a_leader_that_could_not_hear_gives_every_node_a_heartbeat_interval_before_expiring_it() {
    let mut f = east_with_node_agents(&["gpu-a"]);
    let lease = f.state.settings().lease_duration;
    f.now = f.now + lease + lease;
    let heard_since = f.now;
    assert!(
        plan_with_lease_floor(&f.state, f.now, heard_since).is_empty(),
        "no node is lost for reports that could not arrive"
    );
    assert!(
        plan(&f.state, f.now).contains(&Command::ExpireNode {
            cluster: "east".into(),
            node: "gpu-a".into()
        }),
        "without the floor the node's lease has expired"
    );
    assert!(
        plan_with_lease_floor(
            &f.state,
            heard_since + f.state.settings().lease_floor(),
            heard_since
        )
        .contains(&Command::ExpireNode {
            cluster: "east".into(),
            node: "gpu-a".into()
        })
    );
}

#[test]
fn a_whole_cluster_report_still_replaces_everything_of_a_cluster_without_node_agents() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    f.apply(Command::ReportCapacity {
        cluster: "east".into(),
        nodes: vec![gpu_node("east", "gpu-c", "H100", 4, 81_920)],
    })
    .unwrap();
    assert_eq!(node_names(&f, "east"), ["gpu-c"]);
    assert_eq!(
        f.state.cluster("east").unwrap().inventory.nodes["gpu-c"].lease_expires_at,
        None,
        "a whole-cluster report's nodes live by the cluster's lease"
    );
}

#[test]
fn a_whole_cluster_report_is_refused_while_node_agents_report_the_cluster() {
    // A stray whole-cluster agent (an older install left running) would drop every
    // node the node agents report, and they would add them back, in a loop.
    let mut f = east_with_node_agents(&["gpu-a", "gpu-b"]);
    let err = refused(
        &mut f,
        Command::ReportCapacity {
            cluster: "east".into(),
            nodes: vec![gpu_node("east", "gpu-c", "H100", 4, 81_920)],
        },
    );
    assert!(matches!(err, Rejection::Precondition { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("reported one by one by node agents"),
        "{err}"
    );
    assert_eq!(node_names(&f, "east"), ["gpu-a", "gpu-b"]);
}

#[test]
fn moving_to_node_agents_puts_the_old_nodes_on_a_lease_without_losing_their_replicas() {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("chat", "H100", 1, 1),
    })
    .unwrap();
    f.settle(Millis::from_secs(1), 5);
    assert_eq!(node_of(&f, "chat"), "node-0");
    let replica = *f
        .state
        .placement("chat")
        .unwrap()
        .replicas
        .keys()
        .next()
        .unwrap();

    // The first node agent reports another node; node-0 keeps its replica, now on
    // a lease of its own.
    f.apply(node_report("east", "gpu-a", 1)).unwrap();
    let east = f.state.cluster("east").unwrap();
    assert!(east.inventory.nodes["node-0"].lease_expires_at.is_some());
    assert!(
        f.state
            .placement("chat")
            .unwrap()
            .replicas
            .contains_key(&replica)
    );

    // node-0 has no node agent: it expires, and its replica is replaced.
    let lease = f.state.settings().lease_duration;
    f.now = f.now + lease;
    f.apply(node_report("east", "gpu-a", 1)).unwrap();
    f.plan_and_apply();
    assert_eq!(node_names(&f, "east"), ["gpu-a"]);
    assert!(
        !f.state
            .placement("chat")
            .unwrap()
            .replicas
            .contains_key(&replica)
    );
}

#[test]
fn a_node_report_leaves_replicas_on_other_nodes_alone_and_loses_those_on_gone_devices() {
    let mut f = east_with_node_agents(&["gpu-a", "gpu-b"]);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 2),
    })
    .unwrap();
    f.plan_and_apply();
    f.materialize();
    assert_eq!(f.state.placement("w").unwrap().replicas.len(), 2);

    // gpu-a's only GPU fails; gpu-b's agent hears nothing of it.
    let mut failed = gpu_node("east", "gpu-a", "H100", 1, 81_920);
    failed.devices[0].healthy = false;
    f.apply(Command::ReportNodes {
        cluster: "east".into(),
        nodes: vec![failed],
    })
    .unwrap();

    let p = f.state.placement("w").unwrap();
    let nodes: Vec<&str> = p
        .replicas
        .values()
        .map(|r| r.devices[0].node.as_str())
        .collect();
    assert_eq!(nodes, ["gpu-b"]);
    assert!(f.events.iter().any(|e| matches!(
        e,
        Event::ReplicaLost {
            cause: LossCause::DeviceLost,
            ..
        }
    )));
}

#[test]
fn a_node_scoped_report_must_name_its_nodes_once_and_not_take_another_nodes_devices() {
    let mut f = east_with_node_agents(&["gpu-a"]);

    let err = refused(
        &mut f,
        Command::ReportNodes {
            cluster: "east".into(),
            nodes: vec![],
        },
    );
    assert_eq!(
        err.to_string(),
        "cluster \"east\": nodes a node-scoped report names at least one node"
    );

    let b = gpu_node("east", "gpu-b", "H100", 1, 81_920);
    let mut b_again = gpu_node("east", "gpu-b", "H100", 1, 81_920);
    b_again.devices[0].uuid = "GPU-other".into();
    let err = refused(
        &mut f,
        Command::ReportNodes {
            cluster: "east".into(),
            nodes: vec![b, b_again],
        },
    );
    assert!(err.to_string().contains("is reported twice"), "{err}");

    // gpu-a keeps its device; another node cannot claim the same UUID.
    let mut thief: NodeReport = gpu_node("east", "gpu-b", "H100", 1, 81_920);
    thief.devices[0].uuid = "GPU-east-gpu-a-0".into();
    let err = refused(
        &mut f,
        Command::ReportNodes {
            cluster: "east".into(),
            nodes: vec![thief],
        },
    );
    assert!(
        matches!(err, Rejection::Precondition { .. }),
        "valid, but not while gpu-a holds it: {err}"
    );
    assert!(err.to_string().contains("is on node \"gpu-a\""), "{err}");

    let err = refused(&mut f, node_report("west", "gpu-a", 1));
    assert_eq!(
        err,
        Rejection::NotFound {
            kind: ObjectKind::Cluster,
            name: "west".into()
        }
    );
}

#[test]
fn a_capacity_report_is_built_for_its_scope() {
    let nodes = vec![gpu_node("east", "gpu-a", "H100", 1, 81_920)];
    assert_eq!(
        Command::capacity_report("east".into(), ReportScope::Cluster, nodes.clone()),
        Command::ReportCapacity {
            cluster: "east".into(),
            nodes: nodes.clone()
        }
    );
    assert_eq!(
        Command::capacity_report("east".into(), ReportScope::Nodes, nodes.clone()),
        Command::ReportNodes {
            cluster: "east".into(),
            nodes
        }
    );
    assert_eq!(ReportScope::default(), ReportScope::Cluster);
}

#[test]
fn commands_and_nodes_written_before_node_leases_still_read() {
    // A log entry and an inventory node as earlier versions wrote them.
    let old_report = r#"{"type":"report_capacity","cluster":"east","nodes":[
        {"name":"gpu-a","devices":[{"uuid":"GPU-1","model":"H100","memory_total_mib":81920}]}]}"#;
    let command: Command = serde_json::from_str(old_report).unwrap();
    assert!(
        matches!(&command, Command::ReportCapacity { cluster, nodes } if cluster == "east" && nodes.len() == 1),
        "{command:?}"
    );
    let old_node = r#"{"devices":{}}"#;
    let node: flotilla_core::Node = serde_json::from_str(old_node).unwrap();
    assert_eq!(node.lease_expires_at, None);
    // A node without a lease is written as before.
    assert_eq!(serde_json::to_string(&node).unwrap(), old_node);

    for command in [
        node_report("east", "gpu-a", 1),
        Command::ExpireNode {
            cluster: "east".into(),
            node: "gpu-a".into(),
        },
    ] {
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    }
}
