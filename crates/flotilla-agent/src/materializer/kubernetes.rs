//! The Kubernetes materializer: each replica placed on this cluster is a Deployment
//! of one pod and a Service, in one namespace, applied with server-side apply (field
//! manager `flotilla`).
//!
//! A replica's life here:
//! - **start**: the Deployment runs the workload's container (its
//!   [`ContainerSpec`], or the `flotilla model` stand-in image when it has none) with
//!   `nvidia.com/gpu: N` in its limits, node affinity on NVIDIA GPU feature
//!   discovery's `nvidia.com/gpu.product` label when the workload names GPU models,
//!   and a readiness probe on the serving port. The Service selects that one pod.
//! - **ready**: the Deployment has an available replica → `Ready`, with the endpoint
//!   `<service>.<namespace>.svc:<port>`.
//! - **drain**: the registry says Draining → the Deployment is scaled to 0, so the
//!   pod gets SIGTERM, leaves the Service's endpoints and has its termination grace
//!   to finish what is in flight. Once no pod is left, or at the drain deadline,
//!   both objects are deleted → `Gone`.
//! - **removed**: a replica no longer placed here → its Deployment and Service are
//!   deleted.
//! - **crash**: the Deployment's ReplicaSet restarts the pod, with Kubernetes's own
//!   back-off; a crashing replica simply stays not Ready.
//! - **shutdown**: nothing is deleted. Unlike local processes, Deployments do not
//!   depend on the agent's process, and deleting every inference server whenever the
//!   agent restarts (an upgrade, a node drain) would be an outage of the cluster.
//!   The next agent finds them by their labels and carries on; a replica that was
//!   placed elsewhere meanwhile is deleted on its first pass.
//!
//! **Whose objects.** Only objects labelled `app.kubernetes.io/managed-by: flotilla`
//! with `flotilla.dev/workload` and `flotilla.dev/replica` are ever changed or
//! deleted: they are found with that label selector, and before a name is applied
//! for the first time it is read, and an object of that name without our labels
//! (someone else's) is left alone and logged, never overwritten (server-side apply
//! with `force` would otherwise take its fields).
//!
//! **Cost per pass.** Two LISTs (Deployments, Services); an apply only when an object
//! is missing or what Flotilla would write changed (a hash of the rendered object is
//! kept in the `flotilla.dev/spec-hash` annotation), so a steady cluster costs two
//! reads per poll.
//!
//! **Devices.** The registry's device references are not passed on: on Kubernetes
//! the NVIDIA device plugin chooses which GPUs a pod gets, so a pod may run on
//! other devices of the node than the registry recorded.

use super::{DesiredReplica, Materializer, PhaseReport, ReplicaView};
use crate::AgentError;
use crate::registry::RegistryLink;
use flotilla_core::{ContainerSpec, Phase, ReplicaId, Workload};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, HTTPGetAction, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, TCPSocketAction, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "flotilla";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const WORKLOAD_LABEL: &str = "flotilla.dev/workload";
pub const REPLICA_LABEL: &str = "flotilla.dev/replica";
pub const CLUSTER_LABEL: &str = "flotilla.dev/cluster";
/// A hash of what Flotilla last applied, so unchanged objects are not applied again.
pub const SPEC_HASH_ANNOTATION: &str = "flotilla.dev/spec-hash";
/// The node label NVIDIA's GPU feature discovery sets (`NVIDIA-H100-80GB-HBM3`).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Selects every object this materializer may touch, and nothing else.
pub const OWNED_SELECTOR: &str =
    "app.kubernetes.io/managed-by=flotilla,flotilla.dev/workload,flotilla.dev/replica";

/// How replicas are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// Where Deployments and Services go (the agent's own namespace by default).
    pub namespace: String,
    /// This cluster's name, passed to the stand-in and set as a label.
    pub cluster: String,
    /// The image that runs `flotilla model` for workloads without a container.
    pub stand_in_image: String,
    /// The port the stand-in serves on.
    pub stand_in_port: u16,
    /// How long a pod has between SIGTERM and SIGKILL when it is scaled down.
    pub termination_grace_seconds: i64,
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
        }
    }
}

/// Where the materializer learns each workload's spec (its container, its GPUs):
/// the desired replicas carry only names.
pub trait WorkloadSpecs: Send + Sync + 'static {
    fn workloads(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, Workload>, AgentError>> + Send;
}

