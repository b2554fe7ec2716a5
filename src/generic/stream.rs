//! Applying the runtime's container events to the same records and cache the
//! relist uses, so that each transition is published once, by whichever of
//! the two saw it first.
//!
//! An event is a partial relist of one sandbox: its subject (the container or
//! sandbox it names) takes the state the event type says, and the sandbox
//! and container statuses it carries update the pod's record where they move
//! forward. The new record is diffed against the old one exactly as a relist
//! would, the cache entry is merged from the event's statuses, and the
//! events go out with source `stream` and the runtime's `created_at`.
//!
//! # Stale events
//! The stream can deliver old news: containerd 1.7 hands a new subscriber
//! the events it buffered while nobody listened, some minutes old, and a
//! relist may already have reported what an event describes. An event is
//! dropped, and counted, when:
//! - it is older than the last listing (the records already reflect it);
//! - it names an ID already reported removed;
//! - it says CREATED for a container that has started or finished, or
//!   STARTED for one that has finished;
//! - it is older than the pod's cache entry.
//!
//! Within an event, a status that would move an entry backwards (exited to
//! running, say) is ignored. The state of an entry only moves forward:
//! created → running → exited → removed.

use std::sync::Arc;

use tokio::time::Instant;

use super::{GenericPleg, Inner, RelistState};
use crate::diff::diff_pod;
use crate::model::{Container, ContainerState, EntryKind, Pod, PodMeta, PodStatus, PodUid};
use crate::runtime::{ContainerEvent, ContainerEventKind};

/// What became of one stream event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied to records and cache; this many lifecycle events were
    /// published (0 when a relist had already reported the transition).
    Published(usize),
    /// Applied like [`Published`](Self::Published), but the event shows that
    /// the stream lost earlier ones: STARTED for a container never seen
    /// created, STOPPED for one never seen started, DELETED for one never
    /// seen. (On containerd 1.7 another consumer of the event stream takes
    /// some of the events.) A relist should look for what was lost.
    PublishedAfterGap(usize),
    /// Dropped as stale.
    Stale(StaleReason),
    /// Dropped: the event names no pod and its ID is in no record.
    Unresolved,
}

/// Why an event was dropped as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StaleReason {
    /// Older than the last listing, which already reflects it.
    BeforeListing,
    /// Older than the pod's cache entry.
    OlderThanCache,
    /// CREATED for a container that already started or finished.
    CreatedAfterStart,
    /// STARTED for a container that already finished.
    StartedAfterFinish,
    /// About an ID already reported removed.
    AlreadyRemoved,
}

impl StaleReason {
    /// Every reason, in a stable order (for counters).
    pub const ALL: [StaleReason; 5] = [
        StaleReason::BeforeListing,
        StaleReason::OlderThanCache,
        StaleReason::CreatedAfterStart,
        StaleReason::StartedAfterFinish,
        StaleReason::AlreadyRemoved,
    ];

    /// Snake-case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::BeforeListing => "before_listing",
            StaleReason::OlderThanCache => "older_than_cache",
            StaleReason::CreatedAfterStart => "created_after_start",
            StaleReason::StartedAfterFinish => "started_after_finish",
            StaleReason::AlreadyRemoved => "already_removed",
        }
    }
}

impl GenericPleg {
    /// Applies one event from the runtime's event stream: updates records and
    /// cache and publishes what changed, unless the event is stale. Serialised
    /// with relists. [`EventedPleg`](crate::evented::EventedPleg) calls this
    /// for every event it receives.
    pub async fn apply_event(&self, event: &ContainerEvent) -> Applied {
        self.inner.apply_event(event).await
    }
}

/// The state an event gives its subject (`None`: removed).
fn subject_state(kind: ContainerEventKind) -> Option<ContainerState> {
    match kind {
        ContainerEventKind::Created => Some(ContainerState::Created),
        ContainerEventKind::Started => Some(ContainerState::Running),
        ContainerEventKind::Stopped => Some(ContainerState::Exited),
        ContainerEventKind::Deleted => None,
    }
}

