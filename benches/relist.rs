// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]
#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Around the diff core: what else a relist costs.
//!
//! - `relist/<pods>`: a whole no-change `Pleg::relist()` (generic mode) (diff, watch
//!   conditions, counts, cache time, health), with a runtime that hands over a
//!   prepared listing, so the runtime's own cost is left out.
//! - `listing/<pods>`: building a `Listing` from the runtime's pods (merging,
//!   de-duplication, ID order, UID hashes): the share a runtime adapter pays
//!   on every relist.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pleg::model::Listing;
use pleg::runtime::fake::{FixedRuntime, synthetic_pods};
use pleg::{Config, Pleg};

fn bench_relist(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("relist");
    for pods in [1_000usize, 10_000] {
        let runtime = FixedRuntime::new(Listing::new(synthetic_pods(pods)));
        let pleg = Pleg::new(runtime, Config::generic()).expect("valid config");
        let _subscriber = pleg.subscribe();
        tokio.block_on(pleg.relist()).expect("listing works");
        group.throughput(Throughput::Elements(pods as u64));
        group.bench_function(BenchmarkId::from_parameter(pods), |b| {
            b.iter(|| black_box(tokio.block_on(pleg.relist()).map(|s| s.events)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("listing");
    for pods in [1_000usize, 10_000] {
        group.throughput(Throughput::Elements(pods as u64));
        group.bench_function(BenchmarkId::from_parameter(pods), |b| {
            b.iter_batched(
                || synthetic_pods(pods),
                |raw| black_box(Listing::new(raw).len()),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_relist);
criterion_main!(benches);
