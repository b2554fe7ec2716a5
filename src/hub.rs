//! Fan-out of events to any number of subscribers.
//!
//! Where the kubelet has one channel and drops events silently when it is
//! full, every [`Subscription`] here has a bounded queue of its own. Publishing
//! never waits: a slow subscriber never holds up the relist or the other
//! subscribers.
//!
//! # Lagging
//! When a batch does not fit in a subscriber's queue, the whole batch is
//! dropped for that subscriber (a consumer never sees half of a pod's
//! transition) and counted. An empty queue takes any batch, even one larger
//! than the capacity, so a small capacity never starves a subscriber that
//! keeps up. The subscriber then receives, in order, the events
//! that were queued before the overflow, one [`Delivery::Resync`] carrying the
//! exact number it missed, and the events published after. On `Resync` a
//! consumer should re-read the cache, which is always current.
//!
//! # Filters
//! A [`Filter`] selects by pod UID, namespace, labels and event kind. It is
//! applied when publishing, so filtered-out events take no queue space and
//! never count as missed. `ContainerChanged` events are delivered only to
//! subscribers that ask for them.
//!
//! # Closing
//! Dropping a [`Subscription`] unsubscribes it. When the hub goes away (the
//! generator was dropped) every subscription ends after its queued events.
//!
//! # Sequence numbers and resuming
//! Every item published (an event, or the `Resync` of a gap in the
//! runtime's event stream) takes the next sequence number of the run, and
//! the run is named by an [`Epoch`]. `ContainerChanged`, a hint that only
//! subscribers who ask for it get, takes none: it follows the numbered item
//! before it, so that a subscription with the default filter sees every
//! number; a resume replays the hints published after its point. The last items are kept in a bounded
//! replay ring; a subscription that names where it stood
//! ([`SubscribeOptions::with_resume`]) gets every item after that point
//! that its filter selects, then the live ones, with no gap and no
//! duplicate at the seam. A point of another run, or one that has left the
//! ring, starts the subscription with a `Resync` that says so.

mod initial;
mod replay;
#[cfg(test)]
mod resume_tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::{Mutex, RwLock};

use crate::event::{EventType, PodLifecycleEvent};
use crate::metrics::{HubMetrics, ResumeOutcome, gauge};
use crate::model::{PodMeta, PodUid};

pub(crate) use initial::initial_state;
pub use replay::{
    DEFAULT_REPLAY_EVENTS, Epoch, MAX_EPOCH_LEN, MAX_REPLAY_EVENTS, ParseResumeTokenError,
    ResumeToken,
};
pub(crate) use replay::{Item, Lookup, Ring};

/// Default queue capacity of a subscription, in events.
pub const DEFAULT_CAPACITY: usize = 1000;

/// Errors of the hub.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A subscription needs room for at least one event.
    #[error("subscription capacity must be at least 1, got 0")]
    ZeroCapacity,
    /// The resume point lies past the last item this run published (a
    /// point of this epoch that it never gave out).
    #[error(
        "resume point seq {seq} is past the last item this run published, seq {last}: it was never given out"
    )]
    ResumeAhead {
        /// The point asked for.
        seq: u64,
        /// The last sequence number published.
        last: u64,
    },
    /// An initial state is built from the generator's cache, which the hub
    /// alone does not have.
    #[error("an initial state needs the generator's cache: subscribe with Pleg::watch")]
    InitialStateNeedsGenerator,
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// An event (its [`seq`](PodLifecycleEvent::seq) is set).
    Event(Arc<PodLifecycleEvent>),
    /// Events that matched the filter were lost: the subscriber fell
    /// behind, the runtime's event stream lost some that no relist can
    /// rebuild, or a resume point could not be honoured. Re-read the cache
    /// (or ask for an initial state) to catch up.
    #[non_exhaustive]
    Resync {
        /// How many events were lost since the previous `Resync` of this
        /// reason: exact for [`ResyncReason::Lagged`], a lower bound for
        /// [`ResyncReason::StreamGap`], the items of the whole node that left
        /// the ring for [`ResyncReason::ReplayExpired`] (an upper bound for a
        /// filtered subscription), and 0 (unknown) for
        /// [`ResyncReason::EpochChanged`].
        missed: u64,
        /// Why.
        reason: ResyncReason,
        /// The `Resync`'s own sequence number, for a stream gap (which is
        /// published like an event); `None` for the others, which concern
        /// one subscriber.
        seq: Option<u64>,
    },
    /// One container or sandbox as it stands now, part of the initial state
    /// a subscription asked for: `ContainerStarted` for a running one,
    /// `ContainerDied` (with its exit code) for an exited one,
    /// `ContainerChanged` for a created or unknown one (if the filter takes
    /// those). It carries no `seq`; [`Delivery::Synced`] follows the last
    /// one.
    Initial(Arc<PodLifecycleEvent>),
    /// The initial state is complete, or the replay has caught up: the
    /// token names the last item it includes, and live items follow.
    Synced(ResumeToken),
}

