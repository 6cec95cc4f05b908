//! The controller's reconcile decision, called directly: desired replicas,
//! workloads and observed objects in; actions, reports and requeue time out.

use super::objects::{desired, options, vllm_workload};
use flotilla_client::materialize::{DesiredReplica, PhaseReport};
use flotilla_controller::decide::{
    Action, Decision, FOREIGN_RECHECK, Kind, Observed, ROLLOUT_RECHECK, decide,
};
use flotilla_controller::{deployment_for, service_for};
use flotilla_core::{Phase, ReplicaId, Timestamp, Workload};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeMap;
use std::time::Duration;

const NOW: Timestamp = Timestamp(1_000_000);

fn workloads() -> BTreeMap<String, Workload> {
    [("chat".to_owned(), vllm_workload())].into()
}

/// Our Deployment for `d` as the API server would hold it, with `status`.
fn running(d: &DesiredReplica, status: DeploymentStatus) -> Deployment {
    let mut dep = deployment_for(d, &vllm_workload(), &options());
    dep.status = Some(status);
    dep
}

fn status(replicas: i32, available: i32) -> DeploymentStatus {
    DeploymentStatus {
        replicas: Some(replicas),
        available_replicas: Some(available),
        ..Default::default()
    }
}

fn service(d: &DesiredReplica) -> Service {
    service_for(d, &vllm_workload(), &options())
}

fn observed(deployments: Vec<Deployment>, services: Vec<Service>) -> Observed {
    Observed {
        deployments: deployments
            .into_iter()
            .map(|d| (d.metadata.name.clone().unwrap_or_default(), d))
            .collect(),
        services: services
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect(),
        pods: Default::default(),
        foreign: Default::default(),
    }
}

fn run(desired: &[DesiredReplica], observed: &Observed) -> Decision {
    decide(desired, &workloads(), observed, &options(), NOW)
}

/// The actions, shortened to what they do to which name.
fn steps(decision: &Decision) -> Vec<String> {
    decision
        .actions
        .iter()
        .map(|a| match a {
            Action::ApplyDeployment { object, unlisted } => format!(
                "apply Deployment {}{}",
                object.metadata.name.as_deref().unwrap_or(""),
                if *unlisted { " (read first)" } else { "" }
            ),
            Action::ApplyService { object, unlisted } => format!(
                "apply Service {}{}",
                object.metadata.name.as_deref().unwrap_or(""),
                if *unlisted { " (read first)" } else { "" }
            ),
            Action::Delete { kind, name, .. } => format!("delete {} {name}", kind.as_str()),
            Action::Report(r) => format!("report {} r{}", r.phase.as_str(), r.replica.0),
            Action::LeaveAlone { kind, name, .. } => format!("leave {} {name}", kind.as_str()),
        })
        .collect()
}

#[test]
fn a_new_replica_gets_its_deployment_and_service_read_first_then_applied() {
    let d = desired("chat", 1, Phase::Starting);
    let decision = run(std::slice::from_ref(&d), &Observed::default());
    assert_eq!(
        steps(&decision),
        [
            "apply Deployment chat-r1 (read first)",
            "apply Service chat-r1 (read first)"
        ]
    );
    assert_eq!(decision.views[0].local_state, "starting");
    assert_eq!(decision.requeue_after, Some(ROLLOUT_RECHECK));
}

#[test]
fn unchanged_objects_are_not_applied_again() {
    let d = desired("chat", 1, Phase::Starting);
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![running(&d, status(1, 0))], vec![service(&d)]),
    );
    assert!(decision.actions.is_empty(), "{:?}", steps(&decision));
}

#[test]
fn a_changed_spec_is_applied_over_our_object_without_reading_it_first() {
    let d = desired("chat", 1, Phase::Starting);
    let mut old = running(&d, status(1, 1));
    old.metadata
        .annotations
        .as_mut()
        .map(|a| a.insert("flotilla.dev/spec-hash".into(), "older".into()));
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![old], vec![service(&d)]),
    );
    assert_eq!(steps(&decision), ["apply Deployment chat-r1"]);
    assert!(
        decision.reports().is_empty(),
        "an available pod of the old spec does not make the new one Ready"
    );
}

#[test]
fn an_available_deployment_is_reported_ready_at_its_service() {
    let d = desired("chat", 1, Phase::Starting);
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![running(&d, status(1, 1))], vec![service(&d)]),
    );
    assert_eq!(
        decision.reports(),
        [&PhaseReport {
            workload: "chat".into(),
            replica: ReplicaId(1),
            phase: Phase::Ready,
            endpoint: Some("chat-r1.gpu.svc:8000".into()),
        }]
    );
    assert_eq!(decision.views[0].local_state, "ready");
    assert_eq!(decision.requeue_after, None, "nothing to wait for");
}

#[test]
fn a_ready_replica_the_registry_knows_is_not_reported_again() {
    let mut d = desired("chat", 1, Phase::Ready);
    d.endpoint = Some("chat-r1.gpu.svc:8000".into());
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![running(&d, status(1, 1))], vec![service(&d)]),
    );
    assert!(decision.actions.is_empty(), "{:?}", steps(&decision));
}

