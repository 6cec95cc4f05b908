//! The Kubernetes materializer against the API server's protocol: kube's client over
//! `tower_test`'s mock service pair, with each test scripting the API server's
//! answers in the order the materializer must ask. A request the script does not
//! expect leaves the pass waiting, so every pass is bounded by a timeout.

use super::kubernetes_objects::{desired, options, vllm_workload};
use flotilla_agent::AgentError;
use flotilla_agent::materializer::kubernetes::{
    KubernetesMaterializer, WorkloadSpecs, deployment_for, service_for,
};
use flotilla_agent::materializer::{DesiredReplica, Materializer, PhaseReport};
use flotilla_core::{Phase, ReplicaId, Timestamp, Workload};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tower_test::mock::{self, Handle};

struct Fixed(BTreeMap<String, Workload>);

impl WorkloadSpecs for Fixed {
    async fn workloads(&self) -> Result<BTreeMap<String, Workload>, AgentError> {
        Ok(self.0.clone())
    }
}

/// One request as the API server saw it.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

type Api = Handle<Request<Body>, Response<Body>>;

/// The API server: answers the next request with what `reply` makes of it.
async fn respond(api: &mut Api, reply: impl FnOnce(&Seen) -> (u16, Value)) -> Seen {
    let (request, send) = api.next_request().await.expect("the materializer called");
    let (parts, body_in) = request.into_parts();
    let bytes = body_in.collect_bytes().await.expect("a request body");
    let seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    let (status, body) = reply(&seen);
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("a response");
    send.send_response(response);
    seen
}

async fn answer(api: &mut Api, status: u16, body: Value) -> Seen {
    respond(api, |_| (status, body)).await
}

/// An apply, answered with the object as the API server would store it.
async fn echo(api: &mut Api, status: Value) -> Seen {
    respond(api, |seen| {
        let mut object = seen.body.clone();
        if !status.is_null() {
            object["status"] = status;
        }
        (200, object)
    })
    .await
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found", "metadata": {}})
}

fn deleted() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200, "metadata": {}})
}

fn workloads() -> Fixed {
    Fixed([("chat".to_owned(), vllm_workload())].into())
}

/// One pass of `m` against the scripted server; both must finish within 5 s.
async fn pass(
    m: &mut KubernetesMaterializer<Fixed>,
    desired: &[DesiredReplica],
    script: impl std::future::Future<Output = Vec<Seen>>,
) -> (Vec<PhaseReport>, Vec<Seen>) {
    tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(m.reconcile(desired), script)
    })
    .await
    .expect("the pass asked exactly what the script answers, in time")
}

fn materializer() -> (
    KubernetesMaterializer<Fixed>,
    Handle<Request<Body>, Response<Body>>,
) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "gpu");
    (
        KubernetesMaterializer::new(client, workloads(), options()),
        handle,
    )
}

fn json_of<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("json")
}

fn assert_ssa(seen: &Seen, path: &str) {
    assert_eq!(seen.method, Method::PATCH, "{seen:?}");
    assert_eq!(seen.path, path);
    assert!(
        seen.query.contains("fieldManager=flotilla"),
        "{}",
        seen.query
    );
    assert!(seen.query.contains("force=true"), "{}", seen.query);
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/gpu/deployments";
const SERVICES: &str = "/api/v1/namespaces/gpu/services";

#[tokio::test]
async fn the_first_pass_applies_a_deployment_and_a_service_as_flotilla() {
    let (mut m, mut api) = materializer();
    let d = desired("chat", 1, Phase::Starting);
    let (reports, seen) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![])).await,
            answer(&mut api, 200, list("ServiceList", vec![])).await,
            answer(&mut api, 404, not_found()).await,
            echo(&mut api, Value::Null).await,
            answer(&mut api, 404, not_found()).await,
            echo(&mut api, Value::Null).await,
        ]
    })
    .await;
    for list in &seen[..2] {
        assert_eq!(list.method, Method::GET);
        assert!(
            list.query
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dflotilla"),
            "only our objects are listed: {}",
            list.query
        );
    }
    assert_eq!(seen[0].path, DEPLOYMENTS);
    assert_eq!(seen[1].path, SERVICES);
    assert_eq!(
        (seen[2].method.clone(), seen[2].path.as_str()),
        (
            Method::GET,
            "/apis/apps/v1/namespaces/gpu/deployments/chat-r1"
        ),
        "a name is read before it is first applied"
    );
    assert_ssa(&seen[3], "/apis/apps/v1/namespaces/gpu/deployments/chat-r1");
    assert_eq!(
        seen[3].body,
        json_of(&deployment_for(&d, &vllm_workload(), &options()))
    );
    assert_ssa(&seen[5], "/api/v1/namespaces/gpu/services/chat-r1");
    assert_eq!(
        seen[5].body,
        json_of(&service_for(&d, &vllm_workload(), &options()))
    );
    assert!(reports.is_empty(), "not available yet: {reports:?}");
    assert_eq!(m.replicas()[0].local_state, "starting");
}

