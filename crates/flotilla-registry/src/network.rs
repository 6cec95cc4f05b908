//! The Raft transport's client side: openraft's `RaftNetwork` over tonic
//! (`flotilla.raft.v1.Raft`). openraft messages travel as serde-JSON inside protobuf
//! envelopes that also name the federation (see `proto/flotilla/raft/v1/raft.proto`).

use crate::authz::CertificateHolder;
use crate::store::StateMachineStore;
use crate::types::{Node, NodeId, RaftError, TypeConfig, Vote};
use flotilla_client::{PeerJudge, TransportSecurity};
use flotilla_proto::raft::v1::{RaftReply, RaftRequest, SnapshotChunk, raft_client, raft_reply};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tonic::transport::Channel;

/// The header of a streamed snapshot (the first chunk's `header`, serde-JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: Vote,
    pub(crate) meta: crate::types::SnapshotMeta,
}

/// Cuts links between nodes, for partition tests: an in-process fault-injecting
/// transport. A blocked link fails as if the peer were unreachable, in both the Raft
/// client and the registry's write forwarding. Production servers have none.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    blocked: std::sync::Arc<std::sync::RwLock<std::collections::BTreeSet<(NodeId, NodeId)>>>,
}

impl FaultInjector {
    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut blocked = match self.blocked.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for x in a {
            for y in b {
                blocked.insert((*x, *y));
                blocked.insert((*y, *x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        match self.blocked.write() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        match self.blocked.read() {
            Ok(g) => g.contains(&(from, to)),
            Err(p) => p.into_inner().contains(&(from, to)),
        }
    }
}

/// Whether a peer server's certificate still stands, judged against the registry
/// as applied here. A peer whose cluster left the federation is sent no Raft at
/// all (neither the log nor a vote request), so it reads nothing more of the
/// registry and its answers count toward no majority; it is reported, so that the
/// leader takes it out of the membership (`crate::left_members`).
#[derive(Clone)]
pub struct PeerStanding {
    sm: StateMachineStore,
    revoked: tokio::sync::mpsc::Sender<NodeId>,
}

impl std::fmt::Debug for PeerStanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStanding").finish_non_exhaustive()
    }
}

impl PeerStanding {
    pub(crate) fn new(sm: StateMachineStore, revoked: tokio::sync::mpsc::Sender<NodeId>) -> Self {
        PeerStanding { sm, revoked }
    }

    /// Why `holder` may no longer be sent Raft, if it may not; reports `peer`
    /// then. Cheap for every cluster that never left (one map lookup).
    fn refusal(&self, peer: NodeId, holder: &CertificateHolder) -> Option<String> {
        let id = &holder.identity;
        let why = self.sm.with_state(|state| {
            let certificates = state.certificates();
            if !certificates.judges(&id.cluster) {
                return None;
            }
            certificates.standing(&id.cluster, &holder.serial).err()
        })?;
        // A full queue already holds reports enough for the leader to act on.
        let _ = self.revoked.try_send(peer);
        Some(format!(
            "peer {peer} is {id}, whose certificate no longer stands: {why}"
        ))
    }
}

/// Limits and identity shared by every peer client of one server.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub federation: String,
    pub node_id: NodeId,
    pub security: TransportSecurity,
    /// The largest gRPC message sent or accepted.
    pub max_message_bytes: usize,
    /// Snapshot chunk size when streaming.
    pub snapshot_chunk_bytes: usize,
    pub connect_timeout: Duration,
    /// Test-only link faults.
    pub faults: Option<FaultInjector>,
    /// With mTLS: peers judged by their certificates' standing.
    pub standing: Option<PeerStanding>,
}

