//! `flotilla`: the one binary.

mod ctl_cmd;
mod federation_cmd;
mod plan_cmd;
mod server_cmd;
mod sim_cmd;
mod table;

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
    /// Creates the federation CA and identities, and issues join tokens.
    Federation(federation_cmd::FederationArgs),
    /// Talks to the federation's API: get, apply, delete, cordon, drain, move, watch.
    Ctl(ctl_cmd::CtlArgs),
}

/// Runs an async command on a multi-threaded runtime; the sync commands need none.
fn block_on(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?
        .block_on(command)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args),
        Command::Server(args) => block_on(server_cmd::run(args)),
        Command::Federation(args) => federation_cmd::run(args),
        Command::Ctl(args) => block_on(ctl_cmd::run(args)),
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
