//! The Kubernetes materializer's objects, rendered without a cluster.

use flotilla_client::materialize::DesiredReplica;
use flotilla_controller::{
    KubernetesOptions, deployment_for, endpoint_for, gpu_product_label, gpu_resource, object_name,
    reserved_node, service_for,
};
use flotilla_core::fixtures::workload;
use flotilla_core::{
    ContainerPort, ContainerSpec, DeviceRef, Phase, PortProtocol, ReplicaId, Timestamp, Workload,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;

pub(crate) fn desired(workload: &str, id: u64, phase: Phase) -> DesiredReplica {
    DesiredReplica {
        workload: workload.into(),
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        id: ReplicaId(id),
        devices: vec![DeviceRef {
            node: "gpu-a".into(),
            uuid: "GPU-1".into(),
        }],
        phase,
        drain_deadline: (phase == Phase::Draining).then_some(Timestamp(0)),
        endpoint: None,
    }
}

pub(crate) fn options() -> KubernetesOptions {
    let mut o = KubernetesOptions::new("gpu", "us-east");
    o.stand_in_image = "ghcr.io/flotilla-dev/flotilla:test".into();
    o
}

pub(crate) fn vllm_workload() -> Workload {
    let mut w = workload("chat", "meta-llama/Llama-3.1-8B-Instruct", 2, 1);
    w.gpu.models = vec![
        "NVIDIA H100 80GB HBM3".into(),
        "NVIDIA A100-SXM4-80GB".into(),
    ];
    w.container = Some(Box::new(ContainerSpec {
        image: "vllm/vllm-openai:v0.6.3".into(),
        args: vec!["--model".into(), "meta-llama/Llama-3.1-8B-Instruct".into()],
        env: [("HF_HOME".to_owned(), "/cache".to_owned())].into(),
        secret_env: Default::default(),
        ports: vec![ContainerPort {
            name: "http".into(),
            container_port: 8000,
            protocol: PortProtocol::Tcp,
        }],
        health_path: Some("/health".into()),
        resources: flotilla_core::ContainerResources {
            requests: [("cpu".to_owned(), "8".to_owned())].into(),
            limits: [("memory".to_owned(), "64Gi".to_owned())].into(),
        },
    }));
    w
}

fn container(d: &Deployment) -> &Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn json(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(d).unwrap()
}

#[test]
fn a_replica_is_one_pod_of_the_users_container_with_its_gpus() {
    let d = deployment_for(
        &desired("chat", 1, Phase::Starting),
        &vllm_workload(),
        &options(),
    );
    assert_eq!(d.metadata.name.as_deref(), Some("chat-r1"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("gpu"));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("vllm/vllm-openai:v0.6.3"));
    assert_eq!(
        c.args.as_deref(),
        Some(
            &[
                "--model".to_owned(),
                "meta-llama/Llama-3.1-8B-Instruct".to_owned()
            ][..]
        )
    );
    let v = json(&d);
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["env"],
        serde_json::json!([{"name": "HF_HOME", "value": "/cache"}])
    );
    assert_eq!(
        c["resources"]["limits"]["nvidia.com/gpu"], "2",
        "gpu.count GPUs"
    );
    assert_eq!(
        c["resources"]["limits"]["memory"], "64Gi",
        "extra limits kept"
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "8");
    assert_eq!(
        c["ports"],
        serde_json::json!([{"name": "http", "containerPort": 8000, "protocol": "TCP"}])
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/health", "port": "http"})
    );
    assert_eq!(v["apiVersion"], "apps/v1");
    assert_eq!(v["kind"], "Deployment");
    assert_eq!(
        v["spec"]["strategy"]["type"], "Recreate",
        "a changed spec must not need a second set of GPUs"
    );
}

#[test]
fn every_object_carries_the_owner_labels_and_selects_only_its_replica() {
    let (d, w, o) = (
        desired("chat", 1, Phase::Starting),
        vllm_workload(),
        options(),
    );
    let dep = json(&deployment_for(&d, &w, &o));
    let svc = serde_json::to_value(service_for(&d, &w, &o)).unwrap();
    for labels in [
        &dep["metadata"]["labels"],
        &dep["spec"]["template"]["metadata"]["labels"],
        &svc["metadata"]["labels"],
    ] {
        assert_eq!(labels["app.kubernetes.io/managed-by"], "flotilla");
        assert_eq!(labels["flotilla.dev/workload"], "chat");
        assert_eq!(labels["flotilla.dev/replica"], "1");
    }
    let selector =
        serde_json::json!({"flotilla.dev/workload": "chat", "flotilla.dev/replica": "1"});
    assert_eq!(dep["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(svc["spec"]["selector"], selector);
    assert_eq!(
        svc["spec"]["ports"],
        serde_json::json!([{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}])
    );
}

#[test]
fn gpu_models_become_node_affinity_on_the_gpu_feature_discovery_label() {
    let d = json(&deployment_for(
        &desired("chat", 1, Phase::Starting),
        &vllm_workload(),
        &options(),
    ));
    let term = &d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0];
    assert_eq!(
        term["matchExpressions"],
        serde_json::json!([{
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"],
        }])
    );
    let mut any = vllm_workload();
    any.gpu.models.clear();
    let d = json(&deployment_for(
        &desired("chat", 1, Phase::Starting),
        &any,
        &options(),
    ));
    let term = &d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0];
    assert!(
        term["matchExpressions"].is_null(),
        "any GPU model: no product affinity"
    );
}

