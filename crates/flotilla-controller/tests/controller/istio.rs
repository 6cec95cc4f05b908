//! The Istio apply-and-prune decision, called directly.

use flotilla_controller::istio::{IstioAction, plan, rendered};
use flotilla_core::{ClusterSpec, Route, RouteEndpoint, RouteTable};
use flotilla_kube::istio::IstioOptions;
use kube::api::DynamicObject;
use serde_json::{Value, json};

const MODEL: &str = "llama";

fn cluster(name: &str) -> ClusterSpec {
    ClusterSpec {
        name: name.into(),
        region: format!("{name}-region"),
        zone: String::new(),
        labels: Default::default(),
        gateway_address: String::new(),
        endpoint_ranges: Vec::new(),
    }
}

fn routes(serving: &[(&str, u32)]) -> RouteTable {
    let mut t = RouteTable::default();
    t.routes.insert(
        MODEL.into(),
        Route {
            model: MODEL.into(),
            endpoints: serving
                .iter()
                .map(|(c, w)| RouteEndpoint {
                    cluster: (*c).into(),
                    weight: *w,
                    ready_replicas: 1,
                })
                .collect(),
            revision: 1,
        },
    );
    t
}

fn options() -> IstioOptions {
    IstioOptions {
        namespace: "gpu".into(),
        local_cluster: Some("a".into()),
        ..Default::default()
    }
}

fn render(serving: &[(&str, u32)]) -> Vec<Value> {
    rendered(
        &routes(serving),
        &[cluster("a"), cluster("b"), cluster("c")],
        &options(),
    )
    .expect("renders")
}

/// The rendered objects as the API server would list them back.
fn as_listed(objects: &[Value]) -> Vec<DynamicObject> {
    objects
        .iter()
        .map(|o| serde_json::from_value(o.clone()).expect("an object"))
        .collect()
}

fn names(actions: &[IstioAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            IstioAction::Apply { kind, name, .. } => format!("apply {kind} {name}"),
            IstioAction::Delete { kind, name } => format!("delete {kind} {name}"),
        })
        .collect()
}

#[test]
fn nothing_applied_yet_means_every_rendered_object_is_applied_after_a_read() {
    let objects = render(&[("a", 50), ("b", 50)]);
    let actions = plan(&objects, &[]);
    assert_eq!(
        names(&actions),
        [
            "apply ServiceEntry flotilla-llama",
            "apply DestinationRule flotilla-llama",
            "apply WorkloadEntry flotilla-llama-b",
        ]
    );
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, IstioAction::Apply { unlisted: true, .. }))
    );
}

#[test]
fn objects_already_applied_unchanged_are_left_as_they_are() {
    let objects = render(&[("a", 50), ("b", 50)]);
    assert!(plan(&objects, &as_listed(&objects)).is_empty());
}

#[test]
fn a_new_route_revision_alone_applies_nothing() {
    let before = render(&[("b", 100)]);
    let mut after = routes(&[("b", 100)]);
    if let Some(r) = after.routes.get_mut(MODEL) {
        r.revision = 9;
    }
    let after = rendered(&after, &[cluster("a"), cluster("b")], &options()).expect("renders");
    assert!(plan(&after, &as_listed(&before)).is_empty());
}

#[test]
fn a_changed_weight_is_applied_over_our_object_without_reading_it_first() {
    let before = render(&[("b", 50), ("c", 50)]);
    let after = render(&[("b", 20), ("c", 80)]);
    let actions = plan(&after, &as_listed(&before));
    assert_eq!(
        names(&actions),
        [
            "apply WorkloadEntry flotilla-llama-b",
            "apply WorkloadEntry flotilla-llama-c"
        ]
    );
    assert!(actions.iter().all(|a| matches!(
        a,
        IstioAction::Apply {
            unlisted: false,
            ..
        }
    )));
}

#[test]
fn a_cluster_that_stops_serving_loses_its_workload_entry() {
    let before = render(&[("b", 50), ("c", 50)]);
    let after = render(&[("c", 100)]);
    let actions = plan(&after, &as_listed(&before));
    assert!(names(&actions).contains(&"delete WorkloadEntry flotilla-llama-b".to_owned()));
}

#[test]
fn a_model_no_longer_routed_has_all_its_objects_pruned() {
    let before = render(&[("b", 100)]);
    let actions = plan(&[], &as_listed(&before));
    assert_eq!(
        names(&actions),
        [
            "delete DestinationRule flotilla-llama",
            "delete ServiceEntry flotilla-llama",
            "delete WorkloadEntry flotilla-llama-b",
        ]
    );
}

#[test]
fn an_object_without_our_label_is_never_pruned() {
    let theirs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "theirs", "namespace": "gpu", "labels": {"flotilla.dev/model": "x"}},
        "spec": {},
    }))
    .expect("an object");
    assert!(plan(&[], &[theirs]).is_empty());
}
