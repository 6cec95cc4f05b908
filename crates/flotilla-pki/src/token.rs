//! Join tokens: single-use by default, or good for a counted number of joins.
//!
//! A token is `flotilla-join.` + base64url(JSON of [`JoinToken`]): the identity it
//! admits (federation, cluster, role), its expiry, the address of the server holding
//! the CA, the SHA-256 fingerprint of the CA certificate (so the joiner can check it is
//! talking to the right federation before it trusts anything) and 32 random bytes.
//!
//! The CA side remembers only the SHA-256 of each token's secret, with the identity and
//! expiry it was issued for, how many joins it admits and how many it has admitted,
//! in `tokens.json` next to the CA key ([`TokenStore`]). Redeeming counts one join;
//! a redeem past the count is refused.
//!
//! **Why counted, not only single-use.** A Kubernetes DaemonSet runs one agent per
//! GPU node from one pod template, so every node's agent presents the same token
//! (kubeadm's bootstrap tokens are shared the same way). A count bounds the damage
//! of a leaked token to the number of nodes it was meant for; a server token is
//! always single-use, because every Raft member must be a distinct identity holder.
//! Writers take a lock file, so `flotilla federation token` and a running server can
//! share the file.

use crate::error::{Error, Result};
use crate::files;
use crate::identity::{Identity, Role};
use base64::Engine;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "flotilla-join.";
/// The token ledger in the CA's directory.
pub const TOKENS_FILE: &str = "tokens.json";

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::generate("random bytes", "the system random source failed"))?;
    Ok(b)
}

/// Lower-case hex, in one allocation: a gateway hashes every API key it is shown,
/// and a `format!` per byte was its most expensive part (perf, 2026-12-07).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Whom a token admits: one identity, or (role [`Role::Node`]) the agents of a
/// cluster's nodes, each joining under its own node's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSubject {
    pub federation: String,
    pub cluster: String,
    pub role: Role,
}

impl TokenSubject {
    /// The subject of a token for `role` in `cluster`, names checked.
    pub fn new(federation: &str, cluster: &str, role: Role) -> Result<Self> {
        crate::identity::validate_name("federation", federation)?;
        crate::identity::validate_name("cluster", cluster)?;
        Ok(TokenSubject {
            federation: federation.to_owned(),
            cluster: cluster.to_owned(),
            role,
        })
    }
}

impl From<&Identity> for TokenSubject {
    fn from(id: &Identity) -> Self {
        TokenSubject {
            federation: id.federation.clone(),
            cluster: id.cluster.clone(),
            role: id.role,
        }
    }
}

impl std::fmt::Display for TokenSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Role::Node => write!(
                f,
                "spiffe://{}/cluster/{}/node/*",
                self.federation, self.cluster
            ),
            role => write!(
                f,
                "spiffe://{}/cluster/{}/{role}",
                self.federation, self.cluster
            ),
        }
    }
}

/// What a join token says. Only the CA side's ledger makes it valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub federation: String,
    pub cluster: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: u64,
    /// Where the server holding the CA listens (`host:port`).
    pub server: String,
    /// SHA-256 (hex) of the CA certificate's DER.
    pub ca_fingerprint: String,
    secret: String,
}

impl JoinToken {
    /// The identity a join with this token gets: the token's own, or for a node
    /// token, the agent of `node` in the token's cluster. A node must be named for
    /// a node token and only for one.
    pub fn identity(&self, node: Option<&str>) -> Result<Identity> {
        match (self.role, node) {
            (Role::Node, Some(node)) => Identity::for_node(&self.federation, &self.cluster, node),
            (Role::Node, None) => Err(Error::Token {
                subject: format!("spiffe://{}/cluster/{}/node", self.federation, self.cluster),
                reason: "is a node token: a join with it names the node (`flotilla agent --report-scope node --node NAME`)".into(),
            }),
            (role, Some(node)) => Err(Error::Token {
                subject: format!("spiffe://{}/cluster/{}/{role}", self.federation, self.cluster),
                reason: format!("is a {role} token, not a node token: it cannot admit node {node:?}"),
            }),
            (role, None) => Identity::new(&self.federation, &self.cluster, role),
        }
    }

    /// The hash the ledger keeps.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    pub fn encode(&self) -> Result<String> {
        let json = serde_json::to_vec(self).map_err(|e| Error::malformed("join token", e))?;
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        ))
    }

    pub fn decode(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::Token {
            subject: "a token".into(),
            reason,
        };
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("does not start with {PREFIX:?}")))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| bad(format!("is not base64url: {e}")))?;
        let token: JoinToken =
            serde_json::from_slice(&json).map_err(|e| bad(format!("does not decode: {e}")))?;
        crate::identity::validate_name("federation", &token.federation)?;
        crate::identity::validate_name("cluster", &token.cluster)?;
        Ok(token)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    hash: String,
    cluster: String,
    role: Role,
    expires_at: u64,
    /// The last redemption (unix seconds).
    used_at: Option<u64>,
    /// How many joins the token admits (ledgers written before counts: 1).
    #[serde(default = "one")]
    uses: u32,
    /// How many it has admitted. Older ledgers have only `used_at`.
    #[serde(default)]
    redeemed: u32,
    /// For a node token: the nodes it has admitted, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Record {
    fn redeemed(&self) -> u32 {
        self.redeemed.max(u32::from(self.used_at.is_some()))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    tokens: Vec<Record>,
}

/// The CA side's ledger of issued tokens (`tokens.json` in the CA's directory).
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

/// The ledger's writer lock: an advisory lock (`flock`) on a file beside it. The
/// kernel drops it when its holder exits, however it exits, so there is no stale lock
/// to judge and take over (two waiters once both took over one judged stale, and a
/// token was redeemed twice). The file itself stays.
struct LockFile {
    _locked: std::fs::File,
}

