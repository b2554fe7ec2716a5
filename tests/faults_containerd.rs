//! The fault suite against a real containerd 1.7, an instance of its own
//! (`PLEG_CRI_INSTANCE=faults` of `scripts/containerd.sh`: its own
//! directory and socket), since these tests freeze and kill it. The real
//! `pleg run` binary is the daemon; a gRPC `Watch` on its socket collects
//! the events; the test kit's CRI driver drives the pods. Each test is named
//! after the promise it checks, and they take turns on the instance.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cri_support::TestPod;
use pleg::server::grpc::{Client, WatchStream};
use pleg::{Delivery, EventType, Filter};
use pleg_testkit::driver::Driver;

/// The instance's name.
const INSTANCE: &str = "faults";

/// One test at a time on the instance.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn script(args: &[&str]) -> String {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/containerd.sh"
    ))
    .args(args)
    .env("PLEG_CRI_INSTANCE", INSTANCE)
    .stderr(Stdio::inherit())
    .output()
    .expect("scripts/containerd.sh");
    assert!(
        out.status.success() || args[0] == "status",
        "containerd.sh {args:?} failed"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The instance's directory.
fn instance_dir() -> PathBuf {
    let env = script(&["env"]);
    let dir = env
        .lines()
        .find_map(|l| l.strip_prefix("export PLEG_CRI_DIR="))
        .expect("PLEG_CRI_DIR in env")
        .trim_matches('\'')
        .to_string();
    PathBuf::from(dir).join(format!("1.7-{INSTANCE}"))
}

fn endpoint() -> String {
    format!(
        "unix://{}",
        instance_dir().join("containerd.sock").display()
    )
}

/// Brings the instance up (installing nothing new: `scripts/test.sh` did).
fn up() {
    script(&["up"]);
}

fn containerd_pid() -> i32 {
    std::fs::read_to_string(instance_dir().join("containerd.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

fn signal(pid: i32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// A frozen containerd, thawed when dropped (also when a test fails).
struct Frozen(i32);

impl Frozen {
    fn new(pid: i32) -> Frozen {
        signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

struct Daemon {
    child: Child,
    port: u16,
    socket: PathBuf,
    _dir: pleg_testkit::temp::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// `pleg run` on the instance, healthy, its stream open in evented mode.
    async fn start(mode: &str, threshold: &str) -> Daemon {
        Daemon::start_with(mode, threshold, &[]).await
    }

    /// [`Daemon::start`] with more flags.
    async fn start_with(mode: &str, threshold: &str, flags: &[&str]) -> Daemon {
        let dir = pleg_testkit::temp::dir("faults");
        let socket = dir.path().join("pleg.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let child = Command::new(env!("CARGO_BIN_EXE_pleg"))
            .args(["run", "--runtime-endpoint", &endpoint(), "--mode", mode])
            .args(["--relist-threshold", threshold])
            .args(flags)
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pleg run");
        let daemon = Daemon {
            child,
            port,
            socket,
            _dir: dir,
        };
        let streaming = mode != "evented";
        pleg_testkit::wait::eventually_async(
            "the daemon healthy, with its socket (and its stream open)",
            Duration::from_secs(60),
            || async {
                let healthy = daemon
                    .get("/healthz")
                    .await
                    .is_some_and(|r| r.status == 200);
                let stream = streaming
                    || daemon.get("/metrics").await.is_some_and(|r| {
                        r.body.contains("pleg_stream_state{state=\"streaming\"} 1")
                    });
                (healthy && stream && daemon.socket.exists()).then_some(())
            },
        )
        .await;
        daemon
    }

    async fn get(&self, path: &str) -> Option<pleg_testkit::http::Reply> {
        pleg_testkit::http::get(format!("127.0.0.1:{}", self.port), path)
            .await
            .ok()
    }

    async fn watch(&self, uids: &[&str]) -> WatchStream {
        let mut client = Client::connect(&self.socket).await.expect("connect");
        let filter = Filter::all().with_pod_uids(uids.iter().map(|u| pleg::PodUid::new(*u)));
        client.watch(&filter, 10_000).await.expect("watch")
    }

    /// Polls `/healthz` until its status is `want`; the time it took.
    async fn until_health(&self, want: u16, limit: Duration) -> (Duration, String) {
        let start = Instant::now();
        loop {
            if let Some(r) = self.get("/healthz?verbose").await
                && r.status == want
            {
                return (start.elapsed(), r.body);
            }
            assert!(
                start.elapsed() < limit,
                "/healthz not {want} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every (kind, container ID) a Watch delivered until `done` says the
/// tally is complete or `limit` passes. A lagged Resync fails the test; a
/// stream-gap Resync is reported (containerd 1.7 hands one event after each
/// reconnection to the stream that closed) and counted under the key
/// `(PodSync, "resync")`.
async fn tally(
    watch: &mut WatchStream,
    limit: Duration,
    mut done: impl FnMut(&BTreeMap<(EventType, String), usize>) -> bool,
) -> BTreeMap<(EventType, String), usize> {
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&seen) {
        let next = tokio::time::timeout_at(deadline, watch.next()).await;
        match next {
            Ok(Some(Ok(Delivery::Event(e)))) => {
                if let Some(id) = e.container_id() {
                    *seen.entry((e.kind, id.to_string())).or_default() += 1;
                }
            }
            Ok(Some(Ok(Delivery::Resync {
                reason: pleg::ResyncReason::StreamGap,
                missed,
                ..
            }))) => {
                eprintln!("a stream-gap Resync (at least {missed} lost)");
                *seen
                    .entry((EventType::PodSync, "resync".to_string()))
                    .or_default() += 1;
            }
            Ok(Some(Ok(other))) => panic!("unexpected delivery {other:?}"),
            Ok(other) => panic!("the watch ended: {other:?}"),
            Err(_) => break,
        }
    }
    seen
}

/// Reads on for `quiet` to catch duplicates that come late.
async fn and_then_nothing_more(
    watch: &mut WatchStream,
    seen: &mut BTreeMap<(EventType, String), usize>,
    quiet: Duration,
) {
    let more = tally(watch, quiet, |_| false).await;
    for (k, n) in more {
        *seen.entry(k).or_default() += n;
    }
}

fn driver() -> Arc<Driver> {
    Arc::new(Driver::new(&endpoint()).expect("driver"))
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_runtime_fails_health_within_the_threshold_and_every_event_comes_once() {
    let _turn = TURN.lock().await;
    up();
    for mode in ["evented", "generic"] {
        let daemon = Daemon::start(mode, "10s").await;
        let driver = driver();
        let pod = TestPod::run(&driver, &format!("freeze-{mode}")).await;
        let mut watch = daemon.watch(&[pod.uid()]).await;
        let app = pod.start(&driver, "app", 0, sh("sleep 4; exit 7")).await;
        let started = tally(&mut watch, Duration::from_secs(30), |s| {
            s.contains_key(&(EventType::ContainerStarted, app.clone()))
        })
        .await;
        assert!(started.contains_key(&(EventType::ContainerStarted, app.clone())));

        // Freeze containerd for 30 s: the container exits meanwhile.
        let freeze = Frozen::new(containerd_pid());
        let frozen = Instant::now();
        let (took, body) = daemon.until_health(503, Duration::from_secs(20)).await;
        eprintln!("{mode}: /healthz 503 {took:?} after SIGSTOP (threshold 10 s):\n{body}");
        assert!(took <= Duration::from_secs(20), "{mode}: {took:?}");
        // The reason names the runtime, within the threshold plus a probe.
        pleg_testkit::wait::eventually_async(
            "a failing check that names the runtime",
            Duration::from_secs(10),
            || async {
                daemon
                    .get("/healthz")
                    .await
                    .filter(|r| r.status == 503 && r.body.contains(&endpoint()))
                    .map(|r| r.body)
            },
        )
        .await;
        assert_eq!(
            daemon.get("/readyz").await.map(|r| r.status),
            Some(503),
            "{mode}: readyz fails too"
        );
        tokio::time::sleep(Duration::from_secs(30).saturating_sub(frozen.elapsed())).await;
        drop(freeze);
        let (back, _) = daemon.until_health(200, Duration::from_secs(15)).await;
        eprintln!("{mode}: /healthz 200 {back:?} after SIGCONT");

        // The death inside the freeze comes once, with its exit code.
        let died = (EventType::ContainerDied, app.clone());
        let mut seen = tally(&mut watch, Duration::from_secs(30), |s| {
            s.contains_key(&died)
        })
        .await;
        pod.remove(&driver).await;
        let removed = (EventType::ContainerRemoved, pod.sandbox_id.clone());
        let more = tally(&mut watch, Duration::from_secs(30), |s| {
            s.contains_key(&removed)
        })
        .await;
        for (k, n) in more {
            *seen.entry(k).or_default() += n;
        }
        and_then_nothing_more(&mut watch, &mut seen, Duration::from_secs(3)).await;
        seen.remove(&(EventType::PodSync, "resync".to_string()));
        for (k, n) in &seen {
            assert_eq!(*n, 1, "{mode}: {k:?} came {n} times: {seen:?}");
        }
        for kind in [EventType::ContainerDied, EventType::ContainerRemoved] {
            assert!(
                seen.contains_key(&(kind, app.clone())),
                "{mode}: {kind:?} of app: {seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_sigkilled_three_times_during_churn_reports_every_transition_once() {
    let _turn = TURN.lock().await;
    up();
    let daemon = Daemon::start("evented", "3m").await;
    let driver = driver();
    let mut pods = Vec::new();
    let mut apps = Vec::new();
    let mut uids = Vec::new();
    // Plan the pods first, so that one Watch covers them all.
    let names: Vec<String> = (0..3)
        .flat_map(|round| (0..2).map(move |i| format!("kill{round}-{i}")))
        .collect();
    for name in &names {
        let pod = TestPod::run(&driver, name).await;
        uids.push(pod.uid().to_string());
        pods.push(pod);
    }
    let uid_refs: Vec<&str> = uids.iter().map(String::as_str).collect();
    let mut watch = daemon.watch(&uid_refs).await;
    for round in 0..3 {
        for pod in pods.iter().skip(round * 2).take(2) {
            // Short-lived containers: one exits at once, one within a
            // second, one a little later.
            for (i, script) in ["exit 1", "sleep 0.5; exit 2", "sleep 2; exit 3"]
                .iter()
                .enumerate()
            {
                let spec_name = format!("c{i}");
                let id = pod.start(&driver, &spec_name, 0, sh(script)).await;
                apps.push(id);
            }
        }
        // SIGKILL containerd while they run and exit; bring it back.
        script(&["kill"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        up();
    }
    // Every container exited; remove the pods.
    for id in &apps {
        cri_support::wait_exited(&driver, id).await;
    }
    for pod in &pods {
        pod.remove(&driver).await;
    }
    let want: Vec<(EventType, String)> = apps
        .iter()
        .flat_map(|id| {
            [
                EventType::ContainerStarted,
                EventType::ContainerDied,
                EventType::ContainerRemoved,
            ]
            .map(|k| (k, id.clone()))
        })
        .collect();
    let mut seen = tally(&mut watch, Duration::from_secs(90), |s| {
        want.iter().all(|k| s.contains_key(k))
    })
    .await;
    and_then_nothing_more(&mut watch, &mut seen, Duration::from_secs(3)).await;
    let missing: Vec<_> = want.iter().filter(|k| !seen.contains_key(k)).collect();
    assert!(missing.is_empty(), "missing {missing:?}; seen {seen:?}");
    seen.remove(&(EventType::PodSync, "resync".to_string()));
    for (k, n) in &seen {
        assert_eq!(*n, 1, "{k:?} came {n} times");
    }
    eprintln!(
        "{} containers in 3 rounds with a SIGKILL each: {} transitions, each once",
        apps.len(),
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_socket_deleted_and_recreated_is_followed_again() {
    let _turn = TURN.lock().await;
    up();
    let daemon = Daemon::start("evented", "10s").await;
    let driver = driver();
    let pod = TestPod::run(&driver, "socket").await;
    let mut watch = daemon.watch(&[pod.uid()]).await;
    // The socket goes, and containerd with it.
    std::fs::remove_file(instance_dir().join("containerd.sock")).expect("delete the socket");
    script(&["kill"]);
    let (took, body) = daemon.until_health(503, Duration::from_secs(25)).await;
    eprintln!("socket gone: /healthz 503 after {took:?}:\n{body}");
    // containerd comes back, with a new socket: pleg follows it again.
    up();
    let answered = Instant::now();
    pleg_testkit::wait::eventually_async(
        "the stream open again",
        Duration::from_secs(30),
        || async {
            daemon
                .get("/metrics")
                .await
                .filter(|r| r.body.contains("pleg_stream_state{state=\"streaming\"} 1"))
                .map(|_| ())
        },
    )
    .await;
    eprintln!(
        "stream open again {:?} after containerd answered",
        answered.elapsed()
    );
    let app = pod.start(&driver, "app", 0, sh("exit 4")).await;
    pod.remove(&driver).await;
    let want = [
        (EventType::ContainerStarted, app.clone()),
        (EventType::ContainerDied, app.clone()),
        (EventType::ContainerRemoved, app.clone()),
    ];
    let mut seen = tally(&mut watch, Duration::from_secs(60), |s| {
        want.iter().all(|k| s.contains_key(k))
    })
    .await;
    and_then_nothing_more(&mut watch, &mut seen, Duration::from_secs(3)).await;
    seen.remove(&(EventType::PodSync, "resync".to_string()));
    for k in &want {
        assert_eq!(seen.get(k), Some(&1), "{k:?}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_of_the_event_stream_is_detected_and_what_it_takes_is_never_lost_silently()
 {
    let _turn = TURN.lock().await;
    up();
    // What every event of went to the other consumer (a removal, say, of a
    // pod pleg hears nothing else of) only a relist can find: the
    // safety-net relists come every 20 s here instead of 5 minutes.
    let period = Duration::from_secs(20);
    let daemon = Daemon::start_with("evented", "3m", &["--evented-relist-period", "20s"]).await;
    // Another consumer of containerd 1.7's event stream, like `crictl events`.
    let thief =
        pleg::runtime::cri::CriRuntime::connect(pleg::runtime::cri::CriConfig::new(endpoint()))
            .await
            .expect("connect the second consumer");
    let mut stolen = pleg::Runtime::container_events(&*thief)
        .await
        .expect("open the second stream");
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = taken.clone();
    let consumer = tokio::spawn(async move {
        while let Some(item) = std::future::poll_fn(|cx| stolen.as_mut().poll_next(cx)).await {
            if item.is_ok() {
                counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let driver = driver();
    let mut pods = Vec::new();
    for i in 0..4 {
        pods.push(TestPod::run(&driver, &format!("thief-{i}")).await);
    }
    let uids: Vec<&str> = pods.iter().map(TestPod::uid).collect();
    let mut watch = daemon.watch(&uids).await;
    // Churn: short-lived containers, some of whose events go to the other
    // consumer.
    let mut apps = Vec::new();
    for round in 0..3 {
        for pod in &pods {
            apps.push(
                pod.start(&driver, &format!("r{round}"), 0, sh("exit 0"))
                    .await,
            );
        }
    }
    for id in &apps {
        cri_support::wait_exited(&driver, id).await;
    }
    for pod in &pods {
        pod.remove(&driver).await;
    }
    let want: Vec<(EventType, String)> = apps
        .iter()
        .flat_map(|id| {
            [
                EventType::ContainerStarted,
                EventType::ContainerDied,
                EventType::ContainerRemoved,
            ]
            .map(|k| (k, id.clone()))
        })
        .collect();
    let mut seen = tally(&mut watch, period + Duration::from_secs(30), |s| {
        want.iter().all(|k| s.contains_key(k))
    })
    .await;
    and_then_nothing_more(&mut watch, &mut seen, Duration::from_secs(3)).await;
    let resyncs = seen
        .remove(&(EventType::PodSync, "resync".to_string()))
        .unwrap_or(0);
    let missing: Vec<_> = want.iter().filter(|k| !seen.contains_key(k)).collect();
    let taken = taken.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "second consumer took {taken} events; {} of {} transitions missing; {resyncs} stream-gap Resyncs",
        missing.len(),
        want.len()
    );
    for (k, n) in &seen {
        assert_eq!(*n, 1, "{k:?} came {n} times");
    }
    // Whatever went missing was told: what a relist can find (a removal,
    // a death) was found within the period, and what it cannot (the start
    // of a container gone by then) was told as a Resync.
    let unfindable = |(kind, _): &&(EventType, String)| *kind == EventType::ContainerStarted;
    assert!(
        missing.iter().all(unfindable),
        "missing {missing:?}: a relist finds these"
    );
    assert!(
        missing.is_empty() || resyncs > 0,
        "missing {missing:?} without a Resync"
    );
    // And health says so once the stream showed more gaps than the one a
    // closed stream's handler causes after each connection.
    let metrics = daemon.get("/metrics").await.expect("metrics").body;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let gaps = counter("pleg_stream_gaps_total");
    let connections = counter("evented_pleg_connection_success_count");
    let reply = daemon.get("/healthz?verbose").await.expect("healthz");
    let stream_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pleg_stream") || l.starts_with("pleg_stale"))
        .collect();
    eprintln!(
        "{gaps} gaps seen over {connections} stream connections:\n{}\n{}",
        stream_lines.join("\n"),
        reply.body
    );
    if gaps > connections {
        assert!(reply.body.contains("another consumer"), "{}", reply.body);
    }
    consumer.abort();
}
