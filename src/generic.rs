//! The relisting generator: list the runtime, diff against the records,
//! refresh the cache, evaluate watch conditions, publish events.
//!
//! # One relist
//! 1. List every pod (one runtime call). If that fails, nothing else happens:
//!    no events, no cache change, and health keeps its last success time.
//! 2. Diff the listing against the records ([`crate::diff`]).
//! 3. Purge the watch conditions of pods that are no longer listed.
//! 4. Inspect each pod that changed, has watch conditions, failed to inspect
//!    last time, or was asked for with [`GenericPleg::request_relist`]: fetch
//!    its status, write the cache, evaluate its conditions, accept its new
//!    record, and publish its events together, `ConditionMet` last.
//!    A pod whose status fetch fails keeps the error in the cache, publishes
//!    nothing and keeps its old record, so the same transition is found again
//!    and the pod is reinspected on every relist until a fetch succeeds.
//! 5. Declare the cache fresh as of the relist's start.
//!
//! Relists are serialised: the periodic loop, [`GenericPleg::relist`] and
//! per-pod requests never run two at once.
//!
//! # Limits of relisting
//! A container created and removed between two relists is never seen. The
//! evented generator closes that gap.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheReader, PodCache};
use crate::condition::{Conditions, WatchCondition};
use crate::diff::{Diff, DiffEvent, Records, diff_into};
use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::health::{self, InvalidRelistDuration, RelistDuration, Unhealthy};
use crate::hub::{self, Hub, SubscribeOptions, Subscription};
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::model::{
    ContainerId, ContainerState, IdSet, Pod, PodMeta, PodStatus, PodUid, RuntimeCounts,
};
use crate::runtime::{self, Runtime, bounded};

/// Errors of the generator's control API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `start` was called outside a tokio runtime.
    #[error("pleg start: no tokio runtime; call start() from within one")]
    NoTokioRuntime,
    /// The relist period or threshold cannot work.
    #[error("pleg config: {0}")]
    RelistDuration(#[from] InvalidRelistDuration),
    /// A zero runtime request timeout would fail every call.
    #[error("pleg config: runtime request timeout must be greater than zero")]
    ZeroRequestTimeout,
}

/// How a generic generator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenericConfig {
    /// Relist period and health threshold.
    pub relist: RelistDuration,
    /// Deadline of each runtime call (the kubelet's runtime-request-timeout).
    pub runtime_request_timeout: Duration,
}

impl Default for GenericConfig {
    fn default() -> Self {
        GenericConfig {
            relist: RelistDuration::GENERIC,
            runtime_request_timeout: Duration::from_secs(120),
        }
    }
}

/// What one relist did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelistSummary {
    /// Pods listed.
    pub pods: usize,
    /// Pods inspected (status fetched or removed from the cache).
    pub inspected: usize,
    /// Pods whose status fetch failed.
    pub failed: usize,
    /// Events published (before subscriber filters).
    pub events: usize,
}

/// Counters of a generator.
#[derive(Debug, Default)]
pub struct Stats {
    relists: AtomicU64,
    relist_failures: AtomicU64,
    status_failures: AtomicU64,
    events: [AtomicU64; 6],
    last_relist_nanos: AtomicU64,
    duplicates_dropped: AtomicU64,
    duplicates_seen: AtomicBool,
    /// Published events by kind and source (relist, stream).
    events_by_source: [[AtomicU64; 2]; 6],
    relist_duration: Histogram,
    relist_interval: Histogram,
    /// Start of the previous relist, for the interval histogram.
    previous_start: Mutex<Option<Instant>>,
    /// Wall-clock start of the last relist whose listing succeeded.
    last_seen: Mutex<Option<SystemTime>>,
    /// Why the last relist failed, while it is the latest.
    last_error: Mutex<Option<String>>,
}

