//! `pleg-demo`: drives a small workload of pods through a CRI runtime with
//! pleg watching, and shows what pleg reports.
//!
//! - against a runtime (`--runtime-endpoint`), its own evented generator
//!   (`--mode generic` to relist only) prints every event of the demo's
//!   pods live;
//! - with `--daemon-health ADDR`, it only drives the workload while a
//!   `pleg run` daemon watches (follow its events with `pleg watch
//!   --daemon`), and reads the daemon's health and metrics from ADDR;
//! - with `--fake`, the scripted in-memory runtime stands in: no runtime
//!   needed.
//!
//! The workload goes through the test kit's crictl-style
//! [`Driver`](pleg_testkit::driver::Driver). Events are printed with the
//! library's `Display`, after the time pleg observed them. Exit codes: 0
//! success, 1 failure, 2 bad command line.
//!
//! The modules live in `src/bin/pleg-demo/` (declared with `#[path]`, so
//! that Cargo does not take them for binaries of their own).

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use pleg::runtime::cri::{DEFAULT_ENDPOINT, RuntimeEndpoint};
use pleg::{Delivery, Pleg, Subscription};

#[path = "pleg-demo/cri.rs"]
mod cri;
#[path = "pleg-demo/fake.rs"]
mod fake;

/// Drive a small workload through the runtime and show its events.
#[derive(Debug, Parser)]
#[command(name = "pleg-demo", version, about)]
struct Args {
    /// CRI runtime endpoint: unix:///path or a bare socket path.
    #[arg(long, env = "PLEG_RUNTIME_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_parser = parse_endpoint)]
    runtime_endpoint: String,
    /// Image on the node with /bin/sh and sleep, for the workload.
    #[arg(long, env = "PLEG_TEST_IMAGE", default_value = "docker.io/library/busybox:pleg", value_parser = parse_non_empty)]
    image: String,
    /// evented or generic.
    #[arg(long, env = "PLEG_MODE", value_enum, default_value = "evented")]
    mode: ModeArg,
    /// Use the scripted in-memory runtime instead of a real one.
    #[arg(long)]
    fake: bool,
    /// Pods in the workload, 1 to 50.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u16).range(1..=50))]
    pods: u16,
    /// Relist period, such as 100ms or 1s.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    relist_period: Duration,
    /// Drive the workload only, while a `pleg run` daemon with this health
    /// address watches (follow its events with `pleg watch --daemon`).
    #[arg(long)]
    daemon_health: Option<String>,
}

/// Generator mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// The runtime's event stream, with relisting as a safety net.
    Evented,
    /// Relisting only.
    Generic,
}

/// What the demos need.
struct DemoOptions {
    /// Pods in the workload.
    pods: usize,
    /// Relist period.
    relist_period: Duration,
    /// The image for the workload.
    image: String,
    /// Use the event stream.
    evented: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 2.
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
            eprintln!("pleg-demo: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio.block_on(demo(args));
    // Nothing may keep the process alive after the demo is done.
    tokio.shutdown_timeout(Duration::from_millis(200));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pleg-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: Args) -> anyhow::Result<()> {
    init_logging();
    let options = DemoOptions {
        pods: usize::from(args.pods),
        relist_period: args.relist_period,
        image: args.image,
        evented: args.mode == ModeArg::Evented,
    };
    if args.fake {
        fake::run(options).await
    } else if let Some(addr) = args.daemon_health {
        cri::drive(options, args.runtime_endpoint, addr).await
    } else {
        cri::run(options, args.runtime_endpoint).await
    }
}

/// Warnings and errors on stderr; `RUST_LOG` overrides the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Prints every delivery on stdout as it comes, one line each, flushed at
/// once: the event's `Display` after the time pleg observed it.
fn print_events(mut events: Subscription) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(delivery) = events.recv().await {
            let line = match &delivery {
                Delivery::Event(e) => format!("{}  {e}", time_of_day(e.observed_at)),
                Delivery::Resync { missed, .. } => format!(
                    "{}  RESYNC: missed {missed} events; state may have changed unseen",
                    time_of_day(SystemTime::now())
                ),
                other => format!("{other:?}"),
            };
            let mut out = std::io::stdout().lock();
            // A closed stdout (for example `| head`) ends the printer quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    })
}

/// Prints the generator's health.
fn report_health(pleg: &Pleg) {
    match pleg.healthy() {
        Ok(()) => println!("health: ok"),
        Err(reason) => println!("health: {reason}"),
    }
}

/// `HH:MM:SS.mmm`, the time of day in UTC.
fn time_of_day(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        since.subsec_millis()
    )
}

/// Parses `250ms`, `1s`, `1.5s`, `3m`, `1h`, `1m30s`, as `pleg` does.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    pleg::duration::parse(raw).map_err(|e| e.to_string())
}

fn parse_endpoint(raw: &str) -> Result<String, String> {
    RuntimeEndpoint::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|e| e.to_string())
}

fn parse_non_empty(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(raw.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_name_what_was_wrong() {
        let err = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("pleg-demo").chain(args.iter().copied()))
                .err()
                .map(|e| (e.exit_code(), e.to_string()))
                .unwrap_or_default()
        };
        let (_, text) = err(&["--pods", "0"]);
        assert!(text.contains("--pods"), "{text}");
        assert!(Args::try_parse_from(["pleg-demo", "--pods=4"]).is_ok());
        let (code, text) = err(&["--relist-period", "5"]);
        assert_eq!(code, 2);
        assert!(
            text.contains("'5'") && text.contains("missing unit"),
            "{text}"
        );
        let (_, text) = err(&["--runtime-endpoint", "tcp://x:1"]);
        assert!(text.contains("scheme tcp:// is not supported"), "{text}");
    }

    #[test]
    fn the_time_of_day_has_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(86_400_000 + 3_723_004);
        assert_eq!(time_of_day(t), "01:02:03.004");
    }
}
