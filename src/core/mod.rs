//! The single writer: the one place that changes what pleg knows.
//!
//! The core owns the records (what the runtime listed last, per pod), the
//! tombstones (IDs reported removed), the cache's [`Writer`], the per-pod
//! last events (inside the cache entries), the evaluation of watch
//! conditions, and publishing to the hub. Two entry points feed it:
//! - [`Core::apply_listing`], from the relist driver: a whole listing,
//!   diffed against the records ([`crate::diff`]);
//! - [`Core::apply_event`], from the stream driver: one container event,
//!   treated as a partial relist of its sandbox ([`event`]).
//!
//! Both end in the same two steps, [`Core::accept`] for a pod that is still
//! there and [`Core::forget`] for one that is gone, so each transition is
//! published once, by whichever source saw it first.
//!
//! # Accepting a pod
//! 1. The status to store is decided here: a status without IPs keeps the
//!    previous IPs while none of its sandboxes is ready (a pod torn down
//!    after its network went away still reports the IPs it had).
//! 2. The pod's events are built from that status (exit codes, reasons,
//!    names), their last events merged into the entry, and the entry
//!    written whole.
//! 3. The pod's watch conditions are evaluated against the status just
//!    stored; one `ConditionMet` goes last.
//! 4. The batch is counted and published.
//!
//! # What it must never do
//! Read back what it wrote to fill in what it did not decide, or let anyone
//! else write: the drivers call in through its two entry points, and the
//! handle only reads.

mod event;
mod listing;
mod payload;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::cache::{CacheEntry, LastEvent, Writer};
use crate::clock::Clock;
use crate::condition::Conditions;
use crate::diff::{Diff, DiffEvent, Records};
use crate::event::{EventType, PodLifecycleEvent};
use crate::hub::Hub;
use crate::metrics::{ExitCodeLabel, FreeText, Metrics, TerminatedLabels, gauge};
use crate::model::{ContainerId, Pod, PodMeta, PodStatus, PodUid, RuntimeCounts};
use crate::runtime::{self, Runtime};

pub(crate) use event::Applied;
pub(crate) use listing::Asked;
pub use listing::{FailingPod, RelistSummary};
pub(crate) use payload::Origin;

/// Containers and sandboxes whose last event a pod keeps, before removed
/// ones are forgotten.
const LAST_EVENTS_PER_POD: usize = 64;

/// The writer's state. One exists per generator, behind the generator's
/// lock; the drivers take turns.
pub(crate) struct Core {
    /// The runtime, bounded by the request timeout ([`Instrumented`](crate::runtime::Instrumented)).
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    records: Records,
    /// The diff's buffers, reused from one listing to the next.
    diff: Diff,
    /// Pods whose status fetch failed: inspected again at every relist
    /// until a fetch succeeds.
    reinspect: HashSet<PodUid>,
    /// Pods asked for with `request_reinspect` that are still owed their
    /// `PodSync`.
    sync_owed: HashSet<PodUid>,
    /// Pods whose fetches fail, with since when.
    failing: HashMap<PodUid, FailingPod>,
    /// The fetch errors of the relist in progress.
    last_fetch_errors: HashMap<PodUid, (Arc<PodMeta>, String)>,
    /// What readers see of `failing`.
    failing_pods: Arc<Mutex<Vec<FailingPod>>>,
    /// Wall-clock start of the last successful listing: the records reflect
    /// the runtime as of then, so a stream event from before it is stale.
    listed_at: Option<SystemTime>,
    /// Wall-clock start of the first successful listing: containers that
    /// started since are watched from their start.
    first_listed_at: Option<SystemTime>,
    /// IDs recently reported removed, so that a late event cannot bring
    /// them back.
    tombstones: Tombstones,
    /// The runtime time of the last stream event applied per ID.
    seen_at: HashMap<ContainerId, SystemTime>,
    /// The wall and monotonic clocks at the last look, to notice steps.
    clock_anchor: Option<(SystemTime, Instant)>,
    /// Whether the last listing repeated pods or IDs (warned once per run).
    duplicates_seen: bool,
    conditions: Arc<Conditions>,
    cache: Writer,
    hub: Hub,
    metrics: Arc<Metrics>,
    /// Running pods and containers, for readers.
    counts: Arc<Mutex<RuntimeCounts>>,
}

/// What the core is made of; the generator's handle keeps the shared parts.
pub(crate) struct Parts {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) conditions: Arc<Conditions>,
    pub(crate) cache: Writer,
    pub(crate) hub: Hub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) counts: Arc<Mutex<RuntimeCounts>>,
    pub(crate) failing_pods: Arc<Mutex<Vec<FailingPod>>>,
}

