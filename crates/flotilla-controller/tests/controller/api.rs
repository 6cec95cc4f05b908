//! The Kubernetes controller against the API server's protocol: kube's client over
//! `tower_test`'s mock service pair, answered by a small in-memory API server
//! ([`FakeApi`]: LIST with label selectors, long-polled WATCH from a resource
//! version, GET, server-side-apply PATCH, DELETE, and one-shot faults), while the
//! shared materializer loop ([`materialize::run`]) drives the controller
//! from a stand-in registry. Every wait is bounded by a timeout.

use super::objects::{options, vllm_workload};
use flotilla_client::RegistryLink;
use flotilla_client::materialize::{self, ReplicaTable};
use flotilla_controller::{FederationView, KubernetesMaterializer, KubernetesOptions};
use flotilla_core::{
    ClusterSpec, Command, Phase, PlacedReplica, Replica, ReplicaId, Route, RouteEndpoint,
    RouteTable, Timestamp,
};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tower_test::mock::{self, Handle, SendResponse};

const NS: &str = "gpu";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/gpu/deployments";
const SERVICES: &str = "/api/v1/namespaces/gpu/services";

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Seen {
    fn is(&self, method: Method, path: &str) -> bool {
        self.method == method && self.path == path
    }
    fn is_watch(&self) -> bool {
        self.query.contains("watch=true")
    }
}

/// A one-shot answer for the next matching request.
#[derive(Debug)]
struct Fault {
    method: Method,
    path: String,
    status: u16,
    reason: &'static str,
}

#[derive(Default)]
struct World {
    /// (collection path, name) → object.
    objects: BTreeMap<(String, String), Value>,
    rv: u64,
    /// (resource version, collection path, event type, object).
    events: Vec<(u64, String, &'static str, Value)>,
    /// Watches from before this version are answered `410 Gone`.
    compacted: u64,
    faults: VecDeque<Fault>,
    log: Vec<Seen>,
    parked: Vec<(String, u64, SendResponse<Response<Body>>)>,
}

/// The in-memory API server; `Clone` shares it.
#[derive(Clone, Default)]
struct FakeApi {
    world: Arc<Mutex<World>>,
    changed: Arc<Notify>,
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": if code < 300 {"Success"} else {"Failure"},
           "reason": reason, "code": code, "message": reason, "metadata": {}})
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: Vec<u8>) {
    match Response::builder().status(status).body(Body::from(body)) {
        Ok(r) => send.send_response(r),
        Err(e) => panic!("a response: {e}"),
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `a=b,c` against an object's labels.
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k].as_str() == Some(v),
            None => labels.get(term).is_some(),
        })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2F", "/")
                .replace("%2C", ",")
                .replace('+', " ")
        })
    })
}

