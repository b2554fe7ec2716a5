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

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pleg::event::{EventSource, EventType, PodLifecycleEvent};
use pleg::hub::Hub;
use pleg::model::PodMeta;
use pleg::{Filter, SubscribeOptions, Subscription};

fn batch() -> Vec<Arc<PodLifecycleEvent>> {
    let pod = Arc::new(PodMeta::new("uid-1", "web-1", "default").with_label("app", "web"));
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

fn subscribers(hub: &Hub, n: usize, options: &SubscribeOptions) -> Vec<Subscription> {
    (0..n)
        .map(|_| hub.subscribe_with(options.clone()).expect("valid options"))
        .collect()
}

fn bench_publish(c: &mut Criterion) {
    let batch = batch();
    let mut group = c.benchmark_group("publish");
    for n in [0usize, 32, 1_024] {
        group.throughput(Throughput::Elements(n.max(1) as u64));

        let hub = Hub::new();
        let _full = subscribers(&hub, n, &SubscribeOptions::default().with_capacity(3));
        hub.publish_batch(&batch);
        group.bench_function(BenchmarkId::new("full", n), |b| {
            b.iter(|| hub.publish_batch(black_box(&batch)))
        });

        let hub = Hub::new();
        let mut room = subscribers(&hub, n, &SubscribeOptions::default().with_capacity(64));
        group.bench_function(BenchmarkId::new("room", n), |b| {
            b.iter_batched(
                || {
                    for sub in &mut room {
                        while sub.try_recv().is_some() {}
                    }
                },
                |()| hub.publish_batch(black_box(&batch)),
                BatchSize::PerIteration,
            )
        });

        let hub = Hub::new();
        let _elsewhere = subscribers(
            &hub,
            n,
            &SubscribeOptions::filtered(Filter::all().with_namespace("kube-system")),
        );
        group.bench_function(BenchmarkId::new("elsewhere", n), |b| {
            b.iter(|| hub.publish_batch(black_box(&batch)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
