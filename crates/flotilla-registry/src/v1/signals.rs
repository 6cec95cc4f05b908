//! `flotilla.v1alpha1.SignalService` (experimental): replica load reported by agents,
//! held in memory by the server called, not replicated.

use super::ApiCore;
use crate::authz::Action;
use flotilla_proto::v1alpha1::{self as pb, signal_service_server::SignalService};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

type Key = (String, String, u64);

#[derive(Debug, Clone)]
pub(crate) struct SignalApi {
    pub(crate) core: ApiCore,
    pub(crate) load: Arc<Mutex<BTreeMap<Key, pb::ReplicaLoad>>>,
}

#[tonic::async_trait]
impl SignalService for SignalApi {
    async fn report_load(
        &self,
        request: Request<pb::ReportLoadRequest>,
    ) -> Result<Response<pb::ReportLoadResponse>, Status> {
        let cluster = request.get_ref().cluster.clone();
        if cluster.is_empty() {
            return Err(Status::invalid_argument("cluster: required (empty)"));
        }
        self.core
            .check(&request, Action::ForCluster(&cluster), "ReportLoad")?;
        let replicas = request.into_inner().replicas;
        for (i, r) in replicas.iter().enumerate() {
            if r.cluster != cluster {
                return Err(Status::invalid_argument(format!(
                    "replicas[{i}].cluster: {:?} is not the reporting cluster {cluster:?}",
                    r.cluster
                )));
            }
            if !(0.0..=1.0).contains(&r.kv_cache_utilization) {
                return Err(Status::invalid_argument(format!(
                    "replicas[{i}].kv_cache_utilization: {} is not between 0 and 1",
                    r.kv_cache_utilization
                )));
            }
        }
        let mut load = match self.load.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for r in replicas {
            load.insert((r.cluster.clone(), r.workload.clone(), r.replica), r);
        }
        Ok(Response::new(pb::ReportLoadResponse {}))
    }

    async fn list_load(
        &self,
        request: Request<pb::ListLoadRequest>,
    ) -> Result<Response<pb::ListLoadResponse>, Status> {
        self.core.check(&request, Action::Read, "ListLoad")?;
        let cluster = request.into_inner().cluster;
        let load = match self.load.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Ok(Response::new(pb::ListLoadResponse {
            replicas: load
                .values()
                .filter(|r| cluster.is_empty() || r.cluster == cluster)
                .cloned()
                .collect(),
        }))
    }
}
