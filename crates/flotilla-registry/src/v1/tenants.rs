//! `flotilla.v1.TenantService`: tenants and their API keys. An API key is made
//! here, on the server that answers `CreateApiKey`, answered once, and only its
//! SHA-256 goes into the log (`flotilla_core::tenant`).

use super::ApiCore;
use super::paging::Page;
use super::services::{Rpc, index_of};
use crate::authz::Action;
use flotilla_client::convert::{self, conditional, non_empty, required};
use flotilla_core::{Command, ObjectKind, State};
use flotilla_proto::v1::{self as pb, tenant_service_server::TenantService};
use tonic::{Request, Response, Status};

pub(crate) fn tenant_read(t: &flotilla_core::Tenant, state: &State) -> pb::Tenant {
    convert::tenant_to(t, state.revision(ObjectKind::Tenant, &t.name))
}

#[tonic::async_trait]
impl TenantService for ApiCore {
    type WatchGovernanceStream = super::watch::Stream<pb::WatchGovernanceResponse>;

    async fn watch_governance(
        &self,
        request: Request<pb::WatchGovernanceRequest>,
    ) -> Rpc<Self::WatchGovernanceStream> {
        let watcher = self.watcher(&request, Action::ReadGovernance, "WatchGovernance")?;
        Ok(Response::new(super::watch::governance(self, watcher)))
    }

    async fn set_tenant(
        &self,
        request: Request<pb::SetTenantRequest>,
    ) -> Rpc<pb::SetTenantResponse> {
        self.check(&request, Action::Admin, "SetTenant")?;
        let given = required(request.into_inner().tenant, "tenant")?;
        let etag = given.etag.clone();
        let tenant = convert::tenant_from(given);
        let name = tenant.name.clone();
        let command = conditional(
            Command::SetTenant { tenant },
            ObjectKind::Tenant,
            &name,
            &etag,
            "tenant.etag",
        )?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::SetTenantResponse { log_index }))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Rpc<pb::GetTenantResponse> {
        self.check(&request, Action::ReadGovernance, "GetTenant")?;
        let body = request.get_ref();
        non_empty(&body.name, "name")?;
        let applied = self.read(body.allow_stale).await?;
        let tenant = applied.state.tenants().get(&body.name).ok_or_else(|| {
            flotilla_client::errors::not_found(
                "tenant",
                &body.name,
                format!("tenant \"{}\" not found", body.name),
            )
        })?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_read(tenant, &applied.state)),
            applied_index: index_of(&applied),
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Rpc<pb::ListTenantsResponse> {
        self.check(&request, Action::ReadGovernance, "ListTenants")?;
        let body = request.get_ref();
        let page = Page::of("ListTenants", "", body.page_size, &body.page_token)?;
        let applied = self.read(body.allow_stale).await?;
        let (tenants, next_page_token) = page.take(
            applied
                .state
                .tenants()
                .iter()
                .map(|(name, t)| (vec![name.clone()], t)),
            |t| tenant_read(t, &applied.state),
        );
        Ok(Response::new(pb::ListTenantsResponse {
            tenants,
            applied_index: index_of(&applied),
            next_page_token,
        }))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Rpc<pb::DeleteTenantResponse> {
        self.check(&request, Action::Admin, "DeleteTenant")?;
        let body = request.into_inner();
        non_empty(&body.name, "name")?;
        let command = conditional(
            Command::DeleteTenant {
                name: body.name.clone(),
            },
            ObjectKind::Tenant,
            &body.name,
            &body.etag,
            "etag",
        )?;
        let log_index = self.propose(command).await?;
        Ok(Response::new(pb::DeleteTenantResponse { log_index }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Rpc<pb::CreateApiKeyResponse> {
        self.check(&request, Action::Admin, "CreateApiKey")?;
        let body = request.into_inner();
        non_empty(&body.tenant, "tenant")?;
        let created_at = convert::timestamp_of(std::time::SystemTime::now());
        let expires_at = body.expire_time.map(convert::time_from);
        if let Some(at) = expires_at
            && at <= created_at
        {
            return Err(flotilla_client::errors::invalid_field(
                "expire_time",
                format!(
                    "expire_time: {} ms is not in the future (now {} ms)",
                    at.0, created_at.0
                ),
            ));
        }
        let made = flotilla_pki::new_api_key()
            .map_err(|e| Status::internal(format!("making an API key: {e}")))?;
        let record = flotilla_core::ApiKey {
            id: made.id,
            tenant: body.tenant,
            sha256: made.sha256,
            created_at,
            expires_at,
            revoked: false,
        };
        let log_index = self
            .propose(Command::CreateApiKey {
                key: record.clone(),
            })
            .await?;
        tracing::info!(id = %record.id, tenant = %record.tenant, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: made.key,
            record: Some(convert::api_key_to(&record)),
            log_index,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Rpc<pb::ListApiKeysResponse> {
        self.check(&request, Action::ReadGovernance, "ListApiKeys")?;
        let body = request.get_ref();
        let page = Page::of(
            "ListApiKeys",
            &body.tenant,
            body.page_size,
            &body.page_token,
        )?;
        let applied = self.read(body.allow_stale).await?;
        let (keys, next_page_token) = page.take(
            applied
                .state
                .api_keys()
                .iter()
                .filter(|(_, k)| body.tenant.is_empty() || k.tenant == body.tenant)
                .map(|(id, k)| (vec![id.clone()], k)),
            convert::api_key_to,
        );
        Ok(Response::new(pb::ListApiKeysResponse {
            keys,
            applied_index: index_of(&applied),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Rpc<pb::RevokeApiKeyResponse> {
        self.check(&request, Action::Admin, "RevokeApiKey")?;
        let id = request.into_inner().id;
        non_empty(&id, "id")?;
        let log_index = self
            .propose(Command::RevokeApiKey { id: id.clone() })
            .await?;
        tracing::info!(id = %id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse { log_index }))
    }
}
