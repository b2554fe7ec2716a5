//! The event-stream generator: the runtime's `GetContainerEvents` stream,
//! with relisting kept as a safety net.
//!
//! [`EventedPleg`] wraps a [`GenericPleg`] and feeds it the runtime's
//! container events ([`GenericPleg::apply_event`]): the stream and the relist
//! share one set of records and one cache, so each transition reaches
//! subscribers exactly once, from whichever source saw it first, and stale
//! or out-of-order events are dropped and counted (see
//! [`crate::generic::StaleReason`]).
//!
//! # States
//! The stream is driven by one state machine ([`StreamState`]), one `step`
//! at a time:
//! - `Connecting`: opening the stream. Success goes to `Streaming`, after
//!   switching to the evented relist period and relisting at once (CRI has no
//!   resume token: whatever happened while no stream was open is found by
//!   diffing). `Unimplemented` (containerd 1.6) goes to `Fallback` at once,
//!   with one log line. Another error goes to `Backoff`, or to `Fallback`
//!   after `max_stream_failures` failures in a row.
//! - `Streaming`: events are applied as they come, and the cache's global
//!   time advances every `cache_tick` so that `get_newer_than` waiters are
//!   never stranded. An error or the end of the stream goes to `Backoff` (or
//!   `Fallback`); a stream that lived `stable_after` first resets the count.
//! - `Backoff`: waits a jittered, growing delay, then `Connecting`.
//! - `Fallback`: relists at the generic period and probes the stream every
//!   `probe_interval`. A probe that works re-promotes the generator to
//!   evented mode; unlike the kubelet's, the fallback is not for good.
//!
//! # Relisting
//! While streaming, relists run every 300 s (threshold 10 min), as the
//! kubelet's evented PLEG does; in fallback every 1 s (threshold 3 min). A
//! relist also runs after every (re)connection, and relisting keeps the
//! generic period until the first event arrives on the new stream, followed
//! by one more relist: containerd 1.7 leaves the handler of a closed stream
//! waiting on its shared event channel until it has taken, and lost, one
//! more event, so the first events after a reconnection may reach nobody.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::generic::{self, Applied, GenericConfig, GenericPleg, StaleReason};
use crate::health::{InvalidRelistDuration, RelistDuration};
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::runtime::{self, ContainerEvent, EventStream, Runtime};

/// How an evented generator runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventedConfig {
    /// Use the event stream at all; `false` runs the relisting generator
    /// alone, at the generic period (`pleg run --mode generic`).
    pub stream: bool,
    /// Relist period and threshold while the stream works (300 s, 10 min).
    pub evented_relist: RelistDuration,
    /// Relist period and threshold in fallback (1 s, 3 min).
    pub generic_relist: RelistDuration,
    /// Deadline of each runtime call, and of opening the stream.
    pub runtime_request_timeout: Duration,
    /// Failures in a row after which the generator falls back to relisting.
    pub max_stream_failures: u32,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// How often the stream is probed while in fallback.
    pub probe_interval: Duration,
    /// How often the cache's global time advances while streaming.
    pub cache_tick: Duration,
    /// A stream that lived this long resets the failure count when it ends.
    pub stable_after: Duration,
}

impl Default for EventedConfig {
    fn default() -> Self {
        EventedConfig {
            stream: true,
            evented_relist: RelistDuration::EVENTED,
            generic_relist: RelistDuration::GENERIC,
            runtime_request_timeout: Duration::from_secs(120),
            max_stream_failures: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            probe_interval: Duration::from_secs(30),
            cache_tick: Duration::from_secs(1),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// Errors of the evented generator's configuration and control.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the relisting generator underneath.
    #[error(transparent)]
    Generic(#[from] generic::Error),
    /// A relist period or threshold that cannot work.
    #[error("pleg config: {0}")]
    RelistDuration(#[from] InvalidRelistDuration),
    /// A zero interval would spin.
    #[error("pleg config: {0} must be greater than zero")]
    ZeroInterval(&'static str),
}

/// Which generator is in charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The event stream, with slow relisting as a safety net.
    Evented,
    /// Relisting at the generic period (the stream is unavailable).
    Generic,
}

impl Mode {
    /// Lower-case name, for logs, health and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Evented => "evented",
            Mode::Generic => "generic",
        }
    }
}

/// Where the stream's state machine stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamState {
    /// Not started, or stopped.
    Stopped,
    /// Opening the stream.
    Connecting,
    /// Receiving events.
    Streaming,
    /// Waiting before reconnecting.
    Backoff,
    /// Relisting at the generic period, probing the stream now and then.
    Fallback,
}

impl StreamState {
    /// Lower-case name, for logs, health and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Stopped => "stopped",
            StreamState::Connecting => "connecting",
            StreamState::Streaming => "streaming",
            StreamState::Backoff => "backoff",
            StreamState::Fallback => "fallback",
        }
    }
}

