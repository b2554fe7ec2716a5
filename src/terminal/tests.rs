use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::event::{ContainerRef, EventSource};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn event(
    kind: EventType,
    entry: EntryKind,
    id: &str,
    name: &str,
    attempt: u32,
) -> PodLifecycleEvent {
    let mut e = PodLifecycleEvent::new(
        Arc::new(PodMeta::new("uid-1", "job", "batch")),
        kind,
        EventSource::Stream,
        at(u64::from(attempt) * 10),
    );
    e.container = Some(ContainerRef {
        id: ContainerId::new(id),
        name: name.to_owned(),
        attempt,
        kind: entry,
    });
    e.runtime_time = Some(at(u64::from(attempt) * 10));
    e
}

fn started(id: &str, name: &str, attempt: u32) -> PodLifecycleEvent {
    event(
        EventType::ContainerStarted,
        EntryKind::Container,
        id,
        name,
        attempt,
    )
}

fn died(id: &str, name: &str, attempt: u32, code: i32) -> PodLifecycleEvent {
    let mut e = event(
        EventType::ContainerDied,
        EntryKind::Container,
        id,
        name,
        attempt,
    );
    e.exit_code = Some(code);
    e.reason = Some(if code == 0 { "Completed" } else { "Error" }.to_owned());
    e.started_at = Some(at(1));
    e.finished_at = Some(at(2));
    e
}

fn sandbox(kind: EventType) -> PodLifecycleEvent {
    event(kind, EntryKind::Sandbox, "sb", "job", 0)
}

#[test]
fn a_pod_whose_containers_exit_0_and_3_ends_failed_with_both_codes_once() {
    let mut reports = TerminalReports::new();
    assert_eq!(reports.observe(&sandbox(EventType::ContainerStarted)), None);
    assert_eq!(reports.observe(&started("a", "app", 0)), None);
    assert_eq!(reports.observe(&started("s", "sidecar", 0)), None);
    assert_eq!(
        reports.observe(&died("a", "app", 0, 0)),
        None,
        "the sidecar still runs"
    );
    let report = reports
        .observe(&died("s", "sidecar", 0, 3))
        .expect("the pod ended");
    assert_eq!(report.phase, TerminalPhase::Failed);
    assert_eq!(report.exit_code(), Some(3));
    let codes: Vec<(&str, Option<i32>, Option<&str>)> = report
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.exit_code, c.reason.as_deref()))
        .collect();
    assert_eq!(
        codes,
        [
            ("app", Some(0), Some("Completed")),
            ("sidecar", Some(3), Some("Error"))
        ]
    );
    assert!(
        report
            .containers
            .iter()
            .all(|c| c.started_at == Some(at(1)) && c.finished_at == Some(at(2)))
    );
    // The same death again (the relist after the stream) reports nothing,
    // and neither does the sandbox going away afterwards.
    assert_eq!(reports.observe(&died("s", "sidecar", 0, 3)), None);
    assert_eq!(reports.observe(&sandbox(EventType::ContainerDied)), None);
    assert_eq!(reports.observe(&sandbox(EventType::ContainerRemoved)), None);
    assert!(reports.is_empty(), "a removed pod is forgotten");
}

#[test]
fn a_pod_that_starts_again_after_its_report_reports_its_next_end() {
    let mut reports = TerminalReports::new();
    reports.observe(&sandbox(EventType::ContainerStarted));
    reports.observe(&started("a0", "app", 0));
    let first = reports
        .observe(&died("a0", "app", 0, 1))
        .expect("first end");
    assert_eq!(first.phase, TerminalPhase::Failed);
    // Restarted as attempt 1, under a new ID: its death is not swallowed.
    assert_eq!(reports.observe(&started("a1", "app", 1)), None);
    let second = reports
        .observe(&died("a1", "app", 1, 0))
        .expect("second end");
    assert_eq!(
        second.phase,
        TerminalPhase::Succeeded,
        "only the latest attempt counts"
    );
    assert_eq!(second.containers.len(), 1);
    assert_eq!(
        (
            second.containers[0].id.as_str(),
            second.containers[0].attempt
        ),
        ("a1", 1)
    );
}

