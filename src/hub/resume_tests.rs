//! Sequence numbers, resuming and the initial state, at the hub.

use std::sync::Arc;

use super::*;
use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::model::{EntryKind, PodMeta};

/// A fresh event of pod `uid` in namespace `ns`, about container `n`.
fn event(uid: &str, ns: &str, n: u32) -> Arc<PodLifecycleEvent> {
    let pod = Arc::new(PodMeta::new(uid, uid, ns));
    let mut e = PodLifecycleEvent::new(
        pod,
        EventType::ContainerStarted,
        EventSource::Relist,
        std::time::SystemTime::UNIX_EPOCH,
    );
    e.container = Some(ContainerRef {
        id: format!("{uid}-{n}").into(),
        name: "c".into(),
        attempt: n,
        kind: EntryKind::Container,
    });
    Arc::new(e)
}

fn publish_n(hub: &Hub, uid: &str, ns: &str, n: u32) {
    for i in 0..n {
        hub.publish(&[event(uid, ns, i)]);
    }
}

fn drain(sub: &mut Subscription) -> Vec<Delivery> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().filter_map(Delivery::seq).collect()
}

#[test]
fn an_unfiltered_watch_sees_contiguous_seqs_and_a_filtered_one_rising_ones() {
    let hub = Hub::new();
    let mut all = hub.subscribe();
    let mut prod = hub.subscribe_filtered(Filter::all().with_namespace("prod"));
    for i in 0..10 {
        let ns = if i % 3 == 0 { "prod" } else { "dev" };
        hub.publish(&[event("a", ns, i), event("a", ns, i + 100)]);
    }
    hub.stream_gap(None, 2);
    let all_seqs = seqs(&drain(&mut all));
    assert_eq!(
        all_seqs,
        (1..=21).collect::<Vec<_>>(),
        "events, then the gap"
    );
    let prod_seqs = seqs(&drain(&mut prod));
    assert_eq!(prod_seqs, vec![1, 2, 7, 8, 13, 14, 19, 20, 21]);
    assert_eq!(hub.last_seq(), 21);
    assert_eq!(
        all.resume_token(),
        ResumeToken::new(hub.epoch().clone(), 21)
    );
}

#[test]
fn an_event_published_twice_is_numbered_twice_without_renumbering_the_first() {
    let hub = Hub::new();
    let mut sub = hub.subscribe();
    let e = event("a", "ns", 0);
    hub.publish(&[e.clone(), event("a", "ns", 1)]);
    hub.publish(&[event("a", "ns", 2), e.clone()]);
    assert_eq!(seqs(&drain(&mut sub)), vec![1, 2, 3, 4]);
    assert_eq!(e.seq(), Some(1), "the first number stays");
}

#[test]
fn a_subscriber_that_resumes_gets_exactly_what_it_missed_then_live_events() {
    let hub = Hub::new();
    let mut first = hub.subscribe();
    publish_n(&hub, "a", "ns", 5);
    assert_eq!(seqs(&drain(&mut first)), vec![1, 2, 3, 4, 5]);
    assert_eq!(first.resume_token().seq, 5, "it holds all it took");
    drop(first);

    // Read two, leave, then more happen while it is away.
    let mut second = hub.subscribe();
    publish_n(&hub, "a", "ns", 2);
    let _ = second.try_recv();
    let _ = second.try_recv();
    let token = second.resume_token();
    assert_eq!(token.seq, 7);
    drop(second);
    publish_n(&hub, "a", "ns", 4);

    let mut back = hub
        .subscribe_with(SubscribeOptions::default().with_resume(Some(token)))
        .expect("resumable");
    publish_n(&hub, "a", "ns", 2);
    let got = drain(&mut back);
    assert_eq!(
        seqs(&got),
        (8..=13).collect::<Vec<_>>(),
        "the four missed, then the two live, once each"
    );
    assert!(got.iter().all(|d| matches!(d, Delivery::Event(_))));
    assert_eq!(hub.metrics().resumes_of(ResumeOutcome::Replayed), 1);
    assert_eq!(hub.metrics().replayed.get(), 4);
}

