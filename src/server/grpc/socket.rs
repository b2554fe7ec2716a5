//! Serving the API on a unix socket ([`crate::unix`] binds it) and shutting
//! down: the `Watch` streams end, the connections get [`DRAIN_GRACE`], the
//! socket file goes.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::{DRAIN_GRACE, Limits, MAX_MESSAGE_SIZE, PlegService};
use crate::server::Daemon;
use crate::unix::{self, BindError, PeerPolicy, SocketAccess};

/// HTTP/2 streams open at once on one connection (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`); a client past it waits for one to end.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Why [`serve`] failed. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A server answers on the socket already.
    #[error("gRPC socket {}: another server is already listening there (a pleg daemon running?)", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Another process holds the lock file beside the socket (another pleg
    /// serving or starting there).
    #[error("gRPC socket {}: in use: another process holds its lock file {} (a pleg daemon running?)", path.display(), lock.display())]
    Locked {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Something other than a socket exists at the path; it is left alone.
    #[error("gRPC socket {}: the path exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be examined, or an existing socket could not be
    /// probed.
    #[error("gRPC socket {}: cannot check the existing path: {source}", path.display())]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stale socket file (nobody listening) could not be removed.
    #[error("gRPC socket {}: cannot remove the stale socket file: {source}", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding the socket failed (no such directory, no permission, ...).
    #[error("gRPC socket {}: bind failed: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The socket's mode or group could not be set; it was removed.
    #[error("gRPC socket {}: cannot set {access}: {source}", path.display())]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The mode (and group) wanted.
        access: SocketAccess,
        /// The cause.
        source: std::io::Error,
    },
    /// A symbolic link is at the path; it is neither followed nor removed.
    #[error("gRPC socket {}: the path is a symbolic link; refusing to follow or replace it", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// A socket nobody serves is at the path, and its lock file does not
    /// record it as pleg's.
    #[error(
        "gRPC socket {}: a socket nobody serves is there, and {} does not record it as pleg's; \
         remove it if no other program uses it, or choose another --grpc-socket",
        path.display(), lock.display()
    )]
    NotOurs {
        /// The socket path.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// The lock file beside the socket cannot be opened, read or written.
    #[error("gRPC socket {}: lock file {}: {source}", path.display(), lock.display())]
    Lock {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("gRPC socket {}: serving failed: {source}", path.display())]
    Serve {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Serves the `pleg.v1.Pleg` API for `daemon` on the unix socket `socket`
/// until `shutdown` completes. See the module docs for the socket's checks
/// and what happens at shutdown.
///
/// # Errors
/// The socket cannot be bound ([`bind`]), or the transport failed while serving.
pub async fn serve(
    daemon: Daemon,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_bound(daemon, bind(socket).await?, shutdown).await
}

impl From<BindError> for ServeError {
    fn from(error: BindError) -> Self {
        match error {
            BindError::InUse { path } => ServeError::InUse { path },
            BindError::Locked { path, lock } => ServeError::Locked { path, lock },
            BindError::NotASocket { path } => ServeError::NotASocket { path },
            BindError::Inspect { path, source } => ServeError::Inspect { path, source },
            BindError::RemoveStale { path, source } => ServeError::RemoveStale { path, source },
            BindError::Bind { path, source } => ServeError::Bind { path, source },
            BindError::Permissions {
                path,
                access,
                source,
            } => ServeError::Permissions {
                path,
                access,
                source,
            },
            BindError::Symlink { path } => ServeError::Symlink { path },
            BindError::NotOurs { path, lock } => ServeError::NotOurs { path, lock },
            BindError::Lock { path, lock, source } => ServeError::Lock { path, lock, source },
        }
    }
}

/// A socket bound by [`bind`], ready for [`serve_bound`].
pub use crate::unix::BoundSocket;

/// Binds the API's socket (refusing a live one, a link, anything that is
/// not a socket and a socket pleg did not make; replacing a stale one a
/// previous pleg left; mode 0600), so that a daemon can fail before it
/// starts anything else.
///
/// # Errors
/// A [`ServeError`] naming the socket: a live server on it, a path that is not a socket, or a bind that failed.
pub async fn bind(socket: &Path) -> Result<BoundSocket, ServeError> {
    bind_with(socket, SocketAccess::Owner).await
}

/// Binds the API's socket with `access` (mode 0600, or 0660 for a group);
/// see [`unix::bind_with`] for the checks.
///
/// # Errors
/// A [`ServeError`] naming the socket.
pub async fn bind_with(socket: &Path, access: SocketAccess) -> Result<BoundSocket, ServeError> {
    Ok(unix::bind_with(socket, access).await?)
}

/// Serves on a bound socket until `shutdown`, then removes the socket, with
/// the default [`Limits`].
///
/// # Errors
/// The transport failed while serving.
pub async fn serve_bound(
    daemon: Daemon,
    bound: BoundSocket,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_bound_with(daemon, bound, None, Limits::default(), shutdown).await
}

/// Serves on a bound socket until `shutdown`, letting in only the
/// connections `policy` allows (every one without), then removes the
/// socket, with these limits: at most `max_watches` streams, HTTP/2
/// keepalive pings that close a connection whose peer stopped answering,
/// answers of at most [`MAX_MESSAGE_SIZE`] bytes.
///
/// # Errors
/// The transport failed while serving.
pub async fn serve_bound_with(
    daemon: Daemon,
    bound: BoundSocket,
    policy: Option<PeerPolicy>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (listener, file) = bound.into_parts();
    let path = file.path().to_path_buf();
    let socket = path.as_path();
    let mut incoming = unix::Incoming::new(listener);
    if let Some(policy) = policy {
        incoming = incoming.with_policy(policy);
    }
    tracing::info!(
        socket = %socket.display(),
        max_watches = limits.max_watches,
        max_capacity = limits.max_capacity,
        max_queued_events = limits.max_queued_events,
        "gRPC API listening"
    );
    let service = PlegService::with_limits(daemon, limits);
    let ending = service.ending();
    let signal = {
        let ending = ending.clone();
        async move {
            shutdown.await;
            ending.cancel();
        }
    };
    let serving = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // hyper's default for tonic is no limit; unary calls and Watch
        // streams of one connection together, far above max_watches.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            service
                .into_server()
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(incoming, signal);
    // Once shut down, connections get DRAIN_GRACE to close after their
    // Watch streams ended; a client that keeps a unary call hanging longer
    // is left behind.
    let give_up = async {
        ending.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    let served = tokio::select! {
        served = serving => Some(served),
        () = give_up => None,
    };
    if let Err(e) = file.remove() {
        tracing::warn!(socket = %socket.display(), "cannot remove the socket file: {e}");
    }
    match served {
        Some(Ok(())) => {
            tracing::info!(socket = %socket.display(), "gRPC API stopped");
            Ok(())
        }
        Some(Err(source)) => Err(ServeError::Serve {
            path: socket.to_path_buf(),
            source,
        }),
        None => {
            tracing::warn!(
                socket = %socket.display(),
                "gRPC API stopped with connections still open after {DRAIN_GRACE:?}"
            );
            Ok(())
        }
    }
}
