//! `flotilla up`: a whole federation on this machine, a steady load, a scenario
//! played against it, a live view and a summary. The work is in `flotilla-up`.

use anyhow::Context as _;
use flotilla_core::Millis;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

/// Start a local federation (per cluster: server, agent with simulated GPUs, gateway,
/// model replicas; mTLS on), put load on it and play a scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// The scenario (the simulator's format): its clusters, workloads and capacity
    /// events are played; its request load is replaced by a steady one (--rate).
    #[arg(
        long,
        default_value = "simulations/scenarios/demo.toml",
        value_name = "FILE"
    )]
    scenario: PathBuf,
    /// Run only the scenario's first N clusters.
    #[arg(long, value_name = "N")]
    clusters: Option<usize>,
    /// Where the CA, data, fleets and logs go (emptied first if an earlier run made it).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// No live view: progress and events as plain lines (also when stdout is not a
    /// terminal).
    #[arg(long)]
    headless: bool,
    /// Stop after this long ("60s", "5m"); default: the scenario's length at --speed.
    #[arg(long, value_name = "DURATION")]
    duration: Option<Millis>,
    /// Scenario time runs this many times faster than the clock.
    #[arg(long, default_value_t = 20.0)]
    speed: f64,
    /// Requests per second through all gateways together.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long a cluster that stops reporting stays Ready. Short, so that a
    /// lost cluster is routed around in about 2 s on one machine; the registry's
    /// own default, for real clusters, is 15 s.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    lease: Millis,
    /// A fault on top of the scenario: `leader-loss@AT[+FOR]` kills the Raft
    /// leader's server (restarted after FOR), `registry-partition@AT+FOR` cuts every
    /// server off (frozen) for FOR. Repeatable.
    #[arg(long, value_name = "KIND@AT[+FOR]", value_parser = flotilla_up::topology::Injection::parse)]
    inject: Vec<flotilla_up::topology::Injection>,
    /// Random faults all through the run (SIGKILL or freeze of a server, the
    /// leader, an agent, a gateway or a replica), with checks that nothing was lost,
    /// double-booked or orphaned and that every failed request is explained.
    #[arg(long)]
    chaos: bool,
    /// With --chaos: the mean time between faults.
    #[arg(
        long,
        default_value = "4s",
        value_name = "DURATION",
        requires = "chaos"
    )]
    chaos_every: Millis,
    /// With --chaos: the seed of the fault plan (default: a fresh one, printed).
    #[arg(long, value_name = "N", requires = "chaos")]
    chaos_seed: Option<u64>,
    /// Gateways enforce the registry's tenants, API keys and policies, as
    /// `flotilla install` sets them up; up's own load calls as tenant
    /// `flotilla-up` with the key in STATE/admin/api-key (`flotilla ctl tenant`,
    /// `key` and `policy` change what others may call).
    #[arg(long)]
    governance: bool,
    /// The summary as a table (for people) or JSON (for scripts).
    #[arg(long, short, value_enum, default_value = "table")]
    output: Output,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate must be between 0 and 10000 requests per second, not {}",
        args.rate
    );
    anyhow::ensure!(args.lease.0 >= 500, "--lease must be at least 500ms");
    anyhow::ensure!(
        args.chaos_every.0 >= 500,
        "--chaos-every must be at least 500ms, so each fault can be told apart"
    );
    let chaos = args.chaos.then(|| flotilla_up::chaos::ChaosOptions {
        seed: args
            .chaos_seed
            .unwrap_or_else(flotilla_up::chaos::fresh_seed),
        every: Duration::from_millis(args.chaos_every.0),
    });
    if let Some(c) = &chaos {
        eprintln!(
            "chaos: a fault every {:?} on average, seed {} (--chaos-seed {} plays the same faults)",
            c.every, c.seed, c.seed
        );
    }
    let binary = std::env::current_exe()
        .context("finding this executable to start the federation's processes")?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("flotilla-up"));
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        crate::signals::shutdown_signal().await;
        on_signal.cancel();
    });
    let summary = flotilla_up::run(
        flotilla_up::UpOptions {
            binary,
            scenario: args.scenario.clone(),
            state_dir,
            clusters: args.clusters,
            speed: args.speed,
            duration: args.duration.map(|d| Duration::from_millis(d.0)),
            rate: args.rate,
            lease: Duration::from_millis(args.lease.0),
            injections: args.inject.clone(),
            chaos,
            governance: args.governance,
            live_view: !args.headless,
            progress: flotilla_up::stderr_progress(),
        },
        stop,
    )
    .await?;
    match args.output {
        Output::Table => print!("{}", summary.render()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
    }
    Ok(())
}
