//! Commands, the events they produce, and `apply`: the registry's only way to change.
//!
//! Every handler checks everything before it changes anything, so a rejected command
//! leaves the state exactly as it was.

use crate::cluster::{Cluster, ClusterSpec, ClusterState};
use crate::error::{ObjectKind, Rejection, ValidationError};
use crate::gpu::{
    Device, DeviceRef, Inventory, Node, NodeReport, ReportScope, validate_scoped_report,
};
use crate::placement::{Migration, MoveReason, Phase, Replica, ReplicaId};
use crate::policy::TenantPolicy;
use crate::settings::Settings;
use crate::state::{PendingPreemption, State};
use crate::time::Timestamp;
use crate::workload::Workload;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A change to the registry. Commands are what Raft replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Adds a cluster, or updates its spec; renews its lease.
    RegisterCluster {
        spec: ClusterSpec,
    },
    /// The cluster is alive; renews its lease.
    Heartbeat {
        cluster: String,
    },
    /// The cluster's whole GPU inventory as its agents see it now; renews its lease.
    /// Nodes it does not name leave the inventory ([`ReportScope::Cluster`]).
    ReportCapacity {
        cluster: String,
        nodes: Vec<NodeReport>,
    },
    /// Some of the cluster's nodes as their own agents see them now
    /// ([`ReportScope::Nodes`]): only these nodes are replaced, each gets a lease of
    /// its own (`Node::lease_expires_at`), and the cluster's lease is renewed. A
    /// separate command rather than a field of `ReportCapacity`, so that every
    /// existing `ReportCapacity` (in code, logs and snapshots) keeps its meaning.
    ReportNodes {
        cluster: String,
        nodes: Vec<NodeReport>,
    },
    /// A node's lease expired (proposed by the leader's housekeeping): it leaves the
    /// inventory and the replicas on it are lost, as when a report drops their
    /// devices. Refused before the lease expires and for nodes without a lease.
    ExpireNode {
        cluster: String,
        node: String,
    },
    Cordon {
        cluster: String,
    },
    /// Clears a cordon and a drain.
    Uncordon {
        cluster: String,
    },
    /// Cordons the cluster and moves every movable replica away from it.
    Drain {
        cluster: String,
    },
    /// Removes a cluster with no replicas (a cluster leaving the federation).
    RemoveCluster {
        cluster: String,
    },
    /// The federation CA issued a member of a cluster a certificate (a join or a
    /// renewal): it stands until it expires or its cluster leaves.
    RecordCertificate {
        serial: String,
        certificate: crate::certificates::IssuedCertificate,
    },
    /// The cluster's lease expired (proposed by the leader's housekeeping).
    MarkUnreachable {
        cluster: String,
    },
    /// Creates or updates a workload.
    ApplyWorkload {
        workload: Workload,
    },
    /// Deletes a workload; its replicas drain and go.
    DeleteWorkload {
        workload: String,
    },
    /// Starts a replica on the given devices, as a move of `replaces` when set.
    StartReplica {
        workload: String,
        cluster: String,
        devices: Vec<DeviceRef>,
        replaces: Option<(ReplicaId, MoveReason)>,
    },
    /// A replica became Ready, or Gone (exited, drained, failed to start). A
    /// materializer reports with Ready where the replica serves (`host:port`); a
    /// report of the same phase with another endpoint updates it (a restarted process
    /// on a new port).
    SetReplicaPhase {
        workload: String,
        replica: ReplicaId,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// Gives a migration's target this share (0–100) of the pair's traffic.
    ShiftTraffic {
        workload: String,
        target: ReplicaId,
        weight: u32,
    },
    /// Stops new traffic to a replica and lets its requests finish: the end of a move
    /// (the source, once its target carries all traffic) or a scale-down.
    DrainReplica {
        workload: String,
        replica: ReplicaId,
    },
    /// Drains a lower-priority replica so a higher-priority workload can have its GPUs.
    PreemptReplica {
        workload: String,
        replica: ReplicaId,
        for_workload: String,
    },
    /// Rolls a move back: the target goes, the source keeps all traffic.
    AbortMigration {
        workload: String,
        target: ReplicaId,
    },
    /// Creates or replaces a tenant.
    SetTenant {
        tenant: crate::tenant::Tenant,
    },
    /// Deletes a tenant and its API keys' records (its policy stays until deleted).
    DeleteTenant {
        name: String,
    },
    /// Records an API key of a tenant (made, and hashed, by the server that
    /// answered the request).
    CreateApiKey {
        key: crate::tenant::ApiKey,
    },
    /// Revokes an API key: every gateway refuses it from then on.
    RevokeApiKey {
        id: String,
    },
    SetPolicy {
        policy: TenantPolicy,
    },
    DeletePolicy {
        tenant: String,
    },
    SetSettings {
        settings: Settings,
    },
    /// Creates or replaces an MCP server (`flotilla.v1alpha1`).
    SetMcpServer {
        server: crate::mcp::McpServer,
    },
    DeleteMcpServer {
        name: String,
    },
    /// `command`, only if `expect`'s object is still at the revision the writer read
    /// (its etag); otherwise rejected with [`Rejection::Conflict`] and nothing
    /// changes. The check and the write are one log entry, so no other write can
    /// come between them: the guard against lost updates.
    Conditional {
        expect: Expectation,
        command: Box<Command>,
    },
}

/// An object at a revision: what a conditional write expects to find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    /// A workload, a policy or a cluster: the objects that carry a revision.
    pub kind: ObjectKind,
    pub name: String,
    /// As [`State::revision`] gave it; 0 expects the object not to exist.
    pub revision: u64,
}

impl Command {
    /// `self`, only if the object is at `revision` (see [`Command::Conditional`]).
    pub fn expecting(self, kind: ObjectKind, name: impl Into<String>, revision: u64) -> Command {
        Command::Conditional {
            expect: Expectation {
                kind,
                name: name.into(),
                revision,
            },
            command: Box::new(self),
        }
    }

    /// The object with a revision that this command writes, if any: its revision
    /// moves when the command changes it.
    fn revised_object(&self) -> Option<(ObjectKind, &str)> {
        match self {
            Command::RegisterCluster { spec } => Some((ObjectKind::Cluster, &spec.name)),
            Command::Cordon { cluster }
            | Command::Uncordon { cluster }
            | Command::Drain { cluster }
            | Command::RemoveCluster { cluster } => Some((ObjectKind::Cluster, cluster)),
            Command::ApplyWorkload { workload } => Some((ObjectKind::Workload, &workload.name)),
            Command::DeleteWorkload { workload } => Some((ObjectKind::Workload, workload)),
            Command::SetPolicy { policy } => Some((ObjectKind::Policy, &policy.tenant)),
            Command::SetTenant { tenant } => Some((ObjectKind::Tenant, &tenant.name)),
            Command::DeleteTenant { name } => Some((ObjectKind::Tenant, name)),
            Command::DeletePolicy { tenant } => Some((ObjectKind::Policy, tenant)),
            Command::SetSettings { .. } => Some((ObjectKind::Settings, SETTINGS_NAME)),
            _ => None,
        }
    }

