//! Building the events of a transition, with the best payload at hand.

use std::sync::Arc;
use std::time::SystemTime;

use crate::diff::DiffEvent;
use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::model::{ContainerState, Pod, PodMeta, PodStatus};

/// Where the events being built come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A relist found the transition.
    Relist,
    /// A stream event brought it, stamped by the runtime at `at` (when it
    /// said).
    Stream {
        /// The event's `created_at`.
        at: Option<SystemTime>,
    },
}

impl Origin {
    pub(crate) fn source(self) -> EventSource {
        match self {
            Origin::Relist => EventSource::Relist,
            Origin::Stream { .. } => EventSource::Stream,
        }
    }

    /// An event about the pod as a whole.
    pub(crate) fn event(
        self,
        meta: &Arc<PodMeta>,
        kind: EventType,
        observed_at: SystemTime,
    ) -> PodLifecycleEvent {
        let mut event = PodLifecycleEvent::new(meta.clone(), kind, self.source(), observed_at);
        if let Origin::Stream { at } = self {
            event.runtime_time = at;
        }
        event
    }
}

/// The event for one diff transition, described from the fresh status
/// first, then the listing entry, then the old record.
pub(crate) fn build(
    meta: &Arc<PodMeta>,
    event: &DiffEvent,
    status: Option<&Arc<PodStatus>>,
    new: Option<&Arc<Pod>>,
    old: Option<&Arc<Pod>>,
    origin: Origin,
    observed_at: SystemTime,
) -> PodLifecycleEvent {
    let from_status = status.and_then(|s| s.find(&event.id));
    let described = from_status
        .or_else(|| new.and_then(|p| p.find(&event.id)).map(|(c, _)| c))
        .or_else(|| old.and_then(|p| p.find(&event.id)).map(|(c, _)| c));
    let mut out = origin.event(meta, event.kind, observed_at);
    out.container = Some(ContainerRef {
        id: event.id.clone(),
        name: described.map(|c| c.name.clone()).unwrap_or_default(),
        attempt: described.map_or(0, |c| c.attempt),
        kind: event.entry,
    });
    if event.kind == EventType::ContainerDied
        && let Some(c) = from_status.filter(|c| c.state == ContainerState::Exited)
    {
        out.exit_code = c.exit_code;
        out.reason.clone_from(&c.reason);
        out.started_at = c.started_at;
        out.finished_at = c.finished_at;
        if origin == Origin::Relist {
            out.runtime_time = c.finished_at;
        }
    }
    if event.kind == EventType::ContainerStarted && origin == Origin::Relist {
        out.runtime_time = from_status.and_then(|c| c.started_at);
    }
    out
}
