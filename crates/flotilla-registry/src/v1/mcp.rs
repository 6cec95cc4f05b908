//! `flotilla.v1alpha1.McpService` (experimental): MCP servers, replicated like the
//! stable objects (`flotilla_core::mcp`). Admins write them; gateways list and
//! watch them to route MCP traffic and enforce each tenant's tools.

use super::ApiCore;
use super::services::Rpc;
use crate::authz::Action;
use flotilla_client::convert::{mcp, non_empty, required};
use flotilla_core::Command;
use flotilla_proto::v1alpha1::{self as pb, mcp_service_server::McpService};
use tonic::{Request, Response};

#[tonic::async_trait]
impl McpService for ApiCore {
    type WatchMcpServersStream = super::watch::Stream<pb::WatchMcpServersResponse>;

    async fn set_mcp_server(
        &self,
        request: Request<pb::SetMcpServerRequest>,
    ) -> Rpc<pb::SetMcpServerResponse> {
        self.check(&request, Action::Admin, "SetMcpServer")?;
        let server = mcp::server_from(required(request.into_inner().server, "server")?)?;
        let log_index = self.propose(Command::SetMcpServer { server }).await?;
        Ok(Response::new(pb::SetMcpServerResponse { log_index }))
    }

    async fn delete_mcp_server(
        &self,
        request: Request<pb::DeleteMcpServerRequest>,
    ) -> Rpc<pb::DeleteMcpServerResponse> {
        self.check(&request, Action::Admin, "DeleteMcpServer")?;
        let name = request.into_inner().name;
        non_empty(&name, "name")?;
        let log_index = self.propose(Command::DeleteMcpServer { name }).await?;
        Ok(Response::new(pb::DeleteMcpServerResponse { log_index }))
    }

    async fn list_mcp_servers(
        &self,
        request: Request<pb::ListMcpServersRequest>,
    ) -> Rpc<pb::ListMcpServersResponse> {
        self.check(&request, Action::ReadGovernance, "ListMcpServers")?;
        let applied = self.read(false).await?;
        Ok(Response::new(pb::ListMcpServersResponse {
            servers: applied
                .state
                .mcp_servers()
                .values()
                .map(mcp::server_to)
                .collect(),
        }))
    }

    async fn watch_mcp_servers(
        &self,
        request: Request<pb::WatchMcpServersRequest>,
    ) -> Rpc<Self::WatchMcpServersStream> {
        let watcher = self.watcher(&request, Action::ReadGovernance, "WatchMcpServers")?;
        Ok(Response::new(super::watch::mcp_servers(self, watcher)))
    }
}
