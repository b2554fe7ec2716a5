//! The pod-watch toolkit against the project-local containerd 1.7: crash
//! loops and health classes ([`pleg::phase`]), `pleg wait` and
//! [`Pleg::wait_for`], terminal reports ([`pleg::terminal`]) and sessions
//! ([`pleg::session`]), each fed by a generator over real pods driven through
//! the test kit's CRI driver.
//!
//! # Relisting, in parallel
//! Every generator here relists (generic mode, every 100 ms) and none opens
//! the event stream, so the tests run in parallel without taking events from
//! one another (on containerd 1.7 each stream event reaches one stream
//! only). Each test has pods of its own, named by [`unique`], and subscribes
//! to (or selects) only those; it removes them at the end, and a [`Cleanup`]
//! removes them if it fails half-way.
//!
//! Run with `eval "$(scripts/containerd.sh env)"; cargo test --features
//! containerd-tests --test containerd_toolkit`.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cri_support::*;
use pleg::model::{ContainerState, EntryKind, PodUid};
use pleg::phase::{CrashLoopRule, CrashLoops, Health, HealthReason, PodHealth, PodPhase};
use pleg::select::PodSelector;
use pleg::session::{SessionError, SessionEvent, SessionOptions, SessionUpdate, SessionWatcher};
use pleg::terminal::{TerminalPhase, TerminalReports};
use pleg::wait::Until;
use pleg::{EventType, Filter, Pleg, PodLifecycleEvent, Subscription};
use pleg_testkit::wait::eventually;
use serde_json::Value;

/// How long a test waits for an event or a state before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// A trigger no test creates: the container runs until its pod is removed.
const FOREVER: &str = "forever";

// ---------------------------------------------------------------- fixtures

/// Subscribes to a planned pod's events, `ContainerChanged` left out (a
/// CREATED state is seen or not depending on when the relist falls).
fn subscribe(pleg: &Pleg, pod: &PlannedPod) -> Subscription {
    subscribe_pods_with(pleg, &[pod.uid()], false)
}

/// The pod's cached status.
fn cached(pleg: &Pleg, uid: &str) -> Arc<pleg::model::PodStatus> {
    pleg.cache()
        .get(&PodUid::new(uid))
        .unwrap_or_else(|| panic!("pod {uid} in the cache"))
        .status
}

/// `sh -c script` in busybox.
fn shell(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// `pleg wait` for one pod against containerd 1.7, reading the runtime
/// itself: no daemon (an empty `--grpc-socket`) and no `PLEG_*` from the
/// environment.
fn pleg_wait(pod: &TestPod, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pleg"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args([
            "wait",
            "--runtime-endpoint",
            &endpoint(),
            "--grpc-socket",
            "",
        ])
        .args(["--namespace", NAMESPACE, "--name", &pod.spec.name])
        .args(["-o", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a spawned `pleg wait` to exit (at most `within`; a process
/// offers nothing to await, so its exit is polled): its exit code and the
/// one JSON document it printed.
async fn finished(child: &mut Running, within: Duration) -> (Option<i32>, Value) {
    let status = eventually("pleg wait to exit", within, || {
        child.0.try_wait().expect("try_wait")
    })
    .await;
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(out) = child.0.stdout.as_mut() {
        out.read_to_string(&mut stdout).expect("stdout");
    }
    if let Some(err) = child.0.stderr.as_mut() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {stdout:?}; stderr: {stderr}"));
    (status.code(), json)
}

// ---------------------------------------------------------------- phases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_failing_on_three_rising_attempts_makes_its_pod_failed_by_crash_loop() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let planned = PlannedPod::new("crash");
    let uid = PodUid::new(planned.uid());
    let mut sub = subscribe(&pleg, &planned);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);

    let mut loops = CrashLoops::new(CrashLoopRule::default());
    for attempt in 0..3 {
        let id = pod.start(&driver, "app", attempt, shell("exit 1")).await;
        let got = events_until(&mut sub, "the container's death", |e| {
            is(e, EventType::ContainerDied, &id)
        })
        .await;
        for e in &got {
            loops.observe(e);
        }
        let died = got.last().expect("the death");
        assert_eq!(
            (died.exit_code, died.reason.as_deref()),
            (Some(1), Some("Error")),
            "{died}"
        );
        let app = died.container.as_ref().expect("container ref");
        assert_eq!(
            (app.name.as_str(), app.attempt, app.kind),
            ("app", attempt, EntryKind::Container)
        );
        if attempt < 2 {
            assert_eq!(
                loops.looping(&uid, pleg.clock().now()),
                None,
                "{} failed exits are no crash loop yet",
                attempt + 1
            );
        }
    }

    // The core writes the cache before it publishes: attempt 2's death is
    // in it.
    let status = cached(&pleg, pod.uid());
    let newest = status.container_by_name("app").expect("app");
    assert_eq!(
        (newest.attempt, newest.state, newest.exit_code),
        (2, ContainerState::Exited, Some(1))
    );
    assert!(status.has_ready_sandbox());

    // From the status alone: every latest attempt exited, one with a
    // non-zero code, so Failed (Error) naming it and its code.
    let alone = PodHealth::of(&status);
    assert_eq!(
        (alone.phase, alone.health, alone.reason),
        (PodPhase::Failed, Health::Failed, Some(HealthReason::Error)),
        "{alone}"
    );
    assert_eq!(
        alone.message.as_deref(),
        Some("container app (attempt 2) exited with 1 (Error)")
    );

    // With the three failed exits on rising attempts: a crash loop.
    let now = pleg.clock().now();
    assert_eq!(loops.looping(&uid, now), Some("app"));
    let health = loops.health(&status, now);
    assert_eq!(
        (health.phase, health.health, health.reason),
        (
            PodPhase::Failed,
            Health::Failed,
            Some(HealthReason::CrashLoop)
        ),
        "{health}"
    );
    let message = health.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("container app exited with a non-zero code 3 times in a row"),
        "{message}"
    );

    pod.remove(&driver).await;
    pleg.stop().await;
}