/// How far along its life an entry is; states only move forward.
fn rank(state: ContainerState) -> u8 {
    match state {
        ContainerState::Created => 0,
        ContainerState::Running | ContainerState::Unknown => 1,
        ContainerState::Exited => 2,
    }
}

/// Sets an entry's state from a status, unless that would move it backwards.
/// `entries` is in ID order and stays so (a pod can hold many containers,
/// and containerd sends the status of every one with each event).
fn upsert(entries: &mut Vec<Container>, mut status: Container) {
    match entries.binary_search_by(|c| c.id.cmp(&status.id)) {
        Ok(i) => {
            let existing = &mut entries[i];
            if rank(status.state) >= rank(existing.state) {
                if status.name.is_empty() {
                    status.name = std::mem::take(&mut existing.name);
                }
                *existing = status;
            }
        }
        Err(i) => entries.insert(i, status),
    }
}

/// Puts entries in ID order (cheap when they already are).
fn by_id(entries: &mut [Container]) {
    if !entries.is_sorted_by(|a, b| a.id <= b.id) {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
    }
}

impl Inner {
    /// Keeps the running counts current between relists (the next listing
    /// recounts from scratch).
    fn recount(&self, old: Option<&Pod>, new: Option<&Pod>) {
        let mut counts = self.counts.lock();
        if let Some(old) = old {
            counts.remove(old);
        }
        if let Some(new) = new {
            counts.add(new);
        }
    }

