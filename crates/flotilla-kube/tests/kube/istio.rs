//! The Istio renderer: what each route becomes, and that Istio's own CRD schemas
//! accept every object (and reject broken ones, so the check means something).

use crate::openapi::Crds;
use flotilla_core::{ClusterSpec, Route, RouteEndpoint, RouteTable};
use flotilla_kube::istio::{self, IstioError, IstioMode, IstioOptions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::LazyLock;

static CRDS: LazyLock<Crds> = LazyLock::new(Crds::istio);

fn cluster(name: &str, region: &str, zone: &str) -> ClusterSpec {
    ClusterSpec {
        name: name.into(),
        region: region.into(),
        zone: zone.into(),
        labels: Default::default(),
        gateway_address: format!("{name}.example.com:8443"),
        endpoint_ranges: Vec::new(),
    }
}

fn clusters() -> Vec<ClusterSpec> {
    vec![
        cluster("c1", "us-east", "us-east-1a"),
        cluster("c2", "eu-west", ""),
        cluster("c3", "ap-south", "ap-south-1b"),
    ]
}

fn endpoint(cluster: &str, weight: u32) -> RouteEndpoint {
    RouteEndpoint {
        cluster: cluster.into(),
        weight,
        ready_replicas: 1,
    }
}

/// llama is migrating from c2 to c3 (70/30); mistral is only on c1; an old model
/// is a tombstone.
fn routes() -> RouteTable {
    let mut t = RouteTable {
        revision: 9,
        ..Default::default()
    };
    for (model, endpoints, revision) in [
        (
            "meta-llama/Llama-3.1-8B-Instruct",
            vec![endpoint("c2", 70), endpoint("c3", 30), endpoint("c1", 100)],
            9,
        ),
        ("mistral-7b", vec![endpoint("c1", 100)], 4),
        ("retired", vec![], 7),
    ] {
        t.routes.insert(
            model.into(),
            Route {
                model: model.into(),
                endpoints,
                revision,
            },
        );
    }
    t
}

fn render(local: Option<&str>) -> Vec<Value> {
    let options = IstioOptions {
        local_cluster: local.map(str::to_owned),
        ..Default::default()
    };
    istio::render(&routes(), &clusters(), &options).expect("renders")
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn every_rendered_object_validates_against_istios_crd_schemas() {
    for local in [None, Some("c1"), Some("c3")] {
        for object in render(local) {
            let errors = CRDS.check(&object);
            assert!(
                errors.is_empty(),
                "{}: {errors:#?}",
                object["metadata"]["name"]
            );
        }
    }
}

#[test]
fn a_model_gets_a_service_entry_a_destination_rule_and_a_workload_entry_per_remote_cluster() {
    let objects = render(Some("c1"));
    let llama = |o: &&Value| {
        o["metadata"]["annotations"]["flotilla.dev/model-id"] == "meta-llama/Llama-3.1-8B-Instruct"
    };
    let se: Vec<_> = of_kind(&objects, "ServiceEntry")
        .into_iter()
        .filter(llama)
        .collect();
    assert_eq!(se.len(), 1);
    let label = se[0]["spec"]["workloadSelector"]["labels"]["flotilla.dev/model"]
        .as_str()
        .expect("a model label");
    assert_eq!(
        se[0]["spec"]["hosts"],
        json!([format!("{label}.flotilla.global")])
    );
    assert_eq!(se[0]["spec"]["location"], "MESH_INTERNAL");
    assert_eq!(se[0]["spec"]["resolution"], "STATIC");

    let dr: Vec<_> = of_kind(&objects, "DestinationRule")
        .into_iter()
        .filter(llama)
        .collect();
    assert_eq!(dr[0]["spec"]["host"], se[0]["spec"]["hosts"][0]);
    let policy = &dr[0]["spec"]["trafficPolicy"];
    assert_eq!(policy["outlierDetection"]["consecutiveGatewayErrors"], 3);
    assert_eq!(policy["loadBalancer"]["localityLbSetting"]["enabled"], true);

    // c1 is local (its replicas are pods); c2 and c3 are remote, by the route's weights.
    let entries: Vec<_> = of_kind(&objects, "WorkloadEntry")
        .into_iter()
        .filter(llama)
        .collect();
    let specs: Vec<_> = entries.iter().map(|e| &e["spec"]).collect();
    assert_eq!(
        specs,
        [
            &json!({
                "labels": { "flotilla.dev/model": label, "flotilla.dev/cluster": "c2" },
                "network": "c2", "locality": "eu-west", "weight": 70, "ports": { "http": 8000 },
            }),
            &json!({
                "labels": { "flotilla.dev/model": label, "flotilla.dev/cluster": "c3" },
                "network": "c3", "locality": "ap-south/ap-south-1b", "weight": 30, "ports": { "http": 8000 },
            }),
        ]
    );
    // The WorkloadEntries carry the labels the ServiceEntry selects.
    for e in entries {
        assert_eq!(e["spec"]["labels"]["flotilla.dev/model"], label);
    }
}

#[test]
fn without_a_local_cluster_every_serving_cluster_is_a_workload_entry() {
    let objects = render(None);
    let clusters: Vec<_> = of_kind(&objects, "WorkloadEntry")
        .iter()
        .map(|e| e["spec"]["labels"]["flotilla.dev/cluster"].clone())
        .collect();
    assert_eq!(
        clusters,
        [json!("c1"), json!("c2"), json!("c3"), json!("c1")]
    );
}

#[test]
fn tombstones_and_weightless_endpoints_render_nothing() {
    let mut table = routes();
    let llama = table
        .routes
        .get_mut("meta-llama/Llama-3.1-8B-Instruct")
        .expect("fixture");
    // Istio reads weight 0 as unset (1): a drained migration source must not appear.
    llama.endpoints[1].weight = 0;
    let objects = istio::render(&table, &clusters(), &IstioOptions::default()).expect("renders");
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["annotations"]["flotilla.dev/model-id"] != "retired")
    );
    assert!(
        of_kind(&objects, "WorkloadEntry")
            .iter()
            .all(|e| e["spec"]["labels"]["flotilla.dev/cluster"] != "c3"
                || e["metadata"]["labels"]["flotilla.dev/model"] == "mistral-7b"),
    );
    assert_eq!(of_kind(&objects, "ServiceEntry").len(), 2);
}