impl LockFile {
    fn take(path: PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LockFile { _locked: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::io(&path, "held by another process for 5 s"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }
}

impl TokenStore {
    pub fn new(ca_dir: &Path) -> Self {
        TokenStore {
            path: ca_dir.join(TOKENS_FILE),
        }
    }

    /// The ledger as the file holds it; empty before the first token.
    fn read_ledger(&self) -> Result<Ledger> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::malformed(self.path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> Result<T>) -> Result<T> {
        let _lock = LockFile::take(self.path.with_extension("lock"))?;
        let mut ledger = self.read_ledger()?;
        let out = f(&mut ledger)?;
        // Forget tokens that expired more than a day ago.
        let horizon = unix_secs(SystemTime::now()).saturating_sub(86_400);
        ledger.tokens.retain(|r| r.expires_at > horizon);
        let json = serde_json::to_vec_pretty(&ledger)
            .map_err(|e| Error::malformed(self.path.display().to_string(), e))?;
        files::replace(&self.path, &json, true)?;
        Ok(out)
    }

    /// Issues a single-use token for `subject`, valid for `ttl`, naming `server` as
    /// the place to redeem it, and records it.
    pub fn issue(
        &self,
        subject: impl Into<TokenSubject>,
        ttl: Duration,
        server: &str,
        ca_cert: &rustls_pki_types::CertificateDer<'_>,
    ) -> Result<JoinToken> {
        self.issue_counted(subject, ttl, server, ca_cert, 1)
    }

    /// Issues a token that admits up to `uses` joins of `subject` (one per node of a
    /// DaemonSet, say). Server tokens are refused unless `uses` is 1: each Raft
    /// member needs a token of its own.
    pub fn issue_counted(
        &self,
        subject: impl Into<TokenSubject>,
        ttl: Duration,
        server: &str,
        ca_cert: &rustls_pki_types::CertificateDer<'_>,
        uses: u32,
    ) -> Result<JoinToken> {
        let identity = subject.into();
        let refuse = |reason: String| Error::Token {
            subject: identity.to_string(),
            reason,
        };
        if uses == 0 {
            return Err(refuse(
                "cannot admit 0 joins; uses must be at least 1".into(),
            ));
        }
        if uses > 1 && identity.role == Role::Server {
            return Err(refuse(format!(
                "cannot admit {uses} joins: a server token is single-use, one per server"
            )));
        }
        let token = JoinToken {
            federation: identity.federation.clone(),
            cluster: identity.cluster.clone(),
            role: identity.role,
            expires_at: unix_secs(SystemTime::now() + ttl),
            server: server.to_owned(),
            ca_fingerprint: sha256_hex(ca_cert.as_ref()),
            secret: hex(&random_bytes::<32>()?),
        };
        let record = Record {
            hash: token.secret_hash(),
            cluster: token.cluster.clone(),
            role: token.role,
            expires_at: token.expires_at,
            used_at: None,
            uses,
            redeemed: 0,
            nodes: Vec::new(),
        };
        self.with_ledger(|l| {
            l.tokens.push(record);
            Ok(())
        })?;
        Ok(token)
    }

    /// Whether the ledger would let `token` join now as `identity` (see
    /// [`JoinToken::identity`]), without taking the lock or writing anything: what a
    /// server checks before it spends any work on a join (a forged token costs one
    /// read of a small file).
    pub fn check(&self, token: &JoinToken, identity: &Identity, now: SystemTime) -> Result<()> {
        let ledger = self.read_ledger()?;
        admits(&ledger, token, identity, unix_secs(now)).map_err(|reason| Error::Token {
            subject: identity.uri(),
            reason,
        })
    }

    /// Redeems one join of a token as `identity`: the token must be known, have
    /// joins left, be unexpired, and have been issued for that identity (for a node
    /// token: for that cluster's nodes, and not have admitted this node before).
    pub fn redeem(&self, token: &JoinToken, identity: &Identity, now: SystemTime) -> Result<()> {
        let hash = token.secret_hash();
        let now = unix_secs(now);
        self.with_ledger(|l| {
            admits(l, token, identity, now).map_err(|reason| Error::Token {
                subject: identity.uri(),
                reason,
            })?;
            if let Some(r) = l.tokens.iter_mut().find(|r| r.hash == hash) {
                r.redeemed = r.redeemed() + 1;
                r.used_at = Some(now);
                r.nodes.extend(identity.node.clone());
            }
            Ok(())
        })
    }
}

/// Why `ledger` refuses `token` at `now` (unix seconds), if it does.
fn admits(
    ledger: &Ledger,
    token: &JoinToken,
    identity: &Identity,
    now: u64,
) -> std::result::Result<(), String> {
    let hash = token.secret_hash();
    let Some(r) = ledger.tokens.iter().find(|r| r.hash == hash) else {
        return Err("unknown to this CA (never issued here, or forgotten)".to_owned());
    };
    if r.cluster != token.cluster
        || r.role != token.role
        || identity.cluster != r.cluster
        || identity.role != r.role
        || identity.federation != token.federation
    {
        return Err("was issued for another identity".to_owned());
    }
    if let Some(node) = &identity.node
        && r.nodes.contains(node)
    {
        return Err(format!(
            "has already admitted node {node:?}: a node joins once per token (its agent keeps its identity on the node); a rebuilt node needs a token of its own"
        ));
    }
    if r.redeemed() >= r.uses {
        return Err(if r.uses == 1 {
            "was already used (the token is single-use)".to_owned()
        } else {
            format!("was already used {} times, all it admits", r.uses)
        });
    }
    if r.expires_at <= now {
        return Err("has expired".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_hex_is_the_lower_case_hex_of_the_digest() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
