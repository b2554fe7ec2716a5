//! The generator through its handle, beside the code because these cases
//! reach inside: they apply stream events directly, force a reinspection or
//! rewind a condition's version.

mod conditions;
mod evented;
mod initial;
mod reinspect;
mod reliability;

use crate::Pleg;
use crate::model::{Container, ContainerState, Pod, PodMeta};
use crate::stream::StreamState;

/// A pod with these containers (no sandbox).
fn pod(uid: &str, containers: &[(&str, ContainerState)]) -> Pod {
    containers.iter().fold(
        Pod::new(PodMeta::new(uid, format!("{uid}-name"), "default")),
        |p, (id, state)| p.with_container(Container::new(*id, format!("{id}-name"), *state)),
    )
}

/// A pod `uid` with a ready sandbox `sb-<uid>` and these containers.
fn pod_with_sandbox(uid: &str, containers: &[(&str, ContainerState)]) -> Pod {
    let mut p = pod(uid, containers);
    p.sandboxes.push(Container::new(
        format!("sb-{uid}"),
        format!("{uid}-name"),
        ContainerState::Running,
    ));
    p
}

/// Waits until the stream state is `state`.
async fn until_state(pleg: &Pleg, state: StreamState) {
    let mut status = pleg.watch_stream_status();
    status
        .wait_for(|s| s.state == state)
        .await
        .expect("the generator publishes its status while it lives");
}

/// Waits until the driver has handled `count` stream events in all, with
/// the relists they brought.
async fn until_handled(pleg: &Pleg, count: u64) {
    let mut status = pleg.watch_stream_status();
    status
        .wait_for(|s| s.events_handled >= count)
        .await
        .expect("the generator publishes its status while it lives");
}

/// `Config::after_relist` hears of every relist that listed the runtime,
/// with its pod and container counts, and of none that failed; it runs
/// once the core's lock is free, so it may use the handle.
#[tokio::test]
async fn after_relist_hears_each_listing_with_its_counts_and_not_a_failed_one() {
    use std::sync::Arc;

    use crate::RelistSummary;
    use crate::runtime::fake::FakeRuntime;

    let heard: Arc<parking_lot::Mutex<Vec<(RelistSummary, bool)>>> = Arc::default();
    // The handle, for the hook to look at (taken out at the end: the hook
    // lives inside the generator it holds).
    let slot: Arc<parking_lot::Mutex<Option<Pleg>>> = Arc::default();
    let runtime = FakeRuntime::with_pods(vec![
        pod_with_sandbox(
            "a",
            &[
                ("a1", ContainerState::Running),
                ("a2", ContainerState::Exited),
            ],
        ),
        pod("b", &[("b1", ContainerState::Created)]),
    ]);
    let config = crate::Config::generic().with_after_relist({
        let heard = heard.clone();
        let slot = slot.clone();
        move |summary| {
            // The core's lock is free: this would wait for it otherwise.
            let unlocked = slot
                .lock()
                .as_ref()
                .is_some_and(|pleg| pleg.inner.shared.core.try_lock().is_ok());
            heard.lock().push((*summary, unlocked));
        }
    });
    let pleg = Pleg::new(runtime.clone(), config).expect("valid config");
    *slot.lock() = Some(pleg.clone());

    let first = pleg.relist().await.expect("the fake lists");
    runtime.push_list_error("runtime down");
    assert!(pleg.relist().await.is_err());
    runtime.set_pods(vec![pod("c", &[("c1", ContainerState::Running)])]);
    let third = pleg.relist().await.expect("the fake lists");

    drop(slot.lock().take());
    let heard = heard.lock().clone();
    assert_eq!(heard, vec![(first, true), (third, true)]);
    assert_eq!((first.pods, first.containers), (2, 3), "{first:?}");
    assert_eq!((third.pods, third.containers), (1, 1), "{third:?}");
}
