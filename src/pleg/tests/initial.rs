//! `Pleg::watch` with an initial state: the current pods first, then
//! `Synced`, then live events, with nothing reported twice or lost
//! between the snapshot and the live events.

use std::collections::HashMap;
use std::time::Duration;

use super::pod;
use crate::model::ContainerState::*;
use crate::runtime::fake::FakeRuntime;
use crate::{Config, Delivery, EventType, Pleg, ResyncReason, SubscribeOptions};

fn initial() -> SubscribeOptions {
    SubscribeOptions::default().with_initial_state(true)
}

fn drain(sub: &mut crate::Subscription) -> Vec<Delivery> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

#[tokio::test]
async fn the_initial_state_holds_every_selected_pod_then_synced_then_live_events() {
    let runtime = FakeRuntime::with_pods(vec![
        pod("a", &[("a1", Running), ("a2", Exited)]),
        pod("b", &[("b1", Created)]),
    ]);
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    pleg.relist().await.expect("the fake lists");
    let mut sub = pleg.watch(initial()).await.expect("valid options");
    let got = drain(&mut sub);
    let described: Vec<(EventType, &str)> = got
        .iter()
        .filter_map(|d| match d {
            Delivery::Initial(e) => Some((e.kind, e.container_id().map_or("", |c| c.as_str()))),
            _ => None,
        })
        .collect();
    assert_eq!(
        described,
        vec![
            (EventType::ContainerStarted, "a1"),
            (EventType::ContainerDied, "a2"),
        ],
        "b1 is created: ContainerChanged, which the default filter leaves out"
    );
    assert_eq!(
        got.last(),
        Some(&Delivery::Synced(pleg.hub().resume_token())),
        "then Synced, naming the last event the state includes"
    );
    assert_eq!(got.len(), 3);

    runtime.set_pods(vec![pod("a", &[("a1", Exited), ("a2", Exited)])]);
    pleg.relist().await.expect("the fake lists");
    let live = drain(&mut sub);
    assert!(
        live.iter()
            .all(|d| matches!(d, Delivery::Event(e) if e.seq() > Some(0))),
        "{live:?}"
    );
    assert!(live.iter().any(|d| {
        d.event()
            .is_some_and(|e| e.kind == EventType::ContainerDied)
    }));
}

#[tokio::test]
async fn before_the_first_relist_it_waits_and_the_first_relist_is_initial_state_not_starts() {
    let runtime = FakeRuntime::with_pods(vec![pod("a", &[("a1", Running), ("a2", Running)])]);
    let pleg = Pleg::new(runtime, Config::generic()).expect("valid config");
    let waiting = tokio::spawn({
        let pleg = pleg.clone();
        async move { pleg.watch(initial()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "no relist yet: nothing to show");
    pleg.relist().await.expect("the fake lists");
    let mut sub = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered after the first relist")
        .expect("the task")
        .expect("valid options");
    let got = drain(&mut sub);
    let initial = got
        .iter()
        .filter(|d| matches!(d, Delivery::Initial(e) if e.kind == EventType::ContainerStarted))
        .count();
    assert_eq!(initial, 2, "{got:?}");
    assert!(
        !got.iter().any(|d| matches!(d, Delivery::Event(_))),
        "the first relist's starts are not live events here: {got:?}"
    );
    assert!(matches!(got.last(), Some(Delivery::Synced(_))));
}

/// Containers keep starting (a relist each) while subscriptions with an
/// initial state are made: each subscription reports each container's
/// start exactly once, as initial state or as a live event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_starts_during_the_snapshot_is_reported_exactly_once() {
    const CONTAINERS: usize = 200;
    let runtime = FakeRuntime::with_pods(vec![pod("p", &[("c0", Running)])]);
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    pleg.relist().await.expect("the fake lists");
    let starter = tokio::spawn({
        let (pleg, runtime) = (pleg.clone(), runtime.clone());
        async move {
            for n in 1..CONTAINERS {
                let ids: Vec<String> = (0..=n).map(|i| format!("c{i}")).collect();
                let containers: Vec<(&str, _)> =
                    ids.iter().map(|id| (id.as_str(), Running)).collect();
                runtime.set_pods(vec![pod("p", &containers)]);
                pleg.relist().await.expect("the fake lists");
                if n % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut subs = Vec::new();
    while !starter.is_finished() {
        subs.push(pleg.watch(initial()).await.expect("valid options"));
        tokio::task::yield_now().await;
    }
    starter.await.expect("the starter");
    assert!(
        subs.len() >= 3,
        "only {} subscriptions overlapped",
        subs.len()
    );
    let mut mixed = 0;
    for (i, sub) in subs.iter_mut().enumerate() {
        let got = drain(sub);
        let synced = got
            .iter()
            .position(|d| matches!(d, Delivery::Synced(_)))
            .expect("one Synced");
        let mut starts: HashMap<String, usize> = HashMap::new();
        for (at, d) in got.iter().enumerate() {
            match d {
                Delivery::Initial(e) => {
                    assert!(at < synced, "initial items before Synced");
                    *starts
                        .entry(e.container_id().expect("a container").to_string())
                        .or_default() += 1;
                }
                Delivery::Event(e) => {
                    assert!(at > synced, "live events after Synced");
                    if e.kind == EventType::ContainerStarted {
                        *starts
                            .entry(e.container_id().expect("a container").to_string())
                            .or_default() += 1;
                    }
                }
                Delivery::Synced(_) => {}
                other => panic!("subscription {i}: unexpected {other:?}"),
            }
        }
        if synced > 1 && synced + 1 < got.len() {
            mixed += 1;
        }
        assert_eq!(
            starts.len(),
            CONTAINERS,
            "subscription {i}: every container"
        );
        assert!(
            starts.values().all(|&n| n == 1),
            "subscription {i}: each start once: {starts:?}"
        );
    }
    assert!(
        mixed >= 2,
        "subscriptions made mid-way, with both initial and live starts: {mixed} of {}",
        subs.len()
    );
}

#[tokio::test]
async fn a_resume_point_of_another_run_gives_the_reason_then_the_initial_state() {
    let runtime = FakeRuntime::with_pods(vec![pod("a", &[("a1", Running)])]);
    let before = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    before.relist().await.expect("the fake lists");
    let token = before.subscribe().resume_token();
    let after = Pleg::new(runtime, Config::generic()).expect("valid config");
    after.relist().await.expect("the fake lists");
    let mut sub = after
        .watch(initial().with_resume(Some(token)))
        .await
        .expect("valid options");
    let got = drain(&mut sub);
    assert_eq!(
        got.first(),
        Some(&Delivery::resync(ResyncReason::EpochChanged, 0, None))
    );
    assert!(matches!(got.get(1), Some(Delivery::Initial(_))));
    assert!(matches!(got.get(2), Some(Delivery::Synced(_))));
    assert_eq!(got.len(), 3);
}
