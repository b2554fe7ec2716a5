//! krkn's `PodsMonitorPool` on one node: monitor the pods a label selector
//! selects, and say how long each container or pod that died took to run
//! again.
//!
//! ```text
//! cargo run --example krkn_monitor -- 'app in (web,db)' 60 ['prod-.*']
//! ```
//!
//! Arguments: a label selector (`kubectl`'s syntax), the timeout in seconds
//! (default 60), and optionally a namespace regex. Progress goes to stdout
//! as the pool's counts change, then one line per death. Ctrl-C cancels the
//! monitors and prints what they gathered. Exit 0 when everything that died
//! recovered (or nothing died), 1 when anything did not (or a monitor lost
//! events), 2 for bad arguments.
//!
//! The runtime is `PLEG_RUNTIME_ENDPOINT` (default containerd's socket). The
//! generator relists (generic mode) instead of opening the runtime's event
//! stream: containerd 1.7 gives each event to one stream only, so a second
//! evented consumer on the node would take events from the first.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pleg::monitor::{MonitorPool, MonitorReport, Recovery};
use pleg::runtime::cri::{CriConfig, CriRuntime, DEFAULT_ENDPOINT};
use pleg::select::PodSelector;
use pleg::{Config, Pleg};

const USAGE: &str = "usage: krkn_monitor SELECTOR [TIMEOUT_SECONDS] [NAMESPACE_REGEX]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("krkn_monitor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let Some(selector) = args.get(1) else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let Ok(timeout) = args.get(2).map_or(Ok(60), |s| s.parse::<u64>()) else {
        eprintln!("{USAGE}\ntimeout: not a whole number of seconds");
        return Ok(ExitCode::from(2));
    };
    let namespace_regex = args.get(3);
    // Checked before connecting, so that a typo exits 2 at once (with a
    // caret under the character at fault).
    let checked = PodSelector::labels(selector).and_then(|s| match namespace_regex {
        Some(regex) => s.with_namespace_regex(regex),
        None => Ok(s),
    });
    if let Err(e) = checked {
        eprintln!("{e}");
        return Ok(ExitCode::from(2));
    }

    let endpoint =
        std::env::var("PLEG_RUNTIME_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
    let runtime = CriRuntime::connect(CriConfig::new(&endpoint)).await?;
    let pleg = Pleg::new(runtime, Config::generic())?;
    // One relist before the monitors: they count every death they see, and
    // the first relist reports already-exited containers as `ContainerDied`.
    pleg.relist().await?;
    pleg.start()?;

    let pool = MonitorPool::new(&pleg);
    let timeout = Duration::from_secs(timeout);
    match namespace_regex {
        Some(regex) => {
            pool.select_and_monitor_by_namespace_pattern_and_label(regex, selector, timeout)
        }
        None => pool.select_and_monitor_by_label(selector, timeout),
    }?;
    println!(
        "monitoring {selector:?}{} for at most {}s",
        namespace_regex.map_or_else(String::new, |r| format!(" in namespaces {r:?}")),
        timeout.as_secs()
    );

    let report = join_with_progress(&pool).await;
    pleg.stop().await;
    print_report(&report);
    if let Some(error) = report.error {
        anyhow::bail!(error);
    }
    Ok(if report.all_recovered() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Waits for the pool, printing its counts as they change; Ctrl-C cancels.
async fn join_with_progress(pool: &MonitorPool) -> MonitorReport {
    let mut progress = pool.progress();
    let join = pool.join();
    tokio::pin!(join);
    let mut cancelled = false;
    loop {
        tokio::select! {
            report = &mut join => return report,
            Ok(()) = progress.changed() => println!("progress: {}", *progress.borrow_and_update()),
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                pool.cancel();
            }
        }
    }
}

fn print_report(report: &MonitorReport) {
    for r in &report.recovered {
        println!(
            "recovered   {}: died {}, replaced after {} ms, recovery_ms {}",
            what(r),
            time_of_day(r.died_at),
            millis(r.time_to_replacement()),
            millis(r.recovery()),
        );
    }
    for r in &report.unrecovered {
        let how_far = match r.time_to_replacement() {
            Some(d) => format!("replaced after {} ms, never running", d.as_millis()),
            None => "never replaced".to_owned(),
        };
        println!(
            "unrecovered {}: died {}, {how_far}",
            what(r),
            time_of_day(r.died_at)
        );
    }
    println!(
        "{} recovered, {} unrecovered{}",
        report.recovered.len(),
        report.unrecovered.len(),
        if report.cancelled { " (cancelled)" } else { "" }
    );
}

/// `namespace/name container C` or `namespace/name pod`, with the dead ID.
fn what(r: &Recovery) -> String {
    let short: String = r.dead_id.as_str().chars().take(13).collect();
    match &r.container {
        Some(container) => format!("{}/{} container {container} ({short})", r.namespace, r.name),
        None => format!("{}/{} pod ({short})", r.namespace, r.name),
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string())
}

/// `HH:MM:SS.mmm`, UTC.
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
