//! `flotilla.registry.v1.Registry`: the small client-facing service. Any member
//! accepts writes and linearizable reads; a follower forwards them to the leader and
//! returns the leader's answer. With no leader known the answer is `UNAVAILABLE` with
//! a retry hint (`retry-after-ms` metadata).

use crate::authz::Caller;
use crate::network::FaultInjector;
use crate::store::StateMachineStore;
use crate::types::{ForwardToLeader, Node, NodeId, Outcome, Raft, RaftError};
use flotilla_client::TransportSecurity;
use flotilla_core::Command;
use flotilla_proto::registry::v1::{
    self as pb, Consistency, Member, MembershipReply, ObjectKind, ProposeReply, ProposeRequest,
    ReadReply, ReadRequest, StatusReply, StatusRequest, registry_client::RegistryClient,
    registry_server,
};
use openraft::ChangeMembers;
use openraft::error::ClientWriteError;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Marks a request a member forwarded, so that it is forwarded at most once.
pub(crate) const FORWARDED: &str = "x-flotilla-forwarded-by";
/// How long a client should wait before retrying when no leader is known.
pub use flotilla_client::RETRY_AFTER;

/// Registry clients to other members, one channel per address.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    security: TransportSecurity,
    connect_timeout: Duration,
    max_message_bytes: usize,
    me: NodeId,
    faults: Option<FaultInjector>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Forwarder {
    pub(crate) fn new(
        security: TransportSecurity,
        connect_timeout: Duration,
        max_message_bytes: usize,
        me: NodeId,
        faults: Option<FaultInjector>,
    ) -> Self {
        Forwarder {
            security,
            connect_timeout,
            max_message_bytes,
            me,
            faults,
            channels: Default::default(),
        }
    }

    pub(crate) fn client(&self, addr: &str) -> Result<RegistryClient<Channel>, Status> {
        let channel = {
            let mut channels = match self.channels.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let c = self
                        .security
                        .channel(addr, self.connect_timeout)
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    channels.insert(addr.to_owned(), c.clone());
                    c
                }
            }
        };
        Ok(RegistryClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}

#[derive(Clone)]
pub(crate) struct RegistryApi {
    pub(crate) raft: Raft,
    pub(crate) proposer: crate::propose::Proposer,
    pub(crate) sm: StateMachineStore,
    pub(crate) node_id: NodeId,
    pub(crate) federation: String,
    pub(crate) forwarder: Forwarder,
    pub(crate) max_voters: usize,
    pub(crate) log_policy: LogPolicy,
    pub(crate) retry_after: Duration,
    /// mTLS: callers have identities and are authorized (servers and admins only).
    pub(crate) authenticates: bool,
}

impl std::fmt::Debug for RegistryApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryApi")
            .field("node_id", &self.node_id)
            .field("federation", &self.federation)
            .finish()
    }
}

/// When a server snapshots its state and purges its log (its configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogPolicy {
    pub(crate) snapshot_after_entries: u64,
    pub(crate) entries_kept_after_snapshot: u64,
}

/// Where a server's log stands: what status answers show of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogStatus {
    /// The index of the latest snapshot (0: none yet).
    pub(crate) last_snapshot_index: u64,
    /// Entries in the log now: those after the last purge.
    pub(crate) log_entries: u64,
    pub(crate) policy: LogPolicy,
}

impl RegistryApi {
    /// This server's log and snapshot, from Raft's metrics.
    pub(crate) fn log_status(&self) -> LogStatus {
        let m = self.raft.metrics().borrow().clone();
        let log_entries = match (m.last_log_index, m.purged) {
            (Some(last), Some(purged)) => last.saturating_sub(purged.index),
            // Nothing purged yet: the log starts at index 0.
            (Some(last), None) => last + 1,
            (None, _) => 0,
        };
        LogStatus {
            last_snapshot_index: m.snapshot.map(|l| l.index).unwrap_or_default(),
            log_entries,
            policy: self.log_policy,
        }
    }
}

/// Where an internal write was handled.
enum Handled<X, R> {
    /// Here, as the leader: what the write returned.
    Here(X),
    /// On the leader, whose reply is the answer.
    ByLeader(Response<R>),
}

/// Where a request that this member cannot serve should go.
pub(crate) enum Redirect {
    Leader(NodeId, String),
    NoLeader,
}