crate::naming::named_enum! {
    /// Why a subscriber gets a [`Delivery::Resync`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum ResyncReason {
        /// Its queue was full: the count is exact.
        Lagged = "lagged",
        /// The runtime's event stream lost events that a relist cannot
        /// rebuild (a start, or an exit code, of a container that has
        /// moved on since), most often to another consumer of the stream
        /// (containerd 1.7 gives each event to one stream only), or pleg's
        /// own stream buffer overflowed. The count is a lower bound.
        StreamGap = "stream_gap",
        /// The resume point was of another run: the daemon restarted, and
        /// what happened in between is unknown.
        EpochChanged = "epoch_changed",
        /// The items after the resume point have left the replay ring.
        ReplayExpired = "replay_expired",
    }
}

impl Delivery {
    /// A `Resync` for a lagging subscriber.
    pub fn lagged(missed: u64) -> Self {
        Delivery::resync(ResyncReason::Lagged, missed, None)
    }

    /// A `Resync` after a gap in the runtime's event stream.
    pub fn stream_gap(missed: u64, seq: Option<u64>) -> Self {
        Delivery::resync(ResyncReason::StreamGap, missed, seq)
    }

    /// A `Resync` of any reason.
    pub fn resync(reason: ResyncReason, missed: u64, seq: Option<u64>) -> Self {
        Delivery::Resync {
            missed,
            reason,
            seq,
        }
    }

    /// The event, for [`Delivery::Event`] and [`Delivery::Initial`].
    pub fn event(&self) -> Option<&Arc<PodLifecycleEvent>> {
        match self {
            Delivery::Event(e) | Delivery::Initial(e) => Some(e),
            Delivery::Resync { .. } | Delivery::Synced(_) => None,
        }
    }

    /// The sequence number the delivery carries: an event's, a stream
    /// gap's, or the point a `Synced` names.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Delivery::Event(e) => e.seq(),
            Delivery::Resync { seq, .. } => *seq,
            Delivery::Synced(token) => Some(token.seq),
            Delivery::Initial(_) => None,
        }
    }
}

/// Which events a subscriber wants. The default takes every event except
/// `ContainerChanged`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    /// Only these pods (`None`: every pod).
    pub pod_uids: Option<HashSet<PodUid>>,
    /// Only pods in this namespace.
    pub namespace: Option<String>,
    /// Only pods carrying all these labels with these values.
    pub labels: BTreeMap<String, String>,
    /// Only these kinds (`None`: every kind).
    pub kinds: Option<HashSet<EventType>>,
    /// Only pods this selector selects (a label selector, a namespace regex,
    /// a name regex), on top of the fields above.
    pub selector: crate::select::PodSelector,
    /// Also deliver `ContainerChanged`, which is unreliable and off by default.
    pub include_container_changed: bool,
}

impl Filter {
    /// Every event but `ContainerChanged` (the default).
    pub fn all() -> Self {
        Filter::default()
    }

    /// Only these pods.
    #[must_use]
    pub fn with_pod_uids(mut self, uids: impl IntoIterator<Item = PodUid>) -> Self {
        self.pod_uids = Some(uids.into_iter().collect());
        self
    }