#[test]
fn a_resume_point_just_inside_the_ring_replays_and_just_outside_says_expired() {
    let hub = Hub::with_replay_events(10);
    publish_n(&hub, "a", "ns", 25);
    let epoch = hub.epoch().clone();
    let resume =
        |seq| SubscribeOptions::default().with_resume(Some(ResumeToken::new(epoch.clone(), seq)));

    let mut inside = hub.subscribe_with(resume(15)).expect("in the ring");
    assert_eq!(seqs(&drain(&mut inside)), (16..=25).collect::<Vec<_>>());

    let mut outside = hub.subscribe_with(resume(14)).expect("accepted");
    let got = drain(&mut outside);
    assert_eq!(
        got,
        vec![Delivery::resync(ResyncReason::ReplayExpired, 1, None)],
        "seq 15 left the ring: a Resync that says so, and no partial replay"
    );
    publish_n(&hub, "a", "ns", 1);
    assert_eq!(seqs(&drain(&mut outside)), vec![26], "then live");
    assert_eq!(
        outside.resume_token().seq,
        26,
        "it holds what it got after the Resync"
    );

    let up_to_date = hub.subscribe_with(resume(26)).expect("nothing to replay");
    assert_eq!(up_to_date.queued(), 0);
    assert_eq!(
        hub.subscribe_with(resume(27)).expect_err("never given out"),
        Error::ResumeAhead { seq: 27, last: 26 }
    );
    let m = hub.metrics();
    assert_eq!(m.resumes_of(ResumeOutcome::Replayed), 2);
    assert_eq!(m.resumes_of(ResumeOutcome::Expired), 1);
    assert_eq!(m.resumes_of(ResumeOutcome::Ahead), 1);
    assert_eq!(m.replay_ring.get(), 10, "the ring holds its bound");
}

#[test]
fn a_resume_point_of_another_run_starts_with_a_resync_of_that_reason() {
    let old = Hub::new();
    publish_n(&old, "a", "ns", 3);
    let token = old.resume_token();
    let restarted = Hub::new();
    assert_ne!(old.epoch(), restarted.epoch());
    publish_n(&restarted, "a", "ns", 5);
    let mut sub = restarted
        .subscribe_with(SubscribeOptions::default().with_resume(Some(token)))
        .expect("accepted");
    assert_eq!(
        drain(&mut sub),
        vec![Delivery::resync(ResyncReason::EpochChanged, 0, None)]
    );
    assert_eq!(sub.resume_token(), restarted.resume_token());
    assert_eq!(
        restarted.metrics().resumes_of(ResumeOutcome::EpochChanged),
        1
    );
}

#[test]
fn a_filtered_resume_replays_only_what_the_filter_selects_and_the_gaps_of_its_pods() {
    let hub = Hub::new();
    let prod = Filter::all().with_namespace("prod");
    let sub = hub.subscribe_filtered(prod.clone());
    let token = sub.resume_token();
    drop(sub);
    let prod_pod = Arc::new(PodMeta::new("p", "p", "prod"));
    let dev_pod = Arc::new(PodMeta::new("d", "d", "dev"));
    hub.publish(&[event("p", "prod", 0)]); // 1
    hub.publish(&[event("d", "dev", 0)]); // 2
    hub.stream_gap(Some(&dev_pod), 1); // 3: not for prod
    hub.stream_gap(Some(&prod_pod), 2); // 4
    hub.stream_gap(None, 1); // 5: for everyone
    hub.publish(&[event("p", "prod", 1)]); // 6
    let mut back = hub
        .subscribe_with(SubscribeOptions::filtered(prod).with_resume(Some(token)))
        .expect("resumable");
    let got = drain(&mut back);
    assert_eq!(seqs(&got), vec![1, 4, 5, 6]);
    assert_eq!(got[1], Delivery::stream_gap(2, Some(4)));
    assert_eq!(got[2], Delivery::stream_gap(1, Some(5)));
}

