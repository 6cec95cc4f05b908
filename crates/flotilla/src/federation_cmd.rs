//! `flotilla federation`: the PKI without ceremony.
//!
//! - `flotilla federation init --federation NAME --cluster NAME --data-dir DIR` makes
//!   the federation CA (ECDSA P-256; `DIR/pki/ca-key.pem`, 0600) and this server's
//!   identity in `DIR/pki/`, and an admin identity for `flotilla ctl` in the config
//!   directory (`~/.config/flotilla` by default). Then `flotilla server --init
//!   --data-dir DIR` serves the federation over mTLS.
//! - `flotilla federation token --cluster NAME --ttl 1h --server HOST:PORT --data-dir DIR`
//!   prints a single-use join token for `flotilla server --join TOKEN` (run where the CA
//!   key is: the token ledger lives next to it).

use anyhow::{Context, bail};
use flotilla_pki::{
    CertificateAuthority, Identity, Role, TokenStore, TokenSubject, Validity, layout,
};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub(crate) struct FederationArgs {
    #[command(subcommand)]
    command: FederationCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FederationCommand {
    /// Creates the federation CA, this server's identity and an admin identity.
    Init(InitArgs),
    /// Issues a join token for a cluster's server, agent or gateway (single-use unless
    /// --uses says otherwise).
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The federation's name (a DNS label).
    #[arg(long, env = "FLOTILLA_FEDERATION")]
    federation: String,
    /// This server's cluster (a DNS label).
    #[arg(long, env = "FLOTILLA_CLUSTER")]
    cluster: String,
    /// The server's data directory; the PKI goes to DATA_DIR/pki.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: PathBuf,
    /// Where `flotilla ctl` finds its identity (admin.pem, admin-key.pem, ca.pem).
    #[arg(long, env = "FLOTILLA_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// The admin identity's name.
    #[arg(long, default_value = "admin")]
    admin: String,
    /// Extra host names or IP addresses in the server certificate (for tools that
    /// check host names, such as grpcurl without -authority).
    #[arg(long = "san", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    sans: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The cluster the token admits.
    #[arg(long)]
    cluster: String,
    /// server, agent (the cluster's controller), node (the GPU nodes' agents, each
    /// joining under its own node's name), gateway or admin.
    #[arg(long, default_value = "server")]
    role: String,
    /// How long the token stays valid ("30m", "1h").
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// How many joins the token admits: one per GPU node for a node token (each
    /// node once). Server tokens are always single-use.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    uses: u32,
    /// Where joiners reach this (CA-holding) server, host:port.
    #[arg(long, env = "FLOTILLA_ADVERTISE")]
    server: String,
    /// The data directory of the server holding the CA (`federation init` ran here).
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: PathBuf,
}

/// `~/.config/flotilla`, or `$FLOTILLA_CONFIG_DIR`.
pub(crate) fn default_config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLOTILLA_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("flotilla")
}

pub(crate) fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

pub(crate) fn run(args: FederationArgs) -> anyhow::Result<()> {
    match args.command {
        FederationCommand::Init(a) => init(a),
        FederationCommand::Token(a) => token(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let pki = pki_dir(&a.data_dir);
    let config_dir = a.config_dir.clone().unwrap_or_else(default_config_dir);
    let server = Identity::new(&a.federation, &a.cluster, Role::Server)?;
    let admin = Identity::new(&a.federation, &a.admin, Role::Admin)?;
    for p in [
        pki.join(flotilla_pki::ca::CA_KEY),
        layout::cert_path(&pki, "server"),
        layout::cert_path(&config_dir, "admin"),
    ] {
        if p.exists() {
            bail!(
                "{} already exists: this federation (or another) was initialized here; refusing to overwrite it",
                p.display()
            );
        }
    }
    let ca = CertificateAuthority::create(&a.federation)?;
    ca.save(&pki)?;
    let issued = ca.issue(
        &server,
        Validity::from_now(flotilla_pki::ca::LEAF_VALIDITY),
        &a.sans,
    )?;
    layout::save_new(&pki, "server", &issued.chain, &issued.key)?;
    let issued = ca.issue(
        &admin,
        Validity::from_now(flotilla_pki::ca::LEAF_VALIDITY),
        &[],
    )?;
    layout::save_new(&config_dir, "admin", &issued.chain, &issued.key)
        .with_context(|| format!("writing the admin identity to {}", config_dir.display()))?;
    println!(
        "federation {:?}: CA created in {}",
        a.federation,
        pki.display()
    );
    println!(
        "  server identity  {server}  ({})",
        layout::cert_path(&pki, "server").display()
    );
    println!(
        "  admin identity   {admin}  ({})",
        layout::cert_path(&config_dir, "admin").display()
    );
    println!("  CA fingerprint   sha256:{}", ca.trust()?.fingerprint());
    println!();
    println!(
        "next: flotilla server --init --data-dir {}",
        a.data_dir.display()
    );
    println!("      flotilla ctl get clusters");
    Ok(())
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let pki = pki_dir(&a.data_dir);
    let ca = CertificateAuthority::load(&pki).with_context(|| {
        format!(
            "loading the federation CA from {} (tokens are issued where `flotilla federation init` ran)",
            pki.display()
        )
    })?;
    let role: Role = a.role.parse()?;
    let ttl: flotilla_core::Millis = a
        .ttl
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--ttl: {e}"))?;
    if ttl.0 == 0 {
        bail!("--ttl must be more than 0");
    }
    let identity = TokenSubject::new(ca.federation(), &a.cluster, role)?;
    let token = TokenStore::new(&pki).issue_counted(
        identity.clone(),
        std::time::Duration::from_millis(ttl.0),
        &a.server,
        ca.cert(),
        a.uses,
    )?;
    if a.uses == 1 {
        eprintln!("single-use token for {identity}, valid for {}:", a.ttl);
    } else {
        eprintln!(
            "token for {} joins as {identity}, valid for {}:",
            a.uses, a.ttl
        );
    }
    println!("{}", token.encode()?);
    Ok(())
}
