//! The generator's handle, [`Pleg`], and its configuration, [`Config`].
//!
//! One handle type runs either mode: [`Mode::Generic`] relists the runtime
//! (the kubelet's generic PLEG); [`Mode::Evented`] follows the runtime's
//! event stream and keeps relisting as a safety net, with fallback and
//! re-promotion ([`crate::stream`]). Behind the handle, two thin drivers
//! (the relist loop, [`crate::relist`], and the stream driver) feed one
//! writer ([`crate::core`]); the handle itself only reads, apart from the
//! explicit requests (`relist`, `request_relist`, `request_reinspect`,
//! watch conditions).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::cache::{self, LastEvent};
use crate::clock::{self, Clock};
use crate::condition::{Conditions, WatchCondition};
use crate::core::{Core, FailingPod, Parts, RelistSummary};
use crate::event::{EventSource, EventType};
use crate::health::{InvalidRelistDuration, RelistDuration, Unhealthy};
use crate::hub::{self, Hub, SubscribeOptions, Subscription};
use crate::metrics::{HistogramSnapshot, Metrics};
use crate::model::{PodUid, RuntimeCounts};
use crate::relist::{self, Control, RelistHealth};
use crate::runtime::{self, Instrumented, Runtime, RuntimeStats};
use crate::stream::state::StreamConfig;
use crate::stream::{self, Mode, StaleReason, StreamStats, StreamStatus};
use crate::task::{NoTokioRuntime, TaskSlot};

/// How a generator runs. Start from [`Config::default`] (evented) or
/// [`Config::generic`] and change what you need:
///
/// ```
/// use std::time::Duration;
/// use pleg::{Config, Mode, RelistDuration};
///
/// let config = Config::generic()
///     .with_relist(RelistDuration::new(Duration::from_millis(500), Duration::from_secs(60)))
///     .with_request_timeout(Duration::from_secs(10));
/// assert_eq!(config.mode, Mode::Generic);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// `Evented` follows the runtime's event stream, relisting as a safety
    /// net; `Generic` relists only.
    pub mode: Mode,
    /// Relist period and threshold while relisting is in charge (generic
    /// mode, fallback): 1 s and 3 min.
    pub generic_relist: RelistDuration,
    /// Relist period and threshold while the stream works: 300 s and 3 min.
    /// The threshold can be shorter than the period because, between these
    /// safety-net relists, a liveness probe (CRI `Version`, every quarter
    /// of the threshold, 1 s to 5 s) keeps health current: a runtime that
    /// stops answering fails health within the threshold plus 5 s in
    /// either mode. A stream that loses events (more than the one a
    /// reconnection loses on containerd 1.7) is relisted at the generic
    /// period instead until it has lost none for a minute, since what
    /// another consumer took may show in no later event.
    pub evented_relist: RelistDuration,
    /// Deadline of each runtime call (the kubelet's runtime-request-timeout).
    pub runtime_request_timeout: Duration,
    /// Failures in a row after which relisting takes over from the stream.
    pub max_stream_failures: u32,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// How often the stream is probed while relisting is in charge.
    pub probe_interval: Duration,
    /// How often the cache's global time advances while streaming.
    pub cache_tick: Duration,
    /// A stream that lived this long resets the failure count when it ends.
    pub stable_after: Duration,
    /// Wall-clock time (injected; the system's by default).
    pub clock: Arc<dyn Clock>,
    /// Items the hub's replay ring keeps for subscriptions that resume
    /// (default 10,000; 0: none; at most
    /// [`MAX_REPLAY_EVENTS`](crate::hub::MAX_REPLAY_EVENTS)).
    pub replay_events: usize,
    /// Called after each relist that listed the runtime, once the core's
    /// lock is released and the listing is freed (default: none).
    pub after_relist: Option<AfterRelist>,
}

/// A function called after each relist that listed the runtime, with what
/// it did ([`Config::after_relist`]).
///
/// The daemon uses it to hand the allocator's free memory back to the
/// system after a large listing. It runs on the relisting task, so it
/// should be quick: the next relist waits for it.
#[derive(Clone)]
pub struct AfterRelist(Arc<dyn Fn(&RelistSummary) + Send + Sync>);

