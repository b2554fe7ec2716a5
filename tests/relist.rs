//! The relisting generator against a scripted runtime: the kubelet's generic
//! PLEG scenarios with our own fixtures, and the cases the kubelet gets wrong.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod common;

use std::time::Duration;

use common::{drain, drain_sorted, expect, generator, pod, sandbox_pod, subscribe_with_changed};
use pleg::model::{Container, ContainerState::*, Pod, PodMeta, PodStatus};
use pleg::{Delivery, EventType::*, PodUid};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn three_relists_report_starts_deaths_and_removals_across_two_pods() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![
        pod("p1", &[("a1", Exited), ("a2", Running), ("a3", Unknown)]),
        pod("p2", &[("b1", Exited)]),
    ]);
    pleg.relist().await.expect("listing works");
    // First sightings: running is started, exited is died, unknown is not delivered.
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[
            ("p1", ContainerDied, "a1"),
            ("p1", ContainerStarted, "a2"),
            ("p2", ContainerDied, "b1")
        ])
    );

    pleg.relist().await.expect("listing works");
    assert_eq!(drain_sorted(&mut sub), expect(&[]), "nothing changed");

    runtime.set_pods(vec![
        pod("p1", &[("a2", Exited), ("a3", Running)]),
        pod("p2", &[("b2", Running)]),
    ]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[
            ("p1", ContainerRemoved, "a1"),
            ("p1", ContainerDied, "a2"),
            ("p1", ContainerStarted, "a3"),
            ("p2", ContainerRemoved, "b1"),
            ("p2", ContainerStarted, "b2"),
        ])
    );

    runtime.set_pods(vec![]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[
            ("p1", ContainerRemoved, "a2"),
            ("p1", ContainerDied, "a3"),
            ("p1", ContainerRemoved, "a3"),
            ("p2", ContainerDied, "b2"),
            ("p2", ContainerRemoved, "b2"),
        ])
    );
    assert_eq!(pleg.recorded_pods().await, 0);
    assert!(pleg.cache().is_empty());
}

async fn missing_containers_are_reported_after(warm_up_relists: usize) {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![pod(
        "p",
        &[("c1", Running), ("c2", Running), ("c3", Exited)],
    )]);
    for _ in 0..warm_up_relists {
        pleg.relist().await.expect("listing works");
        drain(&mut sub);
    }
    // c2 stopped and was removed between relists; exited c3 was garbage collected.
    runtime.set_pods(vec![pod("p", &[("c1", Running)])]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[
            ("p", ContainerDied, "c2"),
            ("p", ContainerRemoved, "c2"),
            ("p", ContainerRemoved, "c3")
        ]),
        "after {warm_up_relists} warm-up relists"
    );
}

async fn missing_pods_are_reported_after(warm_up_relists: usize) {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![pod("p", &[("c2", Running)])]);
    for _ in 0..warm_up_relists {
        pleg.relist().await.expect("listing works");
        drain(&mut sub);
    }
    runtime.set_pods(vec![]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[("p", ContainerDied, "c2"), ("p", ContainerRemoved, "c2")]),
        "after {warm_up_relists} warm-up relists"
    );
}

#[tokio::test(start_paused = true)]
async fn containers_missing_after_one_warm_up_relist_are_reported_died_and_removed() {
    missing_containers_are_reported_after(1).await;
}

#[tokio::test(start_paused = true)]
async fn containers_missing_after_three_warm_up_relists_are_reported_died_and_removed() {
    missing_containers_are_reported_after(3).await;
}

#[tokio::test(start_paused = true)]
async fn pods_missing_after_one_warm_up_relist_are_reported_died_and_removed() {
    missing_pods_are_reported_after(1).await;
}

#[tokio::test(start_paused = true)]
async fn pods_missing_after_three_warm_up_relists_are_reported_died_and_removed() {
    missing_pods_are_reported_after(3).await;
}

