//! Takes a server whose certificate no longer stands (its cluster left the
//! federation) out of the Raft membership. The Raft clients send such a peer
//! nothing and report it ([`crate::network::PeerStanding`]); the leader then
//! removes it as `Registry/RemoveMember` would. Until then the peer reads nothing
//! more of the registry, but it still counts toward the majority every write
//! needs, as a server that is down does.

use crate::api::RegistryApi;
use crate::types::NodeId;
use tokio::sync::{mpsc, watch};

/// Reports of revoked peers waiting for the leader; more are dropped, since the
/// Raft clients report again on their next try.
pub(crate) const QUEUE: usize = 16;

/// Removes each reported peer while this server leads, until `shutdown`.
pub(crate) async fn run(
    api: RegistryApi,
    mut reported: mpsc::Receiver<NodeId>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let peer = tokio::select! {
            peer = reported.recv() => match peer {
                Some(peer) => peer,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        if api.raft.metrics().borrow().current_leader != Some(api.node_id) {
            continue;
        }
        // A change that cannot commit (no majority) must not hold up shutdown.
        let removed = tokio::select! {
            removed = api.remove_here(peer) => removed,
            _ = shutdown.changed() => return,
        };
        match removed {
            Ok(true) => tracing::warn!(
                peer,
                "took a server whose certificate was revoked (its cluster left the federation) out of the Raft membership"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                peer,
                error = %e,
                "could not take a revoked server out of the Raft membership; trying again when it is next reported"
            ),
        }
    }
}
