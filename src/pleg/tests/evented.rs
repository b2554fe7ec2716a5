//! The evented generator over the scripted runtime, with paused time and a
//! clock of its own: how stream events become lifecycle events, which are
//! dropped as stale, and the reconnect, fallback and re-promotion schedule.
//! (Beside the code, since some cases apply events directly.)

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use super::{pod_with_sandbox, until_handled, until_state};
use crate::clock::{Clock, ManualClock};
use crate::core::Applied;
use crate::model::{Container, ContainerState, PodMeta, PodUid};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerEvent, ContainerEventKind, SandboxSnapshot};
use crate::stream::{Mode, StaleReason, StreamState};
use crate::{
    Config, Delivery, EventSource, EventType, Filter, Pleg, SubscribeOptions, Subscription,
};

use ContainerState::*;

/// The wall clock of these tests: it moves a microsecond at every reading,
/// so that an event stamped before a listing is older than it, whatever the
/// machine's clock does.
fn clock() -> Arc<ManualClock> {
    static CLOCK: OnceLock<Arc<ManualClock>> = OnceLock::new();
    CLOCK
        .get_or_init(|| {
            ManualClock::ticking(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                Duration::from_micros(1),
            )
        })
        .clone()
}

fn now() -> SystemTime {
    clock().now()
}

fn generator(runtime: &Arc<FakeRuntime>) -> Pleg {
    Pleg::new(runtime.clone(), Config::default().with_clock(clock())).expect("valid config")
}

fn snapshot(uid: Option<&str>, sandbox_id: &str, state: ContainerState) -> SandboxSnapshot {
    SandboxSnapshot {
        pod: uid.map(|u| PodMeta::new(u, format!("{u}-name"), "default")),
        sandbox: Container::new(sandbox_id, "sandbox", state),
        ips: Vec::new(),
    }
}

/// An event about `id` in pod `uid` (sandbox `sb-<uid>` ready), carrying
/// these container statuses, stamped now.
fn event(
    kind: ContainerEventKind,
    uid: &str,
    id: &str,
    containers: Vec<Container>,
) -> ContainerEvent {
    ContainerEvent {
        id: id.into(),
        kind,
        created_at: Some(now()),
        sandbox: Some(snapshot(Some(uid), &format!("sb-{uid}"), Running)),
        containers,
    }
}

fn exited(id: &str, code: i32, reason: &str) -> Container {
    Container::new(id, format!("{id}-name"), Exited).with_exit(code, reason)
}

fn subscribe(pleg: &Pleg) -> Subscription {
    pleg.subscribe_with(SubscribeOptions {
        filter: Filter {
            include_container_changed: true,
            ..Filter::default()
        },
        ..SubscribeOptions::default()
    })
    .expect("valid options")
}

