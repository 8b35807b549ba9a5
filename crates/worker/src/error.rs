//! The crate's error type.

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `bullpen-worker`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Format, script or Redis errors.
    #[error(transparent)]
    Core(#[from] bullpen_core::Error),
    /// Connection errors.
    #[error(transparent)]
    Conn(#[from] bullpen_conn::Error),
    /// A value could not be serialised to JSON.
    #[error("cannot serialise to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    /// Invalid worker options.
    #[error("invalid worker option `{field}`: {reason}")]
    InvalidOptions {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
}
