//! Leader-side housekeeping as Raft commands: on the leader only, run the scheduler
//! (`flotilla_core::plan`) on a timer and after applied changes, and propose what it
//! returns. `plan` also marks clusters whose lease expired Unreachable, and expires
//! nodes whose own lease (node-scoped reports) expired. Each command is stamped
//! with the federation's time ([`crate::clock`]: the leader's monotonic clock,
//! which a step of any wall clock does not move); core rejects stale ones, which
//! is logged and otherwise harmless.
//!
//! Leases: a leader that just took over, or whose passes stopped for a while (the
//! process was stalled or frozen), cannot tell a silent cluster from one whose reports
//! could not reach it. It plans with a lease floor (`plan_with_lease_floor`): no cluster
//! is marked Unreachable, and no node expired, until one heartbeat interval after
//! that moment.

use crate::propose::Proposer;
use crate::store::StateMachineStore;
use crate::types::{NodeId, Outcome, Raft};
use flotilla_core::Entry;
use std::time::Duration;
use tokio::sync::watch;

/// How long a change waits for more before the pass it triggers.
const CHANGE_SETTLE: Duration = Duration::from_millis(20);
/// The least time between two passes triggered by changes.
const CHANGE_PASS_GAP: Duration = Duration::from_millis(100);
/// A pass this much later than the timer wanted means this server could not hear
/// anyone for a while.
const STALL: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    raft: Raft,
    proposer: Proposer,
    sm: StateMachineStore,
    me: NodeId,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = sm.changes();
    let mut last_pass = tokio::time::Instant::now();
    let mut was_leader = false;
    let mut last_wakeup = tokio::time::Instant::now();
    let mut heard_since = proposer.now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // Let a burst of writes settle into one pass, and under a steady stream
                // of writes plan at most every CHANGE_PASS_GAP (each pass reads the
                // whole registry, and holding it makes the next apply copy it).
                let settle = tokio::time::Instant::now() + CHANGE_SETTLE;
                tokio::time::sleep_until(settle.max(last_pass + CHANGE_PASS_GAP)).await;
            }
        }
        if *shutdown.borrow() {
            return;
        }
        let woke = tokio::time::Instant::now();
        let stalled = woke.duration_since(last_wakeup) > interval + STALL;
        last_wakeup = woke;
        let leader = raft.metrics().borrow().current_leader == Some(me);
        if leader && (!was_leader || stalled) {
            heard_since = proposer.now();
            tracing::info!(
                stalled,
                "leading housekeeping; clusters get a lease to report before any is marked unreachable"
            );
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        last_pass = tokio::time::Instant::now();
        let at = proposer.now();
        let state = sm.current().state;
        let commands = flotilla_core::plan_with_lease_floor(&state, at, heard_since);
        for command in commands {
            let kind = command.kind();
            match proposer.write(Entry::new(at, command)).await {
                Ok(resp) => {
                    if let Outcome::Rejected(r) = resp.data {
                        tracing::debug!(kind, %r, "housekeeping command rejected");
                    }
                }
                Err(e) => {
                    tracing::info!(kind, error = %e, "housekeeping stopped this pass");
                    break;
                }
            }
        }
    }
}