#[tokio::test(start_paused = true)]
async fn failing_status_fetch_is_cached_and_holds_the_event_back_until_it_succeeds() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![
        pod("p0", &[("c0", Running)]),
        pod("p1", &[("c1", Running)]),
    ]);
    runtime.push_status("p1", Err("unable to get status".into()));

    let summary = pleg.relist().await.expect("listing works");
    assert_eq!(summary.failed, 1);
    let cache = pleg.cache();
    let ok = cache.get(&PodUid::new("p0")).expect("p0 cached");
    assert!(ok.error.is_none());
    assert_eq!(ok.status.containers.len(), 1);
    let failed = cache
        .get(&PodUid::new("p1"))
        .expect("p1 cached with its error");
    let error = failed.error.as_ref().expect("error kept").to_string();
    assert!(error.contains("unable to get status"), "{error}");
    assert!(
        failed.status.containers.is_empty(),
        "no status was ever fetched for p1"
    );
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[("p0", ContainerStarted, "c0")])
    );

    pleg.relist().await.expect("listing works");
    let recovered = cache.get(&PodUid::new("p1")).expect("p1 cached");
    assert!(recovered.error.is_none());
    assert_eq!(recovered.status.containers.len(), 1);
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[("p1", ContainerStarted, "c1")])
    );
    assert_eq!(
        runtime.status_calls(&PodUid::new("p0")),
        1,
        "p0 already succeeded"
    );
    assert_eq!(runtime.status_calls(&PodUid::new("p1")), 2);

    pleg.relist().await.expect("listing works");
    assert_eq!(runtime.total_status_calls(), 3, "nothing left to reinspect");
}

#[tokio::test(start_paused = true)]
async fn a_pod_keeps_failing_and_is_reinspected_on_every_relist() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    runtime.set_status_failure("p", Some("runtime busy".into()));
    for _ in 0..3 {
        pleg.relist().await.expect("listing works");
    }
    assert_eq!(runtime.status_calls(&PodUid::new("p")), 3);
    assert!(drain(&mut sub).is_empty());
    runtime.set_status_failure("p", None);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[("p", ContainerStarted, "c")])
    );
}

#[tokio::test(start_paused = true)]
async fn cache_entry_is_removed_when_its_pod_disappears() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    pleg.relist().await.expect("listing works");
    assert!(pleg.cache().get(&PodUid::new("p")).is_some());
    runtime.set_pods(vec![]);
    pleg.relist().await.expect("listing works");
    assert!(pleg.cache().get(&PodUid::new("p")).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_first_fetch_failed_and_that_vanished_leaves_nothing_behind() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    runtime.push_status("p", Err("boom".into()));
    pleg.relist().await.expect("listing works");
    assert!(pleg.cache().get(&PodUid::new("p")).is_some());
    runtime.set_pods(vec![]);
    pleg.relist().await.expect("listing works");
    assert!(pleg.cache().get(&PodUid::new("p")).is_none());
    assert_eq!(pleg.recorded_pods().await, 0);
}

#[tokio::test(start_paused = true)]
async fn pod_is_reinspected_after_a_transient_unknown_container() {
    let (runtime, pleg) = generator();
    // ContainerChanged too, so that the held-back event of relist 2 would show.
    let mut sub = subscribe_with_changed(&pleg);
    let uid = PodUid::new("p");
    runtime.set_pods(vec![pod("p", &[("infra", Running)])]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[("p", ContainerStarted, "infra")])
    );
    let good = pleg.cache().get(&uid).expect("cached").status;

    // The runtime is half-way through creating a container and inspection fails.
    runtime.set_pods(vec![pod(
        "p",
        &[("infra", Running), ("transient", Unknown)],
    )]);
    runtime.push_status("p", Err("inspection error".into()));
    pleg.relist().await.expect("listing works");
    let entry = pleg.cache().get(&uid).expect("cached");
    assert!(entry.error.is_some());
    assert!(
        drain(&mut sub).is_empty(),
        "ContainerChanged for the transient container is held back"
    );

    // The transient container is gone again: the pod is reinspected, the cache
    // is good again, and since the containers match the first relist, nothing
    // is reported.
    runtime.set_pods(vec![pod("p", &[("infra", Running)])]);
    pleg.relist().await.expect("listing works");
    let entry = pleg.cache().get(&uid).expect("cached");
    assert!(entry.error.is_none());
    // The same status, fetched for a later listing (hence a later timestamp).
    assert!(entry.status.timestamp > good.timestamp);
    let undated = |s: &pleg::model::PodStatus| pleg::model::PodStatus {
        timestamp: None,
        ..s.clone()
    };
    assert_eq!(undated(&entry.status), undated(&good));
    assert!(drain(&mut sub).is_empty());
    assert_eq!(runtime.status_calls(&uid), 3);
}

