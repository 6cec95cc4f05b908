//! A workload's container spec: what a replica runs on Kubernetes.

use flotilla_core::fixtures::{Federation, workload};
use flotilla_core::{Command, ContainerPort, ContainerSpec, Millis, PortProtocol, State, Workload};

fn vllm() -> ContainerSpec {
    ContainerSpec {
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
        resources: Default::default(),
    }
}

fn with_container(c: ContainerSpec) -> Workload {
    let mut w = workload("chat", "m", 1, 1);
    w.container = Some(Box::new(c));
    w
}

fn field_of(w: &Workload) -> String {
    w.validate().unwrap_err().field
}

#[test]
fn a_workload_without_a_container_reads_and_writes_as_before() {
    let w = workload("chat", "m", 1, 1);
    let json = serde_json::to_string(&w).unwrap();
    assert!(
        !json.contains("container"),
        "absent means not written: {json}"
    );
    let back: Workload = serde_json::from_str(&json).unwrap();
    assert_eq!(back.container, None);
    assert_eq!(back, w);
}

#[test]
fn a_container_as_the_user_writes_it_reads_with_defaults() {
    let json = r#"{"name":"chat","model":"m","replicas":{"min":1,"max":1},"gpu":{"count":1},
        "container":{"image":"ghcr.io/huggingface/text-generation-inference:2.4",
                     "ports":[{"name":"http","container_port":80}]}}"#;
    let w: Workload = serde_json::from_str(json).unwrap();
    w.validate().unwrap();
    let c = w.container.unwrap();
    assert_eq!(c.ports[0].protocol, PortProtocol::Tcp, "TCP by default");
    assert!(c.args.is_empty() && c.env.is_empty() && c.health_path.is_none());
}

#[test]
fn unknown_container_fields_are_errors() {
    let json = r#"{"name":"chat","model":"m","replicas":{"min":1,"max":1},"gpu":{"count":1},
        "container":{"image":"x","imagePullPolicy":"Always"}}"#;
    assert!(serde_json::from_str::<Workload>(json).is_err());
}

#[test]
fn a_valid_container_passes() {
    with_container(vllm()).validate().unwrap();
}

#[test]
fn an_empty_image_is_refused() {
    let mut c = vllm();
    c.image = " ".into();
    assert_eq!(field_of(&with_container(c)), "container.image");
}

#[test]
fn ports_outside_1_to_65535_are_refused_by_field() {
    for bad in [0, 65536, 100_000] {
        let mut c = vllm();
        c.ports[0].container_port = bad;
        assert_eq!(
            field_of(&with_container(c)),
            "container.ports[0].container_port",
            "{bad}"
        );
    }
    let mut c = vllm();
    c.ports[0].container_port = 65535;
    with_container(c).validate().unwrap();
}

#[test]
fn port_names_must_be_service_names_and_unique() {
    let mut c = vllm();
    c.ports[0].name = "HTTP".into();
    assert_eq!(field_of(&with_container(c)), "container.ports[0].name");
    let mut c = vllm();
    c.ports.push(ContainerPort {
        name: "http".into(),
        container_port: 8001,
        protocol: PortProtocol::Tcp,
    });
    assert_eq!(field_of(&with_container(c)), "container.ports[1].name");
}

#[test]
fn env_names_must_be_variable_names() {
    for bad in ["1ST", "A=B", "WITH SPACE", ""] {
        let mut c = vllm();
        c.env.insert(bad.into(), "v".into());
        let err = with_container(c).validate().unwrap_err();
        assert_eq!(err.field, format!("container.env.{bad}"), "{bad:?}");
    }
}

#[test]
fn the_gpu_count_comes_from_gpu_not_from_resources() {
    let mut c = vllm();
    c.resources
        .limits
        .insert("nvidia.com/gpu".into(), "8".into());
    assert_eq!(
        field_of(&with_container(c)),
        "container.resources.limits.nvidia.com/gpu"
    );
    let mut c = vllm();
    c.resources.limits.insert("memory".into(), "64Gi".into());
    c.resources.requests.insert("cpu".into(), "8".into());
    with_container(c).validate().unwrap();
}

#[test]
fn a_health_path_is_absolute_and_needs_a_port() {
    let mut c = vllm();
    c.health_path = Some("health".into());
    assert_eq!(field_of(&with_container(c)), "container.health_path");
    let mut c = vllm();
    c.ports.clear();
    assert_eq!(field_of(&with_container(c)), "container.health_path");
}

#[test]
fn a_container_survives_the_registry_snapshot() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: with_container(vllm()),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    let restored = State::from_snapshot(&f.state.to_snapshot()).unwrap();
    assert_eq!(
        restored.workload("chat").and_then(|w| w.container.clone()),
        Some(Box::new(vllm()))
    );
}

#[test]
fn credentials_travel_as_references_to_kubernetes_secrets_never_as_values() {
    let mut literal = vllm();
    literal.env.insert("HF_TOKEN".into(), "hf_abc".into());
    let err = with_container(literal).validate().unwrap_err();
    assert_eq!(err.field, "container.env.HF_TOKEN");
    assert!(err.to_string().contains("secret_env"), "{err}");
    for name in [
        "OPENAI_API_KEY",
        "db-password",
        "AWS_SECRET_ACCESS_KEY",
        "my.private.key",
    ] {
        let mut c = vllm();
        c.env.insert(name.into(), "x".into());
        assert!(
            with_container(c).validate().is_err(),
            "{name} is a credential"
        );
    }
    for name in ["MAX_TOKENS", "TOKENIZER", "KEY_VALUE_CACHE", "HF_HOME"] {
        let mut c = vllm();
        c.env.insert(name.into(), "x".into());
        assert!(
            with_container(c).validate().is_ok(),
            "{name} is not a credential"
        );
    }

    let mut referenced = vllm();
    referenced.secret_env.insert(
        "HF_TOKEN".into(),
        flotilla_core::SecretKeyRef {
            secret: "hugging-face".into(),
            key: "token".into(),
        },
    );
    assert!(with_container(referenced.clone()).validate().is_ok());
    let mut bad = referenced.clone();
    if let Some(r) = bad.secret_env.get_mut("HF_TOKEN") {
        r.secret = "Hugging_Face".into();
    }
    assert_eq!(
        field_of(&with_container(bad)),
        "container.secret_env.HF_TOKEN.secret"
    );
    let mut twice = referenced;
    twice.env.insert("HF_TOKEN".into(), "x".into());
    assert_eq!(field_of(&with_container(twice)), "container.env.HF_TOKEN");
}
