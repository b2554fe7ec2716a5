//! The `pleg` command line.
//!
//! For now it has one job, `pleg demo`: it runs the relisting generator
//! against a CRI runtime (or, with `--fake`, the scripted in-memory one),
//! drives a small workload through it and prints the events live, with the
//! generator's health. The node daemon comes next.

#![forbid(unsafe_code)]

mod cli {
    pub mod cri_demo;
}
use cli::cri_demo;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use pleg::model::{Container, ContainerState, Pod, PodMeta};
use pleg::runtime::fake::FakeRuntime;
use pleg::{Delivery, GenericConfig, GenericPleg, PodLifecycleEvent, PodUid, RelistDuration};

const USAGE: &str = "\
pleg: a node-level Pod Lifecycle Event Generator

USAGE:
    pleg demo [--runtime-endpoint ENDPOINT] [--image IMAGE] [--mode evented|generic]
              [--pods N] [--relist-period DURATION]
    pleg demo --fake [--pods N] [--relist-period DURATION]
    pleg --version
    pleg --help

COMMANDS:
    demo    run the relisting generator against a CRI runtime, drive a small
            workload of pods through the runtime and print every event live

OPTIONS (demo):
    --runtime-endpoint ENDPOINT unix:///path or a bare socket path
                                (env PLEG_RUNTIME_ENDPOINT; default
                                unix:///run/containerd/containerd.sock)
    --image IMAGE               image on the node with /bin/sh and sleep for the
                                workload (env PLEG_TEST_IMAGE; default
                                docker.io/library/busybox:pleg)
    --mode evented|generic      the runtime's event stream with relisting as a
                                safety net (default), or relisting only
    --fake                      use the scripted in-memory runtime instead
    --pods N                    pods in the workload, 1 to 50 (default 3)
    --relist-period DURATION    relist period such as 100ms, 1s (default 100ms)
";

const DEFAULT_IMAGE: &str = "docker.io/library/busybox:pleg";

struct DemoOptions {
    pods: usize,
    relist_period: Duration,
    /// `None`: the scripted fake runtime.
    endpoint: Option<String>,
    /// The event stream (with relisting as a safety net), or relisting only.
    evented: bool,
    image: String,
}

enum Command {
    Demo(DemoOptions),
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command> {
    let Some(first) = args.first() else {
        return Ok(Command::Help);
    };
    match first.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "-V" | "--version" => return Ok(Command::Version),
        "demo" => {}
        other => bail!("unknown command {other:?}; expected demo, --help or --version"),
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut options = DemoOptions {
        pods: 3,
        relist_period: Duration::from_millis(100),
        endpoint: Some(
            env("PLEG_RUNTIME_ENDPOINT")
                .unwrap_or_else(|| pleg::runtime::cri::DEFAULT_ENDPOINT.into()),
        ),
        image: env("PLEG_TEST_IMAGE").unwrap_or_else(|| DEFAULT_IMAGE.into()),
        evented: true,
    };
    let mut fake = false;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .with_context(|| format!("flag {name} needs a value"))
        };
        match name {
            "--pods" => {
                let raw = value()?;
                options.pods = raw
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=50).contains(n))
                    .with_context(|| {
                        format!("--pods {raw:?}: expected a whole number from 1 to 50")
                    })?;
            }
            "--relist-period" => {
                let raw = value()?;
                options.relist_period =
                    parse_duration(&raw).with_context(|| format!("--relist-period {raw:?}"))?;
            }
            "--runtime-endpoint" => {
                let raw = value()?;
                pleg::runtime::cri::RuntimeEndpoint::parse(&raw)?;
                options.endpoint = Some(raw);
            }
            "--image" => {
                options.image = value()?;
                if options.image.trim().is_empty() {
                    bail!("--image: expected an image reference, got an empty value");
                }
            }
            "--fake" if inline.is_none() => fake = true,
            "--mode" => {
                let raw = value()?;
                options.evented = match raw.as_str() {
                    "evented" => true,
                    "generic" => false,
                    _ => bail!("--mode {raw:?}: expected evented or generic"),
                };
            }
            other => bail!("unknown flag {other:?} for demo"),
        }
    }
    if fake {
        options.endpoint = None;
    }
    Ok(Command::Demo(options))
}

/// Parses `250ms`, `1s`, `1.5s`, `3m`, `1h`.
fn parse_duration(raw: &str) -> Result<Duration> {
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| "missing unit; use ms, s, m or h")?;
    let (number, unit) = raw.split_at(split);
    let number: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .with_context(|| "expected a positive number followed by ms, s, m or h")?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => bail!("unknown unit {other:?}; use ms, s, m or h"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| "duration out of range")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pleg: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("pleg {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Demo(options) => match run_demo(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pleg: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_demo(options: DemoOptions) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match options.endpoint.clone() {
        Some(endpoint) => tokio.block_on(cri_demo::run(options, endpoint)),
        None => tokio.block_on(demo(options)),
    }
}

fn sandbox(pod: usize, state: ContainerState) -> Container {
    Container::new(format!("sandbox-{pod:02}"), format!("web-{pod}"), state)
}

fn app(pod: usize, attempt: u32, state: ContainerState) -> Container {
    Container::new(format!("app-{pod:02}-{attempt}"), "app", state).with_attempt(attempt)
}

