//! Partition (in-process fault-injecting transport): a minority cannot commit; after
//! healing everyone converges.

use crate::common::{assert_identical, register};
use flotilla_testkit::{ELECTION_MAX, Federation, TestResult, bounded, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_everyone_converges_after_healing() -> TestResult {
    bounded(Duration::from_secs(90), async {
        let f = Federation::with_members(5).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        // Put the current leader in the minority with one other member.
        let others: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
        let minority = vec![leader, others[0]];
        let majority: Vec<u64> = others[1..].to_vec();
        f.faults.partition(&minority, &majority);

        // The old leader cannot commit: its write does not complete.
        let mut client = f.client(leader)?;
        let stuck = tokio::time::timeout(
            ELECTION_MAX * 3,
            client.propose(&register("minority-write")),
        )
        .await;
        assert!(
            !matches!(stuck, Ok(Ok(ref r)) if r.applied),
            "a minority committed a write: {stuck:?}"
        );

        // The majority elects a leader of its own and commits.
        let new = eventually("a majority leader", Duration::from_secs(10), || async {
            f.agreed_leader(&majority).filter(|l| majority.contains(l))
        })
        .await?;
        for i in 0..5 {
            let r = f
                .client(new)?
                .propose(&register(&format!("majority-{i}")))
                .await?;
            assert!(r.applied);
        }
        // The minority's members still have not applied them.
        for id in &minority {
            let s = f.servers[id].applied().state;
            assert!(
                s.cluster("majority-0").is_none(),
                "minority node {id} applied a majority write while cut off"
            );
        }

        f.faults.heal();
        f.wait_converged(Duration::from_secs(20)).await?;
        let states = f.states();
        assert_identical(&states);
        for (id, s) in &states {
            assert!(
                s.cluster("majority-4").is_some(),
                "node {id} missed a majority write"
            );
        }
        f.stop_all().await
    })
    .await
}
