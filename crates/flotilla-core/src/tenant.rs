//! Tenants and their API keys: who calls the federation's models. A tenant is named
//! by its API keys (for callers outside the mesh) and by workload identities (mTLS
//! SPIFFE IDs, for callers inside it); its policy ([`crate::TenantPolicy`]) says
//! which models it may call.
//!
//! The registry never holds a key itself: [`ApiKey`] keeps the key's public id and
//! the SHA-256 of the whole key, made where the key was made (the server that
//! answered `CreateApiKey`), which prints the key once. A gateway finds a
//! presented key's record by its id and compares hashes.

use crate::error::{ObjectKind, ValidationError};
use crate::names::validate_name;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The most workload identities one tenant may name.
pub const MAX_TENANT_IDENTITIES: usize = 64;

/// A tenant of the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// A DNS label.
    pub name: String,
    /// Workload identities (`spiffe://…`) that call as this tenant.
    #[serde(default)]
    pub identities: Vec<String>,
}

impl Tenant {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(ObjectKind::Tenant, &self.name, "name")?;
        let bad = |field: String, message: String| {
            Err(ValidationError::new(
                ObjectKind::Tenant,
                &self.name,
                field,
                message,
            ))
        };
        if self.identities.len() > MAX_TENANT_IDENTITIES {
            return bad(
                "identities".into(),
                format!(
                    "names {} identities; at most {MAX_TENANT_IDENTITIES} are allowed",
                    self.identities.len()
                ),
            );
        }
        for (i, id) in self.identities.iter().enumerate() {
            let field = format!("identities[{i}]");
            if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
                return bad(field, format!("{id:?} is not a spiffe:// identity"));
            }
            if id.chars().any(|c| c.is_whitespace() || c.is_control()) || id.len() > 2048 {
                return bad(
                    field,
                    format!("{id:?} holds whitespace or is longer than 2048"),
                );
            }
            if self.identities[..i].contains(id) {
                return bad(field, format!("{id:?} is named twice"));
            }
        }
        Ok(())
    }
}

/// An API key's record: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key's public id (the part of the key a gateway looks it up by).
    pub id: String,
    pub tenant: String,
    /// SHA-256 of the whole key, lower-case hex.
    pub sha256: String,
    pub created_at: Timestamp,
    /// After this the key is refused; `None`: it does not expire.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Revoked keys are kept (until they would have expired, if ever) so that a
    /// gateway refusing one can say why.
    #[serde(default)]
    pub revoked: bool,
}

impl ApiKey {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |field: &str, message: String| {
            Err(ValidationError::new(
                ObjectKind::ApiKey,
                &self.id,
                field,
                message,
            ))
        };
        if self.id.len() != 16 || !self.id.chars().all(is_lower_hex) {
            return bad(
                "id",
                format!("{:?} is not 16 lower-case hex digits", self.id),
            );
        }
        validate_name(ObjectKind::ApiKey, &self.tenant, "tenant")?;
        if self.sha256.len() != 64 || !self.sha256.chars().all(is_lower_hex) {
            return bad(
                "sha256",
                "is not a SHA-256 in lower-case hex (64 digits)".into(),
            );
        }
        if let Some(expires) = self.expires_at
            && expires <= self.created_at
        {
            return bad(
                "expires_at",
                format!(
                    "({} ms) is not after created_at ({} ms)",
                    expires.0, self.created_at.0
                ),
            );
        }
        Ok(())
    }

    /// Whether the key admits calls at `now`.
    pub fn usable_at(&self, now: Timestamp) -> Result<(), KeyRefusal> {
        if self.revoked {
            return Err(KeyRefusal::Revoked);
        }
        match self.expires_at {
            Some(at) if at <= now => Err(KeyRefusal::Expired { at }),
            _ => Ok(()),
        }
    }
}

/// Why a known key admits no call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Revoked,
    Expired { at: Timestamp },
}

impl std::fmt::Display for KeyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRefusal::Revoked => f.write_str("the API key was revoked"),
            KeyRefusal::Expired { at } => write!(f, "the API key expired (at {} ms)", at.0),
        }
    }
}

fn is_lower_hex(c: char) -> bool {
    c.is_ascii_digit() || ('a'..='f').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKey {
        ApiKey {
            id: "0123456789abcdef".into(),
            tenant: "acme".into(),
            sha256: "a".repeat(64),
            created_at: Timestamp(10),
            expires_at: Some(Timestamp(20)),
            revoked: false,
        }
    }

    #[test]
    fn a_key_is_usable_until_it_expires_or_is_revoked() {
        let k = key();
        assert_eq!(k.usable_at(Timestamp(19)), Ok(()));
        assert_eq!(
            k.usable_at(Timestamp(20)),
            Err(KeyRefusal::Expired { at: Timestamp(20) })
        );
        let revoked = ApiKey {
            revoked: true,
            ..key()
        };
        assert_eq!(revoked.usable_at(Timestamp(0)), Err(KeyRefusal::Revoked));
    }

    #[test]
    fn records_of_the_wrong_shape_name_the_field() {
        for (k, field) in [
            (
                ApiKey {
                    id: "XYZ".into(),
                    ..key()
                },
                "id",
            ),
            (
                ApiKey {
                    sha256: "0".into(),
                    ..key()
                },
                "sha256",
            ),
            (
                ApiKey {
                    expires_at: Some(Timestamp(5)),
                    ..key()
                },
                "expires_at",
            ),
            (
                ApiKey {
                    tenant: "Acme".into(),
                    ..key()
                },
                "tenant",
            ),
        ] {
            assert_eq!(k.validate().unwrap_err().field, field);
        }
        let t = Tenant {
            name: "acme".into(),
            identities: vec!["spiffe://f/ns/a".into(), "spiffe://f/ns/a".into()],
        };
        assert_eq!(t.validate().unwrap_err().field, "identities[1]");
        let t = Tenant {
            name: "acme".into(),
            identities: vec!["https://x".into()],
        };
        assert_eq!(t.validate().unwrap_err().field, "identities[0]");
    }
}