// ---------------------------------------------------------------- pleg wait

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pleg_wait_exits_0_once_the_container_starts_and_prints_it_running() {
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let pod = TestPod::run(&driver, "wait-run").await;
    cleanup.add(&pod);
    let app = pod
        .create(&driver, "app", 0, until_triggered(FOREVER, 0))
        .await;

    let mut waiting = Running(
        pleg_wait(&pod, &["--running", "app", "--timeout", "30s"])
            .spawn()
            .expect("start pleg wait"),
    );
    // A driver action delayed on purpose: the container starts while the
    // wait waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        waiting.0.try_wait().expect("try_wait").is_none(),
        "pleg wait ended before the container started"
    );
    driver.start_container(&app).await.expect("StartContainer");

    let (code, json) = finished(&mut waiting, Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["met"], true, "{json}");
    assert_eq!(json["until"], "Running(app)", "{json}");
    assert_eq!(json["namespace"], NAMESPACE, "{json}");
    assert_eq!(json["name"], pod.spec.name.as_str(), "{json}");
    assert_eq!(json["pod_uid"], pod.uid(), "{json}");
    assert_eq!(
        (json["phase"].as_str(), json["health"].as_str()),
        (Some("Running"), Some("Ready")),
        "{json}"
    );
    assert_eq!(json["health_reason"], Value::Null, "{json}");
    assert_eq!(
        driver.container_status(&app).await.expect("status").state,
        ContainerState::Running
    );

    pod.remove(&driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pleg_wait_exits_1_when_no_such_container_runs_within_the_timeout() {
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let pod = TestPod::run(&driver, "wait-timeout").await;
    cleanup.add(&pod);
    pod.start(&driver, "app", 0, until_triggered(FOREVER, 0))
        .await;

    let started = tokio::time::Instant::now();
    let mut waiting = Running(
        pleg_wait(&pod, &["--running", "nosuch", "--timeout", "2s"])
            .spawn()
            .expect("start pleg wait"),
    );
    let (code, json) = finished(&mut waiting, Duration::from_secs(30)).await;
    let waited = started.elapsed();
    assert_eq!(code, Some(1), "{json}");
    assert!(waited >= Duration::from_secs(2), "gave up after {waited:?}");
    assert_eq!(json["met"], false, "{json}");
    assert_eq!(json["until"], "Running(nosuch)", "{json}");
    // The last status it saw is the pod's, with its one container running.
    assert_eq!(json["pod_uid"], pod.uid(), "{json}");
    assert_eq!(
        (json["phase"].as_str(), json["health"].as_str()),
        (Some("Running"), Some("Ready")),
        "{json}"
    );

    pod.remove(&driver).await;
}

// ---------------------------------------------------------------- terminal reports

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_whose_containers_exit_0_and_3_gets_one_failed_terminal_report_with_both_codes() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let planned = PlannedPod::new("terminal");
    let mut sub = subscribe(&pleg, &planned);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    // Both wait for one trigger, so that neither has ended before the
    // other has started.
    let ok = pod
        .start(&driver, "ok", 0, until_triggered("exit", 0))
        .await;
    let bad = pod
        .start(&driver, "bad", 0, until_triggered("exit", 3))
        .await;

    let mut reports = TerminalReports::new();
    let mut ended = Vec::new();
    let mut observe = |events: &[Arc<PodLifecycleEvent>], ended: &mut Vec<_>| {
        ended.extend(events.iter().filter_map(|e| reports.observe(e)));
    };
    let mut running = [false, false];
    while running != [true, true] {
        let got = events_until(&mut sub, "both containers started", |e| {
            e.kind == EventType::ContainerStarted
        })
        .await;
        let last = got.last().expect("an event");
        running[0] |= is(last, EventType::ContainerStarted, &ok);
        running[1] |= is(last, EventType::ContainerStarted, &bad);
        observe(&got, &mut ended);
    }
    assert!(ended.is_empty(), "no end while both run: {ended:?}");

    pod.trigger("exit");
    while ended.is_empty() {
        let got = events_until(&mut sub, "a death", |e| e.kind == EventType::ContainerDied).await;
        observe(&got, &mut ended);
    }
    assert_eq!(ended.len(), 1, "{ended:?}");
    let report = &ended[0];
    assert_eq!(report.pod.uid.as_str(), pod.uid());
    assert_eq!(report.pod.name, pod.spec.name);
    assert_eq!(report.phase, TerminalPhase::Failed);
    assert_eq!(report.exit_code(), Some(3));
    // Sorted by name.
    let outcomes: Vec<_> = report
        .containers
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.id.as_str(),
                c.exited,
                c.exit_code,
                c.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("bad", bad.as_str(), true, Some(3), Some("Error")),
            ("ok", ok.as_str(), true, Some(0), Some("Completed")),
        ]
    );
    assert!(
        report.containers.iter().all(|c| c.finished_at.is_some()),
        "{report:?}"
    );

    // A further relist (serialised with the periodic ones) brings nothing
    // that ends the pod again.
    pleg.relist().await.expect("relist");
    let more = events(&mut sub);
    observe(&more, &mut ended);
    assert_eq!(
        ended.len(),
        1,
        "a second report after {:?}",
        described(&more)
    );

    // Nor does removing it: it ended already. The tracker forgets it.
    pod.remove(&driver).await;
    let gone = events_until(&mut sub, "the sandbox removed", |e| {
        is(e, EventType::ContainerRemoved, &pod.sandbox_id)
    })
    .await;
    observe(&gone, &mut ended);
    assert_eq!(ended.len(), 1, "a report after {:?}", described(&gone));
    assert!(reports.is_empty(), "the removed pod is still tracked");
    pleg.stop().await;
}

