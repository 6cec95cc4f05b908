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