/// The stream's situation, for health and operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStatus {
    /// Which generator is in charge.
    pub mode: Mode,
    /// The stream's state.
    pub state: StreamState,
    /// Failures in a row.
    pub failures: u32,
    /// The last stream error, if any.
    pub last_error: Option<String>,
    /// When the state was entered.
    pub since: Instant,
}

/// Counters of the stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    /// Streams opened.
    pub connection_successes: u64,
    /// Attempts to open a stream that failed, and streams that broke.
    pub connection_errors: u64,
    /// Events received.
    pub events_received: u64,
    /// Events applied (whether or not they published anything).
    pub events_applied: u64,
    /// Events dropped as stale, by reason (indexed like [`StaleReason::ALL`]).
    pub stale_dropped: [u64; 5],
    /// Events whose pod could not be resolved.
    pub unresolved: u64,
    /// Events that showed earlier ones were lost (each asks for a relist,
    /// at most one per second).
    pub gaps: u64,
    /// Falls back to generic mode.
    pub fallbacks: u64,
    /// Returns to evented mode after a fallback.
    pub promotions: u64,
    /// Latency of applied events: when pleg applied them minus the runtime's
    /// `created_at`.
    pub latency: HistogramSnapshot,
}

impl StreamStats {
    /// Stale events dropped, all reasons.
    pub fn stale_total(&self) -> u64 {
        self.stale_dropped.iter().sum()
    }

    /// Stale events dropped for one reason.
    pub fn stale(&self, reason: StaleReason) -> u64 {
        StaleReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.stale_dropped[i])
    }
}

#[derive(Default)]
struct Counters {
    connection_successes: AtomicU64,
    connection_errors: AtomicU64,
    events_received: AtomicU64,
    events_applied: AtomicU64,
    stale_dropped: [AtomicU64; 5],
    unresolved: AtomicU64,
    gaps: AtomicU64,
    fallbacks: AtomicU64,
    promotions: AtomicU64,
}

struct Shared {
    config: EventedConfig,
    status: Mutex<StreamStatus>,
    counters: Counters,
    latency: Histogram,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The evented pod lifecycle event generator. It dereferences to the
/// [`GenericPleg`] it drives, for subscriptions, the cache, watch conditions,
/// health and stats.
pub struct EventedPleg {
    generic: GenericPleg,
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for EventedPleg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventedPleg")
            .field("status", &*self.shared.status.lock())
            .field("generic", &self.generic)
            .finish_non_exhaustive()
    }
}

impl Deref for EventedPleg {
    type Target = GenericPleg;

    fn deref(&self) -> &GenericPleg {
        &self.generic
    }
}

impl Drop for EventedPleg {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.cancel.cancel();
        }
    }
}

impl EventedPleg {
    /// A stopped generator over `runtime`. Refuses a configuration that
    /// cannot work.
    pub fn new(runtime: Arc<dyn Runtime>, config: EventedConfig) -> Result<Self, Error> {
        config.evented_relist.validate()?;
        config.generic_relist.validate()?;
        for (name, value) in [
            ("backoff_min", config.backoff_min),
            ("probe_interval", config.probe_interval),
            ("cache_tick", config.cache_tick),
        ] {
            if value.is_zero() {
                return Err(Error::ZeroInterval(name));
            }
        }
        let generic = GenericPleg::new(
            runtime.clone(),
            GenericConfig {
                relist: config.generic_relist,
                runtime_request_timeout: config.runtime_request_timeout,
            },
        )?;
        Ok(EventedPleg {
            generic,
            runtime,
            shared: Arc::new(Shared {
                config,
                status: Mutex::new(StreamStatus {
                    mode: Mode::Generic,
                    state: StreamState::Stopped,
                    failures: 0,
                    last_error: None,
                    since: Instant::now(),
                }),
                counters: Counters::default(),
                latency: Histogram::default(),
            }),
            running: Mutex::new(None),
        })
    }

