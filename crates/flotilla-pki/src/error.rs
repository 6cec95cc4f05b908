//! The PKI's one error type. Every message names the file, identity or token it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },

    /// A key or certificate file exists already; the PKI never overwrites one by accident.
    #[error("refusing to overwrite {}: it already exists (remove it first if you mean to replace it)", path.display())]
    Exists { path: PathBuf },

    /// A file or message does not hold what it should (PEM, DER, a certificate).
    #[error("{what}: {message}")]
    Malformed { what: String, message: String },

    /// Certificate or key generation failed.
    #[error("generating {what}: {message}")]
    Generate { what: String, message: String },

    /// A name, role or SPIFFE id is not a valid Flotilla identity.
    #[error("invalid identity {value:?}: {message}")]
    Identity { value: String, message: String },

    /// A join token was refused: malformed, unknown, used, expired, or for another identity.
    #[error("join token for {subject}: {reason}")]
    Token { subject: String, reason: String },

    /// A certificate signing request was refused.
    #[error("certificate request from {subject}: {reason}")]
    Csr { subject: String, reason: String },

    /// Building a rustls configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Malformed {
            what: what.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn generate(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Generate {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
