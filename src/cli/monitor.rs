//! `pleg monitor`: how the selected pods and containers recover after they
//! die (krkn's pod monitors, at node level). A live progress line on
//! stderr, then a table, or one JSON document, on stdout.
//!
//! From a daemon when one answers (its `Monitor` call), else with a
//! generator of its own that relists the runtime (never its event stream).
//! SIGINT or SIGTERM ends the monitoring early and prints what it gathered.
//! Exit 0: everything that died recovered, or nothing died; 1: something
//! did not recover; 7: all it saw recovered, but it could not watch to the
//! end (events were lost).

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use anyhow::anyhow;
use pleg::Pleg;
use pleg::monitor::{MonitorPool, MonitorProgress, MonitorReport, Recovery};
use pleg::server::grpc::{Client, MonitorItem};
use serde_json::{Value, json};

use super::output::{Format, rfc3339};
use super::run::wait_for_signal;
use super::{Exit, Failure, MonitorArgs, Outcome, Source, init_logging};

/// Monitors, prints, and says how it went.
pub(crate) async fn run(args: MonitorArgs) -> Outcome {
    let source = &args.source;
    let _logging = init_logging(&source.log_level, super::LogFormat::Text);
    let filter = args.filter();
    let mut progress = ProgressLine::new();
    let report = match source.source("monitoring", true).await? {
        Source::Daemon(client) => on_daemon(client, &filter, &args, &mut progress).await?,
        Source::Runtime(mode) => {
            let config = source.runtime.config(mode)?;
            let runtime = source.runtime.connect(source.wait).await?;
            let pleg = Pleg::new(runtime, config).map_err(|e| Failure::new(Exit::Usage, e))?;
            pleg.relist()
                .await
                .map_err(|e| Failure::new(Exit::RuntimeUnavailable, e))?;
            pleg.start().map_err(|e| Failure::new(Exit::Other, e))?;
            let report = embedded(&pleg, filter, &args, &mut progress).await;
            pleg.stop().await;
            report?
        }
    };
    progress.finish();
    print(source.output, &report);
    if !report.unrecovered.is_empty() {
        return Err(Failure::new(
            Exit::Failure,
            anyhow!(
                "{} of {} deaths did not recover within {}",
                report.unrecovered.len(),
                report.unrecovered.len() + report.recovered.len(),
                pleg::duration::format(args.timeout)
            ),
        ));
    }
    if let Some(error) = &report.error {
        return Err(Failure::new(Exit::Other, anyhow!("{error}")));
    }
    Ok(())
}

async fn embedded(
    pleg: &Pleg,
    filter: pleg::Filter,
    args: &MonitorArgs,
    progress: &mut ProgressLine,
) -> Result<MonitorReport, Failure> {
    let pool = MonitorPool::new(pleg);
    pool.select_and_monitor(filter, args.timeout)
        .map_err(|e| Failure::new(Exit::Other, e))?;
    let mut counts = pool.progress();
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        let now = *counts.borrow_and_update();
        progress.show(&now);
        if now.running == 0 {
            break;
        }
        tokio::select! {
            _ = &mut signal => {
                pool.cancel();
                break;
            }
            changed = counts.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    Ok(pool.join().await)
}

/// The daemon's `Monitor`, kept by the daemon past the call: when the
/// connection breaks (or the daemon is briefly unreachable), it connects
/// again, with backoff, and follows the same monitor, which never stopped
/// watching; a death and recovery that happened meanwhile are in its
/// report. Only a daemon that restarted (and so lost the monitor) ends it.
async fn on_daemon(
    mut client: Client,
    filter: &pleg::Filter,
    args: &MonitorArgs,
    progress: &mut ProgressLine,
) -> Result<MonitorReport, Failure> {
    let unreachable = |e| Failure::new(Exit::DaemonUnreachable, e);
    let socket = client.socket().to_path_buf();
    let mut stream = client
        .monitor_kept(filter, args.timeout)
        .await
        .map_err(unreachable)?;
    // The monitor ends at its timeout; reconnecting is worth trying until a
    // while after that, for its report.
    let give_up = tokio::time::Instant::now() + args.timeout + std::time::Duration::from_secs(60);
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => {
                // Cancelling the call leaves the daemon's monitor running to
                // its timeout; this command no longer waits for it.
                return Err(Failure::new(Exit::Other, anyhow!("interrupted; the daemon's monitor runs on to its timeout")));
            }
            item = stream.next() => match item {
                Some(Ok(MonitorItem::Progress(p))) => progress.show(&p),
                Some(Ok(MonitorItem::Report(report))) => return Ok(report),
                Some(Ok(_)) => {}
                Some(Err(e @ pleg::server::grpc::ClientError::Rpc { .. })) => {
                    let Some(id) = stream.monitor_id().map(str::to_owned) else {
                        return Err(unreachable(e));
                    };
                    tracing::warn!(error = %e, monitor_id = %id, "the daemon's Monitor broke; following it again");
                    stream = reattach(&socket, &id, give_up).await?;
                }
                Some(Err(e)) => return Err(unreachable(e)),
                None => {
                    return Err(unreachable(pleg::server::grpc::ClientError::Protocol {
                        socket: client.socket().to_path_buf(),
                        call: "Monitor",
                        reason: "the daemon ended the stream without a report".into(),
                    }));
                }
            },
        }
    }
}

