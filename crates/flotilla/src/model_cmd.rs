//! `flotilla model`: runs the inference stand-in (`flotilla-model`) until SIGTERM or
//! Ctrl-C (or, with `--exit-with-parent` or `--supervisor-record`, until no agent
//! supervises it), then drains. Argument handling only; the server is in the library.

use anyhow::Context as _;
use flotilla_core::Millis;
use flotilla_model::{ModelConfig, Replica};
use std::net::SocketAddr;
use std::time::Duration;

/// Serve a stand-in for an inference server (vLLM, TGI, SGLang): OpenAI-compatible
/// HTTP with made-up tokens, configurable latency and a concurrency limit.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Model ids to serve (repeat the flag or separate with commas).
    #[arg(
        long = "model",
        required = true,
        value_delimiter = ',',
        value_name = "ID"
    )]
    pub(crate) models: Vec<String>,
    /// This replica's name, reported in every response.
    #[arg(long, env = "FLOTILLA_REPLICA", default_value = "replica-0")]
    pub(crate) replica: String,
    /// The cluster this replica runs in, reported in every response.
    #[arg(long, env = "FLOTILLA_CLUSTER", default_value = "local")]
    pub(crate) cluster: String,
    /// Time to first token ("200ms", "1s").
    #[arg(long, default_value = "200ms", value_name = "DURATION")]
    pub(crate) ttft: Millis,
    /// Delay between tokens after the first.
    #[arg(long, default_value = "20ms", value_name = "DURATION")]
    pub(crate) token_delay: Millis,
    /// Requests generating at once; more wait in the queue.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) max_concurrency: usize,
    /// Requests that may wait for a slot; more get 429.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) queue: usize,
    /// The most tokens a response gets, whatever its max_tokens.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub(crate) max_tokens_cap: u32,
    /// Pretend to load the model for this long: not ready until then.
    #[arg(long, default_value = "0ms", value_name = "DURATION")]
    pub(crate) load_time: Millis,
    /// On SIGTERM, how long in-flight requests get to finish.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub(crate) drain_deadline: Millis,
    // The agent passes `--supervisor-record` (or, without a state directory,
    // `--exit-with-parent` with its own id), so that a replica never outlives its
    // agent unsupervised, even an agent killed with SIGKILL.
    #[command(flatten)]
    pub(crate) parent: crate::signals::ParentWatch,
    #[command(flatten)]
    pub(crate) supervisor: crate::signals::SupervisorWatch,
}

pub(crate) async fn run(args: ModelArgs) -> anyhow::Result<()> {
    let mut config = ModelConfig::new(args.models, args.replica, args.cluster);
    config.ttft = duration(args.ttft);
    config.token_delay = duration(args.token_delay);
    config.max_concurrency = args.max_concurrency;
    config.queue = args.queue;
    config.max_tokens_cap = args.max_tokens_cap;
    config.load_time = duration(args.load_time);
    config.drain_deadline = duration(args.drain_deadline);
    // Settings are checked before the port is taken.
    let replica = Replica::new(config)?;
    args.parent.check()?;
    args.supervisor.check()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let c = replica.config();
    eprintln!(
        "flotilla model: serving {} on http://{addr} as replica {} of cluster {}",
        c.models.join(", "),
        c.replica,
        c.cluster
    );
    let supervisor = args.supervisor.clone();
    let stop = async move {
        tokio::select! {
            () = args.parent.stop_requested() => {}
            () = supervisor.orphaned() => {}
        }
    };
    replica.serve(listener, stop).await?;
    eprintln!("flotilla model: drained, stopped");
    Ok(())
}

fn duration(m: Millis) -> Duration {
    Duration::from_millis(m.0)
}
