//! The gRPC API under hostile clients: clients that vanish mid-stream,
//! thousands of streams that never read, a slow subscriber in a flood. The
//! daemon is the library's server over the scripted runtime, in this
//! process, relisted by hand (so a flood of 100,000 events takes seconds,
//! not the minutes of status calls a fake CRI server would need); its
//! memory is this process's VmRSS, which also counts the scripted runtime's
//! pods and the test's clients, so the figures are upper bounds. Each test
//! prints its figures (`cargo test --test faults_grpc -- --nocapture`).

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pleg::model::{Container, ContainerState, Pod, PodMeta};
use pleg::runtime::fake::FakeRuntime;
use pleg::server::Daemon;
use pleg::server::grpc::{self, Client, ClientError, Limits};
use pleg::{Config, Delivery, Filter, Pleg};
use pleg_testkit::temp::TempDir;
use tokio::task::JoinHandle;

/// The DaemonSet's memory limit (deploy/daemonset.yaml).
const MEMORY_LIMIT_KIB: u64 = 128 * 1024;

/// Held by every test that measures VmRSS, so that none measures another's
/// allocations (the tests of one file share a process).
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bounds every wait: a broken server fails the test instead of hanging it.
async fn within<T>(what: &str, seconds: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// This process's resident set, in KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// A daemon over the scripted runtime, relisting only, never started.
fn daemon() -> (Arc<FakeRuntime>, Daemon) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    (runtime.clone(), Daemon::new(pleg, "fake", ""))
}

/// `pods` pods of `per_pod` running containers each, named for `round`:
/// a new round replaces every container (the old ones die and go).
fn pods(count: usize, per_pod: usize, round: usize) -> Vec<Pod> {
    (0..count)
        .map(|p| {
            let uid = format!("pod-{p:05}");
            let meta = PodMeta::new(uid.as_str(), uid.as_str(), format!("ns-{}", p % 16));
            (0..per_pod).fold(
                Pod::new(meta).with_sandbox(Container::new(
                    format!("sb-{p:05}"),
                    uid.as_str(),
                    ContainerState::Running,
                )),
                |pod, c| {
                    pod.with_container(Container::new(
                        format!("ctr-{p:05}-{c:02}-r{round}"),
                        format!("app-{c:02}"),
                        ContainerState::Running,
                    ))
                },
            )
        })
        .collect()
}

