//! The evented generator over the real CRI client against the fake CRI
//! server: the event stream on the wire, its faults, and lagging subscribers.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{
    ContainerEventResponse, ContainerEventType, ContainerState as CriState, PodSandboxState,
    PodSandboxStatus,
};
use pleg::runtime::cri::{CriConfig, CriRuntime};
use pleg::{
    Config, Delivery, EventSource, EventType, Mode, Pleg, StaleReason, StreamState,
    SubscribeOptions, Subscription,
};
use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Quick reconnects and probes, so that real-time tests stay short.
fn quick() -> Config {
    Config::evented()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .with_probe_interval(Duration::from_millis(200))
}

async fn setup(config: Config) -> (FakeCriServer, Arc<CriRuntime>, Pleg) {
    let server = FakeCriServer::start().await.expect("server");
    server.put_sandbox(sandbox(
        "sb1",
        "uid-1",
        "web",
        "default",
        PodSandboxState::SandboxReady,
    ));
    server.put_container(container("c1", "sb1", "app", 0, CriState::ContainerRunning));
    let runtime = CriRuntime::connect(CriConfig::new(server.endpoint()))
        .await
        .expect("connect");
    let pleg = Pleg::new(runtime.clone(), config).expect("config");
    (server, runtime, pleg)
}

/// Waits, 20 s at most, until `done` holds; fails naming `what` otherwise.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn until(pleg: &Pleg, state: StreamState) {
    let mut status = pleg.watch_stream_status();
    let reached = tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.state == state),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "never reached {state:?}: {:?}",
        pleg.stream_status()
    );
}