fn drain(sub: &mut Subscription) -> Vec<Arc<crate::PodLifecycleEvent>> {
    std::iter::from_fn(|| sub.try_recv())
        .filter_map(|d| match d {
            Delivery::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn kinds(events: &[Arc<crate::PodLifecycleEvent>]) -> Vec<(EventType, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.container_id()
                    .map(std::string::ToString::to_string)
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Stream events the driver has handled so far.
fn handled(pleg: &Pleg) -> u64 {
    pleg.stream_status().events_handled
}

#[tokio::test(start_paused = true)]
async fn stream_events_are_published_once_with_source_stream_and_the_runtime_time() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    let pleg = generator(&runtime);
    let mut sub = subscribe(&pleg);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    assert_eq!(pleg.mode(), Mode::Evented);
    // Until the stream's first event, relisting keeps the generic period.
    assert_eq!(pleg.relist_duration(), crate::RelistDuration::GENERIC);
    // The catch-up relist at connection reported the pod.
    let first = drain(&mut sub);
    assert_eq!(
        kinds(&first),
        [
            (EventType::ContainerStarted, "sb-p1".to_string()),
            (EventType::ContainerStarted, "c1".to_string()),
        ]
    );
    assert!(first.iter().all(|e| e.source == EventSource::Relist));

    // c1 exits: the stream says so first.
    let stopped = event(
        ContainerEventKind::Stopped,
        "p1",
        "c1",
        vec![exited("c1", 3, "Error")],
    );
    let at = stopped.created_at;
    runtime.set_pods(vec![pod_with_sandbox("p1", &[("c1", Exited)])]);
    let seen = handled(&pleg);
    assert_eq!(runtime.push_event(stopped), 1);
    until_handled(&pleg, seen + 1).await;
    let died = drain(&mut sub);
    assert_eq!(kinds(&died), [(EventType::ContainerDied, "c1".to_string())]);
    assert_eq!(died[0].source, EventSource::Stream);
    assert_eq!(died[0].runtime_time, at);
    assert_eq!(
        (died[0].exit_code, died[0].reason.as_deref()),
        (Some(3), Some("Error"))
    );
    let cached = pleg.cache().get(&PodUid::new("p1")).expect("cached").status;
    assert_eq!(cached.find(&"c1".into()).map(|c| c.state), Some(Exited));

    // The relist finds the same exit: no duplicate.
    pleg.relist().await.expect("relist");
    assert!(drain(&mut sub).is_empty());
    assert_eq!(pleg.stream_stats().events_applied, 1);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn container_that_lives_between_relists_is_reported_from_the_stream() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    // The first event on a new stream is followed by a relist (see
    // first_event_on_a_new_stream_is_followed_by_a_relist); get it done.
    let seen = handled(&pleg);
    runtime.push_event(event(ContainerEventKind::Started, "p1", "sb-p1", vec![]));
    until_handled(&pleg, seen + 1).await;
    let mut sub = subscribe(&pleg);

    let running = Container::new("short", "short-name", Running);
    let seen = handled(&pleg);
    for e in [
        event(
            ContainerEventKind::Created,
            "p1",
            "short",
            vec![Container::new("short", "short-name", Created)],
        ),
        event(ContainerEventKind::Started, "p1", "short", vec![running]),
        event(
            ContainerEventKind::Stopped,
            "p1",
            "short",
            vec![exited("short", 0, "Completed")],
        ),
        event(ContainerEventKind::Deleted, "p1", "short", vec![]),
    ] {
        runtime.push_event(e);
    }
    until_handled(&pleg, seen + 4).await;
    let got = drain(&mut sub);
    assert_eq!(
        kinds(&got),
        [
            (EventType::ContainerChanged, "short".to_string()),
            (EventType::ContainerStarted, "short".to_string()),
            (EventType::ContainerDied, "short".to_string()),
            (EventType::ContainerRemoved, "short".to_string()),
        ]
    );
    assert!(got.iter().all(|e| e.source == EventSource::Stream));
    assert_eq!(got[2].exit_code, Some(0));
    let c = got[1].container.as_ref().expect("container");
    assert_eq!(c.name, "short-name");
    // The runtime never listed it; the next relist adds nothing.
    pleg.relist().await.expect("relist");
    assert!(drain(&mut sub).is_empty());
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deleted_running_container_is_reported_died_then_removed() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    let mut sub = subscribe(&pleg);
    runtime.set_pods(vec![pod_with_sandbox("p1", &[])]);
    let seen = handled(&pleg);
    runtime.push_event(event(ContainerEventKind::Deleted, "p1", "c1", vec![]));
    until_handled(&pleg, seen + 1).await;
    assert_eq!(
        kinds(&drain(&mut sub)),
        [
            (EventType::ContainerDied, "c1".to_string()),
            (EventType::ContainerRemoved, "c1".to_string()),
        ]
    );
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stale_and_out_of_order_events_are_dropped_and_counted() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox(
        "p1",
        &[("running", Running), ("done", Exited)],
    )]);
    let pleg = generator(&runtime);
    // Before the stream opens (and its catch-up relist lists): the backlog.
    let backlog = event(ContainerEventKind::Started, "p1", "gone-long-ago", vec![]);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    let mut sub = subscribe(&pleg);

    let apply = |e: ContainerEvent| {
        let pleg = &pleg;
        async move { pleg.apply_event(&e).await }
    };
    assert_eq!(
        apply(backlog).await,
        Applied::Stale(StaleReason::BeforeListing)
    );
    assert_eq!(
        apply(event(ContainerEventKind::Created, "p1", "running", vec![])).await,
        Applied::Stale(StaleReason::CreatedAfterStart)
    );
    assert_eq!(
        apply(event(ContainerEventKind::Started, "p1", "done", vec![])).await,
        Applied::Stale(StaleReason::StartedAfterFinish)
    );

    // Out of order between two containers of a pod: both count, since
    // staleness is judged per container.
    let early = event(ContainerEventKind::Started, "p1", "late-news", vec![]);
    tokio::time::advance(Duration::from_millis(5)).await;
    let mut stop = event(
        ContainerEventKind::Stopped,
        "p1",
        "running",
        vec![exited("running", 1, "Error")],
    );
    stop.created_at = early.created_at.map(|t| t + Duration::from_millis(5));
    let stop_at = stop.created_at;
    assert_eq!(apply(stop).await, Applied::Published(1));
    assert_eq!(
        apply(early).await,
        Applied::PublishedAfterGap {
            published: 1,
            lost: 0,
            missed: 1
        }
    );
    // Out of order for one container: the older event is stale.
    let mut older = event(
        ContainerEventKind::Stopped,
        "p1",
        "running",
        vec![exited("running", 1, "Error")],
    );
    older.created_at = stop_at.map(|t| t - Duration::from_millis(1));
    assert_eq!(
        apply(older).await,
        Applied::Stale(StaleReason::OlderThanCache)
    );

    // Removed, then a late event about it.
    let mut delete = event(ContainerEventKind::Deleted, "p1", "done", vec![]);
    delete.created_at = delete.created_at.map(|t| t + Duration::from_millis(10));
    assert_eq!(apply(delete).await, Applied::Published(1));
    let mut late = event(ContainerEventKind::Stopped, "p1", "done", vec![]);
    late.created_at = late.created_at.map(|t| t + Duration::from_millis(20));
    assert_eq!(
        apply(late).await,
        Applied::Stale(StaleReason::AlreadyRemoved)
    );

    assert_eq!(
        kinds(&drain(&mut sub)),
        [
            (EventType::ContainerDied, "running".to_string()),
            (EventType::ContainerStarted, "late-news".to_string()),
            (EventType::ContainerRemoved, "done".to_string()),
        ]
    );
    // Counted by the stream driver when they come through the stream.
    let seen = handled(&pleg);
    runtime.push_event(event(ContainerEventKind::Created, "p1", "running", vec![]));
    until_handled(&pleg, seen + 1).await;
    let stats = pleg.stream_stats();
    assert_eq!(stats.stale(StaleReason::CreatedAfterStart), 1);
    assert_eq!(stats.events_received, 1);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sandbox_deleted_without_metadata_is_resolved_through_the_records() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Exited)])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    let mut sub = subscribe(&pleg);
    let uid = PodUid::new("p1");
    assert!(pleg.cache().get(&uid).is_some());

    // Like containerd 1.7: the sandbox's own DELETED event has no sandbox
    // status, so no pod UID.
    let deleted = ContainerEvent {
        id: "sb-p1".into(),
        kind: ContainerEventKind::Deleted,
        created_at: Some(now()),
        sandbox: None,
        containers: Vec::new(),
    };
    runtime.set_pods(Vec::new());
    let seen = handled(&pleg);
    runtime.push_event(deleted);
    until_handled(&pleg, seen + 1).await;
    assert_eq!(
        kinds(&drain(&mut sub)),
        [
            (EventType::ContainerRemoved, "c1".to_string()),
            (EventType::ContainerDied, "sb-p1".to_string()),
            (EventType::ContainerRemoved, "sb-p1".to_string()),
        ]
    );
    assert!(pleg.cache().get(&uid).is_none(), "the pod left the cache");
    assert!(!pleg.is_recorded(&uid).await);

    // An ID nobody knows, without metadata: counted and skipped.
    let seen = handled(&pleg);
    runtime.push_event(ContainerEvent {
        id: "never-seen".into(),
        kind: ContainerEventKind::Deleted,
        created_at: Some(now()),
        sandbox: None,
        containers: Vec::new(),
    });
    until_handled(&pleg, seen + 1).await;
    assert_eq!(pleg.stream_stats().unresolved, 1);
    assert!(drain(&mut sub).is_empty());
    pleg.relist().await.expect("relist");
    assert!(drain(&mut sub).is_empty(), "no duplicate from the relist");
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reconnects_back_off_exponentially_with_jitter() {
    let runtime = FakeRuntime::new();
    runtime.fail_event_opens(4, "connection refused");
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    let opens = runtime.event_opens();
    assert_eq!(opens.len(), 5);
    let gaps: Vec<f64> = opens
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .collect();
    for (gap, expected) in gaps.iter().zip([100.0, 200.0, 400.0, 800.0]) {
        assert!(
            *gap >= expected * 0.8 - 1.0 && *gap <= expected * 1.2 + 1.0,
            "gaps {gaps:?}: {gap} ms is not within ±20 % of {expected} ms"
        );
    }
    let stats = pleg.stream_stats();
    assert_eq!(
        (stats.connection_errors, stats.connection_successes),
        (4, 1)
    );
    assert_eq!(pleg.mode(), Mode::Evented);
    assert_eq!(stats.fallbacks, 0);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn five_failures_in_a_row_fall_back_and_a_working_stream_re_promotes() {
    let runtime = FakeRuntime::new();
    runtime.set_event_failure(Some("stream broken".into()), false);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Fallback).await;
    assert_eq!(runtime.event_opens().len(), 5);
    assert_eq!(pleg.mode(), Mode::Generic);
    assert_eq!(pleg.relist_duration(), crate::RelistDuration::GENERIC);
    assert_eq!(pleg.stream_stats().fallbacks, 1);
    let status = pleg.stream_status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("stream broken"))
    );

    // In fallback the stream is probed every 30 s, no more.
    tokio::time::sleep(Duration::from_secs(95)).await;
    assert_eq!(runtime.event_opens().len(), 5 + 3);
    assert_eq!(pleg.mode(), Mode::Generic);

    // The stream works again: back to evented mode at the next probe.
    runtime.set_event_failure(None, false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    until_state(&pleg, StreamState::Streaming).await;
    assert_eq!(pleg.mode(), Mode::Evented);
    assert_eq!(pleg.stream_stats().promotions, 1);
    // The first event on the new stream brings the evented relist period
    // (one of a container never seen that shows no loss: its CREATED).
    assert_eq!(pleg.relist_duration(), crate::RelistDuration::GENERIC);
    let seen = handled(&pleg);
    runtime.push_event(ContainerEvent {
        id: "nobody".into(),
        kind: ContainerEventKind::Created,
        created_at: Some(now()),
        sandbox: None,
        containers: Vec::new(),
    });
    until_handled(&pleg, seen + 1).await;
    assert_eq!(pleg.relist_duration(), Config::default().evented_relist);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unimplemented_stream_falls_back_at_once_without_a_retry_storm() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    runtime.set_event_failure(Some("unknown method GetContainerEvents".into()), true);
    let pleg = generator(&runtime);
    let mut sub = subscribe(&pleg);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Fallback).await;
    assert_eq!(
        runtime.event_opens().len(),
        1,
        "no retry before falling back"
    );
    assert_eq!(pleg.mode(), Mode::Generic);

    // Ten minutes: one probe every 30 s, and relisting every second finds
    // what happens.
    let lists_before = runtime.list_calls();
    // (A millisecond more, so that the probe due at ten minutes sharp has
    // been made whichever timer fires first.)
    tokio::time::sleep(Duration::from_secs(600) + Duration::from_millis(1)).await;
    assert_eq!(runtime.event_opens().len(), 1 + 20);
    assert!(runtime.list_calls() - lists_before >= 590);
    let got = drain(&mut sub);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.source == EventSource::Relist));
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stream_that_ends_reconnects_and_relists_at_once() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    let mut sub = subscribe(&pleg);
    let lists = runtime.list_calls();

    // While the stream is down, c1 dies; nobody tells the stream.
    runtime.set_pods(vec![pod_with_sandbox("p1", &[("c1", Exited)])]);
    runtime.end_event_streams(Some("connection reset".into()));
    until_state(&pleg, StreamState::Backoff).await;
    until_state(&pleg, StreamState::Streaming).await;
    assert!(
        runtime.list_calls() > lists,
        "a relist followed the reconnection"
    );
    let got = drain(&mut sub);
    assert_eq!(kinds(&got), [(EventType::ContainerDied, "c1".to_string())]);
    assert_eq!(got[0].source, EventSource::Relist);
    assert_eq!(pleg.stream_stats().connection_successes, 2);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn global_cache_time_ticks_every_second_while_streaming() {
    let runtime = FakeRuntime::new();
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    // A first event (that shows no loss): the relist period becomes the
    // evented 300 s.
    let seen = handled(&pleg);
    runtime.push_event(ContainerEvent {
        id: "nobody".into(),
        kind: ContainerEventKind::Created,
        created_at: Some(now()),
        sandbox: None,
        containers: Vec::new(),
    });
    until_handled(&pleg, seen + 1).await;
    let lists = runtime.list_calls();
    let first = pleg.cache().global_time().expect("set by the first relist");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let later = pleg.cache().global_time().expect("still set");
    // No relist ran (the period is 300 s), yet the cache moved on.
    assert_eq!(runtime.list_calls(), lists);
    assert!(
        later - first >= Duration::from_millis(2_500),
        "{:?}",
        later - first
    );

    // A reader waiting for data newer than now is woken by the tick.
    let reader = pleg.cache();
    let uid = PodUid::new("nobody");
    let since = tokio::time::Instant::now();
    let waited =
        tokio::time::timeout(Duration::from_secs(5), reader.get_newer_than(&uid, since)).await;
    assert!(waited.is_ok(), "get_newer_than was stranded");
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn first_event_on_a_new_stream_is_followed_by_a_relist() {
    // containerd 1.7 leaves the handler of a closed stream waiting on its
    // shared channel; it takes and loses the next event. What it lost
    // happened before the first event the new stream gets: a relist then
    // finds it.
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox(
        "p1",
        &[("c1", Running), ("c2", Running)],
    )]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    let mut sub = subscribe(&pleg);
    let lists = runtime.list_calls();

    // c1 died and its event was swallowed; then c2 dies and that one comes.
    runtime.set_pods(vec![pod_with_sandbox(
        "p1",
        &[("c1", Exited), ("c2", Exited)],
    )]);
    let seen = handled(&pleg);
    runtime.push_event(event(
        ContainerEventKind::Stopped,
        "p1",
        "c2",
        vec![exited("c2", 1, "Error")],
    ));
    until_handled(&pleg, seen + 1).await;
    assert_eq!(runtime.list_calls(), lists + 1, "one catch-up relist");
    let got = drain(&mut sub);
    assert_eq!(
        kinds(&got),
        [
            (EventType::ContainerDied, "c2".to_string()),
            (EventType::ContainerDied, "c1".to_string()),
        ]
    );
    assert_eq!(
        (got[0].source, got[1].source),
        (EventSource::Stream, EventSource::Relist)
    );

    // Later events bring no extra relist.
    runtime.push_event(event(ContainerEventKind::Deleted, "p1", "c2", vec![]));
    until_handled(&pleg, seen + 2).await;
    assert_eq!(runtime.list_calls(), lists + 1);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn events_that_show_a_loss_bring_a_relist_at_most_once_a_second() {
    // On containerd 1.7 another consumer of the stream takes some events: a
    // STARTED for a container never seen created shows one was lost.
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    runtime.push_event(event(ContainerEventKind::Started, "p1", "sb-p1", vec![]));
    until_handled(&pleg, 1).await; // the first event and its catch-up relist
    let lists = runtime.list_calls();
    let mut sub = subscribe(&pleg);

    // c1's CREATED went elsewhere; c2 (in another pod, never seen) died
    // with all its events lost but the last.
    runtime.set_pods(vec![
        pod_with_sandbox("p1", &[("c1", Running)]),
        pod_with_sandbox("p2", &[("c2", Exited)]),
    ]);
    let started = event(
        ContainerEventKind::Started,
        "p1",
        "c1",
        vec![Container::new("c1", "c1-name", Running)],
    );
    assert_eq!(
        pleg.apply_event(&started).await,
        Applied::PublishedAfterGap {
            published: 1,
            lost: 0,
            missed: 1
        },
        "a lost CREATED loses nothing published"
    );
    runtime.push_event(event(
        ContainerEventKind::Started,
        "p1",
        "c3",
        vec![Container::new("c3", "c3-name", Running)],
    ));
    until_handled(&pleg, 2).await;
    assert_eq!(runtime.list_calls(), lists + 1, "one relist for the gap");
    assert_eq!(pleg.stream_stats().gaps, 1);
    let got = drain(&mut sub);
    assert!(
        kinds(&got).contains(&(EventType::ContainerDied, "c2".to_string())),
        "the relist found the lost death: {:?}",
        kinds(&got)
    );

    // Another gap within the second waits for a tick (every second) that
    // comes a second or more after the last gap relist.
    runtime.push_event(event(
        ContainerEventKind::Started,
        "p1",
        "c4",
        vec![Container::new("c4", "c4-name", Running)],
    ));
    until_handled(&pleg, 3).await;
    assert_eq!(runtime.list_calls(), lists + 1);
    // This second gap is more than a reconnection loses: the stream is not
    // trusted, and relisting goes to the generic period.
    assert_eq!(pleg.relist_duration(), crate::RelistDuration::GENERIC);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(
        runtime.list_calls() >= lists + 2,
        "a tick or the generic period relisted for it"
    );
    // A minute without a loss: the evented period again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pleg.relist_duration(), Config::default().evented_relist);
    let lists = runtime.list_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(runtime.list_calls(), lists, "no more relists every second");
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_forgives_only_a_first_gap_of_one_event_per_connection() {
    // containerd 1.7 hands one event after a connection to the handler of a
    // closed stream: a first gap of one event is forgiven. A gap of more
    // events, a second gap, and a DELETED of a container and pod never seen
    // are another consumer's doing and count.
    let window = Duration::from_secs(300);
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    runtime.push_event(event(ContainerEventKind::Started, "p1", "sb-p1", vec![]));
    until_handled(&pleg, 1).await;

    // Its CREATED went elsewhere: one event, forgiven.
    runtime.push_event(event(
        ContainerEventKind::Started,
        "p1",
        "c1",
        vec![Container::new("c1", "c1-name", Running)],
    ));
    until_handled(&pleg, 2).await;
    assert_eq!(pleg.stream_stats().gaps, 1);
    assert_eq!(
        pleg.recent_stream_gaps(window).0,
        0,
        "the first one-event gap"
    );

    // The next one-event gap counts.
    runtime.push_event(event(
        ContainerEventKind::Started,
        "p1",
        "c2",
        vec![Container::new("c2", "c2-name", Running)],
    ));
    until_handled(&pleg, 3).await;
    assert_eq!(pleg.recent_stream_gaps(window).0, 1, "a second gap");

    // STOPPED of a container never seen: two events lost.
    runtime.push_event(event(
        ContainerEventKind::Stopped,
        "p1",
        "c3",
        vec![Container::new("c3", "c3-name", Exited)],
    ));
    until_handled(&pleg, 4).await;
    assert_eq!(pleg.recent_stream_gaps(window).0, 2, "a two-event gap");

    // DELETED of a container of a pod never seen: all its events lost,
    // whether the event names the pod or not (containerd 1.7 sends no
    // metadata with some DELETEDs).
    runtime.push_event(event(ContainerEventKind::Deleted, "p9", "c9", vec![]));
    until_handled(&pleg, 5).await;
    assert_eq!(pleg.recent_stream_gaps(window).0, 3, "a pod never seen");
    let mut nameless = event(ContainerEventKind::Deleted, "p8", "c8", vec![]);
    nameless.sandbox = None;
    runtime.push_event(nameless);
    until_handled(&pleg, 6).await;
    let stats = pleg.stream_stats();
    assert_eq!((stats.gaps, stats.unresolved), (5, 1), "{stats:?}");
    assert_eq!(pleg.recent_stream_gaps(window).0, 4, "a pod nobody names");
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_first_gap_of_several_events_counts_for_health_at_once() {
    let window = Duration::from_secs(300);
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = generator(&runtime);
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    runtime.push_event(event(ContainerEventKind::Started, "p1", "sb-p1", vec![]));
    until_handled(&pleg, 1).await;
    runtime.push_event(event(
        ContainerEventKind::Stopped,
        "p1",
        "c1",
        vec![Container::new("c1", "c1-name", Exited)],
    ));
    until_handled(&pleg, 2).await;
    assert_eq!(pleg.stream_stats().gaps, 1);
    assert_eq!(pleg.recent_stream_gaps(window).0, 1);
    pleg.stop().await;
}
