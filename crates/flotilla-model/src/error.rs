//! The crate's one error type.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A setting cannot be used; nothing was bound or served.
    #[error("invalid model server setting {field}: {message}")]
    Config { field: String, message: String },
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    Listener(#[source] std::io::Error),
}