fn web_pod(pod: usize, containers: Vec<Container>, sandbox_state: ContainerState) -> Pod {
    let mut p = Pod::new(
        PodMeta::new(format!("uid-{pod:02}"), format!("web-{pod}"), "demo")
            .with_label("app", "web"),
    )
    .with_sandbox(sandbox(pod, sandbox_state));
    p.containers = containers;
    p
}

/// The demo against the scripted runtime.
async fn demo(options: DemoOptions) -> Result<()> {
    let runtime = FakeRuntime::new();
    let relist = RelistDuration {
        relist_period: options.relist_period,
        relist_threshold: options.relist_period * 30,
    };
    let pleg = GenericPleg::new(
        runtime.clone(),
        GenericConfig {
            relist,
            ..GenericConfig::default()
        },
    )
    .context("configuring the generator")?;
    let printer = print_events(pleg.subscribe());
    pleg.start().context("starting the generator")?;
    println!(
        "pleg demo: relisting a scripted runtime every {:?}, {} pods",
        options.relist_period, options.pods
    );

    let step = options.relist_period * 3;
    let pods = options.pods;
    let running = |i| {
        web_pod(
            i,
            vec![app(i, 0, ContainerState::Running)],
            ContainerState::Running,
        )
    };

    // 1. The pods come up.
    runtime.set_pods((0..pods).map(running).collect());
    tokio::time::sleep(step).await;
    report_health(&pleg);

    // 2. A watch condition on pod 0: met once its app container stops running.
    let watched = PodUid::new("uid-00");
    pleg.set_pod_watch_condition(
        &watched,
        "app-stopped",
        pleg::running_container_condition("app", |_| false),
    );

    // 3. Pod 0's container exits with code 3; the kubelet would restart it.
    let mut now: Vec<Pod> = (0..pods).map(running).collect();
    now[0] = web_pod(
        0,
        vec![app(0, 0, ContainerState::Exited).with_exit(3, "Error")],
        ContainerState::Running,
    );
    runtime.set_pods(now.clone());
    tokio::time::sleep(step).await;

    // 4. It comes back as attempt 1; the dead attempt is garbage collected.
    now[0] = web_pod(
        0,
        vec![app(0, 1, ContainerState::Running)],
        ContainerState::Running,
    );
    runtime.set_pods(now.clone());
    tokio::time::sleep(step).await;

    // 5. The last pod is stopped, then removed.
    let last = pods - 1;
    now[last] = web_pod(
        last,
        vec![app(last, 0, ContainerState::Exited).with_exit(0, "Completed")],
        ContainerState::Exited,
    );
    runtime.set_pods(now.clone());
    tokio::time::sleep(step).await;
    now.truncate(last);
    runtime.set_pods(now);
    tokio::time::sleep(step).await;

    report_health(&pleg);
    let counts = pleg.runtime_counts();
    let stats = pleg.stats();
    println!(
        "pleg demo: {} relists, {} events, {} running pods, {} running containers, cache holds {} pods",
        stats.relists,
        stats.events.iter().sum::<u64>(),
        counts.running_pods,
        counts.containers(ContainerState::Running),
        pleg.cache().len()
    );
    pleg.stop().await;
    drop(pleg);
    printer.await.context("event printer")?;
    Ok(())
}

/// Prints every delivery on stdout, one line each, flushed at once.
fn print_events(mut events: pleg::Subscription) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stdout = std::io::stdout();
        while let Some(delivery) = events.recv().await {
            let mut out = stdout.lock();
            let line = match delivery {
                Delivery::Event(e) => format_event(&e),
                Delivery::Resync { missed } => format!("RESYNC missed={missed}"),
            };
            // A closed stdout (for example `| head`) ends the printer quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    })
}

fn report_health(pleg: &GenericPleg) {
    match pleg.healthy() {
        Ok(()) => println!("health: ok"),
        Err(reason) => println!("health: {reason}"),
    }
}

fn format_event(e: &Arc<PodLifecycleEvent>) -> String {
    let since_epoch = e.observed_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() % 86_400;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        since_epoch.subsec_millis()
    );
    let container = e
        .container
        .as_ref()
        .map(|c| format!("{}#{}", c.name, c.attempt))
        .unwrap_or_else(|| "-".into());
    let exit = match (e.exit_code, &e.reason) {
        (Some(code), Some(reason)) => format!("exit={code} reason={reason}"),
        (Some(code), None) => format!("exit={code}"),
        _ => String::new(),
    };
    format!(
        "{time}  {:<18} {:<10} {:<17} {:<26} {}",
        format!("{}/{}", e.pod.namespace, e.pod.name),
        container,
        e.kind.as_str(),
        exit,
        e.source.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("3m").ok(), Some(Duration::from_secs(180)));
        for bad in ["", "5", "s", "-1s", "0s", "1d", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_flags_name_what_was_wrong() {
        let err = |s| {
            parse_args(&args(s))
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(err("demo --pods 0").contains("--pods \"0\""));
        assert!(err("demo --relist-period 5").contains("--relist-period \"5\": missing unit"));
        assert!(err("demo --frobnicate").contains("unknown flag \"--frobnicate\""));
        assert!(err("launch").contains("unknown command \"launch\""));
        assert!(matches!(
            parse_args(&args("demo --pods=4")),
            Ok(Command::Demo(DemoOptions { pods: 4, .. }))
        ));
    }
}
