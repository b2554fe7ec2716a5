use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::event::{ContainerRef, EventSource};
use crate::model::{ContainerId, PodMeta};

use ContainerState::{Created, Exited, Running, Unknown};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn sandbox(state: ContainerState) -> Container {
    let mut s = Container::new("sb", "web", state);
    s.created_at = Some(at(0));
    s
}

fn container(
    name: &str,
    attempt: u32,
    state: ContainerState,
    exit: Option<(i32, &str)>,
) -> Container {
    let mut c = Container::new(format!("{name}-{attempt}"), name, state).with_attempt(attempt);
    c.created_at = Some(at(u64::from(attempt)));
    if let Some((code, reason)) = exit {
        c = c.with_exit(code, reason);
    }
    c
}

fn status(sandbox_state: Option<ContainerState>, containers: Vec<Container>) -> PodStatus {
    let mut s = PodStatus::new(Arc::new(PodMeta::new("uid-1", "web", "shop")));
    s.sandboxes = sandbox_state.map(sandbox).into_iter().collect();
    s.containers = containers;
    s
}

/// The module's table, row by row.
#[test]
#[allow(clippy::too_many_lines)] // one table, read top to bottom
fn the_phase_and_health_table() {
    use Health as H;
    use HealthReason as R;
    use PodPhase as P;
    let ok = Some((0, "Completed"));
    let failed = Some((3, "Error"));
    let oom = Some((137, "OOMKilled"));
    let rows: Vec<(&str, PodStatus, P, H, Option<R>)> = vec![
        (
            "nothing",
            status(None, vec![]),
            P::Unknown,
            H::Unknown,
            Some(R::NoStatus),
        ),
        (
            "a ready sandbox, no container yet",
            status(Some(Running), vec![]),
            P::Pending,
            H::NotReady,
            Some(R::ContainerCreating),
        ),
        (
            "a container created, not started",
            status(Some(Running), vec![container("app", 0, Created, None)]),
            P::Pending,
            H::NotReady,
            Some(R::ContainerCreating),
        ),
        (
            "every container runs",
            status(
                Some(Running),
                vec![
                    container("app", 0, Running, None),
                    container("db", 0, Running, None),
                ],
            ),
            P::Running,
            H::Ready,
            None,
        ),
        (
            "one of two runs",
            status(
                Some(Running),
                vec![
                    container("app", 0, Running, None),
                    container("db", 0, Exited, failed),
                ],
            ),
            P::Running,
            H::NotReady,
            Some(R::ContainerNotRunning),
        ),
        (
            "runs, but the sandbox is not ready",
            status(Some(Exited), vec![container("app", 0, Running, None)]),
            P::Running,
            H::NotReady,
            Some(R::SandboxNotReady),
        ),
        (
            "every container exited with 0",
            status(
                Some(Exited),
                vec![
                    container("app", 0, Exited, ok),
                    container("db", 0, Exited, ok),
                ],
            ),
            P::Succeeded,
            H::Succeeded,
            None,
        ),
        (
            "every container exited, one with 3",
            status(
                Some(Running),
                vec![
                    container("app", 0, Exited, ok),
                    container("db", 0, Exited, failed),
                ],
            ),
            P::Failed,
            H::Failed,
            Some(R::Error),
        ),
        (
            "killed for memory",
            status(Some(Running), vec![container("app", 0, Exited, oom)]),
            P::Failed,
            H::Failed,
            Some(R::RuntimeReason),
        ),
        (
            "an unknown container, none running",
            status(
                Some(Running),
                vec![
                    container("app", 0, Unknown, None),
                    container("db", 0, Exited, ok),
                ],
            ),
            P::Unknown,
            H::Unknown,
            Some(R::ContainerUnknown),
        ),
        (
            "the sandbox went away before the containers ran",
            status(Some(Exited), vec![container("app", 0, Created, None)]),
            P::Failed,
            H::Failed,
            Some(R::SandboxNotReady),
        ),
        (
            "only the latest attempt counts: attempt 0 failed, attempt 1 runs",
            status(
                Some(Running),
                vec![
                    container("app", 0, Exited, failed),
                    container("app", 1, Running, None),
                ],
            ),
            P::Running,
            H::Ready,
            None,
        ),
        (
            "only the latest attempt counts: attempt 1 failed after attempt 0 succeeded",
            status(
                Some(Running),
                vec![
                    container("app", 1, Exited, failed),
                    container("app", 0, Exited, ok),
                ],
            ),
            P::Failed,
            H::Failed,
            Some(R::Error),
        ),
    ];
    for (what, status, phase, health, reason) in rows {
        let got = PodHealth::of(&status);
        assert_eq!(
            (got.phase, got.health, got.reason),
            (phase, health, reason),
            "{what}: {got}"
        );
        assert_eq!(got.message.is_some(), reason.is_some(), "{what}: {got}");
    }
}

