//! What containerd 2.x's event stream does differently from 1.7, against the
//! project-local containerd 2.1 (`scripts/containerd.sh up --version 2.1`,
//! `eval "$(scripts/containerd.sh env --version 2.1)"`; its endpoint is
//! `PLEG_CONTAINERD21_ENDPOINT`).
//!
//! - **Broadcast.** 1.7 hands each event to one `GetContainerEvents` stream
//!   only; 2.x sends every event to every stream. Two generators on one
//!   2.x runtime each see every transition, and neither sees a gap.
//! - **Backlog.** While no stream is open, 2.x keeps the events (up to
//!   5 minutes of them) and replays them to the next stream that connects:
//!   old news, including other tests' pods, some long gone. The generator
//!   drops what its first listing already covers, and reports nothing about
//!   pods that no longer exist.
//! - **A stream that does not read.** Each 2.x stream has a buffer of its own
//!   (100 events), and containerd offers every event to each subscription in
//!   turn, waiting while one's buffer is full. So one client that stops
//!   reading holds up the whole event queue, every other stream, and the CRI
//!   calls that emit events (RunPodSandbox, StartContainer…), until it goes
//!   away. The generator must never be that client, whatever its own
//!   subscribers do; and when such a client goes away, the held events come
//!   and nothing is lost.
//! - **Closed streams.** A closed stream's subscription stays until an event
//!   is offered to it, and that event goes to it or to the others by chance;
//!   a generator that reconnects relists, which covers it.
//!
//! The tests take [`TURN`]: a backlog test needs no other stream open.
//!
//! Run with `eval "$(scripts/containerd.sh env --version 2.1)"; eval
//! "$(scripts/containerd.sh env)"; cargo test --features containerd-tests
//! --test containerd_v2` (the image name comes from the second `env`).

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cri_support::{
    PlannedPod, TestPod, described, init_logs, is, kinds, subscribe_pods_with, until_triggered,
    wait_exited,
};
use pleg::model::PodUid;
use pleg::runtime::cri::{CriConfig, CriRuntime};
use pleg::runtime::{ContainerEvent, ContainerEventKind, EventStream};
use pleg::{
    Config, Delivery, EventSource, EventType, Filter, Pleg, PodLifecycleEvent, Runtime,
    StreamState, SubscribeOptions, Subscription,
};
use pleg_testkit::driver::Driver;
use pleg_testkit::wait::poll;

/// One test at a time: the backlog goes to whichever stream connects first.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for an event or a state before it fails.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- fixtures

fn endpoint21() -> String {
    match std::env::var("PLEG_CONTAINERD21_ENDPOINT") {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "PLEG_CONTAINERD21_ENDPOINT is not set: these tests need the project-local \
             containerd 2.1; run scripts/test.sh, or `scripts/containerd.sh up --version 2.1` \
             and `eval \"$(scripts/containerd.sh env --version 2.1)\"` first"
        ),
    }
}

/// A new connection to containerd 2.1, checked to be 2.x.
async fn runtime21() -> Arc<CriRuntime> {
    init_logs();
    let runtime = CriRuntime::connect(CriConfig::new(endpoint21()))
        .await
        .unwrap_or_else(|e| panic!("connecting to containerd 2.1: {e}"));
    let version = runtime.verify().await.expect("the runtime's version");
    assert!(
        version
            .runtime_version
            .trim_start_matches('v')
            .starts_with('2'),
        "PLEG_CONTAINERD21_ENDPOINT is {version}, not containerd 2.x"
    );
    runtime
}

fn driver21() -> Arc<Driver> {
    Arc::new(Driver::new(&endpoint21()).unwrap_or_else(|e| panic!("containerd 2.1 endpoint: {e}")))
}

/// A raw `GetContainerEvents` stream of its own connection.
async fn raw_stream(runtime: &CriRuntime) -> EventStream {
    tokio::time::timeout(WAIT, runtime.container_events())
        .await
        .expect("GetContainerEvents answered in time")
        .expect("GetContainerEvents opened")
}

/// The next event of a raw stream, or `None` after `quiet` without one.
async fn next_raw(stream: &mut EventStream, quiet: Duration) -> Option<ContainerEvent> {
    match tokio::time::timeout(quiet, poll_fn(|cx| stream.as_mut().poll_next(cx))).await {
        Ok(Some(Ok(event))) => Some(event),
        Ok(Some(Err(e))) => panic!("the event stream failed: {e}"),
        Ok(None) => panic!("the event stream ended"),
        Err(_) => None,
    }
}