impl FakeApi {
    fn start(mut handle: Handle<Request<Body>, Response<Body>>) -> FakeApi {
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = handle.next_request() => match next {
                        Some((request, send)) => server.handle(request, send).await,
                        None => break,
                    },
                    () = server.changed.notified() => server.flush(),
                }
            }
        });
        api
    }

    async fn handle(&self, request: Request<Body>, send: SendResponse<Response<Body>>) {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        let mut w = self.world.lock().unwrap();
        w.log.push(seen.clone());
        if let Some(i) = w
            .faults
            .iter()
            .position(|f| f.method == seen.method && f.path == seen.path)
        {
            let f = w.faults.remove(i).unwrap();
            drop(w);
            return respond(send, f.status, json_bytes(&status_body(f.status, f.reason)));
        }
        let (collection, name) = split(&seen.path);
        match (seen.method.clone(), name) {
            (Method::GET, None) if seen.is_watch() => {
                let from: u64 = query_param(&seen.query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                w.parked.push((collection, from, send));
                drop(w);
                self.flush();
            }
            (Method::GET, None) => {
                let selector = query_param(&seen.query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = w
                    .objects
                    .iter()
                    .filter(|((c, _), o)| *c == collection && selects(&selector, o))
                    .map(|(_, o)| o.clone())
                    .collect();
                let list = json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": w.rv.to_string()}, "items": items});
                respond(send, 200, json_bytes(&list));
            }
            (Method::GET, Some(name)) => match w.objects.get(&(collection, name)) {
                Some(o) => respond(send, 200, json_bytes(o)),
                None => respond(send, 404, json_bytes(&status_body(404, "NotFound"))),
            },
            (Method::PATCH, Some(name)) => {
                let mut object = seen.body.clone();
                let key = (collection.clone(), name);
                let existing = w.objects.get(&key).cloned();
                if let Some(status) = existing.as_ref().map(|e| e["status"].clone())
                    && !status.is_null()
                {
                    object["status"] = status;
                }
                let generation = existing
                    .as_ref()
                    .and_then(|e| e["metadata"]["generation"].as_i64())
                    .map_or(1, |g| g + i64::from(e_changed(existing.as_ref(), &object)));
                object["metadata"]["generation"] = json!(generation);
                let kind = if existing.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                let stored = w.store(key, kind, object);
                drop(w);
                respond(send, 200, json_bytes(&stored));
                self.flush();
            }
            (Method::DELETE, Some(name)) => {
                let key = (collection.clone(), name);
                match w.objects.remove(&key) {
                    Some(o) => {
                        w.rv += 1;
                        let rv = w.rv;
                        w.events.push((rv, collection, "DELETED", o));
                        drop(w);
                        respond(send, 200, json_bytes(&status_body(200, "")));
                        self.flush();
                    }
                    None => respond(send, 404, json_bytes(&status_body(404, "NotFound"))),
                }
            }
            _ => respond(send, 405, json_bytes(&status_body(405, "MethodNotAllowed"))),
        }
    }

    /// Answers every parked watch that has events (or must restart).
    fn flush(&self) {
        let mut w = self.world.lock().unwrap();
        let parked = std::mem::take(&mut w.parked);
        for (collection, from, send) in parked {
            if from < w.compacted {
                let gone = json!({"type": "ERROR", "object": status_body(410, "Expired")});
                respond(send, 200, format!("{gone}\n").into_bytes());
                continue;
            }
            let lines: String = w
                .events
                .iter()
                .filter(|(rv, c, _, _)| *rv > from && *c == collection)
                .map(|(_, _, t, o)| format!("{}\n", json!({"type": t, "object": o})))
                .collect();
            if lines.is_empty() {
                w.parked.push((collection, from, send));
            } else {
                respond(send, 200, lines.into_bytes());
            }
        }
    }

    fn log(&self) -> Vec<Seen> {
        self.world.lock().unwrap().log.clone()
    }

    fn object(&self, collection: &str, name: &str) -> Option<Value> {
        let w = self.world.lock().unwrap();
        w.objects
            .get(&(collection.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The Deployment controller's part: a status for a Deployment.
    fn set_status(&self, name: &str, status: Value) {
        let mut w = self.world.lock().unwrap();
        let key = (DEPLOYMENTS.to_owned(), name.to_owned());
        let Some(mut o) = w.objects.get(&key).cloned() else {
            panic!("no deployment {name}")
        };
        o["status"] = status;
        if o["status"]["observedGeneration"].is_null() {
            o["status"]["observedGeneration"] = o["metadata"]["generation"].clone();
        }
        // A finished rollout: the available pods run the current spec.
        if o["status"]["updatedReplicas"].is_null() && !o["status"]["availableReplicas"].is_null() {
            o["status"]["updatedReplicas"] = o["status"]["availableReplicas"].clone();
        }
        w.store(key, "MODIFIED", o);
        drop(w);
        self.changed.notify_one();
    }

    fn insert(&self, collection: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let mut w = self.world.lock().unwrap();
        w.store((collection.to_owned(), name), "ADDED", object);
        drop(w);
        self.changed.notify_one();
    }

    fn fail_next(&self, method: Method, path: &str, status: u16, reason: &'static str) {
        self.world.lock().unwrap().faults.push_back(Fault {
            method,
            path: path.to_owned(),
            status,
            reason,
        });
    }

    /// Someone removes an object while history is compacted: open watches end with
    /// `410 Gone` and the deletion is never sent as an event.
    fn remove_while_compacting(&self, collection: &str, name: &str) {
        let mut w = self.world.lock().unwrap();
        w.objects.remove(&(collection.to_owned(), name.to_owned()));
        w.rv += 1;
        w.compacted = w.rv + 1;
        w.events.clear();
        drop(w);
        self.changed.notify_one();
    }
}

impl World {
    fn store(&mut self, key: (String, String), kind: &'static str, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.events.push((self.rv, key.0, kind, object.clone()));
        object
    }
}

/// Whether an apply changed the spec (a new generation).
fn e_changed(existing: Option<&Value>, new: &Value) -> bool {
    existing.is_none_or(|e| e["spec"] != new["spec"])
}

fn split(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        // …/namespaces/NS/RESOURCE[/NAME]
        Some(i) if parts.len() > i + 3 => (parts[..i + 3].join("/"), Some(parts[i + 3].to_owned())),
        _ => (path.to_owned(), None),
    }
}

/// The placements, with a version the blocking query compares.
type Placements = watch::Sender<(u64, Vec<PlacedReplica>)>;

/// The registry side: the placements the loop follows and what it proposed.
#[derive(Default)]
struct FakeRegistry {
    placed: Mutex<Option<Placements>>,
    proposed: Mutex<Vec<Command>>,
}

impl FakeRegistry {
    fn new(placed: Vec<PlacedReplica>) -> Arc<FakeRegistry> {
        let (tx, _) = watch::channel((1, placed));
        Arc::new(FakeRegistry {
            placed: Mutex::new(Some(tx)),
            proposed: Mutex::default(),
        })
    }

    fn place(&self, placed: Vec<PlacedReplica>) {
        if let Some(tx) = self.placed.lock().unwrap().as_ref() {
            tx.send_modify(|(v, p)| {
                *v += 1;
                *p = placed;
            });
        }
    }

    fn phases(&self) -> Vec<(u64, Phase, Option<String>)> {
        self.proposed
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                Command::SetReplicaPhase {
                    replica,
                    phase,
                    endpoint,
                    ..
                } => Some((replica.0, *phase, endpoint.clone())),
                _ => None,
            })
            .collect()
    }
}

impl RegistryLink for FakeRegistry {
    async fn propose(&self, command: &Command) -> Result<(), flotilla_client::Error> {
        self.proposed.lock().unwrap().push(command.clone());
        Ok(())
    }

    async fn read_federation(
        &self,
    ) -> Result<flotilla_client::FederationLists, flotilla_client::Error> {
        Ok(flotilla_client::FederationLists::default())
    }

    async fn watch_replicas(
        &self,
        _cluster: &str,
        known: u64,
        wait: Duration,
    ) -> Result<(u64, Vec<PlacedReplica>), flotilla_client::Error> {
        let rx = self
            .placed
            .lock()
            .unwrap()
            .as_ref()
            .map(|tx| tx.subscribe());
        let Some(mut rx) = rx else {
            return Err(flotilla_client::Error::Config(
                "the fake registry is closed".into(),
            ));
        };
        if rx.borrow().0 == known {
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
        Ok(rx.borrow().clone())
    }
}

fn placed(id: u64, phase: Phase) -> PlacedReplica {
    PlacedReplica {
        workload: "chat".into(),
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        replica: Replica {
            id: ReplicaId(id),
            cluster: "us-east".into(),
            devices: vec![],
            phase,
            phase_since: Timestamp(0),
            placed_at: Timestamp(0),
            drain_deadline: None,
            evicted: false,
            preempted_for: None,
            endpoint: None,
        },
    }
}

/// A controller on the fake API server, run by the shared materializer loop.
struct Running {
    api: FakeApi,
    registry: Arc<FakeRegistry>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), flotilla_client::Error>>,
}

fn start_with(
    placements: Vec<PlacedReplica>,
    view: FederationView,
    options: KubernetesOptions,
) -> Running {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let api = FakeApi::start(handle);
    let client = kube::Client::new(service, NS);
    let controller = KubernetesMaterializer::new(client, view, options);
    let registry = FakeRegistry::new(placements);
    let stop = CancellationToken::new();
    let task = tokio::spawn(materialize::run(
        registry.clone(),
        controller,
        "us-east".into(),
        // A long resync: what happens must come from watches and requeues.
        Duration::from_secs(3600),
        ReplicaTable::default(),
        stop.clone(),
    ));
    Running {
        api,
        registry,
        stop,
        task,
    }
}

fn start(placements: Vec<PlacedReplica>) -> Running {
    let view = FederationView {
        workloads: [("chat".to_owned(), vllm_workload())].into(),
        ..FederationView::default()
    };
    start_with(placements, view, options())
}

/// Waits (up to 10 s) until `check` holds: the kit's `eventually` for the
/// synchronous checks these tests make of the fake API server and registry.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    flotilla_testkit::eventually(what, Duration::from_secs(10), || {
        std::future::ready(check().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

impl Running {
    async fn stop(self) -> Vec<Seen> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the loop stops")
            .expect("the loop task")
            .expect("the loop ends cleanly");
        self.api.log()
    }

    fn count(&self, method: Method, path: &str) -> usize {
        self.api
            .log()
            .iter()
            .filter(|s| s.is(method.clone(), path) && !s.is_watch())
            .count()
    }
}

fn available() -> Value {
    json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1})
}