#[test]
fn a_lagging_subscriber_that_resumes_from_its_token_recovers_what_it_dropped() {
    let hub = Hub::new();
    let mut slow = hub
        .subscribe_with(SubscribeOptions::default().with_capacity(2))
        .expect("valid");
    publish_n(&hub, "a", "ns", 6);
    // It holds 1 and 2; 3..=6 were dropped for it.
    assert_eq!(seqs(&drain(&mut slow)[..2]), vec![1, 2]);
    let token = ResumeToken::new(hub.epoch().clone(), 2);
    drop(slow);
    let mut back = hub
        .subscribe_with(SubscribeOptions::default().with_resume(Some(token)))
        .expect("resumable");
    assert_eq!(seqs(&drain(&mut back)), vec![3, 4, 5, 6]);
}

#[test]
fn an_initial_state_comes_first_then_synced_then_live_events() {
    let hub = Hub::new();
    publish_n(&hub, "a", "ns", 3);
    let state = vec![event("a", "ns", 7), event("b", "ns", 8)];
    let mut sub = hub
        .subscribe_from(SubscribeOptions::default(), Some(state.clone()))
        .expect("valid");
    publish_n(&hub, "a", "ns", 1);
    let got = drain(&mut sub);
    assert_eq!(
        got[..3],
        [
            Delivery::Initial(state[0].clone()),
            Delivery::Initial(state[1].clone()),
            Delivery::Synced(ResumeToken::new(hub.epoch().clone(), 3)),
        ]
    );
    assert_eq!(seqs(&got[3..]), vec![4]);
    assert!(
        state.iter().all(|e| e.seq().is_none()),
        "no seq on initial items"
    );
    assert_eq!(
        hub.subscribe_with(SubscribeOptions::default().with_initial_state(true))
            .expect_err("the hub has no cache"),
        Error::InitialStateNeedsGenerator
    );
}

#[test]
fn a_resume_that_expired_gives_the_resync_then_the_initial_state_and_one_that_replays_gives_synced()
{
    let hub = Hub::with_replay_events(2);
    publish_n(&hub, "a", "ns", 5);
    let epoch = hub.epoch().clone();
    let state = vec![event("a", "ns", 9)];
    let mut expired = hub
        .subscribe_from(
            SubscribeOptions::default().with_resume(Some(ResumeToken::new(epoch.clone(), 1))),
            Some(state.clone()),
        )
        .expect("accepted");
    assert_eq!(
        drain(&mut expired),
        vec![
            Delivery::resync(ResyncReason::ReplayExpired, 2, None),
            Delivery::Initial(state[0].clone()),
            Delivery::Synced(ResumeToken::new(epoch.clone(), 5)),
        ]
    );
    let mut replayed = hub
        .subscribe_from(
            SubscribeOptions::default().with_resume(Some(ResumeToken::new(epoch.clone(), 3))),
            Some(state),
        )
        .expect("accepted");
    let got = drain(&mut replayed);
    assert_eq!(seqs(&got[..2]), vec![4, 5], "replayed, no initial state");
    assert_eq!(got[2], Delivery::Synced(ResumeToken::new(epoch, 5)));
    assert_eq!(got.len(), 3);
}

#[test]
fn a_ring_of_zero_resumes_only_a_subscriber_that_missed_nothing() {
    let hub = Hub::with_replay_events(0);
    let sub = hub.subscribe();
    let token = sub.resume_token();
    drop(sub);
    let resume = |t: &ResumeToken| SubscribeOptions::default().with_resume(Some(t.clone()));
    let mut same = hub.subscribe_with(resume(&token)).expect("nothing missed");
    assert_eq!(same.try_recv(), None);
    publish_n(&hub, "a", "ns", 1);
    let mut missed = hub.subscribe_with(resume(&token)).expect("accepted");
    assert_eq!(
        missed.try_recv(),
        Some(Delivery::resync(ResyncReason::ReplayExpired, 1, None))
    );
    assert_eq!(hub.replay_len(), 0);
}