#[test]
fn a_pod_removed_while_running_ends_deleted() {
    let mut reports = TerminalReports::new();
    reports.observe(&sandbox(EventType::ContainerStarted));
    reports.observe(&started("a", "app", 0));
    let report = reports
        .observe(&sandbox(EventType::ContainerRemoved))
        .expect("removed while running");
    assert_eq!(report.phase, TerminalPhase::Deleted);
    assert_eq!(report.containers.len(), 1);
    assert!(!report.containers[0].exited);
    assert_eq!(report.exit_code(), None);
}

#[test]
fn a_pod_seen_only_after_its_containers_exited_still_reports_once() {
    let mut reports = TerminalReports::new();
    // pleg started after the job finished: only the deaths are seen.
    let report = reports.observe(&died("a", "app", 0, 0)).expect("an end");
    assert_eq!(report.phase, TerminalPhase::Succeeded);
    assert_eq!(reports.observe(&died("a", "app", 0, 0)), None);
}

/// The cached status of the pod of [`event`]: a ready sandbox and these
/// containers.
fn cached(containers: &[(&str, crate::model::ContainerState)]) -> PodStatus {
    use crate::model::Container;
    let mut status = PodStatus::new(Arc::new(PodMeta::new("uid-1", "job", "batch")));
    status.sandboxes = vec![Container::new("sb", "job", ContainerState::Running)];
    status.containers = containers
        .iter()
        .map(|(id, state)| Container::new(*id, *id, *state))
        .collect();
    status
}

#[test]
fn a_tracker_that_joins_late_reports_every_container_it_read_from_the_cache() {
    let mut reports = TerminalReports::new();
    reports.track(&cached(&[
        ("ok", ContainerState::Running),
        ("bad", ContainerState::Running),
    ]));
    assert_eq!(
        reports.observe(&died("bad", "bad", 0, 3)),
        None,
        "ok still runs"
    );
    let report = reports
        .observe(&died("ok", "ok", 0, 0))
        .expect("the end, with both");
    let codes: Vec<(&str, Option<i32>)> = report
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.exit_code))
        .collect();
    assert_eq!(codes, vec![("bad", Some(3)), ("ok", Some(0))]);
    assert_eq!(report.phase, TerminalPhase::Failed);
}

#[test]
fn a_death_still_queued_when_the_cache_was_read_is_reported_once() {
    let mut reports = TerminalReports::new();
    // The subscription holds this death; the cache shows it exited already.
    reports.track(&cached(&[("app", ContainerState::Exited)]));
    let report = reports
        .observe(&died("app", "app", 0, 0))
        .expect("reported when observed");
    assert_eq!(report.phase, TerminalPhase::Succeeded);
    assert_eq!(reports.observe(&died("app", "app", 0, 0)), None, "once");
    assert_eq!(
        reports.observe(&sandbox(EventType::ContainerRemoved)),
        None,
        "ended already"
    );
}

#[test]
fn a_pod_stopped_and_removed_between_two_relists_ends_deleted_not_failed() {
    let mut reports = TerminalReports::new();
    assert_eq!(reports.observe(&sandbox(EventType::ContainerStarted)), None);
    assert_eq!(reports.observe(&started("c1", "app", 0)), None);
    // The relist finds it gone: a death with no exit code, then the
    // removals, container first.
    let mut gone = event(
        EventType::ContainerDied,
        EntryKind::Container,
        "c1",
        "app",
        0,
    );
    gone.runtime_time = None;
    assert_eq!(reports.observe(&gone), None, "not an end to judge");
    let removed = event(
        EventType::ContainerRemoved,
        EntryKind::Container,
        "c1",
        "app",
        0,
    );
    assert_eq!(reports.observe(&removed), None);
    assert_eq!(
        reports
            .observe(&sandbox(EventType::ContainerDied))
            .map(|r| r.phase),
        Some(TerminalPhase::Deleted)
    );
    assert_eq!(
        reports.observe(&sandbox(EventType::ContainerRemoved)),
        None,
        "one report"
    );
}