/// A copy of the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Relists whose listing succeeded.
    pub relists: u64,
    /// Relists whose listing failed.
    pub relist_failures: u64,
    /// Pod status fetches that failed.
    pub status_failures: u64,
    /// Events published, by kind (indexed like [`EventType::ALL`]).
    pub events: [u64; 6],
    /// Duration of the last successful relist.
    pub last_relist_duration: Duration,
    /// Repeated pod UIDs and container IDs folded away from listings.
    pub duplicates_dropped: u64,
    /// Published events by kind (indexed like [`EventType::ALL`]) and source
    /// (0: relist, 1: stream).
    pub events_by_source: [[u64; 2]; 6],
    /// Durations of relists whose listing succeeded.
    pub relist_duration: HistogramSnapshot,
    /// Time between the starts of consecutive relists.
    pub relist_interval: HistogramSnapshot,
    /// Wall-clock start of the last relist whose listing succeeded.
    pub last_seen: Option<SystemTime>,
    /// Why the last relist failed, if it did (cleared by a success).
    pub last_error: Option<String>,
}

impl StatsSnapshot {
    /// Events published of one kind.
    pub fn events_of(&self, kind: EventType) -> u64 {
        self.events[kind.index()]
    }
}

struct RelistState {
    records: Records,
    reinspect: HashSet<PodUid>,
    diff: Diff,
    /// Wall-clock start of the last successful listing: the records reflect
    /// the runtime as of then, so a stream event from before it is stale.
    listed_at: Option<SystemTime>,
    /// IDs recently reported removed, so that a late event cannot bring
    /// them back.
    removed: Tombstones,
}

/// A bounded memory of removed container and sandbox IDs.
#[derive(Default)]
struct Tombstones {
    order: std::collections::VecDeque<ContainerId>,
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

    fn bury(&mut self, events: &[DiffEvent]) {
        for e in events {
            if e.kind == EventType::ContainerRemoved {
                self.insert(&e.id);
            }
        }
    }
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What the relist loop needs while it waits between relists. Kept apart
/// from [`Inner`] so that the loop holds the generator only while relisting:
/// dropping the last [`GenericPleg`] handle then stops the loop.
struct Control {
    relist_duration: Mutex<RelistDuration>,
    /// Pods asked for with `request_relist`, each with the number of its
    /// latest request, so that a request made while a relist runs is not
    /// cleared by that relist.
    requested: Mutex<HashMap<PodUid, u64>>,
    requests: AtomicU64,
    wake: tokio::sync::Notify,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    control: Arc<Control>,
    request_timeout: Duration,
    cache: PodCache,
    hub: Hub,
    conditions: Conditions,
    state: tokio::sync::Mutex<RelistState>,
    last_success: Mutex<Option<Instant>>,
    counts: Mutex<RuntimeCounts>,
    running: Mutex<Option<Running>>,
    stats: Stats,
    /// The last event of each container and sandbox, by pod.
    last_events: dashmap::DashMap<PodUid, Vec<LastEvent>>,
}

/// Containers and sandboxes whose last event a pod keeps, before removed
/// ones are forgotten.
const LAST_EVENTS_PER_POD: usize = 64;

/// The last event published about a container or sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastEvent {
    /// The container or sandbox.
    pub id: ContainerId,
    /// What happened.
    pub kind: EventType,
    /// When pleg published it.
    pub at: SystemTime,
    /// Where it was seen.
    pub source: EventSource,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.cancel.cancel();
        }
    }
}

/// The relisting pod lifecycle event generator. Cloning gives another handle
/// on the same generator.
///
/// ```
/// use pleg::{GenericPleg, GenericConfig, runtime::fake::FakeRuntime};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let runtime = FakeRuntime::new();
/// let pleg = GenericPleg::new(runtime.clone(), GenericConfig::default()).expect("valid config");
/// let summary = pleg.relist().await.expect("the fake lists fine");
/// assert_eq!(summary.pods, 0);
/// assert!(pleg.healthy().is_ok());
/// # }
/// ```
#[derive(Clone)]
pub struct GenericPleg {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GenericPleg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericPleg")
            .field(
                "relist_duration",
                &*self.inner.control.relist_duration.lock(),
            )
            .field("request_timeout", &self.inner.request_timeout)
            .field("subscribers", &self.inner.hub.subscriber_count())
            .finish_non_exhaustive()
    }
}

