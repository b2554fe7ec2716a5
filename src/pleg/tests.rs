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
