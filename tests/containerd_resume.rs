//! Watches that lose nothing, against the project-local containerd 1.7: a
//! `pleg run` daemon in evented mode, its gRPC `Watch` read through the
//! crate's own client.
//!
//! - A watcher reads some events and disconnects; more happen; it comes
//!   back with `since` and the epoch and gets exactly what it missed, in
//!   order, with contiguous seqs, then live events, with no duplicate at
//!   the seam. A second watcher that never disconnected is the ground
//!   truth.
//! - A daemon restart under a [`ResumingWatch`] with an initial state: a
//!   `Resync` of reason `EpochChanged`, then the initial state (the running
//!   container is not announced as a fresh start), then `Synced`, then live
//!   events.
//! - Watches with an initial state opened while containers start: each
//!   start is reported exactly once, as initial state or as a live event.
//!
//! On containerd 1.7 each stream event reaches one stream only, so the
//! tests, each with an evented daemon of its own, take turns ([`TURN`]).
//!
//! Run with `eval "$(scripts/containerd.sh env)"; cargo test --features
//! containerd-tests --test containerd_resume`.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cri_support::*;
use pleg::hub::ResumeToken;
use pleg::model::{EntryKind, PodUid};
use pleg::server::grpc::{Client, ClientError, ResumingWatch, WatchFrom, WatchStream};
use pleg::{Delivery, EventType, Filter, ResyncReason};

/// One evented daemon at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// `pleg run` in evented mode against the containerd under test, serving
/// gRPC on `socket`; returns once it is healthy, streaming and serving.
async fn daemon(socket: &Path) -> Running {
    let port = free_port();
    let running = Running(
        Command::new(env!("CARGO_BIN_EXE_pleg"))
            .args(["run", "--runtime-endpoint", &endpoint()])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pleg run"),
    );
    pleg_testkit::wait::eventually_async(
        "the daemon healthy, streaming, with its socket",
        WAIT,
        || async move {
            let addr = format!("127.0.0.1:{port}");
            let healthy = pleg_testkit::http::get(addr.clone(), "/healthz")
                .await
                .is_ok_and(|r| r.status == 200);
            let streaming = pleg_testkit::http::get(addr, "/metrics")
                .await
                .is_ok_and(|r| r.body.contains("pleg_stream_state{state=\"streaming\"} 1"));
            (healthy && streaming && Client::connect(socket).await.is_ok()).then_some(())
        },
    )
    .await;
    running
}

/// What an event is, to compare two watchers' views: its seq, kind and
/// container.
type Seen = (u64, EventType, String);

