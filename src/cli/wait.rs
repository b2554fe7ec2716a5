//! `pleg wait`: waits until a pod meets a condition, then prints its final
//! status. Exit 0: met; 1: not met within the timeout; 2: a bad flag; 5/6:
//! the runtime or the daemon cannot be reached; 7: any other failure.
//!
//! From a daemon when one answers (its `Watch` first, then its `ListPods`,
//! so that nothing falls between the two), else with a generator of its own
//! that relists the runtime (never its event stream).

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use pleg::model::PodStatus;
use pleg::phase::PodHealth;
use pleg::server::grpc::{Client, ResumingWatch, WatchFrom};
use pleg::wait::{Met, Until, WaitError};
use pleg::{Filter, Pleg};

use super::output::Format;
use super::{Exit, Failure, Outcome, Source, WaitArgs, init_logging};

/// Waits, prints, and says how it went.
pub(crate) async fn run(args: WaitArgs) -> Outcome {
    let source = &args.source;
    let _logging = init_logging(&source.log_level, super::LogFormat::Text);
    let filter = args.filter()?;
    let until = args.until();
    let timeout = args.timeout;
    let outcome = match source.source("waiting", true).await? {
        Source::Daemon(client) => wait_on_daemon(client, &filter, &until, timeout, &args).await?,
        Source::Runtime(mode) => {
            let config = source.runtime.config(mode)?;
            let runtime = source.runtime.connect(source.wait).await?;
            let pleg = Pleg::new(runtime, config).map_err(|e| Failure::new(Exit::Usage, e))?;
            pleg.relist()
                .await
                .map_err(|e| Failure::new(Exit::RuntimeUnavailable, e))?;
            pleg.start().map_err(|e| Failure::new(Exit::Other, e))?;
            let outcome = pleg.wait_for(&filter, until.clone(), timeout).await;
            pleg.stop().await;
            match outcome {
                Ok(met) => Ok(met),
                Err(WaitError::TimedOut { last, .. }) => Err(last),
                Err(e) => return Err(Failure::new(Exit::Other, e)),
            }
        }
    };
    print(&args, &until, timeout, &outcome);
    match outcome {
        Ok(_) => Ok(()),
        Err(_) => Err(Failure::new(
            Exit::Failure,
            anyhow!(
                "{}/{}: not met within {} ({until:?})",
                args.namespace,
                args.name,
                pleg::duration::format(timeout)
            ),
        )),
    }
}

/// The same wait against a daemon: subscribe, then list, then look again
/// at each event of the pod, and list once more at the deadline.
///
/// It survives the daemon's going away for a while (a broken connection, a
/// restart): the watch reconnects and resumes by itself, and the listing
/// is tried again, every second and after each event, until the deadline;
/// a pod that met the condition meanwhile is seen at the first listing
/// that works.
async fn wait_on_daemon(
    mut client: Client,
    filter: &Filter,
    until: &Until,
    timeout: Duration,
    args: &WaitArgs,
) -> Result<Result<Met, Option<Arc<PodStatus>>>, Failure> {
    let unreachable = |e| Failure::new(Exit::DaemonUnreachable, e);
    let socket = client.socket().to_path_buf();
    let mut watching = filter.clone().with_container_changed(true);
    watching.kinds = None;
    let mut stream = ResumingWatch::new(&socket, &watching, 64, WatchFrom::live())
        .map_err(|e| Failure::new(Exit::Usage, e))?;
    stream.start().await.map_err(unreachable)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    let mut listing_failed = false;
    loop {
        match client.list_pods(Some(&args.namespace)).await {
            Ok(listed) => {
                listing_failed = false;
                let selected = listed
                    .into_iter()
                    .filter(|p| filter.matches_pod(&p.status.meta))
                    .map(|p| Arc::new(p.status));
                match until.check(selected) {
                    Ok(met) => return Ok(Ok(met)),
                    Err(seen) => last = seen.or(last),
                }
            }
            Err(e) => {
                if !listing_failed {
                    tracing::warn!(error = %e, "cannot list the daemon's pods; trying again until the deadline");
                }
                listing_failed = true;
                if let Ok(again) = Client::connect(&socket).await {
                    client = again;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Err(last));
        }
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Failure::new(Exit::DaemonUnreachable, e)),
                None => return Err(Failure::new(Exit::DaemonUnreachable, anyhow!("the daemon ended the event stream"))),
            },
            // The last look, at the deadline.
            () = tokio::time::sleep_until(deadline) => {}
            // A listing that failed is tried again soon.
            () = tokio::time::sleep(Duration::from_secs(1)), if listing_failed => {}
        }
    }
}

fn print(
    args: &WaitArgs,
    until: &Until,
    timeout: Duration,
    outcome: &Result<Met, Option<Arc<PodStatus>>>,
) {
    let (met, status) = match outcome {
        Ok(met) => (true, met.status.clone()),
        Err(last) => (false, last.clone()),
    };
    let health = status.as_deref().map(PodHealth::of);
    match args.source.output {
        Format::Json => {
            let mut o = serde_json::Map::new();
            o.insert("met".into(), met.into());
            o.insert("until".into(), format!("{until:?}").into());
            o.insert("namespace".into(), args.namespace.clone().into());
            o.insert("name".into(), args.name.clone().into());
            o.insert(
                "pod_uid".into(),
                status
                    .as_ref()
                    .map_or(serde_json::Value::Null, |s| s.meta.uid.to_string().into()),
            );
            let field = |f: fn(&PodHealth) -> Option<String>| {
                health
                    .as_ref()
                    .and_then(f)
                    .map_or(serde_json::Value::Null, Into::into)
            };
            o.insert("phase".into(), field(|h| Some(h.phase.as_str().to_owned())));
            o.insert(
                "health".into(),
                field(|h| Some(h.health.as_str().to_owned())),
            );
            o.insert(
                "health_reason".into(),
                field(|h| h.reason.map(|r| r.as_str().to_owned())),
            );
            o.insert("message".into(), field(|h| h.message.clone()));
            // The final status itself: every container the runtime has.
            let containers: Vec<serde_json::Value> = status
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "name": c.name,
                                "id": c.id.to_string(),
                                "attempt": c.attempt,
                                "state": c.state.as_str(),
                                "exit_code": c.exit_code,
                                "reason": c.reason,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            o.insert("containers".into(), containers.into());
            println!("{}", serde_json::Value::Object(o));
        }
        Format::Text => {
            let what = format!("{}/{}", args.namespace, args.name);
            let state = health.map_or_else(|| "gone".to_owned(), |h| h.to_string());
            if met {
                println!("{what}: met ({until:?}): {state}");
            } else {
                println!(
                    "{what}: not met within {} ({until:?}): {state}",
                    pleg::duration::format(timeout)
                );
            }
        }
    }
}