pub(crate) fn redirect(f: &ForwardToLeader) -> Redirect {
    match (f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => Redirect::Leader(id, node.addr.clone()),
        _ => Redirect::NoLeader,
    }
}

impl RegistryApi {
    pub(crate) fn no_leader(&self) -> Status {
        flotilla_client::errors::retry_later(
            flotilla_client::errors::reason::NO_LEADER,
            self.retry_after,
            format!(
                "no Raft leader is known in federation {:?} (election in progress or no quorum); retry in about {}ms",
                self.federation,
                self.retry_after.as_millis()
            ),
        )
    }

    /// Checks that a request may be forwarded and names the leader to send it to.
    pub(crate) fn forward_to<T>(
        &self,
        request: &Request<T>,
        to: Redirect,
    ) -> Result<String, Status> {
        match to {
            Redirect::NoLeader => Err(self.no_leader()),
            Redirect::Leader(id, _) if id == self.node_id => Err(self.no_leader()),
            Redirect::Leader(_, _) if request.metadata().contains_key(FORWARDED) => {
                // The member that sent it here thought this one leads; leadership moved.
                Err(self.no_leader())
            }
            Redirect::Leader(id, _)
                if self
                    .forwarder
                    .faults
                    .as_ref()
                    .is_some_and(|f| f.is_blocked(self.forwarder.me, id)) =>
            {
                Err(Status::unavailable(format!(
                    "leader {id} is unreachable from node {} (link cut by the fault injector)",
                    self.node_id
                )))
            }
            Redirect::Leader(_, addr) => Ok(addr),
        }
    }

    pub(crate) fn forwarded<T>(&self, body: T) -> Request<T> {
        let mut req = Request::new(body);
        if let Ok(v) = self.node_id.to_string().parse() {
            req.metadata_mut().insert(FORWARDED, v);
        }
        req
    }

    pub(crate) fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn membership_reply(&self, log_index: u64) -> Response<MembershipReply> {
        Response::new(MembershipReply {
            log_index,
            members: self.members(),
        })
    }

    /// Runs a membership change on the leader, retrying while another is in progress
    /// (two servers joining at once, or a join racing a promotion).
    async fn retry_in_progress<F, Fut>(
        &self,
        mut op: F,
    ) -> Result<u64, RaftError<crate::types::ClientWriteError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
                Output = Result<
                    openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
                    RaftError<crate::types::ClientWriteError>,
                >,
            >,
    {
        let mut tries = 0;
        loop {
            match op().await {
                Ok(r) => return Ok(r.log_id.index),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn change(
        &self,
        changes: ChangeMembers<NodeId, Node>,
        retain: bool,
    ) -> Result<u64, RaftError<crate::types::ClientWriteError>> {
        self.retry_in_progress(|| self.raft.change_membership(changes.clone(), retain))
            .await
    }

    async fn add_learner_node(
        &self,
        id: NodeId,
        addr: &str,
    ) -> Result<u64, RaftError<crate::types::ClientWriteError>> {
        self.retry_in_progress(|| self.raft.add_learner(id, Node::new(addr), true))
            .await
    }

    /// Takes `node_id` out of the membership, here on the leader, and keeps the
    /// voters odd; `Ok(false)` when it is no member (any more).
    pub(crate) async fn remove_here(
        &self,
        node_id: NodeId,
    ) -> Result<bool, RaftError<crate::types::ClientWriteError>> {
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.node_id == node_id) else {
            return Ok(false);
        };
        self.change(removal(member), false).await?;
        self.balance_voters().await?;
        Ok(true)
    }

    /// Keeps an odd number of voters: promotes learners up to [`voter_target`], or,
    /// when a voter left and no learner can take its place, turns one voter (never
    /// this leader) back into a learner. An even count buys nothing: 2 voters survive
    /// no loss, as 1 does, and 4 survive one, as 3 do, while every write waits for
    /// one more fsync.
    async fn balance_voters(&self) -> Result<(), RaftError<crate::types::ClientWriteError>> {
        let members = self.members();
        match voter_change(&members, self.max_voters, self.node_id) {
            Some(VoterChange::Promote(ids)) => {
                self.change(ChangeMembers::AddVoterIds(ids), true).await?;
            }
            Some(VoterChange::Demote(id)) => {
                self.change(ChangeMembers::RemoveVoters([id].into()), true)
                    .await?;
            }
            None => {}
        }
        Ok(())
    }

    /// Authorizes an internal RPC's caller for `action`.
    fn check<T>(
        &self,
        request: &Request<T>,
        action: crate::authz::Action<'_>,
        rpc: &str,
    ) -> Result<Caller, Status> {
        crate::authz::check(
            request,
            self.authenticates,
            &self.federation,
            action,
            rpc,
            &self.sm,
        )
    }

    /// Sends a request this member cannot serve to the leader `to` names (at most
    /// once: see `forward_to`) and answers with the leader's reply.
    async fn forward<T, R, F, Fut>(
        &self,
        request: &Request<T>,
        to: &ForwardToLeader,
        send: F,
    ) -> Result<Response<R>, Status>
    where
        T: Clone,
        F: FnOnce(RegistryClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        let addr = self.forward_to(request, redirect(to))?;
        let client = self.forwarder.client(&addr)?;
        send(client, self.forwarded(request.get_ref().clone())).await
    }

    /// What every internal write does with its outcome here: a follower forwards the
    /// request to the leader with `send`; other failures become a status.
    async fn here_or_leader<T, X, R, F, Fut>(
        &self,
        request: &Request<T>,
        written: Result<X, RaftError<crate::types::ClientWriteError>>,
        send: F,
    ) -> Result<Handled<X, R>, Status>
    where
        T: Clone,
        F: FnOnce(RegistryClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        match written {
            Ok(x) => Ok(Handled::Here(x)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.forward(request, &f, send).await.map(Handled::ByLeader)
            }
            Err(e) => Err(self.write_status(e)),
        }
    }

    /// The newest log index this member knows.
    fn last_log_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or_default()
    }

    pub(crate) fn write_status(&self, e: RaftError<crate::types::ClientWriteError>) -> Status {
        match e {
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Status::failed_precondition(format!("membership change refused: {e}"))
            }
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => self.no_leader(),
            RaftError::Fatal(f) => Status::unavailable(format!(
                "this server's Raft has stopped ({f}); use another member"
            )),
        }
    }
}

