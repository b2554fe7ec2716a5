//! Unix sockets a server listens on: binding one safely, knowing which file
//! it bound, and its accepted connections as a stream for tonic's
//! `serve_with_incoming`.
//!
//! # Binding
//! [`bind_with`] creates the socket and binds it as two steps: the new
//! socket is restricted to mode 0600 on its descriptor before it is bound,
//! so its file never exists with a looser mode, whatever the umask. With a
//! group ([`SocketAccess::Group`]) the file is given to that group first and
//! only then opened to it (0660).
//!
//! # What is already at the path
//! Beside the socket, `<socket>.lock` records who made it (the owner's pid,
//! the socket file's device and inode) and is locked (`flock`) for as long
//! as the socket is served. When the path exists at start:
//! - a symbolic link, or anything that is not a socket: refused, left alone;
//! - a socket on which someone answers (or whose connection hangs): in use;
//! - a socket nobody serves, that the lock file records and whose lock
//!   nobody holds: ours, left by a daemon that died; removed and replaced;
//! - any other socket: refused, with the path and what to do.
//!
//! The lock file stays when the socket goes: it is only a record, and
//! removing a lock file others may be opening would race.
//!
//! # Removing
//! A server removes its socket file when it stops, but another server may
//! have bound the same path since (a restarted daemon). [`SocketIdentity`]
//! remembers which file was bound (device and inode) and removes the path
//! only while it still names that file.
//!
//! # Who may connect
//! [`PeerPolicy`] checks each accepted connection's credentials
//! (`SO_PEERCRED`): root, the server's own user, the users allowed and the
//! members of the socket's group are let in; anyone else's connection is
//! closed and counted.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use nix::fcntl::{AT_FDCWD, AtFlags, Flock, FlockArg};
use nix::sys::stat::{FchmodatFlags, Mode, fchmod, fchmodat};
use nix::unistd::{Gid, Uid};
use tokio::net::{UnixListener, UnixStream};

/// How long probing an existing socket for a live server may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The backlog of a bound socket.
const BACKLOG: i32 = 1024;

/// Result of binding.
pub type Result<T, E = BindError> = std::result::Result<T, E>;

/// Why [`bind`] failed. Every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A server answers on the socket already.
    #[error("socket {}: in use: another server is already listening there", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Another process holds the lock file beside the socket (another pleg
    /// serving or starting there).
    #[error("socket {}: in use: another pleg is serving or starting there (it holds {})", path.display(), lock.display())]
    Locked {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Something other than a socket exists at the path; it is left alone.
    #[error("socket {}: the path exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A symbolic link is at the path; it is neither followed nor removed.
    #[error("socket {}: the path is a symbolic link; refusing to follow or replace it", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// A socket nobody serves is at the path, and its lock file does not
    /// record it as ours: some other program may own it.
    #[error(
        "socket {}: a socket nobody serves is there, and {} does not record it as pleg's; \
         remove it if no other program uses it, or choose another socket path",
        path.display(), lock.display()
    )]
    NotOurs {
        /// The socket path.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// The lock file beside the socket cannot be opened, read or written.
    #[error("socket {}: lock file {}: {source}", path.display(), lock.display())]
    Lock {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The cause.
        source: io::Error,
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
    /// Creating or binding the socket failed (no such directory, no
    /// permission, ...).
    #[error("socket {}: bind failed: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The socket's mode or group could not be set; it was removed.
    #[error("socket {}: cannot set {access}: {source}", path.display())]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The mode (and group) wanted.
        access: SocketAccess,
        /// The cause.
        source: io::Error,
    },
}

/// Who may open a bound socket, by its file's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SocketAccess {
    /// Mode 0600: its owner only.
    #[default]
    Owner,
    /// Mode 0660, owned by this group.
    Group(u32),
    /// Mode 0666 (owned by the group, if one is given): anyone may connect,
    /// and a [`PeerPolicy`] decides whom the server lets in. Only with a
    /// policy.
    Everyone(Option<u32>),
}

impl SocketAccess {
    /// The file mode.
    pub fn mode(self) -> u32 {
        match self {
            SocketAccess::Owner => 0o600,
            SocketAccess::Group(_) => 0o660,
            SocketAccess::Everyone(_) => 0o666,
        }
    }

    /// The group the file is given to, if any.
    pub fn group(self) -> Option<u32> {
        match self {
            SocketAccess::Owner | SocketAccess::Everyone(None) => None,
            SocketAccess::Group(gid) | SocketAccess::Everyone(Some(gid)) => Some(gid),
        }
    }
}

