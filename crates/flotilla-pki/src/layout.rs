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

/// Where a renewed file waits before it replaces `path`.
fn pending(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".renewing");
    PathBuf::from(name)
}

/// Replaces an identity's files after a renewal. Both new files are written and
/// fsynced beside the old ones first (`<file>.renewing`), then renamed over them,
/// the key first, and then the directory is fsynced, so that the renames survive a
/// power cut. A crash between the two renames leaves the new key beside the old
/// certificate; [`finish_renewal`], which every load runs, completes it.
pub fn save_renewed(
    dir: &Path,
    name: &str,
    chain: &[CertificateDer<'_>],
    key: &PrivateKeyDer<'_>,
) -> Result<()> {
    let (key_file, cert_file) = (key_path(dir, name), cert_path(dir, name));
    let (key_next, cert_next) = (pending(&key_file), pending(&cert_file));
    for leftover in [&key_next, &cert_next] {
        files::remove_if_present(leftover)?;
    }
    files::write_new(&key_next, crate::ca::key_pem(key)?.as_bytes(), true)?;
    files::write_new(&cert_next, files::certs_pem(chain).as_bytes(), false)?;
    files::rename(&key_next, &key_file)?;
    files::rename(&cert_next, &cert_file)?;
    files::sync_dir(dir)
}

/// Completes, or abandons, a renewal that a crash interrupted; nothing to do
/// otherwise. Both files still waiting: no rename happened, so the old pair stands
/// and the waiting files go. Only the certificate waiting: the key was renamed, so
/// the certificate follows it.
pub fn finish_renewal(dir: &Path, name: &str) -> Result<()> {
    let (key_file, cert_file) = (key_path(dir, name), cert_path(dir, name));
    let (key_next, cert_next) = (pending(&key_file), pending(&cert_file));
    match (key_next.exists(), cert_next.exists()) {
        (false, false) => return Ok(()),
        (false, true) => files::rename(&cert_next, &cert_file)?,
        (true, _) => {
            files::remove_if_present(&key_next)?;
            files::remove_if_present(&cert_next)?;
        }
    }
    files::sync_dir(dir)
}
