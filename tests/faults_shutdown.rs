//! SIGTERM in the middle of the daemon's work is a clean stop too: during a
//! relist that hangs in the runtime, and during a burst of events with a
//! subscriber that does not read. Exit status 0 within 2 s, and no gRPC
//! socket left behind. The runtime is the test kit's fake CRI server.

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_cri::v1::{
    ContainerEventResponse, ContainerEventType, ContainerState as CriState, ContainerStatus,
    PodSandboxState, PodSandboxStatus,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};
use tokio::time::Instant;

/// How long a test waits for the daemon; generous. The promise (2 s) is
/// printed.
const WAIT: Duration = Duration::from_secs(20);

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(server: &FakeCriServer, socket: &Path, port: u16, mode: &str) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_pleg"))
        .args([
            "run",
            "--runtime-endpoint",
            &server.endpoint(),
            "--mode",
            mode,
        ])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .arg("--grpc-socket")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pleg run");
    Running(child)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

async fn healthy(port: u16) {
    pleg_testkit::wait::eventually_async("the daemon healthy", WAIT, || async {
        pleg_testkit::http::get(format!("127.0.0.1:{port}"), "/healthz")
            .await
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    })
    .await;
}

async fn sigterm_and_wait(child: &mut Child) -> (ExitStatus, Duration) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
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

fn put_pod(server: &FakeCriServer) {
    server.put_sandbox(sandbox(
        "s1",
        "uid-1",
        "p1",
        "default",
        PodSandboxState::SandboxReady,
    ));
    server.put_container(container("c1", "s1", "app", 0, CriState::ContainerRunning));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_relist_that_hangs_in_the_runtime_exits_0_and_removes_the_socket() {
    let server = FakeCriServer::start().await.expect("fake CRI server");
    put_pod(&server);
    let dir = pleg_testkit::temp::dir("sd-relist");
    let socket = dir.path().join("pleg.sock");
    let port = free_port();
    let mut pleg = daemon(&server, &socket, port, "generic");
    healthy(port).await;
    // The next relist hangs in ListContainers (for a minute).
    let before = server.calls("ListContainers");
    server.delay("ListContainers", Duration::from_secs(60));
    pleg_testkit::wait::eventually("a relist waiting in ListContainers", WAIT, || {
        (server.calls("ListContainers") > before).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, took) = sigterm_and_wait(&mut pleg.0).await;
    eprintln!("SIGTERM during a hanging relist: {status} after {took:?}");
    assert!(status.success(), "{status}");
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(!socket.exists(), "the socket is removed");
}

fn started(id: &str) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: id.into(),
        container_event_type: ContainerEventType::ContainerStartedEvent as i32,
        created_at: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after the epoch")
                .as_nanos(),
        )
        .expect("fits"),
        pod_sandbox_status: Some(PodSandboxStatus {
            id: "s1".into(),
            metadata: Some(k8s_cri::v1::PodSandboxMetadata {
                name: "p1".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            state: PodSandboxState::SandboxReady as i32,
            created_at: 1,
            ..PodSandboxStatus::default()
        }),
        containers_statuses: vec![ContainerStatus {
            id: id.into(),
            metadata: Some(k8s_cri::v1::ContainerMetadata {
                name: id.into(),
                attempt: 0,
            }),
            state: CriState::ContainerRunning as i32,
            ..ContainerStatus::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_with_a_subscriber_that_does_not_read_exits_0() {
    let server = FakeCriServer::start().await.expect("fake CRI server");
    put_pod(&server);
    let dir = pleg_testkit::temp::dir("sd-burst");
    let socket = dir.path().join("pleg.sock");
    let port = free_port();
    let mut pleg = daemon(&server, &socket, port, "evented");
    healthy(port).await;
    // A subscriber that never reads.
    let mut client = pleg::server::grpc::Client::connect(&socket)
        .await
        .expect("connect");
    let _stalled = client
        .watch(&pleg::Filter::all(), 1000)
        .await
        .expect("watch");
    // A burst: 5,000 containers start, and SIGTERM lands in the middle.
    for i in 0..5_000 {
        server.push_event(started(&format!("burst-{i}")));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, took) = sigterm_and_wait(&mut pleg.0).await;
    eprintln!("SIGTERM during a burst of 5,000 events: {status} after {took:?}");
    assert!(status.success(), "{status}");
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(!socket.exists(), "the socket is removed");
}
