//! Recovery monitors ([`pleg::monitor`]) against the project-local
//! containerd 1.7: containers stopped and re-created as their next attempt,
//! pods stopped, removed and run again under the same name, deaths never
//! replaced, deaths outside the selection, and a cancelled pool, each
//! driven through the test kit's CRI driver while a [`MonitorPool`] watches.
//!
//! # Relisting, in parallel
//! As in `containerd_toolkit`, every generator here relists (generic mode,
//! every 100 ms) and none opens the event stream, so the tests run in
//! parallel without taking events from one another. Each test labels its
//! pods `app=<unique>` and monitors only that label, so that no selection
//! sees another test's pods; it removes them at the end, and a [`Cleanup`]
//! removes them if it fails half-way.
//!
//! # Waiting
//! Nothing sleeps: a test waits for the generator's events on a
//! subscription of its own, for the pool's counts on
//! [`MonitorPool::progress`], or for [`MonitorPool::join`], bounded by
//! [`WAIT`].
//!
//! Run with `eval "$(scripts/containerd.sh env --version 1.7)"; cargo test
//! --features containerd-tests --test containerd_monitor`.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::time::{Duration, SystemTime};

use cri_support::*;
use pleg::model::{Container, ContainerState, PodUid};
use pleg::monitor::{MonitorPool, MonitorProgress, MonitorReport, Recovery};
use pleg::{EventType, Pleg, Subscription};
use pleg_testkit::driver::{Driver, PodSpec};

/// How long a test waits for an event, a count or a report before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// A monitor's timeout when the test expects it to end before: longer
/// than [`WAIT`], so that a join returning within [`WAIT`] ended early.
const LONG: Duration = Duration::from_secs(60);

/// The grace period of every stop: none, so busybox (which, as PID 1,
/// ignores SIGTERM) is killed at once.
const KILL: Duration = Duration::ZERO;

// ---------------------------------------------------------------- fixtures

/// A pod to be labelled `app=<app>`, the label its test monitors.
fn labelled(prefix: &str, app: &str) -> PlannedPod {
    let mut planned = PlannedPod::new(prefix);
    planned.spec = planned.spec.clone().with_label("app", app);
    planned
}

/// The label selector of the pods labelled `app=<app>`.
fn app_selector(app: &str) -> String {
    format!("app={app}")
}

/// A long-running busybox command.
fn sleeping() -> Vec<String> {
    vec!["/bin/sleep".into(), "3600".into()]
}

/// Subscribes to these planned pods' events, `ContainerChanged` left out (a
/// CREATED state is seen or not depending on when the relist falls).
fn subscribe(pleg: &Pleg, pods: &[&PlannedPod]) -> Subscription {
    let uids: Vec<&str> = pods.iter().map(|p| p.uid()).collect();
    subscribe_pods_with(pleg, &uids, false)
}

/// Waits until the generator reports the container started.
async fn started(sub: &mut Subscription, id: &str) {
    all_started(sub, &[id]).await;
}

/// Waits until the generator reports every one of these containers
/// started, in any order: containers started together may be reported by
/// one relist, in the order of its listing.
async fn all_started(sub: &mut Subscription, ids: &[&str]) {
    let mut waiting: Vec<&str> = ids.to_vec();
    let what = format!("containers {ids:?} started");
    events_until(sub, &what, |e| {
        waiting.retain(|id| !is(e, EventType::ContainerStarted, id));
        waiting.is_empty()
    })
    .await;
}

/// Waits (at most [`WAIT`]) until the pool's counts satisfy `until`.
async fn progress_until(
    pool: &MonitorPool,
    what: &str,
    until: impl FnMut(&MonitorProgress) -> bool,
) -> MonitorProgress {
    let mut progress = pool.progress();
    let reached = tokio::time::timeout(WAIT, progress.wait_for(until))
        .await
        .map(|r| r.map(|p| *p));
    match reached {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => panic!("the pool's progress closed while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {WAIT:?} waiting for {what}; progress: {}",
            *progress.borrow()
        ),
    }
}

/// The pool's merged report, which must come within `within`.
async fn joined(pool: &MonitorPool, within: Duration, what: &str) -> MonitorReport {
    match tokio::time::timeout(within, pool.join()).await {
        Ok(report) => report,
        Err(_) => {
            // What the pool saw, to tell why.
            let events: Vec<String> = pool.events().iter().map(|e| format!("{e:?}")).collect();
            panic!("join did not return within {within:?}: {what}; the pool's events: {events:#?}")
        }
    }
}

/// The runtime's own status of a container.
async fn inspect(driver: &Driver, id: &str) -> Container {
    driver
        .container_status(id)
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
}