#[test]
fn a_failure_message_names_the_container_its_attempt_and_its_code() {
    let got = PodHealth::of(&status(
        Some(Running),
        vec![
            container("app", 0, Exited, Some((0, "Completed"))),
            container("db", 2, Exited, Some((3, "Error"))),
        ],
    ));
    assert_eq!(
        got.to_string(),
        "Failed (Failed): container db (attempt 2) exited with 3 (Error)"
    );
}

fn died(name: &str, attempt: u32, code: i32, seconds: u64) -> PodLifecycleEvent {
    let mut e = PodLifecycleEvent::new(
        Arc::new(PodMeta::new("uid-1", "web", "shop")),
        EventType::ContainerDied,
        EventSource::Relist,
        at(seconds),
    );
    e.container = Some(ContainerRef {
        id: ContainerId::new(format!("{name}-{attempt}")),
        name: name.to_owned(),
        attempt,
        kind: EntryKind::Container,
    });
    e.exit_code = Some(code);
    e.runtime_time = Some(at(seconds));
    e
}

#[test]
fn three_failed_exits_on_rising_attempts_within_the_window_are_a_crash_loop() {
    let uid = PodUid::new("uid-1");
    let mut loops = CrashLoops::default();
    loops.observe(&died("app", 0, 1, 0));
    loops.observe(&died("app", 1, 1, 10));
    assert_eq!(
        loops.looping(&uid, at(11)),
        None,
        "two exits are not a loop"
    );
    // The same death seen again (relist and stream) is not another failure.
    loops.observe(&died("app", 1, 1, 10));
    assert_eq!(loops.looping(&uid, at(11)), None);
    loops.observe(&died("app", 2, 1, 20));
    assert_eq!(loops.looping(&uid, at(21)), Some("app"));
    let running = status(Some(Running), vec![container("app", 3, Running, None)]);
    let health = loops.health(&running, at(21));
    assert_eq!(
        (health.health, health.reason),
        (Health::Failed, Some(HealthReason::CrashLoop))
    );
    assert_eq!(
        health.phase,
        PodPhase::Running,
        "the phase stays what the containers do"
    );
    // Past the window (5 minutes from the first of the three) it is over.
    assert_eq!(loops.looping(&uid, at(301)), None);
}

#[test]
fn a_clean_exit_ends_a_run_of_failures_and_the_rule_is_configurable() {
    let uid = PodUid::new("uid-1");
    let mut loops = CrashLoops::new(CrashLoopRule::new(2, Duration::from_secs(60)));
    loops.observe(&died("app", 0, 1, 0));
    loops.observe(&died("app", 1, 0, 5));
    loops.observe(&died("app", 2, 1, 10));
    assert_eq!(
        loops.looping(&uid, at(11)),
        None,
        "the clean exit broke the run"
    );
    loops.observe(&died("app", 3, 2, 20));
    assert_eq!(loops.looping(&uid, at(21)), Some("app"));
    assert_eq!(loops.looping(&uid, at(100)), None, "outside 60 s");
    // Another container's failures are its own.
    loops.observe(&died("db", 0, 1, 30));
    assert_eq!(loops.looping(&uid, at(31)), Some("app"));
    loops.expire(at(1_000));
    assert_eq!(loops.looping(&uid, at(1_000)), None);
    assert!(loops.exits.is_empty(), "expired failures are forgotten");
}

#[test]
fn a_status_that_keeps_earlier_attempts_seeds_a_crash_loop_and_later_deaths_count_once() {
    let uid = PodUid::new("uid-1");
    let exited = |attempt: u32, code: i32, finished: u64| {
        let mut c = container("app", attempt, Exited, Some((code, "Error")));
        c.finished_at = Some(at(finished));
        c
    };
    // Listed out of order, as a runtime may.
    let listed = status(
        Some(Running),
        vec![
            exited(2, 1, 20),
            exited(0, 1, 0),
            container("app", 3, Running, None),
            exited(1, 1, 10),
        ],
    );
    let mut loops = CrashLoops::default();
    loops.seed(&listed);
    assert_eq!(loops.looping(&uid, at(21)), Some("app"));
    // The same deaths observed afterwards are not more failures, and a
    // clean exit of the next attempt still ends the run.
    loops.observe(&died("app", 2, 1, 20));
    loops.observe(&died("app", 3, 0, 30));
    assert_eq!(loops.looping(&uid, at(31)), None);
    // A status with two failed attempts only is no loop.
    let mut two = CrashLoops::default();
    two.seed(&status(
        Some(Running),
        vec![exited(0, 1, 0), exited(1, 1, 10)],
    ));
    assert_eq!(two.looping(&uid, at(11)), None);
}
