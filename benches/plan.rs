//! `plan` at federation scale: a full pass over unplaced workloads, and an
//! incremental pass after one capacity change in a settled federation.
//!
//! Run: `cargo bench -p flotilla-tests --bench plan`
//! Targets: full plan for 1,000 clusters × 10,000 workloads under 100 ms; the
//! incremental pass under 1 ms.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flotilla_core::plan;
use flotilla_tests::{claim_one_gpu, federation, settled_federation};
use std::hint::black_box;
use std::time::Duration;

const SIZES: [(usize, usize); 9] = [
    (10, 100),
    (10, 1_000),
    (10, 10_000),
    (100, 100),
    (100, 1_000),
    (100, 10_000),
    (1_000, 100),
    (1_000, 1_000),
    (1_000, 10_000),
];

fn full(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan/full");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (clusters, workloads) in SIZES {
        let f = federation(clusters, workloads, 7);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{clusters}x{workloads}")),
            &f,
            |b, f| b.iter(|| black_box(plan(&f.state, f.now))),
        );
    }
    group.finish();
}

fn incremental(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan/incremental");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (clusters, workloads) in SIZES {
        let mut f = settled_federation(clusters, workloads, 7);
        claim_one_gpu(&mut f);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{clusters}x{workloads}")),
            &f,
            |b, f| b.iter(|| black_box(plan(&f.state, f.now))),
        );
    }
    group.finish();
}

criterion_group!(benches, full, incremental);
criterion_main!(benches);
