use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::tracker::View;
use super::*;
use crate::Config;
use crate::event::{ContainerRef, EventSource, EventType};
use crate::model::{Container, ContainerState, EntryKind, Pod, PodMeta, PodStatus};
use crate::runtime::fake::FakeRuntime;

use ContainerState::{Created, Exited, Running};

/// A runtime time, `secs` (to the millisecond) after a fixed instant.
fn at(secs: f64) -> SystemTime {
    let millis = Duration::from_secs_f64(secs).as_millis();
    UNIX_EPOCH
        + Duration::from_secs(1_700_000_000)
        + Duration::from_millis(u64::try_from(millis).expect("a test time"))
}

fn container(id: &str, name: &str, attempt: u32, state: ContainerState) -> Container {
    Container::new(id, name, state).with_attempt(attempt)
}

fn timed(mut c: Container, created: f64, started: Option<f64>, finished: Option<f64>) -> Container {
    c.created_at = Some(at(created));
    c.started_at = started.map(at);
    c.finished_at = finished.map(at);
    c
}

fn meta(uid: &str, name: &str) -> Arc<PodMeta> {
    Arc::new(PodMeta::new(uid, name, "shop").with_label("app", "web"))
}

fn status(
    meta: &Arc<PodMeta>,
    sandboxes: Vec<Container>,
    containers: Vec<Container>,
) -> Arc<PodStatus> {
    let mut s = PodStatus::new(Arc::clone(meta));
    s.sandboxes = sandboxes;
    s.containers = containers;
    Arc::new(s)
}

/// A test's cache: statuses by UID.
#[derive(Default)]
struct Table(HashMap<PodUid, Arc<PodStatus>>);

impl Table {
    fn put(&mut self, status: Arc<PodStatus>) {
        self.0.insert(status.meta.uid.clone(), status);
    }
}

impl View for Table {
    fn status(&self, uid: &PodUid) -> Option<Arc<PodStatus>> {
        self.0.get(uid).cloned()
    }

    fn named(&self, namespace: &str, name: &str) -> Vec<Arc<PodStatus>> {
        self.0
            .values()
            .filter(|s| s.meta.namespace == namespace && s.meta.name == name)
            .cloned()
            .collect()
    }
}

fn event(
    pod: &Arc<PodMeta>,
    kind: EventType,
    c: &Container,
    entry: EntryKind,
    observed: f64,
) -> PodLifecycleEvent {
    let mut e = PodLifecycleEvent::new(Arc::clone(pod), kind, EventSource::Relist, at(observed));
    e.container = Some(ContainerRef {
        id: c.id.clone(),
        name: c.name.clone(),
        attempt: c.attempt,
        kind: entry,
    });
    if kind == EventType::ContainerDied {
        e.started_at = c.started_at;
        e.finished_at = c.finished_at;
        e.runtime_time = c.finished_at;
    }
    e
}

fn web_selector() -> PodSelector {
    PodSelector::labels("app=web").expect("a valid selector")
}

#[test]
fn a_container_replaced_by_its_next_attempt_recovers_on_the_runtime_timeline() {
    let pod = meta("u1", "web-1");
    let sandbox = timed(container("sb1", "web-1", 0, Running), 0.0, Some(0.0), None);
    let dead = timed(
        container("c0", "app", 0, Exited),
        1.0,
        Some(1.0),
        Some(10.0),
    );
    let mut table = Table::default();
    table.put(status(&pod, vec![sandbox.clone()], vec![dead.clone()]));
    let mut tracker = Tracker::new(web_selector().into());
    // Seen 0.4 s after it died: the death is the runtime's time.
    assert!(tracker.observe(
        &event(
            &pod,
            EventType::ContainerDied,
            &dead,
            EntryKind::Container,
            10.4
        ),
        &table
    ));
    assert_eq!(tracker.counts(), (1, 0));

    let next = timed(container("c1", "app", 1, Created), 10.25, None, None);
    table.put(status(
        &pod,
        vec![sandbox.clone()],
        vec![dead.clone(), next.clone()],
    ));
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerChanged,
            &next,
            EntryKind::Container,
            10.6,
        ),
        &table,
    );
    assert_eq!(tracker.counts(), (1, 0), "created is not running");

    let running = timed(container("c1", "app", 1, Running), 10.25, Some(10.5), None);
    table.put(status(&pod, vec![sandbox], vec![dead, running.clone()]));
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerStarted,
            &running,
            EntryKind::Container,
            10.9,
        ),
        &table,
    );
    assert!(tracker.all_recovered());

    let recoveries = tracker.into_recoveries();
    let [r] = recoveries.as_slice() else {
        panic!("one death: {recoveries:?}")
    };
    assert_eq!(r.container.as_deref(), Some("app"));
    assert_eq!(r.dead_id.as_str(), "c0");
    assert_eq!(
        r.replacement_id.as_ref().map(ContainerId::as_str),
        Some("c1")
    );
    assert_eq!(r.died_at, at(10.0));
    assert_eq!(r.replaced_at, Some(at(10.25)));
    assert_eq!(r.running_at, Some(at(10.5)));
    assert_eq!(r.time_to_replacement(), Some(Duration::from_millis(250)));
    assert_eq!(r.time_to_running(), Some(Duration::from_millis(250)));
    assert_eq!(r.recovery(), Some(Duration::from_millis(500)));
}