impl std::fmt::Display for SocketAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mode {:04o}", self.mode())?;
        match self.group() {
            Some(gid) => write!(f, " and group {gid}"),
            None => Ok(()),
        }
    }
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

/// The lock file beside a socket: `<socket>.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The record a lock file holds: who made the socket, and which file it
/// is. An inode number is reused once its file is gone, so the record also
/// holds the file's change time (nanoseconds): a socket someone else bound
/// at the path later has another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LockRecord {
    pid: u32,
    socket: SocketIdentity,
    changed: (i64, i64),
}

impl LockRecord {
    fn of(pid: u32, meta: &std::fs::Metadata) -> LockRecord {
        LockRecord {
            pid,
            socket: SocketIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether `meta` is the file recorded.
    fn names(&self, meta: &std::fs::Metadata) -> bool {
        let now = LockRecord::of(self.pid, meta);
        now.socket == self.socket && now.changed == self.changed
    }

    fn render(self) -> String {
        format!(
            "pid {}\nsocket-device {}\nsocket-inode {}\nsocket-changed {}.{:09}\n",
            self.pid, self.socket.dev, self.socket.ino, self.changed.0, self.changed.1
        )
    }

    /// The record in `text`, if it is one.
    fn parse(text: &str) -> Option<LockRecord> {
        let (mut pid, mut dev, mut ino, mut changed) = (None, None, None, None);
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => pid = v.trim().parse().ok(),
                Some(("socket-device", v)) => dev = v.trim().parse().ok(),
                Some(("socket-inode", v)) => ino = v.trim().parse().ok(),
                Some(("socket-changed", v)) => {
                    changed = v
                        .trim()
                        .split_once('.')
                        .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)));
                }
                _ => {}
            }
        }
        Some(LockRecord {
            pid: pid?,
            socket: SocketIdentity {
                dev: dev?,
                ino: ino?,
            },
            changed: changed?,
        })
    }
}

/// The socket file a server made and the lock it holds on it; removing it
/// ([`SocketFile::remove`]) removes only that file.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: SocketIdentity,
    lock: Flock<File>,
}

impl SocketFile {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket file bound.
    pub fn identity(&self) -> SocketIdentity {
        self.identity
    }

    /// Removes the socket file if the path still names it, then releases the
    /// lock: `Ok(true)` when removed.
    ///
    /// # Errors
    /// The path could not be examined or removed.
    pub fn remove(self) -> io::Result<bool> {
        let removed = self.identity.remove_if_unchanged(&self.path);
        drop(self.lock);
        removed
    }
}

/// A socket bound by [`bind`]: the listener and the file it made.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    file: SocketFile,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The socket file bound.
    pub fn identity(&self) -> SocketIdentity {
        self.file.identity
    }

    /// The listener, and the file it made (with its lock).
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (self.listener, self.file)
    }
}

/// Binds a unix socket at `path`, mode 0600: see [`bind_with`].
///
/// # Errors
/// As [`bind_with`].
pub async fn bind(path: &Path) -> Result<BoundSocket> {
    bind_with(path, SocketAccess::Owner).await
}

/// Binds a unix socket at `path` with `access`, after the checks of the
/// module docs: refuses a live one (something accepts a connection within
/// [`PROBE_TIMEOUT`], or the connection hangs), a symbolic link, anything
/// that is not a socket and a socket pleg did not make; replaces a stale
/// socket of its own. Must be called inside a tokio runtime.
///
/// # Errors
/// A [`BindError`] naming the path.
pub async fn bind_with(path: &Path, access: SocketAccess) -> Result<BoundSocket> {
    let owned = || path.to_path_buf();
    let lock_file = lock_path(path);
    let lock_error = |source: io::Error| BindError::Lock {
        path: owned(),
        lock: lock_file.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_file)
        .map_err(lock_error)?;
    if !file.metadata().map_err(lock_error)?.is_file() {
        return Err(lock_error(io::Error::other("not a regular file")));
    }
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(BindError::Locked {
                path: owned(),
                lock: lock_file,
            });
        }
        Err((_, errno)) => return Err(lock_error(errno.into())),
    };
    let mut recorded = String::new();
    lock.read_to_string(&mut recorded).map_err(lock_error)?;
    let recorded = LockRecord::parse(&recorded);

    clear_the_path(path, recorded, &lock_file).await?;

    let socket = new_socket(path)?;
    let (identity, record) = match set_access(path, access) {
        Ok(made) => made,
        Err(source) => {
            drop(socket);
            let _ = std::fs::remove_file(path);
            return Err(BindError::Permissions {
                path: owned(),
                access,
                source,
            });
        }
    };
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(record.render().as_bytes()));
    if let Err(source) = written {
        drop(socket);
        let _ = identity.remove_if_unchanged(path);
        return Err(lock_error(source));
    }
    let listener = std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(socket));
    let listener = UnixListener::from_std(listener).map_err(|source| BindError::Bind {
        path: owned(),
        source,
    })?;
    Ok(BoundSocket {
        listener,
        file: SocketFile {
            path: owned(),
            identity,
            lock,
        },
    })
}

