use std::time::Duration;

use super::*;
use crate::Config;
use crate::event::EventType;
use crate::model::{Container, ContainerState, Pod, PodMeta, PodStatus};
use crate::phase::{HealthReason, PodPhase};
use crate::runtime::fake::FakeRuntime;

use ContainerState::{Exited, Running};

fn pod(uid: &str, session: &str, component: &str, state: ContainerState) -> Pod {
    Pod::new(
        PodMeta::new(uid, uid, "tests")
            .with_label("session", session)
            .with_label("component", component),
    )
    .with_sandbox(Container::new(format!("sb-{uid}"), uid, Running))
    .with_container(Container::new(format!("{uid}-app"), "app", state))
}

fn generator() -> (Arc<FakeRuntime>, Pleg) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    (runtime, pleg)
}

async fn next(rx: &mut SessionReceiver) -> SessionUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an update in time")
        .expect("the session is open")
}

fn drain(rx: &mut SessionReceiver) -> Vec<SessionUpdate> {
    let mut out = Vec::new();
    while let Some(sub) = rx.subscription.as_mut() {
        match sub.try_recv() {
            Some(d) => out.push(rx.update(d)),
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn each_session_sees_only_its_own_pods_with_their_health() {
    let (runtime, pleg) = generator();
    let sessions = SessionWatcher::new(&pleg, SessionOptions::default());
    let mut a = sessions.subscribe("a").expect("first subscriber of a");
    let mut b = sessions.subscribe("b").expect("first subscriber of b");
    assert_eq!(
        sessions.subscribe("a").map(|_| ()),
        Err(SessionError::AlreadySubscribed("a".into()))
    );
    runtime.set_pods(vec![
        pod("a1", "a", "db", Running),
        pod("b1", "b", "web", Running),
    ]);
    let mut status = PodStatus::from_pod(&pod("a1", "a", "db", Running));
    status.ips = vec!["10.0.0.7".into()];
    runtime.push_status("a1", Ok(status));
    pleg.relist().await.expect("listing works");

    let from_a = drain(&mut a);
    let from_b = drain(&mut b);
    assert_eq!(from_a.len(), 2, "a1's sandbox and container: {from_a:?}");
    assert_eq!(from_b.len(), 2, "b1's sandbox and container: {from_b:?}");
    for update in &from_a {
        let SessionUpdate::Event(e) = update else {
            panic!("an event: {update:?}");
        };
        assert_eq!(e.session, "a");
        assert_eq!(e.event.pod.uid.as_str(), "a1");
        assert_eq!(e.component.as_deref(), Some("db"));
        assert_eq!(e.ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(
            (e.health.phase, e.health.health),
            (PodPhase::Running, Health::Ready)
        );
        assert_eq!(e.error, None);
    }
    assert!(
        from_b
            .iter()
            .all(|u| matches!(u, SessionUpdate::Event(e) if e.event.pod.uid.as_str() == "b1"))
    );

    // A failing container: the health says so, and why.
    let mut failed = pod("a1", "a", "db", Exited);
    failed.containers[0] = failed.containers[0].clone().with_exit(3, "Error");
    runtime.set_pods(vec![failed.clone(), pod("b1", "b", "web", Running)]);
    let mut status = PodStatus::from_pod(&failed);
    status.containers[0] = status.containers[0].clone().with_exit(3, "Error");
    runtime.push_status("a1", Ok(status));
    pleg.relist().await.expect("listing works");
    let SessionUpdate::Event(died) = next(&mut a).await else {
        panic!("an event");
    };
    assert_eq!(died.event.kind, EventType::ContainerDied);
    assert_eq!(
        (died.health.health, died.health.reason),
        (Health::Failed, Some(HealthReason::Error))
    );
    assert_eq!(
        died.error.as_deref(),
        Some("container app exited with 3 (Error)")
    );
    assert!(drain(&mut b).is_empty(), "b heard nothing of a's pod");
}

#[tokio::test]
async fn unsubscribe_ends_the_channel_and_frees_the_session() {
    let (runtime, pleg) = generator();
    let sessions = SessionWatcher::new(&pleg, SessionOptions::default());
    assert_eq!(
        sessions.unsubscribe("a"),
        Err(SessionError::NotSubscribed("a".into()))
    );
    let mut a = sessions.subscribe("a").expect("subscriber");
    runtime.set_pods(vec![pod("a1", "a", "db", Running)]);
    pleg.relist().await.expect("listing works");
    sessions.unsubscribe("a").expect("subscribed");
    // What was queued is still handed out, then the channel ends.
    assert!(matches!(next(&mut a).await, SessionUpdate::Event(_)));
    assert!(matches!(next(&mut a).await, SessionUpdate::Event(_)));
    assert!(a.recv().await.is_none());
    // The session can be subscribed again, and the old receiver's drop
    // leaves the new one alone.
    let _again = sessions.subscribe("a").expect("free again");
    drop(a);
    assert_eq!(sessions.sessions(), ["a"]);
    assert_eq!(
        sessions.subscribe("a").map(|_| ()),
        Err(SessionError::AlreadySubscribed("a".into()))
    );
}

#[tokio::test]
async fn a_session_that_falls_behind_gets_a_resync_with_the_exact_count() {
    let (runtime, pleg) = generator();
    let sessions = SessionWatcher::new(&pleg, SessionOptions::default().with_capacity(2));
    let mut a = sessions.subscribe("a").expect("subscriber");
    runtime.set_pods(
        (0..5)
            .map(|i| pod(&format!("a{i}"), "a", "db", Running))
            .collect(),
    );
    pleg.relist().await.expect("listing works");
    // 5 pods, 2 events each; a queue of 2 takes the first pod's batch.
    let updates = drain(&mut a);
    let events = updates
        .iter()
        .filter(|u| matches!(u, SessionUpdate::Event(_)))
        .count();
    let missed: u64 = updates
        .iter()
        .filter_map(|u| match u {
            SessionUpdate::Resync { missed, reason } if *reason == ResyncReason::Lagged => {
                Some(*missed)
            }
            _ => None,
        })
        .sum();
    assert_eq!(events as u64 + missed, 10, "{updates:?}");
    assert!(missed > 0);
}