// ---------------------------------------------------------------- sessions

/// A pod of a session, labelled with it and its component.
fn session_pod(session: &str, component: &str) -> PlannedPod {
    let mut planned = PlannedPod::new(&format!("session-{component}"));
    planned.spec = planned
        .spec
        .clone()
        .with_label("session", session)
        .with_label("component", component);
    planned
}

/// A session's events until `app` is reported started, at most [`WAIT`].
async fn session_events_until_started(
    receiver: &mut pleg::session::SessionReceiver,
    app: &str,
) -> Vec<SessionEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(SessionUpdate::Event(e))) => {
                let done = is(&e.event, EventType::ContainerStarted, app);
                got.push(e);
                if done {
                    return got;
                }
            }
            Ok(other) => panic!("{other:?} after {got:?}"),
            Err(_) => panic!("timed out waiting for {app} to start: {got:?}"),
        }
    }
}

/// What is queued for an unsubscribed session, up to its end.
async fn drained(receiver: &mut pleg::session::SessionReceiver) -> Vec<SessionEvent> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, receiver.recv()).await {
            Ok(Some(SessionUpdate::Event(e))) => got.push(e),
            Ok(None) => return got,
            Ok(Some(other)) => panic!("{other:?} after {got:?}"),
            Err(_) => panic!("an unsubscribed session's channel did not end"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_receives_only_its_own_pods_with_their_component_and_health() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    // Session values of this run only: a pod left labelled by an earlier,
    // failed run would otherwise show up in the first relist.
    let (a, b) = (unique("a"), unique("b"));
    let sessions = SessionWatcher::new(&pleg, SessionOptions::default());
    let mut session_a = sessions.subscribe(&a).expect("subscribe a");
    let mut session_b = sessions.subscribe(&b).expect("subscribe b");
    assert_eq!(
        sessions.subscribe(&a).err(),
        Some(SessionError::AlreadySubscribed(a.clone()))
    );
    let mut listed = vec![a.clone(), b.clone()];
    listed.sort();
    assert_eq!(sessions.sessions(), listed);

    let web = session_pod(&a, "web").run(&driver).await;
    cleanup.add(&web);
    let db = session_pod(&b, "db").run(&driver).await;
    cleanup.add(&db);
    let web_app = web
        .start(&driver, "app", 0, until_triggered(FOREVER, 0))
        .await;
    let db_app = db
        .start(&driver, "app", 0, until_triggered(FOREVER, 0))
        .await;

    let mut seen_a = session_events_until_started(&mut session_a, &web_app).await;
    let mut seen_b = session_events_until_started(&mut session_b, &db_app).await;
    for (seen, app) in [(&seen_a, &web_app), (&seen_b, &db_app)] {
        let started = seen.last().expect("the start");
        // Every container runs, with a ready sandbox. A pod on the node's
        // network has no IP of its own: containerd reports none for it.
        assert_eq!(
            (started.health.phase, started.health.health),
            (PodPhase::Running, Health::Ready),
            "{app}: {started:?}"
        );
        assert_eq!(started.error, None, "{started:?}");
        assert_eq!(started.ip, None, "{started:?}");
    }

    // A relist later, the sessions end: what is queued comes, then the end.
    pleg.relist().await.expect("relist");
    sessions.unsubscribe(&a).expect("unsubscribe a");
    sessions.unsubscribe(&b).expect("unsubscribe b");
    seen_a.extend(drained(&mut session_a).await);
    seen_b.extend(drained(&mut session_b).await);
    for (seen, session, pod, component) in [(&seen_a, &a, &web, "web"), (&seen_b, &b, &db, "db")] {
        let started: Vec<&str> = seen
            .iter()
            .filter(|e| e.event.kind == EventType::ContainerStarted)
            .filter_map(|e| e.event.container_id().map(|c| c.as_str()))
            .collect();
        let app = if component == "web" {
            &web_app
        } else {
            &db_app
        };
        assert_eq!(
            started,
            [pod.sandbox_id.as_str(), app.as_str()],
            "{session}: {seen:?}"
        );
        for e in seen {
            assert_eq!(&e.session, session, "{e:?}");
            assert_eq!(e.event.pod.uid.as_str(), pod.uid(), "{session}: {e:?}");
            assert_eq!(e.component.as_deref(), Some(component), "{e:?}");
        }
    }
    assert_eq!(sessions.sessions(), Vec::<String>::new());
    assert_eq!(
        sessions.unsubscribe(&a),
        Err(SessionError::NotSubscribed(a.clone()))
    );
    let unknown = unique("unknown");
    assert_eq!(
        sessions.unsubscribe(&unknown),
        Err(SessionError::NotSubscribed(unknown.clone()))
    );

    web.remove(&driver).await;
    db.remove(&driver).await;
    pleg.stop().await;
}

// ---------------------------------------------------------------- Pleg::wait_for

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_all_exited_returns_the_final_status_and_the_pod_is_alive_only_while_it_runs() {
    let pleg = relisting().await;
    let driver = driver();
    let mut cleanup = Cleanup::new();
    let planned = PlannedPod::new("wait-exit");
    let mut sub = subscribe(&pleg, &planned);
    let pod = planned.run(&driver).await;
    cleanup.add(&pod);
    let name = pod.spec.name.clone();
    events_until(&mut sub, "the sandbox started", |e| {
        is(e, EventType::ContainerStarted, &pod.sandbox_id)
    })
    .await;
    // A sandbox without containers is not alive: nothing runs yet.
    assert!(!pleg.is_alive(&name, NAMESPACE));

    // The wait begins before the container exists.
    let filter = Filter::all()
        .with_namespace(NAMESPACE)
        .with_selector(PodSelector::named(&name).expect("a name selector"));
    let waiter = tokio::spawn({
        let pleg = pleg.clone();
        async move { pleg.wait_for(&filter, Until::AllExited, WAIT).await }
    });
    let app = pod.start(&driver, "app", 0, shell("sleep 1; exit 0")).await;
    events_until(&mut sub, "the container started", |e| {
        is(e, EventType::ContainerStarted, &app)
    })
    .await;
    assert!(pleg.is_alive(&name, NAMESPACE), "alive while app runs");
    assert!(!waiter.is_finished(), "the wait ended while app runs");
    assert!(
        !pleg.is_alive(&name, "another-namespace"),
        "alive by name in another namespace"
    );

    let met = tokio::time::timeout(WAIT + Duration::from_secs(5), waiter)
        .await
        .expect("the wait returns by its own timeout")
        .expect("join")
        .unwrap_or_else(|e| panic!("wait_for: {e}"));
    assert_eq!(met.phase, Some(PodPhase::Succeeded));
    let status = met.status.expect("the status that met it");
    assert_eq!(status.meta.uid.as_str(), pod.uid());
    let final_app = status.container_by_name("app").expect("app");
    assert_eq!(final_app.id.as_str(), app);
    assert_eq!(
        (
            final_app.state,
            final_app.exit_code,
            final_app.reason.as_deref()
        ),
        (ContainerState::Exited, Some(0), Some("Completed"))
    );
    assert!(final_app.finished_at.is_some());
    assert!(!pleg.is_alive(&name, NAMESPACE), "alive after app exited");

    pod.remove(&driver).await;
    pleg.stop().await;
}
