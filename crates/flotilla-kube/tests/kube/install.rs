//! `flotilla install`'s manifests: their structure, for several option sets.
//! (deploy/validate.sh validates the same option sets against Kubernetes' schemas.)

use flotilla_kube::install::{self, InstallError, InstallOptions, JoinTokens};
use flotilla_kube::istio::IstioMode;
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
        node: Some(format!("{TOKEN}n")),
        gateway: Some(format!("{TOKEN}g")),
    };
    o.istio = true;
    o.istio_networks = vec!["c1=network-east".into(), "c2=network-west".into()];
    o.namespace = "gpu-fed".into();
    o.server_advertise = "flotilla-{ordinal}.c2.example.com:7400".into();
    o.runtime_class = None;
    o.storage_class = Some("fast-ssd".into());
    o
}

fn ambient() -> InstallOptions {
    let mut o = first_cluster();
    o.istio = true;
    o.istio_mode = IstioMode::Ambient;
    o.istio_networks = vec!["c1=network-east".into()];
    o
}

fn option_sets() -> Vec<InstallOptions> {
    let mut five = first_cluster();
    five.server_replicas = 5;
    vec![first_cluster(), joining_ha_istio(), five, ambient()]
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
        .filter(|o| is_workload(o))
        .map(|o| &o["spec"]["template"]["spec"])
        .collect()
}

fn is_workload(o: &Value) -> bool {
    matches!(
        o["kind"].as_str(),
        Some("StatefulSet" | "DaemonSet" | "Deployment")
    )
}