#[tokio::test]
async fn a_placement_becomes_an_applied_deployment_and_service_then_ready_and_shutdown_deletes_nothing()
 {
    let r = start(vec![placed(1, Phase::Starting)]);
    let dep = format!("{DEPLOYMENTS}/chat-r1");
    let svc = format!("{SERVICES}/chat-r1");
    eventually("both objects are applied", || {
        r.api.object(DEPLOYMENTS, "chat-r1").is_some()
            && r.api.object(SERVICES, "chat-r1").is_some()
    })
    .await;
    let log = r.api.log();
    for path in [DEPLOYMENTS, SERVICES] {
        let list = log
            .iter()
            .find(|s| s.is(Method::GET, path) && !s.is_watch())
            .expect("a list");
        assert!(
            list.query
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dflotilla"),
            "only our objects are listed: {}",
            list.query
        );
        assert!(
            log.iter().any(|s| s.is(Method::GET, path) && s.is_watch()),
            "{path} is watched"
        );
    }
    let get = log
        .iter()
        .position(|s| s.is(Method::GET, &dep))
        .expect("read first");
    let patch = log
        .iter()
        .position(|s| s.is(Method::PATCH, &dep))
        .expect("applied");
    assert!(get < patch, "a name is read before it is first applied");
    let apply = &log[patch];
    assert!(
        apply.query.contains("fieldManager=flotilla"),
        "{}",
        apply.query
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    assert_eq!(
        apply.body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        vllm_workload().gpu.count.to_string().as_str(),
        "the Deployment asks for the workload's GPUs"
    );
    assert!(log.iter().any(|s| s.is(Method::PATCH, &svc)));
    assert!(r.registry.phases().is_empty(), "not available yet");

    // The Deployment controller makes the pod available: the watch wakes the
    // controller, which reports Ready with the Service's address.
    r.api.set_status("chat-r1", available());
    eventually("Ready is reported", || !r.registry.phases().is_empty()).await;
    assert_eq!(
        r.registry.phases(),
        [(1, Phase::Ready, Some("chat-r1.gpu.svc:8000".into()))]
    );
    let log = r.stop().await;
    assert!(
        !log.iter().any(|s| s.method == Method::DELETE),
        "Deployments outlive the controller"
    );
}

#[tokio::test]
async fn a_conflict_on_apply_is_retried_after_a_backoff_and_nothing_is_reported_meanwhile() {
    let r = start(vec![]);
    let dep = format!("{DEPLOYMENTS}/chat-r1");
    r.api.fail_next(Method::PATCH, &dep, 409, "Conflict");
    r.registry.place(vec![placed(1, Phase::Starting)]);
    eventually("the apply is made again", || {
        r.count(Method::PATCH, &dep) >= 2
    })
    .await;
    let log = r.api.log();
    let first = log.iter().position(|s| s.is(Method::PATCH, &dep)).unwrap();
    assert!(
        !log[first + 1..]
            .iter()
            .take_while(|s| !s.is(Method::PATCH, &dep))
            .any(|s| s.is(Method::PATCH, &format!("{SERVICES}/chat-r1"))),
        "the failed pass stopped at the conflict"
    );
    assert!(r.registry.phases().is_empty());
    r.api.set_status("chat-r1", available());
    eventually("Ready once the retry went through", || {
        !r.registry.phases().is_empty()
    })
    .await;
    r.stop().await;
}

#[tokio::test]
async fn a_drained_replica_whose_objects_are_already_gone_is_reported_gone() {
    let r = start(vec![placed(1, Phase::Starting)]);
    eventually("applied", || r.api.object(SERVICES, "chat-r1").is_some()).await;
    // Someone deleted the Deployment a moment ago; our watch has not said so yet,
    // so the controller's delete answers 404.
    let dep = format!("{DEPLOYMENTS}/chat-r1");
    r.api.fail_next(Method::DELETE, &dep, 404, "NotFound");
    let mut draining = placed(1, Phase::Draining);
    draining.replica.drain_deadline = Some(Timestamp(0));
    r.registry.place(vec![draining]);
    eventually("Gone is reported", || {
        r.registry.phases().iter().any(|p| p.1 == Phase::Gone)
    })
    .await;
    assert!(r.api.log().iter().any(|s| s.is(Method::DELETE, &dep)));
    r.stop().await;
}

#[tokio::test]
async fn a_watch_that_ends_with_410_gone_is_relisted_and_the_controller_converges() {
    let r = start(vec![placed(1, Phase::Starting)]);
    eventually("applied", || r.api.object(DEPLOYMENTS, "chat-r1").is_some()).await;
    let lists = r.count(Method::GET, DEPLOYMENTS);
    // The Deployment vanishes while the watch history is compacted: no DELETED
    // event ever comes; only a re-list can show it.
    r.api.remove_while_compacting(DEPLOYMENTS, "chat-r1");
    eventually("the Deployment is applied again after a re-list", || {
        r.api.object(DEPLOYMENTS, "chat-r1").is_some()
    })
    .await;
    assert!(r.count(Method::GET, DEPLOYMENTS) > lists, "re-listed");
    r.stop().await;
}

#[tokio::test]
async fn a_placement_removed_while_the_deployment_rolls_out_is_deleted_without_a_report() {
    let r = start(vec![placed(1, Phase::Starting)]);
    eventually("applied", || r.api.object(SERVICES, "chat-r1").is_some()).await;
    r.api
        .set_status("chat-r1", json!({"replicas": 1, "unavailableReplicas": 1}));
    r.registry.place(vec![]);
    eventually("both objects are deleted", || {
        r.api.object(DEPLOYMENTS, "chat-r1").is_none()
            && r.api.object(SERVICES, "chat-r1").is_none()
    })
    .await;
    assert!(r.registry.phases().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn someone_elses_object_of_the_replicas_name_is_read_and_left_alone() {
    let r = start(vec![]);
    r.api.insert(
        DEPLOYMENTS,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "chat-r1", "namespace": NS, "labels": {"app": "theirs"}},
               "spec": {"selector": {"matchLabels": {"app": "theirs"}}, "template": {}}}),
    );
    r.registry.place(vec![placed(1, Phase::Starting)]);
    let dep = format!("{DEPLOYMENTS}/chat-r1");
    eventually("the name is read", || {
        r.api.log().iter().any(|s| s.is(Method::GET, &dep))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = r.stop().await;
    assert!(
        !log.iter().any(|s| s.is(Method::PATCH, &dep)),
        "never applied over"
    );
    assert!(
        !log.iter().any(|s| s.method == Method::DELETE),
        "never deleted"
    );
}

const SERVICE_ENTRIES: &str = "/apis/networking.istio.io/v1/namespaces/gpu/serviceentries";
const WORKLOAD_ENTRIES: &str = "/apis/networking.istio.io/v1/namespaces/gpu/workloadentries";

#[tokio::test]
async fn with_istio_the_route_tables_objects_are_applied_and_stale_ones_pruned() {
    let model = "meta-llama/Llama-3.1-8B-Instruct";
    let cluster = |name: &str, region: &str| ClusterSpec {
        name: name.into(),
        region: region.into(),
        zone: String::new(),
        labels: Default::default(),
        gateway_address: String::new(),
        endpoint_ranges: Vec::new(),
    };
    let mut routes = RouteTable {
        revision: 3,
        ..Default::default()
    };
    routes.routes.insert(
        model.into(),
        Route {
            model: model.into(),
            endpoints: vec![RouteEndpoint {
                cluster: "eu-west".into(),
                weight: 100,
                ready_replicas: 1,
            }],
            revision: 3,
        },
    );
    let view = FederationView {
        workloads: [("chat".to_owned(), vllm_workload())].into(),
        routes,
        clusters: vec![cluster("us-east", "us"), cluster("eu-west", "eu")],
    };
    let mut o = options();
    o.istio = Some(flotilla_kube::istio::IstioOptions {
        namespace: NS.into(),
        local_cluster: Some("us-east".into()),
        ..Default::default()
    });
    let r = start_with(vec![], view, o);
    // A WorkloadEntry of ours for a cluster that no longer serves the model, and
    // one another Flotilla cluster's controller made in the same namespace.
    r.api.insert(
        WORKLOAD_ENTRIES,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": "flotilla-old-ap-south", "namespace": NS,
                            "labels": {"app.kubernetes.io/managed-by": "flotilla", "flotilla.dev/model": "old",
                                       "flotilla.dev/cluster": "us-east"}},
               "spec": {}}),
    );
    r.api.insert(
        WORKLOAD_ENTRIES,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": "flotilla-theirs", "namespace": NS,
                            "labels": {"app.kubernetes.io/managed-by": "flotilla", "flotilla.dev/model": "old",
                                       "flotilla.dev/cluster": "eu-west"}},
               "spec": {}}),
    );
    r.registry.place(vec![]);
    eventually("a WorkloadEntry is applied", || {
        r.api
            .log()
            .iter()
            .any(|s| s.method == Method::PATCH && s.path.starts_with(WORKLOAD_ENTRIES))
    })
    .await;
    eventually("the stale entry is pruned", || {
        r.api
            .object(WORKLOAD_ENTRIES, "flotilla-old-ap-south")
            .is_none()
    })
    .await;
    assert!(
        r.api.object(WORKLOAD_ENTRIES, "flotilla-theirs").is_some(),
        "another cluster's objects are not ours to prune"
    );
    let log = r.stop().await;
    let se = log
        .iter()
        .find(|s| s.method == Method::PATCH && s.path.starts_with(SERVICE_ENTRIES))
        .expect("a ServiceEntry applied");
    assert!(se.query.contains("fieldManager=flotilla"), "{}", se.query);
    assert_eq!(se.body["apiVersion"], "networking.istio.io/v1");
    assert_eq!(
        se.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "flotilla"
    );
    let we = log
        .iter()
        .find(|s| s.method == Method::PATCH && s.path.starts_with(WORKLOAD_ENTRIES))
        .expect("a WorkloadEntry applied");
    assert_eq!(we.body["spec"]["network"], "eu-west");
}