    /// Starts relisting and the event stream on the current tokio runtime.
    /// Until the stream works, the generator relists at the generic period.
    /// With [`EventedConfig::stream`] off, only the relisting starts.
    pub fn start(&self) -> Result<(), Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Generic(generic::Error::NoTokioRuntime))?;
        let mut running = self.running.lock();
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Ok(());
        }
        self.generic.start()?;
        if !self.shared.config.stream {
            return Ok(());
        }
        let cancel = CancellationToken::new();
        let driver = StreamDriver {
            generic: self.generic.clone(),
            runtime: self.runtime.clone(),
            shared: self.shared.clone(),
            backoff: Backoff::new(
                self.shared.config.backoff_min,
                self.shared.config.backoff_max,
            ),
            cancel: cancel.clone(),
            awaiting_first_event: false,
            gap_pending: false,
            last_gap_relist: None,
        };
        let task = handle.spawn(driver.run());
        *running = Some(Running { cancel, task });
        Ok(())
    }

    /// Stops the stream and the relisting, and waits for both to end.
    pub async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some(Running { cancel, task }) = running {
            cancel.cancel();
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("event stream task panicked: {e}");
            }
        }
        self.generic.stop().await;
        self.shared.set_state(StreamState::Stopped);
    }

    /// The relisting generator underneath.
    pub fn generic(&self) -> &GenericPleg {
        &self.generic
    }

    /// Which generator is in charge now.
    pub fn mode(&self) -> Mode {
        self.shared.status.lock().mode
    }

    /// The stream's situation.
    pub fn stream_status(&self) -> StreamStatus {
        self.shared.status.lock().clone()
    }

    /// The stream's counters.
    pub fn stream_stats(&self) -> StreamStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamStats {
            connection_successes: load(&c.connection_successes),
            connection_errors: load(&c.connection_errors),
            events_received: load(&c.events_received),
            events_applied: load(&c.events_applied),
            stale_dropped: std::array::from_fn(|i| load(&c.stale_dropped[i])),
            unresolved: load(&c.unresolved),
            gaps: load(&c.gaps),
            fallbacks: load(&c.fallbacks),
            promotions: load(&c.promotions),
            latency: self.shared.latency.snapshot(),
        }
    }
}

impl Shared {
    fn set_state(&self, state: StreamState) {
        let mut status = self.status.lock();
        if status.state != state {
            status.state = state;
            status.since = Instant::now();
        }
    }
}

/// How long a call to open the stream may stay unanswered before the stream
/// counts as open. containerd sends the stream's response headers only with
/// its first event, so on a quiet node the call stays pending; a refusal
/// (`Unimplemented`, a missing socket) comes at once.
const OPEN_GRACE: Duration = Duration::from_millis(500);

/// An event stream being opened, owning what it needs.
type Opening = std::pin::Pin<
    Box<dyn std::future::Future<Output = runtime::Result<EventStream>> + Send + 'static>,
>;

/// The stream of the `Streaming` state.
enum Slot {
    /// The call is pending: no refusal came within [`OPEN_GRACE`], and the
    /// runtime is taken to hold the stream open until its first event.
    Opening(Opening),
    /// Events flow.
    Open(EventStream),
}

/// The stream's states, each holding what it needs.
enum State {
    /// Opening the stream; `probing` when in fallback.
    Connect { probing: bool },
    /// Receiving events since `since`.
    Streaming { stream: Slot, since: Instant },
    /// Waiting `delay` before connecting again.
    Backoff { delay: Duration },
    /// Relisting at the generic period; the next probe at `next_probe`.
    Fallback { next_probe: Instant },
}

struct StreamDriver {
    generic: GenericPleg,
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    backoff: Backoff,
    cancel: CancellationToken,
    /// No event has come on the current stream yet. containerd 1.7 keeps
    /// the handler of a closed stream waiting on its one shared channel
    /// until it has taken (and lost) one more event; so the first events
    /// after a (re)connection may reach nobody. Until the first event arrives
    /// relisting keeps the generic period, and a relist right after it finds
    /// what was lost before it; then the evented period applies.
    awaiting_first_event: bool,
    /// The stream lost events; a relist should look for them.
    gap_pending: bool,
    /// When a gap last caused a relist (they are at most one per second).
    last_gap_relist: Option<Instant>,
}

