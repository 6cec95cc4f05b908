//! `flotilla install`'s manifests: their structure, for several option sets.
//! (deploy/validate.sh validates the same option sets against Kubernetes' schemas.)

use flotilla_kube::install::{self, InstallError, InstallOptions, JoinTokens};
use serde_json::Value;

const TOKEN: &str = "flotilla-join.eyJ0ZXN0IjoidG9rZW4ifQ";

fn first_cluster() -> InstallOptions {
    let mut o = InstallOptions::new("c1", "us-east");
    o.zone = "us-east-1a".into();
    o.init = true;
    o
}

fn joining_ha_istio() -> InstallOptions {
    let mut o = InstallOptions::new("c2", "eu-west");
    o.federation = "acme".into();
    o.server_replicas = 3;
    o.join = JoinTokens {
        servers: vec![
            format!("{TOKEN}s0"),
            format!("{TOKEN}s1"),
            format!("{TOKEN}s2"),
        ],
        agent: Some(format!("{TOKEN}a")),
        gateway: Some(format!("{TOKEN}g")),
    };
    o.istio = true;
    o.namespace = "gpu-fed".into();
    o.server_advertise = "flotilla-{ordinal}.c2.example.com:7400".into();
    o.runtime_class = None;
    o.storage_class = Some("fast-ssd".into());
    o
}

fn option_sets() -> Vec<InstallOptions> {
    let mut five = first_cluster();
    five.server_replicas = 5;
    let mut deployments = joining_ha_istio();
    deployments.kubernetes_replicas = true;
    vec![first_cluster(), joining_ha_istio(), five, deployments]
}

fn rendered() -> Vec<(InstallOptions, Vec<Value>)> {
    option_sets()
        .into_iter()
        .map(|o| {
            let objects = install::render(&o).expect("renders");
            (o, objects)
        })
        .collect()
}

fn pod_specs(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "StatefulSet" || o["kind"] == "DaemonSet")
        .map(|o| &o["spec"]["template"]["spec"])
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn rbac_is_least_privilege_no_wildcards_and_only_the_kinds_each_option_needs() {
    for (o, objects) in rendered() {
        let roles: Vec<_> = objects
            .iter()
            .filter(|x| x["kind"] == "Role" || x["kind"] == "ClusterRole")
            .collect();
        assert!(
            objects
                .iter()
                .all(|x| x["kind"] != "ClusterRole" && x["kind"] != "ClusterRoleBinding")
        );
        if !o.istio && !o.kubernetes_replicas {
            assert!(
                roles.is_empty(),
                "nothing calls the Kubernetes API without --istio or --kubernetes-replicas"
            );
        }
        for role in roles {
            for rule in role["rules"].as_array().expect("rules") {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values = rule[field].as_array().expect(field);
                    assert!(values.iter().all(|v| v != "*"), "{field}: {values:?}");
                }
                let allowed = match role["metadata"]["name"].as_str() {
                    Some("flotilla-istio") => {
                        o.istio && rule["apiGroups"] == serde_json::json!(["networking.istio.io"])
                    }
                    // The materializer applies (patch), reads and deletes its own
                    // Deployments and Services; it never creates or updates.
                    Some("flotilla-replicas") => {
                        o.kubernetes_replicas
                            && (rule["resources"] == serde_json::json!(["deployments"])
                                || rule["resources"] == serde_json::json!(["services"]))
                            && rule["verbs"]
                                == serde_json::json!(["get", "list", "patch", "delete"])
                    }
                    _ => false,
                };
                assert!(allowed, "{role:#}");
            }
        }
        // A token is mounted only where the API is called.
        let server = find(&objects, "ServiceAccount", "flotilla-server");
        assert_eq!(server["automountServiceAccountToken"], false);
        let node = find(&objects, "ServiceAccount", "flotilla-node");
        assert_eq!(
            node["automountServiceAccountToken"],
            o.istio || o.kubernetes_replicas
        );
        // The agent is told to make Deployments exactly when it may.
        let text = serde_json::to_string(&objects).expect("json");
        assert_eq!(
            text.contains("--materializer=kubernetes"),
            o.kubernetes_replicas
        );
    }
}

#[test]
fn every_container_has_probes_resource_requests_and_a_locked_down_security_context() {
    for (_, objects) in rendered() {
        for pod in pod_specs(&objects) {
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            for c in pod["containers"].as_array().expect("containers") {
                let name = &c["name"];
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    assert!(c[probe].is_object(), "{name}: no {probe}");
                }
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
                assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
                assert_eq!(
                    c["securityContext"]["allowPrivilegeEscalation"], false,
                    "{name}"
                );
                assert_eq!(
                    c["securityContext"]["capabilities"]["drop"][0], "ALL",
                    "{name}"
                );
            }
            for c in pod["initContainers"].as_array().into_iter().flatten() {
                assert!(c["resources"]["requests"]["cpu"].is_string());
                // The one root step may only change ownership.
                assert_eq!(
                    c["securityContext"]["capabilities"]["add"],
                    serde_json::json!(["CHOWN"])
                );
            }
        }
    }
}

