//! The generator through its handle, beside the code because these cases
//! reach inside: they apply stream events directly, force a reinspection or
//! rewind a condition's version.

mod conditions;
mod evented;
mod reinspect;
mod reliability;

use crate::model::{Container, ContainerState, Pod, PodMeta};

/// A pod with these containers (no sandbox).
fn pod(uid: &str, containers: &[(&str, ContainerState)]) -> Pod {
    containers.iter().fold(
        Pod::new(PodMeta::new(uid, format!("{uid}-name"), "default")),
        |p, (id, state)| p.with_container(Container::new(*id, format!("{id}-name"), *state)),
    )
}
