//! Tenants and API keys through `flotilla.v1.TenantService`: admins write, gateways
//! and servers read, members of other roles are refused, and the registry never
//! holds a key.

use crate::common::{code, mtls_federation};
use flotilla_pki::Role;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::tenant_service_client::TenantServiceClient;
use flotilla_testkit::{TestResult, bounded};
use std::time::Duration;
use tonic::Code;

fn tenant(name: &str, identities: &[&str], etag: &str) -> pb::SetTenantRequest {
    pb::SetTenantRequest {
        tenant: Some(pb::Tenant {
            name: name.into(),
            identities: identities.iter().map(|i| i.to_string()).collect(),
            etag: etag.into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_answered_once_and_the_registry_keeps_only_its_hash() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let mut admin = TenantServiceClient::new(pki.channel(&addr, "ops", Role::Admin)?);
        admin
            .set_tenant(tenant("acme", &["spiffe://x/app"], "0"))
            .await?;
        // "0": only if there is none yet.
        assert_eq!(
            code(admin.set_tenant(tenant("acme", &[], "0")).await),
            Code::Aborted
        );
        // An identity is one tenant's.
        let taken = admin
            .set_tenant(tenant("beta", &["spiffe://x/app"], ""))
            .await
            .err()
            .ok_or("two tenants share an identity")?;
        assert_eq!(taken.code(), Code::FailedPrecondition, "{taken:?}");

        let made = admin
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: "acme".into(),
                expire_time: None,
            })
            .await?
            .into_inner();
        let record = made.record.ok_or("no record")?;
        assert_eq!(flotilla_pki::api_key_id(&made.key)?, record.id);
        assert_eq!(flotilla_pki::api_key_sha256(&made.key), record.sha256);
        // The secret is base64url, which may itself hold '_': it is all after the id.
        let secret = made
            .key
            .strip_prefix(flotilla_pki::api_key::API_KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(_, secret)| secret)
            .ok_or("no secret")?;
        assert_eq!(secret.len(), 43, "{secret}");
        for (id, state) in f.states() {
            let held = serde_json::to_string(&state.api_keys())?;
            assert!(held.contains(&record.id), "member {id} lacks the record");
            assert!(!held.contains(secret), "member {id} holds the key itself");
        }

        // Gateways read tenants and key records (they enforce them); agents and
        // node agents do not.
        let gateway = TenantServiceClient::new(pki.channel(&addr, "c1", Role::Gateway)?);
        let keys = gateway
            .clone()
            .list_api_keys(pb::ListApiKeysRequest::default())
            .await?
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1);
        for ch in [
            pki.channel(&addr, "c1", Role::Agent)?,
            pki.node_channel(&addr, "c1", "gpu-a")?,
        ] {
            let mut c = TenantServiceClient::new(ch);
            assert_eq!(
                code(c.list_api_keys(pb::ListApiKeysRequest::default()).await),
                Code::PermissionDenied
            );
            assert_eq!(
                code(c.list_tenants(pb::ListTenantsRequest::default()).await),
                Code::PermissionDenied
            );
        }
        assert_eq!(
            code(
                gateway
                    .clone()
                    .revoke_api_key(pb::RevokeApiKeyRequest {
                        id: record.id.clone()
                    })
                    .await
            ),
            Code::PermissionDenied,
            "a gateway revokes nothing"
        );

        // Bad requests name the problem and change nothing.
        let unknown = admin
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: "nobody".into(),
                expire_time: None,
            })
            .await
            .err()
            .ok_or("a key for no tenant")?;
        assert_eq!(unknown.code(), Code::NotFound);
        let past = admin
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: "acme".into(),
                expire_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .err()
            .ok_or("a key that expired before it was made")?;
        assert_eq!(past.code(), Code::InvalidArgument);
        assert!(past.message().starts_with("expire_time"), "{past:?}");
        assert_eq!(
            code(
                admin
                    .revoke_api_key(pb::RevokeApiKeyRequest { id: "0000".into() })
                    .await
            ),
            Code::NotFound
        );

        admin
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: record.id.clone(),
            })
            .await?;
        let revoked = admin
            .list_api_keys(pb::ListApiKeysRequest {
                tenant: "acme".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .keys;
        assert!(revoked[0].revoked);

        // Deleting the tenant takes its keys.
        admin
            .delete_tenant(pb::DeleteTenantRequest {
                name: "acme".into(),
                ..Default::default()
            })
            .await?;
        let left = admin
            .list_api_keys(pb::ListApiKeysRequest::default())
            .await?
            .into_inner()
            .keys;
        assert!(left.is_empty(), "{left:?}");
        f.stop_all().await
    })
    .await
}

