//! The Raft transport's server side: `flotilla.raft.v1.Raft` handing peers' messages
//! to openraft, after checking the federation, the message size and that everything
//! decodes. A snapshot is checked to decode as a registry snapshot before openraft sees
//! it, so a bad one is refused with `INVALID_ARGUMENT` and nothing is installed.

use crate::network::SnapshotHeader;
use crate::types::{NodeId, Raft};
use flotilla_proto::raft::v1::{RaftReply, RaftRequest, SnapshotChunk, raft_reply, raft_server};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Cursor;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub(crate) struct RaftService {
    raft: Raft,
    /// The applied registry: whether a peer's certificate still stands.
    sm: crate::store::StateMachineStore,
    federation: String,
    max_snapshot_bytes: usize,
    authenticates: bool,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("federation", &self.federation)
            .finish()
    }
}

impl RaftService {
    pub(crate) fn new(
        raft: Raft,
        sm: crate::store::StateMachineStore,
        federation: String,
        max_snapshot_bytes: usize,
        authenticates: bool,
    ) -> Self {
        RaftService {
            raft,
            sm,
            federation,
            max_snapshot_bytes,
            authenticates,
        }
    }

    fn authorize<T>(&self, request: &Request<T>, rpc: &str) -> Result<(), Status> {
        crate::authz::check(
            request,
            self.authenticates,
            &self.federation,
            crate::authz::Action::Raft,
            &format!("flotilla.raft.v1.Raft/{rpc}"),
            &self.sm,
        )
        .map(|_| ())
    }

    fn check_federation(&self, federation: &str, from: NodeId) -> Result<(), Status> {
        if federation != self.federation {
            return Err(Status::permission_denied(format!(
                "node {from} is in federation {federation:?}; this server is in federation {:?}",
                self.federation
            )));
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, req: &RaftRequest, what: &str) -> Result<T, Status> {
        self.check_federation(&req.federation, req.from)?;
        serde_json::from_slice(&req.payload).map_err(|e| {
            Status::invalid_argument(format!(
                "{what} from node {} does not decode: {e}",
                req.from
            ))
        })
    }
}

fn reply<T: Serialize, E: Serialize>(res: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let result = match res {
        Ok(v) => raft_reply::Result::Ok(
            serde_json::to_vec(&v).map_err(|e| Status::internal(format!("encode reply: {e}")))?,
        ),
        Err(e) => raft_reply::Result::RaftError(
            serde_json::to_vec(&e).map_err(|e| Status::internal(format!("encode error: {e}")))?,
        ),
    };
    Ok(Response::new(RaftReply {
        result: Some(result),
    }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request, "AppendEntries")?;
        let req = request.into_inner();
        let rpc = self.decode(&req, "AppendEntries")?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request, "Vote")?;
        let req = request.into_inner();
        let rpc = self.decode(&req, "Vote")?;
        reply(self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request, "InstallSnapshot")?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("snapshot stream is empty"))?;
        self.check_federation(&first.federation, first.from)?;
        let from = first.from;
        let header: SnapshotHeader = serde_json::from_slice(&first.header).map_err(|e| {
            Status::invalid_argument(format!(
                "snapshot header from node {from} does not decode: {e}"
            ))
        })?;
        let mut data = first.data;
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > self.max_snapshot_bytes {
                return Err(Status::resource_exhausted(format!(
                    "snapshot {} from node {from} exceeds the {}-byte limit",
                    header.meta.snapshot_id, self.max_snapshot_bytes
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        // Refuse a snapshot that is not a whole, consistent registry before installing.
        let (data, checked) = tokio::task::spawn_blocking(move || {
            let checked = flotilla_core::State::from_snapshot(&data).map(|_| ());
            (data, checked)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot check failed: {e}")))?;
        if let Err(e) = checked {
            return Err(Status::invalid_argument(format!(
                "snapshot {} from node {from} is not a valid registry snapshot: {e}",
                header.meta.snapshot_id
            )));
        }
        let snapshot = openraft::Snapshot {
            meta: header.meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        reply(self.raft.install_full_snapshot(header.vote, snapshot).await)
    }
}
