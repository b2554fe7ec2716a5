//! `pleg run`: the node daemon.
//!
//! # Start-up
//! The signal handlers come first, before anything else, and the whole
//! start-up is raced against them: binding the health address and the gRPC
//! socket (so that a port in use fails at once, with its own exit code),
//! then starting the generator over a lazily connected runtime and asking
//! the runtime its version. A runtime that is missing, not CRI or hanging
//! does not stop the daemon: relists keep retrying and the health probe
//! answers 503 with the reason until the runtime answers.
//!
//! # Shut-down
//! SIGTERM or SIGINT, at any moment, start-up included, stops accepting,
//! ends the subscribers' streams after what they were sent, removes the
//! socket and exits 0, within [`SHUTDOWN_GRACE`] (after which the socket is
//! removed anyway).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use pleg::Pleg;
use pleg::phase::CrashLoopRule;
use pleg::runtime::cri::CriRuntime;
use pleg::server::{Daemon, grpc, http};
use pleg::unix::{PeerPolicy, SocketAccess, SocketIdentity};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Exit, Failure, Outcome, RunArgs, init_logging};

/// Longest the daemon waits for its servers to wind down after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(args: RunArgs) -> Outcome {
    // First of all: from here on a signal is a clean stop.
    let mut signals = Signals::install()?;
    let checked = check(&args)?;
    if args.check_config {
        println!("pleg: configuration ok");
        return Ok(());
    }
    // Kept to the end: dropping it flushes the log lines still queued.
    let logging = init_logging(&args.log_level, args.log_format);

    let shutdown = CancellationToken::new();
    let mut started = Started::default();
    let startup = {
        let start = start(&args, checked, &logging, &shutdown, &mut started);
        tokio::select! {
            biased;
            signal = signals.recv() => Err(signal),
            outcome = start => Ok(outcome),
        }
    };
    let outcome = match startup {
        Ok(Ok(())) => {
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            Ok(())
        }
        Ok(Err(failure)) => Err(failure),
        Err(signal) => {
            tracing::info!(signal, "signal during start-up; shutting down");
            Ok(())
        }
    };
    shutdown.cancel();
    started.stop().await;
    drop(logging);
    outcome
}

/// What the flags give once checked.
struct Checked {
    config: pleg::Config,
    mode: pleg::Mode,
    limits: grpc::Limits,
    socket_access: SocketAccess,
    peer_policy: Option<PeerPolicy>,
}

/// Checks what can be checked before anything starts.
fn check(args: &RunArgs) -> Result<Checked, Failure> {
    let mode = args.runtime.mode_or(super::ModeArg::Evented);
    let config = args
        .runtime
        .config(mode)?
        .with_replay_events(args.replay_events)
        .with_after_relist(crate::malloc::after_relist);
    config
        .validate()
        .map_err(|e| Failure::new(Exit::Usage, e))?;
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
    super::in_range(
        "--crash-loop-window",
        args.crash_loop_window,
        super::CRASH_LOOP_WINDOW_RANGE,
    )
    .map_err(|e| Failure::new(Exit::Usage, anyhow!(e)))?;
    let group = match &args.grpc_socket_group {
        None => None,
        Some(name) => match pleg::unix::group_id(name) {
            Ok(Some(gid)) => Some(gid),
            Ok(None) => {
                return Err(Failure::new(
                    Exit::Usage,
                    anyhow!("--grpc-socket-group {name:?}: no such group"),
                ));
            }
            Err(e) => {
                return Err(Failure::new(
                    Exit::Usage,
                    anyhow!("--grpc-socket-group {name:?}: cannot read the group database: {e}"),
                ));
            }
        },
    };
    // With users to let in, the peer check decides, so the file lets
    // anyone connect; otherwise the file's mode alone does.
    let (socket_access, peer_policy) = if args.grpc_allow_uids.is_empty() {
        (group.map_or(SocketAccess::Owner, SocketAccess::Group), None)
    } else {
        (
            SocketAccess::Everyone(group),
            Some(PeerPolicy::new(args.grpc_allow_uids.iter().copied(), group)),
        )
    };
    Ok(Checked {
        config,
        mode,
        limits,
        socket_access,
        peer_policy,
    })
}

/// What the start-up started so far, for the shut-down to stop, whether the
/// start-up finished or not.
#[derive(Default)]
struct Started {
    pleg: Option<Pleg>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    grpc: Option<JoinHandle<Result<(), grpc::ServeError>>>,
    /// The gRPC socket file bound, to remove if its server does not.
    socket: Option<(PathBuf, SocketIdentity)>,
}