fn seen(delivery: &Delivery) -> Seen {
    match delivery {
        Delivery::Event(e) => (
            e.seq().expect("live events carry seqs"),
            e.kind,
            e.container_id().map(|c| c.to_string()).unwrap_or_default(),
        ),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Reads `stream` until `done` holds for what came.
async fn read_until(
    stream: &mut WatchStream,
    what: &str,
    mut done: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !done(&got) {
            let d = stream
                .next()
                .await
                .expect("the stream stays open")
                .expect("readable");
            got.push(seen(&d));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}; came: {got:?}"));
    got
}

/// The next delivery of a watch that never ends.
async fn next(watch: &mut ResumingWatch) -> Delivery {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("a delivery in time")
        .expect("it never ends")
        .expect("readable")
}

fn has(got: &[Seen], kind: EventType, id: &str) -> bool {
    got.iter().any(|(_, k, c)| *k == kind && c == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_back_with_since_and_epoch_gets_exactly_what_it_missed_then_live_events() {
    let _turn = TURN.lock().await;
    init_logs();
    let dir = pleg_testkit::temp::dir("cd-resume");
    let socket = dir.path().join("pleg.sock");
    let _daemon = daemon(&socket).await;
    let mut client = Client::connect(&socket).await.expect("the daemon");
    // Every event of the node, with no filter: contiguous seqs (the
    // `ContainerChanged` hints, which a watch gets only when it asks, take
    // none). The ground truth never disconnects.
    let everything = Filter::all();
    let mut truth = client.watch(&everything, 4096).await.expect("watch");
    let mut watcher = client.watch(&everything, 4096).await.expect("watch");
    assert_eq!(watcher.epoch(), truth.epoch(), "one run, one epoch");

    let driver = driver();
    let mut cleanup = Cleanup::new();
    let pod = TestPod::run(&driver, "resume").await;
    cleanup.add(&pod);
    let app = pod
        .start(&driver, "app", 0, until_triggered("app", 3))
        .await;
    let before = read_until(&mut watcher, "the app's start", |got| {
        has(got, EventType::ContainerStarted, &app)
    })
    .await;
    let token = watcher.resume_token().expect("a daemon that resumes");
    assert_eq!(token.seq, before.last().expect("events").0);
    drop(watcher);

    // While it is away: the app dies, its next attempt starts, and one more
    // container comes and goes.
    pod.trigger("app");
    let again = pod
        .start(&driver, "app", 1, until_triggered("never", 0))
        .await;
    let brief = pod
        .start(
            &driver,
            "brief",
            0,
            vec!["/bin/sh".into(), "-c".into(), "exit 7".into()],
        )
        .await;
    let truth_seen = read_until(
        &mut truth,
        "everything up to the brief one's death",
        |got| {
            has(got, EventType::ContainerStarted, &again)
                && has(got, EventType::ContainerDied, &brief)
        },
    )
    .await;
    let missed: Vec<Seen> = truth_seen
        .iter()
        .filter(|(seq, ..)| *seq > token.seq)
        .cloned()
        .collect();
    assert!(
        has(&missed, EventType::ContainerDied, &app),
        "the app's death fell in the gap: {missed:?}"
    );

    let mut back = client
        .watch_from(
            &everything,
            4096,
            &WatchFrom::live().resume(Some(token.clone())),
        )
        .await
        .expect("resumed");
    let replayed = read_until(&mut back, "the replay", |got| got.len() >= missed.len()).await;
    assert_eq!(replayed, missed, "exactly what it missed, in order");
    let seqs: Vec<u64> = replayed.iter().map(|(seq, ..)| *seq).collect();
    let contiguous: Vec<u64> = (token.seq + 1..=token.seq + missed.len() as u64).collect();
    assert_eq!(seqs, contiguous, "contiguous from since + 1");

    // Then live: the pod goes away; both watchers see the same events, the
    // resumed one with nothing repeated from the replay.
    pod.remove(&driver).await;
    let sandbox = pod.sandbox_id.clone();
    let removed = |got: &[Seen]| has(got, EventType::ContainerRemoved, &sandbox);
    let live_truth = read_until(&mut truth, "the pod's removal", removed).await;
    let live_back = read_until(&mut back, "the pod's removal", removed).await;
    let after_replay: Vec<Seen> = truth_seen
        .into_iter()
        .chain(live_truth)
        .filter(|(seq, ..)| *seq > token.seq + missed.len() as u64)
        .collect();
    assert_eq!(live_back, after_replay, "the live events, no duplicate");
    assert_eq!(
        live_back.first().map(|(seq, ..)| *seq),
        Some(token.seq + missed.len() as u64 + 1),
        "the seam: the first live seq follows the last replayed one"
    );

    // A point this run never gave out is refused, naming `since`.
    let ahead = ResumeToken::new(token.epoch.clone(), u64::MAX / 2);
    match client
        .watch_from(&Filter::all(), 16, &WatchFrom::live().resume(Some(ahead)))
        .await
    {
        Err(ClientError::Rpc { code, message, .. }) => {
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(message.starts_with("since: "), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_gives_a_resync_of_the_epoch_then_the_initial_state_then_live_events() {
    let _turn = TURN.lock().await;
    init_logs();
    let dir = pleg_testkit::temp::dir("cd-restart");
    let socket = dir.path().join("pleg.sock");
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let pod = TestPod::run(&driver, "restart").await;
    cleanup.add(&pod);
    let app = pod
        .start(&driver, "app", 0, until_triggered("app", 5))
        .await;
    let first = daemon(&socket).await;

    let ours = Filter::all().with_pod_uids([PodUid::new(pod.uid())]);
    let mut watch = ResumingWatch::new(&socket, &ours, 256, WatchFrom::live().initial_state(true))
        .expect("sendable");
    watch.start().await.expect("connected");
    // The state now: the sandbox and the app running, then Synced.
    let mut state = Vec::new();
    let synced = loop {
        match next(&mut watch).await {
            Delivery::Initial(e) => state.push((e.kind, e.container_id().map(|c| c.to_string()))),
            Delivery::Synced(token) => break token,
            other => panic!("before Synced: {other:?}"),
        }
    };
    assert_eq!(
        state,
        vec![
            (EventType::ContainerStarted, Some(pod.sandbox_id.clone())),
            (EventType::ContainerStarted, Some(app.clone())),
        ]
    );

    first.terminate();
    let _second = daemon(&socket).await;
    let resync = next(&mut watch).await;
    assert_eq!(
        resync,
        Delivery::resync(ResyncReason::EpochChanged, 0, None),
        "a new run"
    );
    let mut state = Vec::new();
    let resynced = loop {
        match next(&mut watch).await {
            Delivery::Initial(e) => {
                let c = e.container.as_ref().expect("a container");
                state.push((e.kind, c.id.to_string(), c.kind));
            }
            Delivery::Synced(token) => break token,
            other => panic!(
                "before Synced: {other:?}: the first relist's starts must come as initial state"
            ),
        }
    };
    assert_eq!(
        state,
        vec![
            (
                EventType::ContainerStarted,
                pod.sandbox_id.clone(),
                EntryKind::Sandbox
            ),
            (
                EventType::ContainerStarted,
                app.clone(),
                EntryKind::Container
            ),
        ]
    );
    assert_ne!(resynced.epoch, synced.epoch, "the new run's epoch");
    assert_eq!(watch.reconnects(), 1);

    pod.trigger("app");
    let died = next(&mut watch).await;
    let e = died.event().expect("a live event");
    assert!(matches!(died, Delivery::Event(_)), "{died:?}");
    assert_eq!((e.kind, e.exit_code), (EventType::ContainerDied, Some(5)));
    assert!(e.seq() > Some(resynced.seq), "after what Synced named");
    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_watches_opened_while_containers_start_report_each_start_once() {
    const CONTAINERS: u32 = 6;
    let _turn = TURN.lock().await;
    init_logs();
    let dir = pleg_testkit::temp::dir("cd-initial");
    let socket = dir.path().join("pleg.sock");
    let _daemon = daemon(&socket).await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let pod = TestPod::run(&driver, "initial").await;
    cleanup.add(&pod);
    let ours = Filter::all().with_pod_uids([PodUid::new(pod.uid())]);
    let mut client = Client::connect(&socket).await.expect("the daemon");
    let mut watches = Vec::new();
    let mut ids = vec![pod.sandbox_id.clone()];
    for n in 0..CONTAINERS {
        let from = WatchFrom::live().initial_state(true);
        watches.push(client.watch_from(&ours, 1024, &from).await.expect("watch"));
        ids.push(
            pod.start(&driver, &format!("c{n}"), 0, until_triggered("never", 0))
                .await,
        );
    }
    let from = WatchFrom::live().initial_state(true);
    watches.push(client.watch_from(&ours, 1024, &from).await.expect("watch"));
    for (i, watch) in watches.iter_mut().enumerate() {
        let mut starts: HashMap<String, u32> = HashMap::new();
        let mut synced = false;
        tokio::time::timeout(WAIT, async {
            while starts.len() < ids.len() {
                let d = watch.next().await.expect("open").expect("readable");
                match &d {
                    Delivery::Initial(e) | Delivery::Event(e) => {
                        assert_eq!(matches!(d, Delivery::Event(_)), synced, "watch {i}: {d:?}");
                        if e.kind == EventType::ContainerStarted {
                            let id = e.container_id().expect("a container").to_string();
                            *starts.entry(id).or_default() += 1;
                        }
                    }
                    Delivery::Synced(_) => synced = true,
                    other => panic!("watch {i}: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("watch {i} timed out with {starts:?}"));
        assert!(starts.values().all(|&n| n == 1), "watch {i}: {starts:?}");
        // Anything further would be a repeat.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), watch.next()).await
        {
            let d = d.expect("readable");
            assert!(
                !matches!(&d, Delivery::Event(e) if e.kind == EventType::ContainerStarted),
                "watch {i}: a start reported twice: {d:?}"
            );
        }
    }
    pod.remove(&driver).await;
}
