//! The controller's one error type.

/// Why the controller cannot start or read what it needs.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The Kubernetes API client cannot be configured or reached.
    #[error("kubernetes: {message}")]
    Kubernetes { message: String },
    /// The registry could not be read (retryable ones are retried on the next pass).
    #[error(transparent)]
    Registry(#[from] flotilla_client::Error),
}