impl Started {
    /// Stops what was started (the shutdown token is cancelled already),
    /// giving it [`SHUTDOWN_GRACE`], then makes sure the socket is gone.
    async fn stop(self) {
        let Started {
            pleg,
            http,
            grpc,
            socket,
        } = self;
        let wind_down = async {
            if let Some(pleg) = pleg {
                pleg.stop().await;
            }
            if let Some(task) = grpc {
                match task.await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server"),
                    Err(e) => tracing::warn!(error = %e, "gRPC server task"),
                    Ok(Ok(())) => {}
                }
            }
            if let Some(task) = http {
                match task.await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "health server"),
                    Err(e) => tracing::warn!(error = %e, "health server task"),
                    Ok(Ok(())) => {}
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, wind_down)
            .await
            .is_err()
        {
            tracing::warn!("servers did not stop in time; exiting anyway");
        }
        // The socket must not outlive us (the server removes it when it
        // stops in time; this covers the rest).
        if let Some((path, identity)) = socket
            && let Err(e) = identity.remove_if_unchanged(&path)
        {
            tracing::warn!(socket = ?path, "cannot remove the socket file: {e}");
        }
    }
}

/// The daemon's start-up, in order; everything it starts is recorded in
/// `started` as soon as it exists, so that a signal may cut it short at any
/// await point.
async fn start(
    args: &RunArgs,
    checked: Checked,
    logging: &super::Logging,
    shutdown: &CancellationToken,
    started: &mut Started,
) -> Outcome {
    let Checked {
        config,
        mode,
        limits: grpc_limits,
        socket_access,
        peer_policy,
    } = checked;
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
    )
    .with_crash_loop_rule(CrashLoopRule::new(
        usize::from(args.crash_loop_exits),
        args.crash_loop_window,
    ));
    daemon
        .metrics()
        .log_lines_dropped
        .set_source(logging.dropped_lines());

    if !args.grpc_socket.is_empty() {
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
        let bound = grpc::bind_with(&socket, socket_access)
            .await
            .map_err(|e| Failure::new(Exit::GrpcSocket, e))?;
        // No await from here to the spawn: the socket is recorded the moment
        // it exists.
        started.socket = Some((bound.path().to_path_buf(), bound.identity()));
        if let Some(policy) = &peer_policy {
            let policy = policy.clone();
            daemon
                .metrics()
                .grpc_connections_refused
                .set_source(move || policy.refused());
        }
        let stop = shutdown.clone();
        let daemon = daemon.clone();
        started.grpc = Some(tokio::spawn(async move {
            grpc::serve_bound_with(
                daemon,
                bound,
                peer_policy,
                grpc_limits,
                stop.cancelled_owned(),
            )
            .await
        }));
    }
    let limits = http::HttpLimits {
        header_read_timeout: args.http_header_timeout,
        max_connections: args.http_max_connections,
    };
    // Subscribed before the first relist, so it misses nothing; it ends
    // with the shutdown token, with nothing to wait for.
    daemon
        .track_crash_loops(shutdown.clone())
        .map_err(|e| Failure::new(Exit::Failure, e))?;
    // The loop runs before the first probe is answered: the listener is
    // bound already, so a probe that comes early waits in its backlog
    // rather than seeing a loop that has not started yet as a dead one.
    pleg.start().map_err(|e| Failure::new(Exit::Failure, e))?;
    started.pleg = Some(pleg);
    let stop = shutdown.clone();
    started.http = Some(tokio::spawn(async move {
        http::serve_with(daemon, listener, limits, stop.cancelled_owned()).await
    }));
    tracing::info!(
        version = super::VERSION,
        endpoint = ?runtime.endpoint().to_string(),
        mode = mode.as_str(),
        health = ?args.health_addr,
        grpc = ?args.grpc_socket,
        "pleg running"
    );
    match runtime.verify().await {
        Ok(version) => tracing::info!(runtime = ?version.to_string(), "runtime answers"),
        Err(e) => tracing::warn!(
            error = ?e.to_string(),
            "runtime not available; retrying at every relist, and reporting unhealthy meanwhile"
        ),
    }
    Ok(())
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub(crate) fn install() -> Result<Signals, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let failed = |e: std::io::Error| {
            Failure::new(
                Exit::Failure,
                anyhow!("installing the SIGTERM and SIGINT handlers: {e}"),
            )
        };
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(failed)?,
            int: signal(SignalKind::interrupt()).map_err(failed)?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT (one that came since the
    /// handlers were installed counts); returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for SIGTERM or SIGINT, from the moment it is first polled; returns
/// its name.
pub(crate) async fn wait_for_signal() -> &'static str {
    if let Ok(mut signals) = Signals::install() {
        signals.recv().await
    } else {
        // Without signal handlers, Ctrl-C is all we can wait for.
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
