use std::time::Duration;

use super::*;
use crate::Config;
use crate::model::{Container, ContainerState, Pod, PodMeta};
use crate::runtime::fake::FakeRuntime;

use ContainerState::{Created, Exited, Running};

/// A pod `uid` named `web` in `shop`, with a ready sandbox and one
/// container `app` in `state`.
fn web(uid: &str, state: ContainerState) -> Pod {
    Pod::new(PodMeta::new(uid, "web", "shop"))
        .with_sandbox(Container::new(format!("sb-{uid}"), "web", Running))
        .with_container(Container::new(format!("{uid}-app"), "app", state))
}

fn the_web_pod() -> Filter {
    Filter::all()
        .with_namespace("shop")
        .with_selector(PodSelector::named("web").expect("a plain name"))
}

fn generator() -> (std::sync::Arc<FakeRuntime>, Pleg) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    (runtime, pleg)
}

#[tokio::test]
async fn a_condition_already_true_in_the_cache_is_met_at_once() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Running)]);
    pleg.relist().await.expect("listing works");
    let met = pleg
        .wait_for(
            &the_web_pod(),
            Until::running("app"),
            Duration::from_secs(30),
        )
        .await
        .expect("met");
    assert_eq!(met.phase, Some(PodPhase::Running));
    assert_eq!(met.status.expect("a status").meta.uid.as_str(), "u1");
}

#[tokio::test]
async fn a_wait_sees_the_change_that_comes_while_it_waits() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Created)]);
    pleg.relist().await.expect("listing works");
    let waiting = {
        let pleg = pleg.clone();
        tokio::spawn(async move {
            pleg.wait_for(
                &the_web_pod(),
                Until::not_in([PodPhase::Pending]),
                Duration::from_secs(30),
            )
            .await
        })
    };
    // The wait has subscribed once it has looked; relist until it returns.
    runtime.set_pods(vec![web("u1", Running)]);
    let met = loop {
        pleg.relist().await.expect("listing works");
        if waiting.is_finished() {
            break waiting.await.expect("the wait task").expect("met");
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(met.phase, Some(PodPhase::Running), "the new phase");
}

#[tokio::test(start_paused = true)]
async fn a_wait_reads_the_runtime_once_more_before_it_reports_a_timeout() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Running)]);
    pleg.relist().await.expect("listing works");
    // The container exits, but nothing relists (the generator is not
    // running): only the wait's last look at the runtime can see it.
    runtime.set_pods(vec![web("u1", Exited)]);
    let met = pleg
        .wait_for(&the_web_pod(), Until::AllExited, Duration::from_secs(5))
        .await
        .expect("met at the last look");
    assert_eq!(met.phase, Some(PodPhase::Succeeded));
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_is_never_met_times_out_with_the_last_status() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Running)]);
    pleg.relist().await.expect("listing works");
    let err = pleg
        .wait_for(&the_web_pod(), Until::Gone, Duration::from_secs(5))
        .await
        .expect_err("the pod stays");
    let WaitError::TimedOut { waited, last, .. } = &err else {
        panic!("a timeout: {err}");
    };
    assert!(*waited >= Duration::from_secs(5));
    assert_eq!(last.as_ref().map(|s| s.meta.uid.as_str()), Some("u1"));
    assert!(
        err.to_string()
            .starts_with("not met within 5s: waited for Gone; shop/web is Running (Ready)"),
        "{err}"
    );
}

#[tokio::test]
async fn gone_and_not_in_are_met_when_the_pod_is_removed() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Running)]);
    pleg.relist().await.expect("listing works");
    runtime.set_pods(vec![]);
    pleg.relist().await.expect("listing works");
    for until in [Until::Gone, Until::not_in([PodPhase::Running])] {
        let met = pleg
            .wait_for(&the_web_pod(), until, Duration::from_secs(30))
            .await
            .expect("met");
        assert!(
            met.status.is_none() && met.phase.is_none(),
            "gone: no status"
        );
    }
    assert!(!pleg.is_alive("web", "shop"));
}

#[tokio::test]
async fn is_alive_is_true_while_the_pods_phase_is_running() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Running)]);
    pleg.relist().await.expect("listing works");
    assert!(pleg.is_alive("web", "shop"));
    assert!(!pleg.is_alive("web", "other"));
    runtime.set_pods(vec![web("u1", Exited)]);
    pleg.relist().await.expect("listing works");
    assert!(!pleg.is_alive("web", "shop"));
}

/// The condition turns true between the wait's look at the cache and its
/// first event: the predicate itself makes the change on its first call
/// and returns only once it is published (and cached), so the look sees
/// the old status. A wait that subscribed only after looking would never
/// hear of the change and would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// A predicate is synchronous: to hold the look until the change is
// published, it blocks its thread (the relist runs on the other worker).
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
async fn a_change_between_the_cache_check_and_the_first_event_is_not_missed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![web("u1", Created)]);
    pleg.relist().await.expect("listing works");
    pleg.start().expect("start");
    let first = Arc::new(AtomicBool::new(true));
    let until = {
        let (runtime, pleg, first) = (runtime.clone(), pleg.clone(), first.clone());
        Until::Matches(Arc::new(move |status: &PodStatus| {
            if first.swap(false, Ordering::SeqCst) {
                runtime.set_pods(vec![web("u1", Running)]);
                pleg.request_relist(&status.meta.uid);
                let published = std::time::Instant::now() + Duration::from_secs(20);
                while std::time::Instant::now() < published {
                    let cached = pleg.cache().get(&status.meta.uid);
                    if cached
                        .is_some_and(|e| e.status.containers.iter().any(|c| c.state == Running))
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                return false;
            }
            status.containers.iter().any(|c| c.state == Running)
        }))
    };
    // The wait's own timeout is an hour, so that its last look at the
    // runtime cannot rescue a missed event within the minute given here.
    let met = tokio::time::timeout(
        Duration::from_secs(60),
        pleg.wait_for(&the_web_pod(), until, Duration::from_secs(3600)),
    )
    .await
    .expect("met by the event, not at the deadline")
    .expect("met by the change published after the look");
    assert!(!first.load(Ordering::SeqCst));
    assert_eq!(met.phase, Some(PodPhase::Running));
    pleg.stop().await;
}