    /// Only pods in this namespace.
    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only pods carrying this label with this value (all such labels must
    /// match).
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Only these kinds.
    #[must_use]
    pub fn with_kinds(mut self, kinds: impl IntoIterator<Item = EventType>) -> Self {
        self.kinds = Some(kinds.into_iter().collect());
        self
    }

    /// Only pods this selector selects (and the rest of the filter).
    #[must_use]
    pub fn with_selector(mut self, selector: crate::select::PodSelector) -> Self {
        self.selector = selector;
        self
    }

    /// Also deliver `ContainerChanged`.
    #[must_use]
    pub fn with_container_changed(mut self, include: bool) -> Self {
        self.include_container_changed = include;
        self
    }

    /// Whether events of this pod can pass the filter (its kinds aside).
    pub fn matches_pod(&self, pod: &crate::model::PodMeta) -> bool {
        if let Some(uids) = &self.pod_uids
            && !uids.contains(&pod.uid)
        {
            return false;
        }
        if let Some(ns) = &self.namespace
            && &pod.namespace != ns
        {
            return false;
        }
        self.labels
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
            && self.selector.matches(pod)
    }

    /// Whether the event passes the filter: its kind, and its pod.
    pub fn matches(&self, event: &PodLifecycleEvent) -> bool {
        if event.kind == EventType::ContainerChanged && !self.include_container_changed {
            return false;
        }
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&event.kind)
        {
            return false;
        }
        self.matches_pod(&event.pod)
    }
}

impl From<crate::select::PodSelector> for Filter {
    /// Every event of the pods the selector selects.
    fn from(selector: crate::select::PodSelector) -> Self {
        Filter::all().with_selector(selector)
    }
}

/// How to subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Queue capacity in events (default 1000).
    pub capacity: usize,
    /// Which events to receive.
    pub filter: Filter,
    /// Where to resume: every item after this point that the filter
    /// selects is replayed first, if the ring still holds it.
    pub resume: Option<ResumeToken>,
    /// Start with the current state of every selected pod, then
    /// [`Delivery::Synced`] (only through [`crate::Pleg::watch`], which has
    /// the cache).
    pub initial_state: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            capacity: DEFAULT_CAPACITY,
            filter: Filter::default(),
            resume: None,
            initial_state: false,
        }
    }
}

impl SubscribeOptions {
    /// The default capacity, with this filter.
    pub fn filtered(filter: Filter) -> Self {
        SubscribeOptions {
            filter,
            ..SubscribeOptions::default()
        }
    }

    /// Sets the queue capacity, in events.
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the filter.
    #[must_use]
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Resumes after this point ([`Subscription::resume_token`] of an
    /// earlier subscription, or what a watch printed).
    #[must_use]
    pub fn with_resume(mut self, token: Option<ResumeToken>) -> Self {
        self.resume = token;
        self
    }

    /// Asks for the initial state first.
    #[must_use]
    pub fn with_initial_state(mut self, initial: bool) -> Self {
        self.initial_state = initial;
        self
    }
}

/// What one place of a subscription's queue takes, in bytes.
#[cfg(test)]
pub(crate) const QUEUE_SLOT_BYTES: usize = std::mem::size_of::<Queued>();

/// A queued delivery, in 16 bytes: events, the common case, inline.
#[derive(Debug)]
enum Queued {
    Event(Arc<PodLifecycleEvent>),
    Other(Box<Delivery>),
}

impl Queued {
    fn of(delivery: Delivery) -> Self {
        match delivery {
            Delivery::Event(e) => Queued::Event(e),
            other => Queued::Other(Box::new(other)),
        }
    }