#[tokio::test(start_paused = true)]
async fn pods_that_hold_only_sandboxes_are_diffed_like_containers() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![
        sandbox_pod("p1", &[("s1", Exited), ("s2", Running), ("s3", Unknown)]),
        sandbox_pod("p2", &[("t1", Exited)]),
    ]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[
            ("p1", ContainerDied, "s1"),
            ("p1", ContainerStarted, "s2"),
            ("p2", ContainerDied, "t1")
        ])
    );
    pleg.relist().await.expect("listing works");
    assert!(drain(&mut sub).is_empty());
    runtime.set_pods(vec![
        sandbox_pod("p1", &[("s2", Exited), ("s3", Running)]),
        sandbox_pod("p2", &[("t2", Running)]),
    ]);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[
            ("p1", ContainerRemoved, "s1"),
            ("p1", ContainerDied, "s2"),
            ("p1", ContainerStarted, "s3"),
            ("p2", ContainerRemoved, "t1"),
            ("p2", ContainerStarted, "t2"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn ips_are_kept_across_a_status_without_ips() {
    for ips in [
        vec!["192.168.1.5".to_string()],
        vec!["192.168.1.5/24".into(), "2000::".into()],
    ] {
        let (runtime, pleg) = generator();
        let mut sub = pleg.subscribe();
        let uid = PodUid::new("p");
        runtime.set_pods(vec![pod("p", &[("c0", Running)])]);
        runtime.set_ips("p", ips.clone());
        pleg.relist().await.expect("listing works");
        assert_eq!(pleg.cache().get(&uid).expect("cached").status.ips, ips);
        assert_eq!(
            drain_sorted(&mut sub),
            expect(&[("p", ContainerStarted, "c0")])
        );

        // The container ends and the runtime reports no IPs any more; no
        // sandbox is ready, so the old IPs stay.
        runtime.set_pods(vec![pod("p", &[("c0", Exited)])]);
        runtime.set_ips("p", vec![]);
        pleg.relist().await.expect("listing works");
        let status = pleg.cache().get(&uid).expect("cached").status;
        assert_eq!(status.ips, ips);
        assert_eq!(status.containers[0].state, Exited);
        assert_eq!(
            drain_sorted(&mut sub),
            expect(&[("p", ContainerDied, "c0")])
        );
    }
}

#[tokio::test(start_paused = true)]
async fn running_pods_and_containers_are_counted_by_state() {
    let (runtime, pleg) = generator();
    let p1 = pod("p1", &[("a1", Running), ("a2", Unknown), ("a3", Unknown)])
        .with_sandbox(Container::new("s1", "p1", Running))
        .with_sandbox(Container::new("s2", "p1", Running))
        .with_sandbox(Container::new("s3", "p1", Unknown));
    let p2 = pod("p2", &[("b1", Exited), ("b2", Created)])
        .with_sandbox(Container::new("t1", "p2", Running))
        .with_sandbox(Container::new("t2", "p2", Exited));
    let p3 = pod("p3", &[]).with_sandbox(Container::new("u1", "p3", Exited));
    runtime.set_pods(vec![p1, p2, p3]);
    pleg.relist().await.expect("listing works");
    let counts = pleg.runtime_counts();
    assert_eq!(counts.running_pods, 2);
    assert_eq!(counts.containers(Running), 1);
    assert_eq!(counts.containers(Unknown), 2);
    assert_eq!(counts.containers(Exited), 1);
    assert_eq!(counts.containers(Created), 1);
}

#[tokio::test(start_paused = true)]
async fn unknown_state_values_become_unknown_are_counted_and_never_panic() {
    let (runtime, pleg) = generator();
    let mut default_sub = pleg.subscribe();
    let mut changed_sub = subscribe_with_changed(&pleg);
    runtime.set_pods(vec![
        pod("p", &[("c", Running)]).with_sandbox(Container::new("s", "p", Running)),
    ]);
    runtime.set_raw_state("c", 42);
    runtime.set_raw_state("s", -7);
    pleg.relist()
        .await
        .expect("an unknown value is not an error");
    assert_eq!(pleg.runtime_stats().unknown_values(), 2);
    assert!(
        drain(&mut default_sub).is_empty(),
        "ContainerChanged is not delivered by default"
    );
    assert_eq!(
        drain_sorted(&mut changed_sub),
        expect(&[("p", ContainerChanged, "c"), ("p", ContainerChanged, "s")])
    );

    runtime.set_raw_state("c", 1);
    runtime.set_raw_state("s", 0);
    pleg.relist().await.expect("listing works");
    assert_eq!(
        drain_sorted(&mut default_sub),
        expect(&[("p", ContainerStarted, "c"), ("p", ContainerStarted, "s")])
    );
    assert_eq!(pleg.runtime_stats().unknown_values(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_same_container_id_listed_twice_yields_one_event() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    let twice = pod("p", &[("c", Running), ("c", Running)]);
    let again_in_another_entry = pod("p", &[("c", Running), ("d", Exited)]);
    runtime.set_pods(vec![twice, again_in_another_entry]);
    let summary = pleg.relist().await.expect("listing works");
    assert_eq!(summary.pods, 1);
    assert_eq!(pleg.stats().duplicates_dropped, 3);
    assert_eq!(
        drain_sorted(&mut sub),
        expect(&[("p", ContainerStarted, "c"), ("p", ContainerDied, "d")])
    );
    pleg.relist().await.expect("listing works");
    assert!(drain(&mut sub).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_relist_emits_nothing_and_keeps_health_until_the_threshold() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    pleg.relist().await.expect("listing works");
    drain(&mut sub);

    runtime.set_pods(vec![pod("p", &[("c", Exited)])]);
    runtime.set_list_failure(Some("connection refused".into()));
    tokio::time::advance(Duration::from_secs(60)).await;
    let err = pleg.relist().await.expect_err("listing fails");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(drain(&mut sub).is_empty());
    assert_eq!(pleg.stats().relist_failures, 1);
    assert!(
        pleg.healthy().is_ok(),
        "within the threshold of the last success"
    );

    tokio::time::advance(Duration::from_secs(121)).await;
    let reason = pleg.healthy().expect_err("past the threshold").to_string();
    assert_eq!(
        reason,
        "pleg was last seen active 3m1s ago; threshold is 3m0s"
    );

    runtime.set_list_failure(None);
    pleg.relist().await.expect("listing works again");
    assert!(pleg.healthy().is_ok());
    assert_eq!(drain_sorted(&mut sub), expect(&[("p", ContainerDied, "c")]));
}

#[tokio::test(start_paused = true)]
async fn a_listing_slower_than_the_request_timeout_fails_and_the_next_relist_runs() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    runtime.set_list_delay(Duration::from_secs(121));
    let err = pleg.relist().await.expect_err("times out");
    assert_eq!(
        err.to_string(),
        "runtime call ListPods timed out after 2m0s"
    );
    runtime.set_list_delay(Duration::ZERO);
    assert_eq!(pleg.relist().await.expect("listing works").pods, 1);
}

#[tokio::test(start_paused = true)]
async fn events_of_one_pod_go_out_together_with_condition_met_last() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    let uid = PodUid::new("p");
    runtime.set_pods(vec![
        pod("p", &[("c1", Running), ("c2", Running)])
            .with_sandbox(Container::new("s", "p", Running)),
        pod("q", &[("d1", Running)]),
    ]);
    pleg.relist().await.expect("listing works");
    drain(&mut sub);
    pleg.set_pod_watch_condition(
        &uid,
        "any-exit",
        pleg::running_container_condition("c1-name", |_| false),
    );
    runtime.set_pods(vec![
        pod("p", &[("c1", Exited), ("c2", Exited)]).with_sandbox(Container::new("s", "p", Exited)),
        pod("q", &[("d1", Exited)]),
    ]);
    pleg.relist().await.expect("listing works");
    let kinds: Vec<_> = drain(&mut sub)
        .into_iter()
        .filter_map(|d| d.event().map(|e| (e.pod.uid.to_string(), e.kind)))
        .collect();
    // Pods come in the listing's order, which is not p then q by necessity;
    // what matters is that each pod's events are contiguous.
    let mut groups: Vec<(String, Vec<pleg::EventType>)> = Vec::new();
    for (uid, kind) in kinds {
        match groups.last_mut() {
            Some((last, kinds)) if *last == uid => kinds.push(kind),
            _ => groups.push((uid, vec![kind])),
        }
    }
    groups.sort();
    assert_eq!(
        groups,
        [
            (
                "p".to_string(),
                vec![ContainerDied, ContainerDied, ContainerDied, ConditionMet]
            ),
            ("q".to_string(), vec![ContainerDied]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn died_events_carry_exit_code_reason_times_name_and_attempt_from_the_status() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    let meta = PodMeta::new("p", "web", "shop").with_label("app", "web");
    runtime
        .set_pods(vec![Pod::new(meta.clone()).with_container(
            Container::new("c", "nginx", Running).with_attempt(2),
        )]);
    pleg.relist().await.expect("listing works");
    drain(&mut sub);
    let exited =
        Pod::new(meta).with_container(Container::new("c", "nginx", Exited).with_attempt(2));
    let mut status = PodStatus::from_pod(&exited);
    status.containers[0] = status.containers[0].clone().with_exit(3, "Error");
    let started_at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let finished_at = started_at + Duration::from_secs(42);
    status.containers[0].started_at = Some(started_at);
    status.containers[0].finished_at = Some(finished_at);
    runtime.set_pods(vec![exited]);
    runtime.push_status("p", Ok(status));
    pleg.relist().await.expect("listing works");
    let events = drain(&mut sub);
    let Some(Delivery::Event(died)) = events.first() else {
        panic!("expected one event, got {events:?}");
    };
    assert_eq!(died.kind, ContainerDied);
    assert_eq!(died.exit_code, Some(3));
    assert_eq!(died.reason.as_deref(), Some("Error"));
    assert_eq!(
        (died.started_at, died.finished_at, died.runtime_time),
        (Some(started_at), Some(finished_at), Some(finished_at))
    );
    assert_eq!(died.pod.namespace, "shop");
    assert_eq!(died.pod.labels.get("app").map(String::as_str), Some("web"));
    let container = died.container.as_ref().expect("container event");
    assert_eq!((container.name.as_str(), container.attempt), ("nginx", 2));
    assert_eq!(died.source, pleg::EventSource::Relist);
}

#[tokio::test(start_paused = true)]
async fn the_period_runs_from_the_end_of_one_relist_to_the_start_of_the_next() {
    let (runtime, pleg) = generator();
    pleg.update(pleg::RelistDuration {
        relist_period: Duration::from_secs(1),
        relist_threshold: Duration::from_secs(180),
    })
    .expect("valid durations");
    runtime.set_list_delay(Duration::from_millis(500));
    let t0 = Instant::now();
    pleg.start().expect("inside tokio");
    // Relists start at 0 s, 1.5 s, 3.0 s (each takes 0.5 s, then 1 s pause).
    tokio::time::sleep_until(t0 + Duration::from_millis(2900)).await;
    assert_eq!(runtime.list_calls(), 2);
    tokio::time::sleep_until(t0 + Duration::from_millis(3100)).await;
    assert_eq!(runtime.list_calls(), 3);
    pleg.stop().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(runtime.list_calls(), 3, "stopped generators do not relist");
    assert!(!pleg.is_running());
}

#[tokio::test(start_paused = true)]
async fn update_changes_the_period_of_a_running_generator_at_once() {
    let (runtime, pleg) = generator();
    let t0 = Instant::now();
    pleg.start().expect("inside tokio");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runtime.list_calls(), 1, "the hour-long period holds");
    pleg.update(pleg::RelistDuration {
        relist_period: Duration::from_secs(2),
        relist_threshold: Duration::from_secs(10),
    })
    .expect("valid durations");
    tokio::time::sleep_until(t0 + Duration::from_millis(6500)).await;
    // Relists at 0, then (period measured from the end of the first) 2, 4, 6.
    assert_eq!(runtime.list_calls(), 4);
    assert_eq!(
        pleg.relist_duration().relist_threshold,
        Duration::from_secs(10)
    );
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn request_relist_inspects_one_pod_without_waiting_for_the_period() {
    let (runtime, pleg) = generator();
    let uid = PodUid::new("p");
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    pleg.start().expect("inside tokio");
    let cache = pleg.cache();
    let first = cache
        .get_newer_than(&uid, Instant::now() - Duration::from_secs(1))
        .await;
    assert!(first.is_some());
    assert_eq!(runtime.status_calls(&uid), 1);

    // The IPs change, which no listing shows; a per-pod request picks it up.
    runtime.set_ips("p", vec!["10.1.2.3".into()]);
    let asked = Instant::now();
    tokio::time::sleep(Duration::from_millis(1)).await;
    pleg.request_relist(&uid);
    let entry = cache.get_newer_than(&uid, asked).await.expect("pod exists");
    assert_eq!(entry.status.ips, ["10.1.2.3"]);
    assert_eq!(runtime.status_calls(&uid), 2);
    assert!(
        Instant::now() - asked < Duration::from_secs(1),
        "well before the hour-long period"
    );
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pod_created_and_removed_between_relists_leaves_no_trace() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("listing works");
    runtime.set_pods(vec![pod("brief", &[("c", Running)])]);
    runtime.set_pods(vec![]);
    pleg.relist().await.expect("listing works");
    assert!(drain(&mut sub).is_empty());
    assert_eq!(pleg.recorded_pods().await, 0);
    assert!(pleg.cache().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_per_pod_request_during_a_runtime_outage_does_not_spin() {
    let (runtime, pleg) = generator();
    pleg.update(pleg::RelistDuration {
        relist_period: Duration::from_secs(1),
        relist_threshold: Duration::from_secs(180),
    })
    .expect("valid durations");
    runtime.set_list_failure(Some("connection refused".into()));
    // Each failing call takes a millisecond, so a spinning loop would still
    // let time pass and show up in the count instead of hanging the test.
    runtime.set_list_delay(Duration::from_millis(1));
    pleg.start().expect("inside tokio");
    pleg.request_relist(&PodUid::new("p"));
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    // One relist at start and one per period: the pending request does not
    // make the loop retry a failing runtime back to back.
    assert_eq!(runtime.list_calls(), 11);
    runtime.set_list_failure(None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pleg.healthy().is_ok());
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn durations_that_cannot_work_are_refused_and_the_old_ones_stay() {
    let (runtime, pleg) = generator();
    let before = pleg.relist_duration();
    let err = pleg
        .update(pleg::RelistDuration {
            relist_period: Duration::ZERO,
            relist_threshold: Duration::from_secs(10),
        })
        .expect_err("zero period");
    assert_eq!(
        err.to_string(),
        "pleg config: relist period must be greater than zero"
    );
    let err = pleg
        .update(pleg::RelistDuration {
            relist_period: Duration::from_secs(10),
            relist_threshold: Duration::ZERO,
        })
        .expect_err("zero threshold");
    assert_eq!(
        err.to_string(),
        "pleg config: relist threshold must be greater than zero"
    );
    assert_eq!(pleg.relist_duration(), before);
    let err = pleg::Pleg::new(
        runtime,
        pleg::Config::generic().with_request_timeout(Duration::ZERO),
    )
    .expect_err("zero timeout");
    assert_eq!(
        err.to_string(),
        "pleg config: runtime request timeout must be greater than zero"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_relist_leaves_reinspections_and_requests_for_the_next_one() {
    let (runtime, pleg) = generator();
    let (p, q) = (PodUid::new("p"), PodUid::new("q"));
    runtime.set_pods(vec![
        pod("p", &[("infra", Running)]),
        pod("q", &[("d", Running)]),
    ]);
    pleg.relist().await.expect("listing works");
    // p's inspection fails while a transient container shows: p is due for
    // reinspection even though its listing goes back to what was recorded.
    runtime.set_pods(vec![
        pod("p", &[("infra", Running), ("transient", Unknown)]),
        pod("q", &[("d", Running)]),
    ]);
    runtime.push_status("p", Err("inspection error".into()));
    pleg.relist().await.expect("listing works");
    runtime.set_pods(vec![
        pod("p", &[("infra", Running)]),
        pod("q", &[("d", Running)]),
    ]);
    pleg.request_relist(&q);

    // This relist is abandoned while it inspects.
    runtime.set_status_delay(Duration::from_secs(10));
    let abandoned = tokio::time::timeout(Duration::from_secs(1), pleg.relist()).await;
    assert!(abandoned.is_err(), "the relist was still inspecting");
    runtime.set_status_delay(Duration::ZERO);

    let (p_calls, q_calls) = (runtime.status_calls(&p), runtime.status_calls(&q));
    pleg.relist().await.expect("listing works");
    assert_eq!(
        runtime.status_calls(&p),
        p_calls + 1,
        "p is still reinspected"
    );
    assert_eq!(
        runtime.status_calls(&q),
        q_calls + 1,
        "q's request is still served"
    );
    assert!(pleg.cache().get(&p).is_some_and(|e| e.error.is_none()));

    pleg.relist().await.expect("listing works");
    assert_eq!(runtime.status_calls(&p), p_calls + 1, "done with p");
    assert_eq!(runtime.status_calls(&q), q_calls + 1, "done with q");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_watch_condition_is_removed_and_the_loop_keeps_running() {
    let (runtime, pleg) = generator();
    pleg.update(pleg::RelistDuration {
        relist_period: Duration::from_secs(1),
        relist_threshold: Duration::from_secs(10),
    })
    .expect("valid durations");
    let uid = PodUid::new("p");
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    pleg.set_pod_watch_condition(
        &uid,
        "boom",
        std::sync::Arc::new(|_: &PodStatus| panic!("condition bug")),
    );
    pleg.start().expect("inside tokio");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(pleg.is_running());
    assert_eq!(pleg.conditions().panicked(), 1);
    assert!(pleg.conditions().is_empty());
    assert!(pleg.healthy().is_ok());
    assert!(runtime.list_calls() >= 5);
    pleg.stop().await;
}

#[tokio::test]
async fn last_events_of_a_pod_that_restarts_for_ever_stay_bounded() {
    let (runtime, pleg) = generator();
    let uid = PodUid::new("p");
    for i in 0..200 {
        runtime.set_pods(vec![pod("p", &[(&format!("c{i}"), Running)])]);
        pleg.relist().await.expect("listing works");
    }
    let last = pleg.last_events(&uid);
    assert!(last.len() <= 64, "{} entries", last.len());
    let newest = last
        .iter()
        .find(|e| e.id.as_str() == "c199")
        .expect("the running container's last event is kept");
    assert_eq!(newest.kind, ContainerStarted);
    assert!(
        last.iter()
            .any(|e| e.id.as_str() == "c198" && e.kind == ContainerRemoved)
    );
    // Forgotten with the pod.
    runtime.set_pods(Vec::new());
    pleg.relist().await.expect("listing works");
    assert!(pleg.last_events(&uid).is_empty());
}
