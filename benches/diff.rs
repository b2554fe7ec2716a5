// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]
#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The diff core on 100, 1,000 and 10,000 pods (one sandbox and three
//! containers each) at 0 %, 1 % and 10 % churn. IDs: `diff/<pods>/<churn %>`.
//!
//! Churn: in half of the churned pods one container exits; the other half are
//! replaced by new pods (four removals and four starts each). The listing is
//! built in fresh memory, as a runtime's would be, so IDs are compared by
//! content, not by pointer.
//!
//! Target: `diff/10000/0` at or under 1 ms per relist.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use pleg::diff::{Diff, Records, diff, diff_into};
use pleg::model::{ContainerState, Listing, Pod, PodMeta};
use pleg::runtime::fake::{runtime_id, synthetic_pods};

fn churned(pods: usize, percent: usize) -> Vec<Pod> {
    let mut listing = synthetic_pods(pods);
    let churn = pods * percent / 100;
    for k in 0..churn {
        // Spread the churned pods over the listing.
        let i = k * pods / churn.max(1);
        if k % 2 == 0 {
            listing[i].containers[0].state = ContainerState::Exited;
        } else {
            let mut replacement = Pod::new(PodMeta::new(
                format!("replacement-{i}"),
                format!("new-{i}"),
                "bench",
            ));
            replacement.sandboxes = listing[i].sandboxes.clone();
            replacement.containers = listing[i].containers.clone();
            for (n, c) in replacement
                .sandboxes
                .iter_mut()
                .chain(replacement.containers.iter_mut())
                .enumerate()
            {
                c.id = runtime_id(pods + i, n).into();
            }
            listing[i] = replacement;
        }
    }
    listing
}

/// Records after a first relist of `pods` synthetic pods.
fn recorded(pods: usize) -> Records {
    let mut records = Records::new();
    let first = diff(&records, &Listing::new(synthetic_pods(pods)));
    for change in first.changes() {
        records.apply(&change.uid, change.new.as_ref());
    }
    records
}

/// Benchmarks one diff of `listing` against `records` as `<group>/<pods>/<churn>`.
fn bench_one(
    group: &mut BenchmarkGroup<'_, WallTime>,
    pods: usize,
    churn: usize,
    records: &Records,
    listing: &Listing,
    out: &mut Diff,
) {
    group.throughput(Throughput::Elements(pods as u64));
    group.bench_with_input(
        BenchmarkId::new(pods.to_string(), churn),
        listing,
        |b, listing| {
            b.iter(|| {
                diff_into(black_box(records), black_box(listing), out);
                black_box(out.events().len())
            })
        },
    );
}

fn bench_diff(c: &mut Criterion) {
    let mut group = c.benchmark_group("diff");
    for pods in [100usize, 1_000, 10_000] {
        let records = recorded(pods);
        let mut out = Diff::new();
        for churn in [0usize, 1, 10] {
            let listing = Listing::new(churned(pods, churn));
            bench_one(&mut group, pods, churn, &records, &listing, &mut out);
        }
    }
    group.finish();

    // The same 10,000 unchanged pods, listed in another order: pods shuffled
    // and each pod's containers reversed, as a runtime that lists from hash
    // maps would. The listing restores a canonical entry order within each
    // pod, so this stays on the fast path.
    let mut group = c.benchmark_group("diff_reordered");
    let pods = 10_000usize;
    let records = recorded(pods);
    let mut out = Diff::new();
    let mut reordered = synthetic_pods(pods);
    // A fixed seed, so every run shuffles alike.
    fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d).shuffle(&mut reordered);
    for pod in &mut reordered {
        pod.containers.reverse();
    }
    let listing = Listing::new(reordered);
    bench_one(&mut group, pods, 0, &records, &listing, &mut out);
    group.finish();
}

criterion_group!(benches, bench_diff);
criterion_main!(benches);