/// A runtime time, which the status must have.
fn time(t: Option<SystemTime>, what: &str) -> SystemTime {
    t.unwrap_or_else(|| panic!("the runtime reports no {what}"))
}

/// `to - from` in milliseconds, negative when `to` comes first.
fn millis_between(from: SystemTime, to: SystemTime) -> i128 {
    match to.duration_since(from) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

/// The only recovery of a list, naming the report in the failure.
fn only<'a>(list: &'a [Recovery], which: &str, report: &MonitorReport) -> &'a Recovery {
    assert_eq!(list.len(), 1, "one {which} death expected: {report:#?}");
    &list[0]
}

// ---------------------------------------------------------------- containers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stopped_and_recreated_as_its_next_attempt_is_recovered_on_the_runtimes_timeline()
{
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let app = unique("recover");
    let planned = labelled("recover", &app);
    let mut sub = subscribe(&pleg, &[&planned]);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let old = pod.start(&driver, "app", 0, sleeping()).await;
    started(&mut sub, &old).await;

    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label(&app_selector(&app), LONG)
        .expect("monitor");
    driver
        .stop_container(&old, KILL)
        .await
        .expect("StopContainer");
    let stop_returned = SystemTime::now();
    let new = pod.create(&driver, "app", 1, sleeping()).await;
    driver.start_container(&new).await.expect("StartContainer");
    let start_returned = SystemTime::now();

    // Everything it saw die recovered: it ends before its timeout.
    let report = joined(&pool, WAIT, "the monitor did not end on the recovery").await;
    assert_eq!(report.error, None, "{report:#?}");
    assert!(!report.cancelled, "{report:#?}");
    assert!(report.unrecovered.is_empty(), "{report:#?}");
    let r = only(&report.recovered, "recovered", &report);

    assert_eq!(r.namespace, NAMESPACE);
    assert_eq!(r.name, pod.spec.name);
    assert_eq!(r.pod_uid.as_str(), pod.uid());
    assert_eq!(r.container.as_deref(), Some("app"));
    assert_eq!(r.dead_id.as_str(), old);
    assert_eq!(
        r.replacement_id.as_ref().map(|c| c.as_str()),
        Some(new.as_str())
    );
    assert_eq!(r.replacement_pod_uid, Some(PodUid::new(pod.uid())));
    let replaced_at = r.replaced_at.expect("replaced_at");
    let running_at = r.running_at.expect("running_at");
    assert!(
        r.died_at <= replaced_at && replaced_at <= running_at,
        "died, replaced, running out of order: {r:#?}"
    );

    // The runtime's timeline: the old attempt's finish, the new one's
    // creation and start.
    let dead = inspect(&driver, &old).await;
    let replacement = inspect(&driver, &new).await;
    assert_eq!(dead.state, ContainerState::Exited);
    assert_eq!(replacement.state, ContainerState::Running);
    let finished_at = time(dead.finished_at, "finish of the old attempt");
    let created_at = time(replacement.created_at, "creation of the new attempt");
    let started_at = time(replacement.started_at, "start of the new attempt");
    assert_eq!(r.died_at, finished_at, "{r:#?}");
    assert_eq!(replaced_at, created_at, "{r:#?}");
    assert_eq!(running_at, started_at, "{r:#?}");

    let recovery_ms = r.recovery().expect("a recovery time").as_millis() as i128;
    let runtime_ms = millis_between(finished_at, started_at);
    let wall_ms = millis_between(stop_returned, start_returned);
    eprintln!(
        "recovery: monitor {recovery_ms} ms; runtime timestamps (new started_at - old \
         finished_at) {runtime_ms} ms; driver wall clock (start returned - stop returned) \
         {wall_ms} ms"
    );
    assert!(
        (recovery_ms - wall_ms).abs() <= 500,
        "monitor {recovery_ms} ms vs wall clock {wall_ms} ms"
    );
    assert!(
        (recovery_ms - runtime_ms).abs() <= 500,
        "monitor {recovery_ms} ms vs runtime timestamps {runtime_ms} ms"
    );

    let progress = *pool.progress().borrow();
    assert_eq!(
        (
            progress.monitors,
            progress.running,
            progress.died,
            progress.recovered
        ),
        (1, 0, 1, 1),
        "{progress}"
    );

    pod.remove(&driver).await;
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stopped_and_never_replaced_is_unrecovered_when_the_timeout_passes() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let app = unique("unrecovered");
    let planned = labelled("unrecovered", &app);
    let mut sub = subscribe(&pleg, &[&planned]);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let old = pod.start(&driver, "app", 0, sleeping()).await;
    started(&mut sub, &old).await;

    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label(&app_selector(&app), Duration::from_secs(3))
        .expect("monitor");
    driver
        .stop_container(&old, KILL)
        .await
        .expect("StopContainer");
    progress_until(&pool, "the death seen", |p| p.died == 1).await;

    let report = joined(&pool, WAIT, "the monitor outlived its 3 s timeout").await;
    assert_eq!(report.error, None, "{report:#?}");
    assert!(!report.cancelled, "{report:#?}");
    assert!(report.recovered.is_empty(), "{report:#?}");
    assert!(!report.all_recovered());
    let r = only(&report.unrecovered, "unrecovered", &report);
    assert_eq!(r.pod_uid.as_str(), pod.uid());
    assert_eq!(r.container.as_deref(), Some("app"));
    assert_eq!(r.dead_id.as_str(), old);
    let dead = inspect(&driver, &old).await;
    assert_eq!(
        Some(r.died_at),
        dead.finished_at,
        "died_at is the runtime's finish: {r:#?}"
    );
    assert_eq!(
        (&r.replacement_id, &r.replaced_at, &r.running_at),
        (&None, &None, &None),
        "{r:#?}"
    );
    assert!(!r.is_recovered());
    assert_eq!(r.recovery(), None);

    pod.remove(&driver).await;
    pleg.stop().await;
}

