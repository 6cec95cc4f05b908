//! Authorization by identity: who called (from the client certificate's SPIFFE id) and
//! whether that role may do this.
//!
//! | role    | reads, watches | its own cluster's reports (capacity, heartbeat, register, load) | admin writes (workloads, policies, cordon/drain/leave) | Raft, membership |
//! |---------|----------------|------------------------------------------------------------------|---------------------------------------------------------|------------------|
//! | admin   | everything     | yes, any cluster                                                 | yes                                                     | membership only  |
//! | server  | everything     | its own cluster only                                             | no                                                      | yes              |
//! | agent   | its own cluster's placements, workloads (the controller renders them), the rest but policies | its own cluster only | no | no |
//! | node    | its own cluster's placements, the rest but workloads and policies | its own cluster's heartbeat, registration and load; capacity of its own node only; phases of replicas on its own node only | no | no |
//! | gateway | its own cluster's placements, tenants, API key records and policies (it enforces them), the rest but workloads | no | no | no |
//!
//! "The rest" is the federation, clusters, routes, settings, GPUs and load. Workload
//! specs carry containers and their environment, which is why gateways may not read
//! them; put credentials in Kubernetes Secrets rather than in a workload's
//! environment all the same.
//!
//! Every role but admin is also judged by the standing of its certificate
//! (`flotilla_core::certificates`): once its cluster has left the federation, it is
//! refused everything, Raft and forwarded writes included.
//!
//! A caller without a certificate may call only `flotilla.v1.PkiService/Join` (and the
//! health service); anything else is `UNAUTHENTICATED`. With plaintext transport there
//! are no identities and no authorization (loopback development only).
//!
//! Writes a follower forwards to the leader travel as `flotilla.registry.v1` calls
//! from the follower's server identity: the edge server authorized the original caller.
//!
//! The internal `flotilla.registry.v1` service is not for clients: its `Propose`
//! (core commands as JSON) carries the writes servers forward to the leader and
//! is refused to every other role; its whole-registry `Read`, `Status` and
//! membership calls are for servers and admins' tools. Admins write, and agents,
//! controllers and gateways do everything, through `flotilla.v1`: typed RPCs, and
//! `PlacementService/WatchPlacements` to follow a cluster's placements.

use flotilla_core::{Command, State};
use flotilla_pki::{Identity, Role};
use tonic::{Request, Status};

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Plaintext transport: no identities, everything allowed.
    Unauthenticated,
    /// mTLS, but the client presented no certificate.
    Anonymous,
    Member(Identity),
}

impl Caller {
    /// An admin identity (plaintext development servers have none).
    pub(crate) fn is_admin(&self) -> bool {
        matches!(self, Caller::Member(id) if id.role == Role::Admin)
    }

    /// The caller when it acts within one cluster (an agent, node agent or
    /// gateway): shown only that cluster's replicas. `None` for servers (which
    /// see the whole registry), admins, and unauthenticated callers.
    pub(crate) fn cluster_member(&self) -> Option<&Identity> {
        match self {
            Caller::Member(id) if matches!(id.role, Role::Agent | Role::Node | Role::Gateway) => {
                Some(id)
            }
            _ => None,
        }
    }

    /// The caller when its certificate stands only while its cluster is in the
    /// federation (`flotilla_core::certificates`): a cluster's members and its
    /// server. `None` for admins, who act for no cluster, and for unauthenticated
    /// callers.
    pub(crate) fn judged_member(&self) -> Option<&Identity> {
        match self {
            Caller::Member(id) if id.role != Role::Admin => Some(id),
            _ => None,
        }
    }

    /// The cluster whose replicas alone this caller is shown (what it
    /// materializes or routes to); `None`: every replica.
    pub(crate) fn replica_scope(&self) -> Option<&str> {
        self.cluster_member().map(|id| id.cluster.as_str())
    }
}