#[test]
fn a_status_of_an_older_generation_does_not_count_as_ready() {
    let d = desired("chat", 1, Phase::Starting);
    let mut dep = running(
        &d,
        DeploymentStatus {
            observed_generation: Some(1),
            ..status(1, 1)
        },
    );
    dep.metadata.generation = Some(2);
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![dep], vec![service(&d)]),
    );
    assert!(decision.reports().is_empty());
    assert_eq!(decision.requeue_after, Some(ROLLOUT_RECHECK));
}

#[test]
fn a_placement_removed_while_the_deployment_rolls_out_is_deleted_and_nothing_is_reported() {
    let d = desired("chat", 1, Phase::Starting);
    let rolling_out = running(&d, status(1, 0));
    let decision = run(&[], &observed(vec![rolling_out], vec![service(&d)]));
    assert_eq!(
        steps(&decision),
        ["delete Deployment chat-r1", "delete Service chat-r1"]
    );
    assert!(decision.reports().is_empty());
}

#[test]
fn a_drain_scales_the_deployment_to_zero_and_waits_until_its_deadline() {
    let mut d = desired("chat", 1, Phase::Draining);
    d.drain_deadline = Some(Timestamp(NOW.0 + 20_000));
    let serving = running(&desired("chat", 1, Phase::Ready), status(1, 1));
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![serving], vec![service(&d)]),
    );
    assert_eq!(steps(&decision), ["apply Deployment chat-r1"]);
    let Action::ApplyDeployment { object, .. } = &decision.actions[0] else {
        unreachable!()
    };
    assert_eq!(object.spec.as_ref().and_then(|s| s.replicas), Some(0));
    assert_eq!(decision.views[0].local_state, "draining");
    assert_eq!(decision.requeue_after, Some(Duration::from_secs(20)));
}

#[test]
fn a_drained_deployment_is_deleted_with_its_service_then_gone_is_reported() {
    let mut d = desired("chat", 1, Phase::Draining);
    d.drain_deadline = Some(Timestamp(NOW.0 + 20_000));
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![running(&d, status(0, 0))], vec![service(&d)]),
    );
    assert_eq!(
        steps(&decision),
        [
            "delete Deployment chat-r1",
            "delete Service chat-r1",
            "report Gone r1"
        ]
    );
}

#[test]
fn a_drain_deadline_passed_with_pods_still_terminating_deletes_and_reports_gone() {
    let mut d = desired("chat", 1, Phase::Draining);
    d.drain_deadline = Some(Timestamp(NOW.0 - 1));
    // Scaled to 0 already, but the pod has not left yet.
    let terminating = running(&d, status(1, 0));
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![terminating], vec![service(&d)]),
    );
    assert_eq!(
        steps(&decision),
        [
            "delete Deployment chat-r1",
            "delete Service chat-r1",
            "report Gone r1"
        ]
    );
}

#[test]
fn a_drained_replica_whose_pod_is_still_terminating_is_not_gone_yet() {
    let mut d = desired("chat", 1, Phase::Draining);
    d.drain_deadline = Some(Timestamp(NOW.0 + 20_000));
    let mut seen = observed(vec![running(&d, status(0, 0))], vec![service(&d)]);
    seen.pods.insert("chat-r1".into(), 1);
    let decision = run(std::slice::from_ref(&d), &seen);
    assert_eq!(
        steps(&decision),
        ["delete Deployment chat-r1", "delete Service chat-r1"],
        "the pod holds its GPUs until it is gone"
    );
    assert_eq!(decision.views[0].local_state, "draining");
    // Given up on a termination grace after the deadline.
    let grace = Duration::from_secs(options().termination_grace_seconds as u64);
    assert_eq!(
        decision.requeue_after,
        Some(Duration::from_secs(20) + grace)
    );

    seen = observed(Vec::new(), Vec::new());
    let decision = run(std::slice::from_ref(&d), &seen);
    assert_eq!(steps(&decision), ["report Gone r1"], "gone once the pod is");
}

#[test]
fn a_pod_that_never_goes_holds_the_replica_only_until_its_grace_after_the_deadline() {
    let mut d = desired("chat", 1, Phase::Draining);
    let grace_ms = options().termination_grace_seconds as u64 * 1000;
    d.drain_deadline = Some(Timestamp(NOW.0 - grace_ms));
    let mut seen = Observed::default();
    seen.pods.insert("chat-r1".into(), 1);
    let decision = run(std::slice::from_ref(&d), &seen);
    assert_eq!(steps(&decision), ["report Gone r1"]);
}

#[test]
fn a_deployment_scaled_or_changed_by_hand_is_applied_again() {
    let d = desired("chat", 1, Phase::Ready);
    let mut scaled = running(&d, status(3, 3));
    if let Some(spec) = scaled.spec.as_mut() {
        spec.replicas = Some(3);
    }
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![scaled], vec![service(&d)]),
    );
    assert_eq!(steps(&decision), ["apply Deployment chat-r1"]);

    let mut retargeted = service(&d);
    if let Some(spec) = retargeted.spec.as_mut() {
        spec.selector = Some([("app".to_owned(), "something-else".to_owned())].into());
    }
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![running(&d, status(1, 1))], vec![retargeted]),
    );
    assert_eq!(steps(&decision)[0], "apply Service chat-r1");
}