/// The workloads as the registry holds them (one more local read per pass).
#[derive(Debug, Clone)]
pub struct RegistryWorkloads<L>(pub L);

impl<L: RegistryLink> WorkloadSpecs for RegistryWorkloads<L> {
    async fn workloads(&self) -> Result<BTreeMap<String, Workload>, AgentError> {
        Ok(self.0.read_state().await?.workloads().clone())
    }
}

/// The object name of a replica: `<workload>-r<id>`, a DNS-1035 label (the
/// Service's name must be one). A name too long keeps a hash of the whole
/// workload name, so two long workloads never share a name.
pub fn object_name(workload: &str, replica: ReplicaId) -> String {
    let suffix = format!("-r{}", replica.0);
    let mut base = workload.to_owned();
    // DNS-1035: starts with a letter (workload names may start with a digit).
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert(0, 'w');
    }
    if base.len() + suffix.len() > 63 {
        let hash = format!("-{:08x}", fnv1a(workload.as_bytes()) as u32);
        base.truncate(63 - suffix.len() - hash.len());
        let base = base.trim_end_matches('-');
        return format!("{base}{hash}{suffix}");
    }
    format!("{base}{suffix}")
}

/// The `nvidia.com/gpu.product` value GPU feature discovery gives a product name
/// as NVML reports it (`NVIDIA H100 80GB HBM3` → `NVIDIA-H100-80GB-HBM3`); `None`
/// when it cannot be a label value.
pub fn gpu_product_label(model: &str) -> Option<String> {
    let value: String = model
        .trim()
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect();
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    ok.then_some(value)
}

fn labels(d: &DesiredReplica, o: &KubernetesOptions) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL, FIELD_MANAGER.to_owned()),
        (WORKLOAD_LABEL, d.workload.clone()),
        (REPLICA_LABEL, d.id.0.to_string()),
        (CLUSTER_LABEL, o.cluster.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The labels a replica's pods are selected by (immutable in a Deployment).
fn selector(d: &DesiredReplica) -> BTreeMap<String, String> {
    [
        (WORKLOAD_LABEL.to_owned(), d.workload.clone()),
        (REPLICA_LABEL.to_owned(), d.id.0.to_string()),
    ]
    .into()
}

/// The container a replica runs: the workload's, or the stand-in.
fn container_of(d: &DesiredReplica, w: &Workload, o: &KubernetesOptions) -> ContainerSpec {
    match &w.container {
        Some(c) => ContainerSpec::clone(c),
        None => ContainerSpec {
            image: o.stand_in_image.clone(),
            args: vec![
                "model".into(),
                "--listen".into(),
                format!("0.0.0.0:{}", o.stand_in_port),
                "--model".into(),
                d.model.clone(),
                "--replica".into(),
                format!("r{}", d.id.0),
                "--cluster".into(),
                o.cluster.clone(),
            ],
            env: BTreeMap::new(),
            ports: vec![flotilla_core::ContainerPort {
                name: "http".into(),
                container_port: u32::from(o.stand_in_port),
                protocol: flotilla_core::PortProtocol::Tcp,
            }],
            health_path: Some("/health".into()),
            resources: Default::default(),
        },
    }
}

/// The port a replica serves on: its container's first.
fn serving_port(c: &ContainerSpec) -> Option<&flotilla_core::ContainerPort> {
    c.ports.first()
}

/// The Deployment for one replica: one pod (none while draining), `Recreate` so
/// that a changed spec never needs a second set of GPUs.
pub fn deployment_for(d: &DesiredReplica, w: &Workload, o: &KubernetesOptions) -> Deployment {
    let name = object_name(&d.workload, d.id);
    let c = container_of(d, w, o);
    let port = serving_port(&c);
    let mut limits: BTreeMap<String, Quantity> = c
        .resources
        .limits
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    limits.insert(GPU_RESOURCE.into(), Quantity(w.gpu.count.to_string()));
    let requests: BTreeMap<String, Quantity> = c
        .resources
        .requests
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    let readiness = port.map(|p| {
        let target = IntOrString::String(p.name.clone());
        let (http_get, tcp_socket) = match &c.health_path {
            Some(path) => (
                Some(HTTPGetAction {
                    path: Some(path.clone()),
                    port: target,
                    ..Default::default()
                }),
                None,
            ),
            None => (
                None,
                Some(TCPSocketAction {
                    port: target,
                    ..Default::default()
                }),
            ),
        };
        Probe {
            http_get,
            tcp_socket,
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }
    });
    let products: Vec<String> = w
        .gpu
        .models
        .iter()
        .filter_map(|m| gpu_product_label(m))
        .collect();
    let affinity = (!products.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: GPU_PRODUCT_LABEL.into(),
                        operator: "In".into(),
                        values: Some(products),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let container = Container {
        name: "replica".into(),
        image: Some(c.image.clone()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        env: (!c.env.is_empty()).then(|| {
            c.env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..Default::default()
                })
                .collect()
        }),
        ports: (!c.ports.is_empty()).then(|| {
            c.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: i32::try_from(p.container_port).unwrap_or(i32::MAX),
                    protocol: Some(p.protocol.as_str().into()),
                    ..Default::default()
                })
                .collect()
        }),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }),
        readiness_probe: readiness,
        ..Default::default()
    };
    let replicas = if d.phase == Phase::Draining { 0 } else { 1 };
    let mut deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(o.namespace.clone()),
            labels: Some(labels(d, o)),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(d)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(d, o)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    affinity,
                    // GPU nodes are commonly tainted so that only GPU pods land there.
                    tolerations: Some(vec![Toleration {
                        key: Some(GPU_RESOURCE.into()),
                        operator: Some("Exists".into()),
                        effect: Some("NoSchedule".into()),
                        ..Default::default()
                    }]),
                    termination_grace_period_seconds: Some(o.termination_grace_seconds),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    let hash = hash_of(&deployment);
    stamp(&mut deployment.metadata, &hash);
    deployment
}

