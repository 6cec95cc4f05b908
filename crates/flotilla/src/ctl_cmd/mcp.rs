//! `flotilla ctl mcp …` (experimental, `flotilla.v1alpha1`): MCP servers, their
//! routing rule and each tenant's tools.

use super::{ExitWith, Output, code, print, rpc_error};
use flotilla_proto::v1alpha1 as pb;
use flotilla_proto::v1alpha1::mcp_service_client::McpServiceClient;
use serde_json::json;
use std::collections::BTreeMap;
use tonic::transport::Channel;

#[derive(Debug, clap::Subcommand)]
pub(super) enum McpCommand {
    /// Creates or replaces an MCP server: the workload that serves it, the rule
    /// that routes to it, and the tools each tenant may call.
    Set {
        name: String,
        /// The model id of the workload that serves it.
        #[arg(long)]
        service: String,
        /// The request host (no port) it answers; without it, any host.
        #[arg(long, default_value = "")]
        host: String,
        /// The start of the paths it answers ("/mcp/search"); "/" only with --host.
        #[arg(long, default_value = "/")]
        path_prefix: String,
        /// TENANT=TOOL,TOOL: the tools a tenant may call ("*": all); repeatable. A
        /// tenant not granted may not use the server.
        #[arg(long = "grant", value_name = "TENANT=TOOLS")]
        grants: Vec<String>,
    },
    /// Lists MCP servers.
    List,
    /// Deletes an MCP server.
    Delete { name: String },
}

fn invalid(message: String) -> anyhow::Error {
    ExitWith {
        code: code::INVALID,
        message,
    }
    .into()
}

/// `--grant` values as a tenant → tools map; a tenant granted twice is an error.
fn grants(given: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for g in given {
        let (tenant, tools) = g
            .split_once('=')
            .ok_or_else(|| invalid(format!("--grant {g:?}: write TENANT=TOOL,TOOL")))?;
        let tools: Vec<String> = tools
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if out.insert(tenant.trim().to_owned(), tools).is_some() {
            return Err(invalid(format!(
                "--grant: tenant {tenant:?} is granted twice"
            )));
        }
    }
    Ok(out)
}

pub(super) async fn mcp(ch: &Channel, output: Output, command: &McpCommand) -> anyhow::Result<()> {
    let mut client = McpServiceClient::new(ch.clone());
    match command {
        McpCommand::Set {
            name,
            service,
            host,
            path_prefix,
            grants: given,
        } => {
            let server = flotilla_core::McpServer {
                name: name.clone(),
                host: host.clone(),
                path_prefix: path_prefix.clone(),
                service: service.clone(),
                tools: grants(given)?,
            };
            // The same check the server makes, without the round trip.
            server.validate().map_err(|e| invalid(e.to_string()))?;
            let r = client
                .set_mcp_server(pb::SetMcpServerRequest {
                    server: Some(flotilla_client::convert::mcp::server_to(&server)),
                })
                .await
                .map_err(|s| rpc_error(&format!("set MCP server {name:?}"), s))?;
            println!("mcp/{name} set (log index {})", r.into_inner().log_index);
            Ok(())
        }
        McpCommand::List => {
            let servers = client
                .list_mcp_servers(pb::ListMcpServersRequest {})
                .await
                .map_err(|s| rpc_error("list MCP servers", s))?
                .into_inner()
                .servers;
            let grants_of = |s: &pb::McpServer| {
                s.grants
                    .iter()
                    .map(|g| format!("{}={}", g.tenant, g.tools.join(",")))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let rows = servers
                .iter()
                .map(|s| {
                    let host = if s.host.is_empty() { "*" } else { &s.host };
                    vec![
                        s.name.clone(),
                        format!("{host}{}", s.path_prefix),
                        s.service.clone(),
                        grants_of(s),
                    ]
                })
                .collect();
            let js = servers
                .iter()
                .map(|s| {
                    let grants: BTreeMap<&str, &[String]> = s
                        .grants
                        .iter()
                        .map(|g| (g.tenant.as_str(), g.tools.as_slice()))
                        .collect();
                    json!({"name": s.name, "host": s.host, "path_prefix": s.path_prefix,
                        "service": s.service, "grants": grants})
                })
                .collect();
            print(
                output,
                &["MCP SERVER", "RULE", "SERVICE", "GRANTS"],
                rows,
                js,
            )
        }
        McpCommand::Delete { name } => {
            client
                .delete_mcp_server(pb::DeleteMcpServerRequest { name: name.clone() })
                .await
                .map_err(|s| rpc_error(&format!("delete MCP server {name:?}"), s))?;
            println!("mcp/{name} deleted");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_tenant_equals_tools_and_a_tenant_is_granted_once() {
        let got = grants(&["acme=search, fetch".into(), "ops=*".into()]).unwrap();
        assert_eq!(got["acme"], vec!["search", "fetch"]);
        assert_eq!(got["ops"], vec!["*"]);
        assert!(grants(&["acme".into()]).is_err());
        assert!(grants(&["a=x".into(), "a=y".into()]).is_err());
    }
}
