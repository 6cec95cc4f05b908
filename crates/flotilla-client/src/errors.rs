//! API errors a program can act on: each carries the standard `google.rpc` details
//! (`ErrorInfo` with a stable reason, `BadRequest` field violations, `RetryInfo`,
//! `PreconditionFailure`), and, for clients written before them, the
//! `flotilla-field` and `retry-after-ms` headers.

use std::collections::HashMap;
use std::time::Duration;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every Flotilla error.
pub const DOMAIN: &str = "flotilla.v1";

/// `ErrorInfo.reason`: stable, UPPER_SNAKE_CASE; programs match on these, never on
/// messages.
pub mod reason {
    /// A field of the request is invalid; `BadRequest` names it.
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// The object named does not exist.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// Valid, but the registry's state does not allow it now.
    pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
    /// A conditional write's etag is not the object's any more: read it again.
    pub const ETAG_MISMATCH: &str = "ETAG_MISMATCH";
    /// No leader is known: retry after `RetryInfo.retry_delay`.
    pub const NO_LEADER: &str = "NO_LEADER";
}

/// `INVALID_ARGUMENT` naming `field`, with a `BadRequest` violation and the
/// `flotilla-field` header.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let mut details = info(reason::INVALID_FIELD, [("field", field)]);
    details.add_bad_request_violation(field, message.clone());
    let mut metadata = MetadataMap::new();
    if let Ok(v) = field.parse() {
        metadata.insert("flotilla-field", v);
    }
    Status::with_error_details_and_metadata(Code::InvalidArgument, message, details, metadata)
}

/// `NOT_FOUND` of an object of `kind` named `name`.
pub fn not_found(kind: &str, name: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        Code::NotFound,
        message,
        info(reason::NOT_FOUND, [("kind", kind), ("name", name)]),
    )
}

/// `FAILED_PRECONDITION` about `kind` `name`.
pub fn failed_precondition(kind: &str, name: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let mut details = info(
        reason::FAILED_PRECONDITION,
        [("kind", kind), ("name", name)],
    );
    details.add_precondition_failure_violation("STATE", format!("{kind}/{name}"), message.clone());
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

/// `ABORTED`: the object changed since the etag the write carried.
pub fn etag_mismatch(
    kind: &str,
    name: &str,
    expected: u64,
    actual: u64,
    message: impl Into<String>,
) -> Status {
    let (expected, actual) = (expected.to_string(), actual.to_string());
    Status::with_error_details(
        Code::Aborted,
        message,
        info(
            reason::ETAG_MISMATCH,
            [
                ("kind", kind),
                ("name", name),
                ("expected_etag", expected.as_str()),
                ("current_etag", actual.as_str()),
            ],
        ),
    )
}

/// `UNAVAILABLE` with a `RetryInfo` and the `retry-after-ms` header.
pub fn retry_later(reason: &str, retry_after: Duration, message: impl Into<String>) -> Status {
    with_retry(Code::Unavailable, reason, retry_after, message)
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo` and the `retry-after-ms` header: this
/// caller is over a rate bound, and may try again after `retry_after`.
pub fn rate_limited(reason: &str, retry_after: Duration, message: impl Into<String>) -> Status {
    with_retry(Code::ResourceExhausted, reason, retry_after, message)
}

fn with_retry(
    code: Code,
    reason: &str,
    retry_after: Duration,
    message: impl Into<String>,
) -> Status {
    let mut details = info(reason, []);
    details.set_retry_info(Some(retry_after));
    let mut metadata = MetadataMap::new();
    if let Ok(v) = retry_after.as_millis().to_string().parse() {
        metadata.insert(crate::RETRY_AFTER, v);
    }
    Status::with_error_details_and_metadata(code, message, details, metadata)
}

fn info<const N: usize>(reason: &str, metadata: [(&str, &str); N]) -> ErrorDetails {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    ErrorDetails::with_error_info(reason, DOMAIN, metadata)
}

/// The `ErrorInfo.reason` of a status, where it has one.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_carries_the_violation_the_reason_and_the_old_header() {
        let s = invalid_field(
            "workload.replicas.min",
            "replicas.min (3) > replicas.max (2)",
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&s).as_deref(), Some(reason::INVALID_FIELD));
        let bad = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "workload.replicas.min");
        assert_eq!(
            s.metadata()
                .get("flotilla-field")
                .and_then(|v| v.to_str().ok()),
            Some("workload.replicas.min")
        );
    }

    #[test]
    fn a_retry_carries_retry_info_and_the_old_header() {
        let s = retry_later(reason::NO_LEADER, Duration::from_millis(750), "no leader");
        assert_eq!(
            s.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(750))
        );
        assert_eq!(
            s.metadata()
                .get(crate::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("750")
        );
    }

    #[test]
    fn a_conflict_names_both_etags() {
        let s = etag_mismatch("policy", "acme", 3, 5, "changed");
        let i = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(i.reason, reason::ETAG_MISMATCH);
        assert_eq!(i.domain, DOMAIN);
        assert_eq!(
            i.metadata.get("current_etag").map(String::as_str),
            Some("5")
        );
    }
}
