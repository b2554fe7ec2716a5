//! Applying the runtime's container events: the stream's half of the core.
//!
//! An event is a partial relist of one sandbox: its subject (the container
//! or sandbox it names) takes the state the event type says, and the sandbox
//! and container statuses it carries update the pod's record where they move
//! forward. The new record is diffed against the old one exactly as a relist
//! would, the cache entry is merged from the event's statuses, and the
//! events go out with source `stream` and the runtime's `created_at`.
//!
//! The work is four pure steps, each tested on its own table:
//! - [`resolve`]: which pod the event is about (its sandbox's metadata, or
//!   the records for a sandbox's own `DELETED`, which carries none);
//! - [`classify`]: whether the event is stale, and why, and whether it shows
//!   that the stream lost earlier events;
//! - [`advance`]: the pod's record moved forward by the event;
//! - [`merge`]: the pod's cached status moved forward by the event.
//!
//! # Stale events
//! The stream can deliver old news: containerd hands a new subscriber the
//! events it buffered while nobody listened, some minutes old, and a relist
//! may already have reported what an event describes. An event is dropped,
//! and counted, when (in this order):
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
use std::time::SystemTime;

use tokio::time::Instant;

use super::{Core, Origin, Tombstones};
use crate::diff::{Records, diff_pod};
use crate::model::{Container, ContainerState, EntryKind, Pod, PodMeta, PodStatus, PodUid};
use crate::runtime::{ContainerEvent, ContainerEventKind};
use crate::stream::StaleReason;

/// What became of one stream event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied to records and cache; this many lifecycle events were
    /// published (0 when a relist had already reported the transition).
    Published(usize),
    /// Applied like [`Published`](Self::Published), but the event shows that
    /// the stream lost earlier ones: STARTED for a container never seen
    /// created, STOPPED for one never seen started, DELETED for one never
    /// seen or never seen stopped. (On containerd 1.7 another consumer of
    /// the event stream takes some of the events.) A relist should look for
    /// what was lost; `lost` transitions that no relist can rebuild were
    /// told to the pod's subscribers as a `Resync`; `missed` events, at
    /// least, never reached this stream.
    PublishedAfterGap {
        published: usize,
        lost: u64,
        missed: u64,
    },
    /// Dropped as stale.
    Stale(StaleReason),
    /// Dropped: the event names no pod and its ID is in no record. For a
    /// DELETED, that is a container pleg never saw at all: a gap, told to
    /// every subscriber.
    Unresolved,
}

/// A wall-clock step larger than this (against the monotonic clock) makes
/// the core forget the wall-clock times it kept.
pub(crate) const CLOCK_STEP: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the wall clock stepped between two readings of both clocks: the
/// wall clock moved more than [`CLOCK_STEP`] further, or less far, than
/// the monotonic one.
pub(crate) fn clock_stepped(before: (SystemTime, Instant), now: (SystemTime, Instant)) -> bool {
    let mono = now.1.saturating_duration_since(before.1);
    match now.0.duration_since(before.0) {
        Ok(wall) => wall.abs_diff(mono) > CLOCK_STEP,
        // The wall clock went back.
        Err(back) => back.duration() + mono > CLOCK_STEP,
    }
}

/// The transitions a gap lost that no relist can rebuild, at least: the
/// start of a container first seen stopped, the start and removal of one
/// first seen deleted, the exit code of one seen running and then deleted.
/// A missed CREATED loses nothing: it publishes nothing.
pub(crate) fn lost_to_gap(kind: ContainerEventKind, subject: Option<ContainerState>) -> u64 {
    use ContainerEventKind as Kind;
    use ContainerState as State;
    match (kind, subject) {
        (Kind::Stopped, None | Some(State::Created))
        | (Kind::Deleted, None | Some(State::Running | State::Unknown)) => 1,
        _ => 0,
    }
}

