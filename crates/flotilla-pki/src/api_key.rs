//! API keys for the federation's tenants: `flk_<id>_<secret>`, where the id (16 hex
//! digits) is public and names the key's record, and the secret (32 random bytes,
//! base64url) is known only to whoever was given the key. The registry keeps the
//! SHA-256 of the whole key; a gateway finds the record by the id and compares.

use crate::error::{Error, Result};
use base64::Engine as _;

/// What every key starts with.
pub const API_KEY_PREFIX: &str = "flk_";
/// Hex digits of the public id.
const ID_HEX: usize = 16;
/// Characters of the secret: 32 bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// A key just made, with what its record keeps.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The key: shown once, to whoever asked for it.
    pub key: String,
    pub id: String,
    pub sha256: String,
}

/// Makes a key from the system's random source.
pub fn new_api_key() -> Result<NewApiKey> {
    let id: String = crate::token::random_bytes::<8>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::token::random_bytes::<32>()?);
    let key = format!("{API_KEY_PREFIX}{id}_{secret}");
    Ok(NewApiKey {
        sha256: api_key_sha256(&key),
        key,
        id,
    })
}

/// The SHA-256 of a whole key, lower-case hex: what a key's record keeps.
pub fn api_key_sha256(key: &str) -> String {
    crate::token::sha256_hex(key.as_bytes())
}

/// The public id of a key of the right shape; an error naming what is wrong with
/// it otherwise (never echoing the key).
pub fn api_key_id(key: &str) -> Result<&str> {
    let wrong = |why: &str| Error::Token {
        subject: "an API key".into(),
        reason: format!(
            "{why}: keys look like {API_KEY_PREFIX}<16 hex digits>_<{SECRET_CHARS} base64url characters>"
        ),
    };
    let rest = key
        .strip_prefix(API_KEY_PREFIX)
        .ok_or_else(|| wrong("does not start with flk_"))?;
    let (id, secret) = rest
        .split_once('_')
        .ok_or_else(|| wrong("has no '_' between id and secret"))?;
    if id.len() != ID_HEX
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(wrong("its id is not 16 lower-case hex digits"));
    }
    if secret.len() != SECRET_CHARS
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(wrong("its secret is not 43 base64url characters"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_names_its_id_and_hashes_to_its_record() -> Result<()> {
        let made = new_api_key()?;
        assert_eq!(api_key_id(&made.key)?, made.id);
        assert_eq!(api_key_sha256(&made.key), made.sha256);
        assert_ne!(new_api_key()?.key, made.key);
        Ok(())
    }

    #[test]
    fn keys_of_the_wrong_shape_say_what_is_wrong_without_echoing_the_key() {
        for (key, why) in [
            ("sk-abc", "does not start with flk_"),
            ("flk_0123456789abcdef", "has no '_'"),
            ("flk_0123_abc", "its id is not"),
            ("flk_0123456789abcdef_short", "its secret is not"),
        ] {
            let err = api_key_id(key).unwrap_err().to_string();
            assert!(err.contains(why), "{key}: {err}");
            assert!(!err.contains(key), "{err} echoes the key");
        }
    }
}
