//! Who may use the daemon's gRPC socket, through the real `pleg` binary:
//! `--grpc-socket-group` (mode 0660, that group), `--grpc-allow-uid` (the
//! peer's credentials checked on every connection), and what the daemon
//! does with what it finds at the socket path.

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pleg_testkit::fake_cri::FakeCriServer;
use pleg_testkit::temp::{self, TempDir};
use pleg_testkit::wait::eventually_async;

const WAIT: Duration = Duration::from_secs(20);

/// A user with no business on the socket, and one let in by ID.
const STRANGER: u32 = 65534;
const FRIEND: u32 = 65533;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pleg() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pleg"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A directory others may enter (the temp dir is its owner's only).
fn open_dir(name: &str) -> TempDir {
    let dir = temp::dir(name);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    dir
}

fn daemon(runtime: &FakeCriServer, socket: &Path, port: u16, extra: &[&str]) -> Running {
    let child = pleg()
        .args(["run", "--runtime-endpoint", &runtime.endpoint()])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .arg("--grpc-socket")
        .arg(socket)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg run");
    Running(child)
}

async fn wait_for_socket(socket: &Path, daemon: &mut Running) {
    eventually_async("the gRPC socket", WAIT, || {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut err) = daemon.0.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            panic!("pleg exited early ({status}): {stderr}");
        }
        let exists = socket.exists();
        async move { exists.then_some(()) }
    })
    .await;
}

async fn stop(mut daemon: Running, socket: &Path) {
    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = eventually_async("pleg to exit", WAIT, || {
        let status = daemon.0.try_wait().expect("wait");
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "socket removed on exit");
}

/// `pleg pods --daemon socket` as user `uid`.
fn pods_as(uid: u32, socket: &Path) -> Output {
    pleg()
        .args(["pods", "--daemon"])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run pleg pods")
}

async fn metric(port: u16, name: &str) -> Option<f64> {
    let body = pleg_testkit::http::get(format!("127.0.0.1:{port}"), "/metrics")
        .await
        .ok()?
        .body;
    body.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0600_by_default_and_0660_with_its_group_under_any_umask() {
    let runtime = FakeCriServer::start().await.expect("fake CRI");
    let dir = open_dir("socket-access");
    let daemon_gid = 1; // `daemon` in every Debian group database.

    let socket = dir.path().join("default.sock");
    let mut running = daemon(&runtime, &socket, free_port(), &[]);
    wait_for_socket(&socket, &mut running).await;
    let meta = std::fs::symlink_metadata(&socket).expect("the socket");
    assert_eq!(meta.mode() & 0o777, 0o600);
    stop(running, &socket).await;

    // The umask the daemon runs under does not loosen or tighten it.
    for umask in ["0000", "0077"] {
        let socket = dir.path().join(format!("group-{umask}.sock"));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_pleg"))
            .args(["run", "--runtime-endpoint", &runtime.endpoint()])
            .args(["--health-addr", &format!("127.0.0.1:{}", free_port())])
            .arg("--grpc-socket")
            .arg(&socket)
            .args(["--grpc-socket-group", "daemon"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pleg run");
        let mut running = Running(child);
        wait_for_socket(&socket, &mut running).await;
        let meta = std::fs::symlink_metadata(&socket).expect("the socket");
        assert_eq!(meta.mode() & 0o777, 0o660, "umask {umask}");
        assert_eq!(meta.gid(), daemon_gid, "umask {umask}");
        stop(running, &socket).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_uid_is_let_in_and_a_stranger_is_refused_and_counted() {
    let runtime = FakeCriServer::start().await.expect("fake CRI");
    let dir = open_dir("socket-access");
    let socket = dir.path().join("pleg.sock");
    let port = free_port();
    let mut running = daemon(
        &runtime,
        &socket,
        port,
        &[
            "--grpc-allow-uid",
            &FRIEND.to_string(),
            "--log-level",
            "debug",
        ],
    );
    wait_for_socket(&socket, &mut running).await;
    let meta = std::fs::symlink_metadata(&socket).expect("the socket");
    assert_eq!(meta.mode() & 0o777, 0o666, "the peer check decides");

    let friend = pods_as(FRIEND, &socket);
    assert_eq!(
        friend.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&friend.stderr)
    );
    let stranger = pods_as(STRANGER, &socket);
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert_eq!(stranger.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
    let refused = metric(port, "pleg_grpc_connections_refused_total").await;
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
    // Root (this test) still is let in.
    let root = pods_as(0, &socket);
    assert_eq!(root.status.code(), Some(0));
    stop(running, &socket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_at_the_socket_path_is_refused_unless_a_previous_pleg_left_it() {
    let runtime = FakeCriServer::start().await.expect("fake CRI");
    let dir = temp::dir("socket-access");
    let run = |socket: &Path| {
        pleg()
            .args(["run", "--runtime-endpoint", &runtime.endpoint()])
            .args(["--health-addr", &format!("127.0.0.1:{}", free_port())])
            .arg("--grpc-socket")
            .arg(socket)
            .output()
            .expect("run pleg")
    };
    // A symbolic link: exit 4, named, left alone.
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(dir.path().join("elsewhere.sock"), &link).expect("a link");
    let out = run(&link);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(stderr.contains(&link.display().to_string()), "{stderr}");
    assert!(std::fs::symlink_metadata(&link).expect("kept").is_symlink());

    // A socket someone else left: exit 4, with what to do.
    let foreign = dir.path().join("foreign.sock");
    drop(std::os::unix::net::UnixListener::bind(&foreign).expect("bind"));
    let out = run(&foreign);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("remove it"), "{stderr}");
    assert!(foreign.exists());

    // One a pleg left when it was killed: replaced.
    let socket = dir.path().join("pleg.sock");
    let port = free_port();
    let mut first = daemon(&runtime, &socket, port, &[]);
    wait_for_socket(&socket, &mut first).await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    assert!(socket.exists(), "a killed daemon leaves its socket");
    let mut second = daemon(&runtime, &socket, free_port(), &[]);
    eventually_async("the second daemon to serve the socket", WAIT, || {
        let socket = socket.clone();
        async move { pleg_answers_on(&socket).await.then_some(()) }
    })
    .await;
    assert!(
        second.0.try_wait().expect("wait").is_none(),
        "still running"
    );
    stop(second, &socket).await;
}

async fn pleg_answers_on(socket: &Path) -> bool {
    pleg::server::grpc::Client::connect(socket).await.is_ok()
}