#[tokio::test]
async fn an_available_deployment_makes_the_replica_ready_at_its_service() {
    let (mut m, mut api) = materializer();
    let mut d = desired("chat", 1, Phase::Starting);
    let (w, o) = (vllm_workload(), options());
    let dep = with_status(
        json_of(&deployment_for(&d, &w, &o)),
        json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
    );
    let svc = json_of(&service_for(&d, &w, &o));
    let (reports, seen) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![dep.clone()])).await,
            answer(&mut api, 200, list("ServiceList", vec![svc.clone()])).await,
        ]
    })
    .await;
    assert_eq!(seen.len(), 2, "unchanged objects are not applied again");
    assert_eq!(
        reports,
        vec![PhaseReport {
            workload: "chat".into(),
            replica: ReplicaId(1),
            phase: Phase::Ready,
            endpoint: Some("chat-r1.gpu.svc:8000".into()),
        }]
    );
    assert_eq!(m.replicas()[0].local_state, "ready");

    // Once the registry knows it is Ready there, nothing more is reported.
    d.phase = Phase::Ready;
    d.endpoint = Some("chat-r1.gpu.svc:8000".into());
    let (reports, _) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![dep.clone()])).await,
            answer(&mut api, 200, list("ServiceList", vec![svc.clone()])).await,
        ]
    })
    .await;
    assert!(reports.is_empty(), "{reports:?}");
}

#[tokio::test]
async fn a_replica_no_longer_placed_here_is_deleted() {
    let (mut m, mut api) = materializer();
    let gone = desired("chat", 7, Phase::Ready);
    let (w, o) = (vllm_workload(), options());
    let dep = json_of(&deployment_for(&gone, &w, &o));
    let svc = json_of(&service_for(&gone, &w, &o));
    let (reports, seen) = pass(&mut m, &[], async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![dep])).await,
            answer(&mut api, 200, list("ServiceList", vec![svc])).await,
            answer(&mut api, 200, deleted()).await,
            answer(&mut api, 200, deleted()).await,
        ]
    })
    .await;
    assert!(reports.is_empty());
    assert_eq!(seen[2].method, Method::DELETE);
    assert_eq!(seen[2].path, format!("{DEPLOYMENTS}/chat-r7"));
    assert_eq!(seen[3].method, Method::DELETE);
    assert_eq!(seen[3].path, format!("{SERVICES}/chat-r7"));
}

#[tokio::test]
async fn objects_without_flotillas_labels_are_never_touched() {
    let (mut m, mut api) = materializer();
    let d = desired("chat", 1, Phase::Starting);
    // Someone else's Deployment holds the name the replica would get, and a list
    // that (against the selector) returns an unlabelled object must not delete it.
    let foreign = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat-r1", "namespace": "gpu", "labels": {"app": "theirs"}},
        "spec": {"selector": {"matchLabels": {"app": "theirs"}}, "template": {}},
    });
    let mut stray = foreign.clone();
    stray["metadata"]["name"] = json!("theirs");
    let (reports, seen) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![stray])).await,
            answer(&mut api, 200, list("ServiceList", vec![])).await,
            answer(&mut api, 200, foreign).await,
        ]
    })
    .await;
    assert!(reports.is_empty());
    assert_eq!(seen.len(), 3, "read, then left alone: no apply, no delete");
    assert_eq!(seen[2].method, Method::GET);
}

#[tokio::test]
async fn a_drain_scales_to_zero_then_deletes_and_reports_gone() {
    let (mut m, mut api) = materializer();
    let (w, o) = (vllm_workload(), options());
    let mut d = desired("chat", 1, Phase::Draining);
    // Far in the future: the pod gets its termination grace.
    d.drain_deadline = Some(Timestamp(u64::MAX));
    let running = with_status(
        json_of(&deployment_for(&desired("chat", 1, Phase::Ready), &w, &o)),
        json!({"replicas": 1, "availableReplicas": 1}),
    );
    let svc = json_of(&service_for(&d, &w, &o));
    let (reports, seen) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![running])).await,
            answer(&mut api, 200, list("ServiceList", vec![svc.clone()])).await,
            echo(&mut api, json!({"replicas": 1})).await,
        ]
    })
    .await;
    assert!(reports.is_empty(), "still draining: {reports:?}");
    assert_ssa(&seen[2], &format!("{DEPLOYMENTS}/chat-r1"));
    assert_eq!(seen[2].body["spec"]["replicas"], 0);
    assert_eq!(m.replicas()[0].local_state, "draining");

    // The pod is gone: delete both objects and tell the registry.
    let drained = with_status(json_of(&deployment_for(&d, &w, &o)), json!({"replicas": 0}));
    let (reports, seen) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(&mut api, 200, list("DeploymentList", vec![drained])).await,
            answer(&mut api, 200, list("ServiceList", vec![svc])).await,
            answer(&mut api, 200, deleted()).await,
            answer(&mut api, 200, deleted()).await,
        ]
    })
    .await;
    assert_eq!(seen[2].method, Method::DELETE);
    assert_eq!(seen[3].method, Method::DELETE);
    assert_eq!(
        reports,
        vec![PhaseReport {
            workload: "chat".into(),
            replica: ReplicaId(1),
            phase: Phase::Gone,
            endpoint: None,
        }]
    );
}

#[tokio::test]
async fn a_failed_call_reports_nothing_and_the_next_pass_tries_again() {
    let (mut m, mut api) = materializer();
    let d = desired("chat", 1, Phase::Starting);
    let (reports, seen) = pass(&mut m, std::slice::from_ref(&d), async {
        vec![
            answer(
                &mut api,
                500,
                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 500, "message": "etcd timeout", "metadata": {}}),
            )
            .await,
        ]
    })
    .await;
    assert!(reports.is_empty());
    assert_eq!(seen.len(), 1, "a failed list ends the pass");
}

fn with_status(mut object: Value, status: Value) -> Value {
    object["status"] = status;
    object
}
