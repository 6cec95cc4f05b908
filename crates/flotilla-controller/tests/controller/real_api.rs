//! The controller against a real API server: a Kubernetes control plane of the test
//! kit ([`flotilla_testkit::kube::KubeCluster`], built by `tests/kube/setup.sh`),
//! with no node, so the pods stay Pending and only the objects are checked. The
//! whole system on real clusters (nodes, RBAC, moves) is
//! `crates/flotilla/tests/kube_e2e.rs`.

use super::objects::{desired, options, vllm_workload};
use flotilla_client::materialize::{DesiredReplica, Materializer};
use flotilla_controller::{FederationView, KubernetesMaterializer};
use flotilla_core::Phase;
use flotilla_testkit::kube::KubeCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use std::time::Duration;

/// Passes until `done` says so, woken by the controller's watches (1 s at most
/// between passes), for up to 60 s.
async fn converge<F, Fut>(
    m: &mut KubernetesMaterializer<FederationView>,
    desired: &[DesiredReplica],
    mut done: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            () = m.wake() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        m.reconcile(desired).await;
        if done().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not converge in 60 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_replica_appears_as_our_labelled_deployment_and_service_and_goes_when_removed() {
    let cluster = KubeCluster::start("controller").await.unwrap();
    let client = cluster.admin().await.unwrap();
    let namespace = "default".to_owned();
    let mut o = options();
    o.namespace = namespace.clone();
    let view = FederationView {
        workloads: [("chat".to_owned(), vllm_workload())].into(),
        ..FederationView::default()
    };
    let mut m = KubernetesMaterializer::new(client.clone(), view, o);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client, &namespace);
    let d = desired("chat", 1, Phase::Starting);

    converge(&mut m, std::slice::from_ref(&d), || async {
        matches!(deployments.get_opt("chat-r1").await, Ok(Some(_)))
            && matches!(services.get_opt("chat-r1").await, Ok(Some(_)))
    })
    .await;
    let dep = deployments.get("chat-r1").await.expect("the Deployment");
    let labels = dep.metadata.labels.unwrap_or_default();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "flotilla");
    assert_eq!(labels["flotilla.dev/workload"], "chat");
    assert_eq!(labels["flotilla.dev/replica"], "1");
    let managers: Vec<String> = dep
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(managers.contains(&"flotilla".to_owned()), "{managers:?}");

    converge(&mut m, &[], || async {
        matches!(deployments.get_opt("chat-r1").await, Ok(None))
            && matches!(services.get_opt("chat-r1").await, Ok(None))
    })
    .await;
    m.shutdown().await;
}
