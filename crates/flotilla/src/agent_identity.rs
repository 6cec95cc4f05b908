//! The agent roles' identity, shared by `flotilla agent` and `flotilla controller`:
//! the controller (and a whole-cluster agent) speaks to the registry as its
//! cluster's agent, a node agent (`--report-scope node`) as its node's. Join with a
//! token, load it from `--state-dir`, or run in plaintext with `--insecure`.

use anyhow::Context as _;
use flotilla_client::TransportSecurity;
use flotilla_pki::{JoinToken, Role};
use std::path::Path;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The tasks of an agent-role process, each named for the error when it fails.
pub(crate) type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Runs `tasks` until a shutdown signal (or the watched parent is gone) or until one
/// of them ends; then cancels `stop`, waits for every task, and answers the first
/// failure, named as a part of `process` (`agent`, `controller`). `on_signal` is
/// logged when it is told to stop.
pub(crate) async fn run_until_stopped(
    mut tasks: Tasks,
    stop: CancellationToken,
    parent: crate::signals::ParentWatch,
    process: &str,
    on_signal: &str,
) -> anyhow::Result<()> {
    let mut first = None;
    tokio::select! {
        () = parent.stop_requested() => tracing::info!("{on_signal}"),
        Some(done) = tasks.join_next() => first = Some(done),
    }
    stop.cancel();
    let mut result = Ok(());
    let mut record = |done: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>| {
        let failure = match done {
            Ok((_, Ok(()))) => return,
            Ok((part, Err(e))) => e.context(format!("{process} {part}")),
            Err(e) => anyhow::anyhow!("a {process} task failed: {e}"),
        };
        if result.is_ok() {
            result = Err(failure);
        }
    };
    if let Some(done) = first {
        record(done);
    }
    while let Some(done) = tasks.join_next().await {
        record(done);
    }
    result
}

/// Serves `admin` on `listener` as one of `tasks` and, with an mTLS identity kept in
/// `state_dir`, renews it (see [`spawn_renewal`]), both until `stop`.
pub(crate) fn spawn_admin_and_renewal(
    tasks: &mut Tasks,
    listener: tokio::net::TcpListener,
    admin: flotilla_agent::admin::Admin,
    security: &TransportSecurity,
    state_dir: Option<&Path>,
    servers: &[String],
    stop: &CancellationToken,
) {
    let serving = stop.clone();
    tasks.spawn(async move {
        let served = flotilla_agent::admin::serve(listener, admin, serving).await;
        ("admin endpoint", served.map_err(anyhow::Error::from))
    });
    spawn_renewal(tasks, security, state_dir, servers, stop);
}

/// With an mTLS identity kept in `state_dir`: renews its certificate before it
/// expires, in place, as one of `tasks`, until `stop`.
pub(crate) fn spawn_renewal(
    tasks: &mut Tasks,
    security: &TransportSecurity,
    state_dir: Option<&Path>,
    servers: &[String],
    stop: &CancellationToken,
) {
    let (TransportSecurity::Mtls(m), Some(dir)) = (security, state_dir) else {
        return;
    };
    let pki_dir = dir.join("pki");
    let role = m.cert.identity().role;
    let renewal = flotilla_client::renewal::Renewal::new(
        m.cert.clone(),
        servers.to_vec(),
        security.clone(),
        pki_dir.clone(),
        role.as_str(),
    );
    let stop = stop.clone();
    tasks.spawn(async move {
        let r = renewal.run(stop.cancelled_owned()).await;
        (
            "certificate renewal",
            r.with_context(|| format!("renewing the certificate in {}", pki_dir.display())),
        )
    });
}

/// How to get an identity, for the error that says there is none.
fn identity_help(cluster: &str, role: Role) -> String {
    format!(
        "on the server holding the federation CA run `flotilla federation token --role {role} --cluster {cluster} --server HOST:PORT --data-dir DIR`, then start this agent with `--state-dir DIR --join TOKEN`; or pass --insecure for a plaintext development federation"
    )
}

/// The transport to the servers: this agent's mTLS identity (joining with the token
/// first if one is given), or plaintext with `--insecure`. Refuses to guess. With
/// `node`, the identity is that node's agent's ([`Role::Node`]); without, the
/// cluster's agent's.
pub(crate) async fn security(
    cluster: &str,
    node: Option<&str>,
    state_dir: Option<&Path>,
    join: Option<&str>,
    insecure: bool,
) -> anyhow::Result<TransportSecurity> {
    let role = if node.is_some() {
        Role::Node
    } else {
        Role::Agent
    };
    let pki = state_dir.map(|d| d.join("pki"));
    if let (Some(join), Some(pki)) = (join, &pki) {
        let token = JoinToken::decode(join).context("--join: not a join token")?;
        anyhow::ensure!(
            token.cluster == cluster,
            "--join: the token admits cluster {:?}, but this agent is --cluster {:?}",
            token.cluster,
            cluster
        );
        flotilla_client::join::join_with_token(&token, role, node, pki)
            .await
            .with_context(|| format!("joining with the token at {}", token.server))?;
    }
    let identity = match &pki {
        Some(pki) => flotilla_client::join::load_identity(pki, role)
            .with_context(|| format!("loading the {role} identity in {}", pki.display()))?,
        None => None,
    };
    match (identity, insecure) {
        (Some(_), true) => anyhow::bail!(
            "--insecure, but {} holds an identity: drop --insecure to use mTLS",
            pki.as_deref().unwrap_or(std::path::Path::new("")).display()
        ),
        (Some(m), false) => {
            let id = m.cert.identity();
            anyhow::ensure!(
                id.cluster == cluster && id.node.as_deref() == node,
                "the identity in --state-dir is {id}, not the {role} of cluster {cluster:?}{}",
                node.map(|n| format!(" node {n:?}")).unwrap_or_default()
            );
            tracing::info!(identity = %id, "agent identity loaded: mTLS to the servers");
            Ok(TransportSecurity::Mtls(m))
        }
        (None, true) => {
            tracing::warn!(
                "--insecure: talking to the servers in PLAINTEXT without an identity (development only)"
            );
            eprintln!(
                "warning: --insecure: plaintext to the servers, no identity (development only)"
            );
            Ok(TransportSecurity::Plaintext)
        }
        (None, false) => match &pki {
            Some(pki) => anyhow::bail!(
                "{} holds no {role} identity: {}",
                pki.display(),
                identity_help(cluster, role)
            ),
            None => anyhow::bail!(
                "the agent has no identity (no --state-dir): {}",
                identity_help(cluster, role)
            ),
        },
    }
}