/// Connects again and follows monitor `id`, with backoff, until `give_up`.
async fn reattach(
    socket: &std::path::Path,
    id: &str,
    give_up: tokio::time::Instant,
) -> Result<pleg::server::grpc::MonitorStream, Failure> {
    let mut backoff = pleg::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    loop {
        let attempt = async {
            let mut client = Client::connect(socket).await?;
            client.attach_monitor(id).await
        };
        match attempt.await {
            Ok(stream) => {
                tracing::warn!(monitor_id = %id, "following the daemon's monitor again");
                return Ok(stream);
            }
            Err(
                e @ pleg::server::grpc::ClientError::Rpc {
                    code: tonic::Code::NotFound,
                    ..
                },
            ) => {
                return Err(Failure::new(
                    Exit::DaemonUnreachable,
                    anyhow!("the daemon lost the monitor (it restarted?): {e}"),
                ));
            }
            Err(e) if tokio::time::Instant::now() >= give_up => {
                return Err(Failure::new(Exit::DaemonUnreachable, e));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::debug!(error = %e, ?delay, "the daemon cannot be reached; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The live line on stderr: rewritten in place on a terminal, a line per
/// change otherwise.
struct ProgressLine {
    terminal: bool,
    last: Option<MonitorProgress>,
    shown: bool,
}

impl ProgressLine {
    fn new() -> Self {
        ProgressLine {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            shown: false,
        }
    }

    fn show(&mut self, p: &MonitorProgress) {
        if self.last.as_ref() == Some(p) {
            return;
        }
        self.last = Some(*p);
        let line = format!(
            "pleg: monitoring: {} died, {} recovered, {} pending",
            p.died,
            p.recovered,
            p.pending()
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.terminal && self.shown {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| rfc3339(t).into())
}

fn item(r: &Recovery) -> Value {
    json!({
        "namespace": r.namespace,
        "name": r.name,
        "pod_uid": r.pod_uid.to_string(),
        "container": r.container,
        "dead_id": r.dead_id.to_string(),
        "died_at": rfc3339(r.died_at),
        "replaced_at": time(r.replaced_at),
        "running_at": time(r.running_at),
        "recovery_ms": r.recovery().map(millis),
        "replacement_id": r.replacement_id.as_ref().map(ToString::to_string),
        "replacement_pod_uid": r.replacement_pod_uid.as_ref().map(ToString::to_string),
    })
}

/// An offset from the death: `+250ms`.
fn after(r: &Recovery, t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| {
            format!(
                "+{}ms",
                millis(t.duration_since(r.died_at).unwrap_or_default())
            )
        },
    )
}

fn print(format: Format, report: &MonitorReport) {
    match format {
        Format::Json => {
            let doc = json!({
                "recovered": report.recovered.iter().map(item).collect::<Vec<_>>(),
                "unrecovered": report.unrecovered.iter().map(item).collect::<Vec<_>>(),
                "error": report.error.as_ref().map(ToString::to_string),
            });
            println!("{doc}");
        }
        Format::Text => {
            if report.recovered.is_empty() && report.unrecovered.is_empty() {
                println!("nothing that was monitored died");
            } else {
                let rows: Vec<[String; 7]> = report
                    .recovered
                    .iter()
                    .map(|r| (r, "recovered"))
                    .chain(report.unrecovered.iter().map(|r| (r, "UNRECOVERED")))
                    .map(|(r, result)| {
                        [
                            r.namespace.clone(),
                            r.name.clone(),
                            r.container.clone().unwrap_or_else(|| "(pod)".into()),
                            rfc3339(r.died_at),
                            after(r, r.replaced_at),
                            after(r, r.running_at),
                            result.to_owned(),
                        ]
                    })
                    .collect();
                let header = [
                    "NAMESPACE",
                    "POD",
                    "CONTAINER",
                    "DIED",
                    "REPLACED",
                    "RUNNING",
                    "RESULT",
                ];
                let mut widths = header.map(str::len);
                for row in &rows {
                    for (w, cell) in widths.iter_mut().zip(row) {
                        *w = (*w).max(cell.len());
                    }
                }
                let line = |cells: Vec<&str>| {
                    let padded: Vec<String> = cells
                        .iter()
                        .zip(widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    println!("{}", padded.join("  ").trim_end());
                };
                line(header.to_vec());
                for row in &rows {
                    line(row.iter().map(String::as_str).collect());
                }
            }
            if let Some(error) = &report.error {
                println!("error: {error}");
            }
        }
    }
}
