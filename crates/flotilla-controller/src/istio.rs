//! The Istio objects of [`flotilla_kube::istio`], kept applied by the controller.
//!
//! [`plan`] is the pure decision: the rendered objects (stamped with a
//! `flotilla.dev/spec-hash`) against ours as listed (label selector
//! [`ISTIO_SELECTOR`]): apply what is missing or changed, delete what the renderer
//! no longer produces (pruning: a model that left the route table, a cluster that
//! stopped serving it). [`IstioSync`] does the IO: three LISTs, then the plan's
//! applies (server-side, field manager `flotilla`, as `DynamicObject`s) and deletes.
//! It runs when the rendered set changes and every [`ISTIO_RESYNC`] (to repair
//! hand edits), and again after a failure.

use crate::render::{fnv1a, hash_of};
use crate::{CLUSTER_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, SPEC_HASH_ANNOTATION};
use flotilla_core::{ClusterSpec, RouteTable};
use flotilla_kube::istio::{API_VERSION, IstioError, IstioMode, IstioOptions, render};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// Ours among the Istio objects: managed by Flotilla and tied to a model.
pub const ISTIO_SELECTOR: &str = "app.kubernetes.io/managed-by=flotilla,flotilla.dev/model";
/// Applied objects are checked against the API server at least this often.
pub const ISTIO_RESYNC: Duration = Duration::from_secs(60);
/// A kind the renderer makes: its API version, kind and plural.
pub type RenderedKind = (&'static str, &'static str, &'static str);

/// The kinds rendered in each mode (a mode's objects are listed and pruned; a
/// switch of mode leaves the other mode's objects to be deleted by hand).
pub fn kinds(mode: IstioMode) -> &'static [RenderedKind] {
    match mode {
        IstioMode::Sidecar => &[
            (API_VERSION, "ServiceEntry", "serviceentries"),
            (API_VERSION, "DestinationRule", "destinationrules"),
            (API_VERSION, "WorkloadEntry", "workloadentries"),
        ],
        IstioMode::Ambient => &[
            ("v1", "Service", "services"),
            (API_VERSION, "DestinationRule", "destinationrules"),
        ],
    }
}

/// One step of an Istio sync.
#[derive(Debug, Clone, PartialEq)]
pub enum IstioAction {
    /// Server-side apply of a rendered object (spec hash stamped). `unlisted`: the
    /// list did not show it, so the name is read first and left alone if it is
    /// someone else's.
    Apply {
        kind: String,
        name: String,
        object: Value,
        unlisted: bool,
    },
    /// One of ours the renderer no longer produces.
    Delete { kind: String, name: String },
}

/// The objects for `routes` in this cluster, each stamped with the hash of what it
/// says.
pub fn rendered(
    routes: &RouteTable,
    clusters: &[ClusterSpec],
    options: &IstioOptions,
) -> Result<Vec<Value>, IstioError> {
    let mut objects = render(routes, clusters, options)?;
    for o in &mut objects {
        // Whose objects these are: two clusters' controllers may share a namespace,
        // and each prunes only its own.
        if let (Some(cluster), Some(labels)) = (
            &options.local_cluster,
            o.pointer_mut("/metadata/labels")
                .and_then(Value::as_object_mut),
        ) {
            labels.insert(CLUSTER_LABEL.into(), cluster.clone().into());
        }
        // The route revision changes with every route change, including ones that
        // leave this object as it was; it is not part of what decides an apply.
        let mut content = o.clone();
        if let Some(a) = content
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove("flotilla.dev/route-revision");
        }
        let hash = hash_of(&content);
        if let Some(a) = o
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.insert(SPEC_HASH_ANNOTATION.into(), hash.into());
        }
    }
    Ok(objects)
}

fn kind_name(v: &Value) -> (String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (s("/kind"), s("/metadata/name"))
}

/// What to apply and delete so that ours among `observed` become `rendered`.
pub fn plan(rendered: &[Value], observed: &[DynamicObject]) -> Vec<IstioAction> {
    let ours: BTreeMap<(String, String), &DynamicObject> = observed
        .iter()
        .filter(|o| o.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(FIELD_MANAGER))
        .filter_map(|o| {
            let kind = o.types.as_ref()?.kind.clone();
            Some(((kind, o.name_any()), o))
        })
        .collect();
    let mut wanted = BTreeSet::new();
    let mut actions = Vec::new();
    for object in rendered {
        let (kind, name) = kind_name(object);
        let want_hash = object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
            .and_then(Value::as_str);
        let current = ours.get(&(kind.clone(), name.clone()));
        let unchanged = current.is_some_and(|c| {
            c.annotations()
                .get(SPEC_HASH_ANNOTATION)
                .map(String::as_str)
                == want_hash
        });
        if !unchanged {
            actions.push(IstioAction::Apply {
                kind: kind.clone(),
                name: name.clone(),
                object: object.clone(),
                unlisted: current.is_none(),
            });
        }
        wanted.insert((kind, name));
    }
    for (kind, name) in ours.keys() {
        if !wanted.contains(&(kind.clone(), name.clone())) {
            actions.push(IstioAction::Delete {
                kind: kind.clone(),
                name: name.clone(),
            });
        }
    }
    actions
}

