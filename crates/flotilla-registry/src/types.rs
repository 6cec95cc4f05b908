//! The openraft type configuration: what the log carries and what applying it answers.

use flotilla_core::{Event, Rejection};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A server's id within its federation (stable across restarts; stored in the data dir).
pub type NodeId = u64;

/// A member as the Raft membership records it: where its gRPC services listen.
pub type Node = openraft::BasicNode;

/// What a normal log entry carries: flotilla-core's timestamped commands, applied in
/// order. Concurrent proposals travel together in one entry so that they share one log
/// write (openraft 0.9 appends, and fsyncs, each client write on its own; see
/// `propose`).
///
/// Serialized untagged: a lone command is stored exactly as before batching existed
/// (a core `Entry`), so older logs still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Request {
    /// One command.
    One(Box<flotilla_core::Entry>),
    /// Commands proposed concurrently, in the order they are applied.
    Batch { batch: Vec<flotilla_core::Entry> },
}

impl Request {
    /// The commands, in the order they are applied.
    pub fn commands(&self) -> &[flotilla_core::Entry] {
        match self {
            Request::One(e) => std::slice::from_ref(&**e),
            Request::Batch { batch } => batch,
        }
    }
}

impl From<flotilla_core::Entry> for Request {
    fn from(e: flotilla_core::Entry) -> Self {
        Request::One(Box::new(e))
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::One(e) => write!(f, "{}", e.command.kind()),
            Request::Batch { batch } => write!(f, "batch of {}", batch.len()),
        }
    }
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A blank or membership entry: nothing for core to do.
    Internal,
    /// Core applied the command and reports what changed.
    Applied(Vec<Event>),
    /// Core refused the command; the registry is unchanged.
    Rejected(Rejection),
}

/// What applying one log entry did: one outcome per command it carries (one
/// [`Outcome::Internal`] for a blank or membership entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes(pub Vec<Outcome>);

openraft::declare_raft_types!(
    /// Flotilla's Raft: batches of core `Entry`s in, an `Outcome` per command out,
    /// snapshots in memory as bytes.
    pub TypeConfig:
        D = Request,
        R = Outcomes,
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
