//! The controller's reconcile decision, as one pure function: [`decide`] takes
//! what the registry wants (this cluster's replicas and their workloads), what the
//! watches observe (our Deployments and Services) and the time, and answers the
//! actions to take, in order, the phases to report once they succeeded, and when
//! to look again. No IO: the controller ([`crate::controller`]) executes the
//! actions, and the tests call this directly.

use crate::render::{
    available, deployment_drifted, deployment_for, endpoint_for, object_name, owned_by, replica_of,
    scaled_down, service_drifted, service_for,
};
use crate::{KubernetesOptions, SPEC_HASH_ANNOTATION};
use flotilla_client::materialize::{DesiredReplica, PhaseReport, ReplicaView};
use flotilla_core::{Phase, Timestamp, Workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A replica not Ready yet is looked at again after this even if no watch event
/// arrives (a safety net: the Deployment's status changes wake the controller).
pub const ROLLOUT_RECHECK: Duration = Duration::from_secs(30);
/// A name held by someone else's object is read again after this, in case they
/// removed it.
pub const FOREIGN_RECHECK: Duration = Duration::from_secs(60);

/// The two kinds of object a replica is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
        }
    }
}

/// What the controller sees in the namespace.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// By name: what the Deployment watch (the owned selector) holds.
    pub deployments: BTreeMap<String, Deployment>,
    /// By name: what the Service watch (the owned selector) holds.
    pub services: BTreeMap<String, Service>,
    /// By the replica's object name: how many of its pods exist, terminating ones
    /// included (the Pod watch, the owned selector). A draining replica is Gone
    /// only once this is 0.
    pub pods: BTreeMap<String, usize>,
    /// Names taken by objects without our labels, which the watches cannot see:
    /// found by the read before a name's first apply, and remembered for
    /// [`FOREIGN_RECHECK`].
    pub foreign: BTreeSet<(Kind, String)>,
}

/// One step of a pass. The controller runs them in order; when one fails, the rest
/// of that replica's steps are skipped (so a report is made only when the replica's
/// steps before it succeeded) and other replicas' steps still run.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Server-side apply (field manager `flotilla`, forced). `unlisted`: the watch
    /// has not shown an object of this name, so the name is read first and the
    /// apply skipped if someone else's object holds it.
    ApplyDeployment {
        object: Box<Deployment>,
        unlisted: bool,
    },
    ApplyService {
        object: Box<Service>,
        unlisted: bool,
    },
    /// Delete one of our objects; one that is already gone counts as deleted.
    /// `uid`: the object seen, so that an object someone made under the same name
    /// since is not deleted in its place (a precondition on the delete).
    Delete {
        kind: Kind,
        name: String,
        uid: Option<String>,
    },
    /// Tell the registry (`SetReplicaPhase`).
    Report(PhaseReport),
    /// An object this controller must not touch, and why (logged).
    LeaveAlone {
        kind: Kind,
        name: String,
        why: &'static str,
    },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// What `GET /replicas` shows once the pass is done.
    pub views: Vec<ReplicaView>,
    /// Look again after this even if nothing changes (a drain deadline, a rollout).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// The reports among the actions.
    pub fn reports(&self) -> Vec<&PhaseReport> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

fn same_hash(a: &impl kube::Resource, b: &impl kube::Resource) -> bool {
    a.annotations().get(SPEC_HASH_ANNOTATION) == b.annotations().get(SPEC_HASH_ANNOTATION)
}

fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The actions that make the namespace match `desired`; see the module docs of
/// [`super`] for the life of a replica.
pub fn decide(
    desired: &[DesiredReplica],
    workloads: &BTreeMap<String, Workload>,
    observed: &Observed,
    options: &KubernetesOptions,
    now: Timestamp,
) -> Decision {
    let mut actions = Vec::new();
    let mut views = Vec::new();
    let mut requeue_after = None;
    let mut wanted = BTreeSet::new();

    for d in desired {
        let name = object_name(&d.workload, d.id);
        wanted.insert(name.clone());
        let Some(w) = workloads.get(&d.workload) else {
            // Without its spec nothing can be rendered; the replica is neither
            // started nor stopped until the registry is read.
            continue;
        };
        let listed_dep = observed.deployments.get(&name);
        let listed_svc = observed.services.get(&name);
        let current =
            listed_dep.filter(|x| owned_by(x.labels(), &options.cluster, &d.workload, d.id));
        let current_svc =
            listed_svc.filter(|x| owned_by(x.labels(), &options.cluster, &d.workload, d.id));
        let mut view = ReplicaView {
            workload: d.workload.clone(),
            model: d.model.clone(),
            replica: format!("r{}", d.id.0),
            id: d.id.0,
            address: None,
            registry_phase: d.phase.as_str(),
            local_state: "starting",
            devices: d.devices.iter().map(|r| r.uuid.clone()).collect(),
            pid: None,
            restarts: 0,
            last_exit: None,
        };

        // Someone else's object of this name: never applied over (a forced apply
        // would take its fields), never deleted.
        let blocked = [
            (Kind::Deployment, listed_dep.is_some() && current.is_none()),
            (Kind::Service, listed_svc.is_some() && current_svc.is_none()),
        ]
        .into_iter()
        .filter(|(kind, labelled_for_another)| {
            *labelled_for_another || observed.foreign.contains(&(*kind, name.clone()))
        })
        .map(|(kind, _)| kind)
        .collect::<Vec<_>>();
        if !blocked.is_empty() && d.phase != Phase::Draining {
            for kind in blocked {
                actions.push(Action::LeaveAlone {
                    kind,
                    name: name.clone(),
                    why: "an object of this name exists without this replica's Flotilla labels; the replica cannot start here",
                });
            }
            view.local_state = "failed";
            views.push(view);
            requeue_after = sooner(requeue_after, FOREIGN_RECHECK);
            continue;
        }

        if d.phase == Phase::Draining {
            let deadline_passed = d.drain_deadline.is_none_or(|t| now.0 >= t.0);
            match current {
                Some(dep) if !deadline_passed && !scaled_down(dep) => {
                    // Scale to 0: the pod gets SIGTERM and its grace to finish
                    // what is in flight, and leaves the Service's endpoints.
                    let want = deployment_for(d, w, options);
                    if !same_hash(dep, &want) {
                        actions.push(Action::ApplyDeployment {
                            object: Box::new(want),
                            unlisted: false,
                        });
                    }
                    view.local_state = "draining";
                    if let Some(t) = d.drain_deadline {
                        requeue_after = sooner(
                            requeue_after,
                            Duration::from_millis(t.0.saturating_sub(now.0)),
                        );
                    }
                }
                _ => {
                    // Scaled down, or out of time: both objects go. Gone only once
                    // the pods have gone too (a terminating pod still holds its
                    // GPUs), or once their termination grace after the deadline
                    // is over (a pod on a node that stopped answering never goes).
                    if let Some(dep) = current {
                        actions.push(Action::Delete {
                            kind: Kind::Deployment,
                            name: name.clone(),
                            uid: dep.uid(),
                        });
                    }
                    if let Some(svc) = current_svc {
                        actions.push(Action::Delete {
                            kind: Kind::Service,
                            name: name.clone(),
                            uid: svc.uid(),
                        });
                    }
                    let pods_left = observed.pods.get(&name).copied().unwrap_or(0);
                    let grace_ms = u64::try_from(options.termination_grace_seconds)
                        .unwrap_or(0)
                        .saturating_mul(1000);
                    let given_up_at = d.drain_deadline.map(|t| t.0.saturating_add(grace_ms));
                    if pods_left == 0 || given_up_at.is_none_or(|t| now.0 >= t) {
                        actions.push(Action::Report(PhaseReport {
                            workload: d.workload.clone(),
                            replica: d.id,
                            phase: Phase::Gone,
                            endpoint: None,
                        }));
                        view.local_state = "exited";
                    } else {
                        // The pod watch wakes the controller when they go.
                        view.local_state = "draining";
                        if let Some(t) = given_up_at {
                            requeue_after = sooner(
                                requeue_after,
                                Duration::from_millis(t.saturating_sub(now.0)),
                            );
                        }
                    }
                }
            }
            views.push(view);
            continue;
        }

        let want = deployment_for(d, w, options);
        let fresh =
            current.is_some_and(|dep| same_hash(dep, &want) && !deployment_drifted(dep, &want));
        let ready = fresh && current.is_some_and(available);
        if !fresh {
            actions.push(Action::ApplyDeployment {
                object: Box::new(want),
                unlisted: current.is_none(),
            });
        }
        let svc = service_for(d, w, options);
        if current_svc.is_none_or(|s| !same_hash(s, &svc) || service_drifted(s, &svc)) {
            actions.push(Action::ApplyService {
                object: Box::new(svc),
                unlisted: current_svc.is_none(),
            });
        }
        if ready {
            view.local_state = "ready";
            view.address = endpoint_for(d, w, options);
            if d.phase == Phase::Starting || d.endpoint != view.address {
                actions.push(Action::Report(PhaseReport {
                    workload: d.workload.clone(),
                    replica: d.id,
                    phase: Phase::Ready,
                    endpoint: view.address.clone(),
                }));
            }
        } else {
            requeue_after = sooner(requeue_after, ROLLOUT_RECHECK);
        }
        views.push(view);
    }

    // Ours, but no longer placed here: delete, whatever state it is in (a
    // Deployment still rolling out included). Only what the owned selector
    // returned and whose labels name a replica is considered.
    let mut leftovers =
        |kind: Kind, name: &String, labels: &BTreeMap<String, String>, uid: Option<String>| {
            if wanted.contains(name) {
                return;
            }
            if replica_of(labels, &options.cluster).is_some() {
                actions.push(Action::Delete {
                    kind,
                    name: name.clone(),
                    uid,
                });
            } else {
                actions.push(Action::LeaveAlone {
                    kind,
                    name: name.clone(),
                    why: "its labels do not name a Flotilla replica",
                });
            }
        };
    for (name, dep) in &observed.deployments {
        leftovers(Kind::Deployment, name, dep.labels(), dep.uid());
    }
    for (name, svc) in &observed.services {
        leftovers(Kind::Service, name, svc.labels(), svc.uid());
    }

    Decision {
        actions,
        views,
        requeue_after,
    }
}