fn args_of<'a>(objects: &'a [Value], kind: &str, name: &str) -> Vec<&'a str> {
    find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
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
        assert!(
            objects
                .iter()
                .all(|x| x["kind"] != "ClusterRole" && x["kind"] != "ClusterRoleBinding")
        );
        let roles: Vec<_> = objects.iter().filter(|x| x["kind"] == "Role").collect();
        assert_eq!(roles.len(), 1, "only the controller has a Role");
        let role = roles[0];
        assert_eq!(role["metadata"]["name"], "flotilla-controller");
        // What the controller does: watch and list its own objects, read one before
        // taking it over, server-side apply (patch, and create for an apply that
        // creates), delete. Never update. Pods it only reads (a drained replica is
        // Gone once its pod is).
        let verbs = serde_json::json!(["get", "list", "watch", "create", "patch", "delete"]);
        let read = serde_json::json!(["get", "list", "watch"]);
        let mut granted = Vec::new();
        for rule in role["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_array().expect(field);
                assert!(values.iter().all(|v| v != "*"), "{field}: {values:?}");
            }
            if rule["resources"] == serde_json::json!(["pods"]) {
                assert_eq!(rule["verbs"], read, "{rule}");
            } else {
                assert_eq!(rule["verbs"], verbs, "{rule}");
            }
            for r in rule["resources"].as_array().expect("resources") {
                granted.push(format!(
                    "{}/{}",
                    rule["apiGroups"][0].as_str().expect("group"),
                    r.as_str().expect("resource")
                ));
            }
        }
        let mut expected = vec![
            "apps/deployments".to_owned(),
            "/services".to_owned(),
            "/pods".to_owned(),
        ];
        let istio_kinds: &[&str] = match (o.istio, o.istio_mode) {
            (false, _) => &[],
            (true, IstioMode::Sidecar) => {
                &["serviceentries", "workloadentries", "destinationrules"]
            }
            (true, IstioMode::Ambient) => &["destinationrules"],
        };
        for kind in istio_kinds {
            expected.push(format!("networking.istio.io/{kind}"));
        }
        assert_eq!(granted, expected);
        let binding = find(&objects, "RoleBinding", "flotilla-controller");
        assert_eq!(binding["subjects"][0]["name"], "flotilla-controller");
        // A token is mounted only where the API is called.
        for (account, automount) in [
            ("flotilla-server", false),
            ("flotilla-agent", false),
            ("flotilla-controller", true),
            ("flotilla-gateway", false),
        ] {
            let sa = find(&objects, "ServiceAccount", account);
            assert_eq!(sa["automountServiceAccountToken"], automount, "{account}");
        }
        // The controller applies Istio objects exactly when it may.
        let args = args_of(&objects, "Deployment", "flotilla-controller");
        assert_eq!(args.contains(&"--istio"), o.istio, "{args:?}");
        for n in &o.istio_networks {
            assert!(
                args.contains(&format!("--istio-network={n}").as_str()),
                "{args:?}"
            );
        }
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
fn join_tokens_live_in_one_secret_per_component_and_never_in_a_pod_spec() {
    let o = joining_ha_istio();
    let objects = install::render(&o).expect("renders");
    let servers = find(&objects, "Secret", "flotilla-join-server");
    assert_eq!(servers["stringData"]["server-0"], format!("{TOKEN}s0"));
    assert_eq!(servers["stringData"]["server-2"], format!("{TOKEN}s2"));
    let controller = find(&objects, "Secret", "flotilla-join-controller");
    assert_eq!(controller["stringData"]["agent"], format!("{TOKEN}a"));
    let nodes = find(&objects, "Secret", "flotilla-join-node");
    assert_eq!(nodes["stringData"]["node"], format!("{TOKEN}n"));
    let gateways = find(&objects, "Secret", "flotilla-join-gateway");
    assert_eq!(gateways["stringData"]["gateway"], format!("{TOKEN}g"));
    for (secret, keys) in [(&servers, 3), (&controller, 1), (&nodes, 1), (&gateways, 1)] {
        assert_eq!(
            secret["stringData"].as_object().map(|m| m.len()),
            Some(keys)
        );
    }
    for object in objects.iter().filter(|x| x["kind"] != "Secret") {
        let text = object.to_string();
        assert!(
            !text.contains(TOKEN),
            "{} holds a token",
            object["metadata"]["name"]
        );
    }
    // Each pod mounts its own component's Secret, and no other: a GPU node never
    // holds a server token, nor the controller's (which speaks for the cluster).
    for (kind, name, secret) in [
        ("StatefulSet", "flotilla-server", "flotilla-join-server"),
        ("DaemonSet", "flotilla-agent", "flotilla-join-node"),
        (
            "Deployment",
            "flotilla-controller",
            "flotilla-join-controller",
        ),
        ("Deployment", "flotilla-gateway", "flotilla-join-gateway"),
    ] {
        let pod = &find(&objects, kind, name)["spec"]["template"]["spec"];
        let mounted: Vec<&str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(mounted, vec![secret], "{name}");
    }
    // With --init, server 0 starts the federation and tokens are for the others.
    let mut first = first_cluster();
    first.server_replicas = 3;
    first.join.servers = vec![format!("{TOKEN}x")];
    let objects = install::render(&first).expect("renders");
    let secret = find(&objects, "Secret", "flotilla-join-server");
    assert_eq!(secret["stringData"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(secret["stringData"]["server-1"], format!("{TOKEN}x"));
    assert!(
        objects.iter().filter(|x| x["kind"] == "Secret").count() == 1,
        "no Secret for components that were given no token"
    );
    // No tokens, no Secret (the volumes are optional).
    let objects = install::render(&first_cluster()).expect("renders");
    assert!(objects.iter().all(|x| x["kind"] != "Secret"));
}

/// RBAC cannot tell the controller's Deployments from anyone else's in its
/// namespace; an admission policy does (tested against a real API server in
/// `crates/flotilla/tests/kube_e2e.rs`).
#[test]
fn an_admission_policy_keeps_the_controller_to_the_objects_it_made() {
    for (o, objects) in rendered() {
        let name = format!("flotilla-controller.{}", o.namespace);
        let policy = find(&objects, "ValidatingAdmissionPolicy", &name);
        let account = format!("system:serviceaccount:{}:flotilla-controller", o.namespace);
        let condition = policy["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .expect("a condition");
        assert!(condition.contains(&account), "{condition}");
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        for validation in policy["spec"]["validations"]
            .as_array()
            .expect("validations")
        {
            let rule = validation["expression"].as_str().expect("an expression");
            assert!(
                rule.contains(&format!("'flotilla.dev/cluster'] == '{}'", o.cluster)),
                "{rule}"
            );
            assert!(
                rule.contains("'app.kubernetes.io/managed-by'] == 'flotilla'"),
                "{rule}"
            );
        }
        let kinds: Vec<_> = policy["spec"]["matchConstraints"]["resourceRules"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
            .collect();
        let istio_kinds = match (o.istio, o.istio_mode) {
            (false, _) => 0,
            (true, IstioMode::Sidecar) => 3,
            (true, IstioMode::Ambient) => 1,
        };
        assert_eq!(kinds.len(), 2 + istio_kinds, "{kinds:?}");
        let binding = find(&objects, "ValidatingAdmissionPolicyBinding", &name);
        assert_eq!(binding["spec"]["policyName"], name.as_str());
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
    }
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
            let cluster_scoped = [
                "Namespace",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            ];
            if cluster_scoped.iter().any(|k| object["kind"] == *k) {
                assert!(meta["namespace"].is_null(), "{meta}");
            } else if meta["name"] == "istio-eastwestgateway" {
                assert_eq!(
                    meta["namespace"], "istio-system",
                    "Istio's guide puts it there"
                );
            } else {
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
            .filter(|o| is_workload(o))
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
                    // No `ingress` at all: nothing may come in.
                    o["spec"]["ingress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|r| r["ports"].as_array().expect("ports"))
                        .map(|p| &p["port"])
                        .collect(),
                ),
                Some("StatefulSet" | "DaemonSet" | "Deployment") => {
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
fn an_agent_runs_on_every_gpu_node_reporting_only_its_node_with_the_nvidia_runtime() {
    let objects = install::render(&first_cluster()).expect("renders");
    let pod = &find(&objects, "DaemonSet", "flotilla-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({ "nvidia.com/gpu.present": "true" })
    );
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    let args = args_of(&objects, "DaemonSet", "flotilla-agent");
    for expected in [
        "--gpu-source=nvml",
        "--node=$(NODE_NAME)",
        "--report-scope=node",
        "--materializer=none",
        "--state-dir=/var/lib/flotilla/agent",
    ] {
        assert!(args.contains(&expected), "{expected} not in {args:?}");
    }
    // Without a runtime class the field is left out (the node's default runtime).
    let objects = install::render(&joining_ha_istio()).expect("renders");
    let pod = &find(&objects, "DaemonSet", "flotilla-agent")["spec"]["template"]["spec"];
    assert!(pod.get("runtimeClassName").is_none());
}

#[test]
fn the_controller_and_the_gateway_are_single_pod_deployments_keeping_their_identity() {
    for (o, objects) in rendered() {
        for (name, claim) in [
            ("flotilla-controller", "flotilla-controller-state"),
            ("flotilla-gateway", "flotilla-gateway-state"),
        ] {
            let d = find(&objects, "Deployment", name);
            assert_eq!(d["spec"]["replicas"], 1, "{name}");
            assert_eq!(d["spec"]["strategy"]["type"], "Recreate", "{name}");
            let volumes = &d["spec"]["template"]["spec"]["volumes"];
            assert_eq!(volumes[0]["persistentVolumeClaim"]["claimName"], claim);
            let pvc = find(&objects, "PersistentVolumeClaim", claim);
            assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
            assert_eq!(
                pvc["spec"].get("storageClassName").and_then(Value::as_str),
                o.storage_class.as_deref()
            );
        }
        let controller = args_of(&objects, "Deployment", "flotilla-controller");
        assert!(controller.contains(&"controller"), "{controller:?}");
        assert!(
            controller.contains(&format!("--namespace={}", o.namespace).as_str()),
            "{controller:?}"
        );
        // The gateway finds local replicas through the registry, not an agent.
        let gateway = args_of(&objects, "Deployment", "flotilla-gateway");
        assert!(
            gateway.iter().all(|a| !a.starts_with("--agent-admin")),
            "{gateway:?}"
        );
        let east_west = find(&objects, "Service", "flotilla-gateway");
        assert_eq!(east_west["spec"]["type"], "LoadBalancer");
        assert_eq!(
            east_west["spec"]["selector"]["app.kubernetes.io/component"],
            "gateway"
        );
    }
    // Replicas of container-less workloads run the installed image.
    let mut custom = first_cluster();
    custom.image = "registry.example.com/flotilla:dev".into();
    let objects = install::render(&custom).expect("renders");
    let args = args_of(&objects, "Deployment", "flotilla-controller");
    assert!(
        args.contains(&"--replica-image=registry.example.com/flotilla:dev"),
        "{args:?}"
    );
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
            |o| o.istio_networks = vec!["c1=network1".into()],
            "--istio-network \"c1=network1\": needs --istio",
        ),
        (
            |o| {
                o.istio = true;
                o.istio_networks = vec!["c1".into()];
            },
            "must be CLUSTER=NETWORK",
        ),
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

#[test]
fn ambient_mode_enrols_the_namespace_and_renders_the_waypoint_and_the_east_west_gateway() {
    let objects = install::render(&ambient()).expect("renders");
    assert_eq!(
        objects[0]["metadata"]["labels"]["istio.io/dataplane-mode"],
        "ambient"
    );
    let waypoint = find(&objects, "Gateway", "flotilla-waypoint");
    assert_eq!(waypoint["spec"]["gatewayClassName"], "istio-waypoint");
    assert_eq!(
        waypoint["metadata"]["labels"]["istio.io/waypoint-for"],
        "service"
    );
    assert_eq!(
        waypoint["spec"]["infrastructure"]["labels"]["istio.io/global"], "true",
        "the waypoint's Service is global too, as the models' are"
    );
    let east_west = find(&objects, "Gateway", "istio-eastwestgateway");
    assert_eq!(east_west["spec"]["gatewayClassName"], "istio-east-west");
    assert_eq!(
        east_west["metadata"]["labels"]["topology.istio.io/network"], "network-east",
        "this cluster's network, as --istio-network names it"
    );
    assert_eq!(east_west["spec"]["listeners"][0]["protocol"], "HBONE");
    let args = args_of(&objects, "Deployment", "flotilla-controller");
    assert!(args.contains(&"--istio-mode=ambient"), "{args:?}");

    let sidecar = install::render(&joining_ha_istio()).expect("renders");
    assert!(
        sidecar.iter().all(|o| o["kind"] != "Gateway"),
        "no Gateways in sidecar mode"
    );
    assert!(sidecar[0]["metadata"]["labels"]["istio.io/dataplane-mode"].is_null());
}

#[test]
fn the_gateway_enforces_the_registrys_governance_unless_the_install_is_open() {
    let enforces = |o: &InstallOptions| {
        let objects = install::render(o).expect("renders");
        args_of(&objects, "Deployment", "flotilla-gateway").contains(&"--registry-governance")
    };
    let mut o = first_cluster();
    assert!(enforces(&o), "governance is on by default");
    o.open = true;
    assert!(!enforces(&o), "--open enforces nothing");
}

#[test]
fn external_endpoints_come_from_the_operators_secret_mounted_into_the_gateway_alone() {
    let mut o = first_cluster();
    let without = install::render(&o).expect("renders");
    assert!(
        !args_of(&without, "Deployment", "flotilla-gateway")
            .iter()
            .any(|a| a.starts_with("--external-endpoints")),
        "none unless asked for"
    );
    o.external_endpoints_secret = Some("provider-keys".into());
    let objects = install::render(&o).expect("renders");
    assert!(
        args_of(&objects, "Deployment", "flotilla-gateway")
            .contains(&"--external-endpoints=/etc/flotilla/external/endpoints.toml")
    );
    // Only the gateway mounts it.
    for o in &objects {
        let spec = &o["spec"]["template"]["spec"];
        let mounts_it = spec["volumes"].as_array().is_some_and(|v| {
            v.iter()
                .any(|v| v["secret"]["secretName"] == "provider-keys")
        });
        assert_eq!(
            mounts_it,
            o["metadata"]["name"] == "flotilla-gateway" && o["kind"] == "Deployment",
            "{}/{}",
            o["kind"],
            o["metadata"]["name"]
        );
    }
    o.external_endpoints_secret = Some("Not_A_Secret".into());
    let err = install::render(&o).unwrap_err().to_string();
    assert!(err.contains("external-endpoints-secret"), "{err}");
}