impl StreamDriver {
    async fn run(mut self) {
        let mut state = State::Connect { probing: false };
        let mut tick = tokio::time::interval(self.shared.config.cache_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cancel = self.cancel.clone();
            state = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                next = self.step(state, &mut tick) => next,
            };
        }
    }

    /// One transition of the state machine.
    async fn step(&mut self, state: State, tick: &mut tokio::time::Interval) -> State {
        let config = self.shared.config;
        match state {
            State::Connect { probing } => {
                self.shared.set_state(StreamState::Connecting);
                let runtime = self.runtime.clone();
                let mut opening: Opening =
                    Box::pin(async move { runtime.container_events().await });
                match tokio::time::timeout(OPEN_GRACE, &mut opening).await {
                    Ok(Ok(stream)) => self.connected(Slot::Open(stream)).await,
                    Ok(Err(e)) => self.failed(e, probing),
                    Err(_) => self.connected(Slot::Opening(opening)).await,
                }
            }
            State::Streaming {
                stream: Slot::Opening(mut opening),
                since,
            } => {
                tokio::select! {
                    opened = &mut opening => match opened {
                        Ok(stream) => State::Streaming { stream: Slot::Open(stream), since },
                        Err(e) => self.failed(e, false),
                    },
                    _ = tick.tick() => {
                        self.generic.cache_update_time(Instant::now());
                        State::Streaming { stream: Slot::Opening(opening), since }
                    }
                }
            }
            State::Streaming {
                stream: Slot::Open(mut stream),
                since,
            } => {
                use std::future::poll_fn;
                let next = tokio::select! {
                    item = poll_fn(|cx| stream.as_mut().poll_next(cx)) => item,
                    _ = tick.tick() => {
                        self.generic.cache_update_time(Instant::now());
                        self.relist_after_gap().await;
                        return State::Streaming { stream: Slot::Open(stream), since };
                    }
                };
                match next {
                    Some(Ok(event)) => {
                        self.handle(&event).await;
                        self.relist_after_gap().await;
                        if std::mem::take(&mut self.awaiting_first_event) {
                            self.catch_up("first event on a new stream").await;
                            if let Err(e) = self.generic.update(config.evented_relist) {
                                tracing::error!(error = %e, "cannot switch to the evented relist period");
                            }
                        }
                        State::Streaming {
                            stream: Slot::Open(stream),
                            since,
                        }
                    }
                    Some(Err(e)) => {
                        if since.elapsed() >= config.stable_after {
                            self.reset_failures();
                        }
                        self.failed(e, false)
                    }
                    None => {
                        if since.elapsed() >= config.stable_after {
                            self.reset_failures();
                        }
                        self.failed(
                            runtime::Error::Failed {
                                call: "GetContainerEvents",
                                message: "the runtime ended the event stream".into(),
                            },
                            false,
                        )
                    }
                }
            }
            State::Backoff { delay } => {
                self.shared.set_state(StreamState::Backoff);
                tokio::time::sleep(delay).await;
                State::Connect { probing: false }
            }
            State::Fallback { next_probe } => {
                self.shared.set_state(StreamState::Fallback);
                tokio::time::sleep_until(next_probe).await;
                State::Connect { probing: true }
            }
        }
    }

    /// A stream is open: evented mode, then a relist to catch up on what
    /// happened while none was.
    async fn connected(&mut self, stream: Slot) -> State {
        let counters = &self.shared.counters;
        counters
            .connection_successes
            .fetch_add(1, Ordering::Relaxed);
        let was = {
            let mut status = self.shared.status.lock();
            let was = status.mode;
            status.mode = Mode::Evented;
            status.failures = 0;
            was
        };
        self.backoff.reset();
        // Until the stream's first event, relisting keeps the generic
        // period (see `awaiting_first_event`).
        if let Err(e) = self.generic.update(self.shared.config.generic_relist) {
            tracing::error!(error = %e, "cannot switch to the generic relist period");
        }
        match was {
            Mode::Generic if counters.fallbacks.load(Ordering::Relaxed) > 0 => {
                counters.promotions.fetch_add(1, Ordering::Relaxed);
                tracing::info!("container event stream works again; back to evented mode");
            }
            _ => tracing::info!("container event stream open; evented mode"),
        }
        self.catch_up("event stream connected").await;
        self.awaiting_first_event = true;
        self.shared.set_state(StreamState::Streaming);
        State::Streaming {
            stream,
            since: Instant::now(),
        }
    }

    /// Relists when the stream lost events, at most once per second (the
    /// cache tick retries a gap that came sooner).
    async fn relist_after_gap(&mut self) {
        if !self.gap_pending
            || self
                .last_gap_relist
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.gap_pending = false;
        self.last_gap_relist = Some(Instant::now());
        self.catch_up("the event stream lost events").await;
    }

    /// Relists to find what the stream may have missed.
    async fn catch_up(&self, why: &str) {
        tracing::debug!(why, "catch-up relist");
        if let Err(e) = self.generic.relist().await {
            tracing::warn!(error = %e, why, "catch-up relist failed; the next relist retries");
        }
    }

    fn reset_failures(&mut self) {
        self.shared.status.lock().failures = 0;
        self.backoff.reset();
    }

    /// Opening or reading the stream failed: back off, or fall back.
    fn failed(&mut self, error: runtime::Error, probing: bool) -> State {
        let config = self.shared.config;
        let counters = &self.shared.counters;
        counters.connection_errors.fetch_add(1, Ordering::Relaxed);
        let message = error.to_string();
        let unimplemented = matches!(error, runtime::Error::Unimplemented { .. });
        let failures = {
            let mut status = self.shared.status.lock();
            status.failures = status.failures.saturating_add(1);
            status.last_error = Some(message.clone());
            status.failures
        };
        let next_probe = Instant::now() + config.probe_interval;
        if probing {
            tracing::debug!(error = %message, "event stream probe failed; staying in generic mode");
            return State::Fallback { next_probe };
        }
        if unimplemented || failures >= config.max_stream_failures {
            self.fall_back(&message, unimplemented, failures);
            return State::Fallback { next_probe };
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(
            error = %message,
            failures,
            retry_in = %crate::health::go_duration(delay),
            "container event stream failed; reconnecting"
        );
        State::Backoff { delay }
    }

    fn fall_back(&self, message: &str, unimplemented: bool, failures: u32) {
        let config = self.shared.config;
        self.shared
            .counters
            .fallbacks
            .fetch_add(1, Ordering::Relaxed);
        self.shared.status.lock().mode = Mode::Generic;
        if let Err(e) = self.generic.update(config.generic_relist) {
            tracing::error!(error = %e, "cannot switch to the generic relist period");
        }
        let period = crate::health::go_duration(config.generic_relist.relist_period);
        let probe = crate::health::go_duration(config.probe_interval);
        if unimplemented {
            tracing::warn!(
                error = %message,
                "runtime has no container event stream; relisting every {period} (generic mode), probing the stream every {probe}"
            );
        } else {
            tracing::warn!(
                error = %message,
                failures,
                "container event stream failed {failures} times in a row; relisting every {period} (generic mode), probing the stream every {probe}"
            );
        }
    }

    async fn handle(&mut self, event: &ContainerEvent) {
        let counters = &self.shared.counters;
        counters.events_received.fetch_add(1, Ordering::Relaxed);
        let applied = self.generic.apply_event(event).await;
        if let Applied::PublishedAfterGap(_) = applied {
            counters.gaps.fetch_add(1, Ordering::Relaxed);
            if !self.gap_pending {
                tracing::debug!(id = %event.id, kind = event.kind.as_str(), "the event stream lost earlier events; relisting");
            }
            self.gap_pending = true;
        }
        match applied {
            Applied::Published(_) | Applied::PublishedAfterGap(_) => {
                counters.events_applied.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = event.created_at {
                    let latency = SystemTime::now().duration_since(at).unwrap_or_default();
                    self.shared.latency.observe(latency);
                }
            }
            Applied::Stale(reason) => {
                if let Some(i) = StaleReason::ALL.iter().position(|r| *r == reason) {
                    counters.stale_dropped[i].fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(id = %event.id, kind = event.kind.as_str(), reason = reason.as_str(), "dropped a stale container event");
            }
            Applied::Unresolved => {
                counters.unresolved.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id = %event.id, kind = event.kind.as_str(), "container event for an unknown pod and ID; skipped");
            }
        }
    }
}
