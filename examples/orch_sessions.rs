//! orch's `Watcher` on one node: subscribe to one session's pods and print
//! each change with the session, component, pod, IP, health and the error
//! behind a failing health.
//!
//! ```text
//! cargo run --example orch_sessions -- SESSION [SESSION_LABEL [COMPONENT_LABEL]]
//! ```
//!
//! A pod belongs to the session when its `SESSION_LABEL` label (default
//! `session`) has the value `SESSION`; its component is the value of its
//! `COMPONENT_LABEL` label (default `component`). It runs until Ctrl-C, which
//! unsubscribes the session: the channel then hands out what it holds and
//! ends. A `Resync` (the subscriber fell behind, by more than the channel's
//! 32 events) says how many updates were lost; the example then prints the
//! session's pods as the cache holds them.
//!
//! The runtime is `PLEG_RUNTIME_ENDPOINT` (default containerd's socket). The
//! generator relists (generic mode) instead of opening the runtime's event
//! stream: containerd 1.7 gives each event to one stream only, so a second
//! evented consumer on the node would take events from the first.

use std::process::ExitCode;

use pleg::phase::PodHealth;
use pleg::runtime::cri::{CriConfig, CriRuntime, DEFAULT_ENDPOINT};
use pleg::session::{SessionEvent, SessionOptions, SessionUpdate, SessionWatcher};
use pleg::{Config, Pleg};

const USAGE: &str = "usage: orch_sessions SESSION [SESSION_LABEL [COMPONENT_LABEL]]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("orch_sessions: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(session), 1..=3) = (args.first(), args.len()) else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let mut options = SessionOptions::default();
    if let Some(label) = args.get(1) {
        options = options.with_session_label(label.as_str());
    }
    if let Some(label) = args.get(2) {
        options = options.with_component_label(label.as_str());
    }
    let session_label = options.session_label.clone();

    let endpoint =
        std::env::var("PLEG_RUNTIME_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
    let runtime = CriRuntime::connect(CriConfig::new(&endpoint)).await?;
    let pleg = Pleg::new(runtime, Config::generic())?;
    let watcher = SessionWatcher::new(&pleg, options);
    // Subscribed before the first relist, so the session's pods that run
    // already come as the first updates.
    let mut updates = watcher.subscribe(session)?;
    pleg.start()?;
    println!("session {session:?} (pods labelled {session_label}={session})");

    let mut unsubscribed = false;
    loop {
        let update = tokio::select! {
            u = updates.recv() => u,
            _ = tokio::signal::ctrl_c(), if !unsubscribed => {
                watcher.unsubscribe(session)?;
                unsubscribed = true;
                println!("unsubscribed; draining");
                continue;
            }
        };
        match update {
            Some(SessionUpdate::Event(event)) => print_event(&event),
            Some(SessionUpdate::Resync { missed, reason }) => {
                println!(
                    "resync: {missed} updates lost ({}); the session's pods now:",
                    reason.as_str()
                );
                for entry in pleg.cache().entries() {
                    let meta = &entry.status.meta;
                    if meta.labels.get(&session_label) == Some(session) {
                        println!(
                            "  {}/{} {}",
                            meta.namespace,
                            meta.name,
                            PodHealth::of(&entry.status)
                        );
                    }
                }
            }
            Some(other) => println!("{other:?}"),
            None => break,
        }
    }
    pleg.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// One line, the fields of orch's `PodWatchEvent`, and what happened.
fn print_event(e: &SessionEvent) {
    let what = match &e.event.container {
        Some(c) => format!("{} {}#{}", e.event.kind, c.name, c.attempt),
        None => e.event.kind.to_string(),
    };
    println!(
        "session={} component={} pod={}/{} ip={} health={} ({}) error={}  [{what}]",
        e.session,
        e.component.as_deref().unwrap_or("-"),
        e.event.pod.namespace,
        e.event.pod.name,
        e.ip.as_deref().unwrap_or("-"),
        e.health.health.as_str(),
        e.health.phase.as_str(),
        e.error.as_deref().unwrap_or("-"),
    );
}