/// One thread keeps publishing while another keeps leaving and resuming
/// from its token: across all its subscriptions, every seq comes once and
/// in order: no gap and no duplicate at any seam.
#[test]
fn resuming_while_events_are_published_has_no_gap_and_no_duplicate_at_the_seam() {
    const EVENTS: u32 = 5_000;
    let hub = Hub::new();
    let mut sub = hub.subscribe();
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for i in 0..EVENTS {
                hub.publish(&[event("a", "ns", i)]);
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut seen = Vec::with_capacity(EVENTS as usize);
    let mut resumes = 0;
    while seen.len() < EVENTS as usize {
        for _ in 0..7 {
            match sub.try_recv() {
                Some(d) => seen.push(d.seq().expect("events carry seqs")),
                None => std::thread::yield_now(),
            }
        }
        let token = sub.resume_token();
        drop(sub);
        sub = hub
            .subscribe_with(SubscribeOptions::default().with_resume(Some(token)))
            .expect("the ring keeps 10,000");
        resumes += 1;
    }
    publisher.join().expect("the publisher ends");
    assert_eq!(seen, (1..=u64::from(EVENTS)).collect::<Vec<_>>());
    assert!(resumes > 100, "{resumes} seams crossed");
}

#[test]
fn a_queued_delivery_takes_16_bytes() {
    assert_eq!(std::mem::size_of::<Queued>(), 16);
}

fn changed(uid: &str) -> Arc<PodLifecycleEvent> {
    let pod = Arc::new(PodMeta::new(uid, uid, "ns"));
    Arc::new(PodLifecycleEvent::new(
        pod,
        EventType::ContainerChanged,
        EventSource::Relist,
        std::time::SystemTime::UNIX_EPOCH,
    ))
}

#[test]
fn container_changed_hints_take_no_seq_so_a_default_watch_sees_every_number() {
    let hub = Hub::new();
    let mut default = hub.subscribe();
    let mut hints = hub.subscribe_filtered(Filter::all().with_container_changed(true));
    let token = hints.resume_token();
    hub.publish(&[changed("a"), event("a", "ns", 0)]); // hint, 1
    hub.publish(&[event("a", "ns", 1), changed("a")]); // 2, hint
    hub.publish(&[changed("a")]); // hint
    hub.publish(&[event("a", "ns", 2)]); // 3
    assert_eq!(seqs(&drain(&mut default)), vec![1, 2, 3], "contiguous");
    let got = drain(&mut hints);
    assert_eq!(got.len(), 6);
    assert_eq!(seqs(&got), vec![1, 2, 3], "hints carry none");
    let held = hints.resume_token();
    assert_eq!(held.seq, 3);
    drop(hints);

    // A resume after seq 2 gets the two hints that followed it, then 3.
    let mut back = hub
        .subscribe_with(
            SubscribeOptions::filtered(Filter::all().with_container_changed(true))
                .with_resume(Some(ResumeToken::new(hub.epoch().clone(), 2))),
        )
        .expect("resumable");
    let kinds: Vec<_> = drain(&mut back)
        .iter()
        .map(|d| (d.event().map(|e| e.kind), d.seq()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Some(EventType::ContainerChanged), None),
            (Some(EventType::ContainerChanged), None),
            (Some(EventType::ContainerStarted), Some(3)),
        ]
    );
    // From the start: everything, the first hint included.
    let mut all = hub
        .subscribe_with(
            SubscribeOptions::filtered(Filter::all().with_container_changed(true))
                .with_resume(Some(token)),
        )
        .expect("resumable");
    assert_eq!(drain(&mut all).len(), 6);
}