    fn into_delivery(self) -> Delivery {
        match self {
            Queued::Event(e) => Delivery::Event(e),
            Queued::Other(d) => *d,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Queued>,
    /// Dropped since the last `Resync` was queued or handed out.
    pending_missed: u64,
    /// Lost in stream gaps since the last gap `Resync` (a lower bound),
    /// when there was no room to queue it.
    pending_gap: u64,
    /// The sequence number of the last of those gaps.
    pending_gap_seq: u64,
    waker: Option<Waker>,
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    capacity: usize,
    filter: Filter,
    queue: Mutex<Queue>,
    missed_total: AtomicU64,
}

impl Slot {
    fn offer(&self, batch: &[Arc<PodLifecycleEvent>]) -> u64 {
        let matching = batch.iter().filter(|e| self.filter.matches(e)).count();
        if matching == 0 {
            return 0;
        }
        let waker = {
            let mut q = self.queue.lock();
            if q.closed {
                return 0;
            }
            // A pending Resync marker takes a slot of its own, so the queue
            // never holds more than `capacity` deliveries, except that an
            // empty queue always takes a batch: a pod with more events than
            // the capacity must not starve a subscriber that keeps up.
            let needed =
                matching + usize::from(q.pending_missed > 0) + usize::from(q.pending_gap > 0);
            if !q.items.is_empty() && q.items.len() + needed > self.capacity {
                q.pending_missed += matching as u64;
                self.missed_total
                    .fetch_add(matching as u64, Ordering::Relaxed);
                return matching as u64;
            }
            flush_resyncs(&mut q);
            for event in batch.iter().filter(|e| self.filter.matches(e)) {
                q.items.push_back(Queued::Event(event.clone()));
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        0
    }

    /// Notes events lost in a stream gap: its `Resync` is queued in its
    /// place when there is room, else handed out after what is queued
    /// already, before anything published later.
    fn gap(&self, missed: u64, seq: u64) {
        let waker = {
            let mut q = self.queue.lock();
            if q.closed {
                return;
            }
            let needed = 1 + usize::from(q.pending_missed > 0) + usize::from(q.pending_gap > 0);
            if q.items.is_empty() || q.items.len() + needed <= self.capacity {
                flush_resyncs(&mut q);
                q.items
                    .push_back(Queued::of(Delivery::stream_gap(missed, Some(seq))));
            } else {
                q.pending_gap = q.pending_gap.saturating_add(missed);
                q.pending_gap_seq = seq;
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn close(&self) {
        let waker = {
            let mut q = self.queue.lock();
            q.closed = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct HubInner {
    slots: RwLock<Vec<Arc<Slot>>>,
    next_id: AtomicU64,
    metrics: HubMetrics,
    /// This run's name.
    epoch: Epoch,
    /// The last items published. Publishing holds it from numbering the
    /// batch to the end of the fan-out, and a resuming subscription holds
    /// it from reading the ring to joining the fan-out: the seam.
    ring: Mutex<Ring>,
}

impl HubInner {
    fn new(replay_events: usize) -> Self {
        let metrics = HubMetrics::default();
        metrics.precreate();
        HubInner {
            slots: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(0),
            metrics,
            epoch: Epoch::new(),
            ring: Mutex::new(Ring::new(replay_events)),
        }
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        for slot in self.slots.get_mut().iter() {
            slot.close();
        }
    }
}

/// The fan-out point. Cloning gives another handle on the same hub.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::with_replay_events(DEFAULT_REPLAY_EVENTS)
    }
}

impl Hub {
    /// A hub with no subscribers and a replay ring of the default size.
    pub fn new() -> Self {
        Hub::default()
    }

    /// A hub whose replay ring keeps the last `replay_events` items (0:
    /// none; at most [`MAX_REPLAY_EVENTS`], which the generator's
    /// configuration checks).
    pub fn with_replay_events(replay_events: usize) -> Self {
        Hub {
            inner: Arc::new(HubInner::new(replay_events.min(MAX_REPLAY_EVENTS))),
        }
    }

    /// This run's epoch.
    pub fn epoch(&self) -> &Epoch {
        &self.inner.epoch
    }

    /// The last sequence number published (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.inner.ring.lock().last()
    }

    /// The point a subscription made now would resume from.
    pub fn resume_token(&self) -> ResumeToken {
        ResumeToken::new(self.inner.epoch.clone(), self.last_seq())
    }

    /// Items the replay ring holds now.
    pub fn replay_len(&self) -> usize {
        self.inner.ring.lock().len()
    }

    /// Subscribes with the default capacity and filter.
    pub fn subscribe(&self) -> Subscription {
        self.attach(DEFAULT_CAPACITY, Filter::default())
    }

    /// Subscribes to the events `filter` selects, with the default
    /// capacity.
    pub fn subscribe_filtered(&self, filter: Filter) -> Subscription {
        self.attach(DEFAULT_CAPACITY, filter)
    }

    /// Subscribes with a capacity, a filter, and where given a resume
    /// point.
    ///
    /// # Errors
    /// [`Error::ZeroCapacity`] for a capacity of 0, [`Error::ResumeAhead`]
    /// for a resume point past the run's last item, and
    /// [`Error::InitialStateNeedsGenerator`] for an initial state (ask
    /// [`crate::Pleg::watch`]).
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription, Error> {
        if options.initial_state {
            return Err(Error::InitialStateNeedsGenerator);
        }
        self.subscribe_from(options, None)
    }

    fn attach(&self, capacity: usize, filter: Filter) -> Subscription {
        let ring = self.inner.ring.lock();
        let start = ring.last();
        self.join(capacity, filter, Queue::default(), start)
    }

    /// Subscribes, resuming where `options` says, and with the initial
    /// state `initial` (built by the caller under the generator's lock,
    /// so that no event is published between building it and this call).
    pub(crate) fn subscribe_from(
        &self,
        options: SubscribeOptions,
        initial: Option<Vec<Arc<PodLifecycleEvent>>>,
    ) -> Result<Subscription, Error> {
        let SubscribeOptions {
            capacity,
            filter,
            resume,
            ..
        } = options;
        if capacity == 0 {
            return Err(Error::ZeroCapacity);
        }
        let ring = self.inner.ring.lock();
        let mut queue = Queue::default();
        let mut initial = initial;
        // What the subscription holds up to before it reads anything: where
        // it resumed when replaying (it gets what follows), else now.
        let mut start = ring.last();
        if let Some(token) = resume {
            let metrics = &self.inner.metrics;
            if token.epoch == self.inner.epoch {
                match ring.lookup(token.seq) {
                    Lookup::Ahead { last } => {
                        metrics.resumed(ResumeOutcome::Ahead);
                        return Err(Error::ResumeAhead {
                            seq: token.seq,
                            last,
                        });
                    }
                    Lookup::Expired { missed } => {
                        metrics.resumed(ResumeOutcome::Expired);
                        queue.items.push_back(Queued::of(Delivery::resync(
                            ResyncReason::ReplayExpired,
                            missed,
                            None,
                        )));
                    }
                    Lookup::From(index) => {
                        metrics.resumed(ResumeOutcome::Replayed);
                        start = token.seq;
                        let before = queue.items.len();
                        replay_into(&mut queue, ring.from(index), &filter);
                        metrics.replayed.inc_by((queue.items.len() - before) as u64);
                        // Caught up: the replay stands in for the initial
                        // state, and `Synced` still marks where live
                        // items begin.
                        if initial.is_some() {
                            initial = Some(Vec::new());
                        }
                    }
                }
            } else {
                metrics.resumed(ResumeOutcome::EpochChanged);
                queue.items.push_back(Queued::of(Delivery::resync(
                    ResyncReason::EpochChanged,
                    0,
                    None,
                )));
            }
        }
        if let Some(state) = initial {
            queue
                .items
                .extend(state.into_iter().map(|e| Queued::of(Delivery::Initial(e))));
            queue
                .items
                .push_back(Queued::of(Delivery::Synced(ResumeToken::new(
                    self.inner.epoch.clone(),
                    ring.last(),
                ))));
        }
        // Joined while the ring is still locked: no batch is published
        // between what the queue holds and the slot's joining the fan-out.
        let sub = self.join(capacity, filter, queue, start);
        drop(ring);
        Ok(sub)
    }

    /// Adds a slot holding `queue`. The caller holds the ring's lock.
    fn join(&self, capacity: usize, filter: Filter, queue: Queue, start: u64) -> Subscription {
        let slot = Arc::new(Slot {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            capacity,
            filter,
            queue: Mutex::new(queue),
            missed_total: AtomicU64::new(0),
        });
        self.inner.slots.write().push(slot.clone());
        self.inner.metrics.subscribers.inc();
        Subscription {
            slot,
            hub: Arc::downgrade(&self.inner),
            epoch: self.inner.epoch.clone(),
            last_seq: start,
        }
    }

    /// Publishes one pod's events as a unit: each subscriber gets all of the
    /// events that match its filter, or none of them (and a `Resync` later).
    /// Only the generator's core publishes.
    ///
    /// It runs under the core's lock, on purpose: the relist and the stream
    /// then publish in the order they applied, one total order that every
    /// subscriber sees, numbered here. What it does there is bounded and
    /// never waits: the numbering and the ring's push, then per
    /// subscriber, a filter check and either a push into its bounded queue
    /// or a count of what did not fit, each under that queue's own lock
    /// (which a subscriber only takes to pop), then a wake of its task. No
    /// subscriber code runs, nothing is awaited, and nothing grows past the
    /// queues' and the ring's bounds. `benches/publish.rs` gives its cost:
    /// well under a microsecond per subscriber and batch.
    pub(crate) fn publish(&self, batch: &[Arc<PodLifecycleEvent>]) {
        if batch.is_empty() {
            return;
        }
        self.inner.metrics.published.inc_by(batch.len() as u64);
        let mut ring = self.inner.ring.lock();
        let batch = stamp(&mut ring, batch);
        self.inner.metrics.replay_ring.set(gauge(ring.len()));
        let slots = self.inner.slots.read();
        let mut dropped = 0;
        for slot in slots.iter() {
            dropped += slot.offer(&batch);
        }
        drop(slots);
        drop(ring);
        if dropped > 0 {
            self.inner.metrics.discarded.inc_by(dropped);
            tracing::debug!(
                dropped,
                "subscriber queue full; events held back, Resync queued"
            );
        }
    }

    /// Tells the subscribers that may want events of `pod` (every
    /// subscriber when the pod is not known) that at least `missed` of them
    /// were lost in a gap of the runtime's event stream. The gap is
    /// numbered and kept in the ring like an event, so that a subscriber
    /// that resumes across it hears of it too.
    pub(crate) fn stream_gap(&self, pod: Option<&Arc<PodMeta>>, missed: u64) {
        if missed == 0 {
            return;
        }
        let mut ring = self.inner.ring.lock();
        let seq = ring.assign();
        ring.push(Item::Gap {
            seq,
            pod: pod.cloned(),
            missed,
        });
        self.inner.metrics.replay_ring.set(gauge(ring.len()));
        for slot in self.inner.slots.read().iter() {
            if pod.is_none_or(|pod| slot.filter.matches_pod(pod)) {
                slot.gap(missed, seq);
            }
        }
    }

    /// Publishes a batch as the generator's core does (benchmarks and tests
    /// of the hub alone).
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn publish_batch(&self, batch: &[Arc<PodLifecycleEvent>]) {
        self.publish(batch);
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.inner.slots.read().len()
    }

    /// Events dropped for lagging subscribers, summed over all subscribers.
    pub fn discarded(&self) -> u64 {
        self.inner.metrics.discarded.get()
    }

    /// Events published (before filtering).
    pub fn published(&self) -> u64 {
        self.inner.metrics.published.get()
    }

    /// The hub's metric families, for registration.
    pub(crate) fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }
}

/// Numbers a batch and keeps it in the ring. The core's events are fresh
/// and take their number in place; one that was published before (a test
/// or a benchmark publishing the same event twice) is copied with a number
/// of its own. A `ContainerChanged` takes none: it is kept as a hint that
/// follows the numbered item before it.
fn stamp<'a>(
    ring: &mut Ring,
    batch: &'a [Arc<PodLifecycleEvent>],
) -> Cow<'a, [Arc<PodLifecycleEvent>]> {
    let mut copied: Option<Vec<Arc<PodLifecycleEvent>>> = None;
    for (i, event) in batch.iter().enumerate() {
        if event.kind == EventType::ContainerChanged {
            ring.push(Item::Hint {
                after: ring.last(),
                event: event.clone(),
            });
            if let Some(copied) = copied.as_mut() {
                copied.push(event.clone());
            }
            continue;
        }
        let seq = ring.assign();
        let numbered = if event.seq.set(seq) {
            if let Some(copied) = copied.as_mut() {
                copied.push(event.clone());
            }
            event.clone()
        } else {
            let fresh = Arc::new(PodLifecycleEvent::clone(event).with_seq(seq));
            copied
                .get_or_insert_with(|| batch[..i].to_vec())
                .push(fresh.clone());
            fresh
        };
        ring.push(Item::Event(numbered));
    }
    copied.map_or(Cow::Borrowed(batch), Cow::Owned)
}

/// Queues the ring's items that `filter` selects.
fn replay_into<'a>(queue: &mut Queue, items: impl Iterator<Item = &'a Item>, filter: &Filter) {
    for item in items {
        match item {
            Item::Event(event) | Item::Hint { event, .. } => {
                if filter.matches(event) {
                    queue.items.push_back(Queued::Event(event.clone()));
                }
            }
            Item::Gap { seq, pod, missed } => {
                if pod.as_deref().is_none_or(|pod| filter.matches_pod(pod)) {
                    queue
                        .items
                        .push_back(Queued::of(Delivery::stream_gap(*missed, Some(*seq))));
                }
            }
        }
    }
}

/// A bounded stream of [`Delivery`] items. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    slot: Arc<Slot>,
    hub: Weak<HubInner>,
    epoch: Epoch,
    /// The last sequence number handed out (or where it started).
    last_seq: u64,
}

impl Subscription {
    /// Waits for the next delivery; `None` once the hub is gone and the queue
    /// is drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes the next delivery if one is ready.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let next = take_next(&mut self.slot.queue.lock());
        self.note(next)
    }

    /// Polls for the next delivery.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let next = {
            let mut q = self.slot.queue.lock();
            match take_next(&mut q) {
                Some(d) => Some(d),
                None if q.closed => return Poll::Ready(None),
                None => {
                    match &q.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => q.waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
            }
        };
        Poll::Ready(self.note(next))
    }

