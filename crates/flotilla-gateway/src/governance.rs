//! Which tenant is calling, and whether its policy lets it reach a model.

use crate::identity::PeerIdentity;
use flotilla_core::TenantPolicy;
use hyper::HeaderMap;
use std::collections::{BTreeMap, HashMap};

/// Header a gateway sets on the east-west hop to carry the tenant it established;
/// honoured only from a peer whose certificate says it is a gateway of this
/// federation, and stripped from client requests.
pub const TENANT_HEADER: &str = "flotilla-tenant";

/// Tenants, how to recognise them, and their policies.
#[derive(Debug, Clone, Default)]
pub struct Governance {
    /// Off: every caller reaches every model (no policies configured).
    pub enforce: bool,
    /// API key (from `Authorization: Bearer` or `x-api-key`) → tenant.
    pub api_keys: HashMap<String, String>,
    /// mTLS identity (`spiffe://…`) → tenant.
    pub identities: HashMap<String, String>,
    /// Tenant → policy.
    pub policies: BTreeMap<String, TenantPolicy>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow { tenant: Option<String> },
    Unauthorized(String),
    Forbidden { tenant: String, message: String },
}

/// Who sent a request, as far as the connection tells.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub(crate) identity: Option<&'a PeerIdentity>,
    /// True when the peer is a gateway of this federation on the east-west listener.
    pub(crate) trusted_gateway: bool,
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(hyper::header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
        && let Some(key) = s.strip_prefix("Bearer ")
    {
        return Some(key.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

impl Governance {
    /// The tenant of a request, `Ok(None)` for an anonymous one.
    pub(crate) fn tenant(
        &self,
        headers: &HeaderMap,
        caller: Caller<'_>,
    ) -> Result<Option<String>, String> {
        if caller.trusted_gateway {
            return Ok(headers
                .get(TENANT_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned));
        }
        if let Some(key) = api_key(headers) {
            return match self.api_keys.get(key) {
                Some(t) => Ok(Some(t.clone())),
                None if self.enforce => {
                    Err("the API key is not known to this federation".to_owned())
                }
                None => Ok(None),
            };
        }
        Ok(caller
            .identity
            .and_then(|id| self.identities.get(&id.to_string()).cloned()))
    }

    pub(crate) fn decide(&self, model: &str, headers: &HeaderMap, caller: Caller<'_>) -> Decision {
        let tenant = match self.tenant(headers, caller) {
            Ok(t) => t,
            Err(msg) => return Decision::Unauthorized(msg),
        };
        if !self.enforce {
            return Decision::Allow { tenant };
        }
        let Some(tenant) = tenant else {
            return Decision::Unauthorized(
                "no tenant: send an API key (Authorization: Bearer …) or a client certificate"
                    .to_owned(),
            );
        };
        match self.policies.get(&tenant) {
            Some(p) if p.approves(model) => Decision::Allow {
                tenant: Some(tenant),
            },
            Some(_) => Decision::Forbidden {
                message: format!(
                    "model `{model}` is not approved for tenant `{tenant}` by policy `{tenant}`"
                ),
                tenant,
            },
            None => Decision::Forbidden {
                message: format!(
                    "model `{model}` is not approved for tenant `{tenant}`: no policy names this tenant"
                ),
                tenant,
            },
        }
    }
}
