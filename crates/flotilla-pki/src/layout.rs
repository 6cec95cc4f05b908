//! The files of one identity in a PKI directory:
//!
//! ```text
//! <dir>/ca.pem            the federation CA certificate (what this identity trusts)
//! <dir>/ca-key.pem        the CA key, 0600 (only where `federation init` ran)
//! <dir>/tokens.json       the join-token ledger (only where the CA key is)
//! <dir>/<name>.pem        this identity's certificate, then the CA's
//! <dir>/<name>-key.pem    its private key, 0600
//! ```
//!
//! `<name>` is the role (`server`, `agent`, `gateway`, `admin`).

use crate::ca::CA_CERT;
use crate::error::Result;
use crate::files;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-key.pem"))
}

pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT)
}

/// Writes a new identity (refuses to overwrite), and the CA certificate if absent.
pub fn save_new(
    dir: &Path,
    name: &str,
    chain: &[CertificateDer<'_>],
    key: &PrivateKeyDer<'_>,
) -> Result<()> {
    files::write_new(
        &key_path(dir, name),
        crate::ca::key_pem(key)?.as_bytes(),
        true,
    )?;
    files::write_new(
        &cert_path(dir, name),
        files::certs_pem(chain).as_bytes(),
        false,
    )?;
    if let Some(ca) = chain.get(1) {
        let ca_file = ca_path(dir);
        if !ca_file.exists() {
            files::write_new(
                &ca_file,
                files::certs_pem(std::slice::from_ref(ca)).as_bytes(),
                false,
            )?;
        }
    }
    Ok(())
}

/// Replaces an identity's files after a renewal (key first; both atomically).
pub fn save_renewed(
    dir: &Path,
    name: &str,
    chain: &[CertificateDer<'_>],
    key: &PrivateKeyDer<'_>,
) -> Result<()> {
    files::replace(
        &key_path(dir, name),
        crate::ca::key_pem(key)?.as_bytes(),
        true,
    )?;
    files::replace(
        &cert_path(dir, name),
        files::certs_pem(chain).as_bytes(),
        false,
    )
}