// ---------------------------------------------------------------- pods

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_stopped_removed_and_run_again_under_its_name_is_one_recovered_pod_death() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let app = unique("rerun");
    let planned = labelled("rerun", &app);
    // The pod that comes back: same namespace, name and labels, a new UID.
    let mut again = PlannedPod::new("rerun-again");
    again.spec = PodSpec {
        uid: format!("{}-again", planned.spec.uid),
        ..planned.spec.clone()
    };
    let mut sub = subscribe(&pleg, &[&planned, &again]);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let old = pod.start(&driver, "app", 0, sleeping()).await;
    started(&mut sub, &old).await;

    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label(&app_selector(&app), LONG)
        .expect("monitor");
    driver
        .stop_pod(&pod.sandbox_id)
        .await
        .expect("StopPodSandbox");
    driver
        .remove_pod(&pod.sandbox_id)
        .await
        .expect("RemovePodSandbox");
    pod.forget_trigger_dir();
    let new_pod = again.run(&driver).await;
    cleanup.add(&new_pod);
    let new = new_pod.start(&driver, "app", 0, sleeping()).await;

    let report = joined(&pool, WAIT, "the monitor did not end on the recovery").await;
    assert_eq!(report.error, None, "{report:#?}");
    assert!(!report.cancelled, "{report:#?}");
    // One death, the pod's: its container died with it, no death of its
    // own.
    assert!(report.unrecovered.is_empty(), "{report:#?}");
    let r = only(&report.recovered, "recovered", &report);
    assert_eq!(r.container, None, "a pod death: {r:#?}");
    assert_eq!(r.namespace, NAMESPACE);
    assert_eq!(r.name, pod.spec.name);
    assert_eq!(r.pod_uid.as_str(), pod.uid());
    assert_eq!(r.dead_id.as_str(), pod.sandbox_id);
    assert_eq!(
        r.replacement_id.as_ref().map(|c| c.as_str()),
        Some(new_pod.sandbox_id.as_str())
    );
    assert_eq!(r.replacement_pod_uid, Some(PodUid::new(new_pod.uid())));
    let replaced_at = r.replaced_at.expect("replaced_at");
    let running_at = r.running_at.expect("running_at");
    assert!(
        r.died_at <= replaced_at && replaced_at <= running_at,
        "died, replaced, running out of order: {r:#?}"
    );
    // Running since its container started.
    let replacement = inspect(&driver, &new).await;
    assert_eq!(
        Some(running_at),
        replacement.started_at,
        "running_at is the new container's start: {r:#?}"
    );
    let progress = *pool.progress().borrow();
    assert_eq!((progress.died, progress.recovered), (1, 1), "{progress}");
    eprintln!(
        "pod recovery: monitor {} ms (the old pod's container killed, or its death seen, to the new pod's container start)",
        r.recovery().expect("a recovery time").as_millis()
    );

    new_pod.remove(&driver).await;
    pleg.stop().await;
}

