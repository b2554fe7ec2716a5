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
//!   on every relist. Only `Listing::new` is timed: the pods are made just
//!   before it, as a runtime adapter decodes them just before it, and the
//!   listing is dropped once the clock has stopped.
//! - `listing_drop/<pods>`: dropping such a listing, which a relist pays when
//!   the next listing replaces it.
//! - `listing_sort/<pods>`: only the part of `listing/<pods>` that puts each
//!   pod's entries in ID order, in place: the part that outgrows the caches
//!   (`bench/PROFILES.md`).
//!
//! - `cri_listing/{unchanged,changed}/<pods>`: what the CRI runtime adapter
//!   really does on a relist, from the two answers as protobuf bytes (as
//!   they come over the socket) to the `Listing`: `unchanged` with every pod
//!   listed in the same bytes as at the last relist (an idle node: each pod
//!   is fingerprinted and kept whole), `changed` with none seen before (the
//!   first relist: everything decoded and converted, `Listing` built).
//!
//! Each synthetic pod has a sandbox and three containers. Up to issue 13,
//! `listing/<pods>` was an `iter_batched` with `BatchSize::LargeInput`: its
//! timed routine also dropped the listing (at 10,000 pods as long as
//! building it), and its inputs, made a tenth of all iterations at a time,
//! were hundreds of megabytes long out of the cache when their turn came.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pleg::model::Listing;
use pleg::runtime::fake::{FixedRuntime, synthetic_pods};
use pleg::{Config, Pleg};
use tokio::time::Instant;

const SIZES: [usize; 3] = [1_000, 10_000, 50_000];

fn bench_relist(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("relist");
    for pods in SIZES {
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
    for pods in SIZES {
        group.throughput(Throughput::Elements(pods as u64));
        group.bench_function(BenchmarkId::from_parameter(pods), |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let raw = synthetic_pods(pods);
                    let start = Instant::now();
                    let listing = black_box(Listing::new(black_box(raw)));
                    timed += start.elapsed();
                    drop(listing);
                }
                timed
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("listing_sort");
    for pods in SIZES {
        group.throughput(Throughput::Elements(pods as u64));
        group.bench_function(BenchmarkId::from_parameter(pods), |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let mut raw = synthetic_pods(pods);
                    let start = Instant::now();
                    for pod in &mut raw {
                        pod.sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
                        pod.containers.sort_by(|a, b| a.id.cmp(&b.id));
                    }
                    timed += start.elapsed();
                    drop(black_box(raw));
                }
                timed
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("listing_drop");
    for pods in SIZES {
        group.throughput(Throughput::Elements(pods as u64));
        group.bench_function(BenchmarkId::from_parameter(pods), |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let listing = black_box(Listing::new(synthetic_pods(pods)));
                    let start = Instant::now();
                    drop(listing);
                    timed += start.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

/// The two answers of a node of `pods` synthetic pods (one sandbox and
/// three running containers each, with the kubelet's labels), encoded.
fn cri_answers(pods: usize) -> (Vec<u8>, Vec<u8>) {
    use k8s_cri::v1::{
        ContainerState, ListContainersResponse, ListPodSandboxResponse, PodSandboxState,
    };
    use pleg::runtime::fake::runtime_id;
    use pleg_testkit::fake_cri::{container_in, sandbox};
    use prost::Message as _;

    let mut sandboxes = ListPodSandboxResponse::default();
    let mut containers = ListContainersResponse::default();
    for i in 0..pods {
        let pod = sandbox(
            &runtime_id(i, 0),
            &format!("{i:08x}-0000-4000-8000-{i:012x}"),
            &format!("pod-{i}"),
            "bench",
            PodSandboxState::SandboxReady,
        );
        for c in 1..=3 {
            containers.containers.push(container_in(
                &pod,
                &runtime_id(i, c),
                &format!("container-{c}"),
                0,
                ContainerState::ContainerRunning,
            ));
        }
        sandboxes.items.push(pod);
    }
    (sandboxes.encode_to_vec(), containers.encode_to_vec())
}

fn bench_cri_listing(c: &mut Criterion) {
    use pleg::runtime::cri::AnswersDecoder;

    let mut group = c.benchmark_group("cri_listing");
    for pods in SIZES {
        let (sandboxes, containers) = cri_answers(pods);
        group.throughput(Throughput::Elements(pods as u64));

        let mut decoder = AnswersDecoder::new();
        let first = decoder
            .listing(&sandboxes, &containers)
            .expect("the answers decode");
        assert_eq!(first.len(), pods, "one pod per sandbox");
        group.bench_function(BenchmarkId::new("unchanged", pods), |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let start = Instant::now();
                    let listing = black_box(decoder.listing(black_box(&sandboxes), &containers));
                    timed += start.elapsed();
                    drop(listing);
                }
                timed
            })
        });

        group.bench_function(BenchmarkId::new("changed", pods), |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let mut fresh = AnswersDecoder::new();
                    let start = Instant::now();
                    let listing = black_box(fresh.listing(black_box(&sandboxes), &containers));
                    timed += start.elapsed();
                    drop((listing, fresh));
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_relist, bench_cri_listing);
criterion_main!(benches);
