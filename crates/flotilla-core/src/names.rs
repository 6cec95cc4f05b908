//! Names of registry objects. They end up in DNS names, SPIFFE IDs, Kubernetes object
//! names and metric labels, so they follow the DNS-1123 label rules.

use crate::error::{ObjectKind, ValidationError};

/// The longest name accepted: a DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a DNS-1123 label: 1–63 lower-case letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn validate_name(kind: ObjectKind, name: &str, field: &str) -> Result<(), ValidationError> {
    let bad = |message: String| Err(ValidationError::new(kind, name, field, message));
    if name.is_empty() {
        return bad("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(format!(
            "contains {c:?}; only lower-case letters, digits and '-' are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Checks a free-form identifier such as a model id (`meta-llama/Llama-3.1-8B-Instruct`)
/// or a GPU model name: printable ASCII without spaces, 1–253 characters.
pub fn validate_identifier(
    kind: ObjectKind,
    object: &str,
    field: &str,
    value: &str,
) -> Result<(), ValidationError> {
    let bad = |message: String| Err(ValidationError::new(kind, object, field, message));
    if let Some(problem) = length_problem(value) {
        return bad(problem);
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return bad(format!(
            "{value:?} contains {c:?}; spaces and control characters are not allowed"
        ));
    }
    Ok(())
}

/// Checks a product name such as a GPU model (`NVIDIA H100 80GB HBM3`, as NVML
/// reports it): 1–253 characters, spaces allowed, no control characters.
pub fn validate_product_name(
    kind: ObjectKind,
    object: &str,
    field: &str,
    value: &str,
) -> Result<(), ValidationError> {
    let bad = |message: String| Err(ValidationError::new(kind, object, field, message));
    // All spaces is as empty as nothing.
    let checked = if value.trim().is_empty() { "" } else { value };
    if let Some(problem) = length_problem(checked) {
        return bad(problem);
    }
    if value.chars().any(char::is_control) {
        return bad(format!("{value:?} contains control characters"));
    }
    Ok(())
}

/// Why `value` cannot be an identifier or a name by its length: empty, or over 253
/// characters (DNS's limit, which identifiers may end up in).
fn length_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".into());
    }
    (value.len() > 253).then(|| {
        format!(
            "is {} characters long; at most 253 are allowed",
            value.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_accepted() {
        for ok in ["a", "us-east-1", "gpu0", "x".repeat(63).as_str()] {
            assert_eq!(
                validate_name(ObjectKind::Cluster, ok, "name"),
                Ok(()),
                "{ok}"
            );
        }
    }

    #[test]
    fn bad_names_say_why() {
        let err = validate_name(ObjectKind::Cluster, "US_East", "name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster \"US_East\": name contains 'U'; only lower-case letters, digits and '-' are allowed"
        );
        let err = validate_name(ObjectKind::Workload, "-a", "name").unwrap_err();
        assert!(
            err.to_string()
                .ends_with("must start and end with a letter or digit")
        );
        let err = validate_name(ObjectKind::Workload, "", "name").unwrap_err();
        assert!(err.to_string().ends_with("name must not be empty"));
        let long = "a".repeat(64);
        let err = validate_name(ObjectKind::Workload, &long, "name").unwrap_err();
        assert!(err.to_string().contains("64 characters"));
    }

    #[test]
    fn identifiers_allow_slashes_but_not_spaces() {
        assert!(
            validate_identifier(
                ObjectKind::Workload,
                "w",
                "model",
                "meta-llama/Llama-3.1-8B"
            )
            .is_ok()
        );
        let err = validate_identifier(ObjectKind::Workload, "w", "model", "a b").unwrap_err();
        assert!(err.to_string().contains("spaces"));
    }
}
