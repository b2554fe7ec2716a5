//! nublado's `PodStorage` on one node: wait for a pod to leave `Pending`,
//! follow its events for a while, and with `--delete` delete it once every
//! container has exited.
//!
//! ```text
//! cargo run --example nublado_lab -- NAMESPACE NAME [SECONDS] [--delete]
//! ```
//!
//! `SECONDS` (default 10) bounds the wait, the event watch and, with
//! `--delete`, the wait for completion, which runs beside the event watch so
//! that the watch shows the deletion. Exit 0 when done, 1 when the pod did
//! not leave `Pending` or complete in time, 2 for bad arguments.
//!
//! The runtime is `PLEG_RUNTIME_ENDPOINT` (default containerd's socket). The
//! generator relists (generic mode) instead of opening the runtime's event
//! stream: containerd 1.7 gives each event to one stream only, so a second
//! evented consumer on the node would take events from the first.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use pleg::phase::{PodHealth, PodPhase};
use pleg::runtime::cri::{CriConfig, CriRuntime, DEFAULT_ENDPOINT};
use pleg::select::PodSelector;
use pleg::wait::{Until, WaitError};
use pleg::{Config, Delivery, Filter, Pleg, PodLifecycleEvent};

const USAGE: &str = "usage: nublado_lab NAMESPACE NAME [SECONDS] [--delete]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("nublado_lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let delete = args.iter().any(|a| a == "--delete");
    args.retain(|a| a != "--delete");
    let (Some(namespace), Some(name)) = (args.first(), args.get(1)) else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let Ok(seconds) = args.get(2).map_or(Ok(10), |s| s.parse::<u64>()) else {
        eprintln!("{USAGE}\nSECONDS: not a whole number");
        return Ok(ExitCode::from(2));
    };
    let window = Duration::from_secs(seconds);
    let filter = Filter::all()
        .with_namespace(namespace.as_str())
        .with_selector(PodSelector::named(name)?);
    let pod = format!("{namespace}/{name}");

    let endpoint =
        std::env::var("PLEG_RUNTIME_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
    let runtime = CriRuntime::connect(CriConfig::new(&endpoint)).await?;
    let pleg = Pleg::new(runtime.clone(), Config::generic())?;
    pleg.relist().await?;
    pleg.start()?;

    // wait_for_phase(until_not={Pending}): the new phase, or gone.
    match pleg
        .wait_for(&filter, Until::not_in([PodPhase::Pending]), window)
        .await
    {
        Ok(met) => match met.phase {
            Some(phase) => println!("{pod}: left Pending: {}", phase.as_str()),
            None => println!("{pod}: gone (or never there)"),
        },
        Err(e @ WaitError::TimedOut { .. }) => {
            println!("{pod}: {e}");
            pleg.stop().await;
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    }

    // events_for_pod(timeout): subscribed first, then the cache read, so
    // nothing falls between the wait and the watch.
    let events = pleg.pod_events(&filter, window);
    for entry in pleg.cache().entries() {
        if filter.matches_pod(&entry.status.meta) {
            println!("{pod}: now {}", PodHealth::of(&entry.status));
        }
    }
    let deletion = async {
        if !delete {
            return true;
        }
        // delete_after_completion: every container exited, then the
        // sandboxes are stopped and removed through the same runtime.
        match pleg
            .delete_after_completion(&*runtime, &filter, window)
            .await
        {
            Ok(deleted) => {
                for status in &deleted.completed {
                    println!("{pod}: completed ({}); deleting", PodHealth::of(status));
                }
                for sandbox in &deleted.sandboxes {
                    println!("{pod}: sandbox {sandbox} stopped and removed");
                }
                true
            }
            Err(e) => {
                println!("{pod}: not deleted: {e}");
                false
            }
        }
    };
    let ((), deleted) = tokio::join!(follow(&pleg, &filter, events, &pod), deletion);
    pleg.stop().await;
    Ok(if deleted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints each event until the window ends; on a `Resync`, the events lost
/// are gone, so it prints the pod's state from the cache instead.
async fn follow(pleg: &Pleg, filter: &Filter, mut events: pleg::changes::PodEvents, pod: &str) {
    while let Some(delivery) = events.next().await {
        match delivery {
            Delivery::Event(event) => println!("{pod}: {}", describe(&event)),
            Delivery::Resync { missed, reason, .. } => {
                println!(
                    "{pod}: {missed} events lost ({}); re-reading the cache",
                    reason.as_str()
                );
                for entry in pleg.cache().entries() {
                    if filter.matches_pod(&entry.status.meta) {
                        println!("{pod}: now {}", PodHealth::of(&entry.status));
                    }
                }
            }
            other => println!("{pod}: {other:?}"),
        }
    }
    println!("{pod}: event watch ended");
}

/// `ContainerDied container app#0 exit=137 reason=Error (relist)`.
fn describe(e: &PodLifecycleEvent) -> String {
    let mut line = e.kind.to_string();
    if let Some(c) = &e.container {
        let _ = write!(line, " {} {}#{}", c.kind, c.name, c.attempt);
    }
    if let Some(code) = e.exit_code {
        let _ = write!(line, " exit={code}");
    }
    if let Some(reason) = &e.reason {
        let _ = write!(line, " reason={reason}");
    }
    let _ = write!(line, " ({})", e.source);
    line
}