#[test]
fn a_pod_that_dies_counts_once_and_recovers_as_a_new_pod_of_the_same_name() {
    let old = meta("u1", "web-1");
    let sandbox = timed(container("sb1", "web-1", 0, Exited), 0.0, None, None);
    let app = timed(
        container("c0", "app", 0, Exited),
        1.0,
        Some(1.0),
        Some(10.0),
    );
    let mut table = Table::default();
    table.put(status(&old, vec![sandbox.clone()], vec![app.clone()]));
    let mut tracker = Tracker::new(web_selector().into());
    // Its container dies first, then its sandbox: one death, the pod's.
    tracker.observe(
        &event(
            &old,
            EventType::ContainerDied,
            &app,
            EntryKind::Container,
            10.2,
        ),
        &table,
    );
    tracker.observe(
        &event(
            &old,
            EventType::ContainerDied,
            &sandbox,
            EntryKind::Sandbox,
            10.3,
        ),
        &table,
    );
    assert_eq!(tracker.counts(), (1, 0));

    // The replacement: a new UID, and labels the selector does not match.
    let new = Arc::new(PodMeta::new("u2", "web-1", "shop"));
    let new_sandbox = timed(container("sb2", "web-1", 0, Running), 11.0, None, None);
    table.put(status(&new, vec![new_sandbox.clone()], vec![]));
    tracker.observe(
        &event(
            &new,
            EventType::ContainerStarted,
            &new_sandbox,
            EntryKind::Sandbox,
            11.1,
        ),
        &table,
    );
    assert_eq!(tracker.counts(), (1, 0), "a sandbox alone is not running");

    let new_app = timed(container("c9", "app", 0, Running), 11.5, Some(12.0), None);
    table.put(status(&new, vec![new_sandbox], vec![new_app.clone()]));
    tracker.observe(
        &event(
            &new,
            EventType::ContainerStarted,
            &new_app,
            EntryKind::Container,
            12.1,
        ),
        &table,
    );
    let recoveries = tracker.into_recoveries();
    let [r] = recoveries.as_slice() else {
        panic!("one death: {recoveries:?}")
    };
    assert_eq!(r.container, None, "the pod died");
    assert_eq!(r.pod_uid.as_str(), "u1");
    assert_eq!(
        r.replacement_pod_uid.as_ref().map(PodUid::as_str),
        Some("u2")
    );
    assert_eq!(
        r.died_at,
        at(10.0),
        "the pod died when its container ended, before its sandbox's death was seen"
    );
    assert_eq!(r.replaced_at, Some(at(11.0)));
    assert_eq!(r.running_at, Some(at(12.0)));
}

