//! Interoperability of the gRPC API with grpcio, the Python (C-core) client:
//! `tests/python/pleg_client.py`, its code generated from `proto/` at test
//! time, opens `unix:<socket>` with no channel options, so it sends grpcio's
//! own default `:authority`, derived from the socket's path (which h2 as
//! published refuses: see `vendor/h2/PLEG-PATCH.md`). It calls a real
//! `pleg run` daemon: over the project-local containerd 1.7 (Health,
//! ListPods, a Watch that sees a real container start and die, a WaitFor
//! met when it starts, and a Monitor that sees it die and recover), and over
//! the test kit's fake CRI server (WaitFor met and not met, a Monitor whose
//! death is never recovered).
//!
//! The interpreter is the project-local venv's (`scripts/python-env.sh`,
//! which `scripts/test.sh` runs): `$PLEG_PY_DIR/bin/python`, by default
//! `.local/py/bin/python`.
//!
//! A second test against containerd resumes a Watch: grpcio reads some
//! events and disconnects, more happen, and it comes back with `since` and
//! the epoch. The containerd tests take turns (`TURN`): on containerd 1.7
//! each event reaches one stream, so a second daemon at the same time would
//! take some of the events. The fake-CRI test shares nothing with them.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cri_support::*;
use k8s_cri::v1::{ContainerState as CriState, PodSandboxState};
use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};
use serde_json::Value;

/// The project-local venv's interpreter.
fn python() -> PathBuf {
    let dir = std::env::var_os("PLEG_PY_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/py"));
    let python = dir.join("bin/python");
    assert!(
        python.exists(),
        "no Python venv at {}: run scripts/python-env.sh (scripts/test.sh does)",
        dir.display()
    );
    python
}

/// `pleg_client.py --socket <socket> <args>`.
fn client(socket: &Path, args: &[&str]) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(python());
    command
        .arg(root.join("tests/python/pleg_client.py"))
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("PYTHONPATH");
    command
}

/// A one-shot call's JSON answer; fails the test on any error.
fn call(socket: &Path, args: &[&str]) -> Value {
    let out = client(socket, args).output().expect("run pleg_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pleg_client.py {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A one-shot call run in the background (a wait that answers later).
fn call_in_background(socket: &Path, args: &[&str]) -> tokio::task::JoinHandle<Value> {
    let socket = socket.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        call(&socket, &args)
    })
}

/// A running streaming call of `pleg_client.py` (`watch` or `monitor`),
/// its JSON lines, and its first one (`{"ready": true}`) already read: the
/// daemon accepted the call.
struct Stream {
    _process: Running,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Its first line (for a watch, with the `pleg-epoch` and `pleg-seq`
    /// headers).
    ready: Value,
}

impl Stream {
    async fn open(socket: &Path, args: &[&str]) -> Stream {
        Stream::call(socket, &[&["watch"], args].concat()).await
    }