// ---------------------------------------------------------------- selection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_dying_outside_the_selection_is_not_reported() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let (app, other_app) = (unique("selected"), unique("unselected"));
    let planned = labelled("selected", &app);
    let planned_other = labelled("unselected", &other_app);
    let mut sub = subscribe(&pleg, &[&planned, &planned_other]);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let other = planned_other.run(&driver).await;
    cleanup.add(&other);
    let old = pod.start(&driver, "app", 0, sleeping()).await;
    let other_app_id = other.start(&driver, "app", 0, sleeping()).await;
    all_started(&mut sub, &[&old, &other_app_id]).await;

    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label(&app_selector(&app), LONG)
        .expect("monitor");
    // The unselected death is published (to the monitor as well) before
    // the selected one happens; the monitor takes events in order.
    driver
        .stop_container(&other_app_id, KILL)
        .await
        .expect("StopContainer (unselected)");
    events_until(&mut sub, "the unselected container's death", |e| {
        is(e, EventType::ContainerDied, &other_app_id)
    })
    .await;
    driver
        .stop_container(&old, KILL)
        .await
        .expect("StopContainer (selected)");
    let new = pod.create(&driver, "app", 1, sleeping()).await;
    driver.start_container(&new).await.expect("StartContainer");

    let report = joined(&pool, WAIT, "the monitor did not end on the recovery").await;
    assert_eq!(report.error, None, "{report:#?}");
    assert!(report.unrecovered.is_empty(), "{report:#?}");
    let r = only(&report.recovered, "recovered", &report);
    assert_eq!(r.pod_uid.as_str(), pod.uid(), "{report:#?}");
    assert_eq!(r.dead_id.as_str(), old);
    assert_eq!(
        r.replacement_id.as_ref().map(|c| c.as_str()),
        Some(new.as_str())
    );
    let progress = *pool.progress().borrow();
    assert_eq!((progress.died, progress.recovered), (1, 1), "{progress}");

    pod.remove(&driver).await;
    other.remove(&driver).await;
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_events_hold_the_monitored_containers_death_and_nothing_of_unselected_pods() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let (app, other_app) = (unique("kept"), unique("not-kept"));
    let planned = labelled("kept", &app);
    let planned_other = labelled("not-kept", &other_app);
    let mut sub = subscribe(&pleg, &[&planned, &planned_other]);
    let uid = planned.uid().to_string();

    // Watching before either pod exists: both pods' whole lives pass by
    // the monitor.
    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label(&app_selector(&app), LONG)
        .expect("monitor");
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let other = planned_other.run(&driver).await;
    cleanup.add(&other);
    let watched = pod.start(&driver, "app", 0, sleeping()).await;
    let unwatched = other.start(&driver, "app", 0, sleeping()).await;
    all_started(&mut sub, &[&watched, &unwatched]).await;
    driver
        .stop_container(&unwatched, KILL)
        .await
        .expect("StopContainer (unselected)");
    events_until(&mut sub, "the unselected container's death", |e| {
        is(e, EventType::ContainerDied, &unwatched)
    })
    .await;
    driver
        .stop_container(&watched, KILL)
        .await
        .expect("StopContainer (selected)");
    progress_until(&pool, "the selected death seen", |p| p.died == 1).await;
    pool.cancel();
    let report = joined(&pool, WAIT, "cancelled").await;
    let r = only(&report.unrecovered, "unrecovered", &report);
    assert_eq!(r.dead_id.as_str(), watched);

    let kept = pool.events();
    assert!(
        kept.iter()
            .any(|e| is(e, EventType::ContainerDied, &watched)),
        "the monitored death is not kept: {:?}",
        described(&kept)
    );
    assert!(
        kept.iter().all(|e| e.pod.uid.as_str() == uid),
        "events of other pods kept: {:?}",
        described(&kept)
    );
    assert_eq!(pool.events_not_kept(), 0);

    pod.remove(&driver).await;
    other.remove(&driver).await;
    pleg.stop().await;
}

// ---------------------------------------------------------------- cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_pool_at_once_with_the_death_seen_so_far_unrecovered() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let app = unique("cancel");
    let planned = labelled("cancel", &app);
    let mut sub = subscribe(&pleg, &[&planned]);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let old = pod.start(&driver, "app", 0, sleeping()).await;
    started(&mut sub, &old).await;

    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label(&app_selector(&app), LONG)
        .expect("monitor");
    driver
        .stop_container(&old, KILL)
        .await
        .expect("StopContainer");
    let seen = progress_until(&pool, "the death seen", |p| p.died == 1).await;
    assert_eq!((seen.running, seen.recovered), (1, 0), "{seen}");

    pool.cancel();
    let report = joined(&pool, Duration::from_secs(5), "cancel did not end it").await;
    assert!(report.cancelled, "{report:#?}");
    assert_eq!(report.error, None, "{report:#?}");
    assert!(report.recovered.is_empty(), "{report:#?}");
    let r = only(&report.unrecovered, "unrecovered", &report);
    assert_eq!(r.pod_uid.as_str(), pod.uid());
    assert_eq!(r.container.as_deref(), Some("app"));
    assert_eq!(r.dead_id.as_str(), old);
    assert_eq!(r.replaced_at, None, "{r:#?}");
    let after = *pool.progress().borrow();
    assert_eq!((after.running, after.died), (0, 1), "{after}");

    pod.remove(&driver).await;
    pleg.stop().await;
}