impl GenericPleg {
    /// A stopped generator over `runtime`. Refuses a configuration that
    /// cannot work (zero period or timeout, threshold not above the period).
    pub fn new(runtime: Arc<dyn Runtime>, config: GenericConfig) -> Result<Self, Error> {
        config.relist.validate()?;
        if config.runtime_request_timeout.is_zero() {
            return Err(Error::ZeroRequestTimeout);
        }
        Ok(GenericPleg {
            inner: Arc::new(Inner {
                runtime,
                control: Arc::new(Control {
                    relist_duration: Mutex::new(config.relist),
                    requested: Mutex::new(HashMap::new()),
                    requests: AtomicU64::new(0),
                    wake: tokio::sync::Notify::new(),
                }),
                request_timeout: config.runtime_request_timeout,
                cache: PodCache::new(),
                hub: Hub::new(),
                conditions: Conditions::new(),
                state: tokio::sync::Mutex::new(RelistState {
                    records: Records::new(),
                    reinspect: HashSet::new(),
                    diff: Diff::new(),
                    listed_at: None,
                    removed: Tombstones::default(),
                }),
                last_success: Mutex::new(None),
                counts: Mutex::new(RuntimeCounts::default()),
                running: Mutex::new(None),
                stats: Stats::default(),
                last_events: dashmap::DashMap::new(),
            }),
        })
    }