    /// The capacity report of `scope`: `ReportCapacity` for the whole cluster,
    /// `ReportNodes` for the nodes named.
    pub fn capacity_report(cluster: String, scope: ReportScope, nodes: Vec<NodeReport>) -> Self {
        match scope {
            ReportScope::Cluster => Command::ReportCapacity { cluster, nodes },
            ReportScope::Nodes => Command::ReportNodes { cluster, nodes },
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterCluster { .. } => "register_cluster",
            Command::Heartbeat { .. } => "heartbeat",
            Command::ReportCapacity { .. } => "report_capacity",
            Command::ReportNodes { .. } => "report_nodes",
            Command::ExpireNode { .. } => "expire_node",
            Command::Cordon { .. } => "cordon",
            Command::Uncordon { .. } => "uncordon",
            Command::Drain { .. } => "drain",
            Command::RemoveCluster { .. } => "remove_cluster",
            Command::RecordCertificate { .. } => "record_certificate",
            Command::MarkUnreachable { .. } => "mark_unreachable",
            Command::ApplyWorkload { .. } => "apply_workload",
            Command::DeleteWorkload { .. } => "delete_workload",
            Command::StartReplica { .. } => "start_replica",
            Command::SetReplicaPhase { .. } => "set_replica_phase",
            Command::ShiftTraffic { .. } => "shift_traffic",
            Command::DrainReplica { .. } => "drain_replica",
            Command::PreemptReplica { .. } => "preempt_replica",
            Command::AbortMigration { .. } => "abort_migration",
            Command::SetPolicy { .. } => "set_policy",
            Command::SetTenant { .. } => "set_tenant",
            Command::DeleteTenant { .. } => "delete_tenant",
            Command::CreateApiKey { .. } => "create_api_key",
            Command::RevokeApiKey { .. } => "revoke_api_key",
            Command::DeletePolicy { .. } => "delete_policy",
            Command::SetSettings { .. } => "set_settings",
            Command::SetMcpServer { .. } => "set_mcp_server",
            Command::DeleteMcpServer { .. } => "delete_mcp_server",
            Command::Conditional { command, .. } => command.kind(),
        }
    }
}

/// A command with the time its proposer gave it: what the log stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub command: Command,
}

impl Entry {
    pub fn new(at: Timestamp, command: Command) -> Self {
        Entry { at, command }
    }
}

/// Why a replica was lost rather than drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossCause {
    /// Its GPU disappeared from the report or turned unhealthy.
    DeviceLost,
    /// Its cluster stopped reporting.
    ClusterUnreachable,
    /// Its node, reported on its own, stopped reporting and its lease expired.
    NodeExpired,
    /// The materializer reported it gone.
    Exited,
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationOutcome {
    /// The target took all traffic and the source is draining.
    Completed,
    /// The target never became ready, or was lost; the source keeps serving.
    RolledBack,
    /// The source was lost mid-move; the target carries on alone.
    SourceLost,
}

/// What changed, for watchers, logs and the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    ClusterRegistered {
        cluster: String,
    },
    ClusterStateChanged {
        cluster: String,
        state: ClusterState,
    },
    CapacityChanged {
        cluster: String,
        devices: usize,
        free: usize,
    },
    ClusterRemoved {
        cluster: String,
    },
    /// A node reported on its own stopped reporting and left the inventory.
    NodeExpired {
        cluster: String,
        node: String,
    },
    WorkloadApplied {
        workload: String,
    },
    WorkloadDeleted {
        workload: String,
    },
    ReplicaStarted {
        workload: String,
        replica: ReplicaId,
        cluster: String,
    },
    ReplicaPhaseChanged {
        workload: String,
        replica: ReplicaId,
        cluster: String,
        phase: Phase,
    },
    ReplicaLost {
        workload: String,
        replica: ReplicaId,
        cluster: String,
        cause: LossCause,
    },
    ReplicaEvicted {
        workload: String,
        replica: ReplicaId,
        cluster: String,
    },
    MigrationStarted {
        workload: String,
        source: ReplicaId,
        target: ReplicaId,
        from: String,
        to: String,
        reason: MoveReason,
    },
    TrafficShifted {
        workload: String,
        target: ReplicaId,
        weight: u32,
    },
    MigrationFinished {
        workload: String,
        source: ReplicaId,
        target: ReplicaId,
        outcome: MigrationOutcome,
    },
    RouteChanged {
        model: String,
        revision: u64,
    },
    PolicySet {
        tenant: String,
    },
    PolicyDeleted {
        tenant: String,
    },
    /// An MCP server was created, replaced or deleted.
    McpServerChanged {
        name: String,
    },
    TenantSet {
        tenant: String,
    },
    TenantDeleted {
        tenant: String,
    },
    /// An API key was created or revoked.
    ApiKeyChanged {
        id: String,
        tenant: String,
    },
    SettingsChanged,
}

/// What the federation's settings, one object, are called in etags and conflicts.
pub const SETTINGS_NAME: &str = "federation";

/// Applies one log entry. On `Err` the state is unchanged.
pub fn apply(state: &mut State, entry: &Entry) -> Result<Vec<Event>, Rejection> {
    let command = match &entry.command {
        Command::Conditional { expect, command } => {
            check_expectation(state, expect, command)?;
            command.as_ref()
        }
        command => command,
    };
    let revised = command.revised_object();
    let before = revised.map(|(kind, name)| state.revised_content(kind, name));
    let events = apply_command(state, entry.at, command)?;
    if let (Some((kind, name)), Some(before)) = (revised, before)
        && state.revised_content(kind, name) != before
    {
        state.bump_revision(kind, name);
    }
    let latest = &mut state.persistent.latest_entry_at;
    *latest = (*latest).max(entry.at);
    Ok(events)
}

/// A conditional write's guard: the object is at the revision the writer read.
fn check_expectation(
    state: &State,
    expect: &Expectation,
    command: &Command,
) -> Result<(), Rejection> {
    let invalid = |message: String| {
        Rejection::Invalid(ValidationError::new(
            expect.kind,
            &expect.name,
            "etag",
            message,
        ))
    };
    if matches!(command, Command::Conditional { .. }) {
        return Err(invalid("a conditional write cannot hold another".into()));
    }
    if !matches!(
        expect.kind,
        ObjectKind::Workload
            | ObjectKind::Policy
            | ObjectKind::Cluster
            | ObjectKind::Settings
            | ObjectKind::Tenant
    ) {
        return Err(invalid(format!("a {} carries no etag", expect.kind)));
    }
    let actual = state.revision(expect.kind, &expect.name);
    if actual != expect.revision {
        return Err(Rejection::Conflict {
            kind: expect.kind,
            name: expect.name.clone(),
            expected: expect.revision,
            actual,
        });
    }
    Ok(())
}

fn apply_command(
    state: &mut State,
    at: Timestamp,
    command: &Command,
) -> Result<Vec<Event>, Rejection> {
    let mut tx = Tx {
        s: state,
        at,
        events: Vec::new(),
        changed_placements: BTreeSet::new(),
        changed_workloads: BTreeSet::new(),
        changed_clusters: BTreeSet::new(),
        changed_models: BTreeSet::new(),
    };
    tx.run(command)?;
    Ok(tx.finish())
}

/// One command's application: the handlers record what they touched, and `finish`
/// brings indexes and routes up to date once.
struct Tx<'a> {
    s: &'a mut State,
    at: Timestamp,
    events: Vec<Event>,
    changed_placements: BTreeSet<String>,
    changed_workloads: BTreeSet<String>,
    changed_clusters: BTreeSet<String>,
    changed_models: BTreeSet<String>,
}

