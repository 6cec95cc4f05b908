//! gRPC health that tells the truth. A member is SERVING while its Raft core runs
//! (storage that fails stops it, and then it stops serving at once) and it knows
//! the federation's leader; a follower cut
//! off from the majority stops knowing one within an election timeout, as it starts
//! elections it cannot win. Until `grace` has passed without a leader (an ordinary
//! election takes less), nothing changes; after it, the whole server and each of its
//! services say NOT_SERVING, and [`Serving`] tells every open watch, which ends with
//! `UNAVAILABLE` so that its client moves to another server instead of following a
//! frozen table. It says SERVING again once a leader is known.

use crate::types::Raft;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often the member's state is looked at besides its metrics' changes (a
/// leaderless spell ends the grace without any metric changing).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Whether this member serves: `true` while it knows a leader (or has lost it for
/// less than the grace).
pub(crate) type Serving = watch::Receiver<bool>;

/// What the member's Raft core says of itself now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Looked {
    /// Running, and a leader known.
    Sound,
    /// Running without a leader (an election, or cut off).
    NoLeader,
    /// Stopped for good (its storage failed): no grace.
    Stopped,
}

fn look(raft: &Raft) -> Looked {
    let m = raft.metrics().borrow().clone();
    match (&m.running_state, m.current_leader) {
        (Err(_), _) => Looked::Stopped,
        (Ok(()), Some(_)) => Looked::Sound,
        (Ok(()), None) => Looked::NoLeader,
    }
}

/// Keeps `reporter` (the overall "" status and every name in `services`) and
/// `serving` in line with the member's state until `shutdown`. A member that has
/// never known a leader does not serve.
pub(crate) fn spawn(
    raft: Raft,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    grace: Duration,
    serving_tx: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        // A core that stopped drops its metrics' sender: from then on only the
        // timer and shutdown wake this loop.
        let mut core_gone = false;
        let mut last_sound: Option<Instant> = None;
        let mut published = None;
        loop {
            let now = Instant::now();
            let looked = look(&raft);
            if looked == Looked::Sound {
                last_sound = Some(now);
            }
            let serving = looked != Looked::Stopped
                && last_sound.is_some_and(|t| now.duration_since(t) < grace);
            if published != Some(serving) {
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in std::iter::once("").chain(services.iter().copied()) {
                    reporter.set_service_status(name, status).await;
                }
                if published.is_some() {
                    if serving {
                        tracing::info!("a leader is known again: serving");
                    } else if looked == Looked::Stopped {
                        tracing::error!(
                            "the Raft core stopped (its storage failed): not serving; watches end so that their clients move to another server"
                        );
                    } else {
                        tracing::warn!(grace = ?grace, "no leader known for longer than the grace: not serving; watches end so that their clients move to another server");
                    }
                }
                let _ = serving_tx.send(serving);
                published = Some(serving);
            }
            tokio::select! {
                changed = metrics.changed(), if !core_gone => core_gone = changed.is_err(),
                () = tokio::time::sleep(LOOK_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    });
}