    /// Starts relisting periodically on the current tokio runtime. Starting a
    /// running generator does nothing. The loop ends with [`stop`](Self::stop)
    /// or when the last handle on the generator is dropped.
    pub fn start(&self) -> Result<(), Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoTokioRuntime)?;
        warn_if_threshold_is_short(&self.relist_duration());
        let mut running = self.inner.running.lock();
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Ok(());
        }
        let cancel = CancellationToken::new();
        let task = handle.spawn(relist_loop(
            Arc::downgrade(&self.inner),
            self.inner.control.clone(),
            cancel.clone(),
        ));
        *running = Some(Running { cancel, task });
        Ok(())
    }

    /// Stops the periodic relisting and waits for it to end. A relist in
    /// progress is abandoned at its next runtime call; what it had already
    /// published stays published. Subscriptions stay open.
    pub async fn stop(&self) {
        let running = self.inner.running.lock().take();
        if let Some(Running { cancel, task }) = running {
            cancel.cancel();
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("relist loop panicked: {e}");
            }
        }
    }

    /// Whether the periodic relisting runs.
    pub fn is_running(&self) -> bool {
        self.inner
            .running
            .lock()
            .as_ref()
            .is_some_and(|r| !r.task.is_finished())
    }

    /// Changes the relist period and health threshold. A running loop picks
    /// the new period up at once. A period or threshold that cannot work is
    /// refused and the old values stay.
    pub fn update(&self, relist: RelistDuration) -> Result<(), Error> {
        relist.validate()?;
        if self.is_running() {
            warn_if_threshold_is_short(&relist);
        }
        *self.inner.control.relist_duration.lock() = relist;
        self.inner.control.wake.notify_one();
        Ok(())
    }

    /// The current relist period and threshold.
    pub fn relist_duration(&self) -> RelistDuration {
        *self.inner.control.relist_duration.lock()
    }

    /// Relists now and waits for it to finish.
    pub async fn relist(&self) -> runtime::Result<RelistSummary> {
        self.inner.relist().await
    }

    /// Asks for the pod to be inspected (status fetched, cache refreshed,
    /// conditions evaluated) at a relist that starts now, without waiting for
    /// the period. Returns at once; a stopped generator inspects the pod at
    /// its next relist.
    pub fn request_relist(&self, uid: &PodUid) {
        let control = &self.inner.control;
        let number = control.requests.fetch_add(1, Ordering::Relaxed);
        control.requested.lock().insert(uid.clone(), number);
        control.wake.notify_one();
    }

    /// `Ok` while the last relist whose listing succeeded started within the
    /// threshold; otherwise the reason, worded like the kubelet's.
    pub fn healthy(&self) -> Result<(), Unhealthy> {
        health::check(
            *self.inner.last_success.lock(),
            Instant::now(),
            self.inner.control.relist_duration.lock().relist_threshold,
        )
    }

    /// Start time of the last relist whose listing succeeded.
    pub fn last_relist(&self) -> Option<Instant> {
        *self.inner.last_success.lock()
    }

    /// Sets a keyed watch condition on a pod (see [`crate::condition`]).
    pub fn set_pod_watch_condition(&self, uid: &PodUid, key: &str, condition: WatchCondition) {
        self.inner.conditions.set(uid, key, condition);
    }

    /// The watch-condition registry.
    pub fn conditions(&self) -> &Conditions {
        &self.inner.conditions
    }

    /// Subscribes to events with the default capacity (1000) and filter.
    pub fn subscribe(&self) -> Subscription {
        self.inner.hub.subscribe()
    }

    /// Subscribes with a capacity and a filter.
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription, hub::Error> {
        self.inner.hub.subscribe_with(options)
    }

    /// The fan-out hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// A read-only handle on the pod-status cache.
    pub fn cache(&self) -> CacheReader {
        self.inner.cache.reader()
    }

    /// Declares the cache fresh as of `at` (the evented generator's tick).
    pub(crate) fn cache_update_time(&self, at: Instant) {
        self.inner.cache.update_time(at);
    }

    /// Running pods and containers by state, as of the last successful listing.
    pub fn runtime_counts(&self) -> RuntimeCounts {
        *self.inner.counts.lock()
    }

    /// A copy of the generator's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        StatsSnapshot {
            relists: s.relists.load(Ordering::Relaxed),
            relist_failures: s.relist_failures.load(Ordering::Relaxed),
            status_failures: s.status_failures.load(Ordering::Relaxed),
            events: std::array::from_fn(|i| s.events[i].load(Ordering::Relaxed)),
            last_relist_duration: Duration::from_nanos(s.last_relist_nanos.load(Ordering::Relaxed)),
            duplicates_dropped: s.duplicates_dropped.load(Ordering::Relaxed),
            events_by_source: std::array::from_fn(|k| {
                std::array::from_fn(|i| s.events_by_source[k][i].load(Ordering::Relaxed))
            }),
            relist_duration: s.relist_duration.snapshot(),
            relist_interval: s.relist_interval.snapshot(),
            last_seen: *s.last_seen.lock(),
            last_error: s.last_error.lock().clone(),
        }
    }

    /// Counters of the runtime adapter.
    pub fn runtime_stats(&self) -> &runtime::RuntimeStats {
        self.inner.runtime.stats()
    }

    /// The last event of each container and sandbox of a pod that pleg has
    /// published about (forgotten with the pod).
    pub fn last_events(&self, uid: &PodUid) -> Vec<LastEvent> {
        self.inner
            .last_events
            .get(uid)
            .map(|e| e.value().clone())
            .unwrap_or_default()
    }

    /// Pods currently in the records (test and debugging aid).
    pub async fn recorded_pods(&self) -> usize {
        self.inner.state.lock().await.records.len()
    }

    /// Whether the records hold this pod (test and debugging aid).
    pub async fn is_recorded(&self, uid: &PodUid) -> bool {
        self.inner.state.lock().await.records.contains(uid)
    }
}

