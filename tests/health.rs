//! Health against the relist threshold, with paused time.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod common;

use std::time::Duration;

use common::{generator, pod};
use pleg::model::ContainerState::Running;
use pleg::{RelistDuration, Unhealthy};

#[tokio::test(start_paused = true)]
async fn unhealthy_before_the_first_relist_healthy_after_unhealthy_past_the_threshold() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    assert_eq!(pleg.healthy(), Err(Unhealthy::NeverSucceeded));
    assert_eq!(
        pleg.healthy().map_err(|e| e.to_string()),
        Err("pleg has yet to be successful".to_string())
    );

    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(
        pleg.healthy(),
        Err(Unhealthy::NeverSucceeded),
        "time alone does not help"
    );

    pleg.relist().await.expect("listing works");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(pleg.healthy(), Ok(()));

    tokio::time::advance(Duration::from_secs(180)).await;
    let err = pleg.healthy().expect_err("past the threshold");
    assert_eq!(
        err,
        Unhealthy::Stale {
            elapsed: Duration::from_secs(240),
            threshold: Duration::from_secs(180)
        }
    );
    assert_eq!(
        err.to_string(),
        "pleg was last seen active 4m0s ago; threshold is 3m0s"
    );
}

#[tokio::test(start_paused = true)]
async fn health_is_measured_from_the_start_of_the_last_relist_whose_listing_succeeded() {
    let (runtime, pleg) = generator();
    // The listing takes 30 s: health counts from when it started.
    runtime.set_list_delay(Duration::from_secs(30));
    pleg.relist().await.expect("listing works");
    tokio::time::advance(Duration::from_secs(151)).await;
    assert_eq!(
        pleg.healthy().map_err(|e| e.to_string()),
        Err("pleg was last seen active 3m1s ago; threshold is 3m0s".to_string())
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_generator_stays_healthy_and_a_stalled_runtime_turns_it_unhealthy() {
    let (runtime, pleg) = generator();
    pleg.update(RelistDuration {
        relist_period: Duration::from_secs(1),
        relist_threshold: Duration::from_secs(10),
    })
    .expect("valid durations");
    pleg.start().expect("inside tokio");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(pleg.healthy(), Ok(()));

    runtime.set_list_failure(Some("runtime is wedged".into()));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let reason = pleg.healthy().expect_err("no success for 12 s").to_string();
    assert!(
        reason.starts_with("pleg was last seen active 1"),
        "{reason}"
    );
    assert!(reason.ends_with("ago; threshold is 10s"), "{reason}");

    runtime.set_list_failure(None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pleg.healthy(), Ok(()));
    pleg.stop().await;
}
