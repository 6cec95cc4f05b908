//! Authorization by identity: who called (from the client certificate's SPIFFE id) and
//! whether that role may do this.
//!
//! | role    | reads, watches | its own cluster's reports (capacity, heartbeat, register, load) | admin writes (workloads, policies, cordon/drain/leave) | Raft, membership |
//! |---------|----------------|------------------------------------------------------------------|---------------------------------------------------------|------------------|
//! | admin   | everything     | yes, any cluster                                                 | yes                                                     | membership only  |
//! | server  | everything     | its own cluster only                                             | no                                                      | yes              |
//! | agent   | its own cluster's placements, workloads (the controller renders them), the rest but policies | its own cluster only | no | no |
//! | gateway | its own cluster's placements, policies (it enforces them), the rest but workloads | no | no | no |
//!
//! "The rest" is the federation, clusters, routes, settings, GPUs and load. Workload
//! specs carry containers and their environment, which is why gateways may not read
//! them; put credentials in Kubernetes Secrets rather than in a workload's
//! environment all the same.
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
    /// Tenant policies: admins, servers, and gateways (which enforce them). Not
    /// agents.
    ReadPolicies,
    /// Report or register for this cluster.
    ForCluster(&'a str),
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
    let deny = |why: String| {
        Err(Status::permission_denied(format!(
            "{id} may not call {rpc}: {why}"
        )))
    };
    match (action, id.role) {
        (Action::Read, _) => Ok(()),
        (Action::ReadWorkloads, Role::Gateway) => deny(
            "workload specs (containers and their environment) are for admins, servers and the cluster's controller; a gateway reads routes, clusters and its own cluster's placements".into(),
        ),
        (Action::ReadWorkloads, _) => Ok(()),
        (Action::ReadPlacements(c), Role::Agent | Role::Gateway) if c == id.cluster => Ok(()),
        (Action::ReadPlacements(c), role @ (Role::Agent | Role::Gateway)) => deny(format!(
            "a {role} reads only its own cluster's placements (cluster {:?}), not {}",
            id.cluster,
            if c.is_empty() {
                "every cluster's".to_owned()
            } else {
                format!("{c:?}'s")
            }
        )),
        (Action::ReadPlacements(_), _) => Ok(()),
        (Action::ReadPolicies, Role::Agent) => deny(
            "tenant policies are for admins, servers and the gateways that enforce them".into(),
        ),
        (Action::ReadPolicies, _) => Ok(()),
        (Action::ForCluster(_), Role::Admin) => Ok(()),
        (Action::ForCluster(c), Role::Server | Role::Agent) if c == id.cluster => Ok(()),
        (Action::ForCluster(c), Role::Server | Role::Agent) => deny(format!(
            "a {} acts only for its own cluster {:?}, not {c:?}",
            id.role, id.cluster
        )),
        (Action::ForCluster(_), Role::Gateway) => deny("a gateway only reads and watches".into()),
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

/// `caller` + `authorize` in one step.
pub(crate) fn check<T>(
    request: &Request<T>,
    authenticates: bool,
    federation: &str,
    action: Action<'_>,
    rpc: &str,
) -> Result<Caller, Status> {
    let c = caller(request, authenticates, federation)?;
    authorize(&c, action, rpc)?;
    Ok(c)
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
        Command::Heartbeat { cluster }
        | Command::ReportCapacity { cluster, .. }
        | Command::ReportNodes { cluster, .. } => Ok(Action::ForCluster(cluster)),
        Command::SetReplicaPhase {
            workload, replica, ..
        } => state
            .placement(workload)
            .and_then(|p| p.replicas.get(replica))
            .map(|r| Action::ForCluster(r.cluster.as_str()))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "replica {replica} of workload {workload:?} is not placed (as this server knows); its phase cannot be set"
                ))
            }),
        _ => Ok(Action::Admin),
    }
}
