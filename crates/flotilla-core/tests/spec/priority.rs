//! Who yields when GPUs are scarce.

use flotilla_core::fixtures::{Federation, gpu_node, workload};
use flotilla_core::{Command, Millis, plan};

#[test]
fn a_higher_priority_workload_preempts_lower_ones_to_reach_its_minimum() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 2);
    let mut batch = workload("batch", "small", 1, 2);
    batch.priority = 1;
    f.apply(Command::ApplyWorkload { workload: batch }).unwrap();
    f.settle(Millis(1000), 5);

    let mut chat = workload("chat", "big", 2, 1);
    chat.priority = 10;
    f.apply(Command::ApplyWorkload { workload: chat }).unwrap();
    let commands = plan(&f.state, f.now);
    let preempted: Vec<_> = commands
        .iter()
        .filter(
            |c| matches!(c, Command::PreemptReplica { for_workload, .. } if for_workload == "chat"),
        )
        .collect();
    assert_eq!(preempted.len(), 2, "chat needs both GPUs: {commands:?}");

    f.settle(Millis(1000), 10);
    let p = f.state.placement("chat").unwrap();
    assert_eq!(p.active_count(), 1, "chat runs once its victims drained");
}

#[test]
fn a_lower_priority_workload_never_preempts_a_higher_one() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 1);
    let mut chat = workload("chat", "big", 1, 1);
    chat.priority = 10;
    f.apply(Command::ApplyWorkload { workload: chat }).unwrap();
    f.settle(Millis(1000), 5);
    let mut batch = workload("batch", "small", 1, 1);
    batch.priority = 1;
    f.apply(Command::ApplyWorkload { workload: batch }).unwrap();
    assert_eq!(plan(&f.state, f.now), vec![]);
    assert!(
        f.apply(Command::PreemptReplica {
            workload: "chat".into(),
            replica: *f
                .state
                .placement("chat")
                .unwrap()
                .replicas
                .keys()
                .next()
                .unwrap(),
            for_workload: "batch".into(),
        })
        .is_err(),
        "apply refuses it too"
    );
}

#[test]
fn preemption_can_be_turned_off() {
    let mut f = Federation::new();
    f.apply(Command::SetSettings {
        settings: flotilla_core::Settings {
            preemption: false,
            ..Default::default()
        },
    })
    .unwrap();
    f.add_cluster("a", "r1", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("low", "small", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    let mut high = workload("high", "big", 1, 1);
    high.priority = 5;
    f.apply(Command::ApplyWorkload { workload: high }).unwrap();
    assert_eq!(plan(&f.state, f.now), vec![]);
}

#[test]
fn gpus_freed_by_a_preemption_go_to_the_workload_that_preempted() {
    // Found by the simulator: while the victims drained, their own workload took the
    // node's free GPUs back, so the preemptor never fit and preempted forever.
    let mut f = Federation::new();
    f.add_cluster("c", "r", "H100", 4);
    f.apply(Command::ReportCapacity {
        cluster: "c".into(),
        nodes: vec![
            gpu_node("c", "n1", "H100", 4, 81_920),
            gpu_node("c", "n2", "H100", 4, 81_920),
        ],
    })
    .unwrap();
    // Six 1-GPU chat replicas: n1 full, two on n2, two GPUs of n2 free.
    let mut chat = workload("chat", "chat", 1, 6);
    chat.priority = 10;
    f.apply(Command::ApplyWorkload { workload: chat }).unwrap();
    f.settle(Millis(1000), 5);
    // A 4-GPU, higher-priority workload arrives: it preempts the two chat replicas
    // on n2, which with n2's two free GPUs make a node for it.
    let mut code = workload("code", "code", 4, 1);
    code.priority = 20;
    f.apply(Command::ApplyWorkload { workload: code }).unwrap();
    let first = f.plan_and_apply();
    let victims = first
        .iter()
        .filter(|c| matches!(c, Command::PreemptReplica { .. }))
        .count();
    assert_eq!(victims, 2, "{first:?}");

    // Passes while the victims drain hand n2's free GPUs to no one else.
    f.now = f.now + Millis(1000);
    f.heartbeat_all();
    let second = f.plan_and_apply();
    assert!(
        second
            .iter()
            .all(|c| !matches!(c, Command::StartReplica { cluster, devices, .. } if cluster == "c" && devices[0].node == "n2")),
        "{second:?}"
    );

    // The victims finish draining: code takes n2.
    f.now = f.now + Millis(1000);
    f.materialize();
    let third = f.plan_and_apply();
    assert!(
        third
            .iter()
            .any(|c| matches!(c, Command::StartReplica { workload, .. } if workload == "code")),
        "{third:?}"
    );
}
