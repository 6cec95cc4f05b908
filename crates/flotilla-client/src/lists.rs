//! The `flotilla.v1` List RPCs, each followed through every page: what a client
//! that wants a whole list calls.

use crate::paging::all_pages;
use flotilla_proto::v1::{
    self as pb, capacity_service_client::CapacityServiceClient,
    federation_service_client::FederationServiceClient,
    placement_service_client::PlacementServiceClient, policy_service_client::PolicyServiceClient,
    route_service_client::RouteServiceClient, tenant_service_client::TenantServiceClient,
    workload_service_client::WorkloadServiceClient,
};
use tonic::Status;
use tonic::transport::Channel;

pub async fn clusters(ch: &Channel, allow_stale: bool) -> Result<Vec<pb::Cluster>, Status> {
    let client = FederationServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_clusters(pb::ListClustersRequest {
                    allow_stale,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.clusters, r.next_page_token))
        }
    })
    .await
}

/// The GPUs of `cluster`, or of every cluster when it is empty.
pub async fn gpus(ch: &Channel, cluster: &str, allow_stale: bool) -> Result<Vec<pb::Gpu>, Status> {
    let client = CapacityServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        let cluster = cluster.to_owned();
        async move {
            let r = client
                .list_gpus(pb::ListGpusRequest {
                    cluster,
                    allow_stale,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.gpus, r.next_page_token))
        }
    })
    .await
}

pub async fn workloads(ch: &Channel, allow_stale: bool) -> Result<Vec<pb::Workload>, Status> {
    let client = WorkloadServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_workloads(pb::ListWorkloadsRequest {
                    allow_stale,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.workloads, r.next_page_token))
        }
    })
    .await
}

/// The placements with a replica in `cluster`, or all of them when it is empty.
pub async fn placements(
    ch: &Channel,
    cluster: &str,
    allow_stale: bool,
) -> Result<Vec<pb::Placement>, Status> {
    let client = PlacementServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        let cluster = cluster.to_owned();
        async move {
            let r = client
                .list_placements(pb::ListPlacementsRequest {
                    allow_stale,
                    page_token,
                    cluster,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.placements, r.next_page_token))
        }
    })
    .await
}

/// Every route, and the table's revision as the last page gave it.
pub async fn routes(ch: &Channel, allow_stale: bool) -> Result<(Vec<pb::Route>, u64), Status> {
    let client = RouteServiceClient::new(ch.clone());
    let revision = std::sync::atomic::AtomicU64::new(0);
    let routes = all_pages(|page_token| {
        let mut client = client.clone();
        let revision = &revision;
        async move {
            let r = client
                .list_routes(pb::ListRoutesRequest {
                    allow_stale,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            revision.store(r.revision, std::sync::atomic::Ordering::Relaxed);
            Ok((r.routes, r.next_page_token))
        }
    })
    .await?;
    Ok((routes, revision.into_inner()))
}

pub async fn policies(ch: &Channel, allow_stale: bool) -> Result<Vec<pb::TenantPolicy>, Status> {
    let client = PolicyServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_policies(pb::ListPoliciesRequest {
                    allow_stale,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.policies, r.next_page_token))
        }
    })
    .await
}

/// Every tenant, all pages.
pub async fn tenants(ch: &Channel, allow_stale: bool) -> Result<Vec<pb::Tenant>, Status> {
    let client = TenantServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_tenants(pb::ListTenantsRequest {
                    allow_stale,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.tenants, r.next_page_token))
        }
    })
    .await
}

/// Every API key's record (of `tenant`, or all when empty), all pages.
pub async fn api_keys(
    ch: &Channel,
    tenant: &str,
    allow_stale: bool,
) -> Result<Vec<pb::ApiKey>, Status> {
    let client = TenantServiceClient::new(ch.clone());
    all_pages(|page_token| {
        let mut client = client.clone();
        let tenant = tenant.to_owned();
        async move {
            let r = client
                .list_api_keys(pb::ListApiKeysRequest {
                    allow_stale,
                    page_token,
                    tenant,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.keys, r.next_page_token))
        }
    })
    .await
}
