//! The pod-status cache as the generator keeps it.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod common;

use std::time::Duration;

use common::{generator, pod};
use pleg::PodUid;
use pleg::model::ContainerState::Running;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn get_newer_than_is_woken_by_the_global_time_for_a_pod_that_does_not_exist() {
    let (_runtime, pleg) = generator();
    let cache = pleg.cache();
    let asked = Instant::now();
    let waiter =
        tokio::spawn(async move { cache.get_newer_than(&PodUid::new("nobody"), asked).await });
    tokio::time::advance(Duration::from_millis(5)).await;
    assert!(!waiter.is_finished(), "nothing newer yet");
    pleg.relist().await.expect("listing works");
    let answer = waiter.await.expect("waiter task");
    assert!(
        answer.is_none(),
        "the pod does not exist as of a newer time"
    );
}

#[tokio::test(start_paused = true)]
async fn get_newer_than_is_woken_by_the_global_time_for_an_unchanged_pod() {
    let (runtime, pleg) = generator();
    runtime.set_pods(vec![pod("p", &[("c", Running)])]);
    pleg.relist().await.expect("listing works");
    let cache = pleg.cache();
    let written = cache.get(&PodUid::new("p")).expect("cached").modified;
    tokio::time::advance(Duration::from_secs(1)).await;
    let asked = Instant::now();
    let waiter = tokio::spawn(async move { cache.get_newer_than(&PodUid::new("p"), asked).await });
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    // No change for the pod: its entry keeps its old time, but the relist
    // declares the whole cache fresh.
    pleg.relist().await.expect("listing works");
    let entry = waiter.await.expect("waiter task").expect("pod exists");
    assert_eq!(entry.modified, written);
    assert!(pleg.cache().global_time().is_some_and(|g| g > asked));
}
