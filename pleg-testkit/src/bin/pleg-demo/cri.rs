//! `pleg-demo` against a real CRI runtime: it connects, starts the evented
//! generator, prints every event live, and drives a small workload of pods
//! through the test kit's CRI driver: containers that run, one that exits
//! with code 3 and is re-created as attempt 1, a pod stopped and removed. It
//! removes every pod it made before it returns, also after a failure.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pleg::model::ContainerState;
use pleg::runtime::CriMethod;
use pleg::runtime::cri::{CriConfig, CriRuntime};
use pleg::{Config, Pleg, PodUid, RelistDuration, StreamState};
use pleg_testkit::driver::{ContainerSpec, Driver, PodSpec};

use super::{DemoOptions, print_events, report_health};

/// A demo pod: its spec and sandbox.
struct DemoPod {
    spec: PodSpec,
    sandbox_id: String,
}

/// Connects to the runtime and says which it is; the driver for the
/// workload talks to the same endpoint.
async fn connect(endpoint: String) -> Result<(Arc<CriRuntime>, Driver)> {
    let runtime = CriRuntime::connect(CriConfig::new(&endpoint))
        .await
        .context("connecting to the container runtime")?;
    if let Some(version) = runtime.version() {
        println!("pleg demo: runtime {version} at {}", runtime.endpoint());
    }
    let driver = Driver::new(&endpoint).context("connecting the workload driver")?;
    Ok((runtime, driver))
}

/// A label value that tells this run's pods from any other's.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

/// Stops and removes the demo's pods, whatever happened before.
async fn remove_all(driver: &Driver, pods: &[DemoPod]) {
    for pod in pods {
        let _ = driver.stop_pod(&pod.sandbox_id).await;
        if let Err(e) = driver.remove_pod(&pod.sandbox_id).await {
            eprintln!("pleg demo: removing pod {}: {e}", pod.spec.name);
        }
    }
}

pub async fn run(options: DemoOptions, endpoint: String) -> Result<()> {
    let (runtime, driver) = connect(endpoint).await?;
    let relist = RelistDuration {
        relist_period: options.relist_period,
        relist_threshold: (options.relist_period * 30).max(Duration::from_secs(10)),
    };
    // Generic mode relists only; evented mode follows the event stream.
    let config = if options.evented {
        Config::evented()
    } else {
        Config::generic()
    }
    .with_relist(relist);
    let pleg = Pleg::new(runtime.clone(), config).context("configuring the generator")?;
    // Only the demo's own pods: the node may run others.
    let run_id = run_id();
    let mut pods = Vec::new();
    let outcome = async {
        let sub = pleg
            .subscribe_with(pleg::SubscribeOptions::filtered(
                pleg::Filter::all().with_label("pleg.demo/run", run_id.clone()),
            ))
            .context("subscribing")?;
        let printer = print_events(sub);
        if options.evented {
            pleg.start().context("starting the generator")?;
            wait_for_stream(&pleg).await;
            println!(
                "pleg demo: {} mode; {} pods in namespace pleg-demo",
                pleg.mode().as_str(),
                options.pods
            );
        } else {
            pleg.start().context("starting the generator")?;
            println!(
                "pleg demo: generic mode, relisting every {:?}; {} pods in namespace pleg-demo",
                options.relist_period, options.pods
            );
        }
        let health = Health::Embedded(&pleg);
        let result = workload(&driver, &health, &options, &run_id, &mut pods).await;
        settle(&options).await;
        health.report().await;
        let stats = pleg.stats();
        if options.evented {
            let stream = pleg.stream_stats();
            println!(
                "pleg demo: stream: {} mode, {} events received, {} applied, {} stale dropped; latency mean {:.1} ms",
                pleg.mode().as_str(),
                stream.events_received,
                stream.events_applied,
                stream.stale_total(),
                if stream.latency.count > 0 { stream.latency.sum * 1000.0 / stream.latency.count as f64 } else { 0.0 },
            );
        }
        println!(
            "pleg demo: {} relists, {} events, {} RPCs ({} ListPodSandbox, {} ListContainers, {} PodSandboxStatus, {} ContainerStatus)",
            stats.relists,
            stats.events.iter().map(|&(_, _, n)| n).sum::<u64>(),
            runtime_calls(&runtime, &driver, None),
            runtime_calls(&runtime, &driver, Some(CriMethod::ListPodSandbox)),
            runtime_calls(&runtime, &driver, Some(CriMethod::ListContainers)),
            runtime_calls(&runtime, &driver, Some(CriMethod::PodSandboxStatus)),
            runtime_calls(&runtime, &driver, Some(CriMethod::ContainerStatus)),
        );
        pleg.stop().await;
        drop(printer);
        result
    }
    .await;
    // Leave nothing behind, whatever happened.
    remove_all(&driver, &pods).await;
    outcome
}

/// Waits (at most 5 s) for the stream to be open or given up.
async fn wait_for_stream(pleg: &Pleg) {
    let mut status = pleg.watch_stream_status();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| matches!(s.state, StreamState::Streaming | StreamState::Fallback)),
    )
    .await;
}

/// The RPCs made to the runtime, by pleg and by the workload's driver.
fn runtime_calls(runtime: &CriRuntime, driver: &Driver, method: Option<CriMethod>) -> u64 {
    use pleg::Runtime;
    [runtime.stats(), driver.stats()]
        .into_iter()
        .map(|stats| match method {
            Some(m) => stats.calls_of(m),
            None => CriMethod::ALL.iter().map(|&m| stats.calls_of(m)).sum(),
        })
        .sum()
}

/// A few relist periods, for the generator to see the last change.
async fn settle(options: &DemoOptions) {
    tokio::time::sleep((options.relist_period * 4).max(Duration::from_millis(300))).await;
}