/// Makes one [`PeerClient`] per target for openraft.
#[derive(Debug, Clone)]
pub struct Network {
    config: NetworkConfig,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Self {
        Network { config }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let seen: Arc<Mutex<Option<CertificateHolder>>> = Arc::default();
        let judge = self.config.standing.clone().map(|standing| {
            let seen = seen.clone();
            Arc::new(move |far_end: &rustls_pki_types::CertificateDer<'_>| {
                let holder = CertificateHolder::of_cert(far_end)
                    .ok_or_else(|| format!("peer {target}'s certificate does not parse"))?;
                let refused = standing.refusal(target, &holder);
                *lock(&seen) = Some(holder);
                refused.map_or(Ok(()), Err)
            }) as PeerJudge
        });
        let client = self
            .config
            .security
            .judged_channel(&node.addr, self.config.connect_timeout, judge)
            .map(|ch| {
                raft_client::RaftClient::new(ch)
                    .max_decoding_message_size(self.config.max_message_bytes)
                    .max_encoding_message_size(self.config.max_message_bytes)
            })
            .map_err(|e| e.to_string());
        PeerClient {
            config: self.config.clone(),
            target,
            node: node.clone(),
            client,
            seen,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Raft RPCs to one peer.
#[derive(Debug)]
pub struct PeerClient {
    config: NetworkConfig,
    target: NodeId,
    node: Node,
    client: Result<raft_client::RaftClient<Channel>, String>,
    /// Who the peer proved to be at the latest handshake: judged again before
    /// each RPC, since a connection outlives the certificate's standing.
    seen: Arc<Mutex<Option<CertificateHolder>>>,
}

/// A failure below Raft: whether to back off (unreachable) or retry at once.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("peer {peer} at {addr} is unreachable: {message}")]
    Unreachable {
        peer: NodeId,
        addr: String,
        message: String,
    },
    #[error("call to peer {peer} at {addr} failed: {message}")]
    Failed {
        peer: NodeId,
        addr: String,
        message: String,
    },
    #[error("call to peer {peer} timed out after {after:?}")]
    TimedOut { peer: NodeId, after: Duration },
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<E>>;

impl PeerClient {
    fn blocked(&self) -> bool {
        self.config
            .faults
            .as_ref()
            .is_some_and(|f| f.is_blocked(self.config.node_id, self.target))
    }

    /// Why nothing may be sent to this peer: a link cut in a test, or a peer
    /// whose certificate no longer stands.
    fn refused(&self) -> Option<CallError> {
        if self.blocked() {
            return Some(self.unreachable("link cut by the fault injector".into()));
        }
        let standing = self.config.standing.as_ref()?;
        let why = standing.refusal(self.target, lock(&self.seen).as_ref()?)?;
        tracing::debug!(peer = self.target, reason = %why, "sent no Raft to a revoked peer");
        Some(self.unreachable(why))
    }

    fn unreachable(&self, message: String) -> CallError {
        CallError::Unreachable {
            peer: self.target,
            addr: self.node.addr.clone(),
            message,
        }
    }

    fn failed(&self, message: String) -> CallError {
        CallError::Failed {
            peer: self.target,
            addr: self.node.addr.clone(),
            message,
        }
    }

    fn status_error(&self, status: tonic::Status) -> CallError {
        let message = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            // Connection refused or reset, and peers of another federation: back off.
            tonic::Code::Unavailable | tonic::Code::PermissionDenied => self.unreachable(message),
            _ => self.failed(message),
        }
    }

    fn request(&self, payload: Vec<u8>) -> RaftRequest {
        RaftRequest {
            federation: self.config.federation.clone(),
            from: self.config.node_id,
            payload,
        }
    }

    /// Sends one unary RPC and decodes the answer or the remote Raft error.
    async fn unary<Resp, E, F, Fut>(
        &mut self,
        payload: Vec<u8>,
        ttl: Duration,
        call: F,
    ) -> Result<Result<Resp, E>, CallError>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned,
        F: FnOnce(raft_client::RaftClient<Channel>, RaftRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        if let Some(refused) = self.refused() {
            return Err(refused);
        }
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(self.unreachable(e.clone())),
        };
        let req = self.request(payload);
        let reply = match tokio::time::timeout(ttl, call(client, req)).await {
            Err(_) => {
                return Err(CallError::TimedOut {
                    peer: self.target,
                    after: ttl,
                });
            }
            Ok(Err(status)) => return Err(self.status_error(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        self.decode_reply(reply)
    }

    fn decode_reply<Resp: DeserializeOwned, E: DeserializeOwned>(
        &self,
        reply: RaftReply,
    ) -> Result<Result<Resp, E>, CallError> {
        match reply.result {
            Some(raft_reply::Result::Ok(bytes)) => serde_json::from_slice(&bytes)
                .map(Ok)
                .map_err(|e| self.failed(format!("reply does not decode: {e}"))),
            Some(raft_reply::Result::RaftError(bytes)) => serde_json::from_slice(&bytes)
                .map(Err)
                .map_err(|e| self.failed(format!("error reply does not decode: {e}"))),
            None => Err(self.failed("empty reply".into())),
        }
    }

    fn rpc_error<E: std::error::Error>(&self, action: RPCTypes, e: CallError) -> RpcErr<E> {
        match e {
            CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            CallError::TimedOut { after, .. } => RPCError::Timeout(Timeout {
                action,
                id: self.config.node_id,
                target: self.target,
                timeout: after,
            }),
        }
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<E>) -> RpcErr<E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(value).map_err(|e| CallError::Failed {
        peer: 0,
        addr: String::new(),
        message: format!("cannot encode request: {e}"),
    })
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let entries = rpc.entries.len() as u64;
        let payload = encode(&rpc).map_err(|e| self.rpc_error(RPCTypes::AppendEntries, e))?;
        // Leave room for the envelope; a batch too large is split by openraft.
        if payload.len() + 1024 > self.config.max_message_bytes {
            if entries > 1 {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries / 2),
                ));
            }
            let e = self.failed(format!(
                "one log entry of {} bytes exceeds the {}-byte message limit",
                payload.len(),
                self.config.max_message_bytes
            ));
            return Err(self.rpc_error(RPCTypes::AppendEntries, e));
        }
        match self
            .unary(payload, option.hard_ttl(), |mut c, r| async move {
                c.append_entries(r).await
            })
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.remote(e)),
            Err(e) => Err(self.rpc_error(RPCTypes::AppendEntries, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let payload = encode(&rpc).map_err(|e| self.rpc_error(RPCTypes::Vote, e))?;
        match self
            .unary(payload, option.hard_ttl(), |mut c, r| async move {
                c.vote(r).await
            })
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.remote(e)),
            Err(e) => Err(self.rpc_error(RPCTypes::Vote, e)),
        }
    }

    /// Not used: openraft 0.9 replicates snapshots through [`Self::full_snapshot`],
    /// which this client implements as one streaming RPC. Kept for the trait, and
    /// answers with an error that says so rather than a half-supported chunk protocol.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let e = self.failed(
            "flotilla streams whole snapshots (full_snapshot); chunked install_snapshot is not spoken"
                .into(),
        );
        Err(RPCError::Network(NetworkError::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = snapshot.snapshot.into_inner();
        let chunk = self.config.snapshot_chunk_bytes.max(1);
        let mut chunks = Vec::with_capacity(data.len() / chunk + 1);
        chunks.push(SnapshotChunk {
            federation: self.config.federation.clone(),
            from: self.config.node_id,
            header,
            data: Vec::new(),
        });
        for piece in data.chunks(chunk) {
            chunks.push(SnapshotChunk {
                data: piece.to_vec(),
                ..Default::default()
            });
        }
        if let Some(e) = self.refused() {
            return Err(StreamingError::Unreachable(Unreachable::new(&e)));
        }
        let mut client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                let e = self.unreachable(e.clone());
                return Err(StreamingError::Unreachable(Unreachable::new(&e)));
            }
        };
        let ttl = option.hard_ttl();
        let send =
            tokio::time::timeout(ttl, client.install_snapshot(futures::stream::iter(chunks)));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.config.node_id,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => {
                return Err(match self.status_error(status) {
                    e @ CallError::Unreachable { .. } => {
                        StreamingError::Unreachable(Unreachable::new(&e))
                    }
                    e => StreamingError::Network(NetworkError::new(&e)),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        match self.decode_reply::<SnapshotResponse<NodeId>, Fatal<NodeId>>(reply) {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                fatal,
            ))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
