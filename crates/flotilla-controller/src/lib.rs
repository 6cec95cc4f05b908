//! One cluster's Kubernetes controller: each replica placed on this cluster is a
//! Deployment of one pod and a Service, in one namespace, applied with server-side
//! apply (field manager `flotilla`). It runs as `flotilla controller` (one pod per
//! cluster) and behind `flotilla agent --materializer kubernetes`.
//!
//! **What it must not do:** decide placements (core does), read GPUs (node agents
//! do), or touch objects it did not make.
//!
//! A replica's life here:
//! - **start**: the Deployment runs the workload's container (its
//!   [`ContainerSpec`](flotilla_core::ContainerSpec), or the `flotilla model`
//!   stand-in image when it has none) with `nvidia.com/gpu: N` in its limits
//!   (`nvidia.com/mig-<profile>: N` for a MIG workload), node affinity on the node
//!   whose GPUs the registry reserved and on NVIDIA GPU feature discovery's
//!   `nvidia.com/gpu.product` label when the workload names GPU models, and a
//!   readiness probe on the serving port. The Service selects that one pod.
//! - **ready**: the Deployment has an available replica of its current generation
//!   → `Ready`, with the endpoint `<service>.<namespace>.svc:<port>`.
//! - **drain**: the registry says Draining → the Deployment is scaled to 0, so the
//!   pod gets SIGTERM, leaves the Service's endpoints and has its termination grace
//!   to finish what is in flight. Once no pod is left, or at the drain deadline,
//!   both objects are deleted, and once the Pod watch shows the pod gone (it holds
//!   its GPUs until then) → `Gone`. A pod still there a termination grace after the
//!   deadline (its node stopped answering) no longer holds the replica back.
//! - **removed**: a replica no longer placed here → its Deployment and Service are
//!   deleted, even while the Deployment is still rolling out (nothing is reported).
//! - **crash**: the Deployment's ReplicaSet restarts the pod, with Kubernetes's own
//!   back-off; a crashing replica simply stays not Ready.
//! - **shutdown**: nothing is deleted. Unlike local processes, Deployments do not
//!   depend on the controller's process, and deleting every inference server
//!   whenever it restarts (an upgrade, a node drain) would be an outage of the
//!   cluster. The next controller finds them by their labels and carries on; a
//!   replica that was placed elsewhere meanwhile is deleted on its first pass.
//!
//! **Shape.** Three parts: [`render`] (a replica's objects, pure), [`decide`] (the
//! whole reconcile decision, pure: desired replicas + workload specs + observed
//! objects + time → actions, reports, when to look again), and [`controller`]
//! ([`KubernetesMaterializer`]: kube-runtime watches and the IO). The controller
//! implements the client crate's
//! [`Materializer`](flotilla_client::materialize::Materializer) trait, so `flotilla
//! agent --materializer kubernetes` and `flotilla controller` run the same code
//! under the shared [`flotilla_client::materialize::run`] loop: that loop passes on
//! a placement change and on its ticker (the resync), and on
//! [`Materializer::wake`](flotilla_client::materialize::Materializer::wake), which
//! this controller resolves on a watch event or a requeue time.
//!
//! **Watches instead of LISTs.** Deployments, Services and their pods are followed
//! with `kube::runtime::watcher` (label selector [`owned_selector`], the default
//! back-off) into `reflector` stores; a watch that ends, or fails with `410 Gone`,
//! is started again by the watcher, which re-lists after a back-off. No pass runs
//! before every store holds its first list. A steady cluster costs the API
//! server nothing but the two open watches; an apply happens only when an object is
//! missing or what Flotilla would write changed (a hash of the rendered object is
//! kept in the `flotilla.dev/spec-hash` annotation). The stores can lag the
//! controller's own writes by an event; a pass in between applies the same object
//! again, which server-side apply makes a no-op.
//!
//! **Failures.** A failed call skips the rest of that replica's actions (its report
//! included) but not other replicas': one replica the API server keeps refusing (a
//! quota, a webhook, an invalid spec) must not hold back the others. A pass with a
//! failure is followed by a doubling back-off (0.5 s to 30 s, jittered) unless the
//! placements change; a clean pass resets it. A `409 Conflict` on an apply is such a
//! failure; a `404` on a delete counts as deleted, and so does a `409` on a delete
//! (its UID precondition: the name now holds someone else's object).
//!
//! **Whose objects.** Only objects labelled `app.kubernetes.io/managed-by: flotilla`
//! with `flotilla.dev/workload`, `flotilla.dev/replica` and this cluster's
//! `flotilla.dev/cluster` are ever changed or deleted (two Flotilla clusters may
//! share a namespace): the watches select by those labels, deletes carry the UID
//! seen as a precondition, and before a name the watch does
//! not show is applied for the first time it is read; an object of that name
//! without our labels (someone else's) is left alone and logged, never overwritten
//! (server-side apply with `force` would otherwise take its fields), and read again
//! after [`decide::FOREIGN_RECHECK`].
//!
//! **Istio** (`KubernetesOptions::istio`): the same pass renders
//! [`flotilla_kube::istio`]'s objects for this cluster from the registry's route
//! table and clusters, applies them server-side as `DynamicObject`s and deletes
//! ours (this cluster's label) that the renderer no longer produces ([`istio`]).
//! Never before the registry was read once, since an empty view would prune every
//! object; an Istio failure is logged and retried on the next pass without holding
//! back the replicas.
//!
//! **Stale reads.** The registry link refuses an answer reflecting an older log
//! index than one already seen (a server that is behind, after a fail-over), so an
//! older replica list never makes a Ready replica look removed.
//!
//! **Devices.** The pod is pinned to the node of the registry's device references
//! (node affinity on `metadata.name`), but the device UUIDs are not passed on: on
//! Kubernetes the NVIDIA device plugin chooses which GPUs of that node a pod gets,
//! so a pod may run on other devices of the node than the registry recorded.