    async fn call(socket: &Path, args: &[&str]) -> Stream {
        let mut process = Running(
            client(socket, args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("pleg_client.py watch"),
        );
        let stdout = process.0.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watch = Stream {
            _process: process,
            lines,
            ready: Value::Null,
        };
        // Generating the code and starting the interpreter take a while.
        let ready = watch.next_line(Duration::from_secs(60)).await;
        assert_eq!(ready["ready"], true, "{ready}");
        watch.ready = ready;
        watch
    }

    async fn next_line(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .expect("a line from the Python client in time")
            .expect("the Python client still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Every line until the call ends.
    async fn rest(mut self, within: Duration) -> Vec<Value> {
        let mut items = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .expect("the Python client's call to end in time");
            let Some(line) = line else { return items };
            items.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            );
        }
    }

    /// The next lifecycle event of pod `uid`.
    async fn next_of(&mut self, uid: &str) -> Value {
        loop {
            let item = self.next_line(Duration::from_secs(30)).await;
            assert!(item.get("resync").is_none(), "the watcher lagged: {item}");
            let event = &item["lifecycle"];
            if event["pod"]["uid"] == uid {
                return event.clone();
            }
        }
    }
}

/// The report a `monitor` call ends with (its last line).
fn report_of(updates: &[Value]) -> &Value {
    let report = &updates.last().expect("a monitor update")["report"];
    assert!(
        report.is_object(),
        "the monitor ends with its report: {updates:?}"
    );
    report
}

/// `GET path` from the daemon's health port, or `None` while nothing answers
/// there.
async fn get(port: u16, path: &str) -> Option<pleg_testkit::http::Reply> {
    pleg_testkit::http::get(format!("127.0.0.1:{port}"), path)
        .await
        .ok()
}

/// `pleg run` against `endpoint`, serving gRPC on `socket`.
fn pleg_run(endpoint: &str, port: u16, socket: &Path, extra: &[&str]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_pleg"))
            .args(["run", "--runtime-endpoint", endpoint])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pleg run"),
    )
}

/// The names and verdicts of a `HealthResponse`'s checks.
fn checks(health: &Value) -> Vec<(String, bool)> {
    health["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_string(),
                // protobuf's JSON mapping leaves out a false `ok`.
                c["ok"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Waits until the daemon is healthy, with its socket, and its event
/// stream open and caught up (see tests/containerd_cli.rs).
async fn until_streaming(port: u16, socket: &Path) {
    pleg_testkit::wait::eventually_async(
        "the daemon healthy, with its socket and its stream open",
        Duration::from_secs(30),
        || async move {
            let healthy = get(port, "/healthz").await.is_some_and(|r| r.status == 200);
            let streaming = get(port, "/metrics")
                .await
                .is_some_and(|r| r.body.contains("pleg_stream_state{state=\"streaming\"} 1"));
            (healthy && streaming && socket.exists()).then_some(())
        },
    )
    .await;
}

/// The containerd tests take turns: each runs an evented daemon, and on
/// containerd 1.7 each stream event reaches one stream only.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_without_options_follows_a_container_on_containerd() {
    let _turn = TURN.lock().await;
    let dir = pleg_testkit::temp::dir("cd-grpc-py");
    let socket = dir.path().join("pleg.sock");
    let port = free_port();
    let _daemon = pleg_run(&endpoint(), port, &socket, &[]);
    until_streaming(port, &socket).await;

    let health = call(&socket, &["health"]);
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["mode"], "MODE_EVENTED", "{health}");
    assert_eq!(health["stream_state"], "STREAM_STATE_STREAMING", "{health}");
    assert_eq!(
        checks(&health),
        [
            ("pleg".to_string(), true),
            ("runtime".to_string(), true),
            ("stream".to_string(), true),
            ("pods".to_string(), true),
        ]
    );

    let mut watch = Stream::open(&socket, &["--namespace", NAMESPACE]).await;
    let driver = driver();
    let pod = TestPod::run(&driver, "grpc-py").await;
    let name = pod.spec.name.clone();
    // A WaitFor asked before the container exists, and a Monitor of this pod.
    let wait = call_in_background(
        &socket,
        &[
            "wait-for",
            "--namespace",
            NAMESPACE,
            "--name",
            &name,
            "--running",
            "app",
            "--timeout-ms",
            "60000",
        ],
    );
    let mut monitor = Stream::call(
        &socket,
        &[
            "monitor",
            "--namespace-regex",
            &format!("^{NAMESPACE}$"),
            "--name-regex",
            &format!("^{name}$"),
            "--timeout-ms",
            "60000",
        ],
    )
    .await;
    let progress = monitor.next_line(Duration::from_secs(30)).await;
    assert!(
        progress.get("progress").is_some(),
        "counts first: {progress}"
    );
    // It runs until the test lets it exit, so the wait, however late the
    // interpreter starts, finds it running.
    let app = pod
        .start(&driver, "app", 0, until_triggered("app", 3))
        .await;
    let waited = wait.await.expect("the WaitFor call");
    assert_eq!(waited["met"], true, "{waited}");
    assert_eq!(waited["status"]["pod"]["uid"], pod.uid(), "{waited}");
    let running: Vec<_> = waited["status"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter(|c| c["name"] == "app" && c["state"] == "CONTAINER_STATE_RUNNING")
        .collect();
    assert_eq!(running.len(), 1, "app runs in the final status: {waited}");
    assert_eq!(running[0]["id"], app.as_str());
    pod.trigger("app");

    let sandbox_started = watch.next_of(pod.uid()).await;
    assert_eq!(sandbox_started["type"], "EVENT_TYPE_CONTAINER_STARTED");
    assert_eq!(sandbox_started["container"]["id"], pod.sandbox_id.as_str());
    assert_eq!(sandbox_started["container"]["kind"], "ENTRY_KIND_SANDBOX");
    let started = watch.next_of(pod.uid()).await;
    assert_eq!(started["type"], "EVENT_TYPE_CONTAINER_STARTED", "{started}");
    assert_eq!(started["container"]["id"], app.as_str());
    assert_eq!(started["container"]["name"], "app");
    assert_eq!(started["container"]["kind"], "ENTRY_KIND_CONTAINER");
    assert_eq!(started["pod"]["name"], pod.spec.name.as_str());
    assert_eq!(started["pod"]["namespace"], NAMESPACE);
    let died = watch.next_of(pod.uid()).await;
    assert_eq!(died["type"], "EVENT_TYPE_CONTAINER_DIED", "{died}");
    assert_eq!(died["container"]["id"], app.as_str());
    assert_eq!(died["exit_code"], 3);
    assert_eq!(died["reason"], "Error");
    assert_eq!(died["source"], "SOURCE_STREAM", "the daemon runs evented");

    let listing = call(&socket, &["list-pods", "--namespace", NAMESPACE]);
    let ours = listing["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["pod"]["uid"] == pod.uid())
        .unwrap_or_else(|| panic!("our pod is listed: {listing}"));
    assert_eq!(ours["pod"]["name"], pod.spec.name.as_str());
    assert_eq!(ours["sandboxes"][0]["id"], pod.sandbox_id.as_str());
    assert_eq!(ours["sandboxes"][0]["state"], "CONTAINER_STATE_RUNNING");
    let container = &ours["containers"][0];
    assert_eq!(container["id"], app.as_str());
    assert_eq!(container["state"], "CONTAINER_STATE_EXITED");
    assert_eq!(container["exit_code"], 3);
    assert_eq!(container["reason"], "Error");
    assert_eq!(container["last_event"]["type"], "EVENT_TYPE_CONTAINER_DIED");

    // The kubelet's restart: attempt 1 of the same container. The monitor
    // reports the death recovered and ends without waiting for its timeout.
    let again = pod
        .start(
            &driver,
            "app",
            1,
            vec!["/bin/sh".into(), "-c".into(), "sleep 300".into()],
        )
        .await;
    let updates = monitor.rest(Duration::from_secs(45)).await;
    let report = report_of(&updates);
    assert!(report.get("unrecovered").is_none(), "{report}");
    assert!(report.get("error").is_none(), "{report}");
    let recovered = report["recovered"].as_array().expect("recovered");
    assert_eq!(recovered.len(), 1, "{report}");
    let item = &recovered[0];
    assert_eq!(item["namespace"], NAMESPACE);
    assert_eq!(item["name"], name.as_str());
    assert_eq!(item["pod_uid"], pod.uid());
    assert_eq!(item["container"], "app");
    assert_eq!(item["dead_id"], app.as_str());
    assert_eq!(item["replacement_id"], again.as_str());
    assert!(
        item["recovery_ms"].is_string(),
        "uint64 as a string: {item}"
    );
    let died = updates
        .iter()
        .filter_map(|u| u["progress"]["died"].as_u64())
        .max();
    assert_eq!(died, Some(1), "progress counted the death: {updates:?}");

    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_without_options_reads_a_daemon_over_the_fake_cri() {
    let dir = pleg_testkit::temp::dir("fake-grpc-py");
    let socket = dir.path().join("pleg.sock");
    let cri = FakeCriServer::start().await.expect("fake CRI server");
    cri.put_sandbox(sandbox(
        "sb1",
        "uid-1",
        "web",
        "shop",
        PodSandboxState::SandboxReady,
    ));
    cri.put_container(container(
        "app1",
        "sb1",
        "app",
        0,
        CriState::ContainerRunning,
    ));
    let port = free_port();
    let _daemon = pleg_run(
        &cri.endpoint(),
        port,
        &socket,
        &["--relist-period", "100ms", "--relist-threshold", "1s"],
    );
    let socket_there = socket.as_path();
    pleg_testkit::wait::eventually_async(
        "the daemon healthy, with its socket",
        Duration::from_secs(20),
        || async move {
            let healthy = get(port, "/healthz").await.is_some_and(|r| r.status == 200);
            (healthy && socket_there.exists()).then_some(())
        },
    )
    .await;

    let health = call(&socket, &["health"]);
    assert_eq!(health["healthy"], true, "{health}");
    let names: Vec<_> = checks(&health).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["pleg", "runtime", "stream", "pods"]);

    let listing = call(&socket, &["list-pods"]);
    let pods = listing["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 1, "{listing}");
    assert_eq!(pods[0]["pod"]["uid"], "uid-1");
    assert_eq!(pods[0]["pod"]["name"], "web");
    assert_eq!(pods[0]["pod"]["namespace"], "shop");
    assert_eq!(pods[0]["containers"][0]["id"], "app1");
    assert_eq!(pods[0]["containers"][0]["state"], "CONTAINER_STATE_RUNNING");
    let other_namespace = call(&socket, &["list-pods", "--namespace", "infra"]);
    assert!(
        other_namespace.get("pods").is_none(),
        "no pod in infra: {other_namespace}"
    );

    let met = call(
        &socket,
        &[
            "wait-for",
            "--namespace",
            "shop",
            "--name",
            "web",
            "--running",
            "app",
            "--timeout-ms",
            "5000",
        ],
    );
    assert_eq!(met["met"], true, "{met}");
    assert_eq!(met["status"]["pod"]["uid"], "uid-1", "{met}");
    let not_met = call(
        &socket,
        &[
            "wait-for",
            "--namespace",
            "shop",
            "--name",
            "web",
            "--gone",
            "--timeout-ms",
            "300",
        ],
    );
    // protobuf's JSON mapping leaves out a false `met`.
    assert!(not_met.get("met").is_none(), "{not_met}");
    assert_eq!(not_met["status"]["pod"]["uid"], "uid-1", "{not_met}");
    let waited: u64 = not_met["waited_ms"]
        .as_str()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("waited_ms: {not_met}"));
    assert!(waited >= 300, "{not_met}");

    let mut watch = Stream::open(&socket, &["--namespace", "shop"]).await;
    let mut monitor = Stream::call(
        &socket,
        &[
            "monitor",
            "--namespace-regex",
            "^shop$",
            "--timeout-ms",
            "2000",
        ],
    )
    .await;
    let progress = monitor.next_line(Duration::from_secs(30)).await;
    assert!(
        progress.get("progress").is_some(),
        "counts first: {progress}"
    );
    assert!(cri.exit_container("app1", 3), "app1 was running");
    let died = watch.next_of("uid-1").await;
    assert_eq!(died["type"], "EVENT_TYPE_CONTAINER_DIED", "{died}");
    assert_eq!(died["container"]["id"], "app1");
    assert_eq!(died["exit_code"], 3);
    // Never replaced: unrecovered at the monitor's deadline.
    let updates = monitor.rest(Duration::from_secs(30)).await;
    let report = report_of(&updates);
    assert!(report.get("recovered").is_none(), "{report}");
    let unrecovered = report["unrecovered"].as_array().expect("unrecovered");
    assert_eq!(unrecovered.len(), 1, "{report}");
    assert_eq!(unrecovered[0]["dead_id"], "app1");
    assert_eq!(unrecovered[0]["container"], "app");
    assert_eq!(unrecovered[0]["pod_uid"], "uid-1");
}

/// An event as grpcio prints it: (seq, proto enum name, container ID).
type Printed = (u64, String, String);

/// A Rust client's event as grpcio prints it.
fn as_printed(d: &pleg::Delivery) -> Printed {
    let e = d.event().expect("an event");
    let kind = match e.kind {
        pleg::EventType::ContainerStarted => "EVENT_TYPE_CONTAINER_STARTED",
        pleg::EventType::ContainerDied => "EVENT_TYPE_CONTAINER_DIED",
        pleg::EventType::ContainerRemoved => "EVENT_TYPE_CONTAINER_REMOVED",
        pleg::EventType::PodSync => "EVENT_TYPE_POD_SYNC",
        pleg::EventType::ContainerChanged => "EVENT_TYPE_CONTAINER_CHANGED",
        _ => "EVENT_TYPE_CONDITION_MET",
    };
    (
        e.seq().expect("a seq"),
        kind.to_string(),
        e.container_id().map(|c| c.to_string()).unwrap_or_default(),
    )
}

/// A grpcio line as (seq, type, container ID); `seq` is a uint64, which
/// protobuf's JSON mapping writes as a string.
fn printed(line: &Value) -> Printed {
    assert!(line.get("resync").is_none(), "{line}");
    let seq = line["seq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a seq: {line}"));
    let event = &line["lifecycle"];
    (
        seq,
        event["type"].as_str().expect("a type").to_string(),
        event["container"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_resumes_a_watch_with_since_and_epoch_and_misses_nothing_on_containerd() {
    let _turn = TURN.lock().await;
    let dir = pleg_testkit::temp::dir("cd-grpc-py-resume");
    let socket = dir.path().join("pleg.sock");
    let port = free_port();
    let daemon = pleg_run(&endpoint(), port, &socket, &[]);
    until_streaming(port, &socket).await;
    // The ground truth: a Rust watch of everything, with no filter (so
    // contiguous seqs), that never disconnects.
    let everything = pleg::Filter::all();
    let mut rust = pleg::server::grpc::Client::connect(&socket)
        .await
        .expect("the daemon");
    let mut truth = rust.watch(&everything, 4096).await.expect("watch");
    let mut truth_seen: Vec<Printed> = Vec::new();
    let mut read_truth = async |until: &dyn Fn(&[Printed]) -> bool| {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !until(&truth_seen) {
                let d = truth.next().await.expect("open").expect("readable");
                truth_seen.push(as_printed(&d));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; the truth saw {truth_seen:?}"));
        truth_seen.clone()
    };

    // grpcio reads the sandbox's start and the app's, then hangs up.
    let first = Stream::open(&socket, &["--count", "2"]).await;
    let epoch = first.ready["epoch"]
        .as_str()
        .expect("the pleg-epoch header")
        .to_string();
    assert_eq!(epoch.len(), 16, "{}", first.ready);
    let driver = driver();
    let pod = TestPod::run(&driver, "grpc-py-resume").await;
    let app = pod
        .start(&driver, "app", 0, until_triggered("app", 3))
        .await;
    let before: Vec<_> = first
        .rest(Duration::from_secs(30))
        .await
        .iter()
        .map(printed)
        .collect();
    assert_eq!(before.len(), 2, "{before:?}");
    let since = before[1].0;

    // Away: the app dies and comes back.
    pod.trigger("app");
    let again = pod
        .start(
            &driver,
            "app",
            1,
            vec!["/bin/sh".into(), "-c".into(), "sleep 300".into()],
        )
        .await;
    let seen = read_truth(&|got| {
        let happened =
            |kind: &str, which: &str| got.iter().any(|(_, k, id)| k == kind && id == which);
        happened("EVENT_TYPE_CONTAINER_STARTED", &again)
            && happened("EVENT_TYPE_CONTAINER_DIED", &app)
    })
    .await;
    assert_eq!(
        seen.iter()
            .filter(|(seq, ..)| *seq <= since)
            .cloned()
            .collect::<Vec<_>>(),
        before,
        "grpcio and the Rust client saw the same first events"
    );
    let missed: Vec<_> = seen
        .iter()
        .filter(|(seq, ..)| *seq > since)
        .cloned()
        .collect();
    assert!(
        missed
            .iter()
            .any(|(_, k, id)| k == "EVENT_TYPE_CONTAINER_DIED" && *id == app),
        "the death fell in the gap: {missed:?}"
    );

    // Back with since and the epoch: exactly the missed ones, in order,
    // contiguous, then live ones with no repeat at the seam.
    let since_arg = since.to_string();
    let mut back = Stream::open(&socket, &["--epoch", &epoch, "--since", &since_arg]).await;
    let mut replayed = Vec::new();
    while replayed.len() < missed.len() {
        replayed.push(printed(&back.next_line(Duration::from_secs(30)).await));
    }
    assert_eq!(replayed, missed);
    let seqs: Vec<u64> = replayed.iter().map(|(seq, ..)| *seq).collect();
    assert_eq!(
        seqs,
        (since + 1..=since + missed.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    pod.remove(&driver).await;
    let sandbox = pod.sandbox_id.clone();
    let all = read_truth(&|got| {
        got.iter()
            .any(|(_, k, id)| k == "EVENT_TYPE_CONTAINER_REMOVED" && *id == sandbox)
    })
    .await;
    let live_truth: Vec<_> = all
        .iter()
        .filter(|(seq, ..)| *seq > since + missed.len() as u64)
        .cloned()
        .collect();
    let mut live = Vec::new();
    while live.len() < live_truth.len() {
        live.push(printed(&back.next_line(Duration::from_secs(30)).await));
    }
    assert_eq!(live, live_truth, "the live events, none repeated");

    // A point the run never gave out: INVALID_ARGUMENT naming `since`.
    let out = client(
        &socket,
        &["watch", "--epoch", &epoch, "--since", "1000000000000"],
    )
    .output()
    .expect("run pleg_client.py");
    assert_eq!(out.status.code(), Some(1), "a failed call");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("the error line");
    let refused: Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(refused["error"], "INVALID_ARGUMENT", "{refused}");
    assert!(
        refused["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("since: ")),
        "{refused}"
    );

    // A daemon restart in between: grpcio back with the old epoch and an
    // initial state gets a Resync of the epoch's reason, then how a running
    // pod stands (not as fresh starts), then Synced.
    let standing = TestPod::run(&driver, "grpc-py-restart").await;
    let runs = standing
        .start(
            &driver,
            "app",
            0,
            vec!["/bin/sh".into(), "-c".into(), "sleep 300".into()],
        )
        .await;
    drop(rust);
    drop(daemon);
    let port = free_port();
    let _restarted = pleg_run(&endpoint(), port, &socket, &[]);
    until_streaming(port, &socket).await;
    let mut after = Stream::open(
        &socket,
        &["--epoch", &epoch, "--since", &since_arg, "--initial-state"],
    )
    .await;
    assert_ne!(after.ready["epoch"], epoch.as_str(), "a new run");
    let resync = after.next_line(Duration::from_secs(30)).await;
    assert_eq!(
        resync["resync"]["reason"], "RESYNC_REASON_EPOCH_CHANGED",
        "{resync}"
    );
    let mut initial = Vec::new();
    let synced = loop {
        let line = after.next_line(Duration::from_secs(30)).await;
        if line.get("synced").is_some() {
            break line;
        }
        assert_eq!(
            line["initial"], true,
            "only initial state before Synced: {line}"
        );
        assert!(line.get("seq").is_none(), "no seq on initial state: {line}");
        let event = &line["lifecycle"];
        if event["pod"]["uid"] == standing.uid() {
            initial.push((
                event["type"].as_str().unwrap_or_default().to_string(),
                event["container"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    };
    assert_eq!(
        initial,
        [
            (
                "EVENT_TYPE_CONTAINER_STARTED".to_string(),
                standing.sandbox_id.clone()
            ),
            ("EVENT_TYPE_CONTAINER_STARTED".to_string(), runs.clone()),
        ]
    );
    assert_eq!(synced["synced"]["epoch"], after.ready["epoch"], "{synced}");
    standing.remove(&driver).await;
}
