//! `pleg-churn`: continuous pod churn through a CRI runtime, for soak runs
//! (`scripts/soak.sh`) while a `pleg run` daemon watches.
//!
//! `--concurrency` workers each loop, until `--duration` is over or SIGINT
//! or SIGTERM comes: run a pod, create and start `--containers` short-lived
//! containers (`sh -c 'sleep S'`, exiting 0), wait for them to exit, remove
//! them, stop and remove the pod. Every pod carries the label
//! `pleg.churn/run=<run id>` in namespace `pleg-churn`. A failed call is
//! counted and printed, and the worker tears its pod down and goes on, so
//! one runtime hiccup does not end a soak run. At the end it prints one
//! line of totals; it exits 1 if no cycle completed.
//!
//! It goes through the test kit's crictl-style
//! [`Driver`].

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use pleg::model::ContainerState;
use pleg::runtime::cri::{DEFAULT_ENDPOINT, RuntimeEndpoint};
use pleg_testkit::driver::{ContainerSpec, Driver, PodSpec};
use tokio::sync::watch;

/// Churn pods with short-lived containers through a CRI runtime.
#[derive(Debug, Parser)]
#[command(name = "pleg-churn", version, about)]
struct Args {
    /// CRI runtime endpoint: unix:///path or a bare socket path.
    #[arg(long, env = "PLEG_RUNTIME_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_parser = parse_endpoint)]
    runtime_endpoint: String,
    /// Image on the node with /bin/sh and sleep.
    #[arg(
        long,
        env = "PLEG_TEST_IMAGE",
        default_value = "docker.io/library/busybox:pleg"
    )]
    image: String,
    /// Pods churning at once, 1 to 32.
    #[arg(long, default_value = "4", value_parser = clap::value_parser!(u16).range(1..=32))]
    concurrency: u16,
    /// Containers per pod, 1 to 8.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u16).range(1..=8))]
    containers: u16,
    /// How long each container runs before it exits, such as 500ms.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    container_lifetime: Duration,
    /// How long to churn, such as 10m; until SIGINT or SIGTERM if not given.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

/// Totals over all workers.
#[derive(Debug, Default)]
struct Totals {
    cycles: AtomicU64,
    containers: AtomicU64,
    errors: AtomicU64,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pleg-churn: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio.block_on(churn(args));
    tokio.shutdown_timeout(Duration::from_millis(200));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pleg-churn: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn churn(args: Args) -> Result<()> {
    let driver =
        Arc::new(Driver::new(&args.runtime_endpoint).context("connecting the workload driver")?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let totals = Arc::new(Totals::default());
    let run_id = std::process::id().to_string();
    let started = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let w = Worker {
            driver: driver.clone(),
            totals: totals.clone(),
            stop: stop_rx.clone(),
            image: args.image.clone(),
            containers: args.containers,
            lifetime: args.container_lifetime,
            run_id: run_id.clone(),
            worker,
        };
        workers.push(tokio::spawn(w.run()));
    }
    println!(
        "pleg-churn: {} workers, {} containers per pod, lifetime {:?}, run {run_id}",
        args.concurrency, args.containers, args.container_lifetime
    );
    let why = until_stop(args.duration).await;
    println!("pleg-churn: stopping ({why}); finishing the pods in flight");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let cycles = totals.cycles.load(Ordering::Relaxed);
    println!(
        "pleg-churn: {cycles} pods, {} containers, {} failed calls in {:.0} s",
        totals.containers.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if cycles == 0 {
        anyhow::bail!("no pod completed a cycle");
    }
    Ok(())
}

/// Waits for the duration to end or a signal; returns why it stopped.
async fn until_stop(duration: Option<Duration>) -> &'static str {
    let over = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = over => "duration over",
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = term => "SIGTERM",
    }
}

/// One churning worker.
struct Worker {
    driver: Arc<Driver>,
    totals: Arc<Totals>,
    stop: watch::Receiver<bool>,
    image: String,
    containers: u16,
    lifetime: Duration,
    run_id: String,
    worker: u16,
}

impl Worker {
    async fn run(self) {
        let mut cycle: u64 = 0;
        while !*self.stop.borrow() {
            cycle += 1;
            let pod = PodSpec::new(
                format!("churn-{}-{}-{cycle}", self.run_id, self.worker),
                "pleg-churn",
                format!("uid-churn-{}-{}-{cycle}", self.run_id, self.worker),
            )
            .with_label("pleg.churn/run", self.run_id.clone());
            match self.cycle(&pod).await {
                Ok(()) => {
                    self.totals.cycles.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.totals.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("pleg-churn: pod {}: {e:#}", pod.name);
                    // Do not spin on a runtime that refuses everything.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One pod's life; the pod is torn down whatever happened.
    async fn cycle(&self, pod: &PodSpec) -> Result<()> {
        let sandbox = self.driver.run_pod(pod).await.context("runp")?;
        let outcome = self.containers(&sandbox, pod).await;
        let stopped = self.driver.stop_pod(&sandbox).await.context("stopp");
        let removed = self.driver.remove_pod(&sandbox).await.context("rmp");
        outcome.and(stopped).and(removed)
    }

    async fn containers(&self, sandbox: &str, pod: &PodSpec) -> Result<()> {
        let sleep = format!("sleep {:.3}", self.lifetime.as_secs_f64());
        let mut ids = Vec::new();
        for n in 0..self.containers {
            let spec = ContainerSpec::new(
                format!("c{n}"),
                self.image.clone(),
                ["/bin/sh", "-c", sleep.as_str()],
            );
            let id = self
                .driver
                .create_container(sandbox, pod, &spec)
                .await
                .context("create")?;
            self.driver.start_container(&id).await.context("start")?;
            ids.push(id);
        }
        // Wait for every container to exit (a workload driver may poll; it
        // is no test), bounded well past the lifetime.
        let deadline = tokio::time::Instant::now() + self.lifetime + Duration::from_secs(30);
        for id in &ids {
            loop {
                let status = self.driver.container_status(id).await.context("inspect")?;
                if status.state == ContainerState::Exited {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("container {id} did not exit within 30 s of its lifetime");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for id in &ids {
            self.driver.remove_container(id).await.context("rm")?;
            self.totals.containers.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    pleg::duration::parse(raw).map_err(|e| e.to_string())
}

fn parse_endpoint(raw: &str) -> Result<String, String> {
    RuntimeEndpoint::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_name_what_was_wrong() {
        let err = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("pleg-churn").chain(args.iter().copied()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(&["--concurrency", "0"]).contains("--concurrency"));
        assert!(err(&["--duration", "5"]).contains("missing unit"));
        let ok = Args::try_parse_from(["pleg-churn", "--duration", "1m", "--containers", "3"])
            .expect("valid flags");
        assert_eq!(ok.duration, Some(Duration::from_secs(60)));
        assert_eq!(ok.containers, 3);
    }
}
