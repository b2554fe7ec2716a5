//! `pleg run`: the node daemon.
//!
//! It binds the health address and the gRPC socket first (so that a port in
//! use fails at once, with its own exit code), then starts the generator
//! over a lazily connected runtime: a runtime that is missing or not CRI
//! does not stop the daemon; relists keep retrying and the health probe
//! answers 503 with the reason until the runtime answers. SIGTERM or SIGINT
//! stops accepting, ends the subscribers' streams after what they were sent,
//! removes the socket and exits 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use pleg::Pleg;
use pleg::runtime::cri::CriRuntime;
use pleg::server::{Daemon, grpc, http};
use tokio_util::sync::CancellationToken;

use super::{Exit, Failure, Outcome, RunArgs, init_logging};

/// Longest the daemon waits for its servers to wind down after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Runs the daemon until SIGTERM or SIGINT.
// The daemon's start-up and shut-down, in order, read best as one piece.
#[allow(clippy::too_many_lines)]
pub(crate) async fn run(args: RunArgs) -> Outcome {
    let mode = args.runtime.mode_or(super::ModeArg::Evented);
    let config = args.runtime.config(mode)?;
    let limits = args.grpc_limits()?;
    if !http::metrics_prefix_is_valid(&args.metrics_prefix) {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!(
                "--metrics-prefix {:?}: a metric name prefix is letters, digits, _ and :, not starting with a digit",
                args.metrics_prefix
            ),
        ));
    }
    if args.check_config {
        println!("pleg: configuration ok");
        return Ok(());
    }
    init_logging(&args.log_level, args.log_format);

    let listener = http::bind(&args.health_addr)
        .await
        .map_err(|e| Failure::new(Exit::HealthAddr, e))?;
    let runtime = CriRuntime::connect_lazy(args.runtime.cri_config())
        .map_err(|e| Failure::new(Exit::Usage, e))?;
    let pleg = Pleg::new(runtime.clone(), config).map_err(|e| Failure::new(Exit::Usage, e))?;
    let daemon = Daemon::new(
        pleg.clone(),
        runtime.endpoint().to_string(),
        &args.metrics_prefix,
    );

    let shutdown = CancellationToken::new();
    let grpc_task = if args.grpc_socket.is_empty() {
        None
    } else {
        let socket = PathBuf::from(args.grpc_socket.trim_start_matches("unix://"));
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(parent)
        {
            return Err(Failure::new(
                Exit::GrpcSocket,
                anyhow!(
                    "gRPC socket {}: creating {}: {e}",
                    socket.display(),
                    parent.display()
                ),
            ));
        }
        let listener = grpc::bind(&socket)
            .await
            .map_err(|e| Failure::new(Exit::GrpcSocket, e))?;
        let stop = shutdown.clone();
        let daemon = daemon.clone();
        Some(tokio::spawn(async move {
            grpc::serve_bound_with(daemon, listener, limits, stop.cancelled_owned()).await
        }))
    };
    let http_task = {
        let stop = shutdown.clone();
        let daemon = daemon.clone();
        tokio::spawn(async move { http::serve(daemon, listener, stop.cancelled_owned()).await })
    };

    pleg.start().map_err(|e| Failure::new(Exit::Failure, e))?;
    tracing::info!(
        endpoint = %runtime.endpoint(),
        mode = mode.as_str(),
        health = %args.health_addr,
        grpc = %args.grpc_socket,
        "pleg running"
    );
    match runtime.verify().await {
        Ok(version) => tracing::info!(runtime = %version, "runtime answers"),
        Err(e) => tracing::warn!(
            error = %e,
            "runtime not available; retrying at every relist, and reporting unhealthy meanwhile"
        ),
    }

    let signal = wait_for_signal().await;
    tracing::info!(signal, "shutting down");
    shutdown.cancel();
    let wind_down = async {
        pleg.stop().await;
        if let Some(task) = grpc_task {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server"),
                Err(e) => tracing::warn!(error = %e, "gRPC server task"),
                Ok(Ok(())) => {}
            }
        }
        match http_task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "health server"),
            Err(e) => tracing::warn!(error = %e, "health server task"),
            Ok(Ok(())) => {}
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, wind_down)
        .await
        .is_err()
    {
        tracing::warn!("servers did not stop in time; exiting anyway");
        // The socket must not outlive us.
        if !args.grpc_socket.is_empty() {
            let _ = std::fs::remove_file(&args.grpc_socket);
        }
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns its name.
pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    if let (Ok(mut term), Ok(mut int)) = (term, int) {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    } else {
        // Without signal handlers, Ctrl-C is all we can wait for.
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
