//! The reliability promises, over the scripted runtime with paused time:
//! health that tells the truth in evented mode, quick retries and
//! reconnections, no silent loss in stream gaps, per-container staleness,
//! tombstones that clear, and wall-clock steps.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{pod_with_sandbox, until_handled, until_state};
use crate::clock::{Clock, ManualClock};
use crate::core::Applied;
use crate::model::{Container, ContainerState, PodMeta, PodUid};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerEvent, ContainerEventKind, SandboxSnapshot};
use crate::stream::StreamState;
use crate::{Config, Delivery, EventType, Pleg, RelistDuration, ResyncReason, Subscription};

use ContainerState::*;

fn clock() -> Arc<ManualClock> {
    ManualClock::ticking(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        Duration::from_micros(1),
    )
}

fn event_at(
    kind: ContainerEventKind,
    uid: &str,
    id: &str,
    state: ContainerState,
    at: SystemTime,
) -> ContainerEvent {
    ContainerEvent {
        id: id.into(),
        kind,
        created_at: Some(at),
        sandbox: Some(SandboxSnapshot {
            pod: Some(PodMeta::new(uid, format!("{uid}-name"), "default")),
            sandbox: Container::new(format!("sb-{uid}"), "sandbox", Running),
            ips: Vec::new(),
        }),
        containers: vec![Container::new(id, format!("{id}-name"), state)],
    }
}

fn drain(sub: &mut Subscription) -> Vec<Delivery> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