impl AfterRelist {
    /// Wraps the function.
    pub fn new(f: impl Fn(&RelistSummary) + Send + Sync + 'static) -> Self {
        AfterRelist(Arc::new(f))
    }

    pub(crate) fn call(&self, summary: &RelistSummary) {
        (self.0)(summary);
    }
}

impl std::fmt::Debug for AfterRelist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterRelist(..)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Evented,
            generic_relist: RelistDuration::GENERIC,
            evented_relist: RelistDuration::new(
                RelistDuration::EVENTED.relist_period,
                RelistDuration::GENERIC.relist_threshold,
            ),
            runtime_request_timeout: Duration::from_mins(2),
            max_stream_failures: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            probe_interval: Duration::from_secs(30),
            cache_tick: Duration::from_secs(1),
            stable_after: Duration::from_secs(10),
            clock: clock::system(),
            replay_events: hub::DEFAULT_REPLAY_EVENTS,
            after_relist: None,
        }
    }
}

impl Config {
    /// The defaults, relisting only.
    pub fn generic() -> Self {
        Config {
            mode: Mode::Generic,
            ..Config::default()
        }
    }

    /// The defaults, following the event stream.
    pub fn evented() -> Self {
        Config::default()
    }

    /// Sets the mode.
    #[must_use]
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the relist period and threshold while relisting is in charge.
    #[must_use]
    pub fn with_relist(mut self, relist: RelistDuration) -> Self {
        self.generic_relist = relist;
        self
    }

    /// Sets the relist period and threshold while the stream works.
    #[must_use]
    pub fn with_evented_relist(mut self, relist: RelistDuration) -> Self {
        self.evented_relist = relist;
        self
    }