/// The Service for one replica: its container's ports, selecting its one pod.
pub fn service_for(d: &DesiredReplica, w: &Workload, o: &KubernetesOptions) -> Service {
    let c = container_of(d, w, o);
    let mut service = Service {
        metadata: ObjectMeta {
            name: Some(object_name(&d.workload, d.id)),
            namespace: Some(o.namespace.clone()),
            labels: Some(labels(d, o)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector(d)),
            ports: Some(
                c.ports
                    .iter()
                    .map(|p| {
                        let number = i32::try_from(p.container_port).unwrap_or(i32::MAX);
                        ServicePort {
                            name: Some(p.name.clone()),
                            port: number,
                            target_port: Some(IntOrString::String(p.name.clone())),
                            protocol: Some(p.protocol.as_str().into()),
                            ..Default::default()
                        }
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    };
    let hash = hash_of(&service);
    stamp(&mut service.metadata, &hash);
    service
}

/// Where a replica serves: `<service>.<namespace>.svc:<port>`.
pub fn endpoint_for(d: &DesiredReplica, w: &Workload, o: &KubernetesOptions) -> Option<String> {
    let c = container_of(d, w, o);
    serving_port(&c).map(|p| {
        format!(
            "{}.{}.svc:{}",
            object_name(&d.workload, d.id),
            o.namespace,
            p.container_port
        )
    })
}

/// FNV-1a of the rendered object's JSON (k8s-openapi writes fields in a fixed
/// order and maps sorted, so equal objects hash equal across agent restarts).
fn hash_of<T: serde::Serialize>(object: &T) -> String {
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    format!("{:016x}", fnv1a(&bytes))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn stamp(meta: &mut ObjectMeta, hash: &str) {
    meta.annotations = Some([(SPEC_HASH_ANNOTATION.to_owned(), hash.to_owned())].into());
}

/// Whether an object carries every label that makes it ours, for this replica.
fn owned_by(labels: &BTreeMap<String, String>, workload: &str, replica: ReplicaId) -> bool {
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(FIELD_MANAGER)
        && labels.get(WORKLOAD_LABEL).map(String::as_str) == Some(workload)
        && labels.get(REPLICA_LABEL) == Some(&replica.0.to_string())
}

/// The replica an owned object belongs to, from its labels.
fn replica_of(labels: &BTreeMap<String, String>) -> Option<(String, ReplicaId)> {
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(FIELD_MANAGER) {
        return None;
    }
    let workload = labels.get(WORKLOAD_LABEL)?.clone();
    let id = labels.get(REPLICA_LABEL)?.parse().ok()?;
    Some((workload, ReplicaId(id)))
}

fn available(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n >= 1)
}

/// No pod left (a drained Deployment).
fn scaled_down(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.replicas)
        .is_none_or(|n| n == 0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the Kubernetes API said, for the log.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
struct KubeCall {
    operation: String,
    #[source]
    source: kube::Error,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Runs replicas as Deployments; see the module docs.
pub struct KubernetesMaterializer<W> {
    deployments: Api<Deployment>,
    services: Api<Service>,
    specs: W,
    options: KubernetesOptions,
    /// The last workloads read: kept when the registry cannot be read (fail-static).
    workloads: BTreeMap<String, Workload>,
    views: Vec<ReplicaView>,
}

impl<W> std::fmt::Debug for KubernetesMaterializer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesMaterializer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The namespace a pod's service account is in, when the agent runs in a pod.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The namespace to use when none is given: the agent's own pod's, else `flotilla`.
pub fn default_namespace() -> String {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "flotilla".to_owned())
}

impl<W: WorkloadSpecs> KubernetesMaterializer<W> {
    /// Connects with the in-cluster configuration (the pod's service account) or
    /// else `KUBECONFIG` / `~/.kube/config`; fails, saying so, when there is neither.
    /// Only the configuration is read here: the API server is first called on the
    /// first pass.
    pub async fn connect(specs: W, options: KubernetesOptions) -> Result<Self, AgentError> {
        let client = Client::try_default()
            .await
            .map_err(|e| AgentError::Kubernetes {
                message: format!(
                    "no Kubernetes configuration: not running in a pod with a service account, and no usable KUBECONFIG or ~/.kube/config ({e})"
                ),
            })?;
        Ok(Self::new(client, specs, options))
    }

    /// A materializer using `client` (in tests, a mock API server).
    pub fn new(client: Client, specs: W, options: KubernetesOptions) -> Self {
        KubernetesMaterializer {
            deployments: Api::namespaced(client.clone(), &options.namespace),
            services: Api::namespaced(client, &options.namespace),
            specs,
            options,
            workloads: BTreeMap::new(),
            views: Vec::new(),
        }
    }

    /// Applies `object` under `name` unless an object of that name exists that is
    /// not ours (read first when our list did not show it).
    async fn apply<K>(
        api: &Api<K>,
        name: &str,
        object: &K,
        listed: bool,
        d: &DesiredReplica,
    ) -> Result<Option<K>, KubeCall>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&()).into_owned();
        if !listed {
            match api.get(name).await {
                Ok(existing) if !owned_by(existing.labels(), &d.workload, d.id) => {
                    tracing::warn!(kind = %kind, name, workload = %d.workload, replica = %d.id, "an object of this name exists without Flotilla's labels; leaving it alone, so the replica cannot start here");
                    return Ok(None);
                }
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => {
                    return Err(KubeCall {
                        operation: format!("get {kind} {name}"),
                        source,
                    });
                }
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(object))
            .await
            .map(Some)
            .map_err(|source| KubeCall {
                operation: format!("apply {kind} {name}"),
                source,
            })
    }

    async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), KubeCall>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(KubeCall {
                operation: format!("delete {} {name}", K::kind(&())),
                source,
            }),
        }
    }

    async fn pass(&mut self, desired: &[DesiredReplica]) -> Result<Vec<PhaseReport>, KubeCall> {
        let owned = ListParams::default().labels(OWNED_SELECTOR);
        let deployments: BTreeMap<String, Deployment> = self
            .deployments
            .list(&owned)
            .await
            .map_err(|source| KubeCall {
                operation: "list deployments".into(),
                source,
            })?
            .items
            .into_iter()
            .map(|d| (d.name_any(), d))
            .collect();
        let services: BTreeMap<String, Service> = self
            .services
            .list(&owned)
            .await
            .map_err(|source| KubeCall {
                operation: "list services".into(),
                source,
            })?
            .items
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();

        let mut reports = Vec::new();
        let mut views = Vec::new();
        let mut wanted = BTreeSet::new();
        for d in desired {
            let name = object_name(&d.workload, d.id);
            wanted.insert(name.clone());
            let Some(w) = self.workloads.get(&d.workload) else {
                // Without its spec nothing can be rendered; it is neither started
                // nor stopped until the registry is read.
                tracing::debug!(workload = %d.workload, "workload spec not known yet");
                continue;
            };
            let current = deployments
                .get(&name)
                .filter(|x| owned_by(x.labels(), &d.workload, d.id));
            let mut local_state = "starting";
            let mut address = None;
            if d.phase == Phase::Draining {
                let past_deadline = d.drain_deadline.is_none_or(|t| now_ms() >= t.0);
                match current {
                    Some(dep) if !past_deadline && !scaled_down(dep) => {
                        // Scale to 0: the pod gets SIGTERM and its grace to finish.
                        let want = deployment_for(d, w, &self.options);
                        if dep.annotations().get(SPEC_HASH_ANNOTATION)
                            != want.annotations().get(SPEC_HASH_ANNOTATION)
                        {
                            Self::apply(&self.deployments, &name, &want, true, d).await?;
                        }
                        local_state = "draining";
                    }
                    _ => {
                        if current.is_some() {
                            Self::delete(&self.deployments, &name).await?;
                        }
                        if services.contains_key(&name) {
                            Self::delete(&self.services, &name).await?;
                        }
                        reports.push(PhaseReport {
                            workload: d.workload.clone(),
                            replica: d.id,
                            phase: Phase::Gone,
                            endpoint: None,
                        });
                        local_state = "exited";
                    }
                }
            } else {
                let want = deployment_for(d, w, &self.options);
                let mut status = current.cloned();
                let stale = current.is_none_or(|dep| {
                    dep.annotations().get(SPEC_HASH_ANNOTATION)
                        != want.annotations().get(SPEC_HASH_ANNOTATION)
                });
                if stale {
                    match Self::apply(&self.deployments, &name, &want, current.is_some(), d).await?
                    {
                        Some(applied) => status = Some(applied),
                        None => continue,
                    }
                }
                let svc = service_for(d, w, &self.options);
                let listed = services
                    .get(&name)
                    .filter(|s| owned_by(s.labels(), &d.workload, d.id));
                if listed.is_none_or(|s| {
                    s.annotations().get(SPEC_HASH_ANNOTATION)
                        != svc.annotations().get(SPEC_HASH_ANNOTATION)
                }) && Self::apply(&self.services, &name, &svc, listed.is_some(), d)
                    .await?
                    .is_none()
                {
                    continue;
                }
                if status.as_ref().is_some_and(available) {
                    local_state = "ready";
                    address = endpoint_for(d, w, &self.options);
                    if d.phase == Phase::Starting || d.endpoint != address {
                        reports.push(PhaseReport {
                            workload: d.workload.clone(),
                            replica: d.id,
                            phase: Phase::Ready,
                            endpoint: address.clone(),
                        });
                    }
                }
            }
            views.push(ReplicaView {
                workload: d.workload.clone(),
                model: d.model.clone(),
                replica: format!("r{}", d.id.0),
                id: d.id.0,
                address,
                registry_phase: d.phase.as_str(),
                local_state,
                devices: d.devices.iter().map(|r| r.uuid.clone()).collect(),
                pid: None,
                restarts: 0,
                last_exit: None,
            });
        }

        // Ours, but no longer placed here: delete. Only what the selector returned
        // and whose labels name a replica is considered.
        for (name, dep) in &deployments {
            if !wanted.contains(name) && replica_of(dep.labels()).is_some() {
                tracing::info!(deployment = %name, "replica no longer placed here: deleting");
                Self::delete(&self.deployments, name).await?;
            }
        }
        for (name, svc) in &services {
            if !wanted.contains(name) && replica_of(svc.labels()).is_some() {
                Self::delete(&self.services, name).await?;
            }
        }
        self.views = views;
        Ok(reports)
    }
}

impl<W: WorkloadSpecs> Materializer for KubernetesMaterializer<W> {
    async fn reconcile(&mut self, desired: &[DesiredReplica]) -> Vec<PhaseReport> {
        match self.specs.workloads().await {
            Ok(w) => self.workloads = w,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read workload specs; keeping the last ones")
            }
        }
        match self.pass(desired).await {
            Ok(reports) => reports,
            // Level-triggered: the next pass starts again from what the API server
            // lists, so a failed call is simply made again.
            Err(e) => {
                tracing::warn!(error = %e, "kubernetes reconcile pass failed");
                Vec::new()
            }
        }
    }

    fn replicas(&self) -> Vec<ReplicaView> {
        self.views.clone()
    }

    /// Leaves every Deployment running: see the module docs ("shutdown").
    async fn shutdown(&mut self) {
        tracing::info!(
            namespace = %self.options.namespace,
            "agent stopping: replicas' Deployments keep running; the next agent adopts them"
        );
    }
}
