//! `pleg watch`: lifecycle events live, one line each.
//!
//! It follows a running daemon's gRPC `Watch` stream when one answers (at
//! `--grpc-socket`, or the `--daemon` that must answer). Otherwise it runs
//! a generator of its own against the runtime, relisting unless `--mode
//! evented` is given: on containerd 1.7 only one event stream per runtime
//! gets each event, so a second evented consumer would take events from the
//! daemon's. The first relist reports what already runs, then every change
//! as it happens.

use std::io::IsTerminal;

use anyhow::anyhow;
use pleg::Pleg;
use pleg::server::grpc::{Client, ClientError, ResumingWatch, WatchFrom};
use pleg::{SubscribeOptions, Subscription};

use super::output::{Format, Printer};
use super::run::wait_for_signal;
use super::{Exit, Failure, Outcome, Source, WatchArgs, init_logging};

/// Runs until interrupted, or until the daemon's stream ends.
pub(crate) async fn run(args: WatchArgs) -> Outcome {
    let source = &args.source;
    let _logging = init_logging(&source.log_level, super::LogFormat::Text);
    let colour = source.output == Format::Text
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let mut printer = Printer::new(source.output, colour);
    if args.terminal {
        printer = printer.reporting_terminations();
    }
    let filter = args.filter.filter();

    let mode = match source.source("watching events", false).await? {
        Source::Daemon(client) => return follow_daemon(client, &filter, &args, &mut printer).await,
        Source::Runtime(mode) => mode,
    };
    if let Some(since) = &args.since {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!(
                "--since {since}: resuming needs the daemon whose run the epoch names, and no daemon answers (give --daemon SOCKET)"
            ),
        ));
    }
    let config = source.runtime.config(mode)?;

    let runtime = source.runtime.connect(source.wait).await?;
    let pleg = Pleg::new(runtime, config).map_err(|e| Failure::new(Exit::Usage, e))?;
    let mut filter = filter;
    if printer.is_reporting_terminations() {
        filter.kinds = None;
    }
    let options = SubscribeOptions::filtered(filter).with_initial_state(args.initial);
    let sub = if args.initial {
        // The initial state is what the first relist finds.
        pleg.start().map_err(|e| Failure::new(Exit::Failure, e))?;
        pleg.watch(options).await
    } else {
        let sub = pleg.subscribe_with(options);
        pleg.start().map_err(|e| Failure::new(Exit::Failure, e))?;
        sub
    }
    .map_err(|e| Failure::new(Exit::Usage, anyhow!(e)))?;
    let outcome = print_until_signal(sub, &mut printer).await;
    pleg.stop().await;
    outcome
}

async fn print_until_signal(mut sub: Subscription, printer: &mut Printer) -> Outcome {
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => return Ok(()),
            delivery = sub.recv() => match delivery {
                Some(d) => {
                    if printer.print(&d).is_err() {
                        // stdout closed (`| head`): done.
                        return Ok(());
                    }
                }
                None => return Err(Failure::new(Exit::Failure, anyhow!("the generator stopped"))),
            },
        }
    }
}

/// Follows the daemon's `Watch`, reconnecting and resuming after the last
/// item printed whenever the connection breaks or the daemon restarts.
async fn follow_daemon(
    mut client: Client,
    filter: &pleg::Filter,
    args: &WatchArgs,
    printer: &mut Printer,
) -> Outcome {
    let socket = client.socket().to_path_buf();
    let mut watching = filter.clone();
    if printer.is_reporting_terminations() {
        // Every event of the selected pods ends them, whatever `--type`.
        watching.kinds = None;
    }
    let from = WatchFrom::live()
        .resume(args.since.clone())
        .initial_state(args.initial);
    let mut stream = ResumingWatch::new(&socket, &watching, pleg::hub::DEFAULT_CAPACITY, from)
        .map_err(|e| Failure::new(Exit::Usage, e))?;
    stream.start().await.map_err(|e| match e {
        ClientError::Rpc {
            code: tonic::Code::InvalidArgument,
            ..
        } => Failure::new(Exit::Usage, e),
        e => Failure::new(Exit::DaemonUnreachable, e),
    })?;
    if printer.is_reporting_terminations() {
        // Subscribed first, then what runs already: a pod that runs now is
        // reported with every container when it ends.
        let namespace = filter.namespace.clone();
        let listed = client
            .list_pods(namespace.as_deref())
            .await
            .map_err(|e| Failure::new(Exit::DaemonUnreachable, e))?;
        for pod in listed.iter().filter(|p| filter.matches_pod(&p.status.meta)) {
            printer.track(&pod.status);
        }
    }
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        let next = stream.next();
        tokio::select! {
            _ = &mut signal => return Ok(()),
            item = next => match item {
                Some(Ok(d)) => {
                    if printer.print(&d).is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(Failure::new(Exit::Failure, e)),
                None => {
                    return Err(Failure::new(
                        Exit::Failure,
                        anyhow!("the daemon at {} ended the event stream", socket.display()),
                    ));
                }
            },
        }
    }
}
