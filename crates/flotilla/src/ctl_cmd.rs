//! `flotilla ctl`: the API from a terminal or a script.
//!
//! Tables for people, `--output json|yaml` for scripts (the same data in both).
//! Identity: `admin.pem`/`admin-key.pem`/`ca.pem` from the config directory
//! (`flotilla federation init` writes them), or `--plaintext` for a development
//! server. `apply -f` reads YAML or TOML ([`apply_file`] has the schema); `status`
//! is the federation on one screen ([`status`]).
//!
//! Exit codes, which scripts may rely on (the [`code`] constants; `--help` lists
//! them too): 0 success; 1 other errors; 2 usage (bad flags, an unreadable file);
//! 3 not found; 4 invalid (a file or argument, the field named); 5 permission denied
//! or unauthenticated; 6 failed precondition (e.g. a pinned workload); 7 unavailable
//! (no leader, no server: retry; also `status` without a leader); 8 `--wait` timed
//! out.

use flotilla_client::apply_file;
mod mcp;
mod status;
mod tenants;

use crate::table;
use anyhow::Context;
use flotilla_agent::gpu::simulated::DeviceChange;
use flotilla_client::{Mtls, TransportSecurity};
use flotilla_pki::{RotatingCert, TrustBundle, layout};
use flotilla_proto::registry::v1::{RemoveMemberRequest, registry_client::RegistryClient};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::{
    federation_service_client::FederationServiceClient, policy_service_client::PolicyServiceClient,
    route_service_client::RouteServiceClient, workload_service_client::WorkloadServiceClient,
};
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// The exit codes `flotilla ctl` promises; every error path uses one of these.
pub(crate) mod code {
    /// Anything not listed below (e.g. a server's internal error).
    pub(crate) const OTHER: u8 = 1;
    /// Bad flags or arguments, or an input file that cannot be read (clap's own
    /// usage errors exit 2 as well).
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const NOT_FOUND: u8 = 3;
    /// The input is invalid: a file that does not parse or validate, or an argument
    /// the server refused; the message names the field.
    pub(crate) const INVALID: u8 = 4;
    pub(crate) const DENIED: u8 = 5;
    /// The request is valid but the state does not allow it (e.g. a pinned workload).
    pub(crate) const PRECONDITION: u8 = 6;
    /// No server answered or no leader is known: retrying may help.
    pub(crate) const UNAVAILABLE: u8 = 7;
    /// `--wait` gave up before the change completed (it continues server-side).
    pub(crate) const TIMED_OUT: u8 = 8;
    /// The object changed since its etag was read: nothing was written.
    pub(crate) const CONFLICT: u8 = 9;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other errors
  2  usage: bad flags or arguments, an unreadable file
  3  not found (cluster, workload, policy)
  4  invalid: a file or argument refused; the message names the field
  5  permission denied or unauthenticated (use an admin identity)
  6  failed precondition: valid, but the current state does not allow it
  7  unavailable: no server answered or no leader; retry (status: no leader)
  8  --wait timed out (the change goes on without us)
  9  conflict: the object changed since its etag was read; nothing was written";

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct CtlArgs {
    /// Any flotilla server of the federation (host:port).
    #[arg(
        long,
        env = "FLOTILLA_SERVER",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    server: String,
    /// Where the identity and CA certificate are (default ~/.config/flotilla).
    #[arg(long, env = "FLOTILLA_CONFIG_DIR", global = true)]
    config_dir: Option<PathBuf>,
    /// The identity's file name in the config directory (NAME.pem, NAME-key.pem).
    #[arg(long, default_value = "admin", global = true)]
    identity: String,
    /// Talk plaintext to a development server (no identity).
    #[arg(long, global = true)]
    plaintext: bool,
    /// table for people; json or yaml for scripts.
    #[arg(long, short, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Lists clusters, gpus, workloads, placements, routes or policies.
    Get {
        kind: Kind,
        /// One object by name (clusters, workloads, placements, policies).
        name: Option<String>,
        /// Read the server's own copy (may be behind) instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Creates or updates the workloads and policies in a YAML or TOML file.
    #[command(after_help = APPLY_SCHEMA)]
    Apply {
        /// FILE.yaml, FILE.yml, FILE.toml, or - for YAML on standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The federation on one screen: leader, members and their lag, clusters,
    /// GPUs, workloads' replicas, moves in flight.
    Status,
    /// Creates, shows and deletes tenants (who calls the federation's models).
    Tenant {
        #[command(subcommand)]
        command: tenants::TenantCommand,
    },
    /// Makes, lists and revokes tenants' API keys.
    Key {
        #[command(subcommand)]
        command: tenants::KeyCommand,
    },
    /// Sets or deletes a tenant's policy (`get policies` lists them).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// MCP servers (experimental, flotilla.v1alpha1): routing rules and each
    /// tenant's tools.
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// Deletes a workload (its replicas drain and go).
    Delete {
        workload: String,
        /// Only if the workload is still at this etag (`get workloads` shows it).
        #[arg(long)]
        etag: Option<String>,
    },
    Cordon {
        cluster: String,
    },
    Uncordon {
        cluster: String,
    },
    /// Cordons a cluster and moves its replicas away; --wait shows progress until done.
    Drain {
        cluster: String,
        #[arg(long)]
        wait: bool,
        /// How long --wait waits ("10m").
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// Removes a cluster that runs no replicas (drain it first). Its certificates
    /// are revoked: it comes back only through a new join token.
    Leave {
        cluster: String,
        /// Only if the cluster is still at this etag (`get clusters -o json` shows it).
        #[arg(long)]
        etag: Option<String>,
    },
    /// The federation's servers, its Raft members (`status` lists them).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Moves a workload to a cluster (make-before-break).
    Move {
        workload: String,
        #[arg(long)]
        to: String,
        /// Only if the workload is still at this etag (`get workloads` shows it).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Changes simulated GPUs through an agent's local admin endpoint.
    Gpus {
        #[command(subcommand)]
        command: GpusCommand,
    },
    /// Streams route changes (from a revision: only what came after it).
    Watch {
        /// Only `routes` for now.
        kind: WatchKind,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

const APPLY_SCHEMA: &str = "\
File schema (examples: deploy/examples/workloads.yaml, policies.yaml):
  YAML: documents separated by `---`, each one of
    kind: Workload      and the workload's fields
    kind: TenantPolicy  with tenant: and approved_models: [...]
    workloads: [...] and/or policies: [...]   (no kind)
  TOML: [[workloads]] and [[policies]] tables, as in federation files.
  Workload fields: name, model, replicas {min, max}, gpu {count, min_memory_mib,
  models, mig_profile}, constraints {regions, clusters, pinned,
  spread_across_clusters, preferred_regions [{region, weight}]}, priority,
  slo {ttft, e2e}, mobility {movable, min_dwell}. Durations: \"500ms\", \"5m\".
  Unknown fields are errors. The whole file is checked before anything is sent.";

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Creates or replaces a tenant's approved models.
    Set {
        tenant: String,
        /// Model ids, comma-separated; `*` approves every model.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        /// Requests a minute the tenant may send through each gateway, model
        /// requests and MCP messages alike (429 with Retry-After beyond it); 0: no
        /// limit.
        #[arg(long, default_value_t = 0)]
        requests_per_minute: u32,
        /// Tokens a minute (prompt and completion, from each response's `usage`)
        /// the tenant may spend through each gateway; 0: no limit.
        #[arg(long, default_value_t = 0)]
        tokens_per_minute: u32,
        /// Approved external endpoints, comma-separated, by the names the
        /// gateways' --external-endpoints files give them: the last tier, tried in
        /// order when no cluster has a ready replica of an approved model.
        #[arg(long, value_delimiter = ',')]
        external_endpoints: Vec<String>,
        /// Only if the policy is still at this etag (`get policies` shows it; "0":
        /// only if the tenant has none yet).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Deletes a tenant's policy (the tenant then reaches no model).
    Delete {
        tenant: String,
        /// Only if the policy is still at this etag.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum MemberCommand {
    /// Takes a server out of the federation's Raft membership, as `etcdctl member
    /// remove` does: for a server that is gone for good, which otherwise still
    /// counts toward the majority every write needs (a left cluster's server is
    /// taken out by the leader). A learner is promoted in a removed voter's place
    /// where one can be.
    Remove {
        /// Its node id (`flotilla ctl status` lists the members).
        node_id: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
enum GpusCommand {
    /// Changes one device of an agent running `--gpu-source simulated` (no registry
    /// identity needed: the admin endpoint is the agent's, on loopback). Changes
    /// apply in this order: --reset, --healthy/--detach, --claimed-by-other, usage.
    Set(GpusSetArgs),
}

#[derive(Debug, clap::Args)]
struct GpusSetArgs {
    /// The agent's admin endpoint (its --admin-listen).
    #[arg(long, default_value = "127.0.0.1:9410", value_name = "ADDR")]
    agent: std::net::SocketAddr,
    /// The node's name in the fleet file.
    node: String,
    /// The device: its index, UUID, or a MIG instance's UUID.
    device: String,
    /// true: another tenant takes the device (its replicas must move); false: it
    /// gives it back.
    #[arg(long, value_name = "BOOL")]
    claimed_by_other: Option<bool>,
    /// false: the GPU reports a critical error; true: health goes back to the file's.
    #[arg(long, value_name = "BOOL")]
    healthy: Option<bool>,
    /// Why, with --healthy false.
    #[arg(long, default_value = "failed by flotilla ctl")]
    reason: String,
    /// The GPU falls off the bus (lost until --healthy true or --reset).
    #[arg(long, conflicts_with = "healthy")]
    detach: bool,
    /// Memory in use by a workload outside Flotilla.
    #[arg(long, value_name = "MIB")]
    memory_used_mib: Option<u64>,
    /// Utilisation with --memory-used-mib.
    #[arg(long, value_name = "PCT", requires = "memory_used_mib")]
    utilization_pct: Option<u32>,
    /// Drop every earlier change to this device first: the file rules again.
    #[arg(long)]
    reset: bool,
}

impl GpusSetArgs {
    /// The admin endpoint's changes, in the order they apply.
    fn changes(&self) -> Vec<DeviceChange> {
        let mut changes = Vec::new();
        if self.reset {
            changes.push(DeviceChange::Reset);
        }
        match self.healthy {
            Some(true) => changes.push(DeviceChange::Recover),
            Some(false) => changes.push(DeviceChange::Fail {
                reason: self.reason.clone(),
            }),
            None => {}
        }
        if self.detach {
            changes.push(DeviceChange::Detach);
        }
        match self.claimed_by_other {
            Some(true) => changes.push(DeviceChange::Claim),
            Some(false) => changes.push(DeviceChange::Release),
            None => {}
        }
        if let Some(memory_used_mib) = self.memory_used_mib {
            changes.push(DeviceChange::Usage {
                memory_used_mib,
                utilization_pct: self.utilization_pct.unwrap_or_default(),
            });
        }
        changes
    }
}

/// `ctl gpus set`: each change as one POST; stops at the first the agent refuses.
async fn gpus_set(s: &GpusSetArgs, output: Output) -> anyhow::Result<()> {
    let changes = s.changes();
    if changes.is_empty() {
        return Err(ExitWith {
            code: code::USAGE,
            message: "nothing to change: give --claimed-by-other, --healthy, --detach, --memory-used-mib or --reset".into(),
        }
        .into());
    }
    let mut last = String::new();
    for change in &changes {
        let (status, body) = flotilla_agent::admin::request_device_change(
            s.agent,
            &s.node,
            &s.device,
            change,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| ExitWith {
            code: code::UNAVAILABLE,
            message: format!(
                "{e} (is `flotilla agent` running with --admin-listen {}?)",
                s.agent
            ),
        })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(body);
            let code = match status {
                404 => code::NOT_FOUND,
                400 => code::INVALID,
                409 => code::PRECONDITION,
                _ => code::OTHER,
            };
            return Err(ExitWith {
                code,
                message: format!(
                    "agent {} refused {change:?} on {}/{}: {message}",
                    s.agent, s.node, s.device
                ),
            }
            .into());
        }
        if output == Output::Table {
            println!("{}/{}: {change:?} applied", s.node, s.device);
        }
        last = body;
    }
    if output != Output::Table {
        let node: Value = serde_json::from_str(&last).context("the agent's answer is not JSON")?;
        emit(output, &node)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Clusters,
    Gpus,
    Workloads,
    Placements,
    Routes,
    Policies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WatchKind {
    Routes,
}

/// An error with the exit code it means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ExitWith {
    pub(crate) code: u8,
    message: String,
}

/// A failed call as an exit code and a message that says what to do next.
fn rpc_error(what: &str, s: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let code = match s.code() {
        Code::NotFound => code::NOT_FOUND,
        Code::InvalidArgument => code::INVALID,
        Code::PermissionDenied | Code::Unauthenticated => code::DENIED,
        Code::FailedPrecondition => code::PRECONDITION,
        Code::Unavailable | Code::DeadlineExceeded => code::UNAVAILABLE,
        Code::Aborted => code::CONFLICT,
        _ => code::OTHER,
    };
    let mut message = format!("{what}: {} ({:?})", s.message(), s.code());
    let retry = s
        .metadata()
        .get(flotilla_client::RETRY_AFTER)
        .and_then(|v| v.to_str().ok());
    if let Some(ms) = retry {
        message.push_str(&format!("; retry in {ms}ms"));
    }
    if let Some(hint) = next_step(s.code(), s.message(), retry.is_some()) {
        message.push_str("; ");
        message.push_str(hint);
    }
    ExitWith { code, message }.into()
}

/// What a person can do about an error, where ctl knows better than the server.
fn next_step(code: tonic::Code, message: &str, has_retry_hint: bool) -> Option<&'static str> {
    use tonic::Code;
    match code {
        // The server's NOT_FOUND messages start with the kind ("cluster \"x\" not found").
        Code::NotFound if message.starts_with("cluster") => {
            Some("`flotilla ctl get clusters` lists the federation's clusters")
        }
        Code::NotFound if message.starts_with("workload") => {
            Some("`flotilla ctl get workloads` lists the workloads")
        }
        Code::NotFound if message.starts_with("node") => {
            Some("`flotilla ctl status` lists the members and their node ids")
        }
        Code::NotFound if message.starts_with("polic") || message.starts_with("tenant") => {
            Some("`flotilla ctl get policies` lists the tenants with a policy")
        }
        Code::PermissionDenied | Code::Unauthenticated => Some(
            "use an admin identity (`flotilla federation init` writes admin.pem; --config-dir, --identity)",
        ),
        Code::Aborted => Some(
            "someone else changed it: read it again (`flotilla ctl get …` shows the etag) and apply your change to what is there now",
        ),
        Code::Unavailable if !has_retry_hint => {
            Some("retry; check that `flotilla server` runs at --server and its address is right")
        }
        _ => None,
    }
}

/// The identity ctl presents. A missing or unreadable identity is a usage error (2):
/// the flags or the config directory are wrong, not the server.
fn security(a: &CtlArgs) -> anyhow::Result<TransportSecurity> {
    Ok(if a.plaintext {
        TransportSecurity::Plaintext
    } else {
        let dir = a
            .config_dir
            .clone()
            .unwrap_or_else(crate::federation_cmd::default_config_dir);
        let trust = TrustBundle::from_pem_file(&layout::ca_path(&dir)).map_err(|e| ExitWith {
            code: code::USAGE,
            message: format!(
                "no federation CA in {}: {e} (run `flotilla federation init`, or pass --config-dir or --plaintext)",
                dir.display()
            ),
        })?;
        let cert = RotatingCert::load(&dir, &a.identity).map_err(|e| ExitWith {
            code: code::USAGE,
            message: format!(
                "loading identity {:?} from {}: {e} (--identity names NAME.pem and NAME-key.pem there)",
                a.identity,
                dir.display()
            ),
        })?;
        TransportSecurity::Mtls(Mtls::new(trust, cert)?)
    })
}

/// Reads and checks an apply file completely: nothing is sent unless all of it is good.
fn read_apply_file(file: &std::path::Path) -> anyhow::Result<apply_file::ApplySet> {
    let format = apply_file::Format::of(file).ok_or_else(|| ExitWith {
        code: code::USAGE,
        message: format!(
            "{}: name the format with the extension: .yaml, .yml or .toml (or - for YAML on standard input)",
            file.display()
        ),
    })?;
    let (name, text) = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| ExitWith {
                code: code::USAGE,
                message: format!("reading standard input: {e}"),
            })?;
        ("<stdin>".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(file).map_err(|e| ExitWith {
            code: code::USAGE,
            message: format!("reading {}: {e}", file.display()),
        })?;
        (file.display().to_string(), text)
    };
    apply_file::parse(&name, &text, format).map_err(|e| {
        ExitWith {
            code: code::INVALID,
            message: e.to_string(),
        }
        .into()
    })
}

pub(crate) async fn run(a: CtlArgs) -> anyhow::Result<()> {
    // The agent's admin endpoint needs no registry identity.
    if let CtlCommand::Gpus {
        command: GpusCommand::Set(s),
    } = &a.command
    {
        return gpus_set(s, a.output).await;
    }
    let security = security(&a)?;
    let ch = security.channel(&a.server, Duration::from_secs(5))?;
    match &a.command {
        CtlCommand::Get { kind, name, stale } => {
            get(&ch, a.output, *kind, name.as_deref(), *stale).await
        }
        CtlCommand::Apply { file } => {
            let parsed = read_apply_file(file)?;
            let mut wl = WorkloadServiceClient::new(ch.clone());
            for w in parsed.workloads {
                let name = w.name.clone();
                let workload = pb::Workload {
                    etag: parsed
                        .etags
                        .workloads
                        .get(&name)
                        .cloned()
                        .unwrap_or_default(),
                    ..flotilla_client::convert::workload_to(&w)
                };
                let r = wl
                    .apply_workload(pb::ApplyWorkloadRequest {
                        workload: Some(workload),
                    })
                    .await
                    .map_err(|s| rpc_error(&format!("workload {name:?}"), s))?;
                println!(
                    "workload/{name} applied (log index {})",
                    r.into_inner().log_index
                );
            }
            let mut pol = PolicyServiceClient::new(ch);
            for p in parsed.policies {
                let tenant = p.tenant.clone();
                let policy = pb::TenantPolicy {
                    etag: parsed
                        .etags
                        .policies
                        .get(&tenant)
                        .cloned()
                        .unwrap_or_default(),
                    ..flotilla_client::convert::policy_to(&p)
                };
                pol.set_policy(pb::SetPolicyRequest {
                    policy: Some(policy),
                })
                .await
                .map_err(|s| rpc_error(&format!("policy {tenant:?}"), s))?;
                println!("policy/{tenant} applied");
            }
            Ok(())
        }
        CtlCommand::Status => status::run(&ch, &security, &a.server, a.output).await,
        CtlCommand::Tenant { command } => tenants::tenant(&ch, a.output, command).await,
        CtlCommand::Key { command } => tenants::key(&ch, a.output, command).await,
        CtlCommand::Mcp { command } => mcp::mcp(&ch, a.output, command).await,
        CtlCommand::Policy {
            command:
                PolicyCommand::Set {
                    tenant,
                    models,
                    requests_per_minute,
                    tokens_per_minute,
                    external_endpoints,
                    etag,
                },
        } => {
            let policy = flotilla_core::TenantPolicy {
                tenant: tenant.clone(),
                approved_models: models.clone(),
                requests_per_minute: *requests_per_minute,
                tokens_per_minute: *tokens_per_minute,
                external_endpoints: external_endpoints.clone(),
            };
            // The same check the server makes, without the round trip.
            policy.validate().map_err(|e| ExitWith {
                code: code::INVALID,
                message: e.to_string(),
            })?;
            let r = PolicyServiceClient::new(ch)
                .set_policy(pb::SetPolicyRequest {
                    policy: Some(pb::TenantPolicy {
                        etag: etag.clone().unwrap_or_default(),
                        ..flotilla_client::convert::policy_to(&policy)
                    }),
                })
                .await
                .map_err(|s| rpc_error(&format!("set policy of tenant {tenant:?}"), s))?;
            println!(
                "policy/{tenant} set (log index {})",
                r.into_inner().log_index
            );
            Ok(())
        }
        CtlCommand::Policy {
            command: PolicyCommand::Delete { tenant, etag },
        } => {
            PolicyServiceClient::new(ch)
                .delete_policy(pb::DeletePolicyRequest {
                    tenant: tenant.clone(),
                    etag: etag.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| rpc_error(&format!("delete policy of tenant {tenant:?}"), s))?;
            println!("policy/{tenant} deleted (the tenant now reaches no model)");
            Ok(())
        }
        CtlCommand::Delete { workload, etag } => {
            WorkloadServiceClient::new(ch)
                .delete_workload(pb::DeleteWorkloadRequest {
                    name: workload.clone(),
                    etag: etag.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| rpc_error(&format!("delete workload {workload:?}"), s))?;
            println!("workload/{workload} deleted (its replicas drain)");
            Ok(())
        }
        CtlCommand::Cordon { cluster } => {
            FederationServiceClient::new(ch)
                .cordon_cluster(pb::CordonClusterRequest {
                    name: cluster.clone(),
                    etag: String::new(),
                })
                .await
                .map_err(|s| rpc_error(&format!("cordon cluster {cluster:?}"), s))?;
            println!("cluster/{cluster} cordoned");
            Ok(())
        }
        CtlCommand::Uncordon { cluster } => {
            FederationServiceClient::new(ch)
                .uncordon_cluster(pb::UncordonClusterRequest {
                    name: cluster.clone(),
                    etag: String::new(),
                })
                .await
                .map_err(|s| rpc_error(&format!("uncordon cluster {cluster:?}"), s))?;
            println!("cluster/{cluster} uncordoned");
            Ok(())
        }
        CtlCommand::Drain {
            cluster,
            wait,
            timeout,
        } => {
            let limit: flotilla_core::Millis = timeout.parse().map_err(|e: String| ExitWith {
                code: code::USAGE,
                message: format!("--timeout: {e}"),
            })?;
            FederationServiceClient::new(ch.clone())
                .drain_cluster(pb::DrainClusterRequest {
                    name: cluster.clone(),
                    etag: String::new(),
                })
                .await
                .map_err(|s| rpc_error(&format!("drain cluster {cluster:?}"), s))?;
            println!("cluster/{cluster} draining");
            if *wait {
                drain_progress(&ch, cluster, Duration::from_millis(limit.0)).await?;
            }
            Ok(())
        }
        CtlCommand::Leave { cluster, etag } => {
            FederationServiceClient::new(ch)
                .leave_cluster(pb::LeaveClusterRequest {
                    name: cluster.clone(),
                    etag: etag.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| rpc_error(&format!("leave cluster {cluster:?}"), s))?;
            println!(
                "cluster/{cluster} left: its certificates are revoked (its server, if one was a member, is taken out of the Raft membership), and it comes back only with a new join token"
            );
            Ok(())
        }
        CtlCommand::Member {
            command: MemberCommand::Remove { node_id },
        } => {
            let reply = RegistryClient::new(ch)
                .remove_member(RemoveMemberRequest { node_id: *node_id })
                .await
                .map_err(|s| rpc_error(&format!("remove member {node_id}"), s))?
                .into_inner();
            let members: Vec<String> = reply
                .members
                .iter()
                .map(|m| {
                    let role = if m.voter { "voter" } else { "learner" };
                    format!("{} ({role}, {})", m.node_id, m.address)
                })
                .collect();
            println!(
                "member {node_id} removed (log index {}); members now: {}",
                reply.log_index,
                members.join(", ")
            );
            Ok(())
        }
        CtlCommand::Move { workload, to, etag } => {
            WorkloadServiceClient::new(ch)
                .move_workload(pb::MoveWorkloadRequest {
                    name: workload.clone(),
                    cluster: to.clone(),
                    etag: etag.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| rpc_error(&format!("move workload {workload:?} to {to:?}"), s))?;
            println!("workload/{workload} moving to cluster/{to} (make-before-break)");
            Ok(())
        }
        CtlCommand::Gpus {
            command: GpusCommand::Set(s),
        } => gpus_set(s, a.output).await,
        CtlCommand::Watch {
            kind: WatchKind::Routes,
            from,
        } => {
            let mut stream = RouteServiceClient::new(ch)
                .watch_routes(pb::WatchRoutesRequest {
                    from_revision: *from,
                    progress: true,
                })
                .await
                .map_err(|s| rpc_error("watch routes", s))?
                .into_inner();
            while let Some(msg) = stream
                .message()
                .await
                .map_err(|s| rpc_error("watch routes", s))?
            {
                let Some(r) = msg.route else {
                    if msg.synced {
                        eprintln!("in sync at revision {}; waiting for changes", msg.revision);
                    }
                    continue;
                };
                match a.output {
                    // One line per change, so a script can read the stream line by line.
                    Output::Json => println!("{}", route_json(&r)),
                    // One document per change.
                    Output::Yaml => {
                        print!("---\n{}", yaml(&route_json(&r))?);
                    }
                    Output::Table => {
                        println!("rev {:>6}  {:<24} {}", r.revision, r.model, endpoints(&r))
                    }
                }
            }
            Ok(())
        }
    }
}

async fn drain_progress(ch: &Channel, cluster: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ps = flotilla_client::lists::placements(ch, cluster, true)
            .await
            .map_err(|s| rpc_error("list placements", s))?;
        let left: usize = ps
            .iter()
            .flat_map(|p| &p.replicas)
            .filter(|r| r.cluster == cluster)
            .count();
        eprintln!("cluster/{cluster}: {left} replica(s) left");
        if left == 0 {
            println!("cluster/{cluster} drained");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ExitWith {
                code: code::TIMED_OUT,
                message: format!(
                    "cluster/{cluster} still has {left} replica(s) after {limit:?}; the drain goes on: \
                     `flotilla ctl get placements` shows where they are"
                ),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn endpoints(r: &pb::Route) -> String {
    if r.endpoints.is_empty() {
        return "(removed)".into();
    }
    r.endpoints
        .iter()
        .map(|e| format!("{}={}", e.cluster, e.weight))
        .collect::<Vec<_>>()
        .join(",")
}

fn route_json(r: &pb::Route) -> Value {
    json!({"model": r.model, "revision": r.revision, "endpoints": r.endpoints.iter().map(|e| json!({
        "cluster": e.cluster, "weight": e.weight, "ready_replicas": e.ready_replicas})).collect::<Vec<_>>()})
}

fn state_name(s: i32) -> &'static str {
    match pb::ClusterState::try_from(s) {
        Ok(pb::ClusterState::Ready) => "Ready",
        Ok(pb::ClusterState::Cordoned) => "Cordoned",
        Ok(pb::ClusterState::Unreachable) => "Unreachable",
        _ => "Unknown",
    }
}

fn phase_name(p: i32) -> &'static str {
    match pb::Phase::try_from(p) {
        Ok(pb::Phase::Starting) => "Starting",
        Ok(pb::Phase::Ready) => "Ready",
        Ok(pb::Phase::Draining) => "Draining",
        _ => "Unknown",
    }
}

/// A value as YAML, ending with a newline.
fn yaml(value: &Value) -> anyhow::Result<String> {
    let mut text = serde_saphyr::to_string(value).context("writing YAML")?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Structured output: the same value as JSON or YAML (a table prints nothing here).
fn emit(output: Output, value: &Value) -> anyhow::Result<()> {
    match output {
        Output::Table => {}
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", yaml(value)?),
    }
    Ok(())
}

fn print(
    output: Output,
    header: &[&str],
    rows: Vec<Vec<String>>,
    json: Vec<Value>,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", table::render(header, &rows)),
        Output::Json | Output::Yaml => emit(output, &Value::Array(json))?,
    }
    Ok(())
}

async fn get(
    ch: &Channel,
    output: Output,
    kind: Kind,
    name: Option<&str>,
    stale: bool,
) -> anyhow::Result<()> {
    let q = GetQuery {
        ch,
        output,
        kind,
        name,
        stale,
    };
    match kind {
        Kind::Clusters => get_clusters(q).await,
        Kind::Gpus => get_gpus(q).await,
        Kind::Workloads => get_workloads(q).await,
        Kind::Placements => get_placements(q).await,
        Kind::Routes => get_routes(q).await,
        Kind::Policies => get_policies(q).await,
    }
}

/// What `ctl get` was asked for, and how to print it.
#[derive(Debug, Clone, Copy)]
struct GetQuery<'a> {
    ch: &'a Channel,
    output: Output,
    kind: Kind,
    /// Only the object of this name; all of them when absent.
    name: Option<&'a str>,
    /// Let the server answer from its own copy instead of asking the leader.
    stale: bool,
}

impl GetQuery<'_> {
    fn wanted(&self, n: &str) -> bool {
        self.name.is_none_or(|w| w == n)
    }

    /// Nothing listed is an error only when one object was asked for by name.
    fn found(&self, empty: bool, what: &str) -> anyhow::Result<()> {
        if empty && self.name.is_some() {
            return Err(self.not_found(what));
        }
        Ok(())
    }

    /// Names the command that lists what exists.
    fn not_found(&self, what: &str) -> anyhow::Error {
        let listing = match self.kind {
            Kind::Clusters => "clusters",
            Kind::Gpus => "gpus",
            Kind::Workloads | Kind::Placements => "workloads",
            Kind::Routes => "routes",
            Kind::Policies => "policies",
        };
        ExitWith {
            code: code::NOT_FOUND,
            message: format!(
                "{what} {:?} not found; `flotilla ctl get {listing}` lists them",
                self.name.unwrap_or_default()
            ),
        }
        .into()
    }
}

async fn get_clusters(q: GetQuery<'_>) -> anyhow::Result<()> {
    let cs: Vec<pb::Cluster> = flotilla_client::lists::clusters(q.ch, q.stale)
        .await
        .map_err(|s| rpc_error("list clusters", s))?
        .into_iter()
        .filter(|c| q.wanted(c.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default()))
        .collect();
    q.found(cs.is_empty(), "cluster")?;
    print(
        q.output,
        &["CLUSTER", "REGION", "STATE", "GPUS FREE/TOTAL"],
        cs.iter().map(cluster_row).collect(),
        cs.iter().map(cluster_json).collect(),
    )
}

fn cluster_row(c: &pb::Cluster) -> Vec<String> {
    let s = c.spec.clone().unwrap_or_default();
    vec![
        s.name,
        s.region,
        state_name(c.state).into(),
        format!("{}/{}", c.gpus_free, c.gpus_total),
    ]
}

fn cluster_json(c: &pb::Cluster) -> Value {
    let s = c.spec.clone().unwrap_or_default();
    json!({"name": s.name, "region": s.region, "zone": s.zone, "state": state_name(c.state),
        "draining": c.draining, "cordoned": c.cordoned, "gpus_total": c.gpus_total,
        "gpus_free": c.gpus_free, "gateway_address": s.gateway_address,
        "lease_expires_at_ms": c.lease_expires_at_ms})
}

/// GPUs of one cluster (the name is the cluster's), or of every cluster.
async fn get_gpus(q: GetQuery<'_>) -> anyhow::Result<()> {
    let gpus = flotilla_client::lists::gpus(q.ch, q.name.unwrap_or_default(), q.stale)
        .await
        .map_err(|s| rpc_error("list gpus", s))?;
    print(
        q.output,
        &[
            "CLUSTER",
            "NODE",
            "UUID",
            "MODEL",
            "MEMORY MIB",
            "HEALTHY",
            "ALLOCATED",
        ],
        gpus.iter().map(gpu_row).collect(),
        gpus.iter().map(gpu_json).collect(),
    )
}

fn gpu_row(g: &pb::Gpu) -> Vec<String> {
    let d = g.device.clone().unwrap_or_default();
    let owner = if g.allocated_to_replica > 0 {
        format!("r{}", g.allocated_to_replica)
    } else if d.claimed_by_other {
        "other".into()
    } else {
        "-".into()
    };
    vec![
        g.cluster.clone(),
        g.node.clone(),
        d.uuid,
        d.model,
        format!("{}", d.memory_total_mib),
        if d.healthy { "yes".into() } else { "no".into() },
        owner,
    ]
}

fn gpu_json(g: &pb::Gpu) -> Value {
    let d = g.device.clone().unwrap_or_default();
    json!({"cluster": g.cluster, "node": g.node, "uuid": d.uuid, "model": d.model,
        "memory_total_mib": d.memory_total_mib, "memory_used_mib": d.memory_used_mib,
        "utilization_pct": d.utilization_pct, "mig_profile": d.mig_profile, "healthy": d.healthy,
        "claimed_by_other": d.claimed_by_other, "allocated_to_replica": g.allocated_to_replica})
}

async fn get_workloads(q: GetQuery<'_>) -> anyhow::Result<()> {
    let ws: Vec<pb::Workload> = flotilla_client::lists::workloads(q.ch, q.stale)
        .await
        .map_err(|s| rpc_error("list workloads", s))?
        .into_iter()
        .filter(|w| q.wanted(&w.name))
        .collect();
    q.found(ws.is_empty(), "workload")?;
    print(
        q.output,
        &["WORKLOAD", "MODEL", "REPLICAS", "GPUS/REPLICA", "PRIORITY"],
        ws.iter().map(workload_row).collect(),
        ws.iter().map(workload_json).collect(),
    )
}

fn workload_row(w: &pb::Workload) -> Vec<String> {
    let r = w.replicas.unwrap_or_default();
    let g = w.gpu.clone().unwrap_or_default();
    vec![
        w.name.clone(),
        w.model.clone(),
        format!("{}..{}", r.min, r.max),
        format!("{}", g.count),
        format!("{}", w.priority),
    ]
}

fn workload_json(w: &pb::Workload) -> Value {
    let r = w.replicas.unwrap_or_default();
    let g = w.gpu.clone().unwrap_or_default();
    let c = w.constraints.clone().unwrap_or_default();
    json!({"name": w.name, "model": w.model, "replicas": {"min": r.min, "max": r.max},
        "gpu": {"count": g.count, "min_memory_mib": g.min_memory_mib, "models": g.models, "mig_profile": g.mig_profile},
        "constraints": {"regions": c.regions, "clusters": c.clusters, "pinned": c.pinned},
        "priority": w.priority, "etag": w.etag})
}

/// Placements, one table row per replica, one JSON object per workload.
async fn get_placements(q: GetQuery<'_>) -> anyhow::Result<()> {
    let ps: Vec<pb::Placement> = flotilla_client::lists::placements(q.ch, "", q.stale)
        .await
        .map_err(|s| rpc_error("list placements", s))?
        .into_iter()
        .filter(|p| q.wanted(&p.workload))
        .collect();
    q.found(ps.is_empty(), "placement of workload")?;
    print(
        q.output,
        &[
            "WORKLOAD", "REPLICA", "CLUSTER", "PHASE", "ENDPOINT", "DEVICES",
        ],
        ps.iter().flat_map(placement_rows).collect(),
        ps.iter().map(placement_json).collect(),
    )
}

fn placement_rows(p: &pb::Placement) -> impl Iterator<Item = Vec<String>> + '_ {
    p.replicas.iter().map(|r| {
        vec![
            p.workload.clone(),
            format!("r{}", r.id),
            r.cluster.clone(),
            phase_name(r.phase).into(),
            if r.endpoint.is_empty() {
                "-".into()
            } else {
                r.endpoint.clone()
            },
            r.devices.join(","),
        ]
    })
}

fn placement_json(p: &pb::Placement) -> Value {
    json!({"workload": p.workload, "model": p.model, "generation": p.generation, "deleted": p.deleted,
        "replicas": p.replicas.iter().map(|r| json!({"id": r.id, "cluster": r.cluster, "phase": phase_name(r.phase), "endpoint": (!r.endpoint.is_empty()).then_some(&r.endpoint), "devices": r.devices})).collect::<Vec<_>>(),
        "migrations": p.migrations.iter().map(|m| json!({"source": m.source, "target": m.target, "reason": m.reason, "target_weight": m.target_weight})).collect::<Vec<_>>()})
}

/// Routes by model; an unknown name lists nothing rather than failing.
async fn get_routes(q: GetQuery<'_>) -> anyhow::Result<()> {
    let (all, revision) = flotilla_client::lists::routes(q.ch, q.stale)
        .await
        .map_err(|s| rpc_error("list routes", s))?;
    let routes: Vec<&pb::Route> = all.iter().filter(|r| q.wanted(&r.model)).collect();
    let rows = routes
        .iter()
        .map(|r| vec![r.model.clone(), endpoints(r), format!("{}", r.revision)])
        .collect();
    let js = routes.iter().map(|r| route_json(r)).collect();
    if q.output == Output::Table {
        eprintln!("route table revision {revision}");
    }
    print(
        q.output,
        &["MODEL", "ENDPOINTS (cluster=weight)", "REVISION"],
        rows,
        js,
    )
}

async fn get_policies(q: GetQuery<'_>) -> anyhow::Result<()> {
    let ps: Vec<pb::TenantPolicy> = flotilla_client::lists::policies(q.ch, q.stale)
        .await
        .map_err(|s| rpc_error("list policies", s))?
        .into_iter()
        .filter(|p| q.wanted(&p.tenant))
        .collect();
    q.found(ps.is_empty(), "policy of tenant")?;
    let rows = ps
        .iter()
        .map(|p| {
            let limit = |n: u32| match n {
                0 => "-".to_owned(),
                n => n.to_string(),
            };
            vec![
                p.tenant.clone(),
                p.approved_models.join(","),
                limit(p.requests_per_minute),
                limit(p.tokens_per_minute),
                match p.external_endpoints.is_empty() {
                    true => "-".to_owned(),
                    false => p.external_endpoints.join(","),
                },
            ]
        })
        .collect();
    let js = ps
        .iter()
        .map(|p| {
            json!({"tenant": p.tenant, "approved_models": p.approved_models,
                "requests_per_minute": p.requests_per_minute,
                "tokens_per_minute": p.tokens_per_minute,
                "external_endpoints": p.external_endpoints, "etag": p.etag})
        })
        .collect();
    print(
        q.output,
        &[
            "TENANT",
            "APPROVED MODELS",
            "REQUESTS/MIN",
            "TOKENS/MIN",
            "EXTERNAL",
        ],
        rows,
        js,
    )
}