fn sandbox_status(id: &str, uid: Option<&str>) -> PodSandboxStatus {
    PodSandboxStatus {
        id: id.into(),
        metadata: uid.map(|uid| k8s_cri::v1::PodSandboxMetadata {
            name: "web".into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        state: PodSandboxState::SandboxReady as i32,
        created_at: 1,
        ..PodSandboxStatus::default()
    }
}

fn container_status(id: &str, state: CriState, exit_code: i32) -> k8s_cri::v1::ContainerStatus {
    k8s_cri::v1::ContainerStatus {
        id: id.into(),
        metadata: Some(k8s_cri::v1::ContainerMetadata {
            name: format!("{id}-name"),
            attempt: 0,
        }),
        state: state as i32,
        exit_code,
        reason: if state == CriState::ContainerExited {
            "Error".into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn wire_event(
    kind: ContainerEventType,
    id: &str,
    at: i64,
    statuses: Vec<k8s_cri::v1::ContainerStatus>,
) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: id.into(),
        container_event_type: kind as i32,
        created_at: at,
        pod_sandbox_status: Some(sandbox_status("sb1", Some("uid-1"))),
        containers_statuses: statuses,
    }
}

async fn next_event(sub: &mut Subscription) -> Arc<pleg::PodLifecycleEvent> {
    match tokio::time::timeout(Duration::from_secs(20), sub.recv()).await {
        Ok(Some(Delivery::Event(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_the_wire_are_applied_and_stale_ones_dropped_and_counted() {
    // No periodic relist during the test: only the catch-up relists run, the
    // last one after the anonymous DELETED (a stream gap), when the fake's
    // listing has been brought in step with the events.
    let (server, _runtime, pleg) = setup(quick().with_relist(pleg::RelistDuration::new(
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )))
    .await;
    // Buffered before anyone subscribed, like containerd 1.7's backlog.
    server.push_event(wire_event(
        ContainerEventType::ContainerStartedEvent,
        "old",
        now_ns() - 60_000_000_000,
        vec![container_status("old", CriState::ContainerRunning, 0)],
    ));
    let mut sub = pleg.subscribe();
    pleg.start().expect("start");
    until(&pleg, StreamState::Streaming).await;
    assert_eq!(next_event(&mut sub).await.kind, EventType::ContainerStarted); // sandbox
    assert_eq!(next_event(&mut sub).await.kind, EventType::ContainerStarted); // c1
    // The backlog event is the stream's first: wait for the catch-up relist
    // that follows it, so that no relist races the events below (the fake's
    // listing does not change with the events pushed here).
    eventually("no catch-up relist", || {
        pleg.relist_duration() == pleg.config().evented_relist
    })
    .await;

    // The listing follows the death: the stream-gap relist further down
    // must find c1 as the events left it.
    server.put_container(container("c1", "sb1", "app", 0, CriState::ContainerExited));
    let t = now_ns();
    server.push_event(wire_event(
        ContainerEventType::ContainerStoppedEvent,
        "c1",
        t,
        vec![container_status("c1", CriState::ContainerExited, 7)],
    ));
    let died = next_event(&mut sub).await;
    assert_eq!(
        (died.kind, died.source, died.exit_code),
        (EventType::ContainerDied, EventSource::Stream, Some(7))
    );
    assert_eq!(
        died.runtime_time,
        Some(UNIX_EPOCH + Duration::from_nanos(u64::try_from(t).unwrap_or(0)))
    );

    // Out of order and stale: a STARTED for c1 after its STOPPED, and an
    // event stamped before the one already applied.
    server.push_event(wire_event(
        ContainerEventType::ContainerStartedEvent,
        "c1",
        t + 1,
        vec![container_status("c1", CriState::ContainerRunning, 0)],
    ));
    server.push_event(wire_event(
        ContainerEventType::ContainerStoppedEvent,
        "c1",
        t - 1_000,
        vec![container_status("c1", CriState::ContainerExited, 7)],
    ));
    // An event type from the future: counted by the runtime adapter, skipped.
    let mut future = wire_event(
        ContainerEventType::ContainerCreatedEvent,
        "c3",
        t + 2,
        vec![],
    );
    future.container_event_type = 9;
    server.push_event(future);
    // A sandbox event without metadata for an ID nobody knows.
    let mut anonymous = wire_event(
        ContainerEventType::ContainerDeletedEvent,
        "sb-unknown",
        t + 3,
        vec![],
    );
    anonymous.pod_sandbox_status = None;
    let relisted = pleg.last_relist();
    server.push_event(anonymous);
    // The anonymous DELETED is a container pleg never saw: every
    // subscriber is told it may have missed something, and pleg relists.
    match tokio::time::timeout(Duration::from_secs(20), sub.recv()).await {
        Ok(Some(Delivery::Resync {
            missed: 1,
            reason: pleg::ResyncReason::StreamGap,
            ..
        })) => {}
        other => panic!("expected a stream-gap Resync, got {other:?}"),
    }
    eventually("no stream-gap relist", || pleg.last_relist() != relisted).await;
    // A marker that is applied, stamped after that relist's listing, to
    // know the ones before were handled.
    server.remove_container("c1");
    server.push_event(wire_event(
        ContainerEventType::ContainerDeletedEvent,
        "c1",
        now_ns(),
        vec![],
    ));
    let removed = next_event(&mut sub).await;
    assert_eq!(removed.kind, EventType::ContainerRemoved);

    let stats = pleg.stream_stats();
    assert_eq!(stats.stale(StaleReason::BeforeListing), 1, "{stats:?}");
    assert_eq!(stats.stale(StaleReason::StartedAfterFinish), 1, "{stats:?}");
    assert_eq!(stats.stale(StaleReason::OlderThanCache), 1, "{stats:?}");
    assert_eq!(stats.unresolved, 1, "{stats:?}");
    assert!(pleg.runtime_stats().skipped_records() >= 1);
    assert!(sub.try_recv().is_none(), "nothing else was published");
    // The latency of applied events is recorded just after they are published.
    eventually("latency not recorded", || {
        pleg.stream_stats().latency.count >= 2
    })
    .await;
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_that_errors_five_times_falls_back_and_re_promotes_when_it_works() {
    let (server, _runtime, pleg) = setup(quick()).await;
    server.fail(
        "GetContainerEvents",
        tonic::Status::unavailable("event stream overloaded"),
        Some(5),
    );
    pleg.start().expect("start");
    until(&pleg, StreamState::Fallback).await;
    assert_eq!(pleg.mode(), Mode::Generic);
    assert_eq!(server.calls("GetContainerEvents"), 5);
    let stats = pleg.stream_stats();
    assert_eq!((stats.connection_errors, stats.fallbacks), (5, 1));
    assert!(
        pleg.stream_status()
            .last_error
            .is_some_and(|e| e.contains("event stream overloaded"))
    );

    // The failures are used up: the next probe works.
    until(&pleg, StreamState::Streaming).await;
    assert_eq!(pleg.mode(), Mode::Evented);
    assert_eq!(pleg.stream_stats().promotions, 1);

    // A stream that breaks later reconnects without falling back.
    server.end_event_streams(Some(tonic::Status::internal("shim restarted")));
    let successes = pleg.stream_stats().connection_successes;
    eventually("no reconnect", || {
        pleg.stream_stats().connection_successes != successes
    })
    .await;
    assert_eq!(pleg.mode(), Mode::Evented);
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_event_stream_falls_back_at_once_and_still_reports_by_relisting() {
    let config = quick()
        .with_relist(pleg::RelistDuration {
            relist_period: Duration::from_millis(50),
            relist_threshold: Duration::from_secs(180),
        })
        .with_probe_interval(Duration::from_secs(30));
    let (server, _runtime, pleg) = setup(config).await;
    server.set_events_unimplemented(true);
    let mut sub = pleg.subscribe();
    pleg.start().expect("start");
    until(&pleg, StreamState::Fallback).await;
    assert_eq!(server.calls("GetContainerEvents"), 1);
    assert!(
        pleg.stream_status()
            .last_error
            .is_some_and(|e| e.contains("not implemented"))
    );
    for _ in 0..2 {
        let e = next_event(&mut sub).await;
        assert_eq!(
            (e.kind, e.source),
            (EventType::ContainerStarted, EventSource::Relist)
        );
    }
    assert!(server.exit_container("c1", 1));
    let died = next_event(&mut sub).await;
    assert_eq!(
        (died.kind, died.exit_code),
        (EventType::ContainerDied, Some(1))
    );
    assert_eq!(server.calls("GetContainerEvents"), 1, "no retry storm");
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_events_with_a_stalled_subscriber_leaves_the_others_whole() {
    // Only the catch-up relists (see the test above).
    let (server, _runtime, pleg) = setup(quick().with_relist(pleg::RelistDuration::new(
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )))
    .await;
    let stalled = pleg
        .subscribe_with(SubscribeOptions::default().with_capacity(10))
        .expect("options");
    let mut reader = pleg
        .subscribe_with(SubscribeOptions::default().with_capacity(100_000))
        .expect("options");
    pleg.start().expect("start");
    until(&pleg, StreamState::Streaming).await;
    // The first event on a new stream is followed by a catch-up relist; the
    // flood below is not in the fake's listing, so get that relist done first
    // with an event that changes nothing.
    server.push_event(wire_event(
        ContainerEventType::ContainerStartedEvent,
        "c1",
        now_ns(),
        vec![container_status("c1", CriState::ContainerRunning, 0)],
    ));
    eventually("no catch-up relist", || {
        pleg.relist_duration() == pleg.config().evented_relist
    })
    .await;
    const FLOOD: usize = 2_000;
    let t = now_ns();
    for i in 0..FLOOD {
        let id = format!("f{i}");
        // The runtime lists each flood container, and each comes CREATED
        // then STARTED as containerd sends them, so nothing looks lost.
        server.put_container(container(&id, "sb1", &id, 0, CriState::ContainerRunning));
        server.push_event(wire_event(
            ContainerEventType::ContainerCreatedEvent,
            &id,
            t + 2 * i as i64,
            vec![container_status(&id, CriState::ContainerCreated, 0)],
        ));
        server.push_event(wire_event(
            ContainerEventType::ContainerStartedEvent,
            &id,
            t + 2 * i as i64 + 1,
            vec![container_status(&id, CriState::ContainerRunning, 0)],
        ));
    }
    // Two from the first relist, then the flood, each exactly once, in order.
    let mut ids = Vec::new();
    while ids.len() < FLOOD + 2 {
        let e = next_event(&mut reader).await;
        ids.push(e.container_id().map(|c| c.to_string()).unwrap_or_default());
    }
    let expected: Vec<String> = (0..FLOOD).map(|i| format!("f{i}")).collect();
    assert_eq!(ids[2..], expected[..]);
    assert!(reader.try_recv().is_none());

    let mut stalled = stalled;
    let mut delivered = 0;
    let mut missed = 0;
    while let Some(d) = stalled.try_recv() {
        match d {
            Delivery::Event(_) => delivered += 1,
            Delivery::Resync { missed: m, .. } => missed += m,
            _ => {}
        }
    }
    assert_eq!(delivered, 10);
    assert_eq!(
        delivered + missed,
        (FLOOD + 2) as u64,
        "stats {:?}",
        pleg.stream_stats()
    );
    // The hub counts a batch's drops just after handing it out: the last
    // count may land a moment after the reader saw the last event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pleg.hub().discarded() != missed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub discarded {} but the subscriber missed {missed}",
            pleg.hub().discarded()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_headers_wait_for_the_first_event_counts_as_open() {
    // containerd sends GetContainerEvents' response headers with the first
    // event: on a quiet node the call stays pending. That is not a failure.
    let (server, _runtime, pleg) = setup(quick()).await;
    server.delay("GetContainerEvents", Duration::from_secs(3600));
    pleg.start().expect("start");
    until(&pleg, StreamState::Streaming).await;
    assert_eq!(pleg.mode(), Mode::Evented);
    // No event yet on this stream: relisting keeps the generic period.
    assert_eq!(pleg.relist_duration().relist_period, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = pleg.stream_stats();
    assert_eq!(
        (stats.connection_successes, stats.connection_errors),
        (1, 0)
    );
    assert_eq!(pleg.stream_status().state, StreamState::Streaming);
    pleg.stop().await;
}