/// The `ApiResource` of one rendered kind.
pub fn api_resource((api_version, kind, plural): RenderedKind) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A failed Istio call, for the log and the back-off.
#[derive(Debug, thiserror::Error)]
pub enum IstioSyncError {
    #[error("{operation}: {source}")]
    Api {
        operation: String,
        #[source]
        source: kube::Error,
    },
}

fn api_error(operation: String) -> impl FnOnce(kube::Error) -> IstioSyncError {
    move |source| IstioSyncError::Api { operation, source }
}

/// Keeps the Istio objects of one namespace in line with the route table.
pub struct IstioSync {
    options: IstioOptions,
    /// By kind: its API version and its API.
    apis: BTreeMap<String, (&'static str, Api<DynamicObject>)>,
    /// The hash of the rendered set last applied in full, and when.
    synced: Option<(u64, Instant)>,
}

impl std::fmt::Debug for IstioSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioSync")
            .field("options", &self.options)
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

impl IstioSync {
    /// Our Istio objects: this cluster's, when the options name it.
    fn selector(&self) -> String {
        match &self.options.local_cluster {
            Some(cluster) => format!("{ISTIO_SELECTOR},{CLUSTER_LABEL}={cluster}"),
            None => ISTIO_SELECTOR.to_owned(),
        }
    }

    pub fn new(client: Client, options: IstioOptions) -> Self {
        let apis = kinds(options.mode)
            .iter()
            .map(|&kind| {
                let ar = api_resource(kind);
                (
                    kind.1.to_owned(),
                    (
                        kind.0,
                        Api::namespaced_with(client.clone(), &options.namespace, &ar),
                    ),
                )
            })
            .collect();
        IstioSync {
            options,
            apis,
            synced: None,
        }
    }

    /// Applies and prunes when the rendered set changed since the last full sync,
    /// or that sync is older than [`ISTIO_RESYNC`]. A route table that cannot be
    /// rendered (a route naming a cluster not in the list yet) is logged and left
    /// for a later pass; it is not the API server's failure.
    pub async fn sync(
        &mut self,
        routes: &RouteTable,
        clusters: &[ClusterSpec],
        now: Instant,
    ) -> Result<(), IstioSyncError> {
        let objects = match rendered(routes, clusters, &self.options) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot render the Istio objects; keeping the applied ones");
                return Ok(());
            }
        };
        let set_hash = fnv1a(&serde_json::to_vec(&objects).unwrap_or_default());
        if self
            .synced
            .is_some_and(|(h, at)| h == set_hash && now.duration_since(at) < ISTIO_RESYNC)
        {
            return Ok(());
        }
        let mut observed = Vec::new();
        for (kind, (api_version, api)) in &self.apis {
            let list = api
                .list(&ListParams::default().labels(&self.selector()))
                .await
                .map_err(api_error(format!("list {kind}")))?;
            observed.extend(list.items.into_iter().map(|mut o| {
                // List items may come without their own apiVersion and kind.
                if o.types.is_none() {
                    o.types = Some(kube::api::TypeMeta {
                        api_version: (*api_version).into(),
                        kind: kind.clone(),
                    });
                }
                o
            }));
        }
        for action in plan(&objects, &observed) {
            match action {
                IstioAction::Apply {
                    kind,
                    name,
                    object,
                    unlisted,
                } => {
                    let Some((_, api)) = self.apis.get(&kind) else {
                        continue;
                    };
                    if unlisted {
                        let existing = api
                            .get_opt(&name)
                            .await
                            .map_err(api_error(format!("get {kind} {name}")))?;
                        if existing.is_some_and(|e| {
                            e.labels().get(MANAGED_BY_LABEL).map(String::as_str)
                                != Some(FIELD_MANAGER)
                        }) {
                            tracing::warn!(kind = %kind, name = %name, "an Istio object of this name exists without Flotilla's labels; leaving it alone");
                            continue;
                        }
                    }
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    api.patch(&name, &params, &Patch::Apply(&object))
                        .await
                        .map_err(api_error(format!("apply {kind} {name}")))?;
                    tracing::info!(kind = %kind, name = %name, "Istio object applied");
                }
                IstioAction::Delete { kind, name } => {
                    let Some((_, api)) = self.apis.get(&kind) else {
                        continue;
                    };
                    match api.delete(&name, &DeleteParams::background()).await {
                        Ok(_) => tracing::info!(kind = %kind, name = %name, "Istio object pruned"),
                        Err(kube::Error::Api(s)) if s.is_not_found() => {}
                        Err(source) => {
                            return Err(IstioSyncError::Api {
                                operation: format!("delete {kind} {name}"),
                                source,
                            });
                        }
                    }
                }
            }
        }
        self.synced = Some((set_hash, now));
        Ok(())
    }
}
