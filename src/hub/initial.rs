//! The initial state of a watch: how every selected pod's containers and
//! sandboxes stand now, as events marked initial.

use std::sync::Arc;
use std::time::SystemTime;

use super::Filter;
use crate::cache::CacheEntry;
use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::model::{Container, ContainerState, EntryKind, PodStatus};

/// The events that say how the pods of `entries` that `filter` selects
/// stand, sorted by namespace, name and UID, each pod's sandboxes first:
/// `ContainerStarted` for what runs (dated by its start), `ContainerDied`
/// for what has exited (with its exit code and reason, dated by its end),
/// `ContainerChanged` for what is created or unknown.
pub(crate) fn initial_state(
    mut entries: Vec<CacheEntry>,
    filter: &Filter,
    now: SystemTime,
) -> Vec<Arc<PodLifecycleEvent>> {
    entries.retain(|e| filter.matches_pod(&e.status.meta));
    entries.sort_by(|a, b| {
        let (a, b) = (&a.status.meta, &b.status.meta);
        (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid))
    });
    let mut events = Vec::new();
    for entry in &entries {
        let status = &entry.status;
        let sandboxes = status.sandboxes.iter().map(|c| (c, EntryKind::Sandbox));
        let containers = status.containers.iter().map(|c| (c, EntryKind::Container));
        for (container, kind) in sandboxes.chain(containers) {
            let event = standing(status, container, kind, now);
            if filter.matches(&event) {
                events.push(Arc::new(event));
            }
        }
    }
    events
}

fn standing(
    status: &PodStatus,
    container: &Container,
    kind: EntryKind,
    now: SystemTime,
) -> PodLifecycleEvent {
    let what = match container.state {
        ContainerState::Running => EventType::ContainerStarted,
        ContainerState::Exited => EventType::ContainerDied,
        ContainerState::Created | ContainerState::Unknown => EventType::ContainerChanged,
    };
    let mut event = PodLifecycleEvent::new(status.meta.clone(), what, EventSource::Relist, now);
    event.container = Some(ContainerRef {
        id: container.id.clone(),
        name: container.name.clone(),
        attempt: container.attempt,
        kind,
    });
    match what {
        EventType::ContainerStarted => event.runtime_time = container.started_at,
        EventType::ContainerDied => {
            event.exit_code = container.exit_code;
            event.reason.clone_from(&container.reason);
            event.started_at = container.started_at;
            event.finished_at = container.finished_at;
            event.runtime_time = container.finished_at;
        }
        _ => event.runtime_time = container.created_at,
    }
    event
}