#[test]
fn a_pod_run_again_before_its_death_was_seen_is_recovered() {
    // Stopped, removed and run again between two relists: the new sandbox
    // was created (10.1) before the old one's death was observed (10.3).
    let old = meta("u1", "web-1");
    let sandbox = timed(container("sb1", "web-1", 0, Exited), 0.0, None, None);
    let app = timed(
        container("c0", "app", 0, Exited),
        1.0,
        Some(1.0),
        Some(10.0),
    );
    let new = meta("u2", "web-1");
    let new_sandbox = timed(container("sb2", "web-1", 0, Running), 10.1, None, None);
    let new_app = timed(container("c9", "app", 0, Running), 10.15, Some(10.2), None);
    let mut table = Table::default();
    table.put(status(
        &new,
        vec![new_sandbox.clone()],
        vec![new_app.clone()],
    ));
    let mut tracker = Tracker::new(web_selector().into());
    for (pod, c, entry) in [
        (&old, &app, EntryKind::Container),
        (&old, &sandbox, EntryKind::Sandbox),
    ] {
        tracker.observe(
            &event(pod, EventType::ContainerDied, c, entry, 10.3),
            &table,
        );
    }
    for (c, entry) in [
        (&new_sandbox, EntryKind::Sandbox),
        (&new_app, EntryKind::Container),
    ] {
        tracker.observe(
            &event(&new, EventType::ContainerStarted, c, entry, 10.3),
            &table,
        );
    }
    let recoveries = tracker.into_recoveries();
    let [r] = recoveries.as_slice() else {
        panic!("one death: {recoveries:?}")
    };
    assert_eq!(r.died_at, at(10.0));
    assert_eq!(
        r.replacement_id.as_ref().map(ContainerId::as_str),
        Some("sb2")
    );
    assert_eq!(r.running_at, Some(at(10.2)), "{r:?}");
}

#[test]
fn a_pod_removed_before_any_exit_was_listed_is_recovered_by_a_pod_run_before_its_death_was_seen() {
    // Stopped and removed between two relists, containers and all: no
    // runtime time of the death reaches pleg, only when it saw the pod gone
    // (10.3). The new pod's sandbox was created (10.2) before that, and is
    // listed by the next relist.
    let old = meta("u1", "web-1");
    let sandbox = timed(container("sb1", "web-1", 0, Running), 0.0, None, None);
    let app = timed(container("c0", "app", 0, Running), 1.0, Some(1.0), None);
    let new = meta("u2", "web-1");
    let new_sandbox = timed(container("sb2", "web-1", 0, Running), 10.2, None, None);
    let new_app = timed(container("c9", "app", 0, Running), 10.35, Some(10.4), None);
    let mut table = Table::default();
    let mut tracker = Tracker::new(web_selector().into());
    for (c, entry) in [(&app, EntryKind::Container), (&sandbox, EntryKind::Sandbox)] {
        tracker.observe(
            &event(&old, EventType::ContainerDied, c, entry, 10.3),
            &table,
        );
    }
    assert_eq!(tracker.counts(), (1, 0), "one death, the pod's");
    table.put(status(
        &new,
        vec![new_sandbox.clone()],
        vec![new_app.clone()],
    ));
    for (c, entry) in [
        (&new_sandbox, EntryKind::Sandbox),
        (&new_app, EntryKind::Container),
    ] {
        tracker.observe(
            &event(&new, EventType::ContainerStarted, c, entry, 10.5),
            &table,
        );
    }
    let recoveries = tracker.into_recoveries();
    let [r] = recoveries.as_slice() else {
        panic!("one death: {recoveries:?}")
    };
    assert_eq!(
        r.replacement_id.as_ref().map(ContainerId::as_str),
        Some("sb2")
    );
    assert_eq!(
        r.died_at,
        at(10.2),
        "seen dead at 10.3, it died no later than its replacement was created"
    );
    assert_eq!(r.replaced_at, Some(at(10.2)));
    assert_eq!(r.running_at, Some(at(10.4)), "{r:?}");
}

#[test]
fn a_pod_of_the_same_name_that_was_already_there_is_no_replacement_of_a_death_the_runtime_dated() {
    // The runtime dated the death (its container ended at 10.0); a pod of
    // the same name created before that did not replace it.
    let old = meta("u1", "web-1");
    let sandbox = timed(container("sb1", "web-1", 0, Exited), 0.0, None, None);
    let app = timed(
        container("c0", "app", 0, Exited),
        1.0,
        Some(1.0),
        Some(10.0),
    );
    let twin = meta("u2", "web-1");
    let twin_sandbox = timed(container("sb2", "web-1", 0, Running), 5.0, None, None);
    let twin_app = timed(container("c9", "app", 0, Running), 5.1, Some(5.2), None);
    let mut table = Table::default();
    table.put(status(&twin, vec![twin_sandbox], vec![twin_app]));
    let mut tracker = Tracker::new(web_selector().into());
    for (c, entry) in [(&app, EntryKind::Container), (&sandbox, EntryKind::Sandbox)] {
        tracker.observe(
            &event(&old, EventType::ContainerDied, c, entry, 10.3),
            &table,
        );
    }
    assert_eq!(tracker.counts(), (1, 0), "not recovered by an older pod");
}

