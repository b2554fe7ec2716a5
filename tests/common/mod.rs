//! Fixtures shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use pleg::model::{Container, ContainerState, Pod, PodMeta};
use pleg::runtime::fake::FakeRuntime;
use pleg::{
    Config, Delivery, EventType, Filter, Pleg, RelistDuration, SubscribeOptions, Subscription,
};

/// A pod with these containers (no sandbox).
pub fn pod(uid: &str, containers: &[(&str, ContainerState)]) -> Pod {
    containers.iter().fold(
        Pod::new(PodMeta::new(uid, format!("{uid}-name"), "default")),
        |p, (id, state)| p.with_container(Container::new(*id, format!("{id}-name"), *state)),
    )
}

/// A pod with these sandboxes only.
pub fn sandbox_pod(uid: &str, sandboxes: &[(&str, ContainerState)]) -> Pod {
    sandboxes.iter().fold(
        Pod::new(PodMeta::new(uid, format!("{uid}-name"), "default")),
        |p, (id, state)| p.with_sandbox(Container::new(*id, format!("{uid}-name"), *state)),
    )
}

/// A generator over a fake runtime, relisting every hour (tests relist by
/// hand) with the kubelet's 3-minute threshold.
pub fn generator() -> (Arc<FakeRuntime>, Pleg) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(
        runtime.clone(),
        Config::generic()
            .with_relist(RelistDuration {
                relist_period: Duration::from_secs(3600),
                relist_threshold: Duration::from_secs(180),
            })
            .with_request_timeout(Duration::from_secs(120)),
    )
    .expect("valid config");
    (runtime, pleg)
}

/// Everything queued for the subscriber, without waiting.
pub fn drain(sub: &mut Subscription) -> Vec<Delivery> {
    std::iter::from_fn(|| sub.try_recv()).collect()
}

/// The queued events as sorted (pod uid, kind, container id) triples, the way
/// the kubelet's tests compare them.
pub fn drain_sorted(sub: &mut Subscription) -> Vec<(String, EventType, String)> {
    let mut out: Vec<_> = drain(sub)
        .into_iter()
        .filter_map(|d| match d {
            Delivery::Event(e) => Some((
                e.pod.uid.to_string(),
                e.kind,
                e.container_id().map(|c| c.to_string()).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Builds the expected triples, sorted.
pub fn expect(events: &[(&str, EventType, &str)]) -> Vec<(String, EventType, String)> {
    let mut out: Vec<_> = events
        .iter()
        .map(|(u, k, c)| (u.to_string(), *k, c.to_string()))
        .collect();
    out.sort();
    out
}

/// A subscription that also receives `ContainerChanged`.
pub fn subscribe_with_changed(pleg: &Pleg) -> Subscription {
    pleg.subscribe_with(SubscribeOptions::filtered(
        Filter::all().with_container_changed(true),
    ))
    .expect("valid options")
}