impl Core {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            runtime,
            clock,
            conditions,
            cache,
            hub,
            metrics,
            counts,
            failing_pods,
        } = parts;
        Core {
            runtime,
            clock,
            records: Records::new(),
            diff: Diff::new(),
            reinspect: HashSet::new(),
            sync_owed: HashSet::new(),
            failing: HashMap::new(),
            last_fetch_errors: HashMap::new(),
            failing_pods,
            listed_at: None,
            first_listed_at: None,
            tombstones: Tombstones::default(),
            seen_at: HashMap::new(),
            clock_anchor: None,
            duplicates_seen: false,
            conditions,
            cache,
            hub,
            metrics,
            counts,
        }
    }

    /// The runtime, for the relist driver's listing call.
    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Declares the whole cache fresh as of `at` (after a relist, and on the
    /// stream driver's tick).
    pub(crate) fn cache_fresh_as_of(&mut self, at: Instant) {
        self.cache.update_time(at);
    }

    /// Pods in the records.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn recorded_pods(&self) -> usize {
        self.records.len()
    }

    /// Whether the records hold this pod.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn is_recorded(&self, uid: &PodUid) -> bool {
        self.records.contains(uid)
    }

    /// Makes the next relist inspect a pod, as after a failed fetch.
    #[cfg(test)]
    pub(crate) fn force_reinspect(&mut self, uid: PodUid) {
        self.reinspect.insert(uid);
    }

    /// Sets the running counts, from a listing or moved by an event.
    fn set_counts(&self, counts: RuntimeCounts) {
        *self.counts.lock() = counts;
        self.metrics.running_pods.set(gauge(counts.running_pods));
        for &state in crate::model::ContainerState::ALL {
            self.metrics
                .running_containers
                .get_or_create(&crate::metrics::ContainerStateLabels {
                    container_state: state,
                })
                .set(gauge(counts.containers(state)));
        }
    }

    /// Keeps the running counts current between relists (the next listing
    /// recounts from scratch).
    fn recount(&self, old: Option<&Pod>, new: Option<&Pod>) {
        let mut counts = *self.counts.lock();
        if let Some(old) = old {
            counts.remove(old);
        }
        if let Some(new) = new {
            counts.add(new);
        }
        self.set_counts(counts);
    }

    /// Accepts a pod's new record and status: decides the status to store,
    /// writes the cache entry with the pod's last events, evaluates its
    /// watch conditions, and publishes its events, `PodSync` (when `sync`)
    /// and `ConditionMet` last. Returns the number of events published.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        pod: &Arc<Pod>,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        mut status: PodStatus,
        written_at: Instant,
        origin: Origin,
        sync: bool,
    ) -> usize {
        let uid = pod.uid();
        let previous = self.cache.get(uid);
        if let Some(previous) = &previous {
            retain_ips(&mut status, &previous.status);
        }
        let status = Arc::new(status);
        let observed_at = self.clock.now();
        let mut batch: Vec<Arc<PodLifecycleEvent>> = events
            .iter()
            .map(|e| {
                Arc::new(payload::build(
                    &pod.meta,
                    e,
                    Some(&status),
                    Some(pod),
                    old,
                    origin,
                    observed_at,
                ))
            })
            .collect();
        let last_events = merge_last_events(previous.as_ref().map(|e| &e.last_events[..]), &batch);
        self.cache.set(
            uid,
            CacheEntry {
                status: status.clone(),
                error: None,
                modified: written_at,
                last_events,
            },
        );
        if sync {
            batch.push(Arc::new(origin.event(
                &pod.meta,
                EventType::PodSync,
                observed_at,
            )));
        }
        if self.conditions.evaluate(uid, &status) {
            batch.push(Arc::new(origin.event(
                &pod.meta,
                EventType::ConditionMet,
                observed_at,
            )));
        }
        self.records.apply(uid, Some(pod));
        self.publish(&batch)
    }

    /// Records that fetching a pod's status failed: the entry keeps the last
    /// status fetched successfully (or an empty one if none ever was) and
    /// its last events, and carries the error.
    fn fetch_failed(&mut self, meta: &Arc<PodMeta>, error: runtime::Error, at: Instant) {
        let previous = self.cache.get(&meta.uid);
        let entry = match previous {
            Some(previous) => CacheEntry {
                error: Some(Arc::new(error)),
                modified: at,
                ..previous
            },
            None => CacheEntry {
                status: Arc::new(PodStatus::new(meta.clone())),
                error: Some(Arc::new(error)),
                modified: at,
                last_events: Arc::from([]),
            },
        };
        self.cache.set(&meta.uid, entry);
    }

    /// Handles a pod that is gone from the runtime: drops its cache entry
    /// (with its last events) and record, and publishes its last events.
    fn forget(
        &mut self,
        uid: &PodUid,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        origin: Origin,
    ) -> usize {
        let last_status = self.cache.get(uid).map(|e| e.status);
        self.cache.delete(uid);
        self.records.apply(uid, None);
        self.sync_owed.remove(uid);
        let Some(old) = old else {
            return 0;
        };
        let observed_at = self.clock.now();
        let batch: Vec<_> = events
            .iter()
            .map(|e| {
                Arc::new(payload::build(
                    &old.meta,
                    e,
                    last_status.as_ref(),
                    None,
                    Some(old),
                    origin,
                    observed_at,
                ))
            })
            .collect();
        self.publish(&batch)
    }

    /// Forgets the stream times of a pod's sandboxes and containers.
    fn forget_times(&mut self, pod: &Pod) {
        for c in pod.sandboxes.iter().chain(&pod.containers) {
            self.seen_at.remove(&c.id);
        }
    }

    /// Counts a pod's batch and hands it to the hub.
    fn publish(&self, batch: &[Arc<PodLifecycleEvent>]) -> usize {
        for event in batch {
            self.metrics.event(event.kind, event.source);
            if event.kind == EventType::ContainerDied
                && let Some(container) = &event.container
            {
                self.metrics
                    .terminated
                    .get_or_create(&TerminatedLabels {
                        container_type: container.kind,
                        exit_code: ExitCodeLabel(event.exit_code),
                        reason: FreeText(event.reason.clone().unwrap_or_default()),
                    })
                    .inc();
            }
        }
        self.hub.publish(batch);
        batch.len()
    }
}