#[test]
fn networks_are_named_per_cluster_when_the_mesh_says_so() {
    let mut options = IstioOptions::default();
    options.networks.insert("c2".into(), "network-eu".into());
    let objects = istio::render(&routes(), &clusters(), &options).expect("renders");
    let c2 = of_kind(&objects, "WorkloadEntry")
        .into_iter()
        .find(|e| e["spec"]["labels"]["flotilla.dev/cluster"] == "c2")
        .expect("c2 serves llama");
    assert_eq!(c2["spec"]["network"], "network-eu");
}

#[test]
fn a_route_naming_an_unknown_cluster_is_an_error_naming_model_and_cluster() {
    let err = istio::render(&routes(), &clusters()[..2], &IstioOptions::default())
        .expect_err("c3 is unknown");
    assert_eq!(
        err,
        IstioError::UnknownCluster {
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            cluster: "c3".into()
        }
    );
    assert!(err.to_string().contains("\"c3\""), "{err}");
}

#[test]
fn bad_options_are_refused() {
    for options in [
        IstioOptions {
            namespace: "Flotilla".into(),
            ..Default::default()
        },
        IstioOptions {
            host_suffix: "not a host".into(),
            ..Default::default()
        },
        IstioOptions {
            port: 0,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            istio::render(&routes(), &clusters(), &options),
            Err(IstioError::InvalidOption { .. })
        ));
    }
}

#[test]
fn model_ids_become_dns_labels_and_names_stay_valid_kubernetes_names() {
    for object in render(None) {
        let name = object["metadata"]["name"].as_str().expect("named");
        assert!(flotilla_kube::names::is_dns_subdomain(name), "{name}");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "flotilla"
        );
        assert_eq!(object["metadata"]["namespace"], "flotilla");
    }
}