/// The events a gap shows were lost, at least: those that come before
/// `kind` in a container's life and after what pleg knew of it
/// (`subject`: its state, `None` if never seen). One lost event may be
/// containerd's own doing after a connection; more is another consumer.
pub(crate) fn missed_by_gap(kind: ContainerEventKind, subject: Option<ContainerState>) -> u64 {
    use ContainerEventKind as Kind;
    use ContainerState as State;
    // Events of a life, in order, up to what pleg knew and up to this one.
    let known: u64 = match subject {
        None => 0,
        Some(State::Created) => 1,
        Some(State::Running | State::Unknown) => 2,
        Some(State::Exited) => 3,
    };
    let before: u64 = match kind {
        Kind::Created => 0,
        Kind::Started => 1,
        Kind::Stopped => 2,
        Kind::Deleted => 3,
    };
    before.saturating_sub(known)
}

/// What a gap shown by `kind` lost: transitions no relist can rebuild, and
/// events.
fn gap_losses(kind: ContainerEventKind, subject: Option<ContainerState>) -> (u64, u64) {
    (lost_to_gap(kind, subject), missed_by_gap(kind, subject))
}

/// The pod an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) uid: PodUid,
    /// Its record, when it has one.
    pub(crate) old: Option<Arc<Pod>>,
    /// Its identity: the record's, or the event's for a pod never recorded.
    pub(crate) meta: Arc<PodMeta>,
}

/// Finds the pod of an event: from its sandbox's metadata, or, when the
/// runtime sent none (containerd 1.7 for a sandbox's own `DELETED`), from
/// the records, by the event's ID or its sandbox's. `None`: nobody knows
/// the pod.
pub(crate) fn resolve(event: &ContainerEvent, records: &Records) -> Option<Resolved> {
    let snapshot = event.sandbox.as_ref();
    let given = snapshot.and_then(|s| s.pod.as_ref());
    let uid = match given {
        Some(meta) => meta.uid.clone(),
        None => records
            .owner_of(&event.id)
            .or_else(|| snapshot.and_then(|s| records.owner_of(&s.sandbox.id)))?
            .clone(),
    };
    let old = records.get(&uid).cloned();
    let meta = match (&old, given) {
        (Some(old), _) => old.meta.clone(),
        (None, Some(meta)) => Arc::new(meta.clone()),
        (None, None) => return None,
    };
    Some(Resolved { uid, old, meta })
}

/// What [`classify`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) kind: ContainerEventKind,
    /// The event's `created_at`.
    pub(crate) at: Option<SystemTime>,
    /// When the last successful listing started.
    pub(crate) listed_at: Option<SystemTime>,
    /// Whether the event's ID was reported removed.
    pub(crate) tombstoned: bool,
    /// `None` when the pod could not be resolved.
    pub(crate) pod: Option<PodFacts>,
}

/// What [`classify`] looks at of the event's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PodFacts {
    /// The subject's state in the pod's record (`None`: not recorded).
    pub(crate) subject: Option<ContainerState>,
    /// The runtime time of the last event applied for the subject.
    pub(crate) subject_at: Option<SystemTime>,
}

/// The verdict on an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Dropped as stale.
    Stale(StaleReason),
    /// Dropped: its pod cannot be found.
    Unresolved,
    /// To be applied; `gap` when it shows lost predecessors.
    Fresh { gap: bool },
}

/// Decides whether an event is stale (see the module docs for the rules and
/// their order) and whether it shows that the stream lost events: every
/// container's events come in order (created, started, stopped, deleted),
/// so a missing predecessor means lost events.
pub(crate) fn classify(facts: &Facts) -> Verdict {
    use ContainerEventKind as Kind;
    use ContainerState as State;
    if let (Some(at), Some(listed)) = (facts.at, facts.listed_at)
        && at < listed
    {
        return Verdict::Stale(StaleReason::BeforeListing);
    }
    if facts.tombstoned {
        return Verdict::Stale(StaleReason::AlreadyRemoved);
    }
    let Some(pod) = facts.pod else {
        return Verdict::Unresolved;
    };
    match (facts.kind, pod.subject) {
        (Kind::Created, Some(State::Running | State::Exited)) => {
            return Verdict::Stale(StaleReason::CreatedAfterStart);
        }
        (Kind::Started, Some(State::Exited)) => {
            return Verdict::Stale(StaleReason::StartedAfterFinish);
        }
        _ => {}
    }
    let gap = matches!(
        (facts.kind, pod.subject),
        (Kind::Started | Kind::Deleted, None)
            | (Kind::Stopped, None | Some(State::Created))
            | (Kind::Deleted, Some(State::Running | State::Unknown))
    );
    if let (Some(at), Some(seen)) = (facts.at, pod.subject_at)
        && at < seen
    {
        return Verdict::Stale(StaleReason::OlderThanCache);
    }
    Verdict::Fresh { gap }
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

/// A status the event carries, with the subject's state forced to what the
/// event type says.
fn with_subject_state(event: &ContainerEvent, c: &Container) -> Container {
    let mut c = c.clone();
    if c.id == event.id
        && let Some(state) = subject_state(event.kind)
    {
        c.state = state;
    }
    c
}

/// A pod's record after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Advanced {
    /// The new record.
    pub(crate) pod: Pod,
    /// Whether the event's subject is a sandbox.
    pub(crate) is_sandbox: bool,
    /// Whether the event removed the pod's last sandbox: then the pod is gone.
    pub(crate) gone: bool,
}

