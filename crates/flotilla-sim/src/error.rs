//! The one error type of the crate: every variant names the file, and the field or
//! line, that was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The scenario is not valid TOML or does not match the format (the message
    /// carries the line and column).
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A field of the scenario has a value the simulator cannot use.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// The dotted path of the field, e.g. `workloads[1].gpu_models[0]`.
        field: String,
        message: String,
    },
    /// A line of a request trace could not be read.
    #[error("{}:{line}: {message}", path.display())]
    Trace {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A report file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("{}: cannot draw the plot: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

impl SimError {
    pub(crate) fn invalid(
        path: &std::path::Path,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        SimError::Invalid {
            path: path.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}