fn warn_if_threshold_is_short(relist: &RelistDuration) {
    if !relist.threshold_covers_period() {
        tracing::warn!(
            period = %health::go_duration(relist.relist_period),
            threshold = %health::go_duration(relist.relist_threshold),
            "relist threshold does not exceed the relist period; the generator will report unhealthy between relists"
        );
    }
}

async fn relist_loop(generator: Weak<Inner>, control: Arc<Control>, cancel: CancellationToken) {
    loop {
        let listed = {
            let Some(inner) = generator.upgrade() else {
                return;
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                outcome = inner.relist() => outcome.is_ok(),
            }
        };
        let finished = Instant::now();
        // Sleep for the period, measured from the end of this relist. A
        // changed period wakes the wait early, and so does a per-pod request,
        // unless the runtime just failed to list (a request must not turn a
        // runtime outage into a tight retry loop).
        loop {
            let mut woken = pin!(control.wake.notified());
            woken.as_mut().enable();
            if listed && !control.requested.lock().is_empty() {
                break;
            }
            let deadline = finished + control.relist_duration.lock().relist_period;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut woken => continue,
            }
        }
    }
}

impl Inner {
    async fn relist(&self) -> runtime::Result<RelistSummary> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let listed_at = SystemTime::now();
        if let Some(previous) = self.stats.previous_start.lock().replace(started) {
            self.stats.relist_interval.observe(started - previous);
        }
        let listing = match bounded("ListPods", self.request_timeout, self.runtime.list_pods())
            .await
        {
            Ok(listing) => listing,
            Err(e) => {
                *self.stats.last_error.lock() = Some(e.to_string());
                self.stats.relist_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "relist: unable to list pods; keeping previous records");
                return Err(e);
            }
        };
        *self.last_success.lock() = Some(started);
        *self.stats.last_seen.lock() = Some(listed_at);
        *self.stats.last_error.lock() = None;
        let duplicates = listing.duplicates_dropped();
        if duplicates > 0 {
            self.stats
                .duplicates_dropped
                .fetch_add(duplicates as u64, Ordering::Relaxed);
            // Warn when it starts, not on every relist while it lasts.
            if !self.stats.duplicates_seen.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    duplicates,
                    "relist: runtime listed some pods or containers more than once; kept the first sighting"
                );
            }
        } else {
            self.stats.duplicates_seen.store(false, Ordering::Relaxed);
        }

        let RelistState {
            records,
            reinspect,
            diff,
            listed_at: last_listed_at,
            removed,
        } = &mut *state;
        *last_listed_at = Some(listed_at);
        diff_into(records, &listing, diff);
        *self.counts.lock() = diff.counts();
        self.conditions.retain_pods(|uid| listing.contains(uid));

        let mut summary = RelistSummary {
            pods: listing.len(),
            ..RelistSummary::default()
        };
        let mut failed: HashSet<PodUid> = HashSet::new();
        for change in diff.changes() {
            let events = diff.events_of(change);
            let outcome = match &change.new {
                Some(new) => {
                    self.inspect(records, new, change.old.as_ref(), events, listed_at)
                        .await
                }
                None => self.forget(records, &change.uid, change.old.as_ref(), events, None),
            };
            if outcome.is_some() {
                removed.bury(events);
            }
            summary.record(outcome, &mut failed, &change.uid);
        }

        // Pods with no change of their own that still need a look. The
        // reinspection set and the requests are only cleared once the relist
        // completes: a relist cancelled half-way (stop, or a dropped
        // `relist()` future) leaves them for the next one.
        let requested: Vec<(PodUid, u64)> = self
            .control
            .requested
            .lock()
            .iter()
            .map(|(uid, number)| (uid.clone(), *number))
            .collect();
        let mut extra: Vec<PodUid> = self.conditions.watched_pods();
        extra.extend(reinspect.iter().cloned());
        extra.extend(requested.iter().map(|(uid, _)| uid.clone()));
        extra.sort_unstable();
        extra.dedup();
        let changed: IdSet<&PodUid> = if extra.is_empty() {
            IdSet::default()
        } else {
            diff.changes().iter().map(|c| &c.uid).collect()
        };
        for uid in extra {
            if changed.contains(&uid) {
                continue;
            }
            let outcome = match listing.get(&uid) {
                Some(pod) => {
                    let old = records.get(&uid).cloned();
                    self.inspect(records, pod, old.as_ref(), &[], listed_at)
                        .await
                }
                None if self.cache.get(&uid).is_some() => {
                    self.forget(records, &uid, None, &[], None)
                }
                None => continue,
            };
            summary.record(outcome, &mut failed, &uid);
        }

        *reinspect = failed;
        {
            let mut pending = self.control.requested.lock();
            for (uid, number) in &requested {
                if pending.get(uid) == Some(number) {
                    pending.remove(uid);
                }
            }
        }
        self.cache.update_time(started);
        self.stats.relists.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        self.stats.relist_duration.observe(took);
        self.stats.last_relist_nanos.store(
            took.as_nanos().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(summary)
    }

    /// Fetches a listed pod's status and, if that works, accepts its record
    /// and publishes its events. Returns the number of events published, or
    /// `None` when the fetch failed.
    async fn inspect(
        &self,
        records: &mut Records,
        pod: &Arc<Pod>,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        listed_at: SystemTime,
    ) -> Option<usize> {
        let uid = pod.uid();
        let fetched_at = Instant::now();
        let mut status = match bounded(
            "PodStatus",
            self.request_timeout,
            self.runtime.pod_status(pod),
        )
        .await
        {
            Ok(status) => status,
            Err(e) => {
                self.stats.status_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    pod = %uid, namespace = %pod.meta.namespace, name = %pod.meta.name, error = %e,
                    "relist: unable to get pod status; holding its events back until a fetch succeeds"
                );
                self.cache.set_error(&pod.meta, Arc::new(e), fetched_at);
                return None;
            }
        };
        // The status is at least as fresh as the listing it was fetched for.
        status.timestamp = status.timestamp.or(Some(listed_at));
        Some(self.accept(records, pod, old, events, status, fetched_at, None))
    }

    /// Accepts a pod's new record and status: writes the cache, evaluates its
    /// watch conditions, and publishes its events, `ConditionMet` last.
    /// `stream_time` is the runtime's time of the stream event that brought
    /// the change (`None` for a relist).
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        records: &mut Records,
        pod: &Arc<Pod>,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        status: PodStatus,
        written_at: Instant,
        stream_time: Option<Option<SystemTime>>,
    ) -> usize {
        let uid = pod.uid();
        self.cache.set(uid, status, None, written_at);
        let stored = self.cache.get(uid).map(|e| e.status);
        let met = stored
            .as_deref()
            .is_some_and(|status| self.conditions.evaluate(uid, status));
        records.apply(uid, Some(pod));
        let source = Source::of(stream_time);
        let mut batch: Vec<Arc<PodLifecycleEvent>> = events
            .iter()
            .map(|e| {
                Arc::new(build_event(
                    &pod.meta,
                    e,
                    stored.as_deref(),
                    Some(pod),
                    old,
                    source,
                ))
            })
            .collect();
        if met {
            batch.push(Arc::new(source.event(&pod.meta, EventType::ConditionMet)));
        }
        self.publish(batch)
    }

    /// Handles a pod that is gone from the runtime: drops its cache entry and
    /// record, and publishes its last events.
    fn forget(
        &self,
        records: &mut Records,
        uid: &PodUid,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        stream_time: Option<Option<SystemTime>>,
    ) -> Option<usize> {
        let last_status = self.cache.get(uid).map(|e| e.status);
        self.cache.delete(uid);
        records.apply(uid, None);
        let Some(old) = old else {
            self.last_events.remove(uid);
            return Some(0);
        };
        let batch = events
            .iter()
            .map(|e| {
                Arc::new(build_event(
                    &old.meta,
                    e,
                    last_status.as_deref(),
                    None,
                    Some(old),
                    Source::of(stream_time),
                ))
            })
            .collect();
        let published = self.publish(batch);
        // Gone with the pod (after publishing, which records them).
        self.last_events.remove(uid);
        Some(published)
    }

    fn publish(&self, batch: Vec<Arc<PodLifecycleEvent>>) -> usize {
        for event in &batch {
            self.stats.events[event.kind.index()].fetch_add(1, Ordering::Relaxed);
            let source = match event.source {
                EventSource::Relist => 0,
                EventSource::Stream => 1,
            };
            self.stats.events_by_source[event.kind.index()][source].fetch_add(1, Ordering::Relaxed);
            if let Some(c) = &event.container {
                let last = LastEvent {
                    id: c.id.clone(),
                    kind: event.kind,
                    at: event.observed_at,
                    source: event.source,
                };
                let mut entry = self.last_events.entry(event.pod.uid.clone()).or_default();
                match entry.iter_mut().find(|e| e.id == c.id) {
                    Some(slot) => *slot = last,
                    None => {
                        // A pod that restarts a container for days must not
                        // grow without bound: forget the oldest removed ones.
                        if entry.len() >= LAST_EVENTS_PER_POD
                            && let Some(oldest) = entry
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| e.kind == EventType::ContainerRemoved)
                                .min_by_key(|(_, e)| e.at)
                                .map(|(i, _)| i)
                        {
                            entry.remove(oldest);
                        }
                        entry.push(last);
                    }
                }
            }
        }
        self.hub.publish(&batch);
        batch.len()
    }
}

