//! SIGTERM at any moment of the daemon's life, start-up included, is a
//! clean stop: exit status 0 within 2 s, and no gRPC socket left behind.
//! The runtime here is a unix socket that accepts connections and never
//! answers, so the start-up hangs asking its version.

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pleg_testkit::temp::{self, TempDir};

/// How long a test waits for the daemon to get somewhere; generous, since
/// the machine may be busy. The promise itself (2 s) is printed.
const WAIT: Duration = Duration::from_secs(10);

/// A runtime endpoint that accepts every connection and never answers.
struct SilentRuntime {
    path: PathBuf,
}

impl SilentRuntime {
    fn start(dir: &TempDir) -> SilentRuntime {
        let path = dir.path().join("silent-runtime.sock");
        let listener = UnixListener::bind(&path).expect("bind the silent runtime");
        std::thread::spawn(move || {
            // Held, never read or written.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => held.push(stream),
                    Err(_) => break,
                }
            }
        });
        SilentRuntime { path }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

/// A child process killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(runtime: &SilentRuntime, socket: &Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_pleg"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["run", "--runtime-endpoint", &runtime.endpoint()])
        .args(["--health-addr", "127.0.0.1:0"])
        .args(["--runtime-request-timeout", "5m"])
        .arg("--grpc-socket")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg run");
    Running(child)
}

fn sigterm(child: &Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
}

/// Waits for the process to exit: its status and how long it took.
async fn wait_for_exit(child: &mut Child) -> (ExitStatus, Duration) {
    let sent = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, sent.elapsed());
        }
        assert!(
            sent.elapsed() < WAIT,
            "pleg still running {WAIT:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

async fn wait_for_socket(socket: &Path, child: &mut Child) {
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("pleg exited early ({status}): {}", stderr_of(child));
        }
        assert!(start.elapsed() < WAIT, "no gRPC socket after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sigterm_during_startup_exits_0_and_removes_the_socket() {
    let dir = temp::dir("faults-signals");
    let runtime = SilentRuntime::start(&dir);
    let socket = dir.path().join("pleg.sock");
    let mut pleg = daemon(&runtime, &socket);
    wait_for_socket(&socket, &mut pleg.0).await;
    // The socket is bound and the runtime's version asked: the start-up
    // now hangs on the silent runtime.
    sigterm(&pleg.0);
    let (status, took) = wait_for_exit(&mut pleg.0).await;
    println!("exited {status} {took:?} after SIGTERM (promised: 0 within 2 s)");
    let stderr = stderr_of(&mut pleg.0);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!socket.exists(), "the socket is left behind: {stderr}");
    assert!(
        stderr.contains("signal during start-up"),
        "the signal came during the start-up: {stderr}"
    );
}

#[tokio::test]
async fn sigterm_right_after_spawn_exits_0_and_leaves_no_socket() {
    let dir = temp::dir("faults-signals");
    let runtime = SilentRuntime::start(&dir);
    let socket = dir.path().join("pleg.sock");
    let mut pleg = daemon(&runtime, &socket);
    tokio::time::sleep(Duration::from_millis(50)).await;
    sigterm(&pleg.0);
    let (status, took) = wait_for_exit(&mut pleg.0).await;
    println!("exited {status} {took:?} after SIGTERM sent 50 ms after spawn");
    let stderr = stderr_of(&mut pleg.0);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!socket.exists(), "the socket is left behind: {stderr}");
}

#[tokio::test]
async fn sigterm_at_any_moment_of_the_startup_exits_0_and_removes_the_socket() {
    let dir = temp::dir("faults-signals");
    let runtime = SilentRuntime::start(&dir);
    for delay_ms in [75, 100, 150, 250, 400, 700, 1_000, 1_500, 2_500] {
        let socket = dir.path().join(format!("pleg-{delay_ms}.sock"));
        let mut pleg = daemon(&runtime, &socket);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        sigterm(&pleg.0);
        let (status, took) = wait_for_exit(&mut pleg.0).await;
        println!("SIGTERM {delay_ms} ms after spawn: exited {status} {took:?} later");
        let stderr = stderr_of(&mut pleg.0);
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM after {delay_ms} ms: {stderr}"
        );
        assert!(
            !socket.exists(),
            "SIGTERM after {delay_ms} ms: the socket is left behind: {stderr}"
        );
    }
}
