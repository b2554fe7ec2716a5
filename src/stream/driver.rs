//! The stream's driver: it waits for what the state calls for (the stream
//! to open, its next event or the cache tick, a deadline), hands events to
//! the core, carries out the actions [`step`] returns, and publishes the
//! status after each step.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::state::{Action, Failure, Input, Notice, Standing, State, StreamConfig, step};
use super::{StreamState, StreamStatus};
use crate::backoff::Backoff;
use crate::core::Applied;
use crate::duration::GoDuration;
use crate::pleg::Shared;
use crate::relist;
use crate::runtime::{self, ContainerEvent, ContainerEventKind, EventStream, Runtime as _};

/// Events read from the runtime and not yet applied, at most: the stream is
/// read in a task of its own, so that a relist (which holds the core) never
/// leaves containerd's own buffer (1,000 events) to overflow. Past this,
/// events are dropped, counted, and treated as a gap: a relist, and a
/// `Resync` for every subscriber.
pub(crate) const BUFFER: usize = 8192;

/// The open stream, read by a task of its own into a bounded buffer. The
/// task ends when this is dropped.
pub(crate) struct Reader {
    /// Each with when the reader held it (wall clock).
    events: mpsc::Receiver<(runtime::Result<ContainerEvent>, SystemTime)>,
    /// Events dropped because the buffer was full, not yet reported.
    overflowed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    fn spawn(mut stream: EventStream, shared: &Arc<Shared>) -> Self {
        let (sender, events) = mpsc::channel(BUFFER);
        let overflowed = Arc::new(AtomicU64::new(0));
        let dropped = overflowed.clone();
        let shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                let end = item.is_err();
                let held: SystemTime = shared.clock.now();
                if !end {
                    shared.runtime.liveness().answered();
                }
                match sender.try_send((item, held)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        if end {
                            // The end must get through: wait for room.
                            let _ = sender.send(item).await;
                        } else {
                            shared.metrics.stream.buffer_overflows.inc();
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
                if end {
                    return;
                }
            }
        });
        Reader {
            events,
            overflowed,
            task,
        }
    }
}