    /// Sets the deadline of each runtime call.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.runtime_request_timeout = timeout;
        self
    }

    /// Sets the number of stream failures in a row before relisting takes
    /// over.
    #[must_use]
    pub fn with_max_stream_failures(mut self, failures: u32) -> Self {
        self.max_stream_failures = failures;
        self
    }

    /// Sets the reconnection delays.
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Sets how often the stream is probed while relisting is in charge.
    #[must_use]
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Sets how often the cache's global time advances while streaming.
    #[must_use]
    pub fn with_cache_tick(mut self, tick: Duration) -> Self {
        self.cache_tick = tick;
        self
    }

    /// Sets how long a stream must live to reset the failure count.
    #[must_use]
    pub fn with_stable_after(mut self, after: Duration) -> Self {
        self.stable_after = after;
        self
    }

    /// Sets the wall clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets how many items the replay ring keeps.
    #[must_use]
    pub fn with_replay_events(mut self, replay_events: usize) -> Self {
        self.replay_events = replay_events;
        self
    }

    /// Sets the function called after each relist that listed the runtime.
    #[must_use]
    pub fn with_after_relist(mut self, f: impl Fn(&RelistSummary) + Send + Sync + 'static) -> Self {
        self.after_relist = Some(AfterRelist::new(f));
        self
    }

    /// Checks that the configuration can work.
    ///
    /// # Errors
    /// The first setting that cannot work: a zero relist period or threshold, a zero request timeout, a zero backoff, probe interval or cache tick, a backoff whose minimum exceeds its maximum, or any of them longer than [`MAX_DURATION`](crate::health::MAX_DURATION).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.generic_relist.validate()?;
        self.evented_relist.validate()?;
        if self.runtime_request_timeout.is_zero() {
            return Err(ConfigError::ZeroRequestTimeout);
        }
        for (name, value) in [
            ("backoff_min", self.backoff_min),
            ("probe_interval", self.probe_interval),
            ("cache_tick", self.cache_tick),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroInterval(name));
            }
        }
        for (name, value) in [
            ("runtime_request_timeout", self.runtime_request_timeout),
            ("backoff_min", self.backoff_min),
            ("backoff_max", self.backoff_max),
            ("probe_interval", self.probe_interval),
            ("cache_tick", self.cache_tick),
            ("stable_after", self.stable_after),
        ] {
            if value > crate::health::MAX_DURATION {
                return Err(ConfigError::TooLong { name, value });
            }
        }
        if self.backoff_min > self.backoff_max {
            return Err(ConfigError::BackoffInverted {
                min: self.backoff_min,
                max: self.backoff_max,
            });
        }
        if self.replay_events > hub::MAX_REPLAY_EVENTS {
            return Err(ConfigError::ReplayTooLarge(self.replay_events));
        }
        Ok(())
    }

    fn stream(&self) -> StreamConfig {
        StreamConfig {
            evented_relist: self.evented_relist,
            generic_relist: self.generic_relist,
            max_failures: self.max_stream_failures,
            probe_interval: self.probe_interval,
            stable_after: self.stable_after,
            gap_relist_interval: Duration::from_secs(1),
            lossy_for: crate::stream::LOSSY_FOR,
        }
    }
}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The relist period or threshold cannot work.
    #[error("pleg config: {0}")]
    RelistDuration(#[from] InvalidRelistDuration),
    /// A zero runtime request timeout would fail every call.
    #[error("pleg config: runtime request timeout must be greater than zero")]
    ZeroRequestTimeout,
    /// A zero interval would spin.
    #[error("pleg config: {0} must be greater than zero")]
    ZeroInterval(&'static str),
    /// Longer than any timer should wait.
    #[error("pleg config: {name} {} is longer than the longest allowed, {}", crate::duration::GoDuration(*value), crate::duration::GoDuration(crate::health::MAX_DURATION))]
    TooLong {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: Duration,
    },
    /// A replay ring past [`MAX_REPLAY_EVENTS`](crate::hub::MAX_REPLAY_EVENTS).
    #[error("pleg config: replay_events {0} is more than the {max} allowed (--replay-events)", max = hub::MAX_REPLAY_EVENTS)]
    ReplayTooLarge(usize),
    /// The shortest reconnection delay exceeds the longest.
    #[error("pleg config: backoff_min {} exceeds backoff_max {}", crate::duration::GoDuration(*min), crate::duration::GoDuration(*max))]
    BackoffInverted {
        /// The shortest delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
    },
}

/// What the handle, the drivers and the core share.
pub(crate) struct Shared {
    /// The single writer, serialised.
    pub(crate) core: tokio::sync::Mutex<Core>,
    pub(crate) control: Control,
    pub(crate) health: Mutex<RelistHealth>,
    pub(crate) runtime: Arc<Instrumented<Arc<dyn Runtime>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hub: Hub,
    pub(crate) cache: cache::Reader,
    pub(crate) conditions: Arc<Conditions>,
    pub(crate) counts: Arc<Mutex<RuntimeCounts>>,
    pub(crate) stream_status: watch::Sender<StreamStatus>,
    /// Pods whose status fetches fail (written by the core).
    pub(crate) failing_pods: Arc<Mutex<Vec<FailingPod>>>,
    /// When the stream last showed lost events (the latest few).
    pub(crate) gaps: Mutex<std::collections::VecDeque<Instant>>,
    /// Told when a relist succeeds after failing: the stream driver then
    /// reconnects at once.
    pub(crate) runtime_back: tokio::sync::Notify,
    pub(crate) after_relist: Option<AfterRelist>,
}

/// Stream gaps remembered, for health.
pub(crate) const GAPS_REMEMBERED: usize = 64;

struct Inner {
    config: Config,
    shared: Arc<Shared>,
    relist_task: TaskSlot,
    stream_task: TaskSlot,
    probe_task: TaskSlot,
}

/// The pod lifecycle event generator. Cloning gives another handle on the
/// same generator; dropping the last one stops it and ends every
/// subscription after its queued events (unless a clone of
/// [`hub`](Self::hub) is kept).
///
/// ```
/// use pleg::{Config, Pleg, runtime::fake::FakeRuntime};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let runtime = FakeRuntime::new();
/// let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
/// let summary = pleg.relist().await.expect("the fake lists fine");
/// assert_eq!(summary.pods, 0);
/// assert!(pleg.healthy().is_ok());
/// # }
/// ```
#[derive(Clone)]
pub struct Pleg {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pleg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pleg")
            .field("mode", &self.inner.config.mode)
            .field("relist_duration", &self.relist_duration())
            .field("stream", &*self.inner.shared.stream_status.borrow())
            .field("subscribers", &self.inner.shared.hub.subscriber_count())
            .finish_non_exhaustive()
    }
}

