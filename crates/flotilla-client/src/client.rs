//! A small typed client of one server's `flotilla.registry.v1.Registry` (for the
//! CLI, the agents' link, tests and benchmarks).

use crate::error::{Error, Result};
use crate::transport::TransportSecurity;
use flotilla_core::{Command, State};
use flotilla_proto::registry::v1::{
    Consistency, ObjectKind, ProposeReply, ProposeRequest, ReadRequest, StatusReply, StatusRequest,
    registry_client,
};
use flotilla_proto::v1::{
    self as pb, capacity_service_client::CapacityServiceClient,
    federation_service_client::FederationServiceClient,
    placement_service_client::PlacementServiceClient, policy_service_client::PolicyServiceClient,
    workload_service_client::WorkloadServiceClient,
};
use flotilla_proto::v1alpha1::{self as alpha, mcp_service_client::McpServiceClient};
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct RegistryClient {
    addr: String,
    inner: registry_client::RegistryClient<Channel>,
    /// The same connection, for the typed `flotilla.v1` calls.
    channel: Channel,
}

impl RegistryClient {
    /// A client of the server at `addr` (`host:port`); connects on first use.
    pub fn new(addr: &str, security: &TransportSecurity) -> Result<Self> {
        let channel = security.channel(addr, Duration::from_secs(2))?;
        Ok(Self::from_channel(addr, channel))
    }

    /// A client of the server at `addr` over a channel the caller made (the gateway
    /// makes its own, shared with its other calls to that server).
    pub fn from_channel(addr: &str, channel: Channel) -> Self {
        RegistryClient {
            addr: addr.to_owned(),
            inner: registry_client::RegistryClient::new(channel.clone())
                .max_decoding_message_size(1024 * 1024 * 1024),
            channel,
        }
    }

    fn rpc(&self, status: tonic::Status) -> Error {
        Error::rpc(&self.addr, &status)
    }

    /// Proposes a core command; answers once it is committed and applied.
    pub async fn propose(&mut self, command: &Command) -> Result<ProposeReply> {
        let command_json = serde_json::to_string(command)
            .map_err(|e| Error::Config(format!("command does not encode: {e}")))?;
        self.propose_json(command_json).await
    }