/// The pod's record moved forward by the event: the statuses it carries
/// update their entries where they move forward (removed IDs stay removed),
/// and its subject takes the event type's state, or leaves for `DELETED`.
pub(crate) fn advance(
    old: Option<&Pod>,
    meta: &Arc<PodMeta>,
    event: &ContainerEvent,
    tombstones: &Tombstones,
) -> Advanced {
    let snapshot = event.sandbox.as_ref();
    let subject = old.and_then(|p| p.find(&event.id));
    let is_sandbox = snapshot.is_some_and(|s| s.sandbox.id == event.id)
        || subject.is_some_and(|(_, kind)| kind == EntryKind::Sandbox);
    let mut pod = match old {
        Some(old) => old.clone(),
        None => Pod::new(PodMeta::clone(meta)),
    };
    pod.meta = meta.clone();
    by_id(&mut pod.sandboxes);
    by_id(&mut pod.containers);
    if let Some(s) = snapshot.filter(|s| !tombstones.contains(&s.sandbox.id)) {
        upsert(&mut pod.sandboxes, with_subject_state(event, &s.sandbox));
    }
    for c in event
        .containers
        .iter()
        .filter(|c| !tombstones.contains(&c.id))
    {
        upsert(&mut pod.containers, with_subject_state(event, c));
    }
    let forced = subject_state(event.kind);
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
    let gone = forced.is_none() && is_sandbox && pod.sandboxes.is_empty();
    Advanced {
        pod,
        is_sandbox,
        gone,
    }
}

