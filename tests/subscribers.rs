//! Fan-out to many subscribers: slow ones never hold up the others, their
//! losses are counted exactly, and they are told to resync.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod common;

use common::{drain, generator, pod};
use pleg::model::ContainerState::{Exited, Running};
use pleg::{Delivery, EventType, Filter, PodUid, SubscribeOptions};

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_stops_reading_misses_an_exact_count_and_gets_resync() {
    let (runtime, pleg) = generator();
    let mut fast = pleg.subscribe();
    let mut slow = pleg
        .subscribe_with(SubscribeOptions::default().with_capacity(5))
        .expect("valid options");

    // 20 pods start: 20 events, one per pod.
    let pods: Vec<_> = (0..20)
        .map(|i| pod(&format!("p{i:02}"), &[(&format!("c{i:02}"), Running)]))
        .collect();
    runtime.set_pods(pods);
    let summary = pleg
        .relist()
        .await
        .expect("the relist is not held up by the slow subscriber");
    assert_eq!(summary.events, 20);
    assert_eq!(
        drain(&mut fast).len(),
        20,
        "the fast subscriber got everything"
    );

    // The slow one reads now: its 5 queued events, then the marker.
    let got = drain(&mut slow);
    assert_eq!(got.len(), 6);
    assert!(got[..5].iter().all(|d| matches!(d, Delivery::Event(_))));
    assert_eq!(got[5], Delivery::lagged(15));
    assert_eq!(slow.missed_total(), 15);
    assert_eq!(pleg.hub().discarded(), 15);

    // Once it has room again it receives new events normally.
    let pods: Vec<_> = (0..20)
        .map(|i| pod(&format!("p{i:02}"), &[(&format!("c{i:02}"), Running)]))
        .collect();
    let mut pods = pods;
    pods[0] = pod("p00", &[("c00", Exited)]);
    runtime.set_pods(pods);
    pleg.relist().await.expect("listing works");
    let next = drain(&mut slow);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].event().map(|e| e.kind),
        Some(EventType::ContainerDied)
    );
    assert_eq!(drain(&mut fast).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn events_published_after_an_overflow_follow_the_resync_marker() {
    let (runtime, pleg) = generator();
    let mut slow = pleg
        .subscribe_with(SubscribeOptions::default().with_capacity(2))
        .expect("valid options");
    runtime.set_pods(
        (0..4)
            .map(|i| pod(&format!("p{i}"), &[(&format!("c{i}"), Running)]))
            .collect(),
    );
    pleg.relist().await.expect("listing works");
    // Read one event, leaving room for one delivery; the next pod event cannot
    // fit behind the marker, so it is counted too.
    assert!(matches!(slow.try_recv(), Some(Delivery::Event(_))));
    runtime.set_pods(
        (0..4)
            .map(|i| pod(&format!("p{i}"), &[(&format!("c{i}"), Exited)]))
            .collect(),
    );
    pleg.relist().await.expect("listing works");
    let rest = drain(&mut slow);
    assert!(matches!(rest[0], Delivery::Event(_)));
    assert_eq!(rest[1], Delivery::lagged(6));
    assert_eq!(rest.len(), 2);
    assert_eq!(slow.missed_total(), 6);
}

#[tokio::test(start_paused = true)]
async fn filtered_subscribers_receive_only_their_pods() {
    let (runtime, pleg) = generator();
    let mut only_b = pleg
        .subscribe_with(SubscribeOptions::filtered(
            Filter::all().with_pod_uids([PodUid::new("b")]),
        ))
        .expect("valid options");
    let mut everyone = pleg.subscribe();
    runtime.set_pods(vec![
        pod("a", &[("ca", Running)]),
        pod("b", &[("cb", Running)]),
    ]);
    pleg.relist().await.expect("listing works");
    let got: Vec<_> = drain(&mut only_b)
        .into_iter()
        .filter_map(|d| d.event().map(|e| e.pod.uid.to_string()))
        .collect();
    assert_eq!(got, ["b"]);
    assert_eq!(drain(&mut everyone).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_subscription_unsubscribes_it() {
    let (_runtime, pleg) = generator();
    let first = pleg.subscribe();
    let _second = pleg.subscribe();
    assert_eq!(pleg.hub().subscriber_count(), 2);
    drop(first);
    assert_eq!(pleg.hub().subscriber_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_subscription_is_a_stream_that_ends_when_the_generator_is_dropped() {
    use std::future::poll_fn;
    use std::pin::Pin;
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![pod("a", &[("ca", Running)])]);
    pleg.relist().await.expect("listing works");
    drop(pleg);
    async fn next(sub: &mut pleg::Subscription) -> Option<Delivery> {
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *sub), cx)).await
    }
    assert!(matches!(next(&mut sub).await, Some(Delivery::Event(_))));
    assert_eq!(next(&mut sub).await, None);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_running_generator_stops_it_and_ends_its_streams() {
    let (runtime, pleg) = generator();
    let mut sub = pleg.subscribe();
    runtime.set_pods(vec![pod("a", &[("ca", Running)])]);
    pleg.start().expect("inside tokio");
    assert!(matches!(sub.recv().await, Some(Delivery::Event(_))));
    drop(pleg);
    assert_eq!(sub.recv().await, None, "the stream ends with the generator");
    let calls = runtime.list_calls();
    tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
    assert_eq!(
        runtime.list_calls(),
        calls,
        "no relist after the last handle is gone"
    );
}
