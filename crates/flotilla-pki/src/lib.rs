//! Flotilla's federation PKI: mTLS without ceremony.
//!
//! - [`ca`]: the federation CA (ECDSA P-256; key files 0600; never overwritten),
//!   identity certificates, and CSR signing checked against what a token or an existing
//!   certificate allows.
//! - [`identity`]: SPIFFE ids `spiffe://<federation>/cluster/<name>/<role>` and reading
//!   them from peer certificates.
//! - [`token`]: single-use join tokens with a TTL, and the CA side's ledger.
//! - [`tls`]: rustls server and client configurations (client certificates required
//!   from the federation CA) and [`tls::RotatingCert`], the resolver that swaps in a
//!   renewed certificate without a restart.
//! - [`layout`]: where the files of one identity live on disk.
//! - [`api_key`]: tenants' API keys (`flk_<id>_<secret>`) and the hash their
//!   records keep.
//!
//! **What it must not do:** network IO or async. It makes and checks keys,
//! certificates and tokens; the registry and the binary move them.

pub mod api_key;
pub mod ca;
pub mod error;
pub mod files;
pub mod identity;
pub mod layout;
pub mod tls;
pub mod token;

pub use api_key::{NewApiKey, api_key_id, api_key_sha256, new_api_key};
pub use ca::{CertificateAuthority, IssuedIdentity, Validity, csr_identity, new_key_and_csr};
pub use error::{Error, Result};
pub use identity::{CertInfo, Identity, Role, peer_identity, validate_node_name};
pub use tls::{RotatingCert, TrustBundle, bootstrap_client_config, client_config, server_config};
pub use token::{JoinToken, TOKENS_FILE, TokenStore, TokenSubject};
