//! Which tenant is calling, and whether its policy lets it reach a model.
//!
//! Governance comes from a local file (`--policies`: keys in the clear, for a
//! gateway alone) or from the registry ([`Governance::from_registry`]: tenants,
//! API key records and policies, followed by the registry source and swapped in
//! whole through [`GovernanceCell`]). A registry key (`flk_<id>_<secret>`) is
//! found by its id and admitted only when the SHA-256 of the presented key
//! matches the record, and the record is neither revoked nor expired.

use crate::identity::PeerIdentity;
use flotilla_core::TenantPolicy;
use flotilla_proto::v1 as pb;
use hyper::HeaderMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Header a gateway sets on the east-west hop to carry the tenant it established;
/// honoured only from a peer whose certificate says it is a gateway of this
/// federation, and stripped from client requests.
pub const TENANT_HEADER: &str = "flotilla-tenant";

/// Why a request with neither a key nor a known identity is refused.
const NO_TENANT: &str =
    "no tenant: send an API key (Authorization: Bearer …) or a client certificate";

/// The other header a client may send its API key in (besides `Authorization:
/// Bearer`); consumed by the ingress gateway like `Authorization`.
pub(crate) const API_KEY_HEADER: &str = "x-api-key";

/// A registry API key's record, as a gateway checks it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub tenant: String,
    /// SHA-256 of the whole key, lower-case hex.
    pub sha256: String,
    /// Ms since the epoch; `None`: never.
    pub expires_at_ms: Option<u64>,
    pub revoked: bool,
}

/// Tenants, how to recognise them, and their policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Governance {
    /// Off: every caller reaches every model (no policies configured).
    pub enforce: bool,
    /// API key (from `Authorization: Bearer` or `x-api-key`) → tenant, from a
    /// local file.
    pub api_keys: HashMap<String, String>,
    /// Registry API keys' records, by public id.
    pub keys: HashMap<String, KeyRecord>,
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
    /// Now, in ms since the epoch (for keys that expire).
    pub(crate) now_ms: u64,
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(hyper::header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
        && let Some(key) = s.strip_prefix("Bearer ")
    {
        return Some(key.trim());
    }
    headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok())
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
            if key.starts_with(flotilla_pki::api_key::API_KEY_PREFIX) && !self.keys.is_empty() {
                return self.registry_key(key, caller.now_ms).map(Some);
            }
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

    /// The tenant of a registry key, or why it admits nothing.
    fn registry_key(&self, key: &str, now_ms: u64) -> Result<String, String> {
        let id = flotilla_pki::api_key_id(key).map_err(|e| e.to_string())?;
        let record = self
            .keys
            .get(id)
            .filter(|r| r.sha256 == flotilla_pki::api_key_sha256(key))
            .ok_or_else(|| "the API key is not known to this federation".to_owned())?;
        if record.revoked {
            return Err(format!("the API key {id} was revoked"));
        }
        if record.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(format!("the API key {id} has expired"));
        }
        Ok(record.tenant.clone())
    }

    /// Governance from the registry's tenants, API key records and policies:
    /// enforced.
    pub fn from_registry(
        tenants: Vec<pb::Tenant>,
        keys: Vec<pb::ApiKey>,
        policies: Vec<pb::TenantPolicy>,
    ) -> Governance {
        let identities = tenants
            .iter()
            .flat_map(|t| t.identities.iter().map(|i| (i.clone(), t.name.clone())))
            .collect();
        let keys = keys
            .into_iter()
            .map(|k| {
                let expires_at_ms = k
                    .expire_time
                    .map(|t| flotilla_client::convert::time_from(t).0);
                let record = KeyRecord {
                    tenant: k.tenant,
                    sha256: k.sha256,
                    expires_at_ms,
                    revoked: k.revoked,
                };
                (k.id, record)
            })
            .collect();
        let policies = policies
            .into_iter()
            .map(|p| (p.tenant.clone(), flotilla_client::convert::policy_from(p)))
            .collect();
        Governance {
            enforce: true,
            api_keys: HashMap::new(),
            keys,
            identities,
            policies,
        }
    }

    /// Of `models`, those the caller's tenant may use; why not when the caller
    /// is not a known tenant.
    pub(crate) fn usable_models<'m>(
        &self,
        models: impl Iterator<Item = &'m str>,
        headers: &HeaderMap,
        caller: Caller<'_>,
    ) -> Result<Vec<&'m str>, String> {
        let tenant = self
            .tenant(headers, caller)?
            .ok_or_else(|| NO_TENANT.to_owned())?;
        let policy = self.policies.get(&tenant);
        Ok(models
            .filter(|m| policy.is_some_and(|p| p.approves(m)))
            .collect())
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
            return Decision::Unauthorized(NO_TENANT.to_owned());
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

/// The governance a gateway enforces now, swapped whole when the registry's
/// changes: a request reads one version from start to end.
#[derive(Debug, Default)]
pub(crate) struct GovernanceCell(RwLock<Arc<Governance>>);

impl GovernanceCell {
    pub(crate) fn new(g: Governance) -> Self {
        GovernanceCell(RwLock::new(Arc::new(g)))
    }

    pub(crate) fn load(&self) -> Arc<Governance> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn store(&self, g: Arc<Governance>) {
        match self.0.write() {
            Ok(mut slot) => *slot = g,
            Err(p) => *p.into_inner() = g,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, key: &str, expires_ms: Option<u64>, revoked: bool) -> pb::ApiKey {
        pb::ApiKey {
            id: id.into(),
            tenant: "acme".into(),
            sha256: flotilla_pki::api_key_sha256(key),
            create_time: None,
            expire_time: expires_ms
                .map(|ms| flotilla_client::convert::time_to(flotilla_core::Timestamp(ms))),
            revoked,
        }
    }

    fn tenant_of(g: &Governance, key: &str, now_ms: u64) -> Result<Option<String>, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            hyper::header::AUTHORIZATION,
            format!("Bearer {key}").parse().map_err(|_| "header")?,
        );
        let caller = Caller {
            identity: None,
            trusted_gateway: false,
            now_ms,
        };
        g.tenant(&headers, caller)
    }

    #[test]
    fn a_registry_key_is_admitted_only_whole_unrevoked_and_unexpired() -> Result<(), String> {
        let made = |()| flotilla_pki::new_api_key().map_err(|e| e.to_string());
        let (live, expiring, revoked) = (made(())?, made(())?, made(())?);
        let g = Governance::from_registry(
            vec![pb::Tenant {
                name: "acme".into(),
                ..Default::default()
            }],
            vec![
                record(&live.id, &live.key, None, false),
                record(&expiring.id, &expiring.key, Some(100_000), false),
                record(&revoked.id, &revoked.key, None, true),
            ],
            Vec::new(),
        );
        assert_eq!(tenant_of(&g, &live.key, 0)?, Some("acme".into()));
        assert_eq!(tenant_of(&g, &expiring.key, 99_999)?, Some("acme".into()));
        let refused = |key: &str, now_ms| tenant_of(&g, key, now_ms).err().unwrap_or_default();
        assert!(refused(&expiring.key, 100_000).contains("has expired"));
        assert!(refused(&revoked.key, 0).contains("was revoked"));
        // The right id with another secret, a key of no record, a malformed one.
        let forged = format!("flk_{}_{}", live.id, "A".repeat(43));
        assert!(refused(&forged, 0).contains("not known"));
        assert!(refused(&made(())?.key, 0).contains("not known"));
        assert!(refused("flk_nope", 0).contains("keys look like"));
        Ok(())
    }
}