pub mod controller;
pub mod decide;
mod error;
pub mod istio;
pub mod render;

pub use controller::KubernetesMaterializer;
pub use error::ControllerError;
pub use render::{
    deployment_for, endpoint_for, gpu_product_label, gpu_resource, object_name, reserved_node,
    service_for,
};

use flotilla_client::RegistryLink;
use flotilla_core::{ClusterSpec, RouteTable, Workload};
use flotilla_kube::istio::IstioOptions;
use std::collections::BTreeMap;
use std::future::Future;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "flotilla";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const WORKLOAD_LABEL: &str = "flotilla.dev/workload";
pub const REPLICA_LABEL: &str = "flotilla.dev/replica";
pub const CLUSTER_LABEL: &str = flotilla_kube::istio::CLUSTER_LABEL;
/// The model, as a DNS label, on a replica's pods (Istio's ServiceEntry selects it).
pub const MODEL_LABEL: &str = flotilla_kube::istio::MODEL_LABEL;
/// A hash of what Flotilla last applied, so unchanged objects are not applied again.
pub const SPEC_HASH_ANNOTATION: &str = "flotilla.dev/spec-hash";
/// The node label NVIDIA's GPU feature discovery sets (`NVIDIA-H100-80GB-HBM3`).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// MIG instances, with the device plugin's mixed strategy: `nvidia.com/mig-1g.10gb`.
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// Selects every replica object of any cluster; [`owned_selector`] narrows it to
/// one cluster's, the only ones a controller may touch.
pub const OWNED_SELECTOR: &str =
    "app.kubernetes.io/managed-by=flotilla,flotilla.dev/workload,flotilla.dev/replica";

/// Selects the objects `cluster`'s controller made, and nothing else.
pub fn owned_selector(cluster: &str) -> String {
    format!("{OWNED_SELECTOR},{CLUSTER_LABEL}={cluster}")
}

/// How replicas are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// Where Deployments and Services go (the controller's own namespace by default).
    pub namespace: String,
    /// This cluster's name, passed to the stand-in and set as a label.
    pub cluster: String,
    /// The image that runs `flotilla model` for workloads without a container.
    pub stand_in_image: String,
    /// The port the stand-in serves on.
    pub stand_in_port: u16,
    /// How long a pod has between SIGTERM and SIGKILL when it is scaled down.
    pub termination_grace_seconds: i64,
    /// Also apply the Istio objects for the route table (`--istio`), rendered with
    /// these options (`local_cluster` is this cluster).
    pub istio: Option<IstioOptions>,
}

impl KubernetesOptions {
    pub fn new(namespace: impl Into<String>, cluster: impl Into<String>) -> Self {
        KubernetesOptions {
            namespace: namespace.into(),
            cluster: cluster.into(),
            stand_in_image: format!(
                "ghcr.io/flotilla-dev/flotilla:{}",
                env!("CARGO_PKG_VERSION")
            ),
            stand_in_port: 8000,
            termination_grace_seconds: 60,
            istio: None,
        }
    }
}

/// What the controller reads from the registry besides the replicas: the
/// workloads' specs (the desired replicas carry only names) and, for Istio, the
/// route table and the clusters.
#[derive(Debug, Clone, Default)]
pub struct FederationView {
    pub workloads: BTreeMap<String, Workload>,
    pub routes: RouteTable,
    pub clusters: Vec<ClusterSpec>,
}

/// Where the controller reads its [`FederationView`].
pub trait ReadFederation: Send + Sync + 'static {
    fn read(&self) -> impl Future<Output = Result<FederationView, ControllerError>> + Send;
}

/// The registry's workloads, routes and clusters, listed (a page at a time, from
/// one server's copy) once per pass.
#[derive(Debug, Clone)]
pub struct RegistryView<L>(pub L);

impl<L: RegistryLink> ReadFederation for RegistryView<L> {
    async fn read(&self) -> Result<FederationView, ControllerError> {
        let lists = self.0.read_federation().await?;
        Ok(FederationView {
            workloads: lists.workloads,
            routes: lists.routes,
            clusters: lists.clusters,
        })
    }
}

/// The namespace a pod's service account is in, when the controller runs in a pod.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The namespace to use when none is given: the controller's own pod's, else
/// `flotilla`.
pub fn default_namespace() -> String {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "flotilla".to_owned())
}
