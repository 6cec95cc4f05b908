//! The objects of one replica, rendered from its placement and workload: pure
//! functions, no API server. [`crate::decide`] compares them (by their
//! `flotilla.dev/spec-hash`) with what the watches observe.

use crate::{
    CLUSTER_LABEL, FIELD_MANAGER, GPU_PRODUCT_LABEL, GPU_RESOURCE, KubernetesOptions,
    MANAGED_BY_LABEL, MIG_RESOURCE_PREFIX, MODEL_LABEL, REPLICA_LABEL, SPEC_HASH_ANNOTATION,
    WORKLOAD_LABEL,
};
use flotilla_client::materialize::DesiredReplica;
use flotilla_core::{ContainerSpec, Phase, ReplicaId, Workload};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

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

/// A pod's labels: the replica's, and its model as a DNS label, which is what
/// the Istio `ServiceEntry` of [`flotilla_kube::istio`] selects local replicas by.
fn pod_labels(d: &DesiredReplica, o: &KubernetesOptions) -> BTreeMap<String, String> {
    let mut l = labels(d, o);
    l.insert(
        MODEL_LABEL.to_owned(),
        flotilla_kube::names::dns_label(&d.model, 40),
    );
    l
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
            secret_env: BTreeMap::new(),
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

/// The node Flotilla's scheduler reserved the replica's GPUs on, when they are all
/// on one node (they always are: a replica's GPUs are one node's). The pod is pinned
/// there, so that kube-scheduler cannot put it on GPUs the registry gave to
/// another replica; the device plugin still picks which of the node's GPUs.
pub fn reserved_node(d: &DesiredReplica) -> Option<&str> {
    let first = d.devices.first()?;
    d.devices
        .iter()
        .all(|r| r.node == first.node)
        .then_some(first.node.as_str())
}

/// The extended resource a replica's GPUs are requested as: `nvidia.com/gpu`, or
/// for a MIG workload the device plugin's mixed-strategy resource
/// `nvidia.com/mig-<profile>` (a slice is not a whole GPU).
pub fn gpu_resource(w: &Workload) -> String {
    match &w.gpu.mig_profile {
        Some(profile) => format!("{MIG_RESOURCE_PREFIX}{profile}"),
        None => GPU_RESOURCE.to_owned(),
    }
}

/// The port a replica serves on: its container's first.
fn serving_port(c: &ContainerSpec) -> Option<&flotilla_core::ContainerPort> {
    c.ports.first()
}

/// The Deployment for one replica: one pod (none while draining), `Recreate` so
/// that a changed spec never needs a second set of GPUs, requesting
/// [`gpu_resource`] and pinned to the [`reserved_node`].
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
    limits.insert(gpu_resource(w), Quantity(w.gpu.count.to_string()));
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
    let mut on_node = NodeSelectorTerm::default();
    if !products.is_empty() {
        on_node.match_expressions = Some(vec![NodeSelectorRequirement {
            key: GPU_PRODUCT_LABEL.into(),
            operator: "In".into(),
            values: Some(products),
        }]);
    }
    if let Some(node) = reserved_node(d) {
        on_node.match_fields = Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_owned()]),
        }]);
    }
    let affinity = (on_node != NodeSelectorTerm::default()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![on_node],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let container = Container {
        name: "replica".into(),
        image: Some(c.image.clone()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        env: (!c.env.is_empty() || !c.secret_env.is_empty()).then(|| {
            let values = c.env.iter().map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            });
            // The kubelet reads the Secret; neither the registry nor the controller
            // ever holds the value.
            let secrets = c.secret_env.iter().map(|(k, r)| EnvVar {
                name: k.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: r.secret.clone(),
                        key: r.key.clone(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            values.chain(secrets).collect()
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
                    labels: Some(pod_labels(d, o)),
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
pub(super) fn hash_of<T: serde::Serialize>(object: &T) -> String {
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    format!("{:016x}", fnv1a(&bytes))
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(super) fn stamp(meta: &mut ObjectMeta, hash: &str) {
    meta.annotations = Some([(SPEC_HASH_ANNOTATION.to_owned(), hash.to_owned())].into());
}

/// Whether someone changed, by hand, what decides where and what a replica runs:
/// the number of pods, the containers' images and arguments, the GPU request, the
/// node affinity. Such an edit leaves our spec-hash annotation as it was, so it is
/// compared field by field (only fields the API server does not rewrite), and the
/// next pass applies our object again, which takes the fields back.
pub fn deployment_drifted(observed: &Deployment, want: &Deployment) -> bool {
    let spec = |d: &Deployment| {
        let spec = d.spec.as_ref();
        let pod = spec.and_then(|s| s.template.spec.as_ref());
        let containers: Vec<_> = pod
            .map(|p| p.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let gpus: Vec<_> = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.starts_with("nvidia.com/"))
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                (c.name.clone(), c.image.clone(), c.args.clone(), gpus)
            })
            .collect();
        (
            spec.and_then(|s| s.replicas),
            containers,
            pod.and_then(|p| p.affinity.clone()),
        )
    };
    spec(observed) != spec(want)
}

/// Whether someone changed a replica's Service by hand: what it selects, or its
/// ports.
pub fn service_drifted(observed: &Service, want: &Service) -> bool {
    let spec = |s: &Service| {
        let spec = s.spec.as_ref();
        let ports: Vec<_> = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port))
            .collect();
        (spec.and_then(|s| s.selector.clone()), ports)
    };
    spec(observed) != spec(want)
}

/// Whether an object carries every label that makes it ours, for this replica.
pub(super) fn owned_by(
    labels: &BTreeMap<String, String>,
    cluster: &str,
    workload: &str,
    replica: ReplicaId,
) -> bool {
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(FIELD_MANAGER)
        && labels.get(CLUSTER_LABEL).map(String::as_str) == Some(cluster)
        && labels.get(WORKLOAD_LABEL).map(String::as_str) == Some(workload)
        && labels.get(REPLICA_LABEL) == Some(&replica.0.to_string())
}

/// The replica an owned object belongs to, from its labels: ours only if made for
/// this cluster (two Flotilla clusters may share one Kubernetes namespace).
pub(super) fn replica_of(
    labels: &BTreeMap<String, String>,
    cluster: &str,
) -> Option<(String, ReplicaId)> {
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(FIELD_MANAGER)
        || labels.get(CLUSTER_LABEL).map(String::as_str) != Some(cluster)
    {
        return None;
    }
    let workload = labels.get(WORKLOAD_LABEL)?.clone();
    let id = labels.get(REPLICA_LABEL)?.parse().ok()?;
    Some((workload, ReplicaId(id)))
}

/// An available pod of the Deployment's current spec: the Deployment controller
/// has seen the latest generation (otherwise the status describes the previous
/// spec), at least one pod passed its readiness probe, and (where the status says)
/// at least one pod runs the current spec: with `Recreate`, `availableReplicas`
/// may still count the old pod right after a spec change.
pub(super) fn available(d: &Deployment) -> bool {
    let status = d.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation);
    let current = match (d.metadata.generation, observed) {
        (Some(generation), Some(observed)) => {
            // `updatedReplicas` is left out when 0, so it is required only where
            // the status is a real one (it carries generations).
            observed >= generation && status.and_then(|s| s.updated_replicas).unwrap_or(0) >= 1
        }
        // A status without generations (an older API server, a test double):
        // nothing says it is stale.
        _ => true,
    };
    current
        && status
            .and_then(|s| s.available_replicas)
            .is_some_and(|n| n >= 1)
}

/// No pod left (a drained Deployment).
pub(super) fn scaled_down(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.replicas)
        .is_none_or(|n| n == 0)
}