    fn note(&mut self, delivery: Option<Delivery>) -> Option<Delivery> {
        if let Some(seq) = delivery.as_ref().and_then(Delivery::seq) {
            self.last_seq = self.last_seq.max(seq);
        }
        delivery
    }

    /// Where this subscription stands: a later subscription that resumes
    /// from it ([`SubscribeOptions::with_resume`]) gets everything after
    /// what this one handed out, as long as the ring still holds it.
    pub fn resume_token(&self) -> ResumeToken {
        ResumeToken::new(self.epoch.clone(), self.last_seq)
    }

    /// The run this subscription belongs to.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Events this subscriber has missed so far, in total.
    pub fn missed_total(&self) -> u64 {
        self.slot.missed_total.load(Ordering::Relaxed)
    }

    /// Deliveries waiting in the queue.
    pub fn queued(&self) -> usize {
        self.slot.queue.lock().items.len()
    }
}

fn take_next(q: &mut Queue) -> Option<Delivery> {
    if let Some(d) = q.items.pop_front() {
        return Some(d.into_delivery());
    }
    if q.pending_missed > 0 {
        return Some(Delivery::lagged(std::mem::take(&mut q.pending_missed)));
    }
    if q.pending_gap > 0 {
        return Some(Delivery::stream_gap(
            std::mem::take(&mut q.pending_gap),
            Some(q.pending_gap_seq),
        ));
    }
    None
}

/// Queues the pending `Resync`s, lag first.
fn flush_resyncs(q: &mut Queue) {
    if q.pending_missed > 0 {
        let missed = std::mem::take(&mut q.pending_missed);
        q.items.push_back(Queued::of(Delivery::lagged(missed)));
    }
    if q.pending_gap > 0 {
        let missed = std::mem::take(&mut q.pending_gap);
        q.items.push_back(Queued::of(Delivery::stream_gap(
            missed,
            Some(q.pending_gap_seq),
        )));
    }
}

impl futures_core::Stream for Subscription {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.slots.write().retain(|s| s.id != self.slot.id);
            hub.metrics.subscribers.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventSource, PodLifecycleEvent};
    use crate::model::PodMeta;

