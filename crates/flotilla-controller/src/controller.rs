//! [`KubernetesMaterializer`]: the controller's IO. Watches fill two reflector
//! stores; a pass builds [`Observed`] from them, asks [`decide`] and runs the
//! actions; [`Materializer::wake`] tells the shared loop when to pass again (a
//! watch event, a requeue time). See the parent module for the rules.

use crate::ControllerError;
use crate::decide::{Action, FOREIGN_RECHECK, Kind, Observed, decide};
use crate::istio::{IstioSync, IstioSyncError};
use crate::render::{object_name, owned_by, replica_of};
use crate::{FIELD_MANAGER, FederationView, KubernetesOptions, ReadFederation, owned_selector};
use flotilla_client::Backoff;
use flotilla_client::materialize::{DesiredReplica, Materializer, PhaseReport, ReplicaView};
use flotilla_core::Timestamp;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The back-off after a failed pass.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A failed call to the API server, for the log.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{operation}: {source}")]
    Kube {
        operation: String,
        #[source]
        source: kube::Error,
    },
    #[error("istio: {0}")]
    Istio(#[from] IstioSyncError),
}

fn kube_error(operation: String) -> impl FnOnce(kube::Error) -> PassError {
    move |source| PassError::Kube { operation, source }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Follows our objects of kind `K` into a store; every change (after the first
/// list) wakes the controller. Watch failures are retried by the watcher with
/// kube-runtime's default back-off (a re-list after `410 Gone`).
fn follow<K>(
    api: Api<K>,
    selector: &str,
    api_server: Arc<str>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(selector);
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let kind = K::kind(&()).into_owned();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                )) => changed.notify_one(),
                // A (re-)list in progress: the store swaps in at InitDone.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(kind = %kind, api_server = %api_server, error = %error_chain(&e), "watch failed; the watcher retries with a back-off")
                }
                None => break,
            }
        }
    });
    (reader, task)
}

/// An error with its causes, which say what actually failed (a refused connection,
/// a certificate), where kube's own message says only "client error (Connect)".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Runs replicas as Deployments; see the parent module.
pub struct KubernetesMaterializer<V> {
    deployments: Api<Deployment>,
    services: Api<Service>,
    deployment_store: Store<Deployment>,
    service_store: Store<Service>,
    /// Our replicas' pods: a draining replica is Gone only once they are.
    pod_store: Store<Pod>,
    /// Woken by the watches on every change.
    changed: Arc<Notify>,
    watches: CancellationToken,
    watch_tasks: Vec<JoinHandle<()>>,
    federation: V,
    options: KubernetesOptions,
    istio: Option<IstioSync>,
    /// The last view read: kept when the registry cannot be read (fail-static).
    view: FederationView,
    /// `view` came from the registry at least once.
    view_read: bool,
    views: Vec<ReplicaView>,
    /// Names someone else's object holds, and when that was found.
    foreign: BTreeMap<(Kind, String), Instant>,
    /// Warned about once; quiet until it changes.
    warned: BTreeSet<(Kind, String)>,
    /// Pass again at this time even without a change (requeue, retry).
    requeue_at: Option<Instant>,
    /// After a failure: no pass before this unless the placements change.
    retry_at: Option<Instant>,
    backoff: Backoff,
    last_desired: Option<Vec<DesiredReplica>>,
}

impl<V> std::fmt::Debug for KubernetesMaterializer<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesMaterializer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<V> Drop for KubernetesMaterializer<V> {
    fn drop(&mut self) {
        self.watches.cancel();
    }
}