impl RelistSummary {
    fn record(&mut self, outcome: Option<usize>, failed: &mut HashSet<PodUid>, uid: &PodUid) {
        self.inspected += 1;
        match outcome {
            Some(events) => self.events += events,
            None => {
                self.failed += 1;
                failed.insert(uid.clone());
            }
        }
    }
}

/// Where the events being built come from.
#[derive(Clone, Copy)]
enum Source {
    Relist,
    /// A stream event, with the runtime's time of it.
    Stream(Option<SystemTime>),
}

impl Source {
    fn of(stream_time: Option<Option<SystemTime>>) -> Self {
        stream_time.map_or(Source::Relist, Source::Stream)
    }

    fn event(self, meta: &Arc<PodMeta>, kind: EventType) -> PodLifecycleEvent {
        match self {
            Source::Relist => PodLifecycleEvent::new(meta.clone(), kind, EventSource::Relist),
            Source::Stream(at) => {
                let mut e = PodLifecycleEvent::new(meta.clone(), kind, EventSource::Stream);
                e.runtime_time = at;
                e
            }
        }
    }
}

/// Builds the event for one diff transition, with the best payload at hand:
/// the fresh status first, then the listing entry, then the old record.
fn build_event(
    meta: &Arc<PodMeta>,
    event: &DiffEvent,
    status: Option<&PodStatus>,
    new: Option<&Arc<Pod>>,
    old: Option<&Arc<Pod>>,
    source: Source,
) -> PodLifecycleEvent {
    let from_status = status.and_then(|s| s.find(&event.id));
    let described = from_status
        .or_else(|| new.and_then(|p| p.find(&event.id)).map(|(c, _)| c))
        .or_else(|| old.and_then(|p| p.find(&event.id)).map(|(c, _)| c));
    let mut out = source.event(meta, event.kind);
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
        out.reason = c.reason.clone();
        if matches!(source, Source::Relist) {
            out.runtime_time = c.finished_at;
        }
    }
    if event.kind == EventType::ContainerStarted && matches!(source, Source::Relist) {
        out.runtime_time = from_status.and_then(|c| c.started_at);
    }
    out
}

mod stream;

pub use stream::{Applied, StaleReason};

#[cfg(test)]
mod tests;
