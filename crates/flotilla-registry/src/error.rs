//! The registry's one error type, classified: [`Error::is_retryable`] tells a caller
//! whether the same request may succeed later.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory cannot be used (missing permissions, not a directory).
    #[error("data directory {}: {message}", path.display())]
    DataDir { path: PathBuf, message: String },

    /// The data directory holds something that is not a readable flotilla registry.
    #[error("data directory {} is corrupt or not a flotilla registry: {message}", path.display())]
    CorruptDataDir { path: PathBuf, message: String },

    /// The data directory belongs to another federation.
    #[error(
        "data directory {} belongs to federation {found:?}, not {expected:?}; use another --data-dir",
        path.display()
    )]
    ForeignDataDir {
        path: PathBuf,
        found: String,
        expected: String,
    },

    /// The data directory was served over mTLS, and this start has no identity:
    /// serving it in plaintext would hand the federation's data to anyone.
    #[error(
        "data directory {} was served over mTLS, but this server has no identity (DATA_DIR/pki is missing or unreadable): refusing to serve it in plaintext without authorization; restore pki/ from a backup, or join again with a token",
        path.display()
    )]
    PlaintextDowngrade { path: PathBuf },

    /// The data directory was written by another node id.
    #[error("data directory {} belongs to node {found}, not node {expected}", path.display())]
    NodeIdMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    /// Reading or writing the store failed.
    #[error("storage at {}: {message}", path.display())]
    Storage { path: PathBuf, message: String },

    /// Static configuration is invalid (flags, addresses, timeouts).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// A peer belongs to another federation.
    #[error("peer {peer} is in federation {found:?}, not {expected:?}")]
    ForeignPeer {
        peer: String,
        found: String,
        expected: String,
    },

    /// A call to another server failed.
    #[error("call to {peer} failed: {code:?}: {message}")]
    Rpc {
        peer: String,
        code: tonic::Code,
        message: String,
    },

    /// No leader is known right now (an election is under way, or no quorum).
    #[error("no Raft leader is known; retry in about {}ms", retry_after.as_millis())]
    NoLeader { retry_after: Duration },

    /// Raft refused a request (e.g. a membership change while another is in progress).
    #[error("raft: {0}")]
    Raft(String),

    /// This server's Raft stopped (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Stopped(String),

    /// Keys, certificates or tokens: a file that cannot be read or written, a token
    /// for another role, a certificate that does not match its key.
    #[error("{0}")]
    Pki(#[from] flotilla_pki::Error),

    /// What a server does as a client of others (dialing, joining, renewing).
    #[error("{0}")]
    Client(#[from] flotilla_client::Error),
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NoLeader { .. } => true,
            Error::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            Error::Raft(_) => true,
            Error::Client(e) => e.is_retryable(),
            Error::DataDir { .. }
            | Error::CorruptDataDir { .. }
            | Error::ForeignDataDir { .. }
            | Error::NodeIdMismatch { .. }
            | Error::PlaintextDowngrade { .. }
            | Error::Storage { .. }
            | Error::Config(_)
            | Error::Bind { .. }
            | Error::ForeignPeer { .. }
            | Error::Stopped(_)
            | Error::Pki(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