impl<V: ReadFederation> KubernetesMaterializer<V> {
    /// Connects with the in-cluster configuration (the pod's service account) or
    /// else `KUBECONFIG` / `~/.kube/config`; fails, saying so, when there is neither.
    /// The watches start here; nothing is changed before the first pass.
    pub async fn connect(
        federation: V,
        options: KubernetesOptions,
    ) -> Result<Self, ControllerError> {
        let no_config = |e: &dyn std::error::Error| ControllerError::Kubernetes {
            message: format!(
                "no Kubernetes configuration: not running in a pod with a service account, and no usable KUBECONFIG or ~/.kube/config ({})",
                error_chain(e)
            ),
        };
        let config = kube::Config::infer().await.map_err(|e| no_config(&e))?;
        let api_server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| no_config(&e))?;
        tracing::info!(api_server = %api_server, "Kubernetes API server");
        Ok(Self::with_api_server(
            client,
            &api_server,
            federation,
            options,
        ))
    }

    /// A controller using `client` (in tests, a mock API server). Starts the two
    /// watches, so it must be called inside a Tokio runtime.
    pub fn new(client: Client, federation: V, options: KubernetesOptions) -> Self {
        Self::with_api_server(client, "(the client's)", federation, options)
    }

    /// [`KubernetesMaterializer::new`], naming `api_server` in its logs.
    fn with_api_server(
        client: Client,
        api_server: &str,
        federation: V,
        options: KubernetesOptions,
    ) -> Self {
        let api_server: Arc<str> = api_server.into();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &options.namespace);
        let services: Api<Service> = Api::namespaced(client.clone(), &options.namespace);
        let changed = Arc::new(Notify::new());
        let watches = CancellationToken::new();
        let selector = owned_selector(&options.cluster);
        let (deployment_store, d_task) = follow(
            deployments.clone(),
            &selector,
            api_server.clone(),
            changed.clone(),
            watches.clone(),
        );
        let (service_store, s_task) = follow(
            services.clone(),
            &selector,
            api_server.clone(),
            changed.clone(),
            watches.clone(),
        );
        let (pod_store, p_task) = follow(
            Api::<Pod>::namespaced(client.clone(), &options.namespace),
            &selector,
            api_server.clone(),
            changed.clone(),
            watches.clone(),
        );
        let istio = options.istio.clone().map(|o| IstioSync::new(client, o));
        KubernetesMaterializer {
            deployments,
            services,
            deployment_store,
            service_store,
            pod_store,
            changed,
            watches,
            watch_tasks: vec![d_task, s_task, p_task],
            backoff: Backoff::new(
                RETRY_INITIAL,
                RETRY_MAX,
                Backoff::seed_from(&options.cluster),
            ),
            federation,
            options,
            istio,
            view: FederationView::default(),
            view_read: false,
            views: Vec::new(),
            foreign: BTreeMap::new(),
            warned: BTreeSet::new(),
            requeue_at: None,
            retry_at: None,
            last_desired: None,
        }
    }

    /// Every store holds its first list.
    fn ready(&self) -> bool {
        let ready =
            |f: Option<Result<(), reflector::store::WriterDropped>>| f.is_some_and(|r| r.is_ok());
        ready(self.deployment_store.wait_until_ready().now_or_never())
            && ready(self.service_store.wait_until_ready().now_or_never())
            && ready(self.pod_store.wait_until_ready().now_or_never())
    }

    fn observed(&mut self, now: Instant) -> Observed {
        self.foreign
            .retain(|_, found| now.duration_since(*found) < FOREIGN_RECHECK);
        Observed {
            deployments: self
                .deployment_store
                .state()
                .iter()
                .map(|d| (d.name_any(), Deployment::clone(d)))
                .collect(),
            services: self
                .service_store
                .state()
                .iter()
                .map(|s| (s.name_any(), Service::clone(s)))
                .collect(),
            pods: self
                .pod_store
                .state()
                .iter()
                .fold(BTreeMap::new(), |mut pods, pod| {
                    if let Some((workload, replica)) =
                        replica_of(pod.labels(), &self.options.cluster)
                    {
                        *pods.entry(object_name(&workload, replica)).or_insert(0) += 1;
                    }
                    pods
                }),
            foreign: self.foreign.keys().cloned().collect(),
        }
    }

    /// Applies `object`; when `unlisted`, reads the name first and answers
    /// `false` (not applied) if someone else's object holds it.
    async fn apply<K>(
        &mut self,
        api: &Api<K>,
        kind: Kind,
        object: &K,
        unlisted: bool,
        now: Instant,
    ) -> Result<bool, PassError>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object.name_any();
        if unlisted {
            let existing = api
                .get_opt(&name)
                .await
                .map_err(kube_error(format!("get {} {name}", kind.as_str())))?;
            let cluster = &self.options.cluster;
            let ours = replica_of(object.labels(), cluster).is_some_and(|(w, r)| {
                existing
                    .as_ref()
                    .is_none_or(|e| owned_by(e.labels(), cluster, &w, r))
            });
            if !ours {
                self.foreign.insert((kind, name.clone()), now);
                self.leave_alone(kind, &name, "an object of this name exists without Flotilla's labels; the replica cannot start here");
                return Ok(false);
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(kube_error(format!("apply {} {name}", kind.as_str())))?;
        self.warned.remove(&(kind, name));
        Ok(true)
    }

    fn leave_alone(&mut self, kind: Kind, name: &str, why: &str) {
        if self.warned.insert((kind, name.to_owned())) {
            tracing::warn!(kind = kind.as_str(), name, why, "leaving an object alone");
        }
    }

    async fn delete(&self, kind: Kind, name: &str, uid: Option<String>) -> Result<(), PassError> {
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let result = match kind {
            Kind::Deployment => self.deployments.delete(name, &params).await.map(|_| ()),
            Kind::Service => self.services.delete(name, &params).await.map(|_| ()),
        };
        match result {
            Ok(()) => {
                tracing::info!(kind = kind.as_str(), name, "deleted");
                Ok(())
            }
            // Already gone (someone else deleted it, or our last delete raced the
            // watch): what a delete wanted.
            Err(e) if is_not_found(&e) => Ok(()),
            // The UID precondition failed: the name now holds another object, made
            // since the watch showed ours; ours is gone, theirs stays.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(
                    kind = kind.as_str(),
                    name,
                    "not deleted: the name holds another object now"
                );
                Ok(())
            }
            Err(source) => Err(PassError::Kube {
                operation: format!("delete {} {name}", kind.as_str()),
                source,
            }),
        }
    }

    /// Runs `actions` in order. A failed call skips the rest of that replica's
    /// actions (its report included) but not other replicas': one replica the API
    /// server keeps refusing (a quota, a webhook, an invalid spec) must not hold
    /// back the others' starts, reports and deletes. Returns the reports made and
    /// the first failure.
    async fn execute(
        &mut self,
        actions: Vec<Action>,
        now: Instant,
    ) -> (Vec<PhaseReport>, Result<(), PassError>) {
        let mut reports = Vec::new();
        let mut first_failure = None;
        // Names found to be someone else's, or whose call failed, during this pass:
        // the rest of their replica's actions are skipped.
        let mut blocked = BTreeSet::new();
        for action in actions {
            // The replica an action is about, by its objects' name.
            let subject = match &action {
                Action::ApplyDeployment { object, .. } => object.name_any(),
                Action::ApplyService { object, .. } => object.name_any(),
                Action::Delete { name, .. } | Action::LeaveAlone { name, .. } => name.clone(),
                Action::Report(r) => object_name(&r.workload, r.replica),
            };
            let logs_only = matches!(action, Action::LeaveAlone { .. });
            if !logs_only && blocked.contains(&subject) {
                continue;
            }
            // Ok(false): the name is someone else's; the replica's other steps wait.
            let outcome = match action {
                Action::ApplyDeployment { object, unlisted } => {
                    let api = self.deployments.clone();
                    self.apply(&api, Kind::Deployment, &*object, unlisted, now)
                        .await
                }
                Action::ApplyService { object, unlisted } => {
                    let api = self.services.clone();
                    self.apply(&api, Kind::Service, &*object, unlisted, now)
                        .await
                }
                Action::Delete { kind, name, uid } => {
                    self.delete(kind, &name, uid).await.map(|()| true)
                }
                Action::Report(r) => {
                    reports.push(r);
                    Ok(true)
                }
                Action::LeaveAlone { kind, name, why } => {
                    self.leave_alone(kind, &name, why);
                    Ok(true)
                }
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => {
                    blocked.insert(subject);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a Kubernetes call failed; this replica's other steps wait for the retry");
                    blocked.insert(subject);
                    first_failure.get_or_insert(e);
                }
            }
        }
        (reports, first_failure.map_or(Ok(()), Err))
    }

    async fn pass(&mut self, desired: &[DesiredReplica], now: Instant) -> Vec<PhaseReport> {
        match self.federation.read().await {
            Ok(view) => {
                self.view = view;
                self.view_read = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the registry; keeping the last workloads and routes")
            }
        }
        let observed = self.observed(now);
        let decision = decide(
            desired,
            &self.view.workloads,
            &observed,
            &self.options,
            Timestamp(now_ms()),
        );
        let (reports, result) = self.execute(decision.actions, now).await;
        self.views = decision.views;
        // Never from an empty view: before the registry was read once, every
        // applied Istio object would look stale and be pruned. An Istio failure (no
        // CRDs, a webhook) is retried on the next pass without holding back the
        // replicas' back-off.
        if let Some(istio) = &mut self.istio
            && self.view_read
            && let Err(e) = istio
                .sync(&self.view.routes, &self.view.clusters, now)
                .await
        {
            tracing::warn!(error = %e, "cannot apply the Istio objects; trying again on the next pass");
        }
        match result {
            Ok(()) => {
                self.backoff.reset();
                self.retry_at = None;
                self.requeue_at = decision.requeue_after.map(|d| now + d);
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "kubernetes reconcile pass failed");
                self.retry_at = Some(now + delay);
                self.requeue_at = self.retry_at;
            }
        }
        reports
    }
}