/// Reads a raw stream until `quiet` passes without an event; what it read.
async fn drain(stream: &mut EventStream, quiet: Duration) -> Vec<ContainerEvent> {
    let mut got = Vec::new();
    while let Some(event) = next_raw(stream, quiet).await {
        got.push(event);
    }
    got
}

/// Reads a raw stream until every `(id, kind)` in `want` came (at most
/// [`WAIT`]); everything it read.
async fn read_until(stream: &mut EventStream, want: &BTreeSet<Key>) -> Vec<ContainerEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while !want.is_subset(&seen(&got)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_raw(stream, left).await {
            Some(event) => got.push(event),
            None => panic!(
                "timed out: of {want:?} only {:?} came",
                want.intersection(&seen(&got)).collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// An event as `(id, kind)`.
type Key = (String, &'static str);

fn key(event: &ContainerEvent) -> Key {
    (event.id.to_string(), event.kind.as_str())
}

/// The `(id, kind)` pairs of these events.
fn seen(events: &[ContainerEvent]) -> BTreeSet<Key> {
    events.iter().map(key).collect()
}

/// The four events of a container's (or sandbox's) whole life.
fn whole_life(id: &str) -> [Key; 4] {
    use ContainerEventKind::*;
    [Created, Started, Stopped, Deleted].map(|kind| (id.to_string(), kind.as_str()))
}

/// Runs and removes throwaway pods: 4 events each. After a stream closes,
/// containerd 2.x keeps its subscription until an event is offered to it,
/// and such an event goes to the closed subscription or to the others by
/// chance (a `select` between its buffer and its closing): a few events
/// clear the closed subscriptions away.
async fn flush_closed_subscriptions(driver: &Driver) {
    for _ in 0..3 {
        let primer = TestPod::run(driver, "primer").await;
        primer.remove(driver).await;
    }
}

/// An evented generator on a connection of its own, streaming, past the
/// relist its stream's first event brings (see `Streaming` in the stream
/// driver: until that event, it relists at the generic period).
async fn evented() -> Pleg {
    let runtime = runtime21().await;
    let pleg = Pleg::new(runtime, Config::evented()).expect("valid config");
    pleg.start().expect("start");
    let mut status = pleg.watch_stream_status();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.state == StreamState::Streaming))
        .await
        .unwrap_or_else(|_| panic!("not streaming: {:?}", pleg.stream_status()))
        .expect("the generator runs");
    let driver = driver21();
    for _ in 0..5 {
        let primer = TestPod::run(&driver, "primer").await;
        primer.remove(&driver).await;
        if poll(Duration::from_secs(2), || {
            (pleg.stream_stats().events_received > 0).then_some(())
        })
        .await
        .is_some()
        {
            pleg.relist().await.expect("relist");
            return pleg;
        }
    }
    panic!("no event reached the stream: {:?}", pleg.stream_stats());
}

/// Subscribes to every pod's events, `ContainerChanged` left out.
fn subscribe_all(pleg: &Pleg) -> Subscription {
    pleg.subscribe_with(SubscribeOptions::filtered(Filter::all()))
        .expect("subscribe")
}

/// Subscribes to one pod's events, `ContainerChanged` left out.
fn subscribe_pod(pleg: &Pleg, uid: &str) -> Subscription {
    subscribe_pods_with(pleg, &[uid], false)
}

/// Events until `done` holds for what came (at most [`WAIT`]).
async fn events_until(
    sub: &mut Subscription,
    what: &str,
    mut done: impl FnMut(&[Arc<PodLifecycleEvent>]) -> bool,
) -> Vec<Arc<PodLifecycleEvent>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while !done(&got) {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(Delivery::Event(e))) => got.push(e),
            Ok(other) => panic!(
                "{other:?} while waiting for {what}, after {:?}",
                described(&got)
            ),
            Err(_) => panic!("timed out waiting for {what}; came: {:?}", described(&got)),
        }
    }
    got
}

fn has(events: &[Arc<PodLifecycleEvent>], kind: EventType, id: &str) -> bool {
    events.iter().any(|e| is(e, kind, id))
}

/// A container that exits at once with `code`.
fn exiting(code: i32) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), format!("exit {code}")]
}

// ---------------------------------------------------------------- broadcast