#[test]
fn a_draining_replica_with_nothing_left_is_simply_gone() {
    let d = desired("chat", 1, Phase::Draining);
    let decision = run(std::slice::from_ref(&d), &Observed::default());
    assert_eq!(steps(&decision), ["report Gone r1"]);
}

#[test]
fn a_foreign_object_with_our_name_is_left_alone_and_looked_at_again_later() {
    let d = desired("chat", 1, Phase::Starting);
    let mut seen = Observed::default();
    seen.foreign.insert((Kind::Deployment, "chat-r1".into()));
    let decision = run(std::slice::from_ref(&d), &seen);
    assert_eq!(steps(&decision), ["leave Deployment chat-r1"]);
    assert_eq!(decision.views[0].local_state, "failed");
    assert_eq!(decision.requeue_after, Some(FOREIGN_RECHECK));
}

#[test]
fn an_object_labelled_for_another_replica_is_neither_applied_over_nor_deleted() {
    let d = desired("chat", 1, Phase::Starting);
    let mut other = running(&d, status(1, 1));
    other
        .metadata
        .labels
        .as_mut()
        .map(|l| l.insert("flotilla.dev/replica".into(), "9".into()));
    let decision = run(std::slice::from_ref(&d), &observed(vec![other], vec![]));
    assert_eq!(steps(&decision), ["leave Deployment chat-r1"]);
}

#[test]
fn a_listed_object_whose_labels_name_no_replica_is_left_alone() {
    let d = desired("chat", 1, Phase::Ready);
    let mut odd = running(&d, status(1, 1));
    odd.metadata.name = Some("odd".into());
    odd.metadata
        .labels
        .as_mut()
        .map(|l| l.insert("flotilla.dev/replica".into(), "not-a-number".into()));
    let decision = run(&[], &observed(vec![odd], vec![]));
    assert_eq!(steps(&decision), ["leave Deployment odd"]);
}

#[test]
fn a_replica_whose_workload_is_not_known_yet_is_neither_started_nor_stopped() {
    let d = desired("unknown", 1, Phase::Starting);
    let mut dep = running(&desired("chat", 1, Phase::Ready), status(1, 1));
    dep.metadata.name = Some("unknown-r1".into());
    dep.metadata
        .labels
        .as_mut()
        .map(|l| l.insert("flotilla.dev/workload".into(), "unknown".into()));
    let decision = run(std::slice::from_ref(&d), &observed(vec![dep], vec![]));
    assert!(decision.actions.is_empty(), "{:?}", steps(&decision));
}

#[test]
fn a_missing_service_alone_is_applied_again() {
    let d = desired("chat", 1, Phase::Starting);
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![running(&d, status(1, 1))], vec![]),
    );
    assert_eq!(
        steps(&decision),
        ["apply Service chat-r1 (read first)", "report Ready r1"]
    );
}

#[test]
fn another_flotilla_clusters_leftover_in_the_same_namespace_is_not_deleted() {
    // Two Flotilla clusters may share one Kubernetes namespace (kind, staging).
    let d = desired("chat", 1, Phase::Starting);
    let mut theirs = running(&d, status(1, 1));
    theirs
        .metadata
        .labels
        .as_mut()
        .map(|l| l.insert("flotilla.dev/cluster".into(), "other-cluster".into()));
    let decision = run(&[], &observed(vec![theirs], vec![]));
    assert_eq!(steps(&decision), ["leave Deployment chat-r1"]);
}

#[test]
fn a_leftover_is_deleted_on_condition_that_it_is_still_the_object_seen() {
    let d = desired("chat", 1, Phase::Starting);
    let mut ours = running(&d, status(1, 1));
    ours.metadata.uid = Some("uid-1".into());
    let decision = run(&[], &observed(vec![ours], vec![]));
    assert!(
        matches!(
            decision.actions.as_slice(),
            [Action::Delete { uid: Some(uid), .. }] if uid == "uid-1"
        ),
        "{:?}",
        steps(&decision)
    );
}

#[test]
fn after_a_spec_change_an_available_old_pod_is_not_the_new_spec_ready() {
    // Recreate: the status has caught up with the new generation, but the pod
    // counted available is still the old one (no pod of the new spec yet).
    let d = desired("chat", 1, Phase::Starting);
    let mut dep = running(&d, status(1, 1));
    dep.metadata.generation = Some(2);
    if let Some(s) = dep.status.as_mut() {
        s.observed_generation = Some(2);
        s.updated_replicas = None;
    }
    let decision = run(
        std::slice::from_ref(&d),
        &observed(vec![dep], vec![service(&d)]),
    );
    assert!(decision.reports().is_empty(), "{:?}", steps(&decision));
}
