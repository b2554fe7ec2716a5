//! The real `pleg` binary as a subprocess, against the fake CRI server: the
//! daemon's health probe, metrics, gRPC API and shutdown; `pleg watch` and
//! `pleg pods`; and the errors people will hit, with their exit codes.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1::{ContainerState as CriState, PodSandboxState};
use pleg::server::grpc::Client;
use pleg::{Delivery, EventType, Filter};
use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};
use pleg_testkit::temp::{self, TempDir};
use pleg_testkit::wait::eventually_async;

fn pleg() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pleg"));
    // Only what the test gives: no PLEG_* from the environment.
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

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

/// How long a test waits for the daemon to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

/// `GET path` from the daemon's health port: (status, body), or `None`
/// while nothing answers there.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let reply = pleg_testkit::http::get(format!("127.0.0.1:{port}"), path)
        .await
        .ok()?;
    Some((reply.status, reply.body))
}

async fn fake_runtime() -> FakeCriServer {
    let server = FakeCriServer::start().await.expect("fake CRI server");
    for (sb, uid, name, ns) in [
        ("sb1", "uid-1", "web", "shop"),
        ("sb2", "uid-2", "db", "infra"),
    ] {
        server.put_sandbox(sandbox(sb, uid, name, ns, PodSandboxState::SandboxReady));
        server.put_container(container(
            &format!("{sb}-app"),
            sb,
            "app",
            0,
            CriState::ContainerRunning,
        ));
    }
    server
}

