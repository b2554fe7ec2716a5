//! The relisting generator against a real containerd 1.7 (the project-local
//! one from `scripts/containerd.sh`). Every test drives its own pods through
//! the test kit's CRI driver, relists by hand, and asserts the exact events of its
//! own pods (other tests run beside it on the same containerd).

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::collections::HashMap;
use std::time::Duration;

use cri_support::*;
use pleg::model::{ContainerState, EntryKind, PodUid};
use pleg::{EventSource, EventType};
use pleg_testkit::wait::eventually;

const RUNNING_FOREVER: &str = "forever";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_whose_container_runs_reports_sandbox_then_container_started() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = generator(runtime.clone());
    let pod = TestPod::run(&driver, "runs").await;
    let mut sub = subscribe_pods(&pleg, &[pod.uid()]);
    let app = pod
        .start(&driver, "app", 0, until_triggered(RUNNING_FOREVER, 0))
        .await;

    pleg.relist().await.expect("relist");
    let got = events(&mut sub);
    assert_eq!(
        kinds(&got),
        [
            (EventType::ContainerStarted, pod.sandbox_id.clone()),
            (EventType::ContainerStarted, app.clone()),
        ]
    );
    let (sandbox, container) = (&got[0], &got[1]);
    assert_eq!(sandbox.pod.uid.as_str(), pod.uid());
    assert_eq!(sandbox.pod.name, pod.spec.name);
    assert_eq!(sandbox.pod.namespace, NAMESPACE);
    assert_eq!(
        sandbox.pod.labels.get("pleg.test/name"),
        Some(&pod.spec.name)
    );
    let sandbox_ref = sandbox.container.as_ref().expect("sandbox ref");
    assert_eq!(sandbox_ref.kind, EntryKind::Sandbox);
    assert_eq!(sandbox_ref.name, pod.spec.name);
    let app_ref = container.container.as_ref().expect("container ref");
    assert_eq!(app_ref.kind, EntryKind::Container);
    assert_eq!((app_ref.name.as_str(), app_ref.attempt), ("app", 0));
    assert!(got.iter().all(|e| e.source == EventSource::Relist));
    assert!(
        container.runtime_time.is_some(),
        "start time from ContainerStatus"
    );
    assert_eq!(container.exit_code, None);

    let status = pleg
        .cache()
        .get(&PodUid::new(pod.uid()))
        .expect("cached")
        .status;
    let cached = status.container_by_name("app").expect("app in the cache");
    assert_eq!(cached.state, ContainerState::Running);
    assert!(cached.started_at.is_some());
    assert!(status.has_ready_sandbox());

    // Nothing changed: nothing more.
    pleg.relist().await.expect("relist");
    assert!(events(&mut sub).is_empty());
    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_that_exits_with_code_3_is_reported_died_with_code_and_reason() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = generator(runtime.clone());
    let pod = TestPod::run(&driver, "exit3").await;
    let mut sub = subscribe_pods(&pleg, &[pod.uid()]);
    let app = pod
        .start(&driver, "app", 0, until_triggered("exit", 3))
        .await;
    pleg.relist().await.expect("relist");
    assert_eq!(events(&mut sub).len(), 2, "sandbox and container started");

    pod.trigger("exit");
    wait_exited(&driver, &app).await;
    pleg.relist().await.expect("relist");
    let got = events(&mut sub);
    assert_eq!(kinds(&got), [(EventType::ContainerDied, app.clone())]);
    assert_eq!(got[0].exit_code, Some(3));
    assert_eq!(got[0].reason.as_deref(), Some("Error"));
    assert!(
        got[0].runtime_time.is_some(),
        "finish time from ContainerStatus"
    );
    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_container_is_reported_died_and_removed_container_removed() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = generator(runtime.clone());
    let pod = TestPod::run(&driver, "stop").await;
    let mut sub = subscribe_pods(&pleg, &[pod.uid()]);
    let app = pod
        .start(&driver, "app", 0, until_triggered(RUNNING_FOREVER, 0))
        .await;
    pleg.relist().await.expect("relist");
    assert_eq!(events(&mut sub).len(), 2);

    driver
        .stop_container(&app, Duration::ZERO)
        .await
        .expect("StopContainer");
    pleg.relist().await.expect("relist");
    let got = events(&mut sub);
    assert_eq!(kinds(&got), [(EventType::ContainerDied, app.clone())]);
    // Killed with SIGKILL: 128 + 9.
    assert_eq!(got[0].exit_code, Some(137));
    assert_eq!(got[0].reason.as_deref(), Some("Error"));

    driver
        .remove_container(&app)
        .await
        .expect("RemoveContainer");
    pleg.relist().await.expect("relist");
    assert_eq!(
        kinds(&events(&mut sub)),
        [(EventType::ContainerRemoved, app.clone())]
    );
    let status = pleg
        .cache()
        .get(&PodUid::new(pod.uid()))
        .expect("pod still cached")
        .status;
    assert!(status.containers.is_empty(), "{:?}", status.containers);
    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_recreated_with_attempt_1_after_a_death_is_reported_started() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = generator(runtime.clone());
    let pod = TestPod::run(&driver, "restart").await;
    let mut sub = subscribe_pods(&pleg, &[pod.uid()]);
    let first = pod
        .start(&driver, "app", 0, until_triggered("exit", 1))
        .await;
    pleg.relist().await.expect("relist");
    assert_eq!(events(&mut sub).len(), 2);

    pod.trigger("exit");
    wait_exited(&driver, &first).await;
    pleg.relist().await.expect("relist");
    assert_eq!(
        kinds(&events(&mut sub)),
        [(EventType::ContainerDied, first.clone())]
    );

    let second = pod
        .start(&driver, "app", 1, until_triggered(RUNNING_FOREVER, 0))
        .await;
    assert_ne!(first, second);
    pleg.relist().await.expect("relist");
    let got = events(&mut sub);
    assert_eq!(kinds(&got), [(EventType::ContainerStarted, second.clone())]);
    let started = got[0].container.as_ref().expect("container ref");
    assert_eq!((started.name.as_str(), started.attempt), ("app", 1));
    let status = pleg
        .cache()
        .get(&PodUid::new(pod.uid()))
        .expect("cached")
        .status;
    let newest = status.container_by_name("app").expect("app");
    assert_eq!((newest.attempt, newest.state), (1, ContainerState::Running));
    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_removed_pod_reports_sandbox_died_and_removed_and_leaves_the_cache() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = generator(runtime.clone());
    let pod = TestPod::run(&driver, "podgone").await;
    let uid = PodUid::new(pod.uid());
    let mut sub = subscribe_pods(&pleg, &[pod.uid()]);
    let app = pod
        .start(&driver, "app", 0, until_triggered(RUNNING_FOREVER, 0))
        .await;
    pleg.relist().await.expect("relist");
    assert_eq!(events(&mut sub).len(), 2);

    runtime
        .stop_pod(&pod.sandbox_id)
        .await
        .expect("StopPodSandbox");
    pleg.relist().await.expect("relist");
    let got = events(&mut sub);
    // Containers go down before their sandbox.
    assert_eq!(
        kinds(&got),
        [
            (EventType::ContainerDied, app.clone()),
            (EventType::ContainerDied, pod.sandbox_id.clone()),
        ]
    );
    assert!(pleg.cache().get(&uid).is_some());

    runtime
        .remove_pod(&pod.sandbox_id)
        .await
        .expect("RemovePodSandbox");
    pleg.relist().await.expect("relist");
    assert_eq!(
        kinds(&events(&mut sub)),
        [
            (EventType::ContainerRemoved, app.clone()),
            (EventType::ContainerRemoved, pod.sandbox_id.clone()),
        ]
    );
    assert!(pleg.cache().get(&uid).is_none(), "cache entry gone");
    assert!(!pleg.is_recorded(&uid).await, "record gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pods_at_once_report_every_event_exactly_once() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = std::sync::Arc::new(generator(runtime.clone()));
    pleg.update(pleg::RelistDuration {
        relist_period: Duration::from_millis(100),
        relist_threshold: Duration::from_secs(180),
    })
    .expect("valid period");
    let mut pods = Vec::new();
    for i in 0..10 {
        pods.push(TestPod::run(&driver, &format!("ten{i}")).await);
    }
    let uids: Vec<&str> = pods.iter().map(|p| p.uid()).collect();
    // Containers are seen CREATED (ContainerChanged) or not depending on
    // timing; the transitions asserted here are the ones that must come.
    let mut sub = subscribe_pods_with(&pleg, &uids, false);
    pleg.start().expect("start");

    // Start the ten containers concurrently while the generator relists.
    let mut starts = tokio::task::JoinSet::new();
    for pod in &pods {
        let driver = driver.clone();
        let (sandbox_id, spec) = (pod.sandbox_id.clone(), pod.spec.clone());
        starts.spawn(async move {
            let c =
                pleg_testkit::driver::ContainerSpec::new("app", image(), ["/bin/sleep", "3600"]);
            let id = driver
                .create_container(&sandbox_id, &spec, &c)
                .await
                .expect("CreateContainer");
            driver.start_container(&id).await.expect("StartContainer");
            (spec.uid, id)
        });
    }
    let mut apps = HashMap::new();
    while let Some(done) = starts.join_next().await {
        let (uid, id) = done.expect("start task");
        apps.insert(uid, id);
    }

    let mut seen: Vec<(String, EventType, String)> = Vec::new();
    let expected = |pods: &[TestPod], kind: EventType| {
        let mut all: Vec<(String, EventType, String)> = Vec::new();
        for pod in pods {
            all.push((pod.uid().to_string(), kind, pod.sandbox_id.clone()));
            all.push((pod.uid().to_string(), kind, apps[pod.uid()].clone()));
        }
        all.sort();
        all
    };
    collect_until(&pleg, &mut sub, &mut seen, 20).await;
    seen.sort();
    assert_eq!(seen, expected(&pods, EventType::ContainerStarted));

    // Kill every container at once (SIGKILL) and remove the pods.
    for pod in &pods {
        runtime
            .stop_pod(&pod.sandbox_id)
            .await
            .expect("StopPodSandbox");
    }
    let mut died = Vec::new();
    collect_until(&pleg, &mut sub, &mut died, 20).await;
    died.sort();
    assert_eq!(died, expected(&pods, EventType::ContainerDied));
    for pod in &pods {
        runtime
            .remove_pod(&pod.sandbox_id)
            .await
            .expect("RemovePodSandbox");
    }
    let mut removed = Vec::new();
    collect_until(&pleg, &mut sub, &mut removed, 20).await;
    removed.sort();
    assert_eq!(removed, expected(&pods, EventType::ContainerRemoved));
    pleg.stop().await;
}

