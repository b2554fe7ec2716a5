//! The health port under a flood of connections that never finish their
//! request, against a daemon limited to 1,024 open files: `/livez` keeps
//! answering 200 throughout, and everything is normal once the flood ends.

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pleg::runtime::fake::FakeRuntime;
use pleg::server::{Daemon, http};
use pleg::{Config, Pleg};
use pleg_testkit::fake_cri::FakeCriServer;
use pleg_testkit::temp;
use pleg_testkit::wait::eventually_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The daemon's open-file limit.
const DAEMON_NOFILE: u64 = 1024;

/// Connections the attacker opens and never finishes.
const FLOOD: usize = 1_100;

/// How long `/livez` is polled once the flood starts.
const POLL_FOR: Duration = Duration::from_secs(20);

/// How long a test waits for the daemon to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

/// A child process killed when the test ends.
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

/// The number of files the process has open now.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_keeps_answering_while_a_flood_of_unfinished_requests_holds_connections() {
    // The attacker needs more files than the daemon may have.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let wanted = 4096.min(hard);
    assert!(
        wanted as usize > FLOOD + 100,
        "the test needs an open-file hard limit above {}",
        FLOOD + 100
    );
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).expect("raise our own RLIMIT_NOFILE");

    let runtime = FakeCriServer::start().await.expect("fake CRI server");
    let dir = temp::dir("faults-http");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_pleg"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["run", "--runtime-endpoint", &runtime.endpoint()])
        .args(["--health-addr", &addr])
        .arg("--grpc-socket")
        .arg(dir.path().join("pleg.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(|| {
            setrlimit(Resource::RLIMIT_NOFILE, DAEMON_NOFILE, DAEMON_NOFILE)
                .map_err(std::io::Error::from)
        });
    }
    let mut pleg = Running(command.spawn().expect("start pleg run"));
    let pid = pleg.0.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line")
        .to_string();
    assert!(nofile.contains(" 1024 "), "{nofile}");

    eventually_async("/livez to answer 200", WAIT, || async {
        let reply = pleg_testkit::http::get(&addr, "/livez").await.ok()?;
        (reply.status == 200).then_some(())
    })
    .await;

    // The flood: each connection sends part of a request and stops.
    let flood_addr = addr.clone();
    let flooding = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut held = Vec::with_capacity(FLOOD);
        let mut failed = 0;
        for i in 0..FLOOD {
            match TcpStream::connect(&flood_addr) {
                Ok(mut stream) => {
                    let partial = format!("GET /livez HTTP/1.1\r\nHost: flood\r\nX-Flood: {i}");
                    let _ = stream.write_all(partial.as_bytes());
                    held.push(stream);
                }
                Err(_) => failed += 1,
            }
        }
        (held, failed, started.elapsed())
    });

    // /livez from new clients, every 100 ms, during and after the flood.
    let poll_start = Instant::now();
    let (mut answered, mut refused, mut slowest, mut most_files) =
        (0, Vec::new(), Duration::ZERO, 0);
    let mut flood = None;
    let mut flooding = Some(flooding);
    while poll_start.elapsed() < POLL_FOR {
        let asked = Instant::now();
        match pleg_testkit::http::get(&addr, "/livez").await {
            Ok(reply) if reply.status == 200 => answered += 1,
            Ok(reply) => refused.push(format!(
                "{:?}: status {}",
                poll_start.elapsed(),
                reply.status
            )),
            Err(e) => refused.push(format!("{:?}: {e}", poll_start.elapsed())),
        }
        slowest = slowest.max(asked.elapsed());
        most_files = most_files.max(open_files(pid));
        if flooding.as_ref().is_some_and(|f| f.is_finished()) {
            flood = Some(flooding.take().expect("a task").await.expect("the flood"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (held, connect_failures, flood_took) = match flood {
        Some(flood) => flood,
        None => flooding.take().expect("a task").await.expect("the flood"),
    };
    let metrics = pleg_testkit::http::get(&addr, "/metrics")
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    let shed = sample(&metrics, "pleg_http_connections_shed_total").unwrap_or(-1.0);
    let open_during = sample(&metrics, "pleg_http_connections_open").unwrap_or(-1.0);
    println!(
        "flood: {} connections opened in {flood_took:?} ({connect_failures} failed to connect); \
         /livez polled {} times over {POLL_FOR:?}: {answered} answered 200, {} did not, slowest {slowest:?}; \
         the daemon had at most {most_files} files open (limit {DAEMON_NOFILE}); \
         {shed} connections shed, {open_during} open at the end of the poll",
        held.len(),
        answered + refused.len(),
        refused.len(),
    );
    assert!(refused.is_empty(), "/livez did not answer: {refused:?}");
    assert!(answered >= 50, "too few probes: {answered}");
    assert!(
        most_files < DAEMON_NOFILE as usize,
        "{most_files} files open"
    );

    // The attacker goes; everything is back to normal.
    drop(held);
    let open = eventually_async("the flood's connections to be closed", WAIT, || async {
        let metrics = pleg_testkit::http::get(&addr, "/metrics").await.ok()?.body;
        let open = sample(&metrics, "pleg_http_connections_open")?;
        // The scrape's own connection.
        (open <= 1.0).then_some(open)
    })
    .await;
    let reply = pleg_testkit::http::get(&addr, "/livez?verbose")
        .await
        .expect("/livez");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = pleg_testkit::http::get(&addr, "/healthz")
        .await
        .expect("/healthz");
    assert_eq!(reply.status, 200, "{}", reply.body);
    println!(
        "after the flood: {open} connection open, {} files open, /livez and /healthz 200",
        open_files(pid)
    );

    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = eventually_async("pleg to exit", WAIT, || {
        let status = pleg.0.try_wait().expect("wait");
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

/// The library's server over a fake runtime, under `limits`.
async fn library_server(limits: http::HttpLimits) -> (String, Daemon) {
    let pleg = Pleg::new(FakeRuntime::new(), Config::generic()).expect("valid config");
    pleg.start().expect("start");
    let daemon = Daemon::new(pleg, "unix:///fake", "");
    let listener = http::bind("127.0.0.1:0").await.expect("bind a free port");
    let addr = listener.local_addr().expect("local address").to_string();
    tokio::spawn(http::serve_with(
        daemon.clone(),
        listener,
        limits,
        std::future::pending(),
    ));
    (addr, daemon)
}

/// A connection that sent part of a request's headers.
async fn half_open(addr: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: slow\r\n")
        .await
        .expect("send");
    stream
}

/// Waits until the server closes `stream`: how long that took.
async fn closed_by_the_server(stream: &mut tokio::net::TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection is still open after {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_closed_after_the_header_timeout() {
    let (addr, daemon) = library_server(http::HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        max_connections: 16,
    })
    .await;
    let mut slow = half_open(&addr).await;
    let took = closed_by_the_server(&mut slow).await;
    println!("closed {took:?} after its partial headers (header timeout 300 ms)");
    let reply = pleg_testkit::http::get(&addr, "/livez")
        .await
        .expect("/livez");
    assert_eq!(reply.status, 200);
    eventually_async("the gauge to drop", WAIT, || {
        let open = daemon.metrics().http_connections_open.get();
        async move { (open == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_probe_closes_the_oldest_half_open_connection() {
    let (addr, daemon) = library_server(http::HttpLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections: 3,
    })
    .await;
    let mut oldest = half_open(&addr).await;
    let mut middle = half_open(&addr).await;
    let _newest = half_open(&addr).await;
    eventually_async("three connections open", WAIT, || {
        let open = daemon.metrics().http_connections_open.get();
        async move { (open == 3).then_some(()) }
    })
    .await;
    let reply = pleg_testkit::http::get(&addr, "/livez")
        .await
        .expect("/livez");
    assert_eq!(reply.status, 200);
    closed_by_the_server(&mut oldest).await;
    assert_eq!(daemon.metrics().http_connections_shed.get(), 1);
    // The flood fills the cap again; the next probe takes the next oldest.
    let _another = half_open(&addr).await;
    eventually_async("three connections open", WAIT, || {
        let open = daemon.metrics().http_connections_open.get();
        async move { (open == 3).then_some(()) }
    })
    .await;
    let reply = pleg_testkit::http::get(&addr, "/livez")
        .await
        .expect("/livez");
    assert_eq!(reply.status, 200);
    closed_by_the_server(&mut middle).await;
    assert_eq!(daemon.metrics().http_connections_shed.get(), 2);
}