/// The `pleg_subscribers` gauge, as `/metrics` shows it.
fn subscribers_gauge(daemon: &Daemon) -> f64 {
    pleg::server::http::render_metrics(daemon)
        .lines()
        .find_map(|l| l.strip_prefix("pleg_subscribers "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a pleg_subscribers sample")
}

/// Waits until the gauge shows `n` subscribers.
async fn gauge_is(daemon: &Daemon, n: usize) {
    within(&format!("pleg_subscribers {n}"), 20, async {
        while subscribers_gauge(daemon) != n as f64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(daemon.pleg.hub().subscriber_count(), n);
}

/// A running `serve_bound_with`, stopped by `stop`.
struct Server {
    socket: PathBuf,
    _dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), grpc::ServeError>>,
}

impl Server {
    async fn start(daemon: &Daemon, limits: Limits) -> Server {
        let dir = pleg_testkit::temp::dir("grpc-faults");
        let socket = dir.path().join("pleg.sock");
        let bound = grpc::bind(&socket).await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let daemon = daemon.clone();
            async move {
                grpc::serve_bound_with(daemon, bound, None, limits, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Server {
            socket,
            _dir: dir,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> Client {
        within("connecting", 20, Client::connect(&self.socket))
            .await
            .expect("a pleg daemon")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("serve to return", 20, &mut self.task)
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
    }
}

/// One raw HTTP/2 connection that opens `Watch` streams and never reads
/// them: its stream window is 1 KiB, which it never gives back, so the
/// daemon can send each stream almost nothing.
struct RawConnection {
    send: h2::client::SendRequest<Bytes>,
    task: JoinHandle<()>,
    /// The accepted streams, never polled.
    open: Vec<h2::RecvStream>,
}

/// What became of a raw `Watch`.
#[derive(Debug, PartialEq, Eq)]
enum RawWatch {
    Accepted,
    Refused {
        grpc_status: String,
        message: String,
    },
}

impl RawConnection {
    async fn connect(socket: &Path) -> RawConnection {
        let io = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect");
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, Bytes>(io)
            .await
            .expect("HTTP/2 handshake");
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        RawConnection {
            send,
            task,
            open: Vec::new(),
        }
    }

    /// Opens a `Watch` with `capacity` (0: the default), never reading it.
    async fn watch(&mut self, capacity: u32) -> RawWatch {
        self.watch_with(grpc::pb::WatchRequest {
            capacity,
            ..Default::default()
        })
        .await
    }

    /// Opens this `Watch`, never reading it.
    async fn watch_with(&mut self, request: grpc::pb::WatchRequest) -> RawWatch {
        let message = prost::Message::encode_to_vec(&request);
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let http_request = http::Request::builder()
            .method("POST")
            .uri("http://pleg/pleg.v1.Pleg/Watch")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let mut send = self.send.clone().ready().await.expect("stream slot");
        let (response, mut body) = send
            .send_request(http_request, false)
            .expect("send request");
        body.send_data(Bytes::from(frame), true).expect("send body");
        let response = within("Watch headers", 20, response)
            .await
            .expect("a response");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match header("grpc-status") {
            // Trailers-only: refused.
            Some(grpc_status) => RawWatch::Refused {
                grpc_status,
                message: header("grpc-message").unwrap_or_default(),
            },
            None => {
                self.open.push(response.into_body());
                RawWatch::Accepted
            }
        }
    }

    /// Drops the connection without cancelling its streams: the socket just
    /// closes, as when a client process dies.
    fn vanish(self) {
        self.task.abort();
        drop(self.open);
        drop(self.send);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_stream_frees_its_slot_and_the_subscriber_gauge_falls() {
    let (runtime, daemon) = daemon();
    runtime.set_pods(pods(2, 1, 0));
    daemon.pleg.relist().await.expect("relist");
    let server = Server::start(&daemon, Limits::default().with_max_watches(1)).await;
    gauge_is(&daemon, 0).await;

    // A `pleg watch --daemon` process, killed with SIGKILL mid-stream: no
    // RST_STREAM, no GOAWAY, just a closed socket.
    let mut watch: Child = Command::new(env!("CARGO_BIN_EXE_pleg"))
        .env_clear()
        .args(["watch", "--output", "json", "--daemon"])
        .arg(&server.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pleg watch");
    gauge_is(&daemon, 1).await;
    let mut client = server.client().await;
    let err = within("Watch", 20, client.watch(&Filter::default(), 0))
        .await
        .expect_err("the only slot is taken");
    assert!(
        matches!(
            &err,
            ClientError::Rpc {
                code: tonic::Code::ResourceExhausted,
                ..
            }
        ),
        "{err}"
    );
    // Mid-stream: it has events in flight when it dies.
    runtime.set_pods(pods(2, 1, 1));
    daemon.pleg.relist().await.expect("relist");
    watch.kill().expect("SIGKILL");
    let _ = watch.wait();
    gauge_is(&daemon, 0).await;
    let stream = within("Watch", 20, client.watch(&Filter::default(), 0))
        .await
        .expect("the slot is free again");
    gauge_is(&daemon, 1).await;
    drop(stream);
    gauge_is(&daemon, 0).await;

    // The same with a raw HTTP/2 connection dropped under its stream.
    let mut raw = RawConnection::connect(&server.socket).await;
    assert_eq!(raw.watch(0).await, RawWatch::Accepted);
    gauge_is(&daemon, 1).await;
    raw.vanish();
    gauge_is(&daemon, 0).await;
    let again = within("Watch", 20, client.watch(&Filter::default(), 0))
        .await
        .expect("the slot is free again");
    drop(again);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_streams_that_never_read_hit_the_watch_limit_and_the_daemon_keeps_answering_in_bounded_memory()
 {
    const STREAMS: usize = 2000;
    const PER_CONNECTION: usize = 100;
    let _measuring = MEASURING.lock().await;
    let (runtime, daemon) = daemon();
    runtime.set_pods(pods(500, 4, 0));
    daemon.pleg.relist().await.expect("relist");
    let limits = Limits::default();
    let server = Server::start(&daemon, limits).await;
    let mut client = server.client().await;
    let rss_before = vm_rss_kib();

    let mut connections = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..STREAMS / PER_CONNECTION {
        let mut connection = RawConnection::connect(&server.socket).await;
        for _ in 0..PER_CONNECTION {
            match connection.watch(0).await {
                RawWatch::Accepted => accepted += 1,
                RawWatch::Refused {
                    grpc_status,
                    message,
                } => {
                    assert_eq!(grpc_status, "8", "RESOURCE_EXHAUSTED: {message}");
                    assert!(message.contains("grpc-max-watches"), "{message}");
                    refused += 1;
                }
            }
        }
        connections.push(connection);
    }
    assert_eq!(accepted, limits.max_watches, "the limit holds");
    assert_eq!(refused, STREAMS - limits.max_watches);
    gauge_is(&daemon, limits.max_watches).await;

    // A burst while nobody reads: 500 pods x 4 containers replaced, three
    // times (each round 2,000 started, 2,000 died, 2,000 removed).
    let mut published = daemon.pleg.hub().published();
    for round in 1..=3 {
        runtime.set_pods(pods(500, 4, round));
        daemon.pleg.relist().await.expect("relist");
        // The daemon keeps answering.
        let health = within("Health", 20, client.health()).await.expect("Health");
        assert!(health.healthy, "{health:?}");
        let listed = within("ListPods", 20, client.list_pods(None))
            .await
            .expect("ListPods");
        assert_eq!(listed.len(), 500);
    }
    published = daemon.pleg.hub().published() - published;
    assert_eq!(published, 3 * 6000);
    assert!(daemon.pleg.hub().discarded() > 0, "the queues overflowed");
    let rss_after = vm_rss_kib();
    println!(
        "{STREAMS} never-reading streams ({accepted} accepted, {refused} refused), {published} events: \
         VmRSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        rss_after < MEMORY_LIMIT_KIB,
        "VmRSS {rss_after} KiB is over 128 MiB"
    );

    for connection in connections {
        connection.vanish();
    }
    gauge_is(&daemon, 0).await;
    let stream = within("Watch", 20, client.watch(&Filter::default(), 0))
        .await
        .expect("slots free again");
    drop(stream);
    server.stop().await;
}

/// Reads a `Watch` stream in a task: counts its events, fails on a Resync.
fn count_every_event(mut stream: grpc::WatchStream) -> (Arc<AtomicU64>, JoinHandle<()>) {
    let count = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn({
        let count = count.clone();
        async move {
            while let Some(item) = stream.next().await {
                match item.expect("a readable delivery") {
                    Delivery::Event(_) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("a subscriber that keeps up got {other:?}"),
                }
            }
        }
    });
    (count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_in_a_burst_of_100000_events_misses_exactly_what_the_others_get() {
    const PODS: usize = 1000;
    const PER_POD: usize = 10;
    let _measuring = MEASURING.lock().await;
    let (runtime, daemon) = daemon();
    // Two queues of the largest capacity and a default one.
    let limits = Limits::default()
        .with_max_capacity(grpc::MAX_CAPACITY)
        .with_max_queued_events(2 * grpc::MAX_CAPACITY + 1000);
    let server = Server::start(&daemon, limits).await;
    let mut fast_client = server.client().await;
    let mut slow_client = server.client().await;
    let (fast_a, task_a) = count_every_event(
        within(
            "Watch",
            20,
            fast_client.watch(&Filter::default(), grpc::MAX_CAPACITY),
        )
        .await
        .expect("fast watch"),
    );
    let (fast_b, task_b) = count_every_event(
        within(
            "Watch",
            20,
            fast_client.watch(&Filter::default(), grpc::MAX_CAPACITY),
        )
        .await
        .expect("fast watch"),
    );
    // The default capacity, 1000, and nobody reads it until the end.
    let mut slow = within("Watch", 20, slow_client.watch(&Filter::default(), 0))
        .await
        .expect("slow watch");
    gauge_is(&daemon, 3).await;
    let rss_before = vm_rss_kib();

    // Round 0: 1,000 sandboxes and 10,000 containers start (11,000 events);
    // rounds 1-3: every container is replaced (10,000 started, 10,000 died,
    // 10,000 removed: 30,000 events each). 101,000 events in all.
    let mut expected = 0u64;
    for round in 0..4 {
        runtime.set_pods(pods(PODS, PER_POD, round));
        daemon.pleg.relist().await.expect("relist");
        expected += if round == 0 { 11_000 } else { 30_000 };
        within(
            &format!("the fast subscribers to get round {round}"),
            120,
            async {
                while fast_a.load(Ordering::Relaxed) < expected
                    || fast_b.load(Ordering::Relaxed) < expected
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    }
    assert_eq!(daemon.pleg.hub().published(), expected);
    assert_eq!(expected, 101_000);
    let rss_burst = vm_rss_kib();
    // Exact counts: a last event marks the end.
    let mut last = pods(PODS, PER_POD, 3);
    last[0] =
        last[0]
            .clone()
            .with_container(Container::new("marker", "marker", ContainerState::Running));
    runtime.set_pods(last);
    daemon.pleg.relist().await.expect("relist");
    expected += 1;
    within("the marker", 20, async {
        while fast_a.load(Ordering::Relaxed) < expected || fast_b.load(Ordering::Relaxed) < expected
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(fast_a.load(Ordering::Relaxed), expected, "every event once");
    assert_eq!(fast_b.load(Ordering::Relaxed), expected, "every event once");

    // The slow one reads now: what it could take, and Resyncs for the rest.
    let (mut events, mut missed, mut resyncs) = (0u64, 0u64, 0u64);
    within("the slow subscriber's deliveries", 120, async {
        while events + missed < expected {
            match slow.next().await.expect("stream open").expect("readable") {
                Delivery::Event(_) => events += 1,
                Delivery::Resync { missed: m, .. } => {
                    missed += m;
                    resyncs += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        events + missed,
        expected,
        "every event delivered or counted"
    );
    assert!(resyncs >= 1 && missed > 0, "it was told it lagged");
    assert_eq!(
        missed,
        daemon.pleg.hub().discarded(),
        "the daemon counted the same"
    );
    println!(
        "burst of {expected} events: fast subscribers got {expected} each; the slow one got \
         {events} and {resyncs} Resync(s) with {missed} missed. VmRSS {rss_before} KiB before, \
         {rss_burst} KiB after the burst"
    );
    assert!(rss_burst < MEMORY_LIMIT_KIB, "VmRSS {rss_burst} KiB");

    drop((slow, fast_client, slow_client));
    server.stop().await;
    within("the readers to end", 20, async {
        let _ = task_a.await;
        let _ = task_b.await;
    })
    .await;
}

/// A `pleg run` process, killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's resident set, in KiB.
fn vm_rss_kib_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// A size in `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// One sample of the daemon's `/metrics`.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let reply = pleg_testkit::http::get(format!("127.0.0.1:{port}"), "/metrics")
        .await
        .ok()?;
    reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the daemon has published `target` events.
async fn published_reaches(port: u16, target: f64) {
    within(&format!("{target} events published"), 900, async {
        while metric(port, "pleg_events_published_total")
            .await
            .unwrap_or(0.0)
            < target
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
}

/// The measurement behind the default limits (the README's operator's
/// guide has its figures). It takes minutes, most of them in the fake CRI
/// server's 62,500 status calls of the first relist, so it is run by hand,
/// against a release build:
///
/// ```text
/// cargo build --release --bin pleg
/// PLEG_BIN=target/release/pleg cargo test --test faults_grpc measure -- --ignored --nocapture
/// ```
///
/// `PLEG_MEASURE_WATCHES=0` gives the baseline without subscribers,
/// `PLEG_MEASURE_PODS=N` another node size, and `MALLOC_*` variables reach
/// the daemon (glibc's tuning, which `src/malloc.rs` otherwise sets).
/// Figures (the README's operator's guide has the table): peak VmRSS
/// 141-145 MiB at 50,000 containers with 32 watches or none, 107 MiB at
/// 40,000.
///
/// The worst case, every queued event distinct (each queue filtering pods
/// no other queue sees), is the budget times the cost of one event, which
/// `a_queued_event_costs_a_queue_slot_and_one_shared_event` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of several minutes, run by hand (see its doc comment)"]
async fn measure_the_rss_of_pleg_run_with_50000_containers_and_every_watch_queue_full() {
    use k8s_cri::v1::{ContainerState as CriState, PodSandboxState};
    use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};
    // 12,500 pods of 4 containers, in 16 namespaces
    // (`PLEG_MEASURE_PODS=N`: N pods, at least 2,000).
    let pods: usize = std::env::var("PLEG_MEASURE_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12_500)
        .max(2_000);
    const PER_POD: usize = 4;
    const EXITS: usize = 2_000;
    let _measuring = MEASURING.lock().await;
    let server = FakeCriServer::start().await.expect("fake CRI server");
    for p in 0..pods {
        let sb = format!("sb-{p:05}");
        server.put_sandbox(sandbox(
            &sb,
            &format!("uid-{p:05}"),
            &format!("pod-{p:05}"),
            &format!("ns-{}", p % 16),
            PodSandboxState::SandboxReady,
        ));
        for c in 0..PER_POD {
            server.put_container(container(
                &format!("ctr-{p:05}-{c}"),
                &sb,
                &format!("app-{c}"),
                0,
                CriState::ContainerRunning,
            ));
        }
    }
    let dir = pleg_testkit::temp::dir("grpc-measure");
    let socket = dir.path().join("pleg.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let binary = std::env::var_os("PLEG_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pleg")), PathBuf::from);
    let daemon = Running(
        Command::new(&binary)
            .env_clear()
            // PLEG_REPLAY_EVENTS=N: a replay ring of N items (0: none), to
            // weigh the ring against the default's 10,000.
            .envs(
                std::env::vars()
                    .filter(|(k, _)| k.starts_with("MALLOC_") || k == "PLEG_REPLAY_EVENTS"),
            )
            .args(["run", "--runtime-endpoint", &server.endpoint()])
            .args([
                "--mode",
                "generic",
                "--relist-period",
                "1s",
                "--relist-threshold",
                "10m",
            ])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pleg run"),
    );
    let pid = daemon.0.id();
    let limits = Limits::default();
    // Every sandbox and container starts.
    let mut published = (pods * (PER_POD + 1)) as f64;
    published_reaches(port, published).await;
    let rss_cached = vm_rss_kib_of(pid);
    let peak_cached = proc_status_kib(pid, "VmHWM:");

    // Every slot taken at the default capacity; 2,000 exits fill every
    // queue (1,000 each, the same events) and overflow it.
    // PLEG_MEASURE_WATCHES=N: N watches instead of the limit (0: the
    // baseline the others compare with).
    let watches = std::env::var("PLEG_MEASURE_WATCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(limits.max_watches);
    let mut connections = Vec::new();
    for _ in 0..watches.div_ceil(32) {
        connections.push(RawConnection::connect(&socket).await);
    }
    for n in 0..watches {
        assert_eq!(connections[n / 32].watch(0).await, RawWatch::Accepted);
    }
    for p in 0..EXITS {
        server.exit_container(&format!("ctr-{p:05}-0"), 0);
    }
    published += EXITS as f64;
    published_reaches(port, published).await;
    let rss_full = vm_rss_kib_of(pid);
    let discarded = metric(port, "pleg_discard_events").await;
    let mut client = within("connecting", 20, Client::connect(&socket))
        .await
        .expect("a pleg daemon");
    let listed = within("ListPods", 60, client.list_pods(None))
        .await
        .expect("ListPods");
    assert_eq!(listed.len(), pods);
    let rss_listed = vm_rss_kib_of(pid);
    let peak = proc_status_kib(pid, "VmHWM:");
    println!(
        "pleg run ({}), {} containers in {pods} pods: VmRSS {rss_cached} KiB cached (peak so far {peak_cached} KiB); \
         {rss_full} KiB with {watches} watches of capacity 1000 full ({discarded:?} events discarded); \
         {rss_listed} KiB after a paged ListPods of every pod; peak (VmHWM) {peak} KiB",
        binary.display(),
        pods * PER_POD,
    );
    // No bound is asserted: what this measures is dominated by the
    // relisting of 50,000 containers, which the gRPC limits do not govern
    // (the README gives the figures with 0, 32 and 128 watches).
    for connection in connections {
        connection.vanish();
    }
}