/// `placement` as a caller scoped to `scope`'s replicas sees it: only those, and
/// the moves between them (another cluster's endpoints and devices are none of its
/// business).
pub(crate) fn scoped_placement(
    mut placement: flotilla_proto::v1::Placement,
    scope: Option<&str>,
) -> flotilla_proto::v1::Placement {
    if let Some(cluster) = scope {
        placement.replicas.retain(|r| r.cluster == cluster);
        let shown: std::collections::BTreeSet<u64> =
            placement.replicas.iter().map(|r| r.id).collect();
        placement
            .migrations
            .retain(|m| shown.contains(&m.source) || shown.contains(&m.target));
    }
    placement
}

/// What a call wants to do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action<'a> {
    /// What every member may read: the federation, clusters, routes, settings,
    /// GPUs, load.
    Read,
    /// Workload specs (containers, their environment): admins, servers, and agents
    /// (the cluster's controller renders them). Not gateways.
    ReadWorkloads,
    /// Placements, of one cluster (a name) or of all (empty): an agent or a gateway
    /// reads only its own cluster's.
    ReadPlacements(&'a str),
    /// Governance (tenant policies, tenants, API key records): admins, servers,
    /// and gateways (which enforce them). Not agents.
    ReadGovernance,
    /// Register, heartbeat or report load for this cluster.
    ForCluster(&'a str),
    /// Report GPUs of this cluster: its whole inventory (`None`) or these nodes.
    ReportCapacity {
        cluster: &'a str,
        nodes: Option<&'a [String]>,
    },
    /// Set the phase (and endpoint) of a replica placed on this cluster, on these
    /// devices.
    SetReplicaPhase {
        cluster: &'a str,
        devices: &'a [flotilla_core::DeviceRef],
    },
    Admin,
    /// Raft messages and membership changes between servers.
    Raft,
    /// The registry's internal service (whole-registry reads, status, membership):
    /// servers and admins.
    Internal,
    /// A core command as JSON (`Registry/Propose`): the writes a follower forwards
    /// to the leader. Servers only; everyone else writes through `flotilla.v1`.
    Forward,
}

pub(crate) fn caller<T>(
    request: &Request<T>,
    authenticates: bool,
    federation: &str,
) -> Result<Caller, Status> {
    if !authenticates {
        return Ok(Caller::Unauthenticated);
    }
    let certs = request.peer_certs();
    match flotilla_pki::peer_identity(certs.as_deref().map(|v| v.as_slice())) {
        None => Ok(Caller::Anonymous),
        Some(Err(e)) => Err(Status::unauthenticated(format!(
            "the client certificate names no Flotilla identity: {e}"
        ))),
        Some(Ok(id)) if id.federation != federation => Err(Status::permission_denied(format!(
            "{id} belongs to federation {:?}; this server serves {federation:?}",
            id.federation
        ))),
        Some(Ok(id)) => Ok(Caller::Member(id)),
    }
}

/// Checks `caller` may do `action` in `rpc`; the refusal says who tried what.
/// PERMISSION_DENIED for `id` calling `rpc`, logged with who, what and why: a
/// member probing past its role is what an operator most needs to see.
pub(crate) fn refuse(id: &Identity, rpc: &str, why: &str) -> Status {
    tracing::warn!(identity = %id, rpc, reason = %why, "refused a call past the caller's role");
    Status::permission_denied(format!("{id} may not call {rpc}: {why}"))
}

pub(crate) fn authorize(caller: &Caller, action: Action<'_>, rpc: &str) -> Result<(), Status> {
    let id = match caller {
        Caller::Unauthenticated => return Ok(()),
        Caller::Anonymous => {
            return Err(Status::unauthenticated(format!(
                "{rpc} needs a client certificate from the federation CA (join with a token first)"
            )));
        }
        Caller::Member(id) => id,
    };
    let deny = |why: String| Err(refuse(id, rpc, &why));
    match (action, id.role) {
        (Action::Read, _) => Ok(()),
        (Action::ReadWorkloads, Role::Gateway) => deny(
            "workload specs (containers and their environment) are for admins, servers and the cluster's controller; a gateway reads routes, clusters and its own cluster's placements".into(),
        ),
        (Action::ReadWorkloads, Role::Node) => deny(
            "workload specs (containers and their environment) are for admins, servers and the cluster's controller; a node agent reports its own node".into(),
        ),
        (Action::ReadWorkloads, _) => Ok(()),
        (Action::ReadPlacements(c), Role::Agent | Role::Node | Role::Gateway)
            if c == id.cluster =>
        {
            Ok(())
        }
        (Action::ReadPlacements(c), role @ (Role::Agent | Role::Node | Role::Gateway)) => deny(format!(
            "a {role} reads only its own cluster's placements (cluster {:?}), not {}",
            id.cluster,
            if c.is_empty() {
                "every cluster's".to_owned()
            } else {
                format!("{c:?}'s")
            }
        )),
        (Action::ReadPlacements(_), _) => Ok(()),
        (Action::ReadGovernance, Role::Agent | Role::Node) => deny(
            "tenants, their API keys and policies are for admins, servers and the gateways that enforce them".into(),
        ),
        (Action::ReadGovernance, _) => Ok(()),
        (Action::ForCluster(_), Role::Admin) => Ok(()),
        (Action::ForCluster(c), Role::Server | Role::Agent | Role::Node) if c == id.cluster => {
            Ok(())
        }
        (Action::ForCluster(c), role @ (Role::Server | Role::Agent | Role::Node)) => deny(
            format!("a {role} acts only for its own cluster {:?}, not {c:?}", id.cluster),
        ),
        (Action::ForCluster(_), Role::Gateway) => deny("a gateway only reads and watches".into()),
        (Action::ReportCapacity { cluster, nodes }, role) => {
            if role != Role::Node {
                return authorize(caller, Action::ForCluster(cluster), rpc);
            }
            let node = id.node.as_deref().unwrap_or_default();
            match nodes {
                _ if cluster != id.cluster => deny(format!(
                    "a node agent reports only its own node {node:?} of cluster {:?}, not cluster {cluster:?}",
                    id.cluster
                )),
                None => deny(format!(
                    "a node agent reports its own node {node:?} (scope NODES), not the whole cluster's inventory"
                )),
                Some(nodes) => match nodes.iter().find(|n| n.as_str() != node) {
                    Some(other) => deny(format!(
                        "a node agent reports only its own node {node:?}, not {other:?}"
                    )),
                    None => Ok(()),
                },
            }
        }
        (Action::SetReplicaPhase { cluster, devices }, role) => {
            if role != Role::Node {
                return authorize(caller, Action::ForCluster(cluster), rpc);
            }
            let node = id.node.as_deref().unwrap_or_default();
            if cluster != id.cluster {
                return deny(format!(
                    "the replica runs in cluster {cluster:?}; a node agent of {:?} sets phases only on its own node {node:?}",
                    id.cluster
                ));
            }
            match devices.iter().find(|d| d.node != node) {
                Some(other) => deny(format!(
                    "the replica runs on node {:?}; a node agent sets phases only of replicas on its own node {node:?} (or the cluster's controller does)",
                    other.node
                )),
                None if devices.is_empty() => deny(format!(
                    "the replica holds no devices, so no node runs it; only the cluster's controller sets its phase (this is node {node:?})"
                )),
                None => Ok(()),
            }
        }
        (Action::Admin, Role::Admin) => Ok(()),
        (Action::Admin, role) => deny(format!("only admin identities may; this is a {role}")),
        (Action::Raft, Role::Server) => Ok(()),
        (Action::Raft, role) => deny(format!("only servers speak Raft; this is a {role}")),
        (Action::Forward, Role::Server) => Ok(()),
        (Action::Forward, role) => deny(format!(
            "it carries the writes servers forward to the leader; write through flotilla.v1; this is a {role}"
        )),
        (Action::Internal, Role::Server | Role::Admin) => Ok(()),
        (Action::Internal, role) => deny(format!(
            "the registry's internal service is for servers and admins; this is a {role}"
        )),
    }
}

/// `caller` + `authorize` + `check_standing` in one step: who called, whether
/// its role may do this, and whether its certificate still stands in the
/// registry `sm` holds.
pub(crate) fn check<T>(
    request: &Request<T>,
    authenticates: bool,
    federation: &str,
    action: Action<'_>,
    rpc: &str,
    sm: &crate::store::StateMachineStore,
) -> Result<Caller, Status> {
    let c = caller(request, authenticates, federation)?;
    authorize(&c, action, rpc)?;
    if c.judged_member().is_some() {
        // Read under the lock, not through a copy of the state: this runs on every
        // Raft message, and a reference held across an apply makes it copy the state.
        sm.with_state(|state| check_standing(&c, request, state.certificates(), rpc))?;
    }
    Ok(c)
}

/// Refuses a caller whose certificate no longer stands: revoked when its cluster
/// left the federation (`flotilla_core::certificates`). UNAUTHENTICATED, since the
/// certificate itself is what is refused, and logged with who and what. A
/// cluster's server is judged as its other members are: once the cluster has
/// left, its server neither speaks Raft nor forwards writes.
pub(crate) fn check_standing<T>(
    caller: &Caller,
    request: &Request<T>,
    certificates: &flotilla_core::Certificates,
    rpc: &str,
) -> Result<(), Status> {
    let Some(id) = caller.judged_member() else {
        return Ok(());
    };
    if !certificates.judges(&id.cluster) {
        return Ok(());
    }
    let holder = CertificateHolder::of(caller, request).ok_or_else(|| {
        Status::unauthenticated(format!(
            "{rpc}: the client certificate is missing or does not parse"
        ))
    })?;
    holder.revoked(certificates, rpc).map_or(Ok(()), Err)
}

/// A member of a cluster, by the certificate it called with: what a long-lived
/// call (a watch) judges again after each change, so that it ends when the
/// certificate is revoked.
#[derive(Debug, Clone)]
pub(crate) struct CertificateHolder {
    pub(crate) identity: Identity,
    pub(crate) serial: String,
}

impl CertificateHolder {
    /// The holder of `request`'s client certificate, for the callers judged by
    /// standing (see [`check_standing`]); `None` for the others.
    pub(crate) fn of<T>(caller: &Caller, request: &Request<T>) -> Option<Self> {
        let id = caller.judged_member()?;
        let certs = request.peer_certs()?;
        let serial = flotilla_pki::CertInfo::parse(certs.first()?)
            .ok()?
            .serial_hex();
        Some(CertificateHolder {
            identity: id.clone(),
            serial,
        })
    }

    /// The holder of a certificate a peer presented (a server answering this
    /// server's Raft client); `None` when it does not parse.
    pub(crate) fn of_cert(cert: &rustls_pki_types::CertificateDer<'_>) -> Option<Self> {
        Some(CertificateHolder {
            identity: Identity::from_cert(cert).ok()?,
            serial: flotilla_pki::CertInfo::parse(cert).ok()?.serial_hex(),
        })
    }

    /// UNAUTHENTICATED, logged, once the certificate no longer stands.
    pub(crate) fn revoked(
        &self,
        certificates: &flotilla_core::Certificates,
        rpc: &str,
    ) -> Option<Status> {
        let id = &self.identity;
        let revoked = certificates.standing(&id.cluster, &self.serial).err()?;
        tracing::warn!(identity = %id, rpc, reason = %revoked, "refused a revoked certificate");
        Some(Status::unauthenticated(format!(
            "{id} may not call {rpc}: {revoked}"
        )))
    }
}

/// What a core command proposed by an agent asks for: the agent's own commands act
/// for the cluster they name (a replica's phase for the cluster the replica is placed
/// on, as `state` says); anything else is an admin write. `Err` when the replica is
/// not known here, so its cluster cannot be checked (a follower a little behind the
/// leader: the agent tries again on its next pass).
pub(crate) fn agent_command_action<'a>(
    command: &'a Command,
    state: &'a State,
) -> Result<Action<'a>, Status> {
    match command {
        Command::RegisterCluster { spec } => Ok(Action::ForCluster(&spec.name)),
        Command::Heartbeat { cluster } => Ok(Action::ForCluster(cluster)),
        Command::SetReplicaPhase {
            workload, replica, ..
        } => state
            .placement(workload)
            .and_then(|p| p.replicas.get(replica))
            .map(|r| Action::SetReplicaPhase {
                cluster: r.cluster.as_str(),
                devices: &r.devices,
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "replica {replica} of workload {workload:?} is not placed (as this server knows); its phase cannot be set"
                ))
            }),
        _ => Ok(Action::Admin),
    }
}