/// A copy of the generator's counters.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Relists whose listing succeeded.
    pub relists: u64,
    /// Relists whose listing failed.
    pub relist_failures: u64,
    /// Pod status fetches that failed.
    pub status_failures: u64,
    /// Duration of the last successful relist.
    pub last_relist_duration: Duration,
    /// Repeated pod UIDs and container IDs folded away from listings.
    pub duplicates_dropped: u64,
    /// Published events by kind and source (every pair, in the order of
    /// [`EventType::ALL`] then [`EventSource::ALL`]).
    pub events: Vec<(EventType, EventSource, u64)>,
    /// Durations of relists whose listing succeeded.
    pub relist_duration: HistogramSnapshot,
    /// Time between the starts of consecutive relists.
    pub relist_interval: HistogramSnapshot,
    /// Wall-clock start of the last relist whose listing succeeded.
    pub last_seen: Option<std::time::SystemTime>,
    /// Why the last relist failed, if it did (cleared by a success).
    pub last_error: Option<String>,
}

impl StatsSnapshot {
    /// Events published of one kind, from either source.
    pub fn events_of(&self, kind: EventType) -> u64 {
        self.events
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Events published of one kind from one source.
    pub fn events_from(&self, kind: EventType, source: EventSource) -> u64 {
        self.events
            .iter()
            .find(|(k, s, _)| *k == kind && *s == source)
            .map_or(0, |(_, _, n)| *n)
    }
}

impl Pleg {
    /// A stopped generator over `runtime`. Refuses a configuration that
    /// cannot work ([`Config::validate`]).
    ///
    /// # Errors
    /// A configuration that cannot work ([`Config::validate`]).
    pub fn new(runtime: Arc<dyn Runtime>, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let runtime = Arc::new(Instrumented::new(runtime, config.runtime_request_timeout));
        let metrics = Arc::new(Metrics::new());
        let conditions = Arc::new(Conditions::new());
        let cache = cache::Writer::new();
        let reader = cache.reader();
        let hub = Hub::with_replay_events(config.replay_events);
        let counts = Arc::new(Mutex::new(RuntimeCounts::default()));
        let failing_pods = Arc::new(Mutex::new(Vec::new()));
        let core = Core::new(Parts {
            runtime: runtime.clone(),
            clock: config.clock.clone(),
            conditions: conditions.clone(),
            cache,
            hub: hub.clone(),
            metrics: metrics.clone(),
            counts: counts.clone(),
            failing_pods: failing_pods.clone(),
        });
        let (stream_status, _) =
            watch::channel(StreamStatus::stopped(Mode::Generic, Instant::now()));
        let shared = Arc::new(Shared {
            core: tokio::sync::Mutex::new(core),
            control: Control::new(config.generic_relist),
            health: Mutex::new(RelistHealth::default()),
            runtime,
            clock: config.clock.clone(),
            metrics,
            hub,
            cache: reader,
            conditions,
            counts,
            stream_status,
            failing_pods,
            gaps: Mutex::new(std::collections::VecDeque::new()),
            runtime_back: tokio::sync::Notify::new(),
            after_relist: config.after_relist.clone(),
        });
        Ok(Pleg {
            inner: Arc::new(Inner {
                config,
                shared,
                relist_task: TaskSlot::new("relist loop"),
                stream_task: TaskSlot::new("event stream driver"),
                probe_task: TaskSlot::new("runtime liveness probe"),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Starts relisting periodically, and in evented mode the event stream,
    /// on the current tokio runtime. Until the stream works, the generator
    /// relists at the generic period. Starting a running generator does
    /// nothing. The tasks end with [`stop`](Self::stop) or when the last
    /// handle is dropped.
    ///
    /// # Errors
    /// [`NoTokioRuntime`] when called outside a tokio runtime.
    pub fn start(&self) -> Result<(), NoTokioRuntime> {
        let inner = &self.inner;
        relist::warn_if_threshold_is_short(&self.relist_duration());
        let shared = inner.shared.clone();
        inner
            .relist_task
            .start(move |cancel| relist::run(shared, cancel))?;
        if inner.config.mode == Mode::Evented {
            let shared = inner.shared.clone();
            let config = inner.config.stream();
            let (tick, backoff) = (
                inner.config.cache_tick,
                Backoff::new(inner.config.backoff_min, inner.config.backoff_max),
            );
            inner
                .stream_task
                .start(move |cancel| stream::driver::run(shared, config, tick, backoff, cancel))?;
            let shared = inner.shared.clone();
            inner
                .probe_task
                .start(move |cancel| stream::probe::run(shared, cancel))?;
        }
        Ok(())
    }

    /// Stops the stream and the relisting, and waits for both to end. A
    /// relist in progress is abandoned at its next runtime call; what it had
    /// already published stays published. Subscriptions stay open.
    pub async fn stop(&self) {
        let inner = &self.inner;
        inner.stream_task.stop().await;
        inner.probe_task.stop().await;
        inner.relist_task.stop().await;
        inner.shared.stream_status.send_modify(|status| {
            if status.state != stream::StreamState::Stopped {
                status.state = stream::StreamState::Stopped;
                status.since = Instant::now();
            }
        });
        inner
            .shared
            .metrics
            .stream
            .set_state(stream::StreamState::Stopped);
    }

    /// Whether the periodic relisting runs.
    pub fn is_running(&self) -> bool {
        self.inner.relist_task.is_running()
    }

    /// Changes the relist period and health threshold. A running loop picks
    /// the new period up at once (in evented mode, until the stream driver
    /// sets its own at its next transition). A period or threshold that
    /// cannot work is refused and the old values stay.
    ///
    /// # Errors
    /// A zero period or threshold (the old values stay).
    pub fn update(&self, relist: RelistDuration) -> Result<(), ConfigError> {
        relist.validate()?;
        if self.is_running() {
            relist::warn_if_threshold_is_short(&relist);
        }
        self.inner.shared.control.update(relist)?;
        Ok(())
    }

    /// The current relist period and threshold.
    pub fn relist_duration(&self) -> RelistDuration {
        self.inner.shared.control.duration()
    }

    /// Relists now and waits for it to finish.
    ///
    /// # Errors
    /// The runtime error when the listing failed (or timed out); nothing was changed or published then. A pod whose status fetch fails is no error: it is retried at the next relist.
    pub async fn relist(&self) -> runtime::Result<RelistSummary> {
        relist::relist(&self.inner.shared).await
    }

    /// Asks for the pod to be inspected (status fetched, cache refreshed,
    /// conditions evaluated) at a relist that starts now, without waiting for
    /// the period. Returns at once; a stopped generator inspects the pod at
    /// its next relist.
    pub fn request_relist(&self, uid: &PodUid) {
        self.inner.shared.control.request(uid, false);
    }

    /// Like [`request_relist`](Self::request_relist), and the pod's batch at
    /// that relist always carries a `PodSync`, changed or not: the kubelet's
    /// `RequestReinspect` (1.37). A pod whose status fetch fails gets its
    /// `PodSync` at the relist whose fetch succeeds; a pod no longer listed
    /// gets none.
    pub fn request_reinspect(&self, uid: &PodUid) {
        self.inner.shared.control.request(uid, true);
    }

    /// `Ok` while the last relist whose listing succeeded started within the
    /// threshold; otherwise the reason, worded like the kubelet's.
    ///
    /// # Errors
    /// Why pleg is unhealthy, worded like the kubelet.
    pub fn healthy(&self) -> Result<(), Unhealthy> {
        relist::healthy(&self.inner.shared)
    }

    /// Pods whose status fetches fail, oldest failure first: their events
    /// are held back until a fetch succeeds.
    pub fn failing_pods(&self) -> Vec<FailingPod> {
        self.inner.shared.failing_pods.lock().clone()
    }

    /// Events that showed the stream lost earlier ones, within `window`:
    /// how many (of the last 64), and the latest. On containerd 1.7 they
    /// mean that another consumer of the event stream takes events.
    pub fn recent_stream_gaps(&self, window: Duration) -> (usize, Option<Instant>) {
        let gaps = self.inner.shared.gaps.lock();
        let now = Instant::now();
        let recent = gaps
            .iter()
            .filter(|at| now.saturating_duration_since(**at) <= window)
            .count();
        (recent, gaps.back().copied())
    }

    /// Whether the runtime answers, as learnt from every call pleg made.
    pub fn runtime_liveness(&self) -> &runtime::Liveness {
        self.inner.shared.runtime.liveness()
    }

    /// Start time of the last relist whose listing succeeded.
    pub fn last_relist(&self) -> Option<Instant> {
        self.inner.shared.health.lock().last_success
    }

    /// Sets a keyed watch condition on a pod (see [`crate::condition`]).
    pub fn set_pod_watch_condition(&self, uid: &PodUid, key: &str, condition: WatchCondition) {
        self.inner.shared.conditions.set(uid, key, condition);
    }

    /// The watch-condition registry.
    pub fn conditions(&self) -> &Conditions {
        &self.inner.shared.conditions
    }

    /// Subscribes to events with the default capacity (1000) and filter.
    pub fn subscribe(&self) -> Subscription {
        self.inner.shared.hub.subscribe()
    }

    /// Subscribes to the events `filter` selects, with the default
    /// capacity (1000).
    pub fn subscribe_filtered(&self, filter: hub::Filter) -> Subscription {
        self.inner.shared.hub.subscribe_filtered(filter)
    }

    /// Subscribes with a capacity and a filter.
    ///
    /// # Errors
    /// A capacity of 0.
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription, hub::Error> {
        self.inner.shared.hub.subscribe_with(options)
    }

    /// Subscribes as `options` say, with what [`subscribe_with`]
    /// cannot give: the initial state.
    ///
    /// With [`SubscribeOptions::initial_state`], it waits for the first
    /// successful relist, then, under the generator's lock (so that no
    /// event is published in between), reads how every selected pod stands
    /// from the cache: the subscription starts with those as
    /// [`Delivery::Initial`](crate::Delivery::Initial), then one
    /// [`Delivery::Synced`](crate::Delivery::Synced) naming the last event
    /// they include, then live events. A container that starts while this
    /// runs is in the initial state or in a live event, never both. After a
    /// restart, the first relist's announcement of what runs is thus
    /// initial state, not fresh starts.
    ///
    /// With a resume point ([`SubscribeOptions::with_resume`]) still in the
    /// ring, what follows it is replayed instead, then `Synced` if an
    /// initial state was asked for; one that is not (another run's, or gone
    /// from the ring) starts with a `Resync` that says why, then the
    /// initial state if asked for.
    ///
    /// [`subscribe_with`]: Self::subscribe_with
    ///
    /// # Errors
    /// A capacity of 0, or a resume point past the run's last event.
    pub async fn watch(&self, options: SubscribeOptions) -> Result<Subscription, hub::Error> {
        let shared = &self.inner.shared;
        if !options.initial_state {
            return shared.hub.subscribe_from(options, None);
        }
        if options.capacity == 0 {
            return Err(hub::Error::ZeroCapacity);
        }
        while shared.health.lock().last_success.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let core = shared.core.lock().await;
        let state = hub::initial_state(shared.cache.entries(), &options.filter, shared.clock.now());
        let subscription = shared.hub.subscribe_from(options, Some(state));
        drop(core);
        subscription
    }

    /// The fan-out hub (subscribing, counts).
    pub fn hub(&self) -> &Hub {
        &self.inner.shared.hub
    }

    /// The wall clock the generator stamps events with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.shared.clock
    }

    /// A read-only handle on the pod-status cache.
    pub fn cache(&self) -> cache::Reader {
        self.inner.shared.cache.clone()
    }

    /// The last event of each container and sandbox of a pod that pleg has
    /// published about, in ID order (forgotten with the pod).
    pub fn last_events(&self, uid: &PodUid) -> Vec<LastEvent> {
        self.inner
            .shared
            .cache
            .get(uid)
            .map(|e| e.last_events.to_vec())
            .unwrap_or_default()
    }

    /// Running pods and containers by state, as of the last successful
    /// listing (moved by stream events since).
    pub fn runtime_counts(&self) -> RuntimeCounts {
        *self.inner.shared.counts.lock()
    }

    /// A copy of the generator's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let shared = &self.inner.shared;
        let m = &shared.metrics;
        let health = shared.health.lock();
        let mut events = Vec::new();
        for &kind in EventType::ALL {
            for &source in EventSource::ALL {
                events.push((kind, source, m.events_of(kind, source)));
            }
        }
        StatsSnapshot {
            relists: m.relists.get(),
            relist_failures: m.relist_failures.get(),
            status_failures: m.status_failures.get(),
            last_relist_duration: health.last_duration,
            duplicates_dropped: m.duplicates_dropped.get(),
            events,
            relist_duration: m.relist_duration.snapshot(),
            relist_interval: m.relist_interval.snapshot(),
            last_seen: health.last_seen,
            last_error: health.last_error.clone(),
        }
    }

    /// Counters of the runtime adapter.
    pub fn runtime_stats(&self) -> &RuntimeStats {
        self.inner.shared.runtime.stats()
    }

    /// Which generator is in charge now.
    pub fn mode(&self) -> Mode {
        self.inner.shared.stream_status.borrow().mode
    }

    /// The stream's situation.
    pub fn stream_status(&self) -> StreamStatus {
        self.inner.shared.stream_status.borrow().clone()
    }

    /// The stream's situation as it changes: await
    /// [`watch::Receiver::wait_for`] instead of polling.
    pub fn watch_stream_status(&self) -> watch::Receiver<StreamStatus> {
        self.inner.shared.stream_status.subscribe()
    }

    /// The stream's counters.
    pub fn stream_stats(&self) -> StreamStats {
        let m = &self.inner.shared.metrics.stream;
        StreamStats {
            connection_successes: m.connection_successes.get(),
            connection_errors: m.connection_errors.get(),
            events_received: m.received.get(),
            events_applied: m.applied.get(),
            stale_dropped: StaleReason::ALL
                .iter()
                .map(|&reason| (reason, m.stale_of(reason)))
                .collect(),
            unresolved: m.unresolved.get(),
            gaps: m.gaps.get(),
            fallbacks: m.fallbacks.get(),
            promotions: m.promotions.get(),
            latency: m.latency.snapshot(),
        }
    }

    /// Registers every metric family of the generator, its runtime and its
    /// hub in `registry`, each name prefixed with `prefix` (`kubelet_`
    /// gives the kubelet's full names).
    pub fn register_metrics(
        &self,
        registry: &mut prometheus_client::registry::Registry,
        prefix: &str,
    ) {
        let shared = &self.inner.shared;
        crate::metrics::register_all(
            registry,
            prefix,
            &shared.metrics,
            shared.runtime.stats(),
            shared.runtime.operations(),
            shared.hub.metrics(),
        );
    }

    /// Pods currently in the records (test and debugging aid).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn recorded_pods(&self) -> usize {
        self.inner.shared.core.lock().await.recorded_pods()
    }

    /// Whether the records hold this pod (test and debugging aid).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn is_recorded(&self, uid: &PodUid) -> bool {
        self.inner.shared.core.lock().await.is_recorded(uid)
    }

    /// Applies one stream event directly, as the stream driver does
    /// (without its counters).
    #[cfg(test)]
    pub(crate) async fn apply_event(
        &self,
        event: &crate::runtime::ContainerEvent,
    ) -> crate::core::Applied {
        self.inner.shared.core.lock().await.apply_event(event)
    }
}

#[cfg(test)]
mod tests;
