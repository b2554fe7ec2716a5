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

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::{Mutex, RwLock};

use crate::event::{EventType, PodLifecycleEvent};
use crate::metrics::HubMetrics;
use crate::model::PodUid;

/// Default queue capacity of a subscription, in events.
pub const DEFAULT_CAPACITY: usize = 1000;

/// Errors of the hub.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A subscription needs room for at least one event.
    #[error("subscription capacity must be at least 1, got 0")]
    ZeroCapacity,
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// An event.
    Event(Arc<PodLifecycleEvent>),
    /// Events that matched the filter were lost: the subscriber fell
    /// behind, or the runtime's event stream lost some that no relist can
    /// rebuild. Re-read the cache to catch up.
    #[non_exhaustive]
    Resync {
        /// How many events were lost since the previous `Resync` of this
        /// reason: exact for [`ResyncReason::Lagged`], a lower bound for
        /// [`ResyncReason::StreamGap`].
        missed: u64,
        /// Why.
        reason: ResyncReason,
    },
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
    }
}

impl Delivery {
    /// A `Resync` for a lagging subscriber.
    pub fn lagged(missed: u64) -> Self {
        Delivery::Resync {
            missed,
            reason: ResyncReason::Lagged,
        }
    }

    /// A `Resync` after a gap in the runtime's event stream.
    pub fn stream_gap(missed: u64) -> Self {
        Delivery::Resync {
            missed,
            reason: ResyncReason::StreamGap,
        }
    }
}

impl Delivery {
    /// The event, unless this is a `Resync` marker.
    pub fn event(&self) -> Option<&Arc<PodLifecycleEvent>> {
        match self {
            Delivery::Event(e) => Some(e),
            Delivery::Resync { .. } => None,
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
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            capacity: DEFAULT_CAPACITY,
            filter: Filter::default(),
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
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    /// Dropped since the last `Resync` was queued or handed out.
    pending_missed: u64,
    /// Lost in stream gaps since the last gap `Resync` (a lower bound).
    pending_gap: u64,
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
                q.items.push_back(Delivery::Event(event.clone()));
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        0
    }

    /// Notes events lost in a stream gap; the `Resync` is handed out after
    /// what is queued already, before anything published later.
    fn gap(&self, missed: u64) {
        let waker = {
            let mut q = self.queue.lock();
            if q.closed {
                return;
            }
            q.pending_gap = q.pending_gap.saturating_add(missed);
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

#[derive(Debug, Default)]
struct HubInner {
    slots: RwLock<Vec<Arc<Slot>>>,
    next_id: AtomicU64,
    metrics: HubMetrics,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        for slot in self.slots.get_mut().iter() {
            slot.close();
        }
    }
}

/// The fan-out point. Cloning gives another handle on the same hub.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        Hub::default()
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

    /// Subscribes with a capacity and a filter.
    ///
    /// # Errors
    /// [`Error::ZeroCapacity`] for a capacity of 0.
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription, Error> {
        if options.capacity == 0 {
            return Err(Error::ZeroCapacity);
        }
        Ok(self.attach(options.capacity, options.filter))
    }

    fn attach(&self, capacity: usize, filter: Filter) -> Subscription {
        let slot = Arc::new(Slot {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            capacity,
            filter,
            queue: Mutex::new(Queue::default()),
            missed_total: AtomicU64::new(0),
        });
        self.inner.slots.write().push(slot.clone());
        self.inner.metrics.subscribers.inc();
        Subscription {
            slot,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// Publishes one pod's events as a unit: each subscriber gets all of the
    /// events that match its filter, or none of them (and a `Resync` later).
    /// Only the generator's core publishes.
    ///
    /// It runs under the core's lock, on purpose: the relist and the stream
    /// then publish in the order they applied, one total order that every
    /// subscriber sees. What it does there is bounded and never waits: per
    /// subscriber, a filter check and either a push into its bounded queue
    /// or a count of what did not fit, each under that queue's own lock
    /// (which a subscriber only takes to pop), then a wake of its task. No
    /// subscriber code runs, nothing is awaited, and nothing grows past the
    /// queues' bounds. `benches/publish.rs` gives its cost: well under a
    /// microsecond per subscriber and batch.
    pub(crate) fn publish(&self, batch: &[Arc<PodLifecycleEvent>]) {
        if batch.is_empty() {
            return;
        }
        self.inner.metrics.published.inc_by(batch.len() as u64);
        let slots = self.inner.slots.read();
        let mut dropped = 0;
        for slot in slots.iter() {
            dropped += slot.offer(batch);
        }
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
    /// were lost in a gap of the runtime's event stream.
    pub(crate) fn stream_gap(&self, pod: Option<&crate::model::PodMeta>, missed: u64) {
        if missed == 0 {
            return;
        }
        for slot in self.inner.slots.read().iter() {
            if pod.is_none_or(|pod| slot.filter.matches_pod(pod)) {
                slot.gap(missed);
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

/// A bounded stream of [`Delivery`] items. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    slot: Arc<Slot>,
    hub: Weak<HubInner>,
}

impl Subscription {
    /// Waits for the next delivery; `None` once the hub is gone and the queue
    /// is drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes the next delivery if one is ready.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let mut q = self.slot.queue.lock();
        take_next(&mut q)
    }

    /// Polls for the next delivery.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let mut q = self.slot.queue.lock();
        if let Some(d) = take_next(&mut q) {
            return Poll::Ready(Some(d));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
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
        return Some(d);
    }
    if q.pending_missed > 0 {
        return Some(Delivery::lagged(std::mem::take(&mut q.pending_missed)));
    }
    if q.pending_gap > 0 {
        return Some(Delivery::stream_gap(std::mem::take(&mut q.pending_gap)));
    }
    None
}

/// Queues the pending `Resync`s, lag first.
fn flush_resyncs(q: &mut Queue) {
    if q.pending_missed > 0 {
        let missed = std::mem::take(&mut q.pending_missed);
        q.items.push_back(Delivery::lagged(missed));
    }
    if q.pending_gap > 0 {
        let missed = std::mem::take(&mut q.pending_gap);
        q.items.push_back(Delivery::stream_gap(missed));
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