#[test]
fn a_replacement_cached_before_the_death_is_processed_still_counts() {
    let pod = meta("u1", "web-1");
    let sandbox = timed(container("sb1", "web-1", 0, Running), 0.0, None, None);
    let dead = timed(
        container("c0", "app", 0, Exited),
        1.0,
        Some(1.0),
        Some(10.0),
    );
    let next = timed(container("c1", "app", 1, Running), 10.1, Some(10.2), None);
    let mut table = Table::default();
    // One relist brought the death and the new attempt's start together.
    table.put(status(
        &pod,
        vec![sandbox],
        vec![dead.clone(), next.clone()],
    ));
    let mut tracker = Tracker::new(web_selector().into());
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerStarted,
            &next,
            EntryKind::Container,
            10.5,
        ),
        &table,
    );
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerDied,
            &dead,
            EntryKind::Container,
            10.5,
        ),
        &table,
    );
    assert!(tracker.all_recovered());
    assert_eq!(
        tracker.into_recoveries()[0].recovery(),
        Some(Duration::from_millis(200))
    );
}

#[test]
fn a_death_outside_the_selection_is_not_reported() {
    let other = Arc::new(PodMeta::new("u7", "db-1", "shop").with_label("app", "db"));
    let dead = timed(container("d0", "db", 0, Exited), 1.0, Some(1.0), Some(5.0));
    let mut table = Table::default();
    table.put(status(&other, vec![], vec![dead.clone()]));
    let mut tracker = Tracker::new(web_selector().into());
    let relevant = tracker.observe(
        &event(
            &other,
            EventType::ContainerDied,
            &dead,
            EntryKind::Container,
            5.1,
        ),
        &table,
    );
    assert!(!relevant, "not kept among the pool's events");
    assert_eq!(tracker.counts(), (0, 0));
}

#[test]
fn a_restarted_container_that_dies_again_is_a_second_death() {
    let pod = meta("u1", "web-1");
    let first = timed(container("c0", "app", 0, Exited), 1.0, Some(1.0), Some(2.0));
    let second = timed(container("c1", "app", 1, Exited), 2.5, Some(2.6), Some(4.0));
    let third = timed(container("c2", "app", 2, Running), 4.5, Some(4.6), None);
    let mut table = Table::default();
    table.put(status(
        &pod,
        vec![],
        vec![first.clone(), second.clone(), third],
    ));
    let mut tracker = Tracker::new(web_selector().into());
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerDied,
            &first,
            EntryKind::Container,
            4.7,
        ),
        &table,
    );
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerDied,
            &second,
            EntryKind::Container,
            4.7,
        ),
        &table,
    );
    // The same death twice (the stream, then a relist): kept once.
    tracker.observe(
        &event(
            &pod,
            EventType::ContainerDied,
            &second,
            EntryKind::Container,
            4.8,
        ),
        &table,
    );
    let recoveries = tracker.into_recoveries();
    assert_eq!(recoveries.len(), 2, "{recoveries:?}");
    assert_eq!(
        recoveries[0]
            .replacement_id
            .as_ref()
            .map(ContainerId::as_str),
        Some("c1")
    );
    assert_eq!(
        recoveries[1]
            .replacement_id
            .as_ref()
            .map(ContainerId::as_str),
        Some("c2")
    );
}

#[test]
fn merged_reports_keep_a_death_two_monitors_saw_once() {
    let pod = meta("u1", "web-1");
    let mut seen = Recovery::died(&pod, Some("app".into()), "c0".into(), at(1.0));
    let pending = seen.clone();
    seen.running_at = Some(at(2.0));
    let mut report = MonitorReport {
        unrecovered: vec![pending],
        ..MonitorReport::default()
    };
    report.merge(MonitorReport {
        recovered: vec![seen.clone()],
        error: Some(MonitorError::Lagged { missed: 3 }),
        ..MonitorReport::default()
    });
    assert_eq!(report.recovered, vec![seen]);
    assert!(report.unrecovered.is_empty());
    assert_eq!(
        report.error,
        Some(MonitorError::Lagged { missed: 3 }),
        "kept beside the data"
    );
}