fn propose_reply(index: u64, term: u64, outcome: Outcome) -> Result<ProposeReply, Status> {
    let mut reply = ProposeReply {
        log_index: index,
        term,
        ..Default::default()
    };
    match outcome {
        Outcome::Applied(events) => {
            reply.applied = true;
            reply.events_json = serde_json::to_string(&events)
                .map_err(|e| Status::internal(format!("encode events: {e}")))?;
        }
        Outcome::Rejected(r) => {
            reply.rejection_message = r.to_string();
            reply.rejection_json = serde_json::to_string(&r)
                .map_err(|e| Status::internal(format!("encode rejection: {e}")))?;
        }
        Outcome::Internal => reply.applied = true,
    }
    Ok(reply)
}

fn read_object(
    state: &flotilla_core::State,
    kind: ObjectKind,
    name: &str,
) -> Result<Option<Vec<u8>>, Status> {
    fn json<T: serde::Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, Status> {
        v.map(|v| serde_json::to_vec(v).map_err(|e| Status::internal(format!("encode: {e}"))))
            .transpose()
    }
    match kind {
        ObjectKind::Snapshot => Ok(Some(state.to_snapshot())),
        ObjectKind::Cluster => json(state.cluster(name)),
        ObjectKind::Workload => json(state.workload(name)),
        ObjectKind::Placement => json(state.placement(name)),
        ObjectKind::Routes => json(Some(state.routes())),
        ObjectKind::Settings => json(Some(state.settings())),
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryApi {
    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        // Decided before the body is parsed: only servers get that far.
        self.check(
            &request,
            crate::authz::Action::Forward,
            "flotilla.registry.v1.Registry/Propose",
        )?;
        let command: Command =
            serde_json::from_str(&request.get_ref().command_json).map_err(|e| {
                Status::invalid_argument(format!("command_json is not a flotilla command: {e}"))
            })?;
        let written = self.proposer.propose(command).await;
        let send = |mut c: RegistryClient<Channel>, r| async move { c.propose(r).await };
        match self.here_or_leader(&request, written, send).await? {
            Handled::Here(resp) => Ok(Response::new(propose_reply(
                resp.log_id.index,
                resp.log_id.leader_id.term,
                resp.data,
            )?)),
            Handled::ByLeader(reply) => Ok(reply),
        }
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        self.check(
            &request,
            // The whole registry at once: servers and admins; everyone else reads
            // through flotilla.v1, a page or a watch at a time.
            crate::authz::Action::Internal,
            "flotilla.registry.v1.Registry/Read",
        )?;
        let body = request.get_ref();
        let kind = ObjectKind::try_from(body.kind)
            .map_err(|_| Status::invalid_argument(format!("unknown object kind {}", body.kind)))?;
        let consistency = Consistency::try_from(body.consistency).map_err(|_| {
            Status::invalid_argument(format!("unknown consistency {}", body.consistency))
        })?;
        if consistency == Consistency::Linearizable {
            match self.raft.ensure_linearizable().await {
                Ok(_) => {}
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    f,
                ))) => {
                    let send = |mut c: RegistryClient<Channel>, r| async move { c.read(r).await };
                    return self.forward(&request, &f, send).await;
                }
                Err(RaftError::APIError(e)) => {
                    return Err(Status::unavailable(format!(
                        "cannot confirm leadership for a linearizable read: {e}; retry"
                    )));
                }
                Err(RaftError::Fatal(f)) => {
                    return Err(Status::unavailable(format!(
                        "this server's Raft has stopped ({f})"
                    )));
                }
            }
        }
        let applied = self.sm.current();
        let data = read_object(&applied.state, kind, &body.name)?;
        Ok(Response::new(ReadReply {
            applied_index: applied.last_applied.map(|l| l.index).unwrap_or_default(),
            found: data.is_some(),
            data: data.unwrap_or_default(),
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.check(
            &request,
            crate::authz::Action::Raft,
            "flotilla.registry.v1.Registry/Join",
        )?;
        let body = request.get_ref();
        if body.federation != self.federation {
            return Err(Status::permission_denied(format!(
                "node {} asked to join federation {:?}, but this server is in federation {:?}",
                body.node_id, body.federation, self.federation
            )));
        }
        if body.node_id == 0 || body.address.is_empty() {
            return Err(Status::invalid_argument(
                "join needs a non-zero node_id and an address",
            ));
        }
        let written = self.add_learner_node(body.node_id, &body.address).await;
        let send = |mut c: RegistryClient<Channel>, r| async move { c.join(r).await };
        if let Handled::ByLeader(reply) = self.here_or_leader(&request, written, send).await? {
            return Ok(reply);
        }
        self.balance_voters()
            .await
            .map_err(|e| self.write_status(e))?;
        Ok(self.membership_reply(self.last_log_index()))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.check(
            &request,
            crate::authz::Action::Internal,
            "flotilla.registry.v1.Registry/AddLearner",
        )?;
        let body = request.get_ref();
        let written = self.add_learner_node(body.node_id, &body.address).await;
        let send = |mut c: RegistryClient<Channel>, r| async move { c.add_learner(r).await };
        match self.here_or_leader(&request, written, send).await? {
            Handled::Here(index) => Ok(self.membership_reply(index)),
            Handled::ByLeader(reply) => Ok(reply),
        }
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.check(
            &request,
            crate::authz::Action::Internal,
            "flotilla.registry.v1.Registry/ChangeMembership",
        )?;
        let voters: BTreeSet<NodeId> = request.get_ref().voters.iter().copied().collect();
        if voters.is_empty() || voters.len() > self.max_voters {
            return Err(Status::invalid_argument(format!(
                "a federation has 1 to {} voters; {} asked for",
                self.max_voters,
                voters.len()
            )));
        }
        let written = self
            .change(ChangeMembers::ReplaceAllVoters(voters), true)
            .await;
        let send = |mut c: RegistryClient<Channel>, r| async move { c.change_membership(r).await };
        match self.here_or_leader(&request, written, send).await? {
            Handled::Here(index) => Ok(self.membership_reply(index)),
            Handled::ByLeader(reply) => Ok(reply),
        }
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.check(
            &request,
            crate::authz::Action::Internal,
            "flotilla.registry.v1.Registry/RemoveMember",
        )?;
        let node_id = request.get_ref().node_id;
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.node_id == node_id) else {
            return Err(Status::not_found(format!(
                "node {} is not a member of federation {:?}",
                node_id, self.federation
            )));
        };
        let written = self.change(removal(member), false).await;
        let send = |mut c: RegistryClient<Channel>, r| async move { c.remove_member(r).await };
        if let Handled::ByLeader(reply) = self.here_or_leader(&request, written, send).await? {
            return Ok(reply);
        }
        // A removed voter leaves room: promote a learner to keep up to `max_voters`.
        self.balance_voters()
            .await
            .map_err(|e| self.write_status(e))?;
        Ok(self.membership_reply(self.last_log_index()))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check(
            &request,
            crate::authz::Action::Internal,
            "flotilla.registry.v1.Registry/Status",
        )?;
        let m = self.raft.metrics().borrow().clone();
        let log = self.log_status();
        let leader_address = m
            .current_leader
            .and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(StatusReply {
            node_id: self.node_id,
            federation: self.federation.clone(),
            leader_id: m.current_leader.unwrap_or_default(),
            leader_address,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or_default(),
            role: role.to_owned(),
            members: self.members(),
            last_snapshot_index: log.last_snapshot_index,
            log_entries: log.log_entries,
            snapshot_after_entries: log.policy.snapshot_after_entries,
            log_entries_kept_after_snapshot: log.policy.entries_kept_after_snapshot,
        }))
    }
}

