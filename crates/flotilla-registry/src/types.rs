//! The openraft type configuration: what the log carries and what applying it answers.

use flotilla_core::{Event, Rejection};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A server's id within its federation (stable across restarts; stored in the data dir).
pub type NodeId = u64;

/// A member as the Raft membership records it: where its gRPC services listen.
pub type Node = openraft::BasicNode;

/// What the replicated log stores: flotilla-core's timestamped command.
pub type Request = flotilla_core::Entry;

/// What applying one log entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A blank or membership entry: nothing for core to do.
    Internal,
    /// Core applied the command and reports what changed.
    Applied(Vec<Event>),
    /// Core refused the command; the registry is unchanged.
    Rejected(Rejection),
}

openraft::declare_raft_types!(
    /// Flotilla's Raft: core `Entry`s in, `Outcome`s out, snapshots in memory as bytes.
    pub TypeConfig:
        D = Request,
        R = Outcome,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle of one flotilla server.
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Node>;
pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, Node>;
