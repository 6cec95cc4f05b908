//! A server's memory follows the size of its state, not the length of its log: a
//! `flotilla server` fed a steady stream of heartbeats for several snapshot
//! intervals (the default policy: a snapshot every 10,000 entries) stays within a
//! stated bound of what it used once warm.

use flotilla_testkit::{ServerProcess, TestResult, bounded};
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
/// The log index of the first measurement: allocator pools, caches and connections
/// have reached their working size by then.
const WARM_UP: u64 = 5_000;
/// The log index of the last: three snapshot intervals of the default policy later.
const END: u64 = WARM_UP + 30_000;
/// What the resident set may grow by from `WARM_UP` to `END`. The state is four
/// clusters. Measured on a debug build: 2.6 MiB now; 8.1 MiB before the log cache
/// and the store's page cache were bounded (they grew with the log until each
/// snapshot's purge).
const GROWTH_BOUND: u64 = 5 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_fed_heartbeats_for_three_snapshot_intervals_stays_within_a_bound() -> TestResult {
    bounded(Duration::from_secs(300), async {
        let binary = Path::new(env!("CARGO_BIN_EXE_flotilla"));
        // glibc gives each thread that allocates an arena of its own, up to eight per
        // core: on a large CI host that alone could exceed the bound. Two keep the
        // measurement about the server's data, as on the small hosts it runs on.
        let server = ServerProcess::start(binary, &[], &[("MALLOC_ARENA_MAX", "2")]).await?;
        server.feed_until(4, WARM_UP).await?;
        let Some(warm) = server.resident_bytes() else {
            eprintln!("no /proc here: resident memory cannot be read; nothing measured");
            return Ok(());
        };
        server.feed_until(4, END).await?;
        let log = server.log_status().await?;
        let end = server.resident_bytes().ok_or("the server's memory became unreadable")?;

        assert!(
            log.last_snapshot_index >= END - 10_000,
            "snapshots every 10,000 entries: {log:?}"
        );
        assert!(
            log.log_entries < 10_000 + 1_000 + 1_000,
            "the log before a snapshot is purged: {log:?}"
        );
        let growth = end.saturating_sub(warm);
        eprintln!(
            "resident memory: {:.1} MiB at log index {WARM_UP}, {:.1} MiB at {}",
            warm as f64 / MIB as f64,
            end as f64 / MIB as f64,
            log.applied_index
        );
        assert!(
            growth <= GROWTH_BOUND,
            "resident memory grew {:.1} MiB from log index {WARM_UP} to {END} (from {:.1} to {:.1} MiB; bound {} MiB)",
            growth as f64 / MIB as f64,
            warm as f64 / MIB as f64,
            end as f64 / MIB as f64,
            GROWTH_BOUND / MIB
        );
        Ok(())
    })
    .await
}