/// Two raw streams and two generators on one containerd 2.1: each stream
/// gets every event of a pod's whole life, and each generator reports every
/// transition from the stream, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_each_receive_every_event_and_two_generators_each_report_every_transition() {
    let _turn = TURN.lock().await;
    let (runtime_a, runtime_b) = (runtime21().await, runtime21().await);
    let mut a = raw_stream(&runtime_a).await;
    let mut b = raw_stream(&runtime_b).await;
    // Whatever backlog one of them was handed first.
    drain(&mut a, Duration::from_millis(500)).await;
    drain(&mut b, Duration::from_millis(500)).await;
    let (first, second) = (evented().await, evented().await);

    let driver = driver21();
    let planned = PlannedPod::new("broadcast");
    let mut subs = [
        subscribe_pod(&first, planned.uid()),
        subscribe_pod(&second, planned.uid()),
    ];
    let pod = planned.run(&driver).await;
    let app = pod
        .start(&driver, "app", 0, until_triggered("exit", 3))
        .await;
    pod.trigger("exit");
    wait_exited(&driver, &app).await;
    pod.remove(&driver).await;

    let want: BTreeSet<_> = whole_life(&app)
        .into_iter()
        .chain(whole_life(&pod.sandbox_id))
        .collect();
    let ours = |events: &[ContainerEvent]| -> BTreeMap<Key, usize> {
        let mut counts = BTreeMap::new();
        for e in events.iter().filter(|e| want.contains(&key(e))) {
            *counts.entry(key(e)).or_insert(0) += 1;
        }
        counts
    };
    let got_a = ours(&read_until(&mut a, &want).await);
    let got_b = ours(&read_until(&mut b, &want).await);
    assert_eq!(got_a, got_b, "the two streams got different events");
    assert!(
        got_a.values().all(|&n| n == 1),
        "an event came twice: {got_a:?}"
    );

    let expected = [
        (EventType::ContainerStarted, pod.sandbox_id.clone()),
        (EventType::ContainerStarted, app.clone()),
        (EventType::ContainerDied, app.clone()),
        (EventType::ContainerDied, pod.sandbox_id.clone()),
        (EventType::ContainerRemoved, app.clone()),
        (EventType::ContainerRemoved, pod.sandbox_id.clone()),
    ];
    for (pleg, sub) in [&first, &second].into_iter().zip(subs.iter_mut()) {
        let got = events_until(sub, "the pod's whole life", |got| {
            has(got, EventType::ContainerRemoved, &pod.sandbox_id)
                && has(got, EventType::ContainerRemoved, &app)
        })
        .await;
        let mut got_kinds = kinds(&got);
        got_kinds.sort();
        let mut want_kinds = expected.to_vec();
        want_kinds.sort();
        assert_eq!(got_kinds, want_kinds, "{:?}", described(&got));
        assert!(
            got.iter().all(|e| e.source == EventSource::Stream),
            "every transition from the stream: {:?}",
            described(&got)
        );
        let died = got
            .iter()
            .find(|e| is(e, EventType::ContainerDied, &app))
            .expect("the app died");
        assert_eq!(died.exit_code, Some(3), "{died}");
        let stats = pleg.stream_stats();
        assert_eq!(stats.gaps, 0, "no stream gap on 2.x: {stats:?}");
    }
    first.stop().await;
    second.stop().await;
}

// ---------------------------------------------------------------- backlog