/// Makes way for a new socket at `path`: see the module docs.
async fn clear_the_path(path: &Path, recorded: Option<LockRecord>, lock: &Path) -> Result<()> {
    let owned = || path.to_path_buf();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Inspect {
                path: owned(),
                source,
            });
        }
    };
    if meta.file_type().is_symlink() {
        return Err(BindError::Symlink { path: owned() });
    }
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket { path: owned() });
    }
    let probe = tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await;
    match probe {
        // Connected, or the connection hangs in a full backlog: someone is
        // there.
        Ok(Ok(_)) | Err(_) => Err(BindError::InUse { path: owned() }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
            Err(BindError::InUse { path: owned() })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            if recorded.is_none_or(|r| !r.names(&meta)) {
                return Err(BindError::NotOurs {
                    path: owned(),
                    lock: lock.to_path_buf(),
                });
            }
            tracing::info!(socket = %path.display(), "removing the stale socket a previous pleg left");
            std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                path: owned(),
                source,
            })
        }
        Ok(Err(source)) => Err(BindError::Inspect {
            path: owned(),
            source,
        }),
    }
}

/// A new listening socket bound at `path`, mode 0600 (or tighter, by the
/// umask) from the moment its file exists.
fn new_socket(path: &Path) -> Result<socket2::Socket> {
    let bind_error = |source: io::Error| BindError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let address = socket2::SockAddr::unix(path).map_err(bind_error)?;
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .map_err(bind_error)?;
    // The file bind makes takes the socket's own mode, less the umask.
    fchmod(&socket, Mode::from_bits_truncate(0o600)).map_err(|e| bind_error(e.into()))?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&address).map_err(bind_error)?;
    if let Err(e) = socket.listen(BACKLOG) {
        drop(socket);
        let _ = std::fs::remove_file(path);
        return Err(bind_error(e));
    }
    Ok(socket)
}

/// Gives the socket just bound at `path` its group and final mode, without
/// following a symbolic link; returns the file's identity and the record
/// for the lock file.
fn set_access(path: &Path, access: SocketAccess) -> io::Result<(SocketIdentity, LockRecord)> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(io::Error::other(
            "the path no longer names the socket bound",
        ));
    }
    let identity = SocketIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(gid) = access.group() {
        // The group first, then the mode that opens the file to it.
        nix::unistd::fchownat(
            AT_FDCWD,
            path,
            None,
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    fchmodat(
        AT_FDCWD,
        path,
        Mode::from_bits_truncate(access.mode()),
        FchmodatFlags::NoFollowSymlink,
    )?;
    let meta = std::fs::symlink_metadata(path)?;
    let record = LockRecord::of(std::process::id(), &meta);
    if record.socket != identity {
        return Err(io::Error::other(
            "the path no longer names the socket bound",
        ));
    }
    Ok((identity, record))
}

/// Who may connect to a socket, checked on each accepted connection from
/// its peer's credentials (`SO_PEERCRED`): root, the server's own user,
/// the users in `allowed_uids` and the members of `group` (their primary
/// group only: the kernel reports no supplementary groups).
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allowed_uids: Vec<u32>,
    group: Option<u32>,
    refused: Arc<AtomicU64>,
}

impl PeerPolicy {
    /// A policy that lets in root, the server's user, `allowed_uids` and
    /// `group`'s members.
    pub fn new(allowed_uids: impl IntoIterator<Item = u32>, group: Option<u32>) -> Self {
        PeerPolicy {
            allowed_uids: allowed_uids.into_iter().collect(),
            group,
            refused: Arc::default(),
        }
    }

    /// Whether a peer with these credentials may connect.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == Uid::effective().as_raw()
            || self.allowed_uids.contains(&uid)
            || self.group.is_some_and(|g| g == gid || member_of(uid, g))
    }

    /// How many connections were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether `stream`'s peer may connect; counts and logs a refusal.
    fn admit(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("refused a connection whose credentials cannot be read");
            return false;
        };
        if self.allows(cred.uid(), cred.gid()) {
            return true;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            uid = cred.uid(),
            gid = cred.gid(),
            pid = ?cred.pid(),
            "refused a connection: the peer's user is not allowed"
        );
        false
    }
}