    pub async fn propose_json(&mut self, command_json: String) -> Result<ProposeReply> {
        match self.inner.propose(ProposeRequest { command_json }).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.rpc(s)),
        }
    }

    /// The replicas placed on `cluster`, once they differ from `known_version` (0:
    /// at once) or after `wait` without a change: (version, replicas).
    pub async fn watch_replicas(
        &mut self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> Result<(u64, Vec<flotilla_core::PlacedReplica>)> {
        let (_, version, replicas) = self.watch_replicas_at(cluster, known_version, wait).await?;
        Ok((version, replicas))
    }

    /// [`Self::watch_replicas`], with the log index the answer reflects: a server
    /// that is behind answers an older list at once (its version differs), so a
    /// caller that moves between servers compares indexes to keep from going back.
    ///
    /// A blocking query over `flotilla.v1` `PlacementService/WatchPlacements` with
    /// the cluster filter: the watch sends the cluster's placements, then a synced
    /// marker; the list is answered at once if its version differs from
    /// `known_version`, else the watch is followed until a change makes it differ
    /// or `wait` passes. The version is computed here, from the list itself, so
    /// equal lists have equal versions whichever server answered.
    pub async fn watch_replicas_at(
        &mut self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> Result<(u64, u64, Vec<flotilla_core::PlacedReplica>)> {
        let request = pb::WatchPlacementsRequest {
            cluster: cluster.to_owned(),
            progress: true,
            from_revision: 0,
        };
        let mut stream = PlacementServiceClient::new(self.channel.clone())
            .watch_placements(request)
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        let mut list = ClusterReplicas::new(cluster);
        // The catch-up comes at once; only then does the wait begin.
        let mut answer = loop {
            let m = self.next_placement(&mut stream).await?;
            if let Some(answer) = list.take(m, true).map_err(|s| self.rpc(s))? {
                break answer;
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        while answer.1 == known_version {
            let Ok(m) = tokio::time::timeout_at(deadline, self.next_placement(&mut stream)).await
            else {
                break;
            };
            if let Some(changed) = list.take(m?, false).map_err(|s| self.rpc(s))? {
                answer = changed;
            }
        }
        Ok(answer)
    }

    async fn next_placement(
        &self,
        stream: &mut tonic::Streaming<pb::WatchPlacementsResponse>,
    ) -> Result<pb::WatchPlacementsResponse> {
        match stream.message().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(Error::Rpc {
                peer: self.addr.clone(),
                code: tonic::Code::Unavailable,
                message: "the placement watch ended (the server is shutting down)".into(),
            }),
            Err(s) => Err(self.rpc(s)),
        }
    }

    /// The workloads, routes and clusters, from this server's copy, a page at a time.
    pub async fn read_federation(&self) -> Result<crate::link::FederationLists> {
        use crate::convert;
        let ch = &self.channel;
        let fail = |s: tonic::Status| self.rpc(s);
        let workloads = crate::lists::workloads(ch, true)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|w| convert::workload_from(w).map(|w| (w.name.clone(), w)))
            .collect::<std::result::Result<_, _>>()
            .map_err(fail)?;
        let (routes, revision) = crate::lists::routes(ch, true).await.map_err(fail)?;
        let routes = flotilla_core::RouteTable {
            revision,
            routes: routes
                .into_iter()
                .map(|r| {
                    let r = convert::route_from(r);
                    (r.model.clone(), r)
                })
                .collect(),
            compacted: 0,
        };
        let clusters = crate::lists::clusters(ch, true)
            .await
            .map_err(fail)?
            .into_iter()
            .filter_map(|c| c.spec.map(convert::cluster_spec_from))
            .collect();
        Ok(crate::link::FederationLists {
            workloads,
            routes,
            clusters,
        })
    }

    /// The whole registry; `linearizable` false reads the server's own copy
    /// (servers and admins only: the internal service).
    pub async fn read_state(&mut self, linearizable: bool) -> Result<(u64, State)> {
        let consistency = if linearizable {
            Consistency::Linearizable
        } else {
            Consistency::Local
        };
        let reply = self
            .inner
            .read(ReadRequest {
                consistency: consistency as i32,
                kind: ObjectKind::Snapshot as i32,
                name: String::new(),
            })
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        let state = State::from_snapshot(&reply.data).map_err(|e| Error::Rpc {
            peer: self.addr.clone(),
            code: tonic::Code::DataLoss,
            message: format!("snapshot does not decode: {e}"),
        })?;
        Ok((reply.applied_index, state))
    }

    /// Proposes `command` through its typed `flotilla.v1` RPC where it has one (what
    /// agents, controllers and admins send: registration, heartbeats, capacity,
    /// replica phases, workloads, policies, settings), and through the internal
    /// service otherwise. The log index of the write; a refusal is
    /// [`Error::Rejected`].
    pub async fn submit(&mut self, command: &Command) -> Result<u64> {
        match self.typed(command).await {
            Some(Ok(index)) => Ok(index),
            Some(Err(s)) if is_refusal(s.code()) => Err(Error::Rejected {
                command: command.kind(),
                message: s.message().to_owned(),
                not_found: s.code() == tonic::Code::NotFound,
            }),
            Some(Err(s)) => Err(self.rpc(s)),
            None => {
                let reply = self.propose(command).await?;
                if reply.applied {
                    return Ok(reply.log_index);
                }
                let not_found = matches!(
                    serde_json::from_str::<flotilla_core::Rejection>(&reply.rejection_json),
                    Ok(flotilla_core::Rejection::NotFound { .. })
                );
                Err(Error::Rejected {
                    command: command.kind(),
                    message: reply.rejection_message,
                    not_found,
                })
            }
        }
    }

    /// A new API key of `tenant`, made by this server (`TenantService.CreateApiKey`):
    /// the whole key, which the registry does not keep.
    pub async fn create_api_key(&mut self, tenant: &str) -> Result<String> {
        let request = pb::CreateApiKeyRequest {
            tenant: tenant.to_owned(),
            expire_time: None,
        };
        flotilla_proto::v1::tenant_service_client::TenantServiceClient::new(self.channel.clone())
            .create_api_key(request)
            .await
            .map(|r| r.into_inner().key)
            .map_err(|s| self.rpc(s))
    }

    /// The typed call for `command`, if there is one.
    async fn typed(&self, command: &Command) -> Option<std::result::Result<u64, tonic::Status>> {
        use crate::convert;
        let ch = self.channel.clone();
        Some(match command {
            Command::RegisterCluster { spec } => FederationServiceClient::new(ch)
                .register_cluster(pb::RegisterClusterRequest {
                    spec: Some(convert::cluster_spec_to(spec)),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().log_index),
            Command::Heartbeat { cluster } => CapacityServiceClient::new(ch)
                .heartbeat(pb::HeartbeatRequest {
                    cluster: cluster.clone(),
                })
                .await
                .map(|r| r.into_inner().log_index),
            Command::ReportCapacity { cluster, nodes }
            | Command::ReportNodes { cluster, nodes } => {
                let scope = match command {
                    Command::ReportNodes { .. } => flotilla_core::ReportScope::Nodes,
                    _ => flotilla_core::ReportScope::Cluster,
                };
                CapacityServiceClient::new(ch)
                    .report_capacity(pb::ReportCapacityRequest {
                        cluster: cluster.clone(),
                        nodes: nodes.iter().map(convert::node_report_to).collect(),
                        scope: convert::report_scope_to(scope) as i32,
                    })
                    .await
                    .map(|r| r.into_inner().log_index)
            }
            Command::SetReplicaPhase {
                workload,
                replica,
                phase,
                endpoint,
            } => PlacementServiceClient::new(ch)
                .report_replica_phase(pb::ReportReplicaPhaseRequest {
                    workload: workload.clone(),
                    replica: replica.0,
                    phase: convert::phase_to(*phase) as i32,
                    endpoint: endpoint.clone().unwrap_or_default(),
                })
                .await
                .map(|r| r.into_inner().log_index),
            Command::ApplyWorkload { workload } => WorkloadServiceClient::new(ch)
                .apply_workload(pb::ApplyWorkloadRequest {
                    workload: Some(convert::workload_to(workload)),
                })
                .await
                .map(|r| r.into_inner().log_index),
            Command::SetPolicy { policy } => PolicyServiceClient::new(ch)
                .set_policy(pb::SetPolicyRequest {
                    policy: Some(convert::policy_to(policy)),
                })
                .await
                .map(|r| r.into_inner().log_index),
            Command::SetTenant { tenant } => {
                flotilla_proto::v1::tenant_service_client::TenantServiceClient::new(ch)
                    .set_tenant(pb::SetTenantRequest {
                        tenant: Some(convert::tenant_to(tenant, 0)),
                    })
                    .await
                    .map(|r| r.into_inner().log_index)
            }
            Command::SetMcpServer { server } => McpServiceClient::new(ch)
                .set_mcp_server(alpha::SetMcpServerRequest {
                    server: Some(convert::mcp::server_to(server)),
                })
                .await
                .map(|r| r.into_inner().log_index),
            Command::DeleteMcpServer { name } => McpServiceClient::new(ch)
                .delete_mcp_server(alpha::DeleteMcpServerRequest { name: name.clone() })
                .await
                .map(|r| r.into_inner().log_index),
            Command::SetSettings { settings } => FederationServiceClient::new(ch)
                .update_settings(pb::UpdateSettingsRequest {
                    settings: Some(convert::settings_to(settings)),
                    update_mask: None,
                })
                .await
                .map(|r| r.into_inner().log_index),
            _ => return None,
        })
    }

    pub async fn status(&mut self) -> Result<StatusReply> {
        match self.inner.status(StatusRequest {}).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.rpc(s)),
        }
    }

    /// The generated client, for the calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut registry_client::RegistryClient<Channel> {
        &mut self.inner
    }
}

