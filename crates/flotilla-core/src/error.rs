//! Errors that name what was wrong: the object, the field, and why.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of registry object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Cluster,
    Workload,
    Policy,
    Replica,
    Settings,
    /// A GPU node of a cluster, named `cluster/node`.
    Node,
    Tenant,
    /// An API key's record, named by its public id.
    ApiKey,
    /// An MCP server (`flotilla.v1alpha1`).
    McpServer,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Workload => "workload",
            ObjectKind::Policy => "policy",
            ObjectKind::Replica => "replica",
            ObjectKind::Settings => "settings",
            ObjectKind::Node => "node",
            ObjectKind::Tenant => "tenant",
            ObjectKind::ApiKey => "API key",
            ObjectKind::McpServer => "MCP server",
        })
    }
}

/// An invalid field of an object, e.g. `workload "llama-70b": replicas.min (3) > replicas.max (2)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind} \"{name}\": {field}{}{message}", if field.is_empty() { "" } else { " " })]
pub struct ValidationError {
    pub kind: ObjectKind,
    pub name: String,
    /// The dotted path of the offending field (`replicas.min`), or empty for the object as a whole.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(
        kind: ObjectKind,
        name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ValidationError {
            kind,
            name: name.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why `apply` refused a command. A rejected command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command's content is invalid (maps to gRPC `INVALID_ARGUMENT`).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The command names an object that does not exist (`NOT_FOUND`).
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: ObjectKind, name: String },
    /// The command is valid but the registry is not in a state to accept it
    /// (`FAILED_PRECONDITION`), e.g. a replica on a device that is already taken.
    #[error("{kind} \"{name}\": {reason}")]
    Precondition {
        kind: ObjectKind,
        name: String,
        reason: String,
    },
    /// A conditional write found its object changed since the writer read it
    /// (`ABORTED`): read it again, and apply the change to what is there now.
    #[error("{kind} \"{name}\" changed since it was read (etag {expected}, now {}); read it again and retry", if *actual == 0 { "gone".to_owned() } else { actual.to_string() })]
    Conflict {
        kind: ObjectKind,
        name: String,
        /// The revision (etag) the writer read; 0 for "does not exist".
        expected: u64,
        /// The revision now; 0 when it does not exist.
        actual: u64,
    },
}

impl Rejection {
    pub(crate) fn not_found(kind: ObjectKind, name: impl Into<String>) -> Self {
        Rejection::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub(crate) fn precondition(
        kind: ObjectKind,
        name: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Rejection::Precondition {
            kind,
            name: name.into(),
            reason: reason.into(),
        }
    }
}