fn not_found(kind: ObjectKind, name: impl Into<String>) -> Rejection {
    Rejection::not_found(kind, name)
}

/// A reported node as the registry holds it: its devices keep the allocations the
/// node had under the same UUIDs (whether they still serve their replicas is decided
/// by `Tx::change_nodes`).
fn node_from_report(old: &Inventory, n: &NodeReport, lease: Option<Timestamp>) -> Node {
    let devices = n
        .devices
        .iter()
        .map(|d| {
            let at = DeviceRef {
                node: n.name.clone(),
                uuid: d.uuid.clone(),
            };
            let allocated_to = old.device(&at).and_then(|o| o.allocated_to);
            let device = Device {
                report: d.clone(),
                allocated_to,
            };
            (d.uuid.clone(), device)
        })
        .collect();
    Node {
        devices,
        lease_expires_at: lease,
    }
}

impl Tx<'_> {
    fn run(&mut self, command: &Command) -> Result<(), Rejection> {
        match command {
            Command::RegisterCluster { spec } => self.register_cluster(spec),
            Command::Heartbeat { cluster } => self.heartbeat(cluster),
            Command::ReportCapacity { cluster, nodes } => {
                self.report_capacity(cluster, ReportScope::Cluster, nodes)
            }
            Command::ReportNodes { cluster, nodes } => {
                self.report_capacity(cluster, ReportScope::Nodes, nodes)
            }
            Command::ExpireNode { cluster, node } => self.expire_node(cluster, node),
            Command::Cordon { cluster } => self.set_cordon(cluster, Some(true), None),
            Command::Uncordon { cluster } => self.set_cordon(cluster, Some(false), Some(false)),
            Command::Drain { cluster } => self.set_cordon(cluster, None, Some(true)),
            Command::RemoveCluster { cluster } => self.remove_cluster(cluster),
            Command::RecordCertificate {
                serial,
                certificate,
            } => self
                .s
                .persistent
                .certificates
                .record(serial, certificate.clone(), self.at),
            Command::MarkUnreachable { cluster } => self.mark_unreachable(cluster),
            Command::ApplyWorkload { workload } => self.apply_workload(workload),
            Command::DeleteWorkload { workload } => self.delete_workload(workload),
            Command::StartReplica {
                workload,
                cluster,
                devices,
                replaces,
            } => self.start_replica(workload, cluster, devices, *replaces),
            Command::SetReplicaPhase {
                workload,
                replica,
                phase,
                endpoint,
            } => self.set_replica_phase(workload, *replica, *phase, endpoint.as_deref()),
            Command::ShiftTraffic {
                workload,
                target,
                weight,
            } => self.shift_traffic(workload, *target, *weight),
            Command::DrainReplica { workload, replica } => self.drain_replica(workload, *replica),
            Command::PreemptReplica {
                workload,
                replica,
                for_workload,
            } => self.preempt_replica(workload, *replica, for_workload),
            Command::AbortMigration { workload, target } => self.abort_migration(workload, *target),
            Command::SetTenant { tenant } => self.set_tenant(tenant),
            Command::DeleteTenant { name } => self.delete_tenant(name),
            Command::CreateApiKey { key } => self.create_api_key(key),
            Command::RevokeApiKey { id } => self.revoke_api_key(id),
            Command::SetPolicy { policy } => {
                policy.validate()?;
                self.check_models_served(policy)?;
                self.s
                    .persistent
                    .policies
                    .insert(policy.tenant.clone(), policy.clone());
                self.events.push(Event::PolicySet {
                    tenant: policy.tenant.clone(),
                });
                Ok(())
            }
            Command::DeletePolicy { tenant } => {
                if self.s.persistent.policies.remove(tenant).is_none() {
                    return Err(not_found(ObjectKind::Policy, tenant));
                }
                self.events.push(Event::PolicyDeleted {
                    tenant: tenant.clone(),
                });
                Ok(())
            }
            Command::SetMcpServer { server } => self.set_mcp_server(server),
            Command::DeleteMcpServer { name } => {
                if self.s.persistent.mcp_servers.remove(name).is_none() {
                    return Err(not_found(ObjectKind::McpServer, name));
                }
                self.events
                    .push(Event::McpServerChanged { name: name.clone() });
                Ok(())
            }
            Command::Conditional { .. } => Err(Rejection::Invalid(ValidationError::new(
                ObjectKind::Settings,
                "",
                "",
                "a conditional write is applied only as a whole log entry",
            ))),
            Command::SetSettings { settings } => {
                settings.validate()?;
                self.s.persistent.settings = settings.clone();
                self.changed_workloads
                    .extend(self.s.persistent.workloads.keys().cloned());
                self.events.push(Event::SettingsChanged);
                Ok(())
            }
        }
    }

    fn cluster(&self, name: &str) -> Result<&Cluster, Rejection> {
        self.s
            .persistent
            .clusters
            .get(name)
            .ok_or_else(|| not_found(ObjectKind::Cluster, name))
    }

    fn renew_lease(&mut self, name: &str) {
        let lease = self.s.persistent.settings.lease_duration;
        if let Some(c) = self.s.persistent.clusters.get_mut(name) {
            c.lease_expires_at = self.at + lease;
            let before = c.state;
            if c.state == ClusterState::Unreachable {
                c.state = ClusterState::Ready;
            }
            c.refresh_state();
            if c.state != before {
                self.events.push(Event::ClusterStateChanged {
                    cluster: name.to_owned(),
                    state: c.state,
                });
                self.changed_clusters.insert(name.to_owned());
            }
        }
    }

    fn register_cluster(&mut self, spec: &ClusterSpec) -> Result<(), Rejection> {
        spec.validate()?;
        let name = spec.name.clone();
        match self.s.persistent.clusters.get_mut(&name) {
            Some(c) => {
                if c.spec.region != spec.region
                    && self
                        .s
                        .derived
                        .cluster_workloads
                        .get(&name)
                        .is_some_and(|w| !w.is_empty())
                {
                    return Err(Rejection::precondition(
                        ObjectKind::Cluster,
                        &name,
                        format!(
                            "cannot change region from {} to {} while replicas run there; drain it first",
                            c.spec.region, spec.region
                        ),
                    ));
                }
                c.spec = spec.clone();
            }
            None => {
                self.s.persistent.clusters.insert(
                    name.clone(),
                    Cluster {
                        spec: spec.clone(),
                        state: ClusterState::Ready,
                        draining: false,
                        cordoned: false,
                        lease_expires_at: self.at,
                        inventory: Inventory::default(),
                    },
                );
            }
        }
        self.events.push(Event::ClusterRegistered {
            cluster: name.clone(),
        });
        self.changed_clusters.insert(name.clone());
        self.touch_cluster_workloads(&name);
        self.renew_lease(&name);
        Ok(())
    }

    fn heartbeat(&mut self, cluster: &str) -> Result<(), Rejection> {
        self.cluster(cluster)?;
        self.renew_lease(cluster);
        Ok(())
    }

    fn report_capacity(
        &mut self,
        cluster: &str,
        scope: ReportScope,
        nodes: &[NodeReport],
    ) -> Result<(), Rejection> {
        let old = self.cluster(cluster)?;
        validate_scoped_report(cluster, scope, nodes)?;
        let lease = match scope {
            ReportScope::Cluster => None,
            ReportScope::Nodes => Some(self.at + self.s.persistent.settings.lease_duration),
        };
        let mut changes: BTreeMap<String, Option<Node>> = nodes
            .iter()
            .map(|n| {
                let node = node_from_report(&old.inventory, n, lease);
                (n.name.clone(), Some(node))
            })
            .collect();
        match scope {
            ReportScope::Cluster => {
                // Nodes with leases are reported one by one by node agents. A
                // whole-cluster report would drop them all, and the node agents would
                // add them back: replicas lost and replaced in a loop. Refused, so the
                // stray agent is found and stopped.
                if let Some((node, _)) = old
                    .inventory
                    .nodes
                    .iter()
                    .find(|(_, n)| n.lease_expires_at.is_some())
                {
                    return Err(Rejection::precondition(
                        ObjectKind::Cluster,
                        cluster,
                        format!(
                            "its nodes are reported one by one by node agents (node {node:?} among them), so a whole-cluster report would drop them; stop the agent reporting the whole cluster (on Kubernetes, an older install's DaemonSet flotilla-node), or run every agent of the cluster with the same --report-scope"
                        ),
                    ));
                }
                for name in old.inventory.nodes.keys() {
                    changes.entry(name.clone()).or_insert(None);
                }
            }
            ReportScope::Nodes => {
                // The cluster moves to node agents: nodes a whole-cluster agent
                // reported keep their devices and replicas, but now on a lease, so
                // they go unless their own node agent reports them in time.
                for (name, node) in &old.inventory.nodes {
                    if node.lease_expires_at.is_none() && !changes.contains_key(name) {
                        let mut leased = node.clone();
                        leased.lease_expires_at = lease;
                        changes.insert(name.clone(), Some(leased));
                    }
                }
                // A UUID names one device in the cluster (placement keys on it), so a
                // device cannot appear under a second node while the first keeps it.
                for (i, n) in nodes.iter().enumerate() {
                    for (j, d) in n.devices.iter().enumerate() {
                        let elsewhere = old.inventory.nodes.iter().find(|(name, node)| {
                            !changes.contains_key(*name) && node.devices.contains_key(&d.uuid)
                        });
                        if let Some((other, _)) = elsewhere {
                            return Err(Rejection::precondition(
                                ObjectKind::Cluster,
                                cluster,
                                format!(
                                    "nodes[{i}].devices[{j}].uuid: device {:?} is on node {other:?}, so it cannot be on node {:?} too",
                                    d.uuid, n.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
        self.change_nodes(cluster, changes, LossCause::DeviceLost);
        self.renew_lease(cluster);
        Ok(())
    }

    fn expire_node(&mut self, cluster: &str, node: &str) -> Result<(), Rejection> {
        let c = self.cluster(cluster)?;
        let name = format!("{cluster}/{node}");
        let Some(n) = c.inventory.nodes.get(node) else {
            return Err(not_found(ObjectKind::Node, name));
        };
        match n.lease_expires_at {
            None => {
                return Err(Rejection::precondition(
                    ObjectKind::Node,
                    name,
                    "came in a whole-cluster report and has no lease of its own; the cluster's next report decides whether it stays",
                ));
            }
            Some(t) if self.at < t => {
                return Err(Rejection::precondition(
                    ObjectKind::Node,
                    name,
                    format!("its lease runs until {t}; it is not expired at {}", self.at),
                ));
            }
            Some(_) => {}
        }
        self.change_nodes(
            cluster,
            BTreeMap::from([(node.to_owned(), None)]),
            LossCause::NodeExpired,
        );
        self.events.push(Event::NodeExpired {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
        });
        Ok(())
    }

    /// Replaces (`Some`) or removes (`None`) the named nodes of `cluster`'s inventory;
    /// its other nodes stay as they are. Replicas with a device that vanished, failed
    /// or is no longer theirs are lost (`cause`); those with a device another tenant
    /// claimed are marked evicted, so a planned move follows. Whole-cluster reports,
    /// node reports and node expiry all go through here, so they lose and evict alike.
    /// The caller has checked everything: this cannot fail.
    fn change_nodes(
        &mut self,
        cluster: &str,
        changes: BTreeMap<String, Option<Node>>,
        cause: LossCause,
    ) {
        let Some(old) = self.s.persistent.clusters.get(cluster) else {
            return;
        };
        let device_after = |at: &DeviceRef| -> Option<&Device> {
            match changes.get(&at.node) {
                Some(change) => change.as_ref()?.devices.get(&at.uuid),
                None => old.inventory.device(at),
            }
        };
        let mut lost: Vec<(String, ReplicaId)> = Vec::new();
        let mut evicted: Vec<(String, ReplicaId)> = Vec::new();
        for workload in self
            .s
            .derived
            .cluster_workloads
            .get(cluster)
            .into_iter()
            .flatten()
        {
            let Some(p) = self.s.persistent.placements.get(workload) else {
                continue;
            };
            // Replicas wholly on nodes this change leaves alone keep what they have.
            let touched = p.replicas.values().filter(|r| {
                r.cluster == cluster && r.devices.iter().any(|at| changes.contains_key(&at.node))
            });
            for r in touched {
                let devices: Vec<Option<&Device>> = r.devices.iter().map(device_after).collect();
                if devices
                    .iter()
                    .any(|d| d.is_none_or(|d| !d.report.healthy || d.allocated_to != Some(r.id)))
                {
                    lost.push((workload.clone(), r.id));
                } else if !r.evicted
                    && r.phase != Phase::Draining
                    && devices.iter().flatten().any(|d| d.report.claimed_by_other)
                {
                    evicted.push((workload.clone(), r.id));
                }
            }
        }

        // Everything decided: now change.
        let before_devices = old.inventory.device_count();
        let leases = &mut self.s.derived.node_leases;
        if let Some(c) = self.s.persistent.clusters.get_mut(cluster) {
            for (name, change) in changes {
                let renewed = change.as_ref().and_then(|n| n.lease_expires_at);
                let previous = match change {
                    Some(node) => c.inventory.nodes.insert(name.clone(), node),
                    None => c.inventory.nodes.remove(&name),
                };
                if let Some(t) = previous.and_then(|n| n.lease_expires_at) {
                    leases.remove(&(t, cluster.to_owned(), name.clone()));
                }
                if let Some(t) = renewed {
                    leases.insert((t, cluster.to_owned(), name));
                }
            }
        }
        for (w, id) in lost {
            self.remove_replica(&w, id, Some(cause));
        }
        for (w, id) in evicted {
            if let Some(r) = self
                .s
                .persistent
                .placements
                .get_mut(&w)
                .and_then(|p| p.replicas.get_mut(&id))
            {
                r.evicted = true;
                self.events.push(Event::ReplicaEvicted {
                    workload: w.clone(),
                    replica: id,
                    cluster: cluster.to_owned(),
                });
                self.changed_placements.insert(w);
            }
        }
        if let Some(c) = self.s.persistent.clusters.get(cluster) {
            let (devices, free) = (c.inventory.device_count(), c.inventory.free_device_count());
            if devices != before_devices
                || self
                    .s
                    .derived
                    .free
                    .get(cluster)
                    .map(|f| f.values().sum::<u32>() as usize)
                    != Some(free)
            {
                self.events.push(Event::CapacityChanged {
                    cluster: cluster.to_owned(),
                    devices,
                    free,
                });
            }
        }
        self.changed_clusters.insert(cluster.to_owned());
    }

    fn set_cordon(
        &mut self,
        cluster: &str,
        cordoned: Option<bool>,
        draining: Option<bool>,
    ) -> Result<(), Rejection> {
        self.cluster(cluster)?;
        let Some(c) = self.s.persistent.clusters.get_mut(cluster) else {
            return Err(not_found(ObjectKind::Cluster, cluster));
        };
        let before = c.state;
        if let Some(v) = cordoned {
            c.cordoned = v;
        }
        if let Some(v) = draining {
            c.draining = v;
        }
        c.refresh_state();
        if c.state != before {
            self.events.push(Event::ClusterStateChanged {
                cluster: cluster.to_owned(),
                state: c.state,
            });
        }
        self.changed_clusters.insert(cluster.to_owned());
        self.touch_cluster_workloads(cluster);
        Ok(())
    }

    fn remove_cluster(&mut self, cluster: &str) -> Result<(), Rejection> {
        self.cluster(cluster)?;
        let replicas: usize = self
            .s
            .derived
            .cluster_workloads
            .get(cluster)
            .into_iter()
            .flatten()
            .filter_map(|w| self.s.persistent.placements.get(w))
            .map(|p| p.replicas.values().filter(|r| r.cluster == cluster).count())
            .sum();
        if replicas > 0 {
            return Err(Rejection::precondition(
                ObjectKind::Cluster,
                cluster,
                format!("{replicas} replica(s) still run there; drain the cluster first"),
            ));
        }
        if let Some(c) = self.s.persistent.clusters.remove(cluster) {
            for (name, node) in c.inventory.nodes {
                if let Some(t) = node.lease_expires_at {
                    self.s
                        .derived
                        .node_leases
                        .remove(&(t, cluster.to_owned(), name));
                }
            }
        }
        self.s.derived.cluster_workloads.remove(cluster);
        self.s
            .persistent
            .certificates
            .cluster_left(cluster, self.at);
        self.changed_clusters.insert(cluster.to_owned());
        self.events.push(Event::ClusterRemoved {
            cluster: cluster.to_owned(),
        });
        Ok(())
    }

    /// A policy approves only models that a workload serves (or `*`): a typo
    /// would otherwise approve nothing, silently.
    fn check_models_served(&self, policy: &TenantPolicy) -> Result<(), Rejection> {
        let served = |model: &str| {
            self.s
                .persistent
                .workloads
                .values()
                .any(|w| w.model == model)
        };
        match policy
            .approved_models
            .iter()
            .find(|m| *m != "*" && !served(m))
        {
            Some(unknown) => Err(Rejection::precondition(
                ObjectKind::Policy,
                &policy.tenant,
                format!(
                    "approved_models: no workload serves model {unknown:?}; apply the workload first"
                ),
            )),
            None => Ok(()),
        }
    }

    /// An MCP server is served by a workload, and no other server takes its rule.
    fn set_mcp_server(&mut self, server: &crate::mcp::McpServer) -> Result<(), Rejection> {
        server.validate()?;
        let precondition = |message: String| {
            Err(Rejection::precondition(
                ObjectKind::McpServer,
                &server.name,
                message,
            ))
        };
        let p = &self.s.persistent;
        if !p.workloads.values().any(|w| w.model == server.service) {
            return precondition(format!(
                "service: no workload serves {:?}; apply the workload first",
                server.service
            ));
        }
        if let Some(other) = p.mcp_servers.values().find(|o| {
            o.name != server.name && o.host == server.host && o.path_prefix == server.path_prefix
        }) {
            return precondition(format!(
                "host {:?} and path prefix {:?} are already MCP server {:?}'s rule",
                server.host, server.path_prefix, other.name
            ));
        }
        self.s
            .persistent
            .mcp_servers
            .insert(server.name.clone(), server.clone());
        self.events.push(Event::McpServerChanged {
            name: server.name.clone(),
        });
        Ok(())
    }

    fn set_tenant(&mut self, tenant: &crate::tenant::Tenant) -> Result<(), Rejection> {
        tenant.validate()?;
        let p = &mut self.s.persistent;
        if let Some((other, id)) = p.tenants.values().find_map(|t| {
            let id = t
                .identities
                .iter()
                .find(|id| t.name != tenant.name && tenant.identities.contains(id))?;
            Some((t.name.clone(), id.clone()))
        }) {
            return Err(Rejection::precondition(
                ObjectKind::Tenant,
                &tenant.name,
                format!(
                    "identity {id:?} already calls as tenant {other:?}; an identity is one tenant's"
                ),
            ));
        }
        p.tenants.insert(tenant.name.clone(), tenant.clone());
        self.events.push(Event::TenantSet {
            tenant: tenant.name.clone(),
        });
        Ok(())
    }

    fn delete_tenant(&mut self, name: &str) -> Result<(), Rejection> {
        let p = &mut self.s.persistent;
        if p.tenants.remove(name).is_none() {
            return Err(not_found(ObjectKind::Tenant, name));
        }
        p.api_keys.retain(|_, k| k.tenant != name);
        self.events.push(Event::TenantDeleted {
            tenant: name.to_owned(),
        });
        Ok(())
    }

    fn create_api_key(&mut self, key: &crate::tenant::ApiKey) -> Result<(), Rejection> {
        key.validate()?;
        let at = self.at;
        let p = &mut self.s.persistent;
        if !p.tenants.contains_key(&key.tenant) {
            return Err(not_found(ObjectKind::Tenant, &key.tenant));
        }
        if p.api_keys.contains_key(&key.id) {
            return Err(Rejection::precondition(
                ObjectKind::ApiKey,
                &key.id,
                "an API key with this id exists already; make another".to_owned(),
            ));
        }
        // Keys past their expiry admit nothing: their records go.
        p.api_keys
            .retain(|_, k| k.expires_at.is_none_or(|expires| expires > at));
        p.api_keys.insert(key.id.clone(), key.clone());
        self.events.push(Event::ApiKeyChanged {
            id: key.id.clone(),
            tenant: key.tenant.clone(),
        });
        Ok(())
    }

    fn revoke_api_key(&mut self, id: &str) -> Result<(), Rejection> {
        let key = self
            .s
            .persistent
            .api_keys
            .get_mut(id)
            .ok_or_else(|| not_found(ObjectKind::ApiKey, id))?;
        if !key.revoked {
            key.revoked = true;
            let tenant = key.tenant.clone();
            self.events.push(Event::ApiKeyChanged {
                id: id.to_owned(),
                tenant,
            });
        }
        Ok(())
    }

    fn mark_unreachable(&mut self, cluster: &str) -> Result<(), Rejection> {
        let c = self.cluster(cluster)?;
        if c.state == ClusterState::Unreachable {
            return Ok(());
        }
        if self.at < c.lease_expires_at {
            return Err(Rejection::precondition(
                ObjectKind::Cluster,
                cluster,
                format!(
                    "its lease runs until {}; it is not expired at {}",
                    c.lease_expires_at, self.at
                ),
            ));
        }
        let victims: Vec<(String, ReplicaId)> = self
            .s
            .derived
            .cluster_workloads
            .get(cluster)
            .into_iter()
            .flatten()
            .filter_map(|w| self.s.persistent.placements.get(w).map(|p| (w, p)))
            .flat_map(|(w, p)| {
                p.replicas
                    .values()
                    .filter(|r| r.cluster == cluster)
                    .map(|r| (w.clone(), r.id))
            })
            .collect();
        for (w, id) in victims {
            self.remove_replica(&w, id, Some(LossCause::ClusterUnreachable));
        }
        if let Some(c) = self.s.persistent.clusters.get_mut(cluster) {
            c.state = ClusterState::Unreachable;
        }
        self.events.push(Event::ClusterStateChanged {
            cluster: cluster.to_owned(),
            state: ClusterState::Unreachable,
        });
        self.changed_clusters.insert(cluster.to_owned());
        Ok(())
    }

    fn apply_workload(&mut self, w: &Workload) -> Result<(), Rejection> {
        w.validate()?;
        if let Some(p) = self.s.persistent.placements.get(&w.name)
            && p.model != w.model
            && !p.replicas.is_empty()
        {
            return Err(Rejection::Invalid(ValidationError::new(
                ObjectKind::Workload,
                &w.name,
                "model",
                format!(
                    "cannot change from {} to {} while replicas run; delete the workload and apply it anew",
                    p.model, w.model
                ),
            )));
        }
        if let Some(old) = self.s.persistent.workloads.get(&w.name)
            && old.model != w.model
            && let Some(set) = self.s.derived.model_workloads.get_mut(&old.model)
        {
            set.remove(&w.name);
            self.changed_models.insert(old.model.clone());
        }
        self.s
            .persistent
            .workloads
            .insert(w.name.clone(), w.clone());
        self.s
            .derived
            .model_workloads
            .entry(w.model.clone())
            .or_default()
            .insert(w.name.clone());
        let placement = self
            .s
            .persistent
            .placements
            .entry(w.name.clone())
            .or_default();
        placement.model = w.model.clone();
        if placement.deleted {
            placement.deleted = false;
            self.changed_placements.insert(w.name.clone());
        }
        self.changed_workloads.insert(w.name.clone());
        self.changed_models.insert(w.model.clone());
        self.events.push(Event::WorkloadApplied {
            workload: w.name.clone(),
        });
        Ok(())
    }

    fn delete_workload(&mut self, name: &str) -> Result<(), Rejection> {
        if !self.s.persistent.workloads.contains_key(name) {
            return Err(not_found(ObjectKind::Workload, name));
        }
        self.s.persistent.workloads.remove(name);
        let drain_deadline = self.at + self.s.persistent.settings.drain_deadline;
        let mut events = Vec::new();
        let mut gone = Vec::new();
        if let Some(p) = self.s.persistent.placements.get_mut(name) {
            p.deleted = true;
            // Moves stop: their targets go, their sources drain with everything else.
            for m in std::mem::take(&mut p.migrations) {
                gone.push(m.target);
                self.s.derived.migrations -= 1;
                events.push(Event::MigrationFinished {
                    workload: name.to_owned(),
                    source: m.source,
                    target: m.target,
                    outcome: MigrationOutcome::RolledBack,
                });
            }
            for r in p.replicas.values_mut() {
                if gone.contains(&r.id) {
                    continue;
                }
                if r.phase == Phase::Starting {
                    gone.push(r.id);
                } else if r.phase == Phase::Ready {
                    r.phase = Phase::Draining;
                    r.phase_since = self.at;
                    r.drain_deadline = Some(drain_deadline);
                    events.push(Event::ReplicaPhaseChanged {
                        workload: name.to_owned(),
                        replica: r.id,
                        cluster: r.cluster.clone(),
                        phase: Phase::Draining,
                    });
                }
            }
        }
        self.events.extend(events);
        for id in gone {
            self.remove_replica(name, id, None);
        }
        self.changed_placements.insert(name.to_owned());
        self.changed_workloads.insert(name.to_owned());
        self.cleanup_placement(name);
        self.events.push(Event::WorkloadDeleted {
            workload: name.to_owned(),
        });
        Ok(())
    }

    fn start_replica(
        &mut self,
        workload: &str,
        cluster: &str,
        devices: &[DeviceRef],
        replaces: Option<(ReplicaId, MoveReason)>,
    ) -> Result<(), Rejection> {
        let w = self
            .s
            .persistent
            .workloads
            .get(workload)
            .ok_or_else(|| not_found(ObjectKind::Workload, workload))?;
        let c = self.cluster(cluster)?;
        let refuse = |reason: String| {
            Err(Rejection::precondition(
                ObjectKind::Workload,
                workload,
                reason,
            ))
        };
        if !c.schedulable() {
            return refuse(format!(
                "cluster {cluster} is {} and takes no new replicas",
                c.state.as_str()
            ));
        }
        if !w.allows(cluster, c.region()) {
            return refuse(format!("its constraints do not allow cluster {cluster}"));
        }
        if devices.len() != w.gpu.count as usize {
            return Err(Rejection::Invalid(ValidationError::new(
                ObjectKind::Replica,
                workload,
                "devices",
                format!(
                    "{} given; the workload needs {} per replica",
                    devices.len(),
                    w.gpu.count
                ),
            )));
        }
        let node = &devices[0].node;
        let mut seen = BTreeSet::new();
        for at in devices {
            if at.node != *node {
                return refuse(format!(
                    "devices span nodes {node} and {}; a replica's GPUs share one node",
                    at.node
                ));
            }
            if !seen.insert(&at.uuid) {
                return refuse(format!("device {} is listed twice", at.uuid));
            }
            let Some(d) = c.inventory.device(at) else {
                return refuse(format!(
                    "device {}/{} is not in cluster {cluster}",
                    at.node, at.uuid
                ));
            };
            if !d.is_free() {
                return refuse(format!(
                    "device {}/{} in cluster {cluster} is not free",
                    at.node, at.uuid
                ));
            }
            if !w.gpu.accepts(&d.report) {
                return refuse(format!(
                    "device {}/{} ({}) does not fit its GPU need",
                    at.node, at.uuid, d.report.model
                ));
            }
        }
        let p = self.s.persistent.placements.get(workload);
        let migrations = p.map_or(0, |p| p.migrations.len() as u32);
        if w.constraints.spread_across_clusters
            && p.is_some_and(|p| {
                p.replicas.values().any(|r| {
                    r.is_active() && r.cluster == cluster && Some(r.id) != replaces.map(|x| x.0)
                })
            })
        {
            return refuse(format!(
                "it spreads across clusters and already runs in {cluster}"
            ));
        }
        match replaces {
            None => {
                let active = p.map_or(0, |p| p.active_count()).saturating_sub(migrations);
                if active >= w.replicas.max {
                    return refuse(format!(
                        "it already has {active} of at most {} replicas",
                        w.replicas.max
                    ));
                }
            }
            Some((source, _)) => {
                let Some(r) = p.and_then(|p| p.replicas.get(&source)) else {
                    return Err(not_found(
                        ObjectKind::Replica,
                        format!("{workload}/{source}"),
                    ));
                };
                if r.phase != Phase::Ready {
                    return refuse(format!(
                        "replica {source} is {} and cannot be moved",
                        r.phase.as_str()
                    ));
                }
                if p.and_then(|p| p.migration_of(source)).is_some() {
                    return refuse(format!("replica {source} is already moving"));
                }
            }
        }

        // Checked: allocate.
        let id = ReplicaId(self.s.persistent.next_replica_id);
        self.s.persistent.next_replica_id += 1;
        if let Some(c) = self.s.persistent.clusters.get_mut(cluster) {
            for at in devices {
                if let Some(d) = c.inventory.device_mut(at) {
                    d.allocated_to = Some(id);
                }
            }
        }
        let at = self.at;
        let placement = self
            .s
            .persistent
            .placements
            .entry(workload.to_owned())
            .or_default();
        placement.replicas.insert(
            id,
            Replica {
                id,
                cluster: cluster.to_owned(),
                devices: devices.to_vec(),
                phase: Phase::Starting,
                phase_since: at,
                placed_at: at,
                drain_deadline: None,
                evicted: false,
                preempted_for: None,
                endpoint: None,
            },
        );
        self.events.push(Event::ReplicaStarted {
            workload: workload.to_owned(),
            replica: id,
            cluster: cluster.to_owned(),
        });
        if let Some((source, reason)) = replaces {
            placement.migrations.push(Migration {
                source,
                target: id,
                reason,
                started_at: at,
                target_weight: 0,
                last_step_at: None,
            });
            self.s.derived.migrations += 1;
            let from = placement
                .replicas
                .get(&source)
                .map(|r| r.cluster.clone())
                .unwrap_or_default();
            self.events.push(Event::MigrationStarted {
                workload: workload.to_owned(),
                source,
                target: id,
                from,
                to: cluster.to_owned(),
                reason,
            });
        }
        self.s
            .derived
            .cluster_workloads
            .entry(cluster.to_owned())
            .or_default()
            .insert(workload.to_owned());
        self.changed_clusters.insert(cluster.to_owned());
        self.changed_placements.insert(workload.to_owned());
        Ok(())
    }

    fn replica(&self, workload: &str, id: ReplicaId) -> Result<&Replica, Rejection> {
        self.s
            .persistent
            .placements
            .get(workload)
            .and_then(|p| p.replicas.get(&id))
            .ok_or_else(|| not_found(ObjectKind::Replica, format!("{workload}/{id}")))
    }

    fn set_replica_phase(
        &mut self,
        workload: &str,
        id: ReplicaId,
        phase: Phase,
        endpoint: Option<&str>,
    ) -> Result<(), Rejection> {
        if let Some(e) = endpoint {
            crate::placement::validate_endpoint(workload, e)?;
        }
        let r = self.replica(workload, id)?;
        if let Some(why) = endpoint.and_then(|e| {
            let ranges = self
                .s
                .cluster(&r.cluster)
                .map(|c| &c.spec.endpoint_ranges)?;
            crate::cluster::endpoint_outside_ranges(e, ranges)
        }) {
            return Err(Rejection::Precondition {
                kind: ObjectKind::Replica,
                name: format!("{workload}/{}", id.0),
                reason: format!("{why} (cluster {:?})", r.cluster),
            });
        }
        // The endpoint is kept while the replica lives; a report without one leaves
        // the known one in place.
        let new_endpoint = endpoint.filter(|e| r.endpoint.as_deref() != Some(*e));
        if r.phase == phase {
            if let Some(e) = new_endpoint
                && phase != Phase::Gone
            {
                if let Some(r) = self
                    .s
                    .persistent
                    .placements
                    .get_mut(workload)
                    .and_then(|p| p.replicas.get_mut(&id))
                {
                    r.endpoint = Some(e.to_owned());
                }
                self.changed_placements.insert(workload.to_owned());
            }
            return Ok(());
        }
        match (r.phase, phase) {
            (Phase::Starting, Phase::Ready) => {
                let at = self.at;
                let cluster = r.cluster.clone();
                if let Some(r) = self
                    .s
                    .persistent
                    .placements
                    .get_mut(workload)
                    .and_then(|p| p.replicas.get_mut(&id))
                {
                    r.phase = Phase::Ready;
                    r.phase_since = at;
                    if let Some(e) = new_endpoint {
                        r.endpoint = Some(e.to_owned());
                    }
                }
                self.events.push(Event::ReplicaPhaseChanged {
                    workload: workload.to_owned(),
                    replica: id,
                    cluster,
                    phase,
                });
                self.changed_placements.insert(workload.to_owned());
                Ok(())
            }
            (_, Phase::Gone) => {
                let cause = (r.phase != Phase::Draining).then_some(LossCause::Exited);
                self.remove_replica(workload, id, cause);
                self.cleanup_placement(workload);
                Ok(())
            }
            (from, to) => Err(Rejection::precondition(
                ObjectKind::Replica,
                format!("{workload}/{id}"),
                format!("cannot go from {} to {}", from.as_str(), to.as_str()),
            )),
        }
    }

    fn shift_traffic(
        &mut self,
        workload: &str,
        target: ReplicaId,
        weight: u32,
    ) -> Result<(), Rejection> {
        let name = format!("{workload}/{target}");
        let p = self
            .s
            .persistent
            .placements
            .get(workload)
            .ok_or_else(|| not_found(ObjectKind::Workload, workload))?;
        let Some(m) = p.migrations.iter().find(|m| m.target == target) else {
            return Err(Rejection::precondition(
                ObjectKind::Replica,
                name,
                "is not the target of a move",
            ));
        };
        if p.replicas.get(&target).map(|r| r.phase) != Some(Phase::Ready) {
            return Err(Rejection::precondition(
                ObjectKind::Replica,
                name,
                "is not Ready; traffic shifts only to Ready targets",
            ));
        }
        if weight > 100 || weight <= m.target_weight {
            return Err(Rejection::Invalid(ValidationError::new(
                ObjectKind::Replica,
                name,
                "weight",
                format!(
                    "({weight}) must be above the current {} and at most 100",
                    m.target_weight
                ),
            )));
        }
        let at = self.at;
        if let Some(m) = self
            .s
            .persistent
            .placements
            .get_mut(workload)
            .and_then(|p| p.migrations.iter_mut().find(|m| m.target == target))
        {
            m.target_weight = weight;
            m.last_step_at = Some(at);
        }
        self.events.push(Event::TrafficShifted {
            workload: workload.to_owned(),
            target,
            weight,
        });
        self.changed_placements.insert(workload.to_owned());
        Ok(())
    }

    fn drain_replica(&mut self, workload: &str, id: ReplicaId) -> Result<(), Rejection> {
        let r = self.replica(workload, id)?;
        let name = format!("{workload}/{id}");
        if !r.is_active() {
            return Err(Rejection::precondition(
                ObjectKind::Replica,
                name,
                format!("is {}, not running", r.phase.as_str()),
            ));
        }
        let migration = self
            .s
            .persistent
            .placements
            .get(workload)
            .and_then(|p| p.migration_of(id))
            .cloned();
        if let Some(m) = &migration {
            if m.target == id {
                return Err(Rejection::precondition(
                    ObjectKind::Replica,
                    name,
                    "is the target of a move; abort the move instead",
                ));
            }
            if m.target_weight < 100 {
                return Err(Rejection::precondition(
                    ObjectKind::Replica,
                    name,
                    format!(
                        "is the source of a move whose target carries only {}% of its traffic",
                        m.target_weight
                    ),
                ));
            }
        }
        self.begin_drain(workload, id, None);
        if let Some(m) = migration {
            self.finish_migration(workload, &m, MigrationOutcome::Completed);
        }
        Ok(())
    }

    fn preempt_replica(
        &mut self,
        workload: &str,
        id: ReplicaId,
        for_workload: &str,
    ) -> Result<(), Rejection> {
        let r = self.replica(workload, id)?;
        let name = format!("{workload}/{id}");
        let victim = self
            .s
            .persistent
            .workloads
            .get(workload)
            .map_or(i32::MIN, |w| w.priority);
        let winner = self
            .s
            .persistent
            .workloads
            .get(for_workload)
            .ok_or_else(|| not_found(ObjectKind::Workload, for_workload))?;
        if winner.priority <= victim {
            return Err(Rejection::precondition(
                ObjectKind::Replica,
                name,
                format!(
                    "its priority ({victim}) is not below {for_workload}'s ({})",
                    winner.priority
                ),
            ));
        }
        if !r.is_active() {
            return Err(Rejection::precondition(
                ObjectKind::Replica,
                name,
                format!("is {}, not running", r.phase.as_str()),
            ));
        }
        if self
            .s
            .persistent
            .placements
            .get(workload)
            .and_then(|p| p.migration_of(id))
            .is_some()
        {
            return Err(Rejection::precondition(
                ObjectKind::Replica,
                name,
                "is moving",
            ));
        }
        self.begin_drain(workload, id, Some(for_workload.to_owned()));
        Ok(())
    }

    fn abort_migration(&mut self, workload: &str, target: ReplicaId) -> Result<(), Rejection> {
        let m = self
            .s
            .persistent
            .placements
            .get(workload)
            .and_then(|p| p.migrations.iter().find(|m| m.target == target))
            .cloned()
            .ok_or_else(|| {
                Rejection::precondition(
                    ObjectKind::Replica,
                    format!("{workload}/{target}"),
                    "is not the target of a move",
                )
            })?;
        self.finish_migration(workload, &m, MigrationOutcome::RolledBack);
        self.remove_replica(workload, target, None);
        Ok(())
    }

    fn begin_drain(&mut self, workload: &str, id: ReplicaId, preempted_for: Option<String>) {
        let deadline = self.at + self.s.persistent.settings.drain_deadline;
        let at = self.at;
        if let Some(r) = self
            .s
            .persistent
            .placements
            .get_mut(workload)
            .and_then(|p| p.replicas.get_mut(&id))
        {
            r.phase = Phase::Draining;
            r.phase_since = at;
            r.drain_deadline = Some(deadline);
            r.preempted_for = preempted_for;
            if let Some(pending) = PendingPreemption::of(r) {
                self.s.derived.preemptions.insert(id, pending);
            }
            self.events.push(Event::ReplicaPhaseChanged {
                workload: workload.to_owned(),
                replica: id,
                cluster: r.cluster.clone(),
                phase: Phase::Draining,
            });
        }
        self.changed_placements.insert(workload.to_owned());
    }

    fn finish_migration(&mut self, workload: &str, m: &Migration, outcome: MigrationOutcome) {
        if let Some(p) = self.s.persistent.placements.get_mut(workload) {
            let before = p.migrations.len();
            p.migrations.retain(|x| x.target != m.target);
            self.s.derived.migrations -= before - p.migrations.len();
        }
        self.events.push(Event::MigrationFinished {
            workload: workload.to_owned(),
            source: m.source,
            target: m.target,
            outcome,
        });
        self.changed_placements.insert(workload.to_owned());
    }

    /// Takes a replica out of its placement and frees its devices. `cause` is set
    /// when it was lost rather than drained or rolled back.
    fn remove_replica(&mut self, workload: &str, id: ReplicaId, cause: Option<LossCause>) {
        let Some(r) = self
            .s
            .persistent
            .placements
            .get_mut(workload)
            .and_then(|p| p.replicas.remove(&id))
        else {
            return;
        };
        self.s.derived.preemptions.remove(&id);
        if let Some(m) = self
            .s
            .persistent
            .placements
            .get(workload)
            .and_then(|p| p.migration_of(id))
            .cloned()
        {
            let outcome = if m.source == id {
                MigrationOutcome::SourceLost
            } else {
                MigrationOutcome::RolledBack
            };
            self.finish_migration(workload, &m, outcome);
        }
        if let Some(c) = self.s.persistent.clusters.get_mut(&r.cluster) {
            for at in &r.devices {
                if let Some(d) = c.inventory.device_mut(at)
                    && d.allocated_to == Some(id)
                {
                    d.allocated_to = None;
                }
            }
        }
        let still_there = self
            .s
            .persistent
            .placements
            .get(workload)
            .is_some_and(|p| p.replicas.values().any(|x| x.cluster == r.cluster));
        if !still_there && let Some(set) = self.s.derived.cluster_workloads.get_mut(&r.cluster) {
            set.remove(workload);
            if set.is_empty() {
                self.s.derived.cluster_workloads.remove(&r.cluster);
            }
        }
        self.events.push(match cause {
            Some(cause) => Event::ReplicaLost {
                workload: workload.to_owned(),
                replica: id,
                cluster: r.cluster.clone(),
                cause,
            },
            None => Event::ReplicaPhaseChanged {
                workload: workload.to_owned(),
                replica: id,
                cluster: r.cluster.clone(),
                phase: Phase::Gone,
            },
        });
        self.changed_clusters.insert(r.cluster);
        self.changed_placements.insert(workload.to_owned());
    }

    /// A deleted workload's placement goes with its last replica.
    fn cleanup_placement(&mut self, workload: &str) {
        let done = self
            .s
            .persistent
            .placements
            .get(workload)
            .is_some_and(|p| p.deleted && p.replicas.is_empty());
        if done && let Some(p) = self.s.persistent.placements.remove(workload) {
            self.s.persistent.placement_revisions.removed(workload);
            if let Some(set) = self.s.derived.model_workloads.get_mut(&p.model) {
                set.remove(workload);
                if set.is_empty() {
                    self.s.derived.model_workloads.remove(&p.model);
                }
            }
            self.changed_models.insert(p.model);
            self.changed_workloads.insert(workload.to_owned());
        }
    }

    fn touch_cluster_workloads(&mut self, cluster: &str) {
        if let Some(ws) = self.s.derived.cluster_workloads.get(cluster) {
            self.changed_workloads.extend(ws.iter().cloned());
        }
    }

    fn finish(mut self) -> Vec<Event> {
        for c in std::mem::take(&mut self.changed_clusters) {
            self.s.refresh_free(&c);
        }
        for w in std::mem::take(&mut self.changed_placements) {
            if let Some(p) = self.s.persistent.placements.get_mut(&w) {
                p.generation += 1;
                self.s.persistent.placement_revisions.changed(&w);
                self.changed_models.insert(p.model.clone());
            }
            self.changed_workloads.insert(w);
        }
        for w in std::mem::take(&mut self.changed_workloads) {
            self.s.refresh_attention(&w);
        }
        for model in std::mem::take(&mut self.changed_models) {
            let endpoints = self.s.derive_route(&model);
            if let Some(revision) = self.s.persistent.routes.set(&model, endpoints) {
                self.events.push(Event::RouteChanged { model, revision });
            }
        }
        self.events
    }
}