/// Events that happened while no stream was open reach the next stream that
/// connects, with their old `created_at`; and a generator that starts after
/// them reports only what its listing shows and what happens next: nothing
/// of a pod that came and went, no second start of a running container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_replayed_to_a_new_stream_is_old_news_the_generator_drops() {
    let _turn = TURN.lock().await;
    let driver = driver21();

    // 1. What a raw stream that connects after a quiet spell receives.
    flush_closed_subscriptions(&driver).await;
    let gone = TestPod::run(&driver, "backlog-gone").await;
    let gone_app = gone.start(&driver, "app", 0, exiting(7)).await;
    wait_exited(&driver, &gone_app).await;
    gone.remove(&driver).await;
    let connected = SystemTime::now();
    let runtime = runtime21().await;
    let mut stream = raw_stream(&runtime).await;
    let want: BTreeSet<_> = whole_life(&gone_app)
        .into_iter()
        .chain(whole_life(&gone.sandbox_id))
        .collect();
    let replayed = read_until(&mut stream, &want).await;
    let mut rest = drain(&mut stream, Duration::from_millis(500)).await;
    let mut all = replayed;
    all.append(&mut rest);
    for e in all.iter().filter(|e| want.contains(&key(e))) {
        assert!(
            e.created_at.is_some_and(|at| at < connected),
            "a replayed event is older than the stream: {e:?}"
        );
    }
    let others = all.iter().filter(|e| !want.contains(&key(e))).count();
    eprintln!(
        "a new stream was replayed {} events from before it connected, {others} of them about \
         other pods (earlier tests)",
        all.len()
    );
    drop(stream);
    drop(runtime);

    // 2. The same, with a generator as the stream's first reader.
    flush_closed_subscriptions(&driver).await;
    let gone = TestPod::run(&driver, "backlog-gone").await;
    let gone_app = gone.start(&driver, "app", 0, exiting(7)).await;
    wait_exited(&driver, &gone_app).await;
    gone.remove(&driver).await;
    let stays = TestPod::run(&driver, "backlog-stays").await;
    let stays_app = stays
        .start(&driver, "app", 0, until_triggered("exit", 4))
        .await;
    let exited = stays.start(&driver, "done", 0, exiting(5)).await;
    wait_exited(&driver, &exited).await;

    let pleg = Pleg::new(runtime21().await, Config::evented()).expect("valid config");
    let mut everything = subscribe_all(&pleg);
    pleg.start().expect("start");
    // At least the 8 events of the pod that came and went are old news.
    let stale = poll(WAIT, || {
        (pleg.stream_stats().stale_total() >= 8).then_some(())
    })
    .await;
    assert!(
        stale.is_some(),
        "the backlog was not replayed to the generator, or not dropped: {:?}",
        pleg.stream_stats()
    );
    stays.trigger("exit");
    let got = events_until(&mut everything, "the running app's death", |got| {
        has(got, EventType::ContainerDied, &stays_app)
    })
    .await;
    let about = |uid: &str| -> Vec<Arc<PodLifecycleEvent>> {
        got.iter()
            .filter(|e| e.pod.uid.as_str() == uid)
            .cloned()
            .collect()
    };
    assert!(
        about(gone.uid()).is_empty(),
        "events about a pod gone before the generator started: {:?}",
        described(&about(gone.uid()))
    );
    assert!(
        pleg.cache().get(&PodUid::new(gone.uid())).is_none(),
        "a pod gone before the generator started is in its cache"
    );
    let stays_events = about(stays.uid());
    let starts = |id: &str| {
        stays_events
            .iter()
            .filter(|e| is(e, EventType::ContainerStarted, id))
            .count()
    };
    assert_eq!(
        (starts(&stays.sandbox_id), starts(&stays_app)),
        (1, 1),
        "one start each for the sandbox and the running app, however often the backlog \
         says STARTED: {:?}",
        described(&stays_events)
    );
    assert_eq!(starts(&exited), 0, "{:?}", described(&stays_events));
    let died = stays_events
        .iter()
        .find(|e| is(e, EventType::ContainerDied, &stays_app))
        .expect("the app died");
    assert_eq!(
        (died.source, died.exit_code),
        (EventSource::Stream, Some(4)),
        "{died}"
    );
    eprintln!("stream stats after the backlog: {:?}", pleg.stream_stats());
    pleg.stop().await;
    stays.remove(&driver).await;
}

// ---------------------------------------------------------------- a stream that does not read

/// One pod with `CONTAINERS` containers exiting with codes 0.., all run to
/// their end, then the pod removed: 4 + 4 × `CONTAINERS` events.
const CONTAINERS: usize = 5;

struct Life {
    pod: TestPod,
    apps: Vec<String>,
}

async fn whole_pod_life(driver: &Driver) -> Life {
    let pod = TestPod::run(driver, "unread").await;
    let mut apps = Vec::new();
    for c in 0..CONTAINERS {
        let app = pod
            .create(driver, &format!("app{c}"), 0, exiting(c as i32))
            .await;
        driver.start_container(&app).await.expect("StartContainer");
        apps.push(app);
    }
    for app in &apps {
        wait_exited(driver, app).await;
    }
    pod.remove(driver).await;
    Life { pod, apps }
}

/// Checks that `got` holds every transition of these lives exactly once,
/// from the stream, with the exit codes.
fn assert_every_transition(got: &[Arc<PodLifecycleEvent>], lives: &[Life]) {
    for life in lives {
        let mine: Vec<_> = got
            .iter()
            .filter(|e| e.pod.uid.as_str() == life.pod.uid())
            .cloned()
            .collect();
        let mut want = Vec::new();
        for id in life.apps.iter().chain([&life.pod.sandbox_id]) {
            for kind in [
                EventType::ContainerStarted,
                EventType::ContainerDied,
                EventType::ContainerRemoved,
            ] {
                want.push((kind, id.clone()));
            }
        }
        want.sort();
        let mut k = kinds(&mine);
        k.sort();
        assert_eq!(k, want, "{:?}", described(&mine));
        assert!(
            mine.iter().all(|e| e.source == EventSource::Stream),
            "every transition from the stream: {:?}",
            described(&mine)
        );
        for (code, app) in life.apps.iter().enumerate() {
            let died = mine
                .iter()
                .find(|e| is(e, EventType::ContainerDied, app))
                .expect("died");
            assert_eq!(died.exit_code, Some(code as i32), "{died}");
        }
    }
}

