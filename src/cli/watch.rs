//! `pleg watch`: lifecycle events live, one line each.
//!
//! Embedded (the default), it runs the generator against the runtime: the
//! first relist reports what already runs, then every change as it happens.
//! With `--daemon SOCKET` it follows a running daemon's gRPC `Watch` stream
//! instead (on containerd 1.7 only one event stream per runtime gets each
//! event, so a node should run one daemon and attach to it).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::anyhow;
use pleg::Pleg;
use pleg::{SubscribeOptions, Subscription};

use super::output::{Format, Printer};
use super::run::wait_for_signal;
use super::{Exit, Failure, Outcome, WatchArgs, init_logging};

/// Runs until interrupted, or until the daemon's stream ends.
pub(crate) async fn run(args: WatchArgs) -> Outcome {
    let source = &args.source;
    let config = source.runtime.config()?;
    let _logging = init_logging(&source.log_level, super::LogFormat::Text);
    let colour = source.output == Format::Text
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let mut printer = Printer::new(source.output, colour);
    let filter = args.filter.filter();

    if let Some(socket) = source.daemon_socket() {
        return follow_daemon(source, socket, &filter, &mut printer).await;
    }

    let runtime = source.runtime.connect(source.wait).await?;
    let pleg = Pleg::new(runtime, config).map_err(|e| Failure::new(Exit::Usage, e))?;
    let sub = pleg
        .subscribe_with(SubscribeOptions::filtered(filter))
        .map_err(|e| Failure::new(Exit::Usage, anyhow!(e)))?;
    pleg.start().map_err(|e| Failure::new(Exit::Failure, e))?;
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

async fn follow_daemon(
    source: &super::SourceArgs,
    socket: &Path,
    filter: &pleg::Filter,
    printer: &mut Printer,
) -> Outcome {
    let mut client = source.connect_daemon(socket).await?;
    let mut stream = client
        .watch(filter, pleg::hub::DEFAULT_CAPACITY)
        .await
        .map_err(|e| Failure::new(Exit::DaemonUnreachable, e))?;
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        let next = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
        });
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