/// Whether the user `uid` is listed as a member of group `gid`.
fn member_of(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(Some(group)) = nix::unistd::Group::from_gid(Gid::from_raw(gid)) else {
        return false;
    };
    user.gid.as_raw() == gid || group.mem.contains(&user.name)
}

/// The numeric ID of the group `name` (or a number), if it exists.
///
/// # Errors
/// The group database could not be read.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
        Ok(None) => Ok(name.parse().ok()),
        Err(e) => Err(e.into()),
    }
}

/// The connections a listener accepts, as a stream (what tonic's
/// `serve_with_incoming` takes). It never ends; an accept error is an item.
/// With a [`PeerPolicy`], connections it refuses are closed and skipped.
#[derive(Debug)]
pub struct Incoming {
    listener: UnixListener,
    policy: Option<PeerPolicy>,
}

impl Incoming {
    /// The connections `listener` accepts.
    pub fn new(listener: UnixListener) -> Self {
        Incoming {
            listener,
            policy: None,
        }
    }

    /// Only the connections `policy` lets in.
    #[must_use]
    pub fn with_policy(mut self, policy: PeerPolicy) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) => {
                    if this.policy.as_ref().is_none_or(|p| p.admit(&stream)) {
                        return Poll::Ready(Some(Ok(stream)));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Tests that change the umask hold this, so that no other test here
    /// makes a socket meanwhile.
    static UMASK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    /// A daemon that died: its listener closed, its lock released, its
    /// socket file left behind.
    fn crash(bound: BoundSocket) {
        let (listener, file) = bound.into_parts();
        drop(listener);
        drop(file);
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_as_in_use() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        let bound = bind(&path).await.expect("binds");
        let err = bind(&path).await.expect_err("in use");
        // The lock says so first.
        assert!(matches!(err, BindError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(bound);

        // A live server that is not pleg.
        let other = dir.path().join("other.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&other).expect("binds");
        let err = bind(&other).await.expect_err("in use");
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        assert!(other.exists(), "left alone");
    }

    #[tokio::test]
    async fn a_stale_socket_pleg_left_is_replaced() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        crash(bind(&path).await.expect("binds"));
        assert!(path.exists(), "a dead daemon leaves its socket file");
        let record = std::fs::read_to_string(lock_path(&path)).expect("a lock file");
        assert!(
            record.contains(&format!("pid {}", std::process::id())),
            "{record}"
        );
        let again = bind(&path).await.expect("replaces its own stale socket");
        let record =
            LockRecord::parse(&std::fs::read_to_string(lock_path(&path)).expect("a lock file"))
                .expect("a record");
        assert_eq!(record.socket, again.identity());
    }

    #[tokio::test]
    async fn a_stale_socket_pleg_did_not_make_is_refused_and_left_alone() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        // No lock file at all.
        let path = dir.path().join("foreign.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("binds"));
        let err = bind(&path).await.expect_err("not ours");
        assert!(matches!(err, BindError::NotOurs { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("remove it"), "{message}");
        assert!(path.exists(), "left alone");

        // A lock file of ours that records another socket file: ours was
        // removed and someone else's bound there since.
        let path = dir.path().join("replaced.sock");
        crash(bind(&path).await.expect("binds"));
        std::fs::remove_file(&path).expect("removed");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("binds"));
        let err = bind(&path).await.expect_err("not ours");
        assert!(matches!(err, BindError::NotOurs { .. }), "{err}");
        assert!(path.exists(), "left alone");
    }

    #[tokio::test]
    async fn a_socket_whose_lock_another_process_holds_is_in_use() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        // Our own stale socket, but its lock is held (another pleg starting).
        crash(bind(&path).await.expect("binds"));
        let lock = File::open(lock_path(&path)).expect("opens");
        let held = Flock::lock(lock, FlockArg::LockExclusiveNonblock).expect("locks");
        let err = bind(&path).await.expect_err("in use");
        assert!(matches!(err, BindError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("s.sock.lock"), "{err}");
        assert!(path.exists(), "left alone");
        drop(held);
        bind(&path).await.expect("replaced once the lock is free");
    }

    #[tokio::test]
    async fn a_symbolic_link_or_a_file_at_the_path_is_refused_and_left_alone() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        // A link to a stale socket of ours: neither followed nor removed.
        let target = dir.path().join("target.sock");
        crash(bind(&target).await.expect("binds"));
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).expect("a link");
        let err = bind(&link).await.expect_err("a link");
        assert!(matches!(err, BindError::Symlink { .. }), "{err}");
        assert!(
            err.to_string().contains(&link.display().to_string()),
            "{err}"
        );
        assert!(std::fs::symlink_metadata(&link).expect("kept").is_symlink());
        assert!(target.exists(), "the target is left alone");

        // A dangling link, and a link where the lock file goes.
        let dangling = dir.path().join("dangling.sock");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("a link");
        let err = bind(&dangling).await.expect_err("a link");
        assert!(matches!(err, BindError::Symlink { .. }), "{err}");
        assert!(
            !dir.path().join("nowhere").exists(),
            "nothing created there"
        );
        let path = dir.path().join("s.sock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), lock_path(&path)).expect("a link");
        let err = bind(&path).await.expect_err("a linked lock file");
        assert!(matches!(err, BindError::Lock { .. }), "{err}");
        assert!(
            !dir.path().join("elsewhere").exists(),
            "nothing created there"
        );

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
        assert!(matches!(bind(&missing).await, Err(BindError::Lock { .. })));
    }

    #[tokio::test]
    async fn the_mode_is_0600_or_0660_with_the_group_whatever_the_umask() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let group = group_id("daemon")
            .expect("the group database")
            .expect("a group named daemon");
        let before = nix::sys::stat::umask(Mode::empty());
        for umask in [0o000, 0o077, 0o277] {
            nix::sys::stat::umask(Mode::from_bits_truncate(umask));
            let path = dir.path().join(format!("owner-{umask:o}.sock"));
            let bound = bind(&path).await.expect("binds");
            assert_eq!(mode_of(&path), 0o600, "umask {umask:o}");
            drop(bound);

            let path = dir.path().join(format!("group-{umask:o}.sock"));
            let bound = bind_with(&path, SocketAccess::Group(group))
                .await
                .expect("binds");
            assert_eq!(mode_of(&path), 0o660, "umask {umask:o}");
            assert_eq!(
                std::fs::symlink_metadata(&path).expect("exists").gid(),
                group
            );
            drop(bound);
        }
        nix::sys::stat::umask(before);
    }

    #[tokio::test]
    async fn the_socket_file_is_0600_the_moment_bind_makes_it() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let before = nix::sys::stat::umask(Mode::empty());
        let path = dir.path().join("s.sock");
        // Before any chmod of the path: the mode set on the descriptor.
        let socket = new_socket(&path);
        nix::sys::stat::umask(before);
        let socket = socket.expect("binds");
        assert_eq!(mode_of(&path), 0o600, "with umask 000");
        drop(socket);
    }

    #[test]
    fn group_names_resolve_and_unknown_ones_do_not() {
        assert_eq!(group_id("root").expect("the group database"), Some(0));
        assert_eq!(group_id("no-such-group-pleg").expect("read"), None);
        assert_eq!(group_id("4242").expect("read"), Some(4242));
    }

    #[test]
    fn the_peer_policy_lets_in_root_our_user_the_allowed_and_the_group() {
        let policy = PeerPolicy::new([1001], Some(2000));
        assert!(policy.allows(0, 0));
        assert!(policy.allows(Uid::effective().as_raw(), 12345));
        assert!(policy.allows(1001, 12345));
        assert!(policy.allows(1002, 2000));
        assert!(!policy.allows(1002, 12345));
        assert!(!PeerPolicy::new([], None).allows(1002, 2000));
    }

    #[tokio::test]
    async fn a_socket_is_removed_only_while_the_path_names_the_file_bound() {
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        let first = bind(&path).await.expect("binds");
        let identity = first.identity();
        crash(first);
        // Moved aside (still existing, so its inode is not reused).
        std::fs::rename(&path, dir.path().join("first.sock")).expect("moved");
        // Another server replaces the stale socket at the same path.
        let second = bind(&path).await.expect("binds again");
        assert!(!identity.remove_if_unchanged(&path).expect("checked"));
        assert!(path.exists(), "the other server's socket stays");
        let (_listener, file) = second.into_parts();
        let second = file.identity();
        assert!(file.remove().expect("removed"));
        assert!(!path.exists());
        assert!(!second.remove_if_unchanged(&path).expect("gone"));
    }

    #[tokio::test]
    async fn accepted_connections_come_out_of_the_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _umask = UMASK.lock().await;
        let dir = pleg_testkit::temp::dir("unix");
        let path = dir.path().join("s.sock");
        let (listener, _file) = bind(&path).await.expect("binds").into_parts();
        let mut incoming = Incoming::new(listener).with_policy(PeerPolicy::default());
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