#[test]
fn the_pod_is_pinned_to_the_node_whose_gpus_the_registry_reserved() {
    let d = json(&deployment_for(
        &desired("chat", 1, Phase::Starting),
        &vllm_workload(),
        &options(),
    ));
    let terms = &d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms.as_array().map(Vec::len),
        Some(1),
        "one term: node AND product"
    );
    assert_eq!(
        terms[0]["matchFields"],
        serde_json::json!([{"key": "metadata.name", "operator": "In", "values": ["gpu-a"]}])
    );

    let mut unreserved = desired("chat", 1, Phase::Starting);
    unreserved.devices.clear();
    assert_eq!(reserved_node(&unreserved), None, "no devices: no pin");
    let mut split = desired("chat", 1, Phase::Starting);
    split.devices.push(DeviceRef {
        node: "gpu-b".into(),
        uuid: "GPU-2".into(),
    });
    assert_eq!(reserved_node(&split), None, "devices on two nodes: no pin");
}

#[test]
fn a_mig_workload_requests_its_mig_resource_instead_of_whole_gpus() {
    let mut w = vllm_workload();
    w.gpu.mig_profile = Some("1g.10gb".into());
    assert_eq!(gpu_resource(&w), "nvidia.com/mig-1g.10gb");
    let d = deployment_for(&desired("chat", 1, Phase::Starting), &w, &options());
    let limits = container(&d)
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let per_replica = w.gpu.count.to_string();
    assert_eq!(
        limits.get("nvidia.com/mig-1g.10gb").map(|q| q.0.as_str()),
        Some(per_replica.as_str())
    );
    assert!(
        !limits.contains_key("nvidia.com/gpu"),
        "a slice is not a whole GPU"
    );
}

#[test]
fn product_names_map_to_label_values_or_to_nothing() {
    assert_eq!(
        gpu_product_label("NVIDIA H100 80GB HBM3").as_deref(),
        Some("NVIDIA-H100-80GB-HBM3")
    );
    assert_eq!(gpu_product_label("H100").as_deref(), Some("H100"));
    assert_eq!(gpu_product_label("NVIDIA (weird)"), None);
    assert_eq!(gpu_product_label(&"x".repeat(64)), None);
}

#[test]
fn without_a_container_the_stand_in_serves_the_model() {
    let w = workload("chat", "meta-llama/Llama-3.1-8B-Instruct", 1, 1);
    let d = deployment_for(&desired("chat", 3, Phase::Starting), &w, &options());
    let c = container(&d);
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/flotilla-dev/flotilla:test")
    );
    let args = c.args.clone().unwrap();
    assert_eq!(
        args,
        [
            "model",
            "--listen",
            "0.0.0.0:8000",
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--replica",
            "r3",
            "--cluster",
            "us-east"
        ]
    );
    assert_eq!(
        endpoint_for(&desired("chat", 3, Phase::Starting), &w, &options()).as_deref(),
        Some("chat-r3.gpu.svc:8000")
    );
}

#[test]
fn without_a_health_path_readiness_is_a_tcp_connect_to_the_serving_port() {
    let mut w = vllm_workload();
    if let Some(c) = w.container.as_mut() {
        c.health_path = None;
    }
    let d = json(&deployment_for(
        &desired("chat", 1, Phase::Starting),
        &w,
        &options(),
    ));
    let probe = &d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(probe["tcpSocket"], serde_json::json!({"port": "http"}));
    assert!(probe["httpGet"].is_null());
}

#[test]
fn a_draining_replica_is_scaled_to_zero_and_its_hash_changes() {
    let (w, o) = (vllm_workload(), options());
    let running = deployment_for(&desired("chat", 1, Phase::Ready), &w, &o);
    let draining = deployment_for(&desired("chat", 1, Phase::Draining), &w, &o);
    assert_eq!(draining.spec.as_ref().unwrap().replicas, Some(0));
    let hash =
        |d: &Deployment| d.metadata.annotations.as_ref().unwrap()["flotilla.dev/spec-hash"].clone();
    assert_ne!(hash(&running), hash(&draining));
    assert_eq!(
        hash(&running),
        hash(&deployment_for(
            &desired("chat", 1, Phase::Starting),
            &w,
            &o
        )),
        "Starting and Ready render the same object: nothing is re-applied when a replica becomes Ready"
    );
}

#[test]
fn object_names_are_dns_labels_even_for_long_or_numeric_workloads() {
    assert_eq!(object_name("chat", ReplicaId(12)), "chat-r12");
    assert_eq!(object_name("7b-chat", ReplicaId(1)), "w7b-chat-r1");
    let a = object_name(&format!("{}a", "x".repeat(62)), ReplicaId(123));
    let b = object_name(&format!("{}b", "x".repeat(62)), ReplicaId(123));
    assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    assert_ne!(a, b, "truncated names keep a hash of the whole name");
    assert!(a.ends_with("-r123"));
}

#[test]
fn a_secret_reference_becomes_an_env_var_from_the_secret_never_a_value() {
    let mut w = vllm_workload();
    if let Some(c) = w.container.as_mut() {
        c.secret_env.insert(
            "HF_TOKEN".into(),
            flotilla_core::SecretKeyRef {
                secret: "hugging-face".into(),
                key: "token".into(),
            },
        );
    }
    let d = json(&deployment_for(
        &desired("chat", 1, Phase::Starting),
        &w,
        &options(),
    ));
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let token = env
        .iter()
        .find(|e| e["name"] == "HF_TOKEN")
        .expect("HF_TOKEN is set");
    assert!(token["value"].is_null(), "no value: {token}");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "hugging-face", "key": "token"})
    );
    assert!(
        env.iter()
            .any(|e| e["name"] == "HF_HOME" && e["value"] == "/cache")
    );
}
