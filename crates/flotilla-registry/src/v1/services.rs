//! The `flotilla.v1` services: authorize, convert, propose or read, convert back.

use super::ApiCore;
use super::paging::Page;
use crate::authz::Action;
use flotilla_client::convert::{self, conditional, etag_to, non_empty, required};
use flotilla_core::{Command, ObjectKind, SETTINGS_NAME, State};
use flotilla_proto::v1::{
    self as pb, capacity_service_server::CapacityService,
    federation_service_server::FederationService, placement_service_server::PlacementService,
    policy_service_server::PolicyService, route_service_server::RouteService,
    workload_service_server::WorkloadService,
};
use tonic::{Request, Response, Status};

pub(crate) type Rpc<T> = Result<Response<T>, Status>;

pub(crate) fn index_of(applied: &crate::store::Applied) -> u64 {
    applied.last_applied.map(|l| l.index).unwrap_or_default()
}

fn not_found(kind: &str, name: &str) -> Status {
    flotilla_client::errors::not_found(kind, name, format!("{kind} \"{name}\" not found"))
}

impl ApiCore {
    /// A cluster's own member (agent, controller, server) registering it: it may
    /// register it and update its labels and gateway address, but moving it to
    /// another region or zone takes an admin, or one node could pull its whole
    /// cluster's traffic across the world. The write is conditional on what was
    /// checked (absent, or the revision read), so a change in between is never
    /// slipped through; such a race (two node agents registering at once) is read
    /// and checked again here, not handed to the member. A member's own etag makes
    /// the write conditional on that revision instead (ABORTED when it is stale),
    /// after the same checks.
    async fn member_registration(
        &self,
        member: &flotilla_pki::Identity,
        spec: flotilla_core::ClusterSpec,
        etag: Option<u64>,
    ) -> Result<u64, Status> {
        let refuse = |why: String| crate::authz::refuse(member, "RegisterCluster", &why);
        self.read_modify_write(etag, 5, |state| {
            let name = spec.name.clone();
            let mut spec = spec.clone();
            let revision = match state.cluster(&name) {
                Some(existing)
                    if (&existing.spec.region, &existing.spec.zone)
                        != (&spec.region, &spec.zone) =>
                {
                    return Err(refuse(format!(
                        "cluster {name:?} is in {}/{}; moving it to {}/{} takes an admin identity",
                        existing.spec.region, existing.spec.zone, spec.region, spec.zone
                    )));
                }
                Some(existing) => {
                    let declared = &existing.spec.endpoint_ranges;
                    if spec.endpoint_ranges.is_empty() {
                        spec.endpoint_ranges = declared.clone();
                    } else if &spec.endpoint_ranges != declared && !declared.is_empty() {
                        return Err(refuse(format!(
                            "cluster {name:?} declares endpoint ranges [{}]; changing them to [{}] takes an admin identity",
                            declared.join(", "),
                            spec.endpoint_ranges.join(", ")
                        )));
                    }
                    state.revision(ObjectKind::Cluster, &name)
                }
                None => 0,
            };
            let revision = etag.unwrap_or(revision);
            Ok(Command::RegisterCluster { spec }.expecting(
                ObjectKind::Cluster,
                name,
                revision,
            ))
        })
        .await
    }

    /// A write to the cluster `name`, conditional on its etag when one was given.
    async fn cluster_write(
        &self,
        name: String,
        etag: &str,
        command: impl FnOnce(String) -> Command,
    ) -> Result<u64, Status> {
        non_empty(&name, "name")?;
        let command = conditional(
            command(name.clone()),
            ObjectKind::Cluster,
            &name,
            etag,
            "etag",
        )?;
        self.propose(command).await
    }
}