fn events_of(deliveries: &[Delivery]) -> Vec<(EventType, String)> {
    deliveries
        .iter()
        .filter_map(Delivery::event)
        .map(|e| {
            (
                e.kind,
                e.container_id()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn gap_resyncs(deliveries: &[Delivery]) -> u64 {
    deliveries
        .iter()
        .map(|d| match d {
            Delivery::Resync {
                missed,
                reason: ResyncReason::StreamGap,
                ..
            } => *missed,
            _ => 0,
        })
        .sum()
}

/// Waits, in paused time, until `healthy` says what `want` says, for at
/// most `limit`; returns how long it took.
async fn until_health(pleg: &Pleg, want: bool, limit: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    while pleg.healthy().is_ok() != want {
        assert!(
            start.elapsed() < limit,
            "health still {:?} after {limit:?}",
            pleg.healthy()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_stops_answering_fails_health_within_the_threshold_in_evented_mode() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    let threshold = Duration::from_secs(10);
    let config = Config::default()
        .with_clock(clock())
        .with_relist(RelistDuration::new(Duration::from_secs(1), threshold))
        .with_evented_relist(RelistDuration::new(Duration::from_secs(300), threshold));
    let pleg = Pleg::new(runtime.clone(), config).expect("valid config");
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    // The first event (one that shows no loss) brings the evented period:
    // relists 300 s apart.
    runtime.push_event(event_at(
        ContainerEventKind::Created,
        "p1",
        "c2",
        ContainerState::Created,
        clock().now() + Duration::from_secs(1),
    ));
    until_handled(&pleg, 1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        pleg.healthy().is_ok(),
        "probes keep it healthy between relists"
    );
    let probes = runtime.probe_calls();
    assert!(probes >= 10, "{probes} probes in a minute");

    // The runtime freezes: every call hangs.
    runtime.set_list_delay(Duration::from_secs(3600));
    let took = until_health(&pleg, false, threshold + Duration::from_secs(10)).await;
    assert!(took <= threshold + Duration::from_secs(10), "{took:?}");
    let silence = pleg.runtime_liveness().silence().expect("silent");
    assert_eq!(silence.operation, crate::runtime::Operation::Probe);

    // It thaws: healthy again within a probe interval.
    runtime.set_list_delay(Duration::ZERO);
    let back = until_health(&pleg, true, Duration::from_secs(15)).await;
    assert!(back <= Duration::from_secs(15), "{back:?}");
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_relist_is_retried_within_a_second_not_a_period_later() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let config = Config::generic()
        .with_clock(clock())
        .with_relist(RelistDuration::new(
            Duration::from_secs(300),
            Duration::from_secs(600),
        ));
    let pleg = Pleg::new(runtime.clone(), config).expect("valid config");
    pleg.start().expect("start");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(runtime.list_calls(), 1);
    runtime.push_list_error("connection reset");
    pleg.relist().await.expect_err("the scripted failure");
    assert!(pleg.stats().last_error.is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(runtime.list_calls(), 3, "retried within a second");
    assert_eq!(pleg.stats().last_error, None, "the retry cleared the error");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(runtime.list_calls(), 3, "then back to the period");
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_stream_reconnects_as_soon_as_the_runtime_answers_again() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg =
        Pleg::new(runtime.clone(), Config::default().with_clock(clock())).expect("valid config");
    pleg.start().expect("start");
    until_state(&pleg, StreamState::Streaming).await;
    // The runtime goes away: the stream ends, opens fail, relists fail,
    // and after 5 failures relisting takes over (probing every 30 s).
    runtime.set_list_failure(Some("connection refused".into()));
    runtime.set_event_failure(Some("connection refused".into()), false);
    runtime.end_event_streams(Some("connection reset".into()));
    until_state(&pleg, StreamState::Fallback).await;
    let opens = runtime.event_opens().len();
    // It comes back: the next relist succeeds, and the stream is opened
    // again at once, not at the next probe.
    runtime.set_list_failure(None);
    runtime.set_event_failure(None, false);
    let back = tokio::time::Instant::now();
    until_state(&pleg, StreamState::Streaming).await;
    let took = back.elapsed();
    assert!(took <= Duration::from_secs(2), "{took:?}");
    assert!(runtime.event_opens().len() > opens);
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_gap_that_loses_a_start_reaches_the_pods_subscribers_as_resync() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg =
        Pleg::new(runtime.clone(), Config::default().with_clock(clock())).expect("valid config");
    let mut everyone = pleg.subscribe();
    let mut others = pleg
        .subscribe_with(crate::SubscribeOptions::filtered(
            crate::Filter::all().with_namespace("elsewhere"),
        ))
        .expect("valid options");
    pleg.relist().await.expect("relist");
    drain(&mut everyone);
    // c1's CREATED and STARTED went to another consumer: STOPPED is the
    // first we hear of it. Its start can never be rebuilt.
    let stopped = event_at(
        ContainerEventKind::Stopped,
        "p1",
        "c1",
        Exited,
        clock().now(),
    );
    assert_eq!(
        pleg.apply_event(&stopped).await,
        Applied::PublishedAfterGap {
            published: 1,
            lost: 1,
            missed: 2
        }
    );
    let got = drain(&mut everyone);
    assert_eq!(events_of(&got), [(EventType::ContainerDied, "c1".into())]);
    assert_eq!(gap_resyncs(&got), 1, "{got:?}");
    assert!(
        matches!(got.last(), Some(Delivery::Resync { .. })),
        "after the batch"
    );
    assert!(drain(&mut others).is_empty(), "not their pod");

    // A DELETED for a container of a pod nobody ever saw: everyone is told.
    let mut unknown = event_at(
        ContainerEventKind::Deleted,
        "p9",
        "c9",
        Exited,
        clock().now(),
    );
    unknown.sandbox = None;
    assert_eq!(pleg.apply_event(&unknown).await, Applied::Unresolved);
    assert_eq!(gap_resyncs(&drain(&mut everyone)), 1);
    assert_eq!(gap_resyncs(&drain(&mut others)), 1);
}

#[tokio::test(start_paused = true)]
async fn staleness_is_judged_per_container_so_an_out_of_order_start_in_a_pod_is_kept() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let clock = clock();
    let pleg = Pleg::new(runtime.clone(), Config::default().with_clock(clock.clone()))
        .expect("valid config");
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("relist");
    drain(&mut sub);
    let early = clock.now();
    let late = early + Duration::from_millis(5);
    // c2's event (later) comes before c1's (earlier): both count.
    for (id, at) in [("c2", late), ("c1", early)] {
        let created = event_at(ContainerEventKind::Created, "p1", id, Created, at);
        pleg.apply_event(&created).await;
        let started = event_at(ContainerEventKind::Started, "p1", id, Running, at);
        assert!(matches!(
            pleg.apply_event(&started).await,
            Applied::Published(1)
        ));
    }
    assert_eq!(
        events_of(&drain(&mut sub)),
        [
            (EventType::ContainerStarted, "c2".into()),
            (EventType::ContainerStarted, "c1".into())
        ]
    );
    // For one container, an event older than the last one applied is
    // stale.
    let stopped = event_at(
        ContainerEventKind::Stopped,
        "p1",
        "c1",
        Exited,
        early + Duration::from_millis(3),
    );
    assert_eq!(pleg.apply_event(&stopped).await, Applied::Published(1));
    let older = event_at(
        ContainerEventKind::Stopped,
        "p1",
        "c1",
        Exited,
        early + Duration::from_millis(2),
    );
    assert_eq!(
        pleg.apply_event(&older).await,
        Applied::Stale(crate::StaleReason::OlderThanCache)
    );
}

#[tokio::test(start_paused = true)]
async fn a_tombstone_clears_when_a_listing_shows_the_id_again() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    let clock = clock();
    let pleg = Pleg::new(runtime.clone(), Config::default().with_clock(clock.clone()))
        .expect("valid config");
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("relist");
    // A bogus listing leaves c1 out: it looks removed...
    runtime.set_pods(vec![pod_with_sandbox("p1", &[])]);
    pleg.relist().await.expect("relist");
    // ... and the next one shows it again.
    runtime.set_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    pleg.relist().await.expect("relist");
    drain(&mut sub);
    // Its events count again.
    let stopped = event_at(
        ContainerEventKind::Stopped,
        "p1",
        "c1",
        Exited,
        clock.now() + Duration::from_secs(1),
    );
    assert_eq!(pleg.apply_event(&stopped).await, Applied::Published(1));
    assert_eq!(
        events_of(&drain(&mut sub)),
        [(EventType::ContainerDied, "c1".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_step_back_or_forward_neither_drops_nor_duplicates_events() {
    for step_back in [true, false] {
        let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
        let clock = clock();
        let pleg = Pleg::new(runtime.clone(), Config::default().with_clock(clock.clone()))
            .expect("valid config");
        let mut sub = pleg.subscribe();
        pleg.relist().await.expect("relist");
        let c1 = event_at(
            ContainerEventKind::Started,
            "p1",
            "c1",
            Running,
            clock.now(),
        );
        assert_eq!(
            pleg.apply_event(&c1).await,
            Applied::PublishedAfterGap {
                published: 1,
                lost: 0,
                missed: 1
            }
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The clock is set an hour back (or forward).
        let hour = Duration::from_secs(3600);
        let now = clock.now();
        clock.set(if step_back { now - hour } else { now + hour });
        // Events stamped on the new clock are neither dropped ...
        let c2 = event_at(
            ContainerEventKind::Started,
            "p1",
            "c2",
            Running,
            clock.now(),
        );
        assert_eq!(
            pleg.apply_event(&c2).await,
            Applied::PublishedAfterGap {
                published: 1,
                lost: 0,
                missed: 1
            },
            "step back: {step_back}"
        );
        let c1_died = event_at(ContainerEventKind::Stopped, "p1", "c1", Exited, clock.now());
        assert_eq!(pleg.apply_event(&c1_died).await, Applied::Published(1));
        // ... nor doubled by a relist or by a repeat.
        runtime.set_pods(vec![pod_with_sandbox(
            "p1",
            &[("c1", Exited), ("c2", Running)],
        )]);
        pleg.relist().await.expect("relist");
        assert!(
            !matches!(pleg.apply_event(&c1_died).await, Applied::Published(n) if n > 0),
            "a repeat publishes nothing"
        );
        assert_eq!(
            events_of(&drain(&mut sub)),
            [
                (EventType::ContainerStarted, "sb-p1".into()),
                (EventType::ContainerStarted, "c1".into()),
                (EventType::ContainerStarted, "c2".into()),
                (EventType::ContainerDied, "c1".into()),
            ],
            "step back: {step_back}"
        );
        assert_eq!(pleg.inner.shared.metrics.clock_steps.get(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_status_fetch_keeps_failing_is_named_with_since_when() {
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[("c1", Running)])]);
    runtime.set_status_failure("p1", Some("rpc error: code = Internal".into()));
    let pleg =
        Pleg::new(runtime.clone(), Config::generic().with_clock(clock())).expect("valid config");
    pleg.relist().await.expect("relist");
    tokio::time::sleep(Duration::from_secs(5)).await;
    pleg.relist().await.expect("relist");
    let failing = pleg.failing_pods();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].meta.uid, PodUid::new("p1"));
    assert_eq!(failing[0].failures, 2);
    assert!(failing[0].since.elapsed() >= Duration::from_secs(5));
    assert!(
        failing[0].error.contains("code = Internal"),
        "{}",
        failing[0].error
    );
    assert_eq!(pleg.inner.shared.metrics.pods_status_failing.get(), 1);
    runtime.set_status_failure("p1", None);
    pleg.relist().await.expect("relist");
    assert!(pleg.failing_pods().is_empty());
    assert_eq!(pleg.inner.shared.metrics.pods_status_failing.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_lived_between_two_relists_is_reported_started_then_died() {
    let clock = clock();
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = Pleg::new(runtime.clone(), Config::generic().with_clock(clock.clone()))
        .expect("valid config");
    let mut sub = pleg.subscribe();
    // One container finished before pleg watched: the kubelet's single
    // ContainerDied.
    let mut before = Container::new("old", "old-name", Exited).with_exit(0, "Completed");
    before.started_at = Some(clock.now() - Duration::from_secs(60));
    let mut first = pod_with_sandbox("p1", &[]);
    first.containers.push(before.clone());
    runtime.set_pods(vec![first]);
    pleg.relist().await.expect("relist");
    // Another starts and exits between two relists.
    let mut quick = Container::new("quick", "quick-name", Exited).with_exit(3, "Error");
    quick.started_at = Some(clock.now());
    let mut second = pod_with_sandbox("p1", &[]);
    second.containers.extend([before, quick]);
    runtime.set_pods(vec![second]);
    pleg.relist().await.expect("relist");
    let got = drain(&mut sub);
    assert_eq!(
        events_of(&got),
        [
            (EventType::ContainerStarted, "sb-p1".into()),
            (EventType::ContainerDied, "old".into()),
            (EventType::ContainerStarted, "quick".into()),
            (EventType::ContainerDied, "quick".into()),
        ]
    );
    let died = got
        .iter()
        .filter_map(Delivery::event)
        .find(|e| {
            e.kind == EventType::ContainerDied
                && e.container_id().is_some_and(|id| id.as_str() == "quick")
        })
        .expect("quick died");
    assert_eq!(died.exit_code, Some(3));
}

#[tokio::test(start_paused = true)]
async fn a_container_seen_created_then_exited_is_reported_started_then_died() {
    let clock = clock();
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = Pleg::new(runtime.clone(), Config::generic().with_clock(clock.clone()))
        .expect("valid config");
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("relist");
    // One relist sees the container created, the next one exited: it ran
    // in between, and its status says when.
    let mut listed = pod_with_sandbox("p1", &[]);
    listed
        .containers
        .push(Container::new("c", "c-name", Created));
    runtime.set_pods(vec![listed]);
    pleg.relist().await.expect("relist");
    let mut exited = Container::new("c", "c-name", Exited).with_exit(5, "Error");
    exited.started_at = Some(clock.now());
    let mut after = pod_with_sandbox("p1", &[]);
    after.containers.push(exited);
    runtime.set_pods(vec![after]);
    pleg.relist().await.expect("relist");
    // A container seen running, then unknown, then exited had its start
    // reported: only its death is new. (ContainerChanged, for created and
    // unknown, is not in a default subscription.)
    let mut running = pod_with_sandbox("p1", &[]);
    let mut r = Container::new("r", "r-name", Running);
    r.started_at = Some(clock.now());
    running.containers.push(r.clone());
    runtime.set_pods(vec![running]);
    pleg.relist().await.expect("relist");
    let mut unknown = pod_with_sandbox("p1", &[]);
    unknown.containers.push(Container {
        state: ContainerState::Unknown,
        ..r.clone()
    });
    runtime.set_pods(vec![unknown]);
    pleg.relist().await.expect("relist");
    let mut gone = pod_with_sandbox("p1", &[]);
    gone.containers.push(Container {
        state: Exited,
        ..r.with_exit(0, "Completed")
    });
    runtime.set_pods(vec![gone]);
    pleg.relist().await.expect("relist");
    let got = drain(&mut sub);
    assert_eq!(
        events_of(&got),
        [
            (EventType::ContainerStarted, "sb-p1".into()),
            (EventType::ContainerStarted, "c".into()),
            (EventType::ContainerDied, "c".into()),
            (EventType::ContainerStarted, "r".into()),
            (EventType::ContainerRemoved, "c".into()),
            (EventType::ContainerDied, "r".into()),
        ]
    );
    let died = got
        .iter()
        .filter_map(Delivery::event)
        .find(|e| {
            e.kind == EventType::ContainerDied
                && e.container_id().is_some_and(|id| id.as_str() == "c")
        })
        .expect("c died");
    assert_eq!(died.exit_code, Some(5));
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_lost_a_start_between_created_and_stopped_rebuilds_it() {
    let clock = clock();
    let runtime = FakeRuntime::with_pods(vec![pod_with_sandbox("p1", &[])]);
    let pleg = Pleg::new(runtime.clone(), Config::default().with_clock(clock.clone()))
        .expect("valid config");
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("relist");
    drain(&mut sub);
    // CREATED reaches pleg, STARTED goes to another consumer, STOPPED
    // carries the start time.
    let created = event_at(
        ContainerEventKind::Created,
        "p1",
        "c1",
        Created,
        clock.now(),
    );
    pleg.apply_event(&created).await;
    let mut stopped = event_at(ContainerEventKind::Stopped, "p1", "c1", Exited, clock.now());
    stopped.containers[0] = Container::new("c1", "c1-name", Exited).with_exit(2, "Error");
    stopped.containers[0].started_at = Some(clock.now());
    let applied = pleg.apply_event(&stopped).await;
    let got = drain(&mut sub);
    assert_eq!(
        events_of(&got),
        [
            (EventType::ContainerStarted, "c1".into()),
            (EventType::ContainerDied, "c1".into()),
        ]
    );
    // The stream showed a gap (the STARTED it never got), but nothing in it
    // was lost for good.
    assert_eq!(
        applied,
        Applied::PublishedAfterGap {
            published: 2,
            lost: 0,
            missed: 1
        }
    );
    // Nothing was lost for good, so nobody is told to resync for it.
    assert_eq!(gap_resyncs(&got), 0, "{got:?}");
}