async fn next_governance(
    w: &mut tonic::Streaming<pb::WatchGovernanceResponse>,
) -> Result<pb::WatchGovernanceResponse, String> {
    tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .map_err(|_| "no governance message within 5 s")?
        .map_err(|s| format!("{s:?}"))?
        .ok_or_else(|| "the watch ended".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_governance_watch_sends_the_whole_governance_again_on_each_change_to_it_only()
-> TestResult {
    use flotilla_proto::v1::policy_service_client::PolicyServiceClient;
    use flotilla_proto::v1::workload_service_client::WorkloadServiceClient;
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        let mut tenants = TenantServiceClient::new(admin.clone());
        let mut gateway = TenantServiceClient::new(pki.channel(&addr, "c1", Role::Gateway)?);
        let mut watch = gateway
            .watch_governance(pb::WatchGovernanceRequest {})
            .await?
            .into_inner();
        let first = next_governance(&mut watch).await?;
        assert!(first.tenants.is_empty() && first.api_keys.is_empty() && first.policies.is_empty());

        tenants.set_tenant(tenant("acme", &[], "")).await?;
        let made = tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: "acme".into(),
                expire_time: None,
            })
            .await?
            .into_inner();
        let with_tenant = next_governance(&mut watch).await?;
        assert_eq!(with_tenant.tenants.len(), 1);
        assert!(with_tenant.applied_index > first.applied_index);
        let with_key = match with_tenant.api_keys.is_empty() {
            true => next_governance(&mut watch).await?,
            false => with_tenant,
        };
        assert_eq!(with_key.api_keys.len(), 1, "{with_key:?}");
        assert_eq!(
            with_key.api_keys[0].sha256,
            flotilla_pki::api_key_sha256(&made.key)
        );

        // A change elsewhere sends nothing; the next message is the policy's.
        WorkloadServiceClient::new(admin.clone())
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(crate::common::workload("chat", "llama")),
            })
            .await?;
        PolicyServiceClient::new(admin)
            .set_policy(pb::SetPolicyRequest {
                policy: Some(pb::TenantPolicy {
                    tenant: "acme".into(),
                    approved_models: vec!["llama".into()],
                    ..Default::default()
                }),
            })
            .await?;
        let with_policy = next_governance(&mut watch).await?;
        assert_eq!(with_policy.tenants.len(), 1, "whole, not a diff");
        assert_eq!(with_policy.api_keys.len(), 1, "whole, not a diff");
        assert_eq!(with_policy.policies.len(), 1, "{with_policy:?}");
        assert_eq!(with_policy.policies[0].approved_models, ["llama"]);

        // Agents and node agents do not read governance.
        for ch in [
            pki.channel(&addr, "c1", Role::Agent)?,
            pki.node_channel(&addr, "c1", "gpu-a")?,
        ] {
            let refused = TenantServiceClient::new(ch)
                .watch_governance(pb::WatchGovernanceRequest {})
                .await;
            assert_eq!(code(refused.map(|_| ())), Code::PermissionDenied);
        }
        f.stop_all().await
    })
    .await
}
