//! The admin endpoint over real TCP: snapshots, changes to a simulated fleet, 409
//! for a source that reads real GPUs, clear errors for bad requests, and an agent
//! that runs no replicas saying so.

use crate::FLEET;
use flotilla_agent::AgentError;
use flotilla_agent::admin::{self, Admin};
use flotilla_agent::gpu::simulated::SimulatedFleet;
use flotilla_agent::gpu::{GpuSource, Snapshot};
use flotilla_agent::report::StatusHandle;
use flotilla_client::materialize::ReplicaTable;
use flotilla_testkit::{TestResult, bounded};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One request on a fresh connection: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn start(
    admin: Admin,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), AgentError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(admin::serve(listener, admin, stop.clone()));
    (addr, stop, task)
}

#[tokio::test]
async fn gpus_can_be_read_and_a_simulated_fleet_changed() -> TestResult {
    bounded(Duration::from_secs(10), async {
        let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET)?;
        let (addr, stop, task) = start(Admin {
            source: Some(Arc::new(fleet.clone())),
            fleet: Some(fleet.clone()),
            replicas: Some(ReplicaTable::default()),
            reporting: StatusHandle::default(),
        })
        .await;

        let (status, body) = http(addr, "GET", "/gpus", "").await;
        assert_eq!(status, 200);
        let gpus: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(gpus["nodes"][0]["name"], "gpu-a");
        assert_eq!(gpus["nodes"][0]["devices"][1]["health"]["state"], "healthy");

        let (status, body) = http(
            addr,
            "POST",
            "/gpus/gpu-a/1",
            r#"{"change":"fail","reason":"Xid 79"}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let snapshot = fleet.snapshot()?;
        assert!(!snapshot.nodes[0].devices[1].health.is_healthy());

        let (status, body) = http(addr, "POST", "/gpus/nope/1", r#"{"change":"detach"}"#).await;
        assert_eq!(status, 404);
        assert!(body.contains("no node named \\\"nope\\\""), "{body}");
        let (status, body) = http(addr, "POST", "/gpus/gpu-a/1", r#"{"change":"explode"}"#).await;
        assert_eq!(status, 400);
        assert!(body.contains("not a device change"), "{body}");
        let (status, _) = http(addr, "GET", "/replicas", "").await;
        assert_eq!(status, 200);
        let (status, body) = http(addr, "GET", "/health", "").await;
        assert_eq!(status, 200);
        assert!(body.contains("\"simulated\""), "{body}");
        assert_eq!(http(addr, "GET", "/nothing", "").await.0, 404);
        assert_eq!(http(addr, "DELETE", "/gpus", "").await.0, 405);

        stop.cancel();
        task.await??;
        Ok(())
    })
    .await
}

/// Stands for NVML: reads devices, takes no changes.
#[derive(Debug)]
struct RealGpus;

impl GpuSource for RealGpus {
    fn snapshot(&self) -> Result<Snapshot, AgentError> {
        Ok(Snapshot::default())
    }

    fn kind(&self) -> &'static str {
        "nvml"
    }
}

#[tokio::test]
async fn changes_to_real_gpus_are_refused_with_409() -> TestResult {
    bounded(Duration::from_secs(10), async {
        let (addr, stop, task) = start(Admin {
            source: Some(Arc::new(RealGpus)),
            fleet: None,
            replicas: Some(ReplicaTable::default()),
            reporting: StatusHandle::default(),
        })
        .await;
        let (status, body) = http(addr, "POST", "/gpus/n/0", r#"{"change":"detach"}"#).await;
        assert_eq!(status, 409);
        assert!(body.contains("--gpu-source simulated"), "{body}");
        stop.cancel();
        task.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_agent_that_runs_no_replicas_says_so_instead_of_listing_none() -> TestResult {
    bounded(Duration::from_secs(10), async {
        let (addr, stop, task) = start(Admin {
            source: Some(Arc::new(RealGpus)),
            fleet: None,
            replicas: None,
            reporting: StatusHandle::default(),
        })
        .await;
        let (status, body) = http(addr, "GET", "/replicas", "").await;
        assert_eq!(status, 404);
        assert!(body.contains("--materializer none"), "{body}");
        let (status, body) = http(addr, "GET", "/health", "").await;
        assert_eq!(status, 200);
        let health: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(health["runs_replicas"], false);
        stop.cancel();
        task.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_process_that_reads_no_gpus_says_so_instead_of_listing_none() -> TestResult {
    bounded(Duration::from_secs(10), async {
        let (addr, stop, task) = start(Admin {
            source: None,
            fleet: None,
            replicas: Some(ReplicaTable::default()),
            reporting: StatusHandle::default(),
        })
        .await;
        let (status, body) = http(addr, "GET", "/gpus", "").await;
        assert_eq!(status, 404);
        assert!(body.contains("reads no GPUs"), "{body}");
        let (status, _) = http(addr, "POST", "/gpus/gpu-a/0", r#"{"change":"fail"}"#).await;
        assert_eq!(status, 404, "nothing to change");
        let (status, body) = http(addr, "GET", "/health", "").await;
        assert_eq!(status, 200);
        let health: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(health["source"], "none");
        assert_eq!(health["runs_replicas"], true);
        stop.cancel();
        task.await??;
        Ok(())
    })
    .await
}
