//! drunc's `K8sPodWatcherThread` on one node: one line each time a pod ends
//! (`Succeeded`, `Failed` or `Deleted`), with every container's exit code
//! and reason, the summing-up exit code drunc's `notify_termination` takes,
//! and `is_alive`.
//!
//! ```text
//! cargo run --example drunc_terminations -- [NAMESPACE] [--capacity N]
//! ```
//!
//! It runs until Ctrl-C. drunc restarts its Kubernetes watch after an error;
//! a pleg subscription does not break, but it loses events when its reader
//! falls behind, and then says how many with a `Resync`. The example then
//! rebuilds its tracker from the cache, which holds every pod's latest
//! status, and reports the ends the rebuild shows. A pod removed while the
//! events were lost is no longer in the cache: it is reported `Deleted`,
//! its exit codes unknown. `--capacity 1` (a one-event queue) makes a
//! `Resync` likely: a relist that sees several pods go at once publishes
//! their batches back to back.
//!
//! The runtime is `PLEG_RUNTIME_ENDPOINT` (default containerd's socket). The
//! generator relists (generic mode) instead of opening the runtime's event
//! stream: containerd 1.7 gives each event to one stream only, so a second
//! evented consumer on the node would take events from the first.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use pleg::model::{Container, ContainerId, ContainerState, EntryKind, PodMeta, PodStatus};
use pleg::runtime::cri::{CriConfig, CriRuntime, DEFAULT_ENDPOINT};
use pleg::terminal::{TerminalReport, TerminalReports};
use pleg::{
    Config, ContainerRef, Delivery, EventSource, EventType, Filter, Pleg, PodLifecycleEvent,
    PodUid, SubscribeOptions,
};

