//! `flotilla`: the one binary.

mod agent_cmd;
mod agent_identity;
mod controller_cmd;
mod ctl_cmd;
mod federation_cmd;
mod gateway_cmd;
mod install_cmd;
mod istio_args;
mod model_cmd;
mod plan_cmd;
mod server_cmd;
mod signals;
mod sim_cmd;
mod table;
mod up_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Moves GPU inference workloads between Kubernetes clusters as capacity comes and goes, and makes traffic follow them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the scheduler on a federation file (a dry run) and prints placements and routes.
    Plan(plan_cmd::PlanArgs),
    /// Simulates scenarios under a virtual clock and compares scheduling policies.
    Sim(sim_cmd::SimArgs),
    /// Runs this cluster's registry server: a Raft member of the federation.
    Server(server_cmd::ServerArgs),
    /// Runs this cluster's east-west gateway (routes from the registry, or a static file).
    Gateway(gateway_cmd::GatewayArgs),
    /// Runs the inference stand-in: an OpenAI-compatible server with no GPU behind it.
    Model(model_cmd::ModelArgs),
    /// Creates the federation CA and identities, and issues join tokens.
    Federation(federation_cmd::FederationArgs),
    /// Talks to the federation's API: get, apply, delete, cordon, drain, move, watch.
    Ctl(ctl_cmd::CtlArgs),
    /// Runs this cluster's agent: GPU capacity reports, local replicas, admin endpoint.
    Agent(agent_cmd::AgentArgs),
    /// Runs one cluster's Kubernetes controller: replicas as Deployments, Istio objects.
    Controller(controller_cmd::ControllerArgs),
    /// Starts a whole federation on this machine, puts load on it and plays a scenario.
    Up(up_cmd::UpArgs),
    /// Prints the Kubernetes manifests for one cluster, for `kubectl apply -f -`.
    Install(install_cmd::InstallArgs),
}

/// Runs an async command on a multi-threaded runtime; the sync commands need none.
fn block_on(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?
        .block_on(command)
}

/// Logs for the long-running commands, to standard error. `FLOTILLA_LOG` (or
/// `RUST_LOG`) filters them, e.g. `FLOTILLA_LOG=debug,openraft=info`.
fn init_logging() {
    let filter = std::env::var("FLOTILLA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,openraft=warn".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {filter:?}: {e}");
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Server(_)
            | Command::Model(_)
            | Command::Gateway(_)
            | Command::Agent(_)
            | Command::Controller(_)
    ) {
        init_logging();
    }
    let result = match cli.command {
        Command::Plan(args) => plan_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args),
        Command::Server(args) => block_on(server_cmd::run(args)),
        Command::Model(args) => block_on(model_cmd::run(args)),
        Command::Gateway(args) => block_on(gateway_cmd::run(args)),
        Command::Federation(args) => federation_cmd::run(args),
        Command::Ctl(args) => block_on(ctl_cmd::run(args)),
        Command::Agent(args) => block_on(agent_cmd::run(args)),
        Command::Controller(args) => block_on(controller_cmd::run(args)),
        Command::Up(args) => block_on(up_cmd::run(args)),
        Command::Install(args) => install_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // `flotilla ctl` errors carry an exit code that says what went wrong.
            match err.downcast_ref::<ctl_cmd::ExitWith>() {
                Some(e) => ExitCode::from(e.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