/// A status without IPs keeps the previous IPs while none of its sandboxes
/// is ready.
fn retain_ips(status: &mut PodStatus, previous: &PodStatus) {
    if status.ips.is_empty() && !status.has_ready_sandbox() {
        status.ips.clone_from(&previous.ips);
    }
}

/// The last events of a pod after `batch`: one per container or sandbox, in
/// ID order, at most [`LAST_EVENTS_PER_POD`] (a pod that restarts a
/// container for days must not grow without bound: the oldest removed ones
/// are forgotten first).
fn merge_last_events(
    previous: Option<&[LastEvent]>,
    batch: &[Arc<PodLifecycleEvent>],
) -> Arc<[LastEvent]> {
    let mut last: Vec<LastEvent> = previous.map(<[LastEvent]>::to_vec).unwrap_or_default();
    for event in batch {
        let Some(c) = &event.container else {
            continue;
        };
        let entry = LastEvent {
            id: c.id.clone(),
            kind: event.kind,
            at: event.observed_at,
            source: event.source,
        };
        match last.binary_search_by(|e| e.id.cmp(&c.id)) {
            Ok(i) => last[i] = entry,
            Err(mut i) => {
                if last.len() >= LAST_EVENTS_PER_POD
                    && let Some(oldest) = last
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.kind == EventType::ContainerRemoved)
                        .min_by_key(|(_, e)| e.at)
                        .map(|(i, _)| i)
                {
                    last.remove(oldest);
                    if oldest < i {
                        i -= 1;
                    }
                }
                last.insert(i, entry);
            }
        }
    }
    Arc::from(last)
}

/// A bounded memory of removed container and sandbox IDs.
#[derive(Default)]
struct Tombstones {
    order: VecDeque<ContainerId>,
    set: HashSet<ContainerId>,
}

impl Tombstones {
    /// Enough for every container of a busy node over many minutes.
    const CAPACITY: usize = 16_384;

    fn insert(&mut self, id: &ContainerId) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id.clone());
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &ContainerId) -> bool {
        self.set.contains(id)
    }

    /// Forgets the IDs that `events` show alive (any event but a removal).
    fn exhume(&mut self, events: &[DiffEvent]) {
        if self.set.is_empty() {
            return;
        }
        let mut any = false;
        for e in events {
            if e.kind != EventType::ContainerRemoved && self.set.remove(&e.id) {
                any = true;
            }
        }
        if any {
            let set = &self.set;
            self.order.retain(|id| set.contains(id));
        }
    }

    fn bury(&mut self, events: &[DiffEvent]) {
        for e in events {
            if e.kind == EventType::ContainerRemoved {
                self.insert(&e.id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
