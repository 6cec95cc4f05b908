//! Bad input from peers: another federation, oversized messages, undecodable payloads
//! and snapshots. Each is a clear error; nothing panics, nothing is half-applied.

use crate::common::register;
use flotilla_proto::raft::v1::{RaftRequest, SnapshotChunk, raft_client::RaftClient};
use flotilla_proto::registry::v1::JoinRequest;
use flotilla_testkit::{Federation, TestResult, bounded};
use std::time::Duration;

async fn raft_client(
    addr: &str,
) -> Result<RaftClient<tonic::transport::Channel>, tonic::transport::Error> {
    RaftClient::connect(format!("http://{addr}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_federation_and_garbage_are_refused() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = Federation::with_members(1).await?;
        let addr = f.addr(1);
        let mut c = raft_client(&addr).await?;

        let foreign = c
            .vote(RaftRequest {
                federation: "other-fed".into(),
                from: 9,
                payload: b"{}".to_vec(),
            })
            .await
            .err()
            .ok_or("a foreign vote was accepted")?;
        assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
        assert!(foreign.message().contains("other-fed") && foreign.message().contains("test-fed"));

        let garbage = c
            .append_entries(RaftRequest {
                federation: f.name.clone(),
                from: 9,
                payload: b"not json".to_vec(),
            })
            .await
            .err()
            .ok_or("garbage was accepted")?;
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        assert!(
            garbage.message().contains("node 9"),
            "{}",
            garbage.message()
        );

        let huge = c
            .append_entries(RaftRequest {
                federation: f.name.clone(),
                from: 9,
                payload: vec![b' '; 17 * 1024 * 1024],
            })
            .await
            .err()
            .ok_or("an oversized message was accepted")?;
        assert_ne!(huge.code(), tonic::Code::Ok);

        let join = f
            .client(1)?
            .raw()
            .join(JoinRequest {
                federation: "other-fed".into(),
                node_id: 5,
                address: "127.0.0.1:1".into(),
            })
            .await
            .err()
            .ok_or("a foreign join was accepted")?;
        assert_eq!(join.code(), tonic::Code::PermissionDenied);

        // The server is still healthy and serving.
        let r = f.client(1)?.propose(&register("still-fine")).await?;
        assert!(r.applied);
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_decode_is_refused_and_nothing_changes() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = Federation::with_members(1).await?;
        f.client(1)?.propose(&register("kept")).await?;
        let before = f.states();
        let m = f.servers[&1].raft().metrics().borrow().clone();
        let header = serde_json::json!({
            "vote": { "leader_id": { "term": m.current_term + 5, "node_id": 9 }, "committed": true },
            "meta": {
                "last_log_id": { "leader_id": { "term": m.current_term + 5, "node_id": 9 }, "index": 1000 },
                "last_membership": { "log_id": null, "membership": { "configs": [], "nodes": {} } },
                "snapshot_id": "evil"
            }
        });
        let chunks = vec![
            SnapshotChunk {
                federation: f.name.clone(),
                from: 9,
                header: serde_json::to_vec(&header)?,
                data: b"{\"magic\":\"flotilla-registry-snapshot\",\"format\":1,\"state\":".to_vec(),
            },
            SnapshotChunk { data: b"{\"clusters\": 42}}".to_vec(), ..Default::default() },
        ];
        let mut c = raft_client(&f.addr(1)).await?;
        let err = c
            .install_snapshot(futures::stream::iter(chunks))
            .await
            .err()
            .ok_or("a bad snapshot was accepted")?;
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("evil") && err.message().contains("node 9"), "{}", err.message());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(f.states(), before);
        let r = f.client(1)?.propose(&register("after")).await?;
        assert!(r.applied);
        f.stop_all().await
    })
    .await
}