/// Collects events until `want` have arrived, then waits for two more relists
/// and checks that nothing else came (at most 30 s).
async fn collect_until(
    pleg: &pleg::Pleg,
    sub: &mut pleg::Subscription,
    into: &mut Vec<(String, EventType, String)>,
    want: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while into.len() < want {
        let next = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} events: {into:?}", into.len()));
        match next {
            Some(pleg::Delivery::Event(e)) => into.push((
                e.pod.uid.to_string(),
                e.kind,
                e.container_id().map(|c| c.to_string()).unwrap_or_default(),
            )),
            Some(pleg::Delivery::Resync { missed, .. }) => panic!("missed {missed} events"),
            Some(other) => panic!("unexpected delivery {other:?}"),
            None => panic!("subscription closed"),
        }
    }
    let relists = pleg.stats().relists;
    eventually(
        "two more relists (relists stalled)",
        deadline.saturating_duration_since(tokio::time::Instant::now()),
        || (pleg.stats().relists >= relists + 2).then_some(()),
    )
    .await;
    let extra = events(sub);
    assert!(
        extra.is_empty(),
        "unexpected extra events: {:?}",
        kinds(&extra)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_created_and_removed_between_two_relists_leaves_no_event_and_no_trace() {
    let runtime = runtime().await;
    let driver = driver();
    let pleg = generator(runtime.clone());
    pleg.relist().await.expect("baseline relist");

    let pod = TestPod::run(&driver, "between").await;
    let uid = PodUid::new(pod.uid());
    let mut sub = subscribe_pods(&pleg, &[pod.uid()]);
    pod.start(&driver, "app", 0, until_triggered(RUNNING_FOREVER, 0))
        .await;
    pod.remove(&driver).await;

    pleg.relist().await.expect("relist");
    // The documented limit of relisting: a pod that lives between two relists
    // is never seen. The event stream (evented mode) closes this gap.
    assert!(events(&mut sub).is_empty());
    assert!(pleg.cache().get(&uid).is_none());
    assert!(!pleg.is_recorded(&uid).await);
}