const USAGE: &str = "usage: drunc_terminations [NAMESPACE] [--capacity N]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("drunc_terminations: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let mut namespace = None;
    let mut capacity = pleg::hub::DEFAULT_CAPACITY;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--capacity" {
            match args.next().map(|n| n.parse::<usize>()) {
                Some(Ok(n)) if n > 0 => capacity = n,
                _ => {
                    eprintln!("{USAGE}\n--capacity: a number of events, at least 1");
                    return Ok(ExitCode::from(2));
                }
            }
        } else if !arg.starts_with('-') && namespace.is_none() {
            namespace = Some(arg);
        } else {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    let filter = match &namespace {
        Some(ns) => Filter::all().with_namespace(ns.as_str()),
        None => Filter::all(),
    };

    let endpoint =
        std::env::var("PLEG_RUNTIME_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
    let runtime = CriRuntime::connect(CriConfig::new(&endpoint)).await?;
    let pleg = Pleg::new(runtime, Config::generic())?;
    // Subscribed before the first relist, so the tracker hears of every
    // container that runs already: a pod's end is all of its containers
    // having exited, and a tracker that missed a start would end it early.
    let mut subscription =
        pleg.subscribe_with(SubscribeOptions::filtered(filter.clone()).with_capacity(capacity))?;
    pleg.start()?;
    println!(
        "watching {} for terminations (queue of {capacity} events)",
        namespace.as_deref().unwrap_or("every namespace")
    );

    let mut terminations = Terminations::default();
    loop {
        let delivery = tokio::select! {
            d = subscription.recv() => d,
            _ = tokio::signal::ctrl_c() => break,
        };
        match delivery {
            Some(Delivery::Event(event)) => terminations.observe(&pleg, &event),
            Some(Delivery::Resync { missed, reason, .. }) => {
                println!(
                    "resync: {missed} events lost ({}); rebuilding from the cache",
                    reason.as_str()
                );
                terminations.rebuild(&pleg, &filter);
            }
            Some(other) => println!("{other:?}"),
            None => anyhow::bail!("the generator stopped"),
        }
    }
    pleg.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The tracker, what it printed, and the pods whose current run has not
/// ended yet.
#[derive(Default)]
struct Terminations {
    reports: TerminalReports,
    /// The reports printed, so that a rebuild does not tell an end twice.
    printed: HashSet<(PodUid, Vec<ContainerId>)>,
    /// Pods seen starting and not reported since.
    live: HashMap<PodUid, Arc<PodMeta>>,
}

impl Terminations {
    fn observe(&mut self, pleg: &Pleg, event: &PodLifecycleEvent) {
        if event.kind == EventType::ContainerStarted {
            self.live.insert(event.pod.uid.clone(), event.pod.clone());
        }
        if let Some(report) = self.reports.observe(event) {
            self.print(pleg, &report, "");
        }
    }

    /// After lost events: a tracker rebuilt from the cache, the ends it
    /// shows, and the live pods the cache no longer has (removed while the
    /// events were lost, so their exit codes are lost too).
    fn rebuild(&mut self, pleg: &Pleg, filter: &Filter) {
        let (reports, ended) = replay(pleg, filter);
        self.reports = reports;
        for report in &ended {
            self.print(pleg, report, " (from the cache)");
        }
        let cache = pleg.cache();
        let gone: Vec<Arc<PodMeta>> = self
            .live
            .values()
            .filter(|pod| cache.get(&pod.uid).is_none())
            .cloned()
            .collect();
        for pod in gone {
            self.live.remove(&pod.uid);
            println!(
                "terminated {}/{} uid={} phase=Deleted exit=- alive={} (removed while events were lost; exit codes unknown)",
                pod.namespace,
                pod.name,
                pod.uid,
                pleg.is_alive(&pod.name, &pod.namespace)
            );
        }
    }

    fn print(&mut self, pleg: &Pleg, report: &TerminalReport, note: &str) {
        self.live.remove(&report.pod.uid);
        let ids = report.containers.iter().map(|c| c.id.clone()).collect();
        if !self.printed.insert((report.pod.uid.clone(), ids)) {
            return;
        }
        let pod = &report.pod;
        let containers: Vec<String> = report
            .containers
            .iter()
            .map(|c| {
                format!(
                    "{}#{} exit={} reason={}",
                    c.name,
                    c.attempt,
                    c.exit_code
                        .map_or_else(|| "-".to_owned(), |code| code.to_string()),
                    c.reason.as_deref().unwrap_or("-")
                )
            })
            .collect();
        println!(
            "terminated {}/{} uid={} phase={} exit={} alive={}{note}: {}",
            pod.namespace,
            pod.name,
            pod.uid,
            report.phase.as_str(),
            report
                .exit_code()
                .map_or_else(|| "-".to_owned(), |code| code.to_string()),
            pleg.is_alive(&pod.name, &pod.namespace),
            if containers.is_empty() {
                "no container".to_owned()
            } else {
                containers.join(", ")
            }
        );
    }
}

/// A tracker rebuilt from the cache by replaying each selected pod's status
/// as events: every running sandbox and every container started, then each
/// exited container's death. The reports the replay yields are the pods
/// that have ended.
fn replay(pleg: &Pleg, filter: &Filter) -> (TerminalReports, Vec<TerminalReport>) {
    let mut reports = TerminalReports::new();
    let mut ended = Vec::new();
    for entry in pleg.cache().entries() {
        let status = &entry.status;
        if !filter.matches_pod(&status.meta) {
            continue;
        }
        for sandbox in &status.sandboxes {
            if sandbox.state == ContainerState::Running {
                reports.observe(&event(
                    status,
                    sandbox,
                    EntryKind::Sandbox,
                    EventType::ContainerStarted,
                ));
            }
        }
        // Every start before any death: a pod ends when the latest attempt
        // of each container name has exited.
        for c in &status.containers {
            if matches!(c.state, ContainerState::Running | ContainerState::Exited) {
                reports.observe(&event(
                    status,
                    c,
                    EntryKind::Container,
                    EventType::ContainerStarted,
                ));
            }
        }
        for c in status
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Exited)
        {
            ended.extend(reports.observe(&event(
                status,
                c,
                EntryKind::Container,
                EventType::ContainerDied,
            )));
        }
    }
    (reports, ended)
}

/// The event that would have told of `container`'s state.
fn event(
    status: &PodStatus,
    container: &Container,
    kind: EntryKind,
    what: EventType,
) -> PodLifecycleEvent {
    let mut event = PodLifecycleEvent::new(
        status.meta.clone(),
        what,
        EventSource::Relist,
        SystemTime::now(),
    );
    event.container = Some(ContainerRef {
        id: container.id.clone(),
        name: container.name.clone(),
        attempt: container.attempt,
        kind,
    });
    event.runtime_time = container.started_at;
    if what == EventType::ContainerDied {
        event.exit_code = container.exit_code;
        event.reason.clone_from(&container.reason);
        event.started_at = container.started_at;
        event.finished_at = container.finished_at;
        event.runtime_time = container.finished_at;
    }
    event
}