/// One cluster's placements as a watch sends them, and the replicas they place
/// there.
struct ClusterReplicas<'a> {
    cluster: &'a str,
    placements: std::collections::BTreeMap<String, pb::Placement>,
    synced: bool,
}

/// (the log index it reflects, its version, the replicas).
type ReplicaList = (u64, u64, Vec<flotilla_core::PlacedReplica>);

impl<'a> ClusterReplicas<'a> {
    fn new(cluster: &'a str) -> Self {
        ClusterReplicas {
            cluster,
            placements: std::collections::BTreeMap::new(),
            synced: false,
        }
    }

    /// Takes one watch message in; the list as it is now once the watch is in
    /// sync and the message changed something (or, `catching_up`, is the synced
    /// marker).
    fn take(
        &mut self,
        m: pb::WatchPlacementsResponse,
        catching_up: bool,
    ) -> std::result::Result<Option<ReplicaList>, tonic::Status> {
        let changed = m.placement.is_some();
        if let Some(p) = m.placement {
            if m.removed {
                self.placements.remove(&p.workload);
            } else {
                self.placements.insert(p.workload.clone(), p);
            }
        }
        self.synced |= m.synced;
        let answer = if catching_up { m.synced } else { changed };
        if !self.synced || !answer {
            return Ok(None);
        }
        let mut replicas = Vec::new();
        for p in self.placements.values() {
            replicas.extend(crate::convert::placed_replicas_from(self.cluster, p)?);
        }
        Ok(Some((
            m.applied_index,
            replicas_version(&replicas),
            replicas,
        )))
    }
}

/// A version for a replica list: FNV-1a of its JSON, so equal lists have equal
/// versions (and never 0, which callers send for "none yet").
fn replicas_version(replicas: &[flotilla_core::PlacedReplica]) -> u64 {
    let json = serde_json::to_vec(replicas).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Codes by which the registry refuses a write for what it asks, not for being
/// unreachable: trying another server does not help.
fn is_refusal(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::Aborted
    )
}