// The pool, over a generator relisting a scripted runtime.

fn web_pod(uid: &str, app: Container) -> Pod {
    Pod::new(PodMeta::new(uid, "web-1", "shop").with_label("app", "web"))
        .with_sandbox(timed(
            container(&format!("sb-{uid}"), "web-1", 0, Running),
            0.0,
            None,
            None,
        ))
        .with_container(app)
}

fn generator() -> (Arc<FakeRuntime>, Pleg) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    (runtime, pleg)
}

async fn until_progress(pool: &MonitorPool, what: impl Fn(&MonitorProgress) -> bool) {
    let mut progress = pool.progress();
    progress.wait_for(what).await.expect("the pool is alive");
}

#[tokio::test(start_paused = true)]
async fn a_monitor_ends_as_soon_as_everything_it_saw_die_has_recovered() {
    let (runtime, pleg) = generator();
    let app0 = timed(container("c0", "app", 0, Running), 1.0, Some(1.0), None);
    runtime.set_pods(vec![web_pod("u1", app0)]);
    pleg.relist().await.expect("listing works");

    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_label("app in (web,db)", Duration::from_secs(3600))
        .expect("a valid selector");
    let started = tokio::time::Instant::now();
    let dead = timed(
        container("c0", "app", 0, Exited),
        1.0,
        Some(1.0),
        Some(20.0),
    );
    runtime.set_pods(vec![web_pod("u1", dead.clone())]);
    pleg.relist().await.expect("listing works");
    until_progress(&pool, |p| p.died == 1).await;
    let next = timed(container("c1", "app", 1, Running), 20.1, Some(20.3), None);
    runtime.set_pods(vec![web_pod("u1", dead).with_container(next)]);
    pleg.relist().await.expect("listing works");

    let report = pool.join().await;
    assert!(
        started.elapsed() < Duration::from_secs(3600),
        "ended before its timeout"
    );
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert!(report.unrecovered.is_empty() && report.error.is_none() && !report.cancelled);
    assert_eq!(
        report.recovered[0].recovery(),
        Some(Duration::from_millis(300))
    );
    let kinds: Vec<EventType> = pool.events().iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&EventType::ContainerDied) && kinds.contains(&EventType::ContainerStarted),
        "{kinds:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_generator_that_never_listed_does_not_report_earlier_exits_as_deaths() {
    let (runtime, pleg) = generator();
    // Exited before anyone looked, then the monitor starts on a generator
    // that has not listed yet.
    let old = timed(container("c0", "app", 0, Exited), 1.0, Some(1.0), Some(2.0));
    let running = timed(container("c1", "app", 1, Running), 2.1, Some(2.2), None);
    runtime.set_pods(vec![
        web_pod("u1", old.clone()).with_container(running.clone()),
    ]);
    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor(web_selector(), Duration::from_secs(60))
        .expect("in a runtime");
    // The monitor lists first: then a real death is counted, and only it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while pleg.last_relist().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the monitor lists");
    let dead = timed(container("c1", "app", 1, Exited), 2.1, Some(2.2), Some(9.0));
    runtime.set_pods(vec![web_pod("u1", old).with_container(dead)]);
    pleg.relist().await.expect("listing works");
    let report = pool.join().await;
    assert!(report.recovered.is_empty(), "{report:?}");
    let ids: Vec<&str> = report
        .unrecovered
        .iter()
        .map(|r| r.dead_id.as_str())
        .collect();
    assert_eq!(ids, ["c1"], "c0 exited before the monitor: {report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_death_never_replaced_is_unrecovered_at_the_deadline() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web_pod(
        "u1",
        timed(container("c0", "app", 0, Running), 1.0, Some(1.0), None),
    )]);
    pleg.relist().await.expect("listing works");
    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor(web_selector(), Duration::from_secs(60))
        .expect("in a runtime");
    runtime.set_pods(vec![web_pod(
        "u1",
        timed(container("c0", "app", 0, Exited), 1.0, Some(1.0), Some(9.0)),
    )]);
    pleg.relist().await.expect("listing works");
    let started = tokio::time::Instant::now();
    let report = pool.join().await;
    assert!(
        started.elapsed() >= Duration::from_secs(59),
        "waited for the deadline"
    );
    assert!(report.recovered.is_empty());
    let [r] = report.unrecovered.as_slice() else {
        panic!("{report:?}")
    };
    assert_eq!((r.dead_id.as_str(), r.replaced_at), ("c0", None));
    assert!(!report.all_recovered());
}