    fn event(uid: &str, ns: &str, kind: EventType) -> Arc<PodLifecycleEvent> {
        let pod = Arc::new(PodMeta::new(uid, uid, ns).with_label("app", "web"));
        Arc::new(PodLifecycleEvent::new(
            pod,
            kind,
            EventSource::Relist,
            std::time::SystemTime::UNIX_EPOCH,
        ))
    }

    /// The core publishes under its lock; if publishing ever waited for a
    /// subscriber to read, this single thread, where nobody reads, would
    /// never finish. Every full queue costs the publisher a count instead,
    /// exact for each subscriber, and holds no more than its capacity.
    #[test]
    fn publishing_never_waits_for_a_subscriber_that_does_not_read() {
        const SUBSCRIBERS: usize = 1_024;
        const BATCHES: u64 = 10_000;
        let hub = Hub::new();
        let stalled: Vec<Subscription> = (0..SUBSCRIBERS)
            .map(|_| {
                hub.subscribe_with(SubscribeOptions::default().with_capacity(2))
                    .expect("capacity is valid")
            })
            .collect();
        let batch = [
            event("a", "ns", EventType::ContainerStarted),
            event("a", "ns", EventType::ContainerDied),
        ];
        for _ in 0..BATCHES {
            hub.publish(&batch);
        }
        for sub in &stalled {
            assert_eq!(
                sub.queued(),
                2,
                "the first batch, and nothing past the capacity"
            );
            assert_eq!(sub.missed_total(), (BATCHES - 1) * 2);
        }
        assert_eq!(hub.discarded(), SUBSCRIBERS as u64 * (BATCHES - 1) * 2);
    }