#[test]
fn the_yaml_output_reads_back_as_the_same_objects() {
    let objects = render(Some("c1"));
    let yaml = flotilla_kube::output::to_yaml(&objects).expect("writes");
    let back: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("reads back");
    assert_eq!(back, objects);
}

/// The CEL rules (`x-kubernetes-validations`) the validator does not evaluate,
/// checked by hand for the ones that concern what the renderer emits.
#[test]
fn the_cel_rules_of_these_kinds_hold() {
    for o in render(None) {
        let spec = &o["spec"];
        match o["kind"].as_str() {
            Some("ServiceEntry") => {
                // "only one of WorkloadSelector or Endpoints can be set"
                assert!(spec.get("workloadSelector").is_none() || spec.get("endpoints").is_none());
                // "NONE mode cannot set endpoints"; port numbers 1–65535, unique.
                for p in spec["ports"].as_array().expect("ports") {
                    let n = p["number"].as_u64().expect("number");
                    assert!((1..=65535).contains(&n));
                }
                assert!(
                    spec["hosts"]
                        .as_array()
                        .expect("hosts")
                        .iter()
                        .all(|h| h != "*")
                );
            }
            Some("WorkloadEntry") => {
                // "Address is required": an address or a network.
                assert!(spec.get("address").is_some() || spec.get("network").is_some());
                for (name, port) in spec["ports"].as_object().expect("ports") {
                    assert!(flotilla_kube::names::is_dns_label(name) && name.len() < 63);
                    assert!((1..=65535).contains(&port.as_u64().expect("port")));
                }
            }
            Some("DestinationRule") => {
                // Durations must parse and be at least 1 ms.
                let od = &spec["trafficPolicy"]["outlierDetection"];
                for key in ["interval", "baseEjectionTime"] {
                    let d = od[key].as_str().expect("duration");
                    let secs: u64 = d
                        .strip_suffix('s')
                        .and_then(|n| n.parse().ok())
                        .expect("Ns");
                    assert!(secs >= 1, "{key}: {d}");
                }
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
}

// The validator must reject, or the tests above prove nothing.

fn service_entry() -> Value {
    render(None)
        .into_iter()
        .find(|o| o["kind"] == "ServiceEntry")
        .expect("one")
}

fn destination_rule() -> Value {
    render(None)
        .into_iter()
        .find(|o| o["kind"] == "DestinationRule")
        .expect("one")
}

#[test]
fn the_validator_rejects_a_misspelled_field_naming_its_path() {
    let mut se = service_entry();
    let spec = se["spec"].as_object_mut().expect("spec");
    let selector = spec.remove("workloadSelector").expect("selector");
    spec.insert("workloadSelecter".into(), selector);
    assert_eq!(CRDS.check(&se), [".spec.workloadSelecter: unknown field"]);
}

#[test]
fn the_validator_rejects_a_wrong_type_naming_its_path() {
    let mut dr = destination_rule();
    dr["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] = json!("three");
    assert_eq!(
        CRDS.check(&dr),
        [
            ".spec.trafficPolicy.outlierDetection.consecutive5xxErrors: expected integer, got \"three\""
        ]
    );
}

#[test]
fn the_validator_rejects_values_outside_an_enum_or_a_range_and_missing_required_fields() {
    let mut se = service_entry();
    se["spec"]["resolution"] = json!("STATICALLY");
    se["spec"]["ports"][0]["number"] = json!(5_000_000_000_u64);
    se["spec"]["ports"][0]
        .as_object_mut()
        .expect("port")
        .remove("name");
    let errors = CRDS.check(&se);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(".spec.ports[0].name: required"),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with(".spec.ports[0].number: 5000000000 is above the maximum"),
        "{errors:#?}"
    );
    assert!(
        errors[2].starts_with(".spec.resolution: \"STATICALLY\" is not one of"),
        "{errors:#?}"
    );
}

#[test]
fn the_validator_rejects_two_branches_of_a_one_of() {
    let mut dr = destination_rule();
    dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"] = json!({ "useSourceIp": true });
    let errors = CRDS.check(&dr);
    assert_eq!(
        errors,
        [".spec.trafficPolicy.loadBalancer: matches 2 of the oneOf alternatives, not exactly one"]
    );
}

#[test]
fn the_validator_rejects_bad_metadata_and_unknown_kinds() {
    let mut se = service_entry();
    se["metadata"]["labels"]["flotilla.dev/model"] = json!("meta-llama/Llama");
    se["metadata"]["lables"] = json!({});
    assert_eq!(
        CRDS.check(&se),
        [
            ".metadata.labels.flotilla.dev/model: \"meta-llama/Llama\" is not a valid label value",
            ".metadata.lables: unknown field",
        ]
    );
    se["kind"] = json!("ServiceEntree");
    assert_eq!(
        CRDS.check(&se),
        ["no CRD schema for networking.istio.io/v1 ServiceEntree"]
    );
}

fn render_ambient(local: Option<&str>) -> Vec<Value> {
    let options = IstioOptions {
        local_cluster: local.map(str::to_owned),
        mode: IstioMode::Ambient,
        ..Default::default()
    };
    istio::render(&routes(), &clusters(), &options).expect("renders")
}

#[test]
fn ambient_mode_gives_each_model_a_global_service_through_the_waypoint_and_no_entries() {
    let objects = render_ambient(Some("c1"));
    assert!(of_kind(&objects, "ServiceEntry").is_empty());
    assert!(of_kind(&objects, "WorkloadEntry").is_empty());
    let services = of_kind(&objects, "Service");
    assert_eq!(
        services.len(),
        2,
        "one per served model, none for the tombstone"
    );
    let llama = services
        .iter()
        .find(|s| {
            s["metadata"]["annotations"]["flotilla.dev/model-id"]
                == "meta-llama/Llama-3.1-8B-Instruct"
        })
        .expect("llama's Service");
    let name = llama["metadata"]["name"].as_str().expect("a name");
    assert_eq!(llama["metadata"]["labels"]["istio.io/global"], "true");
    assert_eq!(
        llama["metadata"]["labels"]["istio.io/use-waypoint"],
        "flotilla-waypoint"
    );
    let label = &llama["metadata"]["labels"]["flotilla.dev/model"];
    assert_eq!(
        &llama["spec"]["selector"]["flotilla.dev/model"], label,
        "it selects the model's pods"
    );
    assert_eq!(llama["spec"]["ports"][0]["port"], 8000);

    let rule = of_kind(&objects, "DestinationRule")
        .into_iter()
        .find(|r| r["metadata"]["name"] == name)
        .expect("llama's DestinationRule");
    assert_eq!(
        rule["spec"]["host"],
        format!("{name}.flotilla.svc.cluster.local")
    );
    assert_eq!(
        rule["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["distribute"],
        json!([{"from": "*", "to": {
            "us-east/us-east-1a/*": 50, "eu-west/*": 35, "ap-south/ap-south-1b/*": 15,
        }}]),
        "the route's weights (100, 70, 30) as each cluster's locality share"
    );
    assert!(rule["spec"]["trafficPolicy"]["outlierDetection"].is_object());
    let errors = CRDS.check(rule);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn locality_percentages_always_sum_to_exactly_one_hundred() {
    let weights = |w: &[(&str, u64)]| -> BTreeMap<String, u64> {
        w.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    let thirds = istio::percentages(&weights(&[("a/*", 1), ("b/*", 1), ("c/*", 1)]));
    assert_eq!(thirds.values().sum::<u64>(), 100);
    assert_eq!(
        thirds.values().copied().collect::<Vec<_>>(),
        [34, 33, 33],
        "largest remainder, ties by name"
    );
    let moved = istio::percentages(&weights(&[("a/*", 0), ("b/*", 100)]));
    assert_eq!(
        moved,
        weights(&[("b/*", 100)]),
        "a locality of weight 0 is left out"
    );
    assert!(istio::percentages(&weights(&[("a/*", 0)])).is_empty());
    let skewed = istio::percentages(&weights(&[("a/*", 999), ("b/*", 1)]));
    assert_eq!(
        skewed,
        weights(&[("a/*", 100)]),
        "a share that rounds to 0 is left out"
    );
}