/// Where the demo reads health from.
enum Health<'a> {
    /// The demo's own generator.
    Embedded(&'a Pleg),
    /// A `pleg run` daemon's health address.
    Daemon(&'a str),
}

impl Health<'_> {
    async fn report(&self) {
        match self {
            Health::Embedded(pleg) => report_health(pleg),
            Health::Daemon(addr) => match http_get(addr, "/healthz?verbose").await {
                Ok((status, body)) => {
                    println!("GET http://{addr}/healthz?verbose -> {status}");
                    for line in body.lines() {
                        println!("    {line}");
                    }
                }
                Err(e) => println!("GET http://{addr}/healthz: {e:#}"),
            },
        }
    }
}

/// A plain HTTP/1.1 GET; (status, body).
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let reply = pleg_testkit::http::get(addr, path).await?;
    Ok((reply.status, reply.body))
}

/// Drives the workload while a `pleg run` daemon watches (its events show in
/// `pleg watch --daemon`): the demo reports the daemon's health and a few of
/// its metrics instead of running a generator of its own, since containerd
/// 1.7 gives each event to only one stream.
pub async fn drive(options: DemoOptions, endpoint: String, health_addr: String) -> Result<()> {
    let (_runtime, driver) = connect(endpoint).await?;
    let health = Health::Daemon(&health_addr);
    health.report().await;
    let run_id = run_id();
    let mut pods = Vec::new();
    let result = workload(&driver, &health, &options, &run_id, &mut pods).await;
    settle(&options).await;
    health.report().await;
    match http_get(&health_addr, "/metrics").await {
        Ok((_, metrics)) => {
            println!("GET http://{health_addr}/metrics (excerpt):");
            for line in metrics.lines().filter(|l| {
                !l.starts_with('#')
                    && (l.starts_with("pleg_events_total") && !l.ends_with(" 0")
                        || l.starts_with("pleg_mode")
                        || l.starts_with("evented_pleg_connection_success_count")
                        || l.starts_with("pleg_stale_events_dropped_total") && !l.ends_with(" 0")
                        || l.starts_with("running_pods")
                        || l.starts_with("pleg_relist_duration_seconds_count")
                        || l.starts_with("evented_pleg_connection_latency_seconds_count"))
            }) {
                println!("    {line}");
            }
        }
        Err(e) => println!("GET http://{health_addr}/metrics: {e:#}"),
    }
    remove_all(&driver, &pods).await;
    result
}

async fn workload(
    driver: &Driver,
    health: &Health<'_>,
    options: &DemoOptions,
    run_id: &str,
    pods: &mut Vec<DemoPod>,
) -> Result<()> {
    let image = options.image.as_str();
    let sleeper = |name: &str, attempt| {
        ContainerSpec::new(name, image, ["/bin/sleep", "3600"]).with_attempt(attempt)
    };

    // 1. The pods come up, each with one long-running container.
    for i in 0..options.pods {
        let name = format!("web-{i}");
        let spec = PodSpec::new(name.clone(), "pleg-demo", format!("demo-{run_id}-{i}"))
            .with_label("app", "web")
            .with_label("pleg.demo/run", run_id);
        let sandbox_id = driver
            .run_pod(&spec)
            .await
            .with_context(|| format!("running pod {name}"))?;
        pods.push(DemoPod { spec, sandbox_id });
        let pod = &pods[i];
        let app = driver
            .create_container(&pod.sandbox_id, &pod.spec, &sleeper("app", 0))
            .await
            .with_context(|| format!("creating the app container of {name}"))?;
        driver
            .start_container(&app)
            .await
            .with_context(|| format!("starting the app container of {name}"))?;
    }
    settle(options).await;
    health.report().await;

    // 2. In pod 0, a job container that exits with code 3 after a moment;
    //    a watch condition is met once it is no longer running.
    let first = &pods[0];
    let job = ContainerSpec::new("job", image, ["/bin/sh", "-c", "sleep 0.5; exit 3"]);
    let job_id = driver
        .create_container(&first.sandbox_id, &first.spec, &job)
        .await
        .context("creating the job container")?;
    driver
        .start_container(&job_id)
        .await
        .context("starting the job container")?;
    if let Health::Embedded(pleg) = health {
        pleg.set_pod_watch_condition(
            &PodUid::new(&first.spec.uid),
            "job-finished",
            pleg::running_container_condition("job", |_| false),
        );
    }
    wait_exited(driver, &job_id).await?;
    settle(options).await;

    // 3. The job is re-created as attempt 1, as a kubelet would restart it.
    let retry = ContainerSpec::new("job", image, ["/bin/sleep", "3600"]).with_attempt(1);
    let retry_id = driver
        .create_container(&first.sandbox_id, &first.spec, &retry)
        .await
        .context("re-creating the job container")?;
    driver
        .start_container(&retry_id)
        .await
        .context("starting the job again")?;
    settle(options).await;

    // 4. The dead attempt is removed.
    driver
        .remove_container(&job_id)
        .await
        .context("removing the dead job")?;
    settle(options).await;

    // 5. The last pod is stopped, then removed.
    if let Some(last) = pods.pop() {
        driver
            .stop_pod(&last.sandbox_id)
            .await
            .context("stopping the last pod")?;
        settle(options).await;
        driver
            .remove_pod(&last.sandbox_id)
            .await
            .context("removing the last pod")?;
        settle(options).await;
    }
    Ok(())
}

async fn wait_exited(driver: &Driver, id: &str) -> Result<()> {
    for _ in 0..300 {
        let status = driver.container_status(id).await?;
        if status.state == ContainerState::Exited {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("container {id} did not exit within 6s")
}