#[tokio::test]
async fn a_replica_the_api_server_refuses_does_not_hold_back_the_others() {
    let r = start(vec![]);
    let first = format!("{DEPLOYMENTS}/chat-r1");
    let second = format!("{DEPLOYMENTS}/chat-r2");
    // A webhook or quota refuses replica 1's Deployment.
    r.api.fail_next(Method::PATCH, &first, 422, "Invalid");
    r.registry
        .place(vec![placed(1, Phase::Starting), placed(2, Phase::Starting)]);
    eventually("replica 2 is applied", || {
        r.api.object(SERVICES, "chat-r2").is_some()
    })
    .await;
    let log = r.api.log();
    let refused = log
        .iter()
        .position(|s| s.is(Method::PATCH, &first))
        .unwrap();
    let applied = log
        .iter()
        .position(|s| s.is(Method::PATCH, &second))
        .unwrap();
    assert!(
        applied > refused && r.count(Method::PATCH, &first) == 1,
        "replica 2 was applied in the same pass as replica 1's refusal, not after its retry"
    );
    assert!(
        r.api.object(SERVICES, "chat-r1").is_none(),
        "the rest of replica 1's steps wait for its retry"
    );
    r.api.set_status("chat-r2", available());
    eventually("replica 2 is Ready while replica 1 waits", || {
        r.registry.phases().iter().any(|p| p.0 == 2)
    })
    .await;
    eventually("replica 1 goes through on its retry", || {
        r.api.object(SERVICES, "chat-r1").is_some()
    })
    .await;
    r.stop().await;
}
