//! The client's one error type, classified: [`Error::is_retryable`] tells a caller
//! whether the same request may succeed later, on this server or another.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Static configuration is invalid (addresses, a token for another role, an
    /// identity that does not match its directory).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A call to a server failed.
    #[error("call to {peer} failed: {code:?}: {message}")]
    Rpc {
        peer: String,
        code: tonic::Code,
        message: String,
    },

    /// A server did not answer in time (it accepted the connection, but has no
    /// quorum, or is overloaded).
    #[error("registry at {peer}: no answer within {after:?}")]
    Timeout { peer: String, after: Duration },

    /// A server answered from a copy older than one already seen from another (it
    /// is behind after a fail-over); taken, its answer would undo what was seen.
    #[error(
        "registry at {peer}: this server is behind (its answer reflects log index {index}, an earlier one {seen}); trying another"
    )]
    Behind { peer: String, index: u64, seen: u64 },

    /// The registry refused a command; core said why. Nothing changed.
    #[error("the registry refused {command}: {message}")]
    Rejected {
        command: &'static str,
        message: String,
        /// The command named something the registry does not have (e.g. this
        /// cluster, after an operator removed it).
        not_found: bool,
    },

    /// Keys, certificates or tokens: a file that cannot be read or written, a token
    /// for another role, a certificate that does not match its key.
    #[error("{0}")]
    Pki(#[from] flotilla_pki::Error),
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            Error::Timeout { .. } | Error::Behind { .. } => true,
            Error::Config(_) | Error::Rejected { .. } | Error::Pki(_) => false,
        }
    }

    /// Whether core refused the command because what it names does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Rejected {
                not_found: true,
                ..
            }
        )
    }

    /// A failed call to `peer`.
    pub(crate) fn rpc(peer: &str, status: &tonic::Status) -> Error {
        Error::Rpc {
            peer: peer.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
