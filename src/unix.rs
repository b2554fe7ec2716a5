//! Unix sockets a server listens on: binding one safely, knowing which file
//! it bound, and its accepted connections as a stream for tonic's
//! `serve_with_incoming`.
//!
//! # Binding
//! [`bind`] refuses a socket on which a live server answers, replaces a
//! stale socket file (nobody listening), never removes anything that is not
//! a socket, and restricts the new socket to mode 0600 (its owner only).
//!
//! # Removing
//! A server removes its socket file when it stops, but another server may
//! have bound the same path since (a restarted daemon). [`SocketIdentity`]
//! remembers which file was bound (device and inode) and removes the path
//! only while it still names that file.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::net::{UnixListener, UnixStream};

/// How long probing an existing socket for a live server may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Result of binding.
pub type Result<T, E = BindError> = std::result::Result<T, E>;

/// Why [`bind`] failed. Every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A server answers on the socket already.
    #[error("socket {}: another server is already listening there", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket exists at the path; it is left alone.
    #[error("socket {}: the path exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be examined, or an existing socket could not be
    /// probed.
    #[error("socket {}: cannot check the existing path: {source}", path.display())]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A stale socket file (nobody listening) could not be removed.
    #[error("socket {}: cannot remove the stale socket file: {source}", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Binding the socket failed (no such directory, no permission, ...).
    #[error("socket {}: bind failed: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The socket could not be restricted to mode 0600; it was removed.
    #[error("socket {}: cannot set mode 0600: {source}", path.display())]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Which file a socket path named when it was bound (device and inode), so
/// that removing it later never removes a socket another server has bound at
/// the same path since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketIdentity {
    dev: u64,
    ino: u64,
}

impl SocketIdentity {
    /// The file `path` names now (the link itself, for a symbolic link).
    ///
    /// # Errors
    /// The path cannot be examined.
    pub fn of(path: &Path) -> io::Result<SocketIdentity> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes `path` if it still names this file: `Ok(true)` when removed,
    /// `Ok(false)` when the path is gone or names another file now, and the
    /// error when removing failed.
    ///
    /// # Errors
    /// The path could not be examined or removed.
    pub fn remove_if_unchanged(self, path: &Path) -> io::Result<bool> {
        match SocketIdentity::of(path) {
            Ok(now) if now == self => std::fs::remove_file(path).map(|()| true),
            _ => Ok(false),
        }
    }
}

/// A socket bound by [`bind`]: the listener, the file it made and its path.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    identity: SocketIdentity,
    path: PathBuf,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket file bound.
    pub fn identity(&self) -> SocketIdentity {
        self.identity
    }

    /// The listener, the file it made and its path.
    pub fn into_parts(self) -> (UnixListener, SocketIdentity, PathBuf) {
        (self.listener, self.identity, self.path)
    }
}

/// Binds a unix socket at `path`: refuses a live one (something accepts a
/// connection within [`PROBE_TIMEOUT`], or the connection hangs), replaces a
/// stale one, refuses any other kind of file, and sets mode 0600. Must be
/// called inside a tokio runtime.
///
/// # Errors
/// A [`BindError`] naming the path: a live server on it, a path that is not a socket, or a bind or `chmod` that failed.
pub async fn bind(path: &Path) -> Result<BoundSocket> {
    let owned = || path.to_path_buf();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await;
            match probe {
                // Connected, or the connection hangs in a full backlog:
                // someone is there.
                Ok(Ok(_)) | Err(_) => return Err(BindError::InUse { path: owned() }),
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(BindError::InUse { path: owned() });
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing a stale socket file");
                    std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                        path: owned(),
                        source,
                    })?;
                }
                Ok(Err(source)) => {
                    return Err(BindError::Inspect {
                        path: owned(),
                        source,
                    });
                }
            }
        }
        Ok(_) => return Err(BindError::NotASocket { path: owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BindError::Inspect {
                path: owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: owned(),
        source,
    })?;
    if let Err(source) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        drop(listener);
        let _ = std::fs::remove_file(path);
        return Err(BindError::Permissions {
            path: owned(),
            source,
        });
    }
    let identity = SocketIdentity::of(path).map_err(|source| BindError::Inspect {
        path: owned(),
        source,
    })?;
    Ok(BoundSocket {
        listener,
        identity,
        path: owned(),
    })
}

/// The connections a listener accepts, as a stream (what tonic's
/// `serve_with_incoming` takes). It never ends; an accept error is an item.
#[derive(Debug)]
pub struct Incoming {
    listener: UnixListener,
}

impl Incoming {
    /// The connections `listener` accepts.
    pub fn new(listener: UnixListener) -> Self {
        Incoming { listener }
    }
}

impl Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .listener
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_refused_a_stale_one_replaced_and_a_file_left_alone() {
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        let bound = bind(&path).await.expect("binds");
        let mode = std::fs::metadata(&path)
            .expect("a socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind(&path).await, Err(BindError::InUse { .. })));

        drop(bound);
        assert!(path.exists(), "a closed listener leaves a stale file");
        let again = bind(&path).await.expect("replaces the stale socket");

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").expect("a file");
        let err = bind(&file).await.expect_err("not a socket");
        assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");

        let missing = dir.path().join("no/such/dir.sock");
        assert!(matches!(bind(&missing).await, Err(BindError::Bind { .. })));
        drop(again);
    }

    #[tokio::test]
    async fn a_socket_is_removed_only_while_the_path_names_the_file_bound() {
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        let (first, identity, _) = bind(&path).await.expect("binds").into_parts();
        drop(first);
        // A second name keeps the first file's inode from being reused.
        std::fs::hard_link(&path, dir.path().join("first.sock")).expect("a hard link");
        // Another server replaces the stale socket at the same path.
        let second = bind(&path).await.expect("binds again");
        assert!(!identity.remove_if_unchanged(&path).expect("checked"));
        assert!(path.exists(), "the other server's socket stays");
        assert!(
            second
                .identity()
                .remove_if_unchanged(&path)
                .expect("removed")
        );
        assert!(!path.exists());
        assert!(!second.identity().remove_if_unchanged(&path).expect("gone"));
    }

    #[tokio::test]
    async fn accepted_connections_come_out_of_the_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        let (listener, _, _) = bind(&path).await.expect("binds").into_parts();
        let mut incoming = Incoming::new(listener);
        let mut client = UnixStream::connect(&path).await.expect("connects");
        let mut accepted = std::future::poll_fn(|cx| Pin::new(&mut incoming).poll_next(cx))
            .await
            .expect("an item")
            .expect("a connection");
        client.write_all(b"x").await.expect("sent");
        let mut got = [0u8; 1];
        accepted.read_exact(&mut got).await.expect("received");
        assert_eq!(&got, b"x");
    }
}
