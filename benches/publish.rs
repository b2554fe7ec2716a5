// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]
#![allow(missing_docs)] // criterion_group! generates undocumented items
//! What publishing costs the generator, which publishes under its core's
//! lock (`Hub::publish` says why): one pod's batch of 3 events handed to
//! N subscribers.
//!
//! - `publish/full/<N>`: every queue is full and never read (stalled
//!   clients): each subscriber costs a filter check and a count.
//! - `publish/room/<N>`: every queue has room (clients that keep up): each
//!   subscriber costs a filter check, 3 pushes and a wake. The queues are
//!   emptied between iterations, outside the measurement.
//! - `publish/elsewhere/<N>`: every subscriber filters another namespace.
//!
//! Each batch is fresh, as the core's are (the hub numbers each event in
//! place and keeps it in its replay ring, default 10,000 items, full after
//! the first few thousand iterations, so each batch also pushes the oldest
//! three out); building it is outside the measurement. `no-ring/...` are
//! the same with a ring of 0, to show what the ring costs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pleg::event::{EventSource, EventType, PodLifecycleEvent};
use pleg::hub::{DEFAULT_REPLAY_EVENTS, Hub};
use pleg::model::PodMeta;
use pleg::{Filter, SubscribeOptions, Subscription};

fn batch(pod: &Arc<PodMeta>) -> Vec<Arc<PodLifecycleEvent>> {
    [
        EventType::ContainerDied,
        EventType::ContainerStarted,
        EventType::PodSync,
    ]
    .into_iter()
    .map(|kind| {
        Arc::new(PodLifecycleEvent::new(
            pod.clone(),
            kind,
            EventSource::Relist,
            SystemTime::UNIX_EPOCH,
        ))
    })
    .collect()
}

/// Publishes a fresh batch per iteration; building it and dropping it are
/// outside the measurement.
fn publish_fresh(b: &mut criterion::Bencher<'_>, hub: &Hub, pod: &Arc<PodMeta>) {
    b.iter_batched(
        || batch(pod),
        |batch| {
            hub.publish_batch(black_box(&batch));
            batch
        },
        BatchSize::SmallInput,
    );
}

fn subscribers(hub: &Hub, n: usize, options: &SubscribeOptions) -> Vec<Subscription> {
    (0..n)
        .map(|_| hub.subscribe_with(options.clone()).expect("valid options"))
        .collect()
}

fn bench_publish(c: &mut Criterion) {
    let pod = Arc::new(PodMeta::new("uid-1", "web-1", "default").with_label("app", "web"));
    let mut group = c.benchmark_group("publish");
    for (prefix, ring) in [("", DEFAULT_REPLAY_EVENTS), ("no-ring/", 0)] {
        for n in [0usize, 32, 1_024] {
            group.throughput(Throughput::Elements(n.max(1) as u64));

            let hub = Hub::with_replay_events(ring);
            let _full = subscribers(&hub, n, &SubscribeOptions::default().with_capacity(3));
            hub.publish_batch(&batch(&pod));
            group.bench_function(BenchmarkId::new(format!("{prefix}full"), n), |b| {
                publish_fresh(b, &hub, &pod)
            });

            let hub = Hub::with_replay_events(ring);
            let mut room = subscribers(&hub, n, &SubscribeOptions::default().with_capacity(64));
            group.bench_function(BenchmarkId::new(format!("{prefix}room"), n), |b| {
                b.iter_batched(
                    || {
                        for sub in &mut room {
                            while sub.try_recv().is_some() {}
                        }
                        batch(&pod)
                    },
                    |batch| {
                        hub.publish_batch(black_box(&batch));
                        // Dropped outside the measurement.
                        batch
                    },
                    BatchSize::PerIteration,
                )
            });

            let hub = Hub::with_replay_events(ring);
            let _elsewhere = subscribers(
                &hub,
                n,
                &SubscribeOptions::filtered(Filter::all().with_namespace("kube-system")),
            );
            group.bench_function(BenchmarkId::new(format!("{prefix}elsewhere"), n), |b| {
                publish_fresh(b, &hub, &pod)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