#[tokio::test(start_paused = true)]
async fn the_last_relist_at_the_deadline_finds_a_replacement_nobody_relisted_yet() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web_pod(
        "u1",
        timed(container("c0", "app", 0, Running), 1.0, Some(1.0), None),
    )]);
    pleg.relist().await.expect("listing works");
    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor(web_selector(), Duration::from_secs(60))
        .expect("in a runtime");
    let dead = timed(container("c0", "app", 0, Exited), 1.0, Some(1.0), Some(9.0));
    runtime.set_pods(vec![web_pod("u1", dead.clone())]);
    pleg.relist().await.expect("listing works");
    until_progress(&pool, |p| p.died == 1).await;
    // Replaced, but the generator does not relist on its own (not started).
    let next = timed(container("c1", "app", 1, Running), 9.5, Some(9.7), None);
    runtime.set_pods(vec![web_pod("u1", dead).with_container(next)]);
    let report = pool.join().await;
    assert_eq!(report.recovered.len(), 1, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_ends_every_monitor_at_once_with_what_they_gathered() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web_pod(
        "u1",
        timed(container("c0", "app", 0, Running), 1.0, Some(1.0), None),
    )]);
    pleg.relist().await.expect("listing works");
    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor(web_selector(), Duration::from_secs(3600))
        .expect("in a runtime");
    pool.select_and_monitor_by_name_pattern_and_namespace_pattern(
        "web-.*",
        "sh.p",
        Duration::from_secs(3600),
    )
    .expect("valid regexes");
    runtime.set_pods(vec![web_pod(
        "u1",
        timed(container("c0", "app", 0, Exited), 1.0, Some(1.0), Some(9.0)),
    )]);
    pleg.relist().await.expect("listing works");
    until_progress(&pool, |p| p.died == 2).await;
    let started = tokio::time::Instant::now();
    pool.cancel();
    let report = pool.join().await;
    assert_eq!(started.elapsed(), Duration::ZERO, "at once");
    assert!(report.cancelled);
    assert_eq!(
        report.unrecovered.len(),
        1,
        "two monitors, one death: {report:?}"
    );
    let progress = *pool.progress().borrow();
    assert_eq!((progress.monitors, progress.running), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_comes_to_match_while_monitored_is_monitored_too() {
    let (runtime, pleg) = generator();
    pleg.relist().await.expect("listing works");
    let pool = MonitorPool::new(&pleg);
    pool.select_and_monitor_by_namespace_pattern_and_label(
        "shop",
        "app=web",
        Duration::from_secs(3600),
    )
    .expect("valid selectors");
    // A pod that did not exist when the monitor was pushed.
    runtime.set_pods(vec![web_pod(
        "u5",
        timed(container("c0", "app", 0, Running), 1.0, Some(1.0), None),
    )]);
    pleg.relist().await.expect("listing works");
    runtime.set_pods(vec![web_pod(
        "u5",
        timed(container("c0", "app", 0, Exited), 1.0, Some(1.0), Some(3.0)),
    )]);
    pleg.relist().await.expect("listing works");
    until_progress(&pool, |p| p.died == 1).await;
    pool.cancel();
    assert_eq!(pool.join().await.unrecovered[0].pod_uid.as_str(), "u5");
}

#[test]
fn a_selector_with_a_bad_character_is_refused_before_any_monitor_starts() {
    let (_runtime, pleg) = generator();
    let pool = MonitorPool::new(&pleg);
    let err = pool
        .select_and_monitor_by_label("app in (web,", Duration::from_secs(1))
        .expect_err("unterminated set");
    assert!(err.to_string().contains("column"), "{err}");
    assert_eq!(pool.progress().borrow().monitors, 0);
}
