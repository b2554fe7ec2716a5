//! The daemon's logs, through the real `pleg` binary: what the runtime
//! sends is escaped (no forged lines, no terminal escapes), and a stderr
//! nobody reads costs lines, counted, never the daemon's answers.

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1::PodSandboxState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pleg_testkit::fake_cri::{FakeCriServer, sandbox};
use pleg_testkit::temp;
use pleg_testkit::wait::eventually_async;

const WAIT: Duration = Duration::from_secs(30);

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn daemon(runtime: &FakeCriServer, port: u16, extra: &[&str]) -> Running {
    let dir = temp::dir("logs");
    let child = Command::new(env!("CARGO_BIN_EXE_pleg"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["run", "--runtime-endpoint", &runtime.endpoint()])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .args(["--relist-period", "100ms", "--relist-threshold", "1m"])
        .arg("--grpc-socket")
        .arg(dir.path().join("pleg.sock"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg run");
    // The directory goes with the test; the socket is removed on exit.
    std::mem::forget(dir);
    Running(child)
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

async fn sigterm_and_wait(daemon: &mut Running) -> i32 {
    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = eventually_async("pleg to exit", WAIT, || {
        let status = daemon.0.try_wait().expect("wait");
        async move { status }
    })
    .await;
    status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_strings_in_logs_are_escaped() {
    let runtime = FakeCriServer::start().await.expect("fake CRI");
    // A sandbox with no pod UID is skipped with a warning naming its ID,
    // and this ID tries to forge a log line and colour the terminal.
    runtime.put_sandbox(sandbox(
        "evil\nERROR forged line \u{1b}[31mred",
        "",
        "web",
        "shop",
        PodSandboxState::SandboxReady,
    ));
    let port = free_port();
    let mut pleg = daemon(&runtime, port, &[]);
    eventually_async("the sandbox to be skipped", WAIT, || async move {
        metric(port, "pleg_runtime_skipped_records_total")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(sigterm_and_wait(&mut pleg).await, 0);
    let mut stderr = String::new();
    pleg.0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains(r#"evil\nERROR forged line \u{1b}[31mred"#),
        "escaped: {stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("ERROR forged")),
        "a forged line: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "a terminal escape: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_drops_lines_counted_and_the_daemon_keeps_answering() {
    let runtime = FakeCriServer::start().await.expect("fake CRI");
    let port = free_port();
    // Trace level logs every frame; stderr is a pipe this test never reads,
    // so it fills up and the writer's queue after it.
    let mut pleg = daemon(&runtime, port, &["--log-level", "trace"]);
    let addr = format!("127.0.0.1:{port}");
    let dropped = eventually_async("log lines to be dropped", WAIT, || {
        let addr = addr.clone();
        async move {
            // Each request is logged too.
            let reply = pleg_testkit::http::get(&addr, "/livez").await.ok()?;
            assert_eq!(reply.status, 200, "{}", reply.body);
            metric(port, "pleg_log_lines_dropped_total")
                .await
                .filter(|n| *n > 0.0)
        }
    })
    .await;
    let reply = pleg_testkit::http::get(&addr, "/healthz")
        .await
        .expect("/healthz");
    assert_eq!(reply.status, 200, "{}", reply.body);
    println!("{dropped} log lines dropped, /livez and /healthz answering");
    // It still stops cleanly, with its stderr blocked.
    assert_eq!(sigterm_and_wait(&mut pleg).await, 0);
}