    async fn apply_event(&self, event: &ContainerEvent) -> Applied {
        let mut state = self.state.lock().await;
        let RelistState {
            records,
            listed_at,
            removed,
            ..
        } = &mut *state;
        let at = event.created_at;
        if let (Some(at), Some(listed)) = (at, *listed_at)
            && at < listed
        {
            return Applied::Stale(StaleReason::BeforeListing);
        }
        if removed.contains(&event.id) {
            return Applied::Stale(StaleReason::AlreadyRemoved);
        }
        let snapshot = event.sandbox.as_ref();
        let uid: PodUid = match snapshot.and_then(|s| s.pod.as_ref()) {
            Some(meta) => meta.uid.clone(),
            None => {
                let by_sandbox = snapshot.and_then(|s| records.owner_of(&s.sandbox.id));
                match records.owner_of(&event.id).or(by_sandbox) {
                    Some(uid) => uid.clone(),
                    None => return Applied::Unresolved,
                }
            }
        };
        let old = records.get(&uid).cloned();
        let subject = old.as_deref().and_then(|p| p.find(&event.id));
        match (event.kind, subject.map(|(c, _)| c.state)) {
            (
                ContainerEventKind::Created,
                Some(ContainerState::Running | ContainerState::Exited),
            ) => {
                return Applied::Stale(StaleReason::CreatedAfterStart);
            }
            (ContainerEventKind::Started, Some(ContainerState::Exited)) => {
                return Applied::Stale(StaleReason::StartedAfterFinish);
            }
            _ => {}
        }
        // Every container's events come in order (created, started,
        // stopped, deleted); a missing predecessor means lost events.
        let gap = matches!(
            (event.kind, subject.map(|(c, _)| c.state)),
            (ContainerEventKind::Started, None)
                | (
                    ContainerEventKind::Stopped,
                    None | Some(ContainerState::Created)
                )
                | (ContainerEventKind::Deleted, None)
        );
        let outcome = |published| {
            if gap {
                Applied::PublishedAfterGap(published)
            } else {
                Applied::Published(published)
            }
        };
        let cached = self.cache.get(&uid);
        if let (Some(at), Some(entry)) = (at, &cached)
            && entry.status.timestamp.is_some_and(|t| at < t)
        {
            return Applied::Stale(StaleReason::OlderThanCache);
        }
        let is_sandbox = snapshot.is_some_and(|s| s.sandbox.id == event.id)
            || subject.is_some_and(|(_, kind)| kind == EntryKind::Sandbox);
        let meta = match (&old, snapshot.and_then(|s| s.pod.as_ref())) {
            (Some(old), _) => old.meta.clone(),
            (None, Some(meta)) => Arc::new(meta.clone()),
            (None, None) => return Applied::Unresolved,
        };

        // The new record: the old one moved forward by the event.
        let mut pod = match &old {
            Some(old) => Pod::clone(old),
            None => Pod::new(PodMeta::clone(&meta)),
        };
        pod.meta = meta.clone();
        by_id(&mut pod.sandboxes);
        by_id(&mut pod.containers);
        let forced = subject_state(event.kind);
        let with_subject_state = |c: &Container| {
            let mut c = c.clone();
            if c.id == event.id
                && let Some(state) = forced
            {
                c.state = state;
            }
            c
        };
        if let Some(s) = snapshot.filter(|s| !removed.contains(&s.sandbox.id)) {
            upsert(&mut pod.sandboxes, with_subject_state(&s.sandbox));
        }
        for c in event.containers.iter().filter(|c| !removed.contains(&c.id)) {
            upsert(&mut pod.containers, with_subject_state(c));
        }
        match forced {
            None => {
                pod.sandboxes.retain(|c| c.id != event.id);
                pod.containers.retain(|c| c.id != event.id);
            }
            Some(state) => {
                let entries = if is_sandbox {
                    &mut pod.sandboxes
                } else {
                    &mut pod.containers
                };
                match entries.binary_search_by(|c| c.id.cmp(&event.id)) {
                    Ok(i) => {
                        if rank(state) >= rank(entries[i].state) {
                            entries[i].state = state;
                        }
                    }
                    Err(i) => {
                        let name = subject.map(|(c, _)| c.name.clone()).unwrap_or_default();
                        entries.insert(i, Container::new(event.id.clone(), name, state));
                    }
                }
            }
        }

        let stream_time = Some(at);
        let gone = forced.is_none() && is_sandbox && pod.sandboxes.is_empty();
        if gone {
            // The pod's last sandbox is gone: so is the pod.
            let events = diff_pod(&uid, old.as_ref(), None);
            removed.bury(&events);
            for id in pod.containers.iter().map(|c| &c.id) {
                removed.insert(id);
            }
            self.conditions.retain_pods(|u| *u != uid);
            self.recount(old.as_deref(), None);
            let published = self
                .forget(records, &uid, old.as_ref(), &events, stream_time)
                .unwrap_or(0);
            if old.is_none() {
                // Never recorded: still drop whatever the cache held.
                self.cache.delete(&uid);
            }
            return outcome(published);
        }

        let new = Arc::new(pod);
        let events = diff_pod(&uid, old.as_ref(), Some(&new));
        removed.bury(&events);
        self.recount(old.as_deref(), Some(&new));

        // The cache entry: the old status moved forward by the event's.
        let mut status = cached
            .map(|e| PodStatus::clone(&e.status))
            .unwrap_or_else(|| PodStatus::new(meta.clone()));
        status.meta = meta;
        by_id(&mut status.sandboxes);
        by_id(&mut status.containers);
        if let Some(s) = snapshot {
            upsert(&mut status.sandboxes, with_subject_state(&s.sandbox));
            if !s.ips.is_empty() {
                status.ips = s.ips.clone();
            }
        }
        for c in &event.containers {
            upsert(&mut status.containers, with_subject_state(c));
        }
        if forced.is_none() {
            status.sandboxes.retain(|c| c.id != event.id);
            status.containers.retain(|c| c.id != event.id);
        } else if let Some(state) = forced {
            // A subject the event carried no status for.
            let list = if is_sandbox {
                &mut status.sandboxes
            } else {
                &mut status.containers
            };
            if let Err(i) = list.binary_search_by(|c| c.id.cmp(&event.id))
                && let Some(entry) = new.find(&event.id).map(|(c, _)| c.clone())
            {
                list.insert(i, Container { state, ..entry });
            }
        }
        status
            .sandboxes
            .sort_by_key(|s| std::cmp::Reverse(s.created_at));
        status.timestamp = at.or(status.timestamp);
        let published = self.accept(
            records,
            &new,
            old.as_ref(),
            &events,
            status,
            Instant::now(),
            stream_time,
        );
        outcome(published)
    }
}
