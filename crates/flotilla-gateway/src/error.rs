//! The gateway's one error enum.

use std::net::SocketAddr;

/// What can go wrong in the gateway, classified so that callers can tell a bad
/// configuration (fix and restart) from a failed upstream (retry or report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration cannot work; nothing was bound.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// A static routes file could not be read as routes.
    #[error("invalid routes file: {0}")]
    Routes(String),
    /// A listener failed to accept or bind.
    #[error("listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connection to an upstream could not be set up; the request was not sent,
    /// so it may go elsewhere.
    #[error("connecting to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The upstream answered that it did not process the request (a replica that is
    /// draining or loading, a gateway with no ready replica): nothing was generated,
    /// so it may go elsewhere.
    #[error("{target} did not process the request: {reason}")]
    NotProcessed { target: String, reason: String },
    /// The request was handed to an upstream and then failed; it must not be sent
    /// again, since the model may already be generating.
    #[error("upstream {target} failed after the request was sent: {reason}")]
    AfterSend { target: String, reason: String },
}

impl GatewayError {
    /// Whether the request may be sent to another replica or cluster.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Connect { .. } | GatewayError::NotProcessed { .. }
        )
    }
}