#[tonic::async_trait]
impl FederationService for ApiCore {
    async fn get_federation(
        &self,
        request: Request<pb::GetFederationRequest>,
    ) -> Rpc<pb::GetFederationResponse> {
        self.check(&request, Action::Read, "GetFederation")?;
        let leader_id = self
            .api
            .raft
            .metrics()
            .borrow()
            .current_leader
            .unwrap_or_default();
        let log = self.api.log_status();
        Ok(Response::new(pb::GetFederationResponse {
            name: self.api.federation.clone(),
            members: self
                .api
                .members()
                .into_iter()
                .map(|m| pb::Member {
                    node_id: m.node_id,
                    address: m.address,
                    voter: m.voter,
                })
                .collect(),
            leader_id,
            applied_index: index_of(&self.api.sm.current()),
            last_snapshot_index: log.last_snapshot_index,
            log_entries: log.log_entries,
            snapshot_after_entries: log.policy.snapshot_after_entries,
            log_entries_kept_after_snapshot: log.policy.entries_kept_after_snapshot,
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Rpc<pb::ListClustersResponse> {
        self.check(&request, Action::Read, "ListClusters")?;
        let body = request.get_ref();
        let page = Page::of("ListClusters", "", body.page_size, &body.page_token)?;
        let applied = self.read(body.allow_stale).await?;
        let (clusters, next_page_token) = page.take(
            applied
                .state
                .clusters()
                .iter()
                .map(|(name, c)| (vec![name.clone()], c)),
            |c| cluster_read(c, &applied.state),
        );
        Ok(Response::new(pb::ListClustersResponse {
            clusters,
            applied_index: index_of(&applied),
            next_page_token,
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Rpc<pb::GetClusterResponse> {
        self.check(&request, Action::Read, "GetCluster")?;
        let body = request.get_ref();
        non_empty(&body.name, "name")?;
        let applied = self.read(body.allow_stale).await?;
        let cluster = applied
            .state
            .cluster(&body.name)
            .ok_or_else(|| not_found("cluster", &body.name))?;
        Ok(Response::new(pb::GetClusterResponse {
            cluster: Some(cluster_read(cluster, &applied.state)),
            applied_index: index_of(&applied),
        }))
    }

    async fn register_cluster(
        &self,
        request: Request<pb::RegisterClusterRequest>,
    ) -> Rpc<pb::RegisterClusterResponse> {
        let spec = required(request.get_ref().spec.clone(), "spec")?;
        let caller = self.check(&request, Action::ForCluster(&spec.name), "RegisterCluster")?;
        let name = spec.name.clone();
        let spec = convert::cluster_spec_from(spec);
        let etag = &request.get_ref().etag;
        let log_index = match &caller {
            crate::authz::Caller::Member(member) if !caller.is_admin() => {
                let etag = convert::etag_from(etag, "etag")?;
                self.member_registration(member, spec, etag).await?
            }
            _ => {
                let command = conditional(
                    Command::RegisterCluster { spec },
                    ObjectKind::Cluster,
                    &name,
                    etag,
                    "etag",
                )?;
                self.propose(command).await?
            }
        };
        Ok(Response::new(pb::RegisterClusterResponse { log_index }))
    }

    async fn cordon_cluster(
        &self,
        request: Request<pb::CordonClusterRequest>,
    ) -> Rpc<pb::CordonClusterResponse> {
        self.check(&request, Action::Admin, "CordonCluster")?;
        let body = request.into_inner();
        let log_index = self
            .cluster_write(body.name, &body.etag, |cluster| Command::Cordon { cluster })
            .await?;
        Ok(Response::new(pb::CordonClusterResponse { log_index }))
    }

    async fn uncordon_cluster(
        &self,
        request: Request<pb::UncordonClusterRequest>,
    ) -> Rpc<pb::UncordonClusterResponse> {
        self.check(&request, Action::Admin, "UncordonCluster")?;
        let body = request.into_inner();
        let log_index = self
            .cluster_write(body.name, &body.etag, |cluster| Command::Uncordon {
                cluster,
            })
            .await?;
        Ok(Response::new(pb::UncordonClusterResponse { log_index }))
    }

    async fn drain_cluster(
        &self,
        request: Request<pb::DrainClusterRequest>,
    ) -> Rpc<pb::DrainClusterResponse> {
        self.check(&request, Action::Admin, "DrainCluster")?;
        let body = request.into_inner();
        let log_index = self
            .cluster_write(body.name, &body.etag, |cluster| Command::Drain { cluster })
            .await?;
        Ok(Response::new(pb::DrainClusterResponse { log_index }))
    }

    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Rpc<pb::GetSettingsResponse> {
        self.check(&request, Action::Read, "GetSettings")?;
        let applied = self.read(request.get_ref().allow_stale).await?;
        let mut settings = convert::settings_to(applied.state.settings());
        settings.etag = settings_etag(&applied.state);
        Ok(Response::new(pb::GetSettingsResponse {
            settings: Some(settings),
            applied_index: index_of(&applied),
        }))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Rpc<pb::UpdateSettingsResponse> {
        self.check(&request, Action::Admin, "UpdateSettings")?;
        let body = request.into_inner();
        let update = required(body.settings, "settings")?;
        let asked = convert::etag_from(&update.etag, "settings.etag")?;
        let mask = body.update_mask.map(|m| m.paths).unwrap_or_default();
        // The fields not named come from a read, and the write is conditional on
        // that read's revision: a concurrent change to another field is never
        // overwritten.
        let log_index = self
            .read_modify_write(asked, 5, |state| {
                let read_at = state.revision(ObjectKind::Settings, SETTINGS_NAME);
                let settings = convert::settings_update(state.settings(), &update, &mask)?;
                Ok(Command::SetSettings { settings }.expecting(
                    ObjectKind::Settings,
                    SETTINGS_NAME,
                    asked.unwrap_or(read_at),
                ))
            })
            .await?;
        Ok(Response::new(pb::UpdateSettingsResponse { log_index }))
    }

    type WatchClustersStream = super::watch::Stream<pb::WatchClustersResponse>;

    async fn watch_clusters(
        &self,
        request: Request<pb::WatchClustersRequest>,
    ) -> Rpc<Self::WatchClustersStream> {
        let watcher = self.watcher(&request, Action::Read, "WatchClusters")?;
        Ok(Response::new(super::watch::clusters(
            self,
            watcher,
            request.get_ref().progress,
        )))
    }

    async fn leave_cluster(
        &self,
        request: Request<pb::LeaveClusterRequest>,
    ) -> Rpc<pb::LeaveClusterResponse> {
        self.check(&request, Action::Admin, "LeaveCluster")?;
        let body = request.into_inner();
        let log_index = self
            .cluster_write(body.name, &body.etag, |cluster| Command::RemoveCluster {
                cluster,
            })
            .await?;
        Ok(Response::new(pb::LeaveClusterResponse { log_index }))
    }
}

/// The settings' etag, as reads give it out.
fn settings_etag(state: &flotilla_core::State) -> String {
    state
        .revision(ObjectKind::Settings, SETTINGS_NAME)
        .to_string()
}

#[tonic::async_trait]
impl CapacityService for ApiCore {
    async fn report_capacity(
        &self,
        request: Request<pb::ReportCapacityRequest>,
    ) -> Rpc<pb::ReportCapacityResponse> {
        non_empty(&request.get_ref().cluster, "cluster")?;
        let cluster = request.get_ref().cluster.clone();
        let scope = convert::report_scope_from(request.get_ref().scope)?;
        let named: Vec<String> = request
            .get_ref()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let nodes = (scope == flotilla_core::ReportScope::Nodes).then_some(named.as_slice());
        self.check(
            &request,
            Action::ReportCapacity {
                cluster: &cluster,
                nodes,
            },
            "ReportCapacity",
        )?;
        let body = request.into_inner();
        let nodes = body
            .nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| convert::node_report_from(n, i))
            .collect::<Result<_, _>>()?;
        let log_index = self
            .propose(Command::capacity_report(cluster, scope, nodes))
            .await?;
        Ok(Response::new(pb::ReportCapacityResponse { log_index }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Rpc<pb::HeartbeatResponse> {
        let cluster = request.get_ref().cluster.clone();
        non_empty(&cluster, "cluster")?;
        self.check(&request, Action::ForCluster(&cluster), "Heartbeat")?;
        let log_index = self.propose(Command::Heartbeat { cluster }).await?;
        Ok(Response::new(pb::HeartbeatResponse { log_index }))
    }

    async fn list_gpus(&self, request: Request<pb::ListGpusRequest>) -> Rpc<pb::ListGpusResponse> {
        self.check(&request, Action::Read, "ListGpus")?;
        let body = request.get_ref();
        let page = Page::of("ListGpus", &body.cluster, body.page_size, &body.page_token)?;
        let applied = self.read(body.allow_stale).await?;
        if !body.cluster.is_empty() && applied.state.cluster(&body.cluster).is_none() {
            return Err(not_found("cluster", &body.cluster));
        }
        let (gpus, next_page_token) = page.take(
            applied
                .state
                .clusters()
                .values()
                .filter(|c| body.cluster.is_empty() || c.name() == body.cluster)
                .flat_map(|c| {
                    c.inventory.devices().map(move |(at, d)| {
                        let key = vec![c.name().to_owned(), at.node.clone(), at.uuid.clone()];
                        (key, (c, at, d))
                    })
                }),
            |(c, at, d)| {
                let node_lease = c
                    .inventory
                    .nodes
                    .get(&at.node)
                    .and_then(|n| n.lease_expires_at);
                pb::Gpu {
                    cluster: c.name().to_owned(),
                    node: at.node,
                    device: Some(convert::device_report_to(&d.report)),
                    allocated_to_replica: d.allocated_to.map(|r| r.0).unwrap_or_default(),
                    node_lease_expires_at_ms: node_lease.map_or(0, |t| t.0),
                }
            },
        );
        Ok(Response::new(pb::ListGpusResponse {
            gpus,
            applied_index: index_of(&applied),
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl WorkloadService for ApiCore {
    async fn apply_workload(
        &self,
        request: Request<pb::ApplyWorkloadRequest>,
    ) -> Rpc<pb::ApplyWorkloadResponse> {
        self.check(&request, Action::Admin, "ApplyWorkload")?;
        let given = required(request.into_inner().workload, "workload")?;
        let etag = given.etag.clone();
        let workload = convert::workload_from(given)?;
        let name = workload.name.clone();
        let command = conditional(
            Command::ApplyWorkload { workload },
            ObjectKind::Workload,
            &name,
            &etag,
            "workload.etag",
        )?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::ApplyWorkloadResponse { log_index }))
    }

    async fn get_workload(
        &self,
        request: Request<pb::GetWorkloadRequest>,
    ) -> Rpc<pb::GetWorkloadResponse> {
        self.check(&request, Action::ReadWorkloads, "GetWorkload")?;
        let body = request.get_ref();
        non_empty(&body.name, "name")?;
        let applied = self.read(body.allow_stale).await?;
        let w = applied
            .state
            .workload(&body.name)
            .ok_or_else(|| not_found("workload", &body.name))?;
        Ok(Response::new(pb::GetWorkloadResponse {
            workload: Some(workload_read(w, &applied.state)),
            applied_index: index_of(&applied),
        }))
    }

    async fn list_workloads(
        &self,
        request: Request<pb::ListWorkloadsRequest>,
    ) -> Rpc<pb::ListWorkloadsResponse> {
        self.check(&request, Action::ReadWorkloads, "ListWorkloads")?;
        let body = request.get_ref();
        let page = Page::of("ListWorkloads", "", body.page_size, &body.page_token)?;
        let applied = self.read(body.allow_stale).await?;
        let (workloads, next_page_token) = page.take(
            applied
                .state
                .workloads()
                .iter()
                .map(|(name, w)| (vec![name.clone()], w)),
            |w| workload_read(w, &applied.state),
        );
        Ok(Response::new(pb::ListWorkloadsResponse {
            workloads,
            applied_index: index_of(&applied),
            next_page_token,
        }))
    }

    async fn delete_workload(
        &self,
        request: Request<pb::DeleteWorkloadRequest>,
    ) -> Rpc<pb::DeleteWorkloadResponse> {
        self.check(&request, Action::Admin, "DeleteWorkload")?;
        let body = request.into_inner();
        non_empty(&body.name, "name")?;
        let command = conditional(
            Command::DeleteWorkload {
                workload: body.name.clone(),
            },
            ObjectKind::Workload,
            &body.name,
            &body.etag,
            "etag",
        )?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::DeleteWorkloadResponse { log_index }))
    }

    async fn move_workload(
        &self,
        request: Request<pb::MoveWorkloadRequest>,
    ) -> Rpc<pb::MoveWorkloadResponse> {
        self.check(&request, Action::Admin, "MoveWorkload")?;
        let body = request.into_inner();
        non_empty(&body.name, "name")?;
        non_empty(&body.cluster, "cluster")?;
        let given = convert::etag_from(&body.etag, "etag")?;
        // Read, change, and write on the condition that nothing changed in between:
        // a concurrent edit is never lost.
        let log_index = self
            .read_modify_write(given, 3, |state| {
                let (workload, revision) = moved(state, &body)?;
                if given.is_some_and(|g| g != revision) {
                    return Err(convert::rejection_status(
                        &flotilla_core::Rejection::Conflict {
                            kind: ObjectKind::Workload,
                            name: body.name.clone(),
                            expected: given.unwrap_or_default(),
                            actual: revision,
                        },
                    ));
                }
                Ok(Command::ApplyWorkload { workload }.expecting(
                    ObjectKind::Workload,
                    &body.name,
                    revision,
                ))
            })
            .await?;
        Ok(Response::new(pb::MoveWorkloadResponse { log_index }))
    }
}

/// The workload as `MoveWorkload` would write it, and the revision it is based on.
fn moved(
    state: &State,
    body: &pb::MoveWorkloadRequest,
) -> Result<(flotilla_core::Workload, u64), Status> {
    let mut workload = state
        .workload(&body.name)
        .cloned()
        .ok_or_else(|| not_found("workload", &body.name))?;
    if state.cluster(&body.cluster).is_none() {
        return Err(not_found("cluster", &body.cluster));
    }
    if let Some(pin) = workload
        .constraints
        .pinned
        .as_ref()
        .filter(|p| **p != body.cluster)
    {
        return Err(flotilla_client::errors::failed_precondition(
            "workload",
            &body.name,
            format!(
                "workload \"{}\": constraints.pinned is {pin:?}; a pinned workload does not move (change the pin with ApplyWorkload)",
                body.name
            ),
        ));
    }
    if !workload.mobility.movable {
        return Err(flotilla_client::errors::failed_precondition(
            "workload",
            &body.name,
            format!("workload \"{}\": mobility.movable is false", body.name),
        ));
    }
    workload.constraints.clusters = vec![body.cluster.clone()];
    Ok((workload, state.revision(ObjectKind::Workload, &body.name)))
}

/// Reads carry each object's etag.
fn workload_read(w: &flotilla_core::Workload, state: &State) -> pb::Workload {
    pb::Workload {
        etag: etag_to(state.revision(ObjectKind::Workload, &w.name)),
        ..convert::workload_to(w)
    }
}

pub(crate) fn policy_read(p: &flotilla_core::TenantPolicy, state: &State) -> pb::TenantPolicy {
    pb::TenantPolicy {
        etag: etag_to(state.revision(ObjectKind::Policy, &p.tenant)),
        ..convert::policy_to(p)
    }
}

pub(crate) fn cluster_read(c: &flotilla_core::Cluster, state: &State) -> pb::Cluster {
    pb::Cluster {
        etag: etag_to(state.revision(ObjectKind::Cluster, c.name())),
        ..convert::cluster_to(c)
    }
}

#[tonic::async_trait]
impl PlacementService for ApiCore {
    async fn get_placement(
        &self,
        request: Request<pb::GetPlacementRequest>,
    ) -> Rpc<pb::GetPlacementResponse> {
        self.check(&request, Action::ReadPlacements(""), "GetPlacement")?;
        let body = request.get_ref();
        non_empty(&body.workload, "workload")?;
        let applied = self.read(body.allow_stale).await?;
        let p = applied
            .state
            .placement(&body.workload)
            .ok_or_else(|| not_found("placement of workload", &body.workload))?;
        Ok(Response::new(pb::GetPlacementResponse {
            placement: Some(convert::placement_to(
                &body.workload,
                p,
                applied.state.placement_revision(&body.workload),
            )),
            applied_index: index_of(&applied),
        }))
    }

    async fn list_placements(
        &self,
        request: Request<pb::ListPlacementsRequest>,
    ) -> Rpc<pb::ListPlacementsResponse> {
        let caller = self.check(
            &request,
            Action::ReadPlacements(&request.get_ref().cluster),
            "ListPlacements",
        )?;
        let body = request.get_ref();
        let page = Page::of(
            "ListPlacements",
            &body.cluster,
            body.page_size,
            &body.page_token,
        )?;
        let applied = self.read(body.allow_stale).await?;
        let in_cluster = |p: &flotilla_core::Placement| {
            body.cluster.is_empty() || p.replicas.values().any(|r| r.cluster == body.cluster)
        };
        let (placements, next_page_token) = page.take(
            applied
                .state
                .placements()
                .iter()
                .filter(|(_, p)| in_cluster(p))
                .map(|(w, p)| (vec![w.clone()], (w, p))),
            |(w, p)| {
                let placement = convert::placement_to(w, p, applied.state.placement_revision(w));
                crate::authz::scoped_placement(placement, caller.replica_scope())
            },
        );
        Ok(Response::new(pb::ListPlacementsResponse {
            placements,
            applied_index: index_of(&applied),
            next_page_token,
            revision: applied.state.placements_revision(),
        }))
    }

    async fn report_replica_phase(
        &self,
        request: Request<pb::ReportReplicaPhaseRequest>,
    ) -> Rpc<pb::ReportReplicaPhaseResponse> {
        let body = request.get_ref().clone();
        non_empty(&body.workload, "workload")?;
        let command = Command::SetReplicaPhase {
            workload: body.workload,
            replica: flotilla_core::ReplicaId(body.replica),
            phase: convert::phase_from(body.phase, "phase")?,
            endpoint: (!body.endpoint.is_empty()).then_some(body.endpoint),
        };
        // Authorized for the cluster the replica is placed on, as this server knows.
        let applied = self.api.sm.current();
        let action = crate::authz::agent_command_action(&command, &applied.state)?;
        self.check(&request, action, "ReportReplicaPhase")?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::ReportReplicaPhaseResponse { log_index }))
    }

    async fn abort_migration(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Rpc<pb::AbortMigrationResponse> {
        self.check(&request, Action::Admin, "AbortMigration")?;
        let body = request.into_inner();
        non_empty(&body.workload, "workload")?;
        let log_index = self
            .propose(Command::AbortMigration {
                workload: body.workload,
                target: flotilla_core::ReplicaId(body.target),
            })
            .await?;
        Ok(Response::new(pb::AbortMigrationResponse { log_index }))
    }

    type WatchPlacementsStream = super::watch::Stream<pb::WatchPlacementsResponse>;

    async fn watch_placements(
        &self,
        request: Request<pb::WatchPlacementsRequest>,
    ) -> Rpc<Self::WatchPlacementsStream> {
        let watcher = self.watcher(
            &request,
            Action::ReadPlacements(&request.get_ref().cluster),
            "WatchPlacements",
        )?;
        let body = request.into_inner();
        Ok(Response::new(super::watch::placements(
            self,
            watcher,
            body.cluster,
            body.from_revision,
            body.progress,
        )))
    }
}

#[tonic::async_trait]
impl RouteService for ApiCore {
    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Rpc<pb::ListRoutesResponse> {
        self.check(&request, Action::Read, "ListRoutes")?;
        let body = request.get_ref();
        let page = Page::of("ListRoutes", "", body.page_size, &body.page_token)?;
        let applied = self.read(body.allow_stale).await?;
        let table = applied.state.routes();
        let (routes, next_page_token) = page.take(
            table
                .routes
                .iter()
                .filter(|(_, r)| !r.endpoints.is_empty())
                .map(|(model, r)| (vec![model.clone()], r)),
            convert::route_to,
        );
        Ok(Response::new(pb::ListRoutesResponse {
            routes,
            revision: table.revision,
            next_page_token,
        }))
    }

    type WatchRoutesStream = super::watch::Stream<pb::WatchRoutesResponse>;

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Rpc<Self::WatchRoutesStream> {
        let watcher = self.watcher(&request, Action::Read, "WatchRoutes")?;
        let body = request.get_ref();
        Ok(Response::new(super::watch::routes(
            self,
            watcher,
            body.from_revision,
            body.progress,
        )))
    }
}

#[tonic::async_trait]
impl PolicyService for ApiCore {
    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Rpc<pb::SetPolicyResponse> {
        self.check(&request, Action::Admin, "SetPolicy")?;
        let given = required(request.into_inner().policy, "policy")?;
        let etag = given.etag.clone();
        let policy = convert::policy_from(given);
        let tenant = policy.tenant.clone();
        let command = conditional(
            Command::SetPolicy { policy },
            ObjectKind::Policy,
            &tenant,
            &etag,
            "policy.etag",
        )?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::SetPolicyResponse { log_index }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Rpc<pb::GetPolicyResponse> {
        self.check(&request, Action::ReadGovernance, "GetPolicy")?;
        let body = request.get_ref();
        non_empty(&body.tenant, "tenant")?;
        let applied = self.read(body.allow_stale).await?;
        let p = applied
            .state
            .policies()
            .get(&body.tenant)
            .ok_or_else(|| not_found("policy of tenant", &body.tenant))?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(policy_read(p, &applied.state)),
            applied_index: index_of(&applied),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Rpc<pb::ListPoliciesResponse> {
        self.check(&request, Action::ReadGovernance, "ListPolicies")?;
        let body = request.get_ref();
        let page = Page::of("ListPolicies", "", body.page_size, &body.page_token)?;
        let applied = self.read(body.allow_stale).await?;
        let (policies, next_page_token) = page.take(
            applied
                .state
                .policies()
                .iter()
                .map(|(tenant, p)| (vec![tenant.clone()], p)),
            |p| policy_read(p, &applied.state),
        );
        Ok(Response::new(pb::ListPoliciesResponse {
            policies,
            applied_index: index_of(&applied),
            next_page_token,
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Rpc<pb::DeletePolicyResponse> {
        self.check(&request, Action::Admin, "DeletePolicy")?;
        let body = request.into_inner();
        non_empty(&body.tenant, "tenant")?;
        let command = conditional(
            Command::DeletePolicy {
                tenant: body.tenant.clone(),
            },
            ObjectKind::Policy,
            &body.tenant,
            &body.etag,
            "etag",
        )?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::DeletePolicyResponse { log_index }))
    }
}