/// How many voters a federation of `members` servers should have: the largest odd
/// number not above `max_voters` (nor the members).
pub fn voter_target(members: usize, max_voters: usize) -> usize {
    let n = members.min(max_voters);
    if n == 0 {
        0
    } else if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

/// A step towards [`voter_target`] voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VoterChange {
    Promote(BTreeSet<NodeId>),
    Demote(NodeId),
}

/// The membership change that takes `member` out.
fn removal(member: &Member) -> ChangeMembers<NodeId, Node> {
    let ids = BTreeSet::from([member.node_id]);
    if member.voter {
        ChangeMembers::RemoveVoters(ids)
    } else {
        ChangeMembers::RemoveNodes(ids)
    }
}

/// What membership change brings the voters to [`voter_target`]: learners promoted
/// (lowest ids first), or one voter other than `leader` demoted.
pub(crate) fn voter_change(
    members: &[Member],
    max_voters: usize,
    leader: NodeId,
) -> Option<VoterChange> {
    let target = voter_target(members.len(), max_voters);
    let voters = members.iter().filter(|m| m.voter).count();
    if voters < target {
        let mut learners: Vec<NodeId> = members
            .iter()
            .filter(|m| !m.voter)
            .map(|m| m.node_id)
            .collect();
        learners.sort_unstable();
        Some(VoterChange::Promote(
            learners.into_iter().take(target - voters).collect(),
        ))
    } else if voters > target {
        members
            .iter()
            .filter(|m| m.voter && m.node_id != leader)
            .map(|m| m.node_id)
            .max()
            .map(VoterChange::Demote)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[u64], learners: &[u64]) -> Vec<Member> {
        let member = |id: u64, voter| Member {
            node_id: id,
            address: format!("127.0.0.1:{}", 7400 + id),
            voter,
        };
        voters
            .iter()
            .map(|id| member(*id, true))
            .chain(learners.iter().map(|id| member(*id, false)))
            .collect()
    }

    #[test]
    fn the_voters_are_always_an_odd_number_up_to_the_maximum() {
        let target: Vec<usize> = (0..=8).map(|n| voter_target(n, 5)).collect();
        assert_eq!(target, [0, 1, 1, 3, 3, 5, 5, 5, 5]);
        assert_eq!(
            voter_target(6, 4),
            3,
            "an even maximum still gives an odd count"
        );
    }

    #[test]
    fn a_second_server_stays_a_learner_until_a_third_joins() {
        assert_eq!(voter_change(&members(&[1], &[2]), 5, 1), None);
        assert_eq!(
            voter_change(&members(&[1], &[3, 2]), 5, 1),
            Some(VoterChange::Promote([2, 3].into()))
        );
        assert_eq!(
            voter_change(&members(&[1, 2, 3], &[4]), 5, 1),
            None,
            "not 4"
        );
        assert_eq!(
            voter_change(&members(&[1, 2, 3], &[4, 5, 6]), 5, 1),
            Some(VoterChange::Promote([4, 5].into())),
            "up to the maximum"
        );
    }

    #[test]
    fn a_voter_that_leaves_with_no_learner_to_replace_it_makes_one_voter_a_learner() {
        // Five voters, one removed: four left and no learner.
        assert_eq!(
            voter_change(&members(&[1, 2, 3, 4], &[]), 5, 4),
            Some(VoterChange::Demote(3)),
            "never the leader"
        );
        // A learner is there: it is promoted instead of anyone being demoted.
        assert_eq!(
            voter_change(&members(&[1, 2, 3, 4], &[5]), 5, 1),
            Some(VoterChange::Promote([5].into()))
        );
    }
}
