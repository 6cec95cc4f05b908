//! Tenant policies: which models a tenant may reach through the gateways.

use crate::error::{ObjectKind, ValidationError};
use crate::names::{validate_identifier, validate_name};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    pub tenant: String,
    /// Model ids this tenant may call; `*` approves every model.
    pub approved_models: Vec<String>,
    /// Requests a minute the tenant may send through each gateway; 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests_per_minute: u32,
    /// Tokens a minute (prompt and completion, as each response's `usage` counts
    /// them) the tenant may spend through each gateway; 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_per_minute: u32,
    /// Approved external endpoints (OpenAI-compatible providers, named as the
    /// gateways' `--external-endpoints` files name them): the last tier, tried in
    /// this order when no cluster has a ready replica of an approved model. The
    /// gateway holds each provider's credential; the registry never does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_endpoints: Vec<String>,
}

/// The highest request limit accepted: beyond it, set none.
pub const MAX_REQUESTS_PER_MINUTE: u32 = 10_000_000;

/// The highest token limit accepted: beyond it, set none.
pub const MAX_TOKENS_PER_MINUTE: u32 = 1_000_000_000;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TenantPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(ObjectKind::Policy, &self.tenant, "tenant")?;
        for (field, value, max) in [
            (
                "requests_per_minute",
                self.requests_per_minute,
                MAX_REQUESTS_PER_MINUTE,
            ),
            (
                "tokens_per_minute",
                self.tokens_per_minute,
                MAX_TOKENS_PER_MINUTE,
            ),
        ] {
            if value > max {
                return Err(ValidationError::new(
                    ObjectKind::Policy,
                    &self.tenant,
                    field,
                    format!("{value} is above {max}; 0 sets no limit"),
                ));
            }
        }
        for (i, name) in self.external_endpoints.iter().enumerate() {
            let field = format!("external_endpoints[{i}]");
            validate_name(ObjectKind::Policy, name, &field).map_err(|e| {
                ValidationError::new(
                    ObjectKind::Policy,
                    &self.tenant,
                    field.clone(),
                    format!("{name:?} {}", e.message),
                )
            })?;
            if self.external_endpoints[..i].contains(name) {
                return Err(ValidationError::new(
                    ObjectKind::Policy,
                    &self.tenant,
                    field,
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        for (i, m) in self.approved_models.iter().enumerate() {
            validate_identifier(
                ObjectKind::Policy,
                &self.tenant,
                &format!("approved_models[{i}]"),
                m,
            )?;
        }
        Ok(())
    }

    pub fn approves(&self, model: &str) -> bool {
        self.approved_models.iter().any(|m| m == "*" || m == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_external(names: &[&str]) -> TenantPolicy {
        TenantPolicy {
            tenant: "acme".into(),
            approved_models: vec!["m".into()],
            external_endpoints: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn external_endpoints_are_names_each_listed_once() {
        assert!(with_external(&["openai", "azure-eu"]).validate().is_ok());
        let bad = with_external(&["openai", "Not Ok"]).validate().unwrap_err();
        assert_eq!(
            (bad.name.as_str(), bad.field.as_str()),
            ("acme", "external_endpoints[1]")
        );
        assert!(bad.message.starts_with("\"Not Ok\" contains"), "{bad}");
        let twice = with_external(&["openai", "openai"]).validate().unwrap_err();
        assert!(twice.message.contains("listed twice"), "{twice}");
    }
}