/// Whether every life's pod was reported removed, with its containers.
fn all_removed(got: &[Arc<PodLifecycleEvent>], lives: &[Life]) -> bool {
    lives.iter().all(|life| {
        life.apps
            .iter()
            .chain([&life.pod.sandbox_id])
            .all(|id| has(got, EventType::ContainerRemoved, id))
    })
}

/// containerd 2.x offers each event to every subscription in turn and waits
/// while one's 100-event buffer is full; the CRI calls that emit events
/// wait with it. So a generator must never stop reading its stream, even
/// when its own subscribers stop reading theirs: here one never reads
/// (queue of 4) while 10 pods of 5 containers live and die (more than
/// 200 events, past what containerd buffers for a stream), and every CRI
/// call returns, and a subscriber that reads gets every transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_never_makes_the_generator_hold_up_containerd() {
    let _turn = TURN.lock().await;
    let pleg = evented().await;
    let mut idle = pleg
        .subscribe_with(SubscribeOptions::filtered(Filter::all()).with_capacity(4))
        .expect("subscribe");
    let mut sub = subscribe_all(&pleg);
    let driver = driver21();
    let mut lives = Vec::new();
    for i in 0..10 {
        let life = tokio::time::timeout(WAIT, whole_pod_life(&driver))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "pod {i}: CRI calls blocked for {WAIT:?}: containerd's event queue is held \
                     up; the generator's stream: {:?}",
                    pleg.stream_stats()
                )
            });
        lives.push(life);
    }
    let got = events_until(&mut sub, "every pod's removal", |got| {
        all_removed(got, &lives)
    })
    .await;
    assert_every_transition(&got, &lives);
    assert_eq!(pleg.stream_stats().gaps, 0, "{:?}", pleg.stream_stats());
    let lagged = loop {
        match idle.try_recv() {
            Some(Delivery::Resync { missed, .. }) => break missed,
            Some(_) => {}
            None => panic!("the subscriber that did not read was not told it missed events"),
        }
    };
    assert!(lagged > 0);
    pleg.stop().await;
}

/// A `GetContainerEvents` client that stops reading (a 1 KiB HTTP/2 window,
/// so containerd's writes to it block at once) holds up containerd 2.1's
/// whole event queue once its buffer is full: no stream gets events, and
/// the CRI calls that emit events wait. When that client goes away, the
/// held events flow again, and the generator reports every transition of
/// the pods that lived meanwhile, from the stream, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_holds_up_containerd_until_it_goes_away_and_nothing_is_lost() {
    let _turn = TURN.lock().await;
    let pleg = evented().await;
    let mut sub = subscribe_all(&pleg);
    let channel = tonic::transport::Endpoint::from_shared(endpoint21())
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .expect("connecting the reader that does not read");
    let mut client = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
    let stuck = tokio::spawn(async move {
        let events = client
            .get_container_events(k8s_cri::v1::GetEventsRequest {})
            .await
            .map(tonic::Response::into_inner);
        // Holds the call open, reading nothing, until aborted.
        std::future::pending::<()>().await;
        drop(events);
    });

    let driver = driver21();
    let load = {
        let driver = driver.clone();
        tokio::spawn(async move {
            let mut lives = Vec::new();
            for _ in 0..10 {
                lives.push(whole_pod_life(&driver).await);
            }
            lives
        })
    };
    // Held up: the load stops while the generator's stream goes quiet.
    let mut last = (
        pleg.stream_stats().events_received,
        tokio::time::Instant::now(),
    );
    let held = poll(Duration::from_secs(60), || {
        let received = pleg.stream_stats().events_received;
        if received != last.0 {
            last = (received, tokio::time::Instant::now());
        }
        (!load.is_finished() && last.1.elapsed() >= Duration::from_secs(3)).then_some(received)
    })
    .await;
    let Some(received) = held else {
        panic!(
            "containerd was not held up by the client that does not read (all 10 pods lived \
             and died); the generator's stream: {:?}",
            pleg.stream_stats()
        );
    };
    eprintln!("held up after the generator's stream had received {received} events");

    stuck.abort();
    let lives = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the CRI calls went on once the client went away")
        .expect("the load ran");
    let got = events_until(&mut sub, "every pod's removal", |got| {
        all_removed(got, &lives)
    })
    .await;
    assert_every_transition(&got, &lives);
    let stats = pleg.stream_stats();
    assert_eq!(stats.gaps, 0, "{stats:?}");
    pleg.stop().await;
}