#[test]
fn join_tokens_live_in_a_secret_and_never_in_a_pod_spec() {
    let o = joining_ha_istio();
    let objects = install::render(&o).expect("renders");
    let secret = find(&objects, "Secret", "flotilla-join");
    assert_eq!(secret["stringData"]["server-0"], format!("{TOKEN}s0"));
    assert_eq!(secret["stringData"]["server-2"], format!("{TOKEN}s2"));
    assert_eq!(secret["stringData"]["agent"], format!("{TOKEN}a"));
    assert_eq!(secret["stringData"]["gateway"], format!("{TOKEN}g"));
    for object in objects.iter().filter(|x| x["kind"] != "Secret") {
        let text = object.to_string();
        assert!(
            !text.contains(TOKEN),
            "{} holds a token",
            object["metadata"]["name"]
        );
    }
    // With --init, server 0 starts the federation and tokens are for the others.
    let mut first = first_cluster();
    first.server_replicas = 3;
    first.join.servers = vec![format!("{TOKEN}x")];
    let objects = install::render(&first).expect("renders");
    let secret = find(&objects, "Secret", "flotilla-join");
    assert_eq!(secret["stringData"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(secret["stringData"]["server-1"], format!("{TOKEN}x"));
    // No tokens, no Secret (its volume is optional).
    let objects = install::render(&first_cluster()).expect("renders");
    assert!(objects.iter().all(|x| x["kind"] != "Secret"));
}

#[test]
fn every_object_is_labelled_managed_by_flotilla_and_lives_in_the_namespace() {
    for (o, objects) in rendered() {
        assert_eq!(objects[0]["kind"], "Namespace", "the namespace comes first");
        for object in &objects {
            let meta = &object["metadata"];
            assert_eq!(
                meta["labels"]["app.kubernetes.io/managed-by"], "flotilla",
                "{meta}"
            );
            if object["kind"] != "Namespace" {
                assert_eq!(meta["namespace"], o.namespace.as_str(), "{meta}");
            }
        }
    }
}

#[test]
fn selectors_match_the_pods_they_mean_and_named_ports_exist() {
    for (_, objects) in rendered() {
        let pods: Vec<(&Value, &Value)> = objects
            .iter()
            .filter(|o| o["kind"] == "StatefulSet" || o["kind"] == "DaemonSet")
            .map(|o| {
                (
                    &o["spec"]["template"]["metadata"]["labels"],
                    &o["spec"]["template"]["spec"],
                )
            })
            .collect();
        let matching = |selector: &Value| -> Vec<&Value> {
            pods.iter()
                .filter(|(labels, _)| {
                    selector
                        .as_object()
                        .expect("selector")
                        .iter()
                        .all(|(k, v)| {
                            // Only a StatefulSet's pods carry their pod name.
                            labels[k] == *v
                                || (k == "statefulset.kubernetes.io/pod-name"
                                    && labels["app.kubernetes.io/component"] == "server")
                        })
                })
                .map(|(_, spec)| *spec)
                .collect()
        };
        for o in &objects {
            let (selector, ports) = match o["kind"].as_str() {
                Some("Service") => (
                    &o["spec"]["selector"],
                    o["spec"]["ports"]
                        .as_array()
                        .expect("ports")
                        .iter()
                        .map(|p| &p["targetPort"])
                        .collect::<Vec<_>>(),
                ),
                Some("PodDisruptionBudget") => (&o["spec"]["selector"]["matchLabels"], vec![]),
                Some("NetworkPolicy") => (
                    &o["spec"]["podSelector"]["matchLabels"],
                    o["spec"]["ingress"]
                        .as_array()
                        .expect("ingress")
                        .iter()
                        .flat_map(|r| r["ports"].as_array().expect("ports"))
                        .map(|p| &p["port"])
                        .collect(),
                ),
                Some("StatefulSet" | "DaemonSet") => {
                    let s = &o["spec"]["selector"]["matchLabels"];
                    assert_eq!(
                        matching(s).len(),
                        1,
                        "{} selects its own pods only",
                        o["metadata"]["name"]
                    );
                    continue;
                }
                _ => continue,
            };
            let specs = matching(selector);
            assert_eq!(
                specs.len(),
                1,
                "{} {} selects one kind of pod",
                o["kind"],
                o["metadata"]["name"]
            );
            let names: Vec<&Value> = specs[0]["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .map(|p| &p["name"])
                .collect();
            for port in ports {
                assert!(
                    names.contains(&port),
                    "{} {}: no container port {port}",
                    o["kind"],
                    o["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn the_server_budget_keeps_a_raft_majority() {
    for (o, objects) in rendered() {
        let pdb = &find(&objects, "PodDisruptionBudget", "flotilla-server")["spec"];
        match o.server_replicas {
            3 => assert_eq!(pdb["minAvailable"], 2),
            5 => assert_eq!(pdb["minAvailable"], 3),
            _ => assert_eq!(pdb["maxUnavailable"], 1),
        }
    }
}

#[test]
fn the_node_pod_runs_on_the_labelled_gpu_node_with_the_nvidia_runtime() {
    let objects = install::render(&first_cluster()).expect("renders");
    let pod = &find(&objects, "DaemonSet", "flotilla-node")["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(pod["nodeSelector"]["flotilla.dev/agent"], "true");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    let agent = &pod["containers"][0];
    let args: Vec<&str> = agent["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--gpu-source=nvml"), "{args:?}");
    assert!(
        args.contains(&"--state-dir=/var/lib/flotilla/agent"),
        "{args:?}"
    );
    // Without a runtime class the field is left out (the node's default runtime).
    let objects = install::render(&joining_ha_istio()).expect("renders");
    let pod = &find(&objects, "DaemonSet", "flotilla-node")["spec"]["template"]["spec"];
    assert!(pod.get("runtimeClassName").is_none());
}

#[test]
fn servers_advertised_to_other_clusters_get_a_load_balancer_each() {
    let objects = install::render(&joining_ha_istio()).expect("renders");
    for i in 0..3 {
        let svc = find(&objects, "Service", &format!("flotilla-server-{i}"));
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
    }
    let config = find(&objects, "ConfigMap", "flotilla-cluster");
    assert_eq!(
        config["data"]["FLOTILLA_SERVER_ADVERTISE"],
        "flotilla-{ordinal}.c2.example.com:7400"
    );
    assert_eq!(
        config["data"]["FLOTILLA_SERVERS"],
        "flotilla-server-0.flotilla-server.gpu-fed.svc.cluster.local:7400,flotilla-server-1.flotilla-server.gpu-fed.svc.cluster.local:7400,flotilla-server-2.flotilla-server.gpu-fed.svc.cluster.local:7400"
    );
}

#[test]
fn the_start_scripts_are_valid_shell() {
    let objects = install::render(&joining_ha_istio()).expect("renders");
    for pod in pod_specs(&objects) {
        for c in pod["containers"].as_array().expect("containers") {
            let script = c["command"][2].as_str().expect("sh -c SCRIPT");
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .status()
                .expect("sh runs");
            assert!(status.success(), "{}: {script}", c["name"]);
        }
    }
}

#[test]
fn bad_options_are_refused_naming_the_option() {
    type Change = fn(&mut InstallOptions);
    let cases: Vec<(Change, &str)> = vec![
        (|o| o.cluster = "C1".into(), "--cluster \"C1\""),
        (|o| o.region = "us_east".into(), "--region \"us_east\""),
        (|o| o.zone = "-a".into(), "--zone \"-a\""),
        (|o| o.namespace = "flo.tilla".into(), "--namespace"),
        (|o| o.image = "my image".into(), "--image"),
        (|o| o.server_replicas = 0, "--server-replicas \"0\""),
        (|o| o.server_replicas = 9, "--server-replicas \"9\""),
        (
            |o| o.server_resources.memory = "1 GB".into(),
            "--server-memory \"1 GB\"",
        ),
        (|o| o.storage_size = "ten".into(), "--storage-size \"ten\""),
        (
            |o| o.runtime_class = Some("NVIDIA".into()),
            "--runtime-class",
        ),
        (
            |o| o.gateway_address = "no-port".into(),
            "--gateway-address",
        ),
        (
            |o| {
                o.server_replicas = 2;
                o.server_advertise = "one.example.com:7400".into();
            },
            "must contain {ordinal}",
        ),
        (
            |o| o.join.agent = Some("not-a-token".into()),
            "--join \"<token>\"",
        ),
        (
            |o| o.join.servers = vec![TOKEN.into()],
            "more server tokens than server pods (1)",
        ),
        (|o| o.init = false, "neither was given"),
        (
            |o| {
                o.init = false;
                o.join.servers = vec![TOKEN.into(), TOKEN.into()];
            },
            "more server tokens than server pods (1)",
        ),
    ];
    for (change, expected) in cases {
        let mut o = first_cluster();
        change(&mut o);
        let err = install::render(&o).expect_err(expected);
        assert!(
            err.to_string().contains(expected),
            "{err} (wanted {expected:?})"
        );
    }
}

#[test]
fn errors_are_classified() {
    let mut o = first_cluster();
    o.init = false;
    assert!(matches!(install::render(&o), Err(InstallError::Bootstrap)));
    o.cluster = "C".into();
    assert!(matches!(
        install::render(&o),
        Err(InstallError::Invalid {
            option: "cluster",
            ..
        })
    ));
}
