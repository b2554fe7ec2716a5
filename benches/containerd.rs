// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]
#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The relisting generator against a real containerd (the project-local one:
//! `scripts/bench-containerd.sh` brings it up and runs this).
//!
//! With 100 pods running (one sandbox and one `sleep` container each):
//! - `containerd/list/100`: `CriRuntime::list_pods`, the two RPCs of a relist
//!   (ListPodSandbox + ListContainers) and the conversion into a `Listing`;
//! - `containerd/relist_no_change/100`: a whole no-change `relist()`;
//! - `containerd/relist_one_started/100`: a `relist()` that finds one newly
//!   started container (its pod's status is fetched: PodSandboxStatus +
//!   ContainerStatus) and publishes `ContainerStarted`. The container is
//!   created and started outside the timed part.
//! - `containerd/stream_latency`: with the evented generator, the time from
//!   containerd's `created_at` stamp on a container's STARTED event to the
//!   moment a subscriber holds the `ContainerStarted` (decoding, applying to
//!   records and cache, fan-out). The wall clock is shared with containerd.
//! - `containerd/pod_start`: RunPodSandbox + CreateContainer + StartContainer
//!   through the test kit's driver, for scale.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pleg::runtime::cri::{CriConfig, CriRuntime};
use pleg::{Config, Pleg, Runtime};
use pleg_testkit::driver::{ContainerSpec, Driver, PodSpec};

const PODS: usize = 100;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set; run scripts/bench-containerd.sh, which brings up the project-local containerd")
    })
}

struct Fixture {
    driver: Arc<Driver>,
    image: String,
    sandboxes: Vec<String>,
    run: String,
}

impl Fixture {
    async fn pod(&mut self, name: String) -> (PodSpec, String) {
        let spec = PodSpec::new(
            name.clone(),
            "pleg-bench",
            format!("bench-{}-{name}", self.run),
        )
        .with_label("pleg.bench/run", self.run.clone());
        let sandbox = self.driver.run_pod(&spec).await.expect("RunPodSandbox");
        self.sandboxes.push(sandbox.clone());
        (spec, sandbox)
    }

    async fn container(&self, spec: &PodSpec, sandbox: &str, name: &str) -> String {
        let c = ContainerSpec::new(name, self.image.clone(), ["/bin/sleep", "3600"]);
        self.driver
            .create_container(sandbox, spec, &c)
            .await
            .expect("CreateContainer")
    }

    async fn cleanup(&self) {
        for sandbox in &self.sandboxes {
            let _ = self.driver.stop_pod(sandbox).await;
            let _ = self.driver.remove_pod(sandbox).await;
        }
    }
}

fn bench_containerd(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime = tokio
        .block_on(CriRuntime::connect(CriConfig::new(env(
            "PLEG_CONTAINERD_ENDPOINT",
        ))))
        .expect("connect to containerd");
    let driver = Arc::new(
        tokio
            .block_on(async { Driver::new(&env("PLEG_CONTAINERD_ENDPOINT")) })
            .expect("the containerd endpoint"),
    );
    let mut fixture = Fixture {
        driver: driver.clone(),
        image: env("PLEG_TEST_IMAGE"),
        sandboxes: Vec::new(),
        run: std::process::id().to_string(),
    };
    tokio.block_on(async {
        for i in 0..PODS {
            let (spec, sandbox) = fixture.pod(format!("p{i}")).await;
            let id = fixture.container(&spec, &sandbox, "app").await;
            driver.start_container(&id).await.expect("StartContainer");
        }
    });
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("config");
    let _subscriber = pleg.subscribe();
    tokio.block_on(pleg.relist()).expect("first relist");

    let mut group = c.benchmark_group("containerd");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    group.bench_function(BenchmarkId::new("list", PODS), |b| {
        b.iter(|| tokio.block_on(runtime.list_pods()).expect("list").len())
    });
    group.bench_function(BenchmarkId::new("relist_no_change", PODS), |b| {
        b.iter(|| tokio.block_on(pleg.relist()).expect("relist").events)
    });

    // One pod whose new containers start one per iteration.
    let (spec, sandbox) = tokio.block_on(fixture.pod("starter".into()));
    let mut n = 0;
    group.bench_function(BenchmarkId::new("relist_one_started", PODS), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let id = tokio.block_on(fixture.container(&spec, &sandbox, &format!("c{n}")));
                tokio
                    .block_on(driver.start_container(&id))
                    .expect("StartContainer");
                let start = Instant::now();
                let summary = tokio.block_on(pleg.relist()).expect("relist");
                total += start.elapsed();
                assert!(summary.events >= 1, "the start was seen");
                // Keep the pod small: the container goes again (untimed).
                tokio.block_on(async {
                    let _ = driver.stop_container(&id, Duration::ZERO).await;
                    let _ = driver.remove_container(&id).await;
                    pleg.relist().await.expect("relist");
                });
            }
            total
        })
    });

    // The stream: one evented generator (the only stream consumer; on
    // containerd 1.7 a second one would take some of the events).
    let evented = Pleg::new(runtime.clone(), Config::evented()).expect("config");
    let mut started = evented
        .subscribe_with(pleg::SubscribeOptions::filtered(
            pleg::Filter::all()
                .with_pod_uids([pleg::PodUid::new(&spec.uid)])
                .with_kinds([pleg::EventType::ContainerStarted]),
        ))
        .expect("subscribe");
    tokio.block_on(async {
        evented.start().expect("start");
        evented
            .watch_stream_status()
            .wait_for(|s| s.state == pleg::StreamState::Streaming)
            .await
            .map(|_| ())
            .expect("the generator runs");
    });
    group.bench_function("stream_latency", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let id = tokio.block_on(fixture.container(&spec, &sandbox, &format!("c{n}")));
                tokio.block_on(async {
                    driver.start_container(&id).await.expect("StartContainer");
                    loop {
                        let delivery =
                            tokio::time::timeout(Duration::from_secs(10), started.recv())
                                .await
                                .expect("ContainerStarted from the stream within 10 s");
                        if let Some(pleg::Delivery::Event(e)) = delivery
                            && e.container_id().is_some_and(|c| c.as_str() == id)
                        {
                            let held = std::time::SystemTime::now();
                            let stamped = e.runtime_time.expect("a stream event");
                            total += held.duration_since(stamped).unwrap_or_default();
                            break;
                        }
                    }
                    let _ = driver.stop_container(&id, Duration::ZERO).await;
                    let _ = driver.remove_container(&id).await;
                });
            }
            total
        })
    });
    tokio.block_on(evented.stop());

    group.sample_size(10);
    let mut p = 0;
    group.bench_function("pod_start", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                p += 1;
                let start = Instant::now();
                tokio.block_on(async {
                    let (spec, sandbox) = fixture.pod(format!("s{p}")).await;
                    let id = fixture.container(&spec, &sandbox, "app").await;
                    driver.start_container(&id).await.expect("StartContainer");
                });
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
    tokio.block_on(fixture.cleanup());
}

criterion_group!(benches, bench_containerd);
criterion_main!(benches);