    #[test]
    fn a_batch_that_does_not_fit_is_dropped_whole_and_counted() {
        let hub = Hub::new();
        let mut sub = hub
            .subscribe_with(SubscribeOptions {
                capacity: 3,
                ..Default::default()
            })
            .expect("capacity is valid");
        let started = event("a", "ns", EventType::ContainerStarted);
        hub.publish(&[started.clone(), started.clone()]);
        hub.publish(&[started.clone(), started.clone()]);
        hub.publish(std::slice::from_ref(&started));
        let mut got = Vec::new();
        while let Some(d) = sub.try_recv() {
            got.push(d);
        }
        // The third batch would fit, but not together with the marker that
        // must precede it, so it is dropped and counted as well.
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], Delivery::lagged(3));
        assert_eq!(sub.missed_total(), 3);
        assert_eq!(hub.discarded(), 3);
        hub.publish(std::slice::from_ref(&started));
        assert!(matches!(sub.try_recv(), Some(Delivery::Event(_))));
    }

    #[test]
    fn filters_select_by_namespace_labels_uids_and_kind() {
        let hub = Hub::new();
        let mut by_ns = hub
            .subscribe_with(SubscribeOptions {
                filter: Filter {
                    namespace: Some("prod".into()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .expect("valid");
        let mut by_kind_and_uid = hub
            .subscribe_with(SubscribeOptions {
                filter: Filter {
                    kinds: Some([EventType::ContainerDied].into()),
                    pod_uids: Some([PodUid::new("b")].into()),
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                },
                ..Default::default()
            })
            .expect("valid");
        hub.publish(&[event("a", "prod", EventType::ContainerStarted)]);
        hub.publish(&[event("b", "dev", EventType::ContainerDied)]);
        hub.publish(&[event("b", "dev", EventType::ContainerChanged)]);
        assert_eq!(
            by_ns
                .try_recv()
                .and_then(|d| d.event().map(|e| e.pod.uid.clone())),
            Some(PodUid::new("a"))
        );
        assert!(by_ns.try_recv().is_none());
        assert_eq!(
            by_kind_and_uid
                .try_recv()
                .and_then(|d| d.event().map(|e| e.kind)),
            Some(EventType::ContainerDied)
        );
        assert!(by_kind_and_uid.try_recv().is_none());
    }

    #[test]
    fn an_empty_queue_takes_a_batch_larger_than_its_capacity() {
        let hub = Hub::new();
        let mut sub = hub
            .subscribe_with(SubscribeOptions {
                capacity: 1,
                ..Default::default()
            })
            .expect("capacity is valid");
        let died = event("a", "ns", EventType::ContainerDied);
        hub.publish(&[died.clone(), died.clone(), died.clone()]);
        hub.publish(std::slice::from_ref(&died));
        let got: Vec<_> = std::iter::from_fn(|| sub.try_recv()).collect();
        assert_eq!(got.len(), 4, "three events, then the marker for the fourth");
        assert_eq!(got[3], Delivery::lagged(1));
    }

    #[test]
    fn zero_capacity_is_refused() {
        let hub = Hub::new();
        let err = hub
            .subscribe_with(SubscribeOptions {
                capacity: 0,
                ..Default::default()
            })
            .expect_err("zero capacity");
        assert_eq!(err, Error::ZeroCapacity);
    }

    #[tokio::test]
    async fn dropping_the_hub_ends_the_stream_after_queued_events() {
        let hub = Hub::new();
        let mut sub = hub.subscribe();
        hub.publish(&[event("a", "ns", EventType::ContainerStarted)]);
        drop(hub);
        assert!(sub.recv().await.is_some());
        assert!(sub.recv().await.is_none());
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new();
        let sub = hub.subscribe();
        assert_eq!(hub.subscriber_count(), 1);
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
    }
}