impl<V: ReadFederation> Materializer for KubernetesMaterializer<V> {
    async fn reconcile(&mut self, desired: &[DesiredReplica]) -> Vec<PhaseReport> {
        if !self.ready() {
            tracing::debug!("waiting for the first list of Deployments and Services");
            return Vec::new();
        }
        let now = Instant::now();
        let placements_changed = self.last_desired.as_deref() != Some(desired);
        if self.retry_at.is_some_and(|t| now < t) && !placements_changed {
            return Vec::new();
        }
        self.last_desired = Some(desired.to_vec());
        self.pass(desired, now).await
    }

    /// A watch event, the requeue time, or (before the first lists) every store
    /// becoming ready.
    async fn wake(&mut self) {
        if !self.ready() {
            let (d, s, p) = (
                self.deployment_store.clone(),
                self.service_store.clone(),
                self.pod_store.clone(),
            );
            if let (Ok(()), Ok(()), Ok(())) = tokio::join!(
                d.wait_until_ready(),
                s.wait_until_ready(),
                p.wait_until_ready()
            ) {
                return;
            }
            // The watches stopped (shutdown): nothing will change any more.
            std::future::pending::<()>().await;
        }
        let changed = self.changed.clone();
        match self.requeue_at {
            Some(at) => tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep_until(at) => self.requeue_at = None,
            },
            None => changed.notified().await,
        }
    }

    fn replicas(&self) -> Vec<ReplicaView> {
        self.views.clone()
    }

    /// Stops the watches and leaves every Deployment running: see the parent
    /// module ("shutdown").
    async fn shutdown(&mut self) {
        self.watches.cancel();
        for task in self.watch_tasks.drain(..) {
            let _ = task.await;
        }
        tracing::info!(
            namespace = %self.options.namespace,
            "controller stopping: replicas' Deployments keep running; the next controller adopts them"
        );
    }
}

/// A fixed view (tests, or a setup without a registry).
impl ReadFederation for FederationView {
    async fn read(&self) -> Result<FederationView, ControllerError> {
        Ok(self.clone())
    }
}
