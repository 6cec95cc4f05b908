//! A server's resident memory against the length of its log: one `flotilla server`
//! (its own process, default snapshot policy: a snapshot every 10,000 entries, 1,000
//! kept behind it) fed heartbeats for four clusters as fast as it takes them.
//! Printed every 5,000 log entries: the log index, the last snapshot, the entries
//! the log keeps, and the resident set. Memory should level off once the caches are
//! warm, whatever the length of the log.
//!
//! `cargo build --release -p flotilla && cargo bench -p flotilla-tests --bench server_memory`.
//! `FLOTILLA_BENCH_ENTRIES` sets how far the log goes (default 60,000);
//! `FLOTILLA_SERVER_BINARY` measures another build of `flotilla` (to compare two).

#![allow(clippy::unwrap_used)]

use flotilla_testkit::ServerProcess;
use std::path::PathBuf;

const STEP: u64 = 5_000;

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let entries: u64 = std::env::var("FLOTILLA_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let binary = std::env::var_os("FLOTILLA_SERVER_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(flotilla_tests::release_flotilla);
    println!("server_memory: {} to log index {entries}", binary.display());
    let server = ServerProcess::start(&binary, &[], &[]).await.unwrap();
    let start = std::time::Instant::now();
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>8}",
        "LOG INDEX", "SNAPSHOT", "LOG KEPT", "RSS MiB", "SECONDS"
    );
    let first = server.resident_bytes();
    println!("{:>9} {:>9} {:>9} {:>9} {:>8}", 0, "-", "-", mib(first), 0);
    let mut target = STEP;
    while target <= entries {
        server.feed_until(4, target).await.unwrap();
        let log = server.log_status().await.unwrap();
        println!(
            "{:>9} {:>9} {:>9} {:>9} {:>8.1}",
            log.applied_index,
            log.last_snapshot_index,
            log.log_entries,
            mib(server.resident_bytes()),
            start.elapsed().as_secs_f64()
        );
        target += STEP;
    }
}
