//! `flotilla sim`: runs scenario files through the simulation harness and writes
//! their reports. The simulator itself lives in `flotilla-sim`; this is argument
//! handling and output only.

use anyhow::Context as _;
use flotilla_sim::{Options, Scenario, report, simulate};
use std::path::PathBuf;

/// How `flotilla sim` prints its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
}

/// Simulate scenarios: the real scheduler under a virtual clock, policies side by side.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Scenario files (TOML); see simulations/README.md for the format.
    #[arg(required = true, value_name = "SCENARIO")]
    pub(crate) scenarios: Vec<PathBuf>,
    /// Where reports go: DIR/<scenario name>/report.md, CSV and SVG. Without it,
    /// only the summary is printed.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Run only these policies (by name, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub(crate) policies: Vec<String>,
    /// How to print the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) output: OutputFormat,
    /// No progress bar and no messages on standard error; the summary still prints.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

pub(crate) fn run(args: SimArgs) -> anyhow::Result<()> {
    let mut json = Vec::new();
    for path in &args.scenarios {
        let scenario = Scenario::load(path)?;
        for name in &args.policies {
            if !scenario.policies.iter().any(|p| &p.name == name) {
                let known: Vec<&str> = scenario.policies.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!(
                    "{}: no policy named {name:?}; it has {}",
                    path.display(),
                    known.join(", ")
                );
            }
        }
        let options = Options {
            policies: args.policies.clone(),
            progress: !args.quiet,
        };
        let outcome = simulate(&scenario, &options);
        if let Some(out) = &args.out {
            let dir = out.join(&scenario.name);
            report::write_report(&outcome, &dir)
                .with_context(|| format!("writing the report of {}", path.display()))?;
            if !args.quiet && args.output == OutputFormat::Table {
                eprintln!("wrote {}", dir.join("report.md").display());
            }
        }
        match args.output {
            OutputFormat::Table => {
                let mut text = format!("## {}\n\n", scenario.name);
                text.push_str(&report::summary_table(&outcome));
                for line in report::comparison(&outcome) {
                    text.push_str(&format!("- {line}\n"));
                }
                text.push('\n');
                print_out(&text)?;
            }
            OutputFormat::Json => json.push(report::json(&outcome)),
        }
    }
    if !json.is_empty() {
        if json.len() == 1 {
            print_out(&format!("{}\n", json[0]))?;
        } else {
            print_out(&format!("[{}]\n", json.join(",\n")))?;
        }
    }
    Ok(())
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}
