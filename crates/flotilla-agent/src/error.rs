//! The crate's one error type. Every variant names what was wrong: the library, the
//! file and line, the node or the device.

use std::path::PathBuf;

/// The library NVML is loaded from at run time.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// NVML could not be loaded or initialised: no driver, no GPU, or no permission.
    /// Never answered by falling back to another source: a GPU node that reports no
    /// GPUs would look like a node whose GPUs all vanished.
    #[error(
        "cannot use NVML: {library} could not be loaded or initialised ({detail}); \
         is the NVIDIA driver installed and are this node's GPUs visible to the agent? \
         On a machine without an NVIDIA GPU, use `--gpu-source simulated`"
    )]
    NvmlUnavailable {
        /// The shared library that was tried, normally [`NVML_LIBRARY`].
        library: String,
        detail: String,
    },
    /// NVML loaded but lists no GPU.
    #[error(
        "NVML lists no GPU on this node; on a machine without an NVIDIA GPU, use \
         `--gpu-source simulated`"
    )]
    NoGpus,
    /// An NVML call that a snapshot cannot do without failed.
    #[error("NVML {operation} failed: {message}")]
    Nvml { operation: String, message: String },
    /// Sampling a GPU source failed outside the source itself (the blocking thread
    /// that runs it panicked or was cancelled).
    #[error("sampling the {kind} GPU source failed: {message}")]
    Sampling { kind: &'static str, message: String },
    /// A fleet file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    FleetRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A fleet file is not valid TOML, does not match the format, or describes a
    /// fleet that cannot exist.
    #[error("{}{}: {field}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    FleetFile {
        path: PathBuf,
        /// 1-based line of the offending table or value, where known.
        line: Option<usize>,
        /// The field, as a dotted path (`nodes[0].devices[1].memory_mib`) or a key.
        field: String,
        message: String,
    },
    /// A change named a node the simulated fleet does not have.
    #[error("no node named {node:?}; the fleet has {}", list(known))]
    UnknownNode { node: String, known: Vec<String> },
    /// A change named a device its node does not have.
    #[error(
        "node {node:?} has no device {device:?} (by index or UUID); it has {}",
        list(known)
    )]
    UnknownDevice {
        node: String,
        device: String,
        known: Vec<String>,
    },
    /// A change that cannot apply to the device it names.
    #[error("node {node:?} device {device:?}: {message}")]
    InvalidChange {
        node: String,
        device: String,
        message: String,
    },
    /// The registry could not be reached, did not answer (no server up, no leader, a
    /// timeout; the agent keeps retrying these), or refused a command (core said
    /// why; nothing changed).
    #[error(transparent)]
    Registry(#[from] flotilla_client::Error),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A replica's process could not be started.
    #[error("cannot start {}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Static configuration is invalid (flags, addresses, intervals).
    #[error("invalid configuration: {field}: {message}")]
    Config { field: String, message: String },
    /// The source cannot take run-time changes (NVML reads real hardware).
    #[error(
        "the {kind} GPU source reads real devices and cannot be changed; only `--gpu-source simulated` takes changes"
    )]
    NotChangeable { kind: &'static str },
}

impl AgentError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Nvml { .. }
            | AgentError::Sampling { .. }
            | AgentError::FleetRead { .. } => true,
            AgentError::Registry(e) => e.is_retryable(),
            _ => false,
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
