//! The stable API (`flotilla.v1`) and the experimental one (`flotilla.v1alpha1`),
//! served by every server on top of the Raft plumbing.
//!
//! - Writes become core `Command`s proposed to Raft; on a follower they are forwarded
//!   to the leader (as `flotilla.registry.v1.Registry/Propose`, under the follower's
//!   own server identity) and the leader's answer is returned.
//! - Reads are linearizable unless the request sets `allow_stale`: the leader confirms
//!   its leadership with a quorum; a follower asks the leader for its read index and
//!   waits until it has applied that far, then answers from its own copy.
//! - Core rejections map to status codes in
//!   [`flotilla_client::convert::rejection_status`].
//! - Every RPC checks the caller's identity first (see `crate::authz`).

pub(crate) mod join_rate;
pub(crate) mod mcp;
pub(crate) mod paging;
pub(crate) mod pki;
pub(crate) mod services;
pub(crate) mod signals;
pub(crate) mod tenants;
pub(crate) mod watch;

use crate::api::{RegistryApi, redirect};
use crate::authz::{self, Action, Caller};
use crate::store::Applied;
use crate::types::{Outcome, RaftError};
use flotilla_core::{Command, Rejection};
use flotilla_proto::registry::v1::{Consistency, ObjectKind, ProposeRequest, ReadRequest};
use openraft::error::{CheckIsLeaderError, ClientWriteError};
use std::time::Duration;
use tokio::sync::watch as tokio_watch;
use tonic::{Request, Status};

/// What every v1 service shares: the registry handle, whether callers are
/// authenticated, and the server's shutdown signal (which ends watch streams).
#[derive(Clone)]
pub(crate) struct ApiCore {
    pub(crate) api: RegistryApi,
    pub(crate) authenticates: bool,
    pub(crate) shutdown: tokio_watch::Receiver<bool>,
    /// Whether this member serves (`crate::health`): watches end when it stops.
    pub(crate) serving: crate::health::Serving,
}

impl std::fmt::Debug for ApiCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCore")
            .field("node_id", &self.api.node_id)
            .field("authenticates", &self.authenticates)
            .finish()
    }
}

impl ApiCore {
    pub(crate) fn check<T>(
        &self,
        request: &Request<T>,
        action: Action<'_>,
        rpc: &str,
    ) -> Result<Caller, Status> {
        authz::check(
            request,
            self.authenticates,
            &self.api.federation,
            action,
            rpc,
            &self.api.sm,
        )
    }

    /// [`ApiCore::check`] for a watch: the watcher, whose certificate the watch
    /// judges again after each change.
    pub(crate) fn watcher<T>(
        &self,
        request: &Request<T>,
        action: Action<'_>,
        rpc: &'static str,
    ) -> Result<watch::Watcher, Status> {
        let caller = self.check(request, action, rpc)?;
        Ok(watch::Watcher {
            rpc,
            holder: authz::CertificateHolder::of(&caller, request),
            replica_scope: caller.replica_scope().map(str::to_owned),
        })
    }

    /// Proposes `command`, here or on the leader; answers the log index it applied at.
    pub(crate) async fn propose(&self, command: Command) -> Result<u64, Status> {
        let forwarded = command.clone();
        // Through the proposer, so concurrent API writes share a log entry and an fsync.
        match self.api.proposer.propose(command).await {
            Ok(resp) => match resp.data {
                Outcome::Rejected(r) => Err(flotilla_client::convert::rejection_status(&r)),
                Outcome::Applied(_) | Outcome::Internal => Ok(resp.log_id.index),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let addr = self.api.forward_to(&Request::new(()), redirect(&f))?;
                let command_json = serde_json::to_string(&forwarded)
                    .map_err(|e| Status::internal(format!("encode command: {e}")))?;
                let reply = self
                    .api
                    .forwarder
                    .client(&addr)?
                    .propose(self.api.forwarded(ProposeRequest { command_json }))
                    .await?
                    .into_inner();
                if reply.applied {
                    return Ok(reply.log_index);
                }
                let r: Rejection = serde_json::from_str(&reply.rejection_json).map_err(|e| {
                    Status::internal(format!("the leader's rejection does not decode: {e}"))
                })?;
                Err(flotilla_client::convert::rejection_status(&r))
            }
            Err(e) => Err(self.api.write_status(e)),
        }
    }

    /// Reads, builds a write conditional on what it read (`write`), and proposes
    /// it; the log index. Without an etag from the caller (`caller_etag`), a
    /// conflict is this read's own race, not the caller's, so the read and the
    /// write are made again, `tries` times in all; with one, it is `ABORTED`.
    pub(crate) async fn read_modify_write(
        &self,
        caller_etag: Option<u64>,
        tries: u32,
        write: impl Fn(&flotilla_core::State) -> Result<Command, Status>,
    ) -> Result<u64, Status> {
        let mut tried = 0;
        loop {
            tried += 1;
            let applied = self.read(false).await?;
            let command = write(&applied.state)?;
            match self.propose(command).await {
                Err(s)
                    if s.code() == tonic::Code::Aborted
                        && caller_etag.is_none()
                        && tried < tries => {}
                written => return written,
            }
        }
    }

    /// The registry for a read: linearizable unless `allow_stale`.
    pub(crate) async fn read(&self, allow_stale: bool) -> Result<Applied, Status> {
        if allow_stale {
            return Ok(self.api.sm.current());
        }
        match self.api.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.api.sm.current()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let addr = self.api.forward_to(&Request::new(()), redirect(&f))?;
                let index = self
                    .api
                    .forwarder
                    .client(&addr)?
                    .read(self.api.forwarded(ReadRequest {
                        consistency: Consistency::Linearizable as i32,
                        kind: ObjectKind::Settings as i32,
                        name: String::new(),
                    }))
                    .await?
                    .into_inner()
                    .applied_index;
                self.wait_applied(index).await
            }
            Err(RaftError::APIError(e)) => Err(Status::unavailable(format!(
                "cannot confirm leadership for a linearizable read: {e}; retry, or set allow_stale"
            ))),
            Err(RaftError::Fatal(f)) => Err(Status::unavailable(format!(
                "this server's Raft has stopped ({f}); use another member"
            ))),
        }
    }

    /// Waits until this server has applied `index` (a follower's read barrier).
    async fn wait_applied(&self, index: u64) -> Result<Applied, Status> {
        let mut changes = self.api.sm.changes();
        let wait = async {
            loop {
                let applied = self.api.sm.current();
                if applied.last_applied.map(|l| l.index).unwrap_or_default() >= index {
                    return Ok(applied);
                }
                if changes.changed().await.is_err() {
                    return Err(Status::unavailable("this server is shutting down"));
                }
            }
        };
        let limit = self.api.retry_after * 2 + Duration::from_secs(1);
        tokio::time::timeout(limit, wait).await.map_err(|_| {
            Status::unavailable(format!(
                "node {} did not catch up with the leader (index {index}) within {limit:?}; retry",
                self.api.node_id
            ))
        })?
    }
}
