use std::time::Duration;

use super::*;
use crate::Config;
use crate::model::{Container, ContainerState, Pod, PodMeta};
use crate::runtime::fake::FakeRuntime;
use crate::select::PodSelector;

use ContainerState::{Exited, Running};

fn pod(uid: &str, name: &str, namespace: &str, state: ContainerState) -> Pod {
    Pod::new(PodMeta::new(uid, name, namespace))
        .with_sandbox(Container::new(format!("sb-{uid}"), name, Running))
        .with_container(Container::new(format!("{uid}-app"), "app", state))
}

fn generator() -> (Arc<FakeRuntime>, Pleg) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    (runtime, pleg)
}

fn kinds(events: &[Arc<PodLifecycleEvent>]) -> Vec<(EventType, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.container
                    .as_ref()
                    .map_or_else(String::new, |c| c.name.clone()),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn pod_events_deliver_what_happened_then_end_quietly_at_the_timeout() {
    let (runtime, pleg) = generator();
    let filter = Filter::all().with_selector(PodSelector::named("lab").expect("a name"));
    let mut events = pleg.pod_events(&filter, Duration::from_secs(30));
    runtime.set_pods(vec![
        pod("u1", "lab", "nb", Running),
        pod("u2", "other", "nb", Running),
    ]);
    pleg.relist().await.expect("listing works");
    let started = tokio::time::Instant::now();
    let mut seen = Vec::new();
    while let Some(delivery) = events.next().await {
        seen.push(delivery.event().expect("no loss").clone());
    }
    assert!(
        seen.iter().all(|e| e.pod.name == "lab"),
        "only the selected pod"
    );
    assert_eq!(
        kinds(&seen),
        vec![
            (EventType::ContainerStarted, "lab".into()),
            (EventType::ContainerStarted, "app".into())
        ]
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(30),
        "ended at the timeout"
    );
    assert!(events.next().await.is_none(), "and stays ended");
}

#[tokio::test]
async fn pod_changes_leave_out_creations_and_deletions() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("u1", "lab", "nb", Running)]);
    pleg.relist().await.expect("listing works");
    let mut changes = pleg.watch_pod_changes("nb");

    // Created after the watch: not a change. Its next event is.
    runtime.set_pods(vec![
        pod("u1", "lab", "nb", Running),
        pod("u2", "late", "nb", Running),
        pod("u3", "elsewhere", "other", Running),
    ]);
    pleg.relist().await.expect("listing works");
    runtime.set_pods(vec![
        pod("u1", "lab", "nb", Exited),
        pod("u2", "late", "nb", Exited),
        pod("u3", "elsewhere", "other", Exited),
    ]);
    pleg.relist().await.expect("listing works");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match changes.next().await.expect("the generator runs") {
            PodChangeUpdate::Change(c) => seen.push(c),
            PodChangeUpdate::Resync { missed } => panic!("lost {missed}"),
        }
    }
    let summary = |c: &PodChange| {
        let container = c.event.container.as_ref().map_or("", |c| c.name.as_str());
        (c.event.pod.name.clone(), c.event.kind, container.to_owned())
    };
    let mut first: Vec<_> = seen[..3].iter().map(summary).collect();
    first.sort();
    // As in a Kubernetes watch: a new pod's first event is its creation
    // (left out); its containers starting afterwards are changes.
    assert_eq!(
        first,
        vec![
            ("lab".into(), EventType::ContainerDied, "app".into()),
            ("late".into(), EventType::ContainerStarted, "app".into()),
            ("late".into(), EventType::ContainerDied, "app".into()),
        ]
    );
    // Deleted: not a change either; the next change of another pod is.
    runtime.set_pods(vec![pod("u2", "late", "nb", Exited)]);
    pleg.relist().await.expect("listing works");
    runtime.set_pods(vec![
        pod("u2", "late", "nb", Exited).with_container(Container::new("u2-side", "side", Running)),
    ]);
    pleg.relist().await.expect("listing works");

    match changes.next().await.expect("the generator runs") {
        PodChangeUpdate::Change(c) => seen.push(c),
        PodChangeUpdate::Resync { missed } => panic!("lost {missed}"),
    }
    assert_eq!(
        summary(&seen[3]),
        ("late".into(), EventType::ContainerStarted, "side".into()),
        "lab's removal is left out"
    );
    let lab = seen
        .iter()
        .find(|c| c.event.pod.name == "lab")
        .expect("lab changed");
    assert_eq!(
        lab.health.as_ref().map(|h| h.phase),
        Some(crate::phase::PodPhase::Succeeded)
    );
}

#[tokio::test]
async fn a_completed_pod_is_stopped_and_removed_through_the_runtime() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("u1", "job", "nb", Running)]);
    pleg.relist().await.expect("listing works");
    let filter = Filter::all()
        .with_namespace("nb")
        .with_selector(PodSelector::named("job").expect("a name"));
    let deleting = {
        let (pleg, runtime, filter) = (pleg.clone(), runtime.clone(), filter.clone());
        tokio::spawn(async move {
            pleg.delete_after_completion(runtime.as_ref(), &filter, Duration::from_secs(30))
                .await
        })
    };
    assert!(runtime.stopped_pods().is_empty(), "not while it runs");
    runtime.set_pods(vec![pod("u1", "job", "nb", Exited)]);
    let deleted = loop {
        pleg.relist().await.expect("listing works");
        if deleting.is_finished() {
            break deleting.await.expect("the task").expect("deleted");
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(deleted.sandboxes, vec![ContainerId::new("sb-u1")]);
    assert_eq!(runtime.stopped_pods(), vec![ContainerId::new("sb-u1")]);
    assert_eq!(runtime.removed_pods(), vec![ContainerId::new("sb-u1")]);
    assert_eq!(deleted.completed[0].meta.name, "job");
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_never_completes_is_not_deleted() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("u1", "job", "nb", Running)]);
    pleg.relist().await.expect("listing works");
    let filter = Filter::all().with_selector(PodSelector::named("job").expect("a name"));
    let err = pleg
        .delete_after_completion(runtime.as_ref(), &filter, Duration::from_secs(5))
        .await
        .expect_err("still running");
    assert!(
        matches!(err, DeleteError::Wait(WaitError::TimedOut { .. })),
        "{err}"
    );
    assert!(runtime.stopped_pods().is_empty() && runtime.removed_pods().is_empty());
}
