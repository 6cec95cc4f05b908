//! Plays a scenario's capacity events against the running federation: GPUs are
//! taken, failed and given back through each agent's admin endpoint (the simulated
//! fleet), and a lost cluster has every process killed.

use crate::UpError;
use crate::topology::Action;
use bytes::Bytes;
use flotilla_core::{DeviceRef, State};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// GPUs `up` changed, per cluster, so they can be given back.
#[derive(Debug, Default)]
pub struct Player {
    claimed: BTreeMap<String, Vec<DeviceRef>>,
    failed: BTreeMap<String, Vec<DeviceRef>>,
}

impl Player {
    /// Applies a GPU action to `cluster` through its agent at `agent_admin`. Lose
    /// and Recover are the supervisor's; here they do nothing.
    pub async fn apply(
        &mut self,
        cluster: &str,
        action: Action,
        agent_admin: SocketAddr,
        state: &State,
    ) -> Result<String, UpError> {
        match action {
            Action::Claim { gpus } | Action::Fail { gpus } => {
                let picked = pick(state, cluster, gpus);
                let (change, book) = if matches!(action, Action::Claim { .. }) {
                    (serde_json::json!({"change": "claim"}), &mut self.claimed)
                } else {
                    (
                        serde_json::json!({"change": "fail", "reason": "scenario event"}),
                        &mut self.failed,
                    )
                };
                for d in &picked {
                    post(agent_admin, d, &change).await?;
                }
                let n = picked.len();
                book.entry(cluster.to_owned()).or_default().extend(picked);
                Ok(format!(
                    "{cluster}: {} ({n} GPUs changed)",
                    action.describe()
                ))
            }
            Action::Release | Action::Repair => {
                let (change, book) = if action == Action::Release {
                    (serde_json::json!({"change": "release"}), &mut self.claimed)
                } else {
                    (serde_json::json!({"change": "recover"}), &mut self.failed)
                };
                let devices = book.remove(cluster).unwrap_or_default();
                for d in &devices {
                    post(agent_admin, d, &change).await?;
                }
                Ok(format!(
                    "{cluster}: {} ({} GPUs)",
                    action.describe(),
                    devices.len()
                ))
            }
            Action::Lose
            | Action::Recover
            | Action::KillLeader
            | Action::RestartServers
            | Action::PauseRegistry
            | Action::ResumeRegistry => Ok(format!("{cluster}: {}", action.describe())),
        }
    }
}

/// The GPUs another tenant takes: those Flotilla's replicas run on first (what makes
/// a reclaim matter), then free ones; never one already taken or failed.
fn pick(state: &State, cluster: &str, gpus: u32) -> Vec<DeviceRef> {
    let Some(c) = state.cluster(cluster) else {
        return Vec::new();
    };
    let mut candidates: Vec<(bool, DeviceRef)> = c
        .inventory
        .devices()
        .filter(|(_, d)| d.report.healthy && !d.report.claimed_by_other)
        .map(|(at, d)| (d.allocated_to.is_none(), at))
        .collect();
    candidates.sort_by_key(|c| c.0);
    candidates
        .into_iter()
        .take(gpus as usize)
        .map(|(_, at)| at)
        .collect()
}

async fn post(agent: SocketAddr, d: &DeviceRef, change: &serde_json::Value) -> Result<(), UpError> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri = format!("http://{agent}/gpus/{}/{}", d.node, d.uuid);
    let fail = |message: String| UpError::Agent {
        agent,
        message: format!("POST {uri}: {message}"),
    };
    let request = Request::post(&uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(change.to_string())))
        .map_err(|e| fail(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(fail(format!("{status}: {body}")));
    }
    Ok(())
}