/// The pod's cached status moved forward by the event: the statuses it
/// carries (and the sandbox's IPs) update their entries where they move
/// forward, its subject takes the event type's state (or leaves), and the
/// status is as of the event's time. `new` is the advanced record, which
/// describes a subject the event carried no status for.
pub(crate) fn merge(
    cached: Option<&PodStatus>,
    meta: &Arc<PodMeta>,
    event: &ContainerEvent,
    new: &Pod,
    is_sandbox: bool,
) -> PodStatus {
    let mut status = cached
        .cloned()
        .unwrap_or_else(|| PodStatus::new(meta.clone()));
    status.meta = meta.clone();
    by_id(&mut status.sandboxes);
    by_id(&mut status.containers);
    if let Some(s) = &event.sandbox {
        upsert(&mut status.sandboxes, with_subject_state(event, &s.sandbox));
        if !s.ips.is_empty() {
            status.ips.clone_from(&s.ips);
        }
    }
    for c in &event.containers {
        upsert(&mut status.containers, with_subject_state(event, c));
    }
    match subject_state(event.kind) {
        None => {
            status.sandboxes.retain(|c| c.id != event.id);
            status.containers.retain(|c| c.id != event.id);
        }
        Some(state) => {
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
    }
    status
        .sandboxes
        .sort_by_key(|s| std::cmp::Reverse(s.created_at));
    status.timestamp = event.created_at.or(status.timestamp);
    status
}

impl Core {
    /// Applies one event from the runtime's event stream: updates records and
    /// cache and publishes what changed, unless the event is stale.
    pub(crate) fn apply_event(&mut self, event: &ContainerEvent) -> Applied {
        self.watch_the_clock();
        let resolved = resolve(event, &self.records);
        let cached = resolved.as_ref().and_then(|r| self.cache.get(&r.uid));
        let subject = resolved.as_ref().and_then(|r| {
            r.old
                .as_deref()
                .and_then(|p| p.find(&event.id))
                .map(|(c, _)| c.state)
        });
        let facts = Facts {
            kind: event.kind,
            at: event.created_at,
            listed_at: self.listed_at,
            tombstoned: self.tombstones.contains(&event.id),
            pod: resolved.as_ref().map(|_| PodFacts {
                subject,
                subject_at: self.seen_at.get(&event.id).copied(),
            }),
        };
        let gap = match classify(&facts) {
            Verdict::Stale(reason) => return Applied::Stale(reason),
            Verdict::Unresolved => {
                if event.kind == ContainerEventKind::Deleted {
                    // A container pleg never saw, of a pod it never saw:
                    // whatever it did reached another consumer.
                    self.hub.stream_gap(None, 1);
                }
                return Applied::Unresolved;
            }
            Verdict::Fresh { gap } => gap,
        };
        let Some(Resolved { uid, old, meta }) = resolved else {
            return Applied::Unresolved;
        };
        let (lost, missed) = if gap {
            gap_losses(event.kind, subject)
        } else {
            (0, 0)
        };
        if let Some(at) = event.created_at {
            self.seen_at.insert(event.id.clone(), at);
        }
        let outcome = |core: &Self, published, lost| {
            if gap {
                core.hub.stream_gap(Some(&meta), lost);
                Applied::PublishedAfterGap {
                    published,
                    lost,
                    missed,
                }
            } else {
                Applied::Published(published)
            }
        };
        let origin = Origin::Stream {
            at: event.created_at,
        };
        let advanced = advance(old.as_deref(), &meta, event, &self.tombstones);

        if advanced.gone {
            let published = self.pod_gone(&uid, old.as_ref(), &advanced.pod, origin);
            return outcome(self, published, lost);
        }

        let new = Arc::new(advanced.pod);
        let events = diff_pod(&uid, old.as_ref(), Some(&new));
        self.tombstones.bury(&events);
        self.recount(old.as_deref(), Some(&new));
        let status = merge(
            cached.as_ref().map(|e| &*e.status),
            &meta,
            event,
            &new,
            advanced.is_sandbox,
        );
        if event.kind == ContainerEventKind::Deleted {
            self.seen_at.remove(&event.id);
        }
        // A container first heard of as stopped: its status says when it
        // started, so its start is rebuilt rather than lost.
        let events = super::listing::rebuild_missed_starts(
            &events,
            old.as_ref(),
            &status,
            self.first_listed_at,
        );
        let lost = if event.kind == ContainerEventKind::Stopped
            && events
                .iter()
                .any(|e| e.id == event.id && e.kind == crate::event::EventType::ContainerStarted)
        {
            0
        } else {
            lost
        };
        let published = self.accept(
            &new,
            old.as_ref(),
            &events,
            status,
            Instant::now(),
            origin,
            false,
        );
        outcome(self, published, lost)
    }

    /// The pod's last sandbox is gone, and so is the pod: its remaining
    /// IDs are buried and forgotten, and its last events published.
    fn pod_gone(
        &mut self,
        uid: &PodUid,
        old: Option<&Arc<Pod>>,
        advanced: &Pod,
        origin: Origin,
    ) -> usize {
        let events = diff_pod(uid, old, None);
        self.tombstones.bury(&events);
        for id in advanced.containers.iter().map(|c| &c.id) {
            self.tombstones.insert(id);
        }
        self.conditions.retain_pods(|u| u != uid);
        self.recount(old.map(|p| &**p), None);
        if let Some(old) = old {
            self.forget_times(old);
        }
        self.forget_times(advanced);
        self.forget(uid, old, &events, origin)
    }

    /// Notices a wall-clock step since the last look, and forgets the
    /// wall-clock times kept from before it (until the next listing).
    pub(crate) fn watch_the_clock(&mut self) {
        let now = (self.clock.now(), Instant::now());
        if let Some(before) = self.clock_anchor.replace(now)
            && clock_stepped(before, now)
        {
            self.metrics.clock_steps.inc();
            tracing::warn!(
                "the wall clock stepped; judging stream events by their order alone until the next relist"
            );
            self.listed_at = None;
            self.seen_at.clear();
        }
    }
}

#[cfg(test)]
mod tests;