/// `pleg pods --output json <args>`, which must succeed.
fn pods_json(args: &[&str]) -> serde_json::Value {
    let out = pleg()
        .args(["pods", "--output", "json"])
        .args(args)
        .output()
        .expect("run pods");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `pleg run` against the fake, relisting every 100 ms with a 1 s threshold.
fn daemon(server: &FakeCriServer, dir: &TempDir, port: u16, extra: &[&str]) -> Running {
    let child = pleg()
        .args(["run", "--runtime-endpoint", &server.endpoint()])
        .args(["--relist-period", "100ms", "--relist-threshold", "1s"])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .arg("--grpc-socket")
        .arg(dir.path().join("pleg.sock"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg run");
    Running(child)
}

#[test]
fn bad_flags_exit_2_naming_the_offending_value() {
    for (args, expected) in [
        (vec!["run", "--relist-period", "5"], "missing unit"),
        (vec!["run", "--relist-threshold", "soon"], "soon"),
        (vec!["run", "--frobnicate"], "--frobnicate"),
        (vec!["run", "--mode", "fast"], "fast"),
        (
            vec!["run", "--runtime-endpoint", "tcp://10.0.0.1:1"],
            "scheme tcp:// is not supported",
        ),
        (vec!["run", "--log-format", "xml"], "xml"),
        (vec!["watch", "--output", "yaml"], "yaml"),
        (vec!["watch", "--type", "Exploded"], "unknown event type"),
        (vec!["launch"], "launch"),
        (
            vec![
                "run",
                "--grpc-socket-group",
                "no-such-group-pleg",
                "--check-config",
            ],
            "--grpc-socket-group \"no-such-group-pleg\": no such group",
        ),
        (vec!["run", "--http-max-connections", "0"], "at least 1"),
        (
            vec!["run", "--replay-events", "2000000", "--check-config"],
            "replay_events 2000000 is more than the 1000000 allowed (--replay-events)",
        ),
        (vec!["run", "--replay-events", "-1"], "-1"),
        (vec!["watch", "--since", "12"], "expected EPOCH:SEQ"),
        (vec!["run", "--http-header-timeout", "10"], "missing unit"),
        (vec!["run", "--grpc-allow-uid", "bob"], "bob"),
        // Ranges, checked by --check-config exactly as by run.
        (
            vec![
                "run",
                "--relist-period",
                "3000000000000000h",
                "--check-config",
            ],
            "--relist-period 3000000000000000h0m0s: out of range; it must be between 100ms and 1h0m0s",
        ),
        (
            vec!["run", "--relist-period", "50ms", "--check-config"],
            "--relist-period 50ms: out of range",
        ),
        (
            vec!["run", "--relist-threshold", "48h", "--check-config"],
            "--relist-threshold 48h0m0s: out of range",
        ),
        (
            vec![
                "run",
                "--relist-period",
                "5s",
                "--relist-threshold",
                "5s",
                "--check-config",
            ],
            "--relist-threshold 5s must be longer than --relist-period 5s",
        ),
        (
            vec!["run", "--runtime-request-timeout", "5h", "--check-config"],
            "--runtime-request-timeout 5h0m0s: out of range",
        ),
        (
            vec!["watch", "--relist-period", "2h"],
            "--relist-period 2h0m0s: out of range",
        ),
        (
            vec!["watch", "--selector", "app in (web"],
            "label selector \"app in (web\": expected ',' or ')' after a value, found the end at column 12",
        ),
        (
            vec!["watch", "--namespace-regex", "prod-("],
            "unclosed group",
        ),
        (
            vec!["run", "--grpc-max-watches", "0", "--check-config"],
            "--grpc-max-watches must be at least 1",
        ),
        (
            vec!["run", "--grpc-max-capacity", "100000", "--check-config"],
            "--grpc-max-capacity 100000 is above",
        ),
        (
            vec!["run", "--grpc-max-queued-events", "10", "--check-config"],
            "--grpc-max-queued-events 10 is below the default Watch capacity",
        ),
    ] {
        let out = pleg().args(&args).output().expect("run pleg");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // The environment variables are checked the same way.
    let out = pleg()
        .args(["run", "--check-config"])
        .env("PLEG_RELIST_PERIOD", "fast")
        .output()
        .expect("run pleg");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fast"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_port_in_use_exits_3_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let server = fake_runtime().await;
    let dir = temp::dir("cli-inuse");
    let out = pleg()
        .args(["run", "--runtime-endpoint", &server.endpoint()])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .arg("--grpc-socket")
        .arg(dir.path().join("pleg.sock"))
        .output()
        .expect("run pleg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("pleg.sock").exists(),
        "no socket left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_health_turns_503_with_the_reason_when_the_runtime_stalls_then_200_again() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-health");
    let port = free_port();
    let _daemon = daemon(&server, &dir, port, &["--mode", "generic"]);
    eventually_async("healthz 200", WAIT, || async move {
        get(port, "/healthz")
            .await
            .filter(|(s, b)| *s == 200 && b == "ok")
    })
    .await;

    server.fail(
        "ListContainers",
        tonic::Status::unavailable("runtime is wedged"),
        None,
    );
    let (_, body) = eventually_async("healthz 503", WAIT, || async move {
        get(port, "/healthz")
            .await
            .filter(|(s, b)| *s == 503 && b.contains("[-]pleg failed"))
    })
    .await;
    assert!(
        body.contains("[-]pleg failed: pleg was last seen active ")
            && body.contains("; threshold is 1s"),
        "{body}"
    );
    assert!(
        body.contains("[-]runtime failed:") && body.contains("runtime is wedged"),
        "{body}"
    );
    let (status, verbose) = get(port, "/healthz?verbose").await.expect("verbose");
    assert_eq!(status, 503);
    assert!(
        verbose.contains("[+]stream ok") || verbose.contains("[+]stream"),
        "{verbose}"
    );
    // Liveness does not depend on the runtime.
    assert_eq!(get(port, "/livez").await.map(|(s, _)| s), Some(200));
    assert_eq!(get(port, "/readyz").await.map(|(s, _)| s), Some(503));

    server.clear_faults();
    eventually_async("healthz 200 again", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
}

/// `name{labels} value` lines of a scrape, by family name.
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let family = series.split('{').next()?;
            if family != name {
                return None;
            }
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The next item of a stream, or `None` if none came in time.
async fn next_item<S: futures_core::Stream + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Option<S::Item>> {
    tokio::time::timeout(
        within,
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)),
    )
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_kubelet_names_and_their_values_move() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-metrics");
    let port = free_port();
    let _daemon = daemon(&server, &dir, port, &[]);
    // Scraped once the stream is open and caught up, so that the exit below
    // comes over the stream rather than by the first relist.
    let first = eventually_async("metrics, with the stream open", WAIT, || async move {
        get(port, "/metrics").await.filter(|(s, b)| {
            *s == 200
                && b.contains("pleg_relist_duration_seconds")
                && b.contains("pleg_stream_state{state=\"streaming\"} 1")
        })
    })
    .await
    .1;
    for name in [
        "pleg_relist_duration_seconds",
        "pleg_relist_interval_seconds",
        "pleg_last_seen_seconds",
        "pleg_discard_events",
        "evented_pleg_connection_success_count",
        "evented_pleg_connection_error_count",
        "evented_pleg_connection_latency_seconds",
        "running_pods",
        "running_containers",
        "pleg_events_total",
        "pleg_cri_requests_total",
        "pleg_subscribers",
        "pleg_mode",
    ] {
        assert!(
            first
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} missing"
        );
    }
    for line in first
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit_once(' ').map(|(_, v)| v).unwrap_or("");
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "not a sample: {line}"
        );
    }
    let value =
        |text: &str, name: &str| samples(text, name).first().map(|(_, v)| *v).unwrap_or(0.0);
    let started = |text: &str| -> f64 {
        samples(text, "pleg_events_total")
            .iter()
            .filter(|(s, _)| s.contains("type=\"ContainerStarted\""))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(started(&first) <= 4.0);
    server.exit_container("sb1-app", 1);
    let (first, value_of) = (&first, &value);
    let later = eventually_async("metrics that moved", WAIT, || async move {
        get(port, "/metrics").await.map(|(_, b)| b).filter(|b| {
            value_of(b, "pleg_stream_events_received_total")
                > value_of(first, "pleg_stream_events_received_total")
                && samples(b, "pleg_events_total")
                    .iter()
                    .any(|(s, v)| s.contains("type=\"ContainerDied\"") && *v >= 1.0)
        })
    })
    .await;
    assert_eq!(
        started(&later),
        4.0,
        "two sandboxes and two containers started"
    );
    assert_eq!(value(&later, "running_pods"), 2.0);
    assert!(value(&later, "evented_pleg_connection_success_count") >= 1.0);
    assert!(value(&later, "pleg_relist_duration_seconds_count") >= 1.0);
    assert!(
        value(&later, "pleg_last_seen_seconds") > 1.7e9,
        "a unix time"
    );
    let died_from_stream: f64 = samples(&later, "pleg_events_total")
        .iter()
        .filter(|(s, _)| s.contains("type=\"ContainerDied\"") && s.contains("source=\"stream\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(died_from_stream, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_client_with_a_filter_sees_exactly_the_matching_events_and_sigterm_exits_0() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-grpc");
    let port = free_port();
    let mut daemon = daemon(&server, &dir, port, &[]);
    let socket = dir.path().join("pleg.sock");
    // Subscribe once the daemon has relisted, so that only changes come:
    // healthy, and its stream open and caught up.
    eventually_async("healthz 200", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    eventually_async("the stream open and caught up", WAIT, || async move {
        get(port, "/metrics")
            .await
            .filter(|(_, b)| b.contains("pleg_stream_state{state=\"streaming\"} 1"))
    })
    .await;
    assert!(socket.exists());
    let mut client = Client::connect(&socket).await.expect("connect");
    let filter = Filter::all().with_namespace("shop");
    let mut stream = client.watch(&filter, 100).await.expect("watch");
    // What the daemon already reported is not replayed; new changes are.
    server.exit_container("sb2-app", 3); // namespace infra: filtered out
    server.exit_container("sb1-app", 7); // namespace shop
    let e = match next_item(&mut stream, Duration::from_secs(20)).await {
        Some(Some(Ok(Delivery::Event(e)))) => e,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        (e.kind, e.pod.namespace.as_str()),
        (EventType::ContainerDied, "shop")
    );
    assert_eq!(e.container_id().map(|c| c.as_str()), Some("sb1-app"));
    assert_eq!(e.exit_code, Some(7));
    // Nothing from the other namespace follows.
    let more = next_item(&mut stream, Duration::from_millis(500)).await;
    assert!(more.is_none(), "unexpected {more:?}");

    // SIGTERM: exit 0 within 2 s, socket removed.
    let pid = daemon.0.id().to_string();
    let started = tokio::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still running 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "socket removed on exit");
    let mut stderr = String::new();
    if let Some(mut err) = daemon.0.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_runtime_socket_keeps_the_daemon_running_with_503_and_the_reason() {
    let dir = temp::dir("cli-missing");
    let port = free_port();
    let endpoint = format!("unix://{}", dir.path().join("cri.sock").display());
    let _daemon = Running(
        pleg()
            .args(["run", "--runtime-endpoint", &endpoint])
            .args(["--relist-period", "100ms"])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(dir.path().join("pleg.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start"),
    );
    let (_, body) = eventually_async("503 with the reason", WAIT, || async move {
        get(port, "/healthz")
            .await
            .filter(|(s, b)| *s == 503 && b.contains("no such socket"))
    })
    .await;
    assert!(
        body.contains(&format!("runtime endpoint {endpoint}: no such socket")),
        "{body}"
    );
    assert!(
        body.contains("[-]pleg failed: pleg has yet to be successful"),
        "{body}"
    );

    // The runtime appears: the daemon picks it up by itself.
    let server = FakeCriServer::start_at(dir.path().join("cri.sock"))
        .await
        .expect("server");
    server.put_sandbox(sandbox(
        "sb1",
        "uid-1",
        "web",
        "shop",
        PodSandboxState::SandboxReady,
    ));
    eventually_async("200 once the runtime is there", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_a_runtime_exits_5_unless_told_to_wait() {
    let dir = temp::dir("cli-nowait");
    let endpoint = format!("unix://{}", dir.path().join("cri.sock").display());
    let out = pleg()
        .args(["watch", "--runtime-endpoint", &endpoint])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("no such socket") && stderr.contains("--wait"),
        "{stderr}"
    );

    let out = pleg()
        .args(["watch", "--daemon"])
        .arg(dir.path().join("nothing.sock"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_lines_parse_and_match_the_events() {
    let server = fake_runtime().await;
    let mut watch = Running(
        pleg()
            .args(["watch", "--runtime-endpoint", &server.endpoint()])
            .args([
                "--output",
                "json",
                "--mode",
                "generic",
                "--relist-period",
                "100ms",
            ])
            .args(["--namespace", "shop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start watch"),
    );
    let stdout = watch.0.stdout.take().expect("stdout");
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a line in time")
            .expect("watch still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }
    let sandbox_started = next(&mut lines_rx).await;
    assert_eq!(sandbox_started["type"], "ContainerStarted");
    assert_eq!(sandbox_started["container_id"], "sb1");
    assert_eq!(sandbox_started["pod_uid"], "uid-1");
    assert_eq!(sandbox_started["pod_name"], "web");
    assert_eq!(sandbox_started["pod_namespace"], "shop");
    assert_eq!(sandbox_started["source"], "relist");
    let time = sandbox_started["time"].as_str().expect("time");
    assert!(
        time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    let app_started = next(&mut lines_rx).await;
    assert_eq!(
        (
            app_started["type"].as_str(),
            app_started["container_name"].as_str()
        ),
        (Some("ContainerStarted"), Some("app"))
    );
    assert_eq!(app_started["attempt"], 0);

    server.exit_container("sb1-app", 42);
    let died = next(&mut lines_rx).await;
    assert_eq!(died["type"], "ContainerDied");
    assert_eq!(died["container_id"], "sb1-app");
    assert_eq!(died["exit_code"], 42);
    assert_eq!(died["reason"], "Error");
    assert!(died["runtime_time"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_shows_the_cache_as_a_table_and_as_json() {
    let server = fake_runtime().await;
    let out = pleg()
        .args(["pods", "--runtime-endpoint", &server.endpoint()])
        .output()
        .expect("run");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("shop/web") && table.contains("infra/db"),
        "{table}"
    );
    assert!(
        table.contains("ContainerStarted") && table.contains("running"),
        "{table}"
    );

    let out = pleg()
        .args([
            "pods",
            "--runtime-endpoint",
            &server.endpoint(),
            "--output",
            "json",
            "-n",
            "shop",
        ])
        .output()
        .expect("run");
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let pods = pods.as_array().expect("array");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["name"], "web");
    assert_eq!(pods[0]["containers"][0]["state"], "running");
    assert_eq!(pods[0]["containers"][0]["last_event"], "ContainerStarted");
    assert_eq!(
        (
            pods[0]["phase"].as_str(),
            pods[0]["health"].as_str(),
            &pods[0]["health_reason"]
        ),
        (Some("Running"), Some("Ready"), &serde_json::Value::Null)
    );
    assert!(
        table.contains("shop/web  uid=uid-1  Running (Ready)"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_wait_waits_for_the_runtime_to_appear() {
    let dir = temp::dir("cli-wait");
    let path = dir.path().join("cri.sock");
    let mut watch = Running(
        pleg()
            .args(["watch", "--wait", "--output", "json", "--mode", "generic"])
            .args(["--relist-period", "100ms", "--runtime-endpoint"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start watch"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watch.0.try_wait().expect("wait").is_none(), "still waiting");
    let server = FakeCriServer::start_at(&path).await.expect("server");
    server.put_sandbox(sandbox(
        "sb1",
        "uid-1",
        "web",
        "shop",
        PodSandboxState::SandboxReady,
    ));
    let stdout = watch.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().and_then(Result::ok)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("a line once the runtime is there")
        .expect("reader")
        .expect("a line");
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(event["type"], "ContainerStarted");
    assert_eq!(event["container_id"], "sb1");
}

/// A running command's stdout lines, read on a thread of their own.
fn stdout_lines(child: &mut Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next_json(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> serde_json::Value {
    let line = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a line in time")
        .expect("the command still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Kills the command and returns what it wrote on stderr.
fn kill_and_stderr(mut running: Running) -> String {
    let _ = running.0.kill();
    let _ = running.0.wait();
    let mut stderr = String::new();
    if let Some(mut err) = running.0.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_a_daemon_relists_and_opens_no_event_stream_unless_evented_is_asked() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-nodaemon");
    let no_daemon = dir.path().join("no-daemon.sock");
    let watch = |extra: &[&str]| {
        Running(
            pleg()
                .args(["watch", "--runtime-endpoint", &server.endpoint()])
                .args(["--relist-period", "100ms", "--output", "json"])
                .arg("--grpc-socket")
                .arg(&no_daemon)
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start watch"),
        )
    };

    let mut generic = watch(&[]);
    let mut lines = stdout_lines(&mut generic.0);
    assert_eq!(next_json(&mut lines).await["type"], "ContainerStarted");
    let relists = server.calls("ListContainers");
    eventually_async("a few more relists", WAIT, || {
        let server = &server;
        async move { (server.calls("ListContainers") >= relists + 3).then_some(()) }
    })
    .await;
    assert_eq!(
        server.calls("GetContainerEvents"),
        0,
        "no event stream of its own: it would take events from a daemon's"
    );
    let stderr = kill_and_stderr(generic);
    assert!(
        stderr.contains("pleg: watching events from the runtime at")
            && stderr.contains("by relisting (generic mode; no daemon answers at"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("pleg: ")).count(),
        1,
        "{stderr}"
    );

    let evented = watch(&["--mode", "evented"]);
    eventually_async("the event stream opened", WAIT, || {
        let server = &server;
        async move { (server.calls("GetContainerEvents") >= 1).then_some(()) }
    })
    .await;
    let stderr = kill_and_stderr(evented);
    assert!(stderr.contains("evented mode, as asked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_pods_use_the_daemon_when_its_socket_answers() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-usedaemon");
    let port = free_port();
    let _daemon = daemon(&server, &dir, port, &["--mode", "generic"]);
    let socket = dir.path().join("pleg.sock");
    eventually_async("healthz 200", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    // A runtime endpoint where nothing listens: only the daemon can answer.
    let nowhere = format!("unix://{}", dir.path().join("no-runtime.sock").display());

    let out = pleg()
        .args(["pods", "--runtime-endpoint", &nowhere, "--grpc-socket"])
        .arg(&socket)
        .output()
        .expect("run pods");
    let (table, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        table.contains("shop/web") && table.contains("infra/db"),
        "{table}"
    );
    assert_eq!(
        stderr.trim(),
        format!("pleg: listing pods from the daemon at {}", socket.display())
    );

    let mut watch = Running(
        pleg()
            .args(["watch", "--runtime-endpoint", &nowhere, "-o", "json"])
            .arg("--grpc-socket")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start watch"),
    );
    let mut lines = stdout_lines(&mut watch.0);
    eventually_async("the watch subscribed", WAIT, || async move {
        let (_, body) = get(port, "/metrics").await?;
        samples(&body, "pleg_subscribers")
            .first()
            .filter(|(_, v)| *v == 1.0)
            .map(|_| ())
    })
    .await;
    server.exit_container("sb1-app", 9);
    let died = next_json(&mut lines).await;
    assert_eq!(
        (died["type"].as_str(), died["exit_code"].as_i64()),
        (Some("ContainerDied"), Some(9))
    );
    let stderr = kill_and_stderr(watch);
    assert!(
        stderr.contains(&format!(
            "pleg: watching events from the daemon at {}",
            socket.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_from_a_daemon_pages_through_three_thousand_pods() {
    const PODS: usize = 3000;
    let server = FakeCriServer::start().await.expect("fake CRI server");
    for i in 0..PODS {
        let sb = format!("sb{i:04}");
        server.put_sandbox(sandbox(
            &sb,
            &format!("uid-{i:04}"),
            &format!("pod-{i:04}"),
            "bulk",
            PodSandboxState::SandboxReady,
        ));
        server.put_container(container(
            &format!("{sb}-app"),
            &sb,
            "app",
            0,
            CriState::ContainerRunning,
        ));
    }
    let dir = temp::dir("cli-paging");
    let port = free_port();
    let _daemon = daemon(&server, &dir, port, &["--mode", "generic"]);
    let socket = dir.path().join("pleg.sock");
    // The first relist fetches 3000 statuses: generous on a loaded machine.
    eventually_async("every pod cached", Duration::from_secs(180), || {
        let socket = socket.clone();
        let server = &server;
        async move {
            // Each pod's status is fetched once: then all are cached.
            if server.calls("PodSandboxStatus") < PODS as u64 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
            let mut client = Client::connect(&socket).await.ok()?;
            let (pods, next) = client.list_pods_page(None, 0, "").await.ok()?;
            (pods.len() == PODS && next.is_none()).then_some(())
        }
    })
    .await;
    let mut client = Client::connect(&socket).await.expect("connect");
    let (page, next) = client.list_pods_page(None, 0, "").await.expect("unpaged");
    assert_eq!(
        (page.len(), next),
        (PODS, None),
        "page_size 0: everything, as before paging"
    );
    let (page, next) = client.list_pods_page(None, 500, "").await.expect("paged");
    assert_eq!(page.len(), 500);
    assert!(next.is_some(), "more pages");

    let pods = pods_json(&["--daemon", &socket.to_string_lossy()]);
    let pods = pods.as_array().expect("array");
    assert_eq!(pods.len(), PODS);
    let mut names: Vec<&str> = pods.iter().filter_map(|p| p["name"].as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), PODS, "every pod once");
}

/// `pleg wait` against the runtime (no daemon): met at once, met when a
/// container starts, not met within the timeout, and bad flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_0_when_met_1_on_timeout_and_2_on_a_bad_flag() {
    let server = fake_runtime().await;
    let wait = |extra: &[&str]| {
        let mut command = pleg();
        command
            .args([
                "wait",
                "--runtime-endpoint",
                &server.endpoint(),
                "--grpc-socket",
                "",
            ])
            .args(["--relist-period", "100ms", "-n", "shop", "--name", "web"])
            .args(extra);
        command
    };
    let out = wait(&["--running", "app", "-o", "json"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["met"], true);
    assert_eq!(
        (json["phase"].as_str(), json["health"].as_str()),
        (Some("Running"), Some("Ready"))
    );
    assert_eq!(json["pod_uid"], "uid-1");

    // A container that starts while the wait waits.
    server.put_container(container(
        "sb1-late",
        "sb1",
        "late",
        0,
        CriState::ContainerCreated,
    ));
    let waiting = wait(&["--running", "late", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pleg wait");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.put_container(container(
        "sb1-late",
        "sb1",
        "late",
        0,
        CriState::ContainerRunning,
    ));
    let status = tokio::task::spawn_blocking(move || waiting.wait_with_output())
        .await
        .expect("join")
        .expect("pleg wait");
    assert_eq!(status.status.code(), Some(0));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.starts_with("shop/web: met (Running(late)): Running (Ready)"),
        "{text}"
    );

    let out = wait(&["--gone", "--timeout", "1s"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "not met");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("shop/web: not met within 1s (Gone): Running (Ready)"),
        "{text}"
    );

    for bad in [
        vec![],
        vec!["--gone", "--exited"],
        vec!["--phase-not", "Sleeping"],
        vec!["--gone", "--timeout", "0s"],
    ] {
        let out = wait(&bad).output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Stderr lines of a child, as they come.
fn stderr_lines(child: &mut Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads stderr lines until one contains `what`.
async fn until_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) {
    tokio::time::timeout(WAIT, async {
        while let Some(line) = rx.recv().await {
            if line.contains(what) {
                return;
            }
        }
        panic!("stderr ended before {what:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {what:?} on stderr"));
}

fn monitor(server: &FakeCriServer, extra: &[&str]) -> Command {
    let mut command = pleg();
    command
        .args([
            "monitor",
            "--runtime-endpoint",
            &server.endpoint(),
            "--grpc-socket",
            "",
            "--relist-period",
            "100ms",
        ])
        .args(extra);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_reports_a_replaced_container_recovered_and_exits_0() {
    let server = fake_runtime().await;
    let mut child = monitor(
        &server,
        &[
            "--namespace-regex",
            "sh.p",
            "--name-regex",
            "web",
            "--timeout",
            "60s",
            "-o",
            "json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start pleg monitor");
    let mut stderr = stderr_lines(&mut child);
    until_line(&mut stderr, "pleg: monitoring: 0 died").await;
    assert!(server.exit_container("sb1-app", 137));
    // The other pod's death is outside the selection.
    assert!(server.exit_container("sb2-app", 1));
    until_line(&mut stderr, "1 died, 0 recovered, 1 pending").await;
    server.put_container(container(
        "sb1-app-1",
        "sb1",
        "app",
        1,
        CriState::ContainerRunning,
    ));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("pleg monitor");
    assert_eq!(out.status.code(), Some(0), "everything recovered");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["unrecovered"], serde_json::json!([]));
    assert_eq!(doc["error"], serde_json::Value::Null);
    let recovered = doc["recovered"].as_array().expect("a list");
    assert_eq!(recovered.len(), 1, "{doc}");
    let item = &recovered[0];
    assert_eq!(
        (
            item["namespace"].as_str(),
            item["name"].as_str(),
            item["pod_uid"].as_str()
        ),
        (Some("shop"), Some("web"), Some("uid-1"))
    );
    assert_eq!(item["container"], "app");
    assert_eq!(item["replacement_id"], "sb1-app-1");
    for field in ["died_at", "replaced_at", "running_at"] {
        assert!(item[field].is_string(), "{field}: {item}");
    }
    assert!(item["recovery_ms"].is_u64(), "{item}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_exits_1_when_a_death_is_not_replaced_and_2_on_a_bad_selector() {
    let server = fake_runtime().await;
    let mut child = monitor(&server, &["--name-regex", "web", "--timeout", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg monitor");
    let mut stderr = stderr_lines(&mut child);
    until_line(&mut stderr, "pleg: monitoring: 0 died").await;
    assert!(server.exit_container("sb1-app", 2));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("pleg monitor");
    assert_eq!(out.status.code(), Some(1), "not recovered");
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE  POD"), "{table}");
    assert!(
        lines[1].starts_with("shop")
            && lines[1].contains("app")
            && lines[1].ends_with("UNRECOVERED"),
        "{table}"
    );

    let out = monitor(&server, &["--selector", "app in (web,"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_terminal_prints_one_report_per_end_of_a_pod() {
    let server = fake_runtime().await;
    let mut child = pleg()
        .args([
            "watch",
            "--runtime-endpoint",
            &server.endpoint(),
            "--grpc-socket",
            "",
            "--relist-period",
            "100ms",
            "--terminal",
            "-o",
            "json",
            "-n",
            "shop",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg watch");
    let mut lines = stdout_lines(&mut child);
    let mut stderr = stderr_lines(&mut child);
    until_line(&mut stderr, "relisting").await;
    // Seen running by the first relist or not, its end is one report.
    assert!(server.exit_container("sb1-app", 3));
    let report = next_json(&mut lines).await;
    assert_eq!(report["type"], "TerminalReport");
    assert_eq!(
        (report["namespace"].as_str(), report["pod"].as_str()),
        (Some("shop"), Some("web"))
    );
    assert_eq!(report["phase"], "Failed");
    assert_eq!(report["exit_code"], 3);
    let containers = report["containers"].as_array().expect("a list");
    assert_eq!(containers.len(), 1);
    assert_eq!(
        (
            containers[0]["name"].as_str(),
            containers[0]["exit_code"].as_i64(),
            containers[0]["reason"].as_str()
        ),
        (Some("app"), Some(3), Some("Error"))
    );
    drop(Running(child));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_from_a_daemon_reports_what_its_monitor_saw() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-monitor-daemon");
    let port = free_port();
    let _daemon = daemon(&server, &dir, port, &["--mode", "generic"]);
    eventually_async("healthz 200", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    let nowhere = format!("unix://{}", dir.path().join("no-runtime.sock").display());
    let mut child = pleg()
        .args(["monitor", "--runtime-endpoint", &nowhere, "--daemon"])
        .arg(dir.path().join("pleg.sock"))
        .args(["-n", "infra", "--timeout", "60s", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pleg monitor");
    let mut stderr = stderr_lines(&mut child);
    until_line(&mut stderr, "pleg: monitoring: 0 died").await;
    assert!(server.exit_container("sb2-app", 1));
    until_line(&mut stderr, "1 died").await;
    server.put_container(container(
        "sb2-app-1",
        "sb2",
        "app",
        1,
        CriState::ContainerRunning,
    ));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("pleg monitor");
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let recovered = doc["recovered"].as_array().expect("a list");
    assert_eq!(recovered.len(), 1, "{doc}");
    assert_eq!(
        (
            recovered[0]["name"].as_str(),
            recovered[0]["replacement_id"].as_str()
        ),
        (Some("db"), Some("sb2-app-1"))
    );
    assert!(recovered[0]["recovery_ms"].is_u64());
}

/// A crash loop in `pleg pods`: from a daemon, which followed the deaths
/// (here the failed attempts are removed, so no single listing shows
/// them), and from one listing of the runtime, which sees the failed
/// attempts the runtime keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_shows_a_crash_loop_from_the_daemon_and_from_the_attempts_the_runtime_keeps() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-crash-loop");
    let port = free_port();
    let _daemon = daemon(
        &server,
        &dir,
        port,
        &["--mode", "generic", "--crash-loop-exits", "2"],
    );
    let socket = dir.path().join("pleg.sock");
    // What the daemon lists of pod web, once `ready` says so.
    let until = |what: &'static str, ready: fn(&[pleg::model::Container]) -> bool| {
        let socket = socket.clone();
        async move {
            eventually_async(what, WAIT, || {
                let socket = socket.clone();
                async move {
                    let mut client = Client::connect(&socket).await.ok()?;
                    let pods = client.list_pods(Some("shop")).await.ok()?;
                    let web = pods.into_iter().find(|p| p.status.meta.name == "web")?;
                    ready(&web.status.containers).then_some(())
                }
            })
            .await;
        }
    };
    let exited = |cs: &[pleg::model::Container]| {
        cs.len() == 1 && cs[0].state == pleg::model::ContainerState::Exited
    };
    until("app running", |cs| {
        cs.len() == 1 && cs[0].state == pleg::model::ContainerState::Running
    })
    .await;
    assert!(server.exit_container("sb1-app", 1));
    until("attempt 0 exited", exited).await;
    server.remove_container("sb1-app");
    server.put_container(container(
        "sb1-app-1",
        "sb1",
        "app",
        1,
        CriState::ContainerRunning,
    ));
    until("attempt 1 running", |cs| {
        cs.len() == 1 && cs[0].attempt == 1 && cs[0].state == pleg::model::ContainerState::Running
    })
    .await;
    assert!(server.exit_container("sb1-app-1", 1));
    until("attempt 1 exited", |cs| {
        cs.len() == 1 && cs[0].attempt == 1 && cs[0].state == pleg::model::ContainerState::Exited
    })
    .await;
    server.remove_container("sb1-app-1");
    until("no container left", |cs| cs.is_empty()).await;

    let socket_arg = socket.to_string_lossy().into_owned();
    let from_daemon = pods_json(&["-n", "shop", "--daemon", &socket_arg]);
    let web = &from_daemon[0];
    assert_eq!(web["name"], "web", "{from_daemon}");
    assert_eq!(
        (web["health"].as_str(), web["health_reason"].as_str()),
        (Some("Failed"), Some("CrashLoop")),
        "the daemon saw both failed exits: {from_daemon}"
    );
    assert!(
        web["health_message"]
            .as_str()
            .is_some_and(|m| m.contains("container app")),
        "{from_daemon}"
    );

    // Pod db keeps its three failed attempts: one listing (the default
    // rule, 3 exits) tells the loop.
    assert!(server.exit_container("sb2-app", 1));
    for attempt in 1..3 {
        let id = format!("sb2-app-{attempt}");
        server.put_container(container(
            &id,
            "sb2",
            "app",
            attempt,
            CriState::ContainerRunning,
        ));
        assert!(server.exit_container(&id, 1));
    }
    let listed = pods_json(&[
        "-n",
        "infra",
        "--runtime-endpoint",
        &server.endpoint(),
        "--grpc-socket",
        "",
    ]);
    let db = &listed[0];
    assert_eq!(db["name"], "db", "{listed}");
    assert_eq!(
        (db["health"].as_str(), db["health_reason"].as_str()),
        (Some("Failed"), Some("CrashLoop")),
        "{listed}"
    );
}

/// `pleg watch --daemon` with `--initial`, then `--since` after a
/// disconnect, then across a daemon restart, which it rides out by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_daemon_gives_the_initial_state_resumes_with_since_and_rides_out_a_restart() {
    let server = fake_runtime().await;
    let dir = temp::dir("cli-resume");
    let port = free_port();
    let daemon_process = daemon(&server, &dir, port, &["--mode", "generic"]);
    let socket = dir.path().join("pleg.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    eventually_async("healthz 200", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    let watch = |args: &[&str]| {
        Running(
            pleg()
                .args(["watch", "-o", "json", "--daemon", &socket_arg])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start watch"),
        )
    };

    // The initial state: every sandbox and container, then Synced.
    let mut first = watch(&["--initial"]);
    let mut lines = stdout_lines(&mut first.0);
    let mut initial = Vec::new();
    let synced = loop {
        let line = next_json(&mut lines).await;
        if line["type"] == "Synced" {
            break line;
        }
        assert_eq!(line["initial"], true, "{line}");
        assert!(line.get("seq").is_none(), "no seq on initial state: {line}");
        initial.push(line["container_id"].as_str().expect("an id").to_owned());
    };
    initial.sort();
    assert_eq!(initial, ["sb1", "sb1-app", "sb2", "sb2-app"]);
    let epoch = synced["epoch"].as_str().expect("an epoch").to_owned();
    let synced_seq = synced["seq"].as_u64().expect("a seq");
    server.exit_container("sb1-app", 9);
    let died = next_json(&mut lines).await;
    assert_eq!(died["type"], "ContainerDied", "{died}");
    assert_eq!(died["container_id"], "sb1-app");
    assert!(died.get("initial").is_none(), "a live event: {died}");
    let seq = died["seq"].as_u64().expect("live events carry their seq");
    assert!(seq > synced_seq, "{seq} after {synced_seq}");
    let _ = kill_and_stderr(first);

    // Away, then back with --since: what happened meanwhile comes first.
    server.exit_container("sb2-app", 4);
    eventually_async("the daemon saw sb2-app die", WAIT, || async move {
        let (_, body) = get(port, "/metrics").await?;
        let died = samples(&body, "pleg_events_total")
            .into_iter()
            .filter(|(labels, _)| labels.contains("type=\"ContainerDied\""))
            .map(|(_, v)| v)
            .sum::<f64>();
        (died >= 2.0).then_some(())
    })
    .await;
    let since = format!("{epoch}:{seq}");
    let mut resumed = watch(&["--since", &since]);
    let mut lines = stdout_lines(&mut resumed.0);
    let missed = next_json(&mut lines).await;
    assert_eq!(
        (
            missed["type"].as_str(),
            missed["container_id"].as_str(),
            missed["exit_code"].as_i64(),
            missed["seq"].as_u64()
        ),
        (
            Some("ContainerDied"),
            Some("sb2-app"),
            Some(4),
            Some(seq + 1)
        ),
        "{missed}"
    );

    // The daemon restarts under the watch: it says so and goes on.
    drop(daemon_process);
    let _restarted = daemon(&server, &dir, port, &["--mode", "generic"]);
    let resync = next_json(&mut lines).await;
    assert_eq!(
        (resync["type"].as_str(), resync["reason"].as_str()),
        (Some("Resync"), Some("epoch_changed")),
        "{resync}"
    );
    let stderr = kill_and_stderr(resumed);
    assert!(stderr.contains("reconnect"), "{stderr}");

    // Points that cannot be resumed are refused, naming what is wrong.
    for (since, expected) in [
        ("nonsense", "expected EPOCH:SEQ"),
        ("abc:x", "is not a u64"),
    ] {
        let out = pleg()
            .args(["watch", "--daemon", &socket_arg, "--since", since])
            .output()
            .expect("run watch");
        assert_eq!(out.status.code(), Some(2), "{since}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{since}: {stderr}");
    }
    eventually_async("the restarted daemon healthy", WAIT, || async move {
        get(port, "/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    let mut client = Client::connect(&socket).await.expect("the new daemon");
    let stream = client
        .watch(&Filter::all(), 16)
        .await
        .expect("a live watch");
    let new_epoch = stream.epoch().expect("the pleg-epoch header").to_string();
    assert_ne!(new_epoch, epoch, "a new run, a new epoch");
    let out = pleg()
        .args(["watch", "--daemon", &socket_arg, "--since"])
        .arg(format!("{new_epoch}:{}", u64::MAX))
        .output()
        .expect("run watch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("since: resume point seq"), "{stderr}");
}

/// The subcommands every completion script and man page must know.
const SUBCOMMANDS: [&str; 5] = ["run", "watch", "pods", "wait", "monitor"];

/// `pleg <args>`, which must succeed: its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = pleg().args(args).output().expect("run pleg");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 on stdout")
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        assert!(!script.trim().is_empty(), "{shell}: an empty script");
        for subcommand in SUBCOMMANDS {
            assert!(script.contains(subcommand), "{shell}: no {subcommand}");
        }
        // A flag of a subcommand, not just the subcommands' names.
        assert!(
            script.contains("relist-period"),
            "{shell}: no --relist-period"
        );
        match shell {
            "bash" => {
                let mut check = Command::new("bash")
                    .arg("-n")
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start bash -n");
                std::io::Write::write_all(
                    &mut check.stdin.take().expect("piped stdin"),
                    script.as_bytes(),
                )
                .expect("the script to bash -n");
                let checked = check.wait_with_output().expect("bash -n");
                assert!(
                    checked.status.success(),
                    "bash -n: {}",
                    String::from_utf8_lossy(&checked.stderr)
                );
                assert!(script.contains("complete -F _pleg"), "{script}");
            }
            "zsh" => assert!(script.starts_with("#compdef pleg"), "{script}"),
            _ => assert!(script.contains("complete -c pleg"), "{script}"),
        }
    }
}

#[test]
fn completions_for_an_unknown_shell_exit_2_naming_it() {
    let out = pleg()
        .args(["completions", "tcsh"])
        .output()
        .expect("run pleg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'tcsh'"), "{stderr}");
    assert!(stderr.contains("bash, zsh, fish"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// The `.TH` line of a roff page: the first after clap_mangen's preamble
/// (`.ie`/`.el`, which defines the apostrophe string), which must be the
/// first macro of substance.
fn title_line(page: &str) -> &str {
    page.lines()
        .find(|line| !line.starts_with(".ie ") && !line.starts_with(".el "))
        .expect("a line after the preamble")
}

#[test]
fn man_prints_pleg_1_in_roff_with_every_subcommand() {
    let page = stdout_of(&["man"]);
    let title = title_line(&page);
    assert!(title.starts_with(".TH pleg 1 "), "{title}");
    assert!(
        title.contains(env!("CARGO_PKG_VERSION")),
        "the version in {title}"
    );
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for subcommand in SUBCOMMANDS.into_iter().chain(["completions", "man"]) {
        // roff escapes the hyphen.
        let reference = format!("pleg\\-{subcommand}(1)");
        assert!(page.contains(&reference), "no {reference} in {page}");
    }
    // clap's own `help` subcommand has no page to point to.
    assert!(!page.contains("pleg\\-help"), "{page}");
}

#[test]
fn man_with_dir_writes_pleg_1_and_one_page_per_subcommand() {
    let dir = temp::dir("man");
    // Made when missing, parents too.
    let target = dir.path().join("share/man/man1");
    let target_arg = target.to_str().expect("a UTF-8 temp path");
    let listing = stdout_of(&["man", "--dir", target_arg]);
    let expected: Vec<String> = SUBCOMMANDS
        .into_iter()
        .chain(["completions", "man"])
        .map(|subcommand| format!("pleg-{subcommand}"))
        .chain(["pleg".to_owned()])
        .collect();
    let mut found: Vec<String> = std::fs::read_dir(&target)
        .expect("the man directory")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .into_string()
                .expect("a UTF-8 file name")
        })
        .collect();
    found.sort();
    let mut expected_files: Vec<String> = expected.iter().map(|name| format!("{name}.1")).collect();
    expected_files.sort();
    assert_eq!(found, expected_files);
    for name in &expected {
        let path = target.join(format!("{name}.1"));
        assert!(
            listing
                .lines()
                .any(|line| line == path.to_str().unwrap_or("")),
            "{} not listed in {listing}",
            path.display()
        );
        let page = std::fs::read_to_string(&path).expect("a page");
        let title = title_line(&page);
        assert!(title.starts_with(&format!(".TH {name} 1 ")), "{title}");
    }
    let run = std::fs::read_to_string(target.join("pleg-run.1")).expect("pleg-run.1");
    assert!(run.contains("relist\\-period"), "{run}");
    // A directory that cannot be made fails with exit 1, naming it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").expect("a plain file");
    let blocked = file.join("man1");
    let out = pleg()
        .arg("man")
        .arg("--dir")
        .arg(&blocked)
        .output()
        .expect("run pleg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("man page directory {}", blocked.display())),
        "{stderr}"
    );
}

/// HEAD of the checkout the tests run in, or `None` when git is missing or
/// this is no git checkout of pleg (a source tarball, perhaps unpacked
/// inside some other repository): the same test build.rs makes.
fn git_head() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    git(&["ls-files", "--error-unmatch", "build.rs"])?;
    git(&["rev-parse", "--verify", "HEAD"])
}

/// The version `pleg --version` prints, after `pleg `.
fn version() -> String {
    let out = stdout_of(&["--version"]);
    let line = out.trim_end();
    assert_eq!(line.lines().count(), 1, "{out}");
    line.strip_prefix("pleg ")
        .unwrap_or_else(|| panic!("no `pleg ` before the version: {out}"))
        .to_owned()
}

#[test]
fn version_names_the_cargo_version_and_the_commit_built_from() {
    let version = version();
    let git = version
        .strip_prefix(concat!(env!("CARGO_PKG_VERSION"), " (git "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `<version> (git <commit>[, <date>])`: {version}"));
    let (commit, date) = git
        .split_once(", ")
        .map_or((git, None), |(c, d)| (c, Some(d)));
    let id = commit.strip_suffix("-dirty").unwrap_or(commit);
    match git_head() {
        // CI builds and tests a fresh clone: the commit is HEAD's.
        Some(head) => {
            assert_eq!(id.len(), 12, "{version}");
            assert!(head.starts_with(id), "{version} is not HEAD {head}");
            let date = date.unwrap_or_else(|| panic!("no commit date in {version}"));
            let digits = date.replace('-', "");
            assert!(
                date.len() == 10 && digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()),
                "the date in {version}"
            );
        }
        // No git, or no checkout: only the format can be checked; the
        // commit is `unknown`, or what PLEG_GIT_COMMIT said at build time.
        None => assert!(
            id == "unknown" || (id.len() >= 7 && id.bytes().all(|b| b.is_ascii_hexdigit())),
            "{version}"
        ),
    }
    // -V, a subcommand's --version and the man page say the same.
    assert_eq!(stdout_of(&["-V"]).trim_end(), format!("pleg {version}"));
    assert_eq!(
        stdout_of(&["run", "--version"]).trim_end(),
        format!("pleg-run {version}")
    );
    assert!(
        title_line(&stdout_of(&["man"])).contains(&format!("\"pleg {version}\"")),
        "the man page's source is not pleg {version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_the_same_version_as_dash_dash_version_at_start() {
    let version = version();
    let server = fake_runtime().await;
    let dir = temp::dir("cli-version");
    let mut running = daemon(&server, &dir, free_port(), &[]);
    let mut lines = stderr_lines(&mut running.0);
    let started = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.recv().await {
            if line.contains("pleg running") {
                return line;
            }
        }
        panic!("stderr ended before \"pleg running\"");
    })
    .await
    .expect("\"pleg running\" on stderr");
    assert!(started.contains(&version), "{version} not in {started}");
}