/// Runs the stream until `cancel`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    config: StreamConfig,
    cache_tick: Duration,
    backoff: Backoff,
    cancel: CancellationToken,
) {
    let mut driver = Driver {
        shared,
        config,
        handled: 0,
        state_since: Instant::now(),
        published: None,
        gap_forgiven: AtomicBool::new(false),
    };
    let mut tick = tokio::time::interval(cache_tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut state: State<Reader> = State::Connecting {
        standing: Standing::new(backoff),
        probing: false,
    };
    loop {
        driver.publish(&state);
        let input = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            input = driver.wait(&mut state, &mut tick) => input,
        };
        let event = matches!(input, Input::Event { .. });
        if matches!(input, Input::Opened(_)) {
            driver.gap_forgiven.store(false, Ordering::Relaxed);
        }
        let transition = step(state, input, &driver.config, Instant::now());
        state = transition.next;
        for action in transition.actions {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = driver.perform(action) => {}
            }
        }
        if event {
            driver.handled += 1;
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    config: StreamConfig,
    /// Stream events handled so far.
    handled: u64,
    /// When the current state (by name) was entered.
    state_since: Instant,
    /// The state (by name) last published.
    published: Option<StreamState>,
    /// Whether this stream's first gap was seen (and not counted).
    gap_forgiven: AtomicBool,
}

impl Driver {
    /// The status of `state`, on the watch channel and in the metrics.
    fn publish<S>(&mut self, state: &State<S>) {
        let kind = state.kind();
        if self.published != Some(kind) {
            self.published = Some(kind);
            self.state_since = Instant::now();
        }
        let Standing {
            mode,
            failures,
            last_error,
            ..
        } = state.standing();
        let status = StreamStatus {
            mode: *mode,
            state: kind,
            failures: *failures,
            last_error: last_error.clone(),
            since: self.state_since,
            events_handled: self.handled,
        };
        let metrics = &self.shared.metrics.stream;
        metrics.set_mode(status.mode);
        metrics.set_state(status.state);
        self.shared.stream_status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    /// Waits for what `state` waits for.
    async fn wait(&self, state: &mut State<Reader>, tick: &mut Interval) -> Input<Reader> {
        match state {
            State::Connecting { .. } => match self.shared.runtime.container_events().await {
                Ok(stream) => Input::Opened(Reader::spawn(stream, &self.shared)),
                Err(e) => Input::OpenFailed(failure(&e)),
            },
            State::Streaming { stream, .. } => {
                let overflowed = stream.overflowed.swap(0, Ordering::Relaxed);
                if overflowed > 0 {
                    return Input::Event {
                        gap: self.overflowed(overflowed),
                        lossy: true,
                    };
                }
                tokio::select! {
                    item = stream.events.recv() => match item {
                        Some((Ok(event), held)) => {
                            let gap = self.handle(&event, held).await;
                            Input::Event { gap: gap.is_some(), lossy: gap == Some(true) }
                        }
                        Some((Err(e), _)) => Input::Ended(failure(&e)),
                        None => Input::Ended(Failure {
                            message: runtime::Error::stream_ended().to_string(),
                            unimplemented: false,
                        }),
                    },
                    _ = tick.tick() => Input::Tick,
                }
            }
            State::Backoff { until, .. } => {
                tokio::select! {
                    () = tokio::time::sleep_until(*until) => Input::Deadline,
                    () = self.shared.runtime_back.notified() => Input::RuntimeBack,
                }
            }
            State::Fallback { next_probe, .. } => {
                tokio::select! {
                    () = tokio::time::sleep_until(*next_probe) => Input::Deadline,
                    () = self.shared.runtime_back.notified() => Input::RuntimeBack,
                }
            }
        }
    }

    /// The buffer overflowed: events were lost that nobody can name.
    fn overflowed(&self, dropped: u64) -> bool {
        tracing::warn!(
            dropped,
            "container event buffer full; events dropped: relisting, and telling every subscriber (Resync)"
        );
        self.shared.hub.stream_gap(None, 1);
        self.note_gap();
        true
    }

    /// Remembers a gap, for health.
    fn note_gap(&self) {
        let mut gaps = self.shared.gaps.lock();
        if gaps.len() >= crate::pleg::GAPS_REMEMBERED {
            gaps.pop_front();
        }
        gaps.push_back(Instant::now());
    }

    /// Applies one event and counts what became of it; says whether it
    /// showed lost predecessors.
    /// `held` is when the reader held it.
    /// Applies one event: `Some` when it showed a gap, `true` when the gap
    /// counts (is more than the one event a reconnection loses).
    async fn handle(&self, event: &ContainerEvent, held: SystemTime) -> Option<bool> {
        let metrics = &self.shared.metrics.stream;
        metrics.received.inc();
        let applied = self.shared.core.lock().await.apply_event(event);
        match applied {
            Applied::Published(_) | Applied::PublishedAfterGap { .. } => {
                metrics.applied.inc();
                let now: SystemTime = self.shared.clock.now();
                metrics
                    .apply
                    .observe(now.duration_since(held).unwrap_or_default());
                if let Some(at) = event.created_at {
                    metrics
                        .latency
                        .observe(now.duration_since(at).unwrap_or_default());
                    metrics
                        .delivery
                        .observe(held.duration_since(at).unwrap_or_default());
                }
            }
            Applied::Stale(reason) => {
                metrics
                    .stale
                    .get_or_create(&crate::metrics::StaleLabels { reason })
                    .inc();
                tracing::debug!(id = ?event.id.as_str(), kind = event.kind.as_str(), reason = reason.as_str(), "dropped a stale container event");
            }
            Applied::Unresolved => {
                metrics.unresolved.inc();
                tracing::debug!(id = ?event.id.as_str(), kind = event.kind.as_str(), "container event for an unknown pod and ID; skipped");
            }
        }
        // A DELETED of a container pleg never saw, of a pod it never saw:
        // every earlier event of it was lost.
        let missed = match applied {
            Applied::PublishedAfterGap { missed, .. } => Some(missed),
            Applied::Unresolved if event.kind == ContainerEventKind::Deleted => Some(3),
            _ => None,
        };
        if let Some(missed) = missed {
            metrics.gaps.inc();
            // containerd 1.7 hands one event after a (re)connection to the
            // handler of the stream that closed (see `State::Streaming`):
            // a first gap of one event says nothing of another consumer,
            // so health does not count it (the relist and any Resync still
            // happen). Any other gap does count.
            let forgiven = missed == 1 && !self.gap_forgiven.swap(true, Ordering::Relaxed);
            if !forgiven {
                self.note_gap();
            }
            tracing::debug!(id = ?event.id.as_str(), kind = event.kind.as_str(), "the event stream lost earlier events; relisting");
            return Some(!forgiven);
        }
        None
    }

    async fn perform(&self, action: Action) {
        let shared = &self.shared;
        match action {
            Action::Relist(why) => {
                tracing::debug!(why = why.as_str(), "catch-up relist");
                if let Err(e) = relist::relist(shared).await {
                    tracing::warn!(error = ?e.to_string(), why = why.as_str(), "catch-up relist failed; retrying within a second");
                }
            }
            Action::SetRelist(duration) => {
                if let Err(e) = shared.control.update(duration) {
                    tracing::error!(error = ?e.to_string(), "cannot switch the relist period");
                }
            }
            Action::AdvanceCacheTime => {
                shared.core.lock().await.cache_fresh_as_of(Instant::now());
            }
            Action::Notice(notice) => self.notice(notice),
        }
    }

    fn notice(&self, notice: Notice) {
        let metrics = &self.shared.metrics.stream;
        let period = GoDuration(self.config.generic_relist.relist_period);
        let probe = GoDuration(self.config.probe_interval);
        match notice {
            Notice::Connected { promoted } => {
                metrics.connection_successes.inc();
                if promoted {
                    metrics.promotions.inc();
                    tracing::info!("container event stream works again; back to evented mode");
                } else if self.shared.runtime.liveness().last_answer().is_some() {
                    tracing::info!("container event stream open; evented mode");
                } else {
                    tracing::info!(
                        "container event stream requested; evented mode once the runtime answers"
                    );
                }
            }
            Notice::Retrying {
                failure,
                failures,
                retry_in,
            } => {
                metrics.connection_errors.inc();
                tracing::warn!(
                    error = ?failure.message,
                    failures,
                    retry_in = %GoDuration(retry_in),
                    "container event stream failed; reconnecting"
                );
            }
            Notice::Distrusted => tracing::warn!(
                "the container event stream lost events (another consumer of it?); relisting every {period} until it has lost none for {}",
                GoDuration(self.config.lossy_for)
            ),
            Notice::Trusted => tracing::info!(
                "the container event stream lost nothing for {}; relisting every {} again",
                GoDuration(self.config.lossy_for),
                GoDuration(self.config.evented_relist.relist_period)
            ),
            Notice::ProbeFailed { failure } => {
                metrics.connection_errors.inc();
                tracing::debug!(error = ?failure.message, "event stream probe failed; staying in generic mode");
            }
            Notice::FellBack { failure, failures } => {
                metrics.connection_errors.inc();
                metrics.fallbacks.inc();
                if failure.unimplemented {
                    tracing::warn!(
                        error = ?failure.message,
                        "runtime has no container event stream; relisting every {period} (generic mode), probing the stream every {probe}"
                    );
                } else {
                    tracing::warn!(
                        error = ?failure.message,
                        failures,
                        "container event stream failed {failures} times in a row; relisting every {period} (generic mode), probing the stream every {probe}"
                    );
                }
            }
        }
    }
}

fn failure(error: &runtime::Error) -> Failure {
    Failure {
        message: error.to_string(),
        unimplemented: error.is_unimplemented(),
    }
}
