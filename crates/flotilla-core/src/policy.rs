//! Tenant policies: which models a tenant may reach through the gateways.

use crate::error::{ObjectKind, ValidationError};
use crate::names::{validate_identifier, validate_name};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    pub tenant: String,
    /// Model ids this tenant may call; `*` approves every model.
    pub approved_models: Vec<String>,
}

impl TenantPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(ObjectKind::Policy, &self.tenant, "tenant")?;
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
