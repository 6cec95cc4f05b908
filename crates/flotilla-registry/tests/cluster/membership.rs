//! Membership: up to five voters, further members stay learners with the full
//! registry; removing a member; a member back after a long absence catches up.

use crate::common::register;
use flotilla_proto::registry::v1::RemoveMemberRequest;
use flotilla_testkit::{Federation, TestResult, bounded, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_members_make_five_voters_and_a_learner_with_the_full_registry() -> TestResult {
    bounded(Duration::from_secs(90), async {
        let mut f = Federation::with_members(6).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let status = f.client(leader)?.status().await?;
        let voters = status.members.iter().filter(|m| m.voter).count();
        let learners: Vec<u64> = status
            .members
            .iter()
            .filter(|m| !m.voter)
            .map(|m| m.node_id)
            .collect();
        assert_eq!((voters, learners.len()), (5, 1), "{:?}", status.members);

        for i in 0..5 {
            f.client(learners[0])?
                .propose(&register(&format!("c-{i}")))
                .await?;
        }
        f.wait_converged(Duration::from_secs(10)).await?;
        assert_eq!(f.servers[&learners[0]].applied().state.clusters().len(), 5);
        // A local read on the learner answers from its own copy.
        let (_, local) = f.client(learners[0])?.read_state(false).await?;
        assert_eq!(local.clusters().len(), 5);

        // Removing a voter promotes the learner, keeping five voters.
        let gone = (1..=6)
            .find(|id| *id != leader && !learners.contains(id))
            .unwrap_or(2);
        f.client(leader)?
            .raw()
            .remove_member(RemoveMemberRequest { node_id: gone })
            .await?;
        f.stop(gone).await?;
        f.wait_voters(5, Duration::from_secs(10)).await?;
        let status = f.client(leader)?.status().await?;
        assert!(status.members.iter().all(|m| m.node_id != gone));
        assert!(
            status
                .members
                .iter()
                .any(|m| m.node_id == learners[0] && m.voter)
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_and_no_leader_is_unavailable() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let mut f = Federation::with_members(3).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let follower = (1..=3).find(|id| *id != leader).unwrap_or(2);
        let r = f
            .client(follower)?
            .propose(&register("via-follower"))
            .await?;
        assert!(r.applied);
        // Core's rejection travels back as an answer, not a transport error.
        let r = f
            .client(follower)?
            .propose(&flotilla_core::Command::Heartbeat {
                cluster: "nope".into(),
            })
            .await?;
        assert!(!r.applied);
        assert!(
            r.rejection_message.contains("nope"),
            "{}",
            r.rejection_message
        );
        // Malformed commands are INVALID_ARGUMENT.
        let err = f
            .client(follower)?
            .propose_json("{\"type\":\"fly\"}".into())
            .await;
        assert!(
            matches!(
                err,
                Err(flotilla_client::Error::Rpc {
                    code: tonic::Code::InvalidArgument,
                    ..
                })
            ),
            "{err:?}"
        );
        // With two of three down, the last one has no leader: UNAVAILABLE, retryable.
        let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();
        for id in others {
            f.stop(id).await?;
        }
        let err = eventually("no leader", Duration::from_secs(10), || async {
            match f.client(follower).ok()?.propose(&register("lost")).await {
                Err(
                    e @ flotilla_client::Error::Rpc {
                        code: tonic::Code::Unavailable,
                        ..
                    },
                ) => Some(e),
                _ => None,
            }
        })
        .await?;
        assert!(err.is_retryable());
        f.stop_all().await
    })
    .await
}

/// Two voters survive no loss, as one does, and four survive one, as three do:
/// the registry keeps an odd number, so a second server waits as a learner until a
/// third joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_are_kept_odd_as_servers_join() -> TestResult {
    use flotilla_registry::Bootstrap;
    bounded(Duration::from_secs(60), async {
        let mut f = Federation::with_members(2).await?;
        // (voters, learners) in the leader's membership.
        let voters = |f: &Federation| {
            let Some(leader) = f.agreed_leader(&[]) else {
                return (0, 0);
            };
            let m = f.servers[&leader].raft().metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters = membership.voter_ids().count();
            (voters, membership.nodes().count() - voters)
        };
        f.wait_leader(Duration::from_secs(5)).await?;
        eventually(
            "one voter and one learner",
            Duration::from_secs(10),
            || async { (voters(&f) == (1, 1)).then_some(()) },
        )
        .await?;
        f.start(3, Bootstrap::Join(f.addr(1))).await?;
        f.wait_voters(3, Duration::from_secs(10)).await?;
        f.start(4, Bootstrap::Join(f.addr(1))).await?;
        eventually(
            "three voters and a learner",
            Duration::from_secs(10),
            || async { (voters(&f) == (3, 1)).then_some(()) },
        )
        .await?;
        f.stop_all().await
    })
    .await
}
