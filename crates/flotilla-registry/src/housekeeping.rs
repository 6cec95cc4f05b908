//! Leader-side housekeeping as Raft commands: on the leader only, run the scheduler
//! (`flotilla_core::plan`) on a timer and after applied changes, and propose what it
//! returns. `plan` also marks clusters whose lease expired Unreachable. Each command is
//! stamped with the proposer's wall clock; core rejects stale ones, which is logged and
//! otherwise harmless.

use crate::api::now;
use crate::propose::Proposer;
use crate::store::StateMachineStore;
use crate::types::{NodeId, Outcome, Raft};
use flotilla_core::Entry;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) async fn run(
    raft: Raft,
    proposer: Proposer,
    sm: StateMachineStore,
    me: NodeId,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = sm.changes();
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
                // Let a burst of writes settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if *shutdown.borrow() {
            return;
        }
        if raft.metrics().borrow().current_leader != Some(me) {
            continue;
        }
        let at = now();
        let state = sm.current().state;
        let commands = flotilla_core::plan(&state, at);
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
